//! A failing plan is reported with its oracle and shrunk to a small plan
//! that still fails.

use peermq_sim::{generate, run, shrink, FaultLevel, Op, Params, TimedOp};

#[test]
fn sabotage_is_caught_and_the_plan_shrinks_around_it() {
    let params = Params {
        nodes: Some(3),
        duration: Some(10),
        faults: Some(FaultLevel::Light),
        scenario: None,
    };
    let mut plan = generate(11, &params);
    // The plan as it was before full disks and clock jumps were drawn: a
    // full disk keeps the messages it would destroy from arriving.
    plan.ops
        .retain(|o| !matches!(o.op, Op::DiskFull { .. } | Op::ClockJump { .. }));
    assert!(run(&plan).failure.is_none());
    // Destroy a stored message behind the core's back on every node, late
    // in the chaos phase, when there is something to destroy.
    for node in 0..3 {
        plan.ops.push(TimedOp {
            at: 9_500_000,
            op: Op::Sabotage { node },
        });
    }
    let report = run(&plan);
    let failure = report.failure.expect("the oracles notice the damage");
    let (small, f2, runs) = shrink(&plan, &failure, 400);
    assert_eq!(f2.oracle, failure.oracle);
    assert!(runs > 0);
    assert!(small.ops.len() < plan.ops.len() / 4, "{}", small.render());
    assert!(small
        .ops
        .iter()
        .any(|o| matches!(o.op, Op::Sabotage { .. })));
    assert!(small.ops.iter().any(|o| matches!(o.op, Op::Send { .. })));
    // The minimal plan fails on its own, and is printed as text.
    assert_eq!(run(&small).failure.map(|f| f.oracle), Some(failure.oracle));
    let text = small.render();
    assert!(text.contains("sabotage n"), "{text}");
}

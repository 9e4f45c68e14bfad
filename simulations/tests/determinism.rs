//! The same seed gives the same plan and the same trace hash; different
//! seeds differ.

use peermq_sim::{generate, run, FaultLevel, Op, Params};

#[test]
fn the_same_seed_gives_the_same_trace() {
    for seed in [3, 42, 1234] {
        let heavy = Params {
            faults: Some(FaultLevel::Heavy),
            ..Params::default()
        };
        for params in [Params::default(), heavy] {
            let plan = generate(seed, &params);
            assert_eq!(plan, generate(seed, &params), "plan of seed {seed}");
            let a = run(&plan);
            let b = run(&generate(seed, &params));
            assert_eq!(a.trace.len(), 64, "a BLAKE3 hex digest");
            assert_eq!(a.trace, b.trace, "trace of seed {seed}");
            assert_eq!(a.failure, b.failure);
            assert_eq!(a.wire_bytes, b.wire_bytes);
            assert!(a.sent > 0, "seed {seed} sent something");
        }
    }
}

#[test]
fn different_seeds_give_different_runs() {
    let traces: std::collections::BTreeSet<String> = (0..5)
        .map(|s| run(&generate(s, &Params::default())).trace)
        .collect();
    assert_eq!(traces.len(), 5);
}

#[test]
fn the_options_follow_the_parameters() {
    let p = Params {
        nodes: Some(5),
        duration: Some(7),
        faults: Some(FaultLevel::None),
        scenario: None,
    };
    let plan = generate(9, &p);
    assert_eq!(plan.options.nodes, 5);
    assert_eq!(plan.options.chaos, 7_000_000);
    assert!(plan.ops.iter().all(|o| !o.op.is_fault()));
    // A mailbox pair's sender and recipient keep taking turns after the
    // chaos; everything else happens within it.
    assert!(plan
        .ops
        .iter()
        .all(|o| o.at < 7_000_000 || matches!(o.op, Op::Offline { .. })));
    let summary = plan.options.summary();
    assert!(
        summary.contains("nodes=5") && summary.contains("faults=none"),
        "{summary}"
    );
}

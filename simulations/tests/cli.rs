//! The binary's output contract, which scripts depend on.

use std::process::Command;

fn sim(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_peermq-sim"))
        .args(args)
        .output()
        .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn one_seed_ends_with_ok_and_its_trace() {
    let (code, out, _) = sim(&["--seed", "5"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("seed 5: options: scenario=mix"), "{out}");
    let last = out.lines().last().unwrap_or_default();
    let trace = last.strip_prefix("seed 5: ok trace=").expect(last);
    assert_eq!(trace.len(), 64);
    assert!(out.contains("node-seconds per wall second"), "{out}");
    // And the same again.
    let (_, again, _) = sim(&["--seed", "5"]);
    assert_eq!(again.lines().last(), Some(last));
}

#[test]
fn many_seeds_end_with_the_tally() {
    let (code, out, _) = sim(&["--seeds", "3", "--start", "10", "--duration", "5"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().last(), Some("3 passed, 0 failed"), "{out}");
}

#[test]
fn options_are_honoured_and_printed() {
    let (code, out, _) = sim(&[
        "--seed",
        "2",
        "--nodes",
        "4",
        "--duration",
        "5",
        "--faults",
        "none",
        "--scenario",
        "mix",
    ]);
    assert_eq!(code, 0, "{out}");
    let first = out.lines().next().unwrap_or_default();
    assert!(
        first.contains("nodes=4") && first.contains("chaos=5s") && first.contains("faults=none"),
        "{first}"
    );
}

#[test]
fn malformed_arguments_give_one_line_and_exit_2() {
    for args in [
        vec!["--seed", "banana"],
        vec!["--seeds", "-3"],
        vec!["--seed", "1", "--scenario", "nope"],
        vec!["--seed", "1", "--faults", "extreme"],
        vec!["--seed", "1", "--nodes", "0"],
        vec!["--seed", "1", "--duration", "0"],
        vec!["--seed", "1", "--seeds", "2"],
        vec!["--start", "4"],
        vec![],
        vec!["--frobnicate"],
    ] {
        let (code, out, err) = sim(&args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error:"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

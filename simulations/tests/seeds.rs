//! CI's share of the simulator: 300 seeds of the default mix, every oracle
//! checked. Split in parts so the test harness runs them in parallel.

use peermq_sim::{generate, replay_command, run, Params};

fn run_range(seeds: std::ops::Range<u64>) {
    let params = Params::default();
    let mut failures = Vec::new();
    for seed in seeds {
        let report = run(&generate(seed, &params));
        if let Some(f) = report.failure {
            failures.push(format!(
                "seed {seed}: FAILED {f}\n{}",
                replay_command(seed, &params)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn seeds_0_to_75() {
    run_range(0..75);
}

#[test]
fn seeds_75_to_150() {
    run_range(75..150);
}

#[test]
fn seeds_150_to_225() {
    run_range(150..225);
}

#[test]
fn seeds_225_to_300() {
    run_range(225..300);
}

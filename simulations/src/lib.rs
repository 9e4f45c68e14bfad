//! # peermq-sim
//!
//! A deterministic network simulator for the peermq core. From one `u64`
//! seed it generates a [`Plan`] (options, a timed workload and timed
//! faults), runs it as a discrete-event simulation of many [`peermq::Node`]s
//! on [`peermq::MemStore`]s over simulated TCP links on a virtual clock, and
//! checks the history with Jepsen-style oracles ([`oracle`]).
//!
//! The same plan always gives the same trace hash. A failing plan can be
//! [`shrink`]ed by dropping operations while it still fails.
//!
//! ```
//! let plan = peermq_sim::generate(7, &peermq_sim::Params::default());
//! let a = peermq_sim::run(&plan);
//! let b = peermq_sim::run(&plan);
//! assert_eq!(a.trace, b.trace);
//! assert!(a.failure.is_none(), "{:?}", a.failure);
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod oracle;
pub mod plan;
mod sim;

use std::panic::{catch_unwind, AssertUnwindSafe};

pub use oracle::Failure;
pub use plan::{
    generate, Edge, FaultLevel, MailPair, MailboxPlan, NodeOptions, Op, Options, Params, Plan,
    Scenario, TimedOp,
};
pub use sim::{sparse_budget, Report};

/// Runs `plan` to the end and reports. A panic inside the core is reported
/// as a failure of the `panic` oracle rather than unwinding.
pub fn run(plan: &Plan) -> Report {
    run_echo(plan, false)
}

/// [`run`], echoing the trace text (every output of every node, every
/// operation and fault) to stderr when `echo` is set.
pub fn run_echo(plan: &Plan, echo: bool) -> Report {
    run_with(plan, echo, None)
}

/// [`run`], also writing the byte streams the simulated links deliver
/// into `dir`: one file per link direction, its first 64 KiB cut at a
/// frame boundary, named by its hash (`peermq-sim --record-frames DIR`;
/// the fuzz targets' seeds, see fuzz/README.md).
pub fn run_recording(plan: &Plan, dir: &std::path::Path) -> Report {
    run_with(plan, false, Some(dir))
}

fn run_with(plan: &Plan, echo: bool, record: Option<&std::path::Path>) -> Report {
    let sim = || sim::Sim::new(plan).echo(echo).record_frames(record).run();
    match catch_unwind(AssertUnwindSafe(sim)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Report {
                failure: Some(Failure::new("panic", msg)),
                ..Report::default()
            }
        }
    }
}

/// The command that replays `seed` with `params`.
pub fn replay_command(seed: u64, params: &Params) -> String {
    format!(
        "replay: cargo run --release -p peermq-sim -- --seed {seed}{}",
        params.flags()
    )
}

/// Shrinks a failing plan: removes operations (halves, then quarters, down
/// to single ones) as long as the run still fails the same oracle, within
/// `max_runs` runs. Returns the smallest failing plan found, its failure,
/// and the number of runs made.
pub fn shrink(plan: &Plan, failure: &Failure, max_runs: usize) -> (Plan, Failure, usize) {
    let mut best = plan.clone();
    let mut best_failure = failure.clone();
    let mut runs = 0;
    let mut chunk = best.ops.len().div_ceil(2).max(1);
    loop {
        let mut i = 0;
        while i < best.ops.len() && runs < max_runs {
            let mut candidate = best.clone();
            let end = (i + chunk).min(candidate.ops.len());
            candidate.ops.drain(i..end);
            runs += 1;
            match run(&candidate).failure {
                Some(f) if f.oracle == failure.oracle => {
                    best = candidate;
                    best_failure = f;
                }
                _ => i += chunk,
            }
        }
        if chunk == 1 || runs >= max_runs {
            break;
        }
        chunk = chunk.div_ceil(2);
    }
    (best, best_failure, runs)
}

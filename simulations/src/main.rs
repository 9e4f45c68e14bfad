//! `peermq-sim`: run one seed, or many, of the deterministic simulator.
//!
//! `peermq-sim --seed N` ends with `seed N: ok trace=<hex>`, or with
//! `seed N: FAILED <oracle>: <details>` and exit code 1 after printing a
//! replay command and a shrunk plan. `peermq-sim --seeds K [--start S]`
//! ends with `K passed, F failed` (exit 1 if F > 0); with `--hashes` it
//! first prints each seed's `seed N: trace=<hex>`. Bad arguments: one
//! line on stderr, exit code 2.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::error::ErrorKind;
use clap::Parser;
use peermq_sim::{
    generate, replay_command, run, run_echo, run_recording, shrink, FaultLevel, Params, Report,
    Scenario,
};

#[derive(Parser, Debug)]
#[command(
    name = "peermq-sim",
    version,
    about = "Deterministic network simulator for peermq: one u64 seed chooses every option, workload operation and fault."
)]
struct Args {
    /// Run this one seed (and shrink it if it fails).
    #[arg(long, conflicts_with = "seeds", required_unless_present = "seeds")]
    seed: Option<u64>,
    /// Run this many seeds.
    #[arg(long)]
    seeds: Option<u64>,
    /// First seed of a --seeds run.
    #[arg(long, requires = "seeds", default_value_t = 0)]
    start: u64,
    /// Number of nodes (default: chosen by the seed or the scenario).
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..=2000))]
    nodes: Option<u64>,
    /// Length of the chaos phase in simulated seconds (then the network
    /// heals and must converge).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    duration: Option<u64>,
    /// Fault level: none, light, medium or heavy (default: chosen by the seed).
    #[arg(long)]
    faults: Option<FaultLevel>,
    /// Scenario: mix (default), reconnect-storm, sparse-download or mesh.
    #[arg(long)]
    scenario: Option<Scenario>,
    /// Print the whole plan before running a single seed.
    #[arg(long)]
    print_plan: bool,
    /// Do not shrink a failing seed.
    #[arg(long)]
    no_shrink: bool,
    /// Most re-runs spent shrinking.
    #[arg(long, default_value_t = 300)]
    shrink_runs: usize,
    /// Echo the trace of a single seed's run (and of its shrunk plan) to
    /// stderr.
    #[arg(long)]
    trace: bool,
    /// Worker threads of a --seeds run (default: the machine's cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Print every seed's trace hash in a --seeds run (`seed N: trace=<hex>`),
    /// to compare two builds seed by seed.
    #[arg(long, requires = "seeds")]
    hashes: bool,
    /// Write the byte streams the simulated links deliver into this
    /// directory (one file per link direction, named by its hash): seeds
    /// for the fuzz targets (fuzz/README.md).
    #[arg(long, value_name = "DIR")]
    record_frames: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                print!("{e}");
                return ExitCode::SUCCESS;
            }
            let text = e.render().to_string();
            let line = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("error: bad arguments");
            eprintln!("{line} (see --help)");
            return ExitCode::from(2);
        }
    };
    // A core panic is reported as a failed seed; keep its message off the
    // output, which scripts parse.
    std::panic::set_hook(Box::new(|_| {}));
    let params = Params {
        scenario: args.scenario,
        nodes: args.nodes.map(|n| n as usize),
        duration: args.duration,
        faults: args.faults,
    };
    match (args.seed, args.seeds) {
        (Some(seed), _) => one(seed, &params, &args),
        (None, Some(k)) => many(k, args.start, &params, &args),
        (None, None) => {
            eprintln!("error: give --seed N or --seeds K (see --help)");
            ExitCode::from(2)
        }
    }
}

fn speed(node_micros: u64, sim_micros: u64, wall: Duration) -> String {
    let w = wall.as_secs_f64().max(1e-9);
    format!(
        "{:.1} node-seconds simulated in {:.3}s wall: {:.0} node-seconds per wall second, {:.0}x real time",
        node_micros as f64 / 1e6,
        w,
        node_micros as f64 / 1e6 / w,
        sim_micros as f64 / 1e6 / w
    )
}

fn one(seed: u64, params: &Params, args: &Args) -> ExitCode {
    let plan = generate(seed, params);
    println!("seed {seed}: options: {}", plan.options.summary());
    println!(
        "seed {seed}: plan: {} operations ({} faults)",
        plan.ops.len(),
        plan.ops.iter().filter(|o| o.op.is_fault()).count()
    );
    if args.print_plan {
        print!("{}", plan.render());
    }
    let t = Instant::now();
    let report = match &args.record_frames {
        Some(dir) => run_recording(&plan, dir),
        None => run_echo(&plan, args.trace),
    };
    let wall = t.elapsed();
    println!(
        "seed {seed}: sent={} delivered={} connections={} faults={} wire-bytes={}",
        report.sent, report.delivered, report.connections, report.faults, report.wire_bytes
    );
    if report.sparse_blocks > 0 {
        println!(
            "seed {seed}: sparse readers asked for {} blocks and downloaded {} bytes ({} per block, proofs and heads included)",
            report.sparse_blocks,
            report.sparse_bytes,
            report.sparse_bytes / report.sparse_blocks
        );
    }
    if let Some(m) = &plan.options.mailbox {
        println!(
            "seed {seed}: mailbox n{}: {} messages sent through it, {} acknowledged, {} refusals, {} blocks forged or dropped before their recipient had them",
            m.node, report.mail_sent, report.mail_acked, report.mail_refusals, report.mail_tampered
        );
    }
    if report.forks > 0 {
        println!(
            "seed {seed}: the rogue author's fork was caught {} times",
            report.forks
        );
    }
    println!(
        "seed {seed}: speed: {}",
        speed(report.node_micros, report.sim_micros, wall)
    );
    match report.failure {
        None => {
            println!("seed {seed}: ok trace={}", report.trace);
            ExitCode::SUCCESS
        }
        Some(f) => {
            println!("seed {seed}: FAILED {f}");
            println!("{}", replay_command(seed, params));
            let f = if args.no_shrink {
                f
            } else {
                println!("shrinking (at most {} runs)...", args.shrink_runs);
                let (small, sf, runs) = shrink(&plan, &f, args.shrink_runs);
                println!(
                    "minimal plan after {runs} runs ({} of {} operations), failing with {sf}:",
                    small.ops.len(),
                    plan.ops.len()
                );
                print!("{}", small.render());
                if args.trace {
                    eprintln!("--- trace of the minimal plan ---");
                    run_echo(&small, true);
                }
                f
            };
            println!("seed {seed}: FAILED {f}");
            ExitCode::from(1)
        }
    }
}

fn many(k: u64, start: u64, params: &Params, args: &Args) -> ExitCode {
    let hashes = args.hashes;
    let jobs = args
        .jobs
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
        .max(1);
    let next = AtomicU64::new(0);
    let results: Mutex<Vec<(u64, Report)>> = Mutex::new(Vec::new());
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= k {
                    break;
                }
                let seed = start.wrapping_add(i);
                let plan = generate(seed, params);
                let report = match &args.record_frames {
                    Some(dir) => run_recording(&plan, dir),
                    None => run(&plan),
                };
                results
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((seed, report));
            });
        }
    });
    let wall = t.elapsed();
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|r| r.0);
    let mut failed = 0;
    let (mut node_micros, mut sim_micros) = (0, 0);
    for (seed, r) in &results {
        node_micros += r.node_micros;
        sim_micros += r.sim_micros;
        if hashes {
            println!("seed {seed}: trace={}", r.trace);
        }
        if let Some(f) = &r.failure {
            failed += 1;
            println!("seed {seed}: FAILED {f}");
            println!("{}", replay_command(*seed, params));
        }
    }
    println!(
        "speed ({jobs} threads): {}",
        speed(node_micros, sim_micros, wall)
    );
    println!("{} passed, {failed} failed", k - failed);
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

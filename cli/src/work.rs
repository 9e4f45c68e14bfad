//! `peermq work -- CMD ARGS…`: a worker that runs a command once per
//! message, with leases, retries and dead letters, while the node stays
//! online as `listen` does.

use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::StreamExt;
use peermq::{Released, RetryPolicy, Taken};
use peermq_tokio::{Mq, Worker};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use crate::follow::Stop;
use crate::live::LiveFile;
use crate::output::Printer;

/// How often the worker looks for work without being told of any: retry
/// delays and lapsed leases end without an event.
const POLL: Duration = Duration::from_millis(250);
/// How often the connections' routes are recorded for `status`.
const ROUTE_TICK: Duration = Duration::from_secs(2);

/// What `work` runs, and how.
pub struct Job {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Jobs at once.
    pub parallel: usize,
}

/// How one run of the command ended.
enum Outcome {
    Exited(ExitStatus),
    CannotRun(std::io::Error),
}

/// Takes messages and runs `job.command` for each until Ctrl-C, then
/// waits for the running ones.
pub async fn run(
    mq: &Mq,
    worker: Worker,
    job: Job,
    printer: &mut Printer,
    stop: &mut Stop,
    live: &mut LiveFile,
) -> anyhow::Result<()> {
    let command = Arc::new(job.command);
    let mut events = mq.events();
    let mut running: JoinSet<(Taken, Outcome)> = JoinSet::new();
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut routes = tokio::time::interval(ROUTE_TICK);
    routes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut stopping = false;
    loop {
        if !stopping && running.len() < job.parallel {
            for taken in worker.take(job.parallel - running.len()).await? {
                running.spawn(run_one(command.clone(), taken, worker.clone()));
            }
        }
        if stopping && running.is_empty() {
            return Ok(());
        }
        tokio::select! {
            Some(done) = running.join_next(), if !running.is_empty() => {
                let (taken, outcome) = done?;
                finish(&worker, printer, &command, taken, outcome).await?;
            }
            _ = events.next(), if !stopping => {}
            _ = poll.tick(), if !stopping => {}
            _ = routes.tick() => live.update(mq.connections().await?),
            () = stop.recv(), if !stopping => {
                stopping = true;
                if !running.is_empty() {
                    eprintln!("stopping: waiting for {} running job(s) to finish", running.len());
                }
            }
        }
    }
}

/// Archives, releases or reports `taken` as its run ended.
async fn finish(
    worker: &Worker,
    printer: &mut Printer,
    command: &[String],
    taken: Taken,
    outcome: Outcome,
) -> anyhow::Result<()> {
    let l = taken.lease;
    let name = format!("{}@{}", l.from, l.seq);
    let status = match outcome {
        Outcome::Exited(status) if status.success() => {
            if worker.archive(&l).await? {
                printer.line(&format!("DONE {name} delivery={}", taken.delivery))?;
            } else {
                printer.line(&format!("DONE {name} delivery={} (archived already, by a worker whose lease had lapsed)", taken.delivery))?;
            }
            return Ok(());
        }
        Outcome::Exited(status) => describe(status),
        Outcome::CannotRun(e) => {
            // Not the message's fault: give it back at once, and stop.
            let _ = worker.release(&l, Some(Duration::ZERO)).await;
            anyhow::bail!("cannot run `{}`: {e}", command[0]);
        }
    };
    match worker.release(&l, None).await {
        Ok(Released::RetryAt(at)) => {
            let wait = at.saturating_since(peermq_tokio::wall_clock());
            printer.line(&format!(
                "FAILED {name} delivery={} ({status}); retry in {:.1}s",
                taken.delivery,
                wait.as_secs_f64()
            ))?;
        }
        Ok(Released::DeadLettered) => printer.line(&format!(
            "DEAD {name} delivery={} ({status}); moved to `dead` after the maximum deliveries",
            taken.delivery
        ))?,
        Err(e) => printer.line(&format!(
            "FAILED {name} delivery={} ({status}); {e}",
            taken.delivery
        ))?,
    }
    Ok(())
}

fn describe(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit {code}"),
        None => format!("{status}"),
    }
}

/// Runs the command for one message: the message on its standard input,
/// `PEERMQ_FROM`, `PEERMQ_SEQ` and `PEERMQ_DELIVERY` in its environment;
/// extends the lease while it runs.
async fn run_one(command: Arc<Vec<String>>, taken: Taken, worker: Worker) -> (Taken, Outcome) {
    let l = taken.lease;
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..])
        .env("PEERMQ_FROM", l.from.to_string())
        .env("PEERMQ_SEQ", l.seq.to_string())
        .env("PEERMQ_DELIVERY", taken.delivery.to_string())
        .stdin(Stdio::piped());
    // Its own process group: Ctrl-C at the terminal stops the worker from
    // taking more, and lets running jobs finish rather than killing them.
    #[cfg(unix)]
    cmd.process_group(0);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return (taken, Outcome::CannotRun(e)),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let data = taken.data.clone();
        // A command that does not read its input must not block us.
        tokio::spawn(async move {
            let _ = stdin.write_all(&data).await;
        });
    }
    let every = (worker.lease_time() / 3).max(Duration::from_millis(100));
    let mut extend = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            status = child.wait() => {
                return match status {
                    Ok(status) => (taken, Outcome::Exited(status)),
                    Err(e) => (taken, Outcome::CannotRun(e)),
                };
            }
            _ = extend.tick() => {
                if let Err(e) = worker.extend(&l).await {
                    tracing::warn!(error = %e, "cannot extend the lease of a running job");
                }
            }
        }
    }
}

/// The retry policy `work` uses: `backoff` between deliveries, at most
/// `max_deliveries`.
pub fn policy(backoff: Vec<Duration>, max_deliveries: u32) -> RetryPolicy {
    RetryPolicy {
        backoff,
        max_deliveries,
    }
}

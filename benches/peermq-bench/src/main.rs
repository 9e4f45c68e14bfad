//! `peermq-bench`: peermq end to end, on tokio with LMDB over loopback TCP
//! (and, with `--transports tcp,iroh`, over iroh beside it, relays off),
//! in the phases and JSON-line fields of the hypercore JS anchor
//! (`shared/anchors/hypercore-js/bench.mjs`), so the two compare directly.
//!
//! Like the anchor, the orchestrator runs every role in a fresh child
//! process (itself, re-executed with `role ...`) and only relays small
//! control lines over the children's stdin and stdout. With `--compare-js`,
//! one run of the anchor follows each of our no-sync runs, so that a
//! machine's drift in speed reaches both medians alike. The phases:
//!
//! | phase | processes | timed |
//! |---|---|---|
//! | `append_b1`, `append_b100` | one, no network | `send` one at a time, or `send_batch` of 100 |
//! | `replicate_full` | writer serves the `append_b100` directory, a fresh reader dials it | connect to last block stored |
//! | `replicate_sparse` | same, reader with prefetch off `get`s every 100th block | connect to last of those stored |
//! | `latency` | writer sends one message stamped with the wall clock, the reader's live stream yields it | stamp to yield, ping-pong paced |
//! | `work` | `--workers` processes share the `replicate_full` reader's directory, each taking batches of jobs with leases, running nothing, archiving each | first take to last archive; take-to-archive p50/p99 per job |
//! | `work_batch` | with `--work-batch-archive`: as `work`, each worker archiving a taken batch in one commit | as `work` |
//! | `archive_each` | one process archives every message of that directory, one commit each: what one commit per job allows | first to last archive |
//! | `mailbox_push` | a mailbox runs; the reader names it; the writer, serving the `append_b100` directory, learns the reader's mail goes there and pushes it all | writer dials the mailbox to the mailbox holding the last block |
//! | `mailbox_collect` | the writer gone, the reader opens, dials its mailbox as it does, and downloads its mail there | open to last block stored (compare `replicate_full`, direct: connect to last block) |
//!
//! Every phase runs in two durability modes: `nosync` (LMDB `MDB_NOSYNC`:
//! commits survive a process crash, not a power loss; the anchor's mode,
//! since hypercore-storage does not fsync per append) and `fsync` (every
//! commit reaches the disk before `send` returns or a block is acknowledged;
//! peermq's default).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use futures_lite::StreamExt;
use peermq::{Config, LmdbOptions, Mailbox, PeerId, Prefetch};
use peermq_iroh::{Iroh, Relays};
use peermq_tokio::{
    AsyncRead, AsyncWrite, BoxFuture, Connection, Listener, Mq, MqEvent, Runtime, StaticDiscovery,
    TokioRuntime, Transport,
};
use serde_json::{json, Value};

/// peermq end-to-end benchmark (tokio, LMDB, loopback TCP).
#[derive(Parser, Debug)]
#[command(name = "peermq-bench", version, about)]
struct Cli {
    /// Messages for append_b100 and the replication phases.
    #[arg(long, default_value_t = 100_000)]
    n: u64,
    /// Messages for append_b1.
    #[arg(long = "n-b1", default_value_t = 20_000)]
    n_b1: u64,
    /// Bytes per message.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// replicate_sparse reads every this-many-th block.
    #[arg(long = "sparse-every", default_value_t = 100)]
    sparse_every: u64,
    /// Latency samples.
    #[arg(long, default_value_t = 1000)]
    lat: u64,
    /// Latency samples discarded first.
    #[arg(long = "lat-warmup", default_value_t = 20)]
    lat_warmup: u64,
    /// Worker processes in the `work` phase.
    #[arg(long, default_value_t = 4)]
    workers: u64,
    /// Jobs a worker takes at once in the `work` phase.
    #[arg(long = "take-batch", default_value_t = 4)]
    take_batch: u64,
    /// Also run `work_batch`: the `work` phase with each worker archiving
    /// a taken batch in one commit (`Worker::archive_all`).
    #[arg(long = "work-batch-archive")]
    work_batch_archive: bool,
    /// Runs per phase; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Which durability modes to run.
    #[arg(long, value_enum, default_value_t = Modes::Both)]
    durability: Modes,
    /// The transports to run every phase over, in turn within each run
    /// (for example `tcp,iroh`, relays off, over loopback); phases over a
    /// transport other than TCP are reported as `PHASE@TRANSPORT`.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "tcp")]
    transports: Vec<Net>,
    /// Whether messages are sealed to their recipient, in turn within each
    /// run (`plain,sealed` measures both in one run); phases of sealed
    /// messages are reported as `PHASE+sealed`.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "sealed")]
    sealing: Vec<Sealing>,
    /// Also run the JS anchor, one of its runs after each of our no-sync
    /// runs, and print the ratios of the medians.
    #[arg(long = "compare-js")]
    compare_js: bool,
    /// Where the JS anchor is (copied to a temporary directory, where
    /// `npm ci` installs it unless it brings node_modules).
    #[arg(long = "js-dir", default_value = "../shared/anchors/hypercore-js")]
    js_dir: PathBuf,
    /// Also run the NATS JetStream work-queue anchor, with confirmed and
    /// with fire-and-forget acks, after each of our no-sync runs, and
    /// print the `work` phase's ratios to it.
    #[arg(long = "compare-nats")]
    compare_nats: bool,
    /// Where the NATS anchor's bench.py is.
    #[arg(long = "nats-dir", default_value = "../shared/anchors/nats-jetstream")]
    nats_dir: PathBuf,
    /// The Python that runs it (with nats-py installed); it needs
    /// nats-server on PATH.
    #[arg(long = "nats-python", default_value = "python3")]
    nats_python: PathBuf,
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Modes {
    Both,
    Nosync,
    Fsync,
}

/// How the nodes connect.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Net {
    /// TCP (the default transport).
    Tcp,
    /// iroh (QUIC), relays off.
    Iroh,
}

/// Whether messages are sealed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Sealing {
    /// In clear inside the Noise session (`Config::seal_messages` off).
    Plain,
    /// Sealed to the recipient (the default).
    Sealed,
}

/// What a child process does.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// Creates the node's identity and prints its id.
    Init,
    /// Appends messages (`append_b1`, `append_b100`).
    Append,
    /// Serves a directory to a reader.
    Serve,
    /// Reads a served feed, fully or sparsely.
    Fetch,
    /// Sends stamped messages one at a time (`latency`).
    LiveWriter,
    /// Reads them live and reports each delay.
    LiveReader,
    /// Takes jobs with leases and archives each (`work`).
    Worker,
    /// Archives every unread message, one commit each (`work`'s baseline).
    ArchiveEach,
    /// Runs a mailbox (`mailbox_push`, `mailbox_collect`).
    Mailbox,
    /// Names a mailbox, tells it, and exits.
    NameMailbox,
    /// Pushes the directory's mail to the recipient's mailbox.
    Push,
}

/// How a fetching reader downloads.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum FetchMode {
    /// Everything, as it is announced.
    Full,
    /// Only the blocks it asks for.
    Sparse,
}

/// A value's name on the command line.
fn value_name(v: impl clap::ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

/// A child process's job (used by the orchestrator; not for people).
#[derive(Subcommand, Debug)]
enum Role {
    #[command(hide = true)]
    Role {
        #[arg(long, value_enum)]
        role: Part,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        peer: Option<PeerId>,
        #[arg(long)]
        addr: Option<SocketAddr>,
        #[arg(long, default_value_t = 0)]
        n: u64,
        #[arg(long, default_value_t = 1)]
        batch: u64,
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long, default_value_t = 100)]
        every: u64,
        #[arg(long, default_value_t = 0)]
        warmup: u64,
        #[arg(long, value_enum, default_value_t = FetchMode::Full)]
        mode: FetchMode,
        #[arg(long)]
        sync: bool,
        #[arg(long, value_enum, default_value_t = Net::Tcp)]
        transport: Net,
        #[arg(long)]
        plain: bool,
        #[arg(long)]
        mailbox: Option<PeerId>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.role {
        Some(Role::Role {
            role,
            ref dir,
            peer,
            addr,
            n,
            batch,
            size,
            every,
            warmup,
            mode,
            sync,
            transport,
            plain,
            mailbox,
        }) => {
            let job = Job {
                dir: dir.clone(),
                peer,
                addr,
                n,
                batch,
                size,
                every,
                warmup,
                full: mode == FetchMode::Full,
                sync,
                transport,
                seal: !plain,
                mailbox,
            };
            block_on(run_role(role, job))
        }
        None => orchestrate(&cli),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    rt.block_on(f)
}

// ------------------------------------------------------------------ roles

struct Job {
    dir: PathBuf,
    peer: Option<PeerId>,
    addr: Option<SocketAddr>,
    n: u64,
    batch: u64,
    size: usize,
    every: u64,
    warmup: u64,
    full: bool,
    sync: bool,
    transport: Net,
    /// Whether the node seals what it sends.
    seal: bool,
    /// The mailbox to name, push to, or collect from.
    mailbox: Option<PeerId>,
}

fn lmdb(sync: bool) -> LmdbOptions {
    LmdbOptions {
        sync,
        ..LmdbOptions::default()
    }
}

/// Opens a node of the job on tokio, over the job's transport, counting
/// the bytes of the connections it dials into `counts` if given.
fn open(job: &Job, config: Config, counts: Option<Arc<Counts>>) -> anyhow::Result<Mq> {
    // The bench runs one process per node on a host it controls, nothing
    // snapshots or forks it: signing ahead is safe here, and measured.
    let config = Config {
        seal_messages: job.seal,
        ..config
    };
    let mut builder = Mq::builder(&job.dir)
        .config(config)
        .sign_ahead(true)
        .lmdb_options(lmdb(job.sync))
        .local_discovery(false);
    if let (Some(mailbox), Some(addr)) = (job.mailbox, job.addr) {
        // A node dials its own mailboxes as it opens: known at once, as a
        // mailbox's address is in a deployment.
        let known = StaticDiscovery::new();
        known.insert(mailbox, addr);
        builder = builder.discovery(Arc::new(known));
    }
    let net = job.transport;
    builder = builder.transport_for(move |key| {
        let inner = match net {
            Net::Tcp => TokioRuntime::new().default_transport(),
            Net::Iroh => Iroh::new()
                .relays(Relays::Disabled)
                .bind_addr("127.0.0.1:0".parse().expect("an address"))
                .transport(key)?,
        };
        Ok(match counts {
            Some(counts) => Arc::new(Counting { inner, counts }),
            None => inner,
        })
    });
    Ok(builder.open(TokioRuntime::new())?)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| r1(kb / 1024.0))
}

/// Resident anonymous and file-backed memory now (LMDB's map pages count as
/// file-backed), in MiB: tells what a peak is made of.
fn rss_split_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| r1(kb / 1024.0))
    };
    (get("RssAnon:"), get("RssFile:"))
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Distinct, incompressible messages, made as they are needed (and never
/// timed): holding all of them at once would add their megabytes to the
/// peak RSS the bench reports for peermq.
fn payloads(n: u64, size: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n).map(move |i| {
        let mut b = vec![0u8; size];
        for chunk in b.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let bytes = x.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        let n = b.len().min(4);
        b[..n].copy_from_slice(&(i as u32).to_le_bytes()[..n]);
        b
    })
}

/// Lines from the orchestrator, read on a thread so the runtime never
/// blocks on stdin.
fn stdin_lines() -> async_channel::Receiver<String> {
    let (tx, rx) = async_channel::bounded(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send_blocking(line).is_err() {
                break;
            }
        }
    });
    rx
}

async fn run_role(role: Part, job: Job) -> anyhow::Result<()> {
    match role {
        Part::Append => role_append(job).await,
        Part::Serve => role_serve(job).await,
        Part::Fetch => role_fetch(job).await,
        Part::Worker => role_worker(job).await,
        Part::ArchiveEach => role_archive_each(job).await,
        Part::LiveWriter => role_live_writer(job).await,
        Part::LiveReader => role_live_reader(job).await,
        Part::Mailbox => role_mailbox(job).await,
        Part::NameMailbox => role_name_mailbox(job).await,
        Part::Push => role_push(job).await,
        Part::Init => {
            let mq = open(&job, Config::default(), None)?;
            say(&mq.id().await.to_string());
            mq.shutdown().await?;
            Ok(())
        }
    }
}

fn peer_of(job: &Job) -> anyhow::Result<PeerId> {
    job.peer.ok_or_else(|| anyhow!("--peer is required"))
}

async fn role_append(job: Job) -> anyhow::Result<()> {
    let to = peer_of(&job)?;
    let mq = open(&job, Config::default(), None)?;
    let mut msgs = payloads(job.n, job.size).peekable();
    let mut timed = Duration::ZERO;
    while msgs.peek().is_some() {
        let batch: Vec<Vec<u8>> = msgs.by_ref().take(job.batch.max(1) as usize).collect();
        let t0 = std::time::Instant::now();
        if job.batch <= 1 {
            for m in batch {
                mq.send(to, m).await?;
            }
        } else {
            mq.send_batch(to, batch).await?;
        }
        timed += t0.elapsed();
    }
    let secs = timed.as_secs_f64();
    let (anon, file) = rss_split_mib();
    mq.shutdown().await?;
    say(&json!({"secs": r3(secs), "msgs_per_s": (job.n as f64 / secs).round(), "peak_rss_MiB": peak_rss_mib(), "rss_anon_MiB": anon, "rss_file_MiB": file}).to_string());
    Ok(())
}

/// Opens the job's node, authorizes `reader`, listens on loopback, and
/// returns the node, its address and the orchestrator's commands.
async fn listen_for(
    job: &Job,
    reader: PeerId,
) -> anyhow::Result<(Mq, SocketAddr, async_channel::Receiver<String>)> {
    let mq = open(job, Config::default(), None)?;
    mq.add_peer(reader, None).await?;
    let addr = mq.listen("127.0.0.1:0".parse()?).await?;
    Ok((mq, addr, stdin_lines()))
}

async fn role_serve(job: Job) -> anyhow::Result<()> {
    let reader = peer_of(&job)?;
    let (mq, addr, lines) = listen_for(&job, reader).await?;
    say(&format!("listening {addr} {}", mq.id().await));
    while let Ok(line) = lines.recv().await {
        if line == "stats" {
            break;
        }
    }
    say(&json!({"peak_rss_MiB": peak_rss_mib()}).to_string());
    mq.shutdown().await?;
    Ok(())
}

async fn role_fetch(job: Job) -> anyhow::Result<()> {
    let writer = peer_of(&job)?;
    let addr = job.addr.ok_or_else(|| anyhow!("--addr is required"))?;
    let counts = Arc::new(Counts::default());
    let config = Config {
        prefetch: if job.full {
            Prefetch::All
        } else {
            Prefetch::Window(0)
        },
        ..Config::default()
    };
    // A reader of its mailbox dials it as it opens: the time counts from
    // before that.
    let opened = std::time::Instant::now();
    let mq = open(&job, config, Some(counts.clone()))?;
    // Directly from the writer, or from the mailbox at `addr` holding its
    // mail (the writer is gone then).
    let source = job.mailbox.unwrap_or(writer);
    if source != writer {
        // Mail is taken from authorized senders only.
        mq.add_peer(writer, None).await?;
    }
    mq.add_peer(source, Some(addr)).await?;
    let mut events = mq.events();
    let wanted: Vec<u64> = if job.full {
        Vec::new()
    } else {
        (0..job.n).step_by(job.every.max(1) as usize).collect()
    };
    let t0 = match job.mailbox {
        Some(_) => opened,
        None => std::time::Instant::now(),
    };
    mq.connect(source).await?;
    let count = if job.full {
        let last = job.n - 1;
        loop {
            match events.next().await {
                Some(MqEvent::Message { from, seq }) if from == writer && seq == last => break,
                Some(MqEvent::Lagged { .. }) => {
                    // Fell behind the event stream: watch the counts instead.
                    loop {
                        let st = mq.peers().await?;
                        if st.iter().any(|s| s.peer == writer && s.received >= job.n) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    break;
                }
                Some(_) => {}
                None => bail!("the node stopped"),
            }
        }
        job.n
    } else {
        let mut tasks = Vec::with_capacity(wanted.len());
        for &seq in &wanted {
            let mq = mq.clone();
            tasks.push(tokio::spawn(async move { mq.get(writer, seq).await }));
        }
        for t in tasks {
            if t.await??.is_none() {
                bail!("a block was cleared");
            }
        }
        wanted.len() as u64
    };
    let secs = t0.elapsed().as_secs_f64();
    let wire = counts.rx.load(Ordering::Relaxed) + counts.tx.load(Ordering::Relaxed);
    let st = mq.peers().await?;
    let received = st
        .iter()
        .find(|s| s.peer == writer)
        .map_or(0, |s| s.received);
    if received != count {
        bail!("downloaded {received} blocks, expected {count}");
    }
    say(&json!({
        "secs": r3(secs),
        "msgs_per_s": (count as f64 / secs).round(),
        "wire_bytes_per_block": r3(wire as f64 / count as f64),
        "peak_rss_MiB": peak_rss_mib(),
    })
    .to_string());
    mq.shutdown().await?;
    Ok(())
}

async fn role_live_writer(job: Job) -> anyhow::Result<()> {
    let reader = peer_of(&job)?;
    let (mq, addr, lines) = listen_for(&job, reader).await?;
    let template = payloads(1, job.size.max(16))
        .next()
        .ok_or_else(|| anyhow!("no payload"))?;
    say(&format!("listening {addr} {}", mq.id().await));
    while let Ok(line) = lines.recv().await {
        if line == "stats" {
            break;
        }
        let Some(i) = line
            .strip_prefix("append ")
            .and_then(|i| i.parse::<u32>().ok())
        else {
            continue;
        };
        let mut b = template.clone();
        b[8..12].copy_from_slice(&i.to_le_bytes());
        b[..8].copy_from_slice(&wall_ns().to_le_bytes());
        mq.send(reader, b).await?;
    }
    say(&json!({"peak_rss_MiB": peak_rss_mib()}).to_string());
    mq.shutdown().await?;
    Ok(())
}

async fn role_live_reader(job: Job) -> anyhow::Result<()> {
    let writer = peer_of(&job)?;
    let addr = job.addr.ok_or_else(|| anyhow!("--addr is required"))?;
    let mq = open(&job, Config::default(), None)?;
    mq.add_peer(writer, Some(addr)).await?;
    let mut events = mq.events();
    mq.connect(writer).await?;
    while !matches!(events.next().await, Some(MqEvent::Connected { .. }) | None) {}
    let mut stream = mq.read_stream(Mailbox::Unread, true);
    say("ready");
    let total = job.n + job.warmup;
    let mut lat = Vec::with_capacity(job.n as usize);
    for i in 0..total {
        let r = stream
            .next()
            .await
            .ok_or_else(|| anyhow!("stream ended"))??;
        let stamp = u64::from_le_bytes(r.data[..8].try_into()?);
        let us = wall_ns().saturating_sub(stamp) as f64 / 1000.0;
        if i >= job.warmup {
            lat.push(us);
        }
        say(&format!("ack {i}"));
    }
    lat.sort_by(f64::total_cmp);
    say(&json!({
        "p50_us": r3(pct(&lat, 50.0)),
        "p99_us": r3(pct(&lat, 99.0)),
        "peak_rss_MiB": peak_rss_mib(),
    })
    .to_string());
    mq.shutdown().await?;
    Ok(())
}

/// Runs a mailbox; on `watch N`, says `held` once it holds N blocks.
async fn role_mailbox(job: Job) -> anyhow::Result<()> {
    let mut builder = Mq::builder(&job.dir)
        .config(Config {
            seal_messages: job.seal,
            ..Config::default()
        })
        .mailbox(peermq::MailboxLimits {
            max_sender_bytes: u64::MAX,
            max_recipient_bytes: u64::MAX,
            ..peermq::MailboxLimits::default()
        })
        .lmdb_options(lmdb(job.sync))
        .local_discovery(false);
    builder = builder.transport(TokioRuntime::new().default_transport());
    let mq = builder.open(TokioRuntime::new())?;
    let addr = mq.listen("127.0.0.1:0".parse()?).await?;
    say(&format!("listening {addr} {}", mq.id().await));
    let lines = stdin_lines();
    while let Ok(line) = lines.recv().await {
        let Some(n) = line
            .strip_prefix("watch ")
            .and_then(|n| n.parse::<u64>().ok())
        else {
            break;
        };
        loop {
            let held: u64 = mq.mail_status().await?.carried.iter().map(|c| c.held).sum();
            if held >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        say("held");
    }
    say(&json!({"peak_rss_MiB": peak_rss_mib()}).to_string());
    mq.shutdown().await?;
    Ok(())
}

/// Names the mailbox at `addr` and waits until it has been told.
async fn role_name_mailbox(job: Job) -> anyhow::Result<()> {
    let mailbox = job
        .mailbox
        .ok_or_else(|| anyhow!("--mailbox is required"))?;
    let mq = open(&job, Config::default(), None)?;
    mq.add_peer(mailbox, job.addr).await?;
    let mut events = mq.events();
    mq.add_mailbox(mailbox).await?;
    while !matches!(events.next().await, Some(MqEvent::Connected { peer }) if peer == mailbox) {}
    // The list goes out on connect; shutdown flushes it.
    mq.shutdown().await?;
    Ok(())
}

/// Learns that `peer`'s mail goes through the mailbox at `addr`, and, on
/// `go`, pushes it there; stops on `stop`.
async fn role_push(job: Job) -> anyhow::Result<()> {
    let to = peer_of(&job)?;
    let mailbox = job
        .mailbox
        .ok_or_else(|| anyhow!("--mailbox is required"))?;
    let mq = open(&job, Config::default(), None)?;
    mq.add_peer(mailbox, job.addr).await?;
    let lines = stdin_lines();
    say(&format!("ready {}", mq.id().await));
    if lines.recv().await.ok().as_deref() != Some("go") {
        bail!("expected go");
    }
    mq.add_route(to, mailbox).await?;
    while let Ok(line) = lines.recv().await {
        if line == "stop" {
            break;
        }
    }
    say(&json!({"peak_rss_MiB": peak_rss_mib()}).to_string());
    mq.shutdown().await?;
    Ok(())
}

/// Nearest-rank percentile, as the anchor computes it.
/// Takes jobs in batches with leases, "runs" each (nothing) and archives
/// it, until none is left; reports its span and every job's
/// take-to-archive time.
async fn role_worker(job: Job) -> anyhow::Result<()> {
    let mq = open(&job, Config::default(), None)?;
    let worker = mq.worker(peermq::RetryPolicy::default(), Duration::from_secs(60));
    let lines = stdin_lines();
    say("ready");
    if lines.recv().await.ok().as_deref() != Some("go") {
        bail!("expected go");
    }
    let (mut first, mut last, mut done) = (0u64, 0u64, 0u64);
    let mut latencies = Vec::new();
    loop {
        let t0 = std::time::Instant::now();
        let start = wall_ns();
        let taken = worker.take(job.batch as usize).await?;
        if first == 0 {
            first = start;
        }
        if taken.is_empty() {
            let left = mq.categories().await?[0].messages;
            if left == 0 {
                break;
            }
            // The others hold the rest: look again shortly.
            tokio::time::sleep(Duration::from_micros(200)).await;
            continue;
        }
        if job.every == 0 {
            let leases: Vec<peermq::Lease> = taken.iter().map(|t| t.lease).collect();
            if worker.archive_all(&leases).await?.contains(&false) {
                bail!("a job was archived by another worker");
            }
            let each = t0.elapsed().as_secs_f64() * 1e6;
            latencies.extend(std::iter::repeat_n(each, taken.len()));
            done += taken.len() as u64;
        } else {
            for t in &taken {
                if !worker.archive(&t.lease).await? {
                    bail!("job {} was archived by another worker", t.lease.seq);
                }
                latencies.push(t0.elapsed().as_secs_f64() * 1e6);
                done += 1;
            }
        }
        last = wall_ns();
    }
    say(&json!({
        "first_ns": first,
        "last_ns": last,
        "done": done,
        "latencies_us": latencies.iter().map(|l| r1(*l)).collect::<Vec<_>>(),
        "peak_rss_MiB": peak_rss_mib(),
    })
    .to_string());
    mq.shutdown().await?;
    Ok(())
}

/// Archives every unread message, one at a time: one commit per job.
async fn role_archive_each(job: Job) -> anyhow::Result<()> {
    let mq = open(&job, Config::default(), None)?;
    let unread: Vec<(PeerId, u64)> = {
        let mut records = mq.read_stream(Mailbox::Unread, false);
        let mut out = Vec::new();
        while let Some(r) = records.next().await {
            let r = r?;
            out.push((r.from, r.seq));
        }
        out
    };
    let t0 = std::time::Instant::now();
    for &(from, seq) in &unread {
        mq.archive(from, seq).await?;
    }
    let secs = t0.elapsed().as_secs_f64();
    say(&json!({
        "secs": r3(secs),
        "msgs_per_s": (unread.len() as f64 / secs).round(),
        "peak_rss_MiB": peak_rss_mib(),
    })
    .to_string());
    mq.shutdown().await?;
    Ok(())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let k = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[k.clamp(1, sorted.len()) - 1]
}

// ------------------------------------------------- wire byte counting

/// Bytes through the connections a node dials, both ways, as the anchor
/// counts `socket.bytesRead + bytesWritten` on the reader. Over iroh these
/// are the stream's bytes (QUIC's own framing and encryption come on top).
#[derive(Debug, Default)]
struct Counts {
    rx: Arc<AtomicU64>,
    tx: Arc<AtomicU64>,
}

/// A transport whose dialed connections are counted into [`Counts`].
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn Transport>,
    counts: Arc<Counts>,
}

impl Counts {
    /// `t`, its bytes counted here.
    fn count(&self, t: Connection) -> Connection {
        Connection {
            reader: Box::new(Counted {
                inner: t.reader,
                count: self.rx.clone(),
            }),
            writer: Box::new(Counted {
                inner: t.writer,
                count: self.tx.clone(),
            }),
            remote: t.remote,
            route: t.route,
        }
    }
}

struct Counted<T> {
    inner: T,
    count: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.count.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.count.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

impl Transport for Counting {
    fn connect(
        &self,
        peer: Option<PeerId>,
        addr: SocketAddr,
    ) -> BoxFuture<'static, std::io::Result<Connection>> {
        let counts = self.counts.clone();
        let connect = self.inner.connect(peer, addr);
        Box::pin(async move { Ok(counts.count(connect.await?)) })
    }

    fn connect_key(
        &self,
        peer: PeerId,
        hints: &[SocketAddr],
    ) -> Option<BoxFuture<'static, std::io::Result<Connection>>> {
        let counts = self.counts.clone();
        let connect = self.inner.connect_key(peer, hints)?;
        Some(Box::pin(async move { Ok(counts.count(connect.await?)) }))
    }

    fn bind(&self, addr: SocketAddr) -> BoxFuture<'static, std::io::Result<Box<dyn Listener>>> {
        self.inner.bind(addr)
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        self.inner.close()
    }
}

// ------------------------------------------------------- orchestrator

/// One phase's figures, in the anchor's field names.
#[derive(Clone, Debug, Default)]
struct Row {
    phase: String,
    durability: String,
    msgs_per_s: Option<f64>,
    secs: Option<f64>,
    wire_bytes_per_block: Option<f64>,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    peak_rss_mib: Option<f64>,
}

impl Row {
    fn to_json(&self, implementation: &str) -> Value {
        json!({
            "impl": implementation,
            "phase": self.phase,
            "durability": self.durability,
            "msgs_per_s": self.msgs_per_s,
            "secs": self.secs,
            "wire_bytes_per_block": self.wire_bytes_per_block,
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "peak_rss_MiB": self.peak_rss_mib,
        })
    }
}

struct Kid {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    what: String,
}

impl Kid {
    fn spawn(role: Part, args: &[(&str, String)]) -> anyhow::Result<Kid> {
        let role = value_name(role);
        let exe = std::env::current_exe().context("finding our own executable")?;
        let mut cmd = Command::new(exe);
        cmd.arg("role").arg("--role").arg(&role);
        for (k, v) in args {
            if v.is_empty() {
                cmd.arg(format!("--{k}"));
            } else {
                cmd.arg(format!("--{k}")).arg(v);
            }
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting the {role} process"))?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        let stdout = BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?);
        Ok(Kid {
            child,
            stdin,
            stdout,
            what: role,
        })
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let mut s = String::new();
        if self.stdout.read_line(&mut s)? == 0 {
            bail!("the {} process exited early", self.what);
        }
        Ok(s.trim_end().to_string())
    }

    fn json(&mut self) -> anyhow::Result<Value> {
        let l = self.line()?;
        serde_json::from_str(&l).with_context(|| format!("{} said {l:?}", self.what))
    }

    fn tell(&mut self, line: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        Ok(())
    }

    fn wait(mut self) -> anyhow::Result<()> {
        let status = self.child.wait()?;
        if !status.success() {
            bail!("the {} process failed: {status}", self.what);
        }
        Ok(())
    }
}

fn num(v: &Value, k: &str) -> Option<f64> {
    match v.get(k)? {
        Value::Number(n) => n.as_f64(),
        // A summary field that varied between runs: [median, min, max].
        Value::Array(a) => a.first().and_then(Value::as_f64),
        _ => None,
    }
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        // LMDB's lock file belongs to whoever opens the copy.
        if e.file_name() == "lock.mdb" {
            continue;
        }
        std::fs::copy(e.path(), to.join(e.file_name()))?;
    }
    Ok(())
}

fn listening(kid: &mut Kid) -> anyhow::Result<(String, String)> {
    let l = kid.line()?;
    let mut parts = l.split_whitespace();
    match (parts.next(), parts.next(), parts.next()) {
        (Some("listening"), Some(addr), Some(id)) => Ok((addr.to_string(), id.to_string())),
        _ => bail!("{} said {l:?}", kid.what),
    }
}

fn run_once(
    cli: &Cli,
    sync: bool,
    net: Net,
    sealing: Sealing,
    tmp: &Path,
) -> anyhow::Result<Vec<Row>> {
    let dur = if sync { "fsync" } else { "nosync" };
    let mut sync_arg: Vec<(&str, String)> = vec![("transport", value_name(net))];
    if sync {
        sync_arg.push(("sync", String::new()));
    }
    if sealing == Sealing::Plain {
        sync_arg.push(("plain", String::new()));
    }
    let with = |mut v: Vec<(&'static str, String)>| {
        v.extend(sync_arg.iter().cloned());
        v
    };
    let mut rows = Vec::new();
    let init = |name: &str| -> anyhow::Result<(PathBuf, String)> {
        let dir = tmp.join(name);
        let mut k = Kid::spawn(Part::Init, &[("dir", dir.display().to_string())])?;
        let id = k.line()?;
        k.wait()?;
        Ok((dir, id))
    };
    let (reader_tpl, reader_id) = init("reader-template")?;
    let (live_tpl, live_id) = init("live-reader-template")?;

    for (phase, n, batch) in [("append_b1", cli.n_b1, 1u64), ("append_b100", cli.n, 100)] {
        let dir = tmp.join(phase);
        let mut k = Kid::spawn(
            Part::Append,
            &with(vec![
                ("dir", dir.display().to_string()),
                ("peer", reader_id.clone()),
                ("n", n.to_string()),
                ("batch", batch.to_string()),
                ("size", cli.size.to_string()),
            ]),
        )?;
        let v = k.json()?;
        k.wait()?;
        rows.push(Row {
            phase: phase.into(),
            durability: dur.into(),
            msgs_per_s: num(&v, "msgs_per_s"),
            secs: num(&v, "secs"),
            peak_rss_mib: num(&v, "peak_rss_MiB"),
            ..Row::default()
        });
    }

    let seed = tmp.join("append_b100");
    for (phase, mode) in [
        ("replicate_full", FetchMode::Full),
        ("replicate_sparse", FetchMode::Sparse),
    ] {
        let mut w = Kid::spawn(
            Part::Serve,
            &with(vec![
                ("dir", seed.display().to_string()),
                ("peer", reader_id.clone()),
            ]),
        )?;
        let (addr, wid) = listening(&mut w)?;
        let rdir = tmp.join(format!("{phase}-reader"));
        copy_dir(&reader_tpl, &rdir)?;
        let mut r = Kid::spawn(
            Part::Fetch,
            &with(vec![
                ("dir", rdir.display().to_string()),
                ("peer", wid),
                ("addr", addr),
                ("n", cli.n.to_string()),
                ("every", cli.sparse_every.to_string()),
                ("mode", value_name(mode)),
            ]),
        )?;
        let v = r.json()?;
        r.wait()?;
        w.tell("stats")?;
        let ws = w.json()?;
        w.wait()?;
        rows.push(Row {
            phase: phase.into(),
            durability: dur.into(),
            msgs_per_s: num(&v, "msgs_per_s"),
            secs: num(&v, "secs"),
            wire_bytes_per_block: num(&v, "wire_bytes_per_block"),
            peak_rss_mib: max_opt(num(&v, "peak_rss_MiB"), num(&ws, "peak_rss_MiB")),
            ..Row::default()
        });
        if phase == "replicate_full" {
            rows.extend(work_phases(cli, dur, &rdir, tmp, &with)?);
        }
        let _ = std::fs::remove_dir_all(&rdir);
    }
    if net == Net::Tcp {
        rows.extend(mailbox_phases(
            cli,
            dur,
            &reader_tpl,
            &reader_id,
            tmp,
            &with,
        )?);
    }

    {
        let wdir = tmp.join("live-writer");
        let mut w = Kid::spawn(
            Part::LiveWriter,
            &with(vec![
                ("dir", wdir.display().to_string()),
                ("peer", live_id.clone()),
                ("size", cli.size.to_string()),
            ]),
        )?;
        let (addr, wid) = listening(&mut w)?;
        let rdir = tmp.join("live-reader");
        copy_dir(&live_tpl, &rdir)?;
        let mut r = Kid::spawn(
            Part::LiveReader,
            &with(vec![
                ("dir", rdir.display().to_string()),
                ("peer", wid),
                ("addr", addr),
                ("n", cli.lat.to_string()),
                ("warmup", cli.lat_warmup.to_string()),
            ]),
        )?;
        let ready = r.line()?;
        if ready != "ready" {
            bail!("live-reader said {ready:?}");
        }
        let total = cli.lat + cli.lat_warmup;
        let t0 = std::time::Instant::now();
        w.tell("append 0")?;
        let v = loop {
            let l = r.line()?;
            if let Some(i) = l.strip_prefix("ack ").and_then(|i| i.parse::<u64>().ok()) {
                if i + 1 < total {
                    w.tell(&format!("append {}", i + 1))?;
                }
                continue;
            }
            break serde_json::from_str::<Value>(&l).with_context(|| format!("{l:?}"))?;
        };
        let secs = t0.elapsed().as_secs_f64();
        r.wait()?;
        w.tell("stats")?;
        let ws = w.json()?;
        w.wait()?;
        rows.push(Row {
            phase: "latency".into(),
            durability: dur.into(),
            msgs_per_s: Some((total as f64 / secs).round()),
            secs: Some(r3(secs)),
            p50_us: num(&v, "p50_us"),
            p99_us: num(&v, "p99_us"),
            peak_rss_mib: max_opt(num(&v, "peak_rss_MiB"), num(&ws, "peak_rss_MiB")),
            ..Row::default()
        });
    }
    if net != Net::Tcp {
        // Appending never touches the network: its rows are TCP's.
        rows.retain(|r| !r.phase.starts_with("append"));
        for r in &mut rows {
            r.phase = format!("{}@{}", r.phase, value_name(net));
        }
    }
    if sealing == Sealing::Sealed && cli.sealing.len() > 1 {
        for r in &mut rows {
            r.phase = format!("{}+sealed", r.phase);
        }
    }
    Ok(rows)
}

/// `mailbox_push` and `mailbox_collect`: the `append_b100` directory's
/// mail for the reader of `reader_tpl` (id `reader_id`) through a mailbox.
fn mailbox_phases(
    cli: &Cli,
    dur: &str,
    reader_tpl: &Path,
    reader_id: &str,
    tmp: &Path,
    with: &dyn Fn(Args) -> Args,
) -> anyhow::Result<Vec<Row>> {
    let path = |name: &str| tmp.join(name).display().to_string();
    let mut m = Kid::spawn(Part::Mailbox, &with(vec![("dir", path("mailbox"))]))?;
    let (maddr, mid) = listening(&mut m)?;
    let rdir = tmp.join("mailbox-reader");
    copy_dir(reader_tpl, &rdir)?;
    Kid::spawn(
        Part::NameMailbox,
        &with(vec![
            ("dir", path("mailbox-reader")),
            ("mailbox", mid.clone()),
            ("addr", maddr.clone()),
        ]),
    )?
    .wait()?;
    let wdir = tmp.join("mailbox-writer");
    copy_dir(&tmp.join("append_b100"), &wdir)?;
    let mut w = Kid::spawn(
        Part::Push,
        &with(vec![
            ("dir", path("mailbox-writer")),
            ("peer", reader_id.to_string()),
            ("mailbox", mid.clone()),
            ("addr", maddr.clone()),
        ]),
    )?;
    let ready = w.line()?;
    let Some(wid) = ready.strip_prefix("ready ").map(str::to_string) else {
        bail!("push said {ready:?}");
    };
    m.tell(&format!("watch {}", cli.n))?;
    let t0 = std::time::Instant::now();
    w.tell("go")?;
    let held = m.line()?;
    let secs = t0.elapsed().as_secs_f64();
    if held != "held" {
        bail!("the mailbox said {held:?}");
    }
    w.tell("stop")?;
    let ws = w.json()?;
    w.wait()?;
    let mut rows = vec![Row {
        phase: "mailbox_push".into(),
        durability: dur.into(),
        msgs_per_s: Some((cli.n as f64 / secs).round()),
        secs: Some(r3(secs)),
        peak_rss_mib: num(&ws, "peak_rss_MiB"),
        ..Row::default()
    }];
    let mut r = Kid::spawn(
        Part::Fetch,
        &with(vec![
            ("dir", path("mailbox-reader")),
            ("peer", wid),
            ("mailbox", mid),
            ("addr", maddr),
            ("n", cli.n.to_string()),
            ("mode", value_name(FetchMode::Full)),
        ]),
    )?;
    let v = r.json()?;
    r.wait()?;
    m.tell("stats")?;
    let ms = m.json()?;
    m.wait()?;
    rows.push(Row {
        phase: "mailbox_collect".into(),
        durability: dur.into(),
        msgs_per_s: num(&v, "msgs_per_s"),
        secs: num(&v, "secs"),
        wire_bytes_per_block: num(&v, "wire_bytes_per_block"),
        peak_rss_mib: max_opt(num(&v, "peak_rss_MiB"), num(&ms, "peak_rss_MiB")),
        ..Row::default()
    });
    for d in ["mailbox", "mailbox-reader", "mailbox-writer"] {
        let _ = std::fs::remove_dir_all(tmp.join(d));
    }
    Ok(rows)
}

/// A child's command-line arguments, as `--name value` pairs.
type Args = Vec<(&'static str, String)>;

/// The `work` and `archive_each` phases, on copies of `jobs`, a reader's
/// directory holding every message unread.
fn work_phases(
    cli: &Cli,
    dur: &str,
    jobs: &Path,
    tmp: &Path,
    with: &dyn Fn(Args) -> Args,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let dir = tmp.join("work");
    rows.push(work_phase(cli, dur, jobs, &dir, with, false)?);
    if cli.work_batch_archive {
        rows.push(work_phase(cli, dur, jobs, &dir, with, true)?);
    }

    copy_dir(jobs, &dir)?;
    let mut k = Kid::spawn(
        Part::ArchiveEach,
        &with(vec![("dir", dir.display().to_string())]),
    )?;
    let v = k.json()?;
    k.wait()?;
    rows.push(Row {
        phase: "archive_each".into(),
        durability: dur.into(),
        msgs_per_s: num(&v, "msgs_per_s"),
        secs: num(&v, "secs"),
        peak_rss_mib: num(&v, "peak_rss_MiB"),
        ..Row::default()
    });
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows)
}

/// One `work` phase on a copy of `jobs` in `dir`; with `batch_archive`,
/// each worker archives a taken batch in one commit (`work_batch`).
fn work_phase(
    cli: &Cli,
    dur: &str,
    jobs: &Path,
    dir: &Path,
    with: &dyn Fn(Args) -> Args,
    batch_archive: bool,
) -> anyhow::Result<Row> {
    copy_dir(jobs, dir)?;
    let mut kids = (0..cli.workers)
        .map(|_| {
            Kid::spawn(
                Part::Worker,
                &with(vec![
                    ("dir", dir.display().to_string()),
                    ("batch", cli.take_batch.to_string()),
                    ("every", if batch_archive { "0" } else { "1" }.to_string()),
                ]),
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for k in &mut kids {
        let ready = k.line()?;
        if ready != "ready" {
            bail!("a worker said {ready:?}");
        }
    }
    for k in &mut kids {
        k.tell("go")?;
    }
    let (mut first, mut last, mut done) = (u64::MAX, 0u64, 0u64);
    let mut latencies = Vec::new();
    let mut rss: Option<f64> = None;
    for mut k in kids {
        let v = k.json()?;
        k.wait()?;
        first = first.min(num(&v, "first_ns").unwrap_or(f64::MAX) as u64);
        last = last.max(num(&v, "last_ns").unwrap_or(0.0) as u64);
        done += num(&v, "done").unwrap_or(0.0) as u64;
        rss = max_opt(rss, num(&v, "peak_rss_MiB"));
        if let Some(l) = v["latencies_us"].as_array() {
            latencies.extend(l.iter().filter_map(Value::as_f64));
        }
    }
    if done != cli.n {
        bail!("the workers archived {done} jobs of {}", cli.n);
    }
    latencies.sort_by(f64::total_cmp);
    let secs = last.saturating_sub(first) as f64 / 1e9;
    let _ = std::fs::remove_dir_all(dir);
    Ok(Row {
        phase: if batch_archive { "work_batch" } else { "work" }.into(),
        durability: dur.into(),
        msgs_per_s: Some((done as f64 / secs).round()),
        secs: Some(r3(secs)),
        p50_us: Some(r1(pct(&latencies, 50.0))),
        p99_us: Some(r1(pct(&latencies, 99.0))),
        peak_rss_mib: rss,
        ..Row::default()
    })
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let (lo, hi) = ((v.len() - 1) / 2, v.len() / 2);
    Some((v[lo] + v[hi]) / 2.0)
}

/// Per phase and mode, the median of each field over runs.
fn summarize(rows: &[Row]) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    for r in rows {
        if out
            .iter()
            .any(|o| o.phase == r.phase && o.durability == r.durability)
        {
            continue;
        }
        let same: Vec<&Row> = rows
            .iter()
            .filter(|o| o.phase == r.phase && o.durability == r.durability)
            .collect();
        let m = |f: fn(&Row) -> Option<f64>| median(same.iter().filter_map(|r| f(r)).collect());
        out.push(Row {
            phase: r.phase.clone(),
            durability: r.durability.clone(),
            msgs_per_s: m(|r| r.msgs_per_s),
            secs: m(|r| r.secs),
            wire_bytes_per_block: m(|r| r.wire_bytes_per_block),
            p50_us: m(|r| r.p50_us),
            p99_us: m(|r| r.p99_us),
            peak_rss_mib: m(|r| r.peak_rss_mib),
        });
    }
    out
}

/// Prints one run's rows of `name` as JSON lines and keeps them in `into`.
fn report_run(name: &str, run: usize, rows: Vec<Row>, into: &mut Vec<Row>) {
    for r in rows {
        let mut j = r.to_json(name);
        j["run"] = json!(run);
        println!("{j}");
        into.push(r);
    }
}

/// Copies the JS anchor into `tmp` and installs its dependencies there;
/// returns its directory.
fn prepare_js(cli: &Cli, tmp: &Path) -> anyhow::Result<PathBuf> {
    let src = &cli.js_dir;
    if !src.join("bench.mjs").exists() {
        bail!(
            "no JS anchor at {}; pass --js-dir pointing at shared/anchors/hypercore-js",
            src.display()
        );
    }
    let work = tmp.join("js-anchor");
    let status = Command::new("cp")
        .arg("-r")
        .arg(src)
        .arg(&work)
        .status()
        .context("copying the JS anchor")?;
    if !status.success() {
        bail!("copying the JS anchor failed");
    }
    if !work.join("node_modules").exists() {
        let status = Command::new("npm")
            .args(["ci", "--silent", "--no-audit", "--no-fund"])
            .current_dir(&work)
            .status()
            .context("running npm ci for the JS anchor (is Node.js installed?)")?;
        if !status.success() {
            bail!("npm ci failed in the JS anchor");
        }
    }
    Ok(work)
}

/// One run of the JS anchor (its own `--runs 1`), as rows.
/// One run of the NATS JetStream anchor in each ack mode: rows
/// `wq_work (acks confirmed)`, `wq_work (acks not confirmed)` and
/// `wq_latency`.
fn run_nats(cli: &Cli) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for ack in ["sync", "async"] {
        let out = Command::new(&cli.nats_python)
            .arg(cli.nats_dir.join("bench.py"))
            .args(["--runs", "1", "--jobs", &cli.n.to_string()])
            .args(["--workers", &cli.workers.to_string(), "--ack", ack])
            .stderr(Stdio::inherit())
            .output()
            .context(
                "running the NATS anchor (needs nats-server on PATH and nats-py in --nats-python)",
            )?;
        if !out.status.success() {
            bail!("the NATS anchor failed: {}", out.status);
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let phase = match (v["phase"].as_str(), ack) {
                (Some("wq_work"), "sync") => "wq_work (acks confirmed)",
                (Some("wq_work"), _) => "wq_work (acks not confirmed)",
                // The latency phase always confirms its ack.
                (Some("wq_latency"), "sync") => "wq_latency",
                _ => continue,
            };
            rows.push(Row {
                phase: phase.into(),
                durability: "no fsync per message".into(),
                msgs_per_s: num(&v, "jobs_per_s"),
                secs: num(&v, "secs"),
                p50_us: num(&v, "p50_us"),
                p99_us: num(&v, "p99_us"),
                peak_rss_mib: num(&v, "server_peak_rss_MiB"),
                ..Row::default()
            });
        }
    }
    Ok(rows)
}

/// The `work` phases (no fsync) against the NATS anchor: the issue's
/// targets, as JSON lines and a table.
fn report_nats(ours: &[Row], nats: &[Row]) {
    if nats.is_empty() {
        return;
    }
    eprintln!();
    eprintln!(
        "| NATS JetStream phase (Python client) | jobs/s | p50 µs | p99 µs | server peak RSS MiB |"
    );
    eprintln!("|---|---|---|---|---|");
    for r in nats {
        eprintln!(
            "| {} | {} | {} | {} | {} |",
            r.phase,
            fmt(r.msgs_per_s),
            fmt(r.p50_us),
            fmt(r.p99_us),
            fmt(r.peak_rss_mib)
        );
    }
    let find = |phase: &str| nats.iter().find(|r| r.phase == phase);
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    eprintln!();
    eprintln!(
        "| ours (nosync) vs NATS JetStream (its client is Python) | target | measured | met |"
    );
    eprintln!("|---|---|---|---|");
    for phase in ["work", "work_batch"] {
        let Some(work) = ours
            .iter()
            .find(|r| r.phase == phase && r.durability == "nosync")
        else {
            continue;
        };
        let mut checks = Vec::new();
        if let Some(n) = find("wq_work (acks confirmed)") {
            let r = ratio(work.msgs_per_s, n.msgs_per_s);
            checks.push(("jobs/s ≥ 10× (acks confirmed)", r, r >= Some(10.0)));
        }
        if let Some(n) = find("wq_work (acks not confirmed)") {
            let r = ratio(work.msgs_per_s, n.msgs_per_s);
            checks.push(("jobs/s ≥ 3× (acks not confirmed)", r, r >= Some(3.0)));
        }
        if let Some(n) = find("wq_latency") {
            let r = ratio(work.p50_us, n.p50_us);
            checks.push(("p50 ≤ 1/5", r, r.is_some_and(|r| r <= 0.2)));
        }
        for (what, v, ok) in checks {
            let line = json!({"type": "ratio", "phase": phase, "vs": "nats-jetstream", "target": what, "ratio": v.map(r3), "met": ok});
            println!("{line}");
            eprintln!(
                "| {phase} | {what} | {} | {} |",
                v.map_or("–".into(), |v| format!("{v:.3}")),
                if ok { "yes" } else { "no" }
            );
        }
    }
}

fn run_js(cli: &Cli, work: &Path, run: usize) -> anyhow::Result<Vec<Row>> {
    let out = Command::new("node")
        .arg("bench.mjs")
        .args(["--runs", "1"])
        .args(["--n", &cli.n.to_string()])
        .args(["--n-b1", &cli.n_b1.to_string()])
        .args(["--size", &cli.size.to_string()])
        .args(["--sparse-every", &cli.sparse_every.to_string()])
        .args(["--lat", &cli.lat.to_string()])
        .args(["--lat-warmup", &cli.lat_warmup.to_string()])
        .args([
            "--out",
            &work
                .join(format!("anchor-run{run}.jsonl"))
                .display()
                .to_string(),
        ])
        .current_dir(work)
        .stderr(Stdio::inherit())
        .output()
        .context("running the JS anchor (is Node.js installed?)")?;
    if !out.status.success() {
        bail!("the JS anchor failed: {}", out.status);
    }
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v.get("type").and_then(Value::as_str) != Some("summary") {
            continue;
        }
        let phase = v
            .get("phase")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let rss = num(&v, "peak_rss_MiB").or_else(|| {
            max_opt(
                num(&v, "reader_peak_rss_MiB"),
                num(&v, "writer_peak_rss_MiB"),
            )
        });
        let msgs = num(&v, "msgs_per_s").or_else(|| num(&v, "roundtrips_per_s"));
        rows.push(Row {
            phase,
            durability: "no fsync per append".into(),
            msgs_per_s: msgs,
            secs: num(&v, "secs").or_else(|| num(&v, "secs_total")),
            wire_bytes_per_block: num(&v, "wire_bytes_per_block"),
            p50_us: num(&v, "p50_us"),
            p99_us: num(&v, "p99_us"),
            peak_rss_mib: rss,
        });
    }
    Ok(rows)
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(x) if x >= 100.0 => format!("{}", x.round()),
        Some(x) => format!("{x:.1}"),
    }
}

fn orchestrate(cli: &Cli) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("peermq-bench-")
        .tempdir()
        .context("creating a temporary directory")?;
    let modes: Vec<bool> = match cli.durability {
        Modes::Both => vec![false, true],
        Modes::Nosync => vec![false],
        Modes::Fsync => vec![true],
    };
    let mut js_work = match cli.compare_js {
        true => Some(prepare_js(cli, tmp.path())?),
        false => None,
    };
    let mut js_failed = None;
    let mut nats_failed: Option<anyhow::Error> = None;
    let mut rows = Vec::new();
    let mut js_rows = Vec::new();
    let mut nats_rows = Vec::new();
    // Our runs and the anchor's alternate, so that both sample the same
    // spells of a machine whose speed drifts from one minute to the next.
    // The anchor never syncs, so its run follows our no-sync one.
    for run in 1..=cli.runs {
        for &sync in &modes {
            let dir = tmp.path().join(format!(
                "{}-run{run}",
                if sync { "fsync" } else { "nosync" }
            ));
            std::fs::create_dir_all(&dir)?;
            for &net in &cli.transports {
                for &sealing in &cli.sealing {
                    let dir = dir.join(format!("{}-{}", value_name(net), value_name(sealing)));
                    std::fs::create_dir_all(&dir)?;
                    let measured = run_once(cli, sync, net, sealing, &dir)?;
                    report_run("peermq", run, measured, &mut rows);
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
            if sync && modes.len() > 1 {
                continue;
            }
            if cli.compare_nats && nats_failed.is_none() {
                match run_nats(cli) {
                    Ok(nats) => report_run("nats-jetstream", run, nats, &mut nats_rows),
                    Err(e) => {
                        eprintln!("the NATS anchor failed in run {run}, so it runs no more: {e:#}");
                        nats_failed = Some(e);
                    }
                }
            }
            let Some(work) = &js_work else { continue };
            match run_js(cli, work, run) {
                Ok(js) => report_run("hypercore-js", run, js, &mut js_rows),
                // Keep measuring and reporting ours; fail at the end.
                Err(e) => {
                    eprintln!("the JS anchor failed in run {run}, so it runs no more: {e:#}");
                    js_failed = Some(e);
                    js_work = None;
                }
            }
        }
    }
    let ours = summarize(&rows);
    let js = summarize(&js_rows);
    let nats = summarize(&nats_rows);
    for r in &nats {
        let mut j = r.to_json("nats-jetstream");
        j["type"] = json!("summary");
        println!("{j}");
    }
    report_nats(&ours, &nats);
    if let Some(e) = nats_failed {
        return Err(e.context("the NATS anchor failed; its ratios cover only its runs before"));
    }
    for (name, summary) in [("peermq", &ours), ("hypercore-js", &js)] {
        for r in summary {
            let mut j = r.to_json(name);
            j["type"] = json!("summary");
            println!("{j}");
        }
    }

    // The table, for BENCHMARKS.md.
    eprintln!();
    eprintln!(
        "| phase | durability | msgs/s | secs | wire B/block | p50 µs | p99 µs | peak RSS MiB |"
    );
    eprintln!("|---|---|---|---|---|---|---|---|");
    for r in ours.iter().chain(js.iter()) {
        let who = if js.iter().any(|j| std::ptr::eq(j, r)) {
            "hypercore-js"
        } else {
            "peermq"
        };
        eprintln!(
            "| {} ({who}) | {} | {} | {} | {} | {} | {} | {} |",
            r.phase,
            r.durability,
            fmt(r.msgs_per_s),
            fmt(r.secs),
            fmt(r.wire_bytes_per_block),
            fmt(r.p50_us),
            fmt(r.p99_us),
            fmt(r.peak_rss_mib)
        );
    }
    if js.is_empty() {
        return Ok(());
    }
    eprintln!();
    eprintln!("| phase | ours (mode) vs JS | target | measured | met |");
    eprintln!("|---|---|---|---|---|");
    for mode in ["nosync", "fsync"] {
        for j in &js {
            let Some(o) = ours
                .iter()
                .find(|o| o.phase == j.phase && o.durability == mode)
            else {
                continue;
            };
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            };
            let mut checks: Vec<(String, Option<f64>, bool)> = Vec::new();
            let throughput = ratio(o.msgs_per_s, j.msgs_per_s);
            let rss = ratio(o.peak_rss_mib, j.peak_rss_mib);
            match j.phase.as_str() {
                "replicate_full" => {
                    checks.push(("msgs/s ≥ 50×".into(), throughput, throughput >= Some(50.0)))
                }
                "append_b100" => {
                    checks.push(("msgs/s ≥ 10×".into(), throughput, throughput >= Some(10.0)))
                }
                "replicate_sparse" => {
                    checks.push(("msgs/s ≥ 10×".into(), throughput, throughput >= Some(10.0)));
                    let w = ratio(o.wire_bytes_per_block, j.wire_bytes_per_block);
                    checks.push((
                        "wire B/block ≤ 2/3".into(),
                        w,
                        w.is_some_and(|w| w <= 2.0 / 3.0),
                    ));
                }
                "latency" => {
                    let p = ratio(o.p50_us, j.p50_us);
                    checks.push(("p50 ≤ 1/10".into(), p, p.is_some_and(|p| p <= 0.1)));
                }
                _ => checks.push(("msgs/s (no target)".into(), throughput, true)),
            }
            checks.push(("peak RSS ≤ 1/4".into(), rss, rss.is_some_and(|r| r <= 0.25)));
            for (what, v, ok) in checks {
                let line = json!({"type": "ratio", "phase": j.phase, "durability": mode, "target": what, "ratio": v.map(r3), "met": ok});
                println!("{line}");
                eprintln!(
                    "| {} | {mode} | {what} | {} | {} |",
                    j.phase,
                    v.map_or("–".into(), |v| format!("{v:.3}")),
                    if ok { "yes" } else { "no" }
                );
            }
        }
    }
    match js_failed {
        Some(e) => {
            Err(e.context("the JS anchor failed; the ratios above cover only its runs before"))
        }
        None => Ok(()),
    }
}

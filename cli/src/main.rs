//! `peermq`: the peer-to-peer message queue on the command line.
//!
//! Every command opens the data directory, does its work through the async
//! [`Mq`] handle on a tokio runtime, and shuts the node down cleanly. The
//! data directory may be used by several `peermq` processes at once: a
//! `send` while `connect` runs in another terminal goes out on the running
//! connection.

mod addresses;
mod common;
mod demo;
mod follow;
mod generate;
mod jobs;
mod live;
mod mail;
mod network;
mod output;
mod work;

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use futures_lite::StreamExt;
use peermq::{Config, PeerId};
use peermq_tokio::{wall_clock, Builder, Mailbox, MdnsDiscovery, Mq, Schedule, TokioRuntime};

use crate::addresses::{parse_host_port, AddressBook};
use crate::follow::Stop;
use crate::output::{message_line, Printer};

const EXAMPLES: &str = "\
Walk-through, two nodes on one machine (they find each other by key):
  peermq -d /tmp/a id                        # prints A's id
  peermq -d /tmp/b id                        # prints B's id
  peermq -d /tmp/a add-peer <B>              # A allows B to connect
  peermq -d /tmp/b send --to <A> --message wow
  peermq -d /tmp/b connect <A>               # keeps running; Ctrl-C stops it
  peermq -d /tmp/a listen                    # in another terminal: MESSAGE <B>@0 wow

Logs go to standard error when RUST_LOG is set (for example RUST_LOG=info).";

/// Peer-to-peer message queue: send messages to a peer by its key; they are
/// stored durably at once and travel whenever a connection exists.
#[derive(Parser, Debug)]
#[command(name = "peermq", version, after_help = EXAMPLES)]
struct Cli {
    /// Data directory holding this node's identity, feeds and inbox; created
    /// if missing.
    #[arg(
        short = 'd',
        long = "datadir",
        global = true,
        env = "PEERMQ_DATADIR",
        default_value = "peermq-data",
        value_name = "DIR"
    )]
    datadir: PathBuf,
    /// Also find peers on the local network with multicast DNS (`connect`),
    /// and announce this node there (`listen`; give --host 0.0.0.0 so that
    /// other machines can reach it).
    #[arg(long, global = true)]
    mdns: bool,
    #[command(flatten)]
    net: network::NetworkArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print this node's id (its public key, 64 hex characters), creating
    /// the identity if needed.
    Id,
    /// Allow peer KEY to connect to this node.
    ///
    /// Only authorized peers may connect to a listening node. The node that
    /// dials need not authorize the one it dials.
    AddPeer {
        /// The peer's id, as printed by `peermq id`.
        #[arg(value_name = "KEY")]
        key: PeerId,
        /// Where `connect` reaches this peer, remembered in the data
        /// directory. Not needed on one machine: peers find each other by
        /// key.
        #[arg(long, value_name = "HOST:PORT", value_parser = parse_host_port)]
        addr: Option<String>,
        /// A mailbox that holds KEY's mail while it is away (`peermq
        /// mailbox` runs one): messages to KEY go there when KEY cannot be
        /// reached. Needed only for a peer not met yet; one met tells us its
        /// own mailboxes. Repeat for several.
        #[arg(long, value_name = "MAILBOX")]
        mailbox: Vec<PeerId>,
    },
    /// Name peer KEY as a mailbox that holds our mail while we are away:
    /// senders that cannot reach us push it there, and we collect it when
    /// we run (`listen`, `connect`, `work`).
    ///
    /// Tells the mailbox at once if it can be reached within --wait.
    AddMailbox {
        /// The mailbox's id.
        #[arg(value_name = "KEY")]
        key: PeerId,
        /// Where the mailbox listens, remembered in the data directory.
        /// Not needed on one machine.
        #[arg(long, value_name = "HOST:PORT", value_parser = parse_host_port)]
        addr: Option<String>,
        /// How long to try to reach the mailbox now (`10s`; `0` does not
        /// try: it learns when we next run).
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = jobs::parse_duration)]
        wait: Duration,
    },
    /// Stop naming KEY as our mailbox; it refuses our mail once it hears.
    RemoveMailbox {
        /// The mailbox's id.
        #[arg(value_name = "KEY")]
        key: PeerId,
    },
    /// Run a mailbox until Ctrl-C: hold the mail of recipients that named
    /// this node (`add-mailbox`) while they are away, and hand it over when
    /// they connect. It cannot read sealed messages.
    ///
    /// Prints `HELD <author> <recipient> held=N acknowledged=M bytes=B`
    /// whenever what it holds changes.
    Mailbox {
        /// Address to listen on, as for `listen`.
        #[arg(long, value_name = "H")]
        host: Option<String>,
        /// Port to listen on, as for `listen`.
        #[arg(long, value_name = "P", default_value_t = 0)]
        port: u16,
        /// Most bytes held from one sender (`64MiB`, `1GB`, `100000`).
        #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = mail::parse_size)]
        max_sender_bytes: u64,
        /// Most bytes held for one recipient.
        #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = mail::parse_size)]
        max_recipient_bytes: u64,
        /// Most recipients served.
        #[arg(long, value_name = "N", default_value_t = 10_000)]
        max_recipients: usize,
    },
    /// Revoke peer KEY: it may no longer connect, and its remembered
    /// address is forgotten. Its messages stay.
    RemovePeer {
        /// The peer's id.
        #[arg(value_name = "KEY")]
        key: PeerId,
    },
    /// List the authorized peers, one per line, with remembered addresses.
    Peers,
    /// Free the space of sent messages no longer needed: those the
    /// recipient acknowledged, and those that expired unacknowledged more
    /// than GRACE ago (`send --expire-in`). Their hashes stay, so the feed
    /// stays verifiable. Prints `PRUNED <KEY> acknowledged=N expired=M`
    /// per recipient.
    Prune {
        /// Only messages to this peer (by default, to every peer).
        #[arg(long, value_name = "KEY")]
        to: Option<PeerId>,
        /// How long after its expiry an unacknowledged message is dropped:
        /// room for the recipient's clock running behind ours.
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = jobs::parse_duration)]
        grace: Duration,
    },
    /// Queue a message for peer KEY.
    ///
    /// It is stored durably when this returns, even with no connection, and
    /// travels when one exists (`connect` or `listen`, possibly already
    /// running in another process on the same data directory).
    Send {
        /// The recipient's id.
        #[arg(long, value_name = "KEY")]
        to: PeerId,
        /// The message. Without it, the message is read from standard input
        /// (all of it, as bytes).
        #[arg(short = 'm', long, value_name = "TEXT")]
        message: Option<String>,
        /// Not to be delivered before DURATION from now (`90s`, `10m`,
        /// `2h`, `1d`), by this machine's clock; the recipient's clock
        /// decides when that is.
        #[arg(long, value_name = "DURATION", value_parser = jobs::parse_duration)]
        delay: Option<std::time::Duration>,
        /// Expires DURATION from now: if the recipient has not delivered
        /// it by then, it goes to its `dead` category instead.
        #[arg(long, value_name = "DURATION", value_parser = jobs::parse_duration)]
        expire_in: Option<std::time::Duration>,
    },
    /// Connect to peer KEY and stay connected until Ctrl-C.
    ///
    /// Waits for the peer to appear, sends what is queued for it, prints
    /// `ACK <KEY>@<seq>` as it acknowledges messages, reconnects when the
    /// connection drops, and prints (then archives) `MESSAGE` lines for
    /// messages the peer sends back on the same connection.
    Connect {
        /// The peer's id.
        #[arg(value_name = "KEY")]
        key: PeerId,
        /// Where the peer listens, tried along with addresses remembered by
        /// `add-peer --addr` and peers on this machine.
        #[arg(long, value_name = "HOST:PORT", value_parser = parse_host_port)]
        addr: Option<String>,
        /// Print ndjson: {"from","seq","data"} per message, {"to","seq","acked"} per ACK.
        #[arg(long)]
        json: bool,
        /// Give up, with exit code 1, if no connection to the peer is up
        /// within SECONDS (by default `connect` waits until Ctrl-C).
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
    },
    /// Accept connections from authorized peers until Ctrl-C.
    ///
    /// Prints `MESSAGE <from>@<seq> <data>` for each unread message, the
    /// ones already here first, then new ones as they arrive, and archives
    /// each after printing it, so that each message is printed once across
    /// restarts. Peers on this machine find the listener by its key.
    Listen {
        /// Address to listen on; 0.0.0.0 accepts connections from other
        /// machines. By default 127.0.0.1 (this machine only), or 0.0.0.0
        /// with `--transport iroh` or `--dht`, which are for reaching
        /// peers elsewhere.
        #[arg(long, value_name = "H")]
        host: Option<String>,
        /// Port to listen on; 0 lets the system choose (run with
        /// RUST_LOG=info to see which).
        #[arg(long, value_name = "P", default_value_t = 0)]
        port: u16,
        /// Print ndjson: {"from","seq","data"} per message.
        #[arg(long)]
        json: bool,
    },
    /// Print received messages without archiving them.
    Read {
        /// Print the archived messages instead of the unread ones.
        #[arg(long, conflicts_with = "category")]
        archived: bool,
        /// Print the messages in this category (`unread`, `archived`,
        /// `dead`, or one made with `categories --create`).
        #[arg(long, value_name = "NAME", value_parser = parse_mailbox)]
        category: Option<Mailbox>,
        /// Print ndjson: {"from","seq","data"}; data that is not UTF-8 is
        /// base64, marked "encoding":"base64".
        #[arg(long)]
        json: bool,
    },
    /// Take up to N unread messages with a lease, as a job-queue worker:
    /// until you `archive` one, `release` it or the lease runs out, no
    /// other `take` (or `work`) gets it.
    ///
    /// Prints `TAKEN <from>@<seq> lease=<L> delivery=<n> <data>` for
    /// each; give `<from> <seq> <L>` to `release`.
    Take {
        /// How many to take at most.
        #[arg(short = 'n', long, value_name = "N", default_value_t = 1)]
        n: usize,
        /// How long each lease lasts (`300`, `30s`, `5m`).
        #[arg(long, value_name = "DURATION", value_parser = jobs::parse_lease, default_value = "5m")]
        lease: Duration,
        /// Print ndjson: {"from","seq","lease","delivery","deadline_unix_ms","data"}.
        #[arg(long)]
        json: bool,
    },
    /// Run CMD once per received message, as a job-queue worker, until
    /// Ctrl-C; the node stays online meanwhile, as with `listen`.
    ///
    /// Each message is taken with a lease (extended while CMD runs) and
    /// given to CMD on standard input, with PEERMQ_FROM, PEERMQ_SEQ and
    /// PEERMQ_DELIVERY in its environment. Exit 0 archives it; any other
    /// exit gives it back for a retry after the backoff, and after
    /// --max-deliveries it goes to the `dead` category. Prints `DONE`,
    /// `FAILED` or `DEAD <from>@<seq>` per run. Ctrl-C stops taking work
    /// and waits for running jobs; if the worker is killed, its leases run
    /// out and the jobs are handed out again.
    Work {
        /// Jobs to run at once.
        #[arg(short = 'j', long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        jobs: u16,
        /// How long a lease lasts before it is extended (`30s`, `5m`).
        #[arg(long, value_name = "DURATION", value_parser = jobs::parse_lease, default_value = "60s")]
        lease: Duration,
        /// Deliveries before a message goes to `dead`.
        #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
        max_deliveries: u32,
        /// Delays before the second delivery, the third, ... (the last
        /// repeats), comma-separated.
        #[arg(long, value_name = "DURATIONS", value_delimiter = ',', value_parser = jobs::parse_duration, default_value = "1s,10s,60s")]
        backoff: Vec<Duration>,
        /// Address to listen on, as for `listen`.
        #[arg(long, value_name = "H")]
        host: Option<String>,
        /// Port to listen on, as for `listen`.
        #[arg(long, value_name = "P", default_value_t = 0)]
        port: u16,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Give back a message taken with `take`, unprocessed: it is handed
    /// out again after DELAY (by default the retry backoff), or goes to
    /// the `dead` category if it was delivered the maximum number of times.
    Release {
        /// The sender's id.
        #[arg(value_name = "FROM")]
        from: PeerId,
        /// The message's seq.
        #[arg(value_name = "SEQ")]
        seq: u64,
        /// The lease, as `take` printed it (`lease=<L>`).
        #[arg(value_name = "LEASE")]
        lease: u64,
        /// Hand it out again after this long (`0`, `30s`, `5m`).
        #[arg(long, value_name = "DURATION", value_parser = jobs::parse_duration)]
        delay: Option<Duration>,
    },
    /// Move message SEQ from FROM into CATEGORY: one made with
    /// `categories --create`, `dead`, `archived`, or back to `unread`.
    Move {
        /// The sender's id.
        #[arg(value_name = "FROM")]
        from: PeerId,
        /// The message's seq.
        #[arg(value_name = "SEQ")]
        seq: u64,
        /// Where to.
        #[arg(value_name = "CATEGORY", value_parser = parse_mailbox)]
        category: Mailbox,
    },
    /// List the categories of received messages with their counts:
    /// unread (and how many are taken), archived, dead, and those made
    /// with --create.
    Categories {
        /// Make this category first; repeat for several.
        #[arg(long, value_name = "NAME", value_parser = parse_category)]
        create: Vec<peermq::Category>,
    },
    /// Mark message SEQ from FROM processed: it leaves the unread messages.
    Archive {
        /// The sender's id.
        #[arg(value_name = "FROM")]
        from: PeerId,
        /// The message's seq, as printed after the `@`.
        #[arg(value_name = "SEQ")]
        seq: u64,
    },
    /// Delete message SEQ from FROM here; it is never downloaded again.
    Clear {
        /// The sender's id.
        #[arg(value_name = "FROM")]
        from: PeerId,
        /// The message's seq, as printed after the `@`.
        #[arg(value_name = "SEQ")]
        seq: u64,
    },
    /// Show this node's id and, per peer, the feeds both ways (messages
    /// sent and acknowledged, received and unread) and the connections of
    /// `listen` or `connect` running on this data directory: transport,
    /// direct or relayed, and the remote address.
    Status,
    /// Run two nodes in this process, on temporary directories, and show
    /// messages and acknowledgements flowing both ways.
    Demo,
    /// Print the completion script for SHELL to standard output.
    ///
    /// For example `peermq completions bash >
    /// ~/.local/share/bash-completion/completions/peermq`, or `peermq
    /// completions zsh > ~/.zfunc/_peermq`.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the man page, in roff, to standard output: `peermq man >
    /// peermq.1`.
    Man {
        /// Write the pages into DIR instead: peermq.1 and one per command
        /// (peermq-send.1, ...); prints their paths.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return common::usage_error(&e, &help_for(&e)),
    };
    init_logging();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!(
                "error: cannot start the async runtime: {e}; check the process limits (ulimit -n)"
            );
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

/// The help command to point a usage mistake at.
fn help_for(e: &clap::Error) -> String {
    if e.kind() == clap::error::ErrorKind::InvalidSubcommand {
        "peermq --help".to_string()
    } else {
        subcommand_help_hint()
    }
}

/// `peermq <subcommand> --help` for the subcommand named on the command
/// line, if one was.
fn subcommand_help_hint() -> String {
    let sub = std::env::args()
        .skip(1)
        .find(|a| Cli::command_names().iter().any(|name| name == a.as_str()));
    match sub {
        Some(s) => format!("peermq {s} --help"),
        None => "peermq --help".to_string(),
    }
}

impl Cli {
    fn command_names() -> Vec<String> {
        use clap::CommandFactory;
        Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect()
    }
}

/// Logs go to stderr and are off unless RUST_LOG asks for them, so that
/// stdout carries exactly the lines the commands print.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The error and its causes on one line, without repeating a cause that an
/// outer message already quotes.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out.replace('\n', " ")
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The core's configuration for command-line nodes.
pub(crate) fn node_config() -> Config {
    Config {
        // A `connect` started before its peer listens retries at least
        // this often, so the peer is found within seconds of appearing
        // (the default cap of 30 s suits servers, not a person waiting).
        backoff_cap: Duration::from_secs(2),
        ..Config::default()
    }
}

/// Opens the node of `datadir`, with `book` as a further way to find peers,
/// Parses a category argument: `unread`, `archived` or a category name.
fn parse_mailbox(s: &str) -> Result<Mailbox, String> {
    s.parse().map_err(|e| format!("`{s}`: {e}"))
}

/// Parses a name for `categories --create`.
fn parse_category(s: &str) -> Result<peermq::Category, String> {
    s.parse().map_err(|e| format!("`{s}`: {e}"))
}

/// mDNS if `mdns`, and the transport and DHT `net` asks for (TCP alone
/// without it).
fn open(
    datadir: &Path,
    book: Option<AddressBook>,
    mdns: bool,
    net: Option<&network::NetworkArgs>,
) -> anyhow::Result<Mq> {
    open_with(datadir, book, mdns, net, |b| b)
}

/// [`open`], with `more` applied to the builder last.
fn open_with(
    datadir: &Path,
    book: Option<AddressBook>,
    mdns: bool,
    net: Option<&network::NetworkArgs>,
    more: impl FnOnce(Builder) -> Builder,
) -> anyhow::Result<Mq> {
    let mut builder = more(Mq::builder(datadir).config(node_config()));
    if let Some(net) = net {
        builder = net.apply(builder);
    }
    if let Some(book) = book {
        builder = builder.discovery(Arc::new(book));
    }
    if mdns {
        let mdns = MdnsDiscovery::new().context("--mdns: cannot start mDNS discovery")?;
        builder = builder.discovery(Arc::new(mdns));
    }
    let mq = builder.open(TokioRuntime::new())?;
    // Its secret key is in there: say so when others can read it.
    for warning in peermq_tokio::datadir::permission_warnings(datadir) {
        eprintln!("warning: {warning}");
    }
    Ok(mq)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = cli.datadir;
    let mut printer = Printer::new();
    let uses_datadir = !matches!(
        cli.command,
        Command::Demo | Command::Completions { .. } | Command::Man { .. }
    );
    if uses_datadir && dir.exists() && !dir.is_dir() {
        bail!(
            "data directory {} is not a directory; give a directory with -d DIR (it is created if missing)",
            dir.display()
        );
    }
    match cli.command {
        Command::Demo => demo::run(&mut printer).await,
        Command::Completions { shell } => Ok(generate::completions(
            <Cli as clap::CommandFactory>::command(),
            shell,
        )?),
        Command::Man { dir: pages } => Ok(generate::man(
            <Cli as clap::CommandFactory>::command(),
            pages.as_deref(),
        )?),
        Command::Connect {
            key,
            addr,
            json,
            wait,
        } => {
            let mut stop = Stop::install()?;
            let mut book = AddressBook::load(&dir)?;
            if let Some(addr) = addr {
                book.insert(key, addr);
            }
            let give_up = wait.map(|secs| follow::GiveUp {
                peer: key,
                after: Duration::from_secs(secs),
                tried: ways_tried(!book.get(&key).is_empty(), cli.mdns, &cli.net),
            });
            let mq = open(&dir, Some(book), cli.mdns, Some(&cli.net))?;
            // Subscribe first: no acknowledgement may slip by unprinted.
            let events = mq.events();
            let mut live = live::LiveFile::new(&dir);
            let r = match mq.connect(key).await {
                Ok(()) => {
                    follow::follow(
                        &mq,
                        events,
                        &mut printer,
                        &mut stop,
                        json,
                        &mut live,
                        give_up,
                    )
                    .await
                }
                Err(e) => Err(e.into()),
            };
            follow::shutdown(&mq, &mut stop).await?;
            r
        }
        Command::Listen { host, port, json } => {
            let mut stop = Stop::install()?;
            let host = host.unwrap_or_else(|| cli.net.default_host().to_string());
            let addr = common::resolve(&host, port).await?;
            if cli.mdns && addr.ip().is_loopback() {
                eprintln!("note: --mdns announces the loopback address {host}, which only this machine can reach; give --host 0.0.0.0 to be reachable from the network");
            }
            let book = AddressBook::load(&dir)?;
            let mq = open(&dir, Some(book), cli.mdns, Some(&cli.net))?;
            let events = mq.events();
            let r = match mq.listen(addr).await {
                Ok(bound) => {
                    tracing::info!(%bound, id = %mq.id().await, "listening");
                    let mut live = live::LiveFile::new(&dir);
                    follow::follow(&mq, events, &mut printer, &mut stop, json, &mut live, None)
                        .await
                }
                Err(e) => Err(e.into()),
            };
            follow::shutdown(&mq, &mut stop).await?;
            r
        }
        Command::Work {
            jobs,
            lease,
            max_deliveries,
            backoff,
            host,
            port,
            command,
        } => {
            let mut stop = Stop::install()?;
            let host = host.unwrap_or_else(|| cli.net.default_host().to_string());
            let addr = common::resolve(&host, port).await?;
            let book = AddressBook::load(&dir)?;
            let mq = open(&dir, Some(book), cli.mdns, Some(&cli.net))?;
            let r = match mq.listen(addr).await {
                Ok(bound) => {
                    tracing::info!(%bound, id = %mq.id().await, "listening");
                    let mut live = live::LiveFile::new(&dir);
                    let worker = mq.worker(work::policy(backoff, max_deliveries), lease);
                    let job = work::Job {
                        command,
                        parallel: usize::from(jobs),
                    };
                    work::run(&mq, worker, job, &mut printer, &mut stop, &mut live).await
                }
                Err(e) => Err(e.into()),
            };
            follow::shutdown(&mq, &mut stop).await?;
            r
        }
        Command::AddMailbox { key, addr, wait } => {
            let mut book = AddressBook::load(&dir)?;
            if let Some(addr) = addr {
                book.insert(key, addr);
                book.save()?;
            }
            let mq = open(&dir, Some(book), cli.mdns, Some(&cli.net))?;
            let r = mail::add_mailbox(&mq, key, wait).await;
            mq.shutdown().await?;
            r
        }
        Command::Mailbox {
            host,
            port,
            max_sender_bytes,
            max_recipient_bytes,
            max_recipients,
        } => {
            let mut stop = Stop::install()?;
            let host = host.unwrap_or_else(|| cli.net.default_host().to_string());
            let addr = common::resolve(&host, port).await?;
            let limits = peermq::MailboxLimits {
                max_sender_bytes,
                max_recipient_bytes,
                max_recipients,
            };
            let mq = open_with(&dir, None, cli.mdns, Some(&cli.net), |b| b.mailbox(limits))?;
            let r = match mq.listen(addr).await {
                Ok(bound) => {
                    tracing::info!(%bound, id = %mq.id().await, "mailbox listening");
                    let mut live = live::LiveFile::new(&dir);
                    mail::serve(&mq, &mut printer, &mut stop, &mut live).await
                }
                Err(e) => Err(e.into()),
            };
            follow::shutdown(&mq, &mut stop).await?;
            r
        }
        Command::Send {
            to,
            message,
            delay,
            expire_in,
        } => {
            if let (Some(d), Some(e)) = (delay, expire_in) {
                if e <= d {
                    bail!("--expire-in {e:?} is not after --delay {d:?}: the message could never be delivered; give a longer --expire-in");
                }
            }
            let data = match message {
                Some(m) => m.into_bytes(),
                None => read_stdin()?,
            };
            let schedule = Schedule::from_now(wall_clock(), delay, expire_in);
            let mq = open(&dir, None, false, None)?;
            let r = mq.send_scheduled(to, vec![data], schedule).await;
            mq.shutdown().await?;
            let seq = r?.start;
            tracing::info!(%to, seq, "queued");
            Ok(())
        }
        command => {
            let mq = open(&dir, None, false, None)?;
            let r = one_shot(&mq, &dir, command, &mut printer).await;
            mq.shutdown().await?;
            r
        }
    }
}

/// The ways `connect` looks a peer up, in words.
fn ways_tried(given: bool, mdns: bool, net: &network::NetworkArgs) -> String {
    let mut ways = Vec::new();
    if given {
        ways.push("the address given");
    }
    ways.push("this machine's discovery directory");
    if mdns {
        ways.push("mDNS on the LAN");
    }
    if net.dht {
        ways.push("the Mainline DHT");
    }
    if net.transport == network::TransportKind::Iroh && net.relay != network::RelayChoice::Off {
        ways.push("iroh's relays");
    }
    ways.join(", ")
}

/// The commands that do one thing and return.
async fn one_shot(
    mq: &Mq,
    dir: &Path,
    command: Command,
    printer: &mut Printer,
) -> anyhow::Result<()> {
    match command {
        Command::Id => printer.line(&mq.id().await.to_string())?,
        Command::AddPeer { key, addr, mailbox } => {
            mq.add_peer(key, None).await?;
            if let Some(addr) = addr {
                let mut book = AddressBook::load(dir)?;
                book.insert(key, addr);
                book.save()?;
            }
            for m in mailbox {
                mq.add_route(key, m).await?;
            }
        }
        Command::RemoveMailbox { key } => {
            if !mq.remove_mailbox(key).await? {
                eprintln!("note: {key} was not one of our mailboxes; nothing changed");
            }
        }
        Command::RemovePeer { key } => {
            let was = mq.remove_peer(key).await?;
            let mut book = AddressBook::load(dir)?;
            if book.remove(&key) {
                book.save()?;
            }
            if !was {
                eprintln!("note: {key} was not an authorized peer; nothing changed");
            }
        }
        Command::Prune { to, grace } => {
            let peers = match to {
                Some(to) => vec![to],
                None => mq
                    .peers()
                    .await?
                    .iter()
                    .filter(|p| p.sent > 0)
                    .map(|p| p.peer)
                    .collect(),
            };
            for peer in peers {
                let (acked, expired) = mq.prune(peer, Some(grace)).await?;
                printer.line(&format!(
                    "PRUNED {peer} acknowledged={acked} expired={expired}"
                ))?;
            }
        }
        Command::Peers => {
            let book = AddressBook::load(dir)?;
            for p in mq.peers().await?.iter().filter(|p| p.authorized) {
                let mut line = p.peer.to_string();
                for addr in book.get(&p.peer) {
                    line.push(' ');
                    line.push_str(addr);
                }
                printer.line(&line)?;
            }
        }
        Command::Read {
            archived,
            category,
            json,
        } => {
            let mailbox = match category {
                Some(c) => c,
                None if archived => Mailbox::Archived,
                None => Mailbox::Unread,
            };
            jobs::check_exists(mq, mailbox).await?;
            let mut records = mq.read_stream(mailbox, false);
            while let Some(r) = records.next().await {
                printer.line(&message_line(&r?, json))?;
            }
        }
        Command::Take { n, lease, json } => jobs::take(mq, printer, n, lease, json).await?,
        Command::Release {
            from,
            seq,
            lease,
            delay,
        } => jobs::release(mq, from, seq, lease, delay).await?,
        Command::Move {
            from,
            seq,
            category,
        } => jobs::move_to(mq, from, seq, category).await?,
        Command::Categories { create } => jobs::categories(mq, printer, &create).await?,
        Command::Archive { from, seq } => {
            if !mq.archive(from, seq).await? {
                eprintln!("note: message {from}@{seq} was already archived");
            }
        }
        Command::Clear { from, seq } => {
            if !mq.clear(from, seq).await? {
                eprintln!("note: message {from}@{seq} was already cleared");
            }
        }
        Command::Status => {
            printer.line(&format!("id {}", mq.id().await))?;
            let peers = mq.peers().await?;
            let mail = mq.mail_status().await?;
            let live = live::read_all(dir);
            if peers.is_empty() {
                printer.line("no peers yet: `peermq add-peer KEY` allows one to connect, `peermq send --to KEY` queues a message")?;
            }
            for p in peers {
                let role = if p.authorized {
                    "authorized"
                } else {
                    "not authorized"
                };
                printer.line(&format!("peer {} ({role})", p.peer))?;
                printer.line(&format!(
                    "  feed to peer:   {} sent, {} acknowledged",
                    p.sent, p.acked
                ))?;
                printer.line(&format!(
                    "  feed from peer: {} received, {} unread",
                    p.received, p.unread
                ))?;
                for c in live.iter().filter(|c| c.peer == p.peer) {
                    printer.line(&format!(
                        "  connection:     {}, {} (process {})",
                        c.route, c.way, c.pid
                    ))?;
                }
                if let Some((_, boxes)) = mail.routes.iter().find(|(r, _)| *r == p.peer) {
                    for m in boxes {
                        printer.line(&format!("  mailbox:        {m}"))?;
                    }
                }
                mail::print_held(printer, &mail, &p.peer)?;
            }
            mail::print_status(printer, &mail)?;
        }
        Command::Demo
        | Command::Connect { .. }
        | Command::Listen { .. }
        | Command::AddMailbox { .. }
        | Command::Mailbox { .. }
        | Command::Work { .. }
        | Command::Send { .. }
        | Command::Completions { .. }
        | Command::Man { .. } => {
            bail!("internal: a command that is not a one-shot one dispatched as one")
        }
    }
    Ok(())
}

/// The whole of standard input, the message of `send` without `--message`.
fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!(
            "reading the message from standard input; end it with Ctrl-D (or pass --message TEXT)"
        );
    }
    let mut data = Vec::new();
    stdin
        .lock()
        .read_to_end(&mut data)
        .context("cannot read the message from standard input; pass it with --message TEXT")?;
    Ok(data)
}

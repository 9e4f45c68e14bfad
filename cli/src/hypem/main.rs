//! `hypem`: HyperEmitter's command line, over peermq's event emitter.
//!
//! ```text
//! hypem --db DIR [--host H] [--port P] [--target-host H --target-port P]...
//!       [--target-key KEY]... [--transport tcp|iroh] [--dht] [--bootstrap HOST:PORT]...
//!       [--relay URL] [--no-repl] [--from-scratch] [--allow KEY]... SCHEMA.proto
//! ```
//!
//! With a REPL (the default), `emit Hello {"from":"Matteo"}` emits an event
//! and received events print as `Hello {"from":"Matteo","message":""}`.
//! With `--no-repl`, stdin is read as ndjson (`{"name":..,"payload":..}`)
//! and every event is written to stdout in the same form. Either way the
//! output resumes where the previous run stopped, unless `--from-scratch`.
//! Exit codes: 2 for usage errors, 1 for runtime errors.
//!
//! `hypem completions SHELL` prints a shell's completion script and `hypem
//! man` the man page (`hypem man > hypem.1`).

#[path = "../common.rs"]
mod common;
#[path = "../generate.rs"]
mod generate;
#[path = "../network.rs"]
mod network;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use clap::{CommandFactory, FromArgMatches, Subcommand};
use futures_lite::StreamExt;
use peermq_tokio::{Delivered, Emitter, PeerId, Schema, TokioRuntime};
use serde_json::{json, Value};

/// The consumer whose position makes a restarted `hypem` resume.
const CONSUMER: &str = "hypem";

/// A replicated, persistent event emitter with a REPL or ndjson streams.
#[derive(clap::Parser, Debug)]
#[command(name = "hypem", version)]
struct Args {
    /// Data directory (created if missing).
    #[arg(long, value_name = "DIR")]
    db: PathBuf,
    /// Address to listen on (with --port). By default 127.0.0.1 (this
    /// machine only), or 0.0.0.0 with `--transport iroh` or `--dht`.
    #[arg(long, value_name = "H")]
    host: Option<String>,
    /// Port to listen on; peers learn it from our EventPeer event.
    #[arg(long, value_name = "P")]
    port: Option<u16>,
    /// Host of a peer to connect to (default 127.0.0.1); pairs with the
    /// --target-port at the same position, or applies to all if given once.
    #[arg(long = "target-host", value_name = "H")]
    target_host: Vec<String>,
    /// Port of a peer to connect to; may be repeated.
    #[arg(long = "target-port", value_name = "P")]
    target_port: Vec<u16>,
    /// A peer to connect to by its key (found on this machine, on the DHT
    /// with --dht, or through its relay with --transport iroh); may be
    /// repeated.
    #[arg(long = "target-key", value_name = "KEY")]
    target_key: Vec<PeerId>,
    #[command(flatten)]
    net: network::NetworkArgs,
    /// Read events as ndjson from stdin and write every event as ndjson to
    /// stdout, instead of the REPL.
    #[arg(long)]
    no_repl: bool,
    /// Print every event from the beginning instead of resuming.
    #[arg(long)]
    from_scratch: bool,
    /// Accept only these keys (64 hex characters) as peers and authors; may
    /// be repeated. Without it any peer may connect.
    #[arg(long, value_name = "KEY")]
    allow: Vec<PeerId>,
    /// The protobuf schema of the events.
    #[arg(value_name = "SCHEMA.proto")]
    schema: PathBuf,
}

// What `hypem` does instead of running a node, given alone. (No doc
// comment: clap would take it for hypem's own description.)
#[derive(Subcommand, Debug)]
enum Extra {
    /// Print the completion script for SHELL to standard output (for
    /// example `hypem completions bash >
    /// ~/.local/share/bash-completion/completions/hypem`).
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the man page, in roff, to standard output: `hypem man >
    /// hypem.1`.
    Man {
        /// Write the pages into DIR instead (hypem.1 and one per command);
        /// prints their paths.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// `hypem`'s command line: a node's [`Args`], or one [`Extra`] command
/// alone. A command name is one only as the first word, so a schema file
/// named `man` still loads after `--db DIR`.
fn command_line() -> clap::Command {
    Extra::augment_subcommands(Args::command())
        .args_conflicts_with_subcommands(true)
        .subcommand_negates_reqs(true)
}

fn main() -> ExitCode {
    let parsed = command_line().try_get_matches().and_then(|m| {
        if m.subcommand().is_some() {
            Extra::from_arg_matches(&m).map(Err)
        } else {
            Args::from_arg_matches(&m).map(Ok)
        }
    });
    let args = match parsed {
        Ok(Ok(a)) => a,
        Ok(Err(extra)) => return print_extra(extra),
        Err(e) => return common::usage_error(&e, "hypem --help"),
    };
    if args.target_host.len() > 1 && args.target_host.len() != args.target_port.len() {
        eprintln!(
            "error: {} --target-host values for {} --target-port values; give one host for all ports, or one per port; see `hypem --help`",
            args.target_host.len(),
            args.target_port.len()
        );
        return ExitCode::from(2);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let handle = runtime.handle().clone();
    match runtime.block_on(run(args, handle)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Prints the completion script or the man page.
fn print_extra(extra: Extra) -> ExitCode {
    let printed = match extra {
        Extra::Completions { shell } => generate::completions(command_line(), shell),
        Extra::Man { dir } => generate::man(command_line(), dir.as_deref()),
    };
    match printed {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Writes one line to stdout at once. In the REPL the line may land after
/// the prompt; rustyline's external printer was tried and it holds back
/// pasted input until the next keystroke, which is worse.
fn out_line(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

fn raw(d: &Delivered) -> String {
    base64::engine::general_purpose::STANDARD.encode(&d.payload)
}

/// The original's ndjson form; a type not in our schema carries its bytes.
fn ndjson(d: &Delivered) -> String {
    let v = match &d.value {
        Some(v) => json!({"name": d.name, "payload": v}),
        None => json!({"name": d.name, "raw": raw(d)}),
    };
    v.to_string()
}

fn human(d: &Delivered) -> String {
    match &d.value {
        Some(v) => format!("{} {}", d.name, v),
        None => format!(
            "{} (not in the schema; raw bytes, base64) {}",
            d.name,
            raw(d)
        ),
    }
}

/// Status lines: stdout in the REPL (as the original), stderr with
/// `--no-repl` so that stdout stays pure ndjson.
fn status(no_repl: bool, text: &str) {
    if no_repl {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
}

async fn run(args: Args, handle: tokio::runtime::Handle) -> Result<()> {
    let schema = Schema::load(&args.schema).map_err(|e| anyhow!("{e}"))?;
    let mut builder = Emitter::builder(&args.db);
    for key in &args.allow {
        builder = builder.allow(*key);
    }
    // Emitters find each other by address (HyperEmitter's way); by key,
    // this machine's discovery directory answers first.
    let by_key = !args.target_key.is_empty()
        || args.net.dht
        || args.net.transport == network::TransportKind::Iroh;
    let net = args.net.clone();
    builder = builder.node(move |b| net.apply(b).local_discovery(by_key));
    let em = builder
        .open(TokioRuntime::new(), schema)
        .with_context(|| format!("cannot open the data directory {}", args.db.display()))?;
    for warning in peermq_tokio::datadir::permission_warnings(&args.db) {
        eprintln!("warning: {warning}");
    }
    let consumer = if args.from_scratch {
        em.from_scratch(CONSUMER).await?
    } else {
        em.resume(CONSUMER).await?
    };
    if let Some(port) = args.port {
        let host = args.host.as_deref().unwrap_or(args.net.default_host());
        let addr = common::resolve(host, port).await?;
        let bound = em.listen(addr).await?;
        status(
            args.no_repl,
            &format!("listening on {} {}", bound.port(), bound.ip()),
        );
    }
    for (i, port) in args.target_port.iter().enumerate() {
        let host = args
            .target_host
            .get(i)
            .or(args.target_host.first())
            .map(String::as_str)
            .unwrap_or("127.0.0.1");
        let addr = common::resolve(host, *port).await?;
        let em = em.clone();
        let no_repl = args.no_repl;
        let host = host.to_string();
        let port = *port;
        tokio::spawn(async move {
            match em.connect(addr).await {
                Ok(_) => status(no_repl, &format!("connected to {host} {port}")),
                Err(e) => eprintln!("warning: {e}"),
            }
        });
    }

    if !args.target_key.is_empty() {
        let mut events = em.events();
        let mut waiting: Vec<PeerId> = args.target_key.clone();
        for key in &args.target_key {
            em.mq().connect(*key).await?;
        }
        let no_repl = args.no_repl;
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if let peermq_tokio::MqEvent::Connected { peer } = event {
                    if let Some(i) = waiting.iter().position(|k| *k == peer) {
                        waiting.swap_remove(i);
                        status(no_repl, &format!("connected to {peer}"));
                    }
                    if waiting.is_empty() {
                        return;
                    }
                }
            }
        });
    }

    let (done_tx, done_rx) = async_channel::bounded::<Result<()>>(1);
    if args.no_repl {
        let em = em.clone();
        let handle = handle.clone();
        std::thread::spawn(move || ndjson_input(em, handle));
    } else {
        let mut editor = rustyline::DefaultEditor::new().context("cannot start the line editor")?;
        let em = em.clone();
        let handle = handle.clone();
        let done = done_tx.clone();
        std::thread::spawn(move || {
            let r = repl(&mut editor, &em, &handle);
            let _ = done.send_blocking(r);
        });
    }

    let printing = async {
        let mut consumer = consumer;
        while let Some(d) = consumer.next().await {
            let d = d?;
            out_line(&if args.no_repl { ndjson(&d) } else { human(&d) });
            // Committed after printing: at least once across crashes.
            consumer.commit(&d).await?;
        }
        Ok::<(), anyhow::Error>(())
    };
    let quit = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot watch for SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot watch for Ctrl-C"),
            _ = term.recv() => Ok(()),
            r = done_rx.recv() => r.unwrap_or(Ok(())),
        }
    };
    let result = tokio::select! {
        r = printing => r,
        r = quit => r,
    };
    em.close().await?;
    result
}

/// Reads ndjson events from stdin until it ends; each bad line gets one
/// error line on stderr and the rest go on.
fn ndjson_input(em: Emitter, handle: tokio::runtime::Handle) {
    use std::io::BufRead;
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let Ok(line) = line else {
            eprintln!("error: stdin is not readable text; stopped reading it");
            return;
        };
        if line.trim().is_empty() {
            continue;
        }
        let r = parse_ndjson(&line).and_then(|(name, payload)| {
            handle
                .block_on(em.emit(&name, payload))
                .map_err(anyhow::Error::from)
        });
        if let Err(e) = r {
            eprintln!("error: line {}: {e:#}", n + 1);
        }
    }
}

fn parse_ndjson(line: &str) -> Result<(String, Value)> {
    let v: Value = serde_json::from_str(line).context("not JSON")?;
    let name = v["name"]
        .as_str()
        .ok_or_else(|| {
            anyhow!(r#"expected {{"name":"Type","payload":{{..}}}}; `name` is missing"#)
        })?
        .to_string();
    let payload = v.get("payload").cloned().unwrap_or_else(|| json!({}));
    Ok((name, payload))
}

const HELP: &str = "commands:
  emit TYPE {json}   emit an event, e.g. emit Hello {\"from\":\"Matteo\"}
  messages           list the event types of the schema
  id                 show this node's key
  help               this text
  exit               leave (Ctrl-D too)";

fn repl(
    editor: &mut rustyline::DefaultEditor,
    em: &Emitter,
    handle: &tokio::runtime::Handle,
) -> Result<()> {
    use rustyline::error::ReadlineError;
    loop {
        let line = match editor.readline("hypem> ") {
            Ok(l) => l,
            Err(ReadlineError::Interrupted | ReadlineError::Eof) => return Ok(()),
            Err(e) => bail!("reading the terminal failed: {e}"),
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
        let (cmd, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        match cmd {
            "exit" | "quit" | ".exit" => return Ok(()),
            "help" | ".help" => println!("{HELP}"),
            "messages" => println!("{}", em.messages().join(" ")),
            "id" => println!("{}", handle.block_on(em.id())),
            "emit" => {
                let rest = rest.trim();
                let (name, json_text) =
                    rest.split_once(char::is_whitespace).unwrap_or((rest, "{}"));
                if name.is_empty() {
                    println!("error: usage: emit TYPE {{json}}");
                    continue;
                }
                let value = match serde_json::from_str::<Value>(json_text) {
                    Ok(v) => v,
                    Err(e) => {
                        println!("error: the value is not JSON: {e}");
                        continue;
                    }
                };
                if let Err(e) = handle.block_on(em.emit(name, value)) {
                    println!("error: {e}");
                }
            }
            other => println!("error: unknown command `{other}`; type `help`"),
        }
    }
}

//! `peermq`: the peer-to-peer message queue on the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use peermq::store::meta;
use peermq::{Keypair, LmdbStore, SeededRng, Txn};

/// Peer-to-peer message queue.
#[derive(Parser, Debug)]
#[command(name = "peermq", version, about)]
struct Cli {
    /// Data directory; created if missing.
    #[arg(
        short = 'd',
        long = "datadir",
        global = true,
        default_value = "peermq-data"
    )]
    datadir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print this node's id (its public key), creating the identity if needed.
    Id,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return if usage {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Id => {
            let store = LmdbStore::open(&cli.datadir)?;
            let mut txn = Txn::begin(&store)?;
            meta::check_format(&mut txn)?;
            let fresh = fresh_keypair()?;
            let key = meta::identity_or_insert(&mut txn, || fresh)?;
            txn.commit()
                .with_context(|| format!("saving the identity in {}", cli.datadir.display()))?;
            println!("{}", key.peer_id());
        }
    }
    Ok(())
}

/// A new identity from operating-system randomness: the core never draws
/// randomness itself, so the binary seeds it.
fn fresh_keypair() -> anyhow::Result<Keypair> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| {
        anyhow::anyhow!("the operating system gave no randomness to create an identity: {e}")
    })?;
    Ok(Keypair::generate(&mut SeededRng::from_seed(seed)))
}

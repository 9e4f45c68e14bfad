//! `peermq demo`: two nodes in one process, on temporary directories,
//! exchanging messages both ways over one connection.

use std::time::Duration;

use anyhow::{bail, Context};
use futures_lite::StreamExt;
use peermq_tokio::{EventStream, Mailbox, Mq, MqEvent, PeerId, TokioRuntime};

use crate::output::{ack_line, message_line, Printer};

/// The demo runs in about a second on loopback; past this, something is
/// wrong and the demo says so instead of hanging.
const DEMO_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the demo, printing each step, each message as it arrives and each
/// acknowledgement as it comes back.
pub async fn run(printer: &mut Printer) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("peermq-demo-")
        .tempdir()
        .context(
            "cannot create a temporary directory for the demo; set TMPDIR to a writable directory",
        )?;
    let open = |name: &str| {
        Mq::builder(tmp.path().join(name))
            // Its own discovery directory: the demo finds only its own
            // nodes, never those of other programs.
            .discovery_dir(tmp.path().join("discovery"))
            .config(crate::node_config())
            .open(TokioRuntime::new())
    };
    let a = open("a")?;
    let b = open("b")?;
    let result = match tokio::time::timeout(DEMO_TIMEOUT, script(&a, &b, printer)).await {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!(
            "the demo did not finish within {} s; run it with RUST_LOG=debug to see why",
            DEMO_TIMEOUT.as_secs()
        )),
    };
    let (sa, sb) = futures_lite::future::zip(a.shutdown(), b.shutdown()).await;
    result?;
    sa?;
    sb?;
    say(
        printer,
        "both nodes shut down cleanly; each message was delivered once and acknowledged",
    )
}

async fn script(a: &Mq, b: &Mq, printer: &mut Printer) -> anyhow::Result<()> {
    let (ida, idb) = (a.id().await, b.id().await);
    say(printer, &format!("node A is {ida}"))?;
    say(printer, &format!("node B is {idb}"))?;

    a.add_peer(idb, None).await?;
    say(printer, "A allows B to connect (add-peer)")?;
    let to_a = ["wow", "cool", "hiiiiiiii"];
    for m in to_a {
        b.send(ida, m).await?;
    }
    say(
        printer,
        "B queues 3 messages for A; no connection exists yet, they wait on B's disk",
    )?;

    let addr = a.listen(([127, 0, 0, 1], 0).into()).await?;
    let a_events = a.events();
    let b_events = b.events();
    b.connect(ida).await?;
    say(
        printer,
        &format!("A listens on {addr}; B connects to A, found by its key alone"),
    )?;
    receive(a, "A", to_a.len(), printer).await?;
    acks(b_events, "B", ida, to_a.len() as u64, printer).await?;

    let to_b = ["hello B", "got your 3 messages"];
    for m in to_b {
        a.send(idb, m).await?;
    }
    say(printer, "A replies on the same connection, which B dialed")?;
    receive(b, "B", to_b.len(), printer).await?;
    acks(a_events, "A", idb, to_b.len() as u64, printer).await?;
    Ok(())
}

fn say(printer: &mut Printer, line: &str) -> anyhow::Result<()> {
    Ok(printer.line(&format!("# {line}"))?)
}

/// Prints and archives `n` messages as they arrive at `node`.
async fn receive(node: &Mq, name: &str, n: usize, printer: &mut Printer) -> anyhow::Result<()> {
    let mut unread = node.read_stream(Mailbox::Unread, true);
    for _ in 0..n {
        let Some(r) = unread.next().await else {
            bail!("node {name} stopped before its messages arrived");
        };
        let r = r?;
        printer.line(&format!("{name}: {}", message_line(&r, false)))?;
        node.archive(r.from, r.seq).await?;
    }
    Ok(())
}

/// Prints acknowledgements from `to` as they come back, until `n` messages
/// are acknowledged.
async fn acks(
    mut events: EventStream,
    name: &str,
    to: PeerId,
    n: u64,
    printer: &mut Printer,
) -> anyhow::Result<()> {
    let mut acked = 0;
    while acked < n {
        match events.next().await {
            Some(MqEvent::Acked {
                to: who,
                start,
                end,
            }) if who == to => {
                for seq in start..end {
                    printer.line(&format!("{name}: {}", ack_line(to, seq, false)))?;
                }
                acked = acked.max(end);
            }
            Some(_) => {}
            None => bail!("node {name} stopped before its messages were acknowledged"),
        }
    }
    Ok(())
}

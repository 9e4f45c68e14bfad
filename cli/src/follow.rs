//! The long-running commands, `listen` and `connect`: print each message as
//! it arrives and archive it, print acknowledgements as they come back,
//! until Ctrl-C.

use std::collections::HashSet;

use anyhow::bail;
use futures_lite::StreamExt;
use peermq::wire::CloseCode;
use peermq_tokio::{CloseReason, EventStream, Mailbox, Mq, MqEvent, PeerId};

use crate::live::LiveFile;
use crate::output::{ack_line, message_line, Printer, PROGRESS_TICK};

/// How often the connections' routes are looked at for `status`.
const ROUTE_TICK: std::time::Duration = std::time::Duration::from_secs(2);

/// Ctrl-C (and, on Unix, SIGTERM): the request to stop cleanly.
///
/// Installed before the node starts, so that a signal arriving at any point
/// stops the command through [`Mq::shutdown`] instead of killing it
/// mid-write.
pub struct Stop {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(windows)]
    ctrl_c: tokio::signal::windows::CtrlC,
}

impl Stop {
    /// Takes over Ctrl-C for this process.
    pub fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Stop {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(windows)]
        {
            Ok(Stop {
                ctrl_c: tokio::signal::windows::ctrl_c()?,
            })
        }
    }

    /// Waits for the next stop request.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => {}
                _ = self.term.recv() => {}
            }
        }
        #[cfg(windows)]
        {
            let _ = self.ctrl_c.recv().await;
        }
    }
}

/// Shuts the node down, flushing what is queued for peers; a second Ctrl-C
/// meanwhile gives up on slow peers and exits at once (nothing is lost:
/// every message is already durable, and unacknowledged ones are sent again
/// on the next connection).
pub async fn shutdown(mq: &Mq, stop: &mut Stop) -> anyhow::Result<()> {
    tokio::select! {
        r = mq.shutdown() => Ok(r?),
        () = stop.recv() => std::process::exit(130),
    }
}

/// When `connect --wait` gives up: if no connection to `peer` is up after
/// `after`.
pub struct GiveUp {
    /// The peer dialed.
    pub peer: PeerId,
    /// How long to wait for it.
    pub after: std::time::Duration,
    /// The ways it was looked for, in words, for the error.
    pub tried: String,
}

/// Prints and archives every unread message, old ones first, then new ones
/// as they arrive, and prints acknowledgements from `events`, until a stop
/// request. Refused connections get a warning on stderr saying how to fix
/// them.
pub async fn follow(
    mq: &Mq,
    mut events: EventStream,
    printer: &mut Printer,
    stop: &mut Stop,
    json: bool,
    live: &mut LiveFile,
    give_up: Option<GiveUp>,
) -> anyhow::Result<()> {
    let deadline = tokio::time::sleep(
        give_up
            .as_ref()
            .map_or(std::time::Duration::MAX / 4, |g| g.after),
    );
    tokio::pin!(deadline);
    let mut waiting = give_up.is_some();
    let mut unread = mq.read_stream(Mailbox::Unread, true);
    let mut tick = tokio::time::interval(PROGRESS_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Connections come and go with events; their routes change without
    // one (iroh moves from a relay to a direct path), so look now and then.
    let mut routes = tokio::time::interval(ROUTE_TICK);
    routes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut warned: HashSet<(Option<PeerId>, String)> = HashSet::new();
    loop {
        // Each branch's body runs to completion once chosen, so a stop
        // request never falls between printing a message and archiving it.
        tokio::select! {
            biased;
            () = stop.recv() => break,
            () = &mut deadline, if waiting => {
                let g = give_up.as_ref().expect("armed only with a GiveUp");
                bail!(
                    "{} was not found within {} s (looked for it: {}); what is queued for it stays queued and goes out on a later connect",
                    g.peer,
                    g.after.as_secs(),
                    g.tried
                );
            }
            event = events.next() => match event {
                Some(MqEvent::Acked { to, start, end }) => {
                    for seq in start..end {
                        printer.line(&ack_line(to, seq, json))?;
                    }
                }
                Some(MqEvent::Connected { peer }) => {
                    tracing::info!(%peer, "connected");
                    if give_up.as_ref().is_some_and(|g| g.peer == peer) {
                        waiting = false;
                    }
                    live.update(mq.connections().await?);
                }
                Some(MqEvent::Disconnected { peer, reason }) => {
                    tracing::info!(?peer, %reason, "disconnected");
                    live.update(mq.connections().await?);
                    if let Some(advice) = refusal_advice(mq, peer, &reason).await {
                        if warned.insert((peer, advice.clone())) {
                            eprintln!("warning: {advice}");
                        }
                    }
                }
                Some(MqEvent::MailboxRefused { mailbox, to, reason }) => {
                    let advice = format!("mailbox {mailbox} will not hold our mail for {to}: {reason}; it waits here until {to} or another of its mailboxes can be reached");
                    if warned.insert((Some(mailbox), advice.clone())) {
                        eprintln!("warning: {advice}");
                    }
                }
                Some(MqEvent::Lagged { missed }) => eprintln!(
                    "warning: {missed} events came faster than they could be printed, so some ACK lines are missing; `peermq status` shows acknowledged counts"
                ),
                Some(_) => {}
                None => bail!("the peermq node stopped unexpectedly; run the command again"),
            },
            record = unread.next() => match record {
                Some(Ok(r)) => {
                    printer.line(&message_line(&r, json))?;
                    // `false`: another process archived it meanwhile, which
                    // is fine: it was processed.
                    mq.archive(r.from, r.seq).await?;
                }
                Some(Err(e)) => return Err(e.into()),
                None => bail!("the peermq node stopped unexpectedly; run the command again"),
            },
            _ = routes.tick() => live.update(mq.connections().await?),
            _ = tick.tick(), if printer.wants_progress() => {
                let (acked, sent) = mq
                    .peers()
                    .await?
                    .iter()
                    .filter(|p| p.connected)
                    .fold((0, 0), |(a, s), p| (a + p.acked, s + p.sent));
                printer.progress(acked, sent);
            }
        }
    }
    printer.finish();
    Ok(())
}

/// What to tell the user when a connection was refused for a reason they
/// can fix; `None` for the ordinary comings and goings of connections.
async fn refusal_advice(mq: &Mq, peer: Option<PeerId>, reason: &CloseReason) -> Option<String> {
    let me = mq.id().await;
    match reason {
        CloseReason::Unauthorized(who) => Some(format!(
            "refused a connection from {who}, which is not an authorized peer; run `peermq add-peer {who}` to allow it"
        )),
        CloseReason::Remote {
            code: CloseCode::Unauthorized,
            ..
        } => {
            let who = peer.map_or_else(|| "the peer".to_string(), |p| p.to_string());
            Some(format!(
                "{who} refused our connection because it has not authorized us; its owner must run `peermq add-peer {me}`; retrying"
            ))
        }
        CloseReason::WrongPeer { expected, got } => Some(format!(
            "the address found for {expected} answered as {got}; check the address given with --addr; retrying"
        )),
        CloseReason::Ourselves => Some(
            "the address dialed is this node's own (it answered with our key); give another peer's address".to_string(),
        ),
        _ => None,
    }
}

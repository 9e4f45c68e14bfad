//! Mailboxes at the command line: `mailbox` runs one, `add-mailbox` names
//! one, and `status` shows where mail goes and what waits.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use futures_lite::StreamExt;
use peermq_tokio::{MailStatus, Mq, MqEvent, PeerId};

use crate::follow::Stop;
use crate::live::LiveFile;
use crate::output::Printer;

/// How often a running mailbox looks at what it holds.
const HELD_TICK: Duration = Duration::from_millis(250);

/// Parses a size: bytes, or with a unit (`KB`, `MB`, `GB` in powers of
/// 1000; `KiB`, `MiB`, `GiB` in powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| {
        format!("`{s}` is not a size; give bytes, or a number with KB, MB, GB, KiB, MiB or GiB")
    })?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "`{other}` is not a unit of size; use KB, MB, GB, KiB, MiB or GiB"
            ))
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// Names `mailbox`, then tries for up to `wait` to tell it, so that it
/// takes our mail from now on.
pub async fn add_mailbox(mq: &Mq, mailbox: PeerId, wait: Duration) -> anyhow::Result<()> {
    let mut events = mq.events();
    mq.add_mailbox(mailbox).await?;
    if wait.is_zero() {
        return Ok(());
    }
    let reached = tokio::time::timeout(wait, async {
        while let Some(e) = events.next().await {
            if matches!(e, MqEvent::Connected { peer } if peer == mailbox) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    if !reached {
        eprintln!(
            "note: mailbox {mailbox} was not reached within {} s; it is named, and learns so when this node next runs while it does",
            wait.as_secs()
        );
    }
    Ok(())
}

/// Runs a mailbox until a stop request, printing a `HELD` line for each
/// feed whose holding changed.
pub async fn serve(
    mq: &Mq,
    printer: &mut Printer,
    stop: &mut Stop,
    live: &mut LiveFile,
) -> anyhow::Result<()> {
    let mut events = mq.events();
    let mut tick = tokio::time::interval(HELD_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut shown: BTreeMap<(PeerId, PeerId), (u64, u64, u64)> = BTreeMap::new();
    loop {
        tokio::select! {
            biased;
            () = stop.recv() => break,
            event = events.next() => match event {
                Some(MqEvent::Connected { .. } | MqEvent::Disconnected { .. }) => {
                    live.update(mq.connections().await?);
                }
                Some(_) => {}
                None => bail!("the peermq node stopped unexpectedly; run the command again"),
            },
            _ = tick.tick() => {
                for c in mq.mail_status().await?.carried {
                    let now = (c.held, c.acknowledged, c.bytes);
                    if shown.insert((c.author, c.recipient), now) != Some(now) {
                        printer.line(&format!(
                            "HELD {} {} held={} acknowledged={} bytes={}",
                            c.author, c.recipient, c.held, c.acknowledged, c.bytes
                        ))?;
                    }
                }
            }
        }
    }
    printer.finish();
    Ok(())
}

/// The lines of `status` under peer `to`: how much of our mail to it each
/// of its mailboxes holds, as the mailbox last told us.
pub fn print_held(printer: &mut Printer, mail: &MailStatus, to: &PeerId) -> std::io::Result<()> {
    for h in mail.held.iter().filter(|h| h.recipient == *to) {
        printer.line(&format!(
            "  in mailbox {}: {} waiting, {} of our messages stored there",
            h.mailbox, h.waiting, h.stored
        ))?;
    }
    Ok(())
}

/// The mail part of `status`: our mailboxes, and what we hold as one.
pub fn print_status(printer: &mut Printer, mail: &MailStatus) -> std::io::Result<()> {
    for m in &mail.mailboxes {
        printer.line(&format!("our mailbox {m}"))?;
    }
    for c in &mail.carried {
        printer.line(&format!(
            "holding mail from {} for {}: {} held ({} bytes), {} acknowledged",
            c.author, c.recipient, c.held, c.bytes, c.acknowledged
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2 GB"), Ok(2_000_000_000));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }
}

//! The job-queue commands: `take`, `release`, `move` and `categories`.

use std::time::Duration;

use peermq::{Category, Lease, PeerId, Released, RetryPolicy, Taken, Timestamp};
use peermq_tokio::{Mailbox, Mq};

use crate::output::Printer;

/// The line printed for a taken message: `TAKEN <from>@<seq> lease=<token>
/// delivery=<n> <data>`, or ndjson with `--json`.
pub fn taken_line(t: &Taken, json: bool) -> String {
    let data = String::from_utf8_lossy(t.data.strip_suffix(b"\n").unwrap_or(&t.data));
    let l = &t.lease;
    if json {
        return serde_json::json!({
            "from": l.from.to_string(),
            "seq": l.seq,
            "lease": l.token,
            "delivery": t.delivery,
            "deadline_unix_ms": l.deadline.as_micros() / 1000,
            "data": data,
        })
        .to_string();
    }
    format!(
        "TAKEN {}@{} lease={} delivery={} {data}",
        l.from, l.seq, l.token, t.delivery
    )
}

/// `peermq take`: up to `n` messages, leased for `lease_for`.
pub async fn take(
    mq: &Mq,
    printer: &mut Printer,
    n: usize,
    lease_for: Duration,
    json: bool,
) -> anyhow::Result<()> {
    let worker = mq.worker(RetryPolicy::default(), lease_for);
    let taken = worker.take(n).await?;
    if taken.is_empty() {
        eprintln!("note: nothing to take now (no unread message that is not taken or waiting to be retried)");
    }
    for t in &taken {
        printer.line(&taken_line(t, json))?;
    }
    Ok(())
}

/// `peermq release`: gives a taken message back.
pub async fn release(
    mq: &Mq,
    from: PeerId,
    seq: u64,
    token: u64,
    delay: Option<Duration>,
) -> anyhow::Result<()> {
    let worker = mq.worker(RetryPolicy::default(), Duration::ZERO);
    let lease = Lease {
        from,
        seq,
        token,
        deadline: Timestamp::EPOCH,
    };
    match worker.release(&lease, delay).await? {
        Released::RetryAt(_) => {}
        Released::DeadLettered => {
            eprintln!("note: message {from}@{seq} was delivered the maximum number of times; it is in `dead` now");
        }
    }
    Ok(())
}

/// `peermq move`.
pub async fn move_to(mq: &Mq, from: PeerId, seq: u64, to: Mailbox) -> anyhow::Result<()> {
    if !mq.move_to(from, seq, to).await? {
        eprintln!("note: message {from}@{seq} was in {to} already");
    }
    Ok(())
}

/// `peermq categories`: creates those asked for, then lists every one
/// with its counts.
pub async fn categories(mq: &Mq, printer: &mut Printer, create: &[Category]) -> anyhow::Result<()> {
    for c in create {
        if !mq.create_category(*c).await? {
            eprintln!("note: category {c} exists already");
        }
    }
    for c in mq.categories().await? {
        let taken = if c.mailbox == Mailbox::Unread {
            format!(" ({} taken)", c.taken)
        } else {
            String::new()
        };
        printer.line(&format!("{} {}{taken}", c.mailbox, c.messages))?;
    }
    Ok(())
}

/// Checks that `mailbox` exists before reading it.
pub async fn check_exists(mq: &Mq, mailbox: Mailbox) -> anyhow::Result<()> {
    if let Mailbox::Category(c) = mailbox {
        let known: Vec<Mailbox> = mq.categories().await?.iter().map(|c| c.mailbox).collect();
        if !known.contains(&mailbox) {
            anyhow::bail!("there is no category `{c}`; `peermq categories` lists them, `peermq categories --create {c}` makes it");
        }
    }
    Ok(())
}

/// Parses a duration: a number of seconds (`30`, `1.5`), or a number with
/// a unit: `ms`, `s`, `m`, `h`, `d` (`500ms`, `5m`, `1d`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let (number, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return Err(format!("`{s}` has an unknown unit; give seconds, or a number with ms, s, m, h or d (`30`, `500ms`, `5m`, `1d`)")),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration; give seconds, or a number with ms, s, m, h or d (`30`, `500ms`, `5m`, `1d`)"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("`{s}` is not a duration: it must be zero or more"));
    }
    std::time::Duration::try_from_secs_f64(value * scale)
        .map_err(|_| format!("`{s}` is too long a duration"))
}

/// Parses a lease time: a duration longer than zero.
pub fn parse_lease(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("`{s}`: a lease must last longer than zero")),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_parse_with_or_without_units_and_refuse_the_rest() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        for bad in ["-1", "soon", "5 parsecs", "", "NaN", "1e400"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}

//! What the commands print on standard output: `MESSAGE` and `ACK` lines,
//! plain or as ndjson, and the sync progress bar.

use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use base64::Engine;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use peermq::{PeerId, Record};

/// The line printed for a received message.
///
/// Plain: `MESSAGE <from>@<seq> <data>`, as the original printed it (bytes
/// that are not UTF-8 shown lossily, and one trailing newline left out, so
/// that `echo text | peermq send` prints no blank line). ndjson: `{"from","seq","data"}`, where
/// `data` is the text when it is valid UTF-8 and otherwise its base64, said
/// so by `"encoding":"base64"`, so that no byte is ever lost.
pub fn message_line(r: &Record, json: bool) -> String {
    if !json {
        return format!(
            "MESSAGE {}@{} {}",
            r.from,
            r.seq,
            String::from_utf8_lossy(r.data.strip_suffix(b"\n").unwrap_or(&r.data))
        );
    }
    let mut obj = serde_json::Map::new();
    obj.insert("from".into(), r.from.to_string().into());
    obj.insert("seq".into(), r.seq.into());
    match std::str::from_utf8(&r.data) {
        Ok(text) => {
            obj.insert("data".into(), text.into());
        }
        Err(_) => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(&r.data);
            obj.insert("data".into(), b64.into());
            obj.insert("encoding".into(), "base64".into());
        }
    }
    serde_json::Value::Object(obj).to_string()
}

/// The line printed when `to` acknowledged our message `seq`: `ACK
/// <to>@<seq>`, or as ndjson `{"to","seq","acked":true}` (told apart from
/// messages by having `to` where they have `from`).
pub fn ack_line(to: PeerId, seq: u64, json: bool) -> String {
    if json {
        serde_json::json!({ "to": to.to_string(), "seq": seq, "acked": true }).to_string()
    } else {
        format!("ACK {to}@{seq}")
    }
}

/// Writes whole lines to standard output, above the progress bar when one
/// is shown.
#[derive(Debug)]
pub struct Printer {
    progress: SyncProgress,
}

impl Printer {
    /// A printer that may show a progress bar only if stdout is a terminal.
    pub fn new() -> Self {
        Printer {
            progress: SyncProgress::new(io::stdout().is_terminal()),
        }
    }

    /// Prints one line and flushes it, so that a reader on a pipe sees it at
    /// once (a consumer of `listen` acts on each line as it comes).
    pub fn line(&mut self, line: &str) -> io::Result<()> {
        let write = || {
            let mut out = io::stdout().lock();
            writeln!(out, "{line}")?;
            out.flush()
        };
        match &self.progress.bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }

    /// Whether progress is worth computing at all.
    pub fn wants_progress(&self) -> bool {
        self.progress.enabled
    }

    /// Updates the progress bar with how many of our `sent` messages are
    /// `acked`.
    pub fn progress(&mut self, acked: u64, sent: u64) {
        self.progress.update(acked, sent);
    }

    /// Removes the progress bar, if shown.
    pub fn finish(&mut self) {
        self.progress.clear();
    }
}

/// How often the long-running commands look at sync progress.
pub const PROGRESS_TICK: Duration = Duration::from_millis(250);

/// Ticks of outstanding acknowledgements before the bar appears: a sync that
/// finishes within about a second never flashes a bar.
const SHOW_AFTER_TICKS: u32 = 4;

/// The progress bar of a sync: acknowledged out of sent messages. Shown
/// only on a terminal, and only once a sync has lasted a while.
#[derive(Debug)]
struct SyncProgress {
    enabled: bool,
    bar: Option<ProgressBar>,
    slow_ticks: u32,
}

impl SyncProgress {
    fn new(enabled: bool) -> Self {
        SyncProgress {
            enabled,
            bar: None,
            slow_ticks: 0,
        }
    }

    fn update(&mut self, acked: u64, sent: u64) {
        if !self.enabled {
            return;
        }
        if acked >= sent {
            self.clear();
            return;
        }
        self.slow_ticks = self.slow_ticks.saturating_add(1);
        if self.bar.is_none() && self.slow_ticks >= SHOW_AFTER_TICKS {
            let target = ProgressDrawTarget::term_like_with_hz(
                Box::new(ShortOfTheEdge(console::Term::buffered_stdout())),
                20,
            );
            let bar = ProgressBar::with_draw_target(Some(sent), target);
            if let Ok(style) =
                ProgressStyle::with_template("syncing [{bar:30}] {pos}/{len} acknowledged")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            self.bar = Some(bar);
        }
        if let Some(bar) = &self.bar {
            bar.set_length(sent);
            bar.set_position(acked);
        }
    }

    fn clear(&mut self) {
        self.slow_ticks = 0;
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// Columns left free at the right edge of the terminal.
const EDGE_MARGIN: u16 = 3;

/// Stdout as indicatif sees it, a few columns narrower than it is.
///
/// indicatif pads the bar to the full width, which leaves the cursor past
/// the last column; the `^C` the terminal echoes for Ctrl-C then wraps to
/// the next line, so clearing the bar on exit cleared that line instead and
/// left a stale bar on screen. With a margin the echo stays on the bar's
/// line and is cleared with it.
#[derive(Debug)]
struct ShortOfTheEdge(console::Term);

impl indicatif::TermLike for ShortOfTheEdge {
    fn width(&self) -> u16 {
        self.0.size().1.saturating_sub(EDGE_MARGIN).max(20)
    }
    fn height(&self) -> u16 {
        self.0.size().0
    }
    fn move_cursor_up(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_up(n)
    }
    fn move_cursor_down(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_down(n)
    }
    fn move_cursor_right(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_right(n)
    }
    fn move_cursor_left(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_left(n)
    }
    fn write_line(&self, s: &str) -> io::Result<()> {
        self.0.write_line(s)
    }
    fn write_str(&self, s: &str) -> io::Result<()> {
        self.0.write_str(s)
    }
    fn clear_line(&self) -> io::Result<()> {
        self.0.clear_line()
    }
    fn flush(&self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(data: &[u8]) -> Record {
        Record {
            from: PeerId([0xab; 32]),
            seq: 7,
            data: data.to_vec(),
        }
    }

    #[test]
    fn plain_lines_match_the_original_format() {
        let from = "ab".repeat(32);
        assert_eq!(
            message_line(&record(b"wow"), false),
            format!("MESSAGE {from}@7 wow")
        );
        // `echo wow | peermq send` adds a newline; the line does not show it.
        assert_eq!(
            message_line(&record(b"wow\n"), false),
            format!("MESSAGE {from}@7 wow")
        );
        assert_eq!(
            ack_line(PeerId([0xab; 32]), 3, false),
            format!("ACK {from}@3")
        );
    }

    #[test]
    fn json_keeps_text_as_text_and_binary_as_marked_base64() {
        let text: serde_json::Value =
            serde_json::from_str(&message_line(&record("héllo \"x\"\n".as_bytes()), true)).unwrap();
        assert_eq!(text["from"], "ab".repeat(32));
        assert_eq!(text["seq"], 7);
        assert_eq!(text["data"], "héllo \"x\"\n");
        assert!(text.get("encoding").is_none());

        let binary: serde_json::Value =
            serde_json::from_str(&message_line(&record(&[0xff, 0x00, 0x80]), true)).unwrap();
        assert_eq!(binary["data"], "/wCA");
        assert_eq!(binary["encoding"], "base64");
    }

    #[test]
    fn json_lines_are_single_lines() {
        assert!(!message_line(&record(b"a\nb"), true).contains('\n'));
        let ack: serde_json::Value =
            serde_json::from_str(&ack_line(PeerId([1; 32]), 9, true)).unwrap();
        assert_eq!(ack["seq"], 9);
        assert_eq!(ack["acked"], true);
    }

    #[test]
    fn no_bar_when_stdout_is_not_a_terminal() {
        let mut p = SyncProgress::new(false);
        for i in 0..100 {
            p.update(i, 1_000_000);
        }
        assert!(p.bar.is_none());
    }

    #[test]
    fn on_a_terminal_the_bar_appears_for_long_syncs_only_and_goes_when_done() {
        let mut p = SyncProgress::new(true);
        // Caught up on every tick: never a bar.
        for i in 0..10 {
            p.update(i, i);
        }
        assert!(p.bar.is_none());
        for i in 0..SHOW_AFTER_TICKS - 1 {
            p.update(u64::from(i), 1000);
        }
        assert!(p.bar.is_none(), "a short sync shows no bar");
        p.update(500, 1000);
        let bar = p.bar.clone().expect("a long sync shows a bar");
        assert_eq!((bar.position(), bar.length()), (500, Some(1000)));
        p.update(1000, 1000);
        assert!(p.bar.is_none());
        assert!(bar.is_finished());
    }
}

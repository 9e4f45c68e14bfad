//! [`RecordStream`]: a mailbox read page by page, and, live, woken by
//! arrivals.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::Stream;
use peermq::RangeSet;
use peermq::{Mailbox, PeerId, Record};

use super::service::QueueCommand;
use super::Mq;
use crate::error::MqError;
use crate::runtime::timeout;

/// Records asked of the driver per round trip.
const READ_PAGE: usize = 512;
/// How often a live stream looks again without being woken, which catches
/// what other processes sharing the data directory did.
const LIVE_RECHECK: Duration = Duration::from_millis(500);

/// A stream of received messages, from [`Mq::read_stream`].
pub struct RecordStream {
    inner: Pin<Box<dyn Stream<Item = Result<Record, MqError>> + Send>>,
}

impl RecordStream {
    pub(super) fn new(mq: Mq, mailbox: Mailbox, live: bool) -> Self {
        let state = ReadState {
            mq,
            mailbox,
            live,
            seen: BTreeMap::new(),
            buf: VecDeque::new(),
            wait_past: None,
            done: false,
        };
        RecordStream {
            inner: Box::pin(futures_lite::stream::unfold(state, ReadState::next)),
        }
    }
}

impl std::fmt::Debug for RecordStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordStream { .. }")
    }
}

impl Stream for RecordStream {
    type Item = Result<Record, MqError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

struct ReadState {
    mq: Mq,
    mailbox: Mailbox,
    live: bool,
    /// What this stream yielded, per sender.
    seen: BTreeMap<PeerId, RangeSet>,
    buf: VecDeque<Record>,
    /// The generation a live stream caught up at: its next read waits in
    /// the driver until the generation moves past it.
    wait_past: Option<u64>,
    done: bool,
}

impl ReadState {
    async fn next(mut self) -> Option<(Result<Record, MqError>, Self)> {
        loop {
            if let Some(r) = self.buf.pop_front() {
                return Some((Ok(r), self));
            }
            if self.done {
                return None;
            }
            let seen = self.seen.clone();
            let mailbox = self.mailbox;
            let after = self.wait_past.take();
            let read = self.mq.queue(|reply| QueueCommand::Read {
                mailbox,
                seen,
                limit: READ_PAGE,
                after,
                reply,
            });
            let got = if after.is_some() {
                let rt = self.mq.runtime().clone();
                match timeout(&*rt, LIVE_RECHECK, read).await {
                    Some(got) => got,
                    // Nothing woke us: read again now (`wait_past` is
                    // cleared), for what other processes did.
                    None => continue,
                }
            } else {
                read.await
            };
            let (records, generation) = match got {
                Ok(x) => x,
                Err(e) => {
                    self.done = true;
                    return Some((Err(e), self));
                }
            };
            let full_page = records.len() >= READ_PAGE;
            for r in records {
                let seen = self.seen.entry(r.from).or_default();
                if !seen.contains(r.seq) {
                    seen.insert(r.seq, r.seq + 1);
                    self.buf.push_back(r);
                }
            }
            if full_page {
                continue;
            }
            // A short page means the stream was caught up at `generation`:
            // reading again before it moves would find nothing new.
            if self.live {
                self.wait_past = Some(generation);
            } else {
                self.done = true;
            }
        }
    }
}

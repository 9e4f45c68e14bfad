//! The queue's side of the driver: answers [`crate::Mq`]'s queue commands,
//! parks live reads until something arrives, holds sparse `get`s until
//! their message does, and publishes [`MqEvent`]s.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::time::Duration;

use peermq::RangeSet;
use peermq::Receipt;
use peermq::{
    Category, CategoryCount, DeadReason, Event, Fetch, Lease, Mailbox, PeerId, PeerStatus, Record,
    Released, RetryPolicy, Schedule, Store, Taken, Timestamp,
};
use tracing::debug;

use super::events::{MqEvent, Subscribers};
use crate::driver::{answer, Ctx, Reply, Service};
use crate::error::MqError;
use crate::runtime::wall_clock;

/// What an [`crate::Mq`] asks of its queue.
pub(crate) enum QueueCommand {
    Peers {
        reply: Reply<Vec<PeerStatus>>,
    },
    Send {
        to: PeerId,
        messages: Vec<Vec<u8>>,
        schedule: Schedule,
        reply: Reply<Range<u64>>,
    },
    /// Up to `limit` records of `mailbox` not in `seen`, with the arrival
    /// generation they were read at. With `after`, the read waits until the
    /// generation moves past it (it runs at once if it already has), so that
    /// a caught-up live stream gets what arrives in a single answer rather
    /// than a wake-up followed by a second round trip.
    Read {
        mailbox: Mailbox,
        seen: BTreeMap<PeerId, RangeSet>,
        limit: usize,
        after: Option<u64>,
        reply: Reply<(Vec<Record>, u64)>,
    },
    Get {
        from: PeerId,
        seq: u64,
        reply: FetchReply,
    },
    Archive {
        from: PeerId,
        seq: u64,
        reply: Reply<bool>,
    },
    ArchiveMany {
        from: PeerId,
        seqs: Vec<u64>,
        reply: Reply<Vec<bool>>,
    },
    Clear {
        from: PeerId,
        seq: u64,
        reply: Reply<bool>,
    },
    Receipt {
        to: PeerId,
        reply: Reply<Option<Receipt>>,
    },
    Prune {
        to: PeerId,
        expired_grace: Option<Duration>,
        reply: Reply<(u64, u64)>,
    },
    Work(WorkCommand),
    Mail(super::mail::MailCommand),
}

/// What a [`crate::Worker`] and the category calls ask of the queue.
pub(crate) enum WorkCommand {
    Take {
        max: usize,
        lease_for: Duration,
        policy: RetryPolicy,
        reply: Reply<Vec<Taken>>,
    },
    Extend {
        lease: Lease,
        lease_for: Duration,
        reply: Reply<Timestamp>,
    },
    Release {
        lease: Lease,
        delay: Option<Duration>,
        policy: RetryPolicy,
        reply: Reply<Released>,
    },
    Move {
        from: PeerId,
        seq: u64,
        to: Mailbox,
        reply: Reply<bool>,
    },
    CreateCategory {
        category: Category,
        reply: Reply<bool>,
    },
    Categories {
        reply: Reply<Vec<CategoryCount>>,
    },
    DeadReason {
        from: PeerId,
        seq: u64,
        reply: Reply<Option<(DeadReason, u32)>>,
    },
}

/// Where the answer of a sparse `get` goes.
type FetchReply = Reply<Option<Vec<u8>>>;

/// A [`QueueCommand::Read`] waiting for the arrival generation to move.
struct ParkedRead {
    mailbox: Mailbox,
    seen: BTreeMap<PeerId, RangeSet>,
    limit: usize,
    reply: Reply<(Vec<Record>, u64)>,
}

/// The queue service.
pub(crate) struct Queue {
    subscribers: Subscribers,
    /// Bumped whenever a read could see something new.
    generation: u64,
    parked_reads: Vec<ParkedRead>,
    /// The generation moved since the parked reads were last served.
    reads_due: bool,
    /// Sparse reads waiting for their message to arrive.
    fetches: HashMap<(PeerId, u64), Vec<FetchReply>>,
}

impl Queue {
    pub(crate) fn new(subscribers: Subscribers) -> Self {
        Queue {
            subscribers,
            generation: 0,
            parked_reads: Vec::new(),
            reads_due: false,
            fetches: HashMap::new(),
        }
    }

    fn wake_readers(&mut self) {
        self.generation += 1;
        self.reads_due = !self.parked_reads.is_empty();
    }

    /// Message `seq` from `from` arrived: wakes the readers and answers
    /// the `get`s waiting for it.
    fn arrived<S: Store>(&mut self, cx: &mut Ctx<'_, S>, from: PeerId, seq: u64) {
        self.wake_readers();
        let Some(replies) = self.fetches.remove(&(from, seq)) else {
            return;
        };
        let data = match fetched(cx.node.get(from, seq, cx.now, wall_clock())) {
            Ok(Some(Fetch::Ready(data))) => Some(data),
            Ok(Some(Fetch::Pending)) => {
                self.fetches.insert((from, seq), replies);
                return;
            }
            Ok(_) => None,
            Err(reason) => {
                for r in replies {
                    let reason = reason.clone();
                    answer(r, Err(MqError::Get { from, seq, reason }));
                }
                return;
            }
        };
        for r in replies {
            answer(r, Ok(data.clone()));
        }
    }

    /// Up to `limit` records of `mailbox` that are not in `seen`, walking
    /// the mailbox in (sender, seq) order and jumping over what was seen.
    fn read_unseen<S: Store>(
        cx: &mut Ctx<'_, S>,
        mailbox: Mailbox,
        seen: &BTreeMap<PeerId, RangeSet>,
        limit: usize,
    ) -> Result<Vec<Record>, MqError> {
        let mut out = Vec::new();
        let mut pos: Option<(PeerId, u64)> = None;
        // Every record a page holds is loaded from the store, data and all,
        // so right after a jump over seen records (where more seen ones are
        // likely: a live stream has seen nearly the whole mailbox) look one
        // record ahead before asking for a whole page.
        let mut probing = !seen.is_empty();
        'pages: loop {
            let want = if probing { 1 } else { limit - out.len() };
            let page = cx.node.read(mailbox, pos, want, wall_clock())?;
            if page.is_empty() {
                break;
            }
            for r in page {
                if let Some(s) = seen.get(&r.from) {
                    if s.contains(r.seq) {
                        // Resume right before the next unseen seq.
                        pos = Some((r.from, s.next_gap(r.seq) - 1));
                        probing = true;
                        continue 'pages;
                    }
                }
                pos = Some((r.from, r.seq));
                out.push(r);
                probing = false;
                if out.len() >= limit {
                    break 'pages;
                }
            }
        }
        Ok(out)
    }
}

impl Queue {
    fn on_work<S: Store>(&mut self, cx: &mut Ctx<'_, S>, cmd: WorkCommand) {
        let now = wall_clock();
        match cmd {
            WorkCommand::Take {
                max,
                lease_for,
                policy,
                reply,
            } => {
                let r = cx.node.take(max, lease_for, &policy, now);
                self.wake_readers();
                answer(reply, r.map_err(Into::into));
            }
            WorkCommand::Extend {
                lease,
                lease_for,
                reply,
            } => answer(
                reply,
                cx.node.extend(&lease, lease_for, now).map_err(Into::into),
            ),
            WorkCommand::Release {
                lease,
                delay,
                policy,
                reply,
            } => {
                let r = cx.node.release(&lease, delay, &policy, now);
                self.wake_readers();
                answer(reply, r.map_err(Into::into));
            }
            WorkCommand::Move {
                from,
                seq,
                to,
                reply,
            } => {
                let r = cx.node.move_to(from, seq, to, cx.now);
                self.wake_readers();
                answer(reply, r.map_err(Into::into));
            }
            WorkCommand::CreateCategory { category, reply } => {
                answer(reply, cx.node.create_category(category).map_err(Into::into));
            }
            WorkCommand::Categories { reply } => {
                answer(reply, cx.node.categories(now).map_err(Into::into));
            }
            WorkCommand::DeadReason { from, seq, reply } => {
                answer(reply, cx.node.dead_reason(from, seq).map_err(Into::into));
            }
        }
    }
}

impl<S: Store> Service<S> for Queue {
    type Command = QueueCommand;

    fn on_command(&mut self, cx: &mut Ctx<'_, S>, cmd: QueueCommand) {
        let now = cx.now;
        match cmd {
            QueueCommand::Peers { reply } => {
                answer(reply, cx.node.status().map_err(Into::into));
            }
            QueueCommand::Send {
                to,
                messages,
                schedule,
                reply,
            } => {
                let r = cx.node.send_scheduled(to, &messages, &schedule, now);
                answer(reply, r.map_err(Into::into));
            }
            QueueCommand::Read {
                mailbox,
                seen,
                limit,
                after,
                reply,
            } => {
                if after == Some(self.generation) {
                    self.parked_reads.retain(|p| !p.reply.is_closed());
                    self.parked_reads.push(ParkedRead {
                        mailbox,
                        seen,
                        limit,
                        reply,
                    });
                } else {
                    let r = Self::read_unseen(cx, mailbox, &seen, limit);
                    answer(reply, r.map(|recs| (recs, self.generation)));
                }
            }
            QueueCommand::Get { from, seq, reply } => {
                match fetched(cx.node.get(from, seq, now, wall_clock())) {
                    Ok(Some(Fetch::Ready(data))) => answer(reply, Ok(Some(data))),
                    Ok(Some(Fetch::Pending)) => {
                        let list = self.fetches.entry((from, seq)).or_default();
                        list.retain(|r| !r.is_closed());
                        list.push(reply);
                    }
                    Ok(_) => answer(reply, Ok(None)),
                    Err(reason) => answer(reply, Err(MqError::Get { from, seq, reason })),
                }
            }
            QueueCommand::Archive { from, seq, reply } => {
                let r = cx.node.archive(from, seq, now);
                self.wake_readers();
                answer(reply, r.map_err(Into::into));
            }
            QueueCommand::ArchiveMany { from, seqs, reply } => {
                let r = cx.node.archive_many(from, &seqs, now);
                self.wake_readers();
                answer(reply, r.map_err(Into::into));
            }
            QueueCommand::Clear { from, seq, reply } => {
                let r = cx.node.clear(from, seq, now);
                self.wake_readers();
                answer(reply, r.map_err(Into::into));
            }
            QueueCommand::Receipt { to, reply } => {
                answer(reply, cx.node.receipt(to).map_err(Into::into));
            }
            QueueCommand::Prune {
                to,
                expired_grace,
                reply,
            } => {
                let r = cx.node.prune(to).and_then(|acked| {
                    let expired = match expired_grace {
                        Some(grace) => cx.node.prune_expired(to, wall_clock(), grace)?,
                        None => 0,
                    };
                    Ok((acked, expired))
                });
                answer(reply, r.map_err(Into::into));
            }
            QueueCommand::Work(cmd) => self.on_work(cx, cmd),
            QueueCommand::Mail(cmd) => super::mail::on_mail(cx, cmd),
        }
    }

    fn on_event(&mut self, cx: &mut Ctx<'_, S>, event: &Event) {
        let ev = match *event {
            Event::Connected { peer, .. } => MqEvent::Connected { peer },
            Event::Disconnected {
                peer, ref reason, ..
            } => MqEvent::Disconnected {
                peer,
                reason: reason.clone(),
            },
            Event::Acked { to, start, end } => MqEvent::Acked { to, start, end },
            Event::Message { from, seq } => {
                self.arrived(cx, from, seq);
                MqEvent::Message { from, seq }
            }
            Event::Fetched { from, seq } => {
                self.arrived(cx, from, seq);
                MqEvent::Fetched { from, seq }
            }
            Event::DeadLettered {
                from,
                seq,
                reason,
                deliveries,
            } => MqEvent::DeadLettered {
                from,
                seq,
                reason,
                deliveries,
            },
            Event::MailboxRefused {
                mailbox,
                to,
                reason,
            } => MqEvent::MailboxRefused {
                mailbox,
                to,
                reason,
            },
            _ => {
                debug!(?event, "peermq: event not surfaced to Mq");
                return;
            }
        };
        self.subscribers.publish(&ev);
    }

    /// Answers the parked reads once the generation has moved: here rather
    /// than where it moves, so that one input carrying many messages costs
    /// each stream a single read, and so that no read runs while the node's
    /// outputs are half drained.
    fn after_pump(&mut self, cx: &mut Ctx<'_, S>) {
        if !std::mem::take(&mut self.reads_due) {
            return;
        }
        for p in std::mem::take(&mut self.parked_reads) {
            if p.reply.is_closed() {
                continue;
            }
            let r = Self::read_unseen(cx, p.mailbox, &p.seen, p.limit);
            answer(p.reply, r.map(|recs| (recs, self.generation)));
        }
    }
}

/// A `get`'s outcome for a caller that gets the bytes, or nothing for a
/// cleared message: a message held back by its sender's times is an
/// error that says why.
fn fetched(r: Result<Fetch, peermq::NodeError>) -> Result<Option<Fetch>, String> {
    match r {
        Ok(Fetch::Cleared) => Ok(None),
        Ok(Fetch::NotYet(t)) => Err(format!(
            "its sender asked that it not be delivered before {}",
            t
        )),
        Ok(Fetch::Expired) => Err("its sender's expiry passed: it will not be delivered".into()),
        Ok(fetch) => Ok(Some(fetch)),
        Err(e) => Err(e.to_string()),
    }
}

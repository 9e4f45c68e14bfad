//! Working through received messages: categories to move them into, and
//! leases to take them with, as a job queue does.
//!
//! `take` hands out the next unread message with a lease until a
//! deadline. Until the holder archives or moves it, releases it or lets
//! the deadline pass, no other `take` (in this process or another on the
//! data directory) gets it: every lease is written, conditionally, into
//! the sender's marks record, so two takers of one message cannot both
//! commit. A released or lapsed message is handed out again after the
//! [`RetryPolicy`]'s backoff, with its delivery count; one delivered the
//! policy's maximum number of times goes to [`Category::DEAD`] instead.
//!
//! Lease times are [`Timestamp`]s: every process on a data directory
//! checks the same deadlines, so they must share a clock (the system's).

use std::time::Duration;

use super::category::{Category, DeadReason};
use super::event::{Event, Output};
use super::marks::{Job, Marks};
use super::queue::{check_movable, due, open_due, Mailbox};
use super::{peer_keys, retry_on_conflict, Node, NodeError};
use crate::feed::FeedDescriptor;
use crate::identity::PeerId;
use crate::store::{keys, Store, Table, Txn};
use crate::time::{Instant, Timestamp};

/// How a consumer retries a message it could not process: the delays
/// before each redelivery, as NATS JetStream's `BackOff`, and how many
/// deliveries a message gets before it is dead-lettered (`MaxDeliver`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The delay before the second delivery, the third, and so on; the
    /// last one repeats. Empty: no delay.
    pub backoff: Vec<Duration>,
    /// Deliveries before a message goes to [`Category::DEAD`] (at least 1).
    pub max_deliveries: u32,
}

impl Default for RetryPolicy {
    /// Five deliveries, 1 s, 10 s, then 60 s apart.
    fn default() -> Self {
        RetryPolicy {
            backoff: vec![
                Duration::from_secs(1),
                Duration::from_secs(10),
                Duration::from_secs(60),
            ],
            max_deliveries: 5,
        }
    }
}

impl RetryPolicy {
    /// The delay after delivery number `delivery` (1 for the first) failed.
    pub fn delay_after(&self, delivery: u32) -> Duration {
        let i = (delivery.max(1) - 1) as usize;
        self.backoff
            .get(i)
            .or(self.backoff.last())
            .copied()
            .unwrap_or(Duration::ZERO)
    }
}

/// A consumer's hold on a message, from [`Node::take`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The sender.
    pub from: PeerId,
    /// The message.
    pub seq: u64,
    /// Which lease: unique per sender, so a lapsed lease never passes for
    /// the one another consumer holds now.
    pub token: u64,
    /// When it lapses unless extended.
    pub deadline: Timestamp,
}

/// A message taken with a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taken {
    /// The hold on it: archive it ([`Node::archive`]) when done, or
    /// [`Node::release`] it.
    pub lease: Lease,
    /// Which delivery this is: 1 the first time, more after releases and
    /// lapsed leases.
    pub delivery: u32,
    /// The message bytes.
    pub data: Vec<u8>,
}

/// What [`Node::release`] did with the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Released {
    /// It is handed out again from this time.
    RetryAt(Timestamp),
    /// It was delivered the policy's maximum number of times: it is in
    /// [`Category::DEAD`] now.
    DeadLettered,
}

/// A category or mailbox with how many messages it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CategoryCount {
    /// The category.
    pub mailbox: Mailbox,
    /// Messages in it.
    pub messages: u64,
    /// Of those, how many a consumer holds with a live lease (unread only).
    pub taken: u64,
}

impl<S: Store> Node<S> {
    /// Creates `category`, so that messages can be moved into it. Returns
    /// whether it is new. [`Category::DEAD`] always exists.
    pub fn create_category(&mut self, category: Category) -> Result<bool, NodeError> {
        retry_on_conflict(|| {
            let mut txn = Txn::begin_exclusive(&self.store)?;
            let raw = txn
                .committed(Table::Meta, keys::META_CATEGORIES)?
                .map(<[u8]>::to_vec);
            let mut known = decode_categories(raw.as_deref())?;
            if category == Category::DEAD || known.contains(&category) {
                return Ok(false);
            }
            known.push(category);
            let mut out = Vec::new();
            for c in &known {
                c.encode(&mut out);
            }
            txn.put_expecting(Table::Meta, keys::META_CATEGORIES, out, raw.as_deref());
            txn.commit()?;
            Ok(true)
        })
    }

    /// The categories that exist: created ones and [`Category::DEAD`], by
    /// name.
    pub fn known_categories(&self) -> Result<Vec<Category>, NodeError> {
        let txn = Txn::begin(&self.store)?;
        let mut known = decode_categories(txn.get(Table::Meta, keys::META_CATEGORIES)?)?;
        known.push(Category::DEAD);
        known.sort();
        Ok(known)
    }

    /// Every mailbox and category with its counts: unread, archived, then
    /// the categories by name.
    pub fn categories(&mut self, now: Timestamp) -> Result<Vec<CategoryCount>, NodeError> {
        let mut counts: Vec<CategoryCount> = [Mailbox::Unread, Mailbox::Archived]
            .into_iter()
            .chain(self.known_categories()?.into_iter().map(Mailbox::Category))
            .map(|mailbox| CategoryCount {
                mailbox,
                messages: 0,
                taken: 0,
            })
            .collect();
        let txn = Txn::begin(&self.store)?;
        for from in peer_keys(&txn, Table::Inbox, None)? {
            let (marks, _) = Marks::load(&txn, &from)?;
            let inbox = self.st.inbox(&txn, from)?;
            inbox.set_marks(&marks);
            let held = &inbox.dl.held;
            for c in &mut counts {
                match c.mailbox {
                    Mailbox::Unread => {
                        let unread = inbox.unread();
                        c.messages += unread.count();
                        c.taken += marks
                            .jobs
                            .iter()
                            .filter(|(seq, job)| unread.contains(**seq) && job.is_leased(now))
                            .count() as u64;
                    }
                    Mailbox::Archived => c.messages += within(held, &marks.archived),
                    Mailbox::Category(cat) => {
                        c.messages += marks.moved.get(&cat).map_or(0, |s| within(held, s));
                    }
                }
            }
        }
        Ok(counts)
    }

    /// Moves message `seq` from `from` to `to`: a category (which must
    /// exist), archived, or back to unread (its delivery count starts
    /// over). A message is in one place at a time, and a lease on it ends.
    /// Returns `false` if it already was there.
    pub fn move_to(
        &mut self,
        from: PeerId,
        seq: u64,
        to: Mailbox,
        now: Instant,
    ) -> Result<bool, NodeError> {
        if let Mailbox::Category(c) = to {
            if !self.known_categories()?.contains(&c) {
                return Err(NodeError::UnknownCategory(c));
            }
        }
        if to == Mailbox::Archived {
            return self.archive(from, seq, now);
        }
        self.update_places(from, now, |inbox, marks| {
            check_movable(inbox, marks, from, seq)?;
            match to {
                Mailbox::Category(c) if marks.category_of(seq) == Some(c) => Ok(false),
                Mailbox::Category(c) => {
                    marks.move_to(seq, c);
                    Ok(true)
                }
                _ if inbox.is_unread(seq) && !marks.jobs.contains_key(&seq) => Ok(false),
                _ => {
                    marks.unplace(seq);
                    Ok(true)
                }
            }
        })
    }

    /// Takes up to `max` unread messages, each with a lease of `lease_for`
    /// from `now`, in (sender, seq) order, in one commit. Skips messages
    /// another consumer holds, those waiting out a retry delay, and those
    /// whose sender's not-before time has not come; moves to
    /// [`Category::DEAD`] (with [`Event::DeadLettered`]) those `policy`
    /// allows no more deliveries, those whose sender's expiry passed, and
    /// those whose envelope cannot be opened. Only messages that arrived
    /// are taken. Empty when there is nothing to take now.
    pub fn take(
        &mut self,
        max: usize,
        lease_for: Duration,
        policy: &RetryPolicy,
        now: Timestamp,
    ) -> Result<Vec<Taken>, NodeError> {
        let me = self.st.me;
        let mut dead = Vec::new();
        let mut touched = Vec::new();
        let taken = retry_on_conflict(|| {
            dead.clear();
            touched.clear();
            let mut out = Vec::new();
            let mut txn = Txn::begin_exclusive(&self.store)?;
            for from in peer_keys(&txn, Table::Inbox, None)? {
                if out.len() >= max {
                    break;
                }
                let (mut marks, raw) = Marks::load(&txn, &from)?;
                let raw = raw.map(<[u8]>::to_vec);
                let inbox = self.st.inbox(&txn, from)?;
                inbox.set_marks(&marks);
                let unread = inbox.unread();
                let feed = self.st.feed(&txn, FeedDescriptor::queue(from, me))?;
                let mut changed = false;
                for seq in unread.iter_within(0, feed.len()) {
                    if out.len() >= max {
                        break;
                    }
                    let job = marks.jobs.get(&seq).copied().unwrap_or_default();
                    if job.is_leased(now) || job.available_at() > now {
                        continue;
                    }
                    let Some(block) = feed.get_held(&txn, seq)? else {
                        continue;
                    };
                    // Under the writer lock, only what decides whether it
                    // may be taken: its seal is opened after the commit,
                    // so that workers do not wait on each other's
                    // decryption.
                    let admitted = if job.deliveries >= policy.max_deliveries.max(1) {
                        Err(Some(DeadReason::MaxDeliveries))
                    } else {
                        due(&block, Some(now)).map_err(|hold| hold.dead_reason())
                    };
                    let admitted = match admitted {
                        Ok(admitted) => admitted,
                        Err(None) => continue,
                        Err(Some(reason)) => {
                            marks.move_to(seq, Category::DEAD);
                            marks.dead.insert(seq, (reason, job.deliveries));
                            dead.push((from, seq, reason, job.deliveries));
                            changed = true;
                            continue;
                        }
                    };
                    changed = true;
                    let lease = Lease {
                        from,
                        seq,
                        token: marks.next_lease,
                        deadline: now + lease_for,
                    };
                    marks.next_lease += 1;
                    let delivery = job.deliveries + 1;
                    marks.jobs.insert(
                        seq,
                        Job {
                            deliveries: delivery,
                            lease: Some((lease.token, lease.deadline)),
                            retry_at: job.retry_at,
                        },
                    );
                    out.push((
                        Taken {
                            lease,
                            delivery,
                            data: block,
                        },
                        admitted,
                    ));
                }
                if changed {
                    marks.save(&mut txn, &from, raw.as_deref());
                    touched.push((from, marks));
                }
            }
            txn.commit()?;
            Ok(out)
        })?;
        for (from, marks) in &touched {
            if let Some(inbox) = self.st.inboxes.get_mut(from) {
                if inbox.set_marks(marks) {
                    self.st.schedule_requests(*from);
                }
            }
        }
        let mut opened = Vec::with_capacity(taken.len());
        for (mut t, admitted) in taken {
            let (from, seq) = (t.lease.from, t.lease.seq);
            match open_due(
                &mut self.opener,
                from,
                seq,
                std::mem::take(&mut t.data),
                admitted,
            ) {
                Ok(data) => {
                    t.data = data;
                    opened.push(t);
                }
                // Sealed to another key, or damaged by its author: it goes
                // to the dead letters, as any unreadable message does.
                Err(_) => {
                    let lease = t.lease;
                    // It was never handed out: this take does not count.
                    let deliveries = t.delivery - 1;
                    let moved = self.update_marks(from, |_, marks| {
                        if held_job(marks, &lease).is_err() {
                            return Ok(false);
                        }
                        marks.move_to(seq, Category::DEAD);
                        marks.dead.insert(seq, (DeadReason::Unreadable, deliveries));
                        Ok(true)
                    })?;
                    if moved {
                        dead.push((from, seq, DeadReason::Unreadable, deliveries));
                    }
                }
            }
        }
        for (from, seq, reason, deliveries) in dead {
            self.st.out.push_back(Output::Event(Event::DeadLettered {
                from,
                seq,
                reason,
                deliveries,
            }));
        }
        Ok(opened)
    }

    /// Extends `lease` to `lease_for` from `now`, for a consumer that needs
    /// longer. Returns the new deadline.
    ///
    /// # Errors
    ///
    /// [`NodeError::LeaseLost`] when the lease is no longer held: another
    /// consumer took the message after it lapsed, or it was archived,
    /// moved or cleared.
    pub fn extend(
        &mut self,
        lease: &Lease,
        lease_for: Duration,
        now: Timestamp,
    ) -> Result<Timestamp, NodeError> {
        let deadline = now + lease_for;
        self.update_marks(lease.from, |_, marks| {
            let job = held_job(marks, lease)?;
            marks.jobs.insert(
                lease.seq,
                Job {
                    lease: Some((lease.token, deadline)),
                    ..job
                },
            );
            Ok(true)
        })?;
        Ok(deadline)
    }

    /// Gives `lease`'s message back, unprocessed (a "nak"): it is handed
    /// out again after `delay`, or after `policy`'s backoff for its
    /// delivery count when `None`; or, if it had `policy`'s maximum
    /// deliveries, it goes to [`Category::DEAD`] now.
    ///
    /// # Errors
    ///
    /// [`NodeError::LeaseLost`] as for [`Node::extend`].
    pub fn release(
        &mut self,
        lease: &Lease,
        delay: Option<Duration>,
        policy: &RetryPolicy,
        now: Timestamp,
    ) -> Result<Released, NodeError> {
        let mut outcome = Released::DeadLettered;
        let mut deliveries = 0;
        self.update_marks(lease.from, |_, marks| {
            let job = held_job(marks, lease)?;
            deliveries = job.deliveries;
            if job.deliveries >= policy.max_deliveries.max(1) {
                marks.move_to(lease.seq, Category::DEAD);
                marks
                    .dead
                    .insert(lease.seq, (DeadReason::MaxDeliveries, job.deliveries));
                outcome = Released::DeadLettered;
            } else {
                let at = now + delay.unwrap_or_else(|| policy.delay_after(job.deliveries));
                marks.jobs.insert(
                    lease.seq,
                    Job {
                        lease: None,
                        retry_at: at,
                        ..job
                    },
                );
                outcome = Released::RetryAt(at);
            }
            Ok(true)
        })?;
        if outcome == Released::DeadLettered {
            self.st.out.push_back(Output::Event(Event::DeadLettered {
                from: lease.from,
                seq: lease.seq,
                reason: DeadReason::MaxDeliveries,
                deliveries,
            }));
            self.st.schedule_requests(lease.from);
        }
        Ok(outcome)
    }

    /// Why message `seq` from `from` is in [`Category::DEAD`], and after
    /// how many deliveries; `None` if it is not there or was moved there
    /// by hand.
    pub fn dead_reason(
        &self,
        from: PeerId,
        seq: u64,
    ) -> Result<Option<(DeadReason, u32)>, NodeError> {
        let txn = Txn::begin(&self.store)?;
        let (marks, _) = Marks::load(&txn, &from)?;
        Ok(marks.dead.get(&seq).copied())
    }
}

/// The job `lease` holds, if it still does.
fn held_job(marks: &Marks, lease: &Lease) -> Result<Job, NodeError> {
    match marks.jobs.get(&lease.seq) {
        Some(job) if job.lease.is_some_and(|(token, _)| token == lease.token) => Ok(*job),
        _ => Err(NodeError::LeaseLost {
            from: lease.from,
            seq: lease.seq,
        }),
    }
}

/// How many of `set` are in `held`.
fn within(held: &crate::ranges::RangeSet, set: &crate::ranges::RangeSet) -> u64 {
    set.ranges().map(|(a, b)| held.count_within(a, b)).sum()
}

fn decode_categories(raw: Option<&[u8]>) -> Result<Vec<Category>, NodeError> {
    let mut rest = raw.unwrap_or_default();
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (c, more) = Category::decode(rest).ok_or_else(|| {
            crate::store::StoreError::Corrupted("the list of categories is damaged".into())
        })?;
        out.push(c);
        rest = more;
    }
    Ok(out)
}

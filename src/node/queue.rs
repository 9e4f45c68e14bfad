//! The message-queue commands: peers, send, read, get, archive, clear,
//! receipts.

use std::borrow::Cow;
use std::ops::{Bound, ControlFlow, Range};

use crate::feed::FeedDescriptor;
use crate::identity::seal::{Opener, TAG_LEN};
use crate::identity::PeerId;
use crate::ranges::RangeSet;
use crate::store::{Store, Table, Txn};
use crate::time::{Instant, Timestamp};
use crate::wire::envelope::{self, Due, Schedule};
use crate::wire::Receipt;

use super::category::{Category, DeadReason};
use super::event::{Event, Output};
use super::marks::Marks;
use super::{retry_on_conflict, CloseReason, Node, NodeError};

/// Room a data message needs besides its block: header, head, range, proof.
const DATA_OVERHEAD: usize = 8 << 10;

/// Most bytes sealing adds to a message: the envelope (magic, both times,
/// the ephemeral key, the end) and the tag.
const SEALED_OVERHEAD: usize = envelope::MAGIC.len() + 2 * 10 + 34 + 1 + TAG_LEN;

/// Where a received message is, and which messages [`Node::read`]
/// returns: every held message is in exactly one of these (or cleared).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mailbox {
    /// Arrived, and not yet archived, moved or cleared: where new messages
    /// land. Taken messages stay here until archived or moved.
    Unread,
    /// Archived (processed).
    Archived,
    /// Moved into a category ([`Node::move_to`]); [`Category::DEAD`]
    /// holds the dead letters.
    Category(Category),
}

impl std::fmt::Display for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mailbox::Unread => f.write_str("unread"),
            Mailbox::Archived => f.write_str("archived"),
            Mailbox::Category(c) => f.write_str(c.as_str()),
        }
    }
}

impl std::str::FromStr for Mailbox {
    type Err = super::category::CategoryError;
    /// `unread`, `archived`, or a category name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "unread" => Ok(Mailbox::Unread),
            "archived" => Ok(Mailbox::Archived),
            name => Category::new(name).map(Mailbox::Category),
        }
    }
}

/// A received message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The sender.
    pub from: PeerId,
    /// Its position in the sender's feed to us.
    pub seq: u64,
    /// The message bytes.
    pub data: Vec<u8>,
}

/// The result of [`Node::get`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetch {
    /// The message is here.
    Ready(Vec<u8>),
    /// It is being fetched; [`super::Event::Fetched`] tells when it arrives.
    Pending,
    /// It was cleared and will not be fetched again.
    Cleared,
    /// It is here, unread, and its sender asked that it not be delivered
    /// before this time.
    NotYet(Timestamp),
    /// It is here, unread, and its sender's expiry passed: it will not be
    /// delivered.
    Expired,
}

/// What a node knows about its exchange with one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer.
    pub peer: PeerId,
    /// Whether it may dial us.
    pub authorized: bool,
    /// Whether a connection to it is open.
    pub connected: bool,
    /// Messages we sent it.
    pub sent: u64,
    /// Of those, how many it acknowledged.
    pub acked: u64,
    /// Messages from it that arrived.
    pub received: u64,
    /// Of those, how many are unread.
    pub unread: u64,
}

impl<S: Store> Node<S> {
    /// Authorizes `peer` to dial us. Returns whether it was new.
    pub fn add_peer(&mut self, peer: PeerId) -> Result<bool, NodeError> {
        if self.st.peers.contains(&peer) {
            return Ok(false);
        }
        let mut txn = Txn::begin(&self.store)?;
        txn.put(Table::Peers, &peer.0, &[]);
        txn.commit()?;
        self.st.peers.insert(peer);
        Ok(true)
    }

    /// Revokes `peer`: it may no longer dial us, any open connection with it
    /// closes now (unlike the original, which left them running), and we stop
    /// dialing it. Its messages stay. Returns whether it was authorized.
    pub fn remove_peer(&mut self, peer: &PeerId, now: Instant) -> Result<bool, NodeError> {
        let now = self.st.tick(now);
        let mut txn = Txn::begin(&self.store)?;
        txn.delete(Table::Peers, &peer.0);
        txn.commit()?;
        let was = self.st.peers.remove(peer);
        self.st.forget_dial(peer);
        self.st
            .close_conns_with(peer, CloseReason::PeerRemoved, now);
        self.pump(now);
        Ok(was)
    }

    /// The authorized peers, in id order.
    pub fn peers(&self) -> Vec<PeerId> {
        self.st.peers.iter().copied().collect()
    }

    /// Whether `peer` is authorized.
    pub fn is_authorized(&self, peer: &PeerId) -> bool {
        self.st.peers.contains(peer)
    }

    /// Largest message `send` accepts.
    pub fn max_send_size(&self) -> usize {
        self.st
            .config
            .max_message_size
            .saturating_sub(DATA_OVERHEAD)
    }

    /// Sends one message to `to`. It is durably stored when this returns
    /// (so it survives a crash), works offline, and travels once a connection
    /// exists. Returns its seq.
    pub fn send(&mut self, to: PeerId, message: &[u8], now: Instant) -> Result<u64, NodeError> {
        Ok(self.send_batch(to, &[message], now)?.start)
    }

    /// Sends several messages to `to` in one durable commit and one signed
    /// head. Returns their seqs.
    pub fn send_batch<B: AsRef<[u8]>>(
        &mut self,
        to: PeerId,
        messages: &[B],
        now: Instant,
    ) -> Result<Range<u64>, NodeError> {
        self.send_scheduled(to, messages, &Schedule::NONE, now)
    }

    /// [`Node::send_batch`] with delivery times: the recipient delivers
    /// none of `messages` before `schedule.not_before`, and dead-letters
    /// them as expired once `schedule.expires_at` passed, both by its own
    /// clock. The times are signed with the messages (PROTOCOL.md,
    /// "Delivery times").
    ///
    /// # Errors
    ///
    /// [`NodeError::NeverDeliverable`] when the expiry is not after the
    /// not-before time; as [`Node::send_batch`] otherwise.
    pub fn send_scheduled<B: AsRef<[u8]>>(
        &mut self,
        to: PeerId,
        messages: &[B],
        schedule: &Schedule,
        now: Instant,
    ) -> Result<Range<u64>, NodeError> {
        let now = self.st.tick(now);
        if to == self.st.me {
            return Err(NodeError::SelfSend(to));
        }
        if let (Some(not_before), Some(expires_at)) = (schedule.not_before, schedule.expires_at) {
            if !schedule.is_deliverable() {
                return Err(NodeError::NeverDeliverable {
                    not_before,
                    expires_at,
                });
            }
        }
        let limit = self.max_send_size();
        let sealer = if self.st.config.seal_messages {
            // One key agreement per epoch (`super::sealing`).
            let st = &mut self.st;
            let count = messages.len() as u64;
            Some(
                st.seal_keys
                    .sealer(&mut st.rng, st.me, to, count, now)
                    .map_err(|_| NodeError::Unsealable(to))?,
            )
        } else {
            None
        };
        let plain: Vec<Cow<'_, [u8]>> = match sealer {
            Some(_) => Vec::new(),
            None => messages
                .iter()
                .map(|m| envelope::wrap(schedule, m.as_ref()))
                .collect(),
        };
        let overhead = if sealer.is_some() { SEALED_OVERHEAD } else { 0 };
        if let Some(big) = messages
            .iter()
            .map(|m| m.as_ref().len() + overhead)
            .chain(plain.iter().map(|m| m.len()))
            .find(|&n| n > limit)
        {
            return Err(NodeError::TooLarge { size: big, limit });
        }
        let desc = FeedDescriptor::queue(self.st.me, to);
        let appended = retry_on_conflict(|| {
            let mut txn = Txn::begin(&self.store)?;
            let feed = self.st.feed(&txn, desc)?;
            let start = feed.len();
            if messages.is_empty() {
                return Ok((start, None));
            }
            // Sealed messages are bound to their seq, known only now.
            let sealed: Vec<Vec<u8>> = match &sealer {
                Some(s) => (start..)
                    .zip(messages)
                    .map(|(seq, m)| {
                        let m = m.as_ref();
                        let mut block =
                            envelope::sealed_header(schedule, &s.ephemeral(), m.len() + TAG_LEN);
                        s.seal_into(seq, m, &mut block);
                        block
                    })
                    .collect(),
                None => Vec::new(),
            };
            let appended = if sealer.is_some() {
                feed.append_batch(&mut txn, &mut self.signer, &sealed)
            } else {
                feed.append_batch(&mut txn, &mut self.signer, &plain)
            };
            let appended = appended.and_then(|h| Ok(txn.commit().map(|_| h)?));
            match appended {
                Ok(h) => Ok((start, Some(h))),
                Err(e) => {
                    // The cached feed may be ahead of the store, or behind
                    // another process's appends: reload it.
                    self.st.feeds.remove(&desc.id());
                    Err(e.into())
                }
            }
        });
        if appended.is_err() {
            // What was sealed may have reached the disk or not: the seqs it
            // took are sealed again under a fresh key.
            self.st.seal_keys.end(&to);
        }
        let (start, head) = appended?;
        let Some(head) = head else {
            return Ok(start..start);
        };
        if let Some(c) = self.st.conn_to(&to) {
            if let Some(conn) = self.st.conns.get_mut(&c) {
                conn.announce(desc, head, start);
            }
        }
        self.offer_to_mailboxes(desc, head, &to);
        self.pump(now);
        Ok(start..head.length)
    }

    /// Reads up to `limit` messages of `mailbox`, ordered by sender id then
    /// seq, starting after `after` (a `(from, seq)` position; `None` starts at
    /// the beginning). Only messages that arrived are returned; those not yet
    /// downloaded are fetched as reading reaches them: reading the unread
    /// mailbox moves the prefetch window ([`crate::Prefetch::Window`]) past
    /// what was read, as archiving does.
    ///
    /// The unread mailbox keeps the sender's delivery times by `now` (a
    /// wall-clock time): a message whose not-before time has not come is
    /// skipped (read again later; [`Node::next_due`] says when), and one
    /// whose expiry passed, or whose envelope cannot be opened, moves to
    /// [`Category::DEAD`] with [`Event::DeadLettered`] instead of being
    /// returned. A message that cannot be opened is never returned from any
    /// mailbox.
    pub fn read(
        &mut self,
        mailbox: Mailbox,
        after: Option<(PeerId, u64)>,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<Record>, NodeError> {
        let mut out = Vec::new();
        let mut doomed = Vec::new();
        let txn = Txn::begin(&self.store)?;
        let senders = super::peer_keys(&txn, Table::Inbox, after.as_ref().map(|(p, _)| p))?;
        for from in senders {
            if out.len() >= limit {
                break;
            }
            let me = self.st.me;
            // Fresh marks: another process on the data directory may have
            // archived, moved or cleared since.
            let (marks, _) = Marks::load(&txn, &from)?;
            let inbox = self.st.inbox(&txn, from)?;
            let changed = inbox.set_marks(&marks);
            let mut set = match mailbox {
                Mailbox::Unread => inbox.unread(),
                Mailbox::Archived => set_intersect(&inbox.dl.held, &inbox.archived),
                Mailbox::Category(c) => match marks.moved.get(&c) {
                    Some(moved) => set_intersect(&inbox.dl.held, moved),
                    None => RangeSet::new(),
                },
            };
            set.subtract(&inbox.cleared);
            if changed {
                self.st.schedule_requests(from);
            }
            let first = match after {
                Some((p, seq)) if p == from => seq.saturating_add(1),
                _ => 0,
            };
            let feed = self.st.feed(&txn, FeedDescriptor::queue(from, me))?;
            let unread = mailbox == Mailbox::Unread;
            let mut last = None;
            for seq in set.iter_within(first, feed.len()) {
                if out.len() >= limit {
                    break;
                }
                last = Some(seq);
                let Some(block) = feed.get_held(&txn, seq)? else {
                    continue;
                };
                match deliverable(&mut self.opener, from, seq, block, unread.then_some(now)) {
                    Ok(data) => out.push(Record { from, seq, data }),
                    Err(hold) => {
                        if let Some(reason) = hold.dead_reason() {
                            doomed.push((from, seq, reason));
                        }
                    }
                }
            }
            if let (true, Some(last)) = (unread, last) {
                if self
                    .st
                    .inbox(&txn, from)?
                    .read_up_to(last.saturating_add(1))
                {
                    self.st.schedule_requests(from);
                }
            }
        }
        drop(txn);
        self.dead_letter_unread(&doomed, now)?;
        Ok(out)
    }

    /// The earliest time a held unread message that [`Node::read`] now
    /// skips for its not-before time becomes due, if there is one.
    pub fn next_due(&mut self, now: Timestamp) -> Result<Option<Timestamp>, NodeError> {
        let txn = Txn::begin(&self.store)?;
        let me = self.st.me;
        let mut next: Option<Timestamp> = None;
        for from in super::peer_keys(&txn, Table::Inbox, None)? {
            let (marks, _) = Marks::load(&txn, &from)?;
            let inbox = self.st.inbox(&txn, from)?;
            inbox.set_marks(&marks);
            let mut unread = inbox.unread();
            unread.subtract(&inbox.cleared);
            let feed = self.st.feed(&txn, FeedDescriptor::queue(from, me))?;
            for seq in unread.iter_within(0, feed.len()) {
                if let Some(block) = feed.get(&txn, seq)? {
                    if let Ok(opened) = envelope::open(&block) {
                        if let Due::At(t) = opened.schedule.due(now) {
                            next = Some(next.map_or(t, |n| n.min(t)));
                        }
                    }
                }
            }
        }
        Ok(next)
    }

    /// Moves `doomed` messages (expired or unreadable, found unread by a
    /// reader) to [`Category::DEAD`], those still unread and not held by a
    /// live lease, and says so with [`Event::DeadLettered`].
    pub(super) fn dead_letter_unread(
        &mut self,
        doomed: &[(PeerId, u64, DeadReason)],
        now: Timestamp,
    ) -> Result<(), NodeError> {
        for these in doomed.chunk_by(|a, b| a.0 == b.0) {
            let from = these[0].0;
            let mut moved = Vec::new();
            self.update_marks(from, |inbox, marks| {
                moved.clear();
                for &(_, seq, reason) in these {
                    let job = marks.jobs.get(&seq).copied().unwrap_or_default();
                    if !inbox.is_unread(seq) || job.is_leased(now) {
                        continue;
                    }
                    marks.move_to(seq, Category::DEAD);
                    marks.dead.insert(seq, (reason, job.deliveries));
                    moved.push((seq, reason, job.deliveries));
                }
                Ok(!moved.is_empty())
            })?;
            if !moved.is_empty() {
                self.st.schedule_requests(from);
            }
            for (seq, reason, deliveries) in moved {
                self.st.out.push_back(Output::Event(Event::DeadLettered {
                    from,
                    seq,
                    reason,
                    deliveries,
                }));
            }
        }
        Ok(())
    }

    /// Message `seq` from `from`: here, being fetched, or cleared. Asking
    /// for one not yet downloaded fetches it (with its proof) even outside
    /// the prefetch window; [`super::Event::Fetched`] tells when it arrives.
    /// The request lives in memory: after a restart, ask again.
    ///
    /// An unread message keeps its sender's delivery times by `wall`:
    /// before its not-before time it is [`Fetch::NotYet`], after its
    /// expiry [`Fetch::Expired`] (a reader dead-letters it).
    ///
    /// # Errors
    ///
    /// [`NodeError::Unreadable`] when its envelope cannot be opened.
    pub fn get(
        &mut self,
        from: PeerId,
        seq: u64,
        now: Instant,
        wall: Timestamp,
    ) -> Result<Fetch, NodeError> {
        let now = self.st.tick(now);
        let txn = Txn::begin(&self.store)?;
        let me = self.st.me;
        let inbox = self.st.inbox(&txn, from)?;
        if inbox.cleared.contains(seq) {
            return Ok(Fetch::Cleared);
        }
        if inbox.dl.held.contains(seq) {
            let unread = inbox.is_unread(seq);
            let feed = self.st.feed(&txn, FeedDescriptor::queue(from, me))?;
            if let Some(block) = feed.get_held(&txn, seq)? {
                return match deliverable(&mut self.opener, from, seq, block, unread.then_some(wall))
                {
                    Ok(data) => Ok(Fetch::Ready(data)),
                    Err(Hold::Until(t)) => Ok(Fetch::NotYet(t)),
                    Err(Hold::Expired) => Ok(Fetch::Expired),
                    Err(Hold::Unreadable(error)) => Err(NodeError::Unreadable { from, seq, error }),
                };
            }
        }
        if let Some(inbox) = self.st.inboxes.get_mut(&from) {
            inbox.wanted.insert(seq, seq + 1);
        }
        drop(txn);
        self.st.schedule_requests(from);
        self.pump(now);
        Ok(Fetch::Pending)
    }

    /// Marks message `seq` from `from` processed: it leaves the unread
    /// mailbox for good and is kept in the archived one. Returns `false` if
    /// it already was archived, so a consumer can process each message
    /// exactly once, even with several processes on one data directory.
    pub fn archive(&mut self, from: PeerId, seq: u64, now: Instant) -> Result<bool, NodeError> {
        Ok(self.archive_many(from, &[seq], now)?[0])
    }

    /// Archives messages `seqs` from `from` in one commit, all or none (an
    /// error for one, such as [`NodeError::Cleared`], archives nothing).
    /// Returns, for each, whether it was newly archived; as
    /// [`Node::archive`] otherwise.
    pub fn archive_many(
        &mut self,
        from: PeerId,
        seqs: &[u64],
        now: Instant,
    ) -> Result<Vec<bool>, NodeError> {
        let mut fresh = Vec::with_capacity(seqs.len());
        self.update_places(from, now, |inbox, marks| {
            fresh.clear();
            for &seq in seqs {
                check_movable(inbox, marks, from, seq)?;
                let new = !marks.archived.contains(seq);
                if new {
                    marks.unplace(seq);
                    marks.archived.insert(seq, seq + 1);
                }
                fresh.push(new);
            }
            Ok(fresh.contains(&true))
        })?;
        Ok(fresh)
    }

    /// Drops message `seq` from `from` locally: its bytes are deleted, it
    /// leaves both mailboxes, and it is never downloaded again (it may not
    /// have arrived yet). Returns `false` if it already was cleared.
    pub fn clear(&mut self, from: PeerId, seq: u64, now: Instant) -> Result<bool, NodeError> {
        let now = self.st.tick(now);
        let me = self.st.me;
        // The mark and the dropped bytes in one commit: on a full disk,
        // where clearing is how space is freed, a mark committed alone
        // would leave bytes that no later `clear` drops.
        let changed = self.update_marks_and(
            from,
            |_, marks| {
                if marks.cleared.contains(seq) {
                    return Ok(false);
                }
                marks.unplace(seq);
                marks.cleared.insert(seq, seq + 1);
                Ok(true)
            },
            |st, txn| {
                let feed = st.feed(txn, FeedDescriptor::queue(from, me))?;
                feed.drop_block(txn, seq)?;
                Ok(())
            },
        )?;
        if changed {
            if let Some(inbox) = self.st.inboxes.get_mut(&from) {
                inbox.wanted.remove(seq, seq + 1);
            }
            self.st.send_ack(from);
            self.st.schedule_requests(from);
            self.pump(now);
        }
        Ok(changed)
    }

    /// [`Node::update_marks`] for a change of where messages are: when it
    /// changed anything, the download window may have moved, so requests
    /// are scheduled and the outputs pumped. Returns what `change` returned.
    pub(super) fn update_places(
        &mut self,
        from: PeerId,
        now: Instant,
        change: impl FnMut(&super::inbox::Inbox, &mut Marks) -> Result<bool, NodeError>,
    ) -> Result<bool, NodeError> {
        let now = self.st.tick(now);
        let changed = self.update_marks(from, change)?;
        if changed {
            self.st.schedule_requests(from);
            self.pump(now);
        }
        Ok(changed)
    }

    /// Reads the sender's marks fresh from the store, lets `change` edit
    /// them, and writes them back. The store's writer lock is held
    /// throughout where it has one ([`Txn::begin_exclusive`]), so other
    /// processes on the data directory wait rather than conflict;
    /// otherwise the write is conditional on nobody having written
    /// meanwhile, and retried if another process did. Returns what
    /// `change` returned.
    pub(super) fn update_marks(
        &mut self,
        from: PeerId,
        change: impl FnMut(&super::inbox::Inbox, &mut Marks) -> Result<bool, NodeError>,
    ) -> Result<bool, NodeError> {
        self.update_marks_and(from, change, |_, _| Ok(()))
    }

    /// [`Node::update_marks`], and when `change` changed them, `also`
    /// writes more in the same transaction (all of it commits, or none).
    pub(super) fn update_marks_and(
        &mut self,
        from: PeerId,
        mut change: impl FnMut(&super::inbox::Inbox, &mut Marks) -> Result<bool, NodeError>,
        mut also: impl FnMut(&mut super::State, &mut Txn<'_, S>) -> Result<(), NodeError>,
    ) -> Result<bool, NodeError> {
        retry_on_conflict(|| {
            let mut txn = Txn::begin_exclusive(&self.store)?;
            let (mut marks, raw) = Marks::load(&txn, &from)?;
            let raw = raw.map(<[u8]>::to_vec);
            let inbox = self.st.inbox(&txn, from)?;
            inbox.set_marks(&marks);
            if !change(inbox, &mut marks)? {
                return Ok(false);
            }
            marks.save(&mut txn, &from, raw.as_deref());
            also(&mut self.st, &mut txn)?;
            txn.commit()?;
            if let Some(inbox) = self.st.inboxes.get_mut(&from) {
                inbox.set_marks(&marks);
            }
            Ok(true)
        })
    }

    /// The latest receipt `to` signed for our messages to it, checkable by
    /// anyone with [`Receipt::verify`]. See [`Node::receipts`] for a proof
    /// covering every acknowledged message.
    pub fn receipt(&self, to: PeerId) -> Result<Option<Receipt>, NodeError> {
        Ok(self.receipts(to)?.pop())
    }

    /// Exportable proof of delivery: the receipts `to` signed whose union is
    /// every message it acknowledged, oldest first (usually just one).
    pub fn receipts(&self, to: PeerId) -> Result<Vec<Receipt>, NodeError> {
        let txn = Txn::begin(&self.store)?;
        let feed = FeedDescriptor::queue(self.st.me, to).id();
        Ok(self.st.peek_outbox(&txn, to)?.receipts(&txn, &feed)?)
    }

    /// The messages to `to` it acknowledged.
    pub fn acknowledged(&self, to: PeerId) -> Result<RangeSet, NodeError> {
        let txn = Txn::begin(&self.store)?;
        Ok(self.st.peek_outbox(&txn, to)?.acked.clone())
    }

    /// Drops the bytes of every message `to` acknowledged (their hashes stay,
    /// so the feed remains verifiable). Returns how many were dropped.
    pub fn prune(&mut self, to: PeerId) -> Result<u64, NodeError> {
        let mut txn = Txn::begin(&self.store)?;
        let n = self.st.prune_acked(&mut txn, to, None)?;
        if let Err(e) = txn.commit() {
            self.st.outboxes.remove(&to);
            return Err(e.into());
        }
        Ok(n)
    }

    /// Drops the bytes of every message to `to` that it has not
    /// acknowledged and whose expiry passed `grace` before `now` (a grace
    /// for the recipient's clock running behind ours: PROTOCOL.md,
    /// "Message envelopes and delivery times"). The recipient, asking for
    /// one, gets a refusal, and would not have delivered it anyway.
    /// Returns how many were dropped.
    pub fn prune_expired(
        &mut self,
        to: PeerId,
        now: Timestamp,
        grace: std::time::Duration,
    ) -> Result<u64, NodeError> {
        let desc = FeedDescriptor::queue(self.st.me, to);
        let mut txn = Txn::begin(&self.store)?;
        let length = self.st.feed(&txn, desc)?.len();
        let outbox = self.st.outbox(&txn, to)?;
        let mut todo = RangeSet::from_range(0, length);
        todo.subtract(&outbox.acked);
        todo.subtract(&outbox.pruned);
        let feed = self.st.feed(&txn, desc)?;
        let mut expired = RangeSet::new();
        for seq in todo.iter_within(0, length) {
            let Some(block) = feed.get(&txn, seq)? else {
                continue;
            };
            let ends = envelope::open(&block)
                .ok()
                .and_then(|o| o.schedule.expires_at);
            if ends.is_some_and(|t| t + grace <= now) {
                expired.insert(seq, seq + 1);
            }
        }
        if expired.is_empty() {
            return Ok(0);
        }
        let mut n = 0;
        for seq in expired.iter_within(0, length) {
            n += u64::from(feed.drop_block(&mut txn, seq)?);
        }
        self.st
            .outbox(&txn, to)?
            .add_pruned(&mut txn, &desc.id(), &expired);
        if let Err(e) = txn.commit() {
            self.st.outboxes.remove(&to);
            self.st.feeds.remove(&desc.id());
            return Err(e.into());
        }
        Ok(n)
    }

    /// A summary of the exchange with every peer we know of: authorized,
    /// connected, or one we sent to or received from.
    pub fn status(&self) -> Result<Vec<PeerStatus>, NodeError> {
        let txn = Txn::begin(&self.store)?;
        let me = self.st.me;
        let mut peers: std::collections::BTreeSet<PeerId> = self.st.peers.clone();
        peers.extend(self.st.conns.values().filter_map(|c| c.peer));
        let mut feeds = Vec::new();
        txn.scan(
            Table::Feeds,
            (Bound::Unbounded, Bound::Unbounded),
            &mut |_, v| {
                if let Some((desc, _)) = v.get(1..).and_then(FeedDescriptor::decode) {
                    feeds.push(desc);
                }
                ControlFlow::Continue(())
            },
        )?;
        peers.extend(super::peer_keys(&txn, Table::Inbox, None)?);
        for d in &feeds {
            if let crate::feed::FeedKind::Queue { recipient } = d.kind {
                if d.author == me {
                    peers.insert(recipient);
                }
            }
        }
        let mut out = Vec::new();
        for peer in peers {
            let sent = self
                .st
                .peek_feed(&txn, FeedDescriptor::queue(me, peer))?
                .len();
            let acked = self.st.peek_outbox(&txn, peer)?.acked.count_within(0, sent);
            let inbox = self.st.peek_inbox(&txn, peer)?;
            let received = inbox.acknowledged().count();
            let unread = inbox.unread();
            out.push(PeerStatus {
                peer,
                authorized: self.st.peers.contains(&peer),
                connected: self.st.conn_to(&peer).is_some(),
                sent,
                acked,
                received,
                unread: unread.count(),
            });
        }
        Ok(out)
    }
}

/// Whether message `seq` from `from` can be archived or moved: it arrived
/// and was not cleared.
pub(super) fn check_movable(
    inbox: &super::inbox::Inbox,
    marks: &Marks,
    from: PeerId,
    seq: u64,
) -> Result<(), NodeError> {
    if marks.cleared.contains(seq) {
        return Err(NodeError::Cleared { from, seq });
    }
    if !inbox.dl.held.contains(seq) {
        return Err(NodeError::NotHeld { from, seq });
    }
    Ok(())
}

/// Why a held message is not delivered now.
pub(super) enum Hold {
    /// Its not-before time is later.
    Until(Timestamp),
    /// Its expiry passed.
    Expired,
    /// Its envelope cannot be opened.
    Unreadable(envelope::EnvelopeError),
}

impl Hold {
    /// Why it goes to [`Category::DEAD`], if it does.
    pub(super) fn dead_reason(&self) -> Option<DeadReason> {
        match self {
            Hold::Until(_) => None,
            Hold::Expired => Some(DeadReason::Expired),
            Hold::Unreadable(_) => Some(DeadReason::Unreadable),
        }
    }
}

/// The payload of message `seq` from `from`, whose block is `block`, if a
/// reader may have it: always when `now` is `None` (a mailbox that keeps
/// no times), else by the block's schedule. A sealed message is opened
/// with `opener`; one whose envelope or seal cannot be opened is never
/// delivered.
pub(super) fn deliverable(
    opener: &mut Opener,
    from: PeerId,
    seq: u64,
    block: Vec<u8>,
    now: Option<Timestamp>,
) -> Result<Vec<u8>, Hold> {
    let due = due(&block, now)?;
    open_due(opener, from, seq, block, due)
}

/// Where a block that [`due`] admitted keeps its payload.
#[derive(Clone, Copy, Debug)]
pub(super) struct DueBlock {
    /// Bytes of envelope before the payload.
    envelope_len: usize,
    /// The epoch key it was sealed with, if it was.
    sealed: Option<[u8; 32]>,
}

/// The first, cheap half of [`deliverable`]: whether `block` may be
/// delivered now by its envelope and schedule, without opening its seal
/// (which [`open_due`] does, outside any lock a caller holds).
pub(super) fn due(block: &[u8], now: Option<Timestamp>) -> Result<DueBlock, Hold> {
    let opened = envelope::open(block).map_err(Hold::Unreadable)?;
    match now.map_or(Due::Now, |now| opened.schedule.due(now)) {
        Due::Now => {}
        Due::At(t) => return Err(Hold::Until(t)),
        Due::Expired => return Err(Hold::Expired),
    }
    Ok(DueBlock {
        envelope_len: block.len() - opened.payload.len(),
        sealed: opened.sealed,
    })
}

/// The second half of [`deliverable`]: the payload of a block [`due`]
/// admitted, its seal opened.
pub(super) fn open_due(
    opener: &mut Opener,
    from: PeerId,
    seq: u64,
    mut block: Vec<u8>,
    due: DueBlock,
) -> Result<Vec<u8>, Hold> {
    block.drain(..due.envelope_len);
    if let Some(ephemeral) = due.sealed {
        opener
            .open_in_place(from, &ephemeral, seq, &mut block)
            .map_err(|_| Hold::Unreadable(envelope::EnvelopeError::Sealed))?;
    }
    Ok(block)
}

fn set_intersect(a: &RangeSet, b: &RangeSet) -> RangeSet {
    let mut out = a.clone();
    let mut not_b = RangeSet::from_range(0, u64::MAX);
    not_b.subtract(b);
    out.subtract(&not_b);
    out
}

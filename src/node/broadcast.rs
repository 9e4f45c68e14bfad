//! Broadcast feeds: each author's event feed, replicated through the mesh.
//!
//! Every node keeps a *replica* of each broadcast feed it holds, its own
//! included, and relays them: it announces their heads on every connection,
//! fetches what its peers announced from whichever connection can serve it,
//! and serves what it holds to anyone, so an author's events reach nodes it
//! is not connected to. Every block is verified against the author's signed
//! head, so a relay cannot forge or alter events.

use std::ops::Range;

use crate::feed::{Feed, FeedDescriptor, FeedId, FeedKind, SignedHead};
use crate::identity::PeerId;
use crate::ranges::RangeSet;
use crate::store::{Store, StoreError, Table, Txn};
use crate::time::Instant;
use crate::wire::Message;

use super::download::Download;
use super::{retry_on_conflict, Event, Node, NodeError, Output, State};

/// Version 2 adds the bytes held; version 1 records read as holding 0.
const REPLICA_VERSION: u8 = 2;
const MAX_STORED_RANGES: usize = 1 << 20;

/// What this node holds of one broadcast feed.
#[derive(Clone, Debug)]
pub(crate) struct Replica {
    pub desc: FeedDescriptor,
    /// What arrived and was asked for; `announced` is the longest verified
    /// length any peer announced.
    pub dl: Download,
    /// Bytes of the blocks stored here (for another author's feed, counted
    /// against [`crate::Config::max_author_bytes`]).
    pub bytes: u64,
    /// The record as last committed, for a conditional write.
    record: Option<Vec<u8>>,
    /// In memory: the longest length we announced to our peers.
    pub gossiped: u64,
}

impl Replica {
    /// A replica of a feed only announced so far: nothing held or stored.
    pub fn new(desc: FeedDescriptor) -> Self {
        Replica {
            desc,
            dl: Download::default(),
            bytes: 0,
            record: None,
            gossiped: 0,
        }
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let (&v, rest) = bytes.split_first()?;
        if v != REPLICA_VERSION && v != 1 {
            return None;
        }
        let (desc, rest) = FeedDescriptor::decode(rest)?;
        let (held, rest) = RangeSet::decode(rest, MAX_STORED_RANGES)?;
        let (held_bytes, rest) = match v {
            1 => (0, rest),
            _ => (
                u64::from_le_bytes(rest.get(..8)?.try_into().ok()?),
                &rest[8..],
            ),
        };
        if !rest.is_empty() || desc.kind != FeedKind::Broadcast {
            return None;
        }
        let mut r = Replica::new(desc);
        r.dl.held = held;
        r.bytes = held_bytes;
        r.record = Some(bytes.to_vec());
        Some(r)
    }

    /// Writes the record into `txn`, conditional on the last one seen.
    pub fn save<S: Store>(&mut self, txn: &mut Txn<'_, S>) {
        let mut out = vec![REPLICA_VERSION];
        self.desc.encode(&mut out);
        self.dl.held.encode(&mut out);
        out.extend_from_slice(&self.bytes.to_le_bytes());
        let before = self.record.replace(out.clone());
        txn.put_expecting(Table::Replicas, &self.desc.id().0, out, before.as_deref());
    }

    /// How many blocks from 0 are held without a gap.
    pub fn contiguous(&self) -> u64 {
        self.dl.held.next_gap(0)
    }

    /// Whether nothing of the feed is held, in memory or in the store: an
    /// author only announced, which costs a peer one signed head.
    fn is_pending(&self) -> bool {
        self.dl.held.is_empty() && self.record.is_none()
    }
}

/// What bounds the broadcast feeds of other authors a node takes on.
#[derive(Debug, Default)]
pub(crate) struct Quota {
    /// Authors announced and not held yet, oldest first (some may have been
    /// filled or dropped since; they are skipped when evicting).
    pending: std::collections::VecDeque<FeedId>,
    /// Authors (ours excepted) with events held.
    held_authors: usize,
    /// Bytes of other authors' events held.
    relay_bytes: u64,
}

impl Quota {
    /// The quota of the replicas loaded at open.
    pub fn of(replicas: &std::collections::BTreeMap<FeedId, Replica>, me: &PeerId) -> Self {
        let others = replicas.values().filter(|r| r.desc.author != *me);
        Quota {
            pending: Default::default(),
            held_authors: others.clone().count(),
            relay_bytes: others.map(|r| r.bytes).sum(),
        }
    }
}

/// Summaries and have-lists answered per connection: one of each is what an
/// honest peer sends (at connect); the rest are ignored.
const MAX_EXCHANGES: u32 = 4;

/// BLAKE3 over a sorted `(feed, length)` list.
fn digest(list: &[(FeedId, u64)]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("peermq v1 broadcast summary");
    for (f, len) in list {
        h.update(&f.0);
        h.update(&len.to_le_bytes());
    }
    *h.finalize().as_bytes()
}

/// Loads every replica record (one per author held).
pub(crate) fn load_all<S: Store>(
    txn: &Txn<'_, S>,
) -> Result<std::collections::BTreeMap<FeedId, Replica>, StoreError> {
    super::load_per_feed(txn, Table::Replicas, "replica", |v| {
        Replica::decode(v).map(|r| (r.desc.id(), r))
    })
}

impl State {
    /// Whether we replicate `author`'s broadcast feed.
    pub(super) fn author_allowed(&self, author: &PeerId) -> bool {
        self.config.open || *author == self.me || self.peers.contains(author)
    }

    /// Whether a head of broadcast feed `desc` is worth looking at: its
    /// author is one we replicate, it has not forked the feed, and we hold
    /// some of the feed already or have room for another author. (An author
    /// only announced holds no room: of many announced at once, those whose
    /// events arrive first take it, and the rest are refused then.)
    pub(super) fn admits_broadcast(&self, desc: &FeedDescriptor) -> bool {
        let id = desc.id();
        let held = self.replicas.get(&id).is_some_and(|r| !r.is_pending());
        self.author_allowed(&desc.author)
            && !self.forks.contains_key(&id)
            && (held || desc.author == self.me || self.quota.held_authors < self.config.max_feeds)
    }

    /// Whether this node will not fetch (more of) `author`'s events: it does
    /// not replicate that author, the author forked its feed, or a quota is
    /// used up.
    pub(super) fn refuses(&self, author: &PeerId) -> bool {
        if *author == self.me {
            return false;
        }
        let desc = FeedDescriptor::broadcast(*author);
        if !self.admits_broadcast(&desc) {
            return true;
        }
        let over_author = self
            .replicas
            .get(&desc.id())
            .is_some_and(|r| r.bytes >= self.config.max_author_bytes);
        over_author || self.quota.relay_bytes >= self.config.max_relay_bytes
    }

    /// Takes on an author only announced so far, in memory: the oldest such
    /// is forgotten when there are too many.
    fn add_pending(&mut self, desc: FeedDescriptor) {
        let feed = desc.id();
        self.replicas.insert(feed, Replica::new(desc));
        self.quota.pending.push_back(feed);
        while self.quota.pending.len() > super::limits::MAX_PENDING_AUTHORS {
            let Some(old) = self.quota.pending.pop_front() else {
                break;
            };
            if self.replicas.get(&old).is_some_and(Replica::is_pending) {
                // Its requests in flight are answered into nothing: answers
                // for a feed we let go are dropped.
                self.replicas.remove(&old);
                self.feeds.remove(&old);
                for c in self.conns.values_mut() {
                    c.remote_heads.remove(&old);
                }
            }
        }
    }

    /// A peer announced a broadcast head.
    pub(super) fn on_broadcast_head(
        &mut self,
        conn: super::ConnId,
        desc: FeedDescriptor,
        head: SignedHead,
    ) -> Result<Option<FeedId>, NodeError> {
        let feed = desc.id();
        if !self.admits_broadcast(&desc) {
            return Ok(None);
        }
        if !self.replicas.contains_key(&feed) {
            // Nothing is stored for an author until its events are.
            self.add_pending(desc);
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            let known = c.remote_heads.entry(feed).or_insert(0);
            *known = (*known).max(head.length);
        }
        if self.refuses(&desc.author) {
            // Over a quota: say so once per connection, so the peer knows
            // why nothing is asked for.
            if let Some(c) = self.conns.get_mut(&conn) {
                if c.refused.len() < super::conn::MAX_REFUSALS_TOLD && c.refused.insert(feed) {
                    c.send(&crate::wire::Message::Refused {
                        feed,
                        reason: crate::wire::RefuseReason::Full,
                    });
                }
            }
        }
        // Taken on above, unless the quota made room by forgetting it.
        match self.replicas.get_mut(&feed) {
            Some(r) if head.length > r.dl.announced => {
                r.dl.announced = head.length;
                Ok(Some(feed))
            }
            _ => Ok(None),
        }
    }

    /// Asks connections that announced `feed` for the blocks we lack.
    pub(super) fn schedule_broadcast(&mut self, feed: FeedId) {
        self.to_schedule.insert(super::Target::Broadcast(feed));
    }

    /// Plans the requests [`State::schedule_broadcast`] asked for, marking
    /// them in flight; the caller sends them.
    pub(super) fn plan_broadcast(&mut self, feed: FeedId) -> Vec<super::Planned> {
        let mut planned = Vec::new();
        if self.forks.contains_key(&feed) {
            return planned;
        }
        let Some(author) = self.replicas.get(&feed).map(|r| r.desc.author) else {
            return planned;
        };
        if self.refuses(&author) {
            // Refused politely: nothing more is asked for, and nothing is
            // closed.
            return planned;
        }
        let Some(r) = self.replicas.get_mut(&feed) else {
            return planned;
        };
        let desc = r.desc;
        let base = self.feeds.get(&feed).map_or(0, |f| f.len());
        let wanted = r.dl.announced;
        if RangeSet::first_uncovered(&[&r.dl.held, &r.dl.requested], 0, wanted).is_none() {
            return planned;
        }
        let (per, max_inflight) = self.config.request_limits();
        for conn in self.conns.values_mut().filter(|c| c.is_open()) {
            let Some(&can) = conn.remote_heads.get(&feed) else {
                continue;
            };
            // Counted once: `busy` walks the in-flight list.
            let mut busy = conn.busy();
            let mut s = 0;
            while busy < max_inflight {
                let Some((a, e)) = r.dl.next_request(&[], s, can.min(wanted), per) else {
                    break;
                };
                busy += 1;
                planned.push(super::Planned {
                    conn: conn.id,
                    id: conn.plan_request(feed, a, e, false),
                    desc,
                    start: a,
                    end: e,
                    base,
                    // Announced lengths of broadcast feeds may come from
                    // unsigned have-lists: count only on what we verified.
                    known: base,
                });
                s = e;
            }
        }
        planned
    }

    /// Announces our head of `feed` on every open connection once we hold
    /// all of it (so whoever asks can be served), if it grew.
    pub(super) fn gossip(&mut self, feed: FeedId) {
        let Some(r) = self.replicas.get_mut(&feed) else {
            return;
        };
        let Some(head) = self.feeds.get(&feed).and_then(|f| f.head().copied()) else {
            return;
        };
        if head.length <= r.gossiped || r.contiguous() < head.length {
            return;
        }
        r.gossiped = head.length;
        let desc = r.desc;
        for conn in self.conns.values_mut().filter(|c| c.is_open()) {
            if conn
                .remote_heads
                .get(&feed)
                .is_some_and(|&l| l >= head.length)
            {
                continue;
            }
            conn.send(&Message::Head { desc, head });
        }
    }

    /// The broadcast feeds we can serve in full, with their lengths, sorted.
    fn servable<S: Store>(&mut self, txn: &Txn<'_, S>) -> Result<Vec<(FeedId, u64)>, NodeError> {
        let feeds: Vec<(FeedDescriptor, u64)> = self
            .replicas
            .values()
            .filter(|r| r.contiguous() > 0)
            .map(|r| (r.desc, r.contiguous()))
            .collect();
        let mut out = Vec::with_capacity(feeds.len());
        for (desc, held) in feeds {
            let len = self.feed(txn, desc)?.len();
            if len > 0 && held >= len {
                out.push((desc.id(), len));
            }
        }
        Ok(out)
    }

    /// Opens the broadcast exchange on a new connection with a digest of
    /// what we can serve: one small message, however many feeds we hold.
    pub(super) fn send_summary<S: Store>(
        &mut self,
        txn: &Txn<'_, S>,
        conn: super::ConnId,
    ) -> Result<(), NodeError> {
        let list = self.servable(txn)?;
        let msg = Message::Summary {
            count: list.len() as u32,
            digest: digest(&list),
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.send(&msg);
        }
        Ok(())
    }

    /// The peer's digest: if it differs from ours, send our list.
    pub(super) fn on_summary<S: Store>(
        &mut self,
        txn: &Txn<'_, S>,
        conn: super::ConnId,
        count: u32,
        their: [u8; 32],
    ) -> Result<(), NodeError> {
        if !self.exchange_allowed(conn) {
            return Ok(());
        }
        let list = self.servable(txn)?;
        if list.len() as u32 == count && digest(&list) == their {
            return Ok(());
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.send(&Message::Have { feeds: list });
        }
        Ok(())
    }

    /// Whether one more summary or have-list from the peer on `conn` gets
    /// an answer: an honest peer sends one of each per connection, and each
    /// answer may cost a list or a head of every feed we hold.
    fn exchange_allowed(&mut self, conn: super::ConnId) -> bool {
        self.conns.get_mut(&conn).is_some_and(|c| {
            c.exchanges += 1;
            c.exchanges <= MAX_EXCHANGES
        })
    }

    /// The peer's list: send heads of the feeds we can serve more of.
    /// Lengths it claims are kept only for feeds we hold (ids are unsigned,
    /// so anything else would be state a peer makes up at will).
    pub(super) fn on_have<S: Store>(
        &mut self,
        txn: &Txn<'_, S>,
        conn: super::ConnId,
        theirs: &[(FeedId, u64)],
    ) -> Result<(), NodeError> {
        if !self.exchange_allowed(conn) {
            return Ok(());
        }
        let theirs: std::collections::BTreeMap<FeedId, u64> = theirs
            .iter()
            .filter(|(f, _)| self.replicas.contains_key(f))
            .copied()
            .collect();
        if let Some(c) = self.conns.get_mut(&conn) {
            for (f, len) in &theirs {
                let known = c.remote_heads.entry(*f).or_insert(0);
                *known = (*known).max(*len);
            }
        }
        for (feed, len) in self.servable(txn)? {
            if theirs.get(&feed).copied().unwrap_or(0) >= len {
                continue;
            }
            let Some(desc) = self.replicas.get(&feed).map(|r| r.desc) else {
                continue;
            };
            let head = self.feed(txn, desc)?.head().copied();
            if let (Some(head), Some(c)) = (head, self.conns.get_mut(&conn)) {
                c.send(&Message::Head { desc, head });
            }
            if let Some(r) = self.replicas.get_mut(&feed) {
                r.gossiped = r.gossiped.max(len);
            }
        }
        Ok(())
    }

    /// Blocks `[start, start + sizes.len())` of broadcast `feed`, of
    /// `sizes` bytes each, were stored in this batch.
    pub(super) fn broadcast_arrived(
        &mut self,
        feed: FeedId,
        start: u64,
        sizes: impl Iterator<Item = usize>,
        events: &mut Vec<Event>,
    ) {
        let Some(r) = self.replicas.get_mut(&feed) else {
            return;
        };
        let was_pending = r.is_pending();
        let mut end = start;
        let mut bytes = 0u64;
        for (seq, size) in (start..).zip(sizes) {
            if !r.dl.held.contains(seq) {
                bytes += size as u64;
            }
            end = seq + 1;
        }
        let mut fresh = RangeSet::from_range(start, end);
        fresh.subtract(&r.dl.held);
        r.dl.held.insert(start, end);
        r.bytes += bytes;
        if r.desc.author != self.me {
            self.quota.relay_bytes += bytes;
            if was_pending && !r.dl.held.is_empty() {
                self.quota.held_authors += 1;
            }
        }
        r.dl.requested.remove(start, end);
        for seq in fresh.iter_within(start, end) {
            events.push(Event::Broadcast {
                author: r.desc.author,
                seq,
            });
        }
    }
}

impl<S: Store> Node<S> {
    /// Appends events to our broadcast feed, durably, in one signed batch,
    /// and announces them to every connected peer (who relay them onwards).
    /// Each event is also reported locally as an [`Event::Broadcast`].
    pub fn broadcast_batch<B: AsRef<[u8]>>(
        &mut self,
        events: &[B],
        now: Instant,
    ) -> Result<Range<u64>, NodeError> {
        let now = self.st.tick(now);
        let limit = self.max_send_size();
        if let Some(big) = events.iter().map(|m| m.as_ref().len()).find(|&n| n > limit) {
            return Err(NodeError::TooLarge { size: big, limit });
        }
        let desc = FeedDescriptor::broadcast(self.st.me);
        let id = desc.id();
        let (start, head) = retry_on_conflict(|| {
            let mut txn = Txn::begin(&self.store)?;
            let feed = self.st.feed(&txn, desc)?;
            let start = feed.len();
            if events.is_empty() {
                return Ok((start, None));
            }
            let appended = feed.append_batch(&mut txn, &mut self.signer, events);
            let replica = self
                .st
                .replicas
                .entry(id)
                .or_insert_with(|| Replica::new(desc));
            let mut updated = replica.clone();
            updated.dl.held.insert(start, start + events.len() as u64);
            updated.bytes += events.iter().map(|e| e.as_ref().len() as u64).sum::<u64>();
            updated.save(&mut txn);
            let committed = appended
                .map_err(NodeError::from)
                .and_then(|h| Ok(txn.commit().map(|_| h)?));
            match committed {
                Ok(head) => {
                    self.st.replicas.insert(id, updated);
                    Ok((start, Some(head)))
                }
                Err(e) => {
                    self.st.feeds.remove(&id);
                    if let Ok(t) = Txn::begin(&self.store) {
                        // Pick up the committed replica record for the retry.
                        if let Ok(all) = load_all(&t) {
                            if let Some(r) = all.get(&id) {
                                self.st.replicas.insert(id, r.clone());
                            }
                        }
                    }
                    Err(e)
                }
            }
        })?;
        let Some(head) = head else {
            return Ok(start..start);
        };
        let evs = (start..head.length).map(|seq| Event::Broadcast {
            author: self.st.me,
            seq,
        });
        self.st.out.extend(evs.map(Output::Event));
        self.st.gossip(id);
        self.pump(now);
        Ok(start..head.length)
    }

    /// Appends one event to our broadcast feed; see [`Node::broadcast_batch`].
    pub fn broadcast(&mut self, event: &[u8], now: Instant) -> Result<u64, NodeError> {
        Ok(self.broadcast_batch(&[event], now)?.start)
    }

    /// Block `seq` of `author`'s broadcast feed, if held here.
    pub fn broadcast_get(&self, author: PeerId, seq: u64) -> Result<Option<Vec<u8>>, NodeError> {
        let txn = Txn::begin(&self.store)?;
        let feed = self.st.peek_feed(&txn, FeedDescriptor::broadcast(author))?;
        Ok(feed.get(&txn, seq)?)
    }

    /// The broadcast feeds held here, and those only announced so far (at
    /// most [`limits::MAX_PENDING_AUTHORS`](crate::node::limits)): each
    /// author with the number of its events held from the start without a
    /// gap (0 for an author only announced).
    pub fn broadcast_feeds(&self) -> Vec<(PeerId, u64)> {
        self.st
            .replicas
            .values()
            .map(|r| (r.desc.author, r.contiguous()))
            .collect()
    }

    /// Whether this node replicates `author`'s broadcast feed (always in
    /// open mode; otherwise only authorized peers' and our own).
    pub fn replicates(&self, author: &PeerId) -> bool {
        self.st.author_allowed(author)
    }

    /// Whether this node will not fetch more of `author`'s events: it does
    /// not replicate that author, the author forked its feed, or a quota
    /// ([`crate::Config::max_feeds`], [`crate::Config::max_author_bytes`],
    /// [`crate::Config::max_relay_bytes`]) is used up. An event that depends
    /// on a refused author need not wait for it.
    pub fn refuses(&self, author: &PeerId) -> bool {
        self.st.refuses(author)
    }

    /// Loads a feed handle for inspection (tests, tools).
    pub fn feed_handle(&self, desc: FeedDescriptor) -> Result<Feed, NodeError> {
        let txn = Txn::begin(&self.store)?;
        Ok(self.st.peek_feed(&txn, desc)?.into_owned())
    }
}

//! Replication: handling a peer's messages, asking for blocks, serving
//! them, and acknowledging what arrived.
//!
//! One `handle_input` call is one unit of work: every message in the input
//! is decoded and verified, all writes go into one transaction, and only
//! after it commits are events emitted and receipts signed and sent.

use std::collections::BTreeSet;

use crate::feed::{FeedDescriptor, FeedError, FeedId, FeedKind, SignedHead};
use crate::identity::PeerId;
use crate::merkle::{flat, ProofError};
use crate::ranges::RangeSet;
use crate::store::{Store, Txn};
use crate::time::Instant;
use crate::wire::{DataMsg, Message, RangeRequest, Receipt, MAX_REQUEST_RANGES};

use super::config::{limits, Prefetch};
use super::conn::{next_message, HandshakeCtx, Inflight, Wanted};
use super::fork::ForkEvidence;
use super::timer::Timer;
use super::{CloseReason, ConnId, Event, NodeError, Output, Planned, State, Target};

/// Why handling a message stopped.
enum Fault {
    /// The peer misbehaved (or closed): drop its connection.
    Peer(CloseReason),
    /// Our store failed.
    Store(NodeError),
}

impl<E: Into<NodeError>> From<E> for Fault {
    fn from(e: E) -> Self {
        Fault::Store(e.into())
    }
}

/// Work to do once the batch's transaction committed.
#[derive(Default)]
struct AfterCommit {
    /// Senders whose held blocks changed: emit events, send receipts.
    arrived: BTreeSet<PeerId>,
    /// Blocks asked for with `get` that arrived.
    fetched: Vec<(PeerId, u64)>,
    /// Acknowledgement events.
    acked: Vec<Event>,
    /// Senders whose downloads may proceed.
    schedule: BTreeSet<PeerId>,
    /// Broadcast feeds that received blocks: save, gossip.
    broadcast_arrived: BTreeSet<FeedId>,
    /// Broadcast feeds whose downloads may proceed.
    broadcast_schedule: BTreeSet<FeedId>,
    /// Broadcast arrival events, emitted after the commit.
    broadcast_events: Vec<Event>,
    /// Connections whose requests completed: their freed capacity may serve
    /// any feed, not only the one that completed.
    freed: BTreeSet<ConnId>,
    /// Forks found (their evidence is in the transaction).
    forks: Vec<ForkEvidence>,
}

/// Verifies and stores a data message: against its head, or, for a proof
/// that stops at a node we hold, against that node.
fn store_data<S: Store>(
    feed: &mut crate::feed::Feed,
    txn: &mut Txn<'_, S>,
    d: &DataMsg<'_>,
) -> Result<(), FeedError> {
    match &d.head {
        Some(head) => feed.verify_and_store(txn, head, &d.proof, &d.blocks),
        None => feed.verify_below_and_store(txn, &d.proof, &d.blocks),
    }
}

/// Whether the answer to `earlier` (a request sent before, on the same
/// connection, so answered before) will bring tree node `i`: its proof
/// carries the path from its blocks up to where it stops (its trusted node,
/// or the roots of a tree at least `known` long, `known` being a length the
/// peer signed) and the sibling of every node on that path.
fn brings(earlier: &Inflight, i: u64, known: u64) -> bool {
    if earlier.trusted.is_none() && earlier.end > known {
        // A request past what the peer announced may be answered by a tail
        // it has not written yet; do not count on it.
        return false;
    }
    let p = flat::parent(i);
    let (first, end) = flat::blocks(p);
    first <= earlier.start
        && earlier.end <= end
        && end <= known
        && earlier
            .trusted
            .is_none_or(|t| flat::depth(p) <= flat::depth(t))
}

/// What became of a data message.
enum Stored {
    /// Verified and written.
    Yes,
    /// Not written, and nobody's fault: ask for the blocks again. Its proof
    /// stops at a node we expected an earlier answer to bring, which did not
    /// (it was refused or cut short), or it answers the open rest of a
    /// request whose earlier answer we did not store.
    Retry,
    /// Not written: its validly signed head does not fit our tree, which is
    /// either the author's fork or the peer's bad proof. A proof from base 0,
    /// which stands on its own, tells them apart: ask for one.
    Probe(u64),
    /// The author signed a head that conflicts with ours (ours, theirs).
    Forked(Box<(SignedHead, SignedHead)>),
}

/// Stores a data message answering `asked`, and says what became of it.
/// Any failure not covered by [`Stored`] is the peer's fault.
fn store_answer<S: Store>(
    feed: &mut crate::feed::Feed,
    txn: &mut Txn<'_, S>,
    d: &DataMsg<'_>,
    asked: &Inflight,
) -> Result<Stored, Fault> {
    if d.head.is_some() && d.proof.base != asked.base {
        // A responder that picks its own base could prove a conflicting tree
        // without touching the nodes we hold.
        return Err(Fault::Peer(CloseReason::Unexpected(format!(
            "a proof from length {} answers request {}, made from length {}",
            d.proof.base, d.request, asked.base
        ))));
    }
    if d.head.is_some() && asked.base > feed.len() {
        // A request left open from a head we did not adopt (its answer was
        // not stored): its proof cannot start from our tree.
        return Ok(Stored::Retry);
    }
    match store_data(feed, txn, d) {
        Ok(()) => Ok(Stored::Yes),
        Err(FeedError::Proof {
            source: ProofError::MissingBase(t),
            ..
        }) if d.head.is_none() && asked.trusted == Some(t) && d.proof.trusted == Some(t) => {
            Ok(Stored::Retry)
        }
        Err(FeedError::Fork { ours, theirs, .. }) => Ok(Stored::Forked(Box::new((*ours, *theirs)))),
        Err(
            e @ (FeedError::RootMismatch { .. }
            | FeedError::Proof {
                source: ProofError::Mismatch(_),
                ..
            }),
        ) => match (d.head, feed.head().copied()) {
            (Some(head), Some(ours)) if feed.check_head(&head) => {
                if feed.conflicts_with(&head) {
                    Ok(Stored::Forked(Box::new((ours, head))))
                } else if asked.base > 0 && head.length > ours.length {
                    Ok(Stored::Probe(ours.length))
                } else {
                    Err(feed_fault(e))
                }
            }
            _ => Err(feed_fault(e)),
        },
        Err(e) => Err(feed_fault(e)),
    }
}

/// Ranges planned for one connection and feed, sent as one request
/// message (their ids are consecutive from `first_id`).
struct RequestBatch {
    conn: ConnId,
    feed: FeedId,
    base: u64,
    first_id: u64,
    ranges: Vec<RangeRequest>,
}

impl RequestBatch {
    /// Whether planned request `p` can join: same connection, feed and
    /// base, the next id, and room in the message.
    fn takes(&self, p: &Planned) -> bool {
        self.conn == p.conn
            && self.feed == p.desc.id()
            && self.base == p.base
            && self.first_id + self.ranges.len() as u64 == p.id
            && self.ranges.len() < MAX_REQUEST_RANGES
    }
}

fn feed_fault(e: FeedError) -> Fault {
    match e {
        FeedError::Store(e) => Fault::Store(e.into()),
        FeedError::Corrupt { .. } | FeedError::NotAuthor { .. } | FeedError::MissingNode { .. } => {
            Fault::Store(e.into())
        }
        other => Fault::Peer(CloseReason::BadData(other.to_string())),
    }
}

impl State {
    pub(super) fn handle_input<S: Store>(
        &mut self,
        store: &S,
        id: ConnId,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), NodeError> {
        let Some(conn) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        if bytes.is_empty() {
            return Ok(());
        }
        // Liveness is judged by frames that decrypt, not raw bytes: bytes
        // that only extend a frame whose length prefix was corrupted would
        // otherwise keep a dead connection open for hours of keepalives.
        let rx_before = conn.rx.len();
        let peers = &self.peers;
        let open = self.config.open;
        let authorized = |p: &PeerId| open || peers.contains(p);
        let ctx = HandshakeCtx {
            identity: &self.key,
            noise_public: &self.noise_key.public,
            authorized: &authorized,
        };
        match conn.receive(bytes, &ctx) {
            Err(reason) => {
                self.drop_conn(id, reason, true, now);
                return Ok(());
            }
            Ok(Some(peer)) => self.on_connected(store, id, peer, now)?,
            Ok(None) => {}
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        if conn.rx.len() > rx_before || !conn.is_open() {
            conn.last_rx = now;
        }
        if conn.rx.is_empty() {
            self.account_rx(id);
            return Ok(());
        }
        let mut rx = std::mem::take(&mut conn.rx);
        let mut pos = 0;
        let mut txn = Txn::begin(store)?;
        let mut after = AfterCommit::default();
        let max = self.config.max_message_size;
        let mut fault = None;
        loop {
            match next_message(&rx, &mut pos, max) {
                Ok(None) => break,
                Err(reason) => {
                    fault = Some(Fault::Peer(reason));
                    break;
                }
                Ok(Some((kind, a, b))) => {
                    let msg = match Message::decode(kind, &rx[a..b], limits::MAX_REQUEST_BLOCKS) {
                        Ok(m) => m,
                        Err(e) => {
                            fault = Some(Fault::Peer(CloseReason::Malformed(e.to_string())));
                            break;
                        }
                    };
                    if let Err(f) = self.on_message(&mut txn, &mut after, id, msg) {
                        fault = Some(f);
                        break;
                    }
                }
            }
        }
        // Keep a partial message for the next input.
        rx.drain(..pos);
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.rx = rx;
        }
        self.account_rx(id);
        if fault.is_none() {
            self.within_buffer_budget(now);
        }
        match fault {
            Some(Fault::Store(e)) => return Err(e),
            Some(Fault::Peer(reason)) => {
                let tell = !matches!(reason, CloseReason::Remote { .. });
                self.drop_conn(id, reason, tell, now);
            }
            None => {}
        }
        for from in &after.arrived {
            if let Some(inbox) = self.inboxes.get_mut(from) {
                inbox.save_held(&mut txn, from);
            }
        }
        for feed in &after.broadcast_arrived {
            if let Some(r) = self.replicas.get_mut(feed) {
                r.save(&mut txn);
            }
        }
        txn.commit()?;
        self.after_commit(after);
        Ok(())
    }

    /// Closes the connection holding the most partly received bytes while
    /// all connections together hold more than `Config::max_buffered_bytes`.
    fn within_buffer_budget(&mut self, now: Instant) {
        while self.rx_total > self.config.max_buffered_bytes {
            let Some(worst) = self.conns.values().max_by_key(|c| c.rx.len()).map(|c| c.id) else {
                return;
            };
            self.drop_conn(worst, CloseReason::Overloaded, true, now);
        }
    }

    /// Brings the total of partly received bytes up to date with what
    /// connection `id` holds now: one connection's change per input, so the
    /// budget check costs nothing per connection.
    fn account_rx(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(&id) {
            self.rx_total = self.rx_total - conn.rx_counted + conn.rx.len();
            conn.rx_counted = conn.rx.len();
        }
    }

    fn on_message<S: Store>(
        &mut self,
        txn: &mut Txn<'_, S>,
        after: &mut AfterCommit,
        id: ConnId,
        msg: Message<'_>,
    ) -> Result<(), Fault> {
        let Some(peer) = self.conns.get(&id).and_then(|c| c.peer) else {
            return Err(Fault::Peer(CloseReason::Unexpected(
                "message before the handshake finished".into(),
            )));
        };
        let me = self.me;
        match msg {
            Message::Head { desc, head } if desc.kind == FeedKind::Broadcast => {
                // Heads we would drop are dropped before their signature is
                // checked, which is most of a head's cost.
                if !self.admits_broadcast(&desc) {
                    return Ok(());
                }
                let feed = self.feed(txn, desc)?;
                if !feed.check_head(&head) {
                    return Err(Fault::Peer(CloseReason::BadData(format!(
                        "head of feed {} has a bad signature",
                        head.feed
                    ))));
                }
                if let Some(ours) = feed.head().copied().filter(|_| feed.conflicts_with(&head)) {
                    self.fork_found(txn, after, desc, ours, head);
                    return Ok(());
                }
                if let Some(feed) = self.on_broadcast_head(id, desc, head)? {
                    after.broadcast_schedule.insert(feed);
                }
            }
            Message::Head { desc, head } => {
                if desc != FeedDescriptor::queue(peer, me) {
                    // Not a feed addressed to us by this peer: nothing to do
                    // (relaying other feeds is the emitter's business).
                    return Ok(());
                }
                let feed = self.feed(txn, desc)?;
                if !feed.check_head(&head) {
                    return Err(Fault::Peer(CloseReason::BadData(format!(
                        "head of feed {} has a bad signature",
                        head.feed
                    ))));
                }
                if let Some(ours) = feed.head().copied().filter(|_| feed.conflicts_with(&head)) {
                    self.fork_found(txn, after, desc, ours, head);
                    return Ok(());
                }
                let inbox = self.inbox(txn, peer)?;
                if head.length > inbox.remote_length {
                    inbox.remote_length = head.length;
                    inbox.refused = RangeSet::new();
                }
                after.schedule.insert(peer);
            }
            Message::Request {
                feed,
                base,
                first_id,
                ranges,
            } => {
                let conn = self
                    .conns
                    .get_mut(&id)
                    .ok_or(Fault::Peer(CloseReason::Local))?;
                if conn.serve.len() + ranges.len() > limits::MAX_INFLIGHT_REQUESTS {
                    return Err(Fault::Peer(CloseReason::Overloaded));
                }
                // The decoder checked that the ids do not overflow.
                for (r, id) in ranges.into_iter().zip(first_id..) {
                    if r.end - r.start > limits::MAX_REQUEST_BLOCKS {
                        return Err(Fault::Peer(CloseReason::Malformed(format!(
                            "request for {} blocks",
                            r.end - r.start
                        ))));
                    }
                    conn.serve.push_back(Wanted {
                        id,
                        feed,
                        start: r.start,
                        end: r.end,
                        base,
                        trusted: r.trusted,
                    });
                }
            }
            Message::Data(d) => self.on_data(txn, after, id, peer, d)?,
            Message::NoData { request, end } => {
                let conn = self
                    .conns
                    .get_mut(&id)
                    .ok_or(Fault::Peer(CloseReason::Local))?;
                let Some(Inflight {
                    feed,
                    start,
                    end: e,
                    ..
                }) = conn.take_request(request)
                else {
                    return Err(Fault::Peer(CloseReason::Unexpected(format!(
                        "refusal of request {request}, which we did not make"
                    ))));
                };
                after.freed.insert(id);
                if let Some(r) = self.replicas.get_mut(&feed) {
                    // This peer cannot serve past `start` after all; others may.
                    let can = conn.remote_heads.entry(feed).or_insert(0);
                    *can = (*can).min(start);
                    r.requested.remove(start, e);
                    after.broadcast_schedule.insert(feed);
                } else if let Some(inbox) = self.inboxes.get_mut(&peer) {
                    inbox.requested.remove(start, e);
                    inbox.refused.insert(start, end.min(e).max(start));
                }
            }
            Message::Ack(receipt) => self.on_ack(txn, after, peer, receipt)?,
            Message::Summary { count, digest } => self.on_summary(txn, id, count, digest)?,
            Message::Have { feeds } => self.on_have(txn, id, &feeds)?,
            Message::Keepalive | Message::Unknown { .. } => {}
            Message::Close { code, text } => {
                return Err(Fault::Peer(CloseReason::Remote {
                    code,
                    text: text.to_string(),
                }));
            }
        }
        Ok(())
    }

    fn on_data<S: Store>(
        &mut self,
        txn: &mut Txn<'_, S>,
        after: &mut AfterCommit,
        id: ConnId,
        peer: PeerId,
        d: DataMsg<'_>,
    ) -> Result<(), Fault> {
        let (start, end) = (d.proof.start, d.proof.end);
        let conn = self
            .conns
            .get_mut(&id)
            .ok_or(Fault::Peer(CloseReason::Local))?;
        let Some(asked) = conn.take_request(d.request) else {
            return Err(Fault::Peer(CloseReason::Unexpected(format!(
                "data for request {}, which we did not make",
                d.request
            ))));
        };
        if start != asked.start || end > asked.end {
            return Err(Fault::Peer(CloseReason::Unexpected(format!(
                "blocks {start}..{end} answer request {} for {}..{}",
                d.request, asked.start, asked.end
            ))));
        }
        // Answered up to the responder's head: the rest stays open there.
        let open = continues(d.head.map(|h| h.length), end, asked.end);
        if open {
            conn.reopen(&asked, end);
        }
        if asked.stale {
            // The rest of a request whose answer we could not use: its
            // proofs start from a head we never adopted.
            return Ok(());
        }
        // How far the request is done with: all of it, unless it stays open.
        let done = if open { end } else { asked.end };
        after.freed.insert(id);
        let head_len = d.head.map_or(0, |h| h.length);
        if self.forks.contains_key(&asked.feed) {
            // Answers already on their way when the fork was found.
            return Ok(());
        }
        if let Some(desc) = self.replicas.get(&asked.feed).map(|r| r.desc) {
            let feed = self.feed(txn, desc)?;
            let stored = store_answer(feed, txn, &d, &asked)?;
            if !matches!(stored, Stored::Yes) {
                self.leave_stale(id, &asked, open);
                if let Some(r) = self.replicas.get_mut(&desc.id()) {
                    r.requested.remove(start, asked.end);
                }
                if self.not_stored(txn, after, id, desc, stored) {
                    after.broadcast_schedule.insert(desc.id());
                }
                return Ok(());
            }
            if let Some(r) = self.replicas.get_mut(&desc.id()) {
                r.requested.remove(end, done);
                r.announced = r.announced.max(head_len);
            }
            self.broadcast_arrived(
                desc.id(),
                start,
                d.blocks.iter().map(|b| b.len()),
                &mut after.broadcast_events,
            );
            after.broadcast_arrived.insert(desc.id());
            after.broadcast_schedule.insert(desc.id());
            return Ok(());
        }
        let desc = FeedDescriptor::queue(peer, self.me);
        if asked.feed != desc.id() {
            // Asked of a broadcast feed we have since let go.
            return Ok(());
        }
        let feed = self.feed(txn, desc)?;
        let stored = store_answer(feed, txn, &d, &asked)?;
        if !matches!(stored, Stored::Yes) {
            self.leave_stale(id, &asked, open);
            if let Some(inbox) = self.inboxes.get_mut(&peer) {
                inbox.requested.remove(start, asked.end);
            }
            if self.not_stored(txn, after, id, desc, stored) {
                self.schedule_requests(peer);
            }
            return Ok(());
        }
        // A block cleared while its request was in flight keeps only its hash.
        let cleared: Vec<u64> = self
            .inboxes
            .get(&peer)
            .map(|i| i.cleared.iter_within(start, end).collect())
            .unwrap_or_default();
        let feed = self.feed(txn, desc)?;
        for seq in cleared {
            feed.drop_block(txn, seq).map_err(feed_fault)?;
        }
        let inbox = self.inbox(txn, peer)?;
        inbox.requested.remove(start, done);
        inbox.remote_length = inbox.remote_length.max(head_len);
        inbox.held.insert(start, end);
        // They leave `wanted` only once committed (in `after_commit`): if the
        // commit fails they must be fetched again, or `Fetched` never comes.
        for seq in inbox.wanted.iter_within(start, end).collect::<Vec<_>>() {
            after.fetched.push((peer, seq));
        }
        after.arrived.insert(peer);
        after.schedule.insert(peer);
        Ok(())
    }

    /// The answer to `asked` was not stored, so if the request stays open at
    /// the responder, its further answers (proven from the head we did not
    /// adopt) are useless: they are dropped as they come, and the blocks are
    /// planned afresh.
    fn leave_stale(&mut self, conn: ConnId, asked: &Inflight, open: bool) {
        if !open {
            return;
        }
        if let Some(r) = self
            .conns
            .get_mut(&conn)
            .and_then(|c| c.inflight.iter_mut().find(|r| r.id == asked.id))
        {
            r.stale = true;
        }
    }

    /// Acts on an answer that was not stored: records a fork, or asks for a
    /// proof from base 0. Returns whether the feed's downloads should be
    /// planned again now.
    fn not_stored<S: Store>(
        &mut self,
        txn: &mut Txn<'_, S>,
        after: &mut AfterCommit,
        conn: ConnId,
        desc: FeedDescriptor,
        stored: Stored,
    ) -> bool {
        match stored {
            Stored::Yes | Stored::Retry => true,
            Stored::Forked(heads) => {
                let (ours, theirs) = *heads;
                self.fork_found(txn, after, desc, ours, theirs);
                false
            }
            Stored::Probe(from) => {
                // One block past what we verified, so that the proof holds a
                // node at each of our roots (see `Feed::verify`); its answer
                // plans the rest.
                let feed = desc.id();
                let Some(c) = self.conns.get_mut(&conn) else {
                    return true;
                };
                let id = c.plan_request(feed, from, from + 1, false);
                if let Some(r) = c.inflight.iter_mut().find(|r| r.id == id) {
                    r.sent = true;
                }
                c.send(&Message::Request {
                    feed,
                    base: 0,
                    first_id: id,
                    ranges: vec![RangeRequest {
                        start: from,
                        end: from + 1,
                        trusted: None,
                    }],
                });
                if let Some(r) = self.replicas.get_mut(&feed) {
                    r.requested.insert(from, from + 1);
                } else if let Some(inbox) = self.inboxes.get_mut(&desc.author) {
                    inbox.requested.insert(from, from + 1);
                }
                false
            }
        }
    }

    /// `desc`'s author signed `theirs`, which conflicts with `ours`: keeps
    /// the evidence (in `txn`), and stops replicating the feed once the
    /// batch commits.
    fn fork_found<S: Store>(
        &mut self,
        txn: &mut Txn<'_, S>,
        after: &mut AfterCommit,
        desc: FeedDescriptor,
        ours: SignedHead,
        theirs: SignedHead,
    ) {
        let id = desc.id();
        if self.forks.contains_key(&id) || after.forks.iter().any(|f| f.desc.id() == id) {
            return;
        }
        let evidence = ForkEvidence { desc, ours, theirs };
        evidence.save(txn);
        after.forks.push(evidence);
    }

    fn on_ack<S: Store>(
        &mut self,
        txn: &mut Txn<'_, S>,
        after: &mut AfterCommit,
        peer: PeerId,
        receipt: Receipt,
    ) -> Result<(), Fault> {
        let desc = FeedDescriptor::queue(self.me, peer);
        if receipt.feed != desc.id() || receipt.signer != peer {
            return Err(Fault::Peer(CloseReason::BadData(
                "receipt for a feed that is not ours to this peer".into(),
            )));
        }
        if !receipt.verify() {
            return Err(Fault::Peer(CloseReason::BadData(
                "receipt has a bad signature".into(),
            )));
        }
        let length = self.feed(txn, desc)?.len();
        let prune = self.config.prune_acked;
        let outbox = self.outbox(txn, peer)?;
        let newly = outbox.add(txn, &desc.id(), receipt, length);
        for (start, end) in newly.ranges() {
            after.acked.push(Event::Acked {
                to: peer,
                start,
                end,
            });
        }
        if prune && !newly.is_empty() {
            self.prune_acked(txn, peer, Some(&newly))?;
        }
        Ok(())
    }

    /// Drops the bytes of acknowledged blocks of our feed to `to` (all of
    /// them, or those in `only`), keeping their hashes.
    pub(super) fn prune_acked<S: Store>(
        &mut self,
        txn: &mut Txn<'_, S>,
        to: PeerId,
        only: Option<&RangeSet>,
    ) -> Result<u64, NodeError> {
        let desc = FeedDescriptor::queue(self.me, to);
        let length = self.feed(txn, desc)?.len();
        let outbox = self.outbox(txn, to)?;
        let mut todo = match only {
            Some(r) => r.clone(),
            None => outbox.acked.clone(),
        };
        todo.subtract(&outbox.pruned);
        todo.remove(length, u64::MAX);
        if todo.is_empty() {
            return Ok(0);
        }
        outbox.pruned.union(&todo);
        outbox.save(txn, &desc.id());
        let feed = self.feed(txn, desc)?;
        let mut n = 0;
        for (a, b) in todo.ranges() {
            for seq in a..b {
                n += u64::from(feed.drop_block(txn, seq)?);
            }
        }
        Ok(n)
    }

    fn on_connected<S: Store>(
        &mut self,
        store: &S,
        id: ConnId,
        peer: PeerId,
        now: Instant,
    ) -> Result<(), NodeError> {
        // Two connections with one peer (both dialed at once, or a reconnect
        // racing a dying link): both sides keep the same one. Different
        // dialers: the one dialed by the smaller id wins. Same dialer: the
        // newer wins, as the older is likely dead.
        let me = self.me;
        let dialer = |c: &super::conn::Conn| if c.initiator { me } else { peer };
        let this_dialer = self.conns.get(&id).map(dialer);
        let others: Vec<ConnId> = self
            .conns
            .values()
            .filter(|c| c.id != id && c.is_open() && c.peer == Some(peer))
            .map(|c| c.id)
            .collect();
        for other in others {
            let other_dialer = self.conns.get(&other).map(dialer);
            let keep_this = match (this_dialer, other_dialer) {
                (Some(a), Some(b)) if a != b => a < b,
                _ => true,
            };
            if keep_this {
                self.drop_conn(other, CloseReason::Duplicate, true, now);
            } else {
                self.drop_conn(id, CloseReason::Duplicate, true, now);
                return Ok(());
            }
        }
        if let Some(d) = self.dials.get_mut(&peer) {
            d.attempts = 0;
            self.timers.stop(Timer::Redial(peer));
        }
        self.out
            .push_back(Output::Event(Event::Connected { conn: id, peer }));
        // Tell the peer what we have for it, and what we hold of its feed.
        let txn = Txn::begin(store)?;
        let head = self
            .feed(&txn, FeedDescriptor::queue(me, peer))?
            .head()
            .copied();
        let inbox = self.inbox(&txn, peer)?;
        let has_receipt = !inbox.acknowledged().is_empty();
        self.send_summary(&txn, id)?;
        drop(txn);
        if let Some(conn) = self.conns.get_mut(&id) {
            if let Some(head) = head {
                conn.send(&Message::Head {
                    desc: FeedDescriptor::queue(me, peer),
                    head,
                });
            }
        }
        if has_receipt {
            self.send_ack(peer);
        }
        self.schedule_requests(peer);
        Ok(())
    }

    fn after_commit(&mut self, after: AfterCommit) {
        for f in after.forks {
            self.out.push_back(Output::Event(Event::Forked {
                author: f.desc.author,
                feed: f.desc.id(),
            }));
            self.forks.insert(f.desc.id(), f);
        }
        for from in &after.arrived {
            let Some(inbox) = self.inboxes.get_mut(from) else {
                continue;
            };
            while inbox.held.contains(inbox.notified) {
                if inbox.is_unread(inbox.notified) {
                    self.out.push_back(Output::Event(Event::Message {
                        from: *from,
                        seq: inbox.notified,
                    }));
                }
                inbox.notified += 1;
            }
        }
        for (from, seq) in after.fetched {
            if let Some(inbox) = self.inboxes.get_mut(&from) {
                inbox.wanted.remove(seq, seq + 1);
            }
            self.out
                .push_back(Output::Event(Event::Fetched { from, seq }));
        }
        for e in after.acked {
            self.out.push_back(Output::Event(e));
        }
        for from in &after.arrived {
            self.ack_soon(*from);
        }
        for from in after.schedule {
            self.schedule_requests(from);
        }
        self.out
            .extend(after.broadcast_events.into_iter().map(Output::Event));
        for feed in &after.broadcast_arrived {
            self.gossip(*feed);
        }
        let mut feeds = after.broadcast_schedule;
        for id in &after.freed {
            if let Some(conn) = self.conns.get(id) {
                feeds.extend(conn.remote_heads.keys().copied());
                if let Some(peer) = conn.peer {
                    self.schedule_requests(peer);
                }
            }
        }
        for feed in feeds {
            self.schedule_broadcast(feed);
        }
    }

    /// Signs and sends a receipt for what we newly hold of `from`'s feed.
    ///
    /// While the held set is a few ranges (a queue read in order), each
    /// receipt covers all of it, so one receipt proves everything. A sparse
    /// reader's set can be fragmented into thousands of ranges; then each
    /// receipt carries only what the peer has not been told on this
    /// connection, so receipts stay small however long the session.
    /// Owes `from` a receipt for what just arrived. It goes out after
    /// `Config::ack_delay`, covering everything that arrives meanwhile: one
    /// signature and one message for many answers, where a sparse reader
    /// would otherwise send one per block.
    fn ack_soon(&mut self, from: PeerId) {
        if self.config.ack_delay.is_zero() {
            self.send_ack(from);
        } else {
            let due = self.now + self.config.ack_delay;
            self.timers.set_if_unset(Timer::Ack(from), due);
        }
    }

    pub(super) fn send_ack(&mut self, from: PeerId) {
        const CUMULATIVE_UP_TO: usize = 32;
        let Some(cid) = self.conn_to(&from) else {
            return;
        };
        let Some(inbox) = self.inboxes.get(&from) else {
            return;
        };
        let feed = FeedDescriptor::queue(from, self.me).id();
        let held = inbox.acknowledged();
        let Some(conn) = self.conns.get_mut(&cid) else {
            return;
        };
        let told = conn.acks_sent.entry(feed).or_default();
        let mut delta = held.clone();
        delta.subtract(told);
        if delta.is_empty() {
            return;
        }
        let mut ranges = if held.range_count() <= CUMULATIVE_UP_TO {
            held
        } else {
            delta
        };
        if ranges.range_count() > crate::wire::MAX_RECEIPT_RANGES {
            // More than one receipt may carry: the rest follows next time.
            ranges = ranges.first_ranges(crate::wire::MAX_RECEIPT_RANGES);
        }
        told.union(&ranges);
        conn.send(&Message::Ack(Receipt::sign(&self.key, feed, ranges)));
    }

    /// Asks `from` for the blocks its inbox wants: the prefetch window past
    /// the reader's cursor and anything `get` asked for, minus what is held,
    /// cleared, refused or already asked, within the in-flight limit.
    pub(super) fn schedule_requests(&mut self, from: PeerId) {
        self.to_schedule.insert(Target::Queue(from));
    }

    /// Plans the requests [`State::schedule_requests`] asked for, marking
    /// them in flight; the caller sends them.
    fn plan_queue(&mut self, from: PeerId) -> Vec<Planned> {
        let mut planned = Vec::new();
        if self
            .forks
            .contains_key(&FeedDescriptor::queue(from, self.me).id())
        {
            return planned;
        }
        let Some(cid) = self.conn_to(&from) else {
            return planned;
        };
        let Some(inbox) = self.inboxes.get_mut(&from) else {
            return planned;
        };
        let fid = FeedDescriptor::queue(from, self.me).id();
        let base = self.feeds.get(&fid).map_or(0, |f| f.len());
        let limit = inbox.remote_length;
        // How far ahead to download, and from where: messages the reader
        // passed while they were missing stay wanted, so the window runs
        // from the cursor.
        let (window_from, reach) = match self.config.prefetch {
            Prefetch::All => (0, u64::MAX),
            Prefetch::Window(w) => (inbox.cursor(), inbox.window_start().saturating_add(w)),
        };
        let window = (window_from, reach.min(limit));
        let Some(conn) = self.conns.get_mut(&cid) else {
            return planned;
        };
        let (per, max_inflight) = self.config.request_limits();
        // Counted once: `busy` walks the in-flight list.
        let mut busy = conn.busy();
        // Ask for the window and every block `get` wants, less what is held,
        // cleared, in flight or refused: walked lazily, so that a full
        // pipeline costs nothing and a free slot a few lookups, however many
        // blocks a sparse reader wants or holds.
        let mut from_seq = 0;
        while busy < max_inflight {
            let Some((a, b)) = next_wanted(window, &inbox.wanted, limit, from_seq) else {
                break;
            };
            let mut s = a;
            while busy < max_inflight {
                let done = [
                    &inbox.held,
                    &inbox.cleared,
                    &inbox.requested,
                    &inbox.refused,
                ];
                let Some((gap, gap_end)) = RangeSet::first_uncovered(&done, s, b) else {
                    break;
                };
                let e = gap_end.min(gap.saturating_add(per));
                busy += 1;
                planned.push(Planned {
                    conn: cid,
                    id: conn.plan_request(fid, gap, e, false),
                    desc: FeedDescriptor::queue(from, self.me),
                    start: gap,
                    end: e,
                    base,
                    known: limit.max(base),
                });
                inbox.requested.insert(gap, e);
                s = e;
            }
            from_seq = b;
        }
        // Ask ahead for what the sender has not written yet: it holds the
        // request and answers as soon as it appends, a round trip sooner than
        // announcing and waiting to be asked. It starts past everything the
        // sender announced and everything we hold or cleared (after a
        // restart we may hold more than it re-announced).
        let mut tail = limit;
        loop {
            let next = inbox.cleared.next_gap(inbox.held.next_gap(tail));
            if next == tail {
                break;
            }
            tail = next;
        }
        if reach > tail && !conn.standing() && !inbox.requested.contains(tail) {
            let e = tail
                .saturating_add(per)
                .min(reach)
                .min(crate::merkle::flat::MAX_LENGTH);
            if e > tail {
                planned.push(Planned {
                    conn: cid,
                    id: conn.plan_request(fid, tail, e, true),
                    desc: FeedDescriptor::queue(from, self.me),
                    start: tail,
                    end: e,
                    base,
                    known: limit.max(base),
                });
                inbox.requested.insert(tail, e);
            }
        }
        planned
    }

    /// Sends every request scheduled since the last call. Each names the
    /// lowest node we already hold above the blocks, when there is one, so
    /// the proof that comes back stops there: a sparse reader's later
    /// fetches carry a few hashes instead of a path to the roots, and no
    /// signed head.
    pub(super) fn issue_requests<S: Store>(&mut self, store: &S) -> Result<(), NodeError> {
        if self.to_schedule.is_empty() {
            return Ok(());
        }
        let txn = Txn::begin(store)?;
        for target in std::mem::take(&mut self.to_schedule) {
            let planned = match target {
                Target::Queue(from) => self.plan_queue(from),
                Target::Broadcast(feed) => self.plan_broadcast(feed),
            };
            // Consecutive ranges for one connection and feed share a message.
            let mut batch: Option<RequestBatch> = None;
            for p in planned {
                let fid = p.desc.id();
                let trusted = self.trusted_for(&txn, &p)?;
                if let Some(r) = self
                    .conns
                    .get_mut(&p.conn)
                    .and_then(|c| c.inflight.iter_mut().find(|r| r.id == p.id))
                {
                    r.trusted = trusted;
                    r.base = p.base;
                    r.sent = true;
                }
                let range = RangeRequest {
                    start: p.start,
                    end: p.end,
                    trusted,
                };
                match &mut batch {
                    Some(b) if b.takes(&p) => b.ranges.push(range),
                    _ => {
                        self.send_requests(batch.take());
                        batch = Some(RequestBatch {
                            conn: p.conn,
                            feed: fid,
                            base: p.base,
                            first_id: p.id,
                            ranges: vec![range],
                        });
                    }
                }
            }
            self.send_requests(batch);
        }
        Ok(())
    }

    /// The node a planned request names for its proof to stop at: the lowest
    /// one covering its blocks that we hold or that an answer on its way
    /// brings, within a length the peer signed.
    fn trusted_for<S: Store>(
        &mut self,
        txn: &Txn<'_, S>,
        p: &Planned,
    ) -> Result<Option<u64>, NodeError> {
        if p.end > p.known {
            return Ok(None);
        }
        let fid = p.desc.id();
        self.feed(txn, p.desc)?;
        let sent = self.conns.get(&p.conn).map_or(&[][..], |c| &c.inflight[..]);
        let coming = |i| {
            sent.iter()
                .any(|r| r.sent && r.feed == fid && brings(r, i, p.known))
        };
        Ok(match self.feeds.get(&fid) {
            Some(feed) => feed.trusted_node(txn, p.start, p.end, p.known, coming)?,
            None => None,
        })
    }

    fn send_requests(&mut self, batch: Option<RequestBatch>) {
        if let Some(b) = batch {
            if let Some(conn) = self.conns.get_mut(&b.conn) {
                conn.send(&Message::Request {
                    feed: b.feed,
                    base: b.base,
                    first_id: b.first_id,
                    ranges: b.ranges,
                });
            }
        }
    }

    /// Serves queued requests on every connection, up to a byte budget per
    /// connection per call so one greedy peer cannot starve the rest; the
    /// remainder is served at the next timeout, which is immediate while work
    /// is queued.
    pub(super) fn serve_all<S: Store>(
        &mut self,
        store: &S,
        _now: Instant,
    ) -> Result<(), NodeError> {
        let busy: Vec<(ConnId, PeerId)> = self
            .conns
            .values()
            .filter(|c| !c.serve.is_empty() && c.is_open())
            .filter_map(|c| Some((c.id, c.peer?)))
            .collect();
        if busy.is_empty() {
            return Ok(());
        }
        let txn = Txn::begin(store)?;
        let max_data = self.config.max_data_bytes.max(1);
        for (cid, peer) in busy {
            let own_queue = FeedDescriptor::queue(self.me, peer);
            let own_id = own_queue.id();
            let mut budget = 4 * max_data;
            while budget > 0 {
                let Some(w) = self.conns.get_mut(&cid).and_then(|c| c.serve.pop_front()) else {
                    break;
                };
                // Our queue feed to this peer, or any broadcast feed we hold.
                let desc = if w.feed == own_id {
                    Some(own_queue)
                } else {
                    self.replicas.get(&w.feed).map(|r| r.desc)
                };
                let served = match desc {
                    Some(desc) => {
                        self.feed(&txn, desc)?;
                        match (self.feeds.get(&w.feed), self.conns.get_mut(&cid)) {
                            (Some(feed), Some(conn)) => serve_one(&txn, feed, conn, w, max_data)?,
                            _ => Err(w.end),
                        }
                    }
                    None => Err(w.end),
                };
                let Some(conn) = self.conns.get_mut(&cid) else {
                    break;
                };
                match served {
                    Ok(Served { bytes, rest }) => {
                        budget = budget.saturating_sub(bytes.max(1));
                        // The answer reached our head: the rest of the
                        // request stays open (the requester counts on it),
                        // answered as we append, or refused now.
                        if let Some(rest) = rest {
                            if w.feed == own_id && conn.parked.len() < MAX_PARKED {
                                conn.parked.push(rest);
                            } else {
                                conn.send(&Message::NoData {
                                    request: rest.id,
                                    end: rest.end,
                                });
                            }
                        }
                    }
                    Err(_)
                        if w.feed == own_id
                            && w.start >= self.feeds.get(&w.feed).map_or(0, |f| f.len())
                            && conn.parked.len() < MAX_PARKED =>
                    {
                        // A reader that has everything asks for what comes
                        // next; hold that request and answer it the moment
                        // we append, which saves announcing a head and
                        // waiting for the request.
                        conn.parked.push(w);
                    }
                    Err(until) => {
                        let blocks = until.saturating_sub(w.start).clamp(1, MAX_PRUNED_SCAN);
                        budget = budget.saturating_sub(REFUSAL_COST_PER_BLOCK * blocks as usize);
                        conn.send(&Message::NoData {
                            request: w.id,
                            end: until,
                        })
                    }
                }
            }
        }
        Ok(())
    }
}

/// Requests for blocks not yet written that one connection may park.
const MAX_PARKED: usize = 4;

/// Blocks one refusal looks at to find where pruned blocks end.
const MAX_PRUNED_SCAN: u64 = 256;

/// What a refusal costs of a connection's serving budget, per block
/// refused (a lookup each, or a range check): so that requests only ever
/// refused are served no faster than those answered with data.
const REFUSAL_COST_PER_BLOCK: usize = 64;

/// What one data message served.
struct Served {
    /// Bytes of blocks sent.
    bytes: usize,
    /// The rest of the request, when the message reached our signed head
    /// before the request's end: it stays open (PROTOCOL.md section 7).
    rest: Option<Wanted>,
}

/// Encodes one data message answering `w` from `feed`, as much of the range
/// as fits `max_data` bytes (at least one block); or `Err(k)`: blocks
/// `[w.start, k)` cannot be served (beyond our length, pruned, or held only
/// sparsely).
fn serve_one<S: Store>(
    txn: &Txn<'_, S>,
    feed: &crate::feed::Feed,
    conn: &mut super::conn::Conn,
    w: Wanted,
    max_data: usize,
) -> Result<Result<Served, u64>, NodeError> {
    let len = feed.len();
    let Some(head) = feed.head().copied() else {
        return Ok(Err(w.end));
    };
    if w.start >= len || w.base > len {
        return Ok(Err(w.end));
    }
    let end = w.end.min(len);
    let mut blocks: Vec<&[u8]> = Vec::new();
    let mut bytes = 0;
    let mut e = w.start;
    while e < end {
        let Some(data) = feed.get_ref(txn, e)? else {
            break;
        };
        if !blocks.is_empty() && bytes + data.len() > max_data {
            break;
        }
        bytes += data.len();
        blocks.push(data);
        e += 1;
    }
    if blocks.is_empty() {
        // The first blocks are pruned: refuse just those, so the reader asks
        // again for the rest. A bounded look, charged to the serving budget
        // (see `serve_all`): a peer asking again and again for a pruned range
        // costs lookups, not only bytes.
        let mut k = w.start + 1;
        let last = end.min(w.start.saturating_add(MAX_PRUNED_SCAN));
        while k < last && feed.get_ref(txn, k)?.is_none() {
            k += 1;
        }
        return Ok(Err(k));
    }
    // Stop at the requester's trusted node when it is a real one of ours;
    // otherwise prove up to our signed head.
    let below = w
        .trusted
        .filter(|&t| crate::merkle::fits(w.start, e, len, 0, Some(t)));
    let proof = match below {
        Some(t) => feed.prove_below(txn, w.start, e, t),
        None => feed.prove(txn, w.start, e, w.base),
    };
    let proof = match proof {
        Ok(p) => p,
        Err(FeedError::MissingNode { .. }) => return Ok(Err(w.end)),
        Err(e) => return Err(e.into()),
    };
    let head = if below.is_some() { None } else { Some(&head) };
    DataMsg::encode_parts(
        w.id,
        head,
        &proof,
        blocks.iter().copied(),
        &mut conn.tx_plain,
    );
    let rest = continues(head.map(|h| h.length), e, w.end).then_some(Wanted {
        start: e,
        base: len,
        trusted: None,
        ..w
    });
    Ok(Ok(Served { bytes, rest }))
}

/// Whether a request for blocks up to `asked_end`, answered by a data
/// message ending at `end` that carried a head of length `head_len`, stays
/// open: the answer reached the responder's head, and the request asked
/// for more. Both sides decide it with this, from what the message says.
pub(super) fn continues(head_len: Option<u64>, end: u64, asked_end: u64) -> bool {
    head_len == Some(end) && end < asked_end
}

/// The first run at or after `from` of the blocks a reader wants: the union
/// of its prefetch `window` and the `wanted` set, below `limit`.
fn next_wanted(window: (u64, u64), wanted: &RangeSet, limit: u64, from: u64) -> Option<(u64, u64)> {
    let (ws, we) = window;
    let in_window = (we > from.max(ws)).then(|| from.max(ws));
    let a = match (in_window, wanted.next_member(from)) {
        (Some(p), Some(q)) => p.min(q),
        (p, q) => p.or(q)?,
    };
    if a >= limit {
        return None;
    }
    let mut b = a;
    loop {
        if ws <= b && b < we {
            b = we;
        } else if wanted.contains(b) {
            b = wanted.next_gap(b);
        } else {
            break;
        }
    }
    Some((a, b.min(limit)))
}

//! Replication: handling a peer's messages, asking for blocks, serving
//! them, and acknowledging what arrived.
//!
//! One `handle_input` call is one unit of work: every message in the input
//! is decoded and verified, all writes go into one transaction, and only
//! after it commits are events emitted and receipts signed and sent
//! ([`AfterCommit`]). This file holds that loop, the dispatch of each
//! message, and what a new connection sends; the rest is split by role:
//!
//! | file | holds |
//! |---|---|
//! | `receive.rs` | verifying and storing data answers; forks |
//! | `request.rs` | planning what to ask for, and asking |
//! | `serve.rs` | answering peers' requests within a budget |
//! | `ack.rs` | receipts: sending ours, taking theirs, pruning |

mod ack;
mod receive;
mod request;
mod serve;

use std::collections::BTreeSet;

use crate::feed::{FeedDescriptor, FeedError, FeedId, FeedKind};
use crate::identity::PeerId;
use crate::ranges::RangeSet;
use crate::store::{Store, Txn};
use crate::time::Instant;
use crate::wire::Message;

use crate::node::config::limits;
use crate::node::conn::{next_message, HandshakeCtx, Inflight, ToServe};
use crate::node::fork::ForkEvidence;
use crate::node::timer::Timer;
use crate::node::{CloseReason, ConnId, Event, NodeError, Output, State};

/// Why handling a message stopped.
pub(in crate::node) enum Fault {
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
    /// Feeds we carry as a mailbox that received blocks.
    carried_arrived: BTreeSet<FeedId>,
    /// Mailboxes' refusals of our mail, as events.
    refusals: Vec<Output>,
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
    pub(in crate::node) fn handle_input<S: Store>(
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
        // A mailbox takes mail from anyone (within its quotas).
        let mailbox = self.config.mailbox.is_some();
        let authorized = |p: &PeerId| open || mailbox || peers.contains(p);
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
                    // Mail: a feed we carry, or one to us that a mailbox
                    // holds (see `mailbox.rs`).
                    return self.mail_head(txn, id, peer, desc, head);
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
                if head.length > inbox.dl.announced {
                    inbox.dl.announced = head.length;
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
                // The decoder checked that the ids do not overflow (not
                // `first_id..`, which would step past the last id).
                for (r, id) in ranges.into_iter().zip((0..).map(|i| first_id + i)) {
                    if r.end - r.start > limits::MAX_REQUEST_BLOCKS {
                        return Err(Fault::Peer(CloseReason::Malformed(format!(
                            "request for {} blocks",
                            r.end - r.start
                        ))));
                    }
                    conn.serve.push_back(ToServe {
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
                    r.dl.requested.remove(start, e);
                    after.broadcast_schedule.insert(feed);
                } else if let Some(c) = self.mail.carried.get_mut(&feed) {
                    c.dl.requested.remove(start, e);
                } else if let Some(inbox) = self
                    .queue_sender(peer, &feed)
                    .and_then(|s| self.inboxes.get_mut(&s))
                {
                    inbox.dl.requested.remove(start, e);
                    inbox.refused.insert(start, end.min(e).max(start));
                }
            }
            Message::Ack(receipt) => self.on_ack(txn, after, peer, receipt)?,
            Message::Summary { count, digest } => self.on_summary(txn, id, count, digest)?,
            Message::Have { feeds } => self.on_have(txn, id, &feeds)?,
            Message::Mailboxes(list) => self.on_mailboxes(txn, peer, list)?,
            Message::Refused { feed, reason } => {
                let relay = self.replicas.get(&feed).map(|r| {
                    Output::Event(Event::RelayRefused {
                        peer,
                        author: r.desc.author,
                        reason,
                    })
                });
                let event =
                    relay.or_else(|| super::mailbox::refused_event(self, peer, feed, reason));
                after.refusals.extend(event);
            }
            Message::Held { feed, length } => self.on_held(txn, peer, feed, length)?,
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
        if this_dialer == Some(peer) && !self.admission.admit(peer, now) {
            let reason = CloseReason::ConnectingTooOften {
                limit: crate::node::limits::MAX_ACCEPTS_PER_PEER,
                window: crate::node::limits::ACCEPT_WINDOW,
            };
            self.drop_conn(id, reason, true, now);
            return Ok(());
        }
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
            if !d.strained {
                d.attempts = 0;
            }
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
        self.on_connected_mail(&txn, id, peer)?;
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
            // Held blocks end at the verified length (`State::load_inbox`).
            while inbox.dl.held.contains(inbox.notified) {
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
        for feed in after.carried_arrived {
            self.offer_carried(feed);
            self.tell_author_held(feed);
            self.to_schedule.insert(crate::node::Target::Carried(feed));
        }
        self.out.extend(after.refusals);
    }

    /// A head of a queue feed that is not the peer's own to us: mail we
    /// carry, or mail for us from a mailbox.
    fn mail_head<S: Store>(
        &mut self,
        txn: &mut Txn<'_, S>,
        id: ConnId,
        peer: PeerId,
        desc: FeedDescriptor,
        head: crate::feed::SignedHead,
    ) -> Result<(), Fault> {
        use crate::node::mailbox::MailHead;
        match self.on_mail_head(txn, id, peer, desc, head)? {
            MailHead::Ignored | MailHead::Carried => {}
            MailHead::Ours(author, head) => {
                let inbox = self.inbox(txn, author)?;
                if head.length > inbox.dl.announced {
                    inbox.dl.announced = head.length;
                    inbox.refused = RangeSet::new();
                }
                self.schedule_requests(author);
            }
            MailHead::Refused(feed, reason) => {
                if let Some(conn) = self.conns.get_mut(&id) {
                    conn.send(&Message::Refused { feed, reason });
                }
            }
        }
        Ok(())
    }

    /// The sender of queue feed `feed` to us, whose data `peer` serves: the
    /// peer itself, or an author whose mail it holds as our mailbox.
    pub(in crate::node) fn queue_sender(&self, peer: PeerId, feed: &FeedId) -> Option<PeerId> {
        if *feed == FeedDescriptor::queue(peer, self.me).id() {
            Some(peer)
        } else {
            self.mail.via_mailbox.get(feed).copied()
        }
    }
}

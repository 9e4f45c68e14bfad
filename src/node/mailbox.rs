//! Mailboxes: peers that hold a recipient's mail while it is away.
//!
//! ```text
//!   author A ──push queue(A→R)──▶ mailbox M ──serve──▶ recipient R
//!            ◀──R's receipts──────          ◀──R's receipts──
//! ```
//!
//! Three roles, one node may play any of them:
//!
//! - A *recipient* names its mailboxes in a [`MailboxList`] it signs
//!   ([`Node::add_mailbox`]), keeps connections to them, and hands the list
//!   to every peer it connects to. From a connection to one of its
//!   mailboxes it accepts heads of feeds addressed to it by authorized
//!   senders, downloads them there as it would from the sender, and sends
//!   its receipts there.
//! - An *author* remembers the lists its peers signed, plus mailboxes set
//!   locally ([`Node::add_route`]). When it sends to a recipient it dials the
//!   recipient's mailboxes too, announces its feed there, and serves it to
//!   them. Receipts count whoever relays them: the recipient signed them.
//! - A *mailbox* ([`crate::Config::mailbox`]) holds a feed `A→R` only while
//!   R's latest signed list names it, only as pushed by A itself, within
//!   quotas per sender and per recipient (refusing politely past them with
//!   [`Message::Refused`]); serves it to R and A alone; keeps R's receipts
//!   to hand to A, and drops the bytes of what R acknowledged.
//!
//! A mailbox cannot read sealed messages, and cannot forge, reorder or
//! replay them either: every block is verified against the author's
//! signed head, as from the author itself. One that drops or withholds mail
//! only delays it: the author sees no receipt, and the message stays
//! unacknowledged in its status.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::{Bound, ControlFlow};

use crate::feed::{FeedDescriptor, FeedId, FeedKind, SignedHead};
use crate::identity::PeerId;
use crate::ranges::RangeSet;
use crate::store::{Store, StoreError, Table, Txn};
use crate::time::Instant;
use crate::wire::{DataMsg, MailboxList, Message, Receipt, RefuseReason};

use super::download::Download;
use super::replicate::Fault;
use super::{
    retry_on_conflict, CloseReason, ConnId, Event, Node, NodeError, Output, Planned, State, Target,
};

/// Key prefixes in [`Table::Mail`].
const LIST: u8 = b'L';
const ROUTE: u8 = b'R';
const CARRIED: u8 = b'C';
/// `H | recipient | mailbox`: how much of our feed to the recipient the
/// mailbox said it stores ([`Message::Held`]).
const HELD: u8 = b'H';

const CARRIED_VERSION: u8 = 1;
const MAX_STORED_RANGES: usize = 1 << 20;
/// Receipts a mailbox keeps per feed to hand to its author: the newest.
/// A reader that reads in order signs cumulative receipts, so one is all
/// the author needs; a sparse reader's deltas beyond these are lost to the
/// author (it learns of them when it meets the recipient).
const MAX_KEPT_RECEIPTS: usize = 8;

fn key(prefix: u8, id: &[u8; 32]) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = prefix;
    k[1..].copy_from_slice(id);
    k
}

/// What a mailbox holds of one feed it carries.
#[derive(Clone, Debug)]
pub(crate) struct Carried {
    pub desc: FeedDescriptor,
    pub dl: Download,
    /// Bytes of the blocks stored here now.
    pub bytes: u64,
    /// What the recipient acknowledged (those blocks' bytes are dropped).
    pub acked: RangeSet,
    /// The recipient's receipts, newest last, for the author.
    pub receipts: Vec<Receipt>,
}

impl Carried {
    fn new(desc: FeedDescriptor) -> Self {
        Carried {
            desc,
            dl: Download::default(),
            bytes: 0,
            acked: RangeSet::new(),
            receipts: Vec::new(),
        }
    }

    /// Length of the prefix of the feed stored here, counting the blocks
    /// dropped once acknowledged: what the author is told ([`Message::Held`]).
    fn stored_prefix(&self) -> u64 {
        RangeSet::first_uncovered(&[&self.dl.held, &self.acked], 0, u64::MAX)
            .map_or(u64::MAX, |(a, _)| a)
    }

    /// The recipient, for a queue feed (every carried feed is one).
    pub fn recipient(&self) -> Option<PeerId> {
        match self.desc.kind {
            FeedKind::Queue { recipient } => Some(recipient),
            FeedKind::Broadcast => None,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = vec![CARRIED_VERSION];
        self.desc.encode(&mut out);
        self.dl.held.encode(&mut out);
        out.extend_from_slice(&self.bytes.to_le_bytes());
        self.acked.encode(&mut out);
        out.push(self.receipts.len() as u8);
        for r in &self.receipts {
            // Length-prefixed, the length written once the receipt is.
            let at = out.len();
            out.extend_from_slice(&[0; 4]);
            r.encode(&mut out);
            let len = (out.len() - at - 4) as u32;
            out[at..at + 4].copy_from_slice(&len.to_le_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let (&v, rest) = bytes.split_first()?;
        if v != CARRIED_VERSION {
            return None;
        }
        let (desc, rest) = FeedDescriptor::decode(rest)?;
        let (held, rest) = RangeSet::decode(rest, MAX_STORED_RANGES)?;
        let held_bytes = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
        let (acked, rest) = RangeSet::decode(rest.get(8..)?, MAX_STORED_RANGES)?;
        let (&n, mut rest) = rest.split_first()?;
        let mut receipts = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let body = rest.get(4..4 + len)?;
            receipts.push(Receipt::decode(body, crate::wire::MAX_RECEIPT_RANGES)?);
            rest = &rest[4 + len..];
        }
        if !rest.is_empty() || desc.kind == FeedKind::Broadcast {
            return None;
        }
        let mut c = Carried::new(desc);
        c.dl.held = held;
        c.bytes = held_bytes;
        c.acked = acked;
        c.receipts = receipts;
        Some(c)
    }

    fn save<S: Store>(&self, txn: &mut Txn<'_, S>) {
        txn.put_owned(Table::Mail, &key(CARRIED, &self.desc.id().0), self.encode());
    }
}

/// Everything about mailboxes a node keeps, loaded at open.
#[derive(Debug, Default)]
pub(crate) struct Mail {
    /// The latest signed list heard from each recipient (ours included).
    pub lists: BTreeMap<PeerId, MailboxList>,
    /// Mailboxes of recipients set on this node ([`Node::add_route`]).
    pub routes: BTreeMap<PeerId, BTreeSet<PeerId>>,
    /// Feeds this node carries as a mailbox.
    pub carried: BTreeMap<FeedId, Carried>,
    /// Bytes carried, by author and by recipient.
    by_author: BTreeMap<PeerId, u64>,
    by_recipient: BTreeMap<PeerId, u64>,
    /// Feeds to us that a mailbox announced, by feed, with their authors.
    pub via_mailbox: BTreeMap<FeedId, PeerId>,
    /// As an author: how long a prefix of our feed to each recipient each
    /// of its mailboxes said it stores, by `(recipient, mailbox)`.
    pub held: BTreeMap<(PeerId, PeerId), u64>,
}

fn held_key(recipient: &PeerId, mailbox: &PeerId) -> [u8; 65] {
    let mut k = [0u8; 65];
    k[0] = HELD;
    k[1..33].copy_from_slice(&recipient.0);
    k[33..].copy_from_slice(&mailbox.0);
    k
}

fn decode_held(k: &[u8], v: &[u8]) -> Option<((PeerId, PeerId), u64)> {
    let recipient = PeerId(k.get(1..33)?.try_into().ok()?);
    let mailbox = PeerId(k.get(33..)?.try_into().ok()?);
    Some(((recipient, mailbox), u64::from_le_bytes(v.try_into().ok()?)))
}

impl Mail {
    /// Loads every list, route and carried feed.
    pub fn load<S: Store>(txn: &Txn<'_, S>) -> Result<Self, StoreError> {
        let mut mail = Mail::default();
        let mut bad = None;
        txn.scan(
            Table::Mail,
            (Bound::Unbounded, Bound::Unbounded),
            &mut |k, v| {
                let ok = match (k.first(), <[u8; 32]>::try_from(&k[1.min(k.len())..])) {
                    (Some(&LIST), Ok(id)) => MailboxList::decode(v)
                        .filter(|l| l.recipient.0 == id)
                        .map(|l| mail.lists.insert(l.recipient, l))
                        .is_some(),
                    (Some(&ROUTE), Ok(id)) => {
                        v.chunks_exact(32).len() * 32 == v.len() && {
                            let set = v
                                .chunks_exact(32)
                                .filter_map(|c| c.try_into().ok().map(PeerId));
                            mail.routes.insert(PeerId(id), set.collect());
                            true
                        }
                    }
                    (Some(&HELD), _) => decode_held(k, v)
                        .map(|(at, length)| mail.held.insert(at, length))
                        .is_some(),
                    (Some(&CARRIED), Ok(id)) => Carried::decode(v)
                        .filter(|c| c.desc.id().0 == id)
                        .map(|c| mail.carried.insert(c.desc.id(), c))
                        .is_some(),
                    _ => false,
                };
                if ok {
                    ControlFlow::Continue(())
                } else {
                    bad = Some(k.to_vec());
                    ControlFlow::Break(())
                }
            },
        )?;
        if let Some(k) = bad {
            return Err(StoreError::Corrupted(format!(
                "mailbox record {} is damaged",
                hex::encode(k)
            )));
        }
        for c in mail.carried.values() {
            *mail.by_author.entry(c.desc.author).or_default() += c.bytes;
            if let Some(r) = c.recipient() {
                *mail.by_recipient.entry(r).or_default() += c.bytes;
            }
        }
        Ok(mail)
    }

    /// The mailboxes `recipient` named, and those set here for it.
    pub fn mailboxes_of(&self, recipient: &PeerId) -> BTreeSet<PeerId> {
        let mut out: BTreeSet<PeerId> = self
            .lists
            .get(recipient)
            .map(|l| l.mailboxes.iter().copied().collect())
            .unwrap_or_default();
        if let Some(local) = self.routes.get(recipient) {
            out.extend(local.iter().copied());
        }
        out
    }

    /// The recipients whose mail goes through `mailbox`.
    pub fn routed_via(&self, mailbox: &PeerId) -> BTreeSet<PeerId> {
        let named = self
            .lists
            .values()
            .filter(|l| l.names(mailbox))
            .map(|l| l.recipient);
        let local = self
            .routes
            .iter()
            .filter(|(_, m)| m.contains(mailbox))
            .map(|(r, _)| *r);
        named.chain(local).collect()
    }

    fn add_bytes(&mut self, desc: &FeedDescriptor, bytes: u64, add: bool) {
        let change = |v: &mut u64| {
            *v = if add {
                v.saturating_add(bytes)
            } else {
                v.saturating_sub(bytes)
            }
        };
        change(self.by_author.entry(desc.author).or_default());
        if let FeedKind::Queue { recipient } = desc.kind {
            change(self.by_recipient.entry(recipient).or_default());
        }
    }
}

impl State {
    /// Our own signed list of mailboxes, if we named any (or ever did).
    fn own_list(&self) -> Option<&MailboxList> {
        self.mail.lists.get(&self.me)
    }

    /// Whether `peer` is one of the mailboxes we named.
    pub(super) fn is_my_mailbox(&self, peer: &PeerId) -> bool {
        self.own_list().is_some_and(|l| l.names(peer))
    }

    /// Whether we serve as `recipient`'s mailbox: we are a mailbox, and its
    /// latest list names us.
    fn serves(&self, recipient: &PeerId) -> bool {
        self.config.mailbox.is_some()
            && self
                .mail
                .lists
                .get(recipient)
                .is_some_and(|l| l.names(&self.me))
    }

    /// An open connection to one of our mailboxes that announced `feed`,
    /// to download it from when its author is not connected.
    pub(super) fn mailbox_conn_for(&self, feed: &FeedId) -> Option<ConnId> {
        self.conns
            .values()
            .filter(|c| c.is_open())
            .filter(|c| c.peer.is_some_and(|p| self.is_my_mailbox(&p)))
            .find(|c| c.remote_heads.get(feed).is_some_and(|&l| l > 0))
            .map(|c| c.id)
    }

    /// What a new connection to `peer` is told about mail: our list, the
    /// heads of our feeds to recipients `peer` holds mail for, and (as a
    /// mailbox) the feeds we carry for `peer` and the receipts for feeds
    /// `peer` wrote.
    pub(super) fn on_connected_mail<S: Store>(
        &mut self,
        txn: &Txn<'_, S>,
        id: ConnId,
        peer: PeerId,
    ) -> Result<(), NodeError> {
        let mut out = Vec::new();
        if let Some(list) = self.own_list() {
            out.push(Message::Mailboxes(list.clone()));
        }
        for r in self.mail.routed_via(&peer) {
            if r == peer || r == self.me {
                continue;
            }
            let desc = FeedDescriptor::queue(self.me, r);
            if let Some(head) = self.feed(txn, desc)?.head().copied() {
                out.push(Message::Head { desc, head });
            }
        }
        if self.config.mailbox.is_some() {
            let mine: Vec<FeedDescriptor> = self
                .mail
                .carried
                .values()
                .filter(|c| c.recipient() == Some(peer) || c.desc.author == peer)
                .map(|c| c.desc)
                .collect();
            for desc in mine {
                let Some(c) = self.mail.carried.get(&desc.id()) else {
                    continue;
                };
                if desc.author == peer {
                    // Held first: an author that heard the receipts heard it.
                    out.push(Message::Held {
                        feed: desc.id(),
                        length: c.stored_prefix(),
                    });
                    out.extend(c.receipts.iter().cloned().map(Message::Ack));
                } else if let Some(head) = self.feed(txn, desc)?.head().copied() {
                    out.push(Message::Head { desc, head });
                }
            }
        }
        if let Some(conn) = self.conns.get_mut(&id) {
            for m in &out {
                conn.send(m);
            }
        }
        Ok(())
    }

    /// A peer's signed list of its mailboxes.
    pub(super) fn on_mailboxes<S: Store>(
        &mut self,
        txn: &mut Txn<'_, S>,
        peer: PeerId,
        list: MailboxList,
    ) -> Result<(), Fault> {
        if list.recipient != peer {
            // Lists travel from their recipient only: carrying others'
            // would let anyone fill our table with valid old lists.
            return Ok(());
        }
        if !list.verify() {
            return Err(Fault::Peer(CloseReason::BadData(
                "mailbox list has a bad signature".into(),
            )));
        }
        let known = self.mail.lists.get(&peer);
        if known.is_some_and(|k| k.version >= list.version) {
            return Ok(());
        }
        // Kept from the peers we send to, and (as a mailbox) from those
        // that name us, within the quota of recipients; a newer list from a
        // peer we keep one of always replaces it, so a removal is heard.
        let clients = self
            .mail
            .lists
            .values()
            .filter(|l| l.recipient != self.me && l.names(&self.me))
            .count();
        let as_mailbox = self
            .config
            .mailbox
            .as_ref()
            .is_some_and(|m| list.names(&self.me) && clients < m.max_recipients);
        if known.is_none() && !self.peers.contains(&peer) && !as_mailbox {
            return Ok(());
        }
        let mut bytes = Vec::new();
        list.encode(&mut bytes);
        txn.put_owned(Table::Mail, &key(LIST, &peer.0), bytes);
        self.mail.lists.insert(peer, list);
        Ok(())
    }

    /// A peer announced the head of queue feed `desc`, which is neither its
    /// own feed to us (handled as a sender's) nor ours.
    pub(super) fn on_mail_head<S: Store>(
        &mut self,
        txn: &mut Txn<'_, S>,
        id: ConnId,
        peer: PeerId,
        desc: FeedDescriptor,
        head: SignedHead,
    ) -> Result<MailHead, Fault> {
        let FeedKind::Queue { recipient } = desc.kind else {
            return Ok(MailHead::Ignored);
        };
        let feed = desc.id();
        if recipient == self.me {
            // Our mail, held by one of our mailboxes.
            if !self.is_my_mailbox(&peer)
                || !self.peers.contains(&desc.author)
                || self.forks.contains_key(&feed)
            {
                return Ok(MailHead::Ignored);
            }
            self.check_mail_head(txn, desc, &head)?;
            if let Some(c) = self.conns.get_mut(&id) {
                let known = c.remote_heads.entry(feed).or_insert(0);
                *known = (*known).max(head.length);
            }
            self.mail.via_mailbox.insert(feed, desc.author);
            return Ok(MailHead::Ours(desc.author, head));
        }
        if desc.author != peer || recipient == peer {
            // A mailbox takes a feed from its author only.
            return Ok(MailHead::Ignored);
        }
        let refuse = |reason| Ok(MailHead::Refused(feed, reason));
        if self.config.mailbox.is_none() {
            return refuse(RefuseReason::NotAMailbox);
        }
        if !self.serves(&recipient) {
            return refuse(RefuseReason::NotNamed);
        }
        if self.forks.contains_key(&feed) {
            return Ok(MailHead::Ignored);
        }
        if self.mail_full(&desc) {
            return refuse(RefuseReason::Full);
        }
        self.check_mail_head(txn, desc, &head)?;
        if let Some(c) = self.conns.get_mut(&id) {
            let known = c.remote_heads.entry(feed).or_insert(0);
            *known = (*known).max(head.length);
        }
        let c = self
            .mail
            .carried
            .entry(feed)
            .or_insert_with(|| Carried::new(desc));
        c.dl.announced = c.dl.announced.max(head.length);
        self.to_schedule.insert(Target::Carried(feed));
        Ok(MailHead::Carried)
    }

    /// Checks a head's signature, and that it does not fork the feed.
    fn check_mail_head<S: Store>(
        &mut self,
        txn: &Txn<'_, S>,
        desc: FeedDescriptor,
        head: &SignedHead,
    ) -> Result<(), Fault> {
        let feed = self.feed(txn, desc).map_err(Fault::Store)?;
        if !feed.check_head(head) {
            return Err(Fault::Peer(CloseReason::BadData(format!(
                "head of feed {} has a bad signature",
                head.feed
            ))));
        }
        Ok(())
    }

    /// Whether the quota of `desc`'s author or recipient is used up.
    pub(super) fn mail_full(&self, desc: &FeedDescriptor) -> bool {
        let Some(limits) = &self.config.mailbox else {
            return true;
        };
        let FeedKind::Queue { recipient } = desc.kind else {
            return true;
        };
        let used = |m: &BTreeMap<PeerId, u64>, p: &PeerId| m.get(p).copied().unwrap_or(0);
        used(&self.mail.by_author, &desc.author) >= limits.max_sender_bytes
            || used(&self.mail.by_recipient, &recipient) >= limits.max_recipient_bytes
    }

    /// Plans the requests for a feed we carry: from its author, who pushed
    /// it, within the quotas.
    pub(super) fn plan_carried(&mut self, feed: FeedId) -> Vec<Planned> {
        let mut planned = Vec::new();
        let Some(desc) = self.mail.carried.get(&feed).map(|c| c.desc) else {
            return planned;
        };
        if self.mail_full(&desc) || self.forks.contains_key(&feed) {
            return planned;
        }
        let Some(cid) = self.conn_to(&desc.author) else {
            return planned;
        };
        let base = self.feeds.get(&feed).map_or(0, |f| f.len());
        let (per, max_inflight) = self.config.request_limits();
        let (Some(conn), Some(c)) = (self.conns.get_mut(&cid), self.mail.carried.get_mut(&feed))
        else {
            return planned;
        };
        let can = conn.remote_heads.get(&feed).copied().unwrap_or(0);
        let wanted = can.min(c.dl.announced);
        let mut busy = conn.busy();
        let mut s = 0;
        while busy < max_inflight {
            let skip = [&c.acked];
            let Some((a, e)) = c.dl.next_request(&skip, s, wanted, per) else {
                break;
            };
            busy += 1;
            planned.push(Planned {
                conn: cid,
                id: conn.plan_request(feed, a, e, false),
                desc,
                start: a,
                end: e,
                base,
                known: wanted.max(base),
            });
            s = e;
        }
        planned
    }

    /// The blocks of `d`, answering a request for a carried feed up to
    /// `done` (where it stopped asking), arrived and were stored in `txn`.
    pub(super) fn carried_arrived<S: Store>(
        &mut self,
        txn: &mut Txn<'_, S>,
        feed: FeedId,
        d: &DataMsg<'_>,
        done: u64,
    ) {
        let Some(c) = self.mail.carried.get_mut(&feed) else {
            return;
        };
        let (start, end) = (d.proof.start, d.proof.end);
        let bytes: u64 = d.blocks.iter().map(|b| b.len() as u64).sum();
        let head_len = d.head.map_or(0, |h| h.length);
        c.dl.requested.remove(start, done);
        c.dl.announced = c.dl.announced.max(head_len);
        c.dl.held.insert(start, end);
        c.bytes += bytes;
        c.save(txn);
        let desc = c.desc;
        self.mail.add_bytes(&desc, bytes, true);
    }

    /// Announces a carried feed's head to its recipient, if connected and
    /// we hold it all.
    pub(super) fn offer_carried(&mut self, feed: FeedId) {
        let Some(c) = self.mail.carried.get(&feed) else {
            return;
        };
        let Some(recipient) = c.recipient() else {
            return;
        };
        let desc = c.desc;
        let Some(head) = self.feeds.get(&feed).and_then(|f| f.head().copied()) else {
            return;
        };
        let all = RangeSet::first_uncovered(&[&c.dl.held, &c.acked], 0, head.length).is_none();
        if !all {
            return;
        }
        if let Some(conn) = self
            .conn_to(&recipient)
            .and_then(|id| self.conns.get_mut(&id))
        {
            conn.send(&Message::Head { desc, head });
        }
    }

    /// Tells the author of a carried feed, if connected, how much of it we
    /// store now.
    pub(super) fn tell_author_held(&mut self, feed: FeedId) {
        let Some(c) = self.mail.carried.get(&feed) else {
            return;
        };
        let held = Message::Held {
            feed,
            length: c.stored_prefix(),
        };
        if let Some(conn) = self
            .conn_to(&c.desc.author)
            .and_then(|id| self.conns.get_mut(&id))
        {
            conn.send(&held);
        }
    }

    /// A mailbox told us how much of our feed `feed` it stores: kept, per
    /// recipient and mailbox, for our status. Ignored unless `feed` is our
    /// feed to a recipient whose mail goes through `mailbox`.
    pub(super) fn on_held<S: Store>(
        &mut self,
        txn: &mut Txn<'_, S>,
        mailbox: PeerId,
        feed: FeedId,
        length: u64,
    ) -> Result<(), Fault> {
        let Some(to) = self.routed_recipient(&mailbox, &feed) else {
            return Ok(());
        };
        let sent = self
            .feed(txn, FeedDescriptor::queue(self.me, to))
            .map_err(Fault::Store)?
            .len();
        let length = length.min(sent);
        if self.mail.held.get(&(to, mailbox)) != Some(&length) {
            txn.put(Table::Mail, &held_key(&to, &mailbox), &length.to_le_bytes());
            self.mail.held.insert((to, mailbox), length);
        }
        Ok(())
    }

    /// The recipient of our queue feed `feed`, if its mail goes through
    /// `mailbox`.
    fn routed_recipient(&self, mailbox: &PeerId, feed: &FeedId) -> Option<PeerId> {
        self.mail
            .routed_via(mailbox)
            .into_iter()
            .find(|r| FeedDescriptor::queue(self.me, *r).id() == *feed)
    }

    /// Whether `peer` may be served blocks of `feed`, and the feed: our own
    /// queue feed to a recipient whose mail `peer` holds, or (as a mailbox)
    /// a feed we carry, to its recipient or author.
    pub(super) fn mail_servable(&self, peer: &PeerId, feed: &FeedId) -> Option<FeedDescriptor> {
        if let Some(c) = self.mail.carried.get(feed) {
            return (c.recipient() == Some(*peer) || c.desc.author == *peer).then_some(c.desc);
        }
        self.mail
            .routed_via(peer)
            .into_iter()
            .map(|r| FeedDescriptor::queue(self.me, r))
            .find(|d| d.id() == *feed)
    }

    /// A receipt a peer sent for a feed we carry: from its recipient, it is
    /// kept for the author (handed over now if connected), and the bytes of
    /// what it acknowledges are dropped.
    pub(super) fn on_carried_ack<S: Store>(
        &mut self,
        txn: &mut Txn<'_, S>,
        peer: PeerId,
        receipt: &Receipt,
    ) -> Result<bool, NodeError> {
        let Some(c) = self.mail.carried.get(&receipt.feed) else {
            return Ok(false);
        };
        if c.recipient() != Some(peer) || receipt.signer != peer {
            return Ok(false);
        }
        let desc = c.desc;
        let length = self.feed(txn, desc)?.len();
        let mut newly = receipt.ranges.clone();
        newly.remove(length, u64::MAX);
        let Some(c) = self.mail.carried.get_mut(&receipt.feed) else {
            return Ok(false);
        };
        newly.subtract(&c.acked);
        if newly.is_empty() {
            // Nothing new: neither kept nor handed on.
            return Ok(true);
        }
        c.acked.union(&newly);
        c.receipts.push(receipt.clone());
        if c.receipts.len() > MAX_KEPT_RECEIPTS {
            c.receipts.remove(0);
        }
        let dropping: Vec<u64> = newly
            .ranges()
            .flat_map(|(a, b)| c.dl.held.iter_within(a, b))
            .collect();
        let feed = self.feed(txn, desc)?;
        let mut freed = 0u64;
        for seq in dropping {
            if let Some(block) = feed.get(txn, seq)? {
                freed += block.len() as u64;
            }
            feed.drop_block(txn, seq)?;
        }
        if let Some(c) = self.mail.carried.get_mut(&receipt.feed) {
            c.bytes = c.bytes.saturating_sub(freed);
            c.save(txn);
        }
        self.mail.add_bytes(&desc, freed, false);
        if let Some(conn) = self
            .conn_to(&desc.author)
            .and_then(|id| self.conns.get_mut(&id))
        {
            conn.send(&Message::Ack(receipt.clone()));
        }
        Ok(true)
    }
}

/// What a mailbox-related head came to.
pub(super) enum MailHead {
    /// Nothing to do.
    Ignored,
    /// A feed to us, from this author, announced by our mailbox.
    Ours(PeerId, SignedHead),
    /// We carry it now, and fetch it.
    Carried,
    /// We refuse to carry it; tell the author.
    Refused(FeedId, RefuseReason),
}

impl<S: Store> Node<S> {
    /// Names `mailbox` as a peer that may hold our mail while we are away:
    /// signs a new list of our mailboxes, hands it to every peer connected
    /// (and, at connect, to every peer), and keeps a connection to the
    /// mailbox ([`Node::dial`]). Senders that cannot reach us push to it.
    pub fn add_mailbox(&mut self, mailbox: PeerId, now: Instant) -> Result<(), NodeError> {
        if mailbox == self.st.me {
            return Err(NodeError::SelfSend(mailbox));
        }
        let mut set = self.mailboxes();
        set.insert(mailbox);
        if set.len() > crate::wire::mailboxes::MAX_MAILBOXES {
            return Err(NodeError::TooManyMailboxes {
                limit: crate::wire::mailboxes::MAX_MAILBOXES,
            });
        }
        self.set_mailboxes(set, now)?;
        self.dial(mailbox, now);
        Ok(())
    }

    /// Stops naming `mailbox`: signs a list without it and hands it on, and
    /// stops keeping a connection to it (unless it is an authorized peer).
    /// The mailbox refuses our mail once the new list reaches it.
    pub fn remove_mailbox(&mut self, mailbox: &PeerId, now: Instant) -> Result<bool, NodeError> {
        let mut set = self.mailboxes();
        if !set.remove(mailbox) {
            return Ok(false);
        }
        self.set_mailboxes(set, now)?;
        if !self.st.peers.contains(mailbox) {
            self.hang_up(mailbox);
        }
        Ok(true)
    }

    /// The mailboxes we named.
    pub fn mailboxes(&self) -> BTreeSet<PeerId> {
        self.st
            .own_list()
            .map(|l| l.mailboxes.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Our signed list of mailboxes, to publish (a discovery record, say).
    pub fn mailbox_list(&self) -> Option<&MailboxList> {
        self.st.own_list()
    }

    fn set_mailboxes(&mut self, set: BTreeSet<PeerId>, now: Instant) -> Result<(), NodeError> {
        let now = self.st.tick(now);
        let version = self.st.own_list().map_or(1, |l| l.version + 1);
        let list = MailboxList::sign(&self.st.key, version, set);
        let mut bytes = Vec::new();
        list.encode(&mut bytes);
        retry_on_conflict(|| {
            let mut txn = Txn::begin(&self.store)?;
            txn.put(Table::Mail, &key(LIST, &self.st.me.0), &bytes);
            Ok(txn.commit()?)
        })?;
        self.st.mail.lists.insert(self.st.me, list.clone());
        for conn in self.st.conns.values_mut().filter(|c| c.is_open()) {
            conn.send(&Message::Mailboxes(list.clone()));
        }
        self.pump(now);
        Ok(())
    }

    /// Sets, on this node, that `recipient`'s mail may go through
    /// `mailbox`: for a recipient we have not met, whose signed list we
    /// have not seen (one we meet later adds its own list to this).
    pub fn add_route(&mut self, recipient: PeerId, mailbox: PeerId) -> Result<(), NodeError> {
        let mut set = self
            .st
            .mail
            .routes
            .get(&recipient)
            .cloned()
            .unwrap_or_default();
        if !set.insert(mailbox) {
            return Ok(());
        }
        if set.len() > crate::wire::mailboxes::MAX_MAILBOXES {
            return Err(NodeError::TooManyMailboxes {
                limit: crate::wire::mailboxes::MAX_MAILBOXES,
            });
        }
        let bytes: Vec<u8> = set.iter().flat_map(|p| p.0).collect();
        retry_on_conflict(|| {
            let mut txn = Txn::begin(&self.store)?;
            txn.put(Table::Mail, &key(ROUTE, &recipient.0), &bytes);
            Ok(txn.commit()?)
        })?;
        self.st.mail.routes.insert(recipient, set);
        Ok(())
    }

    /// Forgets a route set with [`Node::add_route`].
    pub fn remove_route(
        &mut self,
        recipient: &PeerId,
        mailbox: &PeerId,
    ) -> Result<bool, NodeError> {
        let mut set = self
            .st
            .mail
            .routes
            .get(recipient)
            .cloned()
            .unwrap_or_default();
        if !set.remove(mailbox) {
            return Ok(false);
        }
        let bytes: Vec<u8> = set.iter().flat_map(|p| p.0).collect();
        retry_on_conflict(|| {
            let mut txn = Txn::begin(&self.store)?;
            if bytes.is_empty() {
                txn.delete(Table::Mail, &key(ROUTE, &recipient.0));
            } else {
                txn.put(Table::Mail, &key(ROUTE, &recipient.0), &bytes);
            }
            Ok(txn.commit()?)
        })?;
        if set.is_empty() {
            self.st.mail.routes.remove(recipient);
        } else {
            self.st.mail.routes.insert(*recipient, set);
        }
        Ok(true)
    }

    /// The mailboxes `recipient`'s mail may go through: those it named in
    /// its latest signed list we heard, and those set here.
    pub fn mailboxes_of(&self, recipient: &PeerId) -> BTreeSet<PeerId> {
        self.st.mail.mailboxes_of(recipient)
    }

    /// As a mailbox: the feeds held, as `(author, recipient, blocks held,
    /// bytes held, blocks acknowledged)`.
    pub fn carried(&self) -> Vec<CarriedStatus> {
        self.st
            .mail
            .carried
            .values()
            .filter_map(|c| {
                Some(CarriedStatus {
                    author: c.desc.author,
                    recipient: c.recipient()?,
                    held: c.dl.held.count(),
                    bytes: c.bytes,
                    acknowledged: c.acked.count(),
                })
            })
            .collect()
    }

    /// As an author: what each mailbox said it stores of our mail, with how
    /// much of it still waits for its recipient (stored, and not yet
    /// acknowledged). A mailbox reports after each batch it stores and
    /// when we connect to it; the figures are its word, as of then.
    pub fn held_in_mailboxes(&self) -> Result<Vec<HeldInMailbox>, NodeError> {
        let txn = Txn::begin(&self.store)?;
        let mut out = Vec::with_capacity(self.st.mail.held.len());
        for (&(recipient, mailbox), &stored) in &self.st.mail.held {
            let acked = self
                .st
                .peek_outbox(&txn, recipient)?
                .acked
                .count_within(0, stored);
            out.push(HeldInMailbox {
                recipient,
                mailbox,
                stored,
                waiting: stored - acked,
            });
        }
        Ok(out)
    }

    /// Hands our new head of `desc` (our feed to `to`) to `to`'s mailboxes
    /// that are connected, and, while `to` itself is not, dials the rest.
    /// Costs one map lookup for a recipient without mailboxes.
    pub(super) fn offer_to_mailboxes(
        &mut self,
        desc: FeedDescriptor,
        head: SignedHead,
        to: &PeerId,
    ) {
        let boxes = self.st.mail.mailboxes_of(to);
        if boxes.is_empty() {
            return;
        }
        let mut unconnected = boxes.clone();
        for conn in self.st.conns.values_mut().filter(|c| c.is_open()) {
            if let Some(p) = conn.peer.filter(|p| boxes.contains(p)) {
                conn.send(&Message::Head { desc, head });
                unconnected.remove(&p);
            }
        }
        if self.st.conn_to(to).is_some() {
            return;
        }
        for m in unconnected {
            if m != self.st.me && !self.st.dials.contains_key(&m) {
                self.keep_dialing(m);
            }
        }
    }
}

/// One feed a mailbox holds ([`Node::carried`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CarriedStatus {
    /// Who wrote it.
    pub author: PeerId,
    /// Whose mail it is.
    pub recipient: PeerId,
    /// Blocks stored here (acknowledged ones are dropped).
    pub held: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Blocks the recipient acknowledged.
    pub acknowledged: u64,
}

/// Our mail in one mailbox, as it last told us ([`Node::held_in_mailboxes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldInMailbox {
    /// Whose mail it is.
    pub recipient: PeerId,
    /// The mailbox.
    pub mailbox: PeerId,
    /// Our messages to `recipient` the mailbox stores or stored: the first
    /// `stored` of them.
    pub stored: u64,
    /// Of those, how many the recipient has not acknowledged yet: what
    /// waits there for it.
    pub waiting: u64,
}

/// Emits the event for a mailbox's refusal of our feed.
pub(super) fn refused_event(
    st: &State,
    mailbox: PeerId,
    feed: FeedId,
    reason: RefuseReason,
) -> Option<Output> {
    let to = st.routed_recipient(&mailbox, &feed)?;
    Some(Output::Event(Event::MailboxRefused {
        mailbox,
        to,
        reason,
    }))
}

//! The emitter's connections by address: the addresses the application
//! asked for (`Emitter::connect`) and those authors announced of
//! themselves in `EventPeer` events, each with its dial state.
//!
//! Address dials are the emitter's business, not the core's: the core's
//! dial intents are by key, while an emitter connects to `host:port`
//! without knowing who answers. The reconnect schedule still takes its
//! backoff from the core's [`peermq::Config`]. What was learned and asked,
//! and how much of it is kept, is the core's [`Book`]: it survives a
//! restart, and the simulator exercises the same bounds.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use peermq::emitter::Book;
use peermq::{CloseReason, ConnId, Instant, Node, PeerId, Store};
use tracing::{debug, warn};

use crate::driver::{answer, Ctx, Reply};
use crate::error::EmitterError;
use crate::runtime::Connection;

/// Failed dials of a learned address before it is left alone, until its
/// author announces again or the node restarts. Addresses the application
/// asked for are retried for as long as it wants them.
pub(crate) const MAX_LEARNED_ATTEMPTS: u32 = 8;

#[derive(Debug)]
enum DialState {
    /// Dial at that time.
    Waiting(Instant),
    /// A connection attempt is under way.
    Dialing,
    /// A connection is up (or handshaking).
    Open(ConnId),
    /// Its owner is connected through another connection; dial again only
    /// once that one drops.
    Parked,
    /// A learned address that failed [`MAX_LEARNED_ATTEMPTS`] times.
    GaveUp,
}

struct AddrDial {
    /// Who answers there, once known.
    owner: Option<PeerId>,
    /// Learned from its owner's announcement, not asked for by the
    /// application: dialed expecting the owner's key, a bounded number of
    /// times.
    learned: bool,
    attempts: u32,
    state: DialState,
    /// The last connection made to it, to attribute close events.
    last_conn: Option<ConnId>,
    /// `Emitter::connect` calls waiting for the first outcome.
    waiters: Vec<Reply<PeerId, EmitterError>>,
}

impl AddrDial {
    fn new(owner: Option<PeerId>) -> Self {
        AddrDial {
            owner,
            learned: owner.is_some(),
            attempts: 0,
            state: DialState::Waiting(Instant::ZERO),
            last_conn: None,
            waiters: Vec::new(),
        }
    }

    /// Whether to keep it when its owner is forgotten or stops announcing
    /// it: the application asked for it, or a connection there is up.
    fn still_needed(&self) -> bool {
        !self.learned || matches!(self.state, DialState::Open(_)) || !self.waiters.is_empty()
    }
}

/// The emitter's address dials and the announcements they come from.
pub(crate) struct Dials {
    addrs: BTreeMap<SocketAddr, AddrDial>,
    /// The address each connection we dialed went to.
    conns: HashMap<ConnId, SocketAddr>,
    /// What each author last announced, ours included, and the addresses
    /// the application asked for.
    book: Book,
    /// What we announce.
    advertised: Vec<SocketAddr>,
}

impl Dials {
    /// Loads the book kept in `node`'s store: the addresses asked for are
    /// dialed at once, the learned ones of authors the node replicates too.
    pub(crate) fn open<S: Store>(node: &Node<S>) -> Result<Self, EmitterError> {
        let book = Book::load(node.store())?;
        let me = node.id();
        let mut addrs: BTreeMap<SocketAddr, AddrDial> = parse(book.targets())
            .into_iter()
            .map(|a| (a, AddrDial::new(None)))
            .collect();
        for (author, list) in book.announced() {
            if *author == me || !node.replicates(author) {
                continue;
            }
            for a in parse(list) {
                addrs
                    .entry(a)
                    .or_insert_with(|| AddrDial::new(Some(*author)))
                    .owner = Some(*author);
            }
        }
        Ok(Dials {
            addrs,
            conns: HashMap::new(),
            book,
            advertised: Vec::new(),
        })
    }

    /// Adds `more` to what we announce. Returns the full list if it differs
    /// from what our last announcement said (and records it as said), or
    /// `None` if nothing changed.
    pub(crate) fn advertise<S: Store>(
        &mut self,
        node: &Node<S>,
        more: Vec<SocketAddr>,
    ) -> Option<Vec<SocketAddr>> {
        for a in more {
            if !self.advertised.contains(&a) {
                self.advertised.push(a);
            }
        }
        self.advertised.sort();
        // The book keeps what our announcement said in its own order (as
        // text); compare as sets, at most as many as an announcement holds.
        let mut said: Vec<String> = self.book.addresses(&node.id()).unwrap_or_default().to_vec();
        let mut now = texts(&self.advertised);
        now.truncate(peermq::emitter::MAX_ADDRS_PER_AUTHOR);
        said.sort();
        now.sort();
        if self.book.addresses(&node.id()).is_some() && said == now {
            return None;
        }
        Some(self.advertised.clone())
    }

    /// Our announcement of `list` is durable: record it now rather than on
    /// its delivery, so that a second listen before the delivery pass
    /// compares against it.
    pub(crate) fn announced_ours<S: Store>(&mut self, node: &Node<S>, list: Vec<SocketAddr>) {
        let me = node.id();
        if let Err(e) = self.book.learn(node.store(), &me, me, texts(&list)) {
            // At worst the next start announces the same again.
            warn!(error = %e, "peermq: cannot record our announced addresses");
        }
    }

    fn own_addrs<S: Store>(&self, cx: &Ctx<'_, S>) -> Vec<SocketAddr> {
        let mut own = cx.listening();
        own.extend(self.advertised.iter().copied());
        own
    }

    /// `author` announced `list` (read by
    /// [`peermq::emitter::event_peer_addresses`]): remember it, and, if the
    /// application wants that author's events, keep connections to it.
    pub(crate) fn learn<S: Store>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        author: PeerId,
        list: Vec<String>,
    ) {
        let me = cx.node.id();
        let own = self.own_addrs(cx);
        let wanted = author != me && cx.node.replicates(&author) && !cx.node.refuses(&author);
        match self.book.learn(cx.node.store(), &me, author, list) {
            Ok(learned) => {
                // Learned addresses of forgotten authors go too.
                let forgotten = learned.forgotten;
                self.addrs.retain(|_, d| {
                    !d.owner.is_some_and(|o| forgotten.contains(&o)) || d.still_needed()
                });
            }
            // Not remembered this time: the author's next announcement tries
            // again, and nothing is dialed on its word meanwhile.
            Err(e) => return warn!(error = %e, "peermq: cannot record a peer's addresses"),
        }
        if author == me {
            return;
        }
        let list = parse(self.book.addresses(&author).unwrap_or_default());
        // Addresses it no longer announces are forgotten.
        self.addrs
            .retain(|a, d| d.owner != Some(author) || list.contains(a) || d.still_needed());
        if !wanted {
            return;
        }
        for a in list {
            if own.contains(&a) {
                continue;
            }
            let entry = self.addrs.entry(a).or_insert_with(|| {
                debug!(addr = %a, peer = %author, "peermq: learned a peer's address");
                AddrDial::new(Some(author))
            });
            entry.owner.get_or_insert(author);
            if matches!(entry.state, DialState::GaveUp) {
                // Announced again: worth a few more tries.
                entry.attempts = 0;
                entry.state = DialState::Waiting(cx.now);
            }
        }
        self.redial(cx);
    }

    /// The application wants a connection to `addr`, whoever answers
    /// there, for as long as it takes; `reply` hears of the first outcome.
    pub(crate) fn connect<S: Store>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        addr: SocketAddr,
        reply: Reply<PeerId, EmitterError>,
    ) {
        if let Err(e) = self.book.add_target(cx.node.store(), &addr.to_string()) {
            return answer(reply, Err(e.into()));
        }
        let now = cx.now;
        let d = self.addrs.entry(addr).or_insert_with(|| {
            let mut d = AddrDial::new(None);
            d.state = DialState::Waiting(now);
            d
        });
        d.learned = false;
        if matches!(d.state, DialState::GaveUp) {
            d.state = DialState::Waiting(now);
        }
        match (&d.state, d.owner) {
            (DialState::Open(_) | DialState::Parked, Some(p)) => return answer(reply, Ok(p)),
            (DialState::Waiting(_), _) => {
                d.attempts = 0;
                d.state = DialState::Waiting(now);
            }
            _ => {}
        }
        d.waiters.push(reply);
        self.redial(cx);
    }

    /// Every address dialed and kept connected.
    pub(crate) fn known(&self) -> Vec<SocketAddr> {
        self.addrs.keys().copied().collect()
    }

    /// When the next address dial is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.addrs
            .values()
            .filter_map(|d| match d.state {
                DialState::Waiting(t) => Some(t),
                _ => None,
            })
            .min()
    }

    /// Starts the address dials that are due. One whose owner is already
    /// connected (through another address, or by dialing us) is parked.
    pub(crate) fn redial<S: Store>(&mut self, cx: &mut Ctx<'_, S>) {
        let own = self.own_addrs(cx);
        for (addr, d) in self.addrs.iter_mut() {
            if !matches!(d.state, DialState::Waiting(t) if t <= cx.now) {
                continue;
            }
            if d.owner.is_some_and(|p| cx.node.is_connected(&p)) || own.contains(addr) {
                d.state = DialState::Parked;
                if let Some(p) = d.owner {
                    for w in d.waiters.drain(..) {
                        answer(w, Ok(p));
                    }
                }
                continue;
            }
            d.state = DialState::Dialing;
            // Only a learned address has an owner to expect there.
            cx.dial_addr(*addr, d.owner.filter(|_| d.learned));
        }
    }

    /// A dial to `addr` ended: runs a connection over the transport, or
    /// schedules the next try.
    pub(crate) fn dialed<S: Store>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        addr: SocketAddr,
        transport: Result<Connection, String>,
    ) {
        let Some(d) = self.addrs.get_mut(&addr) else {
            return;
        };
        if !matches!(d.state, DialState::Dialing) {
            return;
        }
        let t = match transport {
            Ok(t) => t,
            Err(reason) => {
                debug!(%addr, %reason, "peermq: address dial failed; retrying with backoff");
                return self.retry_later(cx.node, cx.now, addr, &reason);
            }
        };
        // A learned address must answer with the key that announced it;
        // an address the application gave may answer with any key it
        // would accept.
        let expect = d.owner.filter(|_| d.learned);
        let id = cx.open(t, expect);
        d.state = DialState::Open(id);
        d.last_conn = Some(id);
        self.conns.insert(id, addr);
    }

    fn retry_later<S: Store>(&mut self, node: &Node<S>, now: Instant, addr: SocketAddr, why: &str) {
        let Some(d) = self.addrs.get_mut(&addr) else {
            return;
        };
        let at = now + backoff(node, d.attempts);
        d.attempts = d.attempts.saturating_add(1);
        d.state = if d.learned && d.waiters.is_empty() && d.attempts >= MAX_LEARNED_ATTEMPTS {
            debug!(%addr, "peermq: giving up on a learned address until it is announced again");
            DialState::GaveUp
        } else {
            DialState::Waiting(at)
        };
        for w in d.waiters.drain(..) {
            let reason = why.to_string();
            answer(w, Err(EmitterError::Connect { addr, reason }));
        }
    }

    /// Connection `conn` is gone; if it was the one up at its address,
    /// that address is dialed again after backoff.
    pub(crate) fn closed<S: Store>(&mut self, cx: &mut Ctx<'_, S>, conn: ConnId, why: &str) {
        let Some(addr) = self.conns.remove(&conn) else {
            return;
        };
        let open = self
            .addrs
            .get(&addr)
            .is_some_and(|d| matches!(d.state, DialState::Open(c) if c == conn));
        if open {
            self.retry_later(cx.node, cx.now, addr, why);
        }
    }

    /// Connection `conn` finished its handshake with `peer`.
    pub(crate) fn connected(&mut self, conn: ConnId, peer: PeerId) {
        let Some(d) = self.conns.get(&conn).and_then(|a| self.addrs.get_mut(a)) else {
            return;
        };
        d.owner = Some(peer);
        d.attempts = 0;
        for w in d.waiters.drain(..) {
            answer(w, Ok(peer));
        }
    }

    /// Connection `conn` (with `peer`, if its handshake told) ended: if it
    /// was the last one with that peer, its parked addresses are dialed
    /// again after backoff.
    pub(crate) fn disconnected<S: Store>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        conn: ConnId,
        peer: Option<PeerId>,
        reason: &CloseReason,
    ) {
        let Some(p) = peer else {
            return;
        };
        // A duplicate refused before it was reported connected still
        // tells us who answers at that address.
        for d in self.addrs.values_mut() {
            if d.last_conn == Some(conn) && d.owner.is_none() {
                d.owner = Some(p);
            }
        }
        if matches!(reason, CloseReason::Duplicate) || cx.node.is_connected(&p) {
            return;
        }
        for d in self.addrs.values_mut() {
            if d.owner == Some(p) && matches!(d.state, DialState::Parked) {
                d.state = DialState::Waiting(cx.now + backoff(cx.node, d.attempts));
            }
        }
    }
}

/// Addresses as the book keeps them.
fn texts(addrs: &[SocketAddr]) -> Vec<String> {
    addrs.iter().map(SocketAddr::to_string).collect()
}

/// The book's addresses we can dial. What does not parse is skipped: the
/// book only advises where to dial, so a bad entry (an announced host name,
/// a damaged record) costs nothing.
fn parse(list: &[String]) -> Vec<SocketAddr> {
    list.iter().filter_map(|a| a.parse().ok()).collect()
}

/// How long to wait before the dial after `attempts` failed ones.
fn backoff<S: Store>(node: &Node<S>, attempts: u32) -> std::time::Duration {
    let c = node.config();
    c.backoff_base
        .saturating_mul(1u32 << attempts.min(16))
        .min(c.backoff_cap)
}

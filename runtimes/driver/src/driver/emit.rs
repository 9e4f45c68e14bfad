//! The driver's emitter mode: runs [`peermq::emitter::Emitter`] next to
//! the node, fans delivered events out to followers, announces our listen
//! addresses as `EventPeer` events, and keeps connections to the addresses
//! peers announced.
//!
//! Address dials are the driver's business, not the core's: the core's
//! dial intents are by key, while an emitter connects to `host:port`
//! without knowing who answers. The reconnect schedule still takes its
//! backoff from the core's [`peermq::Config`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::{Bound, ControlFlow};

use async_channel::Sender;
use peermq::emitter::{Delivered, Emitter as CoreEmitter, Schema, EVENT_PEER};
use peermq::store::Table;
use peermq::{CloseReason, ConnId, Instant, Node, PeerId, Store, Txn};
use serde_json::{json, Value};
use tracing::{debug, warn};

use super::{answer_with, Driver, Io, CONNECT_TIMEOUT};
use crate::emitter::{EReply, EmitCommand, EmitterError, Follow};
use crate::Transport;

/// Delivered events buffered per live follower. One that falls further
/// behind is dropped and reads the persistent log to catch up.
const FOLLOW_BUFFER: usize = 1024;

/// Key prefixes of the driver's own records in the core's events table,
/// chosen apart from the core's single-byte tags: the addresses each author
/// last announced (`~p` + author), and the addresses the application asked
/// to connect to (`~t` + address text).
const K_ANNOUNCED: &[u8] = b"~p";
const K_TARGET: &[u8] = b"~t";

/// Addresses learned from one author's announcement; the rest are ignored.
/// An announcement makes every mesh node that wants its author try these,
/// so a few must do: one per interface a node listens on.
const MAX_ADDRS_PER_AUTHOR: usize = 4;
/// Authors whose announced addresses are remembered; the least recently
/// announced is forgotten first.
const MAX_BOOK_AUTHORS: usize = 256;
/// Failed dials of a learned address before it is left alone, until its
/// author announces again or the node restarts. Addresses the application
/// asked for are retried for as long as it wants them.
pub(crate) const MAX_LEARNED_ATTEMPTS: u32 = 8;

#[derive(Debug)]
enum DialState {
    /// Dial at that time.
    Waiting(Instant),
    /// A TCP connect is under way.
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
    waiters: Vec<EReply<PeerId>>,
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
}

/// The emitter half of a driver.
pub(crate) struct EmitState {
    core: CoreEmitter,
    followers: Vec<Sender<Delivered>>,
    /// Broadcast blocks arrived since the last delivery pass. Starts true,
    /// so blocks stored before a crash but not delivered go out at start.
    pending: bool,
    addrs: BTreeMap<SocketAddr, AddrDial>,
    /// The addresses each author last announced, ours included, at most
    /// [`MAX_BOOK_AUTHORS`] authors.
    announced: BTreeMap<PeerId, Vec<SocketAddr>>,
    /// The authors of `announced`, least recently announced first.
    announced_order: std::collections::VecDeque<PeerId>,
    /// What we announce.
    advertised: Vec<SocketAddr>,
}

fn encode_addrs(addrs: &[SocketAddr]) -> Vec<u8> {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes()
}

fn decode_addrs(bytes: &[u8]) -> Vec<SocketAddr> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut hi = prefix.to_vec();
    if let Some(last) = hi.last_mut() {
        *last += 1;
    }
    (prefix.to_vec(), hi)
}

/// The addresses `author`'s `EventPeer` value says it listens on (the first
/// [`MAX_ADDRS_PER_AUTHOR`] we can dial), or `None` when the value speaks
/// for another id: an author announces only itself, since its signature is
/// all that vouches for the announcement.
fn event_peer_addrs(value: &Value, author: &PeerId) -> Option<Vec<SocketAddr>> {
    if value["id"].as_str() != Some(author.to_string().as_str()) {
        return None;
    }
    let mut out = Vec::with_capacity(MAX_ADDRS_PER_AUTHOR);
    for a in value["addresses"].as_array().into_iter().flatten() {
        if out.len() == MAX_ADDRS_PER_AUTHOR {
            break;
        }
        let ip = a["ip"].as_str().and_then(|ip| {
            if ip == "localhost" {
                Some(IpAddr::from([127, 0, 0, 1]))
            } else {
                ip.parse().ok()
            }
        });
        let port = a["port"].as_u64().and_then(|p| u16::try_from(p).ok());
        if let (Some(ip), Some(port)) = (ip, port) {
            let addr = SocketAddr::new(ip, port);
            // At most a few: looking through them is linear.
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
    }
    out.sort();
    Some(out)
}

impl EmitState {
    /// Opens the emitter's state and the persisted address book.
    pub(crate) fn open<S: Store>(node: &Node<S>, schema: Schema) -> Result<Self, EmitterError> {
        let core = CoreEmitter::open(node, schema)?;
        let me = node.id();
        let mut announced = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        let txn = Txn::begin(node.store()).map_err(peermq::emitter::EmitterError::from)?;
        let (lo, hi) = prefix_range(K_ANNOUNCED);
        txn.scan(
            Table::Events,
            (Bound::Included(&lo[..]), Bound::Excluded(&hi[..])),
            &mut |k, v| {
                if let Ok(id) = <[u8; 32]>::try_from(&k[K_ANNOUNCED.len()..]) {
                    announced.insert(PeerId(id), decode_addrs(v));
                }
                ControlFlow::Continue(())
            },
        )
        .map_err(peermq::emitter::EmitterError::from)?;
        let (lo, hi) = prefix_range(K_TARGET);
        txn.scan(
            Table::Events,
            (Bound::Included(&lo[..]), Bound::Excluded(&hi[..])),
            &mut |k, _| {
                if let Some(a) = std::str::from_utf8(&k[K_TARGET.len()..])
                    .ok()
                    .and_then(|s| s.parse::<SocketAddr>().ok())
                {
                    addrs.insert(a, AddrDial::new(None));
                }
                ControlFlow::Continue(())
            },
        )
        .map_err(peermq::emitter::EmitterError::from)?;
        for (author, list) in &announced {
            if *author == me || !node.replicates(author) {
                continue;
            }
            for a in list.iter().take(MAX_ADDRS_PER_AUTHOR) {
                addrs
                    .entry(*a)
                    .or_insert_with(|| AddrDial::new(Some(*author)))
                    .owner = Some(*author);
            }
        }
        Ok(EmitState {
            core,
            followers: Vec::new(),
            pending: true,
            addrs,
            announced_order: announced.keys().copied().collect(),
            announced,
            advertised: Vec::new(),
        })
    }
}

impl<S: Store + Send + 'static> Driver<S> {
    /// A broadcast block arrived (or was appended).
    pub(super) fn em_broadcast(&mut self) {
        if let Some(em) = self.em.as_mut() {
            em.pending = true;
        }
    }

    /// Delivers what became deliverable and fans it out.
    pub(super) fn em_deliver(&mut self) {
        let Some(em) = self.em.as_mut() else {
            return;
        };
        if !em.pending {
            return;
        }
        em.pending = false;
        let delivered = match em.core.deliver_ready(&mut self.node) {
            Ok(d) => d,
            Err(e) => {
                // Nothing was recorded; the next block arriving retries.
                warn!(error = %e, "peermq: delivering events failed");
                return;
            }
        };
        for d in &delivered {
            em.followers.retain(|tx| tx.try_send(d.clone()).is_ok());
        }
        for d in delivered {
            if d.name != EVENT_PEER {
                continue;
            }
            match d
                .value
                .as_ref()
                .and_then(|v| event_peer_addrs(v, &d.author))
            {
                Some(list) => self.em_learn_peer(d.author, list),
                None => {
                    debug!(peer = %d.author, "peermq: ignored an EventPeer that does not announce its author")
                }
            }
        }
    }

    fn em_own_addrs(&self) -> Vec<SocketAddr> {
        let mut own: Vec<SocketAddr> = self.listeners.iter().map(|l| l.addr).collect();
        if let Some(em) = &self.em {
            own.extend(em.advertised.iter().copied());
        }
        own
    }

    /// `author` announced `list`: remember it, and, if the application
    /// wants that author's events, keep connections to it.
    fn em_learn_peer(&mut self, author: PeerId, list: Vec<SocketAddr>) {
        let me = self.me;
        let own = self.em_own_addrs();
        let now = self.now();
        let wanted = author != me && self.node.replicates(&author) && !self.node.refuses(&author);
        let Some(em) = self.em.as_mut() else {
            return;
        };
        if em.announced.get(&author) != Some(&list) {
            let mut forget = Vec::new();
            if !em.announced.contains_key(&author) {
                while em.announced.len() >= MAX_BOOK_AUTHORS {
                    let Some(old) = em.announced_order.pop_front() else {
                        break;
                    };
                    if old != me && em.announced.remove(&old).is_some() {
                        forget.push(old);
                    }
                }
            }
            em.announced_order.retain(|a| *a != author);
            em.announced_order.push_back(author);
            let saved = Txn::begin(self.node.store()).and_then(|mut txn| {
                for old in &forget {
                    let mut key = K_ANNOUNCED.to_vec();
                    key.extend_from_slice(&old.0);
                    txn.delete(Table::Events, &key);
                }
                let mut key = K_ANNOUNCED.to_vec();
                key.extend_from_slice(&author.0);
                txn.put(Table::Events, &key, &encode_addrs(&list));
                txn.commit()
            });
            if let Err(e) = saved {
                warn!(error = %e, "peermq: cannot record a peer's addresses");
            }
            // Learned addresses of forgotten authors go too, unless a
            // connection there is up or the application asked for them.
            em.addrs.retain(|_, d| {
                !(d.learned && d.owner.is_some_and(|o| forget.contains(&o)))
                    || matches!(d.state, DialState::Open(_))
                    || !d.waiters.is_empty()
            });
            em.announced.insert(author, list.clone());
        }
        if author == me {
            return;
        }
        // Addresses it no longer announces are forgotten, unless the
        // application asked for them or a connection there is up.
        em.addrs.retain(|a, d| {
            d.owner != Some(author)
                || !d.learned
                || list.contains(a)
                || matches!(d.state, DialState::Open(_))
                || !d.waiters.is_empty()
        });
        if !wanted {
            return;
        }
        for a in list {
            if own.contains(&a) {
                continue;
            }
            let entry = em.addrs.entry(a).or_insert_with(|| {
                debug!(addr = %a, peer = %author, "peermq: learned a peer's address");
                AddrDial::new(Some(author))
            });
            entry.owner.get_or_insert(author);
            if matches!(entry.state, DialState::GaveUp) {
                // Announced again: worth a few more tries.
                entry.attempts = 0;
                entry.state = DialState::Waiting(now);
            }
        }
        self.em_redial();
    }

    fn backoff(&self, attempts: u32) -> std::time::Duration {
        let c = self.node.config();
        c.backoff_base
            .saturating_mul(1u32 << attempts.min(16))
            .min(c.backoff_cap)
    }

    fn owner_connected(&self, owner: Option<PeerId>, except: Option<ConnId>) -> bool {
        owner.is_some_and(|p| {
            self.conns
                .iter()
                .any(|(id, c)| Some(*id) != except && c.peer == Some(p))
        })
    }

    /// When the next address dial is due.
    pub(super) fn em_timeout(&self) -> Option<Instant> {
        self.em
            .as_ref()?
            .addrs
            .values()
            .filter_map(|d| match d.state {
                DialState::Waiting(t) => Some(t),
                _ => None,
            })
            .min()
    }

    /// Starts the address dials that are due.
    pub(super) fn em_redial(&mut self) {
        let now = self.now();
        let own = self.em_own_addrs();
        let Some(em) = self.em.as_ref() else {
            return;
        };
        let due: Vec<(SocketAddr, Option<PeerId>)> = em
            .addrs
            .iter()
            .filter(|(_, d)| matches!(d.state, DialState::Waiting(t) if t <= now))
            .map(|(a, d)| (*a, d.owner))
            .collect();
        for (addr, owner) in due {
            let parked = self.owner_connected(owner, None) || own.contains(&addr);
            let Some(d) = self.em.as_mut().and_then(|em| em.addrs.get_mut(&addr)) else {
                continue;
            };
            if parked {
                d.state = DialState::Parked;
                if let Some(p) = owner {
                    for w in d.waiters.drain(..) {
                        let _ = w.try_send(Ok(p));
                    }
                }
                continue;
            }
            d.state = DialState::Dialing;
            let rt = self.rt.clone();
            let tx = self.io_tx.clone();
            self.rt.spawn(Box::pin(async move {
                let io = match crate::timeout(&*rt, CONNECT_TIMEOUT, rt.connect(addr)).await {
                    Some(Ok(t)) => Io::AddrDialed(addr, t),
                    Some(Err(e)) => Io::AddrDialFailed(addr, e.to_string()),
                    None => Io::AddrDialFailed(addr, "the connection attempt timed out".into()),
                };
                let _ = tx.send(io).await;
            }));
        }
    }

    fn em_retry_later(&mut self, addr: SocketAddr, reason: &str) {
        let now = self.now();
        let Some(attempts) = self
            .em
            .as_ref()
            .and_then(|em| em.addrs.get(&addr))
            .map(|d| d.attempts)
        else {
            return;
        };
        let at = now + self.backoff(attempts);
        if let Some(d) = self.em.as_mut().and_then(|em| em.addrs.get_mut(&addr)) {
            d.attempts = d.attempts.saturating_add(1);
            d.state = if d.learned && d.waiters.is_empty() && d.attempts >= MAX_LEARNED_ATTEMPTS {
                debug!(%addr, "peermq: giving up on a learned address until it is announced again");
                DialState::GaveUp
            } else {
                DialState::Waiting(at)
            };
            for w in d.waiters.drain(..) {
                let _ = w.try_send(Err(EmitterError::Connect {
                    addr,
                    reason: reason.to_string(),
                }));
            }
        }
    }

    pub(super) fn em_addr_dialed(&mut self, addr: SocketAddr, t: Transport) {
        let now = self.now();
        let dialing = self
            .em
            .as_ref()
            .and_then(|em| em.addrs.get(&addr))
            .is_some_and(|d| matches!(d.state, DialState::Dialing));
        if !dialing {
            return;
        }
        // A learned address must answer with the key that announced it;
        // an address the application gave may answer with any key it
        // would accept.
        let expect = self
            .em
            .as_ref()
            .and_then(|em| em.addrs.get(&addr))
            .filter(|d| d.learned)
            .and_then(|d| d.owner);
        let id = match expect {
            Some(owner) => self.node.connect(owner, now),
            None => self.node.connect_any(now),
        };
        self.attach(id, t);
        if let Some(c) = self.conns.get_mut(&id) {
            c.addr = Some(addr);
        }
        if let Some(d) = self.em.as_mut().and_then(|em| em.addrs.get_mut(&addr)) {
            d.state = DialState::Open(id);
            d.last_conn = Some(id);
        }
    }

    pub(super) fn em_addr_failed(&mut self, addr: SocketAddr, reason: String) {
        debug!(%addr, %reason, "peermq: address dial failed; retrying with backoff");
        self.em_retry_later(addr, &reason);
    }

    /// Connection `conn` to `addr` is gone.
    pub(super) fn em_conn_gone(&mut self, conn: ConnId, addr: SocketAddr, reason: &str) {
        let open = self
            .em
            .as_ref()
            .and_then(|em| em.addrs.get(&addr))
            .is_some_and(|d| matches!(d.state, DialState::Open(c) if c == conn));
        if open {
            self.em_retry_later(addr, reason);
        }
    }

    pub(super) fn em_connected(&mut self, conn: ConnId, peer: PeerId) {
        let Some(addr) = self.conns.get(&conn).and_then(|c| c.addr) else {
            return;
        };
        if let Some(d) = self.em.as_mut().and_then(|em| em.addrs.get_mut(&addr)) {
            d.owner = Some(peer);
            d.attempts = 0;
            for w in d.waiters.drain(..) {
                let _ = w.try_send(Ok(peer));
            }
        }
    }

    pub(super) fn em_disconnected(
        &mut self,
        conn: ConnId,
        peer: Option<PeerId>,
        reason: &CloseReason,
    ) {
        let now = self.now();
        let Some(em) = self.em.as_mut() else {
            return;
        };
        if let Some(p) = peer {
            // A duplicate refused before it was reported connected still
            // tells us who answers at that address.
            for d in em.addrs.values_mut() {
                if d.last_conn == Some(conn) && d.owner.is_none() {
                    d.owner = Some(p);
                }
            }
        }
        if matches!(reason, CloseReason::Duplicate) {
            return;
        }
        let Some(p) = peer else {
            return;
        };
        if self.owner_connected(Some(p), Some(conn)) {
            return;
        }
        let parked: Vec<(SocketAddr, u32)> = self
            .em
            .as_ref()
            .map(|em| {
                em.addrs
                    .iter()
                    .filter(|(_, d)| d.owner == Some(p) && matches!(d.state, DialState::Parked))
                    .map(|(a, d)| (*a, d.attempts))
                    .collect()
            })
            .unwrap_or_default();
        for (addr, attempts) in parked {
            let at = now + self.backoff(attempts);
            if let Some(d) = self.em.as_mut().and_then(|em| em.addrs.get_mut(&addr)) {
                d.state = DialState::Waiting(at);
            }
        }
    }

    pub(super) fn on_emit_command(&mut self, cmd: EmitCommand) {
        let now = self.now();
        let Some(em) = self.em.as_mut() else {
            let not = || {
                EmitterError::Mq(crate::MqError::Store(peermq::StoreError::Backend(
                    "this node was not opened as an emitter".into(),
                )))
            };
            match cmd {
                EmitCommand::Emit { reply, .. } | EmitCommand::EmitEncoded { reply, .. } => {
                    answer_with(reply, Err(not()))
                }
                EmitCommand::LogLen { reply } | EmitCommand::Consumer { reply, .. } => {
                    answer_with(reply, Err(not()))
                }
                EmitCommand::Follow { reply, .. } => answer_with(reply, Err(not())),
                EmitCommand::Commit { reply, .. } => answer_with(reply, Err(not())),
                EmitCommand::Announce { reply, .. } => answer_with(reply, Err(not())),
                EmitCommand::ConnectAddr { reply, .. } => answer_with(reply, Err(not())),
                EmitCommand::KnownAddrs { reply } => answer_with(reply, Err(not())),
            }
            return;
        };
        match cmd {
            EmitCommand::Emit { name, value, reply } => {
                let r = em.core.emit(&mut self.node, &name, &value, now);
                answer_with(reply, r.map_err(Into::into));
            }
            EmitCommand::EmitEncoded {
                name,
                payload,
                reply,
            } => {
                let r = em.core.emit_encoded(&mut self.node, &name, &payload, now);
                answer_with(reply, r.map_err(Into::into));
            }
            EmitCommand::LogLen { reply } => answer_with(reply, Ok(em.core.log_len())),
            EmitCommand::Follow { from, limit, reply } => {
                if from >= em.core.log_len() {
                    let (tx, rx) = async_channel::bounded(FOLLOW_BUFFER);
                    em.followers.retain(|f| !f.is_closed());
                    em.followers.push(tx);
                    return answer_with(reply, Ok(Follow::Live(rx)));
                }
                match em.core.read_log(&mut self.node, from, limit.max(1)) {
                    Ok(page) if page.is_empty() => {
                        // Logged blocks that are gone cannot be yielded;
                        // follow live rather than spin on them.
                        warn!(
                            from,
                            "peermq: delivery log entries are missing; skipping to live events"
                        );
                        let (tx, rx) = async_channel::bounded(FOLLOW_BUFFER);
                        em.followers.push(tx);
                        answer_with(reply, Ok(Follow::Live(rx)));
                    }
                    Ok(page) => answer_with(reply, Ok(Follow::Page(page))),
                    Err(e) => answer_with(reply, Err(e.into())),
                }
            }
            EmitCommand::Consumer { name, reply } => {
                answer_with(
                    reply,
                    em.core.consumer(&self.node, &name).map_err(Into::into),
                );
            }
            EmitCommand::Commit {
                name,
                position,
                reply,
            } => {
                let r = em.core.commit_consumer(&self.node, &name, position);
                answer_with(reply, r.map_err(Into::into));
            }
            EmitCommand::Announce { advertise, reply } => {
                for a in advertise {
                    if !em.advertised.contains(&a) {
                        em.advertised.push(a);
                    }
                }
                em.advertised.sort();
                let me = self.me;
                if em.announced.get(&me) == Some(&em.advertised) {
                    return answer_with(reply, Ok(None));
                }
                let addresses: Vec<Value> = em
                    .advertised
                    .iter()
                    .map(|a| json!({"ip": a.ip().to_string(), "port": a.port()}))
                    .collect();
                let value = json!({"id": me.to_string(), "addresses": addresses});
                let r = em.core.emit(&mut self.node, EVENT_PEER, &value, now);
                if r.is_ok() {
                    // Recorded now rather than on delivery, so a second
                    // listen before the delivery pass compares against it.
                    em.announced.insert(me, em.advertised.clone());
                    let mut key = K_ANNOUNCED.to_vec();
                    key.extend_from_slice(&me.0);
                    let saved = Txn::begin(self.node.store()).and_then(|mut txn| {
                        txn.put(Table::Events, &key, &encode_addrs(&em.advertised));
                        txn.commit()
                    });
                    if let Err(e) = saved {
                        // At worst the next start announces the same again.
                        warn!(error = %e, "peermq: cannot record our announced addresses");
                    }
                }
                answer_with(reply, r.map(Some).map_err(Into::into));
            }
            EmitCommand::ConnectAddr { addr, reply } => {
                let mut key = K_TARGET.to_vec();
                key.extend_from_slice(addr.to_string().as_bytes());
                let saved = Txn::begin(self.node.store()).and_then(|mut txn| {
                    if txn.get(Table::Events, &key)?.is_none() {
                        txn.put(Table::Events, &key, &[]);
                        txn.commit()?;
                    }
                    Ok(())
                });
                if let Err(e) = saved {
                    return answer_with(reply, Err(peermq::emitter::EmitterError::from(e).into()));
                }
                let d = em.addrs.entry(addr).or_insert_with(|| {
                    let mut d = AddrDial::new(None);
                    d.state = DialState::Waiting(now);
                    d
                });
                // The application wants it: whoever answers there, for as
                // long as it takes.
                d.learned = false;
                if matches!(d.state, DialState::GaveUp) {
                    d.state = DialState::Waiting(now);
                }
                match (&d.state, d.owner) {
                    (DialState::Open(_) | DialState::Parked, Some(p)) => {
                        return answer_with(reply, Ok(p))
                    }
                    (DialState::Waiting(_), _) => {
                        d.attempts = 0;
                        d.state = DialState::Waiting(now);
                    }
                    _ => {}
                }
                d.waiters.push(reply);
                self.em_redial();
            }
            EmitCommand::KnownAddrs { reply } => {
                answer_with(reply, Ok(em.addrs.keys().copied().collect()));
            }
        }
    }
}

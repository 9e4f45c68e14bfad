//! The driver task: owns one [`Node`], and is the only code that touches it.
//!
//! Everything else (socket readers and writers, dialers, acceptors, the
//! application's [`crate::Mq`] handles) talks to it through channels, so the
//! node needs no locks, and no store transaction ever lives across an
//! `.await`: every call into the node runs to completion between two awaits.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_channel::{Receiver, Sender};
use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use peermq::ranges::RangeSet;
use peermq::wire::Receipt;
use peermq::{
    CloseReason, ConnId, Event, Fetch, Instant, Mailbox, Node, Output, PeerId, PeerStatus, Record,
    Store,
};
use tracing::{debug, warn};

use crate::discovery::{Discovery, StaticDiscovery};
use crate::mq::{publish, MqError, MqEvent, Subscribers};
use crate::{Listener, ReadHalf, Runtime, Transport, WriteHalf};

pub(crate) mod emit;

pub(crate) use emit::EmitState;

/// Where a command's answer goes.
pub(crate) type Reply<T> = Sender<Result<T, MqError>>;

/// Where the answer of a sparse `get` goes.
type FetchReply = Reply<Option<Vec<u8>>>;

/// What a [`crate::Mq`] asks of the driver.
pub(crate) enum Command {
    AddPeer {
        peer: PeerId,
        addr: Option<SocketAddr>,
        reply: Reply<bool>,
    },
    RemovePeer {
        peer: PeerId,
        reply: Reply<bool>,
    },
    Peers {
        reply: Reply<Vec<PeerStatus>>,
    },
    Send {
        to: PeerId,
        messages: Vec<Vec<u8>>,
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
        reply: Reply<Option<Vec<u8>>>,
    },
    Archive {
        from: PeerId,
        seq: u64,
        reply: Reply<bool>,
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
    Listen {
        listener: Box<dyn Listener>,
        reply: Reply<SocketAddr>,
    },
    Connect {
        peer: PeerId,
        reply: Reply<()>,
    },
    Disconnect {
        peer: PeerId,
        reply: Reply<()>,
    },
    Shutdown {
        reply: Sender<()>,
    },
    /// An [`crate::Emitter`]'s request.
    Emitter(crate::emitter::EmitCommand),
}

/// What the I/O tasks tell the driver.
enum Io {
    Input(ConnId, Vec<u8>),
    Closed(ConnId),
    Accepted(Transport),
    /// A transport to the peer is open at the first address of a lookup
    /// that answered; the rest are tried if the handshake finds another key
    /// there.
    Dialed(PeerId, Transport, Vec<SocketAddr>),
    DialFailed(PeerId),
    /// A TCP connection to an emitter peer's address is open.
    AddrDialed(SocketAddr, Transport),
    /// Connecting to an emitter peer's address failed, saying why.
    AddrDialFailed(SocketAddr, String),
}

/// Bytes read from a socket per read call.
const READ_BUF: usize = 64 << 10;
/// Input of one connection merged into one `handle_input` call (one store
/// commit), when it is already waiting.
const MERGE_INPUT: usize = 1 << 20;
/// Messages from I/O tasks buffered for the driver; a full buffer makes the
/// socket readers wait, which pushes back on the peers.
const IO_BUFFER: usize = 256;
/// Bytes queued for one socket before the connection is closed as stuck.
/// The protocol bounds what a healthy peer makes us send (requests in
/// flight times data per message), so only a peer that stops reading ever
/// reaches this.
const MAX_QUEUED: usize = 96 << 20;
/// Writes coalesced into one syscall.
const WRITE_COALESCE: usize = 256 << 10;
/// Most connections at once; further inbound ones are refused.
const MAX_CONNS: usize = 1024;
/// Inbound connections still in their handshake, at most: a new one drops
/// the oldest, so silent sockets cannot lock anyone out (the core closes
/// them anyway after its handshake timeout).
const MAX_HANDSHAKING: usize = 64;
/// The same, per remote IP address.
const MAX_HANDSHAKING_PER_IP: usize = 16;
/// Established inbound connections from one IP address (as many identities
/// as it likes, in open mode), at most; further ones are refused.
const MAX_CONNS_PER_IP: usize = 128;
/// Bytes queued for all sockets together; past it the connection with the
/// most queued is closed as stuck. Per connection, [`MAX_QUEUED`] applies.
const MAX_QUEUED_TOTAL: usize = 512 << 20;
/// Addresses tried per dial, from all discoveries together.
const MAX_DIAL_ADDRS: usize = 16;
/// Addresses remembered for answering with the wrong key.
const MAX_SUSPECT_ADDRS: usize = 256;
/// How long one TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one discovery lookup may take.
const LOCATE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for sockets to drain.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

struct ConnIo {
    tx: Sender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    peer: Option<PeerId>,
    /// The address we dialed without knowing the key, if that is how the
    /// connection came about (the emitter reconnects to it).
    addr: Option<SocketAddr>,
    /// For a connection dialed by key, the address it went to and the
    /// addresses of the same lookup not tried yet.
    dialed: Option<(SocketAddr, Vec<SocketAddr>)>,
    /// The peer's address, for an inbound connection.
    inbound_from: Option<SocketAddr>,
    /// Dropping it stops the reader.
    /// Tells the writer to give up on what it still has to write (a stuck
    /// peer); dropping it instead lets the writer finish first.
    abort: Sender<()>,
    _stop: Sender<()>,
}

/// A [`Command::Read`] waiting for the arrival generation to move.
struct ParkedRead {
    mailbox: Mailbox,
    seen: BTreeMap<PeerId, RangeSet>,
    limit: usize,
    reply: Reply<(Vec<Record>, u64)>,
}

struct ListenerIo {
    addr: SocketAddr,
    _stop: Sender<()>,
}

pub(crate) struct Driver<S: Store> {
    node: Node<S>,
    me: PeerId,
    rt: Arc<dyn Runtime>,
    start: std::time::Instant,
    cmd_rx: Receiver<Command>,
    io_tx: Sender<Io>,
    io_rx: Receiver<Io>,
    conns: HashMap<ConnId, ConnIo>,
    /// Bytes queued for all sockets (see [`MAX_QUEUED_TOTAL`]).
    queued_total: Arc<AtomicUsize>,
    dialing: HashSet<PeerId>,
    /// Addresses where another key answered than the one looked up, most
    /// recent last, at most [`MAX_SUSPECT_ADDRS`]: later lookups try them
    /// last, so a planted or spoofed entry cannot keep a peer out of reach.
    suspect_addrs: VecDeque<SocketAddr>,
    /// Peers the application asked us to stay connected to.
    wanted: HashSet<PeerId>,
    listeners: Vec<ListenerIo>,
    discoveries: Arc<Vec<Arc<dyn Discovery>>>,
    statics: Arc<StaticDiscovery>,
    subscribers: Subscribers,
    /// Bumped whenever a read could see something new.
    generation: u64,
    parked_reads: Vec<ParkedRead>,
    /// The generation moved since the parked reads were last served.
    reads_due: bool,
    fetches: HashMap<(PeerId, u64), Vec<FetchReply>>,
    /// Every writer task holds a clone; shutdown drops ours and waits for
    /// the channel to close, which is when every socket has drained.
    writers_alive: Option<Sender<()>>,
    writers_done: Receiver<()>,
    /// The event emitter, when the node runs one.
    em: Option<EmitState>,
}

enum Wake {
    Cmd(Option<Command>),
    Io(Io),
    Timer,
}

impl<S: Store + Send + 'static> Driver<S> {
    // Each argument is a distinct piece the builder already holds; a struct
    // for them would only be built to be taken apart here.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        node: Node<S>,
        rt: Arc<dyn Runtime>,
        start: std::time::Instant,
        cmd_rx: Receiver<Command>,
        discoveries: Vec<Arc<dyn Discovery>>,
        statics: Arc<StaticDiscovery>,
        subscribers: Subscribers,
        em: Option<EmitState>,
    ) -> Self {
        let (io_tx, io_rx) = async_channel::bounded(IO_BUFFER);
        let (alive, done) = async_channel::bounded(1);
        Driver {
            me: node.id(),
            node,
            rt,
            start,
            cmd_rx,
            io_tx,
            io_rx,
            conns: HashMap::new(),
            dialing: HashSet::new(),
            queued_total: Arc::new(AtomicUsize::new(0)),
            suspect_addrs: VecDeque::new(),
            wanted: HashSet::new(),
            listeners: Vec::new(),
            discoveries: Arc::new(discoveries),
            statics,
            subscribers,
            generation: 0,
            parked_reads: Vec::new(),
            reads_due: false,
            fetches: HashMap::new(),
            writers_alive: Some(alive),
            writers_done: done,
            em,
        }
    }

    fn now(&self) -> Instant {
        let d = self.rt.now().saturating_duration_since(self.start);
        Instant::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }

    pub(crate) async fn run(mut self) {
        let shutdown_reply = loop {
            self.em_redial();
            self.pump();
            let now = self.now();
            if self.node.poll_timeout().is_some_and(|t| t <= now) {
                if let Err(e) = self.node.handle_timeout(now) {
                    warn!(error = %e, "peermq: store failed while handling timers; connections were reset and will be re-established");
                }
                self.pump();
            }
            // Take what is already waiting without sleeping, but yield to
            // the executor so the socket tasks run too.
            let mut busy = false;
            for _ in 0..IO_BUFFER {
                match self.io_rx.try_recv() {
                    Ok(io) => {
                        busy = true;
                        self.on_io(io);
                    }
                    Err(_) => break,
                }
            }
            match self.cmd_rx.try_recv() {
                Ok(cmd) => {
                    busy = true;
                    if let Some(reply) = self.on_command(cmd) {
                        break Some(reply);
                    }
                }
                Err(async_channel::TryRecvError::Closed) => break None,
                Err(async_channel::TryRecvError::Empty) => {}
            }
            if busy {
                future::yield_now().await;
                continue;
            }
            if self.node.has_idle_work() {
                // Prepare the next send only once the socket tasks have
                // written what this pass queued: it must not delay them.
                future::yield_now().await;
                self.node.idle_work();
                continue;
            }
            self.pump();
            let now = self.now();
            let due = match (self.node.poll_timeout(), self.em_timeout()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let wait = due.map(|t| t.saturating_since(now));
            let wake = {
                let cmd = async { Wake::Cmd(self.cmd_rx.recv().await.ok()) };
                // The driver holds a sender, so this channel never closes.
                let io = async {
                    match self.io_rx.recv().await {
                        Ok(io) => Wake::Io(io),
                        Err(_) => future::pending().await,
                    }
                };
                let rt = &self.rt;
                let timer = async {
                    match wait {
                        Some(d) => rt.sleep(d).await,
                        None => future::pending().await,
                    }
                    Wake::Timer
                };
                future::or(cmd, future::or(io, timer)).await
            };
            match wake {
                Wake::Cmd(None) => break None,
                Wake::Cmd(Some(cmd)) => {
                    if let Some(reply) = self.on_command(cmd) {
                        break Some(reply);
                    }
                }
                Wake::Io(io) => self.on_io(io),
                Wake::Timer => {}
            }
        };
        self.shutdown(shutdown_reply).await;
    }

    async fn shutdown(mut self, reply: Option<Sender<()>>) {
        // Refuse new commands now, and drop the ones already queued (their
        // callers get `Closed`): a command sent after the reply below must
        // fail at once, not sit in the channel waiting for an answer that
        // would never come.
        self.cmd_rx.close();
        while let Ok(cmd) = self.cmd_rx.try_recv() {
            drop(cmd);
        }
        for l in std::mem::take(&mut self.listeners) {
            for d in self.discoveries.iter() {
                d.withdraw(&self.me, l.addr);
            }
        }
        self.wanted.clear();
        let now = self.now();
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.node.close(id, now);
        }
        self.pump();
        // Sockets the node already forgot (but whose writers still drain)
        // and those just closed finish on their own; wait for them.
        self.conns.clear();
        drop(self.writers_alive.take());
        let done = self.writers_done.clone();
        let drained = crate::timeout(&*self.rt, FLUSH_TIMEOUT, async move {
            let _ = done.recv().await;
        })
        .await;
        if drained.is_none() {
            warn!("peermq: shutdown gave up waiting for slow peers to take the last bytes");
        }
        // The store closes with the node; do it before answering, so the
        // data directory can be opened again as soon as shutdown returns.
        let Driver { node, .. } = self;
        drop(node);
        if let Some(reply) = reply {
            let _ = reply.try_send(());
        }
    }

    /// Executes the node's outputs until it has none.
    fn pump(&mut self) {
        loop {
            let mut stuck = Vec::new();
            while let Some(out) = self.node.poll_output() {
                match out {
                    Output::Transmit { conn, bytes } => {
                        if bytes.is_empty() {
                            continue;
                        }
                        if let Some(io) = self.conns.get(&conn) {
                            let n = bytes.len();
                            let queued = io.queued.fetch_add(n, Ordering::Relaxed) + n;
                            let total = self.queued_total.fetch_add(n, Ordering::Relaxed) + n;
                            if queued > MAX_QUEUED {
                                stuck.push(conn);
                            } else if total > MAX_QUEUED_TOTAL {
                                // Not this one necessarily: the one that
                                // holds the most.
                                stuck.extend(
                                    self.conns
                                        .iter()
                                        .max_by_key(|(_, c)| c.queued.load(Ordering::Relaxed))
                                        .map(|(id, _)| *id),
                                );
                            }
                            if !stuck.contains(&conn) && io.tx.try_send(bytes).is_err() {
                                // The writer failed; its Closed report is
                                // on the way.
                            }
                        }
                    }
                    Output::Dial { peer } => self.start_dial(peer),
                    Output::Close { conn, reason } => {
                        debug!(%conn, %reason, "peermq: closing connection");
                        let Some(c) = self.conns.remove(&conn) else {
                            continue;
                        };
                        if let Some(addr) = c.addr {
                            self.em_conn_gone(conn, addr, &reason.to_string());
                        }
                        if let (CloseReason::WrongPeer { expected, .. }, Some((addr, rest))) =
                            (&reason, c.dialed)
                        {
                            self.try_next_address(*expected, addr, rest);
                        }
                    }
                    Output::Event(e) => self.on_event(e),
                }
            }
            if stuck.is_empty() {
                break;
            }
            let now = self.now();
            for conn in stuck {
                let Some(c) = self.conns.remove(&conn) else {
                    continue;
                };
                warn!(%conn, "peermq: peer stopped reading; closing the connection");
                // What is queued for it will never be read: drop it now.
                let _ = c.abort.try_send(());
                if let Some(addr) = c.addr {
                    self.em_conn_gone(conn, addr, "the peer stopped reading");
                }
                self.node.handle_closed(conn, now);
            }
        }
        self.serve_parked_reads();
        self.em_deliver();
    }

    fn on_event(&mut self, e: Event) {
        let ev = match e {
            Event::Connected { conn, peer } => {
                if let Some(io) = self.conns.get_mut(&conn) {
                    io.peer = Some(peer);
                }
                self.em_connected(conn, peer);
                MqEvent::Connected { peer }
            }
            Event::Disconnected { conn, peer, reason } => {
                self.em_disconnected(conn, peer, &reason);
                MqEvent::Disconnected { peer, reason }
            }
            Event::Broadcast { .. } => {
                self.em_broadcast();
                return;
            }
            Event::Acked { to, start, end } => MqEvent::Acked { to, start, end },
            Event::Message { from, seq } => {
                self.arrived(from, seq);
                MqEvent::Message { from, seq }
            }
            Event::Fetched { from, seq } => {
                self.arrived(from, seq);
                MqEvent::Fetched { from, seq }
            }
            // The core also reports emitter events, which this queue handle
            // does not surface; allowed so that it builds whichever kinds the
            // core has.
            #[allow(unreachable_patterns)]
            other => {
                debug!(event = ?other, "peermq: event not surfaced to Mq");
                return;
            }
        };
        publish(&self.subscribers, &ev);
    }

    fn wake_readers(&mut self) {
        self.generation += 1;
        self.reads_due = !self.parked_reads.is_empty();
    }

    /// Answers the parked reads once the generation has moved. Deferred to
    /// the end of [`Driver::pump`] rather than done where the generation
    /// moves, so that one input carrying many messages costs each stream a
    /// single read, and so that no read runs while the node's outputs are
    /// half drained.
    fn serve_parked_reads(&mut self) {
        if !std::mem::take(&mut self.reads_due) {
            return;
        }
        for p in std::mem::take(&mut self.parked_reads) {
            if p.reply.is_closed() {
                continue;
            }
            let r = self.read_unseen(p.mailbox, &p.seen, p.limit);
            answer(p.reply, r.map(|recs| (recs, self.generation)));
        }
    }

    fn arrived(&mut self, from: PeerId, seq: u64) {
        self.wake_readers();
        if let Some(replies) = self.fetches.remove(&(from, seq)) {
            let now = self.now();
            let answer = match self.node.get(from, seq, now) {
                Ok(Fetch::Ready(data)) => Some(Ok(Some(data))),
                Ok(Fetch::Cleared) => Some(Ok(None)),
                Ok(Fetch::Pending) => None,
                Err(e) => {
                    let msg = e.to_string();
                    for r in &replies {
                        let _ = r.try_send(Err(MqError::Store(peermq::StoreError::Backend(
                            msg.clone(),
                        ))));
                    }
                    return;
                }
            };
            match answer {
                Some(a) => {
                    for r in replies {
                        let _ = r.try_send(clone_answer(&a));
                    }
                }
                None => {
                    self.fetches.insert((from, seq), replies);
                }
            }
        }
    }

    fn start_dial(&mut self, peer: PeerId) {
        if !self.wanted.contains(&peer) || !self.dialing.insert(peer) {
            return;
        }
        let rt = self.rt.clone();
        let tx = self.io_tx.clone();
        let discoveries = self.discoveries.clone();
        let suspect: Vec<SocketAddr> = self.suspect_addrs.iter().copied().collect();
        self.rt.spawn(Box::pin(async move {
            let mut addrs: Vec<SocketAddr> = Vec::new();
            for d in discoveries.iter() {
                match crate::timeout(&*rt, LOCATE_TIMEOUT, d.locate(&peer)).await {
                    Some(Ok(found)) => {
                        for a in found {
                            if addrs.len() < MAX_DIAL_ADDRS && !addrs.contains(&a) {
                                addrs.push(a);
                            }
                        }
                    }
                    Some(Err(e)) => debug!(%peer, error = %e, "peermq: discovery failed"),
                    None => debug!(%peer, "peermq: discovery timed out"),
                }
            }
            // Stable: otherwise in the order the discoveries gave.
            addrs.sort_by_key(|a| suspect.contains(a));
            dial_in_turn(&*rt, &tx, peer, addrs).await;
        }));
    }

    /// The connection dialed to `peer` at `addr` met another key there:
    /// remembers the address, and tries the rest of the lookup at once.
    fn try_next_address(&mut self, peer: PeerId, addr: SocketAddr, rest: Vec<SocketAddr>) {
        if !self.suspect_addrs.contains(&addr) {
            if self.suspect_addrs.len() >= MAX_SUSPECT_ADDRS {
                self.suspect_addrs.pop_front();
            }
            self.suspect_addrs.push_back(addr);
        }
        if rest.is_empty() || !self.wanted.contains(&peer) || !self.dialing.insert(peer) {
            return;
        }
        debug!(%peer, %addr, "peermq: another key answered there; trying the next address");
        let rt = self.rt.clone();
        let tx = self.io_tx.clone();
        self.rt.spawn(Box::pin(async move {
            dial_in_turn(&*rt, &tx, peer, rest).await;
        }));
    }

    fn on_io(&mut self, io: Io) {
        let now = self.now();
        match io {
            Io::Input(conn, mut bytes) => {
                if !self.conns.contains_key(&conn) {
                    return;
                }
                // Merge what else this connection already sent: one
                // handle_input is one store commit.
                while bytes.len() < MERGE_INPUT {
                    match self.io_rx.try_recv() {
                        Ok(Io::Input(c, more)) if c == conn => bytes.extend_from_slice(&more),
                        Ok(other) => {
                            self.input(conn, &bytes, now);
                            return self.on_io(other);
                        }
                        Err(_) => break,
                    }
                }
                self.input(conn, &bytes, now);
            }
            Io::Closed(conn) => {
                if let Some(c) = self.conns.remove(&conn) {
                    self.node.handle_closed(conn, now);
                    if let Some(addr) = c.addr {
                        self.em_conn_gone(conn, addr, "the connection closed");
                    }
                }
            }
            Io::AddrDialed(addr, t) => self.em_addr_dialed(addr, t),
            Io::AddrDialFailed(addr, reason) => self.em_addr_failed(addr, reason),
            Io::Accepted(t) => {
                if !self.admit(t.remote, now) {
                    return;
                }
                let id = self.node.accept(now);
                let from = t.remote;
                self.attach(id, t);
                if let Some(c) = self.conns.get_mut(&id) {
                    c.inbound_from = from;
                }
            }
            Io::Dialed(peer, t, mut tried) => {
                self.dialing.remove(&peer);
                if !self.wanted.contains(&peer) || tried.is_empty() {
                    return;
                }
                let addr = tried.remove(0);
                let id = self.node.connect(peer, now);
                self.attach(id, t);
                if let Some(c) = self.conns.get_mut(&id) {
                    c.dialed = Some((addr, tried));
                }
            }
            Io::DialFailed(peer) => {
                self.dialing.remove(&peer);
                if self.wanted.contains(&peer) {
                    debug!(%peer, "peermq: peer not reachable yet; retrying with backoff");
                    self.node.dial_failed(peer, now);
                }
            }
        }
    }

    fn input(&mut self, conn: ConnId, bytes: &[u8], now: Instant) {
        if let Err(e) = self.node.handle_input(conn, bytes, now) {
            warn!(error = %e, "peermq: store failed while handling input; connections were reset and will be re-established");
        }
    }

    /// Whether to take an inbound connection from `from`: within the caps on
    /// connections, in all and per IP address. Makes room among those still
    /// in their handshake by dropping the oldest.
    fn admit(&mut self, from: Option<SocketAddr>, now: Instant) -> bool {
        if self.conns.len() >= MAX_CONNS {
            warn!("peermq: too many connections; refusing an inbound one");
            return false;
        }
        let ip = from.map(|a| a.ip());
        let same_ip = |c: &ConnIo| ip.is_some() && c.inbound_from.map(|a| a.ip()) == ip;
        let established = self
            .conns
            .values()
            .filter(|c| c.peer.is_some() && same_ip(c))
            .count();
        if established >= MAX_CONNS_PER_IP {
            warn!(
                ?ip,
                "peermq: too many connections from one address; refusing another"
            );
            return false;
        }
        let mut handshaking: Vec<(ConnId, bool)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.peer.is_none() && c.inbound_from.is_some())
            .map(|(id, c)| (*id, same_ip(c)))
            .collect();
        handshaking.sort();
        let mine: Vec<ConnId> = handshaking.iter().filter(|h| h.1).map(|h| h.0).collect();
        let oldest = if mine.len() >= MAX_HANDSHAKING_PER_IP {
            mine.first().copied()
        } else if handshaking.len() >= MAX_HANDSHAKING {
            handshaking.first().map(|h| h.0)
        } else {
            None
        };
        if let Some(old) = oldest {
            debug!(%old, "peermq: too many connections in their handshake; dropping the oldest");
            self.conns.remove(&old);
            self.node.close(old, now);
        }
        true
    }

    /// Starts the reader and writer tasks of a new connection.
    fn attach(&mut self, id: ConnId, t: Transport) {
        let (tx, rx) = async_channel::unbounded();
        let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
        let (abort_tx, abort_rx) = async_channel::bounded::<()>(1);
        let queued = Arc::new(AtomicUsize::new(0));
        let Some(alive) = self.writers_alive.clone() else {
            return;
        };
        self.rt.spawn(Box::pin(read_loop(
            id,
            t.reader,
            self.io_tx.clone(),
            stop_rx,
        )));
        self.rt.spawn(Box::pin(write_loop(
            id,
            t.writer,
            rx,
            [queued.clone(), self.queued_total.clone()],
            self.io_tx.clone(),
            abort_rx,
            alive,
        )));
        self.conns.insert(
            id,
            ConnIo {
                tx,
                queued,
                peer: None,
                addr: None,
                dialed: None,
                inbound_from: None,
                abort: abort_tx,
                _stop: stop_tx,
            },
        );
    }

    /// Handles one command; returns the reply channel if it was shutdown.
    fn on_command(&mut self, cmd: Command) -> Option<Sender<()>> {
        let now = self.now();
        match cmd {
            Command::AddPeer { peer, addr, reply } => {
                if let Some(addr) = addr {
                    self.statics.insert(peer, addr);
                }
                answer(reply, self.node.add_peer(peer).map_err(Into::into));
            }
            Command::RemovePeer { peer, reply } => {
                self.wanted.remove(&peer);
                let r = self.node.remove_peer(&peer, now);
                answer(reply, r.map_err(Into::into));
            }
            Command::Peers { reply } => {
                answer(reply, self.node.status().map_err(Into::into));
            }
            Command::Send {
                to,
                messages,
                reply,
            } => {
                let r = self.node.send_batch(to, &messages, now);
                answer(reply, r.map_err(Into::into));
            }
            Command::Read {
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
                    let r = self.read_unseen(mailbox, &seen, limit);
                    answer(reply, r.map(|recs| (recs, self.generation)));
                }
            }
            Command::Get { from, seq, reply } => match self.node.get(from, seq, now) {
                Ok(Fetch::Ready(data)) => answer(reply, Ok(Some(data))),
                Ok(Fetch::Cleared) => answer(reply, Ok(None)),
                Ok(Fetch::Pending) => {
                    let list = self.fetches.entry((from, seq)).or_default();
                    list.retain(|r| !r.is_closed());
                    list.push(reply);
                }
                Err(e) => answer(reply, Err(e.into())),
            },
            Command::Archive { from, seq, reply } => {
                let r = self.node.archive(from, seq, now);
                self.wake_readers();
                answer(reply, r.map_err(Into::into));
            }
            Command::Clear { from, seq, reply } => {
                let r = self.node.clear(from, seq, now);
                self.wake_readers();
                answer(reply, r.map_err(Into::into));
            }
            Command::Receipt { to, reply } => {
                answer(reply, self.node.receipt(to).map_err(Into::into));
            }
            Command::Listen { listener, reply } => {
                let addr = match listener.local_addr() {
                    Ok(a) => a,
                    Err(source) => {
                        answer(
                            reply,
                            Err(MqError::Listen {
                                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                                source,
                            }),
                        );
                        return None;
                    }
                };
                for d in self.discoveries.iter() {
                    if let Err(source) = d.announce(&self.me, addr) {
                        for d in self.discoveries.iter() {
                            d.withdraw(&self.me, addr);
                        }
                        answer(reply, Err(MqError::Announce { addr, source }));
                        return None;
                    }
                }
                let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
                self.rt.spawn(Box::pin(accept_loop(
                    listener,
                    self.io_tx.clone(),
                    stop_rx,
                    self.rt.clone(),
                    self.writers_alive.clone(),
                )));
                self.listeners.push(ListenerIo {
                    addr,
                    _stop: stop_tx,
                });
                answer(reply, Ok(addr));
            }
            Command::Connect { peer, reply } => {
                if peer == self.me {
                    answer(reply, Err(peermq::NodeError::SelfSend(peer).into()));
                    return None;
                }
                self.wanted.insert(peer);
                self.node.dial(peer, now);
                answer(reply, Ok(()));
            }
            Command::Disconnect { peer, reply } => {
                self.wanted.remove(&peer);
                self.node.hang_up(&peer);
                let ids: Vec<ConnId> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.peer == Some(peer))
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    self.node.close(id, now);
                }
                answer(reply, Ok(()));
            }
            Command::Shutdown { reply } => return Some(reply),
            Command::Emitter(cmd) => self.on_emit_command(cmd),
        }
        None
    }

    /// Up to `limit` records of `mailbox` that are not in `seen`, walking
    /// the mailbox in (sender, seq) order and jumping over what was seen.
    fn read_unseen(
        &mut self,
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
            let page = self.node.read(mailbox, pos, want)?;
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

fn answer<T>(reply: Reply<T>, r: Result<T, MqError>) {
    // The asker may have given up (dropped its future); that is fine.
    let _ = reply.try_send(r);
}

fn answer_with<T, E>(reply: Sender<Result<T, E>>, r: Result<T, E>) {
    let _ = reply.try_send(r);
}

fn clone_answer(a: &Result<Option<Vec<u8>>, MqError>) -> Result<Option<Vec<u8>>, MqError> {
    match a {
        Ok(v) => Ok(v.clone()),
        Err(e) => Err(MqError::Store(peermq::StoreError::Backend(e.to_string()))),
    }
}

async fn read_loop(conn: ConnId, mut reader: ReadHalf, tx: Sender<Io>, stop: Receiver<()>) {
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let read = future::or(async { Some(reader.read(&mut buf).await) }, async {
            let _ = stop.recv().await;
            None
        })
        .await;
        let msg = match read {
            // The driver dropped the connection: it knows.
            None => return,
            Some(Ok(0)) => Io::Closed(conn),
            Some(Ok(n)) => Io::Input(conn, buf[..n].to_vec()),
            Some(Err(e)) => {
                debug!(%conn, error = %e, "peermq: read failed");
                Io::Closed(conn)
            }
        };
        let last = matches!(msg, Io::Closed(_));
        if tx.send(msg).await.is_err() || last {
            return;
        }
    }
}

/// Writes what the driver queues for `conn`; `queued` counts the bytes
/// waiting, for this connection and for all.
async fn write_loop(
    conn: ConnId,
    mut writer: WriteHalf,
    rx: Receiver<Vec<u8>>,
    queued: [Arc<AtomicUsize>; 2],
    tx: Sender<Io>,
    abort: Receiver<()>,
    _alive: Sender<()>,
) {
    // Resolves when the driver aborts; a dropped sender only means "finish
    // what is queued", so it never resolves then.
    let aborted = || async {
        if abort.recv().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    while let Ok(mut chunk) = rx.recv().await {
        // Coalesce small queued writes into one syscall.
        while chunk.len() < WRITE_COALESCE {
            match rx.try_recv() {
                Ok(more) => chunk.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        let n = chunk.len();
        let written =
            futures_lite::future::or(async { Some(writer.write_all(&chunk).await) }, async {
                aborted().await;
                None
            })
            .await;
        let Some(written) = written else {
            let left = queued[0].swap(0, Ordering::Relaxed);
            queued[1].fetch_sub(left, Ordering::Relaxed);
            return;
        };
        if let Err(e) = written {
            debug!(%conn, error = %e, "peermq: write failed");
            // What was waiting is dropped with the channel.
            let left = queued[0].swap(0, Ordering::Relaxed);
            queued[1].fetch_sub(left, Ordering::Relaxed);
            let _ = tx.send(Io::Closed(conn)).await;
            return;
        }
        for q in &queued {
            q.fetch_sub(n, Ordering::Relaxed);
        }
    }
    // The driver closed the connection and everything queued was written.
    let _ = writer.flush().await;
    let _ = writer.close().await;
}

/// Accepts connections until `stop` closes. `alive` is held until the
/// listening socket is closed, so a shutdown that waits for it returns only
/// once the address can be bound again.
async fn accept_loop(
    listener: Box<dyn Listener>,
    tx: Sender<Io>,
    stop: Receiver<()>,
    rt: Arc<dyn Runtime>,
    alive: Option<Sender<()>>,
) {
    accept_until_stopped(&*listener, &tx, &stop, &rt).await;
    drop(listener);
    drop(alive);
}

async fn accept_until_stopped(
    listener: &dyn Listener,
    tx: &Sender<Io>,
    stop: &Receiver<()>,
    rt: &Arc<dyn Runtime>,
) {
    loop {
        let got = future::or(async { Some(listener.accept().await) }, async {
            let _ = stop.recv().await;
            None
        })
        .await;
        match got {
            None => return,
            Some(Ok(t)) => {
                if tx.send(Io::Accepted(t)).await.is_err() {
                    return;
                }
            }
            Some(Err(e)) => {
                // Out of file descriptors and the like: pause rather than spin.
                warn!(error = %e, "peermq: accepting a connection failed");
                rt.sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Opens a transport to `peer` at the first of `addrs` that accepts one,
/// and reports it with the addresses from that one on (the first is where
/// it went); or reports that none did.
async fn dial_in_turn(rt: &dyn Runtime, tx: &Sender<Io>, peer: PeerId, addrs: Vec<SocketAddr>) {
    for (i, &addr) in addrs.iter().enumerate() {
        match crate::timeout(rt, CONNECT_TIMEOUT, rt.connect(addr)).await {
            Some(Ok(t)) => {
                let _ = tx.send(Io::Dialed(peer, t, addrs[i..].to_vec())).await;
                return;
            }
            Some(Err(e)) => debug!(%peer, %addr, error = %e, "peermq: dial failed"),
            None => debug!(%peer, %addr, "peermq: dial timed out"),
        }
    }
    let _ = tx.send(Io::DialFailed(peer)).await;
}

//! The driver task: owns one [`Node`], and is the only code that touches it.
//!
//! Everything else (socket tasks, the application's handles) talks to it
//! through channels, so the node needs no locks, and no store transaction
//! ever lives across an `.await`: every call into the node runs to
//! completion between two awaits.
//!
//! The driver does what every node needs: it moves bytes between the node
//! and the [`Sockets`], finds and dials the peers the node wants, admits
//! inbound connections within bounds, and answers the connection commands
//! ([`Command`]). What a node is *for* (a queue, an emitter) is a
//! [`Service`] it calls at fixed points:
//!
//! ```text
//!            ┌──────────── Driver ────────────┐
//!  handles ──┤ Command::Service ─> on_command │
//!            │ node event ───────> on_event   │
//!            │ deadline ─────────> on_timeout │
//!            │ outputs drained ──> after_pump │
//!            │ connection gone ──> on_close   │
//!            │ address dialed ───> on_dialed  │
//!            └────────────────────────────────┘
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_channel::{Receiver, Sender};
use futures_lite::future;
use peermq::{CloseReason, ConnId, Event, Instant, Node, Output, PeerId, Store};
use tracing::{debug, warn};

use crate::discovery::{Discovery, StaticDiscovery};
use crate::error::MqError;
use crate::io::{Io, Sockets, IO_BUFFER};
use crate::runtime::{
    timeout, BoxFuture, Connection, ConnectionInfo, Listener, Runtime, Transport,
};

/// Where a command's answer goes.
pub(crate) type Reply<T, E = MqError> = Sender<Result<T, E>>;

/// Answers a command. The asker may have given up (dropped its future);
/// that is fine.
pub(crate) fn answer<T, E>(reply: Reply<T, E>, r: Result<T, E>) {
    let _ = reply.try_send(r);
}

/// What a handle asks of the driver: the commands every node answers the
/// same way, and its service's own.
pub(crate) enum Command<C> {
    AddPeer {
        peer: PeerId,
        addr: Option<SocketAddr>,
        reply: Reply<bool>,
    },
    RemovePeer {
        peer: PeerId,
        reply: Reply<bool>,
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
    Connections {
        reply: Reply<Vec<ConnectionInfo>>,
    },
    Shutdown {
        reply: Sender<()>,
    },
    /// For the service.
    Service(C),
}

impl<C> Command<C> {
    fn map<D>(self, f: impl FnOnce(C) -> D) -> Command<D> {
        match self {
            Command::AddPeer { peer, addr, reply } => Command::AddPeer { peer, addr, reply },
            Command::RemovePeer { peer, reply } => Command::RemovePeer { peer, reply },
            Command::Listen { listener, reply } => Command::Listen { listener, reply },
            Command::Connect { peer, reply } => Command::Connect { peer, reply },
            Command::Disconnect { peer, reply } => Command::Disconnect { peer, reply },
            Command::Connections { reply } => Command::Connections { reply },
            Command::Shutdown { reply } => Command::Shutdown { reply },
            Command::Service(c) => Command::Service(f(c)),
        }
    }
}

/// The sending end of the commands of a driver whose service is `Sv`.
pub(crate) type CommandTx<S, Sv> = Sender<Command<<Sv as Service<S>>::Command>>;

/// Where a handle sends its commands: a driver whose service takes
/// commands built from `C`. A queue handle ([`crate::Mq`]) talks through
/// it to a queue's driver and to an emitter's alike.
pub(crate) trait Commands<C>: Send + Sync {
    /// Hands `cmd` to the driver; fails once it has shut down.
    fn send(&self, cmd: Command<C>) -> BoxFuture<'_, Result<(), MqError>>;
}

impl<C: Send + 'static, D: From<C> + Send + 'static> Commands<C> for Sender<Command<D>> {
    fn send(&self, cmd: Command<C>) -> BoxFuture<'_, Result<(), MqError>> {
        let cmd = cmd.map(D::from);
        Box::pin(async move { Sender::send(self, cmd).await.map_err(|_| MqError::Closed) })
    }
}

/// What a node is for, run by the driver next to the node: the queue's
/// parked reads and fetches, the emitter's deliveries and address book.
///
/// Every method runs in the driver task between two awaits, with the node
/// at hand in the [`Ctx`]; none may block. A service that wraps another
/// (the emitter wraps the queue) forwards every call it does not consume.
pub(crate) trait Service<S: Store>: Send + 'static {
    /// The requests its handles send.
    type Command: Send + 'static;

    /// One of its handles' requests.
    fn on_command(&mut self, cx: &mut Ctx<'_, S>, cmd: Self::Command);

    /// The node reported `event`.
    fn on_event(&mut self, cx: &mut Ctx<'_, S>, event: &Event);

    /// When [`Service::on_timeout`] is next due, if ever.
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// The time [`Service::poll_timeout`] named has come.
    fn on_timeout(&mut self, _cx: &mut Ctx<'_, S>) {}

    /// Every output of the node was executed: the place for work deferred
    /// until an input's effects are all known (one read per burst of
    /// arrivals, not one per message).
    fn after_pump(&mut self, _cx: &mut Ctx<'_, S>) {}

    /// Connection `conn` is gone (`reason` says why, for the logs).
    fn on_close(&mut self, _cx: &mut Ctx<'_, S>, _conn: ConnId, _reason: &str) {}

    /// A dial the service asked for with [`Ctx::dial_addr`] ended: with a
    /// transport to hand to [`Ctx::open`], or why not.
    fn on_dialed(
        &mut self,
        _cx: &mut Ctx<'_, S>,
        _addr: SocketAddr,
        _transport: Result<Connection, String>,
    ) {
    }
}

/// What a [`Service`] may use while the driver calls it.
pub(crate) struct Ctx<'a, S: Store> {
    /// The node.
    pub node: &'a mut Node<S>,
    /// The time of the call.
    pub now: Instant,
    io: &'a mut Sockets,
}

impl<S: Store> Ctx<'_, S> {
    /// Opens a transport to `addr` in the background; the outcome comes
    /// to [`Service::on_dialed`].
    pub fn dial_addr(&mut self, addr: SocketAddr, expect: Option<PeerId>) {
        self.io.dial_addr(addr, expect);
    }

    /// Runs a connection over `transport`, dialed by the service: expecting
    /// key `expect`, or whoever answers that this node would admit.
    pub fn open(&mut self, transport: Connection, expect: Option<PeerId>) -> ConnId {
        let id = match expect {
            Some(peer) => self.node.connect(peer, self.now),
            None => self.node.connect_any(self.now),
        };
        self.io.attach(id, transport, false);
        id
    }

    /// The addresses this node listens on.
    pub fn listening(&self) -> Vec<SocketAddr> {
        self.io.listening()
    }
}

/// Input of one connection merged into one `handle_input` call (one store
/// commit), when it is already waiting.
const MERGE_INPUT: usize = 1 << 20;
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
/// Addresses tried per dial, from all discoveries together.
const MAX_DIAL_ADDRS: usize = 16;
/// Addresses remembered for answering with the wrong key.
const MAX_SUSPECT_ADDRS: usize = 256;
/// How long one discovery lookup may take.
const LOCATE_TIMEOUT: Duration = Duration::from_secs(5);
/// How soon the quick discoveries are asked again while a slow one
/// searches; the wait doubles up to [`REASK_MAX`].
const REASK_FIRST: Duration = Duration::from_millis(10);
const REASK_MAX: Duration = Duration::from_millis(500);
/// How long shutdown waits for sockets to drain.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the driver finds peers: the addresses given with
/// [`crate::Mq::add_peer`], then every other discovery.
pub(crate) struct Finders {
    pub statics: Arc<StaticDiscovery>,
    pub all: Arc<Vec<Arc<dyn Discovery>>>,
}

pub(crate) struct Driver<S: Store, Sv: Service<S>> {
    node: Node<S>,
    service: Sv,
    rt: Arc<dyn Runtime>,
    start: std::time::Instant,
    cmd_rx: Receiver<Command<Sv::Command>>,
    io: Sockets,
    finders: Finders,
    /// Peers a lookup and dial is under way for.
    dialing: HashSet<PeerId>,
    /// Peers whose last dial reached none of the addresses found: the next
    /// lookup asks every discovery, not only the first that answers.
    unreached: HashSet<PeerId>,
    /// For connections dialed by key: the address it went to, and what is
    /// left of the lookup to try if another key answers there.
    dialed: HashMap<ConnId, (SocketAddr, Vec<SocketAddr>)>,
    /// Addresses where another key answered than the one looked up, most
    /// recent last, at most [`MAX_SUSPECT_ADDRS`]: later lookups try them
    /// last, so a planted or spoofed entry cannot keep a peer out of reach.
    suspect_addrs: VecDeque<SocketAddr>,
    /// Shutting down: the node's dial requests are ignored.
    closing: bool,
    /// The version of our signed list of mailboxes last announced to the
    /// discoveries (`None`: no list, nothing to announce).
    announced_mailboxes: Option<u64>,
    /// Peers whose mailboxes were looked up in the discoveries (once per
    /// run each: a record changes rarely, and a lookup may search the DHT).
    mailboxes_looked_up: HashSet<PeerId>,
}

enum Wake<C> {
    Cmd(Option<Command<C>>),
    Io(Io),
    Timer,
}

impl<S: Store + Send + 'static, Sv: Service<S>> Driver<S, Sv> {
    pub(crate) fn new(
        node: Node<S>,
        service: Sv,
        rt: Arc<dyn Runtime>,
        transport: Arc<dyn Transport>,
        cmd_rx: Receiver<Command<Sv::Command>>,
        finders: Finders,
    ) -> Self {
        Driver {
            node,
            service,
            start: rt.now(),
            io: Sockets::new(rt.clone(), transport),
            rt,
            cmd_rx,
            finders,
            dialing: HashSet::new(),
            unreached: HashSet::new(),
            dialed: HashMap::new(),
            suspect_addrs: VecDeque::new(),
            closing: false,
            announced_mailboxes: None,
            mailboxes_looked_up: HashSet::new(),
        }
    }

    fn now(&self) -> Instant {
        let d = self.rt.now().saturating_duration_since(self.start);
        Instant::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }

    /// The service, and what it may use at time `now`.
    fn split(&mut self, now: Instant) -> (&mut Sv, Ctx<'_, S>) {
        let cx = Ctx {
            node: &mut self.node,
            now,
            io: &mut self.io,
        };
        (&mut self.service, cx)
    }

    pub(crate) async fn run(mut self) {
        self.announce_mailboxes();
        let shutdown_reply = loop {
            let now = self.now();
            if self.service.poll_timeout().is_some_and(|t| t <= now) {
                let (sv, mut cx) = self.split(now);
                sv.on_timeout(&mut cx);
            }
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
                match self.io.try_next() {
                    Some(io) => {
                        busy = true;
                        self.on_io(io);
                    }
                    None => break,
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
            let due = match (self.node.poll_timeout(), self.service.poll_timeout()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let wait = due.map(|t| t.saturating_since(now));
            let wake = {
                let cmd = async { Wake::Cmd(self.cmd_rx.recv().await.ok()) };
                let io = async { Wake::Io(self.io.next().await) };
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
        let me = self.node.id();
        for addr in self.io.stop_listening() {
            for d in self.finders.all.iter() {
                d.withdraw(&me, addr);
            }
        }
        self.closing = true;
        let now = self.now();
        for id in self.io.ids() {
            self.node.close(id, now);
        }
        self.pump();
        // Sockets the node already forgot (but whose writers still drain)
        // and those just closed finish on their own; wait for them.
        let Driver { node, io, .. } = self;
        if !io.drain(FLUSH_TIMEOUT).await {
            warn!("peermq: shutdown gave up waiting for slow peers to take the last bytes");
        }
        // The store closes with the node; do it before answering, so the
        // data directory can be opened again as soon as shutdown returns.
        drop(node);
        if let Some(reply) = reply {
            let _ = reply.try_send(());
        }
    }

    /// Executes the node's outputs until it has none, then lets the
    /// service do its deferred work.
    fn pump(&mut self) {
        // One clock read for the whole pass, however many events it carries.
        let mut now = self.now();
        loop {
            let mut stuck = Vec::new();
            while let Some(out) = self.node.poll_output() {
                match out {
                    Output::Transmit { conn, bytes } => {
                        if bytes.is_empty() {
                            continue;
                        }
                        if let Some(s) = self.io.transmit(conn, bytes) {
                            if !stuck.contains(&s) {
                                stuck.push(s);
                            }
                        }
                    }
                    Output::Dial { peer } => self.start_dial(peer),
                    Output::Close { conn, reason } => {
                        debug!(%conn, %reason, "peermq: closing connection");
                        if !self.io.close(conn) {
                            continue;
                        }
                        let dialed = self.dialed.remove(&conn);
                        let (sv, mut cx) = self.split(now);
                        sv.on_close(&mut cx, conn, &reason.to_string());
                        if let (CloseReason::WrongPeer { expected, .. }, Some((addr, rest))) =
                            (&reason, dialed)
                        {
                            self.try_next_address(*expected, addr, rest);
                        }
                    }
                    Output::Event(e) => {
                        let (sv, mut cx) = self.split(now);
                        sv.on_event(&mut cx, &e);
                    }
                }
            }
            if stuck.is_empty() {
                break;
            }
            now = self.now();
            for conn in stuck {
                if !self.io.abort(conn) {
                    continue;
                }
                warn!(%conn, "peermq: peer stopped reading; closing the connection");
                self.dialed.remove(&conn);
                let (sv, mut cx) = self.split(now);
                sv.on_close(&mut cx, conn, "the peer stopped reading");
                self.node.handle_closed(conn, now);
            }
        }
        let (sv, mut cx) = self.split(now);
        sv.after_pump(&mut cx);
    }

    /// Looks `peer` up and dials it, if the node still wants it and no
    /// dial to it is under way.
    fn start_dial(&mut self, peer: PeerId) {
        if self.closing || !self.node.wants(&peer) || !self.dialing.insert(peer) {
            return;
        }
        let rt = self.rt.clone();
        let discoveries = self.finders.all.clone();
        let suspect: Vec<SocketAddr> = self.suspect_addrs.iter().copied().collect();
        let thorough = self.unreached.contains(&peer);
        let locate = async move {
            let (quick, slow): (Vec<_>, Vec<_>) =
                discoveries.iter().cloned().partition(|d| !d.is_slow());
            let mut addrs = ask(&*rt, &quick, &peer, !thorough).await;
            // A slow discovery (the DHT) is asked only when the quick ones
            // found nothing, or their addresses failed last time.
            if !slow.is_empty() && (addrs.is_empty() || thorough) {
                let search = ask(&*rt, &slow, &peer, false);
                if thorough {
                    merge(&mut addrs, search.await);
                } else {
                    // While it searches, the quick ones are asked again now
                    // and then: a peer that starts nearby meanwhile is
                    // dialed at once, not after the search gives up.
                    addrs = future::or(search, ask_until_found(&*rt, &quick, &peer)).await;
                }
            }
            // Stable: otherwise in the order the discoveries gave.
            addrs.sort_by_key(|a| suspect.contains(a));
            addrs
        };
        self.io.dial_peer(peer, Box::pin(locate));
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
        if rest.is_empty() || !self.node.wants(&peer) || !self.dialing.insert(peer) {
            return;
        }
        debug!(%peer, %addr, "peermq: another key answered there; trying the next address");
        self.io.dial_peer(peer, Box::pin(async move { rest }));
    }

    fn on_io(&mut self, io: Io) {
        let now = self.now();
        match io {
            Io::Input(conn, mut bytes) => {
                if !self.io.contains(conn) {
                    return;
                }
                // Merge what else this connection already sent: one
                // handle_input is one store commit.
                while bytes.len() < MERGE_INPUT {
                    match self.io.try_next() {
                        Some(Io::Input(c, more)) if c == conn => bytes.extend_from_slice(&more),
                        Some(other) => {
                            self.input(conn, &bytes, now);
                            return self.on_io(other);
                        }
                        None => break,
                    }
                }
                self.input(conn, &bytes, now);
            }
            Io::Closed(conn) => {
                if self.io.close(conn) {
                    self.dialed.remove(&conn);
                    self.node.handle_closed(conn, now);
                    let (sv, mut cx) = self.split(now);
                    sv.on_close(&mut cx, conn, "the connection closed");
                }
            }
            Io::Accepted(t) => {
                if self.admit(t.remote, now) {
                    let id = self.node.accept(now);
                    self.io.attach(id, t, true);
                }
            }
            Io::Dialed {
                peer,
                transport,
                mut addrs,
            } => {
                self.dialing.remove(&peer);
                self.unreached.remove(&peer);
                if !self.node.wants(&peer) {
                    return;
                }
                let id = self.node.connect(peer, now);
                self.io.attach(id, transport, false);
                // Empty when the transport dialed the key itself.
                if !addrs.is_empty() {
                    let addr = addrs.remove(0);
                    self.dialed.insert(id, (addr, addrs));
                }
            }
            Io::DialFailed(peer) => {
                self.dialing.remove(&peer);
                if self.node.wants(&peer) {
                    self.unreached.insert(peer);
                    debug!(%peer, "peermq: peer not reachable yet; retrying with backoff");
                    self.node.dial_failed(peer, now);
                    self.look_up_mailboxes(peer);
                }
            }
            Io::MailboxesFound(peer, mailboxes) => {
                for m in mailboxes {
                    if m == self.node.id() {
                        continue;
                    }
                    match self.node.add_route(peer, m) {
                        Ok(()) => self.node.dial(m, now),
                        Err(e) => {
                            debug!(%peer, mailbox = %m, error = %e, "peermq: mailbox not kept")
                        }
                    }
                }
            }
            Io::AddrDialed(addr, transport) => {
                let (sv, mut cx) = self.split(now);
                sv.on_dialed(&mut cx, addr, transport);
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
        if self.io.len() >= MAX_CONNS {
            warn!("peermq: too many connections; refusing an inbound one");
            return false;
        }
        let ip = from.map(|a| a.ip());
        let node = &self.node;
        let mut handshaking = Vec::new();
        let mut established = 0;
        for (id, addr) in self.io.inbound() {
            let same_ip = Some(addr.ip()) == ip;
            if node.peer_of(id).is_some() {
                established += usize::from(same_ip);
            } else {
                handshaking.push((id, same_ip));
            }
        }
        if established >= MAX_CONNS_PER_IP {
            warn!(
                ?ip,
                "peermq: too many connections from one address; refusing another"
            );
            return false;
        }
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
            self.io.close(old);
            self.node.close(old, now);
        }
        true
    }

    /// Handles one command; returns the reply channel if it was shutdown.
    fn on_command(&mut self, cmd: Command<Sv::Command>) -> Option<Sender<()>> {
        let now = self.now();
        match cmd {
            Command::AddPeer { peer, addr, reply } => {
                if let Some(addr) = addr {
                    self.finders.statics.insert(peer, addr);
                }
                answer(reply, self.node.add_peer(peer).map_err(Into::into));
            }
            Command::RemovePeer { peer, reply } => {
                self.unreached.remove(&peer);
                let r = self.node.remove_peer(&peer, now);
                answer(reply, r.map_err(Into::into));
            }
            Command::Listen { listener, reply } => answer(reply, self.listen(listener)),
            Command::Connect { peer, reply } => {
                if peer == self.node.id() {
                    answer(reply, Err(peermq::NodeError::SelfSend(peer).into()));
                    return None;
                }
                self.node.dial(peer, now);
                answer(reply, Ok(()));
            }
            Command::Disconnect { peer, reply } => {
                self.unreached.remove(&peer);
                self.node.disconnect(&peer, now);
                answer(reply, Ok(()));
            }
            Command::Connections { reply } => {
                let mut live: Vec<ConnectionInfo> = self
                    .io
                    .routes()
                    .filter_map(|(conn, inbound, route)| {
                        let peer = self.node.peer_of(conn)?;
                        Some(ConnectionInfo {
                            peer,
                            inbound,
                            route,
                        })
                    })
                    .collect();
                live.sort_by_key(|c| (c.peer, c.inbound));
                answer(reply, Ok(live));
            }
            Command::Shutdown { reply } => return Some(reply),
            Command::Service(cmd) => {
                let (sv, mut cx) = self.split(now);
                sv.on_command(&mut cx, cmd);
                // `add_mailbox` and `remove_mailbox` come through here.
                self.announce_mailboxes();
            }
        }
        None
    }

    /// Publishes the node's mailboxes to every discovery, if its signed
    /// list changed since last time: a version compare per command.
    fn announce_mailboxes(&mut self) {
        let Some(list) = self.node.mailbox_list() else {
            return;
        };
        if self.announced_mailboxes == Some(list.version) {
            return;
        }
        let me = self.node.id();
        for d in self.finders.all.iter() {
            if let Err(e) = d.announce_mailboxes(&me, &list.mailboxes) {
                debug!(error = %e, "peermq: a discovery did not take our mailboxes");
            }
        }
        self.announced_mailboxes = Some(list.version);
    }

    /// Asks the discoveries, once per run, for the mailboxes of `peer`, a
    /// peer we could not reach and know no mailbox of: mail for it goes
    /// there meanwhile.
    fn look_up_mailboxes(&mut self, peer: PeerId) {
        if !self.node.mailboxes_of(&peer).is_empty() || !self.mailboxes_looked_up.insert(peer) {
            return;
        }
        let rt = self.rt.clone();
        let discoveries = self.finders.all.clone();
        self.io.lookup_mailboxes(
            peer,
            Box::pin(async move {
                let mut found: Vec<PeerId> = Vec::new();
                for d in discoveries.iter() {
                    if let Some(Ok(m)) = timeout(&*rt, LOCATE_TIMEOUT, d.mailboxes_of(&peer)).await
                    {
                        for m in m {
                            if !found.contains(&m) {
                                found.push(m);
                            }
                        }
                    }
                }
                found
            }),
        );
    }

    /// Accepts connections on `listener` and announces its address to
    /// every discovery (none, if one fails).
    fn listen(&mut self, listener: Box<dyn Listener>) -> Result<SocketAddr, MqError> {
        let addr = listener.local_addr().map_err(|source| MqError::Listen {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let me = self.node.id();
        for d in self.finders.all.iter() {
            if let Err(source) = d.announce(&me, addr) {
                for d in self.finders.all.iter() {
                    d.withdraw(&me, addr);
                }
                return Err(MqError::Announce { addr, source });
            }
        }
        self.io.listen(listener, addr);
        Ok(addr)
    }
}

/// Asks `discoveries` in order where `peer` is (each within
/// [`LOCATE_TIMEOUT`]); with `first_only`, stops at the first that knows.
async fn ask(
    rt: &dyn Runtime,
    discoveries: &[Arc<dyn Discovery>],
    peer: &PeerId,
    first_only: bool,
) -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    for d in discoveries {
        if first_only && !addrs.is_empty() {
            break;
        }
        match timeout(rt, LOCATE_TIMEOUT, d.locate(peer)).await {
            Some(Ok(found)) => merge(&mut addrs, found),
            Some(Err(e)) => debug!(%peer, error = %e, "peermq: discovery failed"),
            None => debug!(%peer, "peermq: discovery timed out"),
        }
    }
    addrs
}

/// Asks `discoveries` again and again, waiting longer each time, until one
/// knows where `peer` is.
async fn ask_until_found(
    rt: &dyn Runtime,
    discoveries: &[Arc<dyn Discovery>],
    peer: &PeerId,
) -> Vec<SocketAddr> {
    let mut wait = REASK_FIRST;
    loop {
        rt.sleep(wait).await;
        let found = ask(rt, discoveries, peer, true).await;
        if !found.is_empty() {
            return found;
        }
        wait = (wait * 2).min(REASK_MAX);
    }
}

/// Adds `found` to `addrs`, without repeats, up to [`MAX_DIAL_ADDRS`].
fn merge(addrs: &mut Vec<SocketAddr>, found: Vec<SocketAddr>) {
    for a in found {
        if addrs.len() < MAX_DIAL_ADDRS && !addrs.contains(&a) {
            addrs.push(a);
        }
    }
}

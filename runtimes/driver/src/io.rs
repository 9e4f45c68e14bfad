//! Socket I/O: the reader, writer, acceptor and dialer tasks of a driver,
//! and the handles it keeps on them.
//!
//! Nothing here knows the protocol. A connection is a [`ConnId`] with a
//! reader task that reports bytes as [`Io::Input`] and a writer task that
//! drains a queue the driver fills; the driver decides what the bytes mean.
//!
//! ```text
//!  reader task ──Io::Input/Closed──┐
//!  acceptor    ──Io::Accepted──────┼──> Sockets::next ──> driver
//!  dialers     ──Io::Dialed/...────┘
//!  driver ──Sockets::transmit──> queue ──> writer task ──> socket
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_channel::{Receiver, Sender};
use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use peermq::{ConnId, PeerId};
use tracing::{debug, warn};

use crate::runtime::{
    timeout, BoxFuture, Connection, Listener, ReadHalf, Route, RouteFn, Runtime, Transport,
    WriteHalf,
};

/// What the I/O tasks tell the driver.
pub(crate) enum Io {
    /// Bytes from the peer of a connection.
    Input(ConnId, Vec<u8>),
    /// The connection's transport closed or failed.
    Closed(ConnId),
    /// A listener accepted a transport.
    Accepted(Connection),
    /// A transport to `peer` is open at the first address of `addrs`; the
    /// rest are what is left of the lookup, to try if another key answers
    /// there. Empty when the transport dialed `peer` by key.
    Dialed {
        peer: PeerId,
        transport: Connection,
        addrs: Vec<SocketAddr>,
    },
    /// No address of a lookup for `peer` accepted a transport.
    DialFailed(PeerId),
    /// A transport to an address is open, or failed to open (saying why).
    AddrDialed(SocketAddr, Result<Connection, String>),
    /// The mailboxes a lookup found for a peer (see
    /// [`crate::Discovery::mailboxes_of`]).
    MailboxesFound(PeerId, Vec<PeerId>),
}

/// Bytes read from a socket per read call.
const READ_BUF: usize = 64 << 10;
/// Messages from I/O tasks buffered for the driver; a full buffer makes the
/// socket readers wait, which pushes back on the peers.
pub(crate) const IO_BUFFER: usize = 256;
/// Bytes queued for one socket before the connection is closed as stuck.
/// The protocol bounds what a healthy peer makes us send (requests in
/// flight times data per message), so only a peer that stops reading ever
/// reaches this.
const MAX_QUEUED: usize = 96 << 20;
/// Bytes queued for all sockets together; past it the connection with the
/// most queued is closed as stuck. Per connection, [`MAX_QUEUED`] applies.
const MAX_QUEUED_TOTAL: usize = 512 << 20;
/// Writes coalesced into one syscall.
const WRITE_COALESCE: usize = 256 << 10;
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The driver's handle on one connection's tasks.
struct Socket {
    tx: Sender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    /// The peer's address, for an inbound connection.
    inbound_from: Option<SocketAddr>,
    /// How the connection runs.
    route: RouteFn,
    inbound: bool,
    /// Tells the writer to give up on what it still has to write (a stuck
    /// peer); dropping it instead lets the writer finish first.
    abort: Sender<()>,
    /// Dropping it stops the reader.
    _stop: Sender<()>,
}

struct ListenerIo {
    addr: SocketAddr,
    /// Dropping it stops the acceptor.
    _stop: Sender<()>,
}

/// Every socket task of one driver, and the channel they report on.
pub(crate) struct Sockets {
    rt: Arc<dyn Runtime>,
    transport: Arc<dyn Transport>,
    tx: Sender<Io>,
    rx: Receiver<Io>,
    conns: HashMap<ConnId, Socket>,
    /// Bytes queued for all sockets (see [`MAX_QUEUED_TOTAL`]).
    queued_total: Arc<AtomicUsize>,
    listeners: Vec<ListenerIo>,
    /// Every writer and acceptor task holds a clone; [`Sockets::drain`]
    /// drops ours and waits for the channel to close, which is when every
    /// socket has drained and every listening socket is closed.
    alive: Option<Sender<()>>,
    done: Receiver<()>,
}

impl Sockets {
    pub(crate) fn new(rt: Arc<dyn Runtime>, transport: Arc<dyn Transport>) -> Self {
        let (tx, rx) = async_channel::bounded(IO_BUFFER);
        let (alive, done) = async_channel::bounded(1);
        Sockets {
            rt,
            transport,
            tx,
            rx,
            conns: HashMap::new(),
            queued_total: Arc::new(AtomicUsize::new(0)),
            listeners: Vec::new(),
            alive: Some(alive),
            done,
        }
    }

    /// A report already waiting, if any.
    pub(crate) fn try_next(&self) -> Option<Io> {
        self.rx.try_recv().ok()
    }

    /// The next report.
    pub(crate) async fn next(&self) -> Io {
        match self.rx.recv().await {
            Ok(io) => io,
            // We hold a sender, so the channel never closes.
            Err(_) => future::pending().await,
        }
    }

    /// Connections with running tasks.
    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    pub(crate) fn contains(&self, id: ConnId) -> bool {
        self.conns.contains_key(&id)
    }

    /// Every connection with running tasks.
    pub(crate) fn ids(&self) -> Vec<ConnId> {
        self.conns.keys().copied().collect()
    }

    /// The inbound connections, with the address each came from.
    pub(crate) fn inbound(&self) -> impl Iterator<Item = (ConnId, SocketAddr)> + '_ {
        self.conns
            .iter()
            .filter_map(|(id, s)| s.inbound_from.map(|a| (*id, a)))
    }

    /// Starts the reader and writer tasks of connection `id` over `t`.
    pub(crate) fn attach(&mut self, id: ConnId, t: Connection, inbound: bool) {
        let Some(alive) = self.alive.clone() else {
            return;
        };
        let (tx, rx) = async_channel::unbounded();
        let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
        let (abort_tx, abort_rx) = async_channel::bounded::<()>(1);
        let queued = Arc::new(AtomicUsize::new(0));
        self.rt
            .spawn(Box::pin(read_loop(id, t.reader, self.tx.clone(), stop_rx)));
        self.rt.spawn(Box::pin(write_loop(
            id,
            t.writer,
            rx,
            [queued.clone(), self.queued_total.clone()],
            abort_rx,
            alive,
        )));
        self.conns.insert(
            id,
            Socket {
                tx,
                queued,
                inbound_from: if inbound { t.remote } else { None },
                route: t.route,
                inbound,
                abort: abort_tx,
                _stop: stop_tx,
            },
        );
    }

    /// Every connection with running tasks: whether it came in, and how
    /// it runs now.
    pub(crate) fn routes(&self) -> impl Iterator<Item = (ConnId, bool, Route)> + '_ {
        self.conns
            .iter()
            .map(|(id, s)| (*id, s.inbound, (s.route)()))
    }

    /// Queues `bytes` for connection `id`. Returns a connection to close as
    /// stuck, if the queues grew past their bounds: `id` itself, or, when
    /// all queues together are too long, the one holding the most.
    pub(crate) fn transmit(&mut self, id: ConnId, bytes: Vec<u8>) -> Option<ConnId> {
        let s = self.conns.get(&id)?;
        let n = bytes.len();
        let queued = s.queued.fetch_add(n, Ordering::Relaxed) + n;
        let total = self.queued_total.fetch_add(n, Ordering::Relaxed) + n;
        if queued > MAX_QUEUED {
            return Some(id);
        }
        // The writer takes (and, once its socket failed, drops) whatever
        // is queued until the connection is closed.
        let _ = s.tx.try_send(bytes);
        if total > MAX_QUEUED_TOTAL {
            return self
                .conns
                .iter()
                .max_by_key(|(_, c)| c.queued.load(Ordering::Relaxed))
                .map(|(id, _)| *id);
        }
        None
    }

    /// Forgets connection `id`: its reader stops, its writer finishes what
    /// is queued and closes. Returns whether it was known.
    pub(crate) fn close(&mut self, id: ConnId) -> bool {
        self.conns.remove(&id).is_some()
    }

    /// Forgets connection `id` and drops what is queued for it: its peer
    /// stopped reading and would never take it.
    pub(crate) fn abort(&mut self, id: ConnId) -> bool {
        match self.conns.remove(&id) {
            Some(s) => {
                let _ = s.abort.try_send(());
                true
            }
            None => false,
        }
    }

    /// Accepts connections on `listener` until [`Sockets::stop_listening`],
    /// reporting them as [`Io::Accepted`].
    pub(crate) fn listen(&mut self, listener: Box<dyn Listener>, addr: SocketAddr) {
        let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
        self.rt.spawn(Box::pin(accept_loop(
            listener,
            self.tx.clone(),
            stop_rx,
            self.rt.clone(),
            self.alive.clone(),
        )));
        self.listeners.push(ListenerIo {
            addr,
            _stop: stop_tx,
        });
    }

    /// The addresses we listen on.
    pub(crate) fn listening(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|l| l.addr).collect()
    }

    /// Stops every acceptor; returns the addresses they listened on.
    pub(crate) fn stop_listening(&mut self) -> Vec<SocketAddr> {
        std::mem::take(&mut self.listeners)
            .into_iter()
            .map(|l| l.addr)
            .collect()
    }

    /// Looks up `peer`'s addresses with `locate`, then opens a connection
    /// to the first that accepts one (or, over a transport that finds peers
    /// by key, to the peer with the addresses as hints): reported as
    /// [`Io::Dialed`], or [`Io::DialFailed`] if none does.
    pub(crate) fn dial_peer(&self, peer: PeerId, locate: BoxFuture<'static, Vec<SocketAddr>>) {
        let (rt, transport) = (self.rt.clone(), self.transport.clone());
        let tx = self.tx.clone();
        self.rt.spawn(Box::pin(async move {
            let addrs = locate.await;
            dial_in_turn(&*rt, &*transport, &tx, peer, addrs).await;
        }));
    }

    /// Runs `lookup` for `peer`'s mailboxes, reported as
    /// [`Io::MailboxesFound`] if it finds any.
    pub(crate) fn lookup_mailboxes(&self, peer: PeerId, lookup: BoxFuture<'static, Vec<PeerId>>) {
        let tx = self.tx.clone();
        self.rt.spawn(Box::pin(async move {
            let found = lookup.await;
            if !found.is_empty() {
                let _ = tx.send(Io::MailboxesFound(peer, found)).await;
            }
        }));
    }

    /// Opens a connection to `addr`, where `expect` should answer if known,
    /// reported as [`Io::AddrDialed`].
    pub(crate) fn dial_addr(&self, addr: SocketAddr, expect: Option<PeerId>) {
        let (rt, transport) = (self.rt.clone(), self.transport.clone());
        let tx = self.tx.clone();
        self.rt.spawn(Box::pin(async move {
            let dial = transport.connect(expect, addr);
            let t = match timeout(&*rt, CONNECT_TIMEOUT, dial).await {
                Some(Ok(t)) => Ok(t),
                Some(Err(e)) => Err(e.to_string()),
                None => Err("the connection attempt timed out".into()),
            };
            let _ = tx.send(Io::AddrDialed(addr, t)).await;
        }));
    }

    /// Forgets every connection and waits, up to `limit`, until every
    /// writer has written what was queued and every listening socket is
    /// closed; then closes the transport. Returns whether the sockets
    /// drained in time.
    pub(crate) async fn drain(mut self, limit: Duration) -> bool {
        self.conns.clear();
        self.listeners.clear();
        drop(self.alive.take());
        let done = self.done.clone();
        let drained = timeout(&*self.rt, limit, async move {
            let _ = done.recv().await;
        })
        .await
        .is_some();
        self.transport.close().await;
        drained
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
    let give_up = || {
        let left = queued[0].swap(0, Ordering::Relaxed);
        queued[1].fetch_sub(left, Ordering::Relaxed);
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
        let written = future::or(async { Some(writer.write_all(&chunk).await) }, async {
            aborted().await;
            None
        })
        .await;
        match written {
            None => return give_up(),
            Some(Err(e)) => {
                debug!(%conn, error = %e, "peermq: write failed");
                for q in &queued {
                    q.fetch_sub(n, Ordering::Relaxed);
                }
                // The peer is gone, but what it sent last (its close
                // message, say) may still wait in our receive buffer: the
                // reader delivers it and then reports the end, so closing
                // here would race it (Unix sockets refuse a write at once
                // when the peer closed; TCP accepts one more). Until the
                // driver lets go, what is queued is dropped.
                while let Some(Ok(more)) = future::or(async { Some(rx.recv().await) }, async {
                    aborted().await;
                    None
                })
                .await
                {
                    for q in &queued {
                        q.fetch_sub(more.len(), Ordering::Relaxed);
                    }
                }
                return;
            }
            Some(Ok(())) => {
                for q in &queued {
                    q.fetch_sub(n, Ordering::Relaxed);
                }
            }
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
    loop {
        let got = future::or(async { Some(listener.accept().await) }, async {
            let _ = stop.recv().await;
            None
        })
        .await;
        match got {
            None => break,
            Some(Ok(t)) => {
                if tx.send(Io::Accepted(t)).await.is_err() {
                    break;
                }
            }
            Some(Err(e)) => {
                // Out of file descriptors and the like: pause rather than spin.
                warn!(error = %e, "peermq: accepting a connection failed");
                rt.sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(listener);
    drop(alive);
}

/// Opens a connection to `peer` at the first of `addrs` that accepts one,
/// and reports it with the addresses from that one on (the first is where
/// it went); or reports that none did.
async fn dial_in_turn(
    rt: &dyn Runtime,
    transport: &dyn Transport,
    tx: &Sender<Io>,
    peer: PeerId,
    addrs: Vec<SocketAddr>,
) {
    if let Some(dial) = transport.connect_key(peer, &addrs) {
        let msg = match timeout(rt, CONNECT_TIMEOUT, dial).await {
            // The transport checked the key it reached: no address to blame
            // or to try next.
            Some(Ok(transport)) => Io::Dialed {
                peer,
                transport,
                addrs: Vec::new(),
            },
            Some(Err(e)) => {
                debug!(%peer, error = %e, "peermq: dial by key failed");
                Io::DialFailed(peer)
            }
            None => {
                debug!(%peer, "peermq: dial by key timed out");
                Io::DialFailed(peer)
            }
        };
        let _ = tx.send(msg).await;
        return;
    }
    for (i, &addr) in addrs.iter().enumerate() {
        match timeout(rt, CONNECT_TIMEOUT, transport.connect(Some(peer), addr)).await {
            Some(Ok(transport)) => {
                let addrs = addrs[i..].to_vec();
                let _ = tx
                    .send(Io::Dialed {
                        peer,
                        transport,
                        addrs,
                    })
                    .await;
                return;
            }
            Some(Err(e)) => debug!(%peer, %addr, error = %e, "peermq: dial failed"),
            None => debug!(%peer, %addr, "peermq: dial timed out"),
        }
    }
    let _ = tx.send(Io::DialFailed(peer)).await;
}

//! What the driver needs from an async runtime (an executor and a clock)
//! and from a transport (streams to and from peers): the bottom layer of
//! this crate, which imports nothing from the rest of it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncWrite};
use peermq::{Keypair, PeerId};

/// A boxed, sendable future: what [`Runtime`] and [`Transport`] methods
/// return, so the traits stay object-safe and one driver serves them all.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The read half of a connection.
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The write half of a connection.
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// An open connection to a peer: a duplex byte stream, split so that
/// reading and writing run in separate tasks (a slow writer never stops us
/// reading, which is what keeps two busy peers from deadlocking on each
/// other's full buffers). It carries the protocol's Noise bytes as they are,
/// whatever the transport: authenticating the peer is the protocol's job.
pub struct Connection {
    /// Bytes from the peer.
    pub reader: ReadHalf,
    /// Bytes to the peer; closing it shuts down our side of the stream.
    pub writer: WriteHalf,
    /// The peer's IP address and port, when the transport has them: the
    /// driver bounds the connections it accepts from one IP address by it.
    pub remote: Option<SocketAddr>,
    /// How the connection runs, asked whenever the application looks
    /// ([`crate::Mq::connections`]): a route can change while the
    /// connection lives (iroh moves from a relay to a direct path once hole
    /// punching succeeds).
    pub route: RouteFn,
}

impl Connection {
    /// A connection over a transport whose route never changes: `transport`
    /// names it, `remote` is the peer's address if it has one.
    pub fn fixed(
        reader: ReadHalf,
        writer: WriteHalf,
        transport: &'static str,
        remote: Option<SocketAddr>,
    ) -> Self {
        let route = Route {
            transport,
            relayed: false,
            remote: remote.map(|a| a.to_string()),
        };
        Connection {
            reader,
            writer,
            remote,
            route: Arc::new(move || route.clone()),
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("remote", &self.remote)
            .field("route", &(self.route)())
            .finish_non_exhaustive()
    }
}

/// How a connection reaches its peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The transport's name: `tcp`, `iroh`, `unix`...
    pub transport: &'static str,
    /// Whether the bytes pass through a relay rather than go directly.
    pub relayed: bool,
    /// Where the bytes go, as the transport names it: the peer's address,
    /// or the relay's URL. `None` when the transport has no address to
    /// show.
    pub remote: Option<String>,
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if self.relayed { "relayed" } else { "direct" };
        write!(f, "{how} over {}", self.transport)?;
        match &self.remote {
            Some(remote) if self.relayed => write!(f, " via {remote}"),
            Some(remote) => write!(f, " to {remote}"),
            None => Ok(()),
        }
    }
}

/// A live connection whose handshake told who the peer is, as
/// [`crate::Mq::connections`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The peer.
    pub peer: PeerId,
    /// Whether the peer dialed us.
    pub inbound: bool,
    /// How the connection runs now.
    pub route: Route,
}

/// Reports a connection's current [`Route`].
pub type RouteFn = Arc<dyn Fn() -> Route + Send + Sync>;

/// Where a [`Transport`] accepts connections.
pub trait Listener: Send + Sync + 'static {
    /// Waits for the next inbound connection.
    fn accept(&self) -> BoxFuture<'_, io::Result<Connection>>;
    /// The address it listens on (with the port picked, if 0 was asked
    /// for): what discovery tells others to dial.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// How bytes reach a peer: TCP by default; anything that gives a duplex
/// byte stream will do (`runtimes/README.md` shows one over Unix-domain
/// sockets). Addresses are socket addresses, as discovery finds them and
/// users type them; a transport that reaches peers by key may read them as
/// hints, and `peer` says who is expected to answer.
pub trait Transport: Send + Sync + std::fmt::Debug + 'static {
    /// Opens a connection to `addr`, where `peer` is expected to answer
    /// (`None` when dialing an address without knowing who listens there).
    /// The node checks who answered in its handshake, whatever the
    /// transport says.
    fn connect(
        &self,
        peer: Option<PeerId>,
        addr: SocketAddr,
    ) -> BoxFuture<'static, io::Result<Connection>>;
    /// Starts accepting connections at `addr`.
    fn bind(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listener>>>;
    /// Opens a connection to `peer` by its key, with the addresses
    /// discovery found as hints (possibly none), for a transport that finds
    /// peers by key itself (iroh: its own address lookup, relays, hole
    /// punching). The default, `None`, says this transport cannot: the
    /// driver then dials each hint in turn with [`Transport::connect`], and
    /// does not dial at all without one.
    fn connect_key(
        &self,
        peer: PeerId,
        hints: &[SocketAddr],
    ) -> Option<BoxFuture<'static, io::Result<Connection>>> {
        let _ = (peer, hints);
        None
    }
    /// The node using this transport has shut down and its connections
    /// have drained. A transport made for one node
    /// ([`Runtime::transport_for`], [`crate::Builder::transport_for`])
    /// releases what it holds here; one shared between nodes must keep
    /// serving the others. The default does nothing.
    fn close(&self) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// What the driver needs from an async runtime: an executor and a clock.
/// How bytes reach a peer is a [`Transport`]'s business.
///
/// Keep implementations thin: everything protocol-related lives in the core
/// and in this crate's driver.
pub trait Runtime: Send + Sync + std::fmt::Debug + 'static {
    /// Runs `future` to completion in the background.
    fn spawn(&self, future: BoxFuture<'static, ()>);
    /// Completes after `duration`.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
    /// The current time. Only differences matter; the default reads the
    /// monotonic clock.
    fn now(&self) -> std::time::Instant {
        std::time::Instant::now()
    }
    /// The transport nodes on this runtime use unless their builder is
    /// given another ([`crate::Builder::transport`]): TCP, for the runtimes
    /// this project ships.
    fn default_transport(&self) -> Arc<dyn Transport>;
    /// The transport for the node whose key is `key`, unless its builder
    /// is given another: [`Runtime::default_transport`], unless this
    /// runtime carries connections over a transport keyed by each node's
    /// identity (as `peermq-iroh`'s tests do, to run the conformance suite
    /// over iroh).
    fn transport_for(&self, key: &Keypair) -> io::Result<Arc<dyn Transport>> {
        let _ = key;
        Ok(self.default_transport())
    }
}

/// Races `future` against a timer of `runtime`; `None` if time ran out.
pub async fn timeout<T>(
    runtime: &dyn Runtime,
    duration: Duration,
    future: impl Future<Output = T>,
) -> Option<T> {
    let sleep = runtime.sleep(duration);
    futures_lite::future::or(async { Some(future.await) }, async {
        sleep.await;
        None
    })
    .await
}

/// The system clock as a [`peermq::Timestamp`]: what lease deadlines are
/// measured in, shared by every process on a data directory (a monotonic
/// clock's origin is one process's own).
pub fn wall_clock() -> peermq::Timestamp {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    peermq::Timestamp::from_unix(since)
}

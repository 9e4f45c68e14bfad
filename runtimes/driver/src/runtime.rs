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
use peermq::PeerId;

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
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

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

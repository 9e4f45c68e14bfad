//! What the driver needs from an async runtime and a transport: the
//! bottom layer of this crate, which imports nothing from the rest of it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncWrite};

/// A boxed, sendable future: what [`Runtime`] methods return, so the trait
/// stays object-safe and one driver serves every runtime.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The read half of a connection.
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The write half of a connection.
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// An open TCP connection, split so that reading and writing run in
/// separate tasks (a slow writer never stops us reading, which is what keeps
/// two busy peers from deadlocking on each other's full socket buffers).
pub struct Transport {
    /// Bytes from the peer.
    pub reader: ReadHalf,
    /// Bytes to the peer; closing it shuts down our side of the stream.
    pub writer: WriteHalf,
    /// The peer's address, when the transport has one: the driver bounds
    /// the connections it accepts from one IP address by it.
    pub remote: Option<SocketAddr>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Transport { .. }")
    }
}

/// A bound TCP listener of some runtime.
pub trait Listener: Send + Sync + 'static {
    /// Waits for the next inbound connection. Implementations set
    /// `TCP_NODELAY` on it: the protocol already batches, and Nagle's delay
    /// would only add latency.
    fn accept(&self) -> BoxFuture<'_, io::Result<Transport>>;
    /// The address it is bound to (with the port the OS picked, if 0 was
    /// asked for).
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// What the driver needs from an async runtime.
///
/// Keep implementations thin: everything protocol-related lives in the core
/// and in this crate's driver.
pub trait Runtime: Send + Sync + std::fmt::Debug + 'static {
    /// Runs `future` to completion in the background.
    fn spawn(&self, future: BoxFuture<'static, ()>);
    /// Completes after `duration`.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
    /// Opens a TCP connection to `addr`, with `TCP_NODELAY` set.
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Transport>>;
    /// Binds a TCP listener to `addr`.
    fn bind(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listener>>>;
    /// The current time. Only differences matter; the default reads the
    /// monotonic clock.
    fn now(&self) -> std::time::Instant {
        std::time::Instant::now()
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

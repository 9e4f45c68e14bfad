//! # peermq-tokio
//!
//! Runs peermq nodes on tokio. The protocol, the node and the [`Mq`] handle
//! live in `peermq-driver`; this crate only teaches it tokio's spawn, timers
//! and TCP.
//!
//! A node is configured with [`Mq::builder`] (its data directory, the
//! [`Config`], discovery, transport) and opened on a [`TokioRuntime`]; the
//! [`open`] shortcut takes the defaults. Two nodes on loopback, B sending
//! to A:
//!
//! ```
//! use futures_lite::StreamExt;
//! use peermq_tokio::{Mailbox, Mq, TokioRuntime};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tmp = tempfile::tempdir()?;
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! runtime.block_on(async {
//!     // No same-machine discovery here: B is told where A listens.
//!     let open = |name| {
//!         Mq::builder(tmp.path().join(name))
//!             .local_discovery(false)
//!             .open(TokioRuntime::new())
//!     };
//!     let (a, b) = (open("a")?, open("b")?);
//!     let (a_id, b_id) = (a.id().await, b.id().await);
//!     a.add_peer(b_id, None).await?; // A lets B connect
//!     let addr = a.listen("127.0.0.1:0".parse()?).await?;
//!     b.add_peer(a_id, Some(addr)).await?;
//!     b.send(a_id, "hello").await?; // durable when it returns, even offline
//!     b.connect(a_id).await?; // dials, and redials after a drop
//!
//!     let mut inbox = a.read_stream(Mailbox::Unread, true);
//!     let msg = inbox.next().await.expect("the stream is live")?;
//!     assert_eq!((msg.from, &msg.data[..]), (b_id, &b"hello"[..]));
//!     assert!(a.archive(msg.from, msg.seq).await?); // processed exactly once
//!     b.shutdown().await?;
//!     a.shutdown().await?;
//!     Ok(())
//! })
//! # }
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs)]

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

pub use peermq_driver::*;

/// The tokio [`Runtime`]: spawns onto the runtime it was created in.
#[derive(Debug, Clone)]
pub struct TokioRuntime {
    handle: tokio::runtime::Handle,
}

impl TokioRuntime {
    /// The runtime of the current tokio context.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime; use [`TokioRuntime::with_handle`] there.
    pub fn new() -> Arc<Self> {
        Self::with_handle(tokio::runtime::Handle::current())
    }

    /// The runtime behind `handle`.
    pub fn with_handle(handle: tokio::runtime::Handle) -> Arc<Self> {
        Arc::new(TokioRuntime { handle })
    }
}

impl Runtime for TokioRuntime {
    fn spawn(&self, future: BoxFuture<'static, ()>) {
        self.handle.spawn(future);
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let _guard = self.handle.enter();
        Box::pin(tokio::time::sleep(duration))
    }

    fn default_transport(&self) -> Arc<dyn Transport> {
        Arc::new(TokioTcp {
            handle: self.handle.clone(),
        })
    }
}

/// TCP on tokio, with `TCP_NODELAY` (the protocol batches already; Nagle's
/// delay would only add latency). Its sockets live in the runtime behind
/// its handle, whichever executor polls the driver.
#[derive(Debug, Clone)]
pub struct TokioTcp {
    handle: tokio::runtime::Handle,
}

impl TokioTcp {
    /// TCP on the runtime behind `handle`.
    pub fn with_handle(handle: tokio::runtime::Handle) -> Arc<Self> {
        Arc::new(TokioTcp { handle })
    }
}

impl Transport for TokioTcp {
    fn connect(
        &self,
        _peer: Option<PeerId>,
        addr: SocketAddr,
    ) -> BoxFuture<'static, io::Result<Connection>> {
        let handle = self.handle.clone();
        Box::pin(async move {
            let stream = handle
                .spawn(tokio::net::TcpStream::connect(addr))
                .await
                .map_err(io::Error::other)??;
            connection(stream)
        })
    }

    fn bind(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listener>>> {
        let handle = self.handle.clone();
        Box::pin(async move {
            let listener = handle
                .spawn(tokio::net::TcpListener::bind(addr))
                .await
                .map_err(io::Error::other)??;
            Ok(Box::new(TokioListener(listener)) as Box<dyn Listener>)
        })
    }
}

struct TokioListener(tokio::net::TcpListener);

impl Listener for TokioListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<Connection>> {
        Box::pin(async move { connection(self.0.accept().await?.0) })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

fn connection(stream: tokio::net::TcpStream) -> io::Result<Connection> {
    stream.set_nodelay(true)?;
    let remote = stream.peer_addr().ok();
    let (r, w) = stream.into_split();
    Ok(Connection::fixed(
        Box::new(Compat(r)),
        Box::new(Compat(w)),
        "tcp",
        remote,
    ))
}

/// tokio's I/O traits seen as the `futures` ones the driver uses.
struct Compat<T>(T);

impl<T: tokio::io::AsyncRead + Unpin> AsyncRead for Compat<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut rb = tokio::io::ReadBuf::new(buf);
        ready!(Pin::new(&mut self.0).poll_read(cx, &mut rb))?;
        Poll::Ready(Ok(rb.filled().len()))
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> AsyncWrite for Compat<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Opens the node whose data lives in `dir` on the current tokio runtime,
/// with default settings (see [`Mq::builder`] for the others).
pub fn open(dir: impl Into<PathBuf>) -> Result<Mq, MqError> {
    Mq::builder(dir).open(TokioRuntime::new())
}

/// Opens the event emitter whose data lives in `dir` on the current tokio
/// runtime, open to any peer (see [`Emitter::builder`] for the other
/// settings).
///
/// ```no_run
/// # async fn demo() -> Result<(), peermq_tokio::EmitterError> {
/// let schema = peermq_tokio::Schema::load("examples/example.proto".as_ref())
///     .expect("a valid schema");
/// let em = peermq_tokio::open_emitter("emitter-data", schema)?;
/// em.listen("127.0.0.1:0".parse().unwrap()).await?;
/// em.emit("Hello", peermq_tokio::serde_json::json!({"from": "Matteo"})).await?;
/// em.close().await
/// # }
/// ```
pub fn open_emitter(dir: impl Into<PathBuf>, schema: Schema) -> Result<Emitter, EmitterError> {
    Emitter::builder(dir).open(TokioRuntime::new(), schema)
}

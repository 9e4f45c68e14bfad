//! # peermq-smol
//!
//! Runs peermq nodes on smol. The protocol, the node and the [`Mq`] handle
//! live in `peermq-driver`; this crate only teaches it smol's spawn, timers
//! and TCP ([`SmolTcp`], the default transport).
//!
//! ```no_run
//! smol::block_on(async {
//!     let mq = peermq_smol::open("peermq-data")?;
//!     mq.listen("127.0.0.1:0".parse().unwrap()).await?;
//!     println!("my id: {}", mq.id().await);
//!     mq.shutdown().await
//! })?;
//! # Ok::<(), peermq_smol::MqError>(())
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs)]

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use peermq_driver::*;

/// The smol [`Runtime`]: spawns onto smol's global executor.
#[derive(Debug, Clone, Default)]
pub struct SmolRuntime;

impl SmolRuntime {
    /// The runtime, ready to hand to [`Mq::builder`].
    pub fn new() -> Arc<Self> {
        Arc::new(SmolRuntime)
    }
}

impl Runtime for SmolRuntime {
    fn spawn(&self, future: BoxFuture<'static, ()>) {
        smol::spawn(future).detach();
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            smol::Timer::after(duration).await;
        })
    }

    fn default_transport(&self) -> Arc<dyn Transport> {
        Arc::new(SmolTcp)
    }
}

/// TCP on smol, with `TCP_NODELAY` (the protocol batches already; Nagle's
/// delay would only add latency).
#[derive(Debug, Clone, Default)]
pub struct SmolTcp;

impl Transport for SmolTcp {
    fn connect(
        &self,
        _peer: Option<PeerId>,
        addr: SocketAddr,
    ) -> BoxFuture<'static, io::Result<Connection>> {
        Box::pin(async move { connection(smol::net::TcpStream::connect(addr).await?) })
    }

    fn bind(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let listener = smol::net::TcpListener::bind(addr).await?;
            Ok(Box::new(SmolListener(listener)) as Box<dyn Listener>)
        })
    }
}

struct SmolListener(smol::net::TcpListener);

impl Listener for SmolListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<Connection>> {
        Box::pin(async move { connection(self.0.accept().await?.0) })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

fn connection(stream: smol::net::TcpStream) -> io::Result<Connection> {
    stream.set_nodelay(true)?;
    let remote = stream.peer_addr().ok();
    Ok(Connection::fixed(
        Box::new(stream.clone()),
        Box::new(stream),
        "tcp",
        remote,
    ))
}

/// Opens the node whose data lives in `dir` on smol, with default settings
/// (see [`Mq::builder`] for the others).
pub fn open(dir: impl Into<PathBuf>) -> Result<Mq, MqError> {
    Mq::builder(dir).open(SmolRuntime::new())
}

/// Opens the event emitter whose data lives in `dir` on smol, open to any
/// peer (see [`Emitter::builder`] for the other settings).
pub fn open_emitter(dir: impl Into<PathBuf>, schema: Schema) -> Result<Emitter, EmitterError> {
    Emitter::builder(dir).open(SmolRuntime::new(), schema)
}

//! # peermq-async-std
//!
//! Runs peermq nodes on async-std. The protocol, the node and the [`Mq`]
//! handle live in `peermq-driver`; this crate only teaches it async-std's
//! spawn, timers and TCP.
//!
//! **async-std is discontinued upstream** (its authors point to smol, see
//! `peermq-smol`). This adapter is kept because users asked for it, behind
//! the `async-std` cargo feature (on by default); without the feature the
//! crate only re-exports the runtime-agnostic driver.
//!
//! ```no_run
//! # #[cfg(feature = "async-std")]
//! async_std::task::block_on(async {
//!     let mq = peermq_async_std::open("peermq-data")?;
//!     mq.listen("127.0.0.1:0".parse().unwrap()).await?;
//!     println!("my id: {}", mq.id().await);
//!     mq.shutdown().await
//! })?;
//! # Ok::<(), peermq_async_std::MqError>(())
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub use peermq_driver::*;

#[cfg(feature = "async-std")]
mod adapter {
    use std::io;
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use peermq_driver::{
        BoxFuture, Connection, Emitter, EmitterError, Listener, Mq, MqError, PeerId, Runtime,
        Schema, Transport,
    };

    /// The async-std [`Runtime`]: spawns onto async-std's global executor.
    #[derive(Debug, Clone, Default)]
    pub struct AsyncStdRuntime;

    impl AsyncStdRuntime {
        /// The runtime, ready to hand to [`Mq::builder`].
        pub fn new() -> Arc<Self> {
            Arc::new(AsyncStdRuntime)
        }
    }

    impl Runtime for AsyncStdRuntime {
        fn spawn(&self, future: BoxFuture<'static, ()>) {
            async_std::task::spawn(future);
        }

        fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
            Box::pin(async_std::task::sleep(duration))
        }

        fn default_transport(&self) -> Arc<dyn Transport> {
            Arc::new(AsyncStdTcp)
        }
    }

    /// TCP on async-std, with `TCP_NODELAY` (the protocol batches already;
    /// Nagle's delay would only add latency).
    #[derive(Debug, Clone, Default)]
    pub struct AsyncStdTcp;

    impl Transport for AsyncStdTcp {
        fn connect(
            &self,
            _peer: Option<PeerId>,
            addr: SocketAddr,
        ) -> BoxFuture<'static, io::Result<Connection>> {
            Box::pin(async move { connection(async_std::net::TcpStream::connect(addr).await?) })
        }

        fn bind(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listener>>> {
            Box::pin(async move {
                let listener = async_std::net::TcpListener::bind(addr).await?;
                Ok(Box::new(AsyncStdListener(listener)) as Box<dyn Listener>)
            })
        }
    }

    struct AsyncStdListener(async_std::net::TcpListener);

    impl Listener for AsyncStdListener {
        fn accept(&self) -> BoxFuture<'_, io::Result<Connection>> {
            Box::pin(async move { connection(self.0.accept().await?.0) })
        }

        fn local_addr(&self) -> io::Result<SocketAddr> {
            self.0.local_addr()
        }
    }

    fn connection(stream: async_std::net::TcpStream) -> io::Result<Connection> {
        stream.set_nodelay(true)?;
        let remote = stream.peer_addr().ok();
        Ok(Connection::fixed(
            Box::new(stream.clone()),
            Box::new(stream),
            "tcp",
            remote,
        ))
    }

    /// Opens the node whose data lives in `dir` on async-std, with default
    /// settings (see [`Mq::builder`] for the others).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Mq, MqError> {
        Mq::builder(dir).open(AsyncStdRuntime::new())
    }

    /// Opens the event emitter whose data lives in `dir` on async-std, open
    /// to any peer (see [`Emitter::builder`] for the other settings).
    pub fn open_emitter(dir: impl Into<PathBuf>, schema: Schema) -> Result<Emitter, EmitterError> {
        Emitter::builder(dir).open(AsyncStdRuntime::new(), schema)
    }
}

#[cfg(feature = "async-std")]
pub use adapter::{open, open_emitter, AsyncStdRuntime, AsyncStdTcp};

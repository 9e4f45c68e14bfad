//! A custom transport: peermq over Unix-domain sockets instead of TCP.
//!
//! A transport only moves bytes; the protocol's Noise handshake still
//! authenticates every peer, so nothing here is trusted. Addresses stay
//! socket addresses (what discovery stores and users type); this transport
//! maps each one to a socket file in a directory: `127.0.0.1:20000` is
//! `DIR/127.0.0.1-20000.sock`.
//!
//! `cargo run -p peermq-smol --example unix_transport` sends one message
//! between two nodes that never open a TCP socket. `cargo test -p
//! peermq-smol --example unix_transport` runs the whole queue conformance
//! suite over it.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::StreamExt;
use peermq_smol::{BoxFuture, Connection, Listener, Mailbox, Mq, PeerId, SmolRuntime, Transport};
use smol::net::unix::{UnixListener, UnixStream};

/// Unix-domain sockets in one directory, one per listening address.
#[derive(Debug)]
pub struct UnixSockets {
    dir: PathBuf,
    /// The port the next listener asking for port 0 gets.
    next_port: AtomicU16,
}

impl UnixSockets {
    /// Sockets in `dir`, which must exist.
    pub fn new(dir: impl Into<PathBuf>) -> Arc<Self> {
        Arc::new(UnixSockets {
            dir: dir.into(),
            next_port: AtomicU16::new(20_000),
        })
    }

    fn path(&self, addr: SocketAddr) -> PathBuf {
        self.dir.join(format!("{}-{}.sock", addr.ip(), addr.port()))
    }
}

impl Transport for UnixSockets {
    fn connect(
        &self,
        _peer: Option<PeerId>,
        addr: SocketAddr,
    ) -> BoxFuture<'static, io::Result<Connection>> {
        let path = self.path(addr);
        Box::pin(async move {
            let stream = UnixStream::connect(path).await?;
            // No IP: the driver's per-address caps do not apply.
            Ok(Connection::fixed(
                Box::new(stream.clone()),
                Box::new(stream),
                "unix",
                None,
            ))
        })
    }

    fn bind(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listener>>> {
        let addr = match addr.port() {
            0 => SocketAddr::new(addr.ip(), self.next_port.fetch_add(1, Ordering::Relaxed)),
            _ => addr,
        };
        let path = self.path(addr);
        Box::pin(async move {
            // A socket file left by a listener that is gone would refuse
            // the bind: this directory is ours, so it goes.
            if UnixStream::connect(&path).await.is_err() {
                let _ = std::fs::remove_file(&path);
            }
            let listener = UnixListener::bind(&path)?;
            Ok(Box::new(UnixListenerAt { listener, addr }) as Box<dyn Listener>)
        })
    }
}

struct UnixListenerAt {
    listener: UnixListener,
    addr: SocketAddr,
}

impl Listener for UnixListenerAt {
    fn accept(&self) -> BoxFuture<'_, io::Result<Connection>> {
        Box::pin(async move {
            let (stream, _) = self.listener.accept().await?;
            Ok(Connection::fixed(
                Box::new(stream.clone()),
                Box::new(stream),
                "unix",
                None,
            ))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir(dir.path().join("sockets"))?;
    let unix = UnixSockets::new(dir.path().join("sockets"));
    let open = |name: &str| {
        Mq::builder(dir.path().join(name))
            .discovery_dir(dir.path().join("discovery"))
            .transport(unix.clone())
            .open(SmolRuntime::new())
    };
    smol::block_on(async {
        let (a, b) = (open("a")?, open("b")?);
        let (ida, idb) = (a.id().await, b.id().await);
        a.add_peer(idb, None).await?;
        b.add_peer(ida, None).await?;
        let at = a.listen("127.0.0.1:0".parse()?).await?;
        println!(
            "a listens at {at}, a socket file in {}",
            dir.path().display()
        );
        b.connect(ida).await?;
        b.send(ida, "hello over a Unix socket").await?;
        let mut inbox = a.read_stream(Mailbox::Unread, true);
        let next = smol::future::or(async { inbox.next().await }, async {
            smol::Timer::after(Duration::from_secs(10)).await;
            None
        });
        let msg = next.await.ok_or("nothing arrived within 10 s")??;
        println!("a got {:?} from b", String::from_utf8_lossy(&msg.data));
        b.shutdown().await?;
        a.shutdown().await?;
        Ok(())
    })
}

/// The queue conformance suite, with every connection over Unix sockets.
#[cfg(test)]
mod conformance {
    use super::*;
    use peermq_smol::{conformance::Test, Runtime};

    /// smol's executor and clock, with Unix sockets as its transport.
    #[derive(Debug)]
    struct OverUnix {
        smol: Arc<SmolRuntime>,
        unix: Arc<UnixSockets>,
    }

    impl Runtime for OverUnix {
        fn spawn(&self, future: BoxFuture<'static, ()>) {
            self.smol.spawn(future)
        }

        fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
            self.smol.sleep(duration)
        }

        fn default_transport(&self) -> Arc<dyn Transport> {
            self.unix.clone()
        }
    }

    fn run(test: Test) {
        let dir = tempfile::tempdir().unwrap();
        let r: Arc<dyn Runtime> = Arc::new(OverUnix {
            smol: SmolRuntime::new(),
            unix: UnixSockets::new(dir.path()),
        });
        smol::block_on(test(r.clone(), r));
    }

    peermq_smol::conformance_suite!(run);
}

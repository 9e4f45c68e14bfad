//! What the tokio tests share: a current-thread runtime, and a pair of
//! nodes where A authorizes B and listens on loopback.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;

use peermq::{Config, PeerId};
use peermq_tokio::{Mq, TokioRuntime};

/// A current-thread tokio runtime with I/O and timers.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("start a tokio runtime")
}

/// Nodes A and B, on directories `a` and `b` under one directory, which
/// also holds the discovery directory they share.
pub struct Pair {
    pub a: Mq,
    pub b: Mq,
    pub ida: PeerId,
    pub idb: PeerId,
    /// Where A listens.
    pub addr: SocketAddr,
}

/// A and B with `config`, A authorizing B and listening on loopback. Call
/// inside a runtime.
pub async fn listening_pair(dir: &Path, config: Config) -> Pair {
    let open = |name: &str| {
        Mq::builder(dir.join(name))
            .config(config.clone())
            .discovery_dir(dir.join("discovery"))
            .open(TokioRuntime::new())
            .unwrap()
    };
    let (a, b) = (open("a"), open("b"));
    let (ida, idb) = (a.id().await, b.id().await);
    a.add_peer(idb, None).await.unwrap();
    let addr = a.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    Pair {
        a,
        b,
        ida,
        idb,
        addr,
    }
}

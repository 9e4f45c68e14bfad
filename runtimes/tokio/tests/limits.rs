//! What a flood of connections can and cannot do to a listening node.

mod common;

use std::time::Duration;

use common::{listening_pair, Pair};
use futures_lite::StreamExt;
use peermq::{Config, Mailbox};

#[test]
fn silent_sockets_do_not_lock_an_authorized_peer_out() {
    // More sockets than the node takes connections, none of which ever
    // says a word, and a handshake timeout long enough that none is closed
    // for it during the test: the peer that does handshake gets in at once.
    common::runtime().block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let config = Config {
            handshake_timeout: Duration::from_secs(120),
            backoff_base: Duration::from_millis(20),
            backoff_cap: Duration::from_millis(250),
            ..Config::default()
        };
        let Pair {
            a, b, ida, addr, ..
        } = listening_pair(tmp.path(), config).await;
        let mut silent = Vec::new();
        for _ in 0..1_100 {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => silent.push(s),
                // Out of file descriptors: as many as the machine allows.
                Err(_) => break,
            }
        }
        assert!(silent.len() >= 100, "{} sockets", silent.len());
        tokio::time::sleep(Duration::from_millis(300)).await;
        b.send(ida, "through the crowd").await.unwrap();
        b.connect(ida).await.unwrap();
        let mut unread = a.read_stream(Mailbox::Unread, true);
        let got = tokio::time::timeout(Duration::from_secs(20), unread.next())
            .await
            .expect("the authorized peer got in within 20 s")
            .expect("a record")
            .expect("read");
        assert_eq!(got.data, b"through the crowd");
        drop(silent);
        b.shutdown().await.unwrap();
        a.shutdown().await.unwrap();
    });
}

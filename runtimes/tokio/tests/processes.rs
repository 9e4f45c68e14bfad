//! Several processes on one data directory: a `send` that another process
//! writes into a running node's directory goes out on its connection.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{listening_pair, Pair};
use futures_lite::StreamExt;
use peermq::{Config, Instant, LmdbStore, Node};
use peermq_tokio::{Mailbox, MqEvent};

/// Tells the child test what to do: `<data dir>|<recipient>`.
const CHILD_ENV: &str = "PEERMQ_TEST_CHILD_SEND";

/// The other process. Ignored in normal runs; the test below starts it.
#[test]
#[ignore = "run as a child process by a_send_from_another_process_goes_out_on_the_running_connection"]
fn child_process_sender() {
    let spec = std::env::var(CHILD_ENV).expect("started by the parent test");
    let (dir, to) = spec.split_once('|').expect("dir|peer");
    let store = LmdbStore::open(dir).expect("open the shared data directory");
    // The identity is in the store already; the seed only keys sessions,
    // and this process opens none.
    let config = Config {
        store_poll_interval: None,
        ..Config::default()
    };
    let entropy = peermq::Entropy::deterministic(1);
    let mut node = Node::open(store, config, entropy, Instant::ZERO).expect("open the node");
    let seq = node
        .send(
            to.parse().expect("a peer id"),
            b"from another process",
            Instant::ZERO,
        )
        .expect("send");
    assert_eq!(seq, 1, "built on the running node's append");
}

#[test]
fn a_send_from_another_process_goes_out_on_the_running_connection() {
    common::runtime().block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let Pair { a, b, ida, .. } = listening_pair(tmp.path(), Config::default()).await;
        let mut events = b.events();
        b.connect(ida).await.unwrap();
        while !matches!(events.next().await, Some(MqEvent::Connected { .. })) {}
        b.send(ida, "from the running node").await.unwrap();
        let mut s = a.read_stream(Mailbox::Unread, true);
        let first = s.next().await.unwrap().unwrap();
        assert_eq!(first.data, b"from the running node");

        let dir_b = tmp.path().join("b");
        let child = tokio::task::spawn_blocking(move || {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--ignored",
                    "--exact",
                    "child_process_sender",
                    "--nocapture",
                ])
                .env(CHILD_ENV, format!("{}|{ida}", dir_b.display()))
                .status()
                .unwrap()
        });
        let status = child.await.unwrap();
        assert!(status.success(), "the other process failed: {status}");
        let sent_at = std::time::Instant::now();
        let second = tokio::time::timeout(Duration::from_secs(20), s.next())
            .await
            .expect("the other process's message arrived")
            .unwrap()
            .unwrap();
        // Informational: the node polls the store every 250 ms by default.
        eprintln!(
            "arrived {:?} after the other process committed it",
            sent_at.elapsed()
        );
        assert_eq!(
            (second.seq, &second.data[..]),
            (1, &b"from another process"[..])
        );
        // The running node builds on the other process's append.
        assert_eq!(b.send(ida, "and the running node again").await.unwrap(), 2);
        let third = s.next().await.unwrap().unwrap();
        assert_eq!(third.seq, 2);
        b.shutdown().await.unwrap();
        a.shutdown().await.unwrap();
    });
}

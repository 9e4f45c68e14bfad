//! How iroh connections reach their peer: the key dialed is the key
//! reached, a direct path where one exists, a relay where none does.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures_lite::StreamExt;
use iroh_relay::server::{RelayConfig, Server, ServerConfig};
use peermq_dht::{Dht, DhtConfig};
use peermq_iroh::{Iroh, IrohTransport, Relays};
use peermq_tokio::{Mailbox, Mq, MqEvent, TokioRuntime, Transport};

fn loopback() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

/// Waits up to 20 s for `f` to give `Some`.
async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn open(dir: &tempfile::TempDir, name: &str, iroh: Iroh) -> Mq {
    Mq::builder(dir.path().join(name))
        .discovery_dir(dir.path().join("discovery"))
        .transport_for(move |key| iroh.transport(key))
        .open(TokioRuntime::new())
        .expect("open a node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_answered_by_another_key_fails_and_a_planted_address_does_not_keep_the_key_out_of_reach(
) {
    let dir = tempfile::tempdir().unwrap();
    let direct = || Iroh::new().relays(Relays::Disabled);
    let (a, c) = (open(&dir, "a", direct()), open(&dir, "c", direct()));
    let (ida, idb) = (a.id().await, {
        let b = open(&dir, "b-id", direct());
        let id = b.id().await;
        b.shutdown().await.unwrap();
        id
    });
    let at_a = a.listen(loopback()).await.unwrap();
    let at_c = c.listen(loopback()).await.unwrap();

    // At C's address, C's endpoint answers: a dial for A's key fails there
    // (iroh's TLS proves the key) before a byte of ours is sent.
    let probe = IrohTransport::new(&peermq::Keypair::from_bytes(&[7; 32]), direct()).unwrap();
    assert!(probe.connect(Some(ida), at_c).await.is_err());
    probe.close().await;

    // Someone plants C's address under A's key, newer than A's own entry.
    // B still reaches A (iroh may race the planted path and lose the dial;
    // the core's backoff dials again), and the connection it lists goes to
    // A's own address.
    let planted = dir.path().join("discovery").join(format!(
        "{ida}.{}.{}.addr",
        std::process::id(),
        at_c.port()
    ));
    std::fs::write(&planted, format!("{at_c}\n")).unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&planted)
        .and_then(|f| f.set_modified(later))
        .unwrap();
    a.add_peer(idb, None).await.unwrap();
    let b = open(&dir, "b-id", direct());
    b.send(ida, "through").await.unwrap();
    b.connect(ida).await.unwrap();
    let mut inbox = a.read_stream(Mailbox::Unread, true);
    let got = tokio::time::timeout(Duration::from_secs(30), inbox.next())
        .await
        .expect("B reaches A despite the planted address")
        .unwrap()
        .unwrap();
    assert_eq!(got.data, b"through");
    let live = eventually("B's connection listed", async || {
        b.connections()
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.peer == ida)
    })
    .await;
    assert_eq!(live.route.transport, "iroh");
    assert!(!live.route.relayed);
    assert_eq!(live.route.remote, Some(at_a.to_string()));
    for n in [b, a, c] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_direct_path_messages_and_acks_go_through_a_relay() {
    let mut config = ServerConfig::default();
    config.relay = Some(RelayConfig::new(loopback()));
    let relay = Server::spawn(config).await.expect("start a relay");
    let url: peermq_iroh::RelayUrl = format!("http://{}", relay.http_addr().unwrap())
        .parse()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relayed = || {
        Iroh::new()
            .relays(Relays::Custom(vec![url.clone()]))
            .relay_only(true)
    };
    let (a, b) = (open(&dir, "a", relayed()), open(&dir, "b", relayed()));
    let (ida, idb) = (a.id().await, b.id().await);
    a.add_peer(idb, None).await.unwrap();
    a.listen(loopback()).await.unwrap();
    let mut events = b.events();
    for text in ["one", "two", "three"] {
        b.send(ida, text).await.unwrap();
    }
    b.connect(ida).await.unwrap();

    let mut inbox = a.read_stream(Mailbox::Unread, true);
    let mut got = Vec::new();
    while got.len() < 3 {
        let next = tokio::time::timeout(Duration::from_secs(20), inbox.next())
            .await
            .expect("messages arrive through the relay")
            .expect("stream open")
            .expect("read");
        a.archive(next.from, next.seq).await.unwrap();
        got.push(String::from_utf8(next.data).unwrap());
    }
    assert_eq!(got, ["one", "two", "three"]);
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(e) = events.next().await {
            if matches!(e, MqEvent::Acked { end: 3, .. }) {
                return;
            }
        }
    })
    .await
    .expect("the acknowledgements come back through the relay");

    let live = eventually("B's connection listed", async || {
        b.connections()
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.peer == ida)
    })
    .await;
    assert_eq!(live.route.transport, "iroh");
    assert!(live.route.relayed, "{}", live.route);
    assert_eq!(live.route.remote, Some(url.to_string()));
    for n in [b, a] {
        n.shutdown().await.unwrap();
    }
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_is_reached_by_its_key_alone_through_the_dht() {
    let net = mainline::Testnet::builder(5).build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str| {
        let config = DhtConfig::default()
            .bootstrap(net.bootstrap.clone())
            .loopback(true);
        Mq::builder(dir.path().join(name))
            // No local discovery, no relay, no address: only the DHT says
            // where A is.
            .local_discovery(false)
            .transport_for(move |key| {
                let dht = Dht::new(key, config)?;
                Iroh::new()
                    .relays(Relays::Disabled)
                    .bind_addr(loopback())
                    .dht(dht)
                    .transport(key)
            })
            .open(TokioRuntime::new())
            .unwrap()
    };
    let (a, b) = (open("a"), open("b"));
    let (ida, idb) = (a.id().await, b.id().await);
    a.add_peer(idb, None).await.unwrap();
    a.listen(loopback()).await.unwrap();
    b.send(ida, "by key").await.unwrap();
    b.connect(ida).await.unwrap();
    let mut inbox = a.read_stream(Mailbox::Unread, true);
    let got = tokio::time::timeout(Duration::from_secs(60), inbox.next())
        .await
        .expect("B finds A through the DHT")
        .unwrap()
        .unwrap();
    assert_eq!(got.data, b"by key");
    let live = b.connections().await.unwrap();
    assert!(live.iter().any(|c| c.peer == ida && !c.route.relayed));
    for n in [b, a] {
        n.shutdown().await.unwrap();
    }
}

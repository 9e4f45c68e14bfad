//! Discovery by key on a Mainline DHT test network on loopback: no
//! machine here reaches the public DHT, and none needs to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use mainline::Testnet;
use peermq::Keypair;
use peermq_dht::{Dht, DhtConfig, Record, MAX_LOOKUPS, MAX_MISSES};
use peermq_tokio::{Mailbox, Mq, TokioRuntime};

fn testnet() -> Testnet {
    Testnet::builder(5)
        .build()
        .expect("start a DHT test network")
}

fn config(net: &Testnet) -> DhtConfig {
    DhtConfig::default()
        .bootstrap(net.bootstrap.clone())
        .loopback(true)
}

/// Waits up to 30 s for `dht` to find `peer` with `want` as its record.
async fn resolves_to(dht: &Dht, peer: &peermq::PeerId, want: &Record) -> Duration {
    let start = Instant::now();
    loop {
        if dht.resolve(peer).await.as_ref() == Some(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{peer} never resolved to {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_reached_by_its_key_alone_through_the_dht() {
    let net = testnet();
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str| {
        let config = config(&net);
        Mq::builder(dir.path().join(name))
            // Nothing on this machine or LAN tells where A is: only the DHT.
            .local_discovery(false)
            .discovery_for(move |key| Ok(Dht::new(key, config)? as Arc<_>))
            .open(TokioRuntime::new())
            .unwrap()
    };
    let (a, b) = (open("a"), open("b"));
    let (ida, idb) = (a.id().await, b.id().await);
    a.add_peer(idb, None).await.unwrap();
    a.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    b.send(ida, "found you").await.unwrap();
    b.connect(ida).await.unwrap();
    let mut inbox = a.read_stream(Mailbox::Unread, true);
    let got = tokio::time::timeout(Duration::from_secs(60), inbox.next())
        .await
        .expect("B finds A on the DHT and delivers")
        .unwrap()
        .unwrap();
    assert_eq!(got.data, b"found you");
    for n in [b, a] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_publishes_where_it_is_now() {
    let net = testnet();
    let key = Keypair::from_bytes(&[3; 32]);
    let at = |port: u16| -> Vec<SocketAddr> { vec![SocketAddr::from(([127, 0, 0, 1], port))] };
    let reader = Dht::new(&Keypair::from_bytes(&[4; 32]), config(&net)).unwrap();

    let first = Dht::new(&key, config(&net)).unwrap();
    first.set_addresses(at(4001));
    first.set_relay(Some("http://relay.test/".into()));
    let mailbox = Keypair::from_bytes(&[8; 32]).peer_id();
    first.set_mailboxes(vec![mailbox]);
    let want = Record {
        addrs: at(4001),
        relay: Some("http://relay.test/".into()),
        mailboxes: vec![mailbox],
    };
    resolves_to(&reader, &key.peer_id(), &want).await;
    drop(first);

    let again = Dht::new(&key, config(&net)).unwrap();
    again.set_addresses(at(4002));
    let fresh = Dht::new(&Keypair::from_bytes(&[5; 32]), config(&net)).unwrap();
    let want = Record {
        addrs: at(4002),
        relay: None,
        mailboxes: Vec::new(),
    };
    resolves_to(&fresh, &key.peer_id(), &want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_lookups_for_unknown_keys_is_bounded_in_memory_and_time() {
    let net = testnet();
    let dht = Arc::new(Dht::new(&Keypair::from_bytes(&[6; 32]), config(&net)).unwrap());
    let unknown: Vec<peermq::PeerId> = (0..2000u32)
        .map(|i| {
            let mut seed = [7u8; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            Keypair::from_bytes(&seed).peer_id()
        })
        .collect();
    // All at once: at most MAX_LOOKUPS run (each until the DHT has
    // answered, a couple of seconds for a key nobody published); the rest
    // answer "not found" at once, and the driver's backoff asks again.
    let start = Instant::now();
    let tasks: Vec<_> = unknown
        .iter()
        .map(|peer| {
            let (dht, peer) = (dht.clone(), *peer);
            tokio::spawn(async move { dht.resolve(&peer).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), None);
    }
    let took = start.elapsed();
    assert!(took < Duration::from_secs(60), "the flood took {took:?}");
    assert_eq!(dht.lookups_under_way(), 0);
    let ran = dht.remembered_misses();
    assert!((1..=MAX_LOOKUPS).contains(&ran), "{ran} lookups ran");
    // A key just missed is answered from memory, without a lookup.
    let missed = unknown
        .iter()
        .find(|p| dht.is_remembered_miss(p))
        .copied()
        .expect("a remembered miss");
    let again = Instant::now();
    assert_eq!(dht.resolve(&missed).await, None);
    assert!(again.elapsed() < Duration::from_secs(1));
    assert!(dht.remembered_misses() <= MAX_MISSES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_finds_an_absent_recipients_mailbox_in_its_record() {
    let net = testnet();
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str, mailbox: bool| {
        let config = config(&net);
        let mut b = Mq::builder(dir.path().join(name))
            .local_discovery(false)
            .discovery_for(move |key| Ok(Dht::new(key, config)? as Arc<_>));
        if mailbox {
            b = b.mailbox(peermq::MailboxLimits::default());
        }
        b.open(TokioRuntime::new()).unwrap()
    };
    let (m, r, a) = (open("m", true), open("r", false), open("a", false));
    let (idm, idr, ida) = (m.id().await, r.id().await, a.id().await);
    m.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    // R names M (its record says so from now on) and tells it, then goes.
    r.add_peer(ida, None).await.unwrap();
    let mut events = r.events();
    r.add_mailbox(idm).await.unwrap();
    while !matches!(events.next().await, Some(peermq_tokio::MqEvent::Connected { peer }) if peer == idm)
    {
    }
    let published = Dht::new(&Keypair::from_bytes(&[11; 32]), config(&net)).unwrap();
    let record = loop {
        match published.resolve(&idr).await {
            Some(rec) if rec.mailboxes == vec![idm] => break rec,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert_eq!(record.mailboxes, vec![idm]);
    r.shutdown().await.unwrap();
    // A has never met R, and R is away: A's send ends up at M.
    a.send(idr, "while you were out").await.unwrap();
    a.connect(idr).await.unwrap();
    let start = Instant::now();
    loop {
        let held: u64 = m
            .mail_status()
            .await
            .unwrap()
            .carried
            .iter()
            .map(|c| c.held)
            .sum();
        if held == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the mail never reached the mailbox"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(a
        .mail_status()
        .await
        .unwrap()
        .routes
        .iter()
        .any(|(to, boxes)| *to == idr && boxes.contains(&idm)));
    a.shutdown().await.unwrap();
    m.shutdown().await.unwrap();
}

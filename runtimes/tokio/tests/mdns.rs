//! LAN discovery over multicast DNS: separate mDNS daemons in this process
//! find each other through the host's multicast loopback, as peers on one
//! LAN would.

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use peermq_tokio::{Config, Discovery, Mailbox, MdnsDiscovery, Mq, MqEvent, PeerId, TokioRuntime};

/// mDNS probes a name for about a second before announcing it, and answers
/// are sent with random delays: allow far more than that.
const PATIENCE: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("start a tokio runtime")
}

/// An id no other test (nor another run) uses.
fn fresh_peer() -> PeerId {
    let mut id = [0u8; 32];
    for chunk in id.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::UNIX_EPOCH
                .elapsed()
                .unwrap_or_default()
                .as_nanos(),
        );
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    PeerId(id)
}

fn mdns() -> MdnsDiscovery {
    MdnsDiscovery::new()
        .expect("start mDNS discovery")
        .locate_wait(Duration::from_millis(500))
}

/// Polls `d` until `done` holds for what it locates for `peer`.
async fn locate_until(
    d: &MdnsDiscovery,
    peer: &PeerId,
    what: &str,
    done: impl Fn(&[SocketAddr]) -> bool,
) -> Vec<SocketAddr> {
    let start = Instant::now();
    loop {
        let found = d.locate(peer).await.expect("locate");
        if done(&found) {
            return found;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "{what}: still {found:?} after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn an_announced_listener_is_located_by_another_daemon_and_forgotten_on_withdraw() {
    runtime().block_on(async {
        let (announcer, locator) = (mdns(), mdns());
        let peer = fresh_peer();
        // A real listener, so that the located address is shown to reach it.
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let bound = listener.local_addr().unwrap();
        assert!(locator.locate(&peer).await.unwrap().is_empty());

        announcer.announce(&peer, bound).unwrap();
        let found = locate_until(&locator, &peer, "announced", |f| !f.is_empty()).await;
        for addr in &found {
            assert_eq!(addr.port(), bound.port(), "{found:?}");
            assert!(
                addr.is_ipv4(),
                "a 0.0.0.0 listener takes IPv4 only: {found:?}"
            );
        }
        let dialed = tokio::time::timeout(
            PATIENCE,
            futures_lite::future::zip(tokio::net::TcpStream::connect(found[0]), listener.accept()),
        )
        .await
        .expect("the located address accepts in time");
        dialed.0.expect("the located address is the listener's");
        dialed.1.expect("the listener accepted it");

        announcer.withdraw(&peer, bound);
        locate_until(&locator, &peer, "withdrawn", |f| f.is_empty()).await;
    });
}

#[test]
fn a_listener_on_one_lan_address_is_located_at_exactly_that_address() {
    runtime().block_on(async {
        let (announcer, locator) = (mdns(), mdns());
        // Learn a LAN address of this host the way a peer would; finding
        // one also shows that multicast works beyond loopback.
        let probe = fresh_peer();
        let wildcard: SocketAddr = "0.0.0.0:4001".parse().unwrap();
        announcer.announce(&probe, wildcard).unwrap();
        let is_lan = |a: &SocketAddr| !a.ip().is_loopback();
        let found = locate_until(&locator, &probe, "a LAN address of a wildcard", |f| {
            f.iter().any(is_lan)
        })
        .await;
        let lan = found.iter().copied().find(is_lan).unwrap().ip();
        announcer.withdraw(&probe, wildcard);

        let peer = fresh_peer();
        let addr = SocketAddr::new(lan, 4002);
        announcer.announce(&peer, addr).unwrap();
        let found = locate_until(&locator, &peer, "announced", |f| !f.is_empty()).await;
        assert_eq!(found, vec![addr]);
    });
}

#[test]
fn dropping_the_discovery_withdraws_its_listeners() {
    runtime().block_on(async {
        let locator = mdns();
        let peer = fresh_peer();
        let announcer = mdns();
        announcer
            .announce(&peer, "0.0.0.0:4003".parse().unwrap())
            .unwrap();
        locate_until(&locator, &peer, "announced", |f| !f.is_empty()).await;
        drop(announcer);
        locate_until(&locator, &peer, "dropped", |f| f.is_empty()).await;
    });
}

#[test]
fn an_unknown_peer_is_not_found_after_the_bounded_wait() {
    runtime().block_on(async {
        let d = MdnsDiscovery::new()
            .unwrap()
            .locate_wait(Duration::from_millis(300));
        let start = Instant::now();
        assert!(d.locate(&fresh_peer()).await.unwrap().is_empty());
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    });
}

/// Two nodes that know nothing of each other's address: only mDNS tells
/// the dialer where the listener is.
#[test]
fn two_nodes_connect_through_mdns_alone() {
    runtime().block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let open = |name: &str| {
            Mq::builder(tmp.path().join(name))
                .config(Config {
                    backoff_cap: Duration::from_secs(1),
                    ..Config::default()
                })
                .local_discovery(false)
                .discovery(Arc::new(mdns().locate_wait(Duration::from_secs(2))))
                .open(TokioRuntime::new())
                .unwrap()
        };
        let (a, b) = (open("a"), open("b"));
        let (ida, idb) = (a.id().await, b.id().await);
        a.add_peer(idb, None).await.unwrap();
        let bound = a.listen("0.0.0.0:0".parse().unwrap()).await.unwrap();
        let mut events = b.events();
        b.send(ida, "found on the LAN").await.unwrap();
        b.connect(ida).await.unwrap();
        tokio::time::timeout(PATIENCE, async {
            loop {
                match events.next().await {
                    Some(MqEvent::Connected { .. }) => break,
                    Some(_) => continue,
                    None => panic!("b's events ended"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("b did not reach a (listening on {bound}) in {PATIENCE:?}"));
        let mut inbox = a.read_stream(Mailbox::Unread, true);
        let got = tokio::time::timeout(PATIENCE, inbox.next())
            .await
            .expect("the message arrives in time")
            .expect("a's inbox stream is open")
            .expect("read the message");
        assert_eq!(got.data, b"found on the LAN");
        assert_eq!(got.from, idb);
        drop(inbox);
        b.shutdown().await.unwrap();
        a.shutdown().await.unwrap();
    });
}

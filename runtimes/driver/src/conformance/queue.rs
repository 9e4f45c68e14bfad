//! The queue's suite: [`crate::Mq`] between two nodes, run through
//! [`crate::conformance_suite!`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::StreamExt;
use peermq::{CloseReason, Config, Mailbox, Prefetch, Record};

use super::{limited, loopback, within};
use crate::{EventStream, Mq, MqError, MqEvent, Runtime};

/// Fresh directories for one test.
struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Env {
            tmp: tempfile::tempdir().expect("create a temporary directory"),
        }
    }

    fn data(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn open(&self, name: &str, rt: &Arc<dyn Runtime>) -> Mq {
        self.open_with(name, rt, config())
    }

    fn open_with(&self, name: &str, rt: &Arc<dyn Runtime>, config: Config) -> Mq {
        Mq::builder(self.data(name))
            .config(config)
            .discovery_dir(self.tmp.path().join("discovery"))
            .open(rt.clone())
            .expect("open a node")
    }
}

fn config() -> Config {
    Config {
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(250),
        ..Config::default()
    }
}

async fn wait_event(
    rt: &Arc<dyn Runtime>,
    events: &mut EventStream,
    what: &str,
    mut pred: impl FnMut(&MqEvent) -> bool,
) -> MqEvent {
    within(rt, what, async {
        loop {
            let e = events.next().await.expect("event stream ended");
            if pred(&e) {
                return e;
            }
        }
    })
    .await
}

/// The next `n` records of a stream.
async fn take(rt: &Arc<dyn Runtime>, stream: &mut crate::RecordStream, n: usize) -> Vec<Record> {
    within(rt, &format!("{n} records"), async {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(
                stream
                    .next()
                    .await
                    .expect("stream ended early")
                    .expect("read"),
            );
        }
        out
    })
    .await
}

async fn all(mq: &Mq, mailbox: Mailbox) -> Vec<Record> {
    let mut s = mq.read_stream(mailbox, false);
    let mut out = Vec::new();
    while let Some(r) = s.next().await {
        out.push(r.expect("read"));
    }
    out
}

fn texts(records: &[Record]) -> Vec<(u64, String)> {
    records
        .iter()
        .map(|r| (r.seq, String::from_utf8_lossy(&r.data).into_owned()))
        .collect()
}

fn pairs(v: &[(u64, &str)]) -> Vec<(u64, String)> {
    v.iter().map(|(s, t)| (*s, t.to_string())).collect()
}

/// Two nodes, A listening and authorizing B, B keeping a connection to A.
async fn connected_pair(env: &Env, ra: &Arc<dyn Runtime>, rb: &Arc<dyn Runtime>) -> (Mq, Mq) {
    connected_pair_with(env, ra, rb, config()).await
}

async fn connected_pair_with(
    env: &Env,
    ra: &Arc<dyn Runtime>,
    rb: &Arc<dyn Runtime>,
    a_config: Config,
) -> (Mq, Mq) {
    let a = env.open_with("a", ra, a_config);
    let b = env.open("b", rb);
    a.add_peer(b.id().await, None).await.expect("add_peer");
    a.listen(loopback()).await.expect("listen");
    let mut events = b.events();
    b.connect(a.id().await).await.expect("connect");
    wait_event(rb, &mut events, "B connects to A", |e| {
        matches!(e, MqEvent::Connected { .. })
    })
    .await;
    (a, b)
}

/// The original README: B queues messages while A is offline; A comes up,
/// reads them live, archives them, and later messages follow.
pub async fn readme_scenario(ra: Arc<dyn Runtime>, rb: Arc<dyn Runtime>) {
    limited(&ra.clone(), "readme_scenario", async move {
        let env = Env::new();
        let a = env.open("a", &ra);
        let b = env.open("b", &rb);
        let (ida, idb) = (a.id().await, b.id().await);
        a.add_peer(idb, None).await.unwrap();
        for m in ["wow", "cool", "hiiiiiiii"] {
            b.send(ida, m).await.unwrap();
        }
        // A is not listening yet: B keeps retrying until it is.
        b.connect(ida).await.unwrap();
        rb.sleep(Duration::from_millis(300)).await;
        a.listen(loopback()).await.unwrap();
        let mut unread = a.read_stream(Mailbox::Unread, true);
        let got = take(&ra, &mut unread, 3).await;
        assert!(got.iter().all(|r| r.from == idb));
        assert_eq!(
            texts(&got),
            pairs(&[(0, "wow"), (1, "cool"), (2, "hiiiiiiii")])
        );
        for r in &got {
            assert!(a.archive(r.from, r.seq).await.unwrap());
        }
        assert!(all(&a, Mailbox::Unread).await.is_empty());
        assert_eq!(texts(&all(&a, Mailbox::Archived).await), texts(&got));
        b.send(ida, "beep").await.unwrap();
        b.send(ida, "boop").await.unwrap();
        let more = take(&ra, &mut unread, 2).await;
        assert_eq!(texts(&more), pairs(&[(3, "beep"), (4, "boop")]));
        assert!(a.archive(idb, 3).await.unwrap());
        assert!(
            !a.archive(idb, 3).await.unwrap(),
            "archiving twice reports it was already processed"
        );
        b.shutdown().await.unwrap();
        a.shutdown().await.unwrap();
    })
    .await
}

/// Both peers send and receive over one connection.
pub async fn both_directions(ra: Arc<dyn Runtime>, rb: Arc<dyn Runtime>) {
    limited(&ra.clone(), "both_directions", async move {
        let env = Env::new();
        let a = env.open("a", &ra);
        let b = env.open("b", &rb);
        let (ida, idb) = (a.id().await, b.id().await);
        a.add_peer(idb, None).await.unwrap();
        b.add_peer(ida, None).await.unwrap();
        a.send(idb, "from a").await.unwrap();
        b.send(ida, "from b").await.unwrap();
        a.listen(loopback()).await.unwrap();
        b.connect(ida).await.unwrap();
        let mut at_a = a.read_stream(Mailbox::Unread, true);
        let mut at_b = b.read_stream(Mailbox::Unread, true);
        assert_eq!(
            texts(&take(&ra, &mut at_a, 1).await),
            pairs(&[(0, "from b")])
        );
        assert_eq!(
            texts(&take(&rb, &mut at_b, 1).await),
            pairs(&[(0, "from a")])
        );
        a.send(idb, "again").await.unwrap();
        b.send(ida, "and again").await.unwrap();
        assert_eq!(
            texts(&take(&rb, &mut at_b, 1).await),
            pairs(&[(1, "again")])
        );
        assert_eq!(
            texts(&take(&ra, &mut at_a, 1).await),
            pairs(&[(1, "and again")])
        );
        let status = a.peers().await.unwrap();
        let sb = status.iter().find(|s| s.peer == idb).expect("status of B");
        assert!(sb.connected && sb.authorized);
        assert_eq!((sb.sent, sb.received), (2, 2));
        b.shutdown().await.unwrap();
        a.shutdown().await.unwrap();
    })
    .await
}

/// The listener goes away and comes back on another port of the same data
/// directory; the dialer finds it again through discovery and delivers
/// what was queued meanwhile.
pub async fn reconnects_after_listener_restart(ra: Arc<dyn Runtime>, rb: Arc<dyn Runtime>) {
    limited(
        &ra.clone(),
        "reconnects_after_listener_restart",
        async move {
            let env = Env::new();
            let (a, b) = connected_pair(&env, &ra, &rb).await;
            let (ida, idb) = (a.id().await, b.id().await);
            b.send(ida, "before").await.unwrap();
            let mut s = a.read_stream(Mailbox::Unread, true);
            assert_eq!(texts(&take(&ra, &mut s, 1).await), pairs(&[(0, "before")]));
            drop(s);
            let mut events = b.events();
            a.shutdown().await.unwrap();
            wait_event(&rb, &mut events, "B sees A go", |e| {
                matches!(e, MqEvent::Disconnected { .. })
            })
            .await;
            assert!(matches!(a.send(idb, "x").await, Err(MqError::Closed)));
            b.send(ida, "while away").await.unwrap();
            rb.sleep(Duration::from_millis(200)).await;
            let a = env.open("a", &ra);
            assert_eq!(a.id().await, ida, "the identity survives a restart");
            a.listen(loopback()).await.unwrap();
            wait_event(
                &rb,
                &mut events,
                "B reconnects",
                |e| matches!(e, MqEvent::Connected { peer } if *peer == ida),
            )
            .await;
            let mut s = a.read_stream(Mailbox::Unread, true);
            let got = take(&ra, &mut s, 2).await;
            assert_eq!(texts(&got), pairs(&[(0, "before"), (1, "while away")]));
            b.shutdown().await.unwrap();
            a.shutdown().await.unwrap();
        },
    )
    .await
}

/// A dialer the listener did not authorize is refused and exchanges
/// nothing, until it is authorized; its retries then get in.
pub async fn unauthorized_dialer_is_refused(ra: Arc<dyn Runtime>, rb: Arc<dyn Runtime>) {
    limited(&ra.clone(), "unauthorized_dialer_is_refused", async move {
        let env = Env::new();
        let a = env.open("a", &ra);
        let b = env.open("b", &rb);
        let (ida, idb) = (a.id().await, b.id().await);
        a.send(idb, "secret for b").await.unwrap();
        b.send(ida, "hello").await.unwrap();
        a.listen(loopback()).await.unwrap();
        let mut a_events = a.events();
        b.connect(ida).await.unwrap();
        let refused = wait_event(&ra, &mut a_events, "A refuses B", |e| {
            matches!(e, MqEvent::Disconnected { .. } | MqEvent::Connected { .. })
        })
        .await;
        assert!(
            matches!(&refused, MqEvent::Disconnected { reason: CloseReason::Unauthorized(p), .. } if *p == idb),
            "{refused:?}"
        );
        assert!(all(&a, Mailbox::Unread).await.is_empty());
        assert!(all(&b, Mailbox::Unread).await.is_empty());
        // Once authorized, the retrying dialer gets in.
        a.add_peer(idb, None).await.unwrap();
        let mut at_a = a.read_stream(Mailbox::Unread, true);
        let mut at_b = b.read_stream(Mailbox::Unread, true);
        assert_eq!(texts(&take(&ra, &mut at_a, 1).await), pairs(&[(0, "hello")]));
        assert_eq!(
            texts(&take(&rb, &mut at_b, 1).await),
            pairs(&[(0, "secret for b")])
        );
        b.shutdown().await.unwrap();
        a.shutdown().await.unwrap();
    })
    .await
}

/// Removing a peer closes its open connection at once and keeps it out.
pub async fn remove_peer_cuts_the_peer_off(ra: Arc<dyn Runtime>, rb: Arc<dyn Runtime>) {
    limited(&ra.clone(), "remove_peer_cuts_the_peer_off", async move {
        let env = Env::new();
        let (a, b) = connected_pair(&env, &ra, &rb).await;
        let (ida, idb) = (a.id().await, b.id().await);
        b.send(ida, "first").await.unwrap();
        let mut s = a.read_stream(Mailbox::Unread, true);
        assert_eq!(texts(&take(&ra, &mut s, 1).await), pairs(&[(0, "first")]));
        let mut a_events = a.events();
        assert!(a.remove_peer(idb).await.unwrap());
        assert!(!a.remove_peer(idb).await.unwrap());
        wait_event(&ra, &mut a_events, "A drops B", |e| {
            matches!(e, MqEvent::Disconnected { reason: CloseReason::PeerRemoved, .. })
        })
        .await;
        b.send(ida, "after removal").await.unwrap();
        // B keeps redialing (every 250 ms at most) and is refused each time.
        rb.sleep(Duration::from_millis(800)).await;
        let mut refused = 0;
        while let Some(Some(e)) = crate::timeout(&*ra, Duration::ZERO, a_events.next()).await {
            assert!(!matches!(e, MqEvent::Connected { .. }), "B got back in");
            if matches!(e, MqEvent::Disconnected { reason: CloseReason::Unauthorized(p), .. } if p == idb)
            {
                refused += 1;
            }
        }
        assert!(refused >= 1, "B's redials were refused");
        assert_eq!(texts(&all(&a, Mailbox::Unread).await), pairs(&[(0, "first")]));
        let st = a.peers().await.unwrap();
        let sb = st.iter().find(|s| s.peer == idb).expect("B is still known");
        assert!(!sb.authorized && !sb.connected);
        b.shutdown().await.unwrap();
        a.shutdown().await.unwrap();
    })
    .await
}

/// One message of 10 MiB arrives intact.
pub async fn one_10_mib_message(ra: Arc<dyn Runtime>, rb: Arc<dyn Runtime>) {
    limited(&ra.clone(), "one_10_mib_message", async move {
        let env = Env::new();
        let (a, b) = connected_pair(&env, &ra, &rb).await;
        let (ida, idb) = (a.id().await, b.id().await);
        let big: Vec<u8> = (0..10u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        assert_eq!(b.send(ida, big.clone()).await.unwrap(), 0);
        let mut s = a.read_stream(Mailbox::Unread, true);
        let got = take(&ra, &mut s, 1).await;
        assert_eq!(got[0].from, idb);
        assert!(got[0].data == big, "the 10 MiB message arrived intact");
        b.shutdown().await.unwrap();
        a.shutdown().await.unwrap();
    })
    .await
}

/// 10,000 small messages all arrive, in order, once, and are acknowledged.
pub async fn ten_thousand_small_messages(ra: Arc<dyn Runtime>, rb: Arc<dyn Runtime>) {
    limited(&ra.clone(), "ten_thousand_small_messages", async move {
        let env = Env::new();
        // The default prefetch window (4,096) is smaller than the feed, and
        // the stream reads without archiving: reading alone must move the
        // window, or the stream stalls at message 4,096.
        let (a, b) = connected_pair(&env, &ra, &rb).await;
        assert!(matches!(config().prefetch, Prefetch::Window(w) if w < 10_000));
        let ida = a.id().await;
        let mut b_events = b.events();
        for chunk in 0..10u32 {
            let batch: Vec<Vec<u8>> = (chunk * 1000..(chunk + 1) * 1000)
                .map(|i| format!("message {i}").into_bytes())
                .collect();
            b.send_batch(ida, batch).await.unwrap();
        }
        let mut s = a.read_stream(Mailbox::Unread, true);
        let got = take(&ra, &mut s, 10_000).await;
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.seq, i as u64);
            assert_eq!(r.data, format!("message {i}").into_bytes());
        }
        let mut acked = peermq::RangeSet::new();
        within(&rb, "acks of all 10,000", async {
            while !acked.contains_range(0, 10_000) {
                if let Some(MqEvent::Acked { to, start, end }) = b_events.next().await {
                    assert_eq!(to, ida);
                    acked.insert(start, end);
                }
            }
        })
        .await;
        b.shutdown().await.unwrap();
        a.shutdown().await.unwrap();
    })
    .await
}

/// With prefetch off, reading ten scattered messages of 10,000 downloads
/// those ten and nothing else.
pub async fn sparse_read(ra: Arc<dyn Runtime>, rb: Arc<dyn Runtime>) {
    limited(&ra.clone(), "sparse_read", async move {
        let env = Env::new();
        let a = env.open_with(
            "a",
            &ra,
            Config {
                prefetch: Prefetch::Window(0),
                ..config()
            },
        );
        let b = env.open("b", &rb);
        let (ida, idb) = (a.id().await, b.id().await);
        a.add_peer(idb, None).await.unwrap();
        let msgs: Vec<Vec<u8>> = (0..10_000u32)
            .map(|i| format!("{i:0>100}").into_bytes())
            .collect();
        b.send_batch(ida, msgs.clone()).await.unwrap();
        a.listen(loopback()).await.unwrap();
        b.connect(ida).await.unwrap();
        let wanted = [3u64, 777, 1234, 2500, 4096, 5000, 6001, 7777, 8888, 9999];
        for &seq in &wanted {
            let got = within(&ra, "a sparse get", a.get(idb, seq)).await.unwrap();
            assert_eq!(got.as_deref(), Some(&msgs[seq as usize][..]));
        }
        let st = a.peers().await.unwrap();
        let sb = st.iter().find(|s| s.peer == idb).expect("status of B");
        assert_eq!(sb.received, 10, "only what was read was downloaded");
        b.shutdown().await.unwrap();
        a.shutdown().await.unwrap();
    })
    .await
}

/// The sender learns of each durable receipt, as events and as a signed,
/// verifiable receipt.
pub async fn acks(ra: Arc<dyn Runtime>, rb: Arc<dyn Runtime>) {
    limited(&ra.clone(), "acks", async move {
        let env = Env::new();
        let (a, b) = connected_pair(&env, &ra, &rb).await;
        let ida = a.id().await;
        let mut events = b.events();
        b.send_batch(ida, vec![b"1".to_vec(), b"2".to_vec(), b"3".to_vec()])
            .await
            .unwrap();
        let mut acked = peermq::RangeSet::new();
        within(&rb, "acks of 3 messages", async {
            while !acked.contains_range(0, 3) {
                if let Some(MqEvent::Acked { to, start, end }) = events.next().await {
                    assert_eq!(to, ida);
                    acked.insert(start, end);
                }
            }
        })
        .await;
        let receipt = b.receipt(ida).await.unwrap().expect("a receipt");
        assert!(receipt.verify());
        assert_eq!(receipt.signer, ida);
        assert!(receipt.ranges.contains_range(0, 3));
        let st = b.peers().await.unwrap();
        let sa = st.iter().find(|s| s.peer == ida).expect("status of A");
        assert_eq!((sa.sent, sa.acked), (3, 3));
        b.shutdown().await.unwrap();
        a.shutdown().await.unwrap();
    })
    .await
}

/// Shutdown tells the peer (its close message is written out before the
/// socket closes), closes the store so the directory can be reopened at
/// once, and loses nothing that `send` had accepted.
pub async fn shutdown_flushes(ra: Arc<dyn Runtime>, rb: Arc<dyn Runtime>) {
    limited(&ra.clone(), "shutdown_flushes", async move {
        let env = Env::new();
        let (a, b) = connected_pair(&env, &ra, &rb).await;
        let (ida, idb) = (a.id().await, b.id().await);
        let mut a_events = a.events();
        let batch: Vec<Vec<u8>> = (0..100u32).map(|i| i.to_le_bytes().to_vec()).collect();
        b.send_batch(ida, batch).await.unwrap();
        b.shutdown().await.unwrap();
        let gone = wait_event(&ra, &mut a_events, "A sees B leave", |e| {
            matches!(e, MqEvent::Disconnected { .. })
        })
        .await;
        assert!(
            matches!(
                gone,
                MqEvent::Disconnected {
                    reason: CloseReason::Remote { .. },
                    ..
                }
            ),
            "B's close message was flushed before its socket closed: {gone:?}"
        );
        assert!(matches!(b.send(ida, "late").await, Err(MqError::Closed)));
        assert!(matches!(b.peers().await, Err(MqError::Closed)));
        let b = env.open("b", &rb);
        assert_eq!(b.id().await, idb);
        assert_eq!(b.send(ida, [100u8, 0, 0, 0]).await.unwrap(), 100);
        b.connect(ida).await.unwrap();
        let mut s = a.read_stream(Mailbox::Unread, true);
        let got = take(&ra, &mut s, 101).await;
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.seq, i as u64);
            assert_eq!(r.data, (i as u32).to_le_bytes());
        }
        b.shutdown().await.unwrap();
        a.shutdown().await.unwrap();
        // Shutting down twice is harmless.
        a.shutdown().await.unwrap();
    })
    .await
}

/// Someone who can write into the discovery directory plants entries under
/// A's key, newer than A's own, that point at a live listener with another
/// key (C): one unsigned, one well formed but signed by another key. Both
/// are ignored: B's first dial goes to A's real address (no `WrongPeer` on
/// the way), and the message arrives.
pub async fn forged_discovery_entries_do_not_redirect_a_dial(
    ra: Arc<dyn Runtime>,
    rb: Arc<dyn Runtime>,
) {
    limited(&ra.clone(), "forged_discovery_entries", async move {
        let env = Env::new();
        let a = env.open("a", &ra);
        let b = env.open("b", &rb);
        let c = env.open("c", &rb);
        let (ida, idb) = (a.id().await, b.id().await);
        a.add_peer(idb, None).await.unwrap();
        a.listen(loopback()).await.unwrap();
        let addr_c = c.listen(loopback()).await.unwrap();
        let dir = env.tmp.path().join("discovery");
        let pid = std::process::id();
        let later = u64::MAX / 2;
        let forger = peermq::Keypair::from_bytes(&[0x66; 32]);
        let planted = [
            (
                addr_c.port(),
                crate::LocalDiscovery::entry(&forger, pid, addr_c, later),
            ),
            (addr_c.port().wrapping_add(1), format!("{addr_c}\n")),
        ];
        for (port, text) in planted {
            std::fs::write(dir.join(format!("{ida}.{pid}.{port}.addr")), text).unwrap();
        }
        let mut events = b.events();
        b.send(ida, "through").await.unwrap();
        b.connect(ida).await.unwrap();
        let mut before = Vec::new();
        wait_event(&rb, &mut events, "B connected to A", |e| {
            before.push(format!("{e:?}"));
            matches!(e, MqEvent::Connected { peer } if *peer == ida)
        })
        .await;
        assert!(
            !before.iter().any(|e| e.contains("WrongPeer")),
            "a forged entry was dialed: {before:?}"
        );
        let mut unread = a.read_stream(Mailbox::Unread, true);
        let got = take(&ra, &mut unread, 1).await;
        assert_eq!(texts(&got), pairs(&[(0, "through")]));
        for n in [c, b, a] {
            n.shutdown().await.unwrap();
        }
    })
    .await
}

/// A discovery that searches and never finds: a DHT with no answer for
/// the key. It records when each search started and how long it ran
/// before the driver dropped it.
#[derive(Default)]
struct EndlessSearch {
    searches: std::sync::Mutex<Vec<Option<Duration>>>,
}

/// Marks one search of [`EndlessSearch`] as over when dropped.
struct Searching<'a> {
    search: &'a EndlessSearch,
    index: usize,
    started: std::time::Instant,
}

impl Drop for Searching<'_> {
    fn drop(&mut self) {
        self.search.searches.lock().unwrap()[self.index] = Some(self.started.elapsed());
    }
}

impl crate::Discovery for EndlessSearch {
    fn locate<'a>(
        &'a self,
        _peer: &'a peermq::PeerId,
    ) -> crate::BoxFuture<'a, std::io::Result<Vec<std::net::SocketAddr>>> {
        Box::pin(async move {
            let index = {
                let mut searches = self.searches.lock().unwrap();
                searches.push(None);
                searches.len() - 1
            };
            let _searching = Searching {
                search: self,
                index,
                started: std::time::Instant::now(),
            };
            std::future::pending().await
        })
    }

    fn is_slow(&self) -> bool {
        true
    }
}

/// B looks for A while A is not listening yet: this machine's discovery
/// knows nothing, so B's slow discovery (a DHT search that never answers)
/// starts. A then starts listening: B finds it on this machine and reaches
/// it at once, dropping the search, instead of waiting for the search to
/// give up (after 5 s) first.
pub async fn a_slow_search_does_not_delay_a_peer_found_nearby(
    ra: Arc<dyn Runtime>,
    rb: Arc<dyn Runtime>,
) {
    limited(&ra.clone(), "a_slow_search_does_not_delay", async move {
        let env = Env::new();
        let search = Arc::new(EndlessSearch::default());
        let a = env.open("a", &ra);
        let b = Mq::builder(env.data("b"))
            .config(config())
            .discovery_dir(env.tmp.path().join("discovery"))
            .discovery(search.clone())
            .open(rb.clone())
            .expect("open a node");
        let (ida, idb) = (a.id().await, b.id().await);
        a.add_peer(idb, None).await.unwrap();
        b.send(ida, "found nearby").await.unwrap();
        b.connect(ida).await.unwrap();
        within(&rb, "B's slow search for A", async {
            while search.searches.lock().unwrap().is_empty() {
                rb.sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        a.listen(loopback()).await.unwrap();
        let mut unread = a.read_stream(Mailbox::Unread, true);
        let got = take(&ra, &mut unread, 1).await;
        assert_eq!(texts(&got), pairs(&[(0, "found nearby")]));
        let first = search.searches.lock().unwrap()[0];
        let ran = first.expect("the search ended when A was found nearby");
        assert!(
            ran < Duration::from_secs(4),
            "B dropped the search when it found A on this machine, not when the search timed out: it ran {ran:?}"
        );
        b.shutdown().await.unwrap();
        a.shutdown().await.unwrap();
    })
    .await
}

/// A service registered beside the queue (`stats.rs`: a counter of
/// arrivals per peer) sees every message arrive, and the queue works as
/// before around it.
pub async fn a_service_beside_the_queue_sees_every_arrival(
    ra: Arc<dyn Runtime>,
    rb: Arc<dyn Runtime>,
) {
    limited(
        &ra.clone(),
        "a_service_beside_the_queue_sees_every_arrival",
        async move {
            let env = Env::new();
            let builder = Mq::builder(env.data("a"))
                .config(config())
                .discovery_dir(env.tmp.path().join("discovery"));
            let a = super::stats::open(builder, ra.clone()).expect("open a counted node");
            let b = env.open("b", &rb);
            let (ida, idb) = (a.mq.id().await, b.id().await);
            a.mq.add_peer(idb, None).await.unwrap();
            b.add_peer(ida, None).await.unwrap();
            b.send_batch(
                ida,
                vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()],
            )
            .await
            .unwrap();
            a.mq.listen(loopback()).await.unwrap();
            b.connect(ida).await.unwrap();
            let mut at_a = a.mq.read_stream(Mailbox::Unread, true);
            assert_eq!(
                texts(&take(&ra, &mut at_a, 3).await),
                pairs(&[(0, "one"), (1, "two"), (2, "three")])
            );
            let counts = a.counts().await.unwrap();
            assert_eq!(counts.get(&idb), Some(&3), "counted per peer: {counts:?}");
            assert_eq!(counts.len(), 1);
            b.shutdown().await.unwrap();
            a.mq.shutdown().await.unwrap();
        },
    )
    .await
}

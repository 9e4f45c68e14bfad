//! Broadcast feeds relayed through a mesh.

mod common;

use std::time::Duration;

use common::Net;
use peermq::{Config, Event, PeerId};

fn open_config() -> Config {
    Config {
        open: true,
        ..Config::default()
    }
}

fn broadcasts(net: &Net, i: usize) -> Vec<(PeerId, u64)> {
    net.events[i]
        .iter()
        .filter_map(|e| match e {
            Event::Broadcast { author, seq } => Some((*author, *seq)),
            _ => None,
        })
        .collect()
}

#[test]
fn events_reach_a_node_through_the_middle_one() {
    let mut net = Net::with_configs(vec![open_config(); 3]);
    let (a, b, c) = (net.ids[0], net.ids[1], net.ids[2]);
    let now = net.now;
    net.node(0).dial(b, now);
    net.node(2).dial(b, now);
    net.run_for(Duration::from_secs(1));
    for m in ["one", "two", "three"] {
        let now = net.now;
        net.node(0).broadcast(m.as_bytes(), now).unwrap();
    }
    net.run_for(Duration::from_secs(1));
    // A sees its own events, B and C receive them, in order, once.
    for i in 0..3 {
        assert_eq!(
            broadcasts(&net, i),
            vec![(a, 0), (a, 1), (a, 2)],
            "node {i}"
        );
    }
    assert_eq!(
        net.node(2).broadcast_get(a, 1).unwrap(),
        Some(b"two".to_vec())
    );
    // C answers; A gets it through B.
    let now = net.now;
    net.node(2).broadcast(b"from c", now).unwrap();
    net.run_for(Duration::from_secs(1));
    assert!(broadcasts(&net, 0).contains(&(c, 0)));
    assert_eq!(
        net.node(0).broadcast_get(c, 0).unwrap(),
        Some(b"from c".to_vec())
    );
}

#[test]
fn a_late_joiner_catches_up_from_any_relay() {
    let mut net = Net::with_configs(vec![open_config(); 3]);
    let (a, b) = (net.ids[0], net.ids[1]);
    let now = net.now;
    net.node(0).dial(b, now);
    net.run_for(Duration::from_secs(1));
    let events: Vec<Vec<u8>> = (0..500u32).map(|i| i.to_le_bytes().to_vec()).collect();
    let now = net.now;
    net.node(0).broadcast_batch(&events, now).unwrap();
    net.run_for(Duration::from_secs(1));
    // A goes offline; C joins through B alone.
    net.node(0).hang_up(&b);
    net.disconnect(0);
    let now = net.now;
    net.node(2).dial(b, now);
    net.run_for(Duration::from_secs(2));
    let got = broadcasts(&net, 2);
    assert_eq!(got.len(), 500);
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, (p, s))| *p == a && *s == i as u64));
    assert_eq!(net.node(2).broadcast_feeds(), vec![(a, 500)]);
}

#[test]
fn a_closed_node_relays_only_allowed_authors() {
    let mut configs: Vec<Config> = vec![open_config(); 3];
    configs[1].open = false;
    let mut net = Net::with_configs(configs);
    let (a, b, c) = (net.ids[0], net.ids[1], net.ids[2]);
    // B allows A and C to connect, but A is the only author it wants.
    net.node(1).add_peer(a).unwrap();
    net.node(1).add_peer(c).unwrap();
    let now = net.now;
    net.node(0).dial(b, now);
    net.node(2).dial(b, now);
    net.node(0).broadcast(b"allowed", now).unwrap();
    net.run_for(Duration::from_secs(1));
    let now = net.now;
    net.node(1).remove_peer(&c, now).unwrap();
    let now = net.now;
    net.node(2).broadcast(b"not allowed", now).unwrap();
    net.run_for(Duration::from_secs(5));
    let at_b = broadcasts(&net, 1);
    assert_eq!(at_b, vec![(a, 0)]);
    // An unknown dialer is refused by the closed node.
    let stranger = Net::with_seeded(vec![(9, open_config())]).ids[0];
    assert!(!net.node(1).is_authorized(&stranger));
}

#[test]
fn reconnecting_in_sync_costs_the_same_however_many_feeds() {
    // Thirty authors publish through a hub (node 0); node 1 syncs from it.
    let n = 32;
    let mut net = Net::with_configs(vec![open_config(); n]);
    let hub = net.ids[0];
    for i in 2..n {
        let now = net.now;
        net.node(i)
            .broadcast(format!("event from {i}").as_bytes(), now)
            .unwrap();
        net.node(i).dial(hub, now);
    }
    net.run_for(Duration::from_secs(2));
    let now = net.now;
    net.node(1).dial(hub, now);
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.node(1).broadcast_feeds().len(), n - 2);
    // Reconnect: only the summaries (and the handshake) cross.
    net.node(1).hang_up(&hub);
    let link_before = net.sent_bytes.clone();
    let now = net.now;
    net.node(1).dial(hub, now);
    net.run_for(Duration::from_millis(100));
    let sent_by_1 = net.sent_bytes[1] - link_before[1];
    // Handshake (~250 B) plus one summary; no per-feed traffic.
    assert!(
        sent_by_1 < 600,
        "node 1 sent {sent_by_1} bytes to reconnect with {} feeds",
        n - 2
    );
}

#[test]
fn an_author_over_its_byte_quota_is_no_longer_fetched_and_its_announcer_is_told_politely() {
    let mut net = Net::with_configs(vec![
        open_config(),
        Config {
            max_author_bytes: 10_000,
            ..open_config()
        },
    ]);
    let (a, b) = (net.ids[0], net.ids[1]);
    let now = net.now;
    net.node(1).dial(a, now);
    net.run_for(Duration::from_secs(1));
    let big: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1000]).collect();
    let now = net.now;
    net.node(0).broadcast_batch(&big, now).unwrap();
    net.run_for(Duration::from_secs(1));
    let held = |net: &mut Net| {
        net.node(1)
            .broadcast_feeds()
            .into_iter()
            .find(|(author, _)| *author == a)
            .map_or(0, |(_, n)| n)
    };
    // One request's worth may overshoot the quota; then no more is asked.
    let first = held(&mut net);
    assert!(first > 0);
    assert!(net.node(1).refuses(&a));
    let now = net.now;
    net.node(0).broadcast_batch(&big, now).unwrap();
    net.run_for(Duration::from_secs(2));
    assert_eq!(held(&mut net), first, "nothing more is fetched");
    assert!(
        net.disconnect_reasons(1).is_empty(),
        "refused politely: {:?}",
        net.disconnect_reasons(1)
    );
    assert!(
        net.take_events(0).iter().any(|e| matches!(
            e,
            peermq::Event::RelayRefused { peer, author, reason: peermq::wire::RefuseReason::Full }
                if *peer == b && *author == a
        )),
        "and told the author why"
    );
    // B's own events still flow to A.
    let now = net.now;
    net.node(1).broadcast(b"from b", now).unwrap();
    net.run_for(Duration::from_secs(1));
    assert_eq!(
        net.node(0).broadcast_get(b, 0).unwrap(),
        Some(b"from b".to_vec())
    );
}

#[test]
fn a_flood_of_authors_announcing_one_head_each_is_bounded_and_stores_nothing() {
    use peermq::feed::{Feed, FeedDescriptor};
    use peermq::store::Table;
    use peermq::wire::Message;
    use peermq::{Instant, Keypair, MemStore, Node, RawPeer, SeededRng, Txn};

    let now = Instant::ZERO;
    let mut a = Node::open(
        MemStore::new(),
        open_config(),
        peermq::Entropy::deterministic(1),
        now,
    )
    .unwrap();
    let relay = Keypair::generate(&mut SeededRng::from_u64(77));
    let mut raw = RawPeer::dial(&relay, 3, a.id()).unwrap();
    let conn = a.accept(now);
    let pump = |a: &mut Node<MemStore>, raw: &mut RawPeer| {
        raw.pump(a, conn, now).unwrap();
    };
    pump(&mut a, &mut raw);
    assert!(raw.is_open());
    let authors = 3 * peermq::node::limits::MAX_PENDING_AUTHORS;
    let mut rng = SeededRng::from_u64(5);
    for _ in 0..authors {
        let key = Keypair::generate(&mut rng);
        let store = MemStore::new();
        let mut feed = Feed::new(FeedDescriptor::broadcast(key.peer_id()));
        let mut txn = Txn::begin(&store).unwrap();
        let head = feed
            .append_batch(&mut txn, &mut key.clone(), &[b"x".as_slice()])
            .unwrap();
        raw.send(&Message::Head {
            desc: *feed.descriptor(),
            head,
        });
    }
    pump(&mut a, &mut raw);
    let known = a.broadcast_feeds().len();
    assert!(
        known <= peermq::node::limits::MAX_PENDING_AUTHORS + 1,
        "{known} authors remembered"
    );
    let txn = Txn::begin(a.store()).unwrap();
    let mut records = 0;
    txn.scan(
        Table::Replicas,
        (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded),
        &mut |_, _| {
            records += 1;
            std::ops::ControlFlow::Continue(())
        },
    )
    .unwrap();
    assert_eq!(records, 0, "an announcement alone stores nothing");
}

#[test]
fn a_failed_commit_does_not_leave_a_relayed_feed_stuck() {
    // The replica record is written conditionally on the last one
    // committed; a failed commit must not leave the node expecting a record
    // the store never got, or every later write of that feed conflicts.
    use peermq::{ConnId, Instant, MemStore, Node};

    /// Pumps until quiet, going on past the failures the test injects.
    fn pump(a: &mut Node<MemStore>, ac: ConnId, b: &mut Node<MemStore>, bc: ConnId) {
        for _ in 0..100 {
            if peermq::pump_pair((a, ac), (b, bc), Instant::ZERO).is_ok() {
                return;
            }
        }
        panic!("the pair never went quiet");
    }
    let now = Instant::ZERO;
    let store_b = MemStore::new();
    let mut a = Node::open(
        MemStore::new(),
        open_config(),
        peermq::Entropy::deterministic(1),
        now,
    )
    .unwrap();
    let mut b = Node::open(
        store_b.clone(),
        open_config(),
        peermq::Entropy::deterministic(2),
        now,
    )
    .unwrap();
    let connect = |a: &mut Node<MemStore>, b: &mut Node<MemStore>| {
        let ac = a.connect(b.id(), now);
        let bc = b.accept(now);
        pump(a, ac, b, bc);
        (ac, bc)
    };
    let held = |b: &Node<MemStore>, author: PeerId| {
        b.broadcast_feeds()
            .into_iter()
            .find(|(x, _)| *x == author)
            .map_or(0, |(_, n)| n)
    };
    let author = a.id();
    a.broadcast_batch(&[b"1".as_slice(), b"2"], now).unwrap();
    connect(&mut a, &mut b);
    assert_eq!(held(&b, author), 2);

    store_b.fail_commits(1);
    a.broadcast_batch(&[b"3".as_slice()], now).unwrap();
    let (ac, bc) = connect(&mut a, &mut b);
    pump(&mut a, ac, &mut b, bc);
    a.broadcast_batch(&[b"4".as_slice()], now).unwrap();
    let (ac, bc) = connect(&mut a, &mut b);
    pump(&mut a, ac, &mut b, bc);
    assert_eq!(held(&b, author), 4, "B takes A's events again");
    assert_eq!(b.broadcast_get(author, 3).unwrap(), Some(b"4".to_vec()));
}

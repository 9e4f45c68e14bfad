//! Fifty event emitters in a random mesh, on in-memory stores and a virtual
//! clock: every event reaches every node (convergence), and no node ever
//! delivers an event before one its author had delivered when emitting it
//! (causal order), checked against the ground truth recorded at emit time.
//! Then the same with a hostile author inside: it floods `EventPeer`
//! announcements and relays 1,100 Sybil authors' feeds (more than a node keeps of
//! authors only announced), and the honest
//! nodes still converge, within their bounds.
//!
//! Self-contained: a small deterministic driver loop in the style of the
//! core's test harness, wiring `Node`s through in-memory pipes.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use peermq::emitter::{event_peer_addresses, Book, Emitter, Schema, MAX_ADDRS_PER_AUTHOR};
use peermq::{Config, ConnId, Event, Instant, MemStore, Node, Output, PeerId};
use serde_json::json;

const NODES: usize = 50;
const EXTRA_LINKS: usize = 40;
const EVENTS: usize = 400;
const MAX_ROUNDS: usize = 200_000;

const PROTO: &str = r#"
syntax = "proto3";
message Hello { string from = 1; string message = 2; }
"#;

/// A tiny deterministic generator (splitmix64), so the test needs nothing
/// beyond the core.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

type End = (usize, ConnId);

struct Mesh {
    nodes: Vec<Node<MemStore>>,
    ems: Vec<Emitter>,
    /// What each node learned from `EventPeer` announcements, as the driver
    /// keeps it.
    books: Vec<Book>,
    /// Nodes `0..honest` are honest: causal order and convergence are
    /// checked for their events.
    honest: usize,
    ids: Vec<PeerId>,
    index: BTreeMap<PeerId, usize>,
    links: BTreeMap<End, End>,
    wire: VecDeque<(End, Vec<u8>)>,
    pending: Vec<bool>,
    now: Instant,
    /// Per node, how many events of each author it delivered so far.
    delivered: Vec<BTreeMap<PeerId, u64>>,
    /// Ground truth per event (author, seq): what its author had delivered
    /// of every author when it emitted it.
    truth: BTreeMap<(PeerId, u64), BTreeMap<PeerId, u64>>,
    total: Vec<usize>,
}

impl Mesh {
    /// `n` nodes in open mode, the first `honest` of them honest, each
    /// configured by `config` from the defaults.
    fn new(n: usize, honest: usize, config: impl Fn(usize, Config) -> Config) -> Self {
        let schema = Schema::parse("mesh.proto", PROTO).expect("schema compiles");
        let mut nodes = Vec::new();
        let mut ems = Vec::new();
        for i in 0..n {
            let base = Config {
                open: true,
                store_poll_interval: None,
                ..Config::default()
            };
            let config = config(i, base);
            let entropy = peermq::Entropy::deterministic(1000 + i as u64);
            let node =
                Node::open(MemStore::new(), config, entropy, Instant::ZERO).expect("open node");
            ems.push(Emitter::open(&node, schema.clone()).expect("open emitter"));
            nodes.push(node);
        }
        let ids: Vec<PeerId> = nodes.iter().map(|n| n.id()).collect();
        let index = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        Mesh {
            nodes,
            ems,
            books: vec![Book::default(); n],
            honest,
            ids,
            index,
            links: BTreeMap::new(),
            wire: VecDeque::new(),
            pending: vec![false; n],
            now: Instant::ZERO,
            delivered: vec![BTreeMap::new(); n],
            truth: BTreeMap::new(),
            total: vec![0; n],
        }
    }

    fn link(&mut self, i: usize, j: usize) {
        let peer = self.ids[j];
        let a = self.nodes[i].connect(peer, self.now);
        let b = self.nodes[j].accept(self.now);
        self.links.insert((i, a), (j, b));
        self.links.insert((j, b), (i, a));
    }

    fn emit(&mut self, i: usize, n: usize) {
        let text = format!("n{i}-{n}");
        let mut payload = vec![0x0a, text.len() as u8];
        payload.extend_from_slice(text.as_bytes());
        let seq = self.ems[i]
            .emit_encoded(&mut self.nodes[i], "Hello", &payload, self.now)
            .expect("emit");
        self.record_truth(i, seq);
    }

    /// Whether `author` is one of the honest nodes (not the rogue, nor one
    /// of the authors it relays).
    fn is_honest(&self, author: &PeerId) -> bool {
        self.index.get(author).is_some_and(|&a| a < self.honest)
    }

    /// What `i` had delivered of honest authors when it emitted event `seq`.
    fn record_truth(&mut self, i: usize, seq: u64) {
        let honest: BTreeMap<PeerId, u64> = self.delivered[i]
            .iter()
            .filter(|(a, _)| self.is_honest(a))
            .map(|(a, n)| (*a, *n))
            .collect();
        self.truth.insert((self.ids[i], seq), honest);
    }

    /// `i` announces, in one `EventPeer`, `count` addresses for `id`.
    fn announce(&mut self, i: usize, id: PeerId, count: u16) {
        let addresses: Vec<_> = (0..count)
            .map(|p| json!({"ip": "127.0.0.1", "port": p}))
            .collect();
        let value = json!({"id": id.to_string(), "addresses": addresses});
        let seq = self.ems[i]
            .emit(&mut self.nodes[i], "EventPeer", &value, self.now)
            .expect("emit an announcement");
        self.record_truth(i, seq);
    }

    /// Runs outputs, one wire chunk per link-step, and deliveries; returns
    /// whether anything moved.
    fn round(&mut self) -> bool {
        let mut moved = false;
        for i in 0..self.nodes.len() {
            while let Some(out) = self.nodes[i].poll_output() {
                moved = true;
                match out {
                    Output::Transmit { conn, bytes } => {
                        if let Some(to) = self.links.get(&(i, conn)) {
                            if !bytes.is_empty() {
                                self.wire.push_back((*to, bytes));
                            }
                        }
                    }
                    Output::Close { conn, reason } => {
                        panic!("node {i} closed {conn}: {reason}");
                    }
                    Output::Event(Event::Broadcast { .. }) => self.pending[i] = true,
                    Output::Event(_) | Output::Dial { .. } => {}
                }
            }
        }
        for _ in 0..self.wire.len().min(64) {
            if let Some(((to, conn), bytes)) = self.wire.pop_front() {
                moved = true;
                self.nodes[to]
                    .handle_input(conn, &bytes, self.now)
                    .expect("handle_input");
            }
        }
        for i in 0..self.nodes.len() {
            if std::mem::take(&mut self.pending[i]) {
                let got = self.ems[i]
                    .deliver_ready(&mut self.nodes[i])
                    .expect("deliver");
                for d in got {
                    self.check(i, d.author, d.seq);
                    let Some(v) = d.value.as_ref() else {
                        panic!("node {i} could not decode an event")
                    };
                    if d.name == "Hello" {
                        assert_eq!(v["message"], "");
                    } else if let Some(list) = event_peer_addresses(v, &d.author) {
                        // As the driver does with what it delivers.
                        let me = self.ids[i];
                        self.books[i]
                            .learn(self.nodes[i].store(), &me, d.author, list)
                            .expect("the book records");
                    }
                }
            }
        }
        moved
    }

    fn check(&mut self, i: usize, author: PeerId, seq: u64) {
        if !self.is_honest(&author) {
            return;
        }
        let have = self.delivered[i].get(&author).copied().unwrap_or(0);
        assert_eq!(
            seq, have,
            "node {i} delivers author {author}'s events in order"
        );
        let deps = self
            .truth
            .get(&(author, seq))
            .unwrap_or_else(|| panic!("node {i} delivered an event nobody emitted"));
        for (dep, n) in deps {
            let got = self.delivered[i].get(dep).copied().unwrap_or(0);
            assert!(
                got >= *n,
                "causal order broken at node {i}: event {seq} of node {} came before event {} of node {}",
                self.index[&author],
                n - 1,
                self.index[dep]
            );
        }
        self.delivered[i].insert(author, have + 1);
        self.total[i] += 1;
    }

    fn tick(&mut self, d: Duration) {
        self.now = self.now + d;
        for n in &mut self.nodes {
            if n.poll_timeout().is_some_and(|t| t <= self.now) {
                n.handle_timeout(self.now).expect("timers");
            }
        }
    }

    /// Runs until nothing moves (a bounded number of rounds).
    fn settle(&mut self) {
        for _ in 0..MAX_ROUNDS {
            let moved = self.round();
            self.tick(Duration::from_millis(1));
            if !moved {
                return;
            }
        }
        panic!("the mesh did not settle");
    }

    /// Every honest node delivered every honest author's events.
    fn honest_converged(&self) -> bool {
        let mut emitted = vec![0u64; self.honest];
        for (author, _) in self.truth.keys() {
            if let Some(&a) = self.index.get(author).filter(|&&a| a < self.honest) {
                emitted[a] += 1;
            }
        }
        (0..self.honest).all(|i| {
            (0..self.honest)
                .all(|a| self.delivered[i].get(&self.ids[a]).copied().unwrap_or(0) == emitted[a])
        })
    }

    /// Links nodes `0..n` by a random spanning tree, which keeps them
    /// connected, and `extra` more links, which add alternative paths so
    /// that events race each other along several routes.
    fn link_randomly(&mut self, rng: &mut Rng, n: usize, extra: usize) {
        for i in 1..n {
            let j = rng.below(i);
            self.link(i, j);
        }
        let mut added = 0;
        while added < extra {
            let (i, j) = (rng.below(n), rng.below(n));
            let linked = self
                .links
                .iter()
                .any(|((a, _), (b, _))| *a == i && *b == j || *a == j && *b == i);
            if i != j && !linked {
                self.link(i, j);
                added += 1;
            }
        }
    }
}

#[test]
fn fifty_emitters_converge_in_causal_order() {
    let mut rng = Rng(0x5eed_0007);
    let mut m = Mesh::new(NODES, NODES, |_, c| c);
    m.link_randomly(&mut rng, NODES, EXTRA_LINKS);
    let mut emitted = 0;
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < MAX_ROUNDS, "the mesh did not converge");
        // Emit while traffic flows, so that events depend on events still
        // in flight elsewhere.
        if emitted < EVENTS && rng.below(3) == 0 {
            let i = rng.below(NODES);
            m.emit(i, emitted);
            emitted += 1;
        }
        let moved = m.round();
        m.tick(Duration::from_millis(1));
        if emitted == EVENTS && !moved && m.total.iter().all(|&t| t == EVENTS) {
            break;
        }
    }
    // Every event reached every node, and causal chains did form: some
    // event depends on another author's.
    assert!(m.total.iter().all(|&t| t == EVENTS));
    let chained = m
        .truth
        .iter()
        .filter(|((author, _), deps)| deps.keys().any(|d| d != author))
        .count();
    assert!(
        chained > EVENTS / 2,
        "only {chained} events had a causal past"
    );
}

/// A Sybil author `s`: a fresh node that emits one event, hands its feed to
/// `rogue` over a link of its own, and leaves. It takes nobody's events
/// (not open), so each hand-over costs the same however many came before.
fn hand_over_a_sybil_feed(rogue: &mut Node<MemStore>, schema: &Schema, s: u64, now: Instant) {
    let config = Config {
        open: false,
        store_poll_interval: None,
        ..Config::default()
    };
    let entropy = peermq::Entropy::deterministic(1_000_000 + s);
    let mut sybil = Node::open(MemStore::new(), config, entropy, now).expect("open a sybil");
    let mut em = Emitter::open(&sybil, schema.clone()).expect("open its emitter");
    em.emit_encoded(&mut sybil, "Hello", &[], now)
        .expect("emit");
    let me = sybil.id();
    let sc = sybil.connect(rogue.id(), now);
    let rc = rogue.accept(now);
    peermq::pump_pair((&mut *rogue, rc), (&mut sybil, sc), now).expect("pump");
    let held = rogue.broadcast_feeds().contains(&(me, 1));
    assert!(held, "the rogue did not take Sybil {s}'s feed");
    rogue.handle_closed(rc, now);
    while rogue.poll_output().is_some() {}
}

#[test]
fn a_rogue_flooding_announcements_and_relaying_sybil_authors_leaves_the_honest_mesh_converging() {
    // Twenty honest emitters, and a rogue holding the feeds of 1,100 Sybil
    // authors (each a fresh key that emitted one event, handed it over, and
    // left). The rogue joins the mesh once it has formed, linked to five
    // honest nodes: it announces every Sybil feed and floods `EventPeer`
    // events while the honest nodes go on emitting.
    const HONEST: usize = 20;
    const ROGUE: usize = HONEST;
    const SYBILS: usize = 1_100;
    const HONEST_EVENTS: usize = 200;
    const MAX_FEEDS: usize = 64;
    let mut rng = Rng(0x5eed_0b0b);
    let mut m = Mesh::new(HONEST + 1, HONEST, |i, c| Config {
        max_feeds: if i == ROGUE { 10_000 } else { MAX_FEEDS },
        ..c
    });
    let schema = Schema::parse("mesh.proto", PROTO).expect("schema compiles");
    for s in 0..SYBILS {
        hand_over_a_sybil_feed(&mut m.nodes[ROGUE], &schema, s as u64, m.now);
    }
    assert_eq!(m.nodes[ROGUE].broadcast_feeds().len(), SYBILS);

    // The honest mesh forms: each honest author is held everywhere before
    // the rogue arrives (a node in open mode holds the first `max_feeds`
    // authors it meets; one that comes later than a Sybil flood is refused,
    // and its events' dependents say so in `Delivered::unmet`).
    m.link_randomly(&mut rng, HONEST, 10);
    for i in 0..HONEST {
        m.emit(i, i);
    }
    m.settle();
    for k in 0..5 {
        m.link(ROGUE, k * 4);
    }
    let (mut emitted, mut floods) = (HONEST, 0);
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < MAX_ROUNDS, "the honest mesh did not converge");
        if emitted < HONEST_EVENTS && rng.below(2) == 0 {
            m.emit(rng.below(HONEST), emitted);
            emitted += 1;
        }
        if floods < 200 {
            // 1,000 addresses each, half of them claiming an honest id.
            let id = if floods % 2 == 0 {
                m.ids[ROGUE]
            } else {
                m.ids[rng.below(HONEST)]
            };
            m.announce(ROGUE, id, 1_000);
            floods += 1;
        }
        let moved = m.round();
        m.tick(Duration::from_millis(1));
        if emitted == HONEST_EVENTS && floods == 200 && !moved && m.honest_converged() {
            break;
        }
    }

    let rogue = m.ids[ROGUE];
    for i in 0..HONEST {
        // Announcements speak only for their author, a few addresses each.
        let authors: Vec<_> = m.books[i].announced().map(|(a, _)| *a).collect();
        assert!(
            authors.iter().all(|a| *a == rogue),
            "node {i} learned {authors:?}"
        );
        let kept = m.books[i].addresses(&rogue).map_or(0, <[String]>::len);
        assert!(
            kept <= MAX_ADDRS_PER_AUTHOR,
            "node {i} keeps {kept} addresses"
        );
        // At most `max_feeds` authors held, and those only announced are
        // bounded too.
        let held = m.nodes[i]
            .broadcast_feeds()
            .into_iter()
            .filter(|(a, events)| *events > 0 && *a != m.ids[i])
            .count();
        assert!(held <= MAX_FEEDS, "node {i} holds {held} other authors");
        let f = m.nodes[i].footprint();
        assert!(
            f.broadcast_feeds <= MAX_FEEDS + peermq::node::limits::MAX_PENDING_AUTHORS,
            "node {i}: {f:?}"
        );
    }
    // The Sybils did reach the honest nodes: the bound was what held them.
    let crowded = (0..HONEST)
        .filter(|&i| m.nodes[i].broadcast_feeds().len() > MAX_FEEDS)
        .count();
    assert!(
        crowded > HONEST / 2,
        "only {crowded} honest nodes met the bound"
    );
}

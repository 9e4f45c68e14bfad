//! Fifty event emitters in a random mesh, on in-memory stores and a virtual
//! clock: every event reaches every node (convergence), and no node ever
//! delivers an event before one its author had delivered when emitting it
//! (causal order), checked against the ground truth recorded at emit time.
//!
//! Self-contained: a small deterministic driver loop in the style of the
//! core's test harness, wiring `Node`s through in-memory pipes.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use peermq::emitter::{Emitter, Schema};
use peermq::{Config, ConnId, Event, Instant, MemStore, Node, Output, PeerId};

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
    fn new() -> Self {
        let schema = Schema::parse("mesh.proto", PROTO).expect("schema compiles");
        let mut nodes = Vec::new();
        let mut ems = Vec::new();
        for i in 0..NODES {
            let config = Config {
                open: true,
                store_poll_interval: None,
                ..Config::default()
            };
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
            ids,
            index,
            links: BTreeMap::new(),
            wire: VecDeque::new(),
            pending: vec![false; NODES],
            now: Instant::ZERO,
            delivered: vec![BTreeMap::new(); NODES],
            truth: BTreeMap::new(),
            total: vec![0; NODES],
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
        self.truth
            .insert((self.ids[i], seq), self.delivered[i].clone());
    }

    /// Runs outputs, one wire chunk per link-step, and deliveries; returns
    /// whether anything moved.
    fn round(&mut self) -> bool {
        let mut moved = false;
        for i in 0..NODES {
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
        for i in 0..NODES {
            if std::mem::take(&mut self.pending[i]) {
                let got = self.ems[i]
                    .deliver_ready(&mut self.nodes[i])
                    .expect("deliver");
                for d in got {
                    self.check(i, d.author, d.seq);
                    assert_eq!(
                        d.value.as_ref().map(|v| v["message"].clone()),
                        Some("".into())
                    );
                }
            }
        }
        moved
    }

    fn check(&mut self, i: usize, author: PeerId, seq: u64) {
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
}

#[test]
fn fifty_emitters_converge_in_causal_order() {
    let mut rng = Rng(0x5eed_0007);
    let mut m = Mesh::new();
    // A random spanning tree keeps the mesh connected; extra links add
    // alternative paths, so events race each other along several routes.
    for i in 1..NODES {
        let j = rng.below(i);
        m.link(i, j);
    }
    let mut extra = 0;
    while extra < EXTRA_LINKS {
        let (i, j) = (rng.below(NODES), rng.below(NODES));
        let linked = m
            .links
            .iter()
            .any(|((a, _), (b, _))| *a == i && *b == j || *a == j && *b == i);
        if i != j && !linked {
            m.link(i, j);
            extra += 1;
        }
    }
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

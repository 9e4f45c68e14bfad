//! A test harness in the style of quinn-proto's `Pair`: several nodes on
//! `MemStore`s, wired through in-memory pipes, with a virtual clock stepped
//! to the next timeout.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use peermq::{Config, ConnId, Entropy, Event, Instant, MemStore, Node, Output, PeerId};

/// One end of a link: node index and its connection id.
pub type End = (usize, ConnId);

/// A hook that sees (and may change) each chunk a node transmits.
pub type Tamper = Box<dyn FnMut(usize, &mut Vec<u8>)>;

pub struct Net {
    pub nodes: Vec<Option<Node<MemStore>>>,
    pub stores: Vec<MemStore>,
    pub configs: Vec<Config>,
    /// Each node's seed, and its nonce seed if it signs ahead: a restart
    /// opens it with the same.
    pub seeds: Vec<(u64, Option<[u8; 32]>)>,
    pub ids: Vec<PeerId>,
    pub now: Instant,
    /// Which nodes accept inbound connections.
    pub listening: Vec<bool>,
    links: BTreeMap<End, End>,
    wire: VecDeque<(End, Vec<u8>)>,
    pub events: Vec<Vec<Event>>,
    /// Every byte transmitted, per sending node.
    pub sent_bytes: Vec<u64>,
    /// Called on every transmitted chunk; may change it.
    pub tamper: Option<Tamper>,
    /// Transcript of every output, for determinism checks.
    pub transcript: blake3::Hasher,
    /// Redirect dials: a dial to `key` reaches node `value` instead.
    pub misroute: BTreeMap<PeerId, usize>,
    /// Store errors nodes returned from inputs and timeouts, by node,
    /// when a test expects them (`Some`); `None` (the default) panics on
    /// the first.
    pub store_errors: Option<Vec<(usize, peermq::NodeError)>>,
}

impl Net {
    pub fn new(n: usize) -> Self {
        Self::with_configs(vec![Config::default(); n])
    }

    /// Two nodes, 0 authorizing 1, which dialed it; after the handshake and
    /// the first exchanges. Returns the net and the two ids.
    pub fn connected_pair() -> (Self, PeerId, PeerId) {
        let mut net = Self::new(2);
        let (a, b) = (net.ids[0], net.ids[1]);
        net.node(0).add_peer(b).unwrap();
        let now = net.now;
        net.node(1).dial(a, now);
        net.run_for(Duration::from_secs(1));
        (net, a, b)
    }

    /// Nodes with these configurations, seeded 1, 2, ...
    pub fn with_configs(configs: Vec<Config>) -> Self {
        Self::with_seeded(
            configs
                .into_iter()
                .enumerate()
                .map(|(i, c)| (i as u64 + 1, c))
                .collect(),
        )
    }

    /// Nodes with these seeds and configurations.
    pub fn with_seeded(nodes: Vec<(u64, Config)>) -> Self {
        Self::with_entropy(nodes.into_iter().map(|(s, c)| (s, None, c)).collect())
    }

    /// Nodes with these seeds, nonce seeds (for signing ahead) and
    /// configurations.
    pub fn with_entropy(nodes: Vec<(u64, Option<[u8; 32]>, Config)>) -> Self {
        let n = nodes.len();
        let stores: Vec<MemStore> = (0..n).map(|_| MemStore::new()).collect();
        let seeds: Vec<(u64, Option<[u8; 32]>)> = nodes.iter().map(|(s, a, _)| (*s, *a)).collect();
        let configs: Vec<Config> = nodes.into_iter().map(|(_, _, c)| c).collect();
        let nodes: Vec<Option<Node<MemStore>>> = configs
            .iter()
            .zip(&stores)
            .zip(&seeds)
            .map(|((c, s), seed)| {
                Some(Node::open(s.clone(), c.clone(), entropy(*seed), Instant::ZERO).expect("open"))
            })
            .collect();
        let ids = nodes
            .iter()
            .map(|n| n.as_ref().expect("node").id())
            .collect();
        Net {
            nodes,
            stores,
            configs,
            seeds,
            ids,
            now: Instant::ZERO,
            listening: vec![true; n],
            links: BTreeMap::new(),
            wire: VecDeque::new(),
            events: vec![Vec::new(); n],
            sent_bytes: vec![0; n],
            tamper: None,
            transcript: blake3::Hasher::new(),
            misroute: BTreeMap::new(),
            store_errors: None,
        }
    }

    pub fn node(&mut self, i: usize) -> &mut Node<MemStore> {
        self.nodes[i].as_mut().expect("node is running")
    }

    pub fn index_of(&self, id: &PeerId) -> Option<usize> {
        self.ids.iter().position(|x| x == id)
    }

    /// Drops node `i` without warning, as a crash would (uncommitted work is
    /// lost; committed work is in its store).
    pub fn crash(&mut self, i: usize) {
        self.nodes[i] = None;
        let dead: Vec<End> = self
            .links
            .keys()
            .filter(|(n, _)| *n == i)
            .copied()
            .collect();
        for end in dead {
            if let Some(other) = self.links.remove(&end) {
                self.links.remove(&other);
                if let Some(node) = self.nodes[other.0].as_mut() {
                    node.handle_closed(other.1, self.now);
                }
            }
        }
        self.wire.retain(|((n, _), _)| *n != i);
    }

    pub fn restart(&mut self, i: usize) {
        let node = self.open_again(i);
        assert_eq!(node.id(), self.ids[i], "identity survives restart");
        self.nodes[i] = Some(node);
    }

    /// Another open of node `i`'s store, with its configuration and seeds,
    /// as a second process on its data directory would be.
    pub fn open_again(&self, i: usize) -> Node<MemStore> {
        let (c, s) = (self.configs[i].clone(), self.stores[i].clone());
        Node::open(s, c, entropy(self.seeds[i]), self.now).expect("reopen")
    }

    /// Cuts every link of node `i` (both ends see the transport close).
    pub fn disconnect(&mut self, i: usize) {
        let ends: Vec<End> = self
            .links
            .keys()
            .filter(|(n, _)| *n == i)
            .copied()
            .collect();
        for end in ends {
            if let Some(other) = self.links.remove(&end) {
                self.links.remove(&other);
                for e in [end, other] {
                    if let Some(node) = self.nodes[e.0].as_mut() {
                        node.handle_closed(e.1, self.now);
                    }
                }
            }
        }
    }

    pub fn link_count(&self) -> usize {
        self.links.len() / 2
    }

    /// Processes outputs and deliveries until nothing moves, without
    /// advancing time.
    pub fn settle(&mut self) {
        assert!(self.step(1_000_000), "network did not settle");
    }

    /// Processes outputs and up to `deliveries` deliveries; returns whether
    /// the network went quiet.
    pub fn step(&mut self, deliveries: usize) -> bool {
        for _ in 0..deliveries {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                while let Some(out) = self.nodes[i].as_mut().and_then(|n| n.poll_output()) {
                    moved = true;
                    self.on_output(i, out);
                }
            }
            if let Some(((to, conn), bytes)) = self.wire.pop_front() {
                moved = true;
                if let Some(node) = self.nodes[to].as_mut() {
                    let r = node.handle_input(conn, &bytes, self.now);
                    self.check(to, r);
                }
            }
            if !moved {
                return true;
            }
        }
        false
    }

    /// Carries out output `out` of node `i`.
    pub fn on_output(&mut self, i: usize, out: Output) {
        let mut line = format!("{i} {:?} ", self.now);
        match out {
            Output::Transmit { conn, mut bytes } => {
                line += &format!("tx {conn} {}", hex_digest(&bytes));
                self.sent_bytes[i] += bytes.len() as u64;
                if let Some(t) = self.tamper.as_mut() {
                    t(i, &mut bytes);
                }
                if let Some(to) = self.links.get(&(i, conn)) {
                    if !bytes.is_empty() {
                        self.wire.push_back((*to, bytes));
                    }
                }
            }
            Output::Dial { peer } => {
                line += &format!("dial {peer}");
                let target = self
                    .misroute
                    .get(&peer)
                    .copied()
                    .or_else(|| self.index_of(&peer));
                match target {
                    Some(j) if self.listening[j] && self.nodes[j].is_some() => {
                        let now = self.now;
                        let a = self.node(i).connect(peer, now);
                        let b = self.node(j).accept(now);
                        self.links.insert((i, a), (j, b));
                        self.links.insert((j, b), (i, a));
                    }
                    _ => {
                        let now = self.now;
                        self.node(i).dial_failed(peer, now);
                    }
                }
            }
            Output::Close { conn, reason } => {
                line += &format!("close {conn} {reason}");
                if let Some(other) = self.links.remove(&(i, conn)) {
                    self.links.remove(&other);
                    // Bytes written before the close still arrive, then EOF.
                    let now = self.now;
                    self.deferred_close(other, now);
                }
            }
            Output::Event(e) => {
                line += &format!("event {e:?}");
                self.events[i].push(e);
            }
        }
        self.transcript.update(line.as_bytes());
    }

    fn deferred_close(&mut self, end: End, now: Instant) {
        // Deliver what is already on the wire for this end, then close it.
        let mut keep = VecDeque::new();
        while let Some(item) = self.wire.pop_front() {
            if item.0 == end {
                if let Some(node) = self.nodes[end.0].as_mut() {
                    let r = node.handle_input(end.1, &item.1, now);
                    self.check(end.0, r);
                }
            } else {
                keep.push_back(item);
            }
        }
        self.wire = keep;
        if let Some(node) = self.nodes[end.0].as_mut() {
            node.handle_closed(end.1, now);
        }
    }

    /// Settles, then advances the clock to the next timer and repeats,
    /// for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        loop {
            self.settle();
            let next = self
                .nodes
                .iter()
                .flatten()
                .filter_map(|n| n.poll_timeout())
                .min();
            match next {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    for i in 0..self.nodes.len() {
                        let Some(n) = self.nodes[i].as_mut() else {
                            continue;
                        };
                        if n.poll_timeout().is_some_and(|t| t <= now) {
                            let r = n.handle_timeout(now);
                            self.check(i, r);
                        }
                    }
                }
                _ => {
                    self.now = until;
                    self.settle();
                    return;
                }
            }
        }
    }

    /// Panics on a node's error, unless the test collects them in
    /// `store_errors`.
    fn check(&mut self, i: usize, r: Result<(), peermq::NodeError>) {
        if let Err(e) = r {
            match self.store_errors.as_mut() {
                Some(errors) => errors.push((i, e)),
                None => panic!("node {i} failed: {e}"),
            }
        }
    }

    /// Events of node `i` since the last call, emptied.
    pub fn take_events(&mut self, i: usize) -> Vec<Event> {
        std::mem::take(&mut self.events[i])
    }

    pub fn messages(&self, i: usize) -> Vec<(PeerId, u64)> {
        self.events[i]
            .iter()
            .filter_map(|e| match e {
                Event::Message { from, seq } => Some((*from, *seq)),
                _ => None,
            })
            .collect()
    }

    pub fn transcript_hash(&self) -> String {
        self.transcript.finalize().to_hex().to_string()
    }

    pub fn disconnect_reasons(&self, i: usize) -> BTreeSet<String> {
        self.events[i]
            .iter()
            .filter_map(|e| match e {
                Event::Disconnected { reason, .. } => Some(format!("{reason:?}")),
                _ => None,
            })
            .collect()
    }
}

fn hex_digest(b: &[u8]) -> String {
    blake3::hash(b).to_hex()[..16].to_string()
}

fn entropy((seed, ahead): (u64, Option<[u8; 32]>)) -> Entropy {
    let e = Entropy::deterministic(seed);
    match ahead {
        Some(n) => e.sign_ahead(n),
        None => e,
    }
}

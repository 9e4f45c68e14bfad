//! An author that forks its feed: signs two heads that cannot both be true
//! (a restored backup, a lost commit signed again, or malice). The receiver
//! keeps both heads as evidence against the author, stops replicating the
//! feed, keeps what it verified before, and closes nothing, so no
//! reconnection meets the fork again in a loop.

use peermq::feed::{Feed, FeedDescriptor};
use peermq::wire::{DataMsg, Message};
use peermq::{
    CloseReason, Config, ConnId, Event, Instant, Keypair, Mailbox, MemStore, Node, Output, RawPeer,
    SeededRng, Timestamp, Txn,
};

const NOW: Instant = Instant::ZERO;

/// Node A, and an author H (a raw peer A authorized) connected to it.
struct World {
    a: Node<MemStore>,
    h: Keypair,
    raw: RawPeer,
    conn: ConnId,
    events: Vec<Event>,
    closed: Option<CloseReason>,
    /// A's requests H holds open: (id, start, end, base).
    open: Vec<(u64, u64, u64, u64)>,
}

/// H's queue feed to A, as H's store holds it.
struct Branch {
    feed: Feed,
    store: MemStore,
}

impl Branch {
    fn new(w: &World, blocks: &[&str]) -> Self {
        let store = MemStore::new();
        let mut feed = Feed::new(FeedDescriptor::queue(w.h.peer_id(), w.a.id()));
        let mut txn = Txn::begin(&store).unwrap();
        let blocks: Vec<&[u8]> = blocks.iter().map(|b| b.as_bytes()).collect();
        feed.append_batch(&mut txn, &mut w.h.clone(), &blocks)
            .unwrap();
        txn.commit().unwrap();
        Branch { feed, store }
    }

    fn head_msg(&self) -> Message<'static> {
        Message::Head {
            desc: *self.feed.descriptor(),
            head: *self.feed.head().unwrap(),
        }
    }
}

impl World {
    fn new() -> Self {
        Self::with(Config::default())
    }

    fn with(config: Config) -> Self {
        let mut a = Node::open(
            MemStore::new(),
            Config {
                store_poll_interval: None,
                ..config
            },
            peermq::Entropy::deterministic(1),
            NOW,
        )
        .unwrap();
        let h = Keypair::generate(&mut SeededRng::from_u64(99));
        a.add_peer(h.peer_id()).unwrap();
        let raw = RawPeer::dial(&h, 7, a.id()).unwrap();
        let conn = a.accept(NOW);
        let mut w = World {
            a,
            h,
            raw,
            conn,
            events: Vec::new(),
            closed: None,
            open: Vec::new(),
        };
        w.pump();
        assert!(w.raw.is_open());
        w
    }

    fn pump(&mut self) {
        if self.closed.is_some() {
            return;
        }
        for out in self.raw.pump(&mut self.a, self.conn, NOW).unwrap() {
            match out {
                Output::Close { conn, reason } if conn == self.conn => self.closed = Some(reason),
                Output::Event(e) => self.events.push(e),
                _ => {}
            }
        }
    }

    /// Takes note of the requests A sent since the last call.
    fn take_requests(&mut self) {
        for (kind, body) in self.raw.messages().unwrap() {
            if let Ok(Message::Request {
                base,
                first_id,
                ranges,
                ..
            }) = Message::decode(kind, &body, 1 << 20)
            {
                for (r, id) in ranges.iter().zip(first_id..) {
                    self.open.push((id, r.start, r.end, base));
                }
            }
        }
    }

    /// Sends, as the answer to request `id`, blocks `start..stop` of
    /// `branch` with its head, proven from `base` and showing the roots of
    /// `shown` blocks.
    fn send_data(
        &mut self,
        branch: &Branch,
        id: u64,
        [start, stop]: [u64; 2],
        base: u64,
        shown: u64,
    ) {
        let txn = Txn::begin(&branch.store).unwrap();
        let proof = branch
            .feed
            .prove_showing(&txn, start, stop, base, shown)
            .unwrap();
        let blocks: Vec<Vec<u8>> = (start..stop)
            .map(|s| branch.feed.get(&txn, s).unwrap().unwrap())
            .collect();
        self.raw.send(&Message::Data(DataMsg {
            request: id,
            head: Some(*branch.feed.head().unwrap()),
            proof,
            blocks: blocks.iter().map(|b| b.as_slice()).collect(),
        }));
    }

    /// Answers every request A has open with H from `branch`, each proof
    /// from the base `base` makes of the one requested. A request answered
    /// up to the branch's head stays open for the rest, as the protocol says.
    fn answer(&mut self, branch: &Branch, base: impl Fn(u64) -> u64) -> usize {
        self.take_requests();
        let len = branch.feed.len();
        let mut answered = 0;
        let mut still = Vec::new();
        for (id, start, end, asked) in std::mem::take(&mut self.open) {
            let stop = end.min(len);
            if start >= stop {
                still.push((id, start, end, asked));
                continue;
            }
            let base = base(asked);
            self.send_data(branch, id, [start, stop], base, base);
            answered += 1;
            if stop < end {
                still.push((id, stop, end, stop));
            }
        }
        self.open = still;
        self.pump();
        answered
    }

    /// A's unread messages from H.
    fn unread(&mut self) -> Vec<String> {
        self.a
            .read(Mailbox::Unread, None, 100, Timestamp::EPOCH)
            .unwrap()
            .into_iter()
            .map(|r| String::from_utf8(r.data).unwrap())
            .collect()
    }

    /// A holds `branch` in full, from an honest exchange.
    fn hold(&mut self, branch: &Branch) {
        self.raw.send(&branch.head_msg());
        self.pump();
        assert!(self.answer(branch, |b| b) > 0);
        assert_eq!(self.unread().len() as u64, branch.feed.len());
    }

    /// A holding H's two blocks, and H announcing a head of four blocks of
    /// another tree.
    fn with_longer_fork() -> (Self, Branch, Branch) {
        let mut w = World::new();
        let honest = Branch::new(&w, &["one", "two"]);
        w.hold(&honest);
        let fork = Branch::new(&w, &["uno", "dos", "tres", "cuatro"]);
        w.raw.send(&fork.head_msg());
        w.pump();
        (w, honest, fork)
    }

    fn forked_events(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::Forked { .. }))
            .count()
    }
}

#[test]
fn an_author_announcing_another_tree_of_the_same_length_is_caught_by_its_head() {
    let mut w = World::new();
    let honest = Branch::new(&w, &["one", "two", "three"]);
    w.hold(&honest);
    let fork = Branch::new(&w, &["uno", "dos", "tres"]);
    w.raw.send(&fork.head_msg());
    w.pump();

    assert_eq!(w.forked_events(), 1);
    let evidence: Vec<_> = w.a.forks().copied().collect();
    assert_eq!(evidence.len(), 1);
    assert_eq!(evidence[0].ours, *honest.feed.head().unwrap());
    assert_eq!(evidence[0].theirs, *fork.feed.head().unwrap());
    assert!(evidence[0].ours.verify(&w.h.peer_id()) && evidence[0].theirs.verify(&w.h.peer_id()));
    assert_eq!(w.closed, None, "a fork closes nothing");
    assert_eq!(w.unread(), ["one", "two", "three"]);
}

#[test]
fn an_author_that_extends_another_tree_is_caught_and_its_blocks_are_not_stored() {
    // A holds two blocks; the author's new head covers four blocks of a
    // different tree, and it proves them honestly from A's base. The proof
    // cannot fit A's tree; a proof from base 0 shows where they differ.
    let (mut w, _honest, fork) = World::with_longer_fork();
    for _ in 0..4 {
        w.answer(&fork, |b| b);
    }

    assert_eq!(w.forked_events(), 1);
    let evidence = *w.a.forks().next().expect("evidence kept");
    assert_eq!(evidence.theirs, *fork.feed.head().unwrap());
    assert_eq!(w.closed, None, "a fork closes nothing");
    assert_eq!(w.unread(), ["one", "two"], "nothing of the fork is stored");
    // No more requests for the feed: nothing to loop on.
    w.raw.send(&fork.head_msg());
    w.pump();
    assert_eq!(w.answer(&fork, |b| b), 0);
    assert_eq!(w.forked_events(), 1, "reported once");

    // The evidence survives a restart, and the feed stays left alone.
    let store = w.a.store().clone();
    let again = Node::open(
        store,
        Config::default(),
        peermq::Entropy::deterministic(1),
        NOW,
    )
    .unwrap();
    assert_eq!(again.forks().copied().collect::<Vec<_>>(), [evidence]);
}

#[test]
fn a_proof_from_a_base_the_responder_picked_is_refused() {
    // With base 0 a proof touches none of the nodes A holds, so a longer
    // head of another tree would verify and be adopted, mixing two trees.
    let (mut w, honest, fork) = World::with_longer_fork();
    w.answer(&fork, |_| 0);
    let reason = w.closed.clone().expect("closed");
    assert!(
        matches!(&reason, CloseReason::Unexpected(m) if m.contains("from length 0")),
        "{reason:?}"
    );
    assert_eq!(w.unread(), ["one", "two"]);
    let feed =
        w.a.feed_handle(FeedDescriptor::queue(w.h.peer_id(), w.a.id()))
            .unwrap();
    assert_eq!(feed.head(), honest.feed.head(), "the held head stands");
}

#[test]
fn an_honest_extension_proven_from_the_held_length_is_adopted() {
    let mut w = World::new();
    let first = Branch::new(&w, &["one", "two"]);
    w.hold(&first);
    let mut longer = Branch::new(&w, &["one", "two"]);
    let mut txn = Txn::begin(&longer.store).unwrap();
    longer
        .feed
        .append_batch(&mut txn, &mut w.h.clone(), &[b"three".as_slice()])
        .unwrap();
    txn.commit().unwrap();
    w.raw.send(&longer.head_msg());
    w.pump();
    w.answer(&longer, |b| b);
    assert_eq!(w.unread(), ["one", "two", "three"]);
    assert_eq!(w.forked_events(), 0);
    assert_eq!(w.closed, None);
}

/// A, asking for up to 4 blocks per range.
fn world_of_small_requests() -> World {
    World::with(Config {
        max_request_blocks: 4,
        ..Config::default()
    })
}

/// H announces `announced` (8 blocks); A asks for blocks 0..4 and 4..8 in
/// one pipeline, both from base 0. Returns the two requests' ids.
fn ask_two_ranges_from_base_0(w: &mut World, announced: &Branch) -> (u64, u64) {
    w.raw.send(&announced.head_msg());
    w.pump();
    w.take_requests();
    let id_of = |w: &World, start: u64| {
        w.open
            .iter()
            .find(|r| (r.1, r.3) == (start, 0))
            .expect("asked from base 0")
            .0
    };
    let (first, second) = (id_of(w, 0), id_of(w, 4));
    w.open.retain(|r| r.0 != first && r.0 != second);
    // The first answer will reach H's head at 3: the rest stays open.
    w.open.push((first, 3, 4, 3));
    (first, second)
}

#[test]
fn a_pipelined_answer_whose_head_grew_is_checked_against_the_head_sent_before_it() {
    // H appends between its two answers: the second, proven from base 0 as
    // asked, shows the roots of the 3-block head its first answer carried,
    // which A holds by then, so A checks the 8-block head against them and
    // stores it at once, asking for nothing again.
    let mut w = world_of_small_requests();
    let three = Branch::new(&w, &["one", "two", "three"]);
    let eight_blocks = [
        "one", "two", "three", "four", "five", "six", "seven", "eight",
    ];
    let eight = Branch::new(&w, &eight_blocks);
    let (first, second) = ask_two_ranges_from_base_0(&mut w, &eight);
    w.send_data(&three, first, [0, 3], 0, 0);
    w.send_data(&eight, second, [4, 8], 0, 3);
    w.pump();

    assert_eq!(w.closed, None);
    assert_eq!(w.forked_events(), 0);
    let feed =
        w.a.feed_handle(FeedDescriptor::queue(w.h.peer_id(), w.a.id()))
            .unwrap();
    assert_eq!(feed.head(), eight.feed.head(), "the longer head is adopted");
    w.take_requests();
    assert!(
        w.open.iter().all(|r| r.1 >= 3 && r.2 <= 4 || r.1 >= 8),
        "only block 3, still open, and what H has not written are asked: {:?}",
        w.open
    );
    w.answer(&eight, |b| b);
    assert_eq!(w.unread(), eight_blocks);
}

#[test]
fn a_fork_hidden_inside_a_node_a_pipelined_answer_carries_is_caught() {
    // The first answer brings a head of 3 blocks (held roots: blocks 0..2
    // and block 2). The second brings a head of 8 blocks of another tree,
    // proven from base 0 as asked, but showing nothing more: its proof
    // carries one node over blocks 0..4, which hides both held roots. A
    // stores none of it and asks again from what it holds.
    let mut w = world_of_small_requests();
    let honest = Branch::new(&w, &["one", "two", "three"]);
    let fork = Branch::new(
        &w,
        &[
            "one", "two", "TRES", "four", "five", "six", "seven", "eight",
        ],
    );
    let (first, second) = ask_two_ranges_from_base_0(&mut w, &fork);
    w.send_data(&honest, first, [0, 3], 0, 0);
    w.send_data(&fork, second, [4, 8], 0, 0);
    w.pump();
    for _ in 0..4 {
        w.answer(&fork, |b| b);
    }

    assert_eq!(w.forked_events(), 1);
    let evidence = *w.a.forks().next().expect("evidence kept");
    assert_eq!(evidence.ours, *honest.feed.head().unwrap());
    assert_eq!(evidence.theirs.root, fork.feed.head().unwrap().root);
    assert_eq!(w.closed, None, "a fork closes nothing");
    assert_eq!(
        w.unread(),
        ["one", "two", "three"],
        "nothing of the fork is stored"
    );
}

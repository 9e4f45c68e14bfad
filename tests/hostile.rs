//! A hostile peer: every kind of bad input closes that connection with a
//! specific reason, the node keeps serving its other peers, nothing stored
//! is lost, and nothing panics.

use peermq::feed::{Feed, FeedDescriptor};
use peermq::ranges::RangeSet;
use peermq::wire::envelope::MAGIC;
use peermq::wire::{DataMsg, Message, RangeRequest, Receipt};
use peermq::{
    CloseReason, ConnId, DeadReason, Event, Instant, Keypair, Mailbox, MemStore, Node, NodeError,
    Output, RawPeer, SeededRng, Timestamp, Txn,
};
use quickcheck::{QuickCheck, TestResult};

/// The message a block of `from`'s queue feed to `to` holds: opened as
/// its recipient would.
fn opened(to: &Keypair, from: peermq::PeerId, seq: u64, block: &[u8]) -> Vec<u8> {
    let env = peermq::wire::envelope::open(block).expect("an envelope");
    match env.sealed {
        Some(e) => peermq::identity::seal::Opener::new(to)
            .open(from, &e, seq, env.payload)
            .expect("sealed to its recipient"),
        None => env.payload.to_vec(),
    }
}

fn config() -> peermq::Config {
    peermq::Config {
        store_poll_interval: None,
        ..peermq::Config::default()
    }
}

/// A node under test: `config`, a memory store, the deterministic entropy
/// `seed`, opened at time zero.
fn node(config: peermq::Config, seed: u64) -> Node<MemStore> {
    Node::open(
        MemStore::new(),
        config,
        peermq::Entropy::deterministic(seed),
        Instant::ZERO,
    )
    .unwrap()
}

/// Node A with a well-behaved peer C connected, and a hostile key H that A
/// authorized.
struct World {
    a: Node<MemStore>,
    c: Node<MemStore>,
    a_c: ConnId,
    c_a: ConnId,
    h: Keypair,
    events: Vec<Event>,
}

impl World {
    fn new() -> Self {
        let mut a = node(config(), 1);
        let c = node(config(), 2);
        let h = Keypair::generate(&mut SeededRng::from_u64(99));
        a.add_peer(c.id()).unwrap();
        a.add_peer(h.peer_id()).unwrap();
        let mut w = World {
            a,
            c,
            a_c: ConnId(0),
            c_a: ConnId(0),
            h,
            events: Vec::new(),
        };
        let now = Instant::ZERO;
        w.c_a = w.c.connect(w.a.id(), now);
        w.a_c = w.a.accept(now);
        let a_id = w.a.id();
        w.c.send(a_id, b"before", now).unwrap();
        w.pump(None);
        assert_eq!(w.unread(), vec![b"before".to_vec()]);
        w
    }

    /// Moves bytes between A, C and the raw peer until nothing moves.
    fn pump(&mut self, mut raw: Option<(&mut RawPeer, ConnId)>) {
        let now = Instant::ZERO;
        loop {
            let mut moved = false;
            while let Some(out) = self.a.poll_output() {
                moved = true;
                match out {
                    Output::Transmit { conn, bytes } if conn == self.a_c => {
                        self.c.handle_input(self.c_a, &bytes, now).unwrap()
                    }
                    Output::Transmit { conn, bytes } => {
                        if let Some((r, rc)) = raw.as_mut() {
                            if conn == *rc {
                                let _ = r.input(&bytes);
                            }
                        }
                    }
                    Output::Event(e) => self.events.push(e),
                    Output::Close { conn, .. } => {
                        if let Some((_, rc)) = raw.as_ref() {
                            if conn == *rc {
                                raw = None;
                            }
                        }
                    }
                    Output::Dial { .. } => {}
                }
            }
            while let Some(out) = self.c.poll_output() {
                moved = true;
                if let Output::Transmit { conn, bytes } = out {
                    if conn == self.c_a {
                        self.a.handle_input(self.a_c, &bytes, now).unwrap();
                    }
                }
            }
            if let Some((r, rc)) = raw.as_mut() {
                let bytes = r.output().unwrap_or_default();
                if !bytes.is_empty() {
                    moved = true;
                    self.a.handle_input(*rc, &bytes, now).unwrap();
                }
            }
            if !moved {
                if self.a.poll_timeout() == Some(now) || self.c.poll_timeout() == Some(now) {
                    self.a.handle_timeout(now).unwrap();
                    self.c.handle_timeout(now).unwrap();
                    continue;
                }
                return;
            }
        }
    }

    fn unread(&mut self) -> Vec<Vec<u8>> {
        self.a
            .read(Mailbox::Unread, None, 100, Timestamp::EPOCH)
            .unwrap()
            .into_iter()
            .map(|r| r.data)
            .collect()
    }

    /// A hostile connection that completed its handshake with A.
    fn hostile(&mut self, seed: u64) -> (RawPeer, ConnId) {
        let mut raw = RawPeer::dial(&self.h, seed, self.a.id()).unwrap();
        let conn = self.a.accept(Instant::ZERO);
        self.pump(Some((&mut raw, conn)));
        assert!(raw.is_open());
        (raw, conn)
    }

    fn closed_with(&self, conn: ConnId) -> Option<CloseReason> {
        self.events.iter().find_map(|e| match e {
            Event::Disconnected {
                conn: c, reason, ..
            } if *c == conn => Some(reason.clone()),
            _ => None,
        })
    }

    /// After the hostile peer is gone, A still serves C and kept its data.
    fn still_serving(&mut self) {
        let before = self.unread().len();
        let a_id = self.a.id();
        self.c.send(a_id, b"after", Instant::ZERO).unwrap();
        self.pump(None);
        let unread = self.unread();
        assert_eq!(unread.len(), before + 1);
        assert_eq!(unread[0], b"before".to_vec());
        assert_eq!(unread.last().unwrap(), &b"after".to_vec());
    }
}

fn run(bad: impl FnOnce(&mut World, &mut RawPeer)) -> CloseReason {
    let mut w = World::new();
    let (mut raw, conn) = w.hostile(7);
    bad(&mut w, &mut raw);
    w.pump(Some((&mut raw, conn)));
    let reason = w.closed_with(conn).expect("hostile connection closed");
    w.still_serving();
    reason
}

#[test]
fn a_malformed_message_closes_the_connection() {
    // A request (type 2) whose body is one byte long.
    let reason = run(|_, raw| raw.send_plaintext(&[2, 0, 0, 0, 2, 9]));
    assert!(matches!(reason, CloseReason::Malformed(_)), "{reason:?}");
}

/// A request message from H for `count` ranges of `blocks` blocks of A's
/// feed to H, ids from `first_id`.
fn request(w: &World, first_id: u64, count: u64, blocks: u64) -> Message<'static> {
    Message::Request {
        feed: FeedDescriptor::queue(w.a.id(), w.h.peer_id()).id(),
        base: 0,
        first_id,
        ranges: (0..count)
            .map(|i| RangeRequest {
                start: i * blocks,
                end: (i + 1) * blocks,
                trusted: None,
            })
            .collect(),
    }
}

#[test]
fn more_requests_than_the_in_flight_limit_close_with_overloaded() {
    // 256 ranges are as many as a peer may have outstanding; one more, in
    // the same input, is over.
    let reason = run(|w, raw| {
        raw.send(&request(w, 0, 256, 1));
        raw.send(&request(w, 256, 1, 1));
    });
    assert!(matches!(reason, CloseReason::Overloaded), "{reason:?}");
}

#[test]
fn a_range_of_too_many_blocks_is_malformed() {
    let reason = run(|w, raw| raw.send(&request(w, 0, 1, 16_385)));
    assert!(
        matches!(&reason, CloseReason::Malformed(m) if m.contains("16385 blocks")),
        "{reason:?}"
    );
}

#[test]
fn an_oversized_length_is_refused_before_buffering() {
    let reason = run(|_, raw| raw.send_plaintext(&[0xff, 0xff, 0xff, 0x7f, 3]));
    assert!(
        matches!(
            reason,
            CloseReason::TooLarge {
                size: 0x7fff_ffff,
                ..
            }
        ),
        "{reason:?}"
    );
}

#[test]
fn a_head_with_a_bad_signature_closes_the_connection() {
    let reason = run(|w, raw| {
        let desc = FeedDescriptor::queue(w.h.peer_id(), w.a.id());
        let mut head = peermq::SignedHead::sign(
            &mut w.h.clone(),
            desc.id(),
            1,
            peermq::merkle::Hash([1; 32]),
        );
        head.signature[0] ^= 1;
        raw.send(&Message::Head { desc, head });
    });
    assert!(matches!(reason, CloseReason::BadData(_)), "{reason:?}");
}

#[test]
fn unrequested_data_is_unexpected() {
    let reason = run(|w, raw| {
        let (feed, store) = hostile_feed(w, &[b"one", b"two", b"three"]);
        let txn = Txn::begin(&store).unwrap();
        // A asks H for what H has not written yet (from block 0); block 1 on
        // its own was never asked for.
        let proof = feed.prove(&txn, 1, 2, 0).unwrap();
        let block = feed.get(&txn, 1).unwrap().unwrap();
        raw.send(&Message::Data(DataMsg {
            request: 0,
            head: Some(*feed.head().unwrap()),
            proof,
            blocks: vec![&block],
        }));
    });
    assert!(matches!(reason, CloseReason::Unexpected(_)), "{reason:?}");
}

#[test]
fn a_refusal_of_nothing_is_unexpected() {
    let reason = run(|_w, raw| {
        raw.send(&Message::NoData {
            request: 1 << 40,
            end: 5,
        });
    });
    assert!(matches!(reason, CloseReason::Unexpected(_)), "{reason:?}");
}

/// A real feed from H to A, with three blocks.
fn hostile_feed(w: &World, blocks: &[&[u8]]) -> (Feed, MemStore) {
    let store = MemStore::new();
    let mut feed = Feed::new(FeedDescriptor::queue(w.h.peer_id(), w.a.id()));
    let mut txn = Txn::begin(&store).unwrap();
    feed.append_batch(&mut txn, &mut w.h.clone(), blocks)
        .unwrap();
    txn.commit().unwrap();
    (feed, store)
}

/// The raw peer announces `feed` to A and answers A's first request for
/// it with a valid proof and the blocks, changed by `alter` first.
fn serve_first_request(
    w: &mut World,
    raw: &mut RawPeer,
    conn: ConnId,
    (feed, store): &(Feed, MemStore),
    alter: impl FnOnce(&mut Vec<Vec<u8>>),
) {
    raw.send(&Message::Head {
        desc: *feed.descriptor(),
        head: *feed.head().unwrap(),
    });
    w.pump(Some((raw, conn)));
    let requests = raw.messages().unwrap();
    let (kind, body) = requests
        .iter()
        .find(|(k, _)| *k == 2)
        .expect("A requested the blocks");
    let Message::Request {
        base,
        first_id,
        ranges,
        ..
    } = Message::decode(*kind, body, 100).unwrap()
    else {
        panic!()
    };
    let (start, end) = (ranges[0].start, ranges[0].end);
    let txn = Txn::begin(store).unwrap();
    let end = end.min(feed.len());
    let proof = feed.prove(&txn, start, end, base).unwrap();
    let mut blocks: Vec<Vec<u8>> = (start..end)
        .map(|s| feed.get(&txn, s).unwrap().unwrap())
        .collect();
    alter(&mut blocks);
    let refs: Vec<&[u8]> = blocks.iter().map(|b| b.as_slice()).collect();
    raw.send(&Message::Data(DataMsg {
        request: first_id,
        head: Some(*feed.head().unwrap()),
        proof,
        blocks: refs,
    }));
    w.pump(Some((raw, conn)));
}

#[test]
fn a_tampered_block_is_rejected_and_not_stored() {
    let mut w = World::new();
    let (mut raw, conn) = w.hostile(8);
    let feed = hostile_feed(&w, &[b"one", b"two", b"three"]);
    serve_first_request(&mut w, &mut raw, conn, &feed, |blocks| blocks[0][0] ^= 1);
    let reason = w.closed_with(conn).expect("closed");
    assert!(matches!(reason, CloseReason::BadData(_)), "{reason:?}");
    let from_h =
        w.a.read(Mailbox::Unread, None, 100, Timestamp::EPOCH)
            .unwrap()
            .into_iter()
            .filter(|r| r.from == w.h.peer_id())
            .count();
    assert_eq!(from_h, 0, "nothing of the forged feed was kept");
    w.still_serving();
}

#[test]
fn a_signed_envelope_this_build_cannot_open_is_dead_lettered_and_the_rest_delivered() {
    let mut w = World::new();
    let (mut raw, conn) = w.hostile(8);
    // A newer build's field 9, or a damaged envelope: signed all the same.
    let newer = [&MAGIC[..], b"\x09\x01x\x00payload"].concat();
    let cut = [&MAGIC[..], b"\x01\x08abc"].concat();
    let feed = hostile_feed(&w, &[&newer, b"fine", &cut]);
    serve_first_request(&mut w, &mut raw, conn, &feed, |_| {});
    assert_eq!(w.closed_with(conn), None, "the blocks are genuine");
    let h = w.h.peer_id();
    let from_h: Vec<(u64, Vec<u8>)> =
        w.a.read(Mailbox::Unread, None, 100, Timestamp::EPOCH)
            .unwrap()
            .into_iter()
            .filter(|r| r.from == h)
            .map(|r| (r.seq, r.data))
            .collect();
    assert_eq!(from_h, vec![(1, b"fine".to_vec())]);
    for seq in [0, 2] {
        assert_eq!(
            w.a.dead_reason(h, seq).unwrap(),
            Some((DeadReason::Unreadable, 0))
        );
        let err =
            w.a.get(h, seq, Instant::ZERO, Timestamp::EPOCH)
                .unwrap_err();
        assert!(matches!(err, NodeError::Unreadable { .. }), "{err}");
    }
}

#[test]
fn a_handshake_out_of_order_fails_cleanly() {
    let mut w = World::new();
    let mut raw = RawPeer::dial(&w.h, 9, w.a.id()).unwrap();
    let first = raw.output().unwrap();
    let conn = w.a.accept(Instant::ZERO);
    // The first handshake message twice: the second arrives where the third
    // belongs.
    w.a.handle_input(conn, &first, Instant::ZERO).unwrap();
    w.a.handle_input(conn, &first, Instant::ZERO).unwrap();
    w.pump(None);
    let reason = w.closed_with(conn).expect("closed");
    assert!(matches!(reason, CloseReason::Handshake(_)), "{reason:?}");
    w.still_serving();
}

#[test]
fn random_bytes_never_panic_before_or_after_the_handshake() {
    fn prop(junk: Vec<u8>, as_plaintext: bool) -> TestResult {
        let mut a = node(config(), 3);
        let h = Keypair::generate(&mut SeededRng::from_u64(4));
        a.add_peer(h.peer_id()).unwrap();
        // Straight into a fresh connection.
        let conn = a.accept(Instant::ZERO);
        if a.handle_input(conn, &junk, Instant::ZERO).is_err() {
            return TestResult::failed();
        }
        // And, as plaintext or raw frames, into an authenticated one.
        let mut raw = RawPeer::dial(&h, 5, a.id()).unwrap();
        let conn = a.accept(Instant::ZERO);
        for _ in 0..4 {
            let bytes = raw.output().unwrap();
            if a.handle_input(conn, &bytes, Instant::ZERO).is_err() {
                return TestResult::failed();
            }
            while let Some(out) = a.poll_output() {
                if let Output::Transmit { bytes, .. } = out {
                    let _ = raw.input(&bytes);
                }
            }
        }
        if !raw.is_open() {
            return TestResult::failed();
        }
        let bytes = if as_plaintext {
            raw.send_plaintext(&junk);
            raw.output().unwrap()
        } else {
            junk
        };
        TestResult::from_bool(a.handle_input(conn, &bytes, Instant::ZERO).is_ok())
    }
    QuickCheck::new()
        .tests(300)
        .quickcheck(prop as fn(Vec<u8>, bool) -> TestResult);
}

#[test]
fn a_data_message_claiming_huge_block_counts_is_refused() {
    let reason = run(|w, raw| {
        let (feed, _) = hostile_feed(w, &[b"one", b"two", b"three"]);
        let head = *feed.head().unwrap();
        // A data header claiming 3 blocks but carrying no bytes for them.
        // Request id 0, a head, blocks 0..3, base 0, no trusted node, no
        // proof nodes (every varint here is one byte).
        let mut body = vec![0, 1];
        body.extend_from_slice(&head.encode());
        body.extend_from_slice(&[0, 3, 0, 0, 0]);
        let mut msg = ((body.len() + 1) as u32).to_le_bytes().to_vec();
        msg.push(3);
        msg.extend_from_slice(&body);
        raw.send_plaintext(&msg);
    });
    assert!(matches!(reason, CloseReason::Malformed(_)), "{reason:?}");
}

/// A reader's standing request stays open at the writer: each append is
/// answered under the same request id, continuing where the last answer
/// ended, proven from the last head sent, and with no separate `Head`
/// announcement, so a live reader sends nothing per message.
#[test]
fn a_standing_request_is_answered_at_every_append() {
    let mut w = World::new();
    let (mut raw, conn) = w.hostile(8);
    let h = w.h.peer_id();
    let desc = FeedDescriptor::queue(w.a.id(), h);
    raw.send(&Message::Request {
        feed: desc.id(),
        base: 0,
        first_id: 7,
        ranges: vec![RangeRequest {
            start: 0,
            end: 100,
            trusted: None,
        }],
    });
    w.pump(Some((&mut raw, conn)));
    let _ = raw.messages().unwrap();
    // H checks every answer as a reader would.
    let store = MemStore::new();
    let mut mirror = Feed::new(desc);
    for (i, batch) in [1usize, 3, 1].into_iter().enumerate() {
        let msgs: Vec<Vec<u8>> = (0..batch)
            .map(|j| format!("m{i}.{j}").into_bytes())
            .collect();
        let start = mirror.len();
        w.a.send_batch(h, &msgs, Instant::ZERO).unwrap();
        w.pump(Some((&mut raw, conn)));
        let got = raw.messages().unwrap();
        let [(kind, body)] = &got[..] else {
            panic!(
                "append {i}: expected one data message, got {} messages",
                got.len()
            );
        };
        let Ok(Message::Data(d)) = Message::decode(*kind, body, 1 << 20) else {
            panic!("append {i}: expected data, got type {kind}");
        };
        assert_eq!(d.request, 7, "the same request, still open");
        assert_eq!((d.proof.start, d.proof.end), (start, start + batch as u64));
        assert_eq!(d.proof.base, start, "proven from the last head sent");
        let head = d.head.expect("the answer carries the new head");
        assert_eq!(head.length, start + batch as u64);
        let got: Vec<Vec<u8>> = (start..)
            .zip(&d.blocks)
            .map(|(seq, b)| opened(&w.h, w.a.id(), seq, b))
            .collect();
        assert_eq!(got, msgs);
        let mut txn = Txn::begin(&store).unwrap();
        mirror
            .verify_and_store(&mut txn, &head, &d.proof, &d.blocks)
            .unwrap();
        txn.commit().unwrap();
    }
    assert!(w.closed_with(conn).is_none());
    w.still_serving();
}

/// A sparse reader (A, fetching only what it is asked for) and a raw
/// writer H holding 4,096 blocks, connected, with H's head announced.
struct SparseFetch {
    a: Node<MemStore>,
    h: Keypair,
    raw: RawPeer,
    conn: ConnId,
    feed: Feed,
    store: MemStore,
    blocks: Vec<Vec<u8>>,
    events: Vec<Event>,
}

impl SparseFetch {
    fn new() -> Self {
        let (mut f, _) = Self::with(peermq::Prefetch::Window(0));
        f.append(4096);
        f.raw.send(&Message::Head {
            desc: *f.feed.descriptor(),
            head: *f.feed.head().unwrap(),
        });
        f.pump();
        f
    }

    /// A reader with `prefetch`, connected to a writer that wrote nothing,
    /// and the requests it made on connecting.
    fn with(prefetch: peermq::Prefetch) -> (Self, Vec<(u64, Option<u64>, u64)>) {
        let h = Keypair::generate(&mut SeededRng::from_u64(41));
        let mut a = node(
            peermq::Config {
                prefetch,
                ..config()
            },
            40,
        );
        a.add_peer(h.peer_id()).unwrap();
        let store = MemStore::new();
        let feed = Feed::new(FeedDescriptor::queue(h.peer_id(), a.id()));
        let raw = RawPeer::dial(&h, 42, a.id()).unwrap();
        let conn = a.accept(Instant::ZERO);
        let mut f = SparseFetch {
            a,
            h,
            raw,
            conn,
            feed,
            store,
            blocks: Vec::new(),
            events: Vec::new(),
        };
        let requests = f.pump();
        assert!(f.raw.is_open());
        (f, requests)
    }

    /// H appends `n` blocks (the next little-endian counters).
    fn append(&mut self, n: u32) {
        let first = self.blocks.len() as u32;
        let new: Vec<Vec<u8>> = (first..first + n)
            .map(|i| i.to_le_bytes().to_vec())
            .collect();
        let mut txn = Txn::begin(&self.store).unwrap();
        self.feed.append_batch(&mut txn, &mut self.h, &new).unwrap();
        txn.commit().unwrap();
        self.blocks.extend(new);
    }

    /// Answers request `id` with blocks `[start, end)` and H's head, proven
    /// for a reader holding the roots of `base` blocks.
    fn answer_range(&mut self, id: u64, start: u64, end: u64, base: u64) {
        let txn = Txn::begin(&self.store).unwrap();
        let proof = self.feed.prove(&txn, start, end, base).unwrap();
        let blocks = self.blocks[start as usize..end as usize]
            .iter()
            .map(|b| &b[..])
            .collect();
        self.raw.send(&Message::Data(DataMsg {
            request: id,
            head: Some(*self.feed.head().unwrap()),
            proof,
            blocks,
        }));
    }

    /// Moves bytes until quiet; returns the requests A sent meanwhile, as
    /// `(start, trusted node, id)`.
    fn pump(&mut self) -> Vec<(u64, Option<u64>, u64)> {
        for out in self
            .raw
            .pump(&mut self.a, self.conn, Instant::ZERO)
            .unwrap()
        {
            if let Output::Event(e) = out {
                self.events.push(e);
            }
        }
        let mut requests = Vec::new();
        for (kind, body) in self.raw.messages().unwrap() {
            if let Ok(Message::Request {
                first_id, ranges, ..
            }) = Message::decode(kind, &body, 1 << 20)
            {
                for (r, id) in ranges.into_iter().zip(first_id..) {
                    requests.push((r.start, r.trusted, id));
                }
            }
        }
        requests
    }

    fn get(&mut self, seq: u64) -> peermq::Fetch {
        self.a
            .get(self.h.peer_id(), seq, Instant::ZERO, Timestamp::EPOCH)
            .unwrap()
    }

    /// Answers request `id` with block `start`, proven up to `trusted` or
    /// (with `head`) to H's signed head.
    fn answer(&mut self, id: u64, start: u64, trusted: Option<u64>, head: bool) {
        let txn = Txn::begin(&self.store).unwrap();
        let proof = match trusted {
            Some(t) => self.feed.prove_below(&txn, start, start + 1, t).unwrap(),
            None => self.feed.prove(&txn, start, start + 1, 0).unwrap(),
        };
        self.raw.send(&Message::Data(DataMsg {
            request: id,
            head: head.then(|| *self.feed.head().unwrap()),
            proof,
            blocks: vec![&self.blocks[start as usize][..]],
        }));
    }

    fn fetched(&self, seq: u64) -> bool {
        self.events
            .iter()
            .any(|e| matches!(e, Event::Fetched { seq: s, .. } if *s == seq))
    }

    fn disconnected(&self) -> bool {
        self.events
            .iter()
            .any(|e| matches!(e, Event::Disconnected { .. }))
    }
}

/// A sparse reader names, in a request, a tree node that the answer to its
/// previous request will bring, so the proof stops lower. When that answer
/// does not come (the writer refused it), the later proof cannot be checked:
/// the reader asks again with a node it holds, and keeps the connection.
#[test]
fn a_request_relying_on_a_refused_one_is_asked_again() {
    let mut f = SparseFetch::new();
    // Block 5 first, with a proof up to the roots: A now knows the tree.
    f.get(5);
    let [(5, None, id)] = f.pump()[..] else {
        panic!("expected one request for block 5");
    };
    f.answer(id, 5, None, true);
    f.pump();

    // 1000, then 1001: the second counts on the first answer's proof for
    // block 1001's leaf (flat index 2002).
    f.get(1000);
    f.get(1001);
    let requests = f.pump();
    let [(1000, _, first), (1001, Some(2002), second)] = requests[..] else {
        panic!("expected requests for 1000 and 1001, got {requests:?}");
    };
    f.raw.send(&Message::NoData {
        request: first,
        end: 1001,
    });
    f.answer(second, 1001, Some(2002), false);
    let requests = f.pump();
    // Asked again, stopping at a node A really holds.
    let [(1001, Some(held), again)] = requests[..] else {
        panic!("expected one new request for 1001, got {requests:?}");
    };
    assert_ne!(held, 2002);
    f.answer(again, 1001, Some(held), false);
    f.pump();
    assert!(f.fetched(1001));
    assert!(!f.disconnected(), "{:?}", f.events);
    assert_eq!(f.get(1001), peermq::Fetch::Ready(f.blocks[1001].clone()));
}

/// Before it has verified anything, a reader that was shown a signed head
/// asks for one block with a proof up to that head, and for the others with
/// proofs that stop at nodes the first answer brings: one signed head and
/// one long proof for the lot, not one each.
#[test]
fn requests_before_the_first_proof_count_on_its_answer() {
    let mut f = SparseFetch::new();
    for seq in [100, 300, 2000] {
        assert_eq!(f.get(seq), peermq::Fetch::Pending);
    }
    let requests = f.pump();
    let [(100, None, r100), (300, Some(t300), r300), (2000, Some(t2000), r2000)] = requests[..]
    else {
        panic!("expected the first request alone to go to the head: {requests:?}");
    };
    // Each stops at the subtree holding its block that block 100's path to
    // the root (0..4096) passes beside: the path goes through 0..512 and
    // 0..2048, so 256..512 and 1024..2048 come as proof nodes.
    assert_eq!(blocks_of(t300), (256, 512));
    assert_eq!(blocks_of(t2000), (1024, 2048));
    f.answer(r100, 100, None, true);
    f.answer(r300, 300, Some(t300), false);
    f.answer(r2000, 2000, Some(t2000), false);
    f.pump();
    for seq in [100, 300, 2000] {
        assert!(f.fetched(seq), "{seq}: {:?}", f.events);
        assert_eq!(
            f.get(seq),
            peermq::Fetch::Ready(f.blocks[seq as usize].clone())
        );
    }
    assert!(!f.disconnected(), "{:?}", f.events);
}

/// A caught-up reader's standing request, answered up to the writer's head,
/// stays open: it takes each append under the same id without asking again,
/// and an answer that does not continue where the last one ended is
/// `unexpected`.
#[test]
fn a_reader_keeps_its_standing_request_open_while_the_writer_appends() {
    let (mut f, requests) = SparseFetch::with(peermq::Prefetch::Window(4096));
    let [(0, None, id)] = requests[..] else {
        panic!("expected one standing request from 0: {requests:?}");
    };
    for (start, end) in [(0, 1), (1, 4), (4, 5)] {
        f.append((end - start) as u32);
        f.answer_range(id, start, end, start);
        let requests = f.pump();
        assert!(requests.is_empty(), "asked again: {requests:?}");
        assert!(!f.disconnected(), "{:?}", f.events);
    }
    let messages: Vec<u64> = f
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Message { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(messages, (0..5).collect::<Vec<_>>());
    // Block 4 again, under the id now open from 5.
    f.answer_range(id, 4, 5, 4);
    f.pump();
    let reason = f.events.iter().find_map(|e| match e {
        Event::Disconnected { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert!(
        matches!(reason, Some(CloseReason::Unexpected(_))),
        "{reason:?}"
    );
}

/// An answer that stops short of the writer's head closes the request: the
/// reader asks again for the rest.
#[test]
fn an_answer_short_of_the_head_closes_its_request() {
    let (mut f, requests) = SparseFetch::with(peermq::Prefetch::Window(4096));
    let [(0, None, id)] = requests[..] else {
        panic!("expected one standing request from 0: {requests:?}");
    };
    f.append(3);
    f.answer_range(id, 0, 2, 0);
    let requests = f.pump();
    // Block 2 anew, and a new standing request past the head.
    assert!(
        matches!(requests[..], [(2, _, a), (3, None, b)] if a != id && b != id),
        "expected new requests from blocks 2 and 3: {requests:?}"
    );
    assert!(!f.disconnected(), "{:?}", f.events);
}

/// Blocks `[first, end)` under flat-tree node `i`.
fn blocks_of(i: u64) -> (u64, u64) {
    let depth = (!i).trailing_zeros();
    let first = (i >> (depth + 1)) << depth;
    (first, first + (1 << depth))
}

/// H acknowledges, with receipts it signs, the blocks of A's feed to H in
/// `receipts`, one message each.
fn acknowledge(w: &mut World, receipts: &[RangeSet]) {
    let (mut raw, conn) = w.hostile(11);
    let feed = FeedDescriptor::queue(w.a.id(), w.h.peer_id()).id();
    for ranges in receipts {
        raw.send(&Message::Ack(Receipt::sign(&w.h, feed, ranges.clone())));
    }
    w.pump(Some((&mut raw, conn)));
    assert_eq!(w.closed_with(conn), None, "receipts are no offence");
}

#[test]
fn a_receipt_for_blocks_never_sent_acknowledges_only_what_exists() {
    // A recipient that acknowledges the future must not make the sender
    // count, or prune, blocks it appends later and never delivered.
    let mut w = World::new();
    let h = w.h.peer_id();
    w.a.send_batch(h, &[b"one".as_slice(), b"two"], Instant::ZERO)
        .unwrap();
    acknowledge(&mut w, &[RangeSet::from_range(0, 1_000)]);
    assert_eq!(w.a.acknowledged(h).unwrap(), RangeSet::from_range(0, 2));
    w.a.send_batch(h, &[b"three".as_slice(), b"four"], Instant::ZERO)
        .unwrap();
    assert_eq!(w.a.acknowledged(h).unwrap(), RangeSet::from_range(0, 2));
    assert_eq!(w.a.prune(h).unwrap(), 2, "only the delivered blocks go");
    let feed = w.a.feed_handle(FeedDescriptor::queue(w.a.id(), h)).unwrap();
    let store = w.a.store().clone();
    let txn = Txn::begin(&store).unwrap();
    let block = feed.get(&txn, 2).unwrap().expect("block 2 stays");
    assert_eq!(opened(&w.h, w.a.id(), 2, &block), b"three");
    w.still_serving();
}

#[test]
fn receipts_that_fragment_the_acknowledged_set_are_bounded() {
    // Acknowledging every other block makes every receipt rewrite a record
    // as large as the set: past the bound, such receipts are ignored.
    let mut w = World::new();
    let h = w.h.peer_id();
    let n = 2 * peermq::node::MAX_ACKED_RANGES as u64 + 100;
    let blocks: Vec<Vec<u8>> = (0..n).map(|i| i.to_le_bytes().to_vec()).collect();
    w.a.send_batch(h, &blocks, Instant::ZERO).unwrap();
    let receipts: Vec<RangeSet> = (0..n / 2)
        .map(|i| RangeSet::from_range(2 * i, 2 * i + 1))
        .collect();
    acknowledge(&mut w, &receipts);
    let acked = w.a.acknowledged(h).unwrap();
    assert_eq!(acked.range_count(), peermq::node::MAX_ACKED_RANGES);
    // A receipt that joins runs up is still taken.
    acknowledge(&mut w, &[RangeSet::from_range(0, n)]);
    assert_eq!(w.a.acknowledged(h).unwrap(), RangeSet::from_range(0, n));
    w.still_serving();
}

/// The messages of type `kind` H received.
fn received(raw: &mut RawPeer, kind: u8) -> Vec<Vec<u8>> {
    raw.messages()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| *k == kind)
        .map(|(_, body)| body)
        .collect()
}

#[test]
fn repeated_summaries_and_have_lists_get_no_more_answers_than_an_honest_peer_needs() {
    // Each mismatched summary would cost A its whole list, each have-list a
    // head of every feed it holds; an honest peer sends one of each.
    let mut w = World::new();
    w.a.broadcast(b"an event", Instant::ZERO).unwrap();
    let (mut raw, conn) = w.hostile(12);
    w.pump(Some((&mut raw, conn)));
    let _ = raw.messages().unwrap();
    for _ in 0..100 {
        raw.send(&Message::Summary {
            count: 7,
            digest: [7; 32],
        });
        raw.send(&Message::Have { feeds: Vec::new() });
    }
    w.pump(Some((&mut raw, conn)));
    let haves = received(&mut raw, 9).len();
    assert!((1..=4).contains(&haves), "{haves} have-lists sent");
    w.pump(Some((&mut raw, conn)));
    let heads = received(&mut raw, 1).len();
    assert!(heads <= 4, "{heads} heads sent");
    assert_eq!(w.closed_with(conn), None);
    w.still_serving();
}

#[test]
fn a_peer_asking_again_and_again_for_pruned_blocks_costs_a_bounded_look_each_time() {
    let mut w = World::new();
    let h = w.h.peer_id();
    let blocks: Vec<Vec<u8>> = (0..2_000u32).map(|i| i.to_le_bytes().to_vec()).collect();
    w.a.send_batch(h, &blocks, Instant::ZERO).unwrap();
    acknowledge(&mut w, &[RangeSet::from_range(0, 2_000)]);
    assert_eq!(w.a.prune(h).unwrap(), 2_000);
    let (mut raw, conn) = w.hostile(13);
    w.pump(Some((&mut raw, conn)));
    let _ = raw.messages().unwrap();
    for round in 0..50 {
        raw.send(&request(&w, round, 1, 2_000));
        w.pump(Some((&mut raw, conn)));
    }
    let refusals = received(&mut raw, 4);
    assert_eq!(refusals.len(), 50);
    for body in refusals {
        let Ok(Message::NoData { end, .. }) = Message::decode(4, &body, 1 << 20) else {
            panic!("a refusal");
        };
        assert!(end <= 256, "looked {end} blocks deep");
    }
    assert_eq!(w.closed_with(conn), None);
    w.still_serving();
}

#[test]
fn connections_each_parking_half_a_large_message_stay_within_the_buffer_budget() {
    // Each peer may send a message of up to 16 MiB; many peers each sending
    // half of one would otherwise hold 8 MiB apiece, for as long as they
    // keep the connection alive.
    let budget = 1 << 20;
    let mut a = node(
        peermq::Config {
            max_buffered_bytes: budget,
            ..config()
        },
        1,
    );
    let mut closed = Vec::new();
    let mut peers = Vec::new();
    for i in 0..4u64 {
        let key = Keypair::generate(&mut SeededRng::from_u64(200 + i));
        a.add_peer(key.peer_id()).unwrap();
        let mut raw = RawPeer::dial(&key, 300 + i, a.id()).unwrap();
        let conn = a.accept(Instant::ZERO);
        for _ in 0..4 {
            let bytes = raw.output().unwrap();
            if !bytes.is_empty() {
                a.handle_input(conn, &bytes, Instant::ZERO).unwrap();
            }
            while let Some(out) = a.poll_output() {
                if let Output::Transmit { bytes, .. } = out {
                    raw.input(&bytes).unwrap();
                }
            }
        }
        assert!(raw.is_open());
        // A data message declared 8 MiB long, 600 KB of it sent.
        let mut partial = ((8u32 << 20) + 1).to_le_bytes().to_vec();
        partial.push(3);
        partial.resize(600_000, 0);
        raw.send_plaintext(&partial);
        let bytes = raw.output().unwrap();
        a.handle_input(conn, &bytes, Instant::ZERO).unwrap();
        while let Some(out) = a.poll_output() {
            if let Output::Close { conn, reason } = out {
                closed.push((conn, reason));
            }
        }
        peers.push((raw, conn));
    }
    assert!(
        closed.len() >= 2,
        "four half messages of 600 KB cannot all fit 1 MiB: {closed:?}"
    );
    assert!(closed.iter().all(|(_, r)| *r == CloseReason::Overloaded));
}

#[test]
fn heads_of_authors_a_node_does_not_replicate_cost_no_signature_check() {
    // A restricted node drops a broadcast head of an author it does not
    // replicate before checking its signature (most of a head's cost): a
    // flood of them, forged or not, is ignored, and nothing is closed.
    let mut w = World::new();
    let (mut raw, conn) = w.hostile(14);
    let stranger = Keypair::generate(&mut SeededRng::from_u64(1234));
    let desc = FeedDescriptor::broadcast(stranger.peer_id());
    for i in 0..100u64 {
        let mut head = peermq::SignedHead::sign(
            &mut stranger.clone(),
            desc.id(),
            i + 1,
            peermq::merkle::Hash([i as u8; 32]),
        );
        // Half of them forged: they would close the connection if checked.
        if i % 2 == 0 {
            head.signature[0] ^= 1;
        }
        raw.send(&Message::Head { desc, head });
    }
    w.pump(Some((&mut raw, conn)));
    assert_eq!(w.closed_with(conn), None);
    assert!(w
        .a
        .broadcast_feeds()
        .iter()
        .all(|(a, _)| *a != stranger.peer_id()));
    w.still_serving();
}

#[test]
fn a_taken_message_sealed_to_another_key_is_dead_lettered_and_the_rest_taken() {
    let mut w = World::new();
    let (mut raw, conn) = w.hostile(8);
    let h = w.h.peer_id();
    // Message 0 is sealed to a stranger; message 1 to A, as it should be.
    let mut rng = SeededRng::from_u64(12);
    let stranger = Keypair::generate(&mut rng).peer_id();
    let sealed = |to: peermq::PeerId, seq: u64, m: &[u8]| {
        let s = peermq::identity::seal::Sealer::new(&mut rng.clone(), h, to).unwrap();
        let mut block = peermq::wire::envelope::sealed_header(
            &peermq::Schedule::NONE,
            &s.ephemeral(),
            m.len() + peermq::identity::seal::TAG_LEN,
        );
        s.seal_into(seq, m, &mut block);
        block
    };
    let wrong = sealed(stranger, 0, b"not for A");
    let right = sealed(w.a.id(), 1, b"for A");
    let feed = hostile_feed(&w, &[&wrong, &right]);
    serve_first_request(&mut w, &mut raw, conn, &feed, |_| {});
    assert_eq!(w.closed_with(conn), None, "the blocks are genuine");
    let policy = peermq::RetryPolicy::default();
    let lease = std::time::Duration::from_secs(60);
    let taken = w.a.take(10, lease, &policy, Timestamp::EPOCH).unwrap();
    let from_h: Vec<(u64, Vec<u8>)> = taken
        .into_iter()
        .filter(|t| t.lease.from == h)
        .map(|t| (t.lease.seq, t.data))
        .collect();
    assert_eq!(from_h, vec![(1, b"for A".to_vec())]);
    assert_eq!(
        w.a.dead_reason(h, 0).unwrap(),
        Some((DeadReason::Unreadable, 0))
    );
    let outs: Vec<Output> = std::iter::from_fn(|| w.a.poll_output()).collect();
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Event(Event::DeadLettered { from, seq: 0, reason: DeadReason::Unreadable, .. })
            if *from == h
    )));
}

/// Bytes of blocks in the data messages `raw` received since last asked.
fn block_bytes_received(raw: &mut RawPeer) -> usize {
    raw.messages()
        .unwrap()
        .iter()
        .filter_map(|(kind, body)| match Message::decode(*kind, body, 1 << 20) {
            Ok(Message::Data(d)) => Some(d.blocks.iter().map(|b| b.len()).sum::<usize>()),
            _ => None,
        })
        .sum()
}

#[test]
fn a_peer_asking_for_the_same_large_range_over_and_over_is_served_at_the_serving_rate() {
    let rate: usize = 1 << 20;
    let mut a = node(
        peermq::Config {
            max_serve_rate: rate as u64,
            ..config()
        },
        1,
    );
    let mut rng = SeededRng::from_u64(40);
    let (h, g) = (Keypair::generate(&mut rng), Keypair::generate(&mut rng));
    let blocks: Vec<Vec<u8>> = (0..2_000u32).map(|i| vec![i as u8; 1024]).collect();
    for (k, n) in [(&h, 2_000), (&g, 500)] {
        a.add_peer(k.peer_id()).unwrap();
        a.send_batch(k.peer_id(), &blocks[..n], Instant::ZERO)
            .unwrap();
    }
    let (mut raw, conn) = {
        let mut raw = RawPeer::dial(&h, 7, a.id()).unwrap();
        let conn = a.accept(Instant::ZERO);
        raw.pump(&mut a, conn, Instant::ZERO).unwrap();
        (raw, conn)
    };
    // H asks for its whole feed (2 MB) 200 times in one go: 400 MB.
    let feed = FeedDescriptor::queue(a.id(), h.peer_id()).id();
    let whole = RangeRequest {
        start: 0,
        end: 2_000,
        trusted: None,
    };
    raw.send(&Message::Request {
        feed,
        base: 0,
        first_id: 0,
        ranges: vec![whole; 200],
    });
    let one_message = config().max_data_bytes;
    let mut closes = Vec::new();
    for second in 0..3u64 {
        let now = Instant::from_micros(second * 1_000_000);
        let outs = raw.pump(&mut a, conn, now).unwrap();
        closes.extend(
            outs.into_iter()
                .filter(|o| matches!(o, Output::Close { .. })),
        );
        let served = block_bytes_received(&mut raw);
        assert!(
            served <= rate + one_message,
            "second {second}: served {served} bytes at a rate of {rate}"
        );
        assert!(
            served >= rate / 2,
            "second {second}: starved ({served} bytes)"
        );
        assert!(
            a.poll_timeout().is_some_and(|t| t > now),
            "H's requests wait for the refill"
        );
    }
    assert!(closes.is_empty(), "throttled, not cut off: {closes:?}");
    // Meanwhile, another peer is served its whole feed (500 KB) at once.
    let mut other = RawPeer::dial(&g, 8, a.id()).unwrap();
    let oc = a.accept(Instant::from_micros(2_000_000));
    other
        .pump(&mut a, oc, Instant::from_micros(2_000_000))
        .unwrap();
    other.send(&Message::Request {
        feed: FeedDescriptor::queue(a.id(), g.peer_id()).id(),
        base: 0,
        first_id: 0,
        // One data message answers each (256 KiB at most).
        ranges: [(0, 200), (200, 400), (400, 500)]
            .map(|(start, end)| RangeRequest {
                start,
                end,
                trusted: None,
            })
            .to_vec(),
    });
    other
        .pump(&mut a, oc, Instant::from_micros(2_000_000))
        .unwrap();
    let got = block_bytes_received(&mut other);
    assert!(got >= 500 * 1024, "{got}");
}

#[test]
fn a_peer_reconnecting_in_a_loop_is_refused_past_its_quota_and_keeps_its_open_connection() {
    let mut w = World::new();
    let limit = peermq::node::limits::MAX_ACCEPTS_PER_PEER as u64;
    let mut conns = Vec::new();
    for seed in 0..limit + 4 {
        let mut raw = RawPeer::dial(&w.h, 100 + seed, w.a.id()).unwrap();
        let conn = w.a.accept(Instant::ZERO);
        w.pump(Some((&mut raw, conn)));
        conns.push((raw, conn));
    }
    let reasons: Vec<Option<CloseReason>> = conns.iter().map(|(_, c)| w.closed_with(*c)).collect();
    // Each of the first `limit` replaces the one before; the rest are
    // refused, and the last admitted stays open.
    let admitted = limit as usize;
    assert!(reasons[..admitted - 1]
        .iter()
        .all(|r| *r == Some(CloseReason::Duplicate)));
    assert_eq!(reasons[admitted - 1], None, "{reasons:?}");
    assert!(
        reasons[admitted..]
            .iter()
            .all(|r| matches!(r, Some(CloseReason::ConnectingTooOften { .. }))),
        "{reasons:?}"
    );
    w.still_serving();
}

#[test]
fn connections_past_the_inbound_limit_are_closed_as_they_come() {
    let mut a = node(
        peermq::Config {
            max_inbound: 3,
            ..config()
        },
        1,
    );
    let mut closed = Vec::new();
    for _ in 0..5 {
        let conn = a.accept(Instant::ZERO);
        while let Some(out) = a.poll_output() {
            if let Output::Close { conn: c, reason } = out {
                closed.push((c, reason));
            }
        }
        let _ = conn;
    }
    assert_eq!(closed.len(), 2, "{closed:?}");
    assert!(closed
        .iter()
        .all(|(_, r)| *r == CloseReason::TooManyConnections { limit: 3 }));
    // A slot frees when a connection ends.
    a.handle_closed(ConnId(0), Instant::ZERO);
    let _ = a.accept(Instant::ZERO);
    assert!(std::iter::from_fn(|| a.poll_output()).all(|o| !matches!(
        o,
        Output::Close {
            reason: CloseReason::TooManyConnections { .. },
            ..
        }
    )));
}

/// Feeds `bytes` to `node` on `conn` one at a time, `gap` apart from time
/// zero, running the node's timers as they fall due; returns when, and
/// why, the node closed the connection.
fn trickle(
    node: &mut Node<MemStore>,
    conn: ConnId,
    bytes: &[u8],
    gap: std::time::Duration,
) -> Option<(Instant, CloseReason)> {
    let mut now = Instant::ZERO;
    for b in bytes {
        now = now + gap;
        while let Some(t) = node.poll_timeout().filter(|t| *t <= now) {
            node.handle_timeout(t).unwrap();
            if let Some(close) = closed_at(node, conn, t) {
                return Some(close);
            }
        }
        node.handle_input(conn, &[*b], now).unwrap();
        if let Some(close) = closed_at(node, conn, now) {
            return Some(close);
        }
    }
    None
}

fn closed_at(
    node: &mut Node<MemStore>,
    conn: ConnId,
    now: Instant,
) -> Option<(Instant, CloseReason)> {
    std::iter::from_fn(|| node.poll_output()).find_map(|o| match o {
        Output::Close { conn: c, reason } if c == conn => Some((now, reason)),
        _ => None,
    })
}

#[test]
fn a_peer_that_handshakes_then_sends_a_byte_every_15_seconds_is_closed_as_idle() {
    let mut a = node(config(), 1);
    let h = Keypair::generate(&mut SeededRng::from_u64(99));
    a.add_peer(h.peer_id()).unwrap();
    let mut raw = RawPeer::dial(&h, 7, a.id()).unwrap();
    let conn = a.accept(Instant::ZERO);
    raw.pump(&mut a, conn, Instant::ZERO).unwrap();
    assert!(raw.is_open());
    // A keepalive would reset the idle timer; a byte of it never does,
    // as no frame completes.
    raw.send(&Message::Keepalive);
    let frame = raw.output().unwrap();
    let (at, reason) = trickle(&mut a, conn, &frame, std::time::Duration::from_secs(15))
        .expect("the trickling peer is closed");
    assert_eq!(reason, CloseReason::IdleTimeout);
    assert!(at <= Instant::from_micros(30_000_000), "closed at {at:?}");
}

#[test]
fn a_peer_that_sends_its_handshake_a_byte_at_a_time_is_closed_at_the_handshake_timeout() {
    let mut a = node(config(), 1);
    let h = Keypair::generate(&mut SeededRng::from_u64(99));
    a.add_peer(h.peer_id()).unwrap();
    let mut raw = RawPeer::dial(&h, 7, a.id()).unwrap();
    let conn = a.accept(Instant::ZERO);
    let first = raw.output().unwrap();
    let (at, reason) = trickle(&mut a, conn, &first, std::time::Duration::from_secs(1))
        .expect("the trickling peer is closed");
    assert_eq!(reason, CloseReason::HandshakeTimeout);
    assert!(at <= Instant::from_micros(11_000_000), "closed at {at:?}");
}

#[test]
fn standing_requests_past_four_per_connection_are_refused_at_once() {
    // Each standing request is answered at every append: a peer may hold
    // four open, so an append costs at most four answers per connection
    // (and connections are bounded by `max_inbound`).
    let mut w = World::new();
    let (mut raw, conn) = w.hostile(9);
    let h = w.h.peer_id();
    let feed = FeedDescriptor::queue(w.a.id(), h).id();
    raw.send(&Message::Request {
        feed,
        base: 0,
        first_id: 0,
        ranges: (0..10)
            .map(|i| RangeRequest {
                start: 0,
                end: 100 + i,
                trusted: None,
            })
            .collect(),
    });
    w.pump(Some((&mut raw, conn)));
    let refused = received(&mut raw, 4);
    assert_eq!(refused.len(), 6, "all but four refused at once");
    w.a.send(h, b"one", Instant::ZERO).unwrap();
    w.pump(Some((&mut raw, conn)));
    assert_eq!(
        received(&mut raw, 3).len(),
        4,
        "four answered at the append"
    );
    assert_eq!(w.closed_with(conn), None);
    w.still_serving();
}

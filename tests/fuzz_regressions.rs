//! Inputs the fuzz targets (fuzz/, see fuzz/README.md) found crashing the
//! core, one test each, named for what must hold instead.

use std::time::Duration;

use peermq::feed::FeedDescriptor;
use peermq::store::Table;
use peermq::{Config, Entropy, Instant, Mailbox, MemStore, Node, NodeError, Timestamp};

fn config() -> Config {
    Config {
        store_poll_interval: None,
        ..Config::default()
    }
}

fn open(store: MemStore, seed: u64) -> Node<MemStore> {
    Node::open(store, config(), Entropy::deterministic(seed), Instant::ZERO).unwrap()
}

/// A's and H's stores after H received and acknowledged the three
/// messages A sent it.
fn exchanged() -> (MemStore, MemStore, peermq::PeerId, peermq::PeerId) {
    let (mut a, mut h) = (open(MemStore::new(), 1), open(MemStore::new(), 2));
    let (a_id, h_id) = (a.id(), h.id());
    a.add_peer(h_id).unwrap();
    h.add_peer(a_id).unwrap();
    let now = Instant::ZERO;
    for m in [&b"a0"[..], b"a1", b"a2"] {
        a.send(h_id, m, now).unwrap();
    }
    let (ac, hc) = (a.connect(h_id, now), h.accept(now));
    peermq::pump_pair((&mut a, ac), (&mut h, hc), now).unwrap();
    for r in h.read(Mailbox::Unread, None, 10, Timestamp::EPOCH).unwrap() {
        h.archive(r.from, r.seq, now).unwrap();
    }
    let later = now + Duration::from_secs(5);
    h.handle_timeout(later).unwrap();
    a.handle_timeout(later).unwrap();
    peermq::pump_pair((&mut a, ac), (&mut h, hc), later).unwrap();
    assert!(!a.receipts(h_id).unwrap().is_empty(), "H acknowledged");
    (a.into_store(), h.into_store(), a_id, h_id)
}

/// store_records: one bit flipped in the version byte of an outbox record
/// made it read as the older layout, whose first receipt position then
/// lay past its last, and listing the receipts subtracted past zero
/// (src/node/outbox.rs). Such a record is corrupt, and says so.
#[test]
fn an_outbox_record_whose_first_receipt_is_past_its_last_is_reported_corrupt() {
    let (store, _, a_id, h_id) = exchanged();
    let feed = FeedDescriptor::queue(a_id, h_id).id();
    // The fuzzer's input: bit 0 of byte 0 flipped (layout 3 read as 2).
    assert!(store.tamper(Table::Receipts, &feed.0, |v| v[0] ^= 1));
    let a = open(store, 1);
    assert!(
        matches!(a.receipts(h_id), Err(NodeError::Store(_))),
        "{:?}",
        a.receipts(h_id)
    );
}

/// proof_verify: a proof whose sibling node claimed a size near 2^64 made
/// the parent's size overflow while its hash was computed
/// (src/merkle/mod.rs). The proof is refused, as any lie in it is.
#[test]
fn a_proof_node_whose_size_overflows_its_parents_is_refused_not_a_panic() {
    use peermq::feed::Feed;
    use peermq::{Keypair, Txn};
    let mut key = Keypair::from_bytes(&[1; 32]);
    let desc = FeedDescriptor::broadcast(key.peer_id());
    let blocks: [&[u8]; 2] = [b"hello", b"world"];
    let author = MemStore::new();
    let mut feed = Feed::new(desc);
    let mut txn = Txn::begin(&author).unwrap();
    let head = feed.append_batch(&mut txn, &mut key, &blocks).unwrap();
    txn.commit().unwrap();
    let txn = Txn::begin(&author).unwrap();
    let mut proof = feed.prove(&txn, 0, 1, 0).unwrap();
    assert!(!proof.nodes.is_empty(), "block 0's proof carries block 1");
    proof.nodes[0].size = u64::MAX;

    let replica = MemStore::new();
    let mut txn = Txn::begin(&replica).unwrap();
    let mut copy = Feed::new(desc);
    assert!(copy
        .verify_and_store(&mut txn, &head, &proof, &blocks[..1])
        .is_err());
}

/// handle_input: a request naming trusted node `u64::MAX` (no node has
/// that index) overflowed while it was encoded (src/wire/message.rs). It
/// encodes, and decodes to a node that does not exist either.
#[test]
fn a_request_naming_trusted_node_u64_max_encodes_to_no_real_node() {
    use peermq::wire::{Message, RangeRequest, MSG_HEADER_LEN};
    let request = Message::Request {
        feed: peermq::feed::FeedId([5; 32]),
        base: 0,
        first_id: 0,
        ranges: vec![RangeRequest {
            start: 0,
            end: 1,
            trusted: Some(u64::MAX),
        }],
    };
    let mut bytes = Vec::new();
    request.encode(&mut bytes);
    let Ok(Message::Request { ranges, .. }) =
        Message::decode(bytes[4], &bytes[MSG_HEADER_LEN..], 1)
    else {
        panic!("the request decodes");
    };
    assert_eq!(ranges[0].trusted, Some(u64::MAX - 1));
    assert!(!peermq::merkle::fits(0, 1, 1 << 62, 0, ranges[0].trusted));
}

/// store_records: a flipped bit in the inbox record of a sender (the set
/// of blocks held) claimed blocks up to about 2^62, and reading the inbox
/// walked every number of that range looking for them
/// (src/node/queue.rs, src/node/work.rs). Nothing can have arrived past
/// the feed's verified length, so such a record is refused when it is
/// loaded, naming the sender, and no walk starts.
#[test]
fn an_inbox_record_claiming_blocks_past_the_feed_is_reported_damaged_not_walked() {
    use peermq::RetryPolicy;
    let (_, store, a_id, _) = exchanged();
    // `version | count u32 | (start u64, end u64)`: held [0, 3) becomes
    // [0, 3 + 2^62).
    assert!(store.tamper(Table::Inbox, &a_id.0, |v| {
        let last = v.len() - 1;
        v[last] ^= 0x40;
    }));
    let mut h = open(store, 2);
    let wall = Timestamp::from_micros(1);
    let damaged = |e: NodeError| {
        let text = e.to_string();
        assert!(
            text.contains(&a_id.to_string()) && text.contains("damaged"),
            "{text}"
        );
    };
    damaged(h.read(Mailbox::Unread, None, 10, wall).unwrap_err());
    damaged(h.read(Mailbox::Archived, None, 10, wall).unwrap_err());
    damaged(h.next_due(wall).unwrap_err());
    let taken = h.take(10, Duration::from_secs(1), &RetryPolicy::default(), wall);
    damaged(taken.unwrap_err());
}

/// handle_input: a request whose last range has id `u64::MAX` (allowed:
/// ids `first_id..first_id + count` must not overflow, and do not) made
/// the node step its id counter past `u64::MAX` while queueing it
/// (src/node/replicate/mod.rs). It is served like any other.
#[test]
fn a_request_whose_last_id_is_u64_max_is_served_without_overflow() {
    use peermq::wire::{Message, RangeRequest};
    use peermq::{Keypair, RawPeer, SeededRng};
    let mut a = open(MemStore::new(), 1);
    let h = Keypair::generate(&mut SeededRng::from_u64(99));
    a.add_peer(h.peer_id()).unwrap();
    a.send(h.peer_id(), b"hello", Instant::ZERO).unwrap();
    let mut raw = RawPeer::dial(&h, 7, a.id()).unwrap();
    let conn = a.accept(Instant::ZERO);
    raw.pump(&mut a, conn, Instant::ZERO).unwrap();
    assert!(raw.is_open());
    raw.send(&Message::Request {
        feed: FeedDescriptor::queue(a.id(), h.peer_id()).id(),
        base: 0,
        first_id: u64::MAX,
        ranges: vec![RangeRequest {
            start: 0,
            end: 1,
            trusted: None,
        }],
    });
    raw.pump(&mut a, conn, Instant::ZERO).unwrap();
    assert!(a.is_connected(&h.peer_id()), "the request was fine");
    let answered = raw.messages().unwrap().into_iter().any(|(kind, body)| {
        matches!(
            Message::decode(kind, &body, u64::MAX),
            Ok(Message::Data(d)) if d.request == u64::MAX
        )
    });
    assert!(answered, "request u64::MAX was answered with its block");
}

/// store_records: an inbox record whose held set, damaged, ran from just
/// past a missing block to about 2^62 made the node, once that block
/// arrived, announce every number of the range as a new message until
/// memory ran out (src/node/replicate/mod.rs). The record is refused when
/// it is loaded, as the message arrives: the error names the sender, and
/// nothing is announced.
#[test]
fn a_damaged_held_set_is_reported_when_mail_arrives_and_announces_nothing() {
    let (mut a, mut h) = (open(MemStore::new(), 1), open(MemStore::new(), 2));
    let (a_id, h_id) = (a.id(), h.id());
    a.add_peer(h_id).unwrap();
    h.add_peer(a_id).unwrap();
    let now = Instant::ZERO;
    a.send_batch(h_id, &[&b"m0"[..], b"m1"], now).unwrap();
    let (ac, hc) = (a.connect(h_id, now), h.accept(now));
    peermq::pump_pair((&mut a, ac), (&mut h, hc), now).unwrap();
    let store = h.into_store();
    // Held [0, 2) becomes [0, 2) and [3, 2^62).
    let mut held = vec![1u8];
    held.extend_from_slice(&2u32.to_le_bytes());
    for v in [0u64, 2, 3, 1 << 62] {
        held.extend_from_slice(&v.to_le_bytes());
    }
    assert!(store.tamper(Table::Inbox, &a_id.0, |v| *v = held));
    let mut h = open(store, 2);
    a.send(h_id, b"m2", now).unwrap();
    let (ac, hc) = (a.connect(h_id, now), h.accept(now));
    let error = peermq::pump_pair((&mut a, ac), (&mut h, hc), now).unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains(&a_id.to_string()) && text.contains("damaged"),
        "{text}"
    );
    while let Some(out) = h.poll_output() {
        assert!(
            !matches!(out, peermq::Output::Event(peermq::Event::Message { .. })),
            "announced {out:?}"
        );
    }
}

/// store_records: an outbox record whose count of receipts was damaged
/// (to about 2^40, with nothing past the few receipts really kept) made
/// the next receipt that proves everything delete every key of that
/// count, one by one, until memory ran out (src/node/outbox.rs). The
/// header is checked against the receipts it counts when it is loaded.
#[test]
fn a_damaged_receipt_count_is_reported_corrupt_not_walked() {
    let (store, h_store, a_id, h_id) = exchanged();
    let feed = FeedDescriptor::queue(a_id, h_id).id();
    // Layout 3: `version | first | next | checkpoint`, each u64 LE.
    let mut header = vec![3u8];
    for v in [0u64, 1 << 40, 1 << 40] {
        header.extend_from_slice(&v.to_le_bytes());
    }
    assert!(store.tamper(Table::Receipts, &feed.0, |v| *v = header));
    let (mut a, mut h) = (open(store, 1), open(h_store, 2));
    let now = Instant::ZERO;
    a.send(h_id, b"a3", now).unwrap();
    let (ac, hc) = (a.connect(h_id, now), h.accept(now));
    let _ = peermq::pump_pair((&mut a, ac), (&mut h, hc), now);
    for r in h.read(Mailbox::Unread, None, 10, Timestamp::EPOCH).unwrap() {
        h.archive(r.from, r.seq, now).unwrap();
    }
    let later = now + Duration::from_secs(5);
    let _ = h.handle_timeout(later);
    let _ = a.handle_timeout(later);
    let _ = peermq::pump_pair((&mut a, ac), (&mut h, hc), later);
    assert!(matches!(a.receipts(h_id), Err(NodeError::Store(_))));
}

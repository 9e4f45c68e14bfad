//! The test vectors in PROTOCOL.md, recomputed from the implementation.
//!
//! Run with `PRINT_VECTORS=1 cargo test --test protocol_vectors -- --nocapture`
//! to print them.

use std::collections::BTreeMap;

use peermq::feed::{Feed, FeedDescriptor};
use peermq::merkle::{tree_hash, Node};
use peermq::ranges::RangeSet;
use peermq::wire::envelope;
use peermq::wire::{
    CloseCode, DataMsg, HandshakePayload, Message, RangeRequest, Receipt, PROTOCOL_VERSION,
};
use peermq::{Keypair, MemStore, Schedule, Timestamp, Txn};

fn encode(m: &Message<'_>) -> String {
    let mut out = Vec::new();
    m.encode(&mut out);
    hex::encode(out)
}

fn vectors() -> BTreeMap<&'static str, String> {
    let mut v = BTreeMap::new();
    let mut author = Keypair::from_bytes(&[1u8; 32]);
    let recipient = Keypair::from_bytes(&[2u8; 32]);
    v.insert("author_id", author.peer_id().to_string());
    v.insert("recipient_id", recipient.peer_id().to_string());
    let desc = FeedDescriptor::queue(author.peer_id(), recipient.peer_id());
    v.insert("queue_feed_id", desc.id().to_string());
    v.insert(
        "broadcast_feed_id",
        FeedDescriptor::broadcast(author.peer_id()).id().to_string(),
    );

    let l0 = Node::leaf(0, b"hello");
    let l1 = Node::leaf(1, b"world");
    let l2 = Node::leaf(2, b"!");
    let p1 = Node::parent(&l0, &l1);
    v.insert("leaf_0_hello", l0.hash.to_string());
    v.insert("leaf_1_world", l1.hash.to_string());
    v.insert("parent_1", p1.hash.to_string());
    v.insert("tree_hash_3", tree_hash(&[p1, l2]).to_string());

    let store = MemStore::new();
    let mut feed = Feed::new(desc);
    let mut txn = Txn::begin(&store).unwrap();
    let head = feed
        .append_batch(
            &mut txn,
            &mut author,
            &[b"hello".as_slice(), b"world", b"!"],
        )
        .unwrap();
    txn.commit().unwrap();
    v.insert("signed_head_3", hex::encode(head.encode()));

    let txn = Txn::begin(&store).unwrap();
    v.insert("msg_head", encode(&Message::Head { desc, head }));
    v.insert(
        "msg_request",
        encode(&Message::Request {
            feed: desc.id(),
            base: 0,
            first_id: 7,
            ranges: vec![
                RangeRequest {
                    start: 1,
                    end: 2,
                    trusted: None,
                },
                RangeRequest {
                    start: 2,
                    end: 3,
                    trusted: Some(1),
                },
            ],
        }),
    );
    let proof = feed.prove(&txn, 1, 2, 0).unwrap();
    v.insert(
        "msg_data_1_2_base_0",
        encode(&Message::Data(DataMsg {
            request: 7,
            head: Some(head),
            proof,
            blocks: vec![b"world"],
        })),
    );
    // The same block for a verifier holding node 1 (blocks 0..2): the proof
    // stops there, with no head.
    let below = feed.prove_below(&txn, 1, 2, 1).unwrap();
    v.insert(
        "msg_data_1_2_below_node_1",
        encode(&Message::Data(DataMsg {
            request: 8,
            head: None,
            proof: below,
            blocks: vec![b"world"],
        })),
    );
    v.insert(
        "msg_summary",
        encode(&Message::Summary {
            count: 1,
            digest: [5; 32],
        }),
    );
    v.insert(
        "msg_have",
        encode(&Message::Have {
            feeds: vec![(desc.id(), 3)],
        }),
    );
    v.insert(
        "msg_no_data",
        encode(&Message::NoData { request: 7, end: 9 }),
    );
    let receipt = Receipt::sign(&recipient, desc.id(), RangeSet::from_range(0, 3));
    v.insert("msg_ack", encode(&Message::Ack(receipt)));
    v.insert("msg_keepalive", encode(&Message::Keepalive));

    let times = Schedule {
        not_before: Some(Timestamp::from_micros(1_800_000_000_000_000)),
        expires_at: Some(Timestamp::from_micros(1_800_003_600_000_000)),
    };
    v.insert(
        "envelope_hello_not_before_expires",
        hex::encode(envelope::wrap(&times, b"hello")),
    );
    let sealer = peermq::identity::seal::Sealer::new(
        &mut peermq::SeededRng::from_u64(1),
        author.peer_id(),
        recipient.peer_id(),
    )
    .unwrap();
    v.insert(
        "sealed_block_hello",
        hex::encode(envelope::wrap_sealed(
            &Schedule::NONE,
            &sealer.ephemeral(),
            &sealer.seal(0, b"hello"),
        )),
    );
    v.insert(
        "envelope_magic_escaped",
        hex::encode(envelope::wrap(&Schedule::NONE, &envelope::MAGIC)),
    );
    v.insert(
        "msg_close",
        encode(&Message::Close {
            code: CloseCode::Idle,
            text: "bye",
        }),
    );

    let (noise_static, handshake_hash) = ([9u8; 32], [0x0a; 32]);
    let payload = HandshakePayload {
        version: PROTOCOL_VERSION,
        identity: author.peer_id(),
        signature: author.sign(&HandshakePayload::signing_bytes(
            &noise_static,
            &handshake_hash,
        )),
    };
    v.insert(
        "handshake_payload_static_09_hash_0a",
        hex::encode(payload.encode()),
    );
    v
}

/// `name = hex` lines of the ```vectors block in PROTOCOL.md.
fn documented() -> BTreeMap<String, String> {
    let doc = include_str!("../PROTOCOL.md");
    let start = doc
        .find("```vectors")
        .expect("PROTOCOL.md has a vectors block");
    let body = &doc[start + "```vectors".len()..];
    let body = &body[..body.find("```").expect("vectors block is closed")];
    body.lines()
        .filter_map(|l| l.split_once(" = "))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn protocol_md_vectors_match_the_implementation() {
    let computed = vectors();
    if std::env::var_os("PRINT_VECTORS").is_some() {
        for (k, v) in &computed {
            println!("{k} = {v}");
        }
    }
    let documented = documented();
    for (name, want) in &computed {
        assert_eq!(documented.get(*name), Some(want), "vector {name}");
    }
    assert_eq!(
        documented.len(),
        computed.len(),
        "PROTOCOL.md lists exactly the computed vectors"
    );
}

#[test]
fn documented_messages_decode() {
    for (name, hexed) in documented() {
        if let Some(rest) = name.strip_prefix("msg_") {
            let bytes = hex::decode(&hexed).unwrap();
            let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
            assert_eq!(len + 4, bytes.len(), "{rest}: length prefix");
            Message::decode(bytes[4], &bytes[5..], 16).unwrap_or_else(|e| panic!("{rest}: {e}"));
        }
    }
}

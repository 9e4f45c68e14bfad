//! Property tests of feeds and proofs: every proof verifies, every bit flip
//! is caught.

use peermq::feed::{Feed, FeedDescriptor, SignedHead};
use peermq::merkle::{RangeProof, NODE_LEN};
use peermq::{Keypair, MemStore, PeerId, SeededRng, Txn};
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};

/// The shape of a generated case: a feed, how it was appended, and what is
/// proven to whom.
#[derive(Clone, Debug)]
struct Shape {
    seed: u64,
    len: u16,
    cut: u16,
    start: u16,
    width: u16,
    base: u16,
}

impl Arbitrary for Shape {
    fn arbitrary(g: &mut Gen) -> Self {
        Shape {
            seed: u64::arbitrary(g),
            len: u16::arbitrary(g),
            cut: u16::arbitrary(g),
            start: u16::arbitrary(g),
            width: u16::arbitrary(g),
            base: u16::arbitrary(g),
        }
    }
}

/// A writer feed of `len` blocks built in batches, plus a proof request.
struct Case {
    blocks: Vec<Vec<u8>>,
    head: SignedHead,
    proof: RangeProof,
    desc: FeedDescriptor,
    /// The verifier's store, already holding the head of `base` blocks.
    reader: MemStore,
    reader_feed: Feed,
}

fn build(shape: &Shape) -> Case {
    let Shape {
        seed,
        len,
        cut,
        start,
        width,
        base,
    } = *shape;
    let len = u64::from(len % 300) + 1;
    let mut key = Keypair::generate(&mut SeededRng::from_u64(seed));
    let desc = FeedDescriptor::queue(key.peer_id(), PeerId([0x42; 32]));
    let blocks: Vec<Vec<u8>> = (0..len)
        .map(|i| format!("{seed}:{i}:{}", "x".repeat((i % 7) as usize)).into_bytes())
        .collect();
    let base = u64::from(base) % (len + 1);
    let writer = MemStore::new();
    let mut feed = Feed::new(desc);
    // First batch ends at `base` so the reader can take that head; the rest
    // are appended in batches at a second arbitrary cut.
    let mut bounds = vec![0, base, (u64::from(cut) % (len + 1)).max(base), len];
    bounds.dedup();
    let mut heads = Vec::new();
    for w in bounds.windows(2) {
        if w[0] == w[1] {
            continue;
        }
        let mut t = Txn::begin(&writer).unwrap();
        heads.push(
            feed.append_batch(&mut t, &mut key, &blocks[w[0] as usize..w[1] as usize])
                .unwrap(),
        );
        t.commit().unwrap();
    }
    let head = *feed.head().unwrap();
    let reader = MemStore::new();
    let mut reader_feed = Feed::new(desc);
    if base > 0 {
        // The reader takes the head at `base` through an upgrade proof from 0.
        let h_base = heads.iter().find(|h| h.length == base).copied().unwrap();
        // Rebuild the writer's tree as it was at `base`, to prove that head.
        let mut old = Feed::new(desc);
        let scratch = MemStore::new();
        let mut st = Txn::begin(&scratch).unwrap();
        old.append_batch(&mut st, &mut key, &blocks[..base as usize])
            .unwrap();
        let p = old.prove(&st, 0, 0, 0).unwrap();
        let mut rt = Txn::begin(&reader).unwrap();
        let empty: [&[u8]; 0] = [];
        reader_feed
            .verify_and_store(&mut rt, &h_base, &p, &empty)
            .unwrap();
        rt.commit().unwrap();
    }
    let start = u64::from(start) % (len + 1);
    let end = (start + u64::from(width) % 40).min(len);
    let t = Txn::begin(&writer).unwrap();
    let proof = feed.prove(&t, start, end, base).unwrap();
    Case {
        blocks: blocks[start as usize..end as usize].to_vec(),
        head,
        proof,
        desc,
        reader,
        reader_feed,
    }
}

fn verifies(c: &Case, head: &SignedHead, proof: &RangeProof, blocks: &[Vec<u8>]) -> bool {
    let t = Txn::begin(&c.reader).unwrap();
    c.reader_feed.verify(&t, head, proof, blocks).is_ok()
}

#[test]
fn every_proof_of_every_range_verifies() {
    fn prop(shape: Shape) -> bool {
        let c = build(&shape);
        let mut feed = c.reader_feed.clone();
        let mut t = Txn::begin(&c.reader).unwrap();
        feed.verify_and_store(&mut t, &c.head, &c.proof, &c.blocks)
            .is_ok()
            && t.commit().is_ok()
            && feed.len() == c.head.length
            && c.desc.id() == feed.id()
    }
    QuickCheck::new()
        .tests(300)
        .quickcheck(prop as fn(Shape) -> bool);
}

#[test]
fn any_bit_flip_is_rejected() {
    fn prop(shape: Shape, what: u8, bit: u32) -> TestResult {
        let c = build(&shape);
        let (mut head, mut proof, mut blocks) = (c.head, c.proof.clone(), c.blocks.clone());
        match what % 4 {
            0 => {
                let total: usize = blocks.iter().map(|b| b.len()).sum();
                if total == 0 {
                    return TestResult::discard();
                }
                let mut bit = bit as usize % (total * 8);
                for b in blocks.iter_mut() {
                    if bit < b.len() * 8 {
                        b[bit / 8] ^= 1 << (bit % 8);
                        break;
                    }
                    bit -= b.len() * 8;
                }
            }
            1 => {
                if proof.nodes.is_empty() {
                    return TestResult::discard();
                }
                let bit = bit as usize % (proof.nodes.len() * NODE_LEN * 8);
                let n = &mut proof.nodes[bit / (NODE_LEN * 8)];
                let mut enc = n.encode();
                let b = bit % (NODE_LEN * 8);
                enc[b / 8] ^= 1 << (b % 8);
                *n = peermq::merkle::Node::decode(n.index, &enc).unwrap();
            }
            2 => {
                // Feed id, length or root of the head.
                let mut enc = head.encode();
                let b = bit as usize % (72 * 8);
                enc[b / 8] ^= 1 << (b % 8);
                head = SignedHead::decode(&enc).unwrap();
                // Keep the proof consistent with a flipped length, so the
                // signature is what must catch it.
                proof.length = head.length;
            }
            _ => {
                let b = bit as usize % (64 * 8);
                head.signature[b / 8] ^= 1 << (b % 8);
            }
        }
        TestResult::from_bool(!verifies(&c, &head, &proof, &blocks))
    }
    QuickCheck::new()
        .tests(400)
        .quickcheck(prop as fn(Shape, u8, u32) -> TestResult);
}

#[test]
fn a_range_proof_is_far_smaller_than_single_proofs() {
    let c = build(&Shape {
        seed: 1,
        len: 299,
        cut: 0,
        start: 100,
        width: 39,
        base: 0,
    });
    let k = c.proof.end - c.proof.start;
    assert_eq!(k, 39);
    // A single-block proof in a 300-block tree carries up to ⌈log2 300⌉ = 9
    // siblings; 39 of them would carry ~350. The range shares its interior.
    assert!(
        c.proof.nodes.len() <= 2 * 9,
        "{} nodes for {k} blocks",
        c.proof.nodes.len()
    );
}

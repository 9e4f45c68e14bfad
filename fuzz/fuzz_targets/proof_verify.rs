//! Merkle range proofs (PROTOCOL.md section 6), as a replica checks them:
//! a valid proof of a 13-block feed (heads at 3, 7 and 13 blocks), for a
//! verifier holding 0, 3 or 7 blocks, built from fields the fuzzer picks
//! and then changed field by field (node hashes and sizes, lengths,
//! bases, the trusted node, the blocks, the head).
//!
//! Oracles: nothing panics; an unchanged proof for the verifier's own
//! base verifies; and whatever verifies is the truth: every block
//! accepted is the author's block at that position, and a head adopted
//! is one the author signed.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use peermq::feed::{Feed, FeedDescriptor, SignedHead};
use peermq::merkle::{Hash, Node, RangeProof};
use peermq::{Keypair, MemStore, Txn};

const BATCHES: [u64; 3] = [3, 4, 6];

struct World {
    desc: FeedDescriptor,
    blocks: Vec<Vec<u8>>,
    /// Per batch: the author's store at that length, and the head.
    sources: Vec<(MemStore, SignedHead)>,
    /// Verifiers holding 0, 3 and 7 blocks.
    verifiers: Vec<MemStore>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let mut key = Keypair::from_bytes(&[1; 32]);
        let desc = FeedDescriptor::broadcast(key.peer_id());
        let blocks: Vec<Vec<u8>> = (0..13u8).map(|i| vec![i; 1 + i as usize * 5]).collect();
        let store = MemStore::new();
        let mut feed = Feed::new(desc);
        let mut sources = Vec::new();
        let mut at = 0usize;
        for n in BATCHES {
            let mut txn = Txn::begin(&store).unwrap();
            let head = feed
                .append_batch(&mut txn, &mut key, &blocks[at..at + n as usize])
                .unwrap();
            txn.commit().unwrap();
            at += n as usize;
            sources.push((store.snapshot(), head));
        }
        let mut verifiers = vec![MemStore::new()];
        for (src, head) in &sources[..2] {
            let v = MemStore::new();
            let txn = Txn::begin(src).unwrap();
            let f = Feed::load(&txn, &desc.id()).unwrap().unwrap();
            let proof = f.prove(&txn, 0, head.length, 0).unwrap();
            let mut vtxn = Txn::begin(&v).unwrap();
            let mut vf = Feed::new(desc);
            vf.verify_and_store(&mut vtxn, head, &proof, &blocks[..head.length as usize])
                .unwrap();
            vtxn.commit().unwrap();
            verifiers.push(v);
        }
        World {
            desc,
            blocks,
            sources,
            verifiers,
        }
    })
}

#[derive(Arbitrary, Debug)]
struct Input {
    verifier: u8,
    head: u8,
    start: u8,
    blocks: u8,
    shown: u8,
    trusted: Option<u8>,
    changes: Vec<Change>,
}

#[derive(Arbitrary, Debug)]
enum Change {
    NodeHash { i: u8, bit: u8 },
    NodeSize { i: u8, size: u64 },
    NodeIndex { i: u8, index: u64 },
    DropNode(u8),
    AddNode { hash: [u8; 32], size: u64 },
    SwapNodes(u8, u8),
    Start(u64),
    End(u64),
    Length(u64),
    Base(u64),
    Shown(u64),
    Trusted(Option<u64>),
    Block { i: u8, bytes: Vec<u8> },
    DropBlock,
    AddBlock(Vec<u8>),
    HeadLength(u64),
    HeadRoot([u8; 32]),
}

fuzz_target!(|input: Input| {
    let w = world();
    let vi = input.verifier as usize % w.verifiers.len();
    let vstore = w.verifiers[vi].snapshot();
    let have = [0u64, 3, 7][vi];
    let (src, real_head) = &w.sources[input.head as usize % w.sources.len()];
    let len = real_head.length;
    let start = u64::from(input.start) % (len + 1);
    let end = (start + u64::from(input.blocks)).min(len);
    let stxn = Txn::begin(src).unwrap();
    let sfeed = Feed::load(&stxn, &w.desc.id()).unwrap().unwrap();
    let proof = match input.trusted {
        Some(t) => sfeed.prove_below(&stxn, start, end, u64::from(t)),
        None => {
            let base = have.min(len);
            let shown = (base + u64::from(input.shown)).min(len);
            sfeed.prove_showing(&stxn, start, end, base, shown)
        }
    };
    let built = proof.is_ok();
    let mut proof = proof.unwrap_or(RangeProof {
        start,
        end,
        length: len,
        base: have,
        shown: have,
        trusted: input.trusted.map(u64::from),
        nodes: Vec::new(),
    });
    let mut blocks: Vec<Vec<u8>> = w.blocks[start as usize..end as usize].to_vec();
    let mut head = *real_head;
    for c in &input.changes {
        let n = proof.nodes.len();
        match c {
            Change::NodeHash { i, bit } if n > 0 => {
                proof.nodes[*i as usize % n].hash.0[(*bit as usize / 8) % 32] ^= 1 << (bit % 8)
            }
            Change::NodeSize { i, size } if n > 0 => proof.nodes[*i as usize % n].size = *size,
            Change::NodeIndex { i, index } if n > 0 => proof.nodes[*i as usize % n].index = *index,
            Change::DropNode(i) if n > 0 => {
                proof.nodes.remove(*i as usize % n);
            }
            Change::AddNode { hash, size } => proof.nodes.push(Node {
                index: 0,
                hash: Hash(*hash),
                size: *size,
            }),
            Change::SwapNodes(a, b) if n > 0 => proof.nodes.swap(*a as usize % n, *b as usize % n),
            Change::Start(v) => proof.start = *v,
            Change::End(v) => proof.end = *v,
            Change::Length(v) => proof.length = *v,
            Change::Base(v) => proof.base = *v,
            Change::Shown(v) => proof.shown = *v,
            Change::Trusted(t) => proof.trusted = *t,
            Change::Block { i, bytes } if !blocks.is_empty() => {
                let k = *i as usize % blocks.len();
                blocks[k] = bytes.clone();
            }
            Change::DropBlock => {
                blocks.pop();
            }
            Change::AddBlock(b) => blocks.push(b.clone()),
            Change::HeadLength(v) => head.length = *v,
            Change::HeadRoot(r) => head.root = Hash(*r),
            _ => {}
        }
    }
    let changed = !input.changes.is_empty();

    let mut vtxn = Txn::begin(&vstore).unwrap();
    let mut vfeed = Feed::open(&vtxn, w.desc).unwrap();
    let result = match proof.trusted {
        Some(_) => vfeed.verify_below_and_store(&mut vtxn, &proof, &blocks),
        None => vfeed.verify_and_store(&mut vtxn, &head, &proof, &blocks),
    };
    if result.is_ok() {
        let s = proof.start as usize;
        for (i, b) in blocks.iter().enumerate() {
            assert_eq!(
                Some(b),
                w.blocks.get(s + i),
                "accepted a block {} that the author never wrote",
                s + i
            );
        }
        if proof.trusted.is_none() {
            assert!(
                w.sources.iter().any(|(_, h)| *h == head),
                "adopted a head the author never signed"
            );
        }
    } else if !changed && built && input.trusted.is_none() {
        // A proof built for this verifier's own base verifies.
        panic!("a valid proof was refused: {result:?}");
    }
});

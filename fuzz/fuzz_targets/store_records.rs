//! The store's records, read back after corruption (a bad disk page, a
//! torn write): every table's records of two nodes that exchanged mail,
//! receipts, broadcast events, categories, leases and a mailbox list,
//! with the fuzzer's changes to any of them (bits, bytes, truncation,
//! extension, replacement).
//!
//! Oracle: nothing panics, loops or balloons. Opening the node and every
//! read either works or returns an error; serving a peer from the
//! corrupted store (when asked) closes connections or fails, but the peer
//! never accepts what does not verify.
#![no_main]

use std::ops::{Bound, ControlFlow};
use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use peermq::feed::{Feed, FeedDescriptor};
use peermq::store::Table;
use peermq::{Category, Instant, Mailbox, MemStore, RetryPolicy, Timestamp, Txn};
use peermq_fuzz::{fixture, open, A_SEED, H_SEED};

struct World {
    /// A's and H's stores after the exchange.
    stores: [MemStore; 2],
    /// Every record of each: `(table, key)`.
    keys: [Vec<(Table, Vec<u8>)>; 2],
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let f = fixture();
        let now = Instant::ZERO;
        let wall = Timestamp::from_micros(1_000_000);
        let mut a = open(f.a_store.snapshot(), A_SEED, false);
        let mut h = open(f.h_store.snapshot(), H_SEED, false);
        let (a_id, h_id) = (a.id(), h.id());
        a.add_mailbox(f.x_key.peer_id(), now).unwrap();
        let cat = Category::new("later").unwrap();
        a.create_category(cat).unwrap();
        let ac = a.connect(h_id, now);
        let hc = h.accept(now);
        peermq::pump_pair((&mut a, ac), (&mut h, hc), now).unwrap();
        let got = a.read(Mailbox::Unread, None, 10, wall).unwrap();
        assert!(got.len() >= 3, "A received H's mail");
        a.archive(h_id, got[0].seq, now).unwrap();
        a.move_to(h_id, got[1].seq, Mailbox::Category(cat), now)
            .unwrap();
        a.clear(h_id, got[2].seq, now).unwrap();
        let _ = a
            .take(1, Duration::from_secs(60), &RetryPolicy::default(), wall)
            .unwrap();
        for r in h.read(Mailbox::Unread, None, 10, wall).unwrap() {
            h.archive(a_id, r.seq, now).unwrap();
        }
        let later = now + Duration::from_secs(5);
        a.handle_timeout(later).unwrap();
        h.handle_timeout(later).unwrap();
        peermq::pump_pair((&mut a, ac), (&mut h, hc), later).unwrap();
        let stores = [a.into_store(), h.into_store()];
        let keys = [0, 1].map(|i| {
            let txn = Txn::begin(&stores[i]).unwrap();
            let mut keys = Vec::new();
            for t in Table::ALL {
                txn.scan(t, (Bound::Unbounded, Bound::Unbounded), &mut |k, _| {
                    keys.push((t, k.to_vec()));
                    ControlFlow::Continue(())
                })
                .unwrap();
            }
            keys
        });
        World { stores, keys }
    })
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// H's store rather than A's.
    h: bool,
    changes: Vec<(u16, Change)>,
    /// Then serve the other node from the corrupted store.
    replicate: bool,
}

#[derive(Arbitrary, Debug)]
enum Change {
    Flip { at: u16, bit: u8 },
    Set { at: u16, value: u8 },
    Truncate(u16),
    Extend(Vec<u8>),
    Replace(Vec<u8>),
}

fuzz_target!(|input: Input| {
    let w = world();
    let i = usize::from(input.h);
    let store = w.stores[i].snapshot();
    let keys = &w.keys[i];
    for (pick, change) in &input.changes {
        let (table, key) = &keys[*pick as usize % keys.len()];
        store.tamper(*table, key, |v| match change {
            Change::Flip { at, bit } if !v.is_empty() => {
                let k = *at as usize % v.len();
                v[k] ^= 1 << (bit % 8);
            }
            Change::Set { at, value } if !v.is_empty() => {
                let k = *at as usize % v.len();
                v[k] = *value;
            }
            Change::Truncate(n) => v.truncate(*n as usize),
            Change::Extend(b) => v.extend_from_slice(b),
            Change::Replace(b) => *v = b.clone(),
            _ => {}
        });
    }
    let f = fixture();
    let (seed, other_seed) = if input.h {
        (H_SEED, A_SEED)
    } else {
        (A_SEED, H_SEED)
    };
    let ids = [f.a_key.peer_id(), f.h_key.peer_id()];
    let (me, peer) = (ids[i], ids[1 - i]);
    let now = Instant::ZERO;
    let wall = Timestamp::from_micros(2_000_000);
    let Ok(mut node) = peermq::Node::open(
        store.clone(),
        peermq_fuzz::config(false),
        peermq::Entropy::deterministic(seed),
        now,
    ) else {
        return;
    };
    for m in [
        Mailbox::Unread,
        Mailbox::Archived,
        Mailbox::Category(Category::DEAD),
    ] {
        let _ = node.read(m, None, 100, wall);
    }
    let _ = node.status();
    let _ = node.receipts(peer);
    let _ = node.acknowledged(peer);
    let _ = node.next_due(wall);
    let _ = node.categories(wall);
    let _ = node.held_in_mailboxes();
    let _ = node.carried();
    let _ = node.broadcast_get(me, 0);
    let _ = node.broadcast_get(peer, 0);
    let _ = node.take(4, Duration::from_secs(1), &RetryPolicy::default(), wall);
    for desc in [
        FeedDescriptor::queue(me, peer),
        FeedDescriptor::queue(peer, me),
        FeedDescriptor::broadcast(me),
        FeedDescriptor::broadcast(peer),
    ] {
        if let Ok(txn) = Txn::begin(&store) {
            if let Ok(Some(feed)) = Feed::load(&txn, &desc.id()) {
                for seq in 0..feed.len().min(8) {
                    let _ = feed.get(&txn, seq);
                    let _ = feed.prove(&txn, seq, seq + 1, 0);
                }
            }
        }
    }
    let _ = node.send(peer, b"after", now);
    let _ = node.prune(peer);

    if input.replicate {
        let other_store = w.stores[1 - i].snapshot();
        let mut other = open(other_store, other_seed, false);
        let c1 = node.connect(peer, now);
        let c2 = other.accept(now);
        let _ = peermq::pump_pair((&mut node, c1), (&mut other, c2), now);
        let later = now + Duration::from_secs(1);
        let _ = node.handle_timeout(later);
        let _ = other.handle_timeout(later);
        let _ = peermq::pump_pair((&mut node, c1), (&mut other, c2), later);
        // The healthy side never accepts a block the author did not write:
        // everything it holds still reads.
        let _ = other
            .read(Mailbox::Unread, None, 100, wall)
            .expect("the healthy node's store is intact");
    }
});

//! Core benchmarks: append, proofs and store commits, for 100-byte blocks,
//! and the signatures a send and a receive wait for.
//!
//! Run with `cargo bench -p peermq --bench core`. Every group reports
//! elements (blocks, signatures) per second.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use peermq::feed::{Feed, FeedDescriptor, SignedHead};
use peermq::store::{Store, Table, WriteBatch};
use peermq::{Keypair, LmdbStore, MemStore, PeerId, SeededRng, Sign, Signer, Txn};

const BLOCK: usize = 100;

fn blocks(n: usize, salt: u64) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut b = vec![0u8; BLOCK];
            b[..8].copy_from_slice(&(i as u64 ^ salt).to_le_bytes());
            b
        })
        .collect()
}

fn author() -> (Keypair, FeedDescriptor) {
    let key = Keypair::generate(&mut SeededRng::from_u64(1));
    let desc = FeedDescriptor::queue(key.peer_id(), PeerId([2; 32]));
    (key, desc)
}

/// Appends batches of 100-byte blocks to a fresh feed in `store`.
fn bench_append<S: Store>(c: &mut Criterion, group: &str, secs: u64, store: impl Fn() -> S) {
    let mut g = c.benchmark_group(group);
    g.measurement_time(Duration::from_secs(secs))
        .sample_size(20);
    for batch in [1usize, 100, 1000] {
        let store = store();
        let (mut key, desc) = author();
        let mut feed = Feed::new(desc);
        let data = blocks(batch, 0);
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("batch_{batch}"), |b| {
            b.iter(|| {
                let mut t = Txn::begin(&store).unwrap();
                feed.append_batch(&mut t, &mut key, &data).unwrap();
                t.commit().unwrap();
            })
        });
    }
    g.finish();
}

fn append(c: &mut Criterion) {
    // The temporary directories live until the benchmark ends.
    let dirs = std::cell::RefCell::new(Vec::new());
    bench_append(c, "append_lmdb_durable", 4, || {
        let dir = tempfile::tempdir().unwrap();
        let store = LmdbStore::open(dir.path()).unwrap();
        dirs.borrow_mut().push(dir);
        store
    });
    bench_append(c, "append_mem", 3, MemStore::new);
}

/// A 100,000-block feed in LMDB, and a reader that knows nothing yet.
fn seeded_feed() -> (tempfile::TempDir, LmdbStore, Feed, Vec<Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let store = LmdbStore::open(dir.path()).unwrap();
    let (mut key, desc) = author();
    let mut feed = Feed::new(desc);
    let data = blocks(100_000, 0);
    for chunk in data.chunks(10_000) {
        let mut t = Txn::begin(&store).unwrap();
        feed.append_batch(&mut t, &mut key, chunk).unwrap();
        t.commit().unwrap();
    }
    (dir, store, feed, data)
}

fn proofs(c: &mut Criterion) {
    let (_dir, store, feed, data) = seeded_feed();
    let head = *feed.head().unwrap();
    let mut g = c.benchmark_group("proof");
    g.measurement_time(Duration::from_secs(3)).sample_size(30);
    for k in [1u64, 1000] {
        g.throughput(Throughput::Elements(k));
        g.bench_function(format!("create_range_{k}"), |b| {
            let mut start = 0;
            b.iter(|| {
                start = (start + 7919) % (100_000 - k);
                let t = Txn::begin(&store).unwrap();
                feed.prove(&t, start, start + k, 0).unwrap()
            })
        });
        let start = 31_337;
        let t = Txn::begin(&store).unwrap();
        let proof = feed.prove(&t, start, start + k, 0).unwrap();
        drop(t);
        let range = &data[start as usize..(start + k) as usize];
        let reader = MemStore::new();
        let reader_feed = Feed::new(*feed.descriptor());
        g.bench_function(format!("verify_range_{k}_with_signature"), |b| {
            b.iter(|| {
                // A reader without the head: one signature check per proof.
                let t = Txn::begin(&reader).unwrap();
                reader_feed.verify(&t, &head, &proof, range).unwrap()
            })
        });
    }
    g.finish();
}

fn store_commits(c: &mut Criterion) {
    let mut g = c.benchmark_group("store_commit_lmdb");
    g.measurement_time(Duration::from_secs(3)).sample_size(20);
    let dir = tempfile::tempdir().unwrap();
    let store = LmdbStore::open(dir.path()).unwrap();
    let value = vec![7u8; BLOCK];
    for per_txn in [1u64, 1000] {
        g.throughput(Throughput::Elements(per_txn));
        let mut next = 0u64;
        g.bench_function(format!("puts_{per_txn}_per_commit"), |b| {
            b.iter_batched(
                || {
                    let mut batch = WriteBatch::new();
                    for _ in 0..per_txn {
                        next += 1;
                        batch.put(Table::Blocks, &next.to_be_bytes(), &value);
                    }
                    batch
                },
                |batch| store.commit(batch).unwrap(),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

/// A head's signature: as RFC 8032 makes it, with a nonce prepared while
/// idle (what a send then waits for), preparing and signing together (the
/// whole cost, paid partly while idle), and the check.
fn signatures(c: &mut Criterion) {
    let mut g = c.benchmark_group("signature");
    g.throughput(Throughput::Elements(1));
    let (key, desc) = author();
    let msg = SignedHead::signing_bytes(&desc.id(), 1, &peermq::merkle::Hash([5; 32]));
    g.bench_function("sign_rfc8032", |b| b.iter(|| key.sign(&msg)));
    let mut signer = Signer::new(key.clone(), Some([9; 32]));
    g.bench_function("sign_prepared", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                signer.sign_ahead();
                let t = Instant::now();
                std::hint::black_box(signer.sign(&msg));
                spent += t.elapsed();
            }
            spent
        })
    });
    g.bench_function("prepare_then_sign", |b| {
        b.iter(|| {
            signer.sign(&msg);
            signer.sign_ahead()
        })
    });
    let sig = key.sign(&msg);
    let vk = key.peer_id().verify_key();
    g.bench_function("verify", |b| b.iter(|| vk.verify(&msg, &sig).unwrap()));
    g.finish();
}

/// Sealing a 100-byte message to its recipient: a key agreement (once per
/// epoch on each side), then what each message costs to seal and to open.
fn sealing(c: &mut Criterion) {
    use peermq::identity::seal::{Opener, Sealer};
    let mut g = c.benchmark_group("seal");
    g.throughput(Throughput::Elements(1));
    let mut rng = peermq::SeededRng::from_u64(4);
    let a = Keypair::generate(&mut rng);
    let b = Keypair::generate(&mut rng);
    let (from, to) = (a.peer_id(), b.peer_id());
    g.bench_function("key_agreement_sender", |bch| {
        bch.iter(|| Sealer::new(&mut rng, from, to).unwrap())
    });
    let sealer = Sealer::new(&mut rng, from, to).unwrap();
    let msg = [7u8; 100];
    g.bench_function("seal_100B", |bch| bch.iter(|| sealer.seal(3, &msg)));
    let sealed = sealer.seal(3, &msg);
    let e = sealer.ephemeral();
    g.bench_function("key_agreement_recipient", |bch| {
        bch.iter(|| Opener::new(&b).open(from, &e, 3, &sealed).unwrap())
    });
    let mut opener = Opener::new(&b);
    g.bench_function("open_100B", |bch| {
        bch.iter(|| opener.open(from, &e, 3, &sealed).unwrap())
    });
    g.finish();
}

criterion_group!(benches, append, proofs, store_commits, signatures, sealing);
criterion_main!(benches);

//! End-to-end replication between two in-memory nodes: 100,000 messages of
//! 100 bytes, through the Noise handshake and encrypted frames, on
//! `MemStore`. Reports messages per second, with both nodes pumped by one
//! thread (the cost of the work itself) and with each node on its own
//! thread, as two peers run (what this 2-core machine does end to end).
//!
//! Run with `cargo bench -p peermq --bench replicate`.

use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use peermq::{Config, ConnId, Instant, MemStore, Node, Output, Prefetch};

const MESSAGES: usize = 100_000;

struct Pair {
    a: Node<MemStore>,
    b: Node<MemStore>,
}

/// A writer (B) holding `MESSAGES` for A, and a reader (A) that has never
/// seen them.
fn setup() -> Pair {
    let cfg = || Config {
        prefetch: Prefetch::All,
        store_poll_interval: None,
        ..Config::default()
    };
    let mut a = Node::open(
        MemStore::new(),
        cfg(),
        peermq::Entropy::deterministic(1),
        Instant::ZERO,
    )
    .unwrap();
    let mut b = Node::open(
        MemStore::new(),
        cfg(),
        peermq::Entropy::deterministic(2),
        Instant::ZERO,
    )
    .unwrap();
    a.add_peer(b.id()).unwrap();
    let msgs: Vec<Vec<u8>> = (0..MESSAGES as u32)
        .map(|i| {
            let mut m = vec![0u8; 100];
            m[..4].copy_from_slice(&i.to_le_bytes());
            m
        })
        .collect();
    for chunk in msgs.chunks(10_000) {
        b.send_batch(a.id(), chunk, Instant::ZERO).unwrap();
    }
    Pair { a, b }
}

/// Connects B to A and pumps bytes until A holds every message.
fn replicate(mut p: Pair) -> Pair {
    let now = Instant::ZERO;
    let b_conn = p.b.connect(p.a.id(), now);
    let a_conn = p.a.accept(now);
    let (at_a, _) = peermq::pump_pair((&mut p.a, a_conn), (&mut p.b, b_conn), now).unwrap();
    let received = at_a
        .iter()
        .filter(|o| matches!(o, Output::Event(peermq::Event::Message { .. })))
        .count();
    assert_eq!(received, MESSAGES);
    p
}

/// Runs one node on the current thread until it has received `expect`
/// messages (the reader) or its peer hung up (the writer).
fn pump(
    mut node: Node<MemStore>,
    conn: ConnId,
    rx: Receiver<Vec<u8>>,
    tx: Sender<Vec<u8>>,
    expect: Option<usize>,
) -> Node<MemStore> {
    let now = Instant::ZERO;
    let mut received = 0usize;
    loop {
        while let Some(out) = node.poll_output() {
            match out {
                Output::Transmit { conn: c, bytes } if c == conn => {
                    // The peer hanging up ends the run; nothing to deliver.
                    let _ = tx.send(bytes);
                }
                Output::Event(peermq::Event::Message { .. }) => received += 1,
                _ => {}
            }
        }
        if expect == Some(received) {
            return node;
        }
        let timer_due = node.poll_timeout().is_some_and(|t| t <= now);
        let next = if timer_due {
            rx.try_recv()
        } else {
            rx.recv().map_err(|_| TryRecvError::Disconnected)
        };
        match next {
            Ok(bytes) => {
                node.handle_input(conn, &bytes, now).unwrap();
                while let Ok(bytes) = rx.try_recv() {
                    node.handle_input(conn, &bytes, now).unwrap();
                }
            }
            Err(TryRecvError::Empty) => node.handle_timeout(now).unwrap(),
            Err(TryRecvError::Disconnected) => return node,
        }
    }
}

/// Like [`replicate`], with each node on its own thread and the bytes
/// moving through channels.
fn replicate_threaded(mut p: Pair) -> Pair {
    let now = Instant::ZERO;
    let b_conn = p.b.connect(p.a.id(), now);
    let a_conn = p.a.accept(now);
    let (to_a, a_rx) = channel();
    let (to_b, b_rx) = channel();
    let Pair { a, b } = p;
    let writer = std::thread::spawn(move || pump(b, b_conn, b_rx, to_a, None));
    let a = pump(a, a_conn, a_rx, to_b, Some(MESSAGES));
    let b = writer.join().unwrap();
    Pair { a, b }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("replicate_mem_encrypted");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(MESSAGES as u64));
    g.bench_function("100k_x_100B", |bench| {
        bench.iter_batched(setup, replicate, BatchSize::PerIteration)
    });
    g.bench_function("100k_x_100B_two_threads", |bench| {
        bench.iter_batched(setup, replicate_threaded, BatchSize::PerIteration)
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

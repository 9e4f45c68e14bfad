//! How long a DHT lookup takes on a local test network: publishes records
//! for a number of keys, then looks each up from a fresh node and prints the
//! percentiles as one JSON line.
//!
//! `cargo run --release -p peermq-dht --example lookup_latency -- [NODES] [KEYS]`

use std::time::{Duration, Instant};

use peermq::Keypair;
use peermq_dht::{Dht, DhtConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20);
    let keys: u8 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(30);
    let net = mainline::Testnet::builder(nodes).build()?;
    let config = || {
        DhtConfig::default()
            .bootstrap(net.bootstrap.clone())
            .loopback(true)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut published = Vec::new();
        for i in 0..keys {
            let key = Keypair::from_bytes(&[i.wrapping_add(1); 32]);
            let dht = Dht::new(&key, config())?;
            dht.set_addresses(vec![([127, 0, 0, 1], 4000 + u16::from(i)).into()]);
            published.push((key.peer_id(), dht.record(), dht));
        }
        // Let the publishers land (they retry while joining the DHT).
        tokio::time::sleep(Duration::from_secs(10)).await;
        let reader = Dht::new(&Keypair::from_bytes(&[0; 32]), config())?;
        let mut took = Vec::new();
        let mut missed = 0;
        for (peer, want, _) in &published {
            let start = Instant::now();
            match reader.resolve(peer).await {
                Some(found) if found == *want => took.push(start.elapsed().as_secs_f64() * 1e3),
                Some(other) => return Err(format!("{peer} resolved to {other:?}").into()),
                None => missed += 1,
            }
        }
        took.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            took.get(((p / 100.0) * took.len() as f64) as usize)
                .copied()
        };
        println!(
            "{}",
            serde_json::json!({
                "nodes": nodes, "keys": keys, "found": took.len(), "missed": missed,
                "p50_ms": pct(50.0), "p99_ms": pct(99.0),
            })
        );
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

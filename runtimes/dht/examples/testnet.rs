//! A small Mainline DHT of its own, for a lab or a private network: `N`
//! nodes on one IPv4 address that know each other from the start.
//!
//! ```sh
//! cargo run --release -p peermq-dht --example testnet -- 10.0.0.1 5
//! ```
//!
//! Prints the nodes' addresses on one line, comma-separated (what
//! `--bootstrap` takes), and runs until killed.

use std::net::Ipv4Addr;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (ip, count) = match args.as_slice() {
        [ip] => (ip.as_str(), "5"),
        [ip, count] => (ip.as_str(), count.as_str()),
        _ => {
            fail("usage: testnet IPV4 [NODES] (the address to bind, how many nodes; 5 by default)")
        }
    };
    let ip: Ipv4Addr = ip
        .parse()
        .unwrap_or_else(|_| fail(&format!("`{ip}` is not an IPv4 address")));
    let count: usize = match count.parse() {
        Ok(n) if (1..=64).contains(&n) => n,
        _ => fail(&format!("`{count}` is not a node count from 1 to 64")),
    };
    let testnet = mainline::Testnet::builder(count)
        .bind_address(ip)
        .build()
        .unwrap_or_else(|e| fail(&format!("cannot start the DHT nodes: {e}")));
    println!("{}", testnet.bootstrap.join(","));
    loop {
        std::thread::park();
    }
}

fn fail(message: &str) -> ! {
    eprintln!("testnet: {message}");
    std::process::exit(2);
}

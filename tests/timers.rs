//! The node's deadlines, over random inputs: `handle_timeout` at the time
//! `poll_timeout` names always makes progress or moves that time on (no
//! spin), and every deadline a node owes is in what it names (none missed):
//! an open connection is heard from within the keepalive interval, one in
//! its handshake is given up within the handshake timeout, and a peer that
//! falls silent is dropped when its idle timeout comes, not before.

mod common;

use std::time::Duration;

use common::Net;
use peermq::{CloseReason, Config, Event, Instant, Output};
use quickcheck::{Arbitrary, Gen, QuickCheck};

const NODES: usize = 3;

#[derive(Clone, Debug)]
enum Op {
    /// Node `from` sends `n` messages to `to`.
    Send { from: usize, to: usize, n: u8 },
    /// Node `i` wants to stay connected to `j`.
    Dial { i: usize, j: usize },
    /// Node `i` no longer does.
    HangUp { i: usize, j: usize },
    /// Every link of node `i` breaks.
    Cut { i: usize },
    /// Node `i` crashes and comes back.
    Restart { i: usize },
    /// Node `i` stops being heard (its bytes are lost), or is heard again.
    Mute { i: usize, on: bool },
    /// Time passes, in milliseconds.
    Wait { ms: u16 },
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Self {
        let node = |g: &mut Gen| usize::arbitrary(g) % NODES;
        match u8::arbitrary(g) % 8 {
            0 | 1 => Op::Send {
                from: node(g),
                to: node(g),
                n: u8::arbitrary(g) % 20 + 1,
            },
            2 => Op::Dial {
                i: node(g),
                j: node(g),
            },
            3 => Op::HangUp {
                i: node(g),
                j: node(g),
            },
            4 => Op::Cut { i: node(g) },
            5 => Op::Restart { i: node(g) },
            6 => Op::Mute {
                i: node(g),
                on: bool::arbitrary(g),
            },
            _ => Op::Wait {
                ms: u16::arbitrary(g) % 30_000,
            },
        }
    }
}

fn config() -> Config {
    Config {
        keepalive_interval: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(6),
        handshake_timeout: Duration::from_secs(3),
        backoff_base: Duration::from_millis(100),
        backoff_cap: Duration::from_secs(2),
        ack_delay: Duration::from_millis(10),
        store_poll_interval: None,
        ..Config::default()
    }
}

/// Which nodes are not heard, and since when each is heard again.
#[derive(Clone, Copy)]
struct Muted {
    on: [bool; NODES],
    heard_from: [Instant; NODES],
}

impl Muted {
    /// Whether node `j` was heard through the whole idle timeout before
    /// `now` (with a keepalive interval's slack for its next bytes): only
    /// then is dropping it as idle wrong.
    fn heard_throughout(&self, j: usize, now: Instant) -> bool {
        let c = config();
        !self.on[j] && self.heard_from[j] + c.idle_timeout + c.keepalive_interval <= now
    }
}

/// Checks what a node's `poll_timeout` promises against what it owes.
fn check_owed(net: &mut Net, i: usize) -> Result<(), String> {
    let now = net.now;
    let c = config();
    let node = net.node(i);
    let fp = node.footprint();
    let due = node.poll_timeout();
    if fp.connections > 0 {
        // Something is always owed to a connection: a keepalive, or the end
        // of its handshake.
        let by = now + c.keepalive_interval.max(c.handshake_timeout);
        if due.is_none_or(|t| t > by) {
            return Err(format!(
                "n{i} at {now:?} has {} connections but its next deadline is {due:?}",
                fp.connections
            ));
        }
    }
    Ok(())
}

/// Runs the net for `d`, stepping each node to the time its
/// `poll_timeout` names and checking that the call moved it on.
fn run(net: &mut Net, d: Duration, muted: &Muted) -> Result<(), String> {
    let until = net.now + d;
    loop {
        net.settle();
        for i in 0..NODES {
            if net.nodes[i].is_some() {
                check_owed(net, i)?;
            }
        }
        let next = net
            .nodes
            .iter()
            .flatten()
            .filter_map(|n| n.poll_timeout())
            .min();
        let Some(t) = next.filter(|t| *t <= until) else {
            net.now = until;
            net.settle();
            return Ok(());
        };
        net.now = net.now.max(t);
        let now = net.now;
        for i in 0..NODES {
            let Some(node) = net.nodes[i].as_mut() else {
                continue;
            };
            let Some(due) = node.poll_timeout().filter(|t| *t <= now) else {
                continue;
            };
            node.handle_timeout(now).map_err(|e| e.to_string())?;
            let mut outputs = Vec::new();
            while let Some(o) = node.poll_output() {
                outputs.push(o);
            }
            let after = node.poll_timeout();
            if outputs.is_empty() && after.is_some_and(|t| t <= now) {
                return Err(format!(
                    "n{i} spins: handle_timeout at {now:?} (due {due:?}) did nothing and is due again at {after:?}"
                ));
            }
            for o in outputs {
                if let Output::Event(Event::Disconnected {
                    peer: Some(p),
                    reason: CloseReason::IdleTimeout,
                    ..
                }) = &o
                {
                    let j = net.index_of(p).unwrap_or(usize::MAX);
                    if j < NODES && muted.heard_throughout(j, now) && net.nodes[j].is_some() {
                        return Err(format!(
                            "n{i} dropped n{j} as idle at {now:?}, though n{j} is heard"
                        ));
                    }
                }
                net.on_output(i, o);
            }
        }
    }
}

fn prop(ops: Vec<Op>) -> Result<(), String> {
    let mut net = Net::with_configs(vec![config(); NODES]);
    for i in 0..NODES {
        for j in 0..NODES {
            if i != j {
                let id = net.ids[j];
                net.node(i).add_peer(id).unwrap();
            }
        }
    }
    let mut muted = Muted {
        on: [false; NODES],
        heard_from: [Instant::ZERO; NODES],
    };
    for op in ops {
        let now = net.now;
        match op {
            Op::Send { from, to, n } if from != to && net.nodes[from].is_some() => {
                let to = net.ids[to];
                let msgs: Vec<Vec<u8>> = (0..n).map(|k| vec![k; 64]).collect();
                net.node(from).send_batch(to, &msgs, now).unwrap();
            }
            Op::Dial { i, j } if i != j && net.nodes[i].is_some() => {
                let id = net.ids[j];
                net.node(i).dial(id, now);
            }
            Op::HangUp { i, j } if net.nodes[i].is_some() => {
                let id = net.ids[j];
                net.node(i).hang_up(&id);
            }
            Op::Cut { i } => net.disconnect(i),
            Op::Restart { i } => {
                net.crash(i);
                net.restart(i);
            }
            Op::Mute { i, on } => {
                if muted.on[i] && !on {
                    muted.heard_from[i] = now;
                }
                muted.on[i] = on;
                let m = muted.on;
                net.tamper = Some(Box::new(move |from, bytes| {
                    if m[from] {
                        bytes.clear();
                    }
                }));
            }
            Op::Wait { ms } => run(&mut net, Duration::from_millis(ms.into()), &muted)?,
            _ => {}
        }
        run(&mut net, Duration::ZERO, &muted)?;
    }
    // A muted peer's connections are dropped once the idle timeout passes.
    let idle = config().idle_timeout + config().keepalive_interval;
    run(&mut net, idle, &muted)?;
    for i in 0..NODES {
        let Some(node) = net.nodes[i].as_ref() else {
            continue;
        };
        for (j, _) in muted.on.iter().enumerate().filter(|(_, m)| **m) {
            if j != i && node.is_connected(&net.ids[j]) && !muted.on[i] {
                return Err(format!(
                    "n{i} still holds a connection to n{j}, silent for {idle:?}"
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn handle_timeout_at_poll_timeout_always_moves_on_and_no_deadline_is_missed() {
    fn check(ops: Vec<Op>) -> bool {
        match prop(ops.clone()) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("{e}\nops: {ops:?}");
                false
            }
        }
    }
    QuickCheck::new()
        .tests(300)
        .quickcheck(check as fn(Vec<Op>) -> bool);
}

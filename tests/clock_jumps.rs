//! A node's clock jumping: forward hours (a machine waking from sleep),
//! back minutes (a clock stepped back). The core neither panics nor spins,
//! no deadline waits out a step back, and delivery goes on.

use std::time::Duration;

use peermq::{
    CloseReason, Config, ConnId, Entropy, Event, Instant, MemStore, Node, Output, Timestamp,
};

/// Two nodes on one link, each on its own clock: A (the receiver, which
/// authorizes B) on the test's, B on the test's moved by `skew` (an hour
/// ahead at first, so that it has room to step back).
struct Duo {
    nodes: [Node<MemStore>; 2],
    /// The connection at each end, while the link is up.
    link: Option<[ConnId; 2]>,
    /// The test's time, microseconds.
    t: u64,
    /// How far B's clock is from the test's.
    skew: i64,
    events: [Vec<Event>; 2],
    /// `handle_timeout` calls per node.
    timeouts: [u64; 2],
}

const A: usize = 0;
const B: usize = 1;
const MS: u64 = 1_000;
const SEC: u64 = 1_000_000;

impl Duo {
    fn new() -> Self {
        const HOUR: u64 = 3600 * SEC;
        let open = |seed, now| {
            Node::open(
                MemStore::new(),
                Config::default(),
                Entropy::deterministic(seed),
                now,
            )
            .expect("open")
        };
        let b_now = Instant::from_micros(HOUR);
        let (mut a, mut b) = (open(1, Instant::ZERO), open(2, b_now));
        a.add_peer(b.id()).unwrap();
        b.dial(a.id(), b_now);
        let mut duo = Duo {
            nodes: [a, b],
            link: None,
            t: 0,
            skew: HOUR as i64,
            events: [Vec::new(), Vec::new()],
            timeouts: [0, 0],
        };
        duo.settle();
        duo
    }

    fn now(&self, i: usize) -> Instant {
        let skew = if i == B { self.skew } else { 0 };
        let t = i128::from(self.t) + i128::from(skew);
        Instant::from_micros(u64::try_from(t.max(0)).unwrap_or(0))
    }

    /// Carries out every output until both nodes are quiet.
    fn settle(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            for i in [A, B] {
                while let Some(out) = self.nodes[i].poll_output() {
                    moved = true;
                    self.output(i, out);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the nodes never went quiet");
    }

    fn output(&mut self, i: usize, out: Output) {
        let j = 1 - i;
        match out {
            Output::Transmit { conn, bytes } => {
                if let Some(link) = self.link.filter(|l| l[i] == conn) {
                    let now = self.now(j);
                    self.nodes[j].handle_input(link[j], &bytes, now).unwrap();
                }
            }
            Output::Dial { .. } => {
                let (ni, nj) = (self.now(i), self.now(j));
                let peer = self.nodes[j].id();
                let ci = self.nodes[i].connect(peer, ni);
                let cj = self.nodes[j].accept(nj);
                let mut link = [ci, ci];
                link[j] = cj;
                self.link = Some(link);
            }
            Output::Close { conn, .. } => {
                if let Some(link) = self.link.filter(|l| l[i] == conn) {
                    self.link = None;
                    let now = self.now(j);
                    self.nodes[j].handle_closed(link[j], now);
                }
            }
            Output::Event(e) => self.events[i].push(e),
        }
    }

    /// Runs `d` of the test's time, in steps of 10 ms, each node's timers
    /// by its own clock.
    fn run_for(&mut self, d: Duration) {
        let end = self.t + d.as_micros() as u64;
        while self.t < end {
            self.t += 10 * MS;
            for i in [A, B] {
                let now = self.now(i);
                // Whatever it asks for that is due, as a driver would call
                // it again at once; a node that asks for ever spins.
                for _ in 0..100 {
                    if self.nodes[i].poll_timeout().is_none_or(|t| t > now) {
                        break;
                    }
                    self.timeouts[i] += 1;
                    self.nodes[i].handle_timeout(now).unwrap();
                    self.settle();
                }
            }
            self.settle();
        }
    }

    fn send(&mut self, text: &str) -> u64 {
        let (to, now) = (self.nodes[A].id(), self.now(B));
        let seq = self.nodes[B].send(to, text.as_bytes(), now).unwrap();
        self.settle();
        seq
    }

    fn idle_closes(&self, i: usize) -> usize {
        self.events[i]
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Event::Disconnected {
                        reason: CloseReason::IdleTimeout,
                        ..
                    }
                )
            })
            .count()
    }

    fn arrived(&self) -> Vec<u64> {
        self.events[A]
            .iter()
            .filter_map(|e| match e {
                Event::Message { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect()
    }

    fn acked(&self) -> u64 {
        self.events[B]
            .iter()
            .filter_map(|e| match e {
                Event::Acked { end, .. } => Some(*end),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }
}

#[test]
fn a_clock_stepped_back_minutes_keeps_its_deadlines_and_the_link_delivering() {
    let mut duo = Duo::new();
    duo.run_for(Duration::from_secs(3));
    duo.send("before");
    duo.run_for(Duration::from_secs(3));
    assert_eq!(duo.arrived(), vec![0]);
    // B's clock steps back ten minutes, and B has nothing to send for
    // longer than A's idle timeout: only its keepalives tell A it is
    // there. It learns of the step at its next input (A's keepalives,
    // within seconds), and from then on no deadline of its own is ten
    // minutes off.
    duo.skew -= 600 * SEC as i64;
    duo.run_for(Duration::from_secs(30));
    assert_eq!(duo.idle_closes(A), 0, "{:?}", duo.events[A]);
    let b_now = duo.now(B);
    let next = duo.nodes[B].poll_timeout().expect("B keeps deadlines");
    assert!(
        next <= b_now + Duration::from_secs(30),
        "B's next deadline is {:?} after its clock",
        next.saturating_since(b_now)
    );
    duo.send("after");
    duo.run_for(Duration::from_secs(60));
    // Keepalives went on: A never found B silent, and the message sent
    // after the step arrived and was acknowledged.
    assert_eq!(duo.idle_closes(A), 0, "{:?}", duo.events[A]);
    assert_eq!(duo.idle_closes(B), 0, "{:?}", duo.events[B]);
    assert_eq!(duo.arrived(), vec![0, 1]);
    assert_eq!(duo.acked(), 2);
    let read = duo.nodes[A]
        .read(peermq::Mailbox::Unread, None, 10, Timestamp::EPOCH)
        .unwrap();
    assert_eq!(read.len(), 2);
    // About 4 a second (store polls every 250 ms, keepalives, receipts),
    // over the 98 s the test runs: no spin.
    assert!(duo.timeouts[B] < 98 * 6, "{} timeouts", duo.timeouts[B]);
}

#[test]
fn a_clock_jumping_hours_forward_fires_each_deadline_once_and_delivery_goes_on() {
    let mut duo = Duo::new();
    duo.send("before");
    duo.run_for(Duration::from_secs(3));
    let before = duo.timeouts[B];
    // B wakes six hours later: it heard nothing from A "for hours" and
    // drops the link, then dials again.
    duo.skew += 6 * 3600 * SEC as i64;
    duo.run_for(Duration::from_secs(1));
    assert!(
        duo.timeouts[B] - before < 20,
        "{} timeouts for one jump",
        duo.timeouts[B] - before
    );
    duo.send("after");
    duo.run_for(Duration::from_secs(30));
    assert_eq!(duo.arrived(), vec![0, 1]);
    assert_eq!(duo.acked(), 2);
    assert!(duo.link.is_some(), "connected again");
    // And back again, by twenty minutes, with the link up.
    duo.skew -= 20 * 60 * SEC as i64;
    duo.send("later");
    duo.run_for(Duration::from_secs(60));
    assert_eq!(duo.arrived(), vec![0, 1, 2]);
    assert_eq!(duo.acked(), 3);
    assert_eq!(duo.idle_closes(A), 0, "{:?}", duo.events[A]);
}

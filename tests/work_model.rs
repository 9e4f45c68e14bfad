//! Model test: where each received message is (unread, taken, archived, in
//! a category, dead, cleared) under random sequences of takes, releases,
//! extensions, archives, clears, moves, time passing and restarts, by two
//! processes on one data directory, against a plain model.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Net;
use peermq::{Category, Mailbox, Node, NodeError, PeerId, Released, RetryPolicy, Timestamp};
use quickcheck::{Arbitrary, Gen, QuickCheck};

const A: usize = 0;
const B: usize = 1;
const MESSAGES: u64 = 6;
const LEASE: Duration = Duration::from_secs(10);

fn policy() -> RetryPolicy {
    RetryPolicy {
        backoff: vec![Duration::from_secs(3), Duration::from_secs(7)],
        max_deliveries: 3,
    }
}

fn later() -> Category {
    Category::new("later").unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Op {
    /// Process 0 or 1 takes up to n.
    Take(usize, usize),
    /// Releases the i-th lease handed out (maybe lapsed or lost), with an
    /// optional delay in seconds.
    Release(usize, Option<u8>),
    Extend(usize),
    Archive(u64),
    Clear(u64),
    Move(u64, u8),
    Advance(u8),
    Restart,
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Self {
        let seq = u64::arbitrary(g) % MESSAGES;
        let i = usize::arbitrary(g) % 8;
        match u8::arbitrary(g) % 16 {
            0..=3 => Op::Take(usize::arbitrary(g) % 2, 1 + usize::arbitrary(g) % 3),
            4..=6 => Op::Release(i, Option::<u8>::arbitrary(g).map(|d| d % 5)),
            7 => Op::Extend(i),
            8 | 9 => Op::Archive(seq),
            10 => Op::Clear(seq),
            11 => Op::Move(seq, u8::arbitrary(g) % 4),
            12..=14 => Op::Advance(1 + u8::arbitrary(g) % 12),
            _ => Op::Restart,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Unread,
    Archived,
    In(Category),
    Cleared,
}

#[derive(Clone, Copy, Debug)]
struct Msg {
    place: Place,
    deliveries: u32,
    /// The lease's token and deadline.
    lease: Option<(u64, Timestamp)>,
    retry_at: Timestamp,
}

impl Msg {
    fn reset(&mut self, place: Place) {
        *self = Msg {
            place,
            deliveries: 0,
            lease: None,
            retry_at: Timestamp::EPOCH,
        };
    }
}

struct World {
    net: Net,
    other: Node<peermq::MemStore>,
    b: PeerId,
    now: Timestamp,
    model: Vec<Msg>,
    leases: Vec<peermq::Lease>,
}

impl World {
    fn new() -> World {
        let (mut net, a, b) = Net::connected_pair();
        let now = net.now;
        let msgs: Vec<String> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
        net.node(B).send_batch(a, &msgs, now).unwrap();
        net.run_for(Duration::from_secs(2));
        net.node(A).create_category(later()).unwrap();
        let other = net.open_again(A);
        let msg = Msg {
            place: Place::Unread,
            deliveries: 0,
            lease: None,
            retry_at: Timestamp::EPOCH,
        };
        World {
            net,
            other,
            b,
            now: Timestamp::from_micros(1_700_000_000_000_000),
            model: vec![msg; MESSAGES as usize],
            leases: Vec::new(),
        }
    }

    fn node(&mut self, process: usize) -> &mut Node<peermq::MemStore> {
        if process == 0 {
            self.net.node(A)
        } else {
            &mut self.other
        }
    }

    fn apply(&mut self, op: Op) -> Result<(), String> {
        let (now, b, p) = (self.now, self.b, policy());
        let at = self.net.now;
        match op {
            Op::Take(process, n) => {
                let got = self
                    .node(process)
                    .take(n, LEASE, &p, now)
                    .map_err(|e| e.to_string())?;
                let mut want = Vec::new();
                for (seq, m) in self.model.iter_mut().enumerate() {
                    if want.len() >= n {
                        break;
                    }
                    let live = m.lease.is_some_and(|(_, d)| d > now);
                    let lapsed_at = m.lease.map_or(Timestamp::EPOCH, |(_, d)| d);
                    if m.place != Place::Unread || live || lapsed_at.max(m.retry_at) > now {
                        continue;
                    }
                    if m.deliveries >= p.max_deliveries {
                        m.reset(Place::In(Category::DEAD));
                        continue;
                    }
                    m.deliveries += 1;
                    want.push((seq as u64, m.deliveries));
                }
                let seen: Vec<(u64, u32)> = got.iter().map(|t| (t.lease.seq, t.delivery)).collect();
                if seen != want {
                    return Err(format!("took {seen:?}, the model says {want:?}"));
                }
                for t in got {
                    self.model[t.lease.seq as usize].lease =
                        Some((t.lease.token, t.lease.deadline));
                    self.leases.push(t.lease);
                }
            }
            Op::Release(i, delay) => {
                let Some(lease) = self.leases.get(i).copied() else {
                    return Ok(());
                };
                let delay = delay.map(|d| Duration::from_secs(d.into()));
                let r = self.net.node(A).release(&lease, delay, &p, now);
                let m = &mut self.model[lease.seq as usize];
                let holds = m.place == Place::Unread && m.lease.map(|l| l.0) == Some(lease.token);
                match (r, holds) {
                    (Err(NodeError::LeaseLost { .. }), false) => {}
                    (Ok(Released::DeadLettered), true) if m.deliveries >= p.max_deliveries => {
                        m.reset(Place::In(Category::DEAD));
                    }
                    (Ok(Released::RetryAt(t)), true) if m.deliveries < p.max_deliveries => {
                        let want = now + delay.unwrap_or_else(|| p.delay_after(m.deliveries));
                        if t != want {
                            return Err(format!("retry at {t:?}, the model says {want:?}"));
                        }
                        m.lease = None;
                        m.retry_at = t;
                    }
                    (r, holds) => return Err(format!("release gave {r:?}; lease held: {holds}")),
                }
            }
            Op::Extend(i) => {
                let Some(lease) = self.leases.get(i).copied() else {
                    return Ok(());
                };
                let r = self.other.extend(&lease, LEASE, now);
                let m = &mut self.model[lease.seq as usize];
                let holds = m.place == Place::Unread && m.lease.map(|l| l.0) == Some(lease.token);
                match (r, holds) {
                    (Err(NodeError::LeaseLost { .. }), false) => {}
                    (Ok(deadline), true) => m.lease = Some((lease.token, deadline)),
                    (r, holds) => return Err(format!("extend gave {r:?}; lease held: {holds}")),
                }
            }
            Op::Archive(seq) => {
                let r = self.node(seq as usize % 2).archive(b, seq, at);
                let m = &mut self.model[seq as usize];
                match (r, m.place) {
                    (Err(NodeError::Cleared { .. }), Place::Cleared) => {}
                    (Ok(false), Place::Archived) => {}
                    (Ok(true), Place::Unread | Place::In(_)) => m.reset(Place::Archived),
                    (r, place) => return Err(format!("archive gave {r:?} in {place:?}")),
                }
            }
            Op::Clear(seq) => {
                let r = self.net.node(A).clear(b, seq, at);
                let m = &mut self.model[seq as usize];
                match (r, m.place) {
                    (Ok(false), Place::Cleared) => {}
                    (Ok(true), _) => m.reset(Place::Cleared),
                    (r, place) => return Err(format!("clear gave {r:?} in {place:?}")),
                }
            }
            Op::Move(seq, to) => {
                let to = match to {
                    0 => Mailbox::Unread,
                    1 => Mailbox::Archived,
                    2 => Mailbox::Category(later()),
                    _ => Mailbox::Category(Category::DEAD),
                };
                let r = self.other.move_to(b, seq, to, at);
                let m = &mut self.model[seq as usize];
                let target = match to {
                    Mailbox::Unread => Place::Unread,
                    Mailbox::Archived => Place::Archived,
                    Mailbox::Category(c) => Place::In(c),
                };
                let untouched = m.place == target && (target != Place::Unread || m.deliveries == 0);
                match (r, m.place) {
                    (Err(NodeError::Cleared { .. }), Place::Cleared) => {}
                    (Ok(false), _) if untouched => {}
                    (Ok(true), place) if place != Place::Cleared && !untouched => m.reset(target),
                    (r, place) => return Err(format!("move to {to} gave {r:?} in {place:?}")),
                }
            }
            Op::Advance(secs) => self.now = self.now + Duration::from_secs(secs.into()),
            Op::Restart => {
                self.net.crash(A);
                self.net.restart(A);
            }
        }
        self.check()
    }

    /// Both processes read what the model holds, in every place.
    fn check(&mut self) -> Result<(), String> {
        let places = [
            (Mailbox::Unread, Place::Unread),
            (Mailbox::Archived, Place::Archived),
            (Mailbox::Category(later()), Place::In(later())),
            (Mailbox::Category(Category::DEAD), Place::In(Category::DEAD)),
        ];
        for process in 0..2 {
            for (mailbox, place) in places {
                let got: Vec<u64> = self
                    .node(process)
                    .read(mailbox, None, 100, Timestamp::EPOCH)
                    .map_err(|e| e.to_string())?
                    .iter()
                    .map(|r| r.seq)
                    .collect();
                let want: Vec<u64> = (0..MESSAGES)
                    .filter(|&s| self.model[s as usize].place == place)
                    .collect();
                if got != want {
                    return Err(format!(
                        "process {process} reads {got:?} in {mailbox}, the model {want:?}"
                    ));
                }
            }
        }
        Ok(())
    }
}

fn prop(ops: Vec<Op>) -> bool {
    let mut world = World::new();
    for (i, op) in ops.iter().enumerate() {
        if let Err(e) = world.apply(*op) {
            eprintln!("step {i}, {op:?}: {e}\nops: {ops:?}");
            return false;
        }
    }
    true
}

#[test]
fn where_each_message_is_matches_the_model_under_random_work() {
    QuickCheck::new()
        .tests(300)
        .quickcheck(prop as fn(Vec<Op>) -> bool);
}

#[test]
fn category_counts_agree_with_what_is_read() {
    // The counts agree with the reads for a fixed mix.
    let mut world = World::new();
    for op in [
        Op::Take(0, 3),
        Op::Archive(0),
        Op::Move(1, 2),
        Op::Clear(2),
        Op::Advance(11),
        Op::Take(1, 3),
    ] {
        world.apply(op).unwrap();
    }
    let counts: BTreeMap<String, (u64, u64)> = world
        .net
        .node(A)
        .categories(world.now)
        .unwrap()
        .into_iter()
        .map(|c| (c.mailbox.to_string(), (c.messages, c.taken)))
        .collect();
    assert_eq!(counts["unread"], (3, 3), "3 unread, all taken again");
    assert_eq!(counts["archived"], (1, 0));
    assert_eq!(counts["later"], (1, 0));
    assert_eq!(counts["dead"], (0, 0));
}

//! The oracles run against the whole network: memory bounds, the flood
//! quota, and the final convergence checks.

use std::collections::{BTreeMap, BTreeSet};

use peermq::node::limits;
use peermq::{Category, Mailbox};

use crate::oracle::Failure;
use crate::plan::{Op, SEC};

use super::{sparse_budget, Sim};

/// What sparse readers received and what was sent to them, for their
/// oracle: a sparse reader must not be sent much more than it asked for.
#[derive(Default)]
pub(super) struct Tally {
    /// Bytes each sparse reader received from each sender, per (reader,
    /// sender), and the connections that carried them.
    pub sparse_bytes: BTreeMap<(usize, usize), u64>,
    pub sparse_conns: BTreeMap<(usize, usize), u64>,
    /// Successful `send` calls per (from, to): each announces a head.
    pub send_calls: BTreeMap<(usize, usize), u64>,
}

impl Sim<'_> {
    /// What every node holds in memory stays within what its configuration
    /// and the protocol allow, whatever the faults and the rogue do.
    pub(super) fn check_memory(&mut self) {
        let n = self.slots.len();
        let mut failure = None;
        for (i, s) in self.slots.iter().enumerate() {
            let Some(node) = s.node.as_ref() else {
                continue;
            };
            let f = node.footprint();
            // Mail adds heads of queue feeds: those a mailbox carries, and
            // those of a recipient's senders, announced by its mailbox.
            let mail_feeds = match self.plan.options.mailbox {
                Some(_) if node.mailboxes().is_empty() => node.carried().len(),
                Some(_) => node.carried().len() + node.peers().len(),
                None => 0,
            };
            let c = s.config.max_inflight_requests.max(1);
            let per_conn = 2 * limits::MAX_INFLIGHT_REQUESTS + c;
            let over = [
                ("connections", f.connections, 4 * n + 8),
                (
                    "feeds loaded",
                    f.feeds_loaded,
                    2 * n + f.broadcast_feeds + 2,
                ),
                (
                    "requests in flight",
                    f.requests_in_flight,
                    f.connections * per_conn,
                ),
                (
                    "requests to serve",
                    f.requests_to_serve,
                    f.connections * per_conn,
                ),
                (
                    "buffered bytes",
                    f.buffered_bytes,
                    s.config.max_buffered_bytes + f.connections * (64 << 10),
                ),
                (
                    "announced feeds",
                    f.remote_feeds,
                    f.connections * (f.broadcast_feeds + mail_feeds),
                ),
            ]
            .into_iter()
            .find(|(_, have, bound)| have > bound);
            if let Some((what, have, bound)) = over {
                failure = Some(Failure::new(
                    "memory",
                    format!("n{i} holds {have} {what}, over its bound of {bound}: {f:?}"),
                ));
                break;
            }
        }
        if let Some(f) = failure {
            self.fail(f);
        }
    }

    /// A rogue's flood of broadcast events is held by each node only up to
    /// its quota, overshot by at most what its requests in flight bring.
    fn check_flood_quota(&self) -> Result<(), Failure> {
        for op in &self.plan.ops {
            let Op::Flood {
                node: rogue, size, ..
            } = op.op
            else {
                continue;
            };
            let author = self.slots[rogue].id;
            for (j, s) in self.slots.iter().enumerate() {
                let Some(node) = s.node.as_ref().filter(|_| j != rogue) else {
                    continue;
                };
                let held = node
                    .broadcast_feeds()
                    .into_iter()
                    .find(|(a, _)| *a == author)
                    .map_or(0, |(_, n)| n);
                // Each connection that serves the feed has its own requests
                // in flight.
                let o = &self.plan.options;
                let links = o
                    .edges
                    .iter()
                    .filter(|e| e.dialer == j || e.listener == j)
                    .count() as u64;
                let per_link = o.node[j].max_inflight as u64 * o.node[j].max_request_blocks;
                let bound = crate::plan::AUTHOR_QUOTA + links.max(1) * per_link * u64::from(size);
                if held * u64::from(size) > bound {
                    return Err(Failure::new(
                        "memory",
                        format!("n{j} holds {held} of the rogue n{rogue}'s {size}-byte events, over its quota of {bound} bytes"),
                    ));
                }
            }
        }
        Ok(())
    }

    pub(super) fn final_checks(&mut self) {
        self.check_corruption();
        if self.failure.is_some() {
            return;
        }
        let n = self.slots.len();
        // A mailbox pair's member offline at the end is opened to be
        // checked; the run is over, so it meets nobody.
        for i in 0..n {
            if self.slots[i].node.is_none() && self.keeps_own_hours(i) {
                self.restart(i);
            }
        }
        let bound = self.plan.options.heal_bound / SEC;
        // What each node holds, per sender, and its status counts.
        let mut held: BTreeMap<(usize, usize), BTreeSet<u64>> = BTreeMap::new();
        let mut received: BTreeMap<(usize, usize), u64> = BTreeMap::new();
        let mut sender: BTreeMap<(usize, usize), (u64, u64)> = BTreeMap::new();
        for i in 0..n {
            if self.slots[i].node.is_none() {
                self.fail(Failure::new(
                    "liveness",
                    format!("n{i} is still down after the heal"),
                ));
                return;
            }
            // Every message ends unread (still pending), archived, or
            // dead-lettered by a worker: never lost.
            let dead = Mailbox::Category(Category::DEAD);
            for mailbox in [Mailbox::Unread, Mailbox::Archived, dead] {
                let wall = self.wall(i);
                let r = match self.slots[i].node.as_mut() {
                    Some(x) => x.read(mailbox, None, usize::MAX, wall),
                    None => return,
                };
                let Some(recs) = self.node_result(i, "read", r) else {
                    return;
                };
                for rec in recs {
                    let from = self.peer_index(&rec.from);
                    if from == usize::MAX {
                        self.fail(Failure::new(
                            "phantom",
                            format!("n{i} holds a message from an unknown peer"),
                        ));
                        return;
                    }
                    let unread = mailbox == Mailbox::Unread;
                    let checked = self
                        .oracle
                        .on_record(i, from, rec.seq, &rec.data, unread)
                        .and_then(|()| match unread {
                            true => self.check_due(i, from, rec.seq),
                            false => Ok(()),
                        });
                    if let Err(f) = checked {
                        self.fail(f);
                        return;
                    }
                    let again = !held.entry((i, from)).or_default().insert(rec.seq);
                    if again && !self.oracle.is_rogue(i) {
                        self.fail(Failure::new(
                            "delivered-twice",
                            format!("n{i} holds message {} from n{from} twice (unread, archived or dead)", rec.seq),
                        ));
                        return;
                    }
                }
            }
            let r = match self.slots[i].node.as_mut() {
                Some(x) => x.status(),
                None => return,
            };
            let Some(status) = self.node_result(i, "status", r) else {
                return;
            };
            for s in status {
                let p = self.peer_index(&s.peer);
                received.insert((p, i), s.received);
                sender.insert((i, p), (s.sent, s.acked));
            }
        }
        if let Some(rogue) = self.oracle.rogue.as_ref().map(|r| r.node) {
            for to in 0..n {
                if to == rogue {
                    continue;
                }
                let mut records = Vec::new();
                for mailbox in [Mailbox::Unread, Mailbox::Archived] {
                    let wall = self.wall(to);
                    let r = match self.slots[to].node.as_mut() {
                        Some(x) => x.read(mailbox, None, usize::MAX, wall),
                        None => return,
                    };
                    let Some(recs) = self.node_result(to, "read", r) else {
                        return;
                    };
                    let from_rogue = recs.into_iter().filter(|r| r.from == self.slots[rogue].id);
                    records.extend(from_rogue.map(|r| (r.seq, r.data)));
                }
                if let Err(f) = self.oracle.check_unmixed(to, &records) {
                    self.fail(f);
                    return;
                }
            }
            // What was asked of the rogue may never come: it forked.
            self.oracle
                .pending_gets
                .retain(|g| g.1 != rogue && g.0 != rogue);
        }
        if let Err(f) = self.check_flood_quota() {
            self.fail(f);
            return;
        }
        let mut pairs: BTreeSet<(usize, usize)> = self.oracle.sent.keys().copied().collect();
        pairs.extend(received.keys().copied());
        for (from, to) in pairs {
            if from == usize::MAX || to == usize::MAX {
                continue;
            }
            let authorized = self.plan.options.authorized(from, to);
            let rec = received.get(&(from, to)).copied().unwrap_or(0);
            if !authorized && rec > 0 {
                self.fail(Failure::new(
                    "unauthorized",
                    format!("n{to} holds {rec} messages from n{from}, which it never authorized"),
                ));
                return;
            }
            let (len, acked) = sender.get(&(from, to)).copied().unwrap_or((0, 0));
            let empty = BTreeSet::new();
            let h = held.get(&(to, from)).unwrap_or(&empty);
            let expect_all =
                authorized && !self.plan.options.node[to].sparse && !self.mail_doomed(from, to);
            if let Err(f) = self
                .oracle
                .check_pair(from, to, h, len, rec, acked, expect_all, bound)
            {
                self.fail(f);
                return;
            }
        }
        // Sparse readers: every `get` answered, and nothing downloaded that
        // was not asked for.
        if let Some(&(node, from, seq)) = self.oracle.pending_gets.iter().next() {
            self.fail(Failure::new(
                "liveness",
                format!("{bound}s after the heal n{node} still waits for message {seq} from n{from} it asked for with get"),
            ));
            return;
        }
        for i in 0..n {
            if !self.plan.options.node[i].sparse {
                continue;
            }
            for (&(node, from), asked) in self.oracle.asked.range((i, 0)..=(i, usize::MAX)) {
                let rec = received.get(&(from, node)).copied().unwrap_or(0);
                if rec > asked.len() as u64 {
                    self.fail(Failure::new(
                        "sparse-bytes",
                        format!("sparse reader n{node} holds {rec} messages from n{from} but asked for {}", asked.len()),
                    ));
                    return;
                }
            }
            let from_list: Vec<usize> = (0..n)
                .filter(|&f| f != i && !self.oracle.is_rogue(f) && !self.oracle.is_rogue(i))
                .collect();
            for from in from_list {
                let count = |m: &BTreeMap<(usize, usize), u64>| m.get(&(i, from)).copied();
                let got = count(&self.tally.sparse_bytes).unwrap_or(0);
                let asked = self
                    .oracle
                    .asked
                    .get(&(i, from))
                    .map_or(0, |s| s.len() as u64);
                let conns = count(&self.tally.sparse_conns).unwrap_or(0);
                let limit = sparse_budget(
                    asked,
                    self.oracle.sent(from, i),
                    16 + self.plan.options.msg_extra as u64,
                    conns,
                    self.tally.send_calls.get(&(from, i)).copied().unwrap_or(0),
                    self.now,
                );
                if got > limit {
                    self.fail(Failure::new(
                        "sparse-bytes",
                        format!("sparse reader n{i} downloaded {got} bytes from n{from} for {asked} blocks read; the bound is {limit}"),
                    ));
                    return;
                }
            }
        }
        if let Err(f) = self.check_mail_end() {
            self.fail(f);
            return;
        }
        self.note(format_args!("final checks passed"));
    }
}

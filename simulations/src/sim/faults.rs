//! Faults to nodes: crashes, restarts, restored backups, sabotage, and the
//! healing before the end.

use std::collections::BTreeMap;

use peermq::store::Table;
use peermq::{ConnId, Feed, FeedDescriptor, Mailbox, Node, NodeError, PeerId, Txn};

use crate::oracle::{Failure, Rogue};
use crate::plan::SEC;

use super::{corruption_deadline, entropy, Chunk, Ev, Sim};

impl Sim<'_> {
    pub(super) fn check_corruption(&mut self) {
        let late = self.net.links.iter().find(|(_, l)| {
            l.open[0]
                && l.open[1]
                && l.corrupted_at
                    .is_some_and(|t| t + corruption_deadline() < self.now)
        });
        if let Some((id, l)) = late {
            let f = Failure::new(
                "corruption-undetected",
                format!(
                    "link {id} (n{} -> n{}) carried a corrupted byte at {}s and is still open {}s later",
                    l.ends[0].0,
                    l.ends[1].0,
                    l.corrupted_at.unwrap_or(0) / SEC,
                    (self.now - l.corrupted_at.unwrap_or(0)) / SEC
                ),
            );
            self.fail(f);
        }
    }

    pub(super) fn crash(&mut self, node: usize, silent: bool) {
        self.note(format_args!(
            "n{node} crashes{}",
            if silent { " silently" } else { "" }
        ));
        let s = &mut self.slots[node];
        s.node = None;
        s.inc += 1;
        s.paused_until = None;
        self.stats.node_micros += self.now.saturating_sub(s.up_since);
        if let Some(old) = self.agenda.wake[node].take() {
            self.agenda.timers.remove(&(old, node));
        }
        let mine: Vec<(ConnId, u64, usize)> = self
            .net
            .conn_link
            .range((node, ConnId(0))..=(node, ConnId(u64::MAX)))
            .map(|(&(_, c), &(l, side))| (c, l, side))
            .collect();
        let now = self.now;
        for (c, lid, side) in mine {
            self.net.conn_link.remove(&(node, c));
            let mut fin_at = None;
            if let Some(l) = self.net.links.get_mut(&lid) {
                l.open[side] = false;
                l.pipes[1 - side].q.clear();
                l.pipes[1 - side].dead = true;
                let p = &mut l.pipes[side];
                if silent {
                    p.dead = true;
                } else if !p.dead && !p.fin_sent {
                    p.fin_sent = true;
                    let t = p.last.max(now + l.latency);
                    p.last = t;
                    p.q.push_back((t, Chunk::Fin));
                    fin_at = Some(t);
                }
            }
            if let Some(t) = fin_at {
                self.at(
                    t,
                    Ev::Deliver {
                        link: lid,
                        dir: side,
                    },
                );
            }
            self.maybe_remove_link(lid);
        }
    }

    /// `node` comes back from its backup and writes on: a rogue author.
    pub(super) fn restore(&mut self, node: usize) {
        if self.oracle.rogue.is_some() {
            return;
        }
        let Some(backup) = self.backups.remove(&node) else {
            return;
        };
        let me = self.slots[node].id;
        let mut fork_at = BTreeMap::new();
        if let Ok(txn) = Txn::begin(&backup) {
            for (j, s) in self.slots.iter().enumerate() {
                if j != node {
                    let desc = FeedDescriptor::queue(me, s.id);
                    let len = Feed::open(&txn, desc).map_or(0, |f| f.len());
                    fork_at.insert(j, len);
                }
            }
        }
        self.crash(node, false);
        self.note(format_args!("n{node} restores its backup"));
        self.slots[node].store = backup;
        self.oracle.rogue = Some(Rogue { node, fork_at });
        self.restart(node);
    }

    pub(super) fn restart(&mut self, node: usize) {
        if self.slots[node].node.is_some() {
            return;
        }
        let inc = self.slots[node].inc;
        let config = self.slots[node].config.clone();
        let entropy = entropy(self.plan.seed, node, inc);
        let now = self.clock(node);
        match Node::open(self.slots[node].store.clone(), config, entropy, now) {
            Ok(mut n) => {
                if n.id() != self.slots[node].id {
                    self.fail(Failure::new(
                        "lost",
                        format!("n{node} came back from a crash with another identity"),
                    ));
                    return;
                }
                self.note(format_args!("n{node} restarts"));
                self.oracle.on_restart(node);
                let dials: Vec<PeerId> = self.slots[node]
                    .dials
                    .iter()
                    .map(|&j| self.slots[j].id)
                    .collect();
                for p in dials {
                    n.dial(p, now);
                }
                self.slots[node].node = Some(n);
                self.slots[node].up_since = self.now;
                // The application asks again for what it was waiting for.
                let pending: Vec<(usize, usize, u64)> = self
                    .oracle
                    .pending_gets
                    .iter()
                    .filter(|g| g.0 == node)
                    .copied()
                    .collect();
                for (_, from, seq) in pending {
                    self.get(node, from, seq);
                }
                self.dirty.insert(node);
            }
            Err(e) => {
                let r: Result<(), NodeError> = Err(e);
                self.node_result(node, "open", r);
                self.at(self.now + SEC, Ev::Restart { node });
            }
        }
    }

    /// The end of the chaos: the network is whole again, every node is up,
    /// every authorization is restored, and storage works.
    pub(super) fn heal(&mut self) {
        self.net.healed = true;
        self.note(format_args!("heal"));
        self.net.blocked.clear();
        for i in 0..self.slots.len() {
            self.slots[i].store.fail_commits(0);
            self.slots[i].store.set_capacity(None);
            if self.slots[i].paused_until.is_some() {
                self.slots[i].paused_until = Some(self.now);
                self.at(self.now, Ev::Resume { node: i });
            }
            // A mailbox pair's sender and recipient keep taking turns.
            if self.slots[i].node.is_none() && !self.keeps_own_hours(i) {
                self.at(self.now, Ev::Restart { node: i });
            }
        }
        let edges = self.plan.options.edges.clone();
        for e in edges {
            self.at(
                self.now,
                Ev::ReAdd {
                    node: e.dialer,
                    peer: e.listener,
                },
            );
            self.at(
                self.now,
                Ev::ReAdd {
                    node: e.listener,
                    peer: e.dialer,
                },
            );
        }
        self.at(self.now + SEC, Ev::Drain);
    }

    pub(super) fn sabotage(&mut self, node: usize) {
        let wall = self.wall(node);
        let Some(n) = self.slots[node].node.as_mut() else {
            return;
        };
        let Ok(recs) = n.read(Mailbox::Unread, None, 1, wall) else {
            return;
        };
        let me = self.slots[node].id;
        if let Some(r) = recs.first() {
            let key = peermq::feed::block_key(&FeedDescriptor::queue(r.from, me).id(), r.seq);
            self.slots[node].store.tamper(Table::Blocks, &key, |v| {
                if let Some(b) = v.last_mut() {
                    *b ^= 1;
                }
            });
        }
    }

    /// Node `from` dials `to`, which has not authorized it, and sends it a
    /// message, for `for_`.
    pub(super) fn intrude(&mut self, from: usize, to: usize, for_: u64) {
        let now = self.clock(from);
        if !self.live(from) || self.oracle.auth[to].contains(&from) {
            return;
        }
        let id = self.slots[to].id;
        let msg = self.oracle.message(from, to, self.oracle.sent(from, to));
        let r = match self.slots[from].node.as_mut() {
            Some(x) => {
                x.dial(id, now);
                x.send(id, &msg, now)
            }
            None => return,
        };
        if let Some(seq) = self.node_result(from, "send", r) {
            if let Err(f) = self.oracle.on_sent(from, to, seq, 1) {
                self.fail(f);
            }
        }
        let inc = self.slots[from].inc;
        self.at(
            self.now + for_,
            Ev::HangUp {
                node: from,
                inc,
                peer: to,
            },
        );
        self.dirty.insert(from);
    }

    /// The rogue floods its broadcast feed.
    pub(super) fn flood(&mut self, node: usize, events: u32, size: u32) {
        if !self.live(node) {
            return;
        }
        let now = self.clock(node);
        let batch: Vec<Vec<u8>> = (0..events).map(|i| vec![i as u8; size as usize]).collect();
        let r = match self.slots[node].node.as_mut() {
            Some(n) => n.broadcast_batch(&batch, now).map(|_| ()),
            None => return,
        };
        self.node_result(node, "broadcast", r);
        self.dirty.insert(node);
    }
}

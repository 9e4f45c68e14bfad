//! What applications do: authorize peers, read, archive, clear, fetch.

use peermq::{FeedDescriptor, Fetch, Mailbox, Schedule};

use crate::oracle::{padded_message, Failure};
use crate::plan::Dice;

use super::Sim;

impl Sim<'_> {
    pub(super) fn add_peer(&mut self, node: usize, peer: usize) {
        if !self.live(node) {
            return;
        }
        let id = self.slots[peer].id;
        let now = self.clock(node);
        let r = match self.slots[node].node.as_mut() {
            Some(x) => x.add_peer(id),
            None => return,
        };
        if self.node_result(node, "add_peer", r).is_some() {
            self.oracle.auth[node].insert(peer);
            if self.plan.options.dials(node, peer) {
                self.slots[node].dials.insert(peer);
                if let Some(x) = self.slots[node].node.as_mut() {
                    x.dial(id, now);
                }
            }
        }
        self.dirty.insert(node);
    }

    pub(super) fn get(&mut self, node: usize, from: usize, seq: u64) {
        let now = self.clock(node);
        let wall = self.wall(node);
        let id = self.slots[from].id;
        self.oracle
            .asked
            .entry((node, from))
            .or_default()
            .insert(seq);
        let r = match self.slots[node].node.as_mut() {
            Some(x) => x.get(id, seq, now, wall),
            None => return,
        };
        match self.node_result(node, "get", r) {
            Some(Fetch::Ready(data)) => {
                self.oracle.pending_gets.remove(&(node, from, seq));
                let checked = self
                    .oracle
                    .on_record(node, from, seq, &data, false)
                    .and_then(|()| self.check_due(node, from, seq));
                if let Err(f) = checked {
                    self.fail(f);
                }
            }
            Some(Fetch::Pending) => {
                self.oracle.pending_gets.insert((node, from, seq));
            }
            Some(Fetch::Cleared | Fetch::NotYet(_) | Fetch::Expired) | None => {
                self.oracle.pending_gets.remove(&(node, from, seq));
            }
        }
        self.dirty.insert(node);
    }

    pub(super) fn read(&mut self, node: usize, limit: usize, archive: u8, clear: u8, seed: u64) {
        let now = self.clock(node);
        let wall = self.wall(node);
        let r = match self.slots[node].node.as_mut() {
            Some(x) => x.read(Mailbox::Unread, None, limit, wall),
            None => return,
        };
        let Some(records) = self.node_result(node, "read", r) else {
            return;
        };
        let mut d = Dice::new(seed, "read");
        for rec in records {
            let from = self.peer_index(&rec.from);
            if from == usize::MAX {
                self.fail(Failure::new(
                    "phantom",
                    format!("n{node} read a message from unknown peer {}", rec.from),
                ));
                return;
            }
            let checked = self
                .oracle
                .on_record(node, from, rec.seq, &rec.data, true)
                .and_then(|()| self.check_due(node, from, rec.seq));
            if let Err(f) = checked {
                self.fail(f);
                return;
            }
            let roll = d.range(0, 99) as u8;
            if roll < archive {
                let r = match self.slots[node].node.as_mut() {
                    Some(x) => x.archive(rec.from, rec.seq, now),
                    None => return,
                };
                match self.node_result(node, "archive", r) {
                    Some(true) => self.oracle.on_archived(node, from, rec.seq),
                    Some(false) => {
                        self.fail(Failure::new(
                            "archived-redelivered",
                            format!("n{node} read message {} from n{from} as unread, but archive says it was archived", rec.seq),
                        ));
                        return;
                    }
                    None => {}
                }
            } else if roll < archive.saturating_add(clear) {
                let r = match self.slots[node].node.as_mut() {
                    Some(x) => x.clear(rec.from, rec.seq, now),
                    None => return,
                };
                match r {
                    Ok(_) => self.oracle.on_cleared(node, from, rec.seq, true),
                    Err(e) => {
                        self.oracle.on_cleared(node, from, rec.seq, false);
                        self.node_result::<()>(node, "clear", Err(e));
                    }
                }
            }
        }
        self.dirty.insert(node);
    }

    /// After the heal, consumers read and archive everything they have, so
    /// windowed prefetch keeps moving.
    pub(super) fn drain_readers(&mut self) {
        for i in 0..self.slots.len() {
            if self.plan.options.node[i].sparse || !self.live(i) {
                continue;
            }
            self.read(i, 100_000, 100, 0, 0);
        }
    }

    /// Node `from` sends `count` messages to `to` in one call (a rogue
    /// writes on from where its restored feed ends).
    pub(super) fn send(&mut self, from: usize, to: usize, count: u32, delay: u64, expire: u64) {
        let n = self.plan.options.nodes;
        let now = self.clock(from);
        if !self.live(from) || from >= n || to >= n {
            return;
        }
        let extra = self.oracle.extra();
        let to_id = self.slots[to].id;
        let rogue = self.oracle.is_rogue(from);
        // A rogue's seqs restart where its restored feed ends: the
        // oracle's schedules, per seq, are for honest senders.
        let schedule = if rogue {
            Schedule::NONE
        } else {
            self.schedule_for(from, delay, expire)
        };
        let (start, branch) = if rogue {
            // It writes on from where its restored feed ends.
            let desc = FeedDescriptor::queue(self.slots[from].id, to_id);
            let len = match self.slots[from].node.as_mut() {
                Some(node) => node.feed_handle(desc).map(|f| f.len()),
                None => return,
            };
            match self.node_result(from, "feed", len) {
                Some(len) => (len, 1),
                None => return,
            }
        } else {
            (self.oracle.sent(from, to), 0)
        };
        let msgs: Vec<Vec<u8>> = (0..u64::from(count))
            .map(|k| padded_message(from, to, start + k, extra, branch))
            .collect();
        let r = match self.slots[from].node.as_mut() {
            Some(node) if count == 1 && schedule.is_empty() => {
                node.send(to_id, &msgs[0], now).map(|s| s..s + 1)
            }
            Some(node) => node.send_scheduled(to_id, &msgs, &schedule, now),
            None => return,
        };
        if let Some(range) = self.node_result(from, "send", r) {
            *self.tally.send_calls.entry((from, to)).or_default() += 1;
            self.times.on_sent(from, to, range.clone(), schedule);
            if let Err(f) = self
                .oracle
                .on_sent(from, to, range.start, range.end - range.start)
            {
                self.fail(f);
            }
        }
        self.dirty.insert(from);
    }
}

//! The simulated network: links that behave like TCP (ordered bytes in
//! arbitrary chunks, after latency, jitter and bandwidth), dials, partitions
//! and resets.

use std::collections::{BTreeMap, VecDeque};

use peermq::{ConnId, PeerId};

use crate::plan::SEC;

use super::{keepalive, Chunk, Ev, Link, Pipe, Sim};

/// The links between nodes, what is in flight on them, and the pairs a
/// partition keeps apart.
#[derive(Default)]
pub(super) struct Net {
    pub links: BTreeMap<u64, Link>,
    /// Each node's connection to the link and side it is on.
    pub conn_link: BTreeMap<(usize, ConnId), (u64, usize)>,
    pub next_link: u64,
    /// Pairs kept apart, with how many partitions keep them so.
    pub blocked: BTreeMap<(usize, usize), u32>,
    /// Whether the final heal has happened: no more faults from then on.
    pub healed: bool,
}

impl Sim<'_> {
    fn is_blocked(&self, a: usize, b: usize) -> bool {
        self.net.blocked.get(&(a, b)).is_some_and(|&n| n > 0)
    }

    fn pair_latency(&self, a: usize, b: usize) -> u64 {
        let (lo, hi) = self.plan.options.latency;
        let (x, y) = (a.min(b) as u64, a.max(b) as u64);
        let h = blake3::hash(&[self.plan.seed, x, y].map(u64::to_le_bytes).concat());
        let v = u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or([0; 8]));
        lo + v % (hi - lo + 1)
    }

    pub(super) fn dial(&mut self, i: usize, peer: PeerId, j: Option<usize>) {
        let inc = self.slots[i].inc;
        let Some(j) = j else {
            self.at(
                self.now + SEC,
                Ev::DialFailed {
                    node: i,
                    inc,
                    peer: usize::MAX,
                },
            );
            return;
        };
        let lat = self.pair_latency(i, j);
        if self.slots[j].node.is_none() {
            // Refused at once by the machine's kernel.
            self.at(
                self.now + 2 * lat,
                Ev::DialFailed {
                    node: i,
                    inc,
                    peer: j,
                },
            );
            return;
        }
        if self.is_blocked(i, j) || self.is_blocked(j, i) || self.slots[j].paused_until.is_some() {
            // No answer: the connect times out.
            self.at(
                self.now + 3 * SEC,
                Ev::DialFailed {
                    node: i,
                    inc,
                    peer: j,
                },
            );
            return;
        }
        let (now_i, now_j) = (self.clock(i), self.clock(j));
        let (Some(ci), Some(cj)) = (
            self.slots[i].node.as_mut().map(|n| n.connect(peer, now_i)),
            self.slots[j].node.as_mut().map(|n| n.accept(now_j)),
        ) else {
            return;
        };
        let id = self.net.next_link;
        self.net.next_link += 1;
        self.net.links.insert(
            id,
            Link {
                ends: [(i, ci), (j, cj)],
                open: [true, true],
                pipes: [Pipe::default(), Pipe::default()],
                latency: lat,
                corrupted_at: None,
                resetting: false,
            },
        );
        self.net.conn_link.insert((i, ci), (id, 0));
        self.net.conn_link.insert((j, cj), (id, 1));
        if self.plan.options.node[i].sparse {
            *self.tally.sparse_conns.entry((i, j)).or_default() += 1;
        }
        if self.plan.options.node[j].sparse {
            *self.tally.sparse_conns.entry((j, i)).or_default() += 1;
        }
        self.note(format_args!("link {id} n{i}/{} -> n{j}/{}", ci.0, cj.0));
        self.dirty.insert(i);
        self.dirty.insert(j);
    }

    pub(super) fn transmit(&mut self, i: usize, conn: ConnId, mut bytes: Vec<u8>) {
        let Some(&(lid, dir)) = self.net.conn_link.get(&(i, conn)) else {
            return;
        };
        let to = match self.net.links.get(&lid) {
            Some(l) => l.ends[1 - dir].0,
            None => return,
        };
        if self.is_blocked(i, to) {
            if let Some(l) = self.net.links.get_mut(&lid) {
                let p = &mut l.pipes[dir];
                p.dead = true;
                p.q.clear();
            }
            return;
        }
        if self.plan.options.node[to].sparse {
            *self.tally.sparse_bytes.entry((to, i)).or_default() += bytes.len() as u64;
        }
        let o = &self.plan.options;
        let (bw, jitter, max_chunk) = (o.bandwidth, o.jitter, o.max_chunk.max(1));
        let now = self.now;
        let cut = self.dice.u64();
        let flip = self.dice.u64();
        let Some(link) = self.net.links.get_mut(&lid) else {
            return;
        };
        let latency = link.latency;
        let pipe = &mut link.pipes[dir];
        if pipe.dead || pipe.fin_sent || bytes.is_empty() {
            return;
        }
        let mut fin = false;
        if pipe.cut_next {
            // The reset lands inside this write: a prefix gets through.
            let keep = if bytes.len() > 1 {
                1 + (cut % (bytes.len() as u64 - 1)) as usize
            } else {
                0
            };
            bytes.truncate(keep);
            pipe.cut_next = false;
            fin = true;
        }
        if let Some(pick) = pipe.corrupt_next.take() {
            if !bytes.is_empty() {
                let at = (pick % bytes.len() as u64) as usize;
                bytes[at] ^= 1 << (flip % 8);
                link.corrupted_at = Some(now);
            }
        }
        let pipe = &mut link.pipes[dir];
        // Split into chunks, in order, each with its own delay.
        let mut pieces = Vec::new();
        let mut rest = bytes.as_slice();
        let mut r = cut;
        while !rest.is_empty() {
            r = r.rotate_left(13) ^ 0x9E37_79B9_7F4A_7C15;
            let n = 1 + (r % max_chunk as u64) as usize;
            let n = n.min(rest.len());
            pieces.push(rest[..n].to_vec());
            rest = &rest[n..];
        }
        let mut arrivals = Vec::new();
        for p in pieces {
            // Bandwidth 0 means unlimited: the chunk leaves at once.
            let send = match (p.len() as u64 * SEC).checked_div(bw) {
                Some(t) => pipe.busy.max(now) + t,
                None => now,
            };
            pipe.busy = pipe.busy.max(send);
            r = r.rotate_left(7) ^ 0xD1B5_4A32_D192_ED03;
            let j = if jitter == 0 { 0 } else { r % jitter };
            let arrive = (send + latency + j).max(pipe.last);
            pipe.last = arrive;
            pipe.q.push_back((arrive, Chunk::Data(p)));
            arrivals.push(arrive);
        }
        if fin {
            pipe.fin_sent = true;
            pipe.q.push_back((pipe.last, Chunk::Fin));
            arrivals.push(pipe.last);
        }
        for t in arrivals {
            self.at(t, Ev::Deliver { link: lid, dir });
        }
    }

    /// Node `i` closed `conn`: what it wrote still travels, then the peer
    /// sees the transport close; what travels towards it is discarded.
    pub(super) fn local_close(&mut self, i: usize, conn: ConnId) {
        let Some((lid, side)) = self.net.conn_link.remove(&(i, conn)) else {
            return;
        };
        let Some(link) = self.net.links.get_mut(&lid) else {
            return;
        };
        link.open[side] = false;
        link.pipes[1 - side].q.clear();
        link.pipes[1 - side].dead = true;
        let p = &mut link.pipes[side];
        if !p.dead && !p.fin_sent {
            p.fin_sent = true;
            let t = p.last.max(self.now + link.latency);
            p.last = t;
            p.q.push_back((t, Chunk::Fin));
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

    pub(super) fn maybe_remove_link(&mut self, lid: u64) {
        if let Some(l) = self.net.links.get(&lid) {
            if !l.open[0] && !l.open[1] {
                self.net.links.remove(&lid);
            }
        }
    }

    pub(super) fn deliver(&mut self, lid: u64, dir: usize) {
        let Some(link) = self.net.links.get(&lid) else {
            return;
        };
        let (to, conn) = link.ends[1 - dir];
        if !link.open[1 - dir] {
            return;
        }
        if let Some(until) = self.slots[to].paused_until {
            self.at(until, Ev::Deliver { link: lid, dir });
            return;
        }
        let now = self.clock(to);
        loop {
            let Some(link) = self.net.links.get_mut(&lid) else {
                return;
            };
            let due = link.pipes[dir]
                .q
                .front()
                .is_some_and(|(t, _)| *t <= self.now);
            if !due || !link.open[1 - dir] {
                break;
            }
            let Some((_, chunk)) = link.pipes[dir].q.pop_front() else {
                break;
            };
            match chunk {
                Chunk::Data(bytes) => {
                    if let Some(rec) = self.record.as_mut() {
                        rec.delivered(lid, dir, &bytes);
                    }
                    let r = match self.slots[to].node.as_mut() {
                        Some(n) => n.handle_input(conn, &bytes, now),
                        None => return,
                    };
                    self.node_result(to, "handle_input", r);
                }
                Chunk::Fin => {
                    link.open[1 - dir] = false;
                    self.net.conn_link.remove(&(to, conn));
                    self.note(format_args!("n{to} transport closed {}", conn.0));
                    if let Some(n) = self.slots[to].node.as_mut() {
                        n.handle_closed(conn, now);
                    }
                    self.maybe_remove_link(lid);
                }
            }
            self.dirty.insert(to);
        }
    }

    pub(super) fn block(&mut self, a: usize, b: usize) {
        *self.net.blocked.entry((a, b)).or_default() += 1;
        // What is in flight from a to b is lost, and so is the link's
        // future in that direction (TCP cannot skip a gap).
        for l in self.net.links.values_mut() {
            for dir in 0..2 {
                if l.ends[dir].0 == a && l.ends[1 - dir].0 == b {
                    l.pipes[dir].dead = true;
                    l.pipes[dir].q.clear();
                }
            }
        }
    }

    pub(super) fn reset(&mut self, lid: u64, pick: u64) {
        let now = self.now;
        let mut fins = Vec::new();
        if let Some(l) = self.net.links.get_mut(&lid) {
            l.resetting = true;
            for (dir, p) in l.pipes.iter_mut().enumerate() {
                if p.dead || p.fin_sent {
                    continue;
                }
                let total: usize =
                    p.q.iter()
                        .map(|(_, c)| match c {
                            Chunk::Data(b) => b.len(),
                            Chunk::Fin => 0,
                        })
                        .sum();
                if total == 0 {
                    // Cut the next write instead, so the reset lands inside a frame.
                    p.cut_next = true;
                    continue;
                }
                let mut keep = ((pick >> (dir * 16)) % total as u64) as usize;
                let mut q = VecDeque::new();
                let mut last = now;
                while let Some((t, c)) = p.q.pop_front() {
                    if let Chunk::Data(mut b) = c {
                        if keep == 0 {
                            break;
                        }
                        if b.len() > keep {
                            b.truncate(keep);
                        }
                        keep -= b.len();
                        last = t;
                        q.push_back((t, Chunk::Data(b)));
                    }
                }
                q.push_back((last, Chunk::Fin));
                p.q = q;
                p.last = last;
                p.fin_sent = true;
                fins.push((last, dir));
            }
        }
        for (t, dir) in fins {
            self.at(t, Ev::Deliver { link: lid, dir });
        }
        self.at(self.now + 2 * keepalive(), Ev::ResetDeadline { link: lid });
    }

    /// One direction of one connection stops moving bytes for `for_`.
    pub(super) fn stall(&mut self, pick: u64, for_: u64) {
        let ids: Vec<u64> = self.net.links.keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        let lid = ids[(pick % ids.len() as u64) as usize];
        let dir = ((pick >> 32) % 2) as usize;
        let until = self.now + for_;
        if let Some(l) = self.net.links.get_mut(&lid) {
            let p = &mut l.pipes[dir];
            p.busy = p.busy.max(until);
            for (t, _) in p.q.iter_mut() {
                *t = (*t).max(until);
            }
            p.last = p.last.max(until);
        }
        self.at(until, Ev::Deliver { link: lid, dir });
    }

    /// One byte of one connection is flipped on the wire.
    pub(super) fn corrupt(&mut self, pick: u64) {
        let ids: Vec<u64> = self
            .net
            .links
            .iter()
            .filter(|(_, l)| l.open[0] && l.open[1])
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return;
        }
        let lid = ids[(pick % ids.len() as u64) as usize];
        let dir = ((pick >> 32) % 2) as usize;
        let now = self.now;
        if let Some(l) = self.net.links.get_mut(&lid) {
            let p = &mut l.pipes[dir];
            let total: usize =
                p.q.iter()
                    .map(|(_, c)| match c {
                        Chunk::Data(b) => b.len(),
                        Chunk::Fin => 0,
                    })
                    .sum();
            if total == 0 {
                p.corrupt_next = Some(pick >> 8);
            } else {
                let mut at = ((pick >> 8) % total as u64) as usize;
                for (_, c) in p.q.iter_mut() {
                    if let Chunk::Data(b) = c {
                        if at < b.len() {
                            b[at] ^= 1 << (pick % 8);
                            break;
                        }
                        at -= b.len();
                    }
                }
                l.corrupted_at = Some(now);
            }
        }
    }
}

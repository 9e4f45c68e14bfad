//! Asking for blocks: what a queue inbox or a broadcast replica still
//! wants, planned into requests within the in-flight limit, each naming the
//! node its proof may stop at.

use crate::feed::{FeedDescriptor, FeedId};
use crate::identity::PeerId;
use crate::merkle::flat;
use crate::ranges::RangeSet;
use crate::store::{Store, Txn};
use crate::wire::{Message, RangeRequest, MAX_REQUEST_RANGES};

use crate::node::config::Prefetch;
use crate::node::conn::Inflight;
use crate::node::{ConnId, NodeError, Planned, State, Target};

/// Whether the answer to `earlier` (a request sent before, on the same
/// connection, so answered before) will bring tree node `i`: its proof
/// carries the path from its blocks up to where it stops (its trusted node,
/// or the roots of a tree at least `known` long, `known` being a length the
/// peer signed) and the sibling of every node on that path.
fn brings(earlier: &Inflight, i: u64, known: u64) -> bool {
    if earlier.trusted.is_none() && earlier.end > known {
        // A request past what the peer announced may be answered by a tail
        // it has not written yet; do not count on it.
        return false;
    }
    let p = flat::parent(i);
    let (first, end) = flat::blocks(p);
    first <= earlier.start
        && earlier.end <= end
        && end <= known
        && earlier
            .trusted
            .is_none_or(|t| flat::depth(p) <= flat::depth(t))
}

/// Ranges planned for one connection and feed, sent as one request
/// message (their ids are consecutive from `first_id`).
struct RequestBatch {
    conn: ConnId,
    feed: FeedId,
    base: u64,
    first_id: u64,
    ranges: Vec<RangeRequest>,
}

impl RequestBatch {
    /// Whether planned request `p` can join: same connection, feed and
    /// base, the next id, and room in the message.
    fn takes(&self, p: &Planned) -> bool {
        self.conn == p.conn
            && self.feed == p.desc.id()
            && self.base == p.base
            && self.first_id + self.ranges.len() as u64 == p.id
            && self.ranges.len() < MAX_REQUEST_RANGES
    }
}

/// Whether a request for blocks up to `asked_end`, answered by a data
/// message ending at `end` that carried a head of length `head_len`, stays
/// open: the answer reached the responder's head, and the request asked
/// for more. Both sides decide it with this, from what the message says.
pub(super) fn continues(head_len: Option<u64>, end: u64, asked_end: u64) -> bool {
    head_len == Some(end) && end < asked_end
}

/// The first run at or after `from` of the blocks a reader wants: the union
/// of its prefetch `window` and the `wanted` set, below `limit`.
fn next_wanted(window: (u64, u64), wanted: &RangeSet, limit: u64, from: u64) -> Option<(u64, u64)> {
    let (ws, we) = window;
    let in_window = (we > from.max(ws)).then(|| from.max(ws));
    let a = match (in_window, wanted.next_member(from)) {
        (Some(p), Some(q)) => p.min(q),
        (p, q) => p.or(q)?,
    };
    if a >= limit {
        return None;
    }
    let mut b = a;
    loop {
        if ws <= b && b < we {
            b = we;
        } else if wanted.contains(b) {
            b = wanted.next_gap(b);
        } else {
            break;
        }
    }
    Some((a, b.min(limit)))
}

impl State {
    /// Asks `from` for the blocks its inbox wants: the prefetch window past
    /// the reader's cursor and anything `get` asked for, minus what is held,
    /// cleared, refused or already asked, within the in-flight limit.
    pub(in crate::node) fn schedule_requests(&mut self, from: PeerId) {
        self.to_schedule.insert(Target::Queue(from));
    }

    /// Plans the requests [`State::schedule_requests`] asked for, marking
    /// them in flight; the caller sends them.
    fn plan_queue(&mut self, from: PeerId) -> Vec<Planned> {
        let mut planned = Vec::new();
        if self
            .forks
            .contains_key(&FeedDescriptor::queue(from, self.me).id())
        {
            return planned;
        }
        let fid = FeedDescriptor::queue(from, self.me).id();
        // From the sender, or else from a mailbox holding its mail.
        let direct = self.conn_to(&from);
        let Some(cid) = direct.or_else(|| self.mailbox_conn_for(&fid)) else {
            return planned;
        };
        let Some(inbox) = self.inboxes.get_mut(&from) else {
            return planned;
        };
        let base = self.feeds.get(&fid).map_or(0, |f| f.len());
        let limit = inbox.dl.announced;
        // How far ahead to download, and from where: messages the reader
        // passed while they were missing stay wanted, so the window runs
        // from the cursor.
        let (window_from, reach) = match self.config.prefetch {
            Prefetch::All => (0, u64::MAX),
            Prefetch::Window(w) => (inbox.cursor(), inbox.window_start().saturating_add(w)),
        };
        let window = (window_from, reach.min(limit));
        let Some(conn) = self.conns.get_mut(&cid) else {
            return planned;
        };
        let (per, max_inflight) = self.config.request_limits();
        // Counted once: `busy` walks the in-flight list.
        let mut busy = conn.busy();
        // Ask for the window and every block `get` wants, less what is held,
        // cleared, in flight or refused: walked lazily, so that a full
        // pipeline costs nothing and a free slot a few lookups, however many
        // blocks a sparse reader wants or holds.
        let mut from_seq = 0;
        while busy < max_inflight {
            let Some((a, b)) = next_wanted(window, &inbox.wanted, limit, from_seq) else {
                break;
            };
            let mut s = a;
            while busy < max_inflight {
                let skip = [&inbox.cleared, &inbox.refused];
                let Some((gap, e)) = inbox.dl.next_request(&skip, s, b, per) else {
                    break;
                };
                busy += 1;
                planned.push(Planned {
                    conn: cid,
                    id: conn.plan_request(fid, gap, e, false),
                    desc: FeedDescriptor::queue(from, self.me),
                    start: gap,
                    end: e,
                    base,
                    known: limit.max(base),
                });
                s = e;
            }
            from_seq = b;
        }
        // Ask ahead for what the sender has not written yet: it holds the
        // request and answers as soon as it appends, a round trip sooner than
        // announcing and waiting to be asked. It starts past everything the
        // sender announced and everything we hold or cleared (after a
        // restart we may hold more than it re-announced).
        let mut tail = limit;
        loop {
            let next = inbox.cleared.next_gap(inbox.dl.held.next_gap(tail));
            if next == tail {
                break;
            }
            tail = next;
        }
        // A mailbox is asked for what it announced only.
        if direct.is_some()
            && reach > tail
            && !conn.standing()
            && !inbox.dl.requested.contains(tail)
        {
            let e = tail
                .saturating_add(per)
                .min(reach)
                .min(crate::merkle::flat::MAX_LENGTH);
            if e > tail {
                planned.push(Planned {
                    conn: cid,
                    id: conn.plan_request(fid, tail, e, true),
                    desc: FeedDescriptor::queue(from, self.me),
                    start: tail,
                    end: e,
                    base,
                    known: limit.max(base),
                });
                inbox.dl.requested.insert(tail, e);
            }
        }
        planned
    }

    /// Sends every request scheduled since the last call. Each names the
    /// lowest node we already hold above the blocks, when there is one, so
    /// the proof that comes back stops there: a sparse reader's later
    /// fetches carry a few hashes instead of a path to the roots, and no
    /// signed head.
    pub(in crate::node) fn issue_requests<S: Store>(&mut self, store: &S) -> Result<(), NodeError> {
        if self.to_schedule.is_empty() {
            return Ok(());
        }
        let txn = Txn::begin(store)?;
        for target in std::mem::take(&mut self.to_schedule) {
            let planned = match target {
                Target::Queue(from) => self.plan_queue(from),
                Target::Broadcast(feed) => self.plan_broadcast(feed),
                Target::Carried(feed) => self.plan_carried(feed),
            };
            // Consecutive ranges for one connection and feed share a message.
            let mut batch: Option<RequestBatch> = None;
            for p in planned {
                let fid = p.desc.id();
                let trusted = self.trusted_for(&txn, &p)?;
                if let Some(r) = self
                    .conns
                    .get_mut(&p.conn)
                    .and_then(|c| c.inflight.iter_mut().find(|r| r.id == p.id))
                {
                    r.trusted = trusted;
                    r.base = p.base;
                    r.sent = true;
                }
                let range = RangeRequest {
                    start: p.start,
                    end: p.end,
                    trusted,
                };
                match &mut batch {
                    Some(b) if b.takes(&p) => b.ranges.push(range),
                    _ => {
                        self.send_requests(batch.take());
                        batch = Some(RequestBatch {
                            conn: p.conn,
                            feed: fid,
                            base: p.base,
                            first_id: p.id,
                            ranges: vec![range],
                        });
                    }
                }
            }
            self.send_requests(batch);
        }
        Ok(())
    }

    /// The node a planned request names for its proof to stop at: the lowest
    /// one covering its blocks that we hold or that an answer on its way
    /// brings, within a length the peer signed.
    fn trusted_for<S: Store>(
        &mut self,
        txn: &Txn<'_, S>,
        p: &Planned,
    ) -> Result<Option<u64>, NodeError> {
        if p.end > p.known {
            return Ok(None);
        }
        let fid = p.desc.id();
        self.feed(txn, p.desc)?;
        let sent = self.conns.get(&p.conn).map_or(&[][..], |c| &c.inflight[..]);
        let coming = |i| {
            sent.iter()
                .any(|r| r.sent && r.feed == fid && brings(r, i, p.known))
        };
        Ok(match self.feeds.get(&fid) {
            Some(feed) => feed.trusted_node(txn, p.start, p.end, p.known, coming)?,
            None => None,
        })
    }

    fn send_requests(&mut self, batch: Option<RequestBatch>) {
        if let Some(b) = batch {
            if let Some(conn) = self.conns.get_mut(&b.conn) {
                conn.send(&Message::Request {
                    feed: b.feed,
                    base: b.base,
                    first_id: b.first_id,
                    ranges: b.ranges,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The planning helpers against brute-force models over small trees.

    use quickcheck::{QuickCheck, TestResult};

    use super::*;

    /// Blocks 0..64, as a model universe.
    const N: u64 = 64;

    fn set_of(bits: u64) -> RangeSet {
        let mut s = RangeSet::new();
        for b in 0..N {
            if bits >> b & 1 == 1 {
                s.insert(b, b + 1);
            }
        }
        s
    }

    #[test]
    fn next_wanted_is_the_first_run_of_window_or_wanted_blocks_from_where_it_starts() {
        fn prop(ws: u8, we: u8, wanted: u64, limit: u8, from: u8) -> bool {
            let (ws, we, limit, from) = (
                ws as u64 % N,
                we as u64 % N,
                limit as u64 % N,
                from as u64 % N,
            );
            let want = |b: u64| (ws <= b && b < we) || wanted >> b & 1 == 1;
            // The model: walk the blocks one by one.
            let start = (from..limit).find(|&b| want(b));
            let model = start.map(|a| (a, (a..limit).find(|&b| !want(b)).unwrap_or(limit)));
            next_wanted((ws, we), &set_of(wanted), limit, from) == model
        }
        QuickCheck::new()
            .tests(2000)
            .quickcheck(prop as fn(u8, u8, u64, u8, u8) -> bool);
    }

    #[test]
    fn an_answer_brings_exactly_the_nodes_its_proof_carries() {
        fn prop(start: u8, len: u8, known: u8, trusted_at: Option<u8>, i: u8) -> TestResult {
            let start = start as u64 % N;
            let end = (start + 1 + len as u64 % 8).min(N);
            let known = known as u64 % (N + 1);
            let i = i as u64 % (2 * N);
            // A trusted node is an ancestor of the requested blocks.
            let mut trusted = None;
            if let Some(up) = trusted_at {
                let mut t = flat::leaf(start);
                for _ in 0..up % 7 {
                    t = flat::parent(t);
                }
                let (a, b) = flat::blocks(t);
                if !(a <= start && end <= b) {
                    return TestResult::discard();
                }
                trusted = Some(t);
            }
            let asked = Inflight {
                id: 0,
                feed: FeedId([0; 32]),
                start,
                end,
                trusted,
                base: 0,
                sent: true,
                standing: false,
                stale: false,
            };
            // The model: the proof climbs from each requested leaf, one
            // parent at a time, until the trusted node, or a node past the
            // signed length `known` (the roots take over there), and carries
            // both children of every node it passes above all the blocks.
            let mut carried = std::collections::BTreeSet::new();
            let untrusted_tail = trusted.is_none() && end > known;
            if !untrusted_tail {
                for b in start..end {
                    let mut n = flat::leaf(b);
                    while Some(n) != trusted {
                        let p = flat::parent(n);
                        let (a, z) = flat::blocks(p);
                        let above_trusted =
                            trusted.is_some_and(|t| flat::depth(p) > flat::depth(t));
                        if z > known || above_trusted {
                            break;
                        }
                        // Only a node above every requested block is on the
                        // one path the proof shares; below it, each block's
                        // own hashes come with the blocks.
                        if a <= start && end <= z {
                            let (l, r) = flat::children(p).expect("a parent has children");
                            carried.insert(l);
                            carried.insert(r);
                        }
                        n = p;
                    }
                }
            }
            TestResult::from_bool(brings(&asked, i, known) == carried.contains(&i))
        }
        QuickCheck::new()
            .tests(3000)
            .quickcheck(prop as fn(u8, u8, u8, Option<u8>, u8) -> TestResult);
    }

    #[test]
    fn a_request_stays_open_only_when_its_answer_reached_the_responders_head_short_of_what_was_asked(
    ) {
        fn prop(head: Option<u8>, end: u8, asked: u8) -> bool {
            let (end, asked) = (end as u64, asked as u64);
            let head = head.map(u64::from);
            let open = continues(head, end, asked);
            // The model, in words: the responder had nothing past `end`
            // (its head ends there), and the request wanted more.
            let model = match head {
                Some(h) => h == end && asked > end,
                None => false,
            };
            open == model
        }
        QuickCheck::new()
            .tests(2000)
            .quickcheck(prop as fn(Option<u8>, u8, u8) -> bool);
    }
}

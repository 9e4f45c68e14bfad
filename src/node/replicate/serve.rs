//! Serving peers' requests: one data message per request at a time,
//! within a byte budget per connection per call.

use crate::feed::{FeedDescriptor, FeedError};
use crate::identity::PeerId;
use crate::store::{Store, Txn};
use crate::wire::{DataMsg, Message};

use crate::node::conn::ToServe;
use crate::node::{ConnId, NodeError, State};

use super::request::continues;

/// Requests for blocks not yet written that one connection may park.
const MAX_PARKED: usize = 4;

/// Blocks one refusal looks at to find where pruned blocks end.
const MAX_PRUNED_SCAN: u64 = 256;

/// What a refusal costs of a connection's serving budget, per block
/// refused (a lookup each, or a range check): so that requests only ever
/// refused are served no faster than those answered with data.
const REFUSAL_COST_PER_BLOCK: usize = 64;

/// What one data message served.
struct Served {
    /// Bytes of blocks sent.
    bytes: usize,
    /// The rest of the request, when the message reached our signed head
    /// before the request's end: it stays open (PROTOCOL.md section 7).
    rest: Option<ToServe>,
}

/// How a request is answered.
enum Answer {
    /// With a data message.
    Data(Served),
    /// With a refusal: blocks from the request's start up to this one
    /// cannot be served (beyond our length, pruned, or held only sparsely).
    Refused(u64),
}

/// Encodes one data message answering `w` from `feed`, as much of the range
/// as fits `max_data` bytes (at least one block), or refuses.
fn serve_one<S: Store>(
    txn: &Txn<'_, S>,
    feed: &crate::feed::Feed,
    conn: &mut crate::node::conn::Conn,
    w: ToServe,
    max_data: usize,
) -> Result<Answer, NodeError> {
    let len = feed.len();
    let Some(head) = feed.head().copied() else {
        return Ok(Answer::Refused(w.end));
    };
    if w.start >= len || w.base > len {
        return Ok(Answer::Refused(w.end));
    }
    let end = w.end.min(len);
    let mut blocks: Vec<&[u8]> = Vec::new();
    let mut bytes = 0;
    let mut e = w.start;
    while e < end {
        let Some(data) = feed.get_ref(txn, e)? else {
            break;
        };
        if !blocks.is_empty() && bytes + data.len() > max_data {
            break;
        }
        bytes += data.len();
        blocks.push(data);
        e += 1;
    }
    if blocks.is_empty() {
        // The first blocks are pruned: refuse just those, so the reader asks
        // again for the rest. A bounded look, charged to the serving budget
        // (see `serve_all`): a peer asking again and again for a pruned range
        // costs lookups, not only bytes.
        let mut k = w.start + 1;
        let last = end.min(w.start.saturating_add(MAX_PRUNED_SCAN));
        while k < last && feed.get_ref(txn, k)?.is_none() {
            k += 1;
        }
        return Ok(Answer::Refused(k));
    }
    // Stop at the requester's trusted node when it is a real one of ours;
    // otherwise prove up to our signed head.
    let below = w
        .trusted
        .filter(|&t| crate::merkle::fits(w.start, e, len, 0, Some(t)));
    // A head sent since the peer asked may be the one it now holds: show
    // its roots too, so the longer head can be checked against them.
    let shown = match conn.heads_sent.get(&w.feed) {
        Some(&sent) if sent > w.base => sent.min(len),
        _ => w.base,
    };
    let proof = match below {
        Some(t) => feed.prove_below(txn, w.start, e, t),
        None => feed.prove_showing(txn, w.start, e, w.base, shown),
    };
    let proof = match proof {
        Ok(p) => p,
        Err(FeedError::MissingNode { .. }) => return Ok(Answer::Refused(w.end)),
        Err(e) => return Err(e.into()),
    };
    let head = if below.is_some() {
        None
    } else {
        conn.heads_sent.insert(w.feed, len);
        Some(&head)
    };
    DataMsg::encode_parts(
        w.id,
        head,
        &proof,
        blocks.iter().copied(),
        &mut conn.tx_plain,
    );
    let rest = continues(head.map(|h| h.length), e, w.end).then_some(ToServe {
        start: e,
        base: len,
        trusted: None,
        ..w
    });
    Ok(Answer::Data(Served { bytes, rest }))
}

impl State {
    /// Serves queued requests on every connection, up to a byte budget per
    /// connection per call so one greedy peer cannot starve the rest; the
    /// remainder is served at the next timeout, which is immediate while work
    /// is queued.
    pub(in crate::node) fn serve_all<S: Store>(&mut self, store: &S) -> Result<(), NodeError> {
        let busy: Vec<(ConnId, PeerId)> = self
            .conns
            .values()
            .filter(|c| !c.serve.is_empty() && c.is_open())
            .filter_map(|c| Some((c.id, c.peer?)))
            .collect();
        if busy.is_empty() {
            return Ok(());
        }
        let txn = Txn::begin(store)?;
        let max_data = self.config.max_data_bytes.max(1);
        let (now, rate) = (self.now, self.config.max_serve_rate);
        for (cid, peer) in busy {
            let own_queue = FeedDescriptor::queue(self.me, peer);
            let own_id = own_queue.id();
            let Some(credit) = self
                .conns
                .get_mut(&cid)
                .map(|c| c.credit.available(now, rate))
            else {
                continue;
            };
            // This call's share, and what is left of this second's.
            let budget = (4 * max_data).min(usize::try_from(credit.max(0)).unwrap_or(usize::MAX));
            let mut spent = 0;
            while spent < budget {
                let Some(w) = self.conns.get_mut(&cid).and_then(|c| c.serve.pop_front()) else {
                    break;
                };
                // Our queue feed to this peer, or any broadcast feed we hold.
                let desc = if w.feed == own_id {
                    Some(own_queue)
                } else if let Some(r) = self.replicas.get(&w.feed) {
                    Some(r.desc)
                } else {
                    self.mail_servable(&peer, &w.feed)
                };
                let served = match desc {
                    Some(desc) => {
                        self.feed(&txn, desc)?;
                        match (self.feeds.get(&w.feed), self.conns.get_mut(&cid)) {
                            (Some(feed), Some(conn)) => serve_one(&txn, feed, conn, w, max_data)?,
                            _ => Answer::Refused(w.end),
                        }
                    }
                    None => Answer::Refused(w.end),
                };
                let Some(conn) = self.conns.get_mut(&cid) else {
                    break;
                };
                let cost = match &served {
                    Answer::Data(Served { bytes, .. }) => (*bytes).max(1),
                    Answer::Refused(until) => {
                        let blocks = until.saturating_sub(w.start).clamp(1, MAX_PRUNED_SCAN);
                        REFUSAL_COST_PER_BLOCK * blocks as usize
                    }
                };
                spent += cost;
                conn.credit.spend(cost);
                match served {
                    Answer::Data(Served { rest, .. }) => {
                        // The answer reached our head: the rest of the
                        // request stays open (the requester counts on it),
                        // answered as we append, or refused now.
                        if let Some(rest) = rest {
                            if w.feed == own_id && conn.parked.len() < MAX_PARKED {
                                conn.parked.push(rest);
                            } else {
                                conn.send(&Message::NoData {
                                    request: rest.id,
                                    end: rest.end,
                                });
                            }
                        }
                    }
                    Answer::Refused(_)
                        if w.feed == own_id
                            && w.start >= self.feeds.get(&w.feed).map_or(0, |f| f.len())
                            && conn.parked.len() < MAX_PARKED =>
                    {
                        // A reader that has everything asks for what comes
                        // next; hold that request and answer it the moment
                        // we append, which saves announcing a head and
                        // waiting for the request.
                        conn.parked.push(w);
                    }
                    Answer::Refused(until) => conn.send(&Message::NoData {
                        request: w.id,
                        end: until,
                    }),
                }
            }
        }
        Ok(())
    }
}

//! Data answers: verified against the signed head or a node we hold, and
//! stored; or retried, probed, or taken as evidence of a fork.

use crate::feed::{FeedDescriptor, FeedError, SignedHead};
use crate::identity::PeerId;
use crate::merkle::ProofError;
use crate::store::{Store, Txn};
use crate::wire::{DataMsg, Message, RangeRequest};

use crate::node::conn::Inflight;
use crate::node::fork::ForkEvidence;
use crate::node::{CloseReason, ConnId, State};

use super::request::continues;
use super::{feed_fault, AfterCommit, Fault};

/// Verifies and stores a data message: against its head, or, for a proof
/// that stops at a node we hold, against that node.
fn store_data<S: Store>(
    feed: &mut crate::feed::Feed,
    txn: &mut Txn<'_, S>,
    d: &DataMsg<'_>,
) -> Result<(), FeedError> {
    match &d.head {
        Some(head) => feed.verify_and_store(txn, head, &d.proof, &d.blocks),
        None => feed.verify_below_and_store(txn, &d.proof, &d.blocks),
    }
}

/// What became of a data message.
enum Stored {
    /// Verified and written.
    Yes,
    /// Not written, and nobody's fault: ask for the blocks again. Its proof
    /// stops at a node we expected an earlier answer to bring, which did not
    /// (it was refused or cut short), or it answers the open rest of a
    /// request whose earlier answer we did not store, or it hides a root we
    /// hold inside a node it carries ([`FeedError::Unconfirmed`]).
    Retry,
    /// Not written: its validly signed head does not fit our tree, which is
    /// either the author's fork or the peer's bad proof. A proof from base 0
    /// of the block past our length, which stands on its own and shows every
    /// root we hold, tells them apart: ask for one.
    Probe(u64),
    /// The author signed a head that conflicts with ours (ours, theirs).
    Forked(Box<(SignedHead, SignedHead)>),
}

/// Stores a data message answering `asked`, and says what became of it.
/// Any failure not covered by [`Stored`] is the peer's fault.
fn store_answer<S: Store>(
    feed: &mut crate::feed::Feed,
    txn: &mut Txn<'_, S>,
    d: &DataMsg<'_>,
    asked: &Inflight,
) -> Result<Stored, Fault> {
    if d.head.is_some() && d.proof.base != asked.base {
        // A responder that picks its own base could prove a conflicting tree
        // without touching the nodes we hold.
        return Err(Fault::Peer(CloseReason::Unexpected(format!(
            "a proof from length {} answers request {}, made from length {}",
            d.proof.base, d.request, asked.base
        ))));
    }
    if d.head.is_some() && asked.base > feed.len() {
        // A request left open from a head we did not adopt (its answer was
        // not stored): its proof cannot start from our tree.
        return Ok(Stored::Retry);
    }
    match store_data(feed, txn, d) {
        Ok(()) => Ok(Stored::Yes),
        Err(FeedError::Proof {
            source: ProofError::MissingBase(t),
            ..
        }) if d.head.is_none() && asked.trusted == Some(t) && d.proof.trusted == Some(t) => {
            Ok(Stored::Retry)
        }
        Err(FeedError::Fork { ours, theirs, .. }) => Ok(Stored::Forked(Box::new((*ours, *theirs)))),
        // The proof cannot show whether the longer head extends ours: ask
        // again, from the length we hold now.
        Err(FeedError::Unconfirmed { .. }) => Ok(Stored::Retry),
        Err(
            e @ (FeedError::RootMismatch { .. }
            | FeedError::Proof {
                source: ProofError::Mismatch(_),
                ..
            }),
        ) => match (d.head, feed.head().copied()) {
            (Some(head), Some(ours)) if feed.check_head(&head) => {
                if feed.conflicts_with(&head) {
                    Ok(Stored::Forked(Box::new((ours, head))))
                } else if asked.base > 0 && head.length > ours.length {
                    Ok(Stored::Probe(ours.length))
                } else {
                    Err(feed_fault(e))
                }
            }
            _ => Err(feed_fault(e)),
        },
        Err(e) => Err(feed_fault(e)),
    }
}

impl State {
    pub(super) fn on_data<S: Store>(
        &mut self,
        txn: &mut Txn<'_, S>,
        after: &mut AfterCommit,
        id: ConnId,
        peer: PeerId,
        d: DataMsg<'_>,
    ) -> Result<(), Fault> {
        let (start, end) = (d.proof.start, d.proof.end);
        let conn = self
            .conns
            .get_mut(&id)
            .ok_or(Fault::Peer(CloseReason::Local))?;
        let Some(asked) = conn.take_request(d.request) else {
            return Err(Fault::Peer(CloseReason::Unexpected(format!(
                "data for request {}, which we did not make",
                d.request
            ))));
        };
        if start != asked.start || end > asked.end {
            return Err(Fault::Peer(CloseReason::Unexpected(format!(
                "blocks {start}..{end} answer request {} for {}..{}",
                d.request, asked.start, asked.end
            ))));
        }
        // Answered up to the responder's head: the rest stays open there.
        let open = continues(d.head.map(|h| h.length), end, asked.end);
        if open {
            conn.reopen(&asked, end);
        }
        if asked.stale {
            // The rest of a request whose answer we could not use: its
            // proofs start from a head we never adopted.
            return Ok(());
        }
        // How far the request is done with: all of it, unless it stays open.
        let done = if open { end } else { asked.end };
        after.freed.insert(id);
        let head_len = d.head.map_or(0, |h| h.length);
        if self.forks.contains_key(&asked.feed) {
            // Answers already on their way when the fork was found.
            return Ok(());
        }
        if let Some(desc) = self.replicas.get(&asked.feed).map(|r| r.desc) {
            if !self.admits_broadcast(&desc) {
                // Room for another author ran out while this was on its way
                // (another author's answer took the last): nothing is kept.
                if let Some(r) = self.replicas.get_mut(&desc.id()) {
                    r.dl.requested.remove(start, asked.end);
                }
                return Ok(());
            }
            let feed = self.feed(txn, desc)?;
            let stored = store_answer(feed, txn, &d, &asked)?;
            if !matches!(stored, Stored::Yes) {
                self.leave_stale(id, &asked, open);
                if let Some(r) = self.replicas.get_mut(&desc.id()) {
                    r.dl.requested.remove(start, asked.end);
                }
                if self.not_stored(txn, after, id, desc, stored) {
                    after.broadcast_schedule.insert(desc.id());
                }
                return Ok(());
            }
            if let Some(r) = self.replicas.get_mut(&desc.id()) {
                r.dl.requested.remove(end, done);
                r.dl.announced = r.dl.announced.max(head_len);
            }
            self.broadcast_arrived(
                desc.id(),
                start,
                d.blocks.iter().map(|b| b.len()),
                &mut after.broadcast_events,
            );
            after.broadcast_arrived.insert(desc.id());
            after.broadcast_schedule.insert(desc.id());
            return Ok(());
        }
        if self.mail.carried.contains_key(&asked.feed) {
            return self.on_carried_data(txn, after, id, &d, &asked, open);
        }
        // From the sender, or from our mailbox holding its mail.
        let Some(peer) = self.queue_sender(peer, &asked.feed) else {
            // Asked of a broadcast feed we have since let go.
            return Ok(());
        };
        let desc = FeedDescriptor::queue(peer, self.me);
        let feed = self.feed(txn, desc)?;
        let stored = store_answer(feed, txn, &d, &asked)?;
        if !matches!(stored, Stored::Yes) {
            self.leave_stale(id, &asked, open);
            if let Some(inbox) = self.inboxes.get_mut(&peer) {
                inbox.dl.requested.remove(start, asked.end);
            }
            if self.not_stored(txn, after, id, desc, stored) {
                self.schedule_requests(peer);
            }
            return Ok(());
        }
        // A block cleared while its request was in flight keeps only its hash.
        let cleared: Vec<u64> = self
            .inboxes
            .get(&peer)
            .map(|i| i.cleared.iter_within(start, end).collect())
            .unwrap_or_default();
        let feed = self.feed(txn, desc)?;
        for seq in cleared {
            feed.drop_block(txn, seq).map_err(feed_fault)?;
        }
        let inbox = self.inbox(txn, peer)?;
        inbox.dl.requested.remove(start, done);
        inbox.dl.announced = inbox.dl.announced.max(head_len);
        inbox.dl.held.insert(start, end);
        // They leave `wanted` only once committed (in `after_commit`): if the
        // commit fails they must be fetched again, or `Fetched` never comes.
        for seq in inbox.wanted.iter_within(start, end).collect::<Vec<_>>() {
            after.fetched.push((peer, seq));
        }
        after.arrived.insert(peer);
        after.schedule.insert(peer);
        Ok(())
    }

    /// Stores an answer for a feed we carry as a mailbox, within the quotas
    /// (an answer that finds them used up is dropped: asked for again when
    /// the recipient has collected its mail).
    fn on_carried_data<S: Store>(
        &mut self,
        txn: &mut Txn<'_, S>,
        after: &mut AfterCommit,
        id: ConnId,
        d: &DataMsg<'_>,
        asked: &Inflight,
        open: bool,
    ) -> Result<(), Fault> {
        let (start, end) = (d.proof.start, d.proof.end);
        let fid = asked.feed;
        let Some(desc) = self.mail.carried.get(&fid).map(|c| c.desc) else {
            return Ok(());
        };
        if self.mail_full(&desc) {
            if let Some(c) = self.mail.carried.get_mut(&fid) {
                c.dl.requested.remove(start, asked.end);
            }
            return Ok(());
        }
        let feed = self.feed(txn, desc)?;
        let stored = store_answer(feed, txn, d, asked)?;
        if !matches!(stored, Stored::Yes) {
            self.leave_stale(id, asked, open);
            if let Some(c) = self.mail.carried.get_mut(&fid) {
                c.dl.requested.remove(start, asked.end);
            }
            if self.not_stored(txn, after, id, desc, stored) {
                after.carried_arrived.insert(fid);
            }
            return Ok(());
        }
        let done = if open { end } else { asked.end };
        self.carried_arrived(txn, fid, d, done);
        after.carried_arrived.insert(fid);
        Ok(())
    }

    /// The answer to `asked` was not stored, so if the request stays open at
    /// the responder, its further answers (proven from the head we did not
    /// adopt) are useless: they are dropped as they come, and the blocks are
    /// planned afresh.
    fn leave_stale(&mut self, conn: ConnId, asked: &Inflight, open: bool) {
        if !open {
            return;
        }
        if let Some(r) = self
            .conns
            .get_mut(&conn)
            .and_then(|c| c.inflight.iter_mut().find(|r| r.id == asked.id))
        {
            r.stale = true;
        }
    }

    /// Acts on an answer that was not stored: records a fork, or asks for a
    /// proof from base 0. Returns whether the feed's downloads should be
    /// planned again now.
    fn not_stored<S: Store>(
        &mut self,
        txn: &mut Txn<'_, S>,
        after: &mut AfterCommit,
        conn: ConnId,
        desc: FeedDescriptor,
        stored: Stored,
    ) -> bool {
        match stored {
            Stored::Yes | Stored::Retry => true,
            Stored::Forked(heads) => {
                let (ours, theirs) = *heads;
                self.fork_found(txn, after, desc, ours, theirs);
                false
            }
            Stored::Probe(from) => {
                // One block past what we verified, so that the proof holds a
                // node at each of our roots (see `Feed::verify`); its answer
                // plans the rest.
                let feed = desc.id();
                let Some(c) = self.conns.get_mut(&conn) else {
                    return true;
                };
                let asked = |r: &Inflight| {
                    r.feed == feed && r.base == 0 && (r.start, r.end) == (from, from + 1)
                };
                if c.inflight.iter().any(asked) {
                    // Several answers of one pipeline met the same doubt.
                    return false;
                }
                let id = c.plan_request(feed, from, from + 1, false);
                if let Some(r) = c.inflight.iter_mut().find(|r| r.id == id) {
                    r.sent = true;
                }
                c.send(&Message::Request {
                    feed,
                    base: 0,
                    first_id: id,
                    ranges: vec![RangeRequest {
                        start: from,
                        end: from + 1,
                        trusted: None,
                    }],
                });
                if let Some(r) = self.replicas.get_mut(&feed) {
                    r.dl.requested.insert(from, from + 1);
                } else if let Some(inbox) = self.inboxes.get_mut(&desc.author) {
                    inbox.dl.requested.insert(from, from + 1);
                }
                false
            }
        }
    }

    /// `desc`'s author signed `theirs`, which conflicts with `ours`: keeps
    /// the evidence (in `txn`), and stops replicating the feed once the
    /// batch commits.
    pub(super) fn fork_found<S: Store>(
        &mut self,
        txn: &mut Txn<'_, S>,
        after: &mut AfterCommit,
        desc: FeedDescriptor,
        ours: SignedHead,
        theirs: SignedHead,
    ) {
        let id = desc.id();
        if self.forks.contains_key(&id) || after.forks.iter().any(|f| f.desc.id() == id) {
            return;
        }
        let evidence = ForkEvidence { desc, ours, theirs };
        evidence.save(txn);
        after.forks.push(evidence);
    }
}

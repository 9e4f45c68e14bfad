//! Receipts: ours, signed and sent a moment after blocks arrive; a
//! recipient's, clamped to what we sent and recorded so the sender may
//! prune.

use crate::feed::FeedDescriptor;
use crate::identity::PeerId;
use crate::ranges::RangeSet;
use crate::store::{Store, Txn};
use crate::wire::{Message, Receipt};

use crate::node::timer::Timer;
use crate::node::{CloseReason, Event, NodeError, State};

use super::{AfterCommit, Fault};

impl State {
    pub(super) fn on_ack<S: Store>(
        &mut self,
        txn: &mut Txn<'_, S>,
        after: &mut AfterCommit,
        peer: PeerId,
        receipt: Receipt,
    ) -> Result<(), Fault> {
        if !receipt.verify() {
            return Err(Fault::Peer(CloseReason::BadData(
                "receipt has a bad signature".into(),
            )));
        }
        if self.on_carried_ack(txn, peer, &receipt)? {
            return Ok(());
        }
        // From the recipient, or relayed by its mailbox: its signature is
        // what counts.
        let peer = receipt.signer;
        let desc = FeedDescriptor::queue(self.me, peer);
        if receipt.feed != desc.id() {
            return Err(Fault::Peer(CloseReason::BadData(
                "receipt for a feed that is not ours to its signer".into(),
            )));
        }
        let length = self.feed(txn, desc)?.len();
        let prune = self.config.prune_acked;
        let outbox = self.outbox(txn, peer)?;
        let newly = outbox.add(txn, &desc.id(), receipt, length);
        for (start, end) in newly.ranges() {
            after.acked.push(Event::Acked {
                to: peer,
                start,
                end,
            });
        }
        if prune && !newly.is_empty() {
            self.prune_acked(txn, peer, Some(&newly))?;
        }
        Ok(())
    }

    /// Drops the bytes of acknowledged blocks of our feed to `to` (all of
    /// them, or those in `only`), keeping their hashes.
    pub(in crate::node) fn prune_acked<S: Store>(
        &mut self,
        txn: &mut Txn<'_, S>,
        to: PeerId,
        only: Option<&RangeSet>,
    ) -> Result<u64, NodeError> {
        let desc = FeedDescriptor::queue(self.me, to);
        let length = self.feed(txn, desc)?.len();
        let outbox = self.outbox(txn, to)?;
        let mut todo = match only {
            Some(r) => r.clone(),
            None => outbox.acked.clone(),
        };
        todo.subtract(&outbox.pruned);
        todo.remove(length, u64::MAX);
        if todo.is_empty() {
            return Ok(0);
        }
        outbox.add_pruned(txn, &desc.id(), &todo);
        let feed = self.feed(txn, desc)?;
        let mut n = 0;
        for (a, b) in todo.ranges() {
            for seq in a..b {
                n += u64::from(feed.drop_block(txn, seq)?);
            }
        }
        Ok(n)
    }

    /// Owes `from` a receipt for what just arrived. It goes out after
    /// `Config::ack_delay`, covering everything that arrives meanwhile: one
    /// signature and one message for many answers, where a sparse reader
    /// would otherwise send one per block.
    pub(super) fn ack_soon(&mut self, from: PeerId) {
        if self.config.ack_delay.is_zero() {
            self.send_ack(from);
        } else {
            let due = self.now + self.config.ack_delay;
            self.timers.set_if_unset(Timer::Ack(from), due);
        }
    }

    /// Signs and sends a receipt for what we newly hold of `from`'s feed.
    ///
    /// While the held set is a few ranges (a queue read in order), each
    /// receipt covers all of it, so one receipt proves everything. A sparse
    /// reader's set can be fragmented into thousands of ranges; then each
    /// receipt carries only what the peer has not been told on this
    /// connection, so receipts stay small however long the session.
    pub(in crate::node) fn send_ack(&mut self, from: PeerId) {
        const CUMULATIVE_UP_TO: usize = 32;
        let feed = FeedDescriptor::queue(from, self.me).id();
        // To the sender, or else to the mailbox we fetched its mail from,
        // which hands it on.
        let Some(cid) = self.conn_to(&from).or_else(|| self.mailbox_conn_for(&feed)) else {
            return;
        };
        let Some(inbox) = self.inboxes.get(&from) else {
            return;
        };
        let held = inbox.acknowledged();
        let Some(conn) = self.conns.get_mut(&cid) else {
            return;
        };
        let told = conn.acks_sent.entry(feed).or_default();
        let mut delta = held.clone();
        delta.subtract(told);
        if delta.is_empty() {
            return;
        }
        let mut ranges = if held.range_count() <= CUMULATIVE_UP_TO {
            held
        } else {
            delta
        };
        if ranges.range_count() > crate::wire::MAX_RECEIPT_RANGES {
            // More than one receipt may carry: the rest follows next time.
            ranges = ranges.first_ranges(crate::wire::MAX_RECEIPT_RANGES);
        }
        told.union(&ranges);
        conn.send(&Message::Ack(Receipt::sign(&self.key, feed, ranges)));
    }
}

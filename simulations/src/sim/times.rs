//! Delivery times: what senders asked (not before, expires at), and the
//! oracle that no message is delivered before its time or after its
//! expiry, by the receiver's clock, and that only an expired message is
//! dead-lettered as expired.

use std::collections::BTreeMap;

use peermq::{Due, Schedule, Timestamp};

use crate::oracle::Failure;

use super::Sim;

/// The schedules of sent messages that have one, per (sender, recipient,
/// seq).
#[derive(Default)]
pub(super) struct Times {
    schedules: BTreeMap<(usize, usize, u64), Schedule>,
}

impl Times {
    pub(super) fn on_sent(
        &mut self,
        from: usize,
        to: usize,
        seqs: std::ops::Range<u64>,
        s: Schedule,
    ) {
        if s.is_empty() {
            return;
        }
        for seq in seqs {
            self.schedules.insert((from, to, seq), s);
        }
    }

    fn of(&self, from: usize, to: usize, seq: u64) -> Schedule {
        self.schedules
            .get(&(from, to, seq))
            .copied()
            .unwrap_or(Schedule::NONE)
    }
}

impl Sim<'_> {
    /// Node `node`'s wall clock: virtual time plus its skew.
    pub(super) fn wall(&self, node: usize) -> Timestamp {
        let skew = self.plan.options.node.get(node).map_or(0, |n| n.clock_skew);
        Timestamp::from_micros(self.now + skew)
    }

    /// The schedule a send by `from` asks for, `delay` and `expire` after
    /// now by its clock (0: none).
    pub(super) fn schedule_for(&self, from: usize, delay: u64, expire: u64) -> Schedule {
        let at = |d: u64| (d > 0).then(|| Timestamp::from_micros(self.wall(from).as_micros() + d));
        Schedule {
            not_before: at(delay),
            expires_at: at(expire),
        }
    }

    /// `node` delivered message `seq` from `from` (a read of the unread
    /// mailbox, a take, a get): it must be due by `node`'s clock.
    pub(super) fn check_due(&self, node: usize, from: usize, seq: u64) -> Result<(), Failure> {
        if self.oracle.is_rogue(from) || self.oracle.is_rogue(node) {
            return Ok(());
        }
        let s = self.times.of(from, node, seq);
        let wall = self.wall(node);
        match s.due(wall) {
            Due::Now => Ok(()),
            Due::At(t) => Err(Failure::new(
                "early-delivery",
                format!("n{node} delivered message {seq} from n{from} at {wall:?}, before its not-before time {t:?}"),
            )),
            Due::Expired => Err(Failure::new(
                "expired-delivery",
                format!("n{node} delivered message {seq} from n{from} at {wall:?}, after its expiry {:?}", s.expires_at),
            )),
        }
    }

    /// `node` dead-lettered message `seq` from `from` as expired: it must
    /// have an expiry, passed by `node`'s clock.
    pub(super) fn check_expired(&self, node: usize, from: usize, seq: u64) -> Result<(), Failure> {
        let s = self.times.of(from, node, seq);
        let wall = self.wall(node);
        if s.due(wall) == Due::Expired {
            return Ok(());
        }
        Err(Failure::new(
            "expired-early",
            format!("n{node} dead-lettered message {seq} from n{from} as expired at {wall:?}, but its expiry is {:?}", s.expires_at),
        ))
    }
}

//! Every deadline a node keeps, in one table (after quinn-proto's
//! `connection/timer.rs`).
//!
//! A deadline is set where it is decided and stopped where it stops
//! mattering; [`TimerTable::next`] is the earliest of them, which is what
//! `Node::poll_timeout` answers (with "now" while work is queued), and
//! [`TimerTable::expire`] hands `Node::handle_timeout` the ones that came.
//!
//! ```text
//!   set(Timer::Ack(p), t) ──┐
//!   set(Conn(c, Idle), t) ──┼──> at:    Timer -> Instant
//!   stop(Redial(p))       ──┘    order: (Instant, Timer), earliest first
//!                                        │
//!   next() = first of order <────────────┘
//!   expire(now) = every Timer with Instant <= now, removed, in Timer order
//! ```

use std::collections::{BTreeMap, BTreeSet};

use super::event::ConnId;
use crate::identity::PeerId;
use crate::time::Instant;

/// One deadline. The order of the variants is the order in which deadlines
/// that come due together are handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// A receipt owed to this sender is due (`Config::ack_delay` after what
    /// it covers arrived).
    Ack(PeerId),
    /// Look in the store for what other processes wrote
    /// (`Config::store_poll_interval`), while a connection is open.
    StorePoll,
    /// A deadline of one connection.
    Conn(ConnId, ConnTimer),
    /// Ask the driver to dial this peer again (backoff after a failure or a
    /// lost connection).
    Redial(PeerId),
}

/// The deadlines of one connection, in the order they are handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ConnTimer {
    /// The handshake must be done by then.
    Handshake,
    /// Nothing heard from the peer since `Config::idle_timeout`: close.
    Idle,
    /// Nothing sent since `Config::keepalive_interval`: send a keepalive.
    Keepalive,
}

impl ConnTimer {
    const ALL: [ConnTimer; 3] = [ConnTimer::Handshake, ConnTimer::Idle, ConnTimer::Keepalive];
}

/// The deadlines, by timer and by time.
#[derive(Debug, Default)]
pub(crate) struct TimerTable {
    at: BTreeMap<Timer, Instant>,
    order: BTreeSet<(Instant, Timer)>,
}

impl TimerTable {
    /// Sets `timer` to fire at `at`, replacing any earlier setting.
    pub fn set(&mut self, timer: Timer, at: Instant) {
        if let Some(old) = self.at.insert(timer, at) {
            if old == at {
                return;
            }
            self.order.remove(&(old, timer));
        }
        self.order.insert((at, timer));
    }

    /// Sets `timer` to `at` unless it is set already.
    pub fn set_if_unset(&mut self, timer: Timer, at: Instant) {
        if !self.is_set(timer) {
            self.set(timer, at);
        }
    }

    /// Stops `timer`, if it was set.
    pub fn stop(&mut self, timer: Timer) {
        if let Some(old) = self.at.remove(&timer) {
            self.order.remove(&(old, timer));
        }
    }

    /// Stops every deadline of connection `conn`.
    pub fn stop_conn(&mut self, conn: ConnId) {
        for t in ConnTimer::ALL {
            self.stop(Timer::Conn(conn, t));
        }
    }

    pub fn is_set(&self, timer: Timer) -> bool {
        self.at.contains_key(&timer)
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.order.first().map(|(at, _)| *at)
    }

    /// Removes and returns every timer due at `now`, in [`Timer`] order.
    pub fn expire(&mut self, now: Instant) -> Vec<Timer> {
        let mut due = Vec::new();
        while let Some(&(at, timer)) = self.order.first() {
            if at > now {
                break;
            }
            self.order.pop_first();
            self.at.remove(&timer);
            due.push(timer);
        }
        due.sort_unstable();
        due
    }
}

#[cfg(test)]
impl TimerTable {
    /// When `timer` fires, if it is set.
    pub fn get(&self, timer: Timer) -> Option<Instant> {
        self.at.get(&timer).copied()
    }

    /// How many deadlines are set.
    pub fn len(&self) -> usize {
        self.at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(micros: u64) -> Instant {
        Instant::from_micros(micros)
    }

    #[test]
    fn next_is_the_earliest_and_a_reset_moves_it() {
        let mut table = TimerTable::default();
        let p = PeerId([1; 32]);
        table.set(Timer::Redial(p), t(50));
        table.set(Timer::StorePoll, t(20));
        assert_eq!(table.next(), Some(t(20)));
        table.set(Timer::StorePoll, t(90));
        assert_eq!(table.next(), Some(t(50)));
        table.stop(Timer::Redial(p));
        assert_eq!(table.next(), Some(t(90)));
        table.set_if_unset(Timer::StorePoll, t(1));
        assert_eq!(table.get(Timer::StorePoll), Some(t(90)));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn expire_takes_what_is_due_in_timer_order_and_leaves_the_rest() {
        let mut table = TimerTable::default();
        let (p, c) = (PeerId([2; 32]), ConnId(7));
        table.set(Timer::Redial(p), t(10));
        table.set(Timer::Conn(c, ConnTimer::Keepalive), t(30));
        table.set(Timer::Conn(c, ConnTimer::Idle), t(30));
        table.set(Timer::Ack(p), t(40));
        table.set(Timer::StorePoll, t(100));
        assert_eq!(
            table.expire(t(40)),
            vec![
                Timer::Ack(p),
                Timer::Conn(c, ConnTimer::Idle),
                Timer::Conn(c, ConnTimer::Keepalive),
                Timer::Redial(p)
            ]
        );
        assert_eq!(table.next(), Some(t(100)));
        assert!(table.expire(t(99)).is_empty());
        table.stop_conn(c);
        assert_eq!(table.len(), 1);
    }
}

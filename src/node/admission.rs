//! Admission: how many connections peers may open to us.
//!
//! Two bounds, both on connections a peer dials (ours are ours to pace):
//!
//! - at most [`crate::Config::max_inbound`] at once, in any state, so that
//!   half-open handshakes cannot pile up (each holds buffers until its
//!   timeout);
//! - at most [`MAX_ACCEPTS_PER_PEER`] completed in an [`ACCEPT_WINDOW`]
//!   from one key. A second connection with a peer replaces the first
//!   (`Duplicate`), so a key never holds more than one open; this bounds
//!   the churn of one that reconnects in a loop, each time costing us a
//!   handshake and the greetings of a new connection.
//!
//! Past either, the new connection is closed with a reason saying which;
//! the peer's existing connection is untouched.

use std::collections::BTreeMap;

use crate::identity::PeerId;
use crate::time::Instant;

use super::limits::{ACCEPT_WINDOW, MAX_ACCEPTS_PER_PEER};

/// Keys whose recent connections are counted. A flood of new keys past it
/// forgets the counts (the bound is on memory; each key still pays a full
/// handshake per connection).
const MAX_TRACKED: usize = 4096;

/// Recent inbound connections, per key.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    recent: BTreeMap<PeerId, Window>,
}

#[derive(Clone, Copy, Debug)]
struct Window {
    since: Instant,
    count: u32,
}

impl Admission {
    /// Whether an inbound connection from `peer`, completing its handshake
    /// now, may stay; counts it if so.
    pub fn admit(&mut self, peer: PeerId, now: Instant) -> bool {
        let fresh = Window {
            since: now,
            count: 0,
        };
        let w = self.recent.entry(peer).or_insert(fresh);
        if now.saturating_since(w.since) >= ACCEPT_WINDOW {
            *w = fresh;
        }
        if w.count >= MAX_ACCEPTS_PER_PEER {
            return false;
        }
        w.count += 1;
        if self.recent.len() > MAX_TRACKED {
            self.recent
                .retain(|_, w| now.saturating_since(w.since) < ACCEPT_WINDOW);
            if self.recent.len() > MAX_TRACKED {
                self.recent.clear();
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_key_gets_its_quota_per_window_and_a_new_window_restores_it() {
        let mut a = Admission::default();
        let p = PeerId([1; 32]);
        let t0 = Instant::ZERO;
        assert!((0..MAX_ACCEPTS_PER_PEER).all(|_| a.admit(p, t0)));
        assert!(!a.admit(p, t0 + Duration::from_secs(9)));
        assert!(a.admit(PeerId([2; 32]), t0), "other keys are not affected");
        assert!(a.admit(p, t0 + ACCEPT_WINDOW));
    }

    #[test]
    fn a_clock_going_back_neither_panics_nor_resets_the_count() {
        let mut a = Admission::default();
        let p = PeerId([1; 32]);
        let late = Instant::from_micros(100_000_000);
        assert!((0..MAX_ACCEPTS_PER_PEER).all(|_| a.admit(p, late)));
        assert!(!a.admit(p, Instant::ZERO));
    }

    #[test]
    fn the_keys_tracked_stay_bounded() {
        let mut a = Admission::default();
        for i in 0..3 * MAX_TRACKED as u32 {
            let mut id = [0; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            assert!(a.admit(PeerId(id), Instant::ZERO));
            assert!(a.recent.len() <= MAX_TRACKED);
        }
    }
}

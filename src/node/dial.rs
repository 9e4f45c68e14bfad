//! Dial intents: keep a connection to a peer, reconnecting with backoff.

use std::time::Duration;

use crate::rng::{RandomSource, SeededRng};
use crate::time::Instant;

/// A standing wish to be connected to one peer.
#[derive(Clone, Debug, Default)]
pub(crate) struct Dial {
    /// Consecutive failures since the last successful handshake. When the
    /// next `Output::Dial` is due is the node's `Timer::Redial`.
    pub attempts: u32,
    /// The last connection ended because a store could not take what
    /// came (ours failed, or the peer closed as `overloaded`: its disk is
    /// full, say). A handshake then is no success: the backoff keeps
    /// growing until a connection ends otherwise, so that a full disk
    /// does not make both sides reconnect, and send again, at once.
    pub strained: bool,
}

impl Dial {
    /// When to try next: exponential backoff from `base`, capped at `cap`,
    /// with jitter drawn from the node's RNG (between half and the whole
    /// delay) so that peers that lost each other do not redial in step.
    pub fn schedule(
        &mut self,
        now: Instant,
        base: Duration,
        cap: Duration,
        rng: &mut SeededRng,
    ) -> Instant {
        let exp = base.saturating_mul(1u32 << self.attempts.min(20));
        let delay = exp.min(cap);
        let micros = delay.as_micros() as u64;
        let jitter = if micros > 1 {
            rng.next_u64() % (micros / 2 + 1)
        } else {
            0
        };
        self.attempts = self.attempts.saturating_add(1);
        now + Duration::from_micros(micros - jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let mut rng = SeededRng::from_u64(1);
        let mut d = Dial::default();
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        let mut prev = Duration::ZERO;
        for i in 0..12 {
            let wait = d.schedule(Instant::ZERO, base, cap, &mut rng) - Instant::ZERO;
            let full = base.saturating_mul(1 << i).min(cap);
            assert!(
                wait <= full && wait >= full / 2,
                "attempt {i}: {wait:?} vs {full:?}"
            );
            if full < cap {
                assert!(wait * 2 >= prev, "grows");
            }
            prev = wait;
        }
    }
}

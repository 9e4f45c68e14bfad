//! The keys this node seals with: one epoch key per recipient, rotated.
//!
//! A key agreement (a fresh X25519 secret and one variable-base scalar
//! multiplication) costs tens of microseconds on each side, more than
//! sealing a small message, so one is made per *epoch*, not per message or
//! per batch: the messages one node process seals to one recipient until
//! the epoch ends. An epoch ends after [`EPOCH_MESSAGES`] messages or
//! [`EPOCH_LENGTH`], when the node restarts, and after any failed send, so
//! that a key is never used twice at one seq: within an epoch the seqs a
//! feed appends only grow, and after a failure (a commit that may or may
//! not have reached the disk) the next message gets a fresh key whatever
//! seq it takes. Ending epochs often keeps what one leaked epoch key opens
//! small; the recipient's identity key still opens every epoch.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::identity::seal::{SealError, Sealer};
use crate::identity::PeerId;
use crate::rng::RandomSource;
use crate::time::Instant;

/// Most messages sealed under one epoch key.
pub(crate) const EPOCH_MESSAGES: u64 = 4096;

/// Longest an epoch key is used.
pub(crate) const EPOCH_LENGTH: Duration = Duration::from_secs(300);

/// Recipients whose epoch keys are kept; sending to more rotates the least
/// recently used out (a fresh key when it is sent to again).
const MAX_RECIPIENTS: usize = 256;

/// One recipient's current epoch.
struct Epoch {
    sealer: Sealer,
    /// Messages sealed so far.
    sealed: u64,
    began: Instant,
    /// When it last sealed, for choosing which to forget.
    used: Instant,
}

/// The epoch keys of the recipients this node seals to.
#[derive(Default)]
pub(crate) struct SealKeys {
    epochs: BTreeMap<PeerId, Epoch>,
}

impl SealKeys {
    /// The sealer for `count` messages from `me` to `to` at `now`: the
    /// current epoch's if it has room for them and time left, else a fresh
    /// epoch's, keyed from `rng`.
    pub fn sealer(
        &mut self,
        rng: &mut impl RandomSource,
        me: PeerId,
        to: PeerId,
        count: u64,
        now: Instant,
    ) -> Result<Sealer, SealError> {
        let fresh = match self.epochs.get(&to) {
            Some(e) => {
                e.sealed + count > EPOCH_MESSAGES.max(count)
                    || now.saturating_since(e.began) >= EPOCH_LENGTH
            }
            None => true,
        };
        if fresh {
            if !self.epochs.contains_key(&to) && self.epochs.len() >= MAX_RECIPIENTS {
                let oldest = self
                    .epochs
                    .iter()
                    .min_by_key(|(_, e)| e.used)
                    .map(|(p, _)| *p);
                if let Some(oldest) = oldest {
                    self.epochs.remove(&oldest);
                }
            }
            let sealer = Sealer::new(rng, me, to)?;
            self.epochs.insert(
                to,
                Epoch {
                    sealer,
                    sealed: 0,
                    began: now,
                    used: now,
                },
            );
        }
        let e = self.epochs.get_mut(&to).ok_or(SealError::BadRecipient)?;
        e.sealed += count;
        e.used = now;
        Ok(e.sealer.clone())
    }

    /// Ends `to`'s epoch: a send failed after sealing, so the seqs it
    /// sealed at may be sealed again, and must be under another key.
    pub fn end(&mut self, to: &PeerId) {
        self.epochs.remove(to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;
    use crate::rng::SeededRng;

    fn pair() -> (PeerId, PeerId, SeededRng) {
        let mut rng = SeededRng::from_u64(5);
        let a = Keypair::generate(&mut rng).peer_id();
        let b = Keypair::generate(&mut rng).peer_id();
        (a, b, rng)
    }

    fn key(
        keys: &mut SealKeys,
        rng: &mut SeededRng,
        a: PeerId,
        b: PeerId,
        n: u64,
        at: Instant,
    ) -> [u8; 32] {
        keys.sealer(rng, a, b, n, at).unwrap().ephemeral()
    }

    #[test]
    fn an_epoch_ends_after_its_messages_its_time_or_a_failure() {
        let (a, b, mut rng) = pair();
        let mut keys = SealKeys::default();
        let t0 = Instant::ZERO;
        let first = key(&mut keys, &mut rng, a, b, 1, t0);
        assert_eq!(
            key(&mut keys, &mut rng, a, b, EPOCH_MESSAGES - 1, t0),
            first
        );
        let second = key(&mut keys, &mut rng, a, b, 1, t0);
        assert_ne!(second, first, "the epoch was full");
        let later = t0 + EPOCH_LENGTH;
        let third = key(&mut keys, &mut rng, a, b, 1, later);
        assert_ne!(third, second, "the epoch was over");
        keys.end(&b);
        assert_ne!(key(&mut keys, &mut rng, a, b, 1, later), third);
    }

    #[test]
    fn a_batch_larger_than_an_epoch_gets_one_fresh_key() {
        let (a, b, mut rng) = pair();
        let mut keys = SealKeys::default();
        let first = key(&mut keys, &mut rng, a, b, 1, Instant::ZERO);
        let big = key(&mut keys, &mut rng, a, b, 3 * EPOCH_MESSAGES, Instant::ZERO);
        assert_ne!(big, first);
        assert_ne!(key(&mut keys, &mut rng, a, b, 1, Instant::ZERO), big);
    }

    #[test]
    fn the_least_recently_used_recipient_is_forgotten() {
        let (a, b, mut rng) = pair();
        let mut keys = SealKeys::default();
        let first = key(&mut keys, &mut rng, a, b, 1, Instant::ZERO);
        for i in 0..MAX_RECIPIENTS as u64 {
            let to = Keypair::generate(&mut rng).peer_id();
            let at = Instant::ZERO + Duration::from_millis(i + 1);
            key(&mut keys, &mut rng, a, to, 1, at);
        }
        assert_eq!(keys.epochs.len(), MAX_RECIPIENTS);
        assert_ne!(key(&mut keys, &mut rng, a, b, 1, Instant::ZERO), first);
    }
}

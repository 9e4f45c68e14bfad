//! Deterministic randomness.
//!
//! The core never draws OS randomness: every random byte it uses comes from a
//! [`SeededRng`] created from a seed the caller injects, so the same seed and
//! the same inputs give the same output bytes. Runtimes that want fresh keys
//! draw the seed from the OS themselves.

/// A source of random bytes that the core can draw from.
///
/// Implemented by [`SeededRng`]; a runtime may implement it over OS randomness
/// when it generates a long-lived identity.
pub trait RandomSource {
    /// Fills `dest` entirely with random bytes.
    fn fill_bytes(&mut self, dest: &mut [u8]);

    /// Returns a uniformly random `u64`.
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
}

/// A cryptographically strong deterministic random generator.
///
/// It is the BLAKE3 extendable output keyed by a 32-byte seed: unpredictable
/// without the seed, and byte-for-byte reproducible with it.
#[derive(Clone)]
pub struct SeededRng {
    reader: blake3::OutputReader,
}

impl SeededRng {
    /// Creates a generator from a 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let reader = blake3::Hasher::new_keyed(&seed).finalize_xof();
        Self { reader }
    }

    /// Creates a generator from a `u64` seed, as simulations and tests use.
    pub fn from_u64(seed: u64) -> Self {
        Self::from_seed(Self::derive_seed(seed))
    }

    /// The 32-byte seed [`SeededRng::from_u64`] uses for `seed`: for tests
    /// and simulations, whose seeds must be short enough to print and replay.
    pub fn derive_seed(seed: u64) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_derive_key("peermq v1 rng seed");
        hasher.update(&seed.to_le_bytes());
        *hasher.finalize().as_bytes()
    }

    /// Derives an independent child generator, so that one component's
    /// consumption does not shift another's stream.
    pub fn fork(&mut self) -> Self {
        let mut seed = [0u8; 32];
        self.fill_bytes(&mut seed);
        Self::from_seed(seed)
    }
}

impl RandomSource for SeededRng {
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.reader.fill(dest);
    }
}

impl std::fmt::Debug for SeededRng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The stream position is secret material; show nothing of it.
        f.write_str("SeededRng { .. }")
    }
}

/// The randomness a node is opened with ([`crate::Node::open`]): key
/// material, kept apart from the [`crate::Config`] so that no copied or
/// logged configuration carries it. Neither `Clone` nor shown by `Debug`,
/// and wiped when dropped.
pub struct Entropy {
    pub(crate) seed: [u8; 32],
    pub(crate) nonce_seed: Option<[u8; 32]>,
}

impl Entropy {
    /// From 32 fresh bytes of the operating system's random source, drawn
    /// for this open. They seed every random choice the node makes: its
    /// identity when the store has none yet, its Noise keys, reconnect
    /// jitter; whoever knows them knows those keys.
    pub fn new(seed: [u8; 32]) -> Self {
        Entropy {
            seed,
            nonce_seed: None,
        }
    }

    /// Derived from `seed`: reproducible, for tests and simulations only. A
    /// `u64` is guessable, and whoever guesses it holds the node's keys.
    pub fn deterministic(seed: u64) -> Self {
        Entropy::new(SeededRng::derive_seed(seed))
    }

    /// Also computes each next signature's nonce while the node is idle
    /// ([`crate::Node::idle_work`]), from `nonce_seed`, which takes most of a
    /// signature's cost off `send`. Opt-in, for a hazard: such a nonce does
    /// not depend on the message, so two processes that share the signer's
    /// state sign two messages with one nonce, which reveals the identity's
    /// secret key. That happens when a seed is reused with the same
    /// identity, and when a running node is copied: a VM snapshot restored
    /// twice, a cloned container, a `fork()`. Use it only where none of that
    /// can happen, with 32 bytes drawn from the operating system at every
    /// open (see [`crate::Signer`]). Without it the node signs as RFC 8032
    /// says, deriving each nonce from its message, which no copy can make
    /// repeat.
    pub fn sign_ahead(mut self, nonce_seed: [u8; 32]) -> Self {
        self.nonce_seed = Some(nonce_seed);
        self
    }
}

impl std::fmt::Debug for Entropy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ahead = if self.nonce_seed.is_some() {
            "on"
        } else {
            "off"
        };
        write!(f, "Entropy {{ seed: <secret>, sign_ahead: {ahead} }}")
    }
}

impl Drop for Entropy {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.seed.zeroize();
        if let Some(s) = self.nonce_seed.as_mut() {
            s.zeroize();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_different_seeds_differ() {
        let mut a = SeededRng::from_u64(7);
        let mut b = SeededRng::from_u64(7);
        let mut c = SeededRng::from_u64(8);
        let (x, y, z) = (a.next_u64(), b.next_u64(), c.next_u64());
        assert_eq!(x, y);
        assert_ne!(x, z);
        assert_ne!(a.next_u64(), x, "the stream advances");
    }

    #[test]
    fn fork_is_independent_of_later_parent_use() {
        let mut a = SeededRng::from_u64(1);
        let mut child = a.fork();
        let mut b = SeededRng::from_u64(1);
        let mut child2 = b.fork();
        b.next_u64();
        assert_eq!(child.next_u64(), child2.next_u64());
    }
}

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

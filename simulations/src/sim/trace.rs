//! The run's trace: every output of every node and every step the
//! simulator takes, as canonical text hashed with BLAKE3. Two runs of one
//! seed must give the same hash; `--hashes` prints it per seed, so that a
//! refactoring can show it changed nothing.

use std::fmt::Write as _;

/// The trace being hashed, and the line being written.
#[derive(Default)]
pub(super) struct Trace {
    hasher: blake3::Hasher,
    line: String,
    /// Echo each line to stderr as well, for debugging.
    pub echo: bool,
}

impl Trace {
    /// Hashes bytes a node put on the wire.
    pub fn bytes(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
    }

    /// Hashes one line of text, stamped with the simulated time.
    pub fn note(&mut self, now: u64, s: std::fmt::Arguments<'_>) {
        let _ = write!(self.line, "{now} ");
        let _ = self.line.write_fmt(s);
        self.line.push('\n');
        if self.echo {
            eprint!("{}", self.line);
        }
        self.hasher.update(self.line.as_bytes());
        self.line.clear();
    }

    /// The hash of everything traced, in hex.
    pub fn finish(&self) -> String {
        self.hasher.finalize().to_hex().to_string()
    }
}

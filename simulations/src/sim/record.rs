//! `--record-frames DIR`: the byte streams the simulated links deliver,
//! written out as fuzzing seeds (fuzz/README.md). One file per link
//! direction: the first [`MAX_STREAM`] bytes of what that end received,
//! cut at a frame boundary, named by its BLAKE3 hash so that equal
//! streams are one file. Recording is off by default and changes
//! nothing the simulation does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bytes kept of each stream.
pub const MAX_STREAM: usize = 64 * 1024;

/// The streams recorded so far.
pub(super) struct Recorder {
    dir: PathBuf,
    /// By (link, direction).
    streams: BTreeMap<(u64, usize), Vec<u8>>,
}

impl Recorder {
    pub fn new(dir: &Path) -> Self {
        Recorder {
            dir: dir.to_path_buf(),
            streams: BTreeMap::new(),
        }
    }

    /// Bytes delivered on `link` in direction `dir`.
    pub fn delivered(&mut self, link: u64, dir: usize, bytes: &[u8]) {
        let s = self.streams.entry((link, dir)).or_default();
        let room = MAX_STREAM.saturating_sub(s.len());
        s.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// Writes every stream, cut after its last whole frame (a frame is
    /// `len: u16 BE | len bytes`). Returns how many files it wrote.
    pub fn write(&self) -> std::io::Result<usize> {
        std::fs::create_dir_all(&self.dir)?;
        let mut n = 0;
        for s in self.streams.values() {
            let mut end = 0;
            while let Some(len) = s.get(end..end + 2) {
                let next = end + 2 + u16::from_be_bytes([len[0], len[1]]) as usize;
                if next > s.len() {
                    break;
                }
                end = next;
            }
            if end == 0 {
                continue;
            }
            let name = blake3::hash(&s[..end]).to_hex();
            std::fs::write(self.dir.join(&name.as_str()[..16]), &s[..end])?;
            n += 1;
        }
        Ok(n)
    }
}

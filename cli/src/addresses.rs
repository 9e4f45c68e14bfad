//! Addresses given with `add-peer --addr` and `connect --addr`.
//!
//! The node keeps addresses only in memory, yet `add-peer` and `connect` run
//! in different processes, so the command line remembers them in a small
//! text file in the data directory, one `KEY HOST:PORT` per line. Host names
//! are resolved at each dial, so a peer whose name moves is still found.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use peermq::PeerId;
use peermq_tokio::{BoxFuture, Discovery};

pub use crate::common::parse_host_port;

/// The file, inside the data directory (LMDB only touches its own files).
const FILE: &str = "peermq-cli-addresses.txt";

/// The remembered addresses of one data directory.
#[derive(Debug, Default, Clone)]
pub struct AddressBook {
    path: PathBuf,
    entries: BTreeMap<PeerId, Vec<String>>,
}

impl AddressBook {
    /// Reads the book of `datadir`; a missing file is an empty book, and
    /// lines that do not parse (edited by hand) are skipped.
    pub fn load(datadir: &Path) -> anyhow::Result<Self> {
        let path = datadir.join(FILE);
        let mut book = AddressBook {
            path,
            entries: BTreeMap::new(),
        };
        let text = match std::fs::read_to_string(&book.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(book),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot read peer addresses from {}; check its permissions",
                        book.path.display()
                    )
                })
            }
        };
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(key), Some(addr)) = (words.next(), words.next()) else {
                continue;
            };
            let (Ok(peer), Ok(addr)) = (key.parse::<PeerId>(), parse_host_port(addr)) else {
                continue;
            };
            book.insert(peer, addr);
        }
        Ok(book)
    }

    /// Remembers `addr` for `peer` (after those remembered before).
    pub fn insert(&mut self, peer: PeerId, addr: String) {
        let list = self.entries.entry(peer).or_default();
        if !list.contains(&addr) {
            list.push(addr);
        }
    }

    /// Forgets every address of `peer`; whether it had any.
    pub fn remove(&mut self, peer: &PeerId) -> bool {
        self.entries.remove(peer).is_some()
    }

    /// The addresses of `peer`.
    pub fn get(&self, peer: &PeerId) -> &[String] {
        self.entries.get(peer).map_or(&[], Vec::as_slice)
    }

    /// Writes the book back, replacing the file whole so that a concurrent
    /// reader never sees half of it.
    pub fn save(&self) -> anyhow::Result<()> {
        let mut text = String::new();
        for (peer, addrs) in &self.entries {
            for addr in addrs {
                text.push_str(&format!("{peer} {addr}\n"));
            }
        }
        let tmp = self
            .path
            .with_extension(format!("tmp.{}", std::process::id()));
        let write =
            write_private(&tmp, text.as_bytes()).and_then(|()| std::fs::rename(&tmp, &self.path));
        if write.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        write.with_context(|| {
            format!(
                "cannot save peer addresses in {}; check that the data directory is writable",
                self.path.display()
            )
        })
    }
}

/// Writes `bytes` to a new file at `path` that only this user may read:
/// where one's peers are is nobody else's business.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    std::io::Write::write_all(&mut options.open(path)?, bytes)
}

impl Discovery for AddressBook {
    fn locate<'a>(&'a self, peer: &'a PeerId) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        let names = self.get(peer).to_vec();
        Box::pin(async move {
            let mut found = Vec::new();
            for name in names {
                match tokio::net::lookup_host(name.as_str()).await {
                    Ok(addrs) => found.extend(addrs),
                    // One unresolvable name must not hide the others.
                    Err(e) => tracing::debug!(%name, error = %e, "cannot resolve peer address"),
                }
            }
            Ok(found)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_accepts_addresses_and_names_and_rejects_the_rest() {
        for ok in [
            "127.0.0.1:4000",
            "[::1]:4000",
            "example.org:1",
            "localhost:65535",
        ] {
            assert_eq!(parse_host_port(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "127.0.0.1",
            "::1:4000",
            "host:",
            ":4000",
            "host:0",
            "host:70000",
            "a b:1",
        ] {
            assert!(parse_host_port(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_book_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut book = AddressBook::load(dir.path()).unwrap();
        book.insert(PeerId([1; 32]), "127.0.0.1:4000".into());
        book.save().unwrap();
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn the_book_survives_a_reload_and_forgets_removed_peers() {
        let dir = tempfile::tempdir().unwrap();
        let (p, q) = (PeerId([1; 32]), PeerId([2; 32]));
        let mut book = AddressBook::load(dir.path()).unwrap();
        book.insert(p, "127.0.0.1:4000".into());
        book.insert(p, "example.org:4000".into());
        book.insert(p, "127.0.0.1:4000".into());
        book.insert(q, "[::1]:5".into());
        book.save().unwrap();

        let mut again = AddressBook::load(dir.path()).unwrap();
        assert_eq!(again.get(&p), ["127.0.0.1:4000", "example.org:4000"]);
        assert_eq!(again.get(&q), ["[::1]:5"]);
        assert!(again.remove(&q));
        assert!(!again.remove(&q));
        again.save().unwrap();
        let last = AddressBook::load(dir.path()).unwrap();
        assert!(last.get(&q).is_empty());
        assert_eq!(last.get(&p).len(), 2);
    }

    #[test]
    fn located_addresses_are_resolved_at_dial_time() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut book = AddressBook::default();
        let p = PeerId([3; 32]);
        book.insert(p, "127.0.0.1:4000".into());
        let found = rt.block_on(book.locate(&p)).unwrap();
        assert_eq!(found, vec!["127.0.0.1:4000".parse::<SocketAddr>().unwrap()]);
        assert!(rt
            .block_on(book.locate(&PeerId([4; 32])))
            .unwrap()
            .is_empty());
    }
}

//! How [`crate::Mq::connect`] finds where a peer listens.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use peermq::PeerId;

use crate::BoxFuture;

/// A way to learn the addresses of a peer, and to tell others ours.
///
/// The driver asks every configured discovery in turn each time the core
/// wants to dial a peer, and tries the addresses in the order returned. When
/// none answers, the core's backoff schedules the next attempt, so a peer
/// that shows up later is still found.
pub trait Discovery: Send + Sync + 'static {
    /// Addresses where `peer` may be listening, best first. An empty list
    /// means "not found (yet)".
    fn locate<'a>(&'a self, peer: &'a PeerId) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>>;

    /// This node (`me`) now listens on `addr`. The default does nothing.
    fn announce(&self, me: &PeerId, addr: SocketAddr) -> io::Result<()> {
        let _ = (me, addr);
        Ok(())
    }

    /// This node no longer listens on `addr`. The default does nothing.
    fn withdraw(&self, me: &PeerId, addr: SocketAddr) {
        let _ = (me, addr);
    }
}

/// Addresses given by the application, with [`crate::Mq::add_peer`].
#[derive(Debug, Default)]
pub struct StaticDiscovery {
    addrs: Mutex<HashMap<PeerId, Vec<SocketAddr>>>,
}

impl StaticDiscovery {
    /// An empty address book.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `peer` may be reached at `addr` (tried after addresses
    /// recorded earlier).
    pub fn insert(&self, peer: PeerId, addr: SocketAddr) {
        let mut map = self.addrs.lock().unwrap_or_else(|e| e.into_inner());
        let list = map.entry(peer).or_default();
        if !list.contains(&addr) {
            list.push(addr);
        }
    }

    /// Forgets every address of `peer`.
    pub fn remove(&self, peer: &PeerId) {
        let mut map = self.addrs.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(peer);
    }

    /// The addresses recorded for `peer`.
    pub fn addresses(&self, peer: &PeerId) -> Vec<SocketAddr> {
        let map = self.addrs.lock().unwrap_or_else(|e| e.into_inner());
        map.get(peer).cloned().unwrap_or_default()
    }
}

impl Discovery for StaticDiscovery {
    fn locate<'a>(&'a self, peer: &'a PeerId) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        let found = self.addresses(peer);
        Box::pin(async move { Ok(found) })
    }
}

/// Discovery between processes of one user on one machine: a listener
/// writes its address into a per-user directory under its key, and a dialer
/// looks its peer's key up there. Two processes thus find each other by key
/// alone.
///
/// The directory is `$PEERMQ_DISCOVERY_DIR` if set, else
/// `$XDG_RUNTIME_DIR/peermq-discovery`, else `peermq-discovery-$USER` in the
/// system temporary directory (created private to the user). An entry names
/// the process that wrote it; entries of processes that no longer run are
/// ignored and deleted (on Linux, where `/proc` tells; elsewhere a stale
/// entry merely fails to connect, and the core backs off).
#[derive(Clone, Debug)]
pub struct LocalDiscovery {
    dir: PathBuf,
}

impl Default for LocalDiscovery {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalDiscovery {
    /// The environment variable that overrides the directory.
    pub const ENV: &'static str = "PEERMQ_DISCOVERY_DIR";

    /// Discovery in [`LocalDiscovery::default_dir`].
    pub fn new() -> Self {
        Self::in_dir(Self::default_dir())
    }

    /// Discovery in `dir` (tests use a fresh one each, so that parallel
    /// tests do not find each other).
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        LocalDiscovery { dir: dir.into() }
    }

    /// The directory used when none is given: see the type's docs.
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os(Self::ENV).filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir).join("peermq-discovery");
        }
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("USERNAME"))
            .unwrap_or_else(|_| "user".into());
        let user: String = user
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .collect();
        std::env::temp_dir().join(format!("peermq-discovery-{user}"))
    }

    /// The directory entries live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry_name(me: &PeerId, addr: SocketAddr) -> String {
        format!("{me}.{}.{}.addr", std::process::id(), addr.port())
    }

    fn create_dir(&self) -> io::Result<()> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            // Other users must neither read where we listen nor plant
            // entries that redirect our dials.
            builder.mode(0o700);
        }
        builder.create(&self.dir)
    }

    fn scan(&self, peer: &PeerId) -> io::Result<Vec<SocketAddr>> {
        let prefix = format!("{peer}.");
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(rest) = name
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".addr"))
            else {
                continue;
            };
            let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if !process_alive(pid) {
                // Its writer died without withdrawing it.
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            let Ok(addr) = text.trim().parse::<SocketAddr>() else {
                continue;
            };
            let mtime = entry.metadata().and_then(|m| m.modified()).ok();
            found.push((mtime, addr));
        }
        // The newest listener is the likeliest to be alive.
        found.sort_by_key(|e| std::cmp::Reverse(e.0));
        Ok(found.into_iter().map(|(_, a)| a).collect())
    }
}

impl Discovery for LocalDiscovery {
    fn locate<'a>(&'a self, peer: &'a PeerId) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        let found = self.scan(peer);
        Box::pin(async move { found })
    }

    fn announce(&self, me: &PeerId, addr: SocketAddr) -> io::Result<()> {
        let write = || {
            self.create_dir()?;
            let addr = reachable_locally(addr);
            let name = Self::entry_name(me, addr);
            let tmp = self.dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, format!("{addr}\n"))?;
            // Readers must never see a half-written entry.
            std::fs::rename(&tmp, self.dir.join(name))
        };
        write().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "writing to the discovery directory {}: {e}; check that it is writable \
                     (set {} to move it)",
                    self.dir.display(),
                    Self::ENV
                ),
            )
        })
    }

    fn withdraw(&self, me: &PeerId, addr: SocketAddr) {
        let name = Self::entry_name(me, reachable_locally(addr));
        let _ = std::fs::remove_file(self.dir.join(name));
    }
}

/// A wildcard bind is reachable on loopback, which is what local peers use.
fn reachable_locally(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    if proc.join("self").exists() {
        proc.join(pid.to_string()).exists()
    } else {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerId {
        PeerId([n; 32])
    }

    #[test]
    fn a_listener_is_found_by_key_and_forgotten_on_withdraw() {
        let dir = tempfile_dir();
        let d = LocalDiscovery::in_dir(&dir);
        let addr: SocketAddr = "0.0.0.0:4567".parse().unwrap();
        d.announce(&peer(1), addr).unwrap();
        let found = futures_lite::future::block_on(d.locate(&peer(1))).unwrap();
        assert_eq!(found, vec!["127.0.0.1:4567".parse().unwrap()]);
        assert!(futures_lite::future::block_on(d.locate(&peer(2)))
            .unwrap()
            .is_empty());
        d.withdraw(&peer(1), addr);
        assert!(futures_lite::future::block_on(d.locate(&peer(1)))
            .unwrap()
            .is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn entries_of_dead_processes_are_ignored_and_removed() {
        let dir = tempfile_dir();
        let d = LocalDiscovery::in_dir(&dir);
        d.create_dir().unwrap();
        // No process has this pid: Linux caps pids far below it.
        let stale = dir.join(format!("{}.4000000000.9.addr", peer(3)));
        std::fs::write(&stale, "127.0.0.1:9\n").unwrap();
        let found = futures_lite::future::block_on(d.locate(&peer(3))).unwrap();
        if Path::new("/proc/self").exists() {
            assert!(found.is_empty());
            assert!(!stale.exists());
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).unwrap();
        std::env::temp_dir().join(format!("peermq-disc-test-{}", u64::from_le_bytes(seed)))
    }
}

//! How [`crate::Mq::connect`] finds where a peer listens.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use peermq::PeerId;

use crate::runtime::BoxFuture;

/// A way to learn the addresses of a peer, and to tell others ours.
///
/// The driver asks the configured discoveries, quick ones first and in
/// order, each time the core wants to dial a peer, and tries the addresses
/// in the order returned. When none answers, the core's backoff schedules
/// the next attempt, so a peer that shows up later is still found.
pub trait Discovery: Send + Sync + 'static {
    /// Addresses where `peer` may be listening, best first. An empty list
    /// means "not found (yet)".
    fn locate<'a>(&'a self, peer: &'a PeerId) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>>;

    /// Whether a lookup may take long, as a search of the internet (the
    /// DHT) does. The driver asks slow discoveries only when the quick
    /// ones know nothing (or their addresses failed), and keeps asking the
    /// quick ones while a slow one searches. The default: quick.
    fn is_slow(&self) -> bool {
        false
    }

    /// This node (`me`) now listens on `addr`. The default does nothing.
    fn announce(&self, me: &PeerId, addr: SocketAddr) -> io::Result<()> {
        let _ = (me, addr);
        Ok(())
    }

    /// This node no longer listens on `addr`. The default does nothing.
    fn withdraw(&self, me: &PeerId, addr: SocketAddr) {
        let _ = (me, addr);
    }

    /// The mailboxes `peer` publishes as holding its mail (a signed
    /// discovery record, as the DHT's, says so for it). The default knows
    /// none.
    fn mailboxes_of<'a>(&'a self, peer: &'a PeerId) -> BoxFuture<'a, io::Result<Vec<PeerId>>> {
        let _ = peer;
        Box::pin(async { Ok(Vec::new()) })
    }

    /// This node (`me`) names `mailboxes` as holding its mail: publish
    /// them where [`Discovery::mailboxes_of`] finds them. The default does
    /// nothing.
    fn announce_mailboxes(&self, me: &PeerId, mailboxes: &[PeerId]) -> io::Result<()> {
        let _ = (me, mailboxes);
        Ok(())
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
///
/// Under a shared `/tmp` another user could create the directory first, or
/// plant links in it. So on Unix the directory is used only if it is a real
/// directory (not a link) owned by this user (whose access for anyone
/// else, if any, is removed); otherwise announcing and looking up fail with
/// an error that says so. Entries are read without following links, only if they are regular
/// files, and at most [`LocalDiscovery::MAX_ENTRY`] bytes of them; they are
/// written to a fresh file that no planted link can redirect. An entry that
/// lies (an address where another key answers) costs a dial: the driver
/// then tries the next address.
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

    /// Most bytes read of one entry (an address and a newline).
    pub const MAX_ENTRY: u64 = 128;

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
        builder.create(&self.dir)?;
        self.check_private()
    }

    /// Checks that the directory is this user's alone (see the type's docs).
    #[cfg(unix)]
    fn check_private(&self) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(&self.dir)?;
        let me = rustix::process::geteuid().as_raw();
        let unsafe_because = if !meta.file_type().is_dir() {
            Some("it is not a directory (a link?)".to_string())
        } else if meta.uid() != me {
            Some(format!(
                "it belongs to uid {}, not to us (uid {me})",
                meta.uid()
            ))
        } else if meta.mode() & 0o077 != 0 {
            // Ours, but open to others (made by hand, say): close it.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
            None
        } else {
            None
        };
        match unsafe_because {
            None => Ok(()),
            Some(why) => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "the discovery directory {} is not private: {why}; another user could \
                     redirect or read your dials. Remove it, or set {} to a directory only \
                     you can use",
                    self.dir.display(),
                    Self::ENV
                ),
            )),
        }
    }

    #[cfg(not(unix))]
    fn check_private(&self) -> io::Result<()> {
        Ok(())
    }

    /// The address an entry holds: read without following links, from a
    /// regular file only, and at most [`LocalDiscovery::MAX_ENTRY`] bytes.
    fn read_entry(path: &Path) -> Option<SocketAddr> {
        use std::io::Read;
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // A link (to /dev/zero, to another user's file) is refused, and
            // a FIFO does not block the open.
            options.custom_flags(
                rustix::fs::OFlags::NOFOLLOW.bits() as i32
                    | rustix::fs::OFlags::NONBLOCK.bits() as i32,
            );
        }
        let file = options.open(path).ok()?;
        if !file.metadata().ok()?.file_type().is_file() {
            return None;
        }
        let mut text = String::new();
        file.take(Self::MAX_ENTRY).read_to_string(&mut text).ok()?;
        text.trim().parse().ok()
    }

    fn scan(&self, peer: &PeerId) -> io::Result<Vec<SocketAddr>> {
        let prefix = format!("{peer}.");
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        self.check_private()?;
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
            let Some(addr) = Self::read_entry(&entry.path()) else {
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
            let mut nonce = [0u8; 8];
            getrandom::fill(&mut nonce).map_err(io::Error::other)?;
            let tmp = self.dir.join(format!(".{name}.{}.tmp", hex::encode(nonce)));
            // A new file of our own: `create_new` neither follows nor reuses
            // whatever another user may have planted under that name.
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(&tmp)?;
            std::io::Write::write_all(&mut file, format!("{addr}\n").as_bytes())?;
            drop(file);
            // Readers must never see a half-written entry; a rename replaces
            // the name itself, never what a link there points to.
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

/// Whether process `pid` still runs, where the system tells (Linux's
/// `/proc`); elsewhere it is assumed to. For files a process leaves for
/// others to read (discovery entries, a running command's connections).
pub fn process_alive(pid: u32) -> bool {
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

    #[cfg(unix)]
    #[test]
    fn a_directory_another_user_owns_is_refused() {
        let dir = tempfile_dir();
        let d = LocalDiscovery::in_dir(&dir);
        d.create_dir().unwrap();
        // Only root may give a directory away; elsewhere there is nothing
        // to test.
        if std::os::unix::fs::chown(&dir, Some(65534), None).is_err() {
            let _ = std::fs::remove_dir_all(dir);
            return;
        }
        let err = futures_lite::future::block_on(d.locate(&peer(1))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("uid 65534"), "{err}");
        let err = d
            .announce(&peer(1), "127.0.0.1:1".parse().unwrap())
            .unwrap_err();
        assert!(err.to_string().contains(LocalDiscovery::ENV), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[cfg(unix)]
    #[test]
    fn a_directory_of_ours_open_to_others_is_closed_and_entries_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile_dir();
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let d = LocalDiscovery::in_dir(&dir);
        d.announce(&peer(1), "127.0.0.1:4567".parse().unwrap())
            .unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        for entry in std::fs::read_dir(&dir).unwrap() {
            assert_eq!(mode(&entry.unwrap().path()), 0o600);
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[cfg(unix)]
    #[test]
    fn a_link_planted_as_an_entry_is_not_followed() {
        let dir = tempfile_dir();
        let d = LocalDiscovery::in_dir(&dir);
        d.create_dir().unwrap();
        // A link to an endless file: reading through it would never end.
        let name = format!("{}.{}.9.addr", peer(4), std::process::id());
        std::os::unix::fs::symlink("/dev/zero", dir.join(&name)).unwrap();
        let found = futures_lite::future::block_on(d.locate(&peer(4))).unwrap();
        assert!(found.is_empty());
        // A FIFO nobody writes to: opening or reading it must not hang.
        let name = format!("{}.{}.11.addr", peer(6), std::process::id());
        let made = std::process::Command::new("mkfifo")
            .arg(dir.join(&name))
            .status()
            .is_ok_and(|s| s.success());
        if made {
            let found = futures_lite::future::block_on(d.locate(&peer(6))).unwrap();
            assert!(found.is_empty());
        }
        // A huge regular entry is read only as far as an address can go:
        // read whole, the garbage at its end would spoil the address.
        let name = format!("{}.{}.10.addr", peer(5), std::process::id());
        let mut big = b"127.0.0.1:10".to_vec();
        big.resize(1 << 20, b' ');
        big.extend_from_slice(b"garbage");
        std::fs::write(dir.join(&name), big).unwrap();
        let found = futures_lite::future::block_on(d.locate(&peer(5))).unwrap();
        assert_eq!(found, vec!["127.0.0.1:10".parse().unwrap()]);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).unwrap();
        std::env::temp_dir().join(format!("peermq-disc-test-{}", u64::from_le_bytes(seed)))
    }
}

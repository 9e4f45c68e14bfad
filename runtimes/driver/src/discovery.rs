//! How [`crate::Mq::connect`] finds where a peer listens.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use peermq::{Keypair, PeerId};

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

/// Discovery between processes on one machine: a listener writes its
/// address into a directory under its key, signed by that key, and a dialer
/// looks its peer's key up there. Two processes thus find each other by key
/// alone.
///
/// The directory is `$PEERMQ_DISCOVERY_DIR` if set, else
/// `$XDG_RUNTIME_DIR/peermq-discovery`, else `peermq-discovery-$USER` in the
/// system temporary directory (created private to the user, mode `0700`).
/// An entry names the key and the process that wrote it; entries of
/// processes that no longer run are ignored and deleted (on Linux, where
/// `/proc` tells; elsewhere a stale entry merely fails to connect, and the
/// core backs off).
///
/// **Entries are signed.** An entry is one line, `v1 ADDR AT SIG`: the
/// address, the time it was written (microseconds since the Unix epoch),
/// and an ed25519 signature by the listener's identity key over
/// [`LocalDiscovery::ENTRY_DOMAIN`], the key, the writing process's id, the time and the
/// address (see [`LocalDiscovery::entry`]). A reader takes an entry only if
/// the signature verifies against the key the file is named after, and the
/// process id and port in its name are the signed ones; unsigned, forged,
/// truncated or otherwise malformed entries are ignored (logged at `debug`).
/// So whoever can write into the directory (another local user, where it is
/// shared) cannot redirect our dials: the worst it can do is replay a
/// listener's old entry, which sorts behind newer ones (addresses are tried
/// newest signature first) and costs a dial at most, since the handshake
/// checks the key it reaches. Announcing needs the node's key
/// ([`LocalDiscovery::with_key`]).
///
/// **The directory.** On Unix it is used only if it is a real directory
/// (not a link) and either this user's own, or shared the way `/tmp` is:
/// the sticky bit set (nobody deletes or renames another's entries) and
/// owned by this user or root. One of ours open to others without the sticky
/// bit is closed (`chmod 700`); anything else (another user's, say, made
/// first under a shared `/tmp`) is refused with an error that says so.
/// Entries are read without following links, only if they are regular
/// files, and at most [`LocalDiscovery::MAX_ENTRY`] bytes of them; they are
/// written to a fresh file (`O_EXCL`, which no planted link can redirect)
/// and renamed into place, which replaces a name and never writes through
/// a link. They are `0600` in a private directory, and readable by all
/// (`0644`: an address is no secret) in a shared one.
#[derive(Clone, Debug)]
pub struct LocalDiscovery {
    dir: PathBuf,
    /// Signs what [`Discovery::announce`] writes. The identity's secret:
    /// `Keypair`'s `Debug` shows only the public key.
    key: Option<Keypair>,
}

/// The version word an entry starts with.
const ENTRY_VERSION: &str = "v1";

/// Whether others may use the directory (see [`LocalDiscovery`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sharing {
    /// Ours alone: entries are `0600`.
    Private,
    /// Sticky and open to others: entries are readable by all.
    Shared,
}

/// A directory entry's name, parsed: `KEY.PID.PORT.addr`.
struct EntryName {
    pid: u32,
    port: u16,
}

impl Default for LocalDiscovery {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalDiscovery {
    /// The environment variable that overrides the directory.
    pub const ENV: &'static str = "PEERMQ_DISCOVERY_DIR";

    /// What an entry's signature covers first, so that it can never be
    /// taken for a signature of anything else the identity key signs.
    pub const ENTRY_DOMAIN: &'static [u8] = b"peermq local discovery entry v1\0";

    /// Most bytes read of one entry (a version, an address, a time, a
    /// signature and a newline need under 250).
    pub const MAX_ENTRY: u64 = 512;

    /// Discovery in [`LocalDiscovery::default_dir`].
    pub fn new() -> Self {
        Self::in_dir(Self::default_dir())
    }

    /// Discovery in `dir` (tests use a fresh one each, so that parallel
    /// tests do not find each other).
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        LocalDiscovery {
            dir: dir.into(),
            key: None,
        }
    }

    /// Signs the entries [`Discovery::announce`] writes with `key`, the
    /// node's identity: without it this discovery only looks peers up, and
    /// announcing fails. The [`crate::Builder`] gives it the node's key.
    pub fn with_key(mut self, key: &Keypair) -> Self {
        self.key = Some(key.clone());
        self
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

    fn entry_name(me: &PeerId, pid: u32, addr: SocketAddr) -> String {
        format!("{me}.{pid}.{}.addr", addr.port())
    }

    /// Parses the name of an entry for `peer`; `None` for other names.
    fn parse_name(peer: &PeerId, name: &str) -> Option<EntryName> {
        let rest = name
            .strip_prefix(peer.to_string().as_str())?
            .strip_prefix('.')?
            .strip_suffix(".addr")?;
        let (pid, port) = rest.split_once('.')?;
        Some(EntryName {
            pid: pid.parse().ok()?,
            port: port.parse().ok()?,
        })
    }

    /// What an entry's signature covers: [`LocalDiscovery::ENTRY_DOMAIN`], the key, the
    /// process id (big-endian `u32`), the time (big-endian `u64`,
    /// microseconds since the Unix epoch) and the address as written.
    fn signed_bytes(peer: &PeerId, pid: u32, at: u64, addr: &str) -> Vec<u8> {
        let mut m = Vec::with_capacity(Self::ENTRY_DOMAIN.len() + 32 + 4 + 8 + addr.len());
        m.extend_from_slice(Self::ENTRY_DOMAIN);
        m.extend_from_slice(peer.as_bytes());
        m.extend_from_slice(&pid.to_be_bytes());
        m.extend_from_slice(&at.to_be_bytes());
        m.extend_from_slice(addr.as_bytes());
        m
    }

    /// The text of an entry saying that `key`'s node, in process `pid`,
    /// listens on `addr` since `at` (microseconds since the Unix epoch):
    /// `v1 ADDR AT SIG` and a newline, the signature in hex.
    pub fn entry(key: &Keypair, pid: u32, addr: SocketAddr, at: u64) -> String {
        let addr = addr.to_string();
        let sig = key.sign(&Self::signed_bytes(&key.peer_id(), pid, at, &addr));
        format!("{ENTRY_VERSION} {addr} {at} {}\n", hex::encode(sig))
    }

    /// The address and time in entry `text`, found under `name` when
    /// looking `peer` up, if `peer` signed them; else why not.
    fn open_entry(
        peer: &PeerId,
        name: &EntryName,
        text: &str,
    ) -> Result<(SocketAddr, u64), &'static str> {
        let mut words = text.split_ascii_whitespace();
        let (Some(version), Some(addr), Some(at), Some(sig), None) = (
            words.next(),
            words.next(),
            words.next(),
            words.next(),
            words.next(),
        ) else {
            return Err("not a `v1 ADDR AT SIG` line (unsigned, or truncated)");
        };
        if version != ENTRY_VERSION {
            return Err("unknown version");
        }
        let parsed: SocketAddr = addr.parse().map_err(|_| "bad address")?;
        let at: u64 = at.parse().map_err(|_| "bad time")?;
        let mut signature = [0u8; peermq::identity::SIGNATURE_LEN];
        hex::decode_to_slice(sig, &mut signature).map_err(|_| "bad signature encoding")?;
        if parsed.port() != name.port {
            return Err("its port is not the one in its name");
        }
        peer.verify(&Self::signed_bytes(peer, name.pid, at, addr), &signature)
            .map_err(|_| "its signature is not the key's (forged, or copied from another name)")?;
        Ok((parsed, at))
    }

    fn create_dir(&self) -> io::Result<Sharing> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            // Other users must not read where we listen, nor fill the
            // directory with entries (forged ones are ignored, but cost a
            // look).
            builder.mode(0o700);
        }
        builder.create(&self.dir)?;
        self.check_dir()
    }

    /// Checks that the directory is safe to use (see the type's docs).
    #[cfg(unix)]
    fn check_dir(&self) -> io::Result<Sharing> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(&self.dir)?;
        let me = rustix::process::geteuid().as_raw();
        let sticky = meta.mode() & 0o1000 != 0;
        let open = meta.mode() & 0o077 != 0;
        let unsafe_because = if !meta.file_type().is_dir() {
            Some("it is not a directory (a link?)".to_string())
        } else if meta.uid() != me && !(sticky && meta.uid() == 0) {
            Some(format!(
                "it belongs to uid {}, not to us (uid {me}){}",
                meta.uid(),
                if sticky { "" } else { " and has no sticky bit" }
            ))
        } else {
            None
        };
        if let Some(why) = unsafe_because {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "the discovery directory {} is not safe: {why}; another user could \
                     delete or read your entries. Remove it, or set {} to a directory only \
                     you can use",
                    self.dir.display(),
                    Self::ENV
                ),
            ));
        }
        match (open, sticky) {
            (false, _) => Ok(Sharing::Private),
            (true, true) => Ok(Sharing::Shared),
            (true, false) => {
                // Ours, open to others without the sticky bit (made by
                // hand, say), so anyone could delete our entries: close it.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
                Ok(Sharing::Private)
            }
        }
    }

    #[cfg(not(unix))]
    fn check_dir(&self) -> io::Result<Sharing> {
        Ok(Sharing::Private)
    }

    /// The text of an entry: read without following links, from a regular
    /// file only, and at most [`LocalDiscovery::MAX_ENTRY`] bytes.
    fn read_entry(path: &Path) -> Option<String> {
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
        let mut bytes = Vec::new();
        file.take(Self::MAX_ENTRY).read_to_end(&mut bytes).ok()?;
        String::from_utf8(bytes).ok()
    }

    fn scan(&self, peer: &PeerId) -> io::Result<Vec<SocketAddr>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        self.check_dir()?;
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str() else {
                continue;
            };
            let Some(parsed) = Self::parse_name(peer, name) else {
                continue;
            };
            if !process_alive(parsed.pid) {
                // Its writer died without withdrawing it. (In a shared
                // directory, another user's stays: the sticky bit keeps it.)
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let opened = Self::read_entry(&entry.path())
                .ok_or("not a readable regular file")
                .and_then(|text| Self::open_entry(peer, &parsed, &text));
            match opened {
                Ok((addr, at)) => {
                    if !found.iter().any(|(_, a)| *a == addr) {
                        found.push((at, addr));
                    }
                }
                Err(why) => tracing::debug!(
                    entry = %entry.path().display(),
                    peer = %peer.short(),
                    why,
                    "peermq: ignoring a local discovery entry"
                ),
            }
        }
        // The newest listener is the likeliest to be alive. The time is
        // the signed one: a replayed old entry cannot jump the queue.
        found.sort_by_key(|e| std::cmp::Reverse(e.0));
        Ok(found.into_iter().map(|(_, a)| a).collect())
    }
}

/// Microseconds since the Unix epoch, by the system clock.
fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Discovery for LocalDiscovery {
    fn locate<'a>(&'a self, peer: &'a PeerId) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        let found = self.scan(peer);
        Box::pin(async move { found })
    }

    fn announce(&self, me: &PeerId, addr: SocketAddr) -> io::Result<()> {
        let Some(key) = self.key.as_ref().filter(|k| k.peer_id() == *me) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "local discovery cannot sign an entry for {me}: give it that node's key \
                     (LocalDiscovery::with_key)"
                ),
            ));
        };
        let write = || {
            let sharing = self.create_dir()?;
            let addr = reachable_locally(addr);
            let pid = std::process::id();
            let name = Self::entry_name(me, pid, addr);
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
            #[cfg(unix)]
            if sharing == Sharing::Shared {
                // Others sharing the directory must read it (whatever our
                // umask); an address and a signature are no secret.
                use std::os::unix::fs::PermissionsExt;
                file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
            }
            let _ = sharing;
            let text = Self::entry(key, pid, addr, now_micros());
            std::io::Write::write_all(&mut file, text.as_bytes())?;
            drop(file);
            // Readers must never see a half-written entry; a rename replaces
            // the name itself, never what a link there points to.
            std::fs::rename(&tmp, self.dir.join(name)).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
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
        let name = Self::entry_name(me, std::process::id(), reachable_locally(addr));
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

    fn key(n: u8) -> Keypair {
        Keypair::from_bytes(&[n; 32])
    }

    fn peer(n: u8) -> PeerId {
        key(n).peer_id()
    }

    /// Discovery in a fresh directory, signing as node `n`.
    fn as_node(dir: &Path, n: u8) -> LocalDiscovery {
        LocalDiscovery::in_dir(dir).with_key(&key(n))
    }

    fn locate(d: &LocalDiscovery, peer: &PeerId) -> Vec<SocketAddr> {
        futures_lite::future::block_on(d.locate(peer)).unwrap()
    }

    #[test]
    fn a_listener_is_found_by_key_and_forgotten_on_withdraw() {
        let dir = tempfile_dir();
        let d = as_node(&dir, 1);
        let addr: SocketAddr = "0.0.0.0:4567".parse().unwrap();
        d.announce(&peer(1), addr).unwrap();
        // Any reader finds it, key or none.
        let reader = LocalDiscovery::in_dir(&dir);
        assert_eq!(
            locate(&reader, &peer(1)),
            vec!["127.0.0.1:4567".parse().unwrap()]
        );
        assert!(locate(&d, &peer(2)).is_empty());
        d.withdraw(&peer(1), addr);
        assert!(locate(&d, &peer(1)).is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn announcing_needs_the_nodes_own_key() {
        let dir = tempfile_dir();
        let addr: SocketAddr = "127.0.0.1:4567".parse().unwrap();
        let err = LocalDiscovery::in_dir(&dir)
            .announce(&peer(1), addr)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("with_key"), "{err}");
        let err = as_node(&dir, 2).announce(&peer(1), addr).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(!dir.exists(), "nothing was written");
    }

    /// Someone who can write into the directory plants entries for peer 1,
    /// newer than its own, in every shape short of its signature: signed by
    /// another key, unsigned, with the real signature over another address,
    /// and the real entry copied under another process's name. None is
    /// taken; the real address alone is found.
    #[test]
    fn forged_entries_are_ignored_and_the_real_address_found() {
        let dir = tempfile_dir();
        let real: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        let evil: SocketAddr = "127.0.0.1:4002".parse().unwrap();
        as_node(&dir, 1).announce(&peer(1), real).unwrap();
        let me = std::process::id();
        let later = now_micros() + 3_600_000_000;
        let plant = |pid: u32, port: u16, text: &str| {
            let name = format!("{}.{pid}.{port}.addr", peer(1));
            std::fs::write(dir.join(name), text).unwrap();
        };
        // Well formed, newer, signed by key 9 instead of key 1.
        plant(me, 4002, &LocalDiscovery::entry(&key(9), me, evil, later));
        assert_eq!(locate(&LocalDiscovery::in_dir(&dir), &peer(1)), vec![real]);
        // Key 1's signature over the real address, the address changed.
        let genuine = LocalDiscovery::entry(&key(1), me, real, later);
        plant(
            me,
            4002,
            &genuine.replace("127.0.0.1:4001", "127.0.0.1:4002"),
        );
        // Key 1's genuine entry, replayed under another name: another
        // process id (1 is alive everywhere), another port.
        plant(1, 4001, &genuine);
        plant(me, 4003, &genuine);
        // The format of old versions: a bare address.
        plant(me, 4004, "127.0.0.1:4004\n");
        // A signature of the right length, all zeros.
        plant(
            me,
            4005,
            &format!("v1 127.0.0.1:4005 {later} {}\n", "0".repeat(128)),
        );
        assert_eq!(locate(&LocalDiscovery::in_dir(&dir), &peer(1)), vec![real]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn truncated_and_garbage_entries_are_ignored_without_panic() {
        let dir = tempfile_dir();
        as_node(&dir, 1).create_dir().unwrap();
        let me = std::process::id();
        let addr: SocketAddr = "[::1]:4100".parse().unwrap();
        let good = LocalDiscovery::entry(&key(1), me, addr, now_micros());
        let path = dir.join(format!("{}.{me}.4100.addr", peer(1)));
        let reader = LocalDiscovery::in_dir(&dir);
        // Every strict prefix of a good entry (the newline aside) is refused.
        let body = good.trim_end();
        for cut in 0..body.len() {
            std::fs::write(&path, &body[..cut]).unwrap();
            assert!(locate(&reader, &peer(1)).is_empty(), "cut at {cut}");
        }
        std::fs::write(&path, body).unwrap();
        assert_eq!(locate(&reader, &peer(1)), vec![addr]);
        let garbage: [&[u8]; 7] = [
            b"",
            b"\n\n\n",
            b"\xff\xfe\x00 not utf-8",
            b"v1 [::1]:4100 18446744073709551616 00",
            b"v1 [::1]:4100 1 zz",
            b"v1 [::1]:4100 1 0 extra words",
            b"v2 [::1]:4100 1 00",
        ];
        for g in garbage {
            std::fs::write(&path, g).unwrap();
            assert!(locate(&reader, &peer(1)).is_empty(), "{g:?}");
        }
        // Names that look almost right are no one's entry.
        for name in [
            format!("{}.{me}.addr", peer(1)),
            format!("{}.{me}.99999.addr", peer(1)),
            format!("{}.x.4100.addr", peer(1)),
            format!("{}..addr", peer(1)),
        ] {
            std::fs::write(dir.join(name), &good).unwrap();
        }
        std::fs::remove_file(&path).unwrap();
        assert!(locate(&reader, &peer(1)).is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn entries_of_dead_processes_are_ignored_and_removed() {
        let dir = tempfile_dir();
        let d = LocalDiscovery::in_dir(&dir);
        d.create_dir().unwrap();
        // No process has this pid: Linux caps pids far below it.
        let stale = dir.join(format!("{}.4000000000.9.addr", peer(3)));
        let addr = "127.0.0.1:9".parse().unwrap();
        std::fs::write(
            &stale,
            LocalDiscovery::entry(&key(3), 4_000_000_000, addr, 1),
        )
        .unwrap();
        let found = locate(&d, &peer(3));
        if Path::new("/proc/self").exists() {
            assert!(found.is_empty());
            assert!(!stale.exists());
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Of two live listeners of one key, the one signed later comes first,
    /// whatever the files' modification times say.
    #[test]
    fn the_newest_signature_comes_first() {
        let dir = tempfile_dir();
        let d = LocalDiscovery::in_dir(&dir);
        d.create_dir().unwrap();
        let (old, new): (SocketAddr, SocketAddr) = (
            "127.0.0.1:4201".parse().unwrap(),
            "127.0.0.1:4202".parse().unwrap(),
        );
        let me = std::process::id();
        let write = |addr: SocketAddr, at: u64| {
            let path = dir.join(format!("{}.{me}.{}.addr", peer(1), addr.port()));
            std::fs::write(&path, LocalDiscovery::entry(&key(1), me, addr, at)).unwrap();
            path
        };
        write(new, 2_000);
        let path = write(old, 1_000);
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(later))
            .unwrap();
        assert_eq!(locate(&d, &peer(1)), vec![new, old]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[cfg(unix)]
    #[test]
    fn a_directory_another_user_owns_is_refused() {
        let dir = tempfile_dir();
        let d = as_node(&dir, 1);
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
        let d = as_node(&dir, 1);
        d.announce(&peer(1), "127.0.0.1:4567".parse().unwrap())
            .unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o700);
        for entry in std::fs::read_dir(&dir).unwrap() {
            assert_eq!(mode(&entry.unwrap().path()), 0o600);
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A directory shared the way `/tmp` is (sticky, open to all) stays
    /// shared, and entries in it are readable by the others who share it.
    #[cfg(unix)]
    #[test]
    fn a_sticky_shared_directory_stays_shared_and_entries_are_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile_dir();
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let d = as_node(&dir, 1);
        d.announce(&peer(1), "127.0.0.1:4567".parse().unwrap())
            .unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o1777);
        for entry in std::fs::read_dir(&dir).unwrap() {
            assert_eq!(mode(&entry.unwrap().path()), 0o644);
        }
        assert_eq!(
            locate(&d, &peer(1)),
            vec!["127.0.0.1:4567".parse().unwrap()]
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[cfg(unix)]
    #[test]
    fn a_link_planted_as_the_directory_is_refused() {
        let dir = tempfile_dir();
        let target = tempfile_dir();
        std::fs::create_dir(&target).unwrap();
        std::os::unix::fs::symlink(&target, &dir).unwrap();
        let err = as_node(&dir, 1)
            .announce(&peer(1), "127.0.0.1:1".parse().unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
        let _ = std::fs::remove_file(dir);
        let _ = std::fs::remove_dir_all(target);
    }

    #[cfg(unix)]
    #[test]
    fn a_link_planted_as_an_entry_is_not_followed() {
        let dir = tempfile_dir();
        let d = LocalDiscovery::in_dir(&dir);
        d.create_dir().unwrap();
        let me = std::process::id();
        // A link to an endless file: reading through it would never end.
        let name = format!("{}.{me}.9.addr", peer(4));
        std::os::unix::fs::symlink("/dev/zero", dir.join(&name)).unwrap();
        assert!(locate(&d, &peer(4)).is_empty());
        // A link to a genuine entry elsewhere is not followed either.
        let elsewhere = tempfile_dir();
        let addr: SocketAddr = "127.0.0.1:12".parse().unwrap();
        std::fs::write(&elsewhere, LocalDiscovery::entry(&key(7), me, addr, 1)).unwrap();
        let name = format!("{}.{me}.12.addr", peer(7));
        std::os::unix::fs::symlink(&elsewhere, dir.join(&name)).unwrap();
        assert!(locate(&d, &peer(7)).is_empty());
        let _ = std::fs::remove_file(&elsewhere);
        // A FIFO nobody writes to: opening or reading it must not hang.
        let name = format!("{}.{me}.11.addr", peer(6));
        let made = std::process::Command::new("mkfifo")
            .arg(dir.join(&name))
            .status()
            .is_ok_and(|s| s.success());
        if made {
            assert!(locate(&d, &peer(6)).is_empty());
        }
        // A huge regular entry is read only as far as an entry can go:
        // read whole, the garbage at its end would spoil it.
        let name = format!("{}.{me}.10.addr", peer(5));
        let addr: SocketAddr = "127.0.0.1:10".parse().unwrap();
        let mut big = LocalDiscovery::entry(&key(5), me, addr, 1).into_bytes();
        big.resize(1 << 20, b' ');
        big.extend_from_slice(b"garbage");
        std::fs::write(dir.join(&name), big).unwrap();
        assert_eq!(locate(&d, &peer(5)), vec![addr]);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The vector in PROTOCOL.md ("Local discovery entries").
    #[test]
    fn an_entry_matches_the_protocol_vector() {
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let text = LocalDiscovery::entry(&key(1), 1234, addr, 1_700_000_000_000_000);
        let sig = concat!(
            "d4de9bcb96769eddab35e3480b532b1ce41717dcd9b14fc0ba50b45ced1e4d29",
            "fbd129905f96629079475e037ea39b764b411fc5129e75d27dbb1bc49aefee03"
        );
        assert_eq!(text, format!("v1 127.0.0.1:4000 1700000000000000 {sig}\n"));
        let name = EntryName {
            pid: 1234,
            port: 4000,
        };
        assert_eq!(
            LocalDiscovery::open_entry(&peer(1), &name, &text),
            Ok((addr, 1_700_000_000_000_000))
        );
    }

    #[test]
    fn a_keys_debug_output_names_only_its_public_half() {
        let d = as_node(Path::new("/nonexistent"), 1);
        let shown = format!("{d:?}");
        assert!(!shown.contains(&hex::encode([1u8; 32])), "{shown}");
        assert!(!shown.contains("[1, 1, 1"), "{shown}");
    }

    fn tempfile_dir() -> PathBuf {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).unwrap();
        std::env::temp_dir().join(format!("peermq-disc-test-{}", u64::from_le_bytes(seed)))
    }
}

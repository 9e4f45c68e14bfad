//! # peermq-dht
//!
//! Finds peers by key on the BitTorrent Mainline DHT, the network of some
//! ten million nodes that BitTorrent clients run, as the original peermq
//! found them on hyperswarm's. Each node publishes a small record signed by
//! its own key (a [pkarr] signed packet, see [`Record`]): its direct
//! addresses and, over iroh, its relay. A lookup verifies the signature
//! against the key looked up, refuses stale, future-dated and foreign
//! records, and a node republishes its record before it expires.
//!
//! ```no_run
//! # fn demo() -> Result<(), peermq_tokio::MqError> {
//! use peermq_dht::{Dht, DhtConfig};
//! use peermq_tokio::{Mq, TokioRuntime};
//!
//! let mq = Mq::builder("peermq-data")
//!     .discovery_for(|key| Ok(Dht::new(key, DhtConfig::default())?))
//!     .open(TokioRuntime::new())?;
//! # Ok(()) }
//! ```
//!
//! Only pkarr's DHT client is used: no HTTP relay, no TLS. A DHT that
//! cannot be reached (no network, a closed firewall) costs lookups that
//! find nothing and a debug log line; it is never an error. Asked after
//! local-machine and mDNS discovery, it is consulted only when those find
//! nothing (see `Discovery` in `peermq-driver`).
//!
//! [pkarr]: https://docs.rs/pkarr

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod record;

pub use record::{Record, RecordError, MAX_ADDRS, MAX_AGE_SECS, MAX_SKEW_SECS};

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use peermq::{Keypair, PeerId};
use peermq_driver::{BoxFuture, Discovery};
use pkarr::{Client, ResolvePolicy};
use tracing::debug;

/// How often a node publishes its record again, well within
/// [`MAX_AGE_SECS`] and the two hours DHT nodes keep a value.
pub const REPUBLISH: Duration = Duration::from_secs(30 * 60);
/// How long a lookup that found nothing is remembered: lookups of the same
/// key meanwhile answer at once, from memory.
pub const MISS_MEMORY: Duration = Duration::from_secs(10);
/// A key looked up again within this time after it was found gets the
/// newest record the DHT holds, not the first answer (see `Dht::resolve`).
pub const REASK: Duration = Duration::from_secs(60);
/// Keys whose missed (or found) lookups are remembered at once; the oldest
/// is forgotten first.
pub const MAX_MISSES: usize = 1024;
/// Lookups under way at once; more answer "not found" at once.
pub const MAX_LOOKUPS: usize = 16;
/// Records kept in pkarr's cache.
const CACHE_SIZE: usize = 1024;
/// After a failed publish attempt (most often: the client has not joined
/// the DHT yet), the first retry; each next waits twice as long, up to
/// [`PUBLISH_RETRY_MAX`].
const PUBLISH_RETRY: Duration = Duration::from_millis(500);
const PUBLISH_RETRY_MAX: Duration = Duration::from_secs(60);

/// Where the DHT is: the public Mainline DHT by default, or a network of
/// one's own (a test network, a private deployment).
#[derive(Clone, Debug, Default)]
pub struct DhtConfig {
    bootstrap: Option<Vec<String>>,
    loopback: bool,
}

impl DhtConfig {
    /// Joins the DHT through these nodes (`host:port`) instead of the
    /// public bootstrap nodes: for a test network or a private one.
    pub fn bootstrap(mut self, nodes: Vec<String>) -> Self {
        self.bootstrap = Some(nodes);
        self
    }

    /// Also publishes loopback addresses (`127.0.0.1:port`): for a DHT of
    /// one's own on one machine. Off by default, as no other machine can
    /// use them.
    pub fn loopback(mut self, yes: bool) -> Self {
        self.loopback = yes;
        self
    }
}

/// A node's view of the DHT: it publishes the node's record and looks
/// others up. See the crate documentation.
pub struct Dht {
    client: Client,
    me: PeerId,
    shared: Arc<Shared>,
    publish: mpsc::Sender<()>,
}

impl std::fmt::Debug for Dht {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dht")
            .field("me", &self.me)
            .field("record", &self.record())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Shared {
    /// What we publish.
    record: Mutex<Ours>,
    /// Keys recently not found.
    misses: Mutex<Recent>,
    /// Keys recently found: asked again soon, the dialer most likely
    /// failed at the addresses found, so the next lookup asks for the
    /// newest record.
    found: Mutex<Recent>,
    lookups: AtomicUsize,
}

#[derive(Default)]
struct Ours {
    /// Addresses announced, in order (before expansion).
    announced: Vec<SocketAddr>,
    relay: Option<String>,
    loopback: bool,
    /// The mailboxes we named.
    mailboxes: Vec<PeerId>,
}

/// Keys seen recently, at most [`MAX_MISSES`], the oldest forgotten first.
#[derive(Default)]
struct Recent {
    at: HashMap<PeerId, Instant>,
    order: VecDeque<PeerId>,
}

impl Recent {
    /// Whether `peer` was inserted less than `within` before `now`.
    fn recent(&mut self, peer: &PeerId, now: Instant, within: Duration) -> bool {
        match self.at.get(peer) {
            Some(t) if now.duration_since(*t) < within => true,
            Some(_) => {
                self.at.remove(peer);
                false
            }
            None => false,
        }
    }

    fn insert(&mut self, peer: PeerId, now: Instant) {
        if self.at.insert(peer, now).is_none() {
            self.order.push_back(peer);
        }
        while self.at.len() > MAX_MISSES {
            match self.order.pop_front() {
                Some(old) => {
                    self.at.remove(&old);
                }
                None => break,
            }
        }
        // Keys forgotten early leave stale entries in `order`; keep it
        // bounded too.
        if self.order.len() > 2 * MAX_MISSES {
            let at = &self.at;
            self.order.retain(|p| at.contains_key(p));
        }
    }

    fn len(&self) -> usize {
        self.at.len()
    }
}

impl Dht {
    /// Joins the DHT as the node whose key is `key`, publishing its record
    /// from a background thread once it has something to say.
    ///
    /// # Errors
    ///
    /// When the DHT client cannot start (no UDP socket could be bound).
    pub fn new(key: &Keypair, config: DhtConfig) -> io::Result<Arc<Dht>> {
        let mut builder = Client::builder();
        builder.no_relays().cache_size(CACHE_SIZE);
        if let Some(nodes) = &config.bootstrap {
            builder.bootstrap(nodes);
        }
        let client = builder
            .build()
            .map_err(|e| io::Error::other(format!("cannot start the DHT client: {e}")))?;
        let shared = Arc::new(Shared::default());
        lock(&shared.record).loopback = config.loopback;
        let (publish, wake) = mpsc::channel();
        let signing = pkarr::Keypair::from_secret_key(&key.to_bytes());
        std::thread::Builder::new()
            .name("peermq-dht-publish".into())
            .spawn({
                let (client, shared) = (client.clone(), shared.clone());
                move || publish_loop(client, signing, shared, wake)
            })?;
        Ok(Arc::new(Dht {
            client,
            me: key.peer_id(),
            shared,
            publish,
        }))
    }

    /// What this node publishes now.
    pub fn record(&self) -> Record {
        let ours = lock(&self.shared.record);
        record_of(&ours)
    }

    /// Publishes `relay` as where this node is reachable besides its
    /// addresses (iroh's home relay), or none.
    pub fn set_relay(&self, relay: Option<String>) {
        self.update(|ours| ours.relay = relay);
    }

    /// Publishes `addrs` as this node's addresses, replacing those
    /// announced before.
    pub fn set_addresses(&self, addrs: Vec<SocketAddr>) {
        self.update(|ours| ours.announced = addrs);
    }

    /// Publishes `mailboxes` as those that hold this node's mail.
    pub fn set_mailboxes(&self, mailboxes: Vec<PeerId>) {
        self.update(|ours| ours.mailboxes = mailboxes);
    }

    /// Publishes `record`'s addresses and relay as this node's, at once
    /// (its mailboxes are [`Dht::set_mailboxes`]'s business).
    pub fn set_record(&self, record: Record) {
        self.update(|ours| {
            ours.announced = record.addrs;
            ours.relay = record.relay;
        });
    }

    /// Changes what we publish with `change`, in one step, and has it
    /// published if that changed anything.
    fn update(&self, change: impl FnOnce(&mut Ours)) {
        let changed = {
            let mut ours = lock(&self.shared.record);
            let before = record_of(&ours);
            change(&mut ours);
            before != record_of(&ours)
        };
        if changed {
            let _ = self.publish.send(());
        }
    }

    /// Looks `peer`'s record up: `None` if the DHT has none (or none that
    /// passes the checks of [`Record::open`]), also when too many lookups
    /// are under way or `peer` was just looked up in vain. The first fresh
    /// answer, unless `peer` was found within [`REASK`]: then the newest.
    pub async fn resolve(&self, peer: &PeerId) -> Option<Record> {
        let now = Instant::now();
        if lock(&self.shared.misses).recent(peer, now, MISS_MEMORY) {
            return None;
        }
        let newest = lock(&self.shared.found).recent(peer, now, REASK);
        let _slot = Slot::take(&self.shared.lookups)?;
        let found = self.lookup(peer, newest).await;
        let table = match found {
            Some(_) => &self.shared.found,
            None => &self.shared.misses,
        };
        lock(table).insert(*peer, Instant::now());
        found
    }

    /// Keys whose lookups found nothing, remembered (at most
    /// [`MAX_MISSES`]).
    pub fn remembered_misses(&self) -> usize {
        lock(&self.shared.misses).len()
    }

    /// Whether a lookup of `peer` found nothing within [`MISS_MEMORY`], so
    /// that the next answers at once.
    pub fn is_remembered_miss(&self, peer: &PeerId) -> bool {
        lock(&self.shared.misses).recent(peer, Instant::now(), MISS_MEMORY)
    }

    /// Lookups running now (at most [`MAX_LOOKUPS`]).
    pub fn lookups_under_way(&self) -> usize {
        self.shared.lookups.load(Ordering::Acquire)
    }

    /// Asks the DHT for `peer`'s record: the first fresh answer (a few
    /// milliseconds), or with `newest` the newest any DHT node holds (all
    /// of them asked: about two seconds). A node that restarted elsewhere
    /// leaves its old record on some DHT nodes for hours; a key looked up
    /// again soon after it was found is one whose addresses most likely
    /// did not answer, so that lookup asks for the newest.
    async fn lookup(&self, peer: &PeerId, newest: bool) -> Option<Record> {
        let key = pkarr::PublicKey::try_from(peer.as_bytes()).ok()?;
        let policy = if newest {
            ResolvePolicy::NetworkOnly
        } else {
            ResolvePolicy::CacheFirst
        };
        let packet = match self.client.resolve(&key, policy).await {
            Ok(packet) => packet,
            Err(e) => {
                debug!(%peer, error = %e, "peermq: DHT lookup found nothing");
                return None;
            }
        };
        match Record::open(&packet, peer, now_micros()) {
            Ok(record) => Some(record),
            Err(e) => {
                debug!(%peer, error = %e, "peermq: DHT record refused");
                None
            }
        }
    }
}

/// One of the [`MAX_LOOKUPS`] lookup slots, given back on drop.
struct Slot<'a>(&'a AtomicUsize);

impl<'a> Slot<'a> {
    fn take(count: &'a AtomicUsize) -> Option<Self> {
        let before = count.fetch_add(1, Ordering::AcqRel);
        if before >= MAX_LOOKUPS {
            count.fetch_sub(1, Ordering::AcqRel);
            debug!("peermq: too many DHT lookups under way; answering not found");
            return None;
        }
        Some(Slot(count))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Discovery for Dht {
    fn locate<'a>(&'a self, peer: &'a PeerId) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        Box::pin(async move {
            Ok(self
                .resolve(peer)
                .await
                .map(|r| r.addrs)
                .unwrap_or_default())
        })
    }

    fn is_slow(&self) -> bool {
        true
    }

    fn mailboxes_of<'a>(&'a self, peer: &'a PeerId) -> BoxFuture<'a, io::Result<Vec<PeerId>>> {
        Box::pin(async move {
            Ok(self
                .resolve(peer)
                .await
                .map(|r| r.mailboxes)
                .unwrap_or_default())
        })
    }

    fn announce_mailboxes(&self, me: &PeerId, mailboxes: &[PeerId]) -> io::Result<()> {
        if *me == self.me {
            self.set_mailboxes(mailboxes.to_vec());
        }
        Ok(())
    }

    fn announce(&self, me: &PeerId, addr: SocketAddr) -> io::Result<()> {
        if *me != self.me {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("this DHT discovery publishes for {}, not {me}", self.me),
            ));
        }
        self.update(|ours| {
            if !ours.announced.contains(&addr) {
                ours.announced.push(addr);
            }
        });
        Ok(())
    }

    fn withdraw(&self, me: &PeerId, addr: SocketAddr) {
        if *me == self.me {
            self.update(|ours| ours.announced.retain(|a| *a != addr));
        }
    }
}

/// The record `ours` describes: announced addresses, with an unspecified
/// one (`0.0.0.0:port`) replaced by the machine's own addresses at that
/// port; loopback ones left out, since no other machine can use them.
fn record_of(ours: &Ours) -> Record {
    let mut addrs = Vec::new();
    for a in &ours.announced {
        if a.ip().is_unspecified() {
            for ip in interface_ips(a.is_ipv4()) {
                addrs.push(SocketAddr::new(ip, a.port()));
            }
        } else if ours.loopback || !a.ip().is_loopback() {
            addrs.push(*a);
        }
    }
    addrs.dedup();
    addrs.truncate(MAX_ADDRS);
    Record {
        addrs,
        relay: ours.relay.clone(),
        mailboxes: ours.mailboxes.clone(),
    }
}

/// The machine's non-loopback addresses of one family.
fn interface_ips(v4: bool) -> Vec<IpAddr> {
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| !ip.is_loopback() && ip.is_ipv4() == v4)
        .collect()
}

/// Publishes our record whenever it changes, and again every
/// [`REPUBLISH`], until the [`Dht`] is dropped.
fn publish_loop(
    client: Client,
    key: pkarr::Keypair,
    shared: Arc<Shared>,
    wake: mpsc::Receiver<()>,
) {
    let mut wait = REPUBLISH;
    loop {
        match wake.recv_timeout(wait) {
            Ok(()) => while wake.try_recv().is_ok() {},
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let record = record_of(&lock(&shared.record));
        if record == Record::default() {
            wait = REPUBLISH;
            continue;
        }
        let published = record
            .sign(&key, now_micros())
            .map_err(|e| e.to_string())
            .and_then(|packet| {
                futures_lite::future::block_on(client.publish(&packet)).map_err(|e| e.to_string())
            });
        wait = match published {
            Ok(_) => {
                debug!(?record, "peermq: published our DHT record");
                REPUBLISH
            }
            Err(e) => {
                debug!(error = %e, "peermq: publishing our DHT record failed; retrying");
                if wait >= REPUBLISH {
                    PUBLISH_RETRY
                } else {
                    (wait * 2).min(PUBLISH_RETRY_MAX)
                }
            }
        };
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(i: u32) -> PeerId {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&i.to_le_bytes());
        PeerId(id)
    }

    #[test]
    fn missed_keys_are_remembered_up_to_the_bound_newest_kept() {
        let mut misses = Recent::default();
        let now = Instant::now();
        for i in 0..3 * MAX_MISSES as u32 {
            misses.insert(peer(i), now);
            assert!(misses.len() <= MAX_MISSES);
            assert!(misses.order.len() <= 2 * MAX_MISSES + 1);
        }
        let last = 3 * MAX_MISSES as u32 - 1;
        assert!(misses.recent(&peer(last), now, MISS_MEMORY));
        assert!(!misses.recent(&peer(0), now, MISS_MEMORY));
        assert!(!misses.recent(&peer(last), now + MISS_MEMORY, MISS_MEMORY));
    }

    #[test]
    fn the_published_record_leaves_out_loopback_unless_asked_and_expands_unspecified() {
        let mut ours = Ours {
            announced: vec![
                "127.0.0.1:4000".parse().unwrap(),
                "192.0.2.1:4000".parse().unwrap(),
            ],
            relay: Some("https://relay.example/".into()),
            loopback: false,
            mailboxes: Vec::new(),
        };
        assert_eq!(
            record_of(&ours).addrs,
            vec!["192.0.2.1:4000".parse::<SocketAddr>().unwrap()]
        );
        ours.loopback = true;
        assert_eq!(record_of(&ours).addrs.len(), 2);
        ours.announced = vec!["0.0.0.0:4000".parse().unwrap()];
        let expanded = record_of(&ours).addrs;
        assert!(expanded
            .iter()
            .all(|a| a.port() == 4000 && !a.ip().is_unspecified() && !a.ip().is_loopback()));
    }
}

//! Discovery across a LAN with multicast DNS (DNS-SD over mDNS).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_listener::Event;
use mdns_sd::{IfKind, ResolvedService, ScopedIp, ServiceDaemon, ServiceEvent, ServiceInfo};
use peermq::PeerId;

use crate::discovery::Discovery;
use crate::runtime::BoxFuture;

/// The TXT property carrying the whole peer id: a DNS label holds at most
/// 63 bytes, too few for the 64 hex characters of an id.
const ID_KEY: &str = "id";

/// Hex characters of the id in an instance name: enough to tell peers apart
/// when browsing by hand, short enough to leave room for the pid and port.
const NAME_ID_CHARS: usize = 16;

/// Most services remembered: anyone on the LAN can announce services, so
/// what they can make us hold is bounded, the least recently resolved
/// forgotten first (a flood cannot keep a peer that announces afterwards
/// out). Far above any real LAN's peers.
const MAX_SERVICES: usize = 4096;

/// Most services remembered for one peer id, the newest kept. Anyone can
/// announce a service under any id (the handshake, not mDNS, proves who
/// listens), and the driver tries a peer's addresses in turn, going on when
/// another key answers; so spoofed services cost a few dials, and cannot
/// crowd out the real one, which announces again.
const MAX_SERVICES_PER_PEER: usize = 8;

/// Discovery of peers on the local network with multicast DNS: a listener
/// registers a `_peermq._tcp.local.` service whose TXT record carries its
/// full id, and a dialer looks the id up among the services it has seen.
///
/// One browse runs for the whole life of the value, so peers are usually
/// known before anyone dials them; a [`Discovery::locate`] for a peer not
/// seen yet waits a little (see [`MdnsDiscovery::locate_wait`]) and then
/// answers "not found yet", leaving the retry to the core's backoff.
///
/// Listen on a LAN address or a wildcard (`0.0.0.0`, `[::]`) for this to be
/// useful: a wildcard is advertised as the host's addresses (IPv4 ones only
/// for `0.0.0.0`), and a loopback address reaches no other machine.
///
/// mDNS answers are not authenticated: anyone on the LAN can claim any id.
/// That is harmless, since the Noise handshake checks the key of the peer
/// dialed, so a connection to a spoofed address fails with `WrongPeer` and
/// the next address or attempt is tried.
///
/// Dropping the value withdraws its services and stops its mDNS daemon.
pub struct MdnsDiscovery {
    daemon: ServiceDaemon,
    seen: Arc<Seen>,
    wait: Duration,
    registered: Mutex<HashMap<(PeerId, SocketAddr), String>>,
}

impl std::fmt::Debug for MdnsDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MdnsDiscovery")
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

/// One resolved service.
struct Service {
    peer: PeerId,
    addrs: Vec<SocketAddr>,
    /// When it was last resolved, as a counter: its key in the orders below.
    stamp: u64,
}

/// The services seen, by instance name (which is what removals name), with
/// the orders that bound them: every lookup and update costs a few map
/// operations, however many services a LAN announces.
#[derive(Default)]
struct Services {
    by_name: HashMap<String, Service>,
    /// Instance names by stamp, oldest first.
    by_age: BTreeMap<u64, String>,
    /// Each peer's instance names by stamp.
    by_peer: HashMap<PeerId, BTreeMap<u64, String>>,
    next_stamp: u64,
}

impl Services {
    /// Remembers a resolved service as the newest, forgetting the oldest of
    /// its peer's beyond [`MAX_SERVICES_PER_PEER`] and the oldest of all
    /// beyond [`MAX_SERVICES`].
    fn insert(&mut self, name: String, (peer, addrs): (PeerId, Vec<SocketAddr>)) {
        self.remove(&name);
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.by_age.insert(stamp, name.clone());
        let mine = self.by_peer.entry(peer).or_default();
        mine.insert(stamp, name.clone());
        let over = mine.len().saturating_sub(MAX_SERVICES_PER_PEER);
        let oldest_of_peer: Vec<String> = mine.values().take(over).cloned().collect();
        self.by_name.insert(name, Service { peer, addrs, stamp });
        for n in oldest_of_peer {
            self.remove(&n);
        }
        while self.by_name.len() > MAX_SERVICES {
            let Some((_, n)) = self.by_age.pop_first() else {
                break;
            };
            self.remove(&n);
        }
    }

    fn remove(&mut self, name: &str) {
        let Some(old) = self.by_name.remove(name) else {
            return;
        };
        self.by_age.remove(&old.stamp);
        if let Some(mine) = self.by_peer.get_mut(&old.peer) {
            mine.remove(&old.stamp);
            if mine.is_empty() {
                self.by_peer.remove(&old.peer);
            }
        }
    }

    /// `peer`'s addresses, from its remembered services.
    fn of(&self, peer: &PeerId) -> impl Iterator<Item = &SocketAddr> {
        self.by_peer
            .get(peer)
            .into_iter()
            .flat_map(|mine| mine.values())
            .filter_map(|n| self.by_name.get(n))
            .flat_map(|s| s.addrs.iter())
    }
}

/// The services seen on the network, shared with the browsing thread.
#[derive(Default)]
struct Seen {
    services: Mutex<Services>,
    changed: Event,
    stopped: AtomicBool,
}

impl Seen {
    fn addresses(&self, peer: &PeerId) -> Vec<SocketAddr> {
        let services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let mut found: Vec<SocketAddr> = Vec::new();
        for addr in services.of(peer) {
            // A few services of a few addresses: looking through is linear.
            if !found.contains(addr) {
                found.push(*addr);
            }
        }
        found.sort_by_key(dial_preference);
        found
    }

    fn follow(&self, events: mdns_sd::Receiver<ServiceEvent>) {
        while let Ok(event) = events.recv() {
            match event {
                ServiceEvent::ServiceResolved(service) => match parse(&service) {
                    Some(entry) => {
                        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
                        services.insert(service.fullname.to_lowercase(), entry);
                    }
                    None => tracing::debug!(
                        name = %service.fullname,
                        "peermq: ignoring an mDNS service without a valid peer id"
                    ),
                },
                ServiceEvent::ServiceRemoved(_, fullname) => {
                    let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
                    services.remove(&fullname.to_lowercase());
                }
                ServiceEvent::SearchStopped(_) => break,
                _ => continue,
            }
            self.changed.notify(usize::MAX);
        }
        self.stopped.store(true, Ordering::SeqCst);
        self.changed.notify(usize::MAX);
    }
}

impl MdnsDiscovery {
    /// The DNS-SD service type peermq listeners register.
    pub const SERVICE_TYPE: &'static str = "_peermq._tcp.local.";

    /// How long [`Discovery::locate`] waits for a peer not seen yet, unless
    /// [`MdnsDiscovery::locate_wait`] says otherwise.
    pub const DEFAULT_LOCATE_WAIT: Duration = Duration::from_secs(2);

    /// Starts an mDNS daemon on UDP port 5353 and browses for peermq
    /// services.
    ///
    /// Fails if the port cannot be bound (another program holding it
    /// exclusively, or a sandbox forbidding it) or the daemon cannot start.
    pub fn new() -> io::Result<Self> {
        check_port_free()?;
        let daemon = ServiceDaemon::new().map_err(|e| {
            mdns_error(
                "cannot start the mDNS daemon; check that this process may create threads and sockets",
                e,
            )
        })?;
        let events = match daemon.browse(Self::SERVICE_TYPE) {
            Ok(events) => events,
            Err(e) => {
                let _ = daemon.shutdown();
                return Err(mdns_error("cannot start browsing for peers over mDNS", e));
            }
        };
        let seen = Arc::new(Seen::default());
        let follower = seen.clone();
        let spawned = std::thread::Builder::new()
            .name("peermq-mdns".into())
            .spawn(move || follower.follow(events));
        if let Err(e) = spawned {
            let _ = daemon.shutdown();
            return Err(io::Error::new(
                e.kind(),
                format!("cannot start the mDNS browsing thread: {e}"),
            ));
        }
        Ok(MdnsDiscovery {
            daemon,
            seen,
            wait: Self::DEFAULT_LOCATE_WAIT,
            registered: Mutex::new(HashMap::new()),
        })
    }

    /// Sets how long [`Discovery::locate`] waits for a peer it has not seen
    /// yet before answering "not found yet"; zero answers from what was
    /// seen at once.
    pub fn locate_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }
}

impl Drop for MdnsDiscovery {
    fn drop(&mut self) {
        // The daemon says goodbye for our services, then ends the browse,
        // which ends the browsing thread.
        let _ = self.daemon.shutdown();
    }
}

impl Discovery for MdnsDiscovery {
    fn locate<'a>(&'a self, peer: &'a PeerId) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        Box::pin(async move {
            let deadline = Instant::now() + self.wait;
            loop {
                // Listen before looking, so that a change in between wakes us.
                let changed = self.seen.changed.listen();
                let found = self.seen.addresses(peer);
                if !found.is_empty() {
                    return Ok(found);
                }
                if self.seen.stopped.load(Ordering::SeqCst) {
                    return Err(io::Error::other(
                        "mDNS browsing stopped (its daemon exited); create a new MdnsDiscovery",
                    ));
                }
                if Instant::now() >= deadline {
                    return Ok(found);
                }
                // async-io's timer runs on its own thread when no async-io
                // executor drives it, so this works under any runtime.
                let timer = async_io::Timer::at(deadline);
                futures_lite::future::or(changed, async {
                    timer.await;
                })
                .await;
            }
        })
    }

    fn announce(&self, me: &PeerId, addr: SocketAddr) -> io::Result<()> {
        let name = instance_name(me, addr.port());
        let host = format!("{name}.local.");
        let props = [(ID_KEY, me.to_string())];
        let info = if addr.ip().is_unspecified() {
            let mut info = ServiceInfo::new(
                Self::SERVICE_TYPE,
                &name,
                &host,
                (),
                addr.port(),
                &props[..],
            )
            .map_err(|e| mdns_error("cannot describe our mDNS service", e))?
            .enable_addr_auto();
            if addr.is_ipv4() {
                // A 0.0.0.0 listener does not accept IPv6.
                info.set_interfaces(vec![IfKind::IPv4]);
            }
            info
        } else {
            ServiceInfo::new(
                Self::SERVICE_TYPE,
                &name,
                &host,
                addr.ip(),
                addr.port(),
                &props[..],
            )
            .map_err(|e| mdns_error("cannot describe our mDNS service", e))?
        };
        let fullname = info.get_fullname().to_string();
        self.daemon.register(info).map_err(|e| {
            mdns_error(
                "cannot register our mDNS service; the mDNS daemon may have exited",
                e,
            )
        })?;
        let mut registered = self.registered.lock().unwrap_or_else(|e| e.into_inner());
        registered.insert((*me, addr), fullname);
        Ok(())
    }

    fn withdraw(&self, me: &PeerId, addr: SocketAddr) {
        let fullname = {
            let mut registered = self.registered.lock().unwrap_or_else(|e| e.into_inner());
            registered.remove(&(*me, addr))
        };
        if let Some(fullname) = fullname {
            if let Err(e) = self.daemon.unregister(&fullname) {
                tracing::debug!(name = %fullname, error = %e, "peermq: cannot withdraw mDNS service");
            }
        }
    }
}

/// `peermq-<id prefix>-<pid>-<port>`: unique per listener on a host, and
/// well under the 63 bytes of a DNS label.
fn instance_name(me: &PeerId, port: u16) -> String {
    let id = me.to_string();
    format!(
        "peermq-{}-{}-{port}",
        &id[..NAME_ID_CHARS],
        std::process::id()
    )
}

/// The peer and addresses a resolved service names, if its TXT id is a
/// valid peer id that agrees with its instance name.
fn parse(service: &ResolvedService) -> Option<(PeerId, Vec<SocketAddr>)> {
    let peer: PeerId = service.get_property_val_str(ID_KEY)?.parse().ok()?;
    let prefix = format!("peermq-{}-", &peer.to_string()[..NAME_ID_CHARS]);
    if !service.fullname.to_lowercase().starts_with(&prefix) {
        return None;
    }
    let port = service.port;
    if port == 0 {
        return None;
    }
    let addrs: Vec<SocketAddr> = service
        .addresses
        .iter()
        .filter_map(|ip| socket_addr(ip, port))
        .collect();
    Some((peer, addrs))
}

fn socket_addr(ip: &ScopedIp, port: u16) -> Option<SocketAddr> {
    let addr = ip.to_ip_addr();
    if addr.is_unspecified() || addr.is_multicast() {
        return None;
    }
    match ip {
        // A link-local address means nothing without the interface it was
        // seen on.
        ScopedIp::V6(v6) if is_link_local(v6.addr()) => Some(SocketAddr::V6(SocketAddrV6::new(
            *v6.addr(),
            port,
            0,
            v6.scope_id().index,
        ))),
        _ => Some(SocketAddr::new(addr, port)),
    }
}

fn is_link_local(ip: &Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

/// IPv4 first (a wildcard IPv6 listener takes it too), then routable IPv6,
/// then loopback, which only reaches a peer on this host (or a stranger on
/// it, if a remote responder lists it), then link-local IPv6, which depends
/// on the right interface.
fn dial_preference(addr: &SocketAddr) -> (u8, IpAddr) {
    let ip = addr.ip();
    let rank = match ip {
        _ if ip.is_loopback() => 2,
        IpAddr::V4(_) => 0,
        IpAddr::V6(v6) if is_link_local(&v6) => 3,
        IpAddr::V6(_) => 1,
    };
    (rank, ip)
}

/// Fails with advice if UDP port 5353 cannot be bound the way the daemon
/// binds it (shared with other mDNS responders): the daemon itself only logs
/// that failure and then never sees a packet.
fn check_port_free() -> io::Result<()> {
    let v4 = probe_bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 5353)));
    let v6 = probe_bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 5353)));
    match (v4, v6) {
        (Err(e4), Err(e6)) => Err(io::Error::new(
            e4.kind(),
            format!(
                "cannot bind UDP port 5353 for mDNS (IPv4: {e4}; IPv6: {e6}); another program may hold it exclusively, or this system forbids it: stop that program or allow the port, or do without mDNS discovery"
            ),
        )),
        _ => Ok(()),
    }
}

fn probe_bind(addr: SocketAddr) -> io::Result<()> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    let _ = socket.set_reuse_port(true);
    socket.bind(&addr.into())
}

fn mdns_error(what: &str, e: mdns_sd::Error) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_fit_a_dns_label_and_identify_the_listener() {
        let id = PeerId([0xab; 32]);
        let name = instance_name(&id, 65535);
        assert!(name.len() <= 63, "{name} is {} bytes", name.len());
        assert!(name.starts_with("peermq-abababababababab-"));
        assert!(name.ends_with("-65535"));
        assert_ne!(name, instance_name(&id, 65534));
    }

    fn resolved(name: &str, props: &[(&str, String)]) -> ResolvedService {
        ServiceInfo::new(
            MdnsDiscovery::SERVICE_TYPE,
            name,
            "h.local.",
            "192.0.2.9",
            4000,
            props,
        )
        .unwrap()
        .as_resolved_service()
    }

    #[test]
    fn a_service_counts_only_with_a_full_id_that_matches_its_name() {
        let (id, other) = (PeerId([0xab; 32]), PeerId([0xcd; 32]));
        let name = instance_name(&id, 4000);
        let good = resolved(&name, &[(ID_KEY, id.to_string())]);
        let addr: SocketAddr = "192.0.2.9:4000".parse().unwrap();
        assert_eq!(parse(&good), Some((id, vec![addr])));
        assert_eq!(
            parse(&resolved(&name, &[(ID_KEY, other.to_string())])),
            None
        );
        assert_eq!(parse(&resolved(&name, &[(ID_KEY, "abab".into())])), None);
        assert_eq!(parse(&resolved(&name, &[])), None);
    }

    #[test]
    fn spoofed_services_for_a_peer_cannot_crowd_out_its_newest_one() {
        let id = PeerId([0xab; 32]);
        let seen = Seen::default();
        let mut services = seen.services.lock().unwrap();
        for port in 1..=100u16 {
            let addr: SocketAddr = format!("192.0.2.66:{port}").parse().unwrap();
            services.insert(format!("spoof-{port}"), (id, vec![addr]));
        }
        let real: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        services.insert("real".into(), (id, vec![real]));
        drop(services);
        let found = seen.addresses(&id);
        assert_eq!(found.len(), MAX_SERVICES_PER_PEER);
        assert!(found.contains(&real), "{found:?}");
    }

    #[test]
    fn a_flood_of_services_of_other_ids_cannot_keep_a_later_peer_out() {
        let seen = Seen::default();
        let mut services = seen.services.lock().unwrap();
        for i in 0..(2 * MAX_SERVICES) as u32 {
            let mut id = [0; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            let addr: SocketAddr = format!("192.0.2.66:{}", i % 60_000 + 1).parse().unwrap();
            services.insert(format!("flood-{i}"), (PeerId(id), vec![addr]));
        }
        let late = PeerId([0xcd; 32]);
        let real: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        services.insert("late".into(), (late, vec![real]));
        assert_eq!(services.by_name.len(), MAX_SERVICES);
        assert_eq!(services.by_age.len(), MAX_SERVICES);
        assert!(services.by_peer.len() <= MAX_SERVICES);
        services.remove("late");
        services.insert("late".into(), (late, vec![real]));
        drop(services);
        assert_eq!(seen.addresses(&late), [real]);
        assert!(
            seen.addresses(&PeerId([0; 32])).is_empty(),
            "the oldest went first"
        );
    }

    #[test]
    fn lan_addresses_are_preferred_to_loopback_and_link_local_ones() {
        let mut addrs: Vec<SocketAddr> = vec![
            "[fe80::1%2]:9".parse().unwrap(),
            "127.0.0.1:9".parse().unwrap(),
            "[fd00::2]:9".parse().unwrap(),
            "192.0.2.2:9".parse().unwrap(),
        ];
        addrs.sort_by_key(dial_preference);
        let want: Vec<SocketAddr> = ["192.0.2.2:9", "[fd00::2]:9", "127.0.0.1:9", "[fe80::1%2]:9"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(addrs, want);
    }
}

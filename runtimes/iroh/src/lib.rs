//! # peermq-iroh
//!
//! Carries peermq connections over [iroh]: QUIC between endpoints named by
//! their ed25519 keys, with hole punching through NATs, relay fallback and
//! port mapping. A node's iroh endpoint is keyed by the node's own identity,
//! so the peer id a user types is the key iroh dials: one key everywhere.
//!
//! ```no_run
//! # async fn demo(friend: peermq::PeerId) -> Result<(), peermq_tokio::MqError> {
//! use peermq_iroh::{Iroh, Relays};
//! use peermq_tokio::{Mq, TokioRuntime};
//!
//! let iroh = Iroh::new().relays(Relays::Disabled);
//! let mq = Mq::builder("peermq-data")
//!     .transport_for(move |key| iroh.transport(key))
//!     .open(TokioRuntime::new())?;
//! mq.listen("0.0.0.0:0".parse().unwrap()).await?;
//! mq.connect(friend).await?;
//! # Ok(()) }
//! ```
//!
//! ## What travels how
//!
//! One connection is one QUIC connection with the ALPN [`ALPN`] and one
//! bi-directional stream, which carries the protocol's Noise bytes exactly
//! as TCP does. iroh's TLS proves the endpoint keys at both ends: a dial
//! whose answer comes from another key than the one dialed fails before a
//! byte of ours is sent (and the Noise handshake inside checks it again,
//! as over any transport). A relay forwards QUIC packets it cannot read.
//!
//! The transport binds its endpoint (UDP sockets) at the first `listen`, or
//! at the first dial if the node dials before it listens; it needs a tokio
//! runtime, whose handle it captures when made ([`Iroh::transport`] must be
//! called inside one), and then works under any executor.
//!
//! [iroh]: https://docs.rs/iroh

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod lookup;
mod stream;

use std::future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use iroh::endpoint::{presets, Connection as QuicConnection, Incoming};
use iroh::tls::CaTlsConfig;
use iroh::{Endpoint, EndpointAddr, PublicKey, RelayMode, SecretKey};
use peermq::{Keypair, PeerId};
use peermq_driver::{BoxFuture, Connection, Listener, Route, Transport};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::sync::{Mutex, OnceCell, Semaphore};
use tracing::debug;

pub use iroh::RelayUrl;

/// The ALPN this protocol speaks over iroh: a peermq endpoint accepts no
/// other, and dials with it.
pub const ALPN: &[u8] = b"peermq/1";

/// Inbound connections whose QUIC handshake (and first stream) may be under
/// way at once; more are refused until one finishes.
const MAX_PENDING_ACCEPTS: usize = 64;
/// How long an inbound connection may take to complete its handshake and
/// open its stream.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long closing the endpoint may wait for peers to confirm.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Accepted connections waiting for the driver to take them.
const ACCEPT_QUEUE: usize = 16;

/// Which relay servers an endpoint uses, when no direct path exists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Relays {
    /// The public relays run by n0 (the makers of iroh): `iroh` names them
    /// in `iroh::defaults::prod`. They forward encrypted QUIC packets and
    /// learn which endpoint keys talk to which, when and how much, never
    /// what is said.
    #[default]
    Default,
    /// No relay: peers meet only on direct paths (both reachable, or hole
    /// punching with addresses found some other way).
    Disabled,
    /// These relays, for example one's own `iroh-relay`.
    Custom(Vec<RelayUrl>),
}

impl Relays {
    fn mode(&self) -> RelayMode {
        match self {
            Relays::Default => RelayMode::Default,
            Relays::Disabled => RelayMode::Disabled,
            Relays::Custom(urls) => RelayMode::custom(urls.iter().cloned()),
        }
    }
}

/// How to make a node's iroh transport: the relays to use, and the address
/// to bind when the node dials before it listens.
#[derive(Clone, Debug, Default)]
pub struct Iroh {
    relays: Relays,
    relay_only: bool,
    bind: Option<SocketAddr>,
    lookups: Vec<Arc<dyn iroh::address_lookup::AddressLookup>>,
    relay_roots: RelayCertificates,
}

/// Certificates to trust for relays' TLS besides the web's usual roots:
/// those of a relay with a private CA or a self-signed certificate.
///
/// TLS to a relay protects only the relay's view of who is who: the
/// packets it forwards are end-to-end encrypted whatever its certificate.
#[derive(Clone, Debug, Default)]
pub struct RelayCertificates(Vec<CertificateDer<'static>>);

impl RelayCertificates {
    /// The certificates in `pem`: one or more `BEGIN CERTIFICATE` blocks
    /// (other blocks, such as keys, are skipped).
    ///
    /// # Errors
    ///
    /// When a certificate block is malformed, or there is none.
    pub fn from_pem(pem: &[u8]) -> io::Result<Self> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("not a PEM certificate file ({e})"),
                )
            })?;
        if certs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no certificate in it: give a PEM file with a BEGIN CERTIFICATE block",
            ));
        }
        Ok(RelayCertificates(certs))
    }

    /// How many certificates there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Iroh {
    /// The default: n0's public relays, sockets bound on every interface at
    /// ports the system picks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `relays` when no direct path exists.
    pub fn relays(mut self, relays: Relays) -> Self {
        self.relays = relays;
        self
    }

    /// Sends every byte through a relay, never on a direct path: the
    /// endpoint binds no IP socket of its own, so peers never learn this
    /// node's addresses (the relay does). Needs relays; slower than a
    /// direct path.
    pub fn relay_only(mut self, yes: bool) -> Self {
        self.relay_only = yes;
        self
    }

    /// Binds the endpoint at `addr` when the node dials before it listens
    /// (by default on every interface, at a port the system picks). A
    /// later `listen` at another address then fails, since one endpoint
    /// has one socket per address family.
    pub fn bind_addr(mut self, addr: SocketAddr) -> Self {
        self.bind = Some(addr);
        self
    }

    /// Publishes this node's relay and addresses on the Mainline DHT
    /// through `dht`, and looks peers up there: a peer is then reached by
    /// its key alone, wherever it is. Give the same [`Dht`] to the node's
    /// discovery (`Builder::discovery_for`), so that it is joined once.
    ///
    /// [`Dht`]: peermq_dht::Dht
    pub fn dht(self, dht: Arc<peermq_dht::Dht>) -> Self {
        self.address_lookup(Arc::new(lookup::DhtLookup(dht)))
    }

    /// Also finds peers' addresses and relays with `lookup`, and publishes
    /// ours through it.
    pub fn address_lookup(mut self, lookup: Arc<dyn iroh::address_lookup::AddressLookup>) -> Self {
        self.lookups.push(lookup);
        self
    }

    /// Also trusts `certificates` for the relays' TLS (the relay of a lab
    /// or a private network often has a certificate of its own making).
    /// Without this, relays need a certificate from a public CA.
    pub fn relay_certificates(mut self, certificates: RelayCertificates) -> Self {
        self.relay_roots.0.extend(certificates.0);
        self
    }

    /// The transport of the node whose key is `key`; for
    /// `Builder::transport_for`. Call it inside a tokio runtime.
    pub fn transport(self, key: &Keypair) -> io::Result<Arc<dyn Transport>> {
        Ok(Arc::new(IrohTransport::new(key, self)?))
    }
}

/// A node's iroh transport (see the crate documentation).
#[derive(Clone)]
pub struct IrohTransport {
    inner: Arc<Inner>,
}

struct Inner {
    secret: SecretKey,
    config: Iroh,
    runtime: tokio::runtime::Handle,
    endpoint: OnceCell<Endpoint>,
}

impl std::fmt::Debug for IrohTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrohTransport")
            .field("id", &hex_key(self.inner.secret.public().as_bytes()))
            .field("relays", &self.inner.config.relays)
            .field(
                "bound",
                &self.inner.endpoint.get().map(|e| e.bound_sockets()),
            )
            .finish()
    }
}

impl IrohTransport {
    /// The transport of the node with key `key`, configured by `config`.
    ///
    /// # Errors
    ///
    /// Outside a tokio runtime.
    pub fn new(key: &Keypair, config: Iroh) -> io::Result<Self> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            io::Error::other(
                "the iroh transport needs a tokio runtime: make it inside one (for example in #[tokio::main])",
            )
        })?;
        Ok(IrohTransport {
            inner: Arc::new(Inner {
                secret: SecretKey::from_bytes(&key.to_bytes()),
                config,
                runtime,
                endpoint: OnceCell::new(),
            }),
        })
    }

    /// The endpoint, once bound (by the first `listen` or dial).
    pub fn endpoint(&self) -> Option<&Endpoint> {
        self.inner.endpoint.get()
    }

    /// Closes the endpoint: open connections end, and nothing more is
    /// accepted or dialed.
    pub async fn close(&self) {
        if let Some(endpoint) = self.inner.endpoint.get() {
            endpoint.close().await;
        }
    }
}

impl Inner {
    /// The endpoint, bound at `addr` (or the configured default) if not
    /// bound yet. A `listen` and a dial racing to bind it agree: the cell
    /// runs one bind, and the other waits for it.
    async fn endpoint(&self, addr: Option<SocketAddr>) -> io::Result<Endpoint> {
        let endpoint = self.endpoint.get_or_try_init(|| self.bind(addr)).await?;
        if let Some(addr) = addr.filter(|a| a.port() != 0 && !self.config.relay_only) {
            let bound = endpoint.bound_sockets();
            if !bound.iter().any(|b| b.port() == addr.port()) {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "the iroh endpoint is already bound at {bound:?} (it dialed first); \
                         listen before dialing, or listen on port 0"
                    ),
                ));
            }
        }
        Ok(endpoint.clone())
    }

    async fn bind(&self, addr: Option<SocketAddr>) -> io::Result<Endpoint> {
        let mut builder = Endpoint::builder(presets::Minimal)
            .secret_key(self.secret.clone())
            .alpns(vec![ALPN.to_vec()])
            .relay_mode(self.config.relays.mode());
        if !self.config.relay_roots.is_empty() {
            builder = builder.ca_tls_config(
                CaTlsConfig::embedded().with_extra_roots(self.config.relay_roots.0.clone()),
            );
        }
        for lookup in &self.config.lookups {
            builder = builder.address_lookup(SharedLookup(lookup.clone()));
        }
        if self.config.relay_only {
            builder = builder.clear_ip_transports();
        } else if let Some(addr) = addr.or(self.config.bind) {
            builder = builder
                .clear_ip_transports()
                .bind_addr(addr)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        }
        let endpoint = builder
            .bind()
            .await
            .map_err(|e| io::Error::other(format!("cannot bind the iroh endpoint: {e}")))?;
        debug!(id = %endpoint.id().fmt_short(), sockets = ?endpoint.bound_sockets(), "peermq: iroh endpoint bound");
        Ok(endpoint)
    }

    /// Dials `peer` with `hints` from a task on the transport's runtime
    /// (iroh needs tokio; the caller may run on any executor).
    async fn dial(self: Arc<Self>, peer: PeerId, hints: Vec<SocketAddr>) -> io::Result<Connection> {
        let runtime = self.runtime.clone();
        join(runtime.spawn(async move {
            let endpoint = self.endpoint(None).await?;
            dial_hints(endpoint, peer, hints, &self.config.relays).await
        }))
        .await
    }
}

/// One [`AddressLookup`] given to several endpoints.
///
/// [`AddressLookup`]: iroh::address_lookup::AddressLookup
#[derive(Debug)]
struct SharedLookup(Arc<dyn iroh::address_lookup::AddressLookup>);

impl iroh::address_lookup::AddressLookup for SharedLookup {
    fn publish(&self, data: &iroh::address_lookup::EndpointData) {
        self.0.publish(data);
    }

    fn resolve(
        &self,
        id: iroh::EndpointId,
    ) -> Option<
        n0_future::boxed::BoxStream<
            Result<iroh::address_lookup::Item, iroh::address_lookup::Error>,
        >,
    > {
        self.0.resolve(id)
    }
}

/// Dials `peer` over `endpoint`, with `hints` as direct addresses and
/// `relays` as where it may be reached otherwise, and opens the
/// connection's stream.
async fn dial(
    endpoint: Endpoint,
    peer: PeerId,
    hints: Vec<SocketAddr>,
    relays: &Relays,
) -> io::Result<Connection> {
    let key = PublicKey::from_bytes(peer.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{peer} is not a valid ed25519 key, so iroh cannot dial it"),
        )
    })?;
    let mut addr = EndpointAddr::new(key);
    for hint in hints {
        addr = addr.with_ip_addr(hint);
    }
    // Nodes told to use the same relays of their own (a private network,
    // a lab) meet there even when no lookup says where the peer is; iroh
    // still prefers a direct path once it finds one. n0's public relays
    // are many and regional: for them a lookup must say.
    if let Relays::Custom(urls) = relays {
        for url in urls {
            addr = addr.with_relay_url(url.clone());
        }
    }
    let conn = endpoint
        .connect(addr, ALPN)
        .await
        .map_err(|e| io::Error::new(io::ErrorKind::ConnectionRefused, e.to_string()))?;
    // iroh's TLS already ties the connection to the key dialed; say so
    // here too, so that no change below can weaken it unnoticed.
    if conn.remote_id() != key {
        conn.close(0u32.into(), b"wrong key");
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "dialed {peer} but {} answered",
                hex_key(conn.remote_id().as_bytes())
            ),
        ));
    }
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| io::Error::new(io::ErrorKind::ConnectionAborted, e.to_string()))?;
    Ok(stream::connection(&conn, send, recv))
}

/// Dials `peer` with every hint at once, as iroh prefers (it races the
/// paths); if that fails, with each hint alone, since iroh gives up on a
/// peer once the first path it tries ends in a failed handshake, which is
/// what a stale or planted hint where another key listens gives.
async fn dial_hints(
    endpoint: Endpoint,
    peer: PeerId,
    hints: Vec<SocketAddr>,
    relays: &Relays,
) -> io::Result<Connection> {
    let first = match dial(endpoint.clone(), peer, hints.clone(), relays).await {
        Ok(conn) => return Ok(conn),
        Err(e) if hints.len() < 2 => return Err(e),
        Err(e) => e,
    };
    for hint in hints {
        match dial(endpoint.clone(), peer, vec![hint], relays).await {
            Ok(conn) => return Ok(conn),
            Err(e) => debug!(%peer, %hint, error = %e, "peermq: iroh dial failed"),
        }
    }
    Err(first)
}

fn hex_key(bytes: &[u8; 32]) -> String {
    PeerId(*bytes).to_string()
}

impl Transport for IrohTransport {
    fn connect(
        &self,
        peer: Option<PeerId>,
        addr: SocketAddr,
    ) -> BoxFuture<'static, io::Result<Connection>> {
        match peer {
            Some(peer) => Box::pin(self.inner.clone().dial(peer, vec![addr])),
            None => Box::pin(future::ready(Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("iroh dials a key, not an address: give the key of the peer at {addr}"),
            )))),
        }
    }

    fn connect_key(
        &self,
        peer: PeerId,
        hints: &[SocketAddr],
    ) -> Option<BoxFuture<'static, io::Result<Connection>>> {
        Some(Box::pin(self.inner.clone().dial(peer, hints.to_vec())))
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let Some(endpoint) = inner.endpoint.get().cloned() else {
                return;
            };
            // Tells the peers at once instead of leaving them to time out;
            // bounded, as a peer that vanished never answers.
            let closing = inner.runtime.spawn(async move {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, endpoint.close()).await;
            });
            let _ = closing.await;
        })
    }

    fn bind(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listener>>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let runtime = inner.runtime.clone();
            let endpoint = join(runtime.spawn({
                let inner = inner.clone();
                async move { inner.endpoint(Some(addr)).await }
            }))
            .await?;
            let local = endpoint
                .bound_sockets()
                .into_iter()
                .find(|a| a.is_ipv4() == addr.is_ipv4())
                .or_else(|| endpoint.bound_sockets().into_iter().next())
                .unwrap_or(addr);
            let (tx, rx) = tokio::sync::mpsc::channel(ACCEPT_QUEUE);
            let task = runtime.spawn(accept_loop(endpoint, tx));
            Ok(Box::new(IrohListener {
                rx: Mutex::new(rx),
                local,
                task: task.abort_handle(),
            }) as Box<dyn Listener>)
        })
    }
}

/// Awaits a task spawned on the transport's runtime.
async fn join<T>(task: tokio::task::JoinHandle<io::Result<T>>) -> io::Result<T> {
    task.await
        .map_err(|e| io::Error::other(format!("the iroh task failed: {e}")))?
}

/// Accepts connections on `endpoint`, completing each one's handshake in
/// its own task (at most [`MAX_PENDING_ACCEPTS`] at once, each within
/// [`ACCEPT_TIMEOUT`]), and queues the ready ones.
async fn accept_loop(endpoint: Endpoint, tx: tokio::sync::mpsc::Sender<io::Result<Connection>>) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_ACCEPTS));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            debug!("peermq: too many iroh handshakes under way; refusing one");
            incoming.refuse();
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let ready = tokio::time::timeout(ACCEPT_TIMEOUT, accept_one(incoming)).await;
            drop(permit);
            match ready {
                Ok(Ok(conn)) => {
                    let _ = tx.send(Ok(conn)).await;
                }
                Ok(Err(e)) => debug!(error = %e, "peermq: inbound iroh connection failed"),
                Err(_) => debug!("peermq: inbound iroh connection timed out"),
            }
        });
    }
    let _ = tx
        .send(Err(io::Error::other("the iroh endpoint was closed")))
        .await;
}

/// Completes an inbound connection's handshake and takes its stream.
async fn accept_one(incoming: Incoming) -> io::Result<Connection> {
    let conn: QuicConnection = incoming
        .accept()
        .map_err(|e| io::Error::other(e.to_string()))?
        .await
        .map_err(|e| io::Error::other(e.to_string()))?;
    if conn.alpn() != ALPN {
        conn.close(0u32.into(), b"unknown protocol");
        return Err(io::Error::other("a peer asked for another protocol"));
    }
    let (send, recv) = conn
        .accept_bi()
        .await
        .map_err(|e| io::Error::other(e.to_string()))?;
    Ok(stream::connection(&conn, send, recv))
}

/// Inbound iroh connections, for the driver.
struct IrohListener {
    rx: Mutex<tokio::sync::mpsc::Receiver<io::Result<Connection>>>,
    local: SocketAddr,
    task: tokio::task::AbortHandle,
}

impl Drop for IrohListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener for IrohListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<Connection>> {
        Box::pin(async move {
            match self.rx.lock().await.recv().await {
                Some(conn) => conn,
                None => Err(io::Error::other("the iroh endpoint was closed")),
            }
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// How an iroh connection runs now: over its selected path, direct or
/// through a relay.
fn route(conn: &iroh::endpoint::WeakConnectionHandle) -> Route {
    let mut route = Route {
        transport: "iroh",
        relayed: false,
        remote: None,
    };
    if let Some(conn) = conn.upgrade() {
        let paths = conn.paths();
        if let Some(path) = paths.iter().find(|p| p.is_selected()) {
            route.relayed = path.is_relay();
            route.remote = Some(transport_addr(path.remote_addr()));
        }
    }
    route
}

fn transport_addr(addr: &iroh::TransportAddr) -> String {
    match addr {
        iroh::TransportAddr::Ip(ip) => ip.to_string(),
        iroh::TransportAddr::Relay(url) => url.to_string(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_certificates_come_from_pem_and_anything_else_is_refused() {
        let cert = rcgen::generate_simple_self_signed(vec!["10.0.0.1".into()]).unwrap();
        let pem = cert.cert.pem();
        let key = cert.signing_key.serialize_pem();
        let certs = RelayCertificates::from_pem(format!("{key}{pem}{pem}").as_bytes()).unwrap();
        assert_eq!(certs.len(), 2, "keys are skipped, every certificate kept");

        let none = RelayCertificates::from_pem(b"just words").unwrap_err();
        assert!(none.to_string().contains("no certificate"), "{none}");
        let broken = pem.replace('M', "*");
        let err = RelayCertificates::from_pem(broken.as_bytes()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }
}

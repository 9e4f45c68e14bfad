//! The sans-IO node: a state machine that consumes bytes, time and
//! commands, and emits actions.
//!
//! Drive it like quinn-proto's `Connection` or str0m's `Rtc`: feed it input
//! ([`Node::handle_input`], [`Node::handle_closed`], [`Node::handle_timeout`]
//! and the queue commands), then drain [`Node::poll_output`] until it returns
//! `None`, and wake it at [`Node::poll_timeout`]. When there is nothing else
//! to do, [`Node::idle_work`] prepares what the next send needs.
//!
//! ```
//! use peermq::{Config, Entropy, Instant, MemStore, Node, Output};
//!
//! // A real node takes 32 fresh bytes from the OS: `Entropy::new(os_bytes)`.
//! let mut node = Node::open(MemStore::new(), Config::default(), Entropy::deterministic(1), Instant::ZERO)?;
//! let friend = Node::open(MemStore::new(), Config::default(), Entropy::deterministic(2), Instant::ZERO)?.id();
//! let seq = node.send(friend, b"hello", Instant::ZERO)?; // durable, even offline
//! assert_eq!(seq, 0);
//! node.dial(friend, Instant::ZERO);
//! while let Some(out) = node.poll_output() {
//!     match out {
//!         Output::Dial { peer } => assert_eq!(peer, friend), // open a socket, then node.connect(peer, now)
//!         Output::Transmit { .. } | Output::Close { .. } | Output::Event(_) => {}
//!     }
//! }
//! # Ok::<(), peermq::NodeError>(())
//! ```

mod admission;
mod broadcast;
mod category;
mod config;
mod conn;
mod dial;
mod download;
mod event;
mod fork;
mod inbox;
mod link;
mod mailbox;
mod marks;
mod outbox;
mod queue;
mod raw;
mod replicate;
mod sealing;
mod timer;
mod work;

pub use category::{Category, CategoryError, DeadReason, MAX_CATEGORY_LEN};
pub use config::{limits, Config, MailboxLimits, Prefetch};
pub use event::{CloseReason, ConnId, Event, Output};
pub use fork::ForkEvidence;
pub use link::pump_pair;
pub use mailbox::{CarriedStatus, HeldInMailbox};
pub use outbox::MAX_ACKED_RANGES;
pub use queue::{Fetch, Mailbox, PeerStatus, Record};
pub use raw::RawPeer;
pub use work::{CategoryCount, Lease, Released, RetryPolicy, Taken};

use std::borrow::Cow;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::{Bound, ControlFlow};

use crate::feed::{Feed, FeedDescriptor, FeedError, FeedId};
use crate::identity::seal::Opener;
use crate::identity::{Keypair, PeerId, Signer};
use crate::noise::{self, StaticKey};
use crate::rng::{Entropy, SeededRng};
use crate::store::{meta, Store, StoreError, Table, Txn};
use crate::time::Instant;
use crate::wire::Message;

use broadcast::{Quota, Replica};
use conn::Conn;
use dial::Dial;
use inbox::Inbox;
use mailbox::Mail;
use outbox::Outbox;
use sealing::SealKeys;
use timer::{ConnTimer, Timer, TimerTable};

/// An error of the caller's making, or of the store.
///
/// A misbehaving peer never causes one: its connection is closed instead,
/// with an [`Event::Disconnected`] saying why.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The store failed; nothing of the operation was committed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A feed failed an integrity check.
    #[error(transparent)]
    Feed(#[from] FeedError),
    /// A message is larger than the configured limit.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes; raise Config::max_message_size on both peers or split it")]
    TooLarge {
        /// The message's size.
        size: usize,
        /// The largest accepted.
        limit: usize,
    },
    /// The message has not arrived (or was never sent).
    #[error("message {seq} from {from} has not arrived here; wait for it or fetch it with `get`")]
    NotHeld {
        /// The sender.
        from: PeerId,
        /// The message.
        seq: u64,
    },
    /// The message was cleared, so it can no longer be archived.
    #[error("message {seq} from {from} was cleared")]
    Cleared {
        /// The sender.
        from: PeerId,
        /// The message.
        seq: u64,
    },
    /// The Noise library could not make our session keys from the seed.
    /// It never should; report it as a bug, with the message.
    #[error("cannot make Noise keys: {0}; this is a bug, please report it")]
    Keys(String),
    /// A peer cannot send messages to itself.
    #[error("cannot send to our own id {0}")]
    SelfSend(PeerId),
    /// Messages can only be moved into a category that exists.
    #[error("there is no category `{0}`; create it first (Node::create_category, `peermq categories --create {0}`)")]
    UnknownCategory(Category),
    /// The lease is no longer held: it lapsed and another consumer took the
    /// message, or the message was archived, moved or cleared meanwhile.
    #[error("the lease on message {seq} from {from} is no longer held: it lapsed and the message was taken again, or it was archived, moved or cleared")]
    LeaseLost {
        /// The sender.
        from: PeerId,
        /// The message.
        seq: u64,
    },
    /// A message's not-before time is not before its expiry, so it could
    /// never be delivered.
    #[error("the message would expire ({expires_at:?}) before it may be delivered ({not_before:?}); give it a later expiry or an earlier delivery time")]
    NeverDeliverable {
        /// Its not-before time.
        not_before: crate::time::Timestamp,
        /// Its expiry.
        expires_at: crate::time::Timestamp,
    },
    /// Sealing is on, and the recipient's key cannot receive sealed
    /// messages (it is not a valid ed25519 key).
    #[error("cannot seal messages to {0}: its key is not a valid ed25519 key; check the id, or turn Config::seal_messages off")]
    Unsealable(PeerId),
    /// A recipient may name at most this many mailboxes.
    #[error("at most {limit} mailboxes may be named; remove one first")]
    TooManyMailboxes {
        /// The limit.
        limit: usize,
    },
    /// The message's envelope could not be opened (a newer build's field,
    /// or a damaged envelope its author signed): it is not delivered.
    #[error("message {seq} from {from} cannot be read: {error}")]
    Unreadable {
        /// The sender.
        from: PeerId,
        /// The message.
        seq: u64,
        /// What is wrong with it.
        error: crate::wire::envelope::EnvelopeError,
    },
}

impl NodeError {
    /// The store's error behind this one, if the store failed.
    pub fn store_error(&self) -> Option<&StoreError> {
        match self {
            NodeError::Store(e) | NodeError::Feed(FeedError::Store(e)) => Some(e),
            _ => None,
        }
    }

    /// Whether the store or its disk is full ([`StoreError::is_full`]):
    /// nothing of the operation was written, and it succeeds once space
    /// is freed.
    pub fn is_full(&self) -> bool {
        self.store_error().is_some_and(StoreError::is_full)
    }

    /// Whether a conditional write lost to another process writing the
    /// same record (which a retry on fresh state resolves).
    fn is_conflict(&self) -> bool {
        matches!(
            self,
            NodeError::Store(StoreError::Conflict)
                | NodeError::Feed(FeedError::Store(StoreError::Conflict))
        )
    }
}

/// Times a write that lost to another process on the same data directory
/// is tried again, on fresh state, before the conflict is reported.
///
/// Every loss means another process committed, so the processes together
/// always progress. Marks updates run under the store's writer lock where
/// it has one (LMDB) and cannot lose; on a store without one, several
/// workers taking and archiving jobs from one sender's marks record in a
/// tight loop can lose dozens of times in a row (4 worker processes in
/// peermq-bench's `work` phase once lost 32 in a row within 100,000 jobs).
/// A thousand makes giving up a sign of something wrong, not of ordinary
/// contention.
const CONFLICT_ATTEMPTS: usize = 1000;

/// Runs `attempt` until it succeeds, fails with anything but a write
/// conflict, or has lost [`CONFLICT_ATTEMPTS`] times (the last conflict is
/// returned). Each attempt begins its own transaction, and after losing
/// drops what it cached, so the next one builds on what the other process
/// committed.
fn retry_on_conflict<T>(mut attempt: impl FnMut() -> Result<T, NodeError>) -> Result<T, NodeError> {
    let mut lost = 0;
    loop {
        match attempt() {
            Err(e) if e.is_conflict() && lost + 1 < CONFLICT_ATTEMPTS => lost += 1,
            other => return other,
        }
    }
}

/// What a node holds in memory, in counts ([`Node::footprint`]). Each is
/// bounded by the configuration and the protocol's limits, whatever peers
/// send: connections by the driver's caps, requests per connection by
/// [`limits::MAX_INFLIGHT_REQUESTS`], partly received bytes by
/// [`Config::max_buffered_bytes`], broadcast feeds by [`Config::max_feeds`]
/// plus [`limits::MAX_PENDING_AUTHORS`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Connections, open or in their handshake.
    pub connections: usize,
    /// Connections still in their handshake.
    pub handshaking: usize,
    /// Feeds whose handles are cached.
    pub feeds_loaded: usize,
    /// Broadcast feeds held or announced.
    pub broadcast_feeds: usize,
    /// Our requests awaiting answers, over all connections.
    pub requests_in_flight: usize,
    /// Peers' requests waiting to be served or parked, over all connections.
    pub requests_to_serve: usize,
    /// Bytes buffered on connections: partly received messages and what
    /// waits to be encrypted or handed to the driver.
    pub buffered_bytes: usize,
    /// Feed lengths peers announced, over all connections.
    pub remote_feeds: usize,
}

/// The node: identity, feeds, inbox, connections and timers, over a store.
///
/// A `Node` does no I/O. The driver that owns it (one task, no locks) gives
/// it bytes, transport events, time and the application's commands, and
/// carries out what it asks for. Its public methods fall into five kinds:
///
/// | kind | methods | takes |
/// |---|---|---|
/// | open and close | [`open`](Node::open), [`into_store`](Node::into_store) | |
/// | inputs: what happened | [`handle_input`](Node::handle_input), [`handle_closed`](Node::handle_closed), [`handle_timeout`](Node::handle_timeout); a transport opened: [`accept`](Node::accept), [`connect`](Node::connect), [`connect_any`](Node::connect_any), or did not: [`dial_failed`](Node::dial_failed) | `&mut self`, `now` |
/// | commands: what the application wants | queue: [`add_peer`](Node::add_peer), [`remove_peer`](Node::remove_peer), [`send`](Node::send), [`send_batch`](Node::send_batch), [`read`](Node::read), [`get`](Node::get), [`archive`](Node::archive), [`clear`](Node::clear), [`prune`](Node::prune); broadcast: [`broadcast`](Node::broadcast), [`broadcast_batch`](Node::broadcast_batch); connections: [`dial`](Node::dial), [`hang_up`](Node::hang_up), [`disconnect`](Node::disconnect), [`close`](Node::close); spare time: [`idle_work`](Node::idle_work) | `&mut self`, and `now` wherever the command can start a timer |
/// | outputs: what to do | [`poll_output`](Node::poll_output) ([`Output`]: transmit, dial, close, event), [`poll_timeout`](Node::poll_timeout) | |
/// | getters | [`id`](Node::id), [`config`](Node::config), [`store`](Node::store), [`footprint`](Node::footprint), [`forks`](Node::forks), [`peers`](Node::peers), [`is_authorized`](Node::is_authorized), [`max_send_size`](Node::max_send_size), [`status`](Node::status), [`receipt`](Node::receipt), [`receipts`](Node::receipts), [`acknowledged`](Node::acknowledged), [`wants`](Node::wants), [`peer_of`](Node::peer_of), [`is_connected`](Node::is_connected), [`broadcast_get`](Node::broadcast_get), [`broadcast_feeds`](Node::broadcast_feeds), [`replicates`](Node::replicates), [`refuses`](Node::refuses), [`feed_handle`](Node::feed_handle), [`has_idle_work`](Node::has_idle_work) | `&self` |
///
/// The loop, as in quinn-proto's `Connection`:
///
/// 1. Give it one input or command.
/// 2. Drain [`poll_output`](Node::poll_output) until `None`, carrying out
///    each output in order. Outputs queue up until drained, so drain after
///    every call, before the next.
/// 3. Call [`handle_timeout`](Node::handle_timeout) once the time
///    [`poll_timeout`](Node::poll_timeout) names has come (it may name a
///    time already past: then at once), and drain again.
/// 4. When nothing else waits and [`has_idle_work`](Node::has_idle_work),
///    call [`idle_work`](Node::idle_work).
///
/// The rules:
///
/// - Time never goes backwards: every `now` is at least the previous one
///   (an [`Instant`] from one monotonic clock, or the simulator's). Where
///   it does anyway, the node's own clock stands still for that call and
///   runs on from there: no deadline waits out the step, nothing panics
///   or spins. A jump forward fires the deadlines it passed, each once.
/// - Each input or command that writes is one store transaction, committed
///   before any output it causes is queued: an acknowledgement or event the
///   driver sees is already durable. A store failure returns an error and
///   resets every connection (they are re-established); nothing is half
///   written.
/// - A [`ConnId`] names one transport from [`accept`](Node::accept) or
///   [`connect`](Node::connect) until the node says [`Output::Close`] for
///   it, or the driver reports [`handle_closed`](Node::handle_closed).
///   After that the id is dead: it is never reused, and input for it is
///   ignored.
/// - A misbehaving peer never makes a method fail: its connection is
///   closed, with an [`Event::Disconnected`] saying why. Errors are the
///   caller's own mistakes or the store's failures ([`NodeError`]).
pub struct Node<S: Store> {
    store: S,
    st: State,
    /// Signs our feeds' heads; apart from `st` so that it can sign while a
    /// feed in `st` is borrowed.
    signer: Signer,
    /// Opens messages sealed to us; apart from `st` for the same reason.
    opener: Opener,
}

/// Everything but the store, so a transaction can borrow the store while
/// the state is mutated.
struct State {
    config: Config,
    key: Keypair,
    me: PeerId,
    rng: SeededRng,
    noise_key: StaticKey,
    peers: BTreeSet<PeerId>,
    /// Loaded feeds, both directions.
    feeds: BTreeMap<FeedId, Feed>,
    /// Incoming queue state, by sender.
    inboxes: BTreeMap<PeerId, Inbox>,
    /// Outgoing acknowledgement state, by recipient.
    outboxes: BTreeMap<PeerId, Outbox>,
    /// Broadcast feeds held, own and relayed, all loaded at open.
    replicas: BTreeMap<FeedId, Replica>,
    /// What bounds the other authors' feeds held.
    quota: Quota,
    /// Feeds whose authors forked them, no longer replicated, with the
    /// evidence; loaded at open.
    forks: BTreeMap<FeedId, ForkEvidence>,
    conns: BTreeMap<ConnId, Conn>,
    /// Partly received bytes of all connections (the sum of their
    /// `rx_counted`), bounded by `Config::max_buffered_bytes`.
    rx_total: usize,
    dials: BTreeMap<PeerId, Dial>,
    /// Every deadline: receipts due, store polls, connection timeouts and
    /// keepalives, redials.
    timers: TimerTable,
    out: VecDeque<Output>,
    next_conn: u64,
    /// The node's clock: the caller's time plus `skew`. It never goes
    /// back, whatever the caller passes ([`State::tick`]).
    now: Instant,
    /// How far the node's clock runs ahead of the caller's: the total by
    /// which the caller's time went backwards, in microseconds.
    skew: u64,
    /// Feeds whose downloads may proceed; requests go out at the end of the
    /// current call, when the store can be read (see `issue_requests`).
    to_schedule: BTreeSet<Target>,
    /// The epoch keys messages are sealed with, by recipient.
    seal_keys: SealKeys,
    /// Mailbox lists, routes, and the mail we carry; loaded at open.
    mail: Mail,
    /// Recent inbound connections per key, for their bound.
    admission: admission::Admission,
}

/// A feed whose downloads may proceed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    /// The queue feed from this peer to us.
    Queue(PeerId),
    /// A broadcast feed.
    Broadcast(FeedId),
    /// A feed we carry as a mailbox.
    Carried(FeedId),
}

/// A request planned on a connection, to be sent by `issue_requests`.
struct Planned {
    conn: ConnId,
    /// The request's id on `conn`.
    id: u64,
    desc: FeedDescriptor,
    start: u64,
    end: u64,
    /// Our verified length of the feed.
    base: u64,
    /// A length the peer is known to hold (a signed head it announced), at
    /// least `base`: answers to requests within it come with proofs, which
    /// later requests may count on.
    known: u64,
}

impl<S: Store> Node<S> {
    /// Opens a node on `store`, creating its identity (from `entropy`) if
    /// the store has none. Costs a fixed number of reads plus one per
    /// authorized peer, whatever the amount of data stored.
    pub fn open(
        store: S,
        config: Config,
        entropy: Entropy,
        now: Instant,
    ) -> Result<Self, NodeError> {
        let nonce_seed = entropy.nonce_seed;
        let mut rng = SeededRng::from_seed(entropy.seed);
        drop(entropy);
        let fresh = Keypair::generate(&mut rng.fork());
        // Two processes opening one fresh directory at once both try to
        // store an identity: the loser of that race reads the winner's.
        let (key, peers, replicas, forks, mail) = retry_on_conflict(|| {
            let mut txn = Txn::begin(&store)?;
            meta::check_format(&mut txn)?;
            let key = meta::identity_or_insert(&mut txn, || fresh.clone())?;
            let peers: BTreeSet<PeerId> =
                peer_keys(&txn, Table::Peers, None)?.into_iter().collect();
            let replicas = broadcast::load_all(&txn)?;
            let forks = fork::load_all(&txn)?;
            let mail = Mail::load(&txn)?;
            txn.commit()?;
            Ok((key, peers, replicas, forks, mail))
        })?;
        drop(fresh);
        let noise_key =
            StaticKey::generate(rng.fork()).map_err(|e| NodeError::Keys(e.to_string()))?;
        let me = key.peer_id();
        let signer = Signer::new(key.clone(), nonce_seed);
        let opener = Opener::new(&key);
        let mut node = Node {
            store,
            signer,
            opener,
            st: State {
                config,
                key,
                me,
                rng,
                noise_key,
                peers,
                feeds: BTreeMap::new(),
                inboxes: BTreeMap::new(),
                outboxes: BTreeMap::new(),
                quota: Quota::of(&replicas, &me),
                replicas,
                forks,
                conns: BTreeMap::new(),
                rx_total: 0,
                dials: BTreeMap::new(),
                timers: TimerTable::default(),
                out: VecDeque::new(),
                next_conn: 0,
                now,
                skew: 0,
                to_schedule: BTreeSet::new(),
                seal_keys: SealKeys::default(),
                mail,
                admission: admission::Admission::default(),
            },
        };
        // Our mailboxes hold our mail, and those set for recipients take
        // what we send them: stay connected to both.
        let keep: BTreeSet<PeerId> = node
            .mailboxes()
            .into_iter()
            .chain(node.st.mail.routes.values().flatten().copied())
            .collect();
        for m in keep {
            node.keep_dialing(m);
        }
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> PeerId {
        self.st.me
    }

    /// This node's key pair, secret included: for a transport that
    /// authenticates with the node's own key, so that one key is the peer
    /// id everywhere (an iroh endpoint is keyed by it; a signed discovery
    /// record is signed with it). Hand it to nothing that might log, print
    /// or store it.
    pub fn keypair(&self) -> &Keypair {
        self.signer.keypair()
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &Config {
        &self.st.config
    }

    /// What the node holds in memory, in counts: for monitoring, and for
    /// simulations that check a hostile peer cannot make it grow.
    pub fn footprint(&self) -> Footprint {
        let st = &self.st;
        Footprint {
            connections: st.conns.len(),
            handshaking: st.conns.values().filter(|c| !c.is_open()).count(),
            feeds_loaded: st.feeds.len(),
            broadcast_feeds: st.replicas.len(),
            requests_in_flight: st.conns.values().map(|c| c.inflight.len()).sum(),
            requests_to_serve: st
                .conns
                .values()
                .map(|c| c.serve.len() + c.parked.len())
                .sum(),
            buffered_bytes: st
                .conns
                .values()
                .map(|c| c.rx.len() + c.tx_plain.len() + c.tx_wire.len())
                .sum(),
            remote_feeds: st.conns.values().map(|c| c.remote_heads.len()).sum(),
        }
    }

    /// The feeds whose authors signed conflicting heads, with the evidence.
    /// They are no longer replicated; what was verified before the fork
    /// stays readable. [`Event::Forked`] reports each once, as found.
    pub fn forks(&self) -> impl Iterator<Item = &ForkEvidence> {
        self.st.forks.values()
    }

    /// The store, for inspection.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Gives the store back, dropping all in-memory state (as a crash would).
    pub fn into_store(self) -> S {
        self.store
    }

    /// Keeps a connection to `peer`: asks the driver to dial it now (with
    /// [`Output::Dial`]) and again, with backoff, whenever the connection is
    /// lost, until [`Node::hang_up`].
    pub fn dial(&mut self, peer: PeerId, now: Instant) {
        self.st.tick(now);
        self.keep_dialing(peer);
    }

    /// [`Node::dial`], at the node's time.
    fn keep_dialing(&mut self, peer: PeerId) {
        if peer == self.st.me {
            return;
        }
        let connected = self
            .st
            .conns
            .values()
            .any(|c| c.peer == Some(peer) || c.expected == Some(peer));
        let d = self.st.dials.entry(peer).or_default();
        if !connected && !self.st.timers.is_set(Timer::Redial(peer)) {
            d.attempts = 0;
            self.st.out.push_back(Output::Dial { peer });
        }
    }

    /// Drops the wish to stay connected to `peer` (open connections stay).
    pub fn hang_up(&mut self, peer: &PeerId) {
        self.st.forget_dial(peer);
    }

    /// Drops the wish to stay connected to `peer` and closes every
    /// connection with it (or dialed to it), telling it why.
    pub fn disconnect(&mut self, peer: &PeerId, now: Instant) {
        let now = self.st.tick(now);
        self.st.forget_dial(peer);
        self.st.close_conns_with(peer, CloseReason::Local, now);
        self.pump(now);
    }

    /// Whether the node wants to stay connected to `peer` ([`Node::dial`]
    /// until [`Node::hang_up`], [`Node::disconnect`] or
    /// [`Node::remove_peer`]): the one record of that wish, which a driver
    /// consults rather than keeping its own.
    pub fn wants(&self, peer: &PeerId) -> bool {
        self.st.dials.contains_key(peer)
    }

    /// The authenticated peer of `conn`, once its handshake is done; `None`
    /// before, and after the connection closed.
    pub fn peer_of(&self, conn: ConnId) -> Option<PeerId> {
        self.st.conns.get(&conn).and_then(|c| c.peer)
    }

    /// Whether a connection with `peer` has finished its handshake.
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.st
            .conns
            .values()
            .any(|c| c.peer.as_ref() == Some(peer))
    }

    /// The driver could not open a transport to `peer`; retry after backoff.
    pub fn dial_failed(&mut self, peer: PeerId, now: Instant) {
        let now = self.st.tick(now);
        self.st.schedule_redial(peer, now);
    }

    /// The driver opened a transport to `peer`: the node starts the
    /// handshake as initiator and will check that `peer` answers.
    pub fn connect(&mut self, peer: PeerId, now: Instant) -> ConnId {
        let now = self.st.tick(now);
        let id = self.st.new_conn(Some(peer), true, now);
        self.pump(now);
        id
    }

    /// The driver opened a transport to an address whose key it does not
    /// know (the emitter's `connect(host, port)`): the node dials and takes
    /// whoever answers, as long as it would accept that key inbound.
    pub fn connect_any(&mut self, now: Instant) -> ConnId {
        let now = self.st.tick(now);
        let id = self.st.new_conn(None, true, now);
        self.pump(now);
        id
    }

    /// The driver accepted an inbound transport: the node answers its
    /// handshake and admits it only if the dialer is an authorized peer.
    pub fn accept(&mut self, now: Instant) -> ConnId {
        let now = self.st.tick(now);
        let id = self.st.new_conn(None, false, now);
        let limit = self.st.config.max_inbound;
        if self.st.conns.values().filter(|c| !c.initiator).count() > limit {
            // Before any byte of the handshake: nothing to tell the peer.
            let reason = CloseReason::TooManyConnections { limit };
            self.st.drop_conn(id, reason, false, now);
        }
        self.pump(now);
        id
    }

    /// Bytes arrived on `conn`. A peer's misbehaviour closes that connection
    /// (see [`Output::Close`]); an `Err` means our own store failed, in which
    /// case every connection was closed and will be re-established.
    pub fn handle_input(
        &mut self,
        conn: ConnId,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), NodeError> {
        let now = self.st.tick(now);
        let r = self.st.handle_input(&self.store, conn, bytes, now);
        self.finish(r, now)
    }

    /// The transport of `conn` closed.
    pub fn handle_closed(&mut self, conn: ConnId, now: Instant) {
        let now = self.st.tick(now);
        self.st
            .drop_conn(conn, CloseReason::TransportClosed, false, now);
        self.pump(now);
    }

    /// Closes `conn` at the application's request, telling the peer.
    pub fn close(&mut self, conn: ConnId, now: Instant) {
        let now = self.st.tick(now);
        self.st.drop_conn(conn, CloseReason::Local, true, now);
        self.pump(now);
    }

    /// Time passed: runs keepalives, idle and handshake timeouts, redials,
    /// and serves queued requests.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), NodeError> {
        let now = self.st.tick(now);
        let r = self.st.handle_timeout(&self.store, now);
        self.finish(r, now)
    }

    /// The next action for the driver, or `None` when there is nothing to
    /// do until more input or [`Node::poll_timeout`].
    pub fn poll_output(&mut self) -> Option<Output> {
        self.st.out.pop_front()
    }

    /// When to call [`Node::handle_timeout`] next (immediately, if it has
    /// queued work), or `None` if no timer is pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        // Back on the caller's clock.
        let skew = self.st.skew;
        self.st
            .poll_timeout()
            .map(|t| Instant::from_micros(t.as_micros().saturating_sub(skew)))
    }

    /// Whether the node has work it can do ahead of need, off the path of
    /// the next command: today, the next signature's nonce (only with
    /// [`Entropy::sign_ahead`]).
    pub fn has_idle_work(&self) -> bool {
        self.signer.can_sign_ahead()
    }

    /// Does the work [`Node::has_idle_work`] reports. Call it when nothing
    /// else is waiting, after the bytes already polled are on their way:
    /// skipping it costs speed, never correctness, and the node's outputs are
    /// the same either way.
    pub fn idle_work(&mut self) {
        self.signer.sign_ahead();
    }

    fn finish(&mut self, r: Result<(), NodeError>, now: Instant) -> Result<(), NodeError> {
        let r = r
            .and_then(|()| self.st.issue_requests(&self.store))
            .and_then(|()| self.st.serve_all(&self.store));
        if let Err(e) = &r {
            self.st.storage_failed(&self.store, e, now);
        }
        self.st.flush_all(now);
        r
    }

    /// Ends a command: sends the requests it made possible and hands every
    /// connection's bytes to the driver. A store failure while planning
    /// requests is handled like any other (connections reset, state
    /// reloaded); the command itself already succeeded.
    fn pump(&mut self, now: Instant) {
        let r = self
            .st
            .issue_requests(&self.store)
            .and_then(|()| self.st.serve_all(&self.store));
        if let Err(e) = &r {
            self.st.storage_failed(&self.store, e, now);
        }
        self.st.flush_all(now);
    }
}

/// Every record of `table`, one per feed and keyed by its id, decoded with
/// `decode`, which gives the feed the record speaks for: replicas, forks.
/// A record that does not decode, or names another feed than its key, is
/// reported as damaged (`what` names the kind of record).
fn load_per_feed<S: Store, T>(
    txn: &Txn<'_, S>,
    table: Table,
    what: &str,
    decode: impl Fn(&[u8]) -> Option<(FeedId, T)>,
) -> Result<BTreeMap<FeedId, T>, StoreError> {
    let mut out = BTreeMap::new();
    let mut bad = None;
    txn.scan(table, (Bound::Unbounded, Bound::Unbounded), &mut |k, v| {
        match decode(v) {
            Some((id, record)) if id.0[..] == *k => {
                out.insert(id, record);
            }
            _ => bad = Some(hex::encode(k)),
        }
        ControlFlow::Continue(())
    })?;
    match bad {
        Some(k) => Err(StoreError::Corrupted(format!(
            "{what} record of feed {k} is damaged"
        ))),
        None => Ok(out),
    }
}

/// The keys of `table` that are peer ids (32 bytes), in order, from `from`
/// on: authorized peers, or the senders we hold messages from.
fn peer_keys<S: Store>(
    txn: &Txn<'_, S>,
    table: Table,
    from: Option<&PeerId>,
) -> Result<Vec<PeerId>, StoreError> {
    let lower = from.map_or(Bound::Unbounded, |p| Bound::Included(&p.0[..]));
    let mut out = Vec::new();
    txn.scan(table, (lower, Bound::Unbounded), &mut |k, _| {
        if let Ok(id) = <[u8; 32]>::try_from(k) {
            out.push(PeerId(id));
        }
        ControlFlow::Continue(())
    })?;
    Ok(out)
}

impl State {
    fn new_conn(&mut self, expected: Option<PeerId>, initiator: bool, now: Instant) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        let hs = noise::handshake(&self.noise_key, self.rng.fork(), initiator);
        let mut conn = match hs {
            Ok(hs) => Conn::new(id, hs, expected, now),
            Err(e) => {
                // Building a handshake from a valid key cannot fail; if snow
                // disagrees, report it as a failed connection, not a panic.
                self.out.push_back(Output::Close {
                    conn: id,
                    reason: CloseReason::Handshake(e.to_string()),
                });
                return id;
            }
        };
        if let Some(peer) = expected {
            self.timers.stop(Timer::Redial(peer));
        }
        if initiator {
            if let Err(reason) = conn.start() {
                self.out.push_back(Output::Close { conn: id, reason });
                return id;
            }
        }
        self.conns.insert(id, conn);
        id
    }

    /// Moves every connection's encrypted bytes into outputs, and sets its
    /// deadlines from what it last heard and sent.
    fn flush_all(&mut self, now: Instant) {
        let mut failed = Vec::new();
        let mut any_open = false;
        for (id, conn) in self.conns.iter_mut() {
            if let Err(reason) = conn.flush(now) {
                failed.push((*id, reason));
                continue;
            }
            if let Some(bytes) = conn.take_wire() {
                self.out.push_back(Output::Transmit { conn: *id, bytes });
            }
            any_open |= conn.is_open();
            arm_conn(&mut self.timers, &self.config, conn);
        }
        if any_open && self.config.store_poll_interval.is_some() {
            self.timers.set_if_unset(Timer::StorePoll, now);
        }
        for (id, reason) in failed {
            self.drop_conn(id, reason, false, now);
        }
    }

    /// Closes a connection: optionally tells the peer why, emits the close
    /// and the event, and frees what it held.
    fn drop_conn(&mut self, id: ConnId, reason: CloseReason, tell_peer: bool, now: Instant) {
        let Some(mut conn) = self.conns.remove(&id) else {
            return;
        };
        self.timers.stop_conn(id);
        self.rx_total = self.rx_total.saturating_sub(conn.rx_counted);
        if tell_peer && conn.is_open() {
            let text = reason.to_string();
            conn.send(&Message::Close {
                code: reason.code(),
                text: &text,
            });
            if conn.flush(now).is_ok() {
                if let Some(bytes) = conn.take_wire() {
                    self.out.push_back(Output::Transmit { conn: id, bytes });
                }
            }
        }
        // Requests it carried must be asked again elsewhere.
        let mut feeds_to_reschedule = BTreeSet::new();
        for conn::Inflight {
            feed, start, end, ..
        } in conn.inflight.drain(..)
        {
            if let Some(r) = self.replicas.get_mut(&feed) {
                r.dl.requested.remove(start, end);
                feeds_to_reschedule.insert(feed);
            } else if let Some(c) = self.mail.carried.get_mut(&feed) {
                c.dl.requested.remove(start, end);
                self.to_schedule.insert(Target::Carried(feed));
            } else if let Some(from) = conn.peer.and_then(|p| self.queue_sender(p, &feed)) {
                // From the sender, or from a mailbox holding its mail.
                if let Some(inbox) = self.inboxes.get_mut(&from) {
                    inbox.dl.requested.remove(start, end);
                    self.to_schedule.insert(Target::Queue(from));
                }
            }
        }
        for feed in feeds_to_reschedule {
            self.schedule_broadcast(feed);
        }
        self.out.push_back(Output::Close {
            conn: id,
            reason: reason.clone(),
        });
        self.out.push_back(Output::Event(Event::Disconnected {
            conn: id,
            peer: conn.peer,
            reason: reason.clone(),
        }));
        let who = conn.peer.or(conn.expected);
        if let Some(peer) = who {
            let still = self
                .conns
                .values()
                .any(|c| c.peer == Some(peer) || c.expected == Some(peer));
            if let Some(d) = self.dials.get_mut(&peer) {
                let strained = matches!(
                    reason,
                    CloseReason::Storage(_)
                        | CloseReason::Remote {
                            code: crate::wire::CloseCode::Overloaded,
                            ..
                        }
                );
                if strained {
                    d.strained = true;
                } else if d.strained && conn.peer.is_some() {
                    // A connection that ended otherwise: the store took
                    // what came, and the backoff starts over.
                    d.strained = false;
                    d.attempts = 0;
                }
            }
            if !still && reason.retry() {
                self.schedule_redial(peer, now);
            }
            if let Some(inbox_peer) = conn.peer {
                // Another connection to the same peer may pick the work up.
                self.schedule_requests(inbox_peer);
            }
        }
    }

    fn schedule_redial(&mut self, peer: PeerId, now: Instant) {
        let (base, cap) = (self.config.backoff_base, self.config.backoff_cap);
        if let Some(d) = self.dials.get_mut(&peer) {
            let at = d.schedule(now, base, cap, &mut self.rng);
            self.timers.set(Timer::Redial(peer), at);
        }
    }

    /// Takes the caller's time `now` onto the node's clock, and returns
    /// the node's time. The node's clock never goes back: where the
    /// caller's did (a clock stepped back; the rules say it must not, but
    /// a clock is outside our control), the node's stands still for that
    /// call and runs on from there at the caller's pace, with every
    /// deadline as far off as it was. Without it each deadline set before
    /// the step would wait out the step as well: keepalives, receipts and
    /// redials stalled for as long as the clock went back. Forward jumps
    /// pass through: deadlines that came are due, each once.
    fn tick(&mut self, now: Instant) -> Instant {
        let t = now.as_micros().saturating_add(self.skew);
        let ours = self.now.as_micros();
        if t < ours {
            self.skew += ours - t;
        } else {
            self.now = Instant::from_micros(t);
        }
        self.now
    }

    /// Closes every connection with `peer`, or dialed to it, telling it
    /// `reason`.
    fn close_conns_with(&mut self, peer: &PeerId, reason: CloseReason, now: Instant) {
        let ids: Vec<ConnId> = self
            .conns
            .values()
            .filter(|c| c.peer.as_ref() == Some(peer) || c.expected.as_ref() == Some(peer))
            .map(|c| c.id)
            .collect();
        for id in ids {
            self.drop_conn(id, reason.clone(), true, now);
        }
    }

    /// Drops the wish to stay connected to `peer`, and its redial.
    fn forget_dial(&mut self, peer: &PeerId) {
        self.dials.remove(peer);
        self.timers.stop(Timer::Redial(*peer));
    }

    /// After a failed commit nothing in memory can be trusted to match the
    /// store: close every connection (peers will resend) and reload lazily.
    /// Blocks asked for with `get`, and how far the unread mailbox was read,
    /// are the application's doing, not a copy of stored state, so they are
    /// carried over (else their `Fetched` would never come, or a live reader
    /// would stall at the cursor's window).
    ///
    /// Peers hear `overloaded` (try later), and every dial backs off as
    /// after a failure until a connection ends for another reason
    /// ([`dial::Dial::strained`]): while the store stays full, each new
    /// connection would bring data it cannot keep.
    fn storage_failed<S: Store>(&mut self, store: &S, error: &NodeError, now: Instant) {
        // The reason goes to peers: what kind of failure, not our paths.
        let why = match error.store_error() {
            Some(e) if e.is_full() => "our store is full",
            _ => "a commit failed",
        };
        for d in self.dials.values_mut() {
            d.strained = true;
        }
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.drop_conn(id, CloseReason::Storage(why.into()), true, now);
        }
        let wanted: Vec<(PeerId, crate::ranges::RangeSet, u64)> = self
            .inboxes
            .iter()
            .filter(|(_, i)| !i.wanted.is_empty() || i.read_to > 0)
            .map(|(p, i)| (*p, i.wanted.clone(), i.read_to))
            .collect();
        self.feeds.clear();
        self.reload_replicas(store);
        self.inboxes.clear();
        self.outboxes.clear();
        if wanted.is_empty() {
            return;
        }
        let Ok(txn) = Txn::begin(store) else {
            return;
        };
        for (from, w, read_to) in wanted {
            if let Ok(inbox) = self.inbox(&txn, from) {
                inbox.wanted = w;
                inbox.read_to = read_to;
            }
        }
    }

    /// Takes the broadcast replicas back to what is committed: a failed
    /// commit left records in memory that the store never got, and each
    /// replica's next write is conditional on the last one committed.
    /// Authors only announced stay, as nothing of them was stored.
    fn reload_replicas<S: Store>(&mut self, store: &S) {
        let Ok(loaded) = Txn::begin(store).and_then(|txn| broadcast::load_all(&txn)) else {
            return;
        };
        let announced: Vec<(FeedId, Replica)> = self
            .replicas
            .iter()
            .filter(|(id, _)| !loaded.contains_key(id))
            .map(|(id, r)| (*id, Replica::new(r.desc)))
            .collect();
        self.replicas = loaded;
        self.quota = Quota::of(&self.replicas, &self.me);
        self.replicas.extend(announced);
    }

    /// Handles every deadline that came, in [`Timer`] order. A store
    /// failure while polling is returned once the rest are handled, so no
    /// deadline is lost with it.
    fn handle_timeout<S: Store>(&mut self, store: &S, now: Instant) -> Result<(), NodeError> {
        let mut failed = Ok(());
        for timer in self.timers.expire(now) {
            match timer {
                Timer::Ack(from) => self.send_ack(from),
                Timer::StorePoll => {
                    // Only while a connection is open; the first to open
                    // sets it again.
                    let open = self.conns.values().any(|c| c.is_open());
                    if let (Some(every), true) = (self.config.store_poll_interval, open) {
                        self.timers.set(Timer::StorePoll, now + every);
                        if let Err(e) = self.poll_store(store) {
                            failed = failed.and(Err(e));
                        }
                    }
                }
                Timer::Conn(id, t) => self.conn_timer(id, t, now),
                Timer::Redial(peer) => {
                    if self.dials.contains_key(&peer) {
                        self.out.push_back(Output::Dial { peer });
                    }
                }
            }
        }
        failed
    }

    /// Deadline `t` of connection `id` came.
    fn conn_timer(&mut self, id: ConnId, t: ConnTimer, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match t {
            ConnTimer::Handshake if !conn.is_open() => {
                self.drop_conn(id, CloseReason::HandshakeTimeout, true, now);
            }
            ConnTimer::Idle if conn.is_open() => {
                self.drop_conn(id, CloseReason::IdleTimeout, true, now);
            }
            ConnTimer::Keepalive if conn.is_open() && conn.tx_plain.is_empty() => {
                conn.send(&Message::Keepalive);
            }
            // A deadline of a state the connection has left, or a keepalive
            // made needless by what waits to go out: the flush at the end
            // of this call sets the connection's deadlines afresh.
            _ => {}
        }
    }

    /// The earliest deadline, or now while work is queued: requests to plan,
    /// or peers' requests waiting for this call's share of the serving
    /// budget.
    fn poll_timeout(&self) -> Option<Instant> {
        let rate = self.config.max_serve_rate;
        let mut work = !self.to_schedule.is_empty();
        let mut next = self.timers.next();
        for c in self.conns.values().filter(|c| !c.serve.is_empty()) {
            // A connection that spent this second's serving credit waits
            // for the refill, not the next call.
            match c.credit.resumes(rate) {
                Some(t) => next = Some(next.map_or(t, |n| n.min(t))),
                None => work = true,
            }
        }
        match (work, next) {
            (true, Some(t)) => Some(t.min(self.now)),
            (true, None) => Some(self.now),
            (false, t) => t,
        }
    }

    /// Picks up what other processes wrote to the data directory: appends to
    /// our feeds (announced to connected recipients at once) and archive or
    /// clear marks. One read per connected peer and per loaded inbox.
    fn poll_store<S: Store>(&mut self, store: &S) -> Result<(), NodeError> {
        let txn = Txn::begin(store)?;
        let connected: BTreeSet<PeerId> = self
            .conns
            .values()
            .filter(|c| c.is_open())
            .filter_map(|c| c.peer)
            .collect();
        for peer in connected {
            let desc = FeedDescriptor::queue(self.me, peer);
            let stale = match self.feeds.get(&desc.id()) {
                Some(f) => f.is_stale(&txn)?,
                None => true,
            };
            if !stale {
                continue;
            }
            let before = self.feeds.remove(&desc.id()).map_or(0, |f| f.len());
            let head = self.feed(&txn, desc)?.head().copied();
            if let (Some(head), Some(cid)) = (head, self.conn_to(&peer)) {
                if head.length > before {
                    if let Some(conn) = self.conns.get_mut(&cid) {
                        conn.announce(desc, head, before);
                    }
                }
            }
        }
        let senders: Vec<PeerId> = self.inboxes.keys().copied().collect();
        for from in senders {
            let (marks, _) = marks::Marks::load(&txn, &from)?;
            if let Some(inbox) = self.inboxes.get_mut(&from) {
                if inbox.set_marks(&marks) {
                    self.schedule_requests(from);
                }
            }
        }
        Ok(())
    }

    /// The feed `desc`, loaded into the cache if needed.
    fn feed<S: Store>(
        &mut self,
        txn: &Txn<'_, S>,
        desc: FeedDescriptor,
    ) -> Result<&mut Feed, NodeError> {
        Ok(match self.feeds.entry(desc.id()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(Feed::open(txn, desc)?),
        })
    }

    /// The inbox of messages from `from`, loaded into the cache if needed.
    fn inbox<S: Store>(&mut self, txn: &Txn<'_, S>, from: PeerId) -> Result<&mut Inbox, NodeError> {
        if !self.inboxes.contains_key(&from) {
            let inbox = self.load_inbox(txn, from)?;
            self.inboxes.insert(from, inbox);
        }
        Ok(self
            .inboxes
            .get_mut(&from)
            .unwrap_or_else(|| unreachable!("inserted above")))
    }

    /// Reads the inbox of `from` from the store, checked against the
    /// feed's verified length: a held set reaching past it is a damaged
    /// record, refused here rather than walked (to 2^64) by every reader.
    fn load_inbox<S: Store>(&self, txn: &Txn<'_, S>, from: PeerId) -> Result<Inbox, NodeError> {
        let verified = self
            .peek_feed(txn, FeedDescriptor::queue(from, self.me))?
            .len();
        Ok(Inbox::load(txn, &from, verified)?)
    }

    /// The outbox of our feed to `to`, loaded into the cache if needed.
    fn outbox<S: Store>(&mut self, txn: &Txn<'_, S>, to: PeerId) -> Result<&mut Outbox, NodeError> {
        let id = FeedDescriptor::queue(self.me, to).id();
        Ok(match self.outboxes.entry(to) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(Outbox::load(txn, &id)?),
        })
    }

    /// A feed as the cache or, if it is not cached, the store has it,
    /// without caching it: for getters.
    fn peek_feed<S: Store>(
        &self,
        txn: &Txn<'_, S>,
        desc: FeedDescriptor,
    ) -> Result<Cow<'_, Feed>, NodeError> {
        Ok(match self.feeds.get(&desc.id()) {
            Some(f) => Cow::Borrowed(f),
            None => Cow::Owned(Feed::open(txn, desc)?),
        })
    }

    /// [`State::inbox`] without caching it: for getters.
    fn peek_inbox<S: Store>(
        &self,
        txn: &Txn<'_, S>,
        from: PeerId,
    ) -> Result<Cow<'_, Inbox>, NodeError> {
        Ok(match self.inboxes.get(&from) {
            Some(i) => Cow::Borrowed(i),
            None => Cow::Owned(self.load_inbox(txn, from)?),
        })
    }

    /// [`State::outbox`] without caching it: for getters.
    fn peek_outbox<S: Store>(
        &self,
        txn: &Txn<'_, S>,
        to: PeerId,
    ) -> Result<Cow<'_, Outbox>, NodeError> {
        Ok(match self.outboxes.get(&to) {
            Some(o) => Cow::Borrowed(o),
            None => Cow::Owned(Outbox::load(txn, &FeedDescriptor::queue(self.me, to).id())?),
        })
    }

    /// The open connection to `peer` that carries replication (the oldest).
    fn conn_to(&self, peer: &PeerId) -> Option<ConnId> {
        self.conns
            .values()
            .find(|c| c.is_open() && c.peer.as_ref() == Some(peer))
            .map(|c| c.id)
    }
}

/// Sets the deadlines of `conn` from its state: the handshake's until it is
/// open, then the idle timeout and the keepalive, from the last bytes heard
/// and sent.
fn arm_conn(timers: &mut TimerTable, config: &Config, conn: &Conn) {
    let timer = |t| Timer::Conn(conn.id, t);
    if conn.is_open() {
        timers.stop(timer(ConnTimer::Handshake));
        timers.set(timer(ConnTimer::Idle), conn.last_rx + config.idle_timeout);
        timers.set(
            timer(ConnTimer::Keepalive),
            conn.last_tx + config.keepalive_interval,
        );
    } else {
        timers.set(
            timer(ConnTimer::Handshake),
            conn.opened_at + config.handshake_timeout,
        );
    }
}

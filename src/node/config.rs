//! Node configuration.

use std::time::Duration;

/// How much of an incoming feed a node downloads ahead of its reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefetch {
    /// Download up to this many blocks past the reader: past the cursor
    /// (the first message neither archived nor cleared), or past the last
    /// message [`crate::Node::read`] returned from the unread mailbox, if
    /// that is further. `Window(0)` downloads only what [`crate::Node::get`]
    /// asks for.
    Window(u64),
    /// Download every block as soon as it is announced.
    All,
}

/// Everything a [`crate::Node`] can be tuned with; `Config::default()`
/// suits most uses. It holds no secret: the node's randomness comes apart,
/// as [`crate::Entropy`].
#[derive(Clone, Debug)]
pub struct Config {
    /// Largest protocol message accepted or sent, which bounds the largest
    /// message `send` accepts. Checked before anything is buffered.
    pub max_message_size: usize,
    /// Most bytes of partly received messages held for all connections
    /// together. Each may hold up to `max_message_size`; past this budget
    /// the connection holding the most is closed (`Overloaded`), so that
    /// many connections cannot each park a large message half sent.
    pub max_buffered_bytes: usize,
    /// Requests a node keeps in flight per connection, and the most it
    /// serves for a peer at once.
    pub max_inflight_requests: usize,
    /// Blocks asked for in one request.
    pub max_request_blocks: u64,
    /// Bytes of block data packed into one data message.
    pub max_data_bytes: usize,
    /// Most bytes of blocks served to one connection per second, in bursts
    /// of up to one second's worth. Past it the peer's requests wait (the
    /// connection stays open), so a peer asking for the same large range
    /// over and over costs a bounded share of a core while the others are
    /// served.
    pub max_serve_rate: u64,
    /// How far ahead of the reader to download.
    pub prefetch: Prefetch,
    /// Send a keepalive after this long without sending anything.
    pub keepalive_interval: Duration,
    /// Close a connection after this long without hearing anything.
    pub idle_timeout: Duration,
    /// Close a connection whose handshake has not finished in this time.
    pub handshake_timeout: Duration,
    /// Most connections peers may have open to us at once, handshakes
    /// included; one more is closed as it is accepted
    /// ([`crate::CloseReason::TooManyConnections`]). Our own dials do not
    /// count. Each one may buffer up to `max_message_size` (within
    /// `max_buffered_bytes` in all) until its timeouts.
    pub max_inbound: usize,
    /// First reconnect delay; it doubles per failed attempt.
    pub backoff_base: Duration,
    /// Longest reconnect delay.
    pub backoff_cap: Duration,
    /// Drop the bytes of blocks as soon as their recipient acknowledges them
    /// (tree nodes stay, so the feed remains verifiable).
    pub prune_acked: bool,
    /// Seal queue messages to their recipient ([`crate::identity::seal`]):
    /// only its key opens them, so whoever carries or steals the feed
    /// holds ciphertext. On by default; receivers open sealed messages
    /// whatever this says. Turning it off saves 58 bytes a message and a
    /// few hundred nanoseconds each way (BENCHMARKS.md), and leaves every
    /// message readable to whoever holds the feed.
    pub seal_messages: bool,
    /// Accept connections from any identity, and relay broadcast feeds of
    /// any author, as the event emitter does by default. When `false`, only
    /// authorized peers (`add_peer`) may dial in, and only their broadcast
    /// feeds (and ours) are replicated.
    pub open: bool,
    /// Most broadcast feeds (authors) whose events the node holds; further
    /// authors are refused (an event that depends on one is delivered and
    /// says so), so peers cannot exhaust the store. Authors announced but
    /// with nothing held yet are kept apart, in memory, a bounded number of
    /// them ([`limits::MAX_PENDING_AUTHORS`]), the oldest forgotten first.
    pub max_feeds: usize,
    /// Most bytes of one other author's events the node fetches and holds;
    /// past it that author is refused. The overshoot is at most what the
    /// requests in flight bring.
    pub max_author_bytes: u64,
    /// Most bytes of other authors' events the node fetches and holds in
    /// all; past it every other author is refused.
    pub max_relay_bytes: u64,
    /// While connected, look this often for messages that other processes
    /// sharing the data directory appended or archived, so that a `send`
    /// from another process goes out promptly. `None` turns it off (a store
    /// only this node writes, as in simulations).
    pub store_poll_interval: Option<Duration>,
    /// How long a receipt may wait after blocks arrive, so that it covers
    /// whatever else arrives meanwhile. Zero sends one after every commit.
    pub ack_delay: Duration,
    /// Serve as a mailbox, within these limits: accept connections from
    /// any identity, and hold the mail of recipients that name this node
    /// until they collect it (see [`crate::Node::add_mailbox`]). `None`
    /// (the default): not a mailbox.
    pub mailbox: Option<MailboxLimits>,
}

/// What bounds the mail a mailbox holds ([`Config::mailbox`]). Past a
/// quota, further mail is refused politely ([`crate::wire::RefuseReason`])
/// until the recipient collects what waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxLimits {
    /// Most bytes held from one sender, over all its recipients.
    pub max_sender_bytes: u64,
    /// Most bytes held for one recipient, over all its senders.
    pub max_recipient_bytes: u64,
    /// Most recipients served.
    pub max_recipients: usize,
}

impl Default for MailboxLimits {
    fn default() -> Self {
        MailboxLimits {
            max_sender_bytes: 64 << 20,
            max_recipient_bytes: 256 << 20,
            max_recipients: 10_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_message_size: 16 << 20,
            max_buffered_bytes: 256 << 20,
            max_inflight_requests: 32,
            max_request_blocks: 1024,
            max_data_bytes: 256 << 10,
            max_serve_rate: 256 << 20,
            prefetch: Prefetch::Window(4096),
            keepalive_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(20),
            handshake_timeout: Duration::from_secs(10),
            max_inbound: 1024,
            backoff_base: Duration::from_millis(200),
            backoff_cap: Duration::from_secs(30),
            prune_acked: false,
            seal_messages: true,
            open: false,
            max_feeds: 10_000,
            max_author_bytes: 64 << 20,
            max_relay_bytes: 1 << 30,
            store_poll_interval: Some(Duration::from_millis(250)),
            ack_delay: Duration::from_millis(10),
            mailbox: None,
        }
    }
}

impl Config {
    /// Blocks per request and requests in flight, within what the protocol
    /// lets a peer ask of us.
    pub(crate) fn request_limits(&self) -> (u64, usize) {
        (
            self.max_request_blocks.clamp(1, limits::MAX_REQUEST_BLOCKS),
            self.max_inflight_requests
                .clamp(1, limits::MAX_INFLIGHT_REQUESTS),
        )
    }
}

/// Protocol limits every node enforces on what a peer sends, whatever its
/// own configuration (so nodes with different configs interoperate).
pub mod limits {
    /// Most requests a peer may have outstanding with us.
    pub const MAX_INFLIGHT_REQUESTS: usize = 256;
    /// Most blocks one request or data message may cover.
    pub const MAX_REQUEST_BLOCKS: u64 = 16_384;
    /// Most broadcast authors a node remembers as announced before it holds
    /// any of their events (one signed head each costs a peer nothing).
    pub const MAX_PENDING_AUTHORS: usize = 1024;
    /// Most connections one key may complete to us in [`ACCEPT_WINDOW`];
    /// past it the newest is closed, the open one kept. An honest peer
    /// redialing with backoff (200 ms, doubling) makes about five.
    pub const MAX_ACCEPTS_PER_PEER: u32 = 8;
    /// The window [`MAX_ACCEPTS_PER_PEER`] counts in.
    pub const ACCEPT_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);
}

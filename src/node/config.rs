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

/// Everything a [`crate::Node`] can be tuned with. `Config::default()` suits
/// most uses; simulations vary the seed.
#[derive(Clone, Debug)]
pub struct Config {
    /// Seed of every random choice the node makes (Noise keys, jitter). The
    /// same seed and inputs give the same output bytes.
    pub rng_seed: u64,
    /// Fresh randomness for this open of the node, never used before with
    /// its identity: lets the node compute its next signature's nonce while
    /// idle ([`crate::Node::idle_work`]), which takes most of a signature's
    /// cost off `send`. Reusing a seed with the same identity can reveal the
    /// identity's secret key (see [`crate::Signer`]), so the runtimes draw
    /// one from the operating system at every open; [`crate::Node::open`]
    /// takes it out of the configuration it keeps, but a copy made before
    /// must not open the same identity again. `None` signs as RFC 8032 says,
    /// deriving each nonce from its message.
    pub nonce_seed: Option<[u8; 32]>,
    /// Largest protocol message accepted or sent, which bounds the largest
    /// message `send` accepts. Checked before anything is buffered.
    pub max_message_size: usize,
    /// Requests a node keeps in flight per connection, and the most it
    /// serves for a peer at once.
    pub max_inflight_requests: usize,
    /// Blocks asked for in one request.
    pub max_request_blocks: u64,
    /// Bytes of block data packed into one data message.
    pub max_data_bytes: usize,
    /// How far ahead of the reader to download.
    pub prefetch: Prefetch,
    /// Send a keepalive after this long without sending anything.
    pub keepalive_interval: Duration,
    /// Close a connection after this long without hearing anything.
    pub idle_timeout: Duration,
    /// Close a connection whose handshake has not finished in this time.
    pub handshake_timeout: Duration,
    /// First reconnect delay; it doubles per failed attempt.
    pub backoff_base: Duration,
    /// Longest reconnect delay.
    pub backoff_cap: Duration,
    /// Drop the bytes of blocks as soon as their recipient acknowledges them
    /// (tree nodes stay, so the feed remains verifiable).
    pub prune_acked: bool,
    /// Accept connections from any identity, and relay broadcast feeds of
    /// any author, as the event emitter does by default. When `false`, only
    /// authorized peers (`add_peer`) may dial in, and only their broadcast
    /// feeds (and ours) are replicated.
    pub open: bool,
    /// Most broadcast feeds (authors) the node will hold; announcements of
    /// further authors are ignored, so peers cannot exhaust the store.
    pub max_feeds: usize,
    /// While connected, look this often for messages that other processes
    /// sharing the data directory appended or archived, so that a `send`
    /// from another process goes out promptly. `None` turns it off (a store
    /// only this node writes, as in simulations).
    pub store_poll_interval: Option<Duration>,
    /// How long a receipt may wait after blocks arrive, so that it covers
    /// whatever else arrives meanwhile. Zero sends one after every commit.
    pub ack_delay: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            rng_seed: 0,
            nonce_seed: None,
            max_message_size: 16 << 20,
            max_inflight_requests: 32,
            max_request_blocks: 1024,
            max_data_bytes: 256 << 10,
            prefetch: Prefetch::Window(4096),
            keepalive_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(20),
            handshake_timeout: Duration::from_secs(10),
            backoff_base: Duration::from_millis(200),
            backoff_cap: Duration::from_secs(30),
            prune_acked: false,
            open: false,
            max_feeds: 10_000,
            store_poll_interval: Some(Duration::from_millis(250)),
            ack_delay: Duration::from_millis(10),
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
}

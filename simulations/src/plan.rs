//! Plans: everything a run does, generated up front from one seed.
//!
//! A run is a pure function of its [`Plan`], so shrinking a failing run is
//! just removing entries from the plan and running it again.

use std::fmt;
use std::str::FromStr;

use peermq::{Prefetch, RandomSource, SeededRng};

/// Bytes of a rogue author's broadcast events each node fetches at most
/// (`Config::max_author_bytes` in the simulation): small, so that a rogue's
/// flood runs into it.
pub const AUTHOR_QUOTA: u64 = 64 << 10;

/// One second of virtual time, in microseconds.
pub const SEC: u64 = 1_000_000;
/// One millisecond of virtual time, in microseconds.
pub const MS: u64 = 1_000;

/// A named shape of run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    /// The default: a random small network, random workload, random faults.
    Mix,
    /// Every node dials every other at once, and the whole network loses its
    /// connections again and again.
    ReconnectStorm,
    /// One reader of a 1,000,000-message feed reads 1% of it.
    SparseDownload,
    /// At least 100 nodes in a sparse random mesh.
    Mesh,
}

impl Scenario {
    /// Every scenario, in the order the help text lists them.
    pub const ALL: [Scenario; 4] = [
        Scenario::Mix,
        Scenario::ReconnectStorm,
        Scenario::SparseDownload,
        Scenario::Mesh,
    ];

    /// The scenario's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Mix => "mix",
            Scenario::ReconnectStorm => "reconnect-storm",
            Scenario::SparseDownload => "sparse-download",
            Scenario::Mesh => "mesh",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scenario::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Scenario::ALL.iter().map(|x| x.name()).collect();
                format!(
                    "unknown scenario {s:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// How hard the network and the nodes are hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultLevel {
    /// A perfect network (latency only) and nodes that never fail.
    None,
    /// A few faults per simulated minute.
    Light,
    /// Several faults per simulated minute.
    Medium,
    /// Faults every few seconds.
    Heavy,
}

impl FaultLevel {
    /// Every level, mildest first.
    pub const ALL: [FaultLevel; 4] = [
        FaultLevel::None,
        FaultLevel::Light,
        FaultLevel::Medium,
        FaultLevel::Heavy,
    ];

    /// The level's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            FaultLevel::None => "none",
            FaultLevel::Light => "light",
            FaultLevel::Medium => "medium",
            FaultLevel::Heavy => "heavy",
        }
    }

    /// Faults per simulated minute.
    fn per_minute(self) -> u64 {
        match self {
            FaultLevel::None => 0,
            FaultLevel::Light => 3,
            FaultLevel::Medium => 8,
            FaultLevel::Heavy => 20,
        }
    }
}

impl fmt::Display for FaultLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FaultLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        FaultLevel::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                format!("unknown fault level {s:?}; expected none, light, medium or heavy")
            })
    }
}

/// What the caller fixes; the seed chooses everything left open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    /// The scenario (`None`: the default mix).
    pub scenario: Option<Scenario>,
    /// Number of nodes.
    pub nodes: Option<usize>,
    /// Length of the chaos phase, in seconds.
    pub duration: Option<u64>,
    /// Fault level.
    pub faults: Option<FaultLevel>,
}

impl Params {
    /// The command-line flags that reproduce these parameters (empty for the
    /// defaults), to append to a replay command.
    pub fn flags(&self) -> String {
        let mut s = String::new();
        if let Some(x) = self.scenario {
            s += &format!(" --scenario {x}");
        }
        if let Some(x) = self.nodes {
            s += &format!(" --nodes {x}");
        }
        if let Some(x) = self.duration {
            s += &format!(" --duration {x}");
        }
        if let Some(x) = self.faults {
            s += &format!(" --faults {x}");
        }
        s
    }
}

/// Per-node configuration the seed chose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeOptions {
    /// Download window of the node's readers.
    pub prefetch: Prefetch,
    /// A sparse reader: `Window(0)`, reads with `get` only, never sends.
    pub sparse: bool,
    /// Blocks per request.
    pub max_request_blocks: u64,
    /// Requests in flight per connection.
    pub max_inflight: usize,
    /// Bytes of blocks per data message.
    pub max_data_bytes: usize,
    /// First reconnect delay, in milliseconds.
    pub backoff_base_ms: u64,
    /// Longest reconnect delay, in milliseconds.
    pub backoff_cap_ms: u64,
    /// Whether acknowledged blocks are pruned at the sender.
    pub prune_acked: bool,
    /// How far the node's wall clock is ahead of virtual time
    /// (microseconds): delivery times and leases are judged by it, so
    /// nodes disagree as real machines do.
    pub clock_skew: u64,
}

/// An authorized pair: both add each other; `dialer` keeps a connection to
/// `listener` (and, with `both`, the listener dials too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    /// The node that dials.
    pub dialer: usize,
    /// The node dialed.
    pub listener: usize,
    /// Whether the listener dials as well (simultaneous dials).
    pub both: bool,
}

/// Everything about a run that is not a timed operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The scenario.
    pub scenario: Scenario,
    /// Number of nodes.
    pub nodes: usize,
    /// Length of the chaos phase, in microseconds.
    pub chaos: u64,
    /// After the heal, every message to a live authorized recipient must
    /// arrive within this bound (microseconds).
    pub heal_bound: u64,
    /// Fault level.
    pub faults: FaultLevel,
    /// One-way link latency range, microseconds.
    pub latency: (u64, u64),
    /// Extra random delay per chunk, microseconds (order is kept).
    pub jitter: u64,
    /// Bytes per second per link direction (0: unlimited).
    pub bandwidth: u64,
    /// Largest chunk the transport delivers at once.
    pub max_chunk: usize,
    /// Largest random padding of a message (its size is 16 to 16 + this).
    pub msg_extra: usize,
    /// Per-node configuration.
    pub node: Vec<NodeOptions>,
    /// The authorized pairs.
    pub edges: Vec<Edge>,
    /// Least random padding of a message: mail through a mailbox carries
    /// at least 16 random bytes, so that finding its plaintext in the
    /// mailbox's store means something.
    pub msg_min: usize,
    /// A mailbox and the pairs that meet only through it, if the seed drew
    /// one.
    pub mailbox: Option<MailboxPlan>,
}

/// A mailbox in the run (issue 18): node `node` runs with
/// `Config::mailbox` and holds each pair's mail while its recipient is
/// away. A pair's sender and recipient take turns being online and are
/// never up at the same time, so everything between them goes through the
/// mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxPlan {
    /// The mailbox.
    pub node: usize,
    /// The pairs whose mail it carries.
    pub pairs: Vec<MailPair>,
}

/// A sender and a recipient that only ever meet through the mailbox: the
/// recipient authorizes the sender and names the mailbox
/// (`Node::add_mailbox`); the sender authorizes the recipient and routes to
/// the mailbox (`Node::add_route`); both dial each other, in vain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MailPair {
    /// The sender.
    pub sender: usize,
    /// The recipient.
    pub recipient: usize,
}

impl MailboxPlan {
    /// The pair `a` and `b` form, in either order.
    pub fn pair(&self, a: usize, b: usize) -> Option<MailPair> {
        self.pairs
            .iter()
            .copied()
            .find(|p| (p.sender == a && p.recipient == b) || (p.sender == b && p.recipient == a))
    }

    /// Whether `node` is a pair's sender or recipient.
    pub fn in_pair(&self, node: usize) -> bool {
        self.pairs
            .iter()
            .any(|p| p.sender == node || p.recipient == node)
    }
}

impl Options {
    /// Whether `to` authorizes `from` and reads everything it sends: an
    /// edge, or a pair that meets through the mailbox.
    pub fn authorized(&self, from: usize, to: usize) -> bool {
        self.edge(from, to).is_some() || self.mail_pair(from, to).is_some()
    }

    /// The mailbox pair `a` and `b` form, in either order.
    pub fn mail_pair(&self, a: usize, b: usize) -> Option<MailPair> {
        self.mailbox.as_ref().and_then(|m| m.pair(a, b))
    }

    /// Whether `a` and `b` form an authorized pair.
    pub fn edge(&self, a: usize, b: usize) -> Option<&Edge> {
        self.edges
            .iter()
            .find(|e| (e.dialer == a && e.listener == b) || (e.dialer == b && e.listener == a))
    }

    /// Whether node `i` dials `j` (as the edge's dialer, or both dial).
    pub fn dials(&self, i: usize, j: usize) -> bool {
        self.edge(i, j)
            .is_some_and(|e| e.dialer == i || (e.both && e.listener == i))
    }

    /// The one-line summary printed at the start of a run.
    pub fn summary(&self) -> String {
        let sparse = self.node.iter().filter(|n| n.sparse).count();
        let mailbox = match &self.mailbox {
            Some(m) => {
                let pairs: Vec<String> = m
                    .pairs
                    .iter()
                    .map(|p| format!("n{}->n{}", p.sender, p.recipient))
                    .collect();
                format!(" mailbox=n{} mail-pairs={}", m.node, pairs.join(","))
            }
            None => String::new(),
        };
        format!(
            "scenario={} nodes={} edges={} sparse-readers={} chaos={}s heal-bound={}s faults={} latency={}..{}ms jitter={}ms bandwidth={} max-chunk={} msg-size={}..{}{}",
            self.scenario,
            self.nodes,
            self.edges.len(),
            sparse,
            self.chaos / SEC,
            self.heal_bound / SEC,
            self.faults,
            self.latency.0 / MS,
            self.latency.1 / MS,
            self.jitter / MS,
            if self.bandwidth == 0 {
                "unlimited".to_string()
            } else {
                format!("{}B/s", self.bandwidth)
            },
            self.max_chunk,
            16 + self.msg_min,
            16 + self.msg_extra,
            mailbox,
        )
    }
}

/// A workload operation or a fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `from` sends `count` messages to `to` (one `send`, or a batch).
    Send {
        /// Sender.
        from: usize,
        /// Recipient.
        to: usize,
        /// How many.
        count: u32,
        /// Not to be delivered before this long after the send, by the
        /// sender's clock (microseconds; 0: at once).
        delay: u64,
        /// Expires this long after the send (microseconds; 0: never).
        expire: u64,
    },
    /// `node`'s consumer reads up to `limit` unread messages and archives
    /// (`archive`%) or clears (`clear`%) each, the rest left unread.
    Read {
        /// Reader.
        node: usize,
        /// Most messages read.
        limit: u32,
        /// Percent archived.
        archive: u8,
        /// Percent cleared.
        clear: u8,
        /// Seed of the per-message choices.
        seed: u64,
    },
    /// A worker at `node` takes up to `max` unread messages, each with a
    /// lease of `lease`; then, for each, it archives it (`ok`%), releases
    /// it as failed (`fail`%), or drops it (the rest: a crash mid-job, or,
    /// for half of those, a pause that ends after the lease lapsed, when it
    /// archives late).
    Work {
        /// The worker's node.
        node: usize,
        /// Most messages taken.
        max: u32,
        /// Lease time (microseconds).
        lease: u64,
        /// Percent archived.
        ok: u8,
        /// Percent released.
        fail: u8,
        /// Seed of the per-message choices.
        seed: u64,
    },
    /// Sparse reader `node` asks for `count` random messages of `from`'s feed
    /// with `Node::get`.
    Get {
        /// Reader.
        node: usize,
        /// Sender.
        from: usize,
        /// How many blocks.
        count: u32,
        /// Seed of the choice of blocks.
        seed: u64,
    },
    /// `node` revokes `peer`, and authorizes it again after `for_`.
    RemovePeer {
        /// The node revoking.
        node: usize,
        /// The peer revoked.
        peer: usize,
        /// For how long (microseconds).
        for_: u64,
    },
    /// `from` dials `to`, which never authorized it, and sends it a message,
    /// for `for_`.
    Intrude {
        /// The intruder.
        from: usize,
        /// Its target.
        to: usize,
        /// How long it keeps dialing.
        for_: u64,
    },
    /// Traffic from `a` to `b` (and back unless `oneway`) is lost for `for_`.
    Partition {
        /// One side.
        a: usize,
        /// The other side.
        b: usize,
        /// Only `a` to `b` is cut.
        oneway: bool,
        /// For how long.
        for_: u64,
    },
    /// `node` can reach nobody, and nobody it, for `for_`.
    Isolate {
        /// The node.
        node: usize,
        /// For how long.
        for_: u64,
    },
    /// The link between `a` and `b` goes down and up `times` times, `period`
    /// each.
    Flap {
        /// One side.
        a: usize,
        /// The other side.
        b: usize,
        /// Half period.
        period: u64,
        /// Down/up cycles.
        times: u32,
    },
    /// A connection (chosen by `pick` among the open ones) is reset: each
    /// direction delivers a prefix of what is in flight, cut mid-frame, then
    /// both ends see the transport close.
    Reset {
        /// Which connection.
        pick: u64,
    },
    /// Every open connection is reset at once.
    ResetAll,
    /// One direction of a connection stops moving for `for_`.
    Stall {
        /// Which connection and direction.
        pick: u64,
        /// For how long.
        for_: u64,
    },
    /// One byte on one connection is flipped on the wire.
    Corrupt {
        /// Which connection, direction and byte.
        pick: u64,
    },
    /// `node` crashes (uncommitted work lost) and restarts after `down`.
    /// `silent`: its peers see no close (a machine crash), only silence.
    Crash {
        /// The node.
        node: usize,
        /// Downtime.
        down: u64,
        /// Whether peers see the transport close.
        silent: bool,
    },
    /// `node` stops (no input, no timers, no application) for `for_`.
    Pause {
        /// The node.
        node: usize,
        /// For how long.
        for_: u64,
    },
    /// The next `n` commits of `node`'s store fail.
    FailCommits {
        /// The node.
        node: usize,
        /// How many.
        n: u32,
    },
    /// `node`'s disk fills up for `for_`: its store takes no commit that
    /// grows it (`MemStore::set_capacity`), then space returns. Sends,
    /// archives and downloads fail with a "full" error meanwhile; reads
    /// work, and everything resumes after.
    DiskFull {
        /// The node.
        node: usize,
        /// For how long.
        for_: u64,
    },
    /// `node`'s clock (the `Instant` every call passes it) jumps by `by`
    /// microseconds: forward (a suspended machine waking, hours later) or
    /// back (a clock stepped back; clamped at the clock's origin). The
    /// core must neither panic nor spin, and delivery must still complete.
    ClockJump {
        /// The node.
        node: usize,
        /// How far, forward if positive.
        by: i64,
    },
    /// `node` backs its data directory up (a copy, restored by
    /// [`Op::Restore`]).
    Backup {
        /// The node.
        node: usize,
    },
    /// `node` restarts from its last backup and writes on: a hostile (or
    /// careless) author that signs a second history of its feeds over the
    /// first. Its peers must catch the fork, keep what they verified, and go
    /// on with everyone else.
    Restore {
        /// The node.
        node: usize,
    },
    /// `node` broadcasts `events` events of `size` bytes each in one batch:
    /// a feed far larger than its peers will hold of it.
    Flood {
        /// The node.
        node: usize,
        /// How many events.
        events: u32,
        /// Bytes of each.
        size: u32,
    },
    /// `node`'s owner takes it offline (uncommitted work lost, as in a
    /// crash) and brings it back after `for_`: how a mailbox pair's sender
    /// and recipient take turns. Workload, not a fault.
    Offline {
        /// The node.
        node: usize,
        /// How long it stays offline.
        for_: u64,
        /// Whether its peers see no close (the network went first), only
        /// silence.
        silent: bool,
    },
    /// The mailbox lies about one block of `from`'s feed to `to` that it
    /// holds (chosen by `pick`): it forges the block's bytes, rewriting the
    /// leaf hash beside them so that its own integrity check passes, or
    /// drops them. The recipient must never deliver the forgery, and the
    /// sender must never see the block acknowledged unless the recipient
    /// already had it.
    Tamper {
        /// The mailbox.
        mailbox: usize,
        /// The feed's author.
        from: usize,
        /// Its recipient.
        to: usize,
        /// Drop the bytes instead of forging them.
        drop: bool,
        /// Which held block.
        pick: u64,
    },
    /// Test-only sabotage, never generated: writes the plaintext of the
    /// last message sent through the mailbox into the mailbox's store,
    /// which the `plaintext-at-mailbox` oracle must report.
    Leak {
        /// The mailbox.
        node: usize,
    },
    /// Test-only sabotage, never generated: destroys the stored bytes of
    /// one received message at `node` behind the core's back, which the
    /// oracles must report.
    Sabotage {
        /// The node.
        node: usize,
    },
}

impl Op {
    /// Whether the op is a fault (as opposed to workload).
    pub fn is_fault(&self) -> bool {
        !matches!(
            self,
            Op::Send { .. }
                | Op::Read { .. }
                | Op::Work { .. }
                | Op::Get { .. }
                | Op::RemovePeer { .. }
                | Op::Intrude { .. }
                | Op::Offline { .. }
        )
    }
}

fn secs(us: u64) -> String {
    format!("{}.{:03}s", us / SEC, (us % SEC) / MS)
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Send {
                from,
                to,
                count,
                delay,
                expire,
            } => {
                write!(f, "send n{from} -> n{to} x{count}")?;
                if *delay > 0 {
                    write!(f, " delay={}", secs(*delay))?;
                }
                if *expire > 0 {
                    write!(f, " expire={}", secs(*expire))?;
                }
                Ok(())
            }
            Op::Read {
                node,
                limit,
                archive,
                clear,
                seed,
            } => write!(
                f,
                "read n{node} limit={limit} archive={archive}% clear={clear}% seed={seed}"
            ),
            Op::Work {
                node,
                max,
                lease,
                ok,
                fail,
                seed,
            } => write!(
                f,
                "work n{node} max={max} lease={} ok={ok}% fail={fail}% seed={seed}",
                secs(*lease)
            ),
            Op::Get {
                node,
                from,
                count,
                seed,
            } => write!(f, "get n{node} <- n{from} x{count} seed={seed}"),
            Op::RemovePeer { node, peer, for_ } => {
                write!(f, "remove-peer n{node} n{peer} for {}", secs(*for_))
            }
            Op::Intrude { from, to, for_ } => {
                write!(f, "intrude n{from} -> n{to} for {}", secs(*for_))
            }
            Op::Partition { a, b, oneway, for_ } => write!(
                f,
                "partition n{a} {} n{b} for {}",
                if *oneway { "-/->" } else { "<-/->" },
                secs(*for_)
            ),
            Op::Isolate { node, for_ } => write!(f, "isolate n{node} for {}", secs(*for_)),
            Op::Flap {
                a,
                b,
                period,
                times,
            } => write!(f, "flap n{a} <-> n{b} period {} x{times}", secs(*period)),
            Op::Reset { pick } => write!(f, "reset link pick={pick}"),
            Op::ResetAll => f.write_str("reset all links"),
            Op::Stall { pick, for_ } => write!(f, "stall link pick={pick} for {}", secs(*for_)),
            Op::Corrupt { pick } => write!(f, "corrupt link pick={pick}"),
            Op::Crash { node, down, silent } => write!(
                f,
                "crash n{node} down {}{}",
                secs(*down),
                if *silent { " silent" } else { "" }
            ),
            Op::Pause { node, for_ } => write!(f, "pause n{node} for {}", secs(*for_)),
            Op::FailCommits { node, n } => write!(f, "fail-commits n{node} x{n}"),
            Op::DiskFull { node, for_ } => write!(f, "disk-full n{node} for {}", secs(*for_)),
            Op::ClockJump { node, by } => write!(
                f,
                "clock n{node} jumps {}{}",
                if *by < 0 { "back " } else { "forward " },
                secs(by.unsigned_abs())
            ),
            Op::Sabotage { node } => write!(f, "sabotage n{node}"),
            Op::Offline { node, for_, silent } => write!(
                f,
                "offline n{node} for {}{}",
                secs(*for_),
                if *silent { " silent" } else { "" }
            ),
            Op::Tamper {
                mailbox,
                from,
                to,
                drop,
                pick,
            } => write!(
                f,
                "tamper n{mailbox}: {} a block of n{from} -> n{to} pick={pick}",
                if *drop { "drop" } else { "forge" }
            ),
            Op::Leak { node } => write!(f, "leak plaintext into n{node}'s store"),
            Op::Backup { node } => write!(f, "backup n{node}"),
            Op::Flood { node, events, size } => {
                write!(f, "flood n{node} x{events} of {size} bytes")
            }
            Op::Restore { node } => write!(f, "restore n{node} from its backup"),
        }
    }
}

/// An operation at a point of virtual time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimedOp {
    /// When, in microseconds from the start.
    pub at: u64,
    /// What.
    pub op: Op,
}

/// A whole run: options and timed operations, from one seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The seed it came from (also seeds the network's randomness).
    pub seed: u64,
    /// The options.
    pub options: Options,
    /// Operations, sorted by time.
    pub ops: Vec<TimedOp>,
}

impl Plan {
    /// The plan as text: options, edges, then one line per operation.
    pub fn render(&self) -> String {
        let mut s = format!("plan for seed {}: {}\n", self.seed, self.options.summary());
        for (i, n) in self.options.node.iter().enumerate() {
            s += &format!(
                "  n{i}: prefetch={:?}{} request-blocks={} inflight={} data-bytes={} backoff={}..{}ms prune={} clock=+{}\n",
                n.prefetch,
                if n.sparse { " (sparse reader)" } else { "" },
                n.max_request_blocks,
                n.max_inflight,
                n.max_data_bytes,
                n.backoff_base_ms,
                n.backoff_cap_ms,
                n.prune_acked,
                secs(n.clock_skew)
            );
        }
        for e in &self.options.edges {
            s += &format!(
                "  edge n{} {} n{}\n",
                e.dialer,
                if e.both { "<=>" } else { "=>" },
                e.listener
            );
        }
        if let Some(m) = &self.options.mailbox {
            s += &format!("  n{} is a mailbox\n", m.node);
            for p in &m.pairs {
                s += &format!(
                    "  mail n{} => n{} through n{} alone\n",
                    p.sender, p.recipient, m.node
                );
            }
        }
        for op in &self.ops {
            s += &format!("  at {}: {}\n", secs(op.at), op.op);
        }
        s
    }
}

/// A small helper over the seeded generator.
pub(crate) struct Dice(pub SeededRng);

impl Dice {
    pub fn new(seed: u64, stream: &str) -> Self {
        let mut h = blake3::Hasher::new_derive_key("peermq-sim v1 dice");
        h.update(&seed.to_le_bytes());
        h.update(stream.as_bytes());
        Dice(SeededRng::from_seed(*h.finalize().as_bytes()))
    }

    pub fn u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.u64() % (hi - lo + 1)
    }

    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.u64() % n as u64) as usize
        }
    }

    /// True with probability `pct`%.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.u64() % 100 < pct
    }

    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
}

/// Generates the plan of `seed` under `params`.
pub fn generate(seed: u64, params: &Params) -> Plan {
    let mut d = Dice::new(seed, "plan");
    let scenario = params.scenario.unwrap_or(Scenario::Mix);
    let faults = params.faults.unwrap_or_else(|| match scenario {
        Scenario::Mix => d.pick(&[
            FaultLevel::None,
            FaultLevel::Light,
            FaultLevel::Light,
            FaultLevel::Medium,
            FaultLevel::Medium,
            FaultLevel::Heavy,
            FaultLevel::Heavy,
        ]),
        Scenario::ReconnectStorm => FaultLevel::Heavy,
        Scenario::SparseDownload | Scenario::Mesh => FaultLevel::Light,
    });
    let nodes = params
        .nodes
        .unwrap_or(match scenario {
            Scenario::Mix => d.range(3, 8) as usize,
            Scenario::ReconnectStorm => 10,
            Scenario::SparseDownload => 2,
            Scenario::Mesh => 100,
        })
        .max(2);
    let nodes = match scenario {
        Scenario::Mesh => nodes.max(100),
        Scenario::SparseDownload => 2,
        _ => nodes,
    };
    let chaos = params.duration.map(|s| s * SEC).unwrap_or(match scenario {
        Scenario::Mix => d.range(15, 45) * SEC,
        Scenario::ReconnectStorm => 40 * SEC,
        Scenario::SparseDownload => 30 * SEC,
        Scenario::Mesh => 20 * SEC,
    });
    let lat_lo = d.range(1, 20) * MS;
    let latency = (lat_lo, lat_lo + d.range(0, 60) * MS);
    let jitter = d.range(0, 15) * MS;
    let bandwidth = if d.chance(50) {
        0
    } else {
        d.pick(&[256 << 10, 1 << 20, 10 << 20])
    };
    let max_chunk = if d.chance(15) {
        d.range(7, 64) as usize
    } else {
        d.range(256, 65_536) as usize
    };
    let msg_extra = match scenario {
        Scenario::SparseDownload => 48,
        _ => d.pick(&[0, 100, 1000, 5000]),
    };
    // The mailbox draws from a stream of its own, so a seed that draws none
    // keeps the plan it had before mailboxes existed.
    let mut md = Dice::new(seed, "mailbox");
    let mail_pairs = mail_pairs(&mut md, scenario, nodes);
    // The mailbox and its pairs are the last nodes, apart from the random
    // graph and its faults.
    let nodes = nodes - mail_nodes(mail_pairs);
    let mut node: Vec<NodeOptions> = (0..nodes).map(|_| random_node(&mut d)).collect();
    let mut edges = Vec::new();
    match scenario {
        Scenario::Mix => {
            // A sparse reader is a pure consumer, so its bytes are easy to
            // account for.
            for n in node.iter_mut() {
                if d.chance(12) {
                    n.sparse = true;
                    n.prefetch = Prefetch::Window(0);
                }
            }
            if node.iter().all(|n| n.sparse) {
                node[0].sparse = false;
                node[0].prefetch = Prefetch::All;
            }
            let density = d.range(30, 100);
            for a in 0..nodes {
                for b in a + 1..nodes {
                    if node[a].sparse && node[b].sparse {
                        continue;
                    }
                    if d.chance(density) {
                        edges.push(random_edge(&mut d, a, b));
                    }
                }
            }
            // Nobody is left alone.
            for a in 0..nodes {
                if !edges.iter().any(|e| e.dialer == a || e.listener == a) {
                    let b = (0..nodes).find(|&b| b != a && !node[b].sparse).unwrap_or(0);
                    if b != a {
                        edges.push(random_edge(&mut d, a, b));
                    }
                }
            }
        }
        Scenario::ReconnectStorm => {
            for a in 0..nodes {
                for b in a + 1..nodes {
                    edges.push(Edge {
                        dialer: a,
                        listener: b,
                        both: true,
                    });
                }
            }
        }
        Scenario::SparseDownload => {
            node[1].sparse = true;
            node[1].prefetch = Prefetch::Window(0);
            // Random single-block gets cannot be merged into ranges: keep
            // the core's default pipeline depth so they do not go one per
            // round trip.
            node[1].max_inflight = 32;
            node[0].prune_acked = false;
            edges.push(Edge {
                dialer: 1,
                listener: 0,
                both: false,
            });
        }
        Scenario::Mesh => {
            // A ring keeps it connected; chords make it a mesh.
            for a in 0..nodes {
                edges.push(random_edge(&mut d, a, (a + 1) % nodes));
            }
            for a in 0..nodes {
                for _ in 0..2 {
                    let b = d.below(nodes);
                    let known = edges.iter().any(|e| {
                        (e.dialer == a && e.listener == b) || (e.dialer == b && e.listener == a)
                    });
                    if b != a && !known {
                        edges.push(random_edge(&mut d, a, b));
                    }
                }
            }
        }
    }
    edges.sort();
    let mut options = Options {
        scenario,
        nodes,
        chaos,
        heal_bound: 0,
        faults,
        latency,
        jitter,
        bandwidth,
        max_chunk,
        msg_extra,
        node,
        edges,
        msg_min: 0,
        mailbox: None,
    };
    let mut ops = Vec::new();
    workload(&mut d, &options, &mut ops);
    fault_ops(&mut d, &options, &mut ops);
    // From a stream of their own, so that a seed that draws none keeps
    // the plan it had before they existed.
    storage_and_clock_faults(&mut Dice::new(seed, "disk and clock"), &options, &mut ops);
    let last_turns = match mail_pairs {
        0 => 0,
        n => add_mailbox(&mut md, &mut options, &mut ops, n),
    };
    ops.sort_by_key(|o| o.at);
    options.heal_bound = heal_bound(&options, &ops).max(last_turns);
    if let Some(m) = options.mailbox.clone() {
        // A recipient's last window ends before the run does; from then on
        // it stays offline, past the end (the final checks open its store).
        for op in ops.iter_mut() {
            if let Op::Offline { node, for_, .. } = &mut op.op {
                if *for_ == u64::MAX && m.in_pair(*node) {
                    *for_ = (options.chaos + options.heal_bound + SEC).saturating_sub(op.at);
                }
            }
        }
    }
    Plan { seed, options, ops }
}

/// One node's random configuration.
fn random_node(d: &mut Dice) -> NodeOptions {
    NodeOptions {
        prefetch: if d.chance(60) {
            Prefetch::All
        } else {
            Prefetch::Window(d.range(1, 64))
        },
        sparse: false,
        max_request_blocks: d.pick(&[1, 3, 16, 64, 1024]),
        max_inflight: d.range(1, 8) as usize,
        max_data_bytes: d.pick(&[256, 4096, 65_536, 256 << 10]),
        backoff_base_ms: d.range(50, 500),
        backoff_cap_ms: d.range(2, 20) * 1000,
        prune_acked: d.chance(30),
        clock_skew: if d.chance(50) {
            d.range(0, 2_000) * MS
        } else {
            0
        },
    }
}

/// Nodes a mailbox with `pairs` pairs takes: itself, a sender and a
/// recipient per pair.
fn mail_nodes(pairs: usize) -> usize {
    if pairs == 0 {
        0
    } else {
        1 + 2 * pairs
    }
}

/// How many pairs meet through a mailbox: about one mix run in four has
/// one, if `nodes` leaves at least two for the random graph.
fn mail_pairs(md: &mut Dice, scenario: Scenario, nodes: usize) -> usize {
    if scenario != Scenario::Mix || !md.chance(35) {
        return 0;
    }
    let pairs = if md.chance(40) { 2 } else { 1 };
    (1..=pairs)
        .rev()
        .find(|&p| nodes >= 2 + mail_nodes(p))
        .unwrap_or(0)
}

/// A stretch of time one node of a mailbox pair is online.
#[derive(Clone, Copy, Debug)]
struct Window {
    node: usize,
    start: u64,
    /// `u64::MAX`: online to the end of the run.
    end: u64,
}

/// A pause between one of a pair leaving and the other arriving.
fn gap(md: &mut Dice) -> u64 {
    md.range(100, 1_000) * MS
}

/// A pair's turns in the chaos phase: windows of 2 to 8 s, taken in turn,
/// whoever goes first drawn at random, ending with the recipient's (which
/// names the mailbox before the last turns begin). Returns them and when
/// the sender's push, the first of the last turns, begins.
fn chaos_turns(md: &mut Dice, chaos: u64, p: MailPair) -> (Vec<Window>, u64) {
    let other = |n: usize| if n == p.sender { p.recipient } else { p.sender };
    let mut who = if md.chance(50) { p.sender } else { p.recipient };
    let mut t = 0;
    let mut out = Vec::new();
    loop {
        let len = md.range(2_000, 8_000) * MS;
        if t + len > chaos {
            break;
        }
        out.push(Window {
            node: who,
            start: t,
            end: t + len,
        });
        t += len + gap(md);
        who = other(who);
    }
    if out.last().map(|w| w.node) != Some(p.recipient) {
        // The sender had the last window, or there was none: the recipient
        // takes one more.
        let len = md.range(2_000, 8_000) * MS;
        out.push(Window {
            node: p.recipient,
            start: t,
            end: t + len,
        });
        t += len + gap(md);
    }
    (out, t)
}

/// Appends the mailbox and `pairs` pairs to the plan's nodes, with their
/// comings and goings, sends, reads, and the mailbox's lies. Returns how
/// long after the chaos the run must last for the pairs' last turns.
fn add_mailbox(md: &mut Dice, o: &mut Options, ops: &mut Vec<TimedOp>, pairs: usize) -> u64 {
    let mailbox = o.nodes;
    let plan = MailboxPlan {
        node: mailbox,
        pairs: (0..pairs)
            .map(|k| MailPair {
                sender: mailbox + 1 + 2 * k,
                recipient: mailbox + 2 + 2 * k,
            })
            .collect(),
    };
    o.nodes += mail_nodes(pairs);
    for _ in 0..mail_nodes(pairs) {
        let n = random_node(md);
        o.node.push(n);
    }
    // At least 16 random bytes in every message, so that each plaintext is
    // distinctive.
    o.msg_min = 16;
    o.msg_extra = o.msg_extra.max(64);
    let faults = o.faults != FaultLevel::None;
    let block = 16 + o.msg_extra as u64 + 200;
    let mut longest = 0;
    // Each recipient's last window before the sender's push: there it
    // names the mailbox, if it never could before (the mailbox refuses
    // mail for a recipient it has not heard name it), so the mailbox
    // neither withholds nor goes down then.
    let mut naming = Vec::new();
    // The recipients' other windows in the chaos phase.
    let mut collecting = Vec::new();
    for &p in &plan.pairs {
        let (mut windows, push) = chaos_turns(md, o.chaos, p);
        let last_r = windows.iter().rposition(|w| w.node == p.recipient);
        naming.extend(last_r.map(|k| windows[k]));
        // Sends, while the sender is online in the chaos phase: after it,
        // the pair only settles up.
        let mut sending: Vec<(u64, u64)> = windows
            .iter()
            .filter(|w| w.node == p.sender)
            .map(|w| (w.start, w.end.min(o.chaos)))
            .collect();
        sending.push((push, o.chaos));
        let mut bytes = 0;
        let big = md.pick(&[1, 5, 50]);
        let rate = md.range(1, 3);
        for (start, end) in sending.into_iter().filter(|(s, e)| s < e) {
            for _ in 0..((end - start) * rate / SEC).max(1) {
                let count = if md.chance(80) {
                    1
                } else {
                    md.range(2, big) as u32
                };
                let delay = if md.chance(15) {
                    md.range(100, 5_000) * MS
                } else {
                    0
                };
                let expire = if md.chance(15) {
                    delay + md.range(500, 30_000) * MS
                } else {
                    0
                };
                bytes += u64::from(count) * block;
                ops.push(TimedOp {
                    at: md.range(start, end - 1),
                    op: Op::Send {
                        from: p.sender,
                        to: p.recipient,
                        count,
                        delay,
                        expire,
                    },
                });
            }
        }
        // The last turns: the sender pushes, the recipient collects, the
        // sender learns of delivery. Each has time for a connection and
        // the whole feed at the link's bandwidth, twice over, and for a
        // round trip per data message: a request is answered with one, of
        // at most the server's `max_data_bytes` (at least one block).
        let transfer = (2 * bytes * SEC).checked_div(o.bandwidth).unwrap_or(0);
        let blocks = bytes / block;
        let messages = [mailbox, p.sender]
            .iter()
            .map(|&n| blocks.min(bytes.div_ceil(o.node[n].max_data_bytes as u64)))
            .max()
            .unwrap_or(blocks);
        let round_trip = 2 * (o.latency.1 + o.jitter) + 10 * MS;
        let turn = 15 * SEC + transfer + messages * round_trip;
        // The push may begin in the chaos, where a fault can leave the
        // sender's connection to the mailbox dead or mute: it has time to
        // notice (idle timeout, keepalive and handshake timeout) and to
        // come back (two capped backoffs).
        let core = peermq::Config::default();
        let notice = core.idle_timeout + core.keepalive_interval + core.handshake_timeout;
        let cap = o.node[p.sender].backoff_cap_ms * MS;
        let recover = match push < o.chaos {
            true => u64::try_from(notice.as_micros()).unwrap_or(u64::MAX) + 2 * cap,
            false => 0,
        };
        let push_end = push.max(o.chaos) + turn + recover;
        let collect = push_end + gap(md);
        let ack = collect + turn + gap(md);
        windows.push(Window {
            node: p.sender,
            start: push,
            end: push_end,
        });
        windows.push(Window {
            node: p.recipient,
            start: collect,
            end: collect + turn,
        });
        windows.push(Window {
            node: p.sender,
            start: ack,
            end: u64::MAX,
        });
        longest = longest.max(ack + turn + 10 * SEC - o.chaos);
        // The recipient reads and archives at its own pace while online;
        // it never clears, so what it holds is what was delivered.
        let every = md.range(100, 3000) * MS;
        let archive = md.range(40, 100) as u8;
        every_so_often(ops, md, every, o.chaos, |d| Op::Read {
            node: p.recipient,
            limit: d.range(1, 200) as u32,
            archive,
            clear: 0,
            seed: d.u64(),
        });
        // The comings and goings: whoever is not online first leaves at
        // once; each leaves at the end of its window until its next (the
        // recipient's last absence lasts past the end of the run).
        for node in [p.sender, p.recipient] {
            let mine: Vec<Window> = windows.iter().copied().filter(|w| w.node == node).collect();
            if let Some(first) = mine.first().filter(|w| w.start > 0) {
                ops.push(TimedOp {
                    at: 0,
                    op: Op::Offline {
                        node,
                        for_: first.start,
                        silent: false,
                    },
                });
            }
            for (k, w) in mine.iter().enumerate().filter(|(_, w)| w.end != u64::MAX) {
                let next = mine.get(k + 1).map_or(u64::MAX, |x| x.start);
                ops.push(TimedOp {
                    at: w.end,
                    op: Op::Offline {
                        node,
                        for_: if next == u64::MAX {
                            u64::MAX
                        } else {
                            next - w.end
                        },
                        silent: md.chance(30),
                    },
                });
            }
        }
        // The mailbox lies to this recipient: it withholds its mail for
        // one of its windows, or forges or drops a block it is about to
        // collect.
        let chaos_r: Vec<Window> = windows
            .iter()
            .enumerate()
            .filter(|&(k, w)| w.node == p.recipient && w.end <= o.chaos && Some(k) != last_r)
            .map(|(_, w)| *w)
            .collect();
        collecting.extend(chaos_r.iter().copied());
        if faults && !chaos_r.is_empty() && md.chance(30) {
            let w = md.pick(&chaos_r);
            ops.push(TimedOp {
                at: w.start,
                op: Op::Partition {
                    a: mailbox,
                    b: p.recipient,
                    oneway: true,
                    for_: w.end - w.start,
                },
            });
        }
        if faults && !chaos_r.is_empty() && md.chance(20) {
            let w = md.pick(&chaos_r);
            ops.push(TimedOp {
                at: w.start.saturating_sub(MS),
                op: Op::Tamper {
                    mailbox,
                    from: p.sender,
                    to: p.recipient,
                    drop: md.chance(50),
                    pick: md.u64(),
                },
            });
        }
    }
    // The mailbox goes down for a moment now and then, but is up for the
    // last turns.
    // It is back a second before the first naming window opens, so that
    // the recipient's first dial finds it, and before any sender pushes
    // for the last time (a silent crash would leave the sender on a dead
    // connection until its idle timeout).
    let back_by = naming.iter().map(|w| w.start).min().unwrap_or(0);
    if faults && md.chance(40) && back_by > 2 * SEC {
        let down = md.range(100, 1_000) * MS;
        let latest = back_by - SEC - down;
        // Half the time just after a recipient came to collect, so that
        // its requests in flight die with the connection and must be
        // asked again.
        let starts: Vec<u64> = collecting
            .iter()
            .map(|w| w.start)
            .filter(|&t| t + 500 * MS <= latest)
            .collect();
        let at = if !starts.is_empty() && md.chance(50) {
            md.pick(&starts) + md.range(50, 500) * MS
        } else {
            md.range(0, latest)
        };
        ops.push(TimedOp {
            at,
            op: Op::Crash {
                node: mailbox,
                down,
                silent: md.chance(30),
            },
        });
    }
    o.mailbox = Some(plan);
    longest
}

fn random_edge(d: &mut Dice, a: usize, b: usize) -> Edge {
    let (dialer, listener) = if d.chance(50) { (a, b) } else { (b, a) };
    Edge {
        dialer,
        listener,
        both: d.chance(15),
    }
}

/// The liveness bound: time to notice dead links and redial at the slowest
/// backoff, plus time to move everything sent at the link's bandwidth.
/// Pushes `make`'s operation every `every` microseconds until `until`,
/// starting at a random offset within the first period.
fn every_so_often(
    ops: &mut Vec<TimedOp>,
    d: &mut Dice,
    every: u64,
    until: u64,
    mut make: impl FnMut(&mut Dice) -> Op,
) {
    let mut t = d.range(0, every);
    while t < until {
        let op = make(d);
        ops.push(TimedOp { at: t, op });
        t += every;
    }
}

fn heal_bound(o: &Options, ops: &[TimedOp]) -> u64 {
    let cap = o.node.iter().map(|n| n.backoff_cap_ms).max().unwrap_or(0) * MS;
    let mut bytes_per_pair = std::collections::BTreeMap::<(usize, usize), u64>::new();
    let block = 16 + o.msg_extra as u64 + 200;
    for op in ops {
        match op.op {
            // A sparse reader downloads only what it asks for.
            Op::Send {
                from, to, count, ..
            } if !o.node[to].sparse => {
                *bytes_per_pair.entry((from, to)).or_default() += u64::from(count) * block;
            }
            Op::Get {
                node, from, count, ..
            } => {
                *bytes_per_pair.entry((from, node)).or_default() +=
                    u64::from(count) * (block + 2048);
            }
            // Each neighbour fetches the flood up to its quota, overshot by
            // what its requests in flight bring.
            Op::Flood { node, events, size } => {
                let all = u64::from(events) * u64::from(size + 200);
                for e in o
                    .edges
                    .iter()
                    .filter(|e| e.dialer == node || e.listener == node)
                {
                    let other = if e.dialer == node {
                        e.listener
                    } else {
                        e.dialer
                    };
                    let n = &o.node[other];
                    let overshoot =
                        n.max_inflight as u64 * n.max_request_blocks * u64::from(size + 200);
                    *bytes_per_pair.entry((node, other)).or_default() +=
                        all.min(AUTHOR_QUOTA + overshoot);
                }
            }
            _ => {}
        }
    }
    let most = bytes_per_pair.values().copied().max().unwrap_or(0);
    // Bandwidth 0 means unlimited: no transfer time.
    let transfer = (most * SEC).checked_div(o.bandwidth).unwrap_or(0);
    // Idle timeout (20 s) plus a handshake timeout (10 s) to drop a dead
    // link, two capped backoffs to get back, and a generous margin.
    30 * SEC + 2 * cap + 30 * SEC + 2 * transfer
}

fn workload(d: &mut Dice, o: &Options, ops: &mut Vec<TimedOp>) {
    let n = o.nodes;
    let senders: Vec<(usize, usize)> = o
        .edges
        .iter()
        .flat_map(|e| [(e.dialer, e.listener), (e.listener, e.dialer)])
        .filter(|&(from, _)| !o.node[from].sparse)
        .collect();
    match o.scenario {
        Scenario::SparseDownload => {
            // The writer fills the feed in batches before the reader starts.
            let total: u32 = 1_000_000;
            let batch: u32 = 20_000;
            for k in 0..total / batch {
                ops.push(TimedOp {
                    at: u64::from(k) * 10 * MS,
                    op: Op::Send {
                        from: 0,
                        to: 1,
                        count: batch,
                        delay: 0,
                        expire: 0,
                    },
                });
            }
            // Then it reads 1% of it, in bursts.
            let reads: u32 = 10_000;
            let burst: u32 = 100;
            let start = 2 * SEC;
            let span = o.chaos.saturating_sub(start).max(SEC);
            for k in 0..reads / burst {
                ops.push(TimedOp {
                    at: start + span * u64::from(k) / u64::from(reads / burst),
                    op: Op::Get {
                        node: 1,
                        from: 0,
                        count: burst,
                        seed: d.u64(),
                    },
                });
            }
            return;
        }
        Scenario::Mix | Scenario::ReconnectStorm | Scenario::Mesh => {}
    }
    // Sends: a rate per run, each to a random authorized peer.
    let per_sec = match o.scenario {
        Scenario::Mesh => 20,
        _ => d.range(1, 4 * n as u64),
    };
    let count = o.chaos / SEC * per_sec;
    let big = d.pick(&[1, 5, 50]);
    for _ in 0..count {
        if senders.is_empty() {
            break;
        }
        let (from, to) = d.pick(&senders);
        let c = if d.chance(80) {
            1
        } else {
            d.range(2, big) as u32
        };
        // Some messages carry delivery times: a short delay (due well
        // before the end), an expiry that may pass before a reader gets
        // there, or both.
        let delay = if d.chance(15) {
            d.range(100, 5_000) * MS
        } else {
            0
        };
        let expire = if d.chance(15) {
            delay + d.range(500, 30_000) * MS
        } else {
            0
        };
        ops.push(TimedOp {
            at: d.range(0, o.chaos),
            op: Op::Send {
                from,
                to,
                count: c,
                delay,
                expire,
            },
        });
    }
    // Readers, each at its own pace.
    for node in 0..n {
        if o.node[node].sparse {
            let froms: Vec<usize> = senders
                .iter()
                .filter(|&&(_, to)| to == node)
                .map(|&(f, _)| f)
                .collect();
            if froms.is_empty() {
                continue;
            }
            let every = d.range(100, 2000) * MS;
            every_so_often(ops, d, every, o.chaos, |d| Op::Get {
                node,
                from: d.pick(&froms),
                count: d.range(1, 5) as u32,
                seed: d.u64(),
            });
            continue;
        }
        if d.chance(40) {
            // A worker: takes with leases, fails some jobs, crashes or
            // pauses mid-job.
            let every = d.range(100, 3000) * MS;
            let ok = d.range(40, 95) as u8;
            let fail = d.range(0, u64::from(100 - ok)) as u8;
            every_so_often(ops, d, every, o.chaos, |d| Op::Work {
                node,
                max: d.range(1, 50) as u32,
                lease: d.range(1, 10) * SEC,
                ok,
                fail,
                seed: d.u64(),
            });
            continue;
        }
        let every = d.range(100, 5000) * MS;
        let archive = d.range(40, 100) as u8;
        let clear = d.range(0, (100 - u64::from(archive)).min(20)) as u8;
        every_so_often(ops, d, every, o.chaos, |d| Op::Read {
            node,
            limit: d.range(1, 200) as u32,
            archive,
            clear,
            seed: d.u64(),
        });
    }
    if o.scenario == Scenario::Mesh || o.faults == FaultLevel::None {
        return;
    }
    // Authorization churn and intruders.
    for _ in 0..d.range(0, 3) {
        let e = d.pick(&o.edges);
        let (node, peer) = if d.chance(50) {
            (e.dialer, e.listener)
        } else {
            (e.listener, e.dialer)
        };
        ops.push(TimedOp {
            at: d.range(0, o.chaos),
            op: Op::RemovePeer {
                node,
                peer,
                for_: d.range(1, 15) * SEC,
            },
        });
    }
    for _ in 0..d.range(0, 2) {
        let from = d.below(n);
        let to = d.below(n);
        if from != to && o.edge(from, to).is_none() && !o.node[from].sparse {
            ops.push(TimedOp {
                at: d.range(0, o.chaos),
                op: Op::Intrude {
                    from,
                    to,
                    for_: d.range(1, 20) * SEC,
                },
            });
        }
    }
}

/// A full disk on one node for a while, and clock jumps: forward by hours,
/// then back by minutes, on one node; in the mix with faults, each in
/// about one run in four.
fn storage_and_clock_faults(d: &mut Dice, o: &Options, ops: &mut Vec<TimedOp>) {
    if o.scenario != Scenario::Mix || o.faults == FaultLevel::None || o.chaos < 2 * SEC {
        return;
    }
    if d.chance(25) {
        let at = d.range(0, o.chaos - SEC);
        ops.push(TimedOp {
            at,
            op: Op::DiskFull {
                node: d.below(o.nodes),
                for_: d.range(500, 15_000) * MS,
            },
        });
    }
    if d.chance(25) {
        let node = d.below(o.nodes);
        let forward = d.range(0, o.chaos - SEC);
        let back = d.range(forward, o.chaos);
        let hours = d.range(1, 6) as i64 * 3600 * SEC as i64;
        let minutes = d.range(1, 20) as i64 * 60 * SEC as i64;
        ops.push(TimedOp {
            at: forward,
            op: Op::ClockJump { node, by: hours },
        });
        ops.push(TimedOp {
            at: back,
            op: Op::ClockJump { node, by: -minutes },
        });
        // And another node's clock steps back as far as it can.
        let other = d.below(o.nodes);
        ops.push(TimedOp {
            at: d.range(0, o.chaos),
            op: Op::ClockJump {
                node: other,
                by: -(d.range(1, 10) as i64 * 60 * SEC as i64),
            },
        });
    }
}

fn fault_ops(d: &mut Dice, o: &Options, ops: &mut Vec<TimedOp>) {
    let n = o.nodes;
    let count = o.faults.per_minute() * o.chaos / (60 * SEC).max(1)
        + u64::from(o.faults != FaultLevel::None);
    let node_faults = o.scenario != Scenario::SparseDownload;
    for _ in 0..count {
        let at = d.range(0, o.chaos);
        let e = d.pick(&o.edges);
        let op = match d.below(if node_faults { 12 } else { 6 }) {
            0 => Op::Reset { pick: d.u64() },
            1 => Op::Stall {
                pick: d.u64(),
                for_: d.range(100, 8000) * MS,
            },
            2 => Op::Corrupt { pick: d.u64() },
            3 => Op::Partition {
                a: e.dialer,
                b: e.listener,
                oneway: d.chance(50),
                for_: d.range(1, 30) * SEC,
            },
            4 => Op::Flap {
                a: e.dialer,
                b: e.listener,
                period: d.range(200, 5000) * MS,
                times: d.range(2, 6) as u32,
            },
            5 => Op::Reset { pick: d.u64() },
            6 => Op::Isolate {
                node: d.below(n),
                for_: d.range(1, 25) * SEC,
            },
            7 | 8 => Op::Crash {
                node: d.below(n),
                down: d.range(0, 15_000) * MS,
                silent: d.chance(30),
            },
            9 => Op::Pause {
                node: d.below(n),
                for_: d.range(100, 30_000) * MS,
            },
            10 => Op::FailCommits {
                node: d.below(n),
                n: d.range(1, 3) as u32,
            },
            _ => Op::Corrupt { pick: d.u64() },
        };
        ops.push(TimedOp { at, op });
    }
    // A rogue author: a node that restores an old backup and writes on,
    // forking its feeds. Drawn last, so the rest of a seed's plan is the
    // same with or without it.
    if o.scenario == Scenario::Mix && o.faults != FaultLevel::None && d.chance(30) {
        let writers: Vec<usize> = (0..n)
            .filter(|&i| {
                !o.node[i].sparse && o.edges.iter().any(|e| e.dialer == i || e.listener == i)
            })
            .collect();
        if !writers.is_empty() && o.chaos > 2 * SEC {
            let node = d.pick(&writers);
            let backup = d.range(0, o.chaos / 2);
            let restore = d.range(backup + SEC, o.chaos);
            ops.push(TimedOp {
                at: backup,
                op: Op::Backup { node },
            });
            ops.push(TimedOp {
                at: restore,
                op: Op::Restore { node },
            });
            // Its events cross every link its feed is relayed on, which a
            // sparse reader's byte budget would count: only without them.
            let sparse = o.node.iter().any(|x| x.sparse);
            let at = d.range(0, o.chaos);
            ops.extend((!sparse).then_some(TimedOp {
                at,
                op: Op::Flood {
                    node,
                    events: d.range(50, 400) as u32,
                    size: d.pick(&[256, 1024, 4096]),
                },
            }));
        }
    }
    if o.scenario == Scenario::ReconnectStorm {
        // Waves that take the whole network down at once.
        let mut t = 2 * SEC;
        while t < o.chaos {
            let op = match d.below(3) {
                0 => Op::ResetAll,
                1 => Op::Crash {
                    node: d.below(n),
                    down: d.range(0, 3000) * MS,
                    silent: false,
                },
                _ => Op::Isolate {
                    node: d.below(n),
                    for_: d.range(500, 5000) * MS,
                },
            };
            ops.push(TimedOp { at: t, op });
            t += d.range(1000, 5000) * MS;
        }
    }
}

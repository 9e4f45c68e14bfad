//! The executor: runs a [`Plan`] as a discrete-event simulation.
//!
//! One virtual clock, one event queue ordered by (time, insertion), and a
//! timer table fed by each node's `poll_timeout`. Links behave like TCP:
//! the bytes of one connection arrive in order, split into arbitrary chunks,
//! after latency, jitter and bandwidth delays. Nothing reads the wall clock
//! or OS randomness, and every map is ordered, so a plan always produces the
//! same trace.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use peermq::{
    Config, ConnId, Entropy, Event, FeedError, Instant, MailboxLimits, MemStore, Node, NodeError,
    Output, PeerId, StoreError,
};

use crate::oracle::{Failure, Oracle};
use crate::plan::{Dice, Op, Plan, MS, SEC};

mod checks;
mod faults;
mod mail;
mod network;
mod record;
mod times;
mod trace;
mod work;
mod workload;

use checks::Tally;
use network::Net;
use trace::Trace;

/// Microseconds of a duration of the core's default configuration, which
/// the nodes run with: the oracles' deadlines follow it, never a copy.
fn default_micros(pick: impl Fn(&Config) -> Duration) -> u64 {
    u64::try_from(pick(&Config::default()).as_micros()).unwrap_or(u64::MAX)
}

/// Keepalive interval the nodes use.
fn keepalive() -> u64 {
    default_micros(|c| c.keepalive_interval)
}

/// A corrupted connection must be closed by one of its ends within this:
/// the idle timeout, a keepalive interval, and 10 s of slack.
fn corruption_deadline() -> u64 {
    default_micros(|c| c.idle_timeout) + keepalive() + 10 * SEC
}

/// Events at one instant beyond which a run is declared stuck.
const LIVELOCK_EVENTS: u64 = 1_000_000;

/// Most `handle_timeout` calls one node may ask for in one simulated
/// second: every timer it keeps fires at most a few times a second, and
/// queued work is done in bounded steps. A node that asks for more spins
/// (a deadline it never clears, or a time that went backwards). Runs of
/// 300 seeds ask for under 200.
const SPIN_TIMEOUTS: u32 = 2_000;

/// What a run produced.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// BLAKE3 of the canonical text of every output of every node.
    pub trace: String,
    /// The first broken property, if any.
    pub failure: Option<Failure>,
    /// Simulated time, microseconds.
    pub sim_micros: u64,
    /// Sum over nodes of the simulated time each was up, microseconds.
    pub node_micros: u64,
    /// Messages durably sent.
    pub sent: u64,
    /// `Event::Message`s delivered.
    pub delivered: u64,
    /// Connections opened.
    pub connections: u64,
    /// Bytes put on the wire.
    pub wire_bytes: u64,
    /// Faults injected.
    pub faults: u64,
    /// Calls a node refused because its store was full (`Op::DiskFull`).
    pub store_full: u64,
    /// Bytes sparse readers received from the feeds' authors.
    pub sparse_bytes: u64,
    /// Blocks sparse readers asked for with `get`.
    pub sparse_blocks: u64,
    /// Forks caught (`Event::Forked`), by the rogue author's peers.
    pub forks: u64,
    /// Messages sent through the mailbox, by the pairs that meet only
    /// there.
    pub mail_sent: u64,
    /// Of those, how many their senders saw acknowledged at the end.
    pub mail_acked: u64,
    /// Refusals the mailbox's senders heard (`Event::MailboxRefused`).
    pub mail_refusals: u64,
    /// Blocks the mailbox forged or dropped before its recipient had them.
    pub mail_tampered: u64,
}

enum Chunk {
    Data(Vec<u8>),
    Fin,
}

#[derive(Default)]
struct Pipe {
    q: VecDeque<(u64, Chunk)>,
    /// Arrival time of the last chunk, so order is kept.
    last: u64,
    /// When the sender's side of the link is free again (bandwidth).
    busy: u64,
    /// Lost (partition) or closed: nothing more goes through.
    dead: bool,
    fin_sent: bool,
    cut_next: bool,
    corrupt_next: Option<u64>,
}

struct Link {
    /// (node, conn) of the dialer (side 0) and the listener (side 1).
    ends: [(usize, ConnId); 2],
    /// Whether each node still has its connection.
    open: [bool; 2],
    pipes: [Pipe; 2],
    latency: u64,
    /// When a corrupted byte was put on it.
    corrupted_at: Option<u64>,
    resetting: bool,
}

#[derive(Clone, Copy, Debug)]
enum Ev {
    Op(usize),
    Deliver { link: u64, dir: usize },
    DialFailed { node: usize, inc: u32, peer: usize },
    Restart { node: usize },
    Resume { node: usize },
    Block { a: usize, b: usize },
    Unblock { a: usize, b: usize },
    ReAdd { node: usize, peer: usize },
    DiskFree { node: usize },
    HangUp { node: usize, inc: u32, peer: usize },
    ResetDeadline { link: u64 },
    Heal,
    Drain,
    DrainNode { node: usize },
    Check,
}

struct Slot {
    node: Option<Node<MemStore>>,
    store: MemStore,
    config: Config,
    id: PeerId,
    /// Incremented at each crash.
    inc: u32,
    paused_until: Option<u64>,
    /// The application's dial intents (authorized peers it dials).
    dials: BTreeSet<usize>,
    up_since: u64,
    /// How far the node's clock (the `Instant` it is given) is from
    /// simulated time, after clock jumps.
    clock: i64,
    /// `handle_timeout` calls in the current simulated second: (second,
    /// count).
    timeouts: (u64, u32),
}

/// A running simulation.
pub struct Sim<'p> {
    plan: &'p Plan,
    /// Simulated time, microseconds.
    now: u64,
    end: u64,
    /// What happens next, and when each node's timer is due.
    agenda: Agenda,
    slots: Vec<Slot>,
    index: BTreeMap<PeerId, usize>,
    /// The links between nodes and what is in flight on them.
    net: Net,
    dice: Dice,
    trace: Trace,
    oracle: Oracle,
    /// Nodes whose outputs and timer need a look.
    dirty: BTreeSet<usize>,
    failure: Option<Failure>,
    /// What sparse readers received, for their oracle.
    tally: Tally,
    /// Nodes with a consumer drain scheduled.
    drain_soon: BTreeSet<usize>,
    /// What the workers' oracle knows of each taken message.
    jobs: work::Jobs,
    /// The delivery times senders asked for.
    times: times::Times,
    /// Backups of nodes' stores, restored by `Op::Restore`.
    backups: BTreeMap<usize, MemStore>,
    /// What the mailbox oracles keep.
    mail: mail::Mail,
    stats: Report,
    /// The delivered byte streams, when recording (`--record-frames`).
    record: Option<record::Recorder>,
}

/// The event queue and the nodes' timers.
struct Agenda {
    /// Tie-breaker: events at one instant run in the order scheduled.
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    timers: BTreeSet<(u64, usize)>,
    wake: Vec<Option<u64>>,
    /// Events run at the current instant, to catch a livelock.
    same_instant: u64,
    last_instant: u64,
}

impl Agenda {
    fn new(nodes: usize) -> Self {
        Agenda {
            seq: 0,
            queue: BTreeMap::new(),
            timers: BTreeSet::new(),
            wake: vec![None; nodes],
            same_instant: 0,
            last_instant: 0,
        }
    }
}
impl<'p> Sim<'p> {
    /// Sets up the nodes of `plan`, all authorizing their edges.
    pub fn new(plan: &'p Plan) -> Self {
        let o = &plan.options;
        let mut oracle = Oracle::new(o.nodes, o.msg_extra);
        oracle.msg_min = o.msg_min;
        let mut slots = Vec::with_capacity(o.nodes);
        let mut index = BTreeMap::new();
        for (i, no) in o.node.iter().enumerate() {
            let config = Config {
                prefetch: no.prefetch,
                max_request_blocks: no.max_request_blocks,
                max_inflight_requests: no.max_inflight,
                max_data_bytes: no.max_data_bytes,
                backoff_base: Duration::from_millis(no.backoff_base_ms),
                backoff_cap: Duration::from_millis(no.backoff_cap_ms),
                prune_acked: no.prune_acked,
                store_poll_interval: None,
                open: false,
                max_author_bytes: crate::plan::AUTHOR_QUOTA,
                mailbox: o
                    .mailbox
                    .as_ref()
                    .filter(|m| m.node == i)
                    .map(|_| MailboxLimits::default()),
                ..Config::default()
            };
            let store = MemStore::new();
            // A fresh MemStore cannot fail to open.
            let node = Node::open(
                store.clone(),
                config.clone(),
                entropy(plan.seed, i, 0),
                Instant::ZERO,
            )
            .unwrap_or_else(|e| panic!("opening a fresh in-memory node failed: {e}"));
            let id = node.id();
            index.insert(id, i);
            slots.push(Slot {
                node: Some(node),
                store,
                config,
                id,
                inc: 0,
                paused_until: None,
                dials: BTreeSet::new(),
                up_since: 0,
                clock: 0,
                timeouts: (0, 0),
            });
        }
        for e in &o.edges {
            for (a, b) in [(e.dialer, e.listener), (e.listener, e.dialer)] {
                let peer = slots[b].id;
                if let Some(n) = slots[a].node.as_mut() {
                    // Fresh stores do not fail.
                    n.add_peer(peer)
                        .unwrap_or_else(|e| panic!("add_peer on a fresh node failed: {e}"));
                }
                oracle.auth[a].insert(b);
                if o.dials(a, b) {
                    slots[a].dials.insert(b);
                }
            }
        }
        let heal_at = o.chaos;
        let end = heal_at + o.heal_bound;
        let mut sim = Sim {
            plan,
            now: 0,
            end,
            agenda: Agenda::new(o.nodes),
            slots,
            index,
            net: Net::default(),
            dice: Dice::new(plan.seed, "network"),
            trace: Trace::default(),
            oracle,
            dirty: BTreeSet::new(),
            failure: None,
            tally: Tally::default(),
            jobs: work::Jobs::default(),
            times: times::Times::default(),
            backups: BTreeMap::new(),
            drain_soon: BTreeSet::new(),
            mail: mail::Mail::default(),
            stats: Report::default(),
            record: None,
        };
        sim.set_up_mail();
        for (k, op) in plan.ops.iter().enumerate() {
            sim.at(op.at, Ev::Op(k));
        }
        sim.at(heal_at, Ev::Heal);
        sim.at(5 * SEC, Ev::Check);
        for i in 0..o.nodes {
            let dials: Vec<usize> = sim.slots[i].dials.iter().copied().collect();
            for j in dials {
                let peer = sim.slots[j].id;
                if let Some(n) = sim.slots[i].node.as_mut() {
                    n.dial(peer, Instant::ZERO);
                }
            }
            sim.dirty.insert(i);
        }
        sim
    }

    /// Echoes the trace text to stderr as the run goes.
    pub fn echo(mut self, on: bool) -> Self {
        self.trace.echo = on;
        self
    }

    /// Records the byte streams the links deliver into `dir` (see
    /// [`record`]), written when the run ends.
    pub fn record_frames(mut self, dir: Option<&std::path::Path>) -> Self {
        self.record = dir.map(record::Recorder::new);
        self
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.agenda.seq += 1;
        self.agenda
            .queue
            .insert((t.max(self.now), self.agenda.seq), ev);
    }

    fn fail(&mut self, f: Failure) {
        if self.failure.is_none() {
            self.trace.note(self.now, format_args!("FAILED {f}"));
            self.failure = Some(f);
        }
    }

    fn note(&mut self, s: std::fmt::Arguments<'_>) {
        self.trace.note(self.now, s);
    }

    /// Runs the plan to its end (or first failure) and reports.
    pub fn run(mut self) -> Report {
        self.drain();
        while self.failure.is_none() {
            let q = self.agenda.queue.first_key_value().map(|(k, _)| k.0);
            let t = self.agenda.timers.first().map(|x| x.0);
            let next = match (q, t) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => break,
            };
            if next > self.end {
                break;
            }
            self.now = next;
            if self.now == self.agenda.last_instant {
                self.agenda.same_instant += 1;
                if self.agenda.same_instant > LIVELOCK_EVENTS {
                    self.fail(Failure::new(
                        "livelock",
                        format!("over {LIVELOCK_EVENTS} events at one instant without time moving"),
                    ));
                    break;
                }
            } else {
                self.agenda.last_instant = self.now;
                self.agenda.same_instant = 0;
            }
            if q == Some(next) {
                if let Some((_, ev)) = self.agenda.queue.pop_first() {
                    self.event(ev);
                }
            } else if let Some((_, i)) = self.agenda.timers.pop_first() {
                self.agenda.wake[i] = None;
                self.timeout(i);
            }
            self.drain();
        }
        self.now = self.now.max(self.end);
        if self.failure.is_none() {
            self.final_checks();
        }
        for s in &self.slots {
            if s.node.is_some() {
                self.stats.node_micros += self.now.saturating_sub(s.up_since);
            }
        }
        let mut r = self.stats;
        r.sim_micros = self.now;
        r.trace = self.trace.finish();
        r.failure = self.failure;
        r.sent = self.oracle.sent.values().sum();
        r.sparse_bytes = self.tally.sparse_bytes.values().sum();
        r.sparse_blocks = self.oracle.asked.values().map(|s| s.len() as u64).sum();
        r.mail_refusals = self.mail.refusals;
        r.mail_tampered = self.mail.tampered.values().map(|s| s.len() as u64).sum();
        if let Some(rec) = &self.record {
            if let Err(e) = rec.write() {
                r.failure
                    .get_or_insert_with(|| Failure::new("record", format!("cannot write: {e}")));
            }
        }
        r
    }

    /// Node `i`'s clock: simulated time, moved by its clock jumps.
    pub(super) fn clock(&self, i: usize) -> Instant {
        let t = i128::from(self.now) + i128::from(self.slots[i].clock);
        Instant::from_micros(u64::try_from(t.max(0)).unwrap_or(u64::MAX))
    }

    /// The simulated time at which node `i`'s clock shows `t` (now, if
    /// it shows that already).
    fn sim_time(&self, i: usize, t: Instant) -> u64 {
        let at = i128::from(t.as_micros()) - i128::from(self.slots[i].clock);
        u64::try_from(at.max(0)).unwrap_or(u64::MAX).max(self.now)
    }

    fn live(&self, i: usize) -> bool {
        self.slots[i].node.is_some() && self.slots[i].paused_until.is_none()
    }

    fn timeout(&mut self, i: usize) {
        if !self.live(i) {
            return;
        }
        let second = self.now / SEC;
        let count = &mut self.slots[i].timeouts;
        *count = match *count {
            (s, c) if s == second => (s, c + 1),
            _ => (second, 1),
        };
        if count.1 > SPIN_TIMEOUTS {
            self.fail(Failure::new(
                "spin",
                format!("n{i} asked for over {SPIN_TIMEOUTS} timeouts within one simulated second"),
            ));
            return;
        }
        let now = self.clock(i);
        let r = match self.slots[i].node.as_mut() {
            Some(n) => n.handle_timeout(now),
            None => return,
        };
        self.node_result(i, "handle_timeout", r);
        self.dirty.insert(i);
    }

    /// Checks a node call's result: injected storage faults and a full
    /// store are expected, anything else is a bug.
    fn node_result<T>(&mut self, i: usize, what: &str, r: Result<T, NodeError>) -> Option<T> {
        match r {
            Ok(x) => Some(x),
            Err(e) if e.is_full() => {
                self.stats.store_full += 1;
                self.note(format_args!("n{i} {what}: store full"));
                None
            }
            Err(
                NodeError::Store(StoreError::Injected)
                | NodeError::Feed(FeedError::Store(StoreError::Injected)),
            ) => {
                self.note(format_args!("n{i} {what}: injected store failure"));
                None
            }
            Err(e) => {
                self.fail(Failure::new(
                    "store-error",
                    format!("n{i} {what} failed: {e}"),
                ));
                None
            }
        }
    }

    /// Handles every output of every node touched, until all are quiet,
    /// then re-arms their timers.
    fn drain(&mut self) {
        while let Some(i) = self.dirty.pop_first() {
            loop {
                let out = match self.slots[i].node.as_mut() {
                    Some(n) => n.poll_output(),
                    None => None,
                };
                let Some(out) = out else { break };
                self.output(i, out);
            }
            // Quiet, as a driver would be before it sleeps.
            if let Some(n) = self.slots[i].node.as_mut() {
                n.idle_work();
            }
            let when = self.slots[i]
                .node
                .as_ref()
                .and_then(|n| n.poll_timeout())
                .map(|t| self.sim_time(i, t));
            if let Some(old) = self.agenda.wake[i].take() {
                self.agenda.timers.remove(&(old, i));
            }
            if self.slots[i].paused_until.is_none() {
                if let Some(t) = when {
                    self.agenda.timers.insert((t, i));
                    self.agenda.wake[i] = Some(t);
                }
            }
        }
    }

    fn output(&mut self, i: usize, out: Output) {
        match out {
            Output::Transmit { conn, bytes } => {
                self.trace.bytes(&bytes);
                self.note(format_args!("n{i} tx {} {}", conn.0, bytes.len()));
                self.stats.wire_bytes += bytes.len() as u64;
                self.transmit(i, conn, bytes);
            }
            Output::Dial { peer } => {
                let j = self.index.get(&peer).copied();
                self.note(format_args!("n{i} dial n{}", j.map_or(-1, |j| j as i64)));
                self.dial(i, peer, j);
            }
            Output::Close { conn, reason } => {
                self.note(format_args!("n{i} close {} {reason}", conn.0));
                self.local_close(i, conn);
            }
            Output::Event(e) => {
                self.note(format_args!("n{i} event {e:?}"));
                self.on_event(i, e);
            }
        }
    }

    fn peer_index(&self, p: &PeerId) -> usize {
        self.index.get(p).copied().unwrap_or(usize::MAX)
    }

    fn on_event(&mut self, i: usize, e: Event) {
        let r = match e {
            Event::Connected { conn, peer } => {
                let p = self.peer_index(&peer);
                let inbound = self
                    .net
                    .conn_link
                    .get(&(i, conn))
                    .is_some_and(|&(_, side)| side == 1);
                if inbound {
                    if let Some(&(l, _)) = self.net.conn_link.get(&(i, conn)) {
                        let dialer = self.net.links.get(&l).map(|l| l.ends[0].0);
                        if dialer != Some(p) {
                            self.fail(Failure::new(
                                "unauthorized",
                                format!("n{i} says n{p} connected, but n{dialer:?} dialed"),
                            ));
                        }
                    }
                }
                self.stats.connections += 1;
                self.check_direct(i, p)
                    .and_then(|()| self.oracle.on_connected(i, p, inbound))
            }
            Event::Message { from, seq } => {
                self.stats.delivered += 1;
                // After the heal the consumer keeps up, so a small prefetch
                // window does not throttle convergence.
                if self.net.healed && !self.plan.options.node[i].sparse && self.drain_soon.insert(i)
                {
                    self.at(self.now + MS, Ev::DrainNode { node: i });
                }
                let f = self.peer_index(&from);
                self.oracle.on_message(i, f, seq)
            }
            Event::Acked { to, start, end } => {
                let t = self.peer_index(&to);
                self.oracle
                    .on_acked(i, t, start, end)
                    .and_then(|()| self.check_acked_held(i, t, start, end))
            }
            Event::MailboxRefused { .. } => {
                self.mail.refusals += 1;
                Ok(())
            }
            Event::Fetched { from, seq } => {
                let f = self.peer_index(&from);
                self.oracle.pending_gets.remove(&(i, f, seq));
                Ok(())
            }
            Event::Forked { author, .. } => {
                self.stats.forks += 1;
                let a = self.peer_index(&author);
                if self.oracle.is_rogue(a) {
                    Ok(())
                } else {
                    Err(Failure::new(
                        "phantom",
                        format!("n{i} says n{a} forked its feed, but n{a} never restored a backup"),
                    ))
                }
            }
            Event::DeadLettered {
                from,
                seq,
                reason,
                deliveries,
            } => {
                let f = self.peer_index(&from);
                match reason {
                    peermq::DeadReason::Expired => self.check_expired(i, f, seq).map(|()| {
                        self.jobs.mark_dead(i, f, seq);
                    }),
                    _ => self.on_dead_lettered(i, f, seq, reason, deliveries),
                }
            }
            // Broadcast feeds are the emitter's; the queue workload
            // never writes one.
            _ => Ok(()),
        };
        if let Err(f) = r {
            self.fail(f);
        }
    }

    fn event(&mut self, ev: Ev) {
        match ev {
            Ev::Op(k) => {
                let op = self.plan.ops[k].op.clone();
                self.note(format_args!("op {op}"));
                if op.is_fault() {
                    self.stats.faults += 1;
                }
                self.op(op);
                self.check_memory();
            }
            Ev::Deliver { link, dir } => self.deliver(link, dir),
            Ev::DialFailed { node, inc, peer } => {
                if self.slots[node].inc != inc || self.slots[node].node.is_none() {
                    return;
                }
                if let Some(until) = self.slots[node].paused_until {
                    self.at(until, ev);
                    return;
                }
                let id = if peer == usize::MAX {
                    return;
                } else {
                    self.slots[peer].id
                };
                let now = self.clock(node);
                if let Some(n) = self.slots[node].node.as_mut() {
                    n.dial_failed(id, now);
                }
                self.dirty.insert(node);
            }
            Ev::Restart { node } => self.restart(node),
            Ev::Resume { node } => {
                if self.slots[node].paused_until.is_some_and(|t| t <= self.now) {
                    self.slots[node].paused_until = None;
                    self.note(format_args!("n{node} resumes"));
                    self.dirty.insert(node);
                }
            }
            Ev::Block { a, b } => self.block(a, b),
            Ev::Unblock { a, b } => {
                if let Some(n) = self.net.blocked.get_mut(&(a, b)) {
                    *n = n.saturating_sub(1);
                }
            }
            Ev::ReAdd { node, peer } => self.add_peer(node, peer),
            Ev::DiskFree { node } => {
                self.note(format_args!("n{node} has disk space again"));
                self.slots[node].store.set_capacity(None);
            }
            Ev::HangUp { node, inc, peer } => {
                if self.slots[node].inc == inc {
                    let id = self.slots[peer].id;
                    if let Some(n) = self.slots[node].node.as_mut() {
                        n.hang_up(&id);
                    }
                }
            }
            Ev::ResetDeadline { link } => {
                let now = self.now;
                let mut fins = Vec::new();
                if let Some(l) = self.net.links.get_mut(&link) {
                    for (dir, p) in l.pipes.iter_mut().enumerate() {
                        if p.cut_next && !p.dead && !p.fin_sent {
                            p.cut_next = false;
                            p.fin_sent = true;
                            let t = p.last.max(now + l.latency);
                            p.last = t;
                            p.q.push_back((t, Chunk::Fin));
                            fins.push((t, dir));
                        }
                    }
                }
                for (t, dir) in fins {
                    self.at(t, Ev::Deliver { link, dir });
                }
            }
            Ev::Heal => self.heal(),
            Ev::Drain => {
                self.drain_readers();
                if self.now + SEC <= self.end {
                    self.at(self.now + SEC, Ev::Drain);
                }
            }
            Ev::DrainNode { node } => {
                self.drain_soon.remove(&node);
                if self.live(node) {
                    self.read(node, 100_000, 100, 0, 0);
                }
            }
            Ev::Check => {
                self.check_corruption();
                if let Err(f) = self.check_plaintext() {
                    self.fail(f);
                }
                self.at(self.now + 5 * SEC, Ev::Check);
            }
        }
    }

    fn op(&mut self, op: Op) {
        let n = self.plan.options.nodes;
        match op {
            Op::Send {
                from,
                to,
                count,
                delay,
                expire,
            } => self.send(from, to, count, delay, expire),
            Op::Read {
                node,
                limit,
                archive,
                clear,
                seed,
            } => {
                if !self.live(node) {
                    return;
                }
                self.read(node, limit as usize, archive, clear, seed);
            }
            Op::Work {
                node,
                max,
                lease,
                ok,
                fail,
                seed,
            } => self.work(node, max as usize, lease, ok, fail, seed),
            Op::Get {
                node,
                from,
                count,
                seed,
            } => {
                if !self.live(node) {
                    return;
                }
                let sent = self.oracle.sent(from, node);
                if sent == 0 {
                    return;
                }
                let mut d = Dice::new(seed, "get");
                for _ in 0..count {
                    let seq = d.u64() % sent;
                    self.get(node, from, seq);
                }
                self.dirty.insert(node);
            }
            Op::RemovePeer { node, peer, for_ } => {
                if !self.live(node) {
                    return;
                }
                let id = self.slots[peer].id;
                let now = self.clock(node);
                let r = match self.slots[node].node.as_mut() {
                    Some(x) => x.remove_peer(&id, now),
                    None => return,
                };
                if self.node_result(node, "remove_peer", r).is_some() {
                    self.oracle.auth[node].remove(&peer);
                    self.slots[node].dials.remove(&peer);
                }
                self.dirty.insert(node);
                self.at(self.now + for_, Ev::ReAdd { node, peer });
            }
            Op::Intrude { from, to, for_ } => self.intrude(from, to, for_),
            Op::Partition { a, b, oneway, for_ } => {
                self.block(a, b);
                self.at(self.now + for_, Ev::Unblock { a, b });
                if !oneway {
                    self.block(b, a);
                    self.at(self.now + for_, Ev::Unblock { a: b, b: a });
                }
            }
            Op::Isolate { node, for_ } => {
                for x in 0..n {
                    if x != node {
                        self.block(node, x);
                        self.block(x, node);
                        self.at(self.now + for_, Ev::Unblock { a: node, b: x });
                        self.at(self.now + for_, Ev::Unblock { a: x, b: node });
                    }
                }
            }
            Op::Flap {
                a,
                b,
                period,
                times,
            } => {
                for k in 0..u64::from(times) {
                    let down = self.now + 2 * k * period;
                    for (x, y) in [(a, b), (b, a)] {
                        self.at(down, Ev::Block { a: x, b: y });
                        self.at(down + period, Ev::Unblock { a: x, b: y });
                    }
                }
            }
            Op::Reset { pick } => {
                let open: Vec<u64> = self
                    .net
                    .links
                    .iter()
                    .filter(|(_, l)| l.open[0] && l.open[1] && !l.resetting)
                    .map(|(id, _)| *id)
                    .collect();
                if !open.is_empty() {
                    let lid = open[(pick % open.len() as u64) as usize];
                    self.reset(lid, pick);
                }
            }
            Op::ResetAll => {
                let open: Vec<u64> = self
                    .net
                    .links
                    .iter()
                    .filter(|(_, l)| !l.resetting)
                    .map(|(id, _)| *id)
                    .collect();
                for (k, lid) in open.into_iter().enumerate() {
                    self.reset(lid, k as u64);
                }
            }
            Op::Stall { pick, for_ } => self.stall(pick, for_),
            Op::Corrupt { pick } => self.corrupt(pick),
            Op::Crash { node, down, silent } => {
                if self.slots[node].node.is_none() {
                    return;
                }
                self.crash(node, silent);
                self.at(self.now + down, Ev::Restart { node });
            }
            Op::Pause { node, for_ } => {
                if !self.live(node) {
                    return;
                }
                let until = self.now + for_;
                self.slots[node].paused_until = Some(until);
                if let Some(old) = self.agenda.wake[node].take() {
                    self.agenda.timers.remove(&(old, node));
                }
                self.at(until, Ev::Resume { node });
            }
            Op::FailCommits { node, n } => {
                self.slots[node].store.fail_commits(n);
            }
            Op::DiskFull { node, for_ } => {
                let store = &self.slots[node].store;
                store.set_capacity(Some(store.used_bytes()));
                self.at(self.now.saturating_add(for_), Ev::DiskFree { node });
            }
            Op::ClockJump { node, by } => {
                // Not before the clock's origin.
                let floor = -i64::try_from(self.now).unwrap_or(i64::MAX);
                let s = &mut self.slots[node];
                s.clock = s.clock.saturating_add(by).max(floor);
                // Its timer, in simulated time, moved.
                self.dirty.insert(node);
            }
            Op::Sabotage { node } => self.sabotage(node),
            Op::Offline { node, for_, silent } => {
                if self.slots[node].node.is_none() {
                    return;
                }
                self.note(format_args!("n{node} goes offline"));
                self.crash(node, silent);
                self.at(self.now.saturating_add(for_), Ev::Restart { node });
            }
            Op::Tamper {
                mailbox,
                from,
                to,
                drop,
                pick,
            } => self.tamper(mailbox, from, to, drop, pick),
            Op::Leak { node } => self.leak(node),
            Op::Backup { node } => {
                let copy = self.slots[node].store.snapshot();
                self.backups.insert(node, copy);
            }
            Op::Restore { node } => self.restore(node),
            Op::Flood { node, events, size } => self.flood(node, events, size),
        }
    }
}

/// Most bytes a sparse reader may download from one sender: per block read,
/// its bytes, a proof (two hashes per tree level), a signed head and
/// framing; per connection, a handshake, a head and a keepalive every
/// interval; per append, the new head announced. Prefetch is zero, so
/// nothing else may come.
pub fn sparse_budget(
    blocks: u64,
    feed_len: u64,
    block_max: u64,
    conns: u64,
    appends: u64,
    micros: u64,
) -> u64 {
    let levels = 64 - feed_len.max(1).leading_zeros() as u64;
    let per_block = block_max + 2 * levels * 48 + 256;
    let per_conn = 4096 + (micros / keepalive() + 1) * 64;
    blocks * per_block + conns.max(1) * per_conn + appends * HEAD_BYTES
}

/// A head announcement on the wire, with framing and its AEAD tag.
const HEAD_BYTES: u64 = 256;

/// A node incarnation's randomness: its seed, and a nonce seed that, like
/// a runtime's, no other incarnation reuses.
fn entropy(seed: u64, node: usize, inc: u32) -> Entropy {
    Entropy::new(node_seed(seed, node, inc)).sign_ahead(nonce_seed(seed, node, inc))
}

/// A node incarnation's nonce seed.
fn nonce_seed(seed: u64, node: usize, inc: u32) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("peermq-sim nonce seed");
    for v in [seed, node as u64, u64::from(inc)] {
        h.update(&v.to_le_bytes());
    }
    *h.finalize().as_bytes()
}

fn node_seed(seed: u64, node: usize, inc: u32) -> [u8; 32] {
    *blake3::hash(
        &[seed, node as u64, u64::from(inc)]
            .map(u64::to_le_bytes)
            .concat(),
    )
    .as_bytes()
}

//! The checkers, in the style of Jepsen's queue checker: a model of what
//! the application did (sent, acknowledged, archived, cleared, authorized),
//! checked against everything the nodes report.
//!
//! The checker only sees histories, so it can be tested on made-up ones.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use peermq::RangeSet;

/// A broken property.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Which oracle: `lost`, `phantom`, `archived-redelivered`, `order`,
    /// `unauthorized`, `sparse-bytes`, `liveness`, `corruption-undetected`,
    /// `store-error`, `livelock`, `mixed-fork`, `memory`,
    /// `delivered-twice`, `mailbox-direct`, `plaintext-at-mailbox`,
    /// `acked-undelivered`, and those of workers and delivery times.
    pub oracle: &'static str,
    /// What was seen, with node and message numbers.
    pub details: String,
}

impl Failure {
    /// A failure of `oracle`.
    pub fn new(oracle: &'static str, details: impl Into<String>) -> Self {
        Failure {
            oracle,
            details: details.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.oracle, self.details)
    }
}

/// The bytes of message `seq` from `from` to `to`: a header naming them and
/// padding derived from them, so any received bytes can be checked against
/// what was sent without keeping a copy.
pub fn message(from: usize, to: usize, seq: u64, max_extra: usize) -> Vec<u8> {
    branch_message(from, to, seq, max_extra, 0)
}

/// The bytes of message `seq` from `from` to `to` in history `branch` of
/// the sender's feed: 0 is the only one an honest sender writes; a rogue
/// that restored a backup writes branch 1 over it, with other bytes at the
/// same positions.
pub fn branch_message(from: usize, to: usize, seq: u64, max_extra: usize, branch: u8) -> Vec<u8> {
    padded_message(from, to, seq, (0, max_extra), branch)
}

/// [`branch_message`] with `extra.0` to `extra.1` bytes of padding (the
/// same bytes as [`branch_message`] when `extra.0` is 0).
pub fn padded_message(
    from: usize,
    to: usize,
    seq: u64,
    extra: (usize, usize),
    branch: u8,
) -> Vec<u8> {
    let (min_extra, max_extra) = (extra.0, extra.1.max(extra.0));
    let mut h = blake3::Hasher::new();
    h.update(b"peermq-sim message");
    if branch > 0 {
        h.update(&[branch]);
    }
    h.update(&(from as u32).to_le_bytes());
    h.update(&(to as u32).to_le_bytes());
    h.update(&seq.to_le_bytes());
    let mut xof = h.finalize_xof();
    let mut len = [0u8; 8];
    xof.fill(&mut len);
    let extra =
        min_extra + (u64::from_le_bytes(len) % ((max_extra - min_extra) as u64 + 1)) as usize;
    let mut out = Vec::with_capacity(16 + extra);
    out.extend_from_slice(&(from as u32).to_le_bytes());
    out.extend_from_slice(&(to as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.resize(16 + extra, 0);
    xof.fill(&mut out[16..]);
    out
}

/// What the bytes of a message claim: (from, to, seq).
fn header(data: &[u8]) -> Option<(u32, u32, u64)> {
    let f = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?);
    let t = u32::from_le_bytes(data.get(4..8)?.try_into().ok()?);
    let s = u64::from_le_bytes(data.get(8..16)?.try_into().ok()?);
    Some((f, t, s))
}

/// The model and the checks.
#[derive(Clone, Debug, Default)]
pub struct Oracle {
    /// Padding bound of messages, to regenerate them.
    pub msg_extra: usize,
    /// Least padding of messages.
    pub msg_min: usize,
    /// Mailboxes: they accept connections from anyone.
    pub mailboxes: BTreeSet<usize>,
    /// Messages durably sent (`send` returned `Ok`), per (from, to).
    pub sent: BTreeMap<(usize, usize), u64>,
    /// Messages the sender saw acknowledged (`Event::Acked`), per (from, to).
    pub acked: BTreeMap<(usize, usize), RangeSet>,
    /// Archived by the consumer, per (node, from).
    pub archived: BTreeMap<(usize, usize), BTreeSet<u64>>,
    /// Cleared by the consumer, per (node, from).
    pub cleared: BTreeMap<(usize, usize), BTreeSet<u64>>,
    /// A `clear` that failed part way may or may not have happened.
    pub maybe_cleared: BTreeMap<(usize, usize), BTreeSet<u64>>,
    /// Who each node authorizes.
    pub auth: Vec<BTreeSet<usize>>,
    /// Last `Event::Message` seq per (node, from) in the node's current run.
    last_event: BTreeMap<(usize, usize), u64>,
    /// Blocks each sparse reader asked for, per (node, from).
    pub asked: BTreeMap<(usize, usize), BTreeSet<u64>>,
    /// `get`s not yet answered.
    pub pending_gets: BTreeSet<(usize, usize, u64)>,
    /// The rogue author, once it restored its backup.
    pub rogue: Option<Rogue>,
}

/// A node that restored an old backup and wrote on: its feed to each peer
/// forked where the backup ended. Nothing is owed to or from it any more;
/// what is checked is that nobody mixes its two histories and that everyone
/// else goes on as before.
#[derive(Clone, Debug, Default)]
pub struct Rogue {
    /// The node.
    pub node: usize,
    /// Per recipient, the length of its feed in the backup: the fork point.
    pub fork_at: BTreeMap<usize, u64>,
}

impl Rogue {
    /// The branch of the rogue's message `seq` to `to` with bytes `data`, if
    /// either history has those bytes there.
    fn branch_of(&self, to: usize, seq: u64, data: &[u8], extra: (usize, usize)) -> Option<u8> {
        if data == padded_message(self.node, to, seq, extra, 0).as_slice() {
            return Some(0);
        }
        let forked = self.fork_at.get(&to).is_some_and(|&at| seq >= at);
        (forked && data == padded_message(self.node, to, seq, extra, 1).as_slice()).then_some(1)
    }
}

impl Oracle {
    /// A model of `nodes` nodes, nobody authorized yet.
    pub fn new(nodes: usize, msg_extra: usize) -> Self {
        Oracle {
            msg_extra,
            auth: vec![BTreeSet::new(); nodes],
            ..Default::default()
        }
    }

    /// The least and most padding of a message.
    pub fn extra(&self) -> (usize, usize) {
        (self.msg_min, self.msg_extra)
    }

    /// The bytes of message `seq` from `from` to `to`.
    pub fn message(&self, from: usize, to: usize, seq: u64) -> Vec<u8> {
        padded_message(from, to, seq, self.extra(), 0)
    }

    /// Messages durably sent from `from` to `to`.
    pub fn sent(&self, from: usize, to: usize) -> u64 {
        self.sent.get(&(from, to)).copied().unwrap_or(0)
    }

    /// `send` of `count` messages returned `Ok(start..)`.
    pub fn on_sent(
        &mut self,
        from: usize,
        to: usize,
        start: u64,
        count: u64,
    ) -> Result<(), Failure> {
        let have = self.sent(from, to);
        if self.is_rogue(from) {
            // It writes over what it sent before the restore.
            self.sent.insert((from, to), have.max(start + count));
            return Ok(());
        }
        if start != have {
            return Err(Failure::new(
                "lost",
                format!("n{from} sent to n{to} at seq {start}, but {have} messages had been sent durably before"),
            ));
        }
        self.sent.insert((from, to), have + count);
        Ok(())
    }

    /// Whether `node` is the rogue author.
    pub fn is_rogue(&self, node: usize) -> bool {
        self.rogue.as_ref().is_some_and(|r| r.node == node)
    }

    /// Node `node` restarted: its event stream starts over.
    pub fn on_restart(&mut self, node: usize) {
        self.last_event.retain(|(n, _), _| *n != node);
    }

    /// `Event::Connected` at `node` with `peer`, on a connection `node`
    /// accepted (`inbound`) or dialed.
    pub fn on_connected(&self, node: usize, peer: usize, inbound: bool) -> Result<(), Failure> {
        if self.is_rogue(node) {
            // Its list of authorized peers went back to the backup's.
            return Ok(());
        }
        if inbound && !self.auth[node].contains(&peer) && !self.mailboxes.contains(&node) {
            return Err(Failure::new(
                "unauthorized",
                format!("n{node} accepted a connection from n{peer}, which it does not authorize"),
            ));
        }
        Ok(())
    }

    /// `Event::Message { from, seq }` at `node`.
    pub fn on_message(&mut self, node: usize, from: usize, seq: u64) -> Result<(), Failure> {
        if self.is_rogue(node) && from != node {
            // Its inbox went back to the backup: archived messages come back.
            return Ok(());
        }
        if from == node {
            return Err(Failure::new(
                "phantom",
                format!("n{node} got a message from itself"),
            ));
        }
        if seq >= self.sent(from, node) {
            return Err(Failure::new(
                "phantom",
                format!(
                    "n{node} got message {seq} from n{from}, but only {} were sent",
                    self.sent(from, node)
                ),
            ));
        }
        if !self.auth[node].contains(&from) {
            return Err(Failure::new(
                "unauthorized",
                format!("n{node} got message {seq} from n{from} while not authorizing it"),
            ));
        }
        if let Some(&last) = self.last_event.get(&(node, from)) {
            if seq <= last {
                return Err(Failure::new(
                    "order",
                    format!("n{node} got message {seq} from n{from} after message {last}"),
                ));
            }
        }
        self.last_event.insert((node, from), seq);
        if self.is_archived(node, from, seq) {
            return Err(Failure::new(
                "archived-redelivered",
                format!("n{node} was told of message {seq} from n{from}, which it had archived"),
            ));
        }
        Ok(())
    }

    /// `Event::Acked { to, start, end }` at `from`.
    pub fn on_acked(
        &mut self,
        from: usize,
        to: usize,
        start: u64,
        end: u64,
    ) -> Result<(), Failure> {
        if end > self.sent(from, to) || start >= end {
            return Err(Failure::new(
                "phantom",
                format!(
                    "n{from} saw n{to} acknowledge {start}..{end}, but only {} were sent",
                    self.sent(from, to)
                ),
            ));
        }
        self.acked.entry((from, to)).or_default().insert(start, end);
        Ok(())
    }

    /// Whether the consumer at `node` archived `seq` from `from`.
    pub fn is_archived(&self, node: usize, from: usize, seq: u64) -> bool {
        self.archived
            .get(&(node, from))
            .is_some_and(|s| s.contains(&seq))
    }

    fn is_cleared(&self, node: usize, from: usize, seq: u64) -> bool {
        self.cleared
            .get(&(node, from))
            .is_some_and(|s| s.contains(&seq))
    }

    /// What `to` holds of the rogue's feed past the fork must come from one
    /// history: a receiver that stored blocks of both mixed two trees.
    pub fn check_unmixed(&self, to: usize, records: &[(u64, Vec<u8>)]) -> Result<(), Failure> {
        let Some(r) = &self.rogue else {
            return Ok(());
        };
        let branches: BTreeSet<u8> = records
            .iter()
            .filter_map(|(seq, data)| {
                let at = r.fork_at.get(&to).copied().unwrap_or(0);
                (*seq >= at).then(|| r.branch_of(to, *seq, data, self.extra()))?
            })
            .collect();
        if branches.len() > 1 {
            return Err(Failure::new(
                "mixed-fork",
                format!(
                    "n{to} holds messages of both histories of n{}'s forked feed",
                    r.node
                ),
            ));
        }
        Ok(())
    }

    /// Whether `seq` from `from` may legitimately be missing at `node`.
    fn may_be_gone(&self, node: usize, from: usize, seq: u64) -> bool {
        self.is_cleared(node, from, seq)
            || self
                .maybe_cleared
                .get(&(node, from))
                .is_some_and(|s| s.contains(&seq))
    }

    /// A record `node` read: its bytes must be what `from` sent, to `node`,
    /// and (from the unread mailbox) neither archived nor cleared.
    pub fn on_record(
        &self,
        node: usize,
        from: usize,
        seq: u64,
        data: &[u8],
        unread: bool,
    ) -> Result<(), Failure> {
        if self.is_rogue(node) {
            return Ok(());
        }
        if let Some(r) = self.rogue.as_ref().filter(|r| r.node == from) {
            if r.branch_of(node, seq, data, self.extra()).is_none() {
                return Err(Failure::new(
                    "phantom",
                    format!("n{node} read message {seq} from n{from} (the rogue) with bytes it wrote in neither history"),
                ));
            }
            return Ok(());
        }
        if seq >= self.sent(from, node) {
            return Err(Failure::new(
                "phantom",
                format!(
                    "n{node} read message {seq} from n{from}, but only {} were sent",
                    self.sent(from, node)
                ),
            ));
        }
        if data != self.message(from, node, seq).as_slice() {
            return Err(Failure::new(
                "phantom",
                format!(
                    "n{node} read message {seq} from n{from} with bytes that were never sent ({} bytes, header {:?})",
                    data.len(),
                    header(data)
                ),
            ));
        }
        if unread && self.is_archived(node, from, seq) {
            return Err(Failure::new(
                "archived-redelivered",
                format!(
                    "message {seq} from n{from} is unread again at n{node} after being archived"
                ),
            ));
        }
        if unread && self.is_cleared(node, from, seq) {
            return Err(Failure::new(
                "archived-redelivered",
                format!(
                    "message {seq} from n{from} is unread again at n{node} after being cleared"
                ),
            ));
        }
        Ok(())
    }

    /// The consumer at `node` archived `seq` from `from`.
    pub fn on_archived(&mut self, node: usize, from: usize, seq: u64) {
        self.archived.entry((node, from)).or_default().insert(seq);
    }

    /// The consumer at `node` cleared `seq` from `from` (`sure`: the call
    /// returned `Ok`).
    pub fn on_cleared(&mut self, node: usize, from: usize, seq: u64, sure: bool) {
        let set = if sure {
            &mut self.cleared
        } else {
            &mut self.maybe_cleared
        };
        set.entry((node, from)).or_default().insert(seq);
        if sure {
            if let Some(a) = self.archived.get_mut(&(node, from)) {
                a.remove(&seq);
            }
        }
    }

    /// The final check of one (sender, recipient) pair after the heal:
    /// `held` is what the recipient has (unread or archived), `sender_len`
    /// the sender's feed length, `received` and `acked` the two nodes'
    /// status counts. `expect_all`: the recipient reads everything (not a
    /// sparse reader), so liveness applies.
    #[allow(clippy::too_many_arguments)]
    pub fn check_pair(
        &self,
        from: usize,
        to: usize,
        held: &BTreeSet<u64>,
        sender_len: u64,
        received: u64,
        acked: u64,
        expect_all: bool,
        bound_secs: u64,
    ) -> Result<(), Failure> {
        if self.is_rogue(from) || self.is_rogue(to) {
            return Ok(());
        }
        let sent = self.sent(from, to);
        if sender_len < sent {
            return Err(Failure::new(
                "lost",
                format!("n{from} durably sent {sent} messages to n{to} but its feed holds {sender_len} after restarts"),
            ));
        }
        if sender_len > sent {
            return Err(Failure::new(
                "phantom",
                format!("n{from}'s feed to n{to} holds {sender_len} messages but only {sent} sends succeeded"),
            ));
        }
        if let Some(acked_set) = self.acked.get(&(from, to)) {
            for (a, b) in acked_set.ranges() {
                for seq in a..b {
                    if !held.contains(&seq) && !self.may_be_gone(to, from, seq) {
                        return Err(Failure::new(
                            "lost",
                            format!("message {seq} from n{from} was acknowledged by n{to} but n{to} no longer has it"),
                        ));
                    }
                }
            }
        }
        if received > sent {
            return Err(Failure::new(
                "phantom",
                format!("n{to} reports {received} messages from n{from} but only {sent} were sent"),
            ));
        }
        if expect_all && received < sent {
            return Err(Failure::new(
                "liveness",
                format!("{bound_secs}s after the heal n{to} has {received} of the {sent} messages n{from} sent it"),
            ));
        }
        if expect_all && acked < sent {
            return Err(Failure::new(
                "liveness",
                format!("{bound_secs}s after the heal n{from} has {acked} of its {sent} messages to n{to} acknowledged"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Oracle {
        let mut o = Oracle::new(3, 50);
        o.auth[1].insert(0);
        o.auth[0].insert(1);
        o.on_sent(0, 1, 0, 3).unwrap();
        o
    }

    #[test]
    fn messages_roundtrip_and_differ() {
        let a = message(0, 1, 5, 100);
        assert_eq!(a, message(0, 1, 5, 100));
        assert_ne!(a, message(0, 1, 6, 100));
        assert_eq!(header(&a), Some((0, 1, 5)));
    }

    #[test]
    fn padding_bounds_hold_and_zero_keeps_the_old_bytes() {
        for seq in 0..50 {
            assert_eq!(
                padded_message(2, 3, seq, (0, 100), 0),
                message(2, 3, seq, 100)
            );
            let m = padded_message(2, 3, seq, (16, 64), 0);
            assert!((32..=80).contains(&m.len()), "{}", m.len());
            assert_eq!(header(&m), Some((2, 3, seq)));
        }
    }

    #[test]
    fn out_of_order_and_duplicate_events_are_caught() {
        let mut o = model();
        o.on_message(1, 0, 0).unwrap();
        o.on_message(1, 0, 2).unwrap();
        assert_eq!(o.on_message(1, 0, 1).unwrap_err().oracle, "order");
        assert_eq!(o.on_message(1, 0, 2).unwrap_err().oracle, "order");
        o.on_restart(1);
        o.on_message(1, 0, 1).unwrap();
    }

    #[test]
    fn unsent_and_unauthorized_deliveries_are_caught() {
        let mut o = model();
        assert_eq!(o.on_message(1, 0, 3).unwrap_err().oracle, "phantom");
        assert_eq!(o.on_message(2, 0, 0).unwrap_err().oracle, "phantom");
        o.on_sent(0, 2, 0, 1).unwrap();
        assert_eq!(o.on_message(2, 0, 0).unwrap_err().oracle, "unauthorized");
        assert_eq!(
            o.on_connected(2, 0, true).unwrap_err().oracle,
            "unauthorized"
        );
        o.on_connected(2, 0, false).unwrap();
        o.on_connected(1, 0, true).unwrap();
    }

    #[test]
    fn forged_bytes_and_archived_records_are_caught() {
        let mut o = model();
        let good = message(0, 1, 1, 50);
        o.on_record(1, 0, 1, &good, true).unwrap();
        let mut bad = good.clone();
        let at = 20 % bad.len();
        bad[at] ^= 1;
        assert_eq!(
            o.on_record(1, 0, 1, &bad, true).unwrap_err().oracle,
            "phantom"
        );
        o.on_archived(1, 0, 1);
        assert_eq!(
            o.on_record(1, 0, 1, &good, true).unwrap_err().oracle,
            "archived-redelivered"
        );
        o.on_record(1, 0, 1, &good, false).unwrap();
        assert_eq!(
            o.on_message(1, 0, 1).unwrap_err().oracle,
            "archived-redelivered"
        );
    }

    #[test]
    fn lost_and_undelivered_messages_are_caught() {
        let mut o = model();
        o.on_acked(0, 1, 0, 2).unwrap();
        assert_eq!(o.on_acked(0, 1, 2, 4).unwrap_err().oracle, "phantom");
        let all: BTreeSet<u64> = [0, 1, 2].into();
        o.check_pair(0, 1, &all, 3, 3, 3, true, 60).unwrap();
        let some: BTreeSet<u64> = [0].into();
        assert_eq!(
            o.check_pair(0, 1, &some, 3, 3, 3, true, 60)
                .unwrap_err()
                .oracle,
            "lost"
        );
        o.on_cleared(1, 0, 1, true);
        o.check_pair(0, 1, &some, 3, 3, 3, true, 60).unwrap();
        assert_eq!(
            o.check_pair(0, 1, &all, 2, 3, 3, true, 60)
                .unwrap_err()
                .oracle,
            "lost"
        );
        assert_eq!(
            o.check_pair(0, 1, &all, 3, 2, 3, true, 60)
                .unwrap_err()
                .oracle,
            "liveness"
        );
        o.check_pair(0, 1, &all, 3, 2, 2, false, 60).unwrap();
        assert_eq!(o.on_sent(0, 1, 2, 1).unwrap_err().oracle, "lost");
    }
}

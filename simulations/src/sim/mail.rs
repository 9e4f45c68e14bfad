//! Mailboxes (issue 18): a node that holds mail for recipients while they
//! are away, and pairs whose sender and recipient are never online at the
//! same time. The oracles: every message goes through the mailbox alone
//! (`mailbox-direct`), is delivered once and acknowledged (the usual
//! `liveness` and `delivered-twice`), the mailbox's store never holds a
//! plaintext (`plaintext-at-mailbox`), and whatever the mailbox withholds,
//! forges or drops, the sender never sees acknowledged a message the
//! recipient does not hold (`acked-undelivered`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::{Bound, ControlFlow};

use peermq::merkle::{Node as TreeNode, NODE_LEN};
use peermq::store::Table;
use peermq::{Feed, FeedDescriptor, Instant, RangeSet, Txn};

use crate::oracle::Failure;
use crate::plan::MailPair;

use super::Sim;

/// Bytes of a plaintext searched for: the first 16 of its random padding,
/// which no store holds by chance.
const NEEDLE: usize = 16;
/// Bits of the filter that spares most positions a map lookup.
const FILTER_BITS: u32 = 20;

/// What the mailbox oracles keep.
#[derive(Default)]
pub(super) struct Mail {
    /// Per pair, the blocks the mailbox forged or dropped that the
    /// recipient did not hold then: it can never have them, so the pair
    /// owes no liveness, only safety.
    pub tampered: BTreeMap<(usize, usize), BTreeSet<u64>>,
    /// Refusals the senders heard (`Event::MailboxRefused`).
    pub refusals: u64,
    needles: Needles,
}

/// A message: (sender, recipient, seq).
type Msg = (usize, usize, u64);

/// The plaintexts of every message sent through the mailbox, to search a
/// store for: a bit filter over their first eight bytes, then a map.
struct Needles {
    filter: Vec<u64>,
    map: HashMap<u64, Vec<([u8; NEEDLE], Msg)>>,
    /// Messages already in, per pair.
    done: BTreeMap<(usize, usize), u64>,
}

impl Default for Needles {
    fn default() -> Self {
        Needles {
            filter: vec![0; 1 << (FILTER_BITS - 6)],
            map: HashMap::new(),
            done: BTreeMap::new(),
        }
    }
}

fn slot(prefix: u64) -> usize {
    (prefix.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - FILTER_BITS)) as usize
}

impl Needles {
    fn add(&mut self, needle: [u8; NEEDLE], what: Msg) {
        let prefix = u64::from_le_bytes(needle[..8].try_into().unwrap_or([0; 8]));
        let s = slot(prefix);
        self.filter[s / 64] |= 1 << (s % 64);
        self.map.entry(prefix).or_default().push((needle, what));
    }

    /// The first message whose needle `bytes` contains.
    fn find(&self, bytes: &[u8]) -> Option<Msg> {
        for w in bytes.windows(NEEDLE) {
            let prefix = u64::from_le_bytes(w[..8].try_into().unwrap_or([0; 8]));
            let s = slot(prefix);
            if self.filter[s / 64] & (1 << (s % 64)) == 0 {
                continue;
            }
            let hit = self.map.get(&prefix).and_then(|v| {
                v.iter()
                    .find(|(needle, _)| needle.as_slice() == w)
                    .map(|x| x.1)
            });
            if hit.is_some() {
                return hit;
            }
        }
        None
    }
}

/// Forges the bytes of block `seq` in its store record (the layout of
/// `peermq::feed`'s records: a LEB128 head `present << 1 | has_data`, the
/// leaf's hash, the parents it completes, then the bytes), and rewrites the
/// leaf's hash to match: a mailbox that lies on purpose passes its own
/// integrity check, and only the recipient's proof can catch it.
fn forge(record: &mut [u8], seq: u64) -> bool {
    let mut head = 0u64;
    let mut used = 0;
    for (i, &b) in record.iter().enumerate().take(10) {
        head |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            used = i + 1;
            break;
        }
    }
    if used == 0 || head & 1 == 0 || head & 2 == 0 {
        return false;
    }
    let parents = ((head >> 2).count_ones() as usize) * NODE_LEN;
    let data = used + 32 + parents;
    let Some(last) = record.len().checked_sub(1).filter(|&l| l >= data) else {
        return false;
    };
    record[last] ^= 1;
    let leaf = TreeNode::leaf(seq, &record[data..]);
    record[used..used + 32].copy_from_slice(&leaf.hash.0);
    true
}

impl Sim<'_> {
    /// The mailbox plan's pairs (none without a mailbox).
    fn mail_pairs(&self) -> Vec<MailPair> {
        self.plan
            .options
            .mailbox
            .as_ref()
            .map(|m| m.pairs.clone())
            .unwrap_or_default()
    }

    /// Configures the mailbox and its pairs on fresh nodes: the recipient
    /// authorizes its sender and names the mailbox, the sender authorizes
    /// its recipient and routes to the mailbox, and both dial each other
    /// (which must never succeed: they are never online together).
    pub(super) fn set_up_mail(&mut self) {
        let Some(m) = self.plan.options.mailbox.clone() else {
            return;
        };
        self.oracle.mailboxes.insert(m.node);
        let mailbox = self.slots[m.node].id;
        for p in m.pairs {
            let r = self.slots[p.recipient].id;
            for (a, b) in [(p.sender, p.recipient), (p.recipient, p.sender)] {
                let id = self.slots[b].id;
                if let Some(n) = self.slots[a].node.as_mut() {
                    n.add_peer(id)
                        .unwrap_or_else(|e| panic!("add_peer on a fresh node failed: {e}"));
                }
                self.oracle.auth[a].insert(b);
                self.slots[a].dials.insert(b);
            }
            if let Some(n) = self.slots[p.recipient].node.as_mut() {
                n.add_mailbox(mailbox, Instant::ZERO)
                    .unwrap_or_else(|e| panic!("add_mailbox on a fresh node failed: {e}"));
            }
            if let Some(n) = self.slots[p.sender].node.as_mut() {
                n.add_route(r, mailbox)
                    .unwrap_or_else(|e| panic!("add_route on a fresh node failed: {e}"));
            }
        }
    }

    /// Whether `node` keeps its own hours (a mailbox pair's sender or
    /// recipient): the heal does not bring it up.
    pub(super) fn keeps_own_hours(&self, node: usize) -> bool {
        self.plan
            .options
            .mailbox
            .as_ref()
            .is_some_and(|m| m.in_pair(node))
    }

    /// Whether the liveness of the pair `(from, to)` is void: the mailbox
    /// destroyed a block the recipient never had.
    pub(super) fn mail_doomed(&self, from: usize, to: usize) -> bool {
        self.mail
            .tampered
            .get(&(from, to))
            .is_some_and(|s| !s.is_empty())
    }

    /// `Event::Connected` between `a` and `b`: never for a mailbox pair.
    pub(super) fn check_direct(&self, a: usize, b: usize) -> Result<(), Failure> {
        match self.plan.options.mail_pair(a, b) {
            Some(p) => Err(Failure::new(
                "mailbox-direct",
                format!(
                    "n{} and n{}, which meet only through the mailbox, connected directly (at n{a})",
                    p.sender, p.recipient
                ),
            )),
            None => Ok(()),
        }
    }

    /// Whether the recipient `to`'s store holds the bytes of each of
    /// `seqs` from `from`; the first that it does not, if any.
    fn first_missing(
        &self,
        from: usize,
        to: usize,
        seqs: &RangeSet,
    ) -> Result<Option<u64>, Failure> {
        let desc = FeedDescriptor::queue(self.slots[from].id, self.slots[to].id);
        let err = |e: &dyn std::fmt::Display| {
            Failure::new(
                "store-error",
                format!("reading n{to}'s store behind its back: {e}"),
            )
        };
        let txn = Txn::begin(&self.slots[to].store).map_err(|e| err(&e))?;
        let feed = Feed::open(&txn, desc).map_err(|e| err(&e))?;
        for (a, b) in seqs.ranges() {
            for seq in a..b {
                if !feed.has(&txn, seq).map_err(|e| err(&e))? {
                    return Ok(Some(seq));
                }
            }
        }
        Ok(None)
    }

    /// `from` saw `to` acknowledge `start..end`: through the mailbox, the
    /// recipient must hold every one of them, whatever the mailbox did.
    pub(super) fn check_acked_held(
        &self,
        from: usize,
        to: usize,
        start: u64,
        end: u64,
    ) -> Result<(), Failure> {
        let pair = self.plan.options.mail_pair(from, to);
        if pair.is_none_or(|p| p.sender != from) {
            return Ok(());
        }
        match self.first_missing(from, to, &RangeSet::from_range(start, end))? {
            Some(seq) => Err(Failure::new(
                "acked-undelivered",
                format!(
                    "n{from} sees message {seq} to n{to} acknowledged, but n{to} does not hold it"
                ),
            )),
            None => Ok(()),
        }
    }

    /// Searches every table of the mailbox's store for the plaintext of
    /// every message sent through it.
    pub(super) fn check_plaintext(&mut self) -> Result<(), Failure> {
        let Some(node) = self.plan.options.mailbox.as_ref().map(|m| m.node) else {
            return Ok(());
        };
        for p in self.mail_pairs() {
            let key = (p.sender, p.recipient);
            let sent = self.oracle.sent(p.sender, p.recipient);
            let done = self.mail.needles.done.get(&key).copied().unwrap_or(0);
            for seq in done..sent {
                let msg = self.oracle.message(p.sender, p.recipient, seq);
                let mut needle = [0u8; NEEDLE];
                // Padding starts after the 16-byte header, and the plan
                // gives mail at least 16 bytes of it.
                let Some(tail) = msg.get(16..16 + NEEDLE) else {
                    continue;
                };
                needle.copy_from_slice(tail);
                self.mail.needles.add(needle, (p.sender, p.recipient, seq));
            }
            self.mail.needles.done.insert(key, sent.max(done));
        }
        let mut found = None;
        let txn = Txn::begin(&self.slots[node].store)
            .map_err(|e| Failure::new("store-error", format!("reading n{node}'s store: {e}")))?;
        for table in Table::ALL {
            let needles = &self.mail.needles;
            txn.scan(
                table,
                (Bound::Unbounded, Bound::Unbounded),
                &mut |k, v| match needles.find(k).or_else(|| needles.find(v)) {
                    Some(hit) => {
                        found = Some((table, hit));
                        ControlFlow::Break(())
                    }
                    None => ControlFlow::Continue(()),
                },
            )
            .map_err(|e| Failure::new("store-error", format!("scanning n{node}'s store: {e}")))?;
            if found.is_some() {
                break;
            }
        }
        match found {
            Some((table, (from, to, seq))) => Err(Failure::new(
                "plaintext-at-mailbox",
                format!("the mailbox n{node} holds the plaintext of message {seq} from n{from} to n{to} in its {table:?} table"),
            )),
            None => Ok(()),
        }
    }

    /// The mailbox forges or drops one block of `from`'s feed to `to` that
    /// it holds.
    pub(super) fn tamper(&mut self, mailbox: usize, from: usize, to: usize, drop: bool, pick: u64) {
        let desc = FeedDescriptor::queue(self.slots[from].id, self.slots[to].id);
        let store = self.slots[mailbox].store.clone();
        let Ok(mut txn) = Txn::begin(&store) else {
            return;
        };
        let Ok(feed) = Feed::open(&txn, desc) else {
            return;
        };
        let held: Vec<u64> = (0..feed.len())
            .filter(|&s| feed.has(&txn, s).unwrap_or(false))
            .collect();
        if held.is_empty() {
            return;
        }
        let seq = held[(pick % held.len() as u64) as usize];
        let done = if drop {
            feed.drop_block(&mut txn, seq).unwrap_or(false) && txn.commit().is_ok()
        } else {
            std::mem::drop(txn);
            let key = peermq::feed::block_key(&desc.id(), seq);
            let mut forged = false;
            store.tamper(Table::Blocks, &key, |v| forged = forge(v, seq));
            forged
        };
        if !done {
            return;
        }
        self.note(format_args!(
            "n{mailbox} {} block {seq} of n{from} -> n{to}",
            if drop { "drops" } else { "forges" }
        ));
        let had = self
            .first_missing(from, to, &RangeSet::from_range(seq, seq + 1))
            .is_ok_and(|m| m.is_none());
        if !had {
            self.mail
                .tampered
                .entry((from, to))
                .or_default()
                .insert(seq);
        }
    }

    /// Test-only: writes the plaintext of the last message sent through
    /// the mailbox into its store.
    pub(super) fn leak(&mut self, node: usize) {
        let Some(p) = self
            .mail_pairs()
            .into_iter()
            .find(|p| self.oracle.sent(p.sender, p.recipient) > 0)
        else {
            return;
        };
        let seq = self.oracle.sent(p.sender, p.recipient) - 1;
        let msg = self.oracle.message(p.sender, p.recipient, seq);
        if let Ok(mut txn) = Txn::begin(&self.slots[node].store) {
            txn.put(Table::Meta, b"peermq-sim leak", &msg);
            let _ = txn.commit();
        }
    }

    /// The final mailbox checks: the sender sees acknowledged exactly what
    /// the recipient holds (all of it, unless the mailbox destroyed a
    /// block), and the mailbox's store holds no plaintext.
    pub(super) fn check_mail_end(&mut self) -> Result<(), Failure> {
        let Some(m) = self.plan.options.mailbox.clone() else {
            return Ok(());
        };
        for p in &m.pairs {
            let (s, r) = (p.sender, p.recipient);
            let rid = self.slots[r].id;
            let acked = match self.slots[s].node.as_ref().map(|n| n.acknowledged(rid)) {
                Some(Ok(a)) => a,
                Some(Err(e)) => {
                    return Err(Failure::new(
                        "store-error",
                        format!("n{s} acknowledged: {e}"),
                    ))
                }
                None => continue,
            };
            if let Some(seq) = self.first_missing(s, r, &acked)? {
                return Err(Failure::new(
                    "acked-undelivered",
                    format!("at the end n{s} sees message {seq} to n{r} acknowledged, but n{r} does not hold it"),
                ));
            }
            let sent = self.oracle.sent(s, r);
            self.stats.mail_sent += sent;
            self.stats.mail_acked += acked.count_within(0, sent);
            if !self.mail_doomed(s, r) && acked != RangeSet::from_range(0, sent) && sent > 0 {
                return Err(Failure::new(
                    "liveness",
                    format!(
                        "n{s} sent n{r} {sent} messages through the mailbox n{}, and at the end sees {} acknowledged",
                        m.node,
                        acked.count_within(0, sent)
                    ),
                ));
            }
        }
        self.check_plaintext()
    }
}

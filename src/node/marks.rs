//! The marks record: what the application did with the messages of one
//! sender, in one record that every process on the data directory reads
//! fresh and writes conditionally.
//!
//! A held message is in exactly one place:
//!
//! ```text
//!   held ──┬── cleared                      (bytes gone)
//!          ├── archived                     (processed)
//!          ├── moved[category]              (one named category, `dead` too)
//!          └── unread ── jobs[seq]?         (taken: lease, deliveries, retry time)
//! ```
//!
//! `cleared`, `archived` and each category are disjoint range sets; a
//! message leaves `jobs` when it leaves unread. Version 1 records (before
//! categories and leases) still load.

use std::collections::BTreeMap;

use super::category::{Category, DeadReason};
use crate::identity::PeerId;
use crate::ranges::RangeSet;
use crate::store::{Store, StoreError, Table, Txn};
use crate::time::Timestamp;
use crate::varint;

/// Version 1: cleared and archived only. Version 2 adds the rest.
const V1: u8 = 1;
const V2: u8 = 2;
/// Ranges a persisted set may hold; far more than any real pattern needs.
pub(crate) const MAX_STORED_RANGES: usize = 1 << 20;
/// Categories one sender's messages may be spread over.
const MAX_CATEGORIES: usize = 1 << 10;
/// Messages with work state (leased, retried, dead) per sender.
const MAX_JOBS: usize = 1 << 22;

/// The work state of an unread message that was taken at least once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Job {
    /// Times it was handed out with a lease.
    pub deliveries: u32,
    /// The live or lapsed lease: its token and deadline.
    pub lease: Option<(u64, Timestamp)>,
    /// Not handed out again before this time (a release's delay).
    pub retry_at: Timestamp,
}

impl Job {
    /// Whether a consumer holds it at `now`.
    pub fn is_leased(&self, now: Timestamp) -> bool {
        self.lease.is_some_and(|(_, deadline)| deadline > now)
    }

    /// When it may be handed out again: after a lapsed lease's deadline
    /// or a release's delay, whichever is later.
    pub fn available_at(&self) -> Timestamp {
        let lapsed = self.lease.map_or(Timestamp::EPOCH, |(_, d)| d);
        lapsed.max(self.retry_at)
    }
}

/// The marks of one sender's messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Marks {
    pub cleared: RangeSet,
    pub archived: RangeSet,
    /// Named categories, each with its messages; never an empty set.
    pub moved: BTreeMap<Category, RangeSet>,
    /// Unread messages that were taken.
    pub jobs: BTreeMap<u64, Job>,
    /// Messages in [`Category::DEAD`]: why, after how many deliveries.
    pub dead: BTreeMap<u64, (DeadReason, u32)>,
    /// The next lease token: unique per sender, as every lease is written
    /// through this record.
    pub next_lease: u64,
}

pub(crate) fn marks_key(from: &PeerId) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[..32].copy_from_slice(&from.0);
    k[32] = b'm';
    k
}

pub(crate) fn corrupt(from: &PeerId) -> StoreError {
    StoreError::Corrupted(format!("inbox of messages from {from} is damaged"))
}

impl Marks {
    /// The committed marks, and their raw record for a conditional write.
    pub fn load<'t, S: Store>(
        txn: &'t Txn<'_, S>,
        from: &PeerId,
    ) -> Result<(Self, Option<&'t [u8]>), StoreError> {
        let raw = txn.committed(Table::Inbox, &marks_key(from))?;
        let marks = match raw {
            None => Marks::default(),
            Some(bytes) => Marks::decode(bytes).ok_or_else(|| corrupt(from))?,
        };
        Ok((marks, raw))
    }

    /// Writes the marks, on condition the store still holds `before`.
    pub fn save<S: Store>(&self, txn: &mut Txn<'_, S>, from: &PeerId, before: Option<&[u8]>) {
        txn.put_expecting(Table::Inbox, &marks_key(from), self.encode(), before);
    }

    /// Every message moved out of unread into a named category.
    pub fn moved_union(&self) -> RangeSet {
        let mut all = RangeSet::new();
        for set in self.moved.values() {
            all.union(set);
        }
        all
    }

    /// The category `seq` is in, if a named one.
    pub fn category_of(&self, seq: u64) -> Option<Category> {
        self.moved
            .iter()
            .find(|(_, set)| set.contains(seq))
            .map(|(c, _)| *c)
    }

    /// Takes `seq` out of wherever the application put it (back to
    /// unread, with no work state), except cleared.
    pub fn unplace(&mut self, seq: u64) {
        self.archived.remove(seq, seq + 1);
        self.moved.retain(|_, set| {
            set.remove(seq, seq + 1);
            !set.is_empty()
        });
        self.jobs.remove(&seq);
        self.dead.remove(&seq);
    }

    /// Puts `seq` into `category`, out of every other place.
    pub fn move_to(&mut self, seq: u64, category: Category) {
        self.unplace(seq);
        self.moved.entry(category).or_default().insert(seq, seq + 1);
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = vec![V2];
        self.cleared.encode(&mut out);
        self.archived.encode(&mut out);
        varint::write(&mut out, self.moved.len() as u64);
        for (c, set) in &self.moved {
            c.encode(&mut out);
            set.encode(&mut out);
        }
        varint::write(&mut out, self.jobs.len() as u64);
        let mut prev = 0;
        for (&seq, job) in &self.jobs {
            varint::write(&mut out, seq - prev);
            prev = seq;
            varint::write(&mut out, u64::from(job.deliveries));
            match job.lease {
                None => varint::write(&mut out, 0),
                Some((token, deadline)) => {
                    varint::write(&mut out, token + 1);
                    varint::write(&mut out, deadline.as_micros());
                }
            }
            varint::write(&mut out, job.retry_at.as_micros());
        }
        varint::write(&mut out, self.dead.len() as u64);
        let mut prev = 0;
        for (&seq, &(reason, deliveries)) in &self.dead {
            varint::write(&mut out, seq - prev);
            prev = seq;
            out.push(reason.code());
            varint::write(&mut out, u64::from(deliveries));
        }
        varint::write(&mut out, self.next_lease);
        out
    }

    fn decode(bytes: &[u8]) -> Option<Marks> {
        let (&version, rest) = bytes.split_first()?;
        let (cleared, rest) = RangeSet::decode(rest, MAX_STORED_RANGES)?;
        let (archived, rest) = RangeSet::decode(rest, MAX_STORED_RANGES)?;
        let mut marks = Marks {
            cleared,
            archived,
            ..Marks::default()
        };
        match version {
            V1 => return rest.is_empty().then_some(marks),
            V2 => {}
            _ => return None,
        }
        let mut r = Reader(rest);
        for _ in 0..r.count(MAX_CATEGORIES)? {
            let (c, rest) = Category::decode(r.0)?;
            let (set, rest) = RangeSet::decode(rest, MAX_STORED_RANGES)?;
            r.0 = rest;
            if set.is_empty() || marks.moved.insert(c, set).is_some() {
                return None;
            }
        }
        let mut seq = 0u64;
        for i in 0..r.count(MAX_JOBS)? {
            seq = next_seq(seq, r.u64()?, i)?;
            let deliveries = u32::try_from(r.u64()?).ok()?;
            let lease = match r.u64()? {
                0 => None,
                t => Some((t - 1, Timestamp::from_micros(r.u64()?))),
            };
            let retry_at = Timestamp::from_micros(r.u64()?);
            marks.jobs.insert(
                seq,
                Job {
                    deliveries,
                    lease,
                    retry_at,
                },
            );
        }
        let mut seq = 0u64;
        for i in 0..r.count(MAX_JOBS)? {
            seq = next_seq(seq, r.u64()?, i)?;
            let (&code, rest) = r.0.split_first()?;
            r.0 = rest;
            let reason = DeadReason::from_code(code)?;
            let deliveries = u32::try_from(r.u64()?).ok()?;
            marks.dead.insert(seq, (reason, deliveries));
        }
        marks.next_lease = r.u64()?;
        r.0.is_empty().then_some(marks)
    }
}

/// Seqs are stored as increasing deltas: the first may be zero, the
/// others not.
fn next_seq(prev: u64, delta: u64, index: u64) -> Option<u64> {
    if index > 0 && delta == 0 {
        return None;
    }
    prev.checked_add(delta)
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u64(&mut self) -> Option<u64> {
        let (v, used) = varint::read(self.0)?;
        self.0 = &self.0[used..];
        Some(v)
    }

    fn count(&mut self, max: usize) -> Option<u64> {
        self.u64().filter(|&n| n <= max as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Marks {
        let mut m = Marks::default();
        m.cleared.insert(0, 2);
        m.archived.insert(2, 5);
        m.move_to(7, Category::new("later").unwrap());
        m.move_to(9, Category::DEAD);
        m.dead.insert(9, (DeadReason::MaxDeliveries, 5));
        m.jobs.insert(
            5,
            Job {
                deliveries: 2,
                lease: Some((41, Timestamp::from_micros(1_000_000))),
                retry_at: Timestamp::from_micros(3),
            },
        );
        m.jobs.insert(
            6,
            Job {
                deliveries: 1,
                lease: None,
                retry_at: Timestamp::from_micros(9),
            },
        );
        m.next_lease = 42;
        m
    }

    #[test]
    fn marks_round_trip_and_every_truncation_is_refused() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(Marks::decode(&bytes), Some(m));
        for cut in 0..bytes.len() {
            assert_eq!(Marks::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Marks::decode(&longer), None);
    }

    #[test]
    fn a_version_1_record_still_loads() {
        let mut v1 = vec![V1];
        let mut cleared = RangeSet::new();
        cleared.insert(3, 4);
        let mut archived = RangeSet::new();
        archived.insert(0, 3);
        cleared.encode(&mut v1);
        archived.encode(&mut v1);
        let m = Marks::decode(&v1).unwrap();
        assert_eq!((m.cleared, m.archived), (cleared, archived));
        assert!(m.moved.is_empty() && m.jobs.is_empty());
    }

    #[test]
    fn a_message_is_in_one_place_at_a_time() {
        let mut m = sample();
        m.move_to(5, Category::new("later").unwrap());
        assert!(!m.jobs.contains_key(&5), "moving ends the work state");
        m.move_to(7, Category::DEAD);
        assert_eq!(m.category_of(7), Some(Category::DEAD));
        m.unplace(9);
        assert_eq!(m.category_of(9), None);
        assert!(!m.dead.contains_key(&9));
        let later = Category::new("later").unwrap();
        assert_eq!(m.moved.get(&later).map(RangeSet::count), Some(1));
    }
}

//! Sets of block numbers kept as sorted, disjoint half-open ranges.
//!
//! Feeds are mostly read, held and acknowledged in runs, so a set of a
//! million blocks is typically a handful of ranges, not a million bits.

use std::collections::BTreeMap;

/// A set of `u64`s stored as sorted, disjoint, non-adjacent ranges, in a
/// B-tree keyed by range start: every operation is logarithmic in the number
/// of ranges, so a sparse reader's thousands of fragments stay cheap.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RangeSet {
    /// start → end (exclusive).
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The set `[start, end)`.
    pub fn from_range(start: u64, end: u64) -> Self {
        let mut s = Self::new();
        s.insert(start, end);
        s
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The ranges, in order.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.map.iter().map(|(&a, &b)| (a, b))
    }

    /// Number of ranges.
    pub fn range_count(&self) -> usize {
        self.map.len()
    }

    /// Number of members.
    pub fn count(&self) -> u64 {
        self.map.iter().map(|(a, b)| b - a).sum()
    }

    /// Number of members in `[start, end)`.
    pub fn count_within(&self, start: u64, end: u64) -> u64 {
        self.ranges_within(start, end)
            .iter()
            .map(|(a, b)| b - a)
            .sum()
    }

    /// The range holding `x`, if any.
    fn holding(&self, x: u64) -> Option<(u64, u64)> {
        self.map
            .range(..=x)
            .next_back()
            .filter(|(_, &e)| x < e)
            .map(|(&s, &e)| (s, e))
    }

    /// Whether `x` is a member.
    pub fn contains(&self, x: u64) -> bool {
        self.holding(x).is_some()
    }

    /// Whether every member of `[start, end)` is in the set.
    pub fn contains_range(&self, start: u64, end: u64) -> bool {
        start >= end || self.holding(start).is_some_and(|(_, e)| end <= e)
    }

    /// Adds `[start, end)`.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut lo, mut hi) = (start, end);
        // A range ending at or after `start` (adjacent included) merges.
        if let Some((&s, &e)) = self.map.range(..=start).next_back() {
            if e >= start {
                lo = s;
                hi = hi.max(e);
            }
        }
        // So do ranges starting inside `[lo, hi]`, adjacency included.
        while let Some((&s, &e)) = self.map.range(lo..=hi).next() {
            self.map.remove(&s);
            hi = hi.max(e);
        }
        self.map.insert(lo, hi);
    }

    /// Removes `[start, end)`.
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // A range starting before `start` keeps its head, and its tail if it
        // runs past `end`.
        if let Some((&s, &e)) = self.map.range(..start).next_back() {
            if e > start {
                self.map.insert(s, start);
                if e > end {
                    self.map.insert(end, e);
                    return;
                }
            }
        }
        while let Some((&s, &e)) = self.map.range(start..end).next() {
            self.map.remove(&s);
            if e > end {
                self.map.insert(end, e);
            }
        }
    }

    /// Adds every member of `other`.
    pub fn union(&mut self, other: &RangeSet) {
        for (a, b) in other.ranges() {
            self.insert(a, b);
        }
    }

    /// Removes every member of `other`.
    pub fn subtract(&mut self, other: &RangeSet) {
        for (a, b) in other.ranges() {
            self.remove(a, b);
        }
    }

    /// The smallest member at or after `x`.
    pub fn next_member(&self, x: u64) -> Option<u64> {
        if self.contains(x) {
            return Some(x);
        }
        self.map.range(x..).next().map(|(&s, _)| s)
    }

    /// The smallest non-member at or after `x`.
    pub fn next_gap(&self, x: u64) -> u64 {
        // Ranges never touch, so the end of the one holding `x` is a gap.
        self.holding(x).map_or(x, |(_, e)| e)
    }

    /// The first run of `[start, end)` that none of `sets` holds, if any;
    /// it costs a few lookups per set, however large the sets are.
    pub fn first_uncovered(sets: &[&RangeSet], start: u64, end: u64) -> Option<(u64, u64)> {
        let mut s = start;
        loop {
            if s >= end {
                return None;
            }
            let past = sets.iter().map(|r| r.next_gap(s)).max().unwrap_or(s);
            if past == s {
                break;
            }
            s = past;
        }
        let e = sets
            .iter()
            .filter_map(|r| r.next_member(s))
            .min()
            .map_or(end, |m| m.min(end));
        Some((s, e))
    }

    /// The sub-ranges of `[start, end)` that are not in the set.
    pub fn gaps(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = start;
        for (s, e) in self.ranges_within(start, end) {
            if s > at {
                out.push((at, s));
            }
            at = e;
        }
        if at < end {
            out.push((at, end));
        }
        out
    }

    /// Members in `[start, end)`, in order.
    pub fn iter_within(&self, start: u64, end: u64) -> impl Iterator<Item = u64> + '_ {
        self.ranges_within(start, end)
            .into_iter()
            .flat_map(|(a, b)| a..b)
    }

    /// The set's ranges clipped to `[start, end)`.
    pub fn ranges_within(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        if start >= end {
            return out;
        }
        if let Some((_, &e)) = self.map.range(..start).next_back() {
            if e > start {
                out.push((start, e.min(end)));
            }
        }
        out.extend(self.map.range(start..end).map(|(&s, &e)| (s, e.min(end))));
        out
    }

    /// The first `n` ranges, as a set.
    pub fn first_ranges(&self, n: usize) -> RangeSet {
        RangeSet {
            map: self.map.iter().take(n).map(|(&a, &b)| (a, b)).collect(),
        }
    }

    /// Encodes as a count then `(start, end)` pairs, all little-endian.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.map.len() as u32).to_le_bytes());
        for (&a, &b) in &self.map {
            out.extend_from_slice(&a.to_le_bytes());
            out.extend_from_slice(&b.to_le_bytes());
        }
    }

    /// Encodes compactly, as the wire carries it: a count, then per range
    /// its gap from the previous range's end (from 0 for the first) and its
    /// length, all varints. A thousand scattered blocks take about 3 bytes
    /// each instead of 16.
    pub fn encode_compact(&self, out: &mut Vec<u8>) {
        crate::varint::write(out, self.map.len() as u64);
        let mut prev = 0;
        for (&a, &b) in &self.map {
            crate::varint::write(out, a - prev);
            crate::varint::write(out, b - a);
            prev = b;
        }
    }

    /// Decodes [`RangeSet::encode_compact`]'s bytes from the front of
    /// `bytes`, returning the rest. At most `max_ranges` ranges are accepted;
    /// ranges must be non-empty, disjoint and non-adjacent (every gap but the
    /// first at least 1), and end within `u64`.
    pub fn decode_compact(bytes: &[u8], max_ranges: usize) -> Option<(Self, &[u8])> {
        let mut rest = bytes;
        let mut next = || {
            let (v, used) = crate::varint::read(rest)?;
            rest = &rest[used..];
            Some(v)
        };
        let n = next()?;
        if n > max_ranges as u64 {
            return None;
        }
        let mut map = BTreeMap::new();
        let mut prev = 0u64;
        for i in 0..n {
            let (gap, len) = (next()?, next()?);
            if (i > 0 && gap == 0) || len == 0 {
                return None;
            }
            let a = prev.checked_add(gap)?;
            let b = a.checked_add(len)?;
            map.insert(a, b);
            prev = b;
        }
        Some((RangeSet { map }, rest))
    }

    /// Decodes [`RangeSet::encode`]'s bytes from the front of `bytes`,
    /// returning the rest. At most `max_ranges` ranges are accepted, and the
    /// ranges must be sorted, disjoint and non-adjacent, as `encode` writes
    /// them.
    pub fn decode(bytes: &[u8], max_ranges: usize) -> Option<(Self, &[u8])> {
        let n = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        if n > max_ranges || bytes.len() < 4 + n * 16 {
            return None;
        }
        let mut map = BTreeMap::new();
        let mut prev_end = None;
        for i in 0..n {
            let at = 4 + i * 16;
            let a = u64::from_le_bytes(bytes[at..at + 8].try_into().ok()?);
            let b = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().ok()?);
            if a >= b || prev_end.is_some_and(|p| a <= p) {
                return None;
            }
            prev_end = Some(b);
            map.insert(a, b);
        }
        Some((RangeSet { map }, &bytes[4 + n * 16..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn matches_a_set_model() {
        let mut rng = crate::rng::SeededRng::from_u64(5);
        use crate::rng::RandomSource;
        for _ in 0..200 {
            let mut set = RangeSet::new();
            let mut model = BTreeSet::new();
            for _ in 0..40 {
                let a = rng.next_u64() % 64;
                let b = a + rng.next_u64() % 12;
                if rng.next_u64().is_multiple_of(3) {
                    set.remove(a, b);
                    (a..b).for_each(|x| {
                        model.remove(&x);
                    });
                } else {
                    set.insert(a, b);
                    model.extend(a..b);
                }
                let rs: Vec<(u64, u64)> = set.ranges().collect();
                for w in rs.windows(2) {
                    assert!(w[0].1 < w[1].0, "disjoint, non-adjacent: {:?}", set);
                }
                for x in 0..80 {
                    assert_eq!(set.contains(x), model.contains(&x));
                    assert_eq!(set.next_member(x), model.range(x..).next().copied());
                    assert_eq!(set.next_gap(x), (x..).find(|y| !model.contains(y)).unwrap());
                }
                assert_eq!(set.count(), model.len() as u64);
                let (s, e) = (rng.next_u64() % 70, rng.next_u64() % 70);
                let gaps: BTreeSet<u64> =
                    set.gaps(s, e).into_iter().flat_map(|(a, b)| a..b).collect();
                let want: BTreeSet<u64> = (s..e).filter(|x| !model.contains(x)).collect();
                assert_eq!(gaps, want);
                let within: Vec<u64> = set.iter_within(s, e).collect();
                let clipped: Vec<u64> = set
                    .ranges_within(s, e)
                    .into_iter()
                    .flat_map(|(a, b)| a..b)
                    .collect();
                assert_eq!(clipped, within);
                assert_eq!(
                    within,
                    model.range(s..e.max(s)).copied().collect::<Vec<_>>()
                );
                assert_eq!(set.contains_range(s, e), (s..e).all(|x| model.contains(&x)));
                assert_eq!(
                    set.count_within(s, e),
                    (s..e).filter(|x| model.contains(x)).count() as u64
                );
            }
            let mut buf = Vec::new();
            set.encode(&mut buf);
            assert_eq!(RangeSet::decode(&buf, 1000).unwrap().0, set);
        }
    }

    #[test]
    fn first_uncovered_is_the_first_run_no_set_holds() {
        let mut rng = crate::rng::SeededRng::from_u64(6);
        use crate::rng::RandomSource;
        for _ in 0..500 {
            let sets: Vec<RangeSet> = (0..3)
                .map(|_| {
                    let mut set = RangeSet::new();
                    for _ in 0..6 {
                        let a = rng.next_u64() % 64;
                        set.insert(a, a + rng.next_u64() % 9);
                    }
                    set
                })
                .collect();
            let refs: Vec<&RangeSet> = sets.iter().collect();
            let (s, e) = (rng.next_u64() % 70, rng.next_u64() % 70);
            let free = |x: &u64| !sets.iter().any(|set| set.contains(*x));
            let want = (s..e).find(free).map(|a| {
                let b = (a..e).find(|x| !free(x)).unwrap_or(e);
                (a, b)
            });
            assert_eq!(
                RangeSet::first_uncovered(&refs, s, e),
                want,
                "{sets:?} {s}..{e}"
            );
        }
        assert_eq!(RangeSet::first_uncovered(&[], 3, 9), Some((3, 9)));
    }

    #[test]
    fn decode_rejects_unsorted_and_oversized() {
        let mut buf = Vec::new();
        RangeSet::from_range(1, 5).encode(&mut buf);
        assert!(RangeSet::decode(&buf, 0).is_none());
        let mut bad = Vec::new();
        bad.extend_from_slice(&2u32.to_le_bytes());
        for v in [5u64, 9, 1, 3] {
            bad.extend_from_slice(&v.to_le_bytes());
        }
        assert!(RangeSet::decode(&bad, 10).is_none());
        assert!(RangeSet::decode(&[255, 255, 255, 255], usize::MAX).is_none());
    }

    #[test]
    fn compact_encoding_roundtrips_and_refuses_what_a_set_cannot_be() {
        let mut set = RangeSet::new();
        for (a, b) in [(0, 1), (100, 101), (200, 260), (u64::MAX - 5, u64::MAX)] {
            set.insert(a, b);
        }
        let mut buf = Vec::new();
        set.encode_compact(&mut buf);
        buf.push(9);
        let (back, rest) = RangeSet::decode_compact(&buf, 4).unwrap();
        assert_eq!((back, rest), (set.clone(), &[9u8][..]));
        assert!(
            RangeSet::decode_compact(&buf, 3).is_none(),
            "over the limit"
        );
        let varints = |vs: &[u64]| {
            let mut out = Vec::new();
            for &v in vs {
                crate::varint::write(&mut out, v);
            }
            out
        };
        // Empty range; adjacent ranges; an end past 2^64; truncated.
        for bad in [
            varints(&[1, 5, 0]),
            varints(&[2, 0, 3, 0, 2]),
            varints(&[1, u64::MAX, 2]),
            varints(&[2, 0, 3]),
        ] {
            assert!(RangeSet::decode_compact(&bad, 10).is_none(), "{bad:?}");
        }
        let first_at_zero = varints(&[1, 0, 3]);
        assert_eq!(
            RangeSet::decode_compact(&first_at_zero, 10).unwrap().0,
            RangeSet::from_range(0, 3)
        );
    }
}

//! Sets of block numbers kept as sorted, disjoint half-open ranges.
//!
//! Feeds are mostly read, held and acknowledged in runs, so a set of a
//! million blocks is typically a handful of ranges, not a million bits.

/// A set of `u64`s stored as sorted, disjoint, non-adjacent ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RangeSet {
    ranges: Vec<(u64, u64)>,
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
        self.ranges.is_empty()
    }

    /// The ranges, in order.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Number of members.
    pub fn count(&self) -> u64 {
        self.ranges.iter().map(|(a, b)| b - a).sum()
    }

    /// Number of members in `[start, end)`.
    pub fn count_within(&self, start: u64, end: u64) -> u64 {
        self.ranges
            .iter()
            .map(|&(a, b)| b.min(end).saturating_sub(a.max(start)))
            .sum()
    }

    /// Index of the first range that ends at or after `x`.
    fn first_ending_at_or_after(&self, x: u64) -> usize {
        self.ranges.partition_point(|&(_, end)| end < x)
    }

    /// Whether `x` is a member.
    pub fn contains(&self, x: u64) -> bool {
        let i = self.ranges.partition_point(|&(_, end)| end <= x);
        self.ranges.get(i).is_some_and(|&(s, _)| s <= x)
    }

    /// Whether every member of `[start, end)` is in the set.
    pub fn contains_range(&self, start: u64, end: u64) -> bool {
        if start >= end {
            return true;
        }
        let i = self.ranges.partition_point(|&(_, e)| e <= start);
        self.ranges
            .get(i)
            .is_some_and(|&(s, e)| s <= start && end <= e)
    }

    /// Adds `[start, end)`.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // Ranges touching [start, end), adjacent ones included, merge into it.
        let lo = self.first_ending_at_or_after(start);
        let hi = self.ranges.partition_point(|&(s, _)| s <= end);
        if lo < hi {
            let new = (start.min(self.ranges[lo].0), end.max(self.ranges[hi - 1].1));
            self.ranges.splice(lo..hi, [new]);
        } else {
            self.ranges.insert(lo, (start, end));
        }
    }

    /// Removes `[start, end)`.
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let lo = self.ranges.partition_point(|&(_, e)| e <= start);
        let hi = self.ranges.partition_point(|&(s, _)| s < end);
        if lo >= hi {
            return;
        }
        let mut keep = Vec::with_capacity(2);
        let (first_start, _) = self.ranges[lo];
        let (_, last_end) = self.ranges[hi - 1];
        if first_start < start {
            keep.push((first_start, start));
        }
        if end < last_end {
            keep.push((end, last_end));
        }
        self.ranges.splice(lo..hi, keep);
    }

    /// Adds every member of `other`.
    pub fn union(&mut self, other: &RangeSet) {
        for &(a, b) in &other.ranges {
            self.insert(a, b);
        }
    }

    /// Removes every member of `other`.
    pub fn subtract(&mut self, other: &RangeSet) {
        for &(a, b) in &other.ranges {
            self.remove(a, b);
        }
    }

    /// The smallest member at or after `x`.
    pub fn next_member(&self, x: u64) -> Option<u64> {
        let i = self.ranges.partition_point(|&(_, e)| e <= x);
        self.ranges.get(i).map(|&(s, _)| s.max(x))
    }

    /// The smallest non-member at or after `x`.
    pub fn next_gap(&self, x: u64) -> u64 {
        let i = self.ranges.partition_point(|&(_, e)| e <= x);
        match self.ranges.get(i) {
            Some(&(s, e)) if s <= x => e,
            _ => x,
        }
    }

    /// The sub-ranges of `[start, end)` that are not in the set.
    pub fn gaps(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = start;
        let i = self.ranges.partition_point(|&(_, e)| e <= start);
        for &(s, e) in &self.ranges[i..] {
            if at >= end {
                break;
            }
            if s > at {
                out.push((at, s.min(end)));
            }
            at = at.max(e);
        }
        if at < end {
            out.push((at, end));
        }
        out
    }

    /// The set's ranges clipped to `[start, end)`.
    pub fn ranges_within(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let i = self.ranges.partition_point(|&(_, e)| e <= start);
        self.ranges[i..]
            .iter()
            .take_while(|&&(s, _)| s < end)
            .map(|&(s, e)| (s.max(start), e.min(end)))
            .filter(|(s, e)| s < e)
            .collect()
    }

    /// Members in `[start, end)`, in order.
    pub fn iter_within(&self, start: u64, end: u64) -> impl Iterator<Item = u64> + '_ {
        let i = self.ranges.partition_point(|&(_, e)| e <= start);
        self.ranges[i..]
            .iter()
            .take_while(move |&&(s, _)| s < end)
            .flat_map(move |&(s, e)| s.max(start)..e.min(end))
    }

    /// Encodes as a count then `(start, end)` pairs, all little-endian.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.ranges.len() as u32).to_le_bytes());
        for &(a, b) in &self.ranges {
            out.extend_from_slice(&a.to_le_bytes());
            out.extend_from_slice(&b.to_le_bytes());
        }
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
        let mut ranges = Vec::with_capacity(n);
        let mut prev_end = None;
        for i in 0..n {
            let at = 4 + i * 16;
            let a = u64::from_le_bytes(bytes[at..at + 8].try_into().ok()?);
            let b = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().ok()?);
            if a >= b || prev_end.is_some_and(|p| a <= p) {
                return None;
            }
            prev_end = Some(b);
            ranges.push((a, b));
        }
        Some((RangeSet { ranges }, &bytes[4 + n * 16..]))
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
                if rng.next_u64() % 3 == 0 {
                    set.remove(a, b);
                    (a..b).for_each(|x| {
                        model.remove(&x);
                    });
                } else {
                    set.insert(a, b);
                    model.extend(a..b);
                }
                for w in set.ranges().windows(2) {
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
}

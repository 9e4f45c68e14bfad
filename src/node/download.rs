//! What a reader holds and has asked for of one incoming feed: the state a
//! queue inbox ([`super::inbox::Inbox`]) and a broadcast replica
//! ([`super::broadcast::Replica`]) share, and the planning step both use to
//! cut what is missing into requests.

use smallvec::{smallvec, SmallVec};

use crate::ranges::RangeSet;

/// One incoming feed's download.
#[derive(Clone, Debug, Default)]
pub(crate) struct Download {
    /// Blocks whose bytes arrived and were stored.
    pub held: RangeSet,
    /// In memory: blocks asked for on some connection.
    pub requested: RangeSet,
    /// In memory: the longest verified length a peer announced.
    pub announced: u64,
}

impl Download {
    /// The next request to make for blocks in `[from, to)`: the first run
    /// neither held, nor requested, nor in any of `skip` (cleared, refused),
    /// at most `per` blocks long. Marks it requested.
    pub fn next_request(
        &mut self,
        skip: &[&RangeSet],
        from: u64,
        to: u64,
        per: u64,
    ) -> Option<(u64, u64)> {
        // Planning runs per request: no allocation for the few sets.
        let mut done: SmallVec<[&RangeSet; 4]> = smallvec![&self.held, &self.requested];
        done.extend_from_slice(skip);
        let (start, gap_end) = RangeSet::first_uncovered(&done, from, to)?;
        drop(done);
        let end = gap_end.min(start.saturating_add(per));
        self.requested.insert(start, end);
        Some((start, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_cover_each_missing_block_once_in_runs_of_at_most_per() {
        let mut d = Download::default();
        d.held.insert(3, 5);
        let mut cleared = RangeSet::new();
        cleared.insert(9, 10);
        let mut got = Vec::new();
        let mut at = 0;
        while let Some((a, b)) = d.next_request(&[&cleared], at, 14, 4) {
            got.push((a, b));
            at = b;
        }
        assert_eq!(got, vec![(0, 3), (5, 9), (10, 14)]);
        // Everything is requested now: nothing more to ask.
        assert_eq!(d.next_request(&[&cleared], 0, 14, 4), None);
    }
}

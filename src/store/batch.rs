//! The write batch: every write of one unit of work, applied atomically.

use std::collections::BTreeMap;
use std::ops::Bound;

use smallvec::SmallVec;

use super::Table;

/// A key held inline: every key the core writes fits, so batching a write
/// costs no allocation for its key.
pub(crate) type Key = SmallVec<[u8; 48]>;

/// Writes collected for one atomic commit.
///
/// Entries are kept sorted by table and key, so a backend applies them in key
/// order (which B-trees like) and a later write of a key replaces an earlier
/// one.
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    tables: [TableWrites; Table::ALL.len()],
    /// Preconditions: the committed value each of these keys must still
    /// have when the batch commits, or the commit fails with
    /// [`super::StoreError::Conflict`] and writes nothing.
    expected: Vec<(Table, Key, Option<Vec<u8>>)>,
}

impl PartialEq for WriteBatch {
    /// Equal when they would write the same things under the same
    /// preconditions, however each was assembled.
    fn eq(&self, other: &Self) -> bool {
        self.expected == other.expected && self.iter().eq(other.iter())
    }
}

impl Eq for WriteBatch {}

type Entry = (Key, Option<Vec<u8>>);

/// How far behind the end of a run an out-of-order write may land and still
/// be inserted into it (shifting at most this many entries).
const STRAGGLER: usize = 64;

/// One table's writes.
///
/// Appends write keys in ascending order (a feed's blocks one after
/// another), so most writes extend `run` after a single comparison with its
/// last key, where a B-tree would compare all the way down. Writes that
/// arrive out of order go to `rest`. A key lives in at most one of the two.
#[derive(Clone, Debug, Default)]
struct TableWrites {
    run: Vec<Entry>,
    rest: BTreeMap<Key, Option<Vec<u8>>>,
}

impl TableWrites {
    fn insert(&mut self, key: &[u8], value: Option<Vec<u8>>) {
        if !self.rest.is_empty() {
            if let Some(slot) = self.rest.get_mut(key) {
                *slot = value;
                return;
            }
        }
        match self.run.last() {
            Some((last, _)) if key <= last.as_slice() => {
                match self.search_run(key) {
                    Ok(i) => self.run[i].1 = value,
                    // A straggler just behind the end (a block written after
                    // a proof node to its right) still joins the run.
                    Err(i) if self.run.len() - i <= STRAGGLER => {
                        self.run.insert(i, (Key::from_slice(key), value));
                    }
                    Err(_) => {
                        self.rest.insert(Key::from_slice(key), value);
                    }
                }
            }
            _ => self.run.push((Key::from_slice(key), value)),
        }
    }

    fn get(&self, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        if let Some(i) = self.find_in_run(key) {
            return Some(&self.run[i].1);
        }
        if self.rest.is_empty() {
            return None;
        }
        self.rest.get(key)
    }

    fn find_in_run(&self, key: &[u8]) -> Option<usize> {
        match self.run.last() {
            Some((last, _)) if key <= last.as_slice() => self.search_run(key).ok(),
            _ => None,
        }
    }

    /// Binary search that first gallops back from the end: reads and
    /// stragglers mostly concern keys written moments ago.
    fn search_run(&self, key: &[u8]) -> Result<usize, usize> {
        let len = self.run.len();
        let mut step = 1;
        let mut lo = len;
        while step <= len {
            let probe = len - step;
            match self.run[probe].0.as_slice().cmp(key) {
                std::cmp::Ordering::Equal => return Ok(probe),
                std::cmp::Ordering::Less => {
                    let found =
                        self.run[probe + 1..lo].binary_search_by(|(k, _)| k.as_slice().cmp(key));
                    return found.map(|i| i + probe + 1).map_err(|i| i + probe + 1);
                }
                std::cmp::Ordering::Greater => lo = probe,
            }
            step *= 2;
        }
        self.run[..lo].binary_search_by(|(k, _)| k.as_slice().cmp(key))
    }

    fn len(&self) -> usize {
        self.run.len() + self.rest.len()
    }

    fn is_empty(&self) -> bool {
        self.run.is_empty() && self.rest.is_empty()
    }

    fn range<'a>(
        &'a self,
        range: (Bound<&[u8]>, Bound<&[u8]>),
    ) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a {
        // BTreeMap::range panics on an inverted range; it is simply empty.
        let inverted = match range {
            (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => {
                a > b || (a == b && !matches!(range, (Bound::Included(_), Bound::Included(_))))
            }
            _ => false,
        };
        let (run, rest) = if inverted {
            (&self.run[..0], None)
        } else {
            let from = match range.0 {
                Bound::Included(a) => self.run.partition_point(|(k, _)| k.as_slice() < a),
                Bound::Excluded(a) => self.run.partition_point(|(k, _)| k.as_slice() <= a),
                Bound::Unbounded => 0,
            };
            let to = match range.1 {
                Bound::Included(b) => self.run.partition_point(|(k, _)| k.as_slice() <= b),
                Bound::Excluded(b) => self.run.partition_point(|(k, _)| k.as_slice() < b),
                Bound::Unbounded => self.run.len(),
            };
            (&self.run[from..to], Some(self.rest.range::<[u8], _>(range)))
        };
        Merge::new(
            run.iter().map(|(k, v)| (k.as_slice(), v.as_deref())),
            rest.into_iter()
                .flatten()
                .map(|(k, v)| (k.as_slice(), v.as_deref())),
        )
    }

    fn iter(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.range((Bound::Unbounded, Bound::Unbounded))
    }

    fn into_entries(self) -> impl Iterator<Item = Entry> {
        Merge::new(self.run.into_iter(), self.rest.into_iter())
    }
}

/// Two ascending iterators with disjoint keys, merged into one.
struct Merge<A: Iterator, B: Iterator> {
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
}

impl<A: Iterator, B: Iterator<Item = A::Item>> Merge<A, B> {
    fn new(a: A, b: B) -> Self {
        Merge {
            a: a.peekable(),
            b: b.peekable(),
        }
    }
}

impl<K: Ord, V, A, B> Iterator for Merge<A, B>
where
    A: Iterator<Item = (K, V)>,
    B: Iterator<Item = (K, V)>,
{
    type Item = (K, V);

    fn next(&mut self) -> Option<(K, V)> {
        match (self.a.peek(), self.b.peek()) {
            (Some((ka, _)), Some((kb, _))) if kb < ka => self.b.next(),
            (Some(_), _) => self.a.next(),
            (None, _) => self.b.next(),
        }
    }
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` in `table` to `value`.
    pub fn put(&mut self, table: Table, key: &[u8], value: &[u8]) {
        self.put_owned(table, key, value.to_vec());
    }

    /// Sets `key` in `table` to `value`, taking ownership of the value.
    pub fn put_owned(&mut self, table: Table, key: &[u8], value: Vec<u8>) {
        self.tables[table.position()].insert(key, Some(value));
    }

    /// Removes `key` from `table`.
    pub fn delete(&mut self, table: Table, key: &[u8]) {
        self.tables[table.position()].insert(key, None);
    }

    /// Makes the commit conditional on `key` still holding `value` (`None`:
    /// absent) in the store. This is how several processes sharing one data
    /// directory avoid lost updates on records they read, change and write.
    ///
    /// Only the first expectation of a key counts: it describes the state
    /// the whole batch started from.
    pub fn expect(&mut self, table: Table, key: &[u8], value: Option<&[u8]>) {
        if self
            .expected
            .iter()
            .any(|(t, k, _)| *t == table && k.as_slice() == key)
        {
            return;
        }
        self.expected
            .push((table, Key::from_slice(key), value.map(<[u8]>::to_vec)));
    }

    /// The commit's preconditions.
    pub fn expectations(&self) -> impl Iterator<Item = (Table, &[u8], Option<&[u8]>)> {
        self.expected
            .iter()
            .map(|(t, k, v)| (*t, k.as_slice(), v.as_deref()))
    }

    /// The pending write of `key`: `None` if the batch does not touch it,
    /// `Some(None)` for a delete.
    pub fn pending(&self, table: Table, key: &[u8]) -> Option<Option<&[u8]>> {
        self.tables[table.position()].get(key).map(|v| v.as_deref())
    }

    /// Pending writes of `table` within `range`, in key order.
    pub fn pending_range<'a>(
        &'a self,
        table: Table,
        range: (Bound<&[u8]>, Bound<&[u8]>),
    ) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a {
        self.tables[table.position()].range(range)
    }

    /// All writes of `table`, in key order.
    pub fn table(&self, table: Table) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.tables[table.position()].iter()
    }

    /// All writes, by table then key.
    pub fn iter(&self) -> impl Iterator<Item = (Table, &[u8], Option<&[u8]>)> {
        Table::ALL
            .into_iter()
            .flat_map(move |t| self.table(t).map(move |(k, v)| (t, k, v)))
    }

    /// Takes every write out of the batch, by table then key.
    pub fn drain(self) -> impl Iterator<Item = (Table, Key, Option<Vec<u8>>)> {
        let WriteBatch { tables, .. } = self;
        tables
            .into_iter()
            .zip(Table::ALL)
            .flat_map(|(writes, t)| writes.into_entries().map(move |(k, v)| (t, k, v)))
    }

    /// Number of distinct keys written.
    pub fn len(&self) -> usize {
        self.tables.iter().map(|m| m.len()).sum()
    }

    /// Whether the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.tables.iter().all(|m| m.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;
    use std::ops::RangeBounds;

    /// The batch against a plain B-tree: whatever order keys arrive in
    /// (ascending runs, repeats, stragglers), lookups, ranges and the
    /// drained writes agree.
    fn agrees(ops: Vec<(u8, Option<u8>)>, lo: u8, hi: u8, ascending: bool) -> bool {
        let mut batch = WriteBatch::new();
        let mut model: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for (i, (k, v)) in ops.into_iter().enumerate() {
            // Mostly ascending keys when asked, as appends write them.
            let key = if ascending && i % 5 != 0 {
                vec![(i / 3) as u8, k % 4]
            } else {
                vec![k % 64, k / 64]
            };
            match v {
                Some(v) => batch.put(Table::Blocks, &key, &[v]),
                None => batch.delete(Table::Blocks, &key),
            }
            model.insert(key, v.map(|v| vec![v]));
        }
        let (lo, hi) = ([lo % 70], [hi % 70]);
        let bounds = [
            (Bound::Included(&lo[..]), Bound::Excluded(&hi[..])),
            (Bound::Excluded(&lo[..]), Bound::Included(&hi[..])),
            (Bound::Unbounded, Bound::Included(&hi[..])),
            (Bound::Included(&lo[..]), Bound::Unbounded),
        ];
        let ranges_agree = bounds.into_iter().all(|range| {
            // Filtering by hand gives the truth for inverted ranges too.
            let want: Vec<_> = model
                .iter()
                .filter(|(k, _)| RangeBounds::<[u8]>::contains(&range, k.as_slice()))
                .map(|(k, v)| (k.as_slice(), v.as_deref()))
                .collect();
            let got: Vec<_> = batch.pending_range(Table::Blocks, range).collect();
            got == want
        });
        let lookups_agree = model
            .iter()
            .all(|(k, v)| batch.pending(Table::Blocks, k) == Some(v.as_deref()))
            && batch.pending(Table::Blocks, &[200, 200, 200]).is_none();
        let all_agree = batch
            .table(Table::Blocks)
            .eq(model.iter().map(|(k, v)| (k.as_slice(), v.as_deref())));
        let len_agrees = batch.len() == model.len();
        let drained: Vec<_> = batch.drain().map(|(_, k, v)| (k.to_vec(), v)).collect();
        let model: Vec<_> = model.into_iter().collect();
        ranges_agree && lookups_agree && all_agree && len_agrees && drained == model
    }

    quickcheck! {
        fn behaves_like_a_btree(ops: Vec<(u8, Option<u8>)>, lo: u8, hi: u8, ascending: bool) -> bool {
            agrees(ops, lo, hi, ascending)
        }
    }

    #[test]
    fn equality_ignores_how_a_batch_was_assembled() {
        let mut a = WriteBatch::new();
        a.put(Table::Blocks, b"a", b"1");
        a.put(Table::Blocks, b"b", b"2");
        let mut b = WriteBatch::new();
        b.put(Table::Blocks, b"b", b"2");
        b.put(Table::Blocks, b"a", b"1");
        assert_eq!(a, b);
        b.put(Table::Blocks, b"a", b"3");
        assert_ne!(a, b);
    }
}

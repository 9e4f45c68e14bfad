//! The write batch: every write of one unit of work, applied atomically.

use std::collections::BTreeMap;

use super::Table;

/// Writes collected for one atomic commit.
///
/// Entries are kept sorted by (table, key), so a backend applies them in key
/// order (which B-trees like) and a later write of a key replaces an earlier
/// one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` in `table` to `value`.
    pub fn put(&mut self, table: Table, key: &[u8], value: &[u8]) {
        self.ops.insert((table, key.to_vec()), Some(value.to_vec()));
    }

    /// Sets `key` in `table` to `value`, taking ownership of both.
    pub fn put_owned(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.ops.insert((table, key), Some(value));
    }

    /// Removes `key` from `table`.
    pub fn delete(&mut self, table: Table, key: &[u8]) {
        self.ops.insert((table, key.to_vec()), None);
    }

    /// The pending write of `key`: `None` if the batch does not touch it,
    /// `Some(None)` for a delete.
    pub fn pending(&self, table: Table, key: &[u8]) -> Option<Option<&[u8]>> {
        // The tuple key needs an owned Vec; lookups are rare enough (only keys
        // read within the batch that wrote them) that the copy is fine.
        self.ops.get(&(table, key.to_vec())).map(|v| v.as_deref())
    }

    /// Pending writes of `table` within `range`, in key order.
    pub fn pending_range<'a>(
        &'a self,
        table: Table,
        range: (std::ops::Bound<&[u8]>, std::ops::Bound<&[u8]>),
    ) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a {
        use std::ops::Bound::*;
        let lo = match range.0 {
            Included(k) => Included((table, k.to_vec())),
            Excluded(k) => Excluded((table, k.to_vec())),
            Unbounded => Included((table, Vec::new())),
        };
        let hi_bound = range.1.map(|k| k.to_vec());
        self.ops
            .range((lo, Unbounded))
            .take_while(move |((t, k), _)| {
                *t == table
                    && match &hi_bound {
                        Included(h) => k <= h,
                        Excluded(h) => k < h,
                        Unbounded => true,
                    }
            })
            .map(|((_, k), v)| (k.as_slice(), v.as_deref()))
    }

    /// All writes, in (table, key) order.
    pub fn iter(&self) -> impl Iterator<Item = (Table, &[u8], Option<&[u8]>)> {
        self.ops.iter().map(|((t, k), v)| (*t, k.as_slice(), v.as_deref()))
    }

    /// Number of distinct keys written.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Drops every pending write.
    pub fn clear(&mut self) {
        self.ops.clear();
    }
}

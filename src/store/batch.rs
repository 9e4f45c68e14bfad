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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    tables: [BTreeMap<Key, Option<Vec<u8>>>; Table::ALL.len()],
    /// Preconditions: the committed value each of these keys must still
    /// have when the batch commits, or the commit fails with
    /// [`super::StoreError::Conflict`] and writes nothing.
    expected: Vec<(Table, Key, Option<Vec<u8>>)>,
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
        self.tables[table.position()].insert(Key::from_slice(key), Some(value));
    }

    /// Removes `key` from `table`.
    pub fn delete(&mut self, table: Table, key: &[u8]) {
        self.tables[table.position()].insert(Key::from_slice(key), None);
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
        let map = &self.tables[table.position()];
        // BTreeMap::range panics on an inverted range; treat it as empty.
        let inverted = match range {
            (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => {
                a > b || (a == b && !matches!(range, (Bound::Included(_), Bound::Included(_))))
            }
            _ => false,
        };
        let iter = if inverted {
            None
        } else {
            Some(map.range::<[u8], _>(range))
        };
        iter.into_iter()
            .flatten()
            .map(|(k, v)| (k.as_slice(), v.as_deref()))
    }

    /// All writes of `table`, in key order.
    pub fn table(&self, table: Table) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.tables[table.position()]
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_deref()))
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
            .flat_map(|(map, t)| map.into_iter().map(move |(k, v)| (t, k, v)))
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

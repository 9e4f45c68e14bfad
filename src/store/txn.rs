//! A unit of work: reads through to the store, writes into one batch.

use std::ops::{Bound, ControlFlow};

use super::{Store, StoreError, StoreRead, Table, Visit, WriteBatch};

/// Reads committed state overlaid with this transaction's own pending
/// writes, and commits all of them at once.
///
/// Open one per batch of work (a whole `handle_input`, a whole `send_batch`)
/// so that the batch costs one durable commit, not one per block.
pub struct Txn<'s, S: Store + 's> {
    store: &'s S,
    reader: S::Reader<'s>,
    batch: WriteBatch,
}

impl<'s, S: Store> Txn<'s, S> {
    /// Starts a transaction under which no other writer commits until it
    /// commits or is dropped ([`Store::exclusive_reader`]): for the
    /// read-modify-write of a record other processes write too. Keep it
    /// short, and do not commit another transaction while it lives.
    pub fn begin_exclusive(store: &'s S) -> Result<Self, StoreError> {
        Ok(Txn {
            store,
            reader: store.exclusive_reader()?,
            batch: WriteBatch::new(),
        })
    }

    /// Starts a transaction on `store`.
    pub fn begin(store: &'s S) -> Result<Self, StoreError> {
        Ok(Txn {
            store,
            reader: store.reader()?,
            batch: WriteBatch::new(),
        })
    }

    /// The value of `key`, including this transaction's own writes.
    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<&[u8]>, StoreError> {
        match self.batch.pending(table, key) {
            Some(pending) => Ok(pending),
            None => self.reader.get(table, key),
        }
    }

    /// Visits entries of `table` in `range` in key order, including this
    /// transaction's own writes, until `visit` breaks.
    pub fn scan(
        &self,
        table: Table,
        range: (Bound<&[u8]>, Bound<&[u8]>),
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        let mut pending = self.batch.pending_range(table, range).peekable();
        if pending.peek().is_none() {
            return self.reader.scan(table, range, visit);
        }
        // Merge committed entries with pending writes; pending wins on ties.
        let mut stopped = false;
        let mut inner = |k: &[u8], v: &[u8]| -> ControlFlow<()> {
            while let Some((pk, pv)) = pending.peek().copied() {
                if pk > k {
                    break;
                }
                pending.next();
                if pk == k {
                    return match pv {
                        Some(pv) => emit(visit, &mut stopped, pk, pv),
                        None => ControlFlow::Continue(()),
                    };
                }
                if let Some(pv) = pv {
                    emit(visit, &mut stopped, pk, pv)?;
                }
            }
            emit(visit, &mut stopped, k, v)
        };
        self.reader.scan(table, range, &mut inner)?;
        if !stopped {
            for (pk, pv) in pending {
                if let Some(pv) = pv {
                    if visit(pk, pv).is_break() {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes `value` at `key`.
    pub fn put(&mut self, table: Table, key: &[u8], value: &[u8]) {
        self.batch.put(table, key, value);
    }

    /// Writes `value` at `key`, taking ownership of the value.
    pub fn put_owned(&mut self, table: Table, key: &[u8], value: Vec<u8>) {
        self.batch.put_owned(table, key, value);
    }

    /// Writes `value` at `key` only if, at commit, the store still holds
    /// `expected` there (`None`: nothing); otherwise the commit fails with
    /// [`StoreError::Conflict`] and writes nothing. For records that several
    /// processes sharing a data directory may update.
    pub fn put_expecting(
        &mut self,
        table: Table,
        key: &[u8],
        value: Vec<u8>,
        expected: Option<&[u8]>,
    ) {
        self.batch.expect(table, key, expected);
        self.batch.put_owned(table, key, value);
    }

    /// The committed value of `key` as of this transaction's start, ignoring
    /// its own pending writes.
    pub fn committed(&self, table: Table, key: &[u8]) -> Result<Option<&[u8]>, StoreError> {
        self.reader.get(table, key)
    }

    /// Deletes `key`.
    pub fn delete(&mut self, table: Table, key: &[u8]) {
        self.batch.delete(table, key);
    }

    /// Whether this transaction has written anything.
    pub fn is_dirty(&self) -> bool {
        !self.batch.is_empty()
    }

    /// Commits every write durably, in one store transaction. A transaction
    /// that wrote nothing costs nothing.
    pub fn commit(self) -> Result<(), StoreError> {
        let Txn {
            store,
            reader,
            batch,
        } = self;
        // Release the snapshot first so the backend never copies on our behalf.
        if batch.is_empty() {
            return Ok(());
        }
        store.commit_under(reader, batch)
    }
}

fn emit(visit: &mut Visit<'_>, stopped: &mut bool, k: &[u8], v: &[u8]) -> ControlFlow<()> {
    let r = visit(k, v);
    if r.is_break() {
        *stopped = true;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    fn collect<S: Store>(txn: &Txn<'_, S>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        txn.scan(
            Table::Blocks,
            (Bound::Unbounded, Bound::Unbounded),
            &mut |k, v| {
                out.push((k.to_vec(), v.to_vec()));
                ControlFlow::Continue(())
            },
        )
        .unwrap();
        out
    }

    #[test]
    fn overlay_merges_pending_writes_and_deletes() {
        let store = MemStore::new();
        let mut t = Txn::begin(&store).unwrap();
        for k in [1u8, 3, 5] {
            t.put(Table::Blocks, &[k], &[k]);
        }
        t.commit().unwrap();
        let mut t = Txn::begin(&store).unwrap();
        t.put(Table::Blocks, &[2], &[20]);
        t.put(Table::Blocks, &[3], &[30]);
        t.delete(Table::Blocks, &[5]);
        t.put(Table::Blocks, &[9], &[90]);
        assert_eq!(t.get(Table::Blocks, &[3]).unwrap(), Some(&[30u8][..]));
        assert_eq!(t.get(Table::Blocks, &[5]).unwrap(), None);
        let want: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (vec![1], vec![1]),
            (vec![2], vec![20]),
            (vec![3], vec![30]),
            (vec![9], vec![90]),
        ];
        assert_eq!(collect(&t), want);
        drop(t);
        // Dropped without commit: nothing of it is visible.
        let t = Txn::begin(&store).unwrap();
        assert_eq!(collect(&t).len(), 3);
    }

    #[test]
    fn empty_commit_is_free() {
        let store = MemStore::new();
        Txn::begin(&store).unwrap().commit().unwrap();
        assert_eq!(store.commit_count(), 0);
    }
}

//! Node metadata: the store format and the node's identity.

use crate::identity::Keypair;

use super::{keys, Store, StoreError, Table, Txn};

/// The store layout this build reads and writes.
pub const FORMAT: u32 = 3;

/// Checks the store's format, stamping it into a fresh store.
pub fn check_format<S: Store>(txn: &mut Txn<'_, S>) -> Result<(), StoreError> {
    match txn.get(Table::Meta, keys::META_FORMAT)? {
        None => {
            txn.put(Table::Meta, keys::META_FORMAT, &FORMAT.to_le_bytes());
            Ok(())
        }
        Some(bytes) => {
            let found = <[u8; 4]>::try_from(bytes)
                .map(u32::from_le_bytes)
                .map_err(|_| StoreError::Corrupted("the format marker is damaged".into()))?;
            if found == FORMAT {
                Ok(())
            } else {
                Err(StoreError::Version {
                    found,
                    supported: FORMAT,
                })
            }
        }
    }
}

/// The stored identity, if the store has one.
pub fn identity<S: Store>(txn: &Txn<'_, S>) -> Result<Option<Keypair>, StoreError> {
    match txn.get(Table::Meta, keys::META_IDENTITY)? {
        None => Ok(None),
        Some(bytes) => <[u8; 32]>::try_from(bytes)
            .map(|secret| Some(Keypair::from_bytes(&secret)))
            .map_err(|_| StoreError::Corrupted("the stored identity is damaged".into())),
    }
}

/// The stored identity, or `fresh()` stored as the identity if there is none.
/// The write is conditional: if another process stores an identity first,
/// the commit fails with [`StoreError::Conflict`], and a new transaction
/// reads theirs.
pub fn identity_or_insert<S: Store>(
    txn: &mut Txn<'_, S>,
    fresh: impl FnOnce() -> Keypair,
) -> Result<Keypair, StoreError> {
    if let Some(key) = identity(txn)? {
        return Ok(key);
    }
    let key = fresh();
    let bytes = key.to_bytes().to_vec();
    txn.put_expecting(Table::Meta, keys::META_IDENTITY, bytes, None);
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;
    use crate::store::MemStore;

    #[test]
    fn identity_is_created_once_and_kept() {
        let store = MemStore::new();
        let mut t = Txn::begin(&store).unwrap();
        check_format(&mut t).unwrap();
        let a =
            identity_or_insert(&mut t, || Keypair::generate(&mut SeededRng::from_u64(1))).unwrap();
        t.commit().unwrap();
        let mut t = Txn::begin(&store).unwrap();
        check_format(&mut t).unwrap();
        let b =
            identity_or_insert(&mut t, || Keypair::generate(&mut SeededRng::from_u64(2))).unwrap();
        assert_eq!(a.peer_id(), b.peer_id());
    }

    #[test]
    fn of_two_processes_creating_an_identity_at_once_the_second_loses_and_reads_the_first() {
        let store = MemStore::new();
        let key = |seed| move || Keypair::generate(&mut SeededRng::from_u64(seed));
        let mut first = Txn::begin(&store).unwrap();
        let mut second = Txn::begin(&store).unwrap();
        let a = identity_or_insert(&mut first, key(1)).unwrap();
        identity_or_insert(&mut second, key(2)).unwrap();
        first.commit().unwrap();
        assert!(matches!(second.commit(), Err(StoreError::Conflict)));
        let mut again = Txn::begin(&store).unwrap();
        let b = identity_or_insert(&mut again, key(3)).unwrap();
        assert_eq!(a.peer_id(), b.peer_id());
    }

    #[test]
    fn a_newer_format_is_refused() {
        let store = MemStore::new();
        let mut t = Txn::begin(&store).unwrap();
        t.put(Table::Meta, keys::META_FORMAT, &99u32.to_le_bytes());
        t.commit().unwrap();
        let mut t = Txn::begin(&store).unwrap();
        let err = check_format(&mut t).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Version {
                    found: 99,
                    supported: FORMAT
                }
            ),
            "{err}"
        );
    }
}

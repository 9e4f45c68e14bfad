//! The emitter's persisted address book: the addresses each author last
//! announced in its `EventPeer` (ours included), and the addresses the
//! application asked to stay connected to.
//!
//! Both live in the emitter's table under key prefixes of their own,
//! apart from the single-byte tags of the delivery log:
//!
//! ```text
//! "~p" ++ author (32 bytes)  ->  "ip:port\nip:port..."   announced
//! "~t" ++ "ip:port"          ->  ""                      asked for
//! ```
//!
//! The driver decides what to dial, and what an address means: this module
//! keeps each one as the text it was given (the core opens no socket and
//! resolves nothing), so that what was learned and asked survives a restart.

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};

use crate::identity::PeerId;
use crate::store::{Store, StoreError, Table, Txn};

const K_ANNOUNCED: &[u8] = b"~p";
const K_TARGET: &[u8] = b"~t";

/// What the book held at open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Book {
    /// The addresses each author last announced.
    pub announced: BTreeMap<PeerId, Vec<String>>,
    /// The addresses the application asked to connect to, in order.
    pub targets: Vec<String>,
}

fn prefixed(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + rest.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(rest);
    k
}

/// The keys from `prefix` (included) to the next prefix (excluded).
fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut hi = prefix.to_vec();
    if let Some(last) = hi.last_mut() {
        *last += 1;
    }
    (prefix.to_vec(), hi)
}

fn encode_addrs<A: AsRef<str>>(addrs: &[A]) -> Vec<u8> {
    addrs
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes()
}

fn decode_addrs(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

impl Book {
    /// Reads the whole book from `store`.
    pub fn load<S: Store>(store: &S) -> Result<Book, StoreError> {
        let txn = Txn::begin(store)?;
        let mut book = Book::default();
        let (lo, hi) = prefix_range(K_ANNOUNCED);
        txn.scan(
            Table::Events,
            (Bound::Included(&lo[..]), Bound::Excluded(&hi[..])),
            &mut |k, v| {
                if let Ok(id) = <[u8; 32]>::try_from(&k[K_ANNOUNCED.len()..]) {
                    book.announced.insert(PeerId(id), decode_addrs(v));
                }
                ControlFlow::Continue(())
            },
        )?;
        let (lo, hi) = prefix_range(K_TARGET);
        txn.scan(
            Table::Events,
            (Bound::Included(&lo[..]), Bound::Excluded(&hi[..])),
            &mut |k, _| {
                if let Ok(a) = std::str::from_utf8(&k[K_TARGET.len()..]) {
                    book.targets.push(a.to_string());
                }
                ControlFlow::Continue(())
            },
        )?;
        Ok(book)
    }

    /// Durably records that `author` announced `addrs`, and forgets what
    /// the authors in `forget` announced, in one commit.
    pub fn save_announced<S: Store, A: AsRef<str>>(
        store: &S,
        author: &PeerId,
        addrs: &[A],
        forget: &[PeerId],
    ) -> Result<(), StoreError> {
        let mut txn = Txn::begin(store)?;
        for old in forget {
            txn.delete(Table::Events, &prefixed(K_ANNOUNCED, &old.0));
        }
        txn.put(
            Table::Events,
            &prefixed(K_ANNOUNCED, &author.0),
            &encode_addrs(addrs),
        );
        txn.commit()
    }

    /// Durably records that the application asked to connect to `addr`.
    /// Returns whether it was new (an address already asked for costs no
    /// write).
    pub fn add_target<S: Store>(store: &S, addr: &str) -> Result<bool, StoreError> {
        let key = prefixed(K_TARGET, addr.as_bytes());
        let mut txn = Txn::begin(store)?;
        if txn.get(Table::Events, &key)?.is_some() {
            return Ok(false);
        }
        txn.put(Table::Events, &key, &[]);
        txn.commit()?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    #[test]
    fn what_is_saved_loads_again_and_forgotten_authors_are_gone() {
        let store = MemStore::new();
        let (a, b) = (PeerId([1; 32]), PeerId([2; 32]));
        Book::save_announced(&store, &a, &["10.0.0.1:1", "[::1]:2"], &[]).unwrap();
        Book::save_announced(&store, &b, &["10.0.0.2:1"], &[a]).unwrap();
        assert!(Book::add_target(&store, "127.0.0.1:9").unwrap());
        assert!(!Book::add_target(&store, "127.0.0.1:9").unwrap());
        let book = Book::load(&store).unwrap();
        assert_eq!(
            book.announced,
            BTreeMap::from([(b, vec!["10.0.0.2:1".to_string()])])
        );
        assert_eq!(book.targets, vec!["127.0.0.1:9".to_string()]);
    }
}

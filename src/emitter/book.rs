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

use std::collections::{BTreeMap, VecDeque};
use std::ops::{Bound, ControlFlow};

use serde_json::Value;

use crate::identity::PeerId;
use crate::store::{Store, StoreError, Table, Txn};

const K_ANNOUNCED: &[u8] = b"~p";
const K_TARGET: &[u8] = b"~t";

/// Addresses kept from one author's announcement; the rest are ignored. An
/// announcement makes every mesh node that wants its author try these, so a
/// few must do: one per interface a node listens on.
pub const MAX_ADDRS_PER_AUTHOR: usize = 4;
/// Authors whose announced addresses are remembered (ours aside); the least
/// recently announced is forgotten first.
pub const MAX_BOOK_AUTHORS: usize = 256;

/// The address book: what each author last announced of itself, at most
/// [`MAX_BOOK_AUTHORS`] authors of [`MAX_ADDRS_PER_AUTHOR`] addresses each,
/// and the addresses the application asked for. Every change is durable
/// before the method that made it returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Book {
    announced: BTreeMap<PeerId, Vec<String>>,
    /// The authors of `announced`, least recently announced first.
    order: VecDeque<PeerId>,
    targets: Vec<String>,
}

/// What an announcement changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Learned {
    /// Whether the author's addresses differ from what it announced before.
    pub changed: bool,
    /// Authors forgotten to make room (their addresses are no longer known).
    pub forgotten: Vec<PeerId>,
}

/// The addresses `author`'s `EventPeer` value says it listens on, as
/// `ip:port` text (`[ip]:port` for IPv6), at most
/// [`MAX_ADDRS_PER_AUTHOR`], sorted and without repeats; or `None` when the
/// value speaks for another id: an author announces only itself, since its
/// signature is all that vouches for the announcement. Entries without an
/// ip and a port that fits 16 bits are skipped; whether the ip is a valid
/// one is the dialer's to find out.
pub fn event_peer_addresses(value: &Value, author: &PeerId) -> Option<Vec<String>> {
    if value["id"].as_str() != Some(author.to_string().as_str()) {
        return None;
    }
    let mut out: Vec<String> = Vec::with_capacity(MAX_ADDRS_PER_AUTHOR);
    for a in value["addresses"].as_array().into_iter().flatten() {
        if out.len() == MAX_ADDRS_PER_AUTHOR {
            break;
        }
        let ip = match a["ip"].as_str() {
            Some("localhost") => "127.0.0.1",
            Some(ip) if !ip.is_empty() && ip.len() <= 64 => ip,
            _ => continue,
        };
        let Some(port) = a["port"].as_u64().and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        let text = if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        };
        // At most a few: looking through them is linear.
        if !out.contains(&text) {
            out.push(text);
        }
    }
    out.sort();
    Some(out)
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
        .take(MAX_ADDRS_PER_AUTHOR)
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
        book.order = book.announced.keys().copied().collect();
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

    /// What `author` last announced, if it is remembered.
    pub fn addresses(&self, author: &PeerId) -> Option<&[String]> {
        self.announced.get(author).map(Vec::as_slice)
    }

    /// Every author remembered, with what it announced.
    pub fn announced(&self) -> impl Iterator<Item = (&PeerId, &[String])> {
        self.announced.iter().map(|(a, l)| (a, l.as_slice()))
    }

    /// How many authors are remembered.
    pub fn len(&self) -> usize {
        self.announced.len()
    }

    /// Whether no author is remembered.
    pub fn is_empty(&self) -> bool {
        self.announced.is_empty()
    }

    /// The addresses the application asked for, in the order asked.
    pub fn targets(&self) -> &[String] {
        &self.targets
    }

    /// Records that `author` announced `addrs` (at most
    /// [`MAX_ADDRS_PER_AUTHOR`] are kept), forgetting the least recently
    /// announced authors to stay within [`MAX_BOOK_AUTHORS`]; `me` (our own
    /// announcement) is never forgotten. One commit, made only when
    /// something changed.
    pub fn learn<S: Store>(
        &mut self,
        store: &S,
        me: &PeerId,
        author: PeerId,
        mut addrs: Vec<String>,
    ) -> Result<Learned, StoreError> {
        addrs.truncate(MAX_ADDRS_PER_AUTHOR);
        if self.announced.get(&author) == Some(&addrs) {
            return Ok(Learned::default());
        }
        let mut forgotten = Vec::new();
        if !self.announced.contains_key(&author) {
            let others = |b: &Book| b.announced.len() - usize::from(b.announced.contains_key(me));
            // Each author is looked at once at most (ours goes to the back).
            let mut looks = self.order.len();
            while author != *me && others(self) >= MAX_BOOK_AUTHORS && looks > 0 {
                looks -= 1;
                let Some(old) = self.order.pop_front() else {
                    break;
                };
                if old == *me {
                    self.order.push_back(old);
                } else if self.announced.remove(&old).is_some() {
                    forgotten.push(old);
                }
            }
        }
        let mut txn = Txn::begin(store)?;
        for old in &forgotten {
            txn.delete(Table::Events, &prefixed(K_ANNOUNCED, &old.0));
        }
        txn.put(
            Table::Events,
            &prefixed(K_ANNOUNCED, &author.0),
            &encode_addrs(&addrs),
        );
        txn.commit()?;
        self.order.retain(|a| *a != author);
        self.order.push_back(author);
        self.announced.insert(author, addrs);
        Ok(Learned {
            changed: true,
            forgotten,
        })
    }

    /// Durably records that the application asked to connect to `addr`.
    /// Returns whether it was new (an address already asked for costs no
    /// write).
    pub fn add_target<S: Store>(&mut self, store: &S, addr: &str) -> Result<bool, StoreError> {
        if self.targets.iter().any(|t| t == addr) {
            return Ok(false);
        }
        let mut txn = Txn::begin(store)?;
        txn.put(Table::Events, &prefixed(K_TARGET, addr.as_bytes()), &[]);
        txn.commit()?;
        self.targets.push(addr.to_string());
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use serde_json::json;

    fn addrs(list: &[&str]) -> Vec<String> {
        list.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn what_is_learned_loads_again_and_forgotten_authors_are_gone() {
        let store = MemStore::new();
        let me = PeerId([9; 32]);
        let (a, b) = (PeerId([1; 32]), PeerId([2; 32]));
        let mut book = Book::default();
        assert!(
            book.learn(&store, &me, a, addrs(&["10.0.0.1:1", "[::1]:2"]))
                .unwrap()
                .changed
        );
        assert!(
            !book
                .learn(&store, &me, a, addrs(&["10.0.0.1:1", "[::1]:2"]))
                .unwrap()
                .changed
        );
        book.learn(&store, &me, b, addrs(&["10.0.0.2:1"])).unwrap();
        assert!(book.add_target(&store, "127.0.0.1:9").unwrap());
        assert!(!book.add_target(&store, "127.0.0.1:9").unwrap());
        let again = Book::load(&store).unwrap();
        assert_eq!(
            again.addresses(&a),
            Some(&addrs(&["10.0.0.1:1", "[::1]:2"])[..])
        );
        assert_eq!(again.addresses(&b), Some(&addrs(&["10.0.0.2:1"])[..]));
        assert_eq!(again.targets(), ["127.0.0.1:9"]);
    }

    #[test]
    fn a_flood_of_announcing_authors_keeps_the_newest_and_ours() {
        let store = MemStore::new();
        let me = PeerId([0xff; 32]);
        let mut book = Book::default();
        book.learn(&store, &me, me, addrs(&["10.0.0.9:9"])).unwrap();
        let mut forgotten = 0;
        for i in 0..(MAX_BOOK_AUTHORS as u32 + 100) {
            let mut id = [0; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            let many: Vec<String> = (0..50).map(|p| format!("10.0.0.1:{p}")).collect();
            forgotten += book
                .learn(&store, &me, PeerId(id), many)
                .unwrap()
                .forgotten
                .len();
            assert!(book.len() <= MAX_BOOK_AUTHORS + 1);
        }
        assert_eq!(forgotten, 100);
        assert!(book
            .announced()
            .all(|(_, l)| l.len() <= MAX_ADDRS_PER_AUTHOR));
        assert!(book.addresses(&me).is_some(), "ours is never forgotten");
        let again = Book::load(&store).unwrap();
        assert_eq!(again.len(), MAX_BOOK_AUTHORS + 1);
        let first = PeerId([0; 32]);
        assert!(again.addresses(&first).is_none(), "the oldest went first");
    }

    #[test]
    fn an_announcement_speaks_only_for_its_author_and_a_few_addresses() {
        let author = PeerId([1; 32]);
        let list: Vec<Value> = (0..100_000)
            .map(|p| json!({"ip": "10.1.2.3", "port": p % 65_536}))
            .collect();
        let v = json!({"id": author.to_string(), "addresses": list});
        let got = event_peer_addresses(&v, &author).unwrap();
        assert_eq!(got.len(), MAX_ADDRS_PER_AUTHOR);
        let other = json!({"id": PeerId([2; 32]).to_string(), "addresses": []});
        assert_eq!(event_peer_addresses(&other, &author), None);
        let mixed = json!({"id": author.to_string(), "addresses": [
            {"ip": "localhost", "port": 7}, {"ip": "::1", "port": 8},
            {"ip": "", "port": 9}, {"ip": "10.0.0.1", "port": 70_000}, {"ip": "localhost", "port": 7}
        ]});
        assert_eq!(
            event_peer_addresses(&mixed, &author).unwrap(),
            addrs(&["127.0.0.1:7", "[::1]:8"])
        );
    }
}

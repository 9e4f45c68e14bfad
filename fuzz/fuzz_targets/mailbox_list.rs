//! The signed mailbox list (src/wire/mailboxes.rs): any bytes decode or
//! fail without a panic; what decodes re-encodes to the same bytes; a
//! list that verifies is sorted, without repeats, at most
//! `MAX_MAILBOXES`, and stops verifying when any field changes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peermq::wire::mailboxes::MAX_MAILBOXES;
use peermq::{MailboxList, PeerId};

fuzz_target!(|data: &[u8]| {
    let Some(list) = MailboxList::decode(data) else {
        return;
    };
    let mut out = Vec::new();
    list.encode(&mut out);
    assert_eq!(out, data, "decoding is exact");
    assert!(list.mailboxes.len() <= MAX_MAILBOXES);
    for m in &list.mailboxes {
        let _ = list.names(m);
    }
    let _ = list.names(&PeerId([0; 32]));
    if list.verify() {
        assert!(list.mailboxes.windows(2).all(|w| w[0] < w[1]));
        for m in &list.mailboxes {
            assert!(list.names(m));
        }
        let mut other = list.clone();
        other.version ^= 1;
        assert!(!other.verify(), "the signature covers the version");
        let mut other = list.clone();
        other.mailboxes.pop();
        if other.mailboxes.len() != list.mailboxes.len() {
            assert!(!other.verify(), "the signature covers the list");
        }
    }
});

//! Receipts (signed acknowledgements, PROTOCOL.md section 4): both range
//! encodings decode or fail without a panic; what decodes re-encodes
//! canonically; a receipt that verifies still verifies after the round
//! trip, and one with a changed range set or feed no longer does.
//!
//! Input: `form: u8 | receipt bytes` (form bit 0: compact ranges).
#![no_main]

use libfuzzer_sys::fuzz_target;
use peermq::wire::Receipt;

fuzz_target!(|data: &[u8]| {
    let Some((&form, bytes)) = data.split_first() else {
        return;
    };
    let compact = form & 1 == 1;
    let decoded = if compact {
        Receipt::decode_compact(bytes, 4096)
    } else {
        Receipt::decode(bytes, 4096)
    };
    let Some(r) = decoded else {
        return;
    };
    let mut plain = Vec::new();
    r.encode(&mut plain);
    let mut small = Vec::new();
    r.encode_compact(&mut small);
    assert_eq!(Receipt::decode(&plain, 4096).as_ref(), Some(&r));
    assert_eq!(Receipt::decode_compact(&small, 4096).as_ref(), Some(&r));
    // Ranges are sorted, disjoint and non-adjacent.
    let ranges: Vec<(u64, u64)> = r.ranges.ranges().collect();
    for w in ranges.windows(2) {
        assert!(w[0].1 < w[1].0, "ranges {w:?} overlap or touch");
    }
    assert!(ranges.iter().all(|(s, e)| s < e), "an empty range");
    let valid = r.verify();
    if valid {
        let mut other = r.clone();
        other.feed.0[0] ^= 1;
        assert!(!other.verify(), "a receipt's signature covers its feed");
        let mut other = r.clone();
        let end = ranges.last().map_or(0, |l| l.1);
        other.ranges.insert(end + 1, end + 2);
        assert!(!other.verify(), "a receipt's signature covers its ranges");
    }
});

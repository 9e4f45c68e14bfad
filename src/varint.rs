//! LEB128 unsigned integers, as used on the wire and in store records:
//! seven bits per byte, low bits first, the high bit set on every byte but
//! the last. A `u64` takes one to ten bytes.

/// Most bytes one encoded `u64` takes.
pub(crate) const MAX_LEN: usize = 10;

/// Appends `v`.
pub(crate) fn write(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Decodes one value from the front of `bytes`: the value and the bytes it
/// took. `None` when `bytes` ends inside it, or it runs past ten bytes or
/// 64 bits (so a hostile encoding cannot overflow or scan far).
pub(crate) fn read(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(MAX_LEN) {
        let bits = u64::from(b & 0x7f);
        // The tenth byte holds bit 63 only.
        if i == MAX_LEN - 1 && bits > 1 {
            return None;
        }
        v |= bits << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_roundtrip_at_every_width() {
        let mut samples = vec![0, 1, 127, 128, 300, 16_383, 16_384, u64::MAX - 1, u64::MAX];
        samples.extend((0..64).map(|b| 1u64 << b));
        for v in samples {
            let mut out = Vec::new();
            write(&mut out, v);
            let width = (64 - (v | 1).leading_zeros() as usize).div_ceil(7);
            assert_eq!(out.len(), width, "{v}");
            out.push(0xaa);
            assert_eq!(read(&out), Some((v, width)), "{v}");
        }
    }

    #[test]
    fn truncated_and_overlong_encodings_are_refused() {
        assert_eq!(read(&[]), None);
        assert_eq!(read(&[0x80]), None);
        assert_eq!(read(&[0xff; 10]), None);
        // Bit 64 and above.
        let mut past = vec![0xff; 9];
        past.push(0x02);
        assert_eq!(read(&past), None);
        let mut max = vec![0xff; 9];
        max.push(0x01);
        assert_eq!(read(&max), Some((u64::MAX, 10)));
    }
}

//! Frames: `len: u16 BE | len bytes`, each one Noise message.
//!
//! The 2-byte prefix caps a frame at 65,535 bytes, which is also the largest
//! Noise message, so no frame length a peer sends can make us allocate more.

/// Bytes of a frame's length prefix.
pub const FRAME_HEADER_LEN: usize = 2;

/// Reassembles frames from arbitrary chunks of a byte stream.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// An incomplete frame carried over from the previous chunk (at most one
    /// frame plus its header).
    partial: Vec<u8>,
}

impl FrameReader {
    /// A reader with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held back waiting for the rest of a frame.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Calls `on_frame` with each complete frame's body found in what was
    /// buffered plus `input`, and keeps any incomplete tail. Stops at the
    /// first error `on_frame` returns.
    pub fn push<E>(
        &mut self,
        mut input: &[u8],
        mut on_frame: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if !self.partial.is_empty() {
            // Complete the carried-over frame first, copying only what it needs.
            if self.partial.len() < FRAME_HEADER_LEN {
                let need = FRAME_HEADER_LEN - self.partial.len();
                let take = need.min(input.len());
                self.partial.extend_from_slice(&input[..take]);
                input = &input[take..];
                if self.partial.len() < FRAME_HEADER_LEN {
                    return Ok(());
                }
            }
            let body = u16::from_be_bytes([self.partial[0], self.partial[1]]) as usize;
            let need = FRAME_HEADER_LEN + body - self.partial.len();
            let take = need.min(input.len());
            self.partial.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.partial.len() < FRAME_HEADER_LEN + body {
                return Ok(());
            }
            let frame = std::mem::take(&mut self.partial);
            let r = on_frame(&frame[FRAME_HEADER_LEN..]);
            // Keep the allocation for the next partial frame.
            self.partial = frame;
            self.partial.clear();
            r?;
        }
        // Whole frames straight from the input, without copying.
        while input.len() >= FRAME_HEADER_LEN {
            let body = u16::from_be_bytes([input[0], input[1]]) as usize;
            if input.len() < FRAME_HEADER_LEN + body {
                break;
            }
            on_frame(&input[FRAME_HEADER_LEN..FRAME_HEADER_LEN + body])?;
            input = &input[FRAME_HEADER_LEN + body..];
        }
        self.partial.extend_from_slice(input);
        Ok(())
    }
}

/// Appends one frame to `out`: reserves `max_body` bytes, lets `fill` write
/// the body and report its length, then writes the prefix and trims.
pub fn write_frame<E>(
    out: &mut Vec<u8>,
    max_body: usize,
    fill: impl FnOnce(&mut [u8]) -> Result<usize, E>,
) -> Result<(), E> {
    debug_assert!(max_body <= u16::MAX as usize);
    let at = out.len();
    out.resize(at + FRAME_HEADER_LEN + max_body, 0);
    match fill(&mut out[at + FRAME_HEADER_LEN..]) {
        Ok(n) => {
            let n16 = n.min(u16::MAX as usize) as u16;
            out[at..at + FRAME_HEADER_LEN].copy_from_slice(&n16.to_be_bytes());
            out.truncate(at + FRAME_HEADER_LEN + n);
            Ok(())
        }
        Err(e) => {
            out.truncate(at);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_chunking() {
        let mut stream = Vec::new();
        let bodies: Vec<Vec<u8>> = (0..20u8)
            .map(|i| vec![i; (i as usize * 37) % 300])
            .collect();
        for b in &bodies {
            write_frame(&mut stream, b.len(), |buf| {
                buf[..b.len()].copy_from_slice(b);
                Ok::<_, ()>(b.len())
            })
            .unwrap();
        }
        for chunk in [1usize, 2, 3, 7, 64, 1000] {
            let mut r = FrameReader::new();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                r.push(piece, |f| {
                    got.push(f.to_vec());
                    Ok::<_, ()>(())
                })
                .unwrap();
            }
            assert_eq!(got, bodies, "chunk {chunk}");
            assert_eq!(r.buffered(), 0);
        }
    }
}

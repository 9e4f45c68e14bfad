//! Two nodes joined in memory: for tests, benchmarks and in-process links,
//! the loop every one of them would otherwise write by hand.

use super::{ConnId, Node, NodeError, Output};
use crate::store::Store;
use crate::time::Instant;

/// Moves bytes between `a` and `b`, joined by connection `ac` at `a` and `bc`
/// at `b`, at time `now`, running timers due by `now` (a node with work
/// queued asks for one at once), until neither has anything to send. Returns
/// the other outputs of each (events, dials, closes, and bytes for other
/// connections), in order. Time does not pass: for what later timers bring,
/// call it again with a later `now`.
///
/// The first error either node returns ends the pump; what was not moved
/// yet stays queued in the nodes, so a caller testing failures may call it
/// again.
pub fn pump_pair<S: Store, T: Store>(
    (a, ac): (&mut Node<S>, ConnId),
    (b, bc): (&mut Node<T>, ConnId),
    now: Instant,
) -> Result<(Vec<Output>, Vec<Output>), NodeError> {
    let (mut ao, mut bo) = (Vec::new(), Vec::new());
    loop {
        let mut moved = false;
        while let Some(out) = a.poll_output() {
            match out {
                Output::Transmit { conn, bytes } if conn == ac => {
                    moved = true;
                    b.handle_input(bc, &bytes, now)?;
                }
                other => ao.push(other),
            }
        }
        while let Some(out) = b.poll_output() {
            match out {
                Output::Transmit { conn, bytes } if conn == bc => {
                    moved = true;
                    a.handle_input(ac, &bytes, now)?;
                }
                other => bo.push(other),
            }
        }
        if a.poll_timeout().is_some_and(|t| t <= now) {
            a.handle_timeout(now)?;
            moved = true;
        }
        if b.poll_timeout().is_some_and(|t| t <= now) {
            b.handle_timeout(now)?;
            moved = true;
        }
        if !moved {
            return Ok((ao, bo));
        }
    }
}

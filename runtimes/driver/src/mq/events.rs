//! What a queue reports to [`crate::Mq::events`] subscribers, and the
//! fan-out that never waits on one of them.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_channel::{Receiver, Sender};
use futures_lite::Stream;
use peermq::{CloseReason, PeerId};

/// Something that happened, from [`crate::Mq::events`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MqEvent {
    /// A connection to `peer` finished its handshake.
    Connected {
        /// Who.
        peer: PeerId,
    },
    /// A connection ended.
    Disconnected {
        /// The peer, if the handshake had told us.
        peer: Option<PeerId>,
        /// Why.
        reason: CloseReason,
    },
    /// `to` durably stored and acknowledged messages `start..end` we sent it.
    Acked {
        /// The recipient.
        to: PeerId,
        /// First newly acknowledged seq.
        start: u64,
        /// One past the last.
        end: u64,
    },
    /// Message `seq` from `from` arrived and is unread.
    Message {
        /// The sender.
        from: PeerId,
        /// Its seq.
        seq: u64,
    },
    /// A message asked for with [`crate::Mq::get`] arrived.
    Fetched {
        /// The sender.
        from: PeerId,
        /// Its seq.
        seq: u64,
    },
    /// Message `seq` from `from` went to the dead-letter category
    /// ([`peermq::Category::DEAD`]) instead of being delivered again.
    DeadLettered {
        /// The sender.
        from: PeerId,
        /// The message.
        seq: u64,
        /// Why.
        reason: peermq::DeadReason,
        /// How many times it had been delivered.
        deliveries: u32,
    },
    /// A mailbox of `to` refused to hold our mail for it (see
    /// [`peermq::Event::MailboxRefused`]); the mail waits here.
    MailboxRefused {
        /// The mailbox.
        mailbox: PeerId,
        /// The recipient.
        to: PeerId,
        /// Why.
        reason: peermq::wire::RefuseReason,
    },
    /// This subscriber fell behind and `missed` events were dropped for it
    /// (events are buffered per subscriber, up to a bound, so that a
    /// forgotten subscriber cannot grow memory without limit).
    Lagged {
        /// How many.
        missed: u64,
    },
}

/// Per-subscriber buffer of [`crate::Mq::events`].
const EVENT_BUFFER: usize = 4096;

struct Subscriber {
    tx: Sender<MqEvent>,
    missed: u64,
}

/// The subscribers of one node, shared by its handles (which add them) and
/// its queue service (which publishes).
#[derive(Clone, Default)]
pub(crate) struct Subscribers(Arc<Mutex<Vec<Subscriber>>>);

impl Subscribers {
    /// A new subscriber with its own bounded buffer.
    pub(crate) fn subscribe(&self) -> EventStream {
        let (tx, rx) = async_channel::bounded(EVENT_BUFFER);
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Subscriber { tx, missed: 0 });
        EventStream { rx: Box::pin(rx) }
    }

    /// Fans an event out to every subscriber without ever waiting on one.
    ///
    /// A subscriber's last free slot is kept for a [`MqEvent::Lagged`]
    /// notice: one that falls behind learns of it at once, even when no
    /// later event comes to carry the news (a reader waiting for the last
    /// message of a burst would otherwise wait forever).
    pub(crate) fn publish(&self, event: &MqEvent) {
        let mut subs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain_mut(|s| {
            if s.missed > 0 && !s.tell_lag() {
                s.missed += 1;
                return !s.tx.is_closed();
            }
            let room = s.tx.capacity().map_or(usize::MAX, |c| c - s.tx.len());
            if room <= 1 {
                s.missed += 1;
                s.tell_lag();
                return !s.tx.is_closed();
            }
            match s.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(async_channel::TrySendError::Full(_)) => {
                    s.missed += 1;
                    true
                }
                Err(async_channel::TrySendError::Closed(_)) => false,
            }
        });
    }
}

impl Subscriber {
    /// Sends the lag notice for what was missed; `false` if it did not fit.
    fn tell_lag(&mut self) -> bool {
        let sent = self
            .tx
            .try_send(MqEvent::Lagged {
                missed: self.missed,
            })
            .is_ok();
        if sent {
            self.missed = 0;
        }
        sent
    }
}

/// A stream of [`MqEvent`]s, from [`crate::Mq::events`].
pub struct EventStream {
    rx: Pin<Box<Receiver<MqEvent>>>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventStream { .. }")
    }
}

impl Stream for EventStream {
    type Item = MqEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<MqEvent>> {
        self.rx.as_mut().poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64) -> MqEvent {
        MqEvent::Message {
            from: PeerId([1; 32]),
            seq,
        }
    }

    #[test]
    fn a_lagging_subscriber_hears_of_it_even_when_nothing_follows() {
        let (tx, rx) = async_channel::bounded(4);
        let subs = Subscribers::default();
        subs.0.lock().unwrap().push(Subscriber { tx, missed: 0 });
        // Ten events into room for four, then silence.
        for seq in 0..10 {
            subs.publish(&message(seq));
        }
        let got: Vec<MqEvent> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(
            got,
            vec![
                message(0),
                message(1),
                message(2),
                MqEvent::Lagged { missed: 1 }
            ]
        );
        // Once there is room again, the rest of the count (events 4..10, the
        // notice above told of 3) comes first.
        subs.publish(&message(10));
        let got: Vec<MqEvent> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(got, vec![MqEvent::Lagged { missed: 6 }, message(10)]);
    }
}

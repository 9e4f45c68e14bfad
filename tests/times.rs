//! Delivery times set by the sender: a message is not delivered before
//! its not-before time, and one whose expiry passed goes to the dead
//! letters instead of a reader, both by the receiver's clock.

mod common;

use std::time::Duration;

use common::Net;
use peermq::wire::envelope::MAGIC;
use peermq::{
    Category, DeadReason, Event, FeedDescriptor, Fetch, Mailbox, NodeError, PeerId, RangeSet,
    RetryPolicy, Schedule, Timestamp,
};

const A: usize = 0;
const B: usize = 1;

fn at(secs: u64) -> Timestamp {
    Timestamp::from_micros(1_700_000_000_000_000 + secs * 1_000_000)
}

/// B sends `msgs` to A with `schedule`; A holds them.
fn scheduled(msgs: &[&str], schedule: Schedule) -> (Net, PeerId) {
    let (mut net, a, b) = Net::connected_pair();
    let now = net.now;
    net.node(B).send_scheduled(a, msgs, &schedule, now).unwrap();
    net.run_for(Duration::from_secs(2));
    (net, b)
}

fn unread(net: &mut Net, now: Timestamp) -> Vec<Vec<u8>> {
    let recs = net.node(A).read(Mailbox::Unread, None, 100, now).unwrap();
    recs.into_iter().map(|r| r.data).collect()
}

fn dead(net: &mut Net) -> Vec<(u64, Option<(DeadReason, u32)>)> {
    let recs = net
        .node(A)
        .read(Mailbox::Category(Category::DEAD), None, 100, at(0))
        .unwrap();
    let b = recs.first().map(|r| r.from);
    recs.iter()
        .map(|r| (r.seq, net.node(A).dead_reason(b.unwrap(), r.seq).unwrap()))
        .collect()
}

#[test]
fn a_delayed_message_is_read_only_once_its_time_comes() {
    let delayed = Schedule {
        not_before: Some(at(60)),
        expires_at: None,
    };
    let (mut net, _) = scheduled(&["later"], delayed);
    assert!(unread(&mut net, at(0)).is_empty());
    assert!(unread(&mut net, at(59)).is_empty());
    assert_eq!(net.node(A).next_due(at(0)).unwrap(), Some(at(60)));
    assert_eq!(unread(&mut net, at(60)), vec![b"later".to_vec()]);
    assert_eq!(net.node(A).next_due(at(60)).unwrap(), None);
}

#[test]
fn a_delayed_message_does_not_hold_back_the_ones_after_it() {
    let (mut net, a, b) = Net::connected_pair();
    let now = net.now;
    let later = Schedule {
        not_before: Some(at(60)),
        expires_at: None,
    };
    net.node(B).send(a, b"first", now).unwrap();
    net.node(B)
        .send_scheduled(a, &["later"], &later, now)
        .unwrap();
    net.node(B).send(a, b"third", now).unwrap();
    net.run_for(Duration::from_secs(2));
    // A page of one skips the delayed message rather than stopping at it.
    let page = net
        .node(A)
        .read(Mailbox::Unread, Some((b, 0)), 1, at(0))
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!((page[0].seq, &page[0].data[..]), (2, &b"third"[..]));
    let policy = RetryPolicy::default();
    let taken = net
        .node(A)
        .take(10, Duration::from_secs(30), &policy, at(0))
        .unwrap();
    let seqs: Vec<u64> = taken.iter().map(|t| t.lease.seq).collect();
    assert_eq!(seqs, vec![0, 2]);
    net.node(A).archive_many(b, &seqs, now).unwrap();
    let taken = net
        .node(A)
        .take(10, Duration::from_secs(30), &policy, at(61))
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!((taken[0].lease.seq, &taken[0].data[..]), (1, &b"later"[..]));
}

#[test]
fn an_expired_message_goes_to_the_dead_letters_instead_of_a_reader() {
    let expiring = Schedule {
        not_before: None,
        expires_at: Some(at(10)),
    };
    let (mut net, b) = scheduled(&["soon stale", "also stale"], expiring);
    assert_eq!(unread(&mut net, at(9)).len(), 2);
    assert!(unread(&mut net, at(10)).is_empty());
    assert_eq!(
        dead(&mut net),
        vec![
            (0, Some((DeadReason::Expired, 0))),
            (1, Some((DeadReason::Expired, 0)))
        ]
    );
    net.settle();
    let events: Vec<(PeerId, u64, DeadReason)> = net
        .take_events(A)
        .into_iter()
        .filter_map(|e| match e {
            Event::DeadLettered {
                from, seq, reason, ..
            } => Some((from, seq, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        events,
        vec![(b, 0, DeadReason::Expired), (b, 1, DeadReason::Expired)]
    );
}

#[test]
fn a_worker_never_takes_an_expired_message_and_counts_its_deliveries() {
    let expiring = Schedule {
        not_before: None,
        expires_at: Some(at(100)),
    };
    let (mut net, _) = scheduled(&["job"], expiring);
    let policy = RetryPolicy::default();
    let lease = Duration::from_secs(30);
    let first = net.node(A).take(1, lease, &policy, at(0)).unwrap();
    assert_eq!(first.len(), 1);
    // The lease lapses after the expiry: the message is not handed out
    // again but dead-lettered, after one delivery.
    assert!(net
        .node(A)
        .take(1, lease, &policy, at(100))
        .unwrap()
        .is_empty());
    assert_eq!(dead(&mut net), vec![(0, Some((DeadReason::Expired, 1)))]);
}

#[test]
fn a_held_lease_is_not_cut_short_by_a_reader_seeing_the_expiry() {
    let expiring = Schedule {
        not_before: None,
        expires_at: Some(at(20)),
    };
    let (mut net, b) = scheduled(&["job"], expiring);
    let policy = RetryPolicy::default();
    let taken = net
        .node(A)
        .take(1, Duration::from_secs(30), &policy, at(0))
        .unwrap();
    assert!(unread(&mut net, at(25)).is_empty());
    assert!(dead(&mut net).is_empty(), "the worker still holds it");
    let now = net.now;
    assert!(net.node(A).archive(b, taken[0].lease.seq, now).unwrap());
}

#[test]
fn get_keeps_the_times_of_an_unread_message() {
    let both = Schedule {
        not_before: Some(at(10)),
        expires_at: Some(at(20)),
    };
    let (mut net, b) = scheduled(&["timed"], both);
    let now = net.now;
    assert_eq!(
        net.node(A).get(b, 0, now, at(0)).unwrap(),
        Fetch::NotYet(at(10))
    );
    assert_eq!(
        net.node(A).get(b, 0, now, at(10)).unwrap(),
        Fetch::Ready(b"timed".to_vec())
    );
    assert_eq!(net.node(A).get(b, 0, now, at(20)).unwrap(), Fetch::Expired);
    // Once archived it was delivered: its times no longer apply.
    assert!(net.node(A).archive(b, 0, now).unwrap());
    assert_eq!(
        net.node(A).get(b, 0, now, at(30)).unwrap(),
        Fetch::Ready(b"timed".to_vec())
    );
}

#[test]
fn a_message_that_could_never_be_delivered_is_refused_at_send() {
    let (mut net, a, _) = Net::connected_pair();
    let now = net.now;
    let backwards = Schedule {
        not_before: Some(at(20)),
        expires_at: Some(at(20)),
    };
    let err = net
        .node(B)
        .send_scheduled(a, &["never"], &backwards, now)
        .unwrap_err();
    assert!(matches!(err, NodeError::NeverDeliverable { .. }), "{err}");
    let b = net.ids[B];
    let written = net
        .node(B)
        .feed_handle(FeedDescriptor::queue(b, a))
        .unwrap();
    assert_eq!(written.len(), 0, "nothing was written");
}

#[test]
fn a_payload_that_looks_like_an_envelope_arrives_unchanged() {
    let mut tricky = MAGIC.to_vec();
    tricky.extend_from_slice(b"\x01\x08not a time\x00");
    let (mut net, a, _) = Net::connected_pair();
    let now = net.now;
    net.node(B).send(a, &tricky, now).unwrap();
    net.run_for(Duration::from_secs(2));
    assert_eq!(unread(&mut net, at(0)), vec![tricky]);
}

#[test]
fn a_sender_drops_an_unacknowledged_message_once_it_expired_and_the_rest_still_arrive() {
    let mut net = Net::new(2);
    let (a, b) = (net.ids[A], net.ids[B]);
    net.node(A).add_peer(b).unwrap();
    let now = net.now;
    let expiring = Schedule {
        not_before: None,
        expires_at: Some(at(10)),
    };
    net.node(B)
        .send_scheduled(a, &["stale"], &expiring, now)
        .unwrap();
    net.node(B).send(a, b"fresh", now).unwrap();
    let grace = Duration::from_secs(3600);
    assert_eq!(net.node(B).prune_expired(a, at(3609), grace).unwrap(), 0);
    assert_eq!(net.node(B).prune_expired(a, at(3610), grace).unwrap(), 1);
    assert_eq!(net.node(B).prune_expired(a, at(9999), grace).unwrap(), 0);
    net.node(B).dial(a, now);
    net.run_for(Duration::from_secs(5));
    let recs = net.node(A).read(Mailbox::Unread, None, 10, at(0)).unwrap();
    let got: Vec<(u64, &[u8])> = recs.iter().map(|r| (r.seq, &r.data[..])).collect();
    assert_eq!(got, vec![(1, &b"fresh"[..])]);
    assert_eq!(
        net.node(B).acknowledged(a).unwrap(),
        RangeSet::from_range(1, 2)
    );
}

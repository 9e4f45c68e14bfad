//! Working through received messages: categories, leases, retries and
//! dead letters, between in-memory nodes.

mod common;

use std::time::Duration;

use common::Net;
use peermq::{
    Category, DeadReason, Event, Mailbox, NodeError, PeerId, Released, RetryPolicy, Taken,
    Timestamp,
};

const A: usize = 0;
const B: usize = 1;
const LEASE: Duration = Duration::from_secs(30);

/// A has received `n` messages from B, "job 0" to "job n-1".
fn jobs(n: usize) -> (Net, PeerId) {
    let (mut net, a, b) = Net::connected_pair();
    let now = net.now;
    let msgs: Vec<String> = (0..n).map(|i| format!("job {i}")).collect();
    net.node(B).send_batch(a, &msgs, now).unwrap();
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.messages(A).len(), n);
    (net, b)
}

fn at(secs: u64) -> Timestamp {
    Timestamp::from_micros(1_700_000_000_000_000 + secs * 1_000_000)
}

/// What A's worker takes at `secs`.
fn take(net: &mut Net, max: usize, policy: &RetryPolicy, secs: u64) -> Vec<Taken> {
    net.node(A).take(max, LEASE, policy, at(secs)).unwrap()
}

/// The one message A's worker takes at `secs`.
fn take_one(net: &mut Net, policy: &RetryPolicy, secs: u64) -> Taken {
    let mut taken = take(net, 1, policy, secs);
    assert_eq!(taken.len(), 1, "one message to take at {secs} s");
    taken.remove(0)
}

fn seqs(taken: &[Taken]) -> Vec<u64> {
    taken.iter().map(|t| t.lease.seq).collect()
}

fn dead_events(net: &mut Net) -> Vec<(u64, DeadReason, u32)> {
    net.settle();
    net.take_events(A)
        .into_iter()
        .filter_map(|e| match e {
            Event::DeadLettered {
                seq,
                reason,
                deliveries,
                ..
            } => Some((seq, reason, deliveries)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_taken_message_goes_to_no_other_taker_until_its_lease_lapses() {
    let (mut net, b) = jobs(3);
    let policy = RetryPolicy::default();
    let first = take(&mut net, 2, &policy, 0);
    assert_eq!(seqs(&first), vec![0, 1]);
    assert_eq!(first[0].data, b"job 0");
    assert_eq!(first[0].lease.from, b);
    assert_eq!(first[0].delivery, 1);
    assert_eq!(first[0].lease.deadline, at(30));
    // Another process on the same data directory takes what is left.
    let mut other = net.open_again(A);
    let second = other.take(5, LEASE, &policy, at(10)).unwrap();
    assert_eq!(seqs(&second), vec![2]);
    assert!(other.take(5, LEASE, &policy, at(29)).unwrap().is_empty());
    // The first taker's leases lapse: both come back, as second deliveries.
    let again = other.take(5, LEASE, &policy, at(30)).unwrap();
    assert_eq!(seqs(&again), vec![0, 1]);
    assert!(again.iter().all(|t| t.delivery == 2));
    assert_ne!(again[0].lease.token, first[0].lease.token);
}

#[test]
fn taken_messages_stay_unread_until_archived_and_are_archived_once() {
    let (mut net, b) = jobs(2);
    let policy = RetryPolicy::default();
    let now = net.now;
    let taken = take(&mut net, 1, &policy, 0);
    assert_eq!(
        net.node(A)
            .read(Mailbox::Unread, None, 10, Timestamp::EPOCH)
            .unwrap()
            .len(),
        2
    );
    assert!(net.node(A).archive(b, taken[0].lease.seq, now).unwrap());
    assert!(!net.node(A).archive(b, taken[0].lease.seq, now).unwrap());
    // Archived, the message is never handed out again, even after its
    // lease would have lapsed.
    let later = take(&mut net, 5, &policy, 100);
    assert_eq!(seqs(&later), vec![1]);
    let lost = net
        .node(A)
        .release(&taken[0].lease, None, &policy, at(100))
        .unwrap_err();
    assert!(
        matches!(lost, NodeError::LeaseLost { seq: 0, .. }),
        "{lost}"
    );
}

#[test]
fn a_released_message_waits_out_the_backoff_then_comes_back_with_its_count() {
    let (mut net, _) = jobs(1);
    let policy = RetryPolicy {
        backoff: vec![Duration::from_secs(5), Duration::from_secs(50)],
        max_deliveries: 10,
    };
    let t = take_one(&mut net, &policy, 0);
    let r = net.node(A).release(&t.lease, None, &policy, at(1)).unwrap();
    assert_eq!(r, Released::RetryAt(at(6)));
    assert!(take(&mut net, 1, &policy, 5).is_empty());
    let t = take_one(&mut net, &policy, 6);
    assert_eq!(t.delivery, 2);
    let r = net.node(A).release(&t.lease, None, &policy, at(7)).unwrap();
    assert_eq!(r, Released::RetryAt(at(57)), "the second backoff");
    let t = take_one(&mut net, &policy, 57);
    let r = net
        .node(A)
        .release(&t.lease, None, &policy, at(58))
        .unwrap();
    assert_eq!(r, Released::RetryAt(at(108)), "the last backoff repeats");
    // An explicit delay overrides the policy.
    let t = take_one(&mut net, &policy, 108);
    let r = net
        .node(A)
        .release(&t.lease, Some(Duration::ZERO), &policy, at(109))
        .unwrap();
    assert_eq!(r, Released::RetryAt(at(109)));
    assert_eq!(take(&mut net, 1, &policy, 109)[0].delivery, 5);
}

#[test]
fn a_message_that_keeps_failing_is_dead_lettered_after_exactly_the_maximum() {
    let (mut net, b) = jobs(2);
    let policy = RetryPolicy {
        backoff: vec![],
        max_deliveries: 3,
    };
    net.take_events(A);
    for delivery in 1..=3 {
        let t = take(&mut net, 1, &policy, delivery).remove(0);
        assert_eq!((t.lease.seq, t.delivery), (0, delivery as u32));
        let r = net
            .node(A)
            .release(&t.lease, None, &policy, at(delivery))
            .unwrap();
        if delivery < 3 {
            assert_eq!(r, Released::RetryAt(at(delivery)));
        } else {
            assert_eq!(r, Released::DeadLettered);
        }
    }
    assert_eq!(
        dead_events(&mut net),
        vec![(0, DeadReason::MaxDeliveries, 3)]
    );
    assert_eq!(
        net.node(A).dead_reason(b, 0).unwrap(),
        Some((DeadReason::MaxDeliveries, 3))
    );
    let dead = net
        .node(A)
        .read(
            Mailbox::Category(Category::DEAD),
            None,
            10,
            Timestamp::EPOCH,
        )
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].data, b"job 0");
    assert_eq!(seqs(&take(&mut net, 5, &policy, 10)), vec![1]);

    // A lease that lapses for the last time dead-letters at the next take.
    for n in 0..2 {
        let t = take(&mut net, 1, &policy, 100 + 100 * n);
        assert_eq!(seqs(&t), vec![1]);
    }
    assert!(take(&mut net, 1, &policy, 500).is_empty());
    assert_eq!(
        dead_events(&mut net),
        vec![(1, DeadReason::MaxDeliveries, 3)]
    );
}

#[test]
fn an_extended_lease_holds_the_message_and_a_lapsed_holder_cannot_extend() {
    let (mut net, _) = jobs(1);
    let policy = RetryPolicy::default();
    let t = take_one(&mut net, &policy, 0);
    assert_eq!(net.node(A).extend(&t.lease, LEASE, at(20)).unwrap(), at(50));
    assert!(take(&mut net, 1, &policy, 40).is_empty());
    let next = take_one(&mut net, &policy, 50);
    assert_eq!(next.delivery, 2);
    let lost = net.node(A).extend(&t.lease, LEASE, at(51)).unwrap_err();
    assert!(matches!(lost, NodeError::LeaseLost { .. }), "{lost}");
}

#[test]
fn categories_hold_moved_messages_one_place_at_a_time_and_survive_a_restart() {
    let (mut net, b) = jobs(4);
    let now = net.now;
    let later = Category::new("later").unwrap();
    let err = net
        .node(A)
        .move_to(b, 0, Mailbox::Category(later), now)
        .unwrap_err();
    assert!(matches!(err, NodeError::UnknownCategory(_)), "{err}");
    assert!(net.node(A).create_category(later).unwrap());
    assert!(!net.node(A).create_category(later).unwrap());
    assert!(net
        .node(A)
        .move_to(b, 0, Mailbox::Category(later), now)
        .unwrap());
    assert!(!net
        .node(A)
        .move_to(b, 0, Mailbox::Category(later), now)
        .unwrap());
    assert!(net.node(A).move_to(b, 1, Mailbox::Archived, now).unwrap());
    assert!(net
        .node(A)
        .move_to(b, 1, Mailbox::Category(later), now)
        .unwrap());
    assert!(net
        .node(A)
        .move_to(b, 2, Mailbox::Category(Category::DEAD), now)
        .unwrap());
    net.crash(A);
    net.restart(A);
    let counts: Vec<(String, u64)> = net
        .node(A)
        .categories(at(0))
        .unwrap()
        .into_iter()
        .map(|c| (c.mailbox.to_string(), c.messages))
        .collect();
    assert_eq!(
        counts,
        vec![
            ("unread".into(), 1),
            ("archived".into(), 0),
            ("dead".into(), 1),
            ("later".into(), 2)
        ]
    );
    let read = net
        .node(A)
        .read(Mailbox::Category(later), None, 10, Timestamp::EPOCH)
        .unwrap();
    assert_eq!(read.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![0, 1]);
    // Back to unread: taken again as a first delivery.
    assert!(net.node(A).move_to(b, 0, Mailbox::Unread, now).unwrap());
    let policy = RetryPolicy::default();
    let t = take(&mut net, 5, &policy, 0);
    assert_eq!(seqs(&t), vec![0, 3]);
    assert!(t.iter().all(|t| t.delivery == 1));
}

#[test]
fn moving_a_taken_message_ends_its_lease() {
    let (mut net, b) = jobs(1);
    let now = net.now;
    let policy = RetryPolicy::default();
    let t = take_one(&mut net, &policy, 0);
    let done = Category::new("done").unwrap();
    net.node(A).create_category(done).unwrap();
    assert!(net
        .node(A)
        .move_to(b, 0, Mailbox::Category(done), now)
        .unwrap());
    let lost = net
        .node(A)
        .release(&t.lease, None, &policy, at(1))
        .unwrap_err();
    assert!(matches!(lost, NodeError::LeaseLost { .. }), "{lost}");
    assert!(take(&mut net, 1, &policy, 100).is_empty());
}

#[test]
fn a_batch_of_jobs_is_archived_in_one_commit_all_or_none() {
    let (mut net, b) = jobs(4);
    let now = net.now;
    let policy = RetryPolicy::default();
    let taken = take(&mut net, 3, &policy, 0);
    let seqs: Vec<u64> = seqs(&taken);
    assert!(net.node(A).clear(b, 3, now).unwrap());
    let err = net.node(A).archive_many(b, &[0, 3], now).unwrap_err();
    assert!(matches!(err, NodeError::Cleared { seq: 3, .. }), "{err}");
    assert_eq!(
        net.node(A)
            .read(Mailbox::Archived, None, 10, Timestamp::EPOCH)
            .unwrap()
            .len(),
        0,
        "nothing archived when one fails"
    );
    assert!(net.node(A).archive(b, 1, now).unwrap());
    assert_eq!(
        net.node(A).archive_many(b, &seqs, now).unwrap(),
        vec![true, false, true]
    );
    assert_eq!(
        net.node(A)
            .read(Mailbox::Archived, None, 10, Timestamp::EPOCH)
            .unwrap()
            .len(),
        3
    );
    assert!(take(&mut net, 5, &policy, 100).is_empty());
}

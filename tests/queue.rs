//! The queue, end to end between in-memory nodes.

mod common;

use std::time::Duration;

use common::Net;
use peermq::{CloseReason, Config, Event, Fetch, Mailbox, Prefetch, Timestamp};

const A: usize = 0;
const B: usize = 1;

fn texts(net: &mut Net, i: usize, mailbox: Mailbox) -> Vec<(u64, String)> {
    net.node(i)
        .read(mailbox, None, 1000, Timestamp::EPOCH)
        .unwrap()
        .into_iter()
        .map(|r| (r.seq, String::from_utf8(r.data).unwrap()))
        .collect()
}

fn archive_all(net: &mut Net, i: usize) {
    let now = net.now;
    for r in net
        .node(i)
        .read(Mailbox::Unread, None, 1000, Timestamp::EPOCH)
        .unwrap()
    {
        assert!(net.node(i).archive(r.from, r.seq, now).unwrap());
    }
}

#[test]
fn the_original_readme_scenario() {
    let mut net = Net::new(2);
    let (a, b) = (net.ids[A], net.ids[B]);
    net.node(A).add_peer(b).unwrap();
    let now = net.now;
    for m in ["wow", "cool", "hiiiiiiii"] {
        net.node(B).send(a, m.as_bytes(), now).unwrap();
    }
    // A is not listening yet: B's dial fails and is retried with backoff.
    net.listening[A] = false;
    net.node(B).dial(a, now);
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.link_count(), 0);
    net.listening[A] = true;
    net.run_for(Duration::from_secs(60));
    assert_eq!(net.messages(A), vec![(b, 0), (b, 1), (b, 2)]);
    assert_eq!(
        texts(&mut net, A, Mailbox::Unread),
        vec![
            (0, "wow".into()),
            (1, "cool".into()),
            (2, "hiiiiiiii".into())
        ]
    );
    archive_all(&mut net, A);
    assert!(texts(&mut net, A, Mailbox::Unread).is_empty());
    assert_eq!(texts(&mut net, A, Mailbox::Archived).len(), 3);

    // B goes away, queues two more, and comes back.
    net.node(B).hang_up(&a);
    net.disconnect(B);
    let now = net.now;
    net.node(B).send(a, b"beep", now).unwrap();
    net.node(B).send(a, b"boop", now).unwrap();
    net.take_events(A);
    net.node(B).dial(a, now);
    net.run_for(Duration::from_secs(5));
    assert_eq!(net.messages(A), vec![(b, 3), (b, 4)]);
    assert_eq!(
        texts(&mut net, A, Mailbox::Unread),
        vec![(3, "beep".into()), (4, "boop".into())]
    );
    // Archiving twice reports that the message was already processed.
    let now = net.now;
    assert!(net.node(A).archive(b, 3, now).unwrap());
    assert!(!net.node(A).archive(b, 3, now).unwrap());
}

#[test]
fn messages_flow_both_ways_on_one_connection() {
    let mut net = Net::new(2);
    let (a, b) = (net.ids[A], net.ids[B]);
    net.node(A).add_peer(b).unwrap();
    let now = net.now;
    net.node(A).send(b, b"from a", now).unwrap();
    net.node(B).send(a, b"from b", now).unwrap();
    net.node(B).dial(a, now);
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.link_count(), 1);
    assert_eq!(
        texts(&mut net, A, Mailbox::Unread),
        vec![(0, "from b".into())]
    );
    assert_eq!(
        texts(&mut net, B, Mailbox::Unread),
        vec![(0, "from a".into())]
    );
    // And later sends travel on the same connection.
    let now = net.now;
    net.node(A).send(b, b"again", now).unwrap();
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.messages(B), vec![(a, 0), (a, 1)]);
    assert_eq!(net.link_count(), 1);
}

#[test]
fn an_unauthorized_dialer_is_refused_and_gets_nothing() {
    let mut net = Net::new(2);
    let (a, b) = (net.ids[A], net.ids[B]);
    let now = net.now;
    net.node(A).send(b, b"secret for b", now).unwrap();
    net.node(B).send(a, b"hello", now).unwrap();
    net.node(B).dial(a, now);
    net.run_for(Duration::from_secs(1));
    assert!(net.events[A].iter().any(
        |e| matches!(e, Event::Disconnected { reason: CloseReason::Unauthorized(p), .. } if *p == b)
    ));
    assert!(!net.events[A]
        .iter()
        .any(|e| matches!(e, Event::Connected { .. })));
    assert!(texts(&mut net, A, Mailbox::Unread).is_empty());
    assert!(texts(&mut net, B, Mailbox::Unread).is_empty());
    // Once authorized, the retrying dialer gets in.
    net.node(A).add_peer(b).unwrap();
    net.run_for(Duration::from_secs(60));
    assert_eq!(
        texts(&mut net, A, Mailbox::Unread),
        vec![(0, "hello".into())]
    );
    assert_eq!(
        texts(&mut net, B, Mailbox::Unread),
        vec![(0, "secret for b".into())]
    );
}

#[test]
fn dialing_the_wrong_key_is_detected() {
    let mut net = Net::new(3);
    let (a, b) = (net.ids[A], net.ids[B]);
    net.node(2).add_peer(b).unwrap();
    net.misroute.insert(a, 2);
    let now = net.now;
    net.node(B).send(a, b"for a only", now).unwrap();
    net.node(B).dial(a, now);
    net.run_for(Duration::from_secs(1));
    let c = net.ids[2];
    assert!(net.events[B]
        .iter()
        .any(|e| matches!(e, Event::Disconnected { reason: CloseReason::WrongPeer { expected, got }, .. } if *expected == a && *got == c)));
    assert!(texts(&mut net, 2, Mailbox::Unread).is_empty());
}

#[test]
fn removing_a_peer_closes_its_connection_and_keeps_it_out() {
    let (mut net, a, b) = Net::connected_pair();
    assert_eq!(net.link_count(), 1);
    let now = net.now;
    assert!(net.node(A).remove_peer(&b, now).unwrap());
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.link_count(), 0);
    assert!(net.events[A].iter().any(|e| matches!(
        e,
        Event::Disconnected {
            reason: CloseReason::PeerRemoved,
            ..
        }
    )));
    // B keeps redialing and is refused every time.
    net.take_events(A);
    let now = net.now;
    net.node(B).send(a, b"let me in", now).unwrap();
    net.run_for(Duration::from_secs(30));
    assert!(net.events[A]
        .iter()
        .all(|e| !matches!(e, Event::Connected { .. })));
    assert!(texts(&mut net, A, Mailbox::Unread).is_empty());
}

#[test]
fn corrupted_bytes_on_the_wire_close_the_connection_and_nothing_bad_is_stored() {
    let (mut net, a, _) = Net::connected_pair();
    let mut flips = 0;
    net.tamper = Some(Box::new(move |from, bytes| {
        if from == B && flips < 3 && bytes.len() > 100 {
            flips += 1;
            let i = bytes.len() / 2;
            bytes[i] ^= 0x40;
        }
    }));
    let now = net.now;
    net.node(B).send(a, &[7u8; 500], now).unwrap();
    net.run_for(Duration::from_secs(60));
    assert!(
        net.disconnect_reasons(A).contains("Decrypt"),
        "{:?}",
        net.disconnect_reasons(A)
    );
    // After reconnecting, the true bytes arrive.
    let got = net
        .node(A)
        .read(Mailbox::Unread, None, 10, Timestamp::EPOCH)
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, vec![7u8; 500]);
}

#[test]
fn receipts_are_signed_stored_and_reported() {
    let mut net = Net::new(2);
    let (a, b) = (net.ids[A], net.ids[B]);
    net.node(A).add_peer(b).unwrap();
    let now = net.now;
    net.node(B).send_batch(a, &[b"1", b"2", b"3"], now).unwrap();
    net.node(B).dial(a, now);
    net.run_for(Duration::from_secs(1));
    let acked: Vec<(u64, u64)> = net.events[B]
        .iter()
        .filter_map(|e| match e {
            Event::Acked { to, start, end } if *to == a => Some((*start, *end)),
            _ => None,
        })
        .collect();
    assert_eq!(acked.iter().map(|(s, e)| e - s).sum::<u64>(), 3);
    let receipt = net.node(B).receipt(a).unwrap().expect("receipt");
    assert!(receipt.verify());
    assert_eq!(receipt.signer, a);
    assert!(receipt.ranges.contains_range(0, 3));
    // The sender may now prune; the messages stay readable at A.
    assert_eq!(net.node(B).prune(a).unwrap(), 3);
    assert_eq!(net.node(B).prune(a).unwrap(), 0);
    assert_eq!(texts(&mut net, A, Mailbox::Unread).len(), 3);
}

/// A receipt waits `Config::ack_delay` after the first arrival and then
/// covers everything that arrived meanwhile: one signature, not one per
/// answer.
#[test]
fn a_receipt_waits_the_ack_delay_and_covers_what_arrived_meanwhile() {
    let (mut net, a, _) = Net::connected_pair();
    let acked = |net: &mut Net| -> Vec<(u64, u64)> {
        net.take_events(B)
            .into_iter()
            .filter_map(|e| match e {
                Event::Acked { to, start, end } if to == a => Some((start, end)),
                _ => None,
            })
            .collect()
    };
    acked(&mut net);
    let delay = peermq::Config::default().ack_delay;
    assert!(delay > Duration::from_millis(4));
    let now = net.now;
    net.node(B).send(a, b"first", now).unwrap();
    net.run_for(delay / 4);
    assert_eq!(net.messages(A).len(), 1, "delivered at once");
    let now = net.now;
    net.node(B).send(a, b"second", now).unwrap();
    net.run_for(delay / 4);
    assert_eq!(net.messages(A).len(), 2);
    assert!(acked(&mut net).is_empty(), "no receipt before the delay");
    net.run_for(delay);
    assert_eq!(acked(&mut net), vec![(0, 2)], "one receipt for both");
}

/// B sent A `msgs` and dialed it; A prefetches `window` messages ahead, and
/// has had a second to do so. Returns the net and B's id.
fn windowed_reader(window: u64, msgs: &[Vec<u8>]) -> (Net, peermq::PeerId) {
    let configs = vec![
        Config {
            prefetch: Prefetch::Window(window),
            ..Config::default()
        },
        Config::default(),
    ];
    let mut net = Net::with_configs(configs);
    let (a, b) = (net.ids[A], net.ids[B]);
    net.node(A).add_peer(b).unwrap();
    let now = net.now;
    net.node(B).send_batch(a, msgs, now).unwrap();
    net.node(B).dial(a, now);
    net.run_for(Duration::from_secs(1));
    (net, b)
}

/// Ten small messages to a reader with a window of four.
fn window_of_four() -> (Net, peermq::PeerId) {
    let msgs: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 8]).collect();
    windowed_reader(4, &msgs)
}

#[test]
fn reading_without_archiving_moves_the_prefetch_window() {
    let (mut net, b) = window_of_four();
    let held = |net: &mut Net| net.node(A).status().unwrap()[0].received;
    assert_eq!(held(&mut net), 4, "one window past the cursor");
    // Reading the archived mailbox is no sign of progress.
    assert!(net
        .node(A)
        .read(Mailbox::Archived, None, 100, Timestamp::EPOCH)
        .unwrap()
        .is_empty());
    net.run_for(Duration::from_secs(1));
    assert_eq!(held(&mut net), 4);
    // Reading two unread messages, archiving none, moves the window by two.
    let read = net
        .node(A)
        .read(Mailbox::Unread, None, 2, Timestamp::EPOCH)
        .unwrap();
    assert_eq!(read.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![0, 1]);
    net.run_for(Duration::from_secs(1));
    assert_eq!(held(&mut net), 6);
    // A live reader that keeps reading gets everything, one window ahead.
    let mut after = Some((b, 1));
    loop {
        let page = net
            .node(A)
            .read(Mailbox::Unread, after, 100, Timestamp::EPOCH)
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some((last.from, last.seq));
        net.run_for(Duration::from_secs(1));
    }
    assert_eq!(after, Some((b, 9)));
    assert_eq!(held(&mut net), 10);
    assert_eq!(
        net.node(A)
            .read(Mailbox::Unread, None, 100, Timestamp::EPOCH)
            .unwrap()
            .len(),
        10
    );
}

#[test]
fn messages_a_reader_passed_while_missing_still_arrive() {
    let (mut net, b) = window_of_four();
    let now = net.now;
    assert_eq!(
        net.node(A).get(b, 8, now, Timestamp::EPOCH).unwrap(),
        Fetch::Pending
    );
    net.run_for(Duration::from_secs(1));
    // Held: 0..4 and 8. Reading them passes the gap 4..8.
    let seqs = |net: &mut Net| -> Vec<u64> {
        let page = net
            .node(A)
            .read(Mailbox::Unread, None, 100, Timestamp::EPOCH)
            .unwrap();
        page.iter().map(|r| r.seq).collect()
    };
    assert_eq!(seqs(&mut net), vec![0, 1, 2, 3, 8]);
    net.run_for(Duration::from_secs(1));
    assert_eq!(seqs(&mut net), (0..10).collect::<Vec<_>>());
}

#[test]
fn sparse_reading_moves_only_what_is_read() {
    let msgs: Vec<Vec<u8>> = (0..10_000u32)
        .map(|i| format!("{i:0>100}").into_bytes())
        .collect();
    let (mut net, b) = windowed_reader(0, &msgs);
    let a = net.ids[A];
    let before = net.sent_bytes[B];
    let wanted = [3u64, 777, 1234, 2500, 4096, 5000, 6001, 7777, 8888, 9999];
    for &seq in &wanted {
        let now = net.now;
        assert_eq!(
            net.node(A).get(b, seq, now, Timestamp::EPOCH).unwrap(),
            Fetch::Pending
        );
    }
    net.run_for(Duration::from_secs(1));
    for &seq in &wanted {
        let now = net.now;
        assert_eq!(
            net.node(A).get(b, seq, now, Timestamp::EPOCH).unwrap(),
            Fetch::Ready(msgs[seq as usize].clone())
        );
    }
    let moved = net.sent_bytes[B] - before;
    // Ten 100-byte blocks with a proof of at most 14 nodes each, framing,
    // heads and one receipt check — nowhere near the 1 MB of the feed.
    let per_block = moved / 10;
    assert!(per_block < 1200, "moved {moved} bytes for 10 blocks");
    assert!(net.node(A).status().unwrap()[0].received == 10);
    // The sender learned exactly those ten, through small signed receipts
    // whose union is the proof of delivery.
    let acked = net.node(B).acknowledged(a).unwrap();
    assert_eq!(acked.count(), 10);
    assert!(wanted.iter().all(|s| acked.contains(*s)));
    let receipts = net.node(B).receipts(a).unwrap();
    let mut union = peermq::ranges::RangeSet::new();
    for r in &receipts {
        assert!(r.verify() && r.signer == a);
        assert!(r.ranges.range_count() <= 32, "receipts stay small");
        union.union(&r.ranges);
    }
    assert_eq!(union, acked);
    // Later reads reuse the nodes already held: the proofs stop at them and
    // carry no signed head.
    let before = net.sent_bytes[B];
    let more = [5u64, 780, 1240, 2510, 4100, 5003, 6010, 7790, 8880, 9990];
    for &seq in &more {
        let now = net.now;
        net.node(A).get(b, seq, now, Timestamp::EPOCH).unwrap();
    }
    net.run_for(Duration::from_secs(1));
    for &seq in &more {
        let now = net.now;
        assert_eq!(
            net.node(A).get(b, seq, now, Timestamp::EPOCH).unwrap(),
            Fetch::Ready(msgs[seq as usize].clone())
        );
    }
    let later = (net.sent_bytes[B] - before) / 10;
    assert!(
        later * 2 < per_block,
        "{later} bytes per later block vs {per_block} for the first"
    );
}

/// B sends `n` small messages to A and dials it; A fetches them slowly (16
/// blocks per request, two in flight), so a transfer can be interrupted.
fn slow_transfer(n: u32) -> (Net, peermq::PeerId, peermq::PeerId) {
    let configs = vec![
        Config {
            max_request_blocks: 16,
            max_inflight_requests: 2,
            ..Config::default()
        },
        Config::default(),
    ];
    let mut net = Net::with_configs(configs);
    let (a, b) = (net.ids[A], net.ids[B]);
    net.node(A).add_peer(b).unwrap();
    let msgs: Vec<Vec<u8>> = (0..n).map(|i| i.to_le_bytes().to_vec()).collect();
    let now = net.now;
    net.node(B).send_batch(a, &msgs, now).unwrap();
    net.node(B).dial(a, now);
    (net, a, b)
}

#[test]
fn a_receiver_restarting_mid_transfer_gets_everything_exactly_once() {
    let (mut net, _, _) = slow_transfer(2000);
    // Let some of it through, then crash A.
    for _ in 0..10_000 {
        net.step(1);
        if net
            .node(A)
            .status()
            .unwrap()
            .first()
            .is_some_and(|s| s.received > 100)
        {
            break;
        }
    }
    let got_before = net
        .node(A)
        .read(Mailbox::Unread, None, 10_000, Timestamp::EPOCH)
        .unwrap();
    assert!(
        !got_before.is_empty() && got_before.len() < 2000,
        "{}",
        got_before.len()
    );
    let now = net.now;
    for r in &got_before[..50] {
        net.node(A).archive(r.from, r.seq, now).unwrap();
    }
    net.crash(A);
    net.run_for(Duration::from_secs(1));
    net.restart(A);
    net.take_events(A);
    net.run_for(Duration::from_secs(60));
    let unread = net
        .node(A)
        .read(Mailbox::Unread, None, 10_000, Timestamp::EPOCH)
        .unwrap();
    let archived = net
        .node(A)
        .read(Mailbox::Archived, None, 10_000, Timestamp::EPOCH)
        .unwrap();
    assert_eq!(archived.len(), 50);
    assert_eq!(unread.len(), 1950);
    assert!(unread.iter().all(|r| r.seq >= 50));
    // Events after the restart name each newly arrived message once.
    let events = net.messages(A);
    let mut seen = std::collections::BTreeSet::new();
    assert!(events.iter().all(|e| seen.insert(*e)), "no duplicates");
    assert!(events.iter().all(|(_, s)| *s >= 50));
}

#[test]
fn a_sender_restarting_mid_transfer_resumes() {
    let (mut net, a, _) = slow_transfer(1000);
    net.settle();
    net.crash(B);
    net.restart(B);
    let now = net.now;
    net.node(B).dial(a, now);
    net.run_for(Duration::from_secs(60));
    assert_eq!(
        net.node(A)
            .read(Mailbox::Unread, None, 10_000, Timestamp::EPOCH)
            .unwrap()
            .len(),
        1000
    );
    assert_eq!(net.node(B).status().unwrap()[0].acked, 1000);
}

#[test]
fn the_same_seed_gives_the_same_bytes() {
    fn run() -> String {
        let mut net = Net::new(3);
        let ids = net.ids.clone();
        for i in 0..3 {
            for (j, id) in ids.iter().enumerate() {
                if i != j {
                    net.node(i).add_peer(*id).unwrap();
                }
            }
        }
        for i in 0..3 {
            let now = net.now;
            net.node(i)
                .send(ids[(i + 1) % 3], format!("m{i}").as_bytes(), now)
                .unwrap();
            net.node(i).dial(ids[(i + 1) % 3], now);
            net.node(i).dial(ids[(i + 2) % 3], now);
        }
        net.run_for(Duration::from_secs(30));
        net.transcript_hash()
    }
    assert_eq!(run(), run());
}

#[test]
fn nonces_prepared_while_idle_change_no_byte_and_sign_valid_messages() {
    fn run(prepare: bool) -> (String, Vec<(u64, String)>) {
        let nodes = (0..2)
            .map(|i| (i, Some([i as u8 + 1; 32]), Config::default()))
            .collect();
        // The seeds stay with the signer (`Entropy` is not part of the
        // configuration, so no configuration read back carries them).
        let mut net = Net::with_entropy(nodes);
        let (a, b) = (net.ids[A], net.ids[B]);
        net.node(A).add_peer(b).unwrap();
        net.node(B).add_peer(a).unwrap();
        for i in 0..3 {
            assert!(net.node(A).has_idle_work(), "a send used the nonce");
            if prepare {
                net.node(A).idle_work();
                assert!(!net.node(A).has_idle_work());
            }
            let now = net.now;
            net.node(A)
                .send(b, format!("m{i}").as_bytes(), now)
                .unwrap();
        }
        let now = net.now;
        net.node(B).dial(a, now);
        net.run_for(Duration::from_secs(5));
        let read = texts(&mut net, B, Mailbox::Unread);
        (net.transcript_hash(), read)
    }
    let (prepared, read) = run(true);
    // The reader checked every signed head before it stored the messages.
    assert_eq!(read.len(), 3);
    assert_eq!(read[2], (2, "m2".to_string()));
    assert_eq!(run(false), (prepared, read));
}

#[test]
fn simultaneous_dials_leave_one_connection() {
    let mut net = Net::new(2);
    let (a, b) = (net.ids[A], net.ids[B]);
    net.node(A).add_peer(b).unwrap();
    net.node(B).add_peer(a).unwrap();
    let now = net.now;
    net.node(A).dial(b, now);
    net.node(B).dial(a, now);
    net.node(A).send(b, b"x", now).unwrap();
    net.run_for(Duration::from_secs(30));
    assert_eq!(net.link_count(), 1);
    assert_eq!(net.messages(B), vec![(a, 0)]);
}

#[test]
fn idle_connections_are_kept_alive_and_dead_ones_time_out() {
    let mut net = Net::new(2);
    let (a, b) = (net.ids[A], net.ids[B]);
    net.node(A).add_peer(b).unwrap();
    let now = net.now;
    net.node(B).dial(a, now);
    net.run_for(Duration::from_secs(120));
    assert_eq!(net.link_count(), 1, "keepalives hold an idle link open");
    // Drop everything A sends: B hears nothing and times out, then redials.
    net.tamper = Some(Box::new(|from, bytes| {
        if from == A {
            bytes.clear();
        }
    }));
    net.run_for(Duration::from_secs(30));
    assert!(
        net.disconnect_reasons(B).contains("IdleTimeout"),
        "{:?}",
        net.disconnect_reasons(B)
    );
}

#[test]
fn a_send_from_another_process_reaches_a_running_node_and_nothing_is_overwritten() {
    let mut net = Net::new(2);
    let (a, b) = (net.ids[A], net.ids[B]);
    net.node(A).add_peer(b).unwrap();
    let now = net.now;
    net.node(B).send(a, b"from the running node", now).unwrap();
    net.node(B).dial(a, now);
    net.run_for(Duration::from_secs(1));
    // A second "process" on B's data directory appends behind the running
    // node's back, twice, and the running node appends again too.
    let mut other = net.open_again(B);
    assert_eq!(other.id(), b);
    assert_eq!(other.send(a, b"from another process", now).unwrap(), 1);
    assert_eq!(other.send(a, b"and another", now).unwrap(), 2);
    let now = net.now;
    assert_eq!(
        net.node(B).send(a, b"running node again", now).unwrap(),
        3,
        "built on the other process's appends"
    );
    net.run_for(Duration::from_secs(1));
    let got = texts(&mut net, A, Mailbox::Unread);
    assert_eq!(
        got,
        vec![
            (0, "from the running node".into()),
            (1, "from another process".into()),
            (2, "and another".into()),
            (3, "running node again".into())
        ]
    );
    // Archive marks written by another process on A's directory are seen.
    let mut reader = net.open_again(A);
    assert!(reader.archive(b, 0, now).unwrap());
    assert!(
        !net.node(A).archive(b, 0, now).unwrap(),
        "already archived by the other process"
    );
}

#[test]
fn a_cleared_message_is_never_downloaded_and_a_cleared_one_is_gone() {
    let configs = vec![
        Config {
            prefetch: Prefetch::All,
            ..Config::default()
        },
        Config {
            prune_acked: true,
            ..Config::default()
        },
    ];
    let mut net = Net::with_configs(configs);
    let (a, b) = (net.ids[A], net.ids[B]);
    net.node(A).add_peer(b).unwrap();
    let now = net.now;
    net.node(B)
        .send_batch(a, &[vec![1u8; 1000], vec![2u8; 1000], vec![3u8; 1000]], now)
        .unwrap();
    // A clears message 1 before it ever arrives.
    assert!(net.node(A).clear(b, 1, now).unwrap());
    assert!(!net.node(A).clear(b, 1, now).unwrap());
    net.node(B).dial(a, now);
    net.run_for(Duration::from_secs(2));
    let seqs: Vec<u64> = net
        .node(A)
        .read(Mailbox::Unread, None, 10, Timestamp::EPOCH)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, vec![0, 2]);
    let now = net.now;
    assert_eq!(
        net.node(A).get(b, 1, now, Timestamp::EPOCH).unwrap(),
        Fetch::Cleared
    );
    // Only two of the three 1000-byte blocks crossed the wire.
    assert!(
        net.sent_bytes[B] < 2 * 1000 + 1500,
        "{} bytes",
        net.sent_bytes[B]
    );
    // The sender pruned everything acknowledged (cleared counts as handled).
    assert_eq!(net.node(B).status().unwrap()[0].acked, 3);
    assert_eq!(net.node(B).prune(a).unwrap(), 0, "already pruned on ack");
    // Clearing an arrived message drops it from both mailboxes.
    let now = net.now;
    net.node(A).archive(b, 0, now).unwrap();
    assert!(net.node(A).clear(b, 0, now).unwrap());
    assert!(net
        .node(A)
        .read(Mailbox::Archived, None, 10, Timestamp::EPOCH)
        .unwrap()
        .is_empty());
    assert_eq!(
        net.node(A)
            .read(Mailbox::Unread, None, 10, Timestamp::EPOCH)
            .unwrap()
            .len(),
        1
    );
    assert!(matches!(
        net.node(A).archive(b, 0, now),
        Err(peermq::NodeError::Cleared { .. })
    ));
}

#[test]
fn a_live_reader_sees_every_message_appended_after_it_caught_up() {
    let (mut net, a, b) = Net::connected_pair();
    for i in 0..20u64 {
        let now = net.now;
        net.node(B).send(a, format!("{i}").as_bytes(), now).unwrap();
        net.run_for(Duration::from_millis(10));
        assert_eq!(
            net.messages(A).last(),
            Some(&(b, i)),
            "message {i} announced as soon as it arrived"
        );
    }
    assert_eq!(net.messages(A).len(), 20);
}

#[test]
fn a_caught_up_reader_gets_new_messages_in_one_trip() {
    let (mut net, a, b) = Net::connected_pair();
    for i in 0..5u64 {
        net.take_events(A);
        let now = net.now;
        net.node(B).send(a, b"pushed", now).unwrap();
        // One delivery B to A (the second step only collects A's output):
        // the reader's standing request was answered as the message was
        // written, with no head-then-request exchange.
        net.step(2);
        assert_eq!(net.messages(A), vec![(b, i)]);
        net.settle();
    }
}

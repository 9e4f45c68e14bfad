//! Mailboxes: a peer that holds a recipient's mail while it is away, and
//! cannot read it.

mod common;

use std::ops::Bound;
use std::ops::ControlFlow;
use std::time::Duration;

use common::Net;
use peermq::store::Table;
use peermq::wire::RefuseReason;
use peermq::{Config, Event, HeldInMailbox, Mailbox, MailboxLimits, RangeSet, Timestamp, Txn};

const A: usize = 0;
const M: usize = 1;
const R: usize = 2;

fn mailbox_config(limits: MailboxLimits) -> Config {
    Config {
        mailbox: Some(limits),
        store_poll_interval: None,
        ..Config::default()
    }
}

fn plain() -> Config {
    Config {
        store_poll_interval: None,
        ..Config::default()
    }
}

/// Sender A, mailbox M, recipient R: R authorized A and named M while A
/// was away; A knows R's mailbox only from a route set locally.
fn world(limits: MailboxLimits) -> Net {
    let mut net = Net::with_configs(vec![plain(), mailbox_config(limits), plain()]);
    let (a, m, r) = (net.ids[A], net.ids[M], net.ids[R]);
    net.node(R).add_peer(a).unwrap();
    let now = net.now;
    net.node(R).add_mailbox(m, now).unwrap();
    net.run_for(Duration::from_secs(1));
    net.node(A).add_route(r, m).unwrap();
    net
}

/// Every value in node `i`'s store, concatenated.
fn store_bytes(net: &Net, i: usize) -> Vec<u8> {
    let txn = Txn::begin(&net.stores[i]).unwrap();
    let mut all = Vec::new();
    for t in Table::ALL {
        txn.scan(t, (Bound::Unbounded, Bound::Unbounded), &mut |k, v| {
            all.extend_from_slice(k);
            all.extend_from_slice(v);
            ControlFlow::Continue(())
        })
        .unwrap();
    }
    all
}

fn unread(net: &mut Net, i: usize) -> Vec<Vec<u8>> {
    net.node(i)
        .read(Mailbox::Unread, None, 100, Timestamp::EPOCH)
        .unwrap()
        .into_iter()
        .map(|r| r.data)
        .collect()
}

#[test]
fn mail_sent_while_the_recipient_is_away_reaches_it_through_its_mailbox_and_the_receipt_comes_back()
{
    let mut net = world(MailboxLimits::default());
    let (a, m, r) = (net.ids[A], net.ids[M], net.ids[R]);
    net.crash(R);
    let now = net.now;
    let letters: [&[u8]; 3] = [b"first letter", b"second letter", b"third letter"];
    net.node(A).send_batch(r, &letters, now).unwrap();
    net.run_for(Duration::from_secs(2));
    let held = net.node(M).carried();
    assert_eq!(held.len(), 1);
    assert_eq!((held[0].author, held[0].recipient, held[0].held), (a, r, 3));
    let at_mailbox = store_bytes(&net, M);
    assert!(
        !at_mailbox.windows(6).any(|w| w == b"letter"),
        "the mailbox stores a sealed message in clear"
    );

    // The sender leaves; the recipient comes back and collects its mail.
    net.crash(A);
    net.restart(R);
    net.run_for(Duration::from_secs(2));
    assert_eq!(unread(&mut net, R), letters.map(<[u8]>::to_vec));
    let held = net.node(M).carried();
    assert_eq!(held[0].acknowledged, 3, "the mailbox holds the receipt");
    assert_eq!(held[0].bytes, 0, "and dropped what was acknowledged");

    // The recipient leaves; the sender comes back and learns of delivery.
    net.crash(R);
    net.restart(A);
    net.run_for(Duration::from_secs(2));
    assert_eq!(
        net.node(A).acknowledged(r).unwrap(),
        RangeSet::from_range(0, 3)
    );
    assert!(net
        .take_events(A)
        .iter()
        .any(|e| matches!(e, Event::Acked { to, start: 0, end: 3 } if *to == r)));
    let _ = m;
}

#[test]
fn a_sender_sees_how_much_of_its_mail_waits_in_each_mailbox_across_restarts() {
    let mut net = world(MailboxLimits::default());
    let (m, r) = (net.ids[M], net.ids[R]);
    net.crash(R);
    let now = net.now;
    net.node(A)
        .send_batch(r, &[b"one".as_slice(), b"two", b"three"], now)
        .unwrap();
    net.run_for(Duration::from_secs(2));
    let waiting = HeldInMailbox {
        recipient: r,
        mailbox: m,
        stored: 3,
        waiting: 3,
    };
    assert_eq!(net.node(A).held_in_mailboxes().unwrap(), vec![waiting]);
    net.crash(A);
    net.restart(A);
    assert_eq!(
        net.node(A).held_in_mailboxes().unwrap(),
        vec![waiting],
        "kept in the sender's store"
    );

    // The recipient collects while the sender is away; the sender's next
    // start shows nothing waiting.
    net.crash(A);
    net.restart(R);
    net.run_for(Duration::from_secs(2));
    net.crash(R);
    net.restart(A);
    net.run_for(Duration::from_secs(2));
    assert_eq!(
        net.node(A).held_in_mailboxes().unwrap(),
        vec![HeldInMailbox {
            waiting: 0,
            ..waiting
        }]
    );
}

#[test]
fn a_mailbox_refuses_mail_for_a_recipient_that_did_not_name_it() {
    let mut net = Net::with_configs(vec![
        plain(),
        mailbox_config(MailboxLimits::default()),
        plain(),
    ]);
    let (m, r) = (net.ids[M], net.ids[R]);
    net.node(A).add_route(r, m).unwrap();
    net.crash(R);
    let now = net.now;
    net.node(A).send(r, b"unwanted", now).unwrap();
    net.run_for(Duration::from_secs(2));
    assert!(net.node(M).carried().is_empty());
    assert!(net.take_events(A).iter().any(|e| matches!(
        e,
        Event::MailboxRefused { mailbox, to, reason: RefuseReason::NotNamed }
            if *mailbox == m && *to == r
    )));
}

#[test]
fn a_full_mailbox_refuses_politely_and_holds_no_more_than_its_quota() {
    let limits = MailboxLimits {
        max_sender_bytes: 1000,
        ..MailboxLimits::default()
    };
    let mut net = world(limits);
    let r = net.ids[R];
    net.crash(R);
    for i in 0..40u32 {
        let now = net.now;
        net.node(A).send(r, &[i as u8; 100], now).unwrap();
        net.run_for(Duration::from_millis(100));
    }
    let held = net.node(M).carried();
    assert!(held[0].bytes >= 1000, "it filled up: {held:?}");
    assert!(
        held[0].bytes < 2000,
        "past the quota by more than an answer: {held:?}"
    );
    assert!(net.take_events(A).iter().any(|e| matches!(
        e,
        Event::MailboxRefused {
            reason: RefuseReason::Full,
            ..
        }
    )));
    assert_eq!(net.node(A).acknowledged(r).unwrap(), RangeSet::new());
}

// ------------------------------------------------------------ hostile peers

use peermq::feed::{Feed, FeedDescriptor};
use peermq::wire::{Message, Receipt};
use peermq::{CloseReason, Entropy, Instant, Keypair, MemStore, Node, Output, RawPeer, SeededRng};

fn open(seed: u64, config: Config) -> Node<MemStore> {
    Node::open(
        MemStore::new(),
        config,
        Entropy::deterministic(seed),
        Instant::ZERO,
    )
    .unwrap()
}

/// A raw peer with key `key`, connected to `node` (which accepts), and the
/// node's connection id.
fn raw_to(node: &mut Node<MemStore>, key: &Keypair, seed: u64) -> (RawPeer, peermq::ConnId) {
    let mut raw = RawPeer::dial(key, seed, node.id()).unwrap();
    let conn = node.accept(Instant::ZERO);
    raw.pump(node, conn, Instant::ZERO).unwrap();
    assert!(raw.is_open(), "the handshake completed");
    (raw, conn)
}

/// Appends `blocks` to `author`'s queue feed to `to`, in a store of its own.
fn feed_of(author: &Keypair, to: peermq::PeerId, blocks: &[&[u8]]) -> Feed {
    let store = MemStore::new();
    let mut feed = Feed::new(FeedDescriptor::queue(author.peer_id(), to));
    let mut txn = Txn::begin(&store).unwrap();
    feed.append_batch(&mut txn, &mut author.clone(), blocks)
        .unwrap();
    txn.commit().unwrap();
    feed
}

/// A raw peer with key `key` that `node` dialed, and the node's connection.
fn raw_dialed(node: &mut Node<MemStore>, key: &Keypair, seed: u64) -> (RawPeer, peermq::ConnId) {
    let mut raw = RawPeer::accept(key, seed).unwrap();
    let conn = node.connect(key.peer_id(), Instant::ZERO);
    raw.pump(node, conn, Instant::ZERO).unwrap();
    assert!(raw.is_open(), "the handshake completed");
    (raw, conn)
}

fn closed(outs: &[Output], conn: peermq::ConnId) -> Option<CloseReason> {
    outs.iter().find_map(|o| match o {
        Output::Event(Event::Disconnected {
            conn: c, reason, ..
        }) if *c == conn => Some(reason.clone()),
        _ => None,
    })
}

fn refusals(raw: &mut RawPeer) -> Vec<RefuseReason> {
    raw.messages()
        .unwrap()
        .iter()
        .filter_map(|(kind, body)| match Message::decode(*kind, body, 1 << 20) {
            Ok(Message::Refused { reason, .. }) => Some(reason),
            _ => None,
        })
        .collect()
}

#[test]
fn a_peer_pushing_mail_for_a_recipient_that_did_not_name_the_mailbox_is_refused_politely() {
    let mut m = open(1, mailbox_config(MailboxLimits::default()));
    let mut rng = SeededRng::from_u64(5);
    let (h, stranger) = (Keypair::generate(&mut rng), Keypair::generate(&mut rng));
    let (mut raw, conn) = raw_to(&mut m, &h, 3);
    let feed = feed_of(&h, stranger.peer_id(), &[b"spam"]);
    raw.send(&Message::Head {
        desc: *feed.descriptor(),
        head: *feed.head().unwrap(),
    });
    let outs = raw.pump(&mut m, conn, Instant::ZERO).unwrap();
    assert_eq!(closed(&outs, conn), None, "refused politely, not cut off");
    assert_eq!(refusals(&mut raw), vec![RefuseReason::NotNamed]);
    assert!(m.carried().is_empty());
}

#[test]
fn a_mailbox_takes_a_feed_from_its_author_only() {
    let mut m = open(1, mailbox_config(MailboxLimits::default()));
    let mut rng = SeededRng::from_u64(6);
    let (h, author, r) = (
        Keypair::generate(&mut rng),
        Keypair::generate(&mut rng),
        Keypair::generate(&mut rng),
    );
    // R names M, as a recipient does, over its own connection.
    let (mut rr, rc) = raw_to(&mut m, &r, 4);
    rr.send(&Message::Mailboxes(peermq::MailboxList::sign(
        &r,
        1,
        [m.id()],
    )));
    rr.pump(&mut m, rc, Instant::ZERO).unwrap();
    // H passes on a genuine feed of another author to R.
    let (mut raw, conn) = raw_to(&mut m, &h, 3);
    let feed = feed_of(&author, r.peer_id(), &[b"not yours to push"]);
    raw.send(&Message::Head {
        desc: *feed.descriptor(),
        head: *feed.head().unwrap(),
    });
    let outs = raw.pump(&mut m, conn, Instant::ZERO).unwrap();
    assert_eq!(closed(&outs, conn), None);
    assert!(m.carried().is_empty(), "only an author pushes its feed");
    // From H's own feed to R, a forged head closes the connection.
    let own = feed_of(&h, r.peer_id(), &[b"x"]);
    let mut head = *own.head().unwrap();
    head.length += 1;
    raw.send(&Message::Head {
        desc: *own.descriptor(),
        head,
    });
    let outs = raw.pump(&mut m, conn, Instant::ZERO).unwrap();
    assert!(matches!(closed(&outs, conn), Some(CloseReason::BadData(_))));
    assert!(m.carried().is_empty());
}

#[test]
fn a_forged_receipt_relayed_by_a_mailbox_acknowledges_nothing() {
    let mut a = open(1, plain());
    let mut rng = SeededRng::from_u64(8);
    let (mailbox, r) = (Keypair::generate(&mut rng), Keypair::generate(&mut rng));
    a.add_route(r.peer_id(), mailbox.peer_id()).unwrap();
    a.send_batch(r.peer_id(), &[b"one".as_slice(), b"two"], Instant::ZERO)
        .unwrap();
    let feed = FeedDescriptor::queue(a.id(), r.peer_id()).id();
    // The mailbox, which A dials, signs a receipt itself and claims R
    // signed it.
    let (mut raw, conn) = raw_dialed(&mut a, &mailbox, 3);
    let mut forged = Receipt::sign(&mailbox, feed, RangeSet::from_range(0, 2));
    forged.signer = r.peer_id();
    raw.send(&Message::Ack(forged));
    let outs = raw.pump(&mut a, conn, Instant::ZERO).unwrap();
    assert!(matches!(closed(&outs, conn), Some(CloseReason::BadData(_))));
    assert_eq!(a.acknowledged(r.peer_id()).unwrap(), RangeSet::new());
    // R's genuine receipt, relayed by the same mailbox, counts.
    let (mut raw, conn) = raw_dialed(&mut a, &mailbox, 4);
    raw.send(&Message::Ack(Receipt::sign(
        &r,
        feed,
        RangeSet::from_range(0, 2),
    )));
    let outs = raw.pump(&mut a, conn, Instant::ZERO).unwrap();
    assert_eq!(closed(&outs, conn), None);
    assert_eq!(
        a.acknowledged(r.peer_id()).unwrap(),
        RangeSet::from_range(0, 2)
    );
}

#[test]
fn only_a_recipients_mailbox_can_tell_a_sender_what_it_holds() {
    let mut a = open(1, plain());
    let mut rng = SeededRng::from_u64(9);
    let (mailbox, r, stranger) = (
        Keypair::generate(&mut rng),
        Keypair::generate(&mut rng),
        Keypair::generate(&mut rng),
    );
    a.add_route(r.peer_id(), mailbox.peer_id()).unwrap();
    a.send_batch(r.peer_id(), &[b"one".as_slice(), b"two"], Instant::ZERO)
        .unwrap();
    let feed = FeedDescriptor::queue(a.id(), r.peer_id()).id();
    // A peer that is not R's mailbox claims to hold R's mail.
    let (mut raw, conn) = raw_dialed(&mut a, &stranger, 3);
    raw.send(&Message::Held { feed, length: 2 });
    let outs = raw.pump(&mut a, conn, Instant::ZERO).unwrap();
    assert_eq!(closed(&outs, conn), None);
    assert!(a.held_in_mailboxes().unwrap().is_empty());
    // R's mailbox does, and cannot claim more than was sent.
    let (mut raw, conn) = raw_dialed(&mut a, &mailbox, 4);
    raw.send(&Message::Held {
        feed,
        length: u64::MAX,
    });
    raw.pump(&mut a, conn, Instant::ZERO).unwrap();
    let held = a.held_in_mailboxes().unwrap();
    assert_eq!((held[0].stored, held[0].waiting), (2, 2));
}

#[test]
fn a_mailbox_serves_mail_to_its_recipient_and_author_alone() {
    let mut net = world(MailboxLimits::default());
    let (a, r) = (net.ids[A], net.ids[R]);
    net.crash(R);
    let now = net.now;
    net.node(A).send(r, b"for R alone", now).unwrap();
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.node(M).carried()[0].held, 1);
    // A stranger that knows the feed's id asks the mailbox for it.
    let h = Keypair::generate(&mut SeededRng::from_u64(9));
    let (mut raw, conn) = raw_to(net.node(M), &h, 5);
    raw.send(&Message::Request {
        feed: FeedDescriptor::queue(a, r).id(),
        base: 0,
        first_id: 0,
        ranges: vec![peermq::wire::RangeRequest {
            start: 0,
            end: 1,
            trusted: None,
        }],
    });
    let now = net.now;
    let outs = raw.pump(net.node(M), conn, now).unwrap();
    assert_eq!(closed(&outs, conn), None);
    let answers: Vec<u8> = raw.messages().unwrap().iter().map(|(k, _)| *k).collect();
    let no_data = 4;
    assert!(answers.contains(&no_data), "refused: {answers:?}");
    assert!(
        !answers.contains(&3),
        "no data message went out: {answers:?}"
    );
}

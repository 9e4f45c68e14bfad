//! Mailboxes: a peer that holds a recipient's mail while it is away, and
//! cannot read it.

mod common;

use std::ops::Bound;
use std::ops::ControlFlow;
use std::time::Duration;

use common::Net;
use peermq::store::Table;
use peermq::wire::RefuseReason;
use peermq::{Config, Event, Mailbox, MailboxLimits, RangeSet, Timestamp, Txn};

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

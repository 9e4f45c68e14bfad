//! Mailboxes in the simulator: pairs that meet only through a mailbox
//! converge, the oracles catch what they are for (a plaintext in the
//! mailbox's store, a direct connection), and a lying mailbox costs
//! liveness only. Plus the core bug the mailbox runs found.

use peermq::{
    pump_pair, Config, Entropy, Instant, Mailbox, MailboxLimits, MemStore, Node, Output, Timestamp,
};
use peermq_sim::{generate, run, Op, Params, Plan, TimedOp};

/// The plans with a mailbox among the first `n` seeds of the mix.
fn mailbox_plans(n: u64) -> Vec<Plan> {
    (0..n)
        .map(|s| generate(s, &Params::default()))
        .filter(|p| p.options.mailbox.is_some())
        .collect()
}

#[test]
fn pairs_that_are_never_online_together_get_everything_through_the_mailbox() {
    let plans = mailbox_plans(40);
    assert!(
        plans.len() >= 5,
        "{} mailbox plans among 40 seeds",
        plans.len()
    );
    let (mut sent, mut acked) = (0, 0);
    for plan in &plans {
        let r = run(plan);
        assert!(r.failure.is_none(), "seed {}: {:?}", plan.seed, r.failure);
        if r.mail_tampered == 0 {
            assert_eq!(r.mail_acked, r.mail_sent, "seed {}", plan.seed);
        }
        sent += r.mail_sent;
        acked += r.mail_acked;
    }
    assert!(sent > 100 && acked > 100, "{acked} of {sent} acknowledged");
}

#[test]
fn a_mailbox_that_forges_or_drops_a_block_leaves_it_unacknowledged() {
    let mut lied = 0;
    for plan in mailbox_plans(150) {
        if !plan.ops.iter().any(|o| matches!(o.op, Op::Tamper { .. })) {
            continue;
        }
        let r = run(&plan);
        assert!(r.failure.is_none(), "seed {}: {:?}", plan.seed, r.failure);
        if r.mail_tampered > 0 {
            lied += 1;
            assert!(r.mail_acked < r.mail_sent, "seed {}", plan.seed);
        }
    }
    assert!(
        lied > 0,
        "no mailbox destroyed a block before it was collected"
    );
}

#[test]
fn a_plaintext_in_the_mailboxs_store_is_caught() {
    let mut plan = mailbox_plans(40).remove(0);
    let mailbox = plan.options.mailbox.as_ref().map(|m| m.node).unwrap_or(0);
    plan.ops.push(TimedOp {
        at: plan.options.chaos - 1_000_000,
        op: Op::Leak { node: mailbox },
    });
    let f = run(&plan).failure.expect("the oracle finds the plaintext");
    assert_eq!(f.oracle, "plaintext-at-mailbox", "{f}");
}

#[test]
fn a_pair_that_meets_directly_is_caught() {
    // Without their comings and goings, sender and recipient are online
    // together and dial each other.
    let mut plan = mailbox_plans(40).remove(0);
    plan.ops.retain(|o| !matches!(o.op, Op::Offline { .. }));
    let f = run(&plan).failure.expect("the oracle sees them meet");
    assert_eq!(f.oracle, "mailbox-direct", "{f}");
}

fn open(seed: u64, mailbox: bool) -> Node<MemStore> {
    let config = Config {
        store_poll_interval: None,
        mailbox: mailbox.then(MailboxLimits::default),
        ..Config::default()
    };
    Node::open(
        MemStore::new(),
        config,
        Entropy::deterministic(seed),
        Instant::ZERO,
    )
    .unwrap()
}

fn discard(n: &mut Node<MemStore>) {
    while n.poll_output().is_some() {}
}

fn ms(ms: u64) -> Instant {
    Instant::from_micros(ms * 1000)
}

/// Found by the mailbox runs (seed 6 of the mix, before the fix): a
/// connection that closed with requests in flight released them only for
/// broadcast feeds and for the inbox of the connection's peer. A mailbox
/// whose author left mid-request never asked for those blocks again, and
/// a recipient whose mailbox connection dropped mid-request looked for
/// them in the mailbox's inbox instead of the author's, and never asked
/// again while it stayed up. Fixed in `drop_conn`: carried feeds release
/// theirs, and a queue feed's go back to its sender's inbox.
#[test]
fn a_recipient_whose_mailbox_connection_drops_mid_request_asks_again() {
    let (mut a, mut m, mut r) = (open(1, false), open(2, true), open(3, false));
    r.add_peer(a.id()).unwrap();
    r.add_mailbox(m.id(), ms(0)).unwrap();
    a.add_route(r.id(), m.id()).unwrap();
    // R names M; then A, alone, pushes its mail there.
    let (rc, mc) = (r.connect(m.id(), ms(1)), m.accept(ms(1)));
    pump_pair((&mut r, rc), (&mut m, mc), ms(1)).unwrap();
    r.handle_closed(rc, ms(2));
    m.handle_closed(mc, ms(2));
    let (ac, mc) = (a.connect(m.id(), ms(3)), m.accept(ms(3)));
    pump_pair((&mut a, ac), (&mut m, mc), ms(3)).unwrap();
    let letters: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 40]).collect();
    a.send_batch(r.id(), &letters, ms(4)).unwrap();
    pump_pair((&mut a, ac), (&mut m, mc), ms(4)).unwrap();
    assert_eq!(m.carried()[0].held, 5);
    a.handle_closed(ac, ms(5));
    m.handle_closed(mc, ms(5));
    for n in [&mut a, &mut r, &mut m] {
        discard(n);
    }
    // R comes to collect; the connection drops once it asked for A's
    // blocks (beyond its standing request for M's own feed).
    let (rc, mc) = (r.connect(m.id(), ms(6)), m.accept(ms(6)));
    let mut asked = false;
    for _ in 0..50 {
        let f = r.footprint();
        if f.remote_feeds > 0 && f.requests_in_flight >= 2 {
            asked = true;
            break;
        }
        while let Some(o) = r.poll_output() {
            if let Output::Transmit { conn, bytes } = o {
                if conn == rc {
                    m.handle_input(mc, &bytes, ms(6)).unwrap();
                }
            }
        }
        while let Some(o) = m.poll_output() {
            if let Output::Transmit { conn, bytes } = o {
                if conn == mc {
                    r.handle_input(rc, &bytes, ms(6)).unwrap();
                }
            }
        }
    }
    assert!(asked, "R asked M for A's blocks");
    r.handle_closed(rc, ms(7));
    m.handle_closed(mc, ms(7));
    discard(&mut r);
    discard(&mut m);
    // R, still up, reconnects and collects everything.
    let (rc, mc) = (r.connect(m.id(), ms(8)), m.accept(ms(8)));
    for k in 0..5 {
        pump_pair((&mut r, rc), (&mut m, mc), ms(8 + k * 100)).unwrap();
    }
    let got: Vec<Vec<u8>> = r
        .read(Mailbox::Unread, None, 100, Timestamp::EPOCH)
        .unwrap()
        .into_iter()
        .map(|x| x.data)
        .collect();
    assert_eq!(got, letters);
}

//! Messages sealed to their recipient: the recipient reads them as sent,
//! and the feed, as stored on either side and as it travels, holds none
//! of their plaintext.

mod common;

use std::time::Duration;

use common::Net;
use peermq::wire::envelope::{self, MAGIC};
use peermq::{Config, FeedDescriptor, Mailbox, Timestamp, Txn};

const A: usize = 0;
const B: usize = 1;

#[test]
fn a_sealed_message_reads_as_sent_and_is_stored_as_ciphertext() {
    let sealing = Config {
        seal_messages: true,
        ..Config::default()
    };
    let mut net = Net::with_configs(vec![Config::default(), sealing]);
    let (a, b) = (net.ids[A], net.ids[B]);
    net.node(A).add_peer(b).unwrap();
    let now = net.now;
    net.node(B).dial(a, now);
    let secrets = ["the first secret", "the second secret"];
    net.node(B).send_batch(a, &secrets, now).unwrap();
    net.node(B).send(a, b"a third secret", now).unwrap();
    net.run_for(Duration::from_secs(2));
    let read = net
        .node(A)
        .read(Mailbox::Unread, None, 10, Timestamp::EPOCH)
        .unwrap();
    let got: Vec<&[u8]> = read.iter().map(|r| &r.data[..]).collect();
    assert_eq!(
        got,
        [
            &b"the first secret"[..],
            b"the second secret",
            b"a third secret"
        ]
    );
    let desc = FeedDescriptor::queue(b, a);
    for i in [A, B] {
        let feed = net.node(i).feed_handle(desc).unwrap();
        let txn = Txn::begin(&net.stores[i]).unwrap();
        for seq in 0..3 {
            let block = feed.get(&txn, seq).unwrap().unwrap();
            assert!(block.starts_with(&MAGIC));
            assert!(envelope::open(&block).unwrap().sealed.is_some());
            assert!(
                !block.windows(6).any(|w| w == b"secret"),
                "node {i} stores message {seq} in clear"
            );
        }
    }
}

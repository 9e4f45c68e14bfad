//! The event emitter on in-memory nodes: typed events, relaying, causal
//! order, persistence and consumers.

mod common;

use std::time::Duration;

use common::Net;
use peermq::emitter::{Delivered, Emitter, Schema};
use peermq::{Config, FeedDescriptor, Instant, PeerId};
use serde_json::json;

const PROTO: &str = r#"
syntax = "proto3";
message Hello { string from = 1; string message = 2; }
message userAdded { int32 id = 1; string username = 2; }
message userRemoved { int32 id = 1; }
"#;

fn schema() -> Schema {
    Schema::parse("example.proto", PROTO).unwrap()
}

fn open_config() -> Config {
    Config {
        open: true,
        ..Config::default()
    }
}

struct Mesh {
    net: Net,
    em: Vec<Emitter>,
    got: Vec<Vec<Delivered>>,
}

impl Mesh {
    fn new(seeds: &[u64]) -> Self {
        Self::with_seeded(seeds.iter().map(|&s| (s, open_config())).collect())
    }

    fn with_seeded(nodes: Vec<(u64, Config)>) -> Self {
        let n = nodes.len();
        let mut net = Net::with_seeded(nodes);
        let em = (0..n)
            .map(|i| Emitter::open(net.node(i), schema()).unwrap())
            .collect();
        Mesh {
            net,
            em,
            got: vec![Vec::new(); n],
        }
    }

    fn deliver(&mut self) {
        for i in 0..self.em.len() {
            if self.net.nodes[i].is_none() {
                continue;
            }
            let node = self.net.nodes[i].as_mut().unwrap();
            let d = self.em[i].deliver_ready(node).unwrap();
            self.got[i].extend(d);
        }
    }

    fn run(&mut self, d: Duration) {
        self.net.run_for(d);
        self.deliver();
    }

    fn emit(&mut self, i: usize, name: &str, v: serde_json::Value) -> u64 {
        let now = self.net.now;
        let node = self.net.nodes[i].as_mut().unwrap();
        self.em[i].emit(node, name, &v, now).unwrap()
    }

    fn names(&self, i: usize) -> Vec<(String, serde_json::Value)> {
        self.got[i]
            .iter()
            .map(|d| (d.name.clone(), d.value.clone().unwrap_or_default()))
            .collect()
    }
}

#[test]
fn one_emitter_on_its_own_delivers_to_itself() {
    let mut m = Mesh::new(&[1]);
    m.emit(0, "Hello", json!({"from": "Matteo"}));
    m.run(Duration::from_millis(10));
    assert_eq!(
        m.names(0),
        vec![("Hello".into(), json!({"from": "Matteo", "message": ""}))]
    );
    let err = m.em[0]
        .emit(
            m.net.nodes[0].as_mut().unwrap(),
            "Hello",
            &json!({"from": 1}),
            Instant::ZERO,
        )
        .unwrap_err();
    assert!(err.to_string().contains("field `from` of Hello"), "{err}");
}

#[test]
fn two_emitters_exchange_events_and_identical_emits_are_two_events() {
    let mut m = Mesh::new(&[1, 2]);
    let b = m.net.ids[1];
    let now = m.net.now;
    m.net.node(0).dial(b, now);
    m.run(Duration::from_millis(100));
    m.emit(0, "userAdded", json!({"id": 1, "username": "user"}));
    m.emit(1, "userRemoved", json!({"id": 1}));
    m.emit(1, "userRemoved", json!({"id": 1}));
    m.run(Duration::from_millis(100));
    for i in 0..2 {
        let mut names: Vec<String> = m.got[i].iter().map(|d| d.name.clone()).collect();
        names.sort();
        assert_eq!(
            names,
            vec!["userAdded", "userRemoved", "userRemoved"],
            "node {i}"
        );
    }
}

#[test]
fn three_emitters_deliver_through_the_middle_one_in_causal_order() {
    // Pick seeds whose broadcast feed ids make the middle node's feed sort
    // first, so C is offered B's reply before A's original: the reply must
    // wait.
    let mut seeds = None;
    for s in 0..200u64 {
        let ids: Vec<PeerId> = (0..3)
            .map(|i| Net::with_seeded(vec![(s * 3 + i, open_config())]).ids[0])
            .collect();
        if FeedDescriptor::broadcast(ids[1]).id() < FeedDescriptor::broadcast(ids[0]).id() {
            seeds = Some([s * 3, s * 3 + 1, s * 3 + 2]);
            break;
        }
    }
    // C asks for one thing at a time, so the two feeds arrive separately.
    let mut nodes: Vec<(u64, Config)> =
        seeds.unwrap().iter().map(|&s| (s, open_config())).collect();
    nodes[2].1.max_inflight_requests = 1;
    let mut m = Mesh::with_seeded(nodes);
    let (a, b) = (m.net.ids[0], m.net.ids[1]);
    let now = m.net.now;
    m.net.node(0).dial(b, now);
    m.run(Duration::from_millis(100));
    m.emit(0, "Hello", json!({"from": "a", "message": "question"}));
    m.run(Duration::from_millis(100));
    assert_eq!(m.got[1].len(), 1);
    m.emit(1, "Hello", json!({"from": "b", "message": "answer"}));
    m.run(Duration::from_millis(100));
    // C joins through B only, and delivers after every single delivery step.
    let now = m.net.now;
    m.net.node(2).dial(b, now);
    let mut held_back = false;
    for _ in 0..10_000 {
        let quiet = m.net.step(1);
        let held: Vec<(PeerId, u64)> = m.net.node(2).broadcast_feeds();
        let has = |p: PeerId| held.iter().any(|(x, n)| *x == p && *n > 0);
        m.deliver();
        if has(b) && !has(a) {
            held_back = true;
            assert!(
                m.got[2].is_empty(),
                "B's answer held back while A's question is missing"
            );
        }
        let order: Vec<PeerId> = m.got[2].iter().map(|d| d.author).collect();
        if order.len() == 1 {
            assert_eq!(order[0], a, "the answer waited for the question");
        }
        if quiet && m.got[2].len() == 2 {
            break;
        }
    }
    let order: Vec<(PeerId, String)> = m.got[2]
        .iter()
        .map(|d| (d.author, d.name.clone()))
        .collect();
    assert_eq!(order, vec![(a, "Hello".into()), (b, "Hello".into())]);
    assert!(held_back, "the scenario did make C hold the answer first");
}

#[test]
fn an_offline_peer_syncs_later_and_old_events_are_not_delivered_again() {
    let mut m = Mesh::new(&[1, 2]);
    let b = m.net.ids[1];
    for i in 0..5 {
        m.emit(0, "userAdded", json!({"id": i}));
    }
    m.run(Duration::from_millis(10));
    assert_eq!(m.got[1].len(), 0, "B is offline");
    let now = m.net.now;
    m.net.node(0).dial(b, now);
    m.run(Duration::from_secs(1));
    assert_eq!(m.got[1].len(), 5);
    // B restarts: nothing is delivered again, and the log still holds all.
    m.net.crash(1);
    m.net.restart(1);
    m.em[1] = Emitter::open(m.net.node(1), schema()).unwrap();
    m.got[1].clear();
    m.run(Duration::from_secs(1));
    assert!(m.got[1].is_empty());
    assert_eq!(m.em[1].log_len(), 5);
    // A stream from the beginning replays; one from now sees only new ones.
    let all = m.em[1].read_log(m.net.node(1), 0, 100).unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[4].value, Some(json!({"id": 4, "username": ""})));
    let now_pos = m.em[1].log_len();
    m.emit(0, "userRemoved", json!({"id": 9}));
    m.run(Duration::from_secs(1));
    let fresh = m.em[1].read_log(m.net.node(1), now_pos, 100).unwrap();
    assert_eq!(
        fresh.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        vec!["userRemoved"]
    );
}

#[test]
fn a_named_consumer_resumes_where_it_stopped() {
    let mut m = Mesh::new(&[1]);
    for i in 0..10 {
        m.emit(0, "userAdded", json!({"id": i}));
    }
    m.run(Duration::from_millis(10));
    let node = m.net.nodes[0].as_mut().unwrap();
    assert_eq!(m.em[0].consumer(node, "worker").unwrap(), 0);
    let batch = m.em[0].read_log(node, 0, 4).unwrap();
    m.em[0]
        .commit_consumer(node, "worker", batch.last().unwrap().position + 1)
        .unwrap();
    // A crash after that: the consumer resumes at event 4.
    m.net.crash(0);
    m.net.restart(0);
    let em = Emitter::open(m.net.node(0), schema()).unwrap();
    let node = m.net.nodes[0].as_mut().unwrap();
    let pos = em.consumer(node, "worker").unwrap();
    assert_eq!(pos, 4);
    let rest = em.read_log(node, pos, 100).unwrap();
    assert_eq!(
        rest.iter()
            .map(|d| d.value.clone().unwrap()["id"].clone())
            .collect::<Vec<_>>(),
        (4..10).map(|i| json!(i)).collect::<Vec<_>>()
    );
    assert!(em.consumer(node, "").is_err());
}

#[test]
fn an_event_type_unknown_here_is_delivered_raw() {
    let mut m = Mesh::new(&[1, 2]);
    let b = m.net.ids[1];
    let now = m.net.now;
    m.net.node(0).dial(b, now);
    m.run(Duration::from_millis(100));
    let now = m.net.now;
    let node = m.net.nodes[0].as_mut().unwrap();
    m.em[0]
        .emit_encoded(node, "Unheard", b"\x08\x01", now)
        .unwrap();
    m.run(Duration::from_millis(100));
    let d = &m.got[1][0];
    assert_eq!(d.name, "Unheard");
    assert_eq!(d.value, None);
    assert_eq!(d.payload, b"\x08\x01".to_vec());
}

#[test]
fn an_event_that_depends_on_a_refused_author_is_delivered_and_says_so() {
    // Z holds at most one author's events. X's event depends on Y's, which
    // Z refuses for lack of room: Z must not hold X's stream back forever.
    let mut m = Mesh::with_seeded(vec![
        (1, open_config()),
        (2, open_config()),
        (
            3,
            Config {
                max_feeds: 1,
                ..open_config()
            },
        ),
    ]);
    let (x, y) = (m.net.ids[0], m.net.ids[1]);
    m.emit(0, "Hello", json!({"from": "x, first"}));
    let now = m.net.now;
    m.net.node(2).dial(x, now);
    m.run(Duration::from_millis(200));
    assert_eq!(m.got[2].len(), 1, "Z holds X's feed");
    let now = m.net.now;
    m.net.node(0).dial(y, now);
    m.run(Duration::from_millis(200));
    m.emit(1, "Hello", json!({"from": "y"}));
    m.run(Duration::from_millis(200));
    m.emit(0, "Hello", json!({"from": "x, after y"}));
    m.run(Duration::from_millis(500));

    assert!(m.net.node(2).refuses(&y));
    assert!(!m.net.node(2).refuses(&x));
    let last = m.got[2].last().expect("delivered");
    assert_eq!(last.author, x);
    assert_eq!(
        last.value.as_ref().unwrap()["from"],
        json!("x, after y"),
        "X's event is delivered though its cause never comes"
    );
    assert_eq!(last.unmet, vec![(y, 1)], "and it says what it lacks");
    assert!(m.got[2].iter().all(|d| d.author != y));
}

#[test]
fn an_event_waiting_on_causes_that_never_arrive_holds_back_only_its_author_in_one_entry() {
    use peermq::emitter::EventRecord;
    // H (node 0) publishes raw records: event 0 lists 60,000 causes, met
    // but for one (Y's first event, which comes later); event 1 waits on
    // an author that never writes. Y (node 1) is honest; Z (node 2) reads.
    let mut m = Mesh::new(&[1, 2, 3]);
    let (h, y) = (m.net.ids[0], m.net.ids[1]);
    let never = PeerId([7; 32]);
    let mut deps: Vec<(PeerId, u64)> = (0..59_999u32)
        .map(|i| {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            (PeerId(id), 0)
        })
        .collect();
    deps.push((y, 1));
    let record = |deps: Vec<(PeerId, u64)>| {
        EventRecord {
            name: "Hello",
            deps,
            payload: &[],
        }
        .encode()
    };
    let now = m.net.now;
    m.net.node(0).broadcast(&record(deps), now).unwrap();
    m.net
        .node(0)
        .broadcast(&record(vec![(never, 5)]), now)
        .unwrap();
    for (a, b) in [(2, 0), (2, 1)] {
        let id = m.net.ids[b];
        let now = m.net.now;
        m.net.node(a).dial(id, now);
    }
    m.run(Duration::from_millis(500));
    let waiting: Vec<_> = m.em[2]
        .waiting()
        .map(|w| (w.author, w.seq, w.cause))
        .collect();
    assert_eq!(waiting, vec![(h, 0, (y, 1))], "one entry for 60,000 causes");

    // Y's event arrives: H's first is delivered, its second waits forever,
    // and Y's later events are not held back by it.
    m.emit(1, "Hello", json!({"from": "y"}));
    m.run(Duration::from_millis(500));
    m.emit(1, "Hello", json!({"from": "y again"}));
    m.run(Duration::from_millis(500));
    let from: Vec<(PeerId, u64)> = m.got[2].iter().map(|d| (d.author, d.seq)).collect();
    assert_eq!(from, vec![(y, 0), (h, 0), (y, 1)]);
    let waiting: Vec<_> = m.em[2]
        .waiting()
        .map(|w| (w.author, w.seq, w.cause))
        .collect();
    assert_eq!(waiting, vec![(h, 1, (never, 5))]);
}

//! The emitter's suite: HyperEmitter's behaviours, in our terms, run
//! through [`crate::emitter_conformance_suite!`]. Each test takes the
//! runtime of the first node and of the others.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::StreamExt;
use peermq::Config;
use serde_json::{json, Value};

use super::{limited, loopback, within};
use crate::emitter::{Delivered, DeliveryStream, Emitter, Schema, StartAt, EVENT_PEER};
use crate::Runtime;

/// The example schema of the original project.
pub const PROTO: &str = r#"
syntax = "proto3";
message Hello { string from = 1; string message = 2; }
message userAdded { int32 id = 1; string username = 2; }
message userRemoved { int32 id = 1; }
"#;

fn schema() -> Schema {
    Schema::parse("example.proto", PROTO).expect("the example schema compiles")
}

fn config() -> Config {
    Config {
        open: true,
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(250),
        ..Config::default()
    }
}

struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Env {
            tmp: tempfile::tempdir().expect("create a temporary directory"),
        }
    }

    fn open(&self, name: &str, rt: &Arc<dyn Runtime>) -> Emitter {
        Emitter::builder(self.tmp.path().join(name))
            .config(config())
            .open(rt.clone(), schema())
            .expect("open an emitter")
    }
}

/// The next `n` events of a stream, skipping `EventPeer` announcements.
async fn take(rt: &Arc<dyn Runtime>, s: &mut DeliveryStream, n: usize) -> Vec<Delivered> {
    within(rt, &format!("{n} events"), async {
        let mut out = Vec::new();
        while out.len() < n {
            let d = s.next().await.expect("stream ended early").expect("read");
            if d.name != EVENT_PEER {
                out.push(d);
            }
        }
        out
    })
    .await
}

fn named(events: &[Delivered]) -> Vec<(String, Value)> {
    events
        .iter()
        .map(|d| (d.name.clone(), d.value.clone().unwrap_or(Value::Null)))
        .collect()
}

/// Waits until `em`'s log holds an event matching `pred`.
async fn wait_for(
    rt: &Arc<dyn Runtime>,
    em: &Emitter,
    what: &str,
    pred: impl Fn(&Delivered) -> bool,
) -> Delivered {
    let mut s = em.stream(StartAt::Beginning).await.expect("stream");
    within(rt, what, async {
        loop {
            let d = s.next().await.expect("stream ended").expect("read");
            if pred(&d) {
                return d;
            }
        }
    })
    .await
}

/// One emitter: emit validates (the error names the field), delivers to
/// itself with defaults filled in, and lists the schema's types.
pub async fn one_emitter_on_its_own(ra: Arc<dyn Runtime>, _rb: Arc<dyn Runtime>) {
    limited(&ra.clone(), "one_emitter_on_its_own", async move {
        let env = Env::new();
        let a = env.open("a", &ra);
        let mut names = a.messages();
        names.sort();
        assert_eq!(
            names,
            vec!["EventPeer", "Hello", "userAdded", "userRemoved"]
        );
        let mut s = a.subscribe("Hello").await.unwrap();
        a.emit("Hello", json!({"from": "Matteo"})).await.unwrap();
        let err = a.emit("Hello", json!({"from": 7})).await.unwrap_err();
        assert!(err.is_invalid());
        assert!(err.to_string().contains("`from`"), "{err}");
        let err = a.emit("Nope", json!({})).await.unwrap_err();
        assert!(err.to_string().contains("Nope"), "{err}");
        // Two identical emits are two events.
        a.emit("Hello", json!({"from": "Matteo"})).await.unwrap();
        let got = take(&ra, &mut s, 2).await;
        assert_eq!(
            named(&got),
            vec![
                ("Hello".into(), json!({"from": "Matteo", "message": ""})),
                ("Hello".into(), json!({"from": "Matteo", "message": ""})),
            ]
        );
        assert_ne!(got[0].position, got[1].position);
        a.close().await.unwrap();
        assert!(
            a.emit("Hello", json!({})).await.is_err(),
            "emit after close fails"
        );
    })
    .await
}

/// Two emitters, the second connected to the first by address: each sees
/// both sides' events, including two identical ones.
pub async fn two_connected_emitters(ra: Arc<dyn Runtime>, rb: Arc<dyn Runtime>) {
    limited(&ra.clone(), "two_connected_emitters", async move {
        let env = Env::new();
        let a = env.open("a", &ra);
        let b = env.open("b", &rb);
        let addr = a.listen(loopback()).await.unwrap();
        let peer = b.connect(addr).await.unwrap();
        assert_eq!(peer, a.id().await, "connect reports who answered");
        let mut at_a = a.subscribe("userRemoved").await.unwrap();
        let mut at_b = b.subscribe("userAdded").await.unwrap();
        a.emit("userAdded", json!({"id": 1, "username": "user"}))
            .await
            .unwrap();
        b.emit("userRemoved", json!({"id": 1})).await.unwrap();
        b.emit("userRemoved", json!({"id": 1})).await.unwrap();
        assert_eq!(
            named(&take(&rb, &mut at_b, 1).await),
            vec![("userAdded".into(), json!({"id": 1, "username": "user"}))]
        );
        let removed = take(&ra, &mut at_a, 2).await;
        assert_eq!(
            named(&removed),
            vec![
                ("userRemoved".into(), json!({"id": 1})),
                ("userRemoved".into(), json!({"id": 1})),
            ]
        );
        assert_eq!(removed[0].author, b.id().await);
        b.close().await.unwrap();
        a.close().await.unwrap();
    })
    .await
}

/// A–B–C: A's events reach C through B, and B's answer to A's question
/// never reaches anyone before the question.
pub async fn three_emitters_through_the_middle_one(ra: Arc<dyn Runtime>, rb: Arc<dyn Runtime>) {
    limited(
        &ra.clone(),
        "three_emitters_through_the_middle_one",
        async move {
            let env = Env::new();
            let a = env.open("a", &ra);
            let b = env.open("b", &rb);
            let c = env.open("c", &rb);
            // Only B listens, so A and C can reach each other only through B.
            let addr_b = b.listen(loopback()).await.unwrap();
            a.connect(addr_b).await.unwrap();
            c.connect(addr_b).await.unwrap();
            let mut at_b = b.subscribe("Hello").await.unwrap();
            let mut at_c = c.subscribe("Hello").await.unwrap();
            a.emit("Hello", json!({"from": "a", "message": "question"}))
                .await
                .unwrap();
            let q = take(&rb, &mut at_b, 1).await;
            assert_eq!(q[0].value.as_ref().unwrap()["message"], "question");
            b.emit("Hello", json!({"from": "b", "message": "answer"}))
                .await
                .unwrap();
            let got = take(&rb, &mut at_c, 2).await;
            assert_eq!(
                got.iter()
                    .map(|d| d.value.as_ref().unwrap()["message"].clone())
                    .collect::<Vec<_>>(),
                vec![json!("question"), json!("answer")],
                "causal order at C"
            );
            assert_eq!(got[0].author, a.id().await);
            for e in [c, b, a] {
                e.close().await.unwrap();
            }
        },
    )
    .await
}

/// A removed listener is not called again; removing an unknown or already
/// removed listener removes nothing.
pub async fn removing_listeners(ra: Arc<dyn Runtime>, _rb: Arc<dyn Runtime>) {
    limited(&ra.clone(), "removing_listeners", async move {
        let env = Env::new();
        let a = env.open("a", &ra);
        let first = Arc::new(Mutex::new(Vec::new()));
        let second = Arc::new(Mutex::new(Vec::new()));
        let f = first.clone();
        let l1 = a
            .on_sync("userAdded", move |d| {
                f.lock().unwrap().push(d.value.unwrap()["id"].clone());
                Ok::<_, String>(())
            })
            .await
            .unwrap();
        let s2 = second.clone();
        let l2 = a
            .on("userAdded", move |d| {
                let s2 = s2.clone();
                async move {
                    s2.lock().unwrap().push(d.value.unwrap()["id"].clone());
                    Ok::<_, String>(())
                }
            })
            .await
            .unwrap();
        a.emit("userAdded", json!({"id": 1})).await.unwrap();
        let mut marker = a.subscribe("userAdded").await.unwrap();
        within(&ra, "both listeners get event 1", async {
            while first.lock().unwrap().is_empty() || second.lock().unwrap().is_empty() {
                ra.sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(a.remove_listener(l1));
        assert!(!a.remove_listener(l1), "removing twice removes nothing");
        a.emit("userAdded", json!({"id": 2})).await.unwrap();
        take(&ra, &mut marker, 1).await;
        within(&ra, "the remaining listener gets event 2", async {
            while second.lock().unwrap().len() < 2 {
                ra.sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert_eq!(*first.lock().unwrap(), vec![json!(1)]);
        assert_eq!(*second.lock().unwrap(), vec![json!(1), json!(2)]);
        assert!(a.remove_listener(l2));
        a.close().await.unwrap();
    })
    .await
}

/// A handler's error is reported with the event it failed on, and the
/// listener keeps going.
pub async fn handler_errors_are_reported(ra: Arc<dyn Runtime>, _rb: Arc<dyn Runtime>) {
    limited(&ra.clone(), "handler_errors_are_reported", async move {
        let env = Env::new();
        let a = env.open("a", &ra);
        let mut errors = a.errors();
        let seen = Arc::new(Mutex::new(0));
        let s = seen.clone();
        let id = a
            .on_sync("userAdded", move |d| {
                *s.lock().unwrap() += 1;
                if d.value.unwrap()["id"] == 13 {
                    Err("unlucky id")
                } else {
                    Ok(())
                }
            })
            .await
            .unwrap();
        for i in [12, 13, 14] {
            a.emit("userAdded", json!({"id": i})).await.unwrap();
        }
        let err = within(&ra, "a handler error", errors.next()).await.unwrap();
        assert_eq!(err.listener, id);
        assert_eq!(err.name, "userAdded");
        assert_eq!(err.message, "unlucky id");
        within(&ra, "the listener goes on", async {
            while *seen.lock().unwrap() < 3 {
                ra.sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        a.close().await.unwrap();
    })
    .await
}

/// Events emitted while a peer is away reach it once it connects.
pub async fn an_offline_peer_syncs_later(ra: Arc<dyn Runtime>, rb: Arc<dyn Runtime>) {
    limited(&ra.clone(), "an_offline_peer_syncs_later", async move {
        let env = Env::new();
        let a = env.open("a", &ra);
        for i in 0..5 {
            a.emit("userAdded", json!({"id": i})).await.unwrap();
        }
        let addr = a.listen(loopback()).await.unwrap();
        let b = env.open("b", &rb);
        let mut s = b.stream(StartAt::Beginning).await.unwrap();
        b.connect(addr).await.unwrap();
        let got = take(&rb, &mut s, 5).await;
        assert_eq!(
            got.iter()
                .map(|d| d.value.as_ref().unwrap()["id"].clone())
                .collect::<Vec<_>>(),
            (0..5).map(|i| json!(i)).collect::<Vec<_>>()
        );
        b.close().await.unwrap();
        a.close().await.unwrap();
    })
    .await
}

/// An event whose type the receiver's schema lacks still replicates and
/// arrives raw.
pub async fn unknown_types_replicate_raw(ra: Arc<dyn Runtime>, rb: Arc<dyn Runtime>) {
    limited(&ra.clone(), "unknown_types_replicate_raw", async move {
        let env = Env::new();
        let a = env.open("a", &ra);
        let b = env.open("b", &rb);
        let addr = a.listen(loopback()).await.unwrap();
        b.connect(addr).await.unwrap();
        let mut s = b.subscribe("Unheard").await.unwrap();
        a.emit_encoded("Unheard", vec![8, 1]).await.unwrap();
        let d = take(&rb, &mut s, 1).await.remove(0);
        assert_eq!(d.value, None);
        assert_eq!(d.payload, vec![8, 1]);
        b.close().await.unwrap();
        a.close().await.unwrap();
    })
    .await
}

/// C connects only to B, learns A's address from A's `EventPeer` and
/// connects to it by itself; after a restart C reconnects to the stored
/// peers without being told.
pub async fn event_peer_auto_connect_and_stored_peers_after_restart(
    ra: Arc<dyn Runtime>,
    rb: Arc<dyn Runtime>,
) {
    limited(&ra.clone(), "event_peer_auto_connect", async move {
        let env = Env::new();
        let a = env.open("a", &ra);
        let b = env.open("b", &rb);
        let addr_a = a.listen(loopback()).await.unwrap();
        let addr_b = b.listen(loopback()).await.unwrap();
        b.connect(addr_a).await.unwrap();
        let c = env.open("c", &rb);
        let idc = c.id().await;
        c.connect(addr_b).await.unwrap();
        let ida = a.id().await;
        wait_for(&rb, &c, "A's EventPeer at C", |d| {
            d.name == EVENT_PEER && d.author == ida
        })
        .await;
        let connected = |mq: crate::Mq, who| async move {
            loop {
                let peers = mq.peers().await.unwrap();
                if peers.iter().any(|p| p.peer == who && p.connected) {
                    return;
                }
                mq.runtime().sleep(Duration::from_millis(10)).await;
            }
        };
        within(
            &ra,
            "C connects to A by itself",
            connected(a.mq().clone(), idc),
        )
        .await;
        let known = c.known_addresses().await.unwrap();
        assert!(
            known.contains(&addr_a) && known.contains(&addr_b),
            "{known:?}"
        );
        // Restart C: it reconnects to both from its stored peer list.
        c.close().await.unwrap();
        let c = env.open("c", &rb);
        within(&ra, "C reconnects to A", connected(a.mq().clone(), idc)).await;
        within(&rb, "C reconnects to B", connected(b.mq().clone(), idc)).await;
        let mut s = c.subscribe("Hello").await.unwrap();
        a.emit("Hello", json!({"from": "a"})).await.unwrap();
        assert_eq!(take(&rb, &mut s, 1).await[0].author, ida);
        for e in [c, b, a] {
            e.close().await.unwrap();
        }
    })
    .await
}

/// The peer B connected to goes away and comes back on the same address:
/// B reconnects by itself and receives what was emitted.
pub async fn automatic_reconnect(ra: Arc<dyn Runtime>, rb: Arc<dyn Runtime>) {
    limited(&ra.clone(), "automatic_reconnect", async move {
        let env = Env::new();
        let a = env.open("a", &ra);
        let b = env.open("b", &rb);
        let addr = a.listen(loopback()).await.unwrap();
        b.connect(addr).await.unwrap();
        let mut s = b.subscribe("Hello").await.unwrap();
        a.emit("Hello", json!({"message": "one"})).await.unwrap();
        take(&rb, &mut s, 1).await;
        a.close().await.unwrap();
        let a = env.open("a", &ra);
        a.emit("Hello", json!({"message": "two"})).await.unwrap();
        a.listen(addr).await.unwrap();
        let got = take(&rb, &mut s, 1).await;
        assert_eq!(got[0].value.as_ref().unwrap()["message"], "two");
        b.close().await.unwrap();
        a.close().await.unwrap();
    })
    .await
}

/// After a restart, events already delivered are not delivered again: a
/// new listener sees only new events, and the log keeps its length.
pub async fn old_events_are_not_emitted_again(ra: Arc<dyn Runtime>, rb: Arc<dyn Runtime>) {
    limited(
        &ra.clone(),
        "old_events_are_not_emitted_again",
        async move {
            let env = Env::new();
            let a = env.open("a", &ra);
            let b = env.open("b", &rb);
            let addr = a.listen(loopback()).await.unwrap();
            b.connect(addr).await.unwrap();
            let mut s = b.subscribe("userAdded").await.unwrap();
            for i in 0..3 {
                a.emit("userAdded", json!({"id": i})).await.unwrap();
            }
            take(&rb, &mut s, 3).await;
            let len = b.log_len().await.unwrap();
            b.close().await.unwrap();
            let b = env.open("b", &rb);
            let mut s = b.subscribe("userAdded").await.unwrap();
            a.emit("userAdded", json!({"id": 3})).await.unwrap();
            let got = take(&rb, &mut s, 1).await;
            assert_eq!(got[0].value.as_ref().unwrap()["id"], 3);
            assert_eq!(got[0].position, len, "nothing old was delivered again");
            b.close().await.unwrap();
            a.close().await.unwrap();
        },
    )
    .await
}

/// `StartAt::Now` sees only later events; `StartAt::Beginning` replays all.
pub async fn streams_from_now_and_from_the_beginning(ra: Arc<dyn Runtime>, _rb: Arc<dyn Runtime>) {
    limited(&ra.clone(), "streams", async move {
        let env = Env::new();
        let a = env.open("a", &ra);
        a.emit("userAdded", json!({"id": 1})).await.unwrap();
        a.emit("userAdded", json!({"id": 2})).await.unwrap();
        let mut now = a.stream(StartAt::Now).await.unwrap();
        let mut all = a.stream(StartAt::Beginning).await.unwrap();
        a.emit("userRemoved", json!({"id": 1})).await.unwrap();
        assert_eq!(
            named(&take(&ra, &mut now, 1).await),
            vec![("userRemoved".into(), json!({"id": 1}))]
        );
        assert_eq!(
            named(&take(&ra, &mut all, 3).await),
            vec![
                ("userAdded".into(), json!({"id": 1, "username": ""})),
                ("userAdded".into(), json!({"id": 2, "username": ""})),
                ("userRemoved".into(), json!({"id": 1})),
            ]
        );
        a.close().await.unwrap();
    })
    .await
}

/// Listening again on the same address after a restart announces nothing
/// new.
pub async fn no_duplicate_event_peer(ra: Arc<dyn Runtime>, _rb: Arc<dyn Runtime>) {
    limited(&ra.clone(), "no_duplicate_event_peer", async move {
        let env = Env::new();
        let a = env.open("a", &ra);
        let addr = a.listen(loopback()).await.unwrap();
        a.close().await.unwrap();
        let a = env.open("a", &ra);
        a.listen(addr).await.unwrap();
        a.emit("Hello", json!({"message": "marker"})).await.unwrap();
        let mut s = a.stream(StartAt::Beginning).await.unwrap();
        let mut peers = 0;
        within(&ra, "the marker", async {
            loop {
                let d = s.next().await.unwrap().unwrap();
                if d.name == EVENT_PEER {
                    peers += 1;
                } else {
                    break;
                }
            }
        })
        .await;
        assert_eq!(peers, 1, "one EventPeer for one address");
        a.close().await.unwrap();
    })
    .await
}

/// A named consumer resumes after what it committed, across a restart,
/// is held by one reader at a time, and `from_scratch` starts it over.
pub async fn named_consumers_resume_and_start_over(ra: Arc<dyn Runtime>, _rb: Arc<dyn Runtime>) {
    limited(&ra.clone(), "named_consumers", async move {
        let env = Env::new();
        let a = env.open("a", &ra);
        for i in 0..6 {
            a.emit("userAdded", json!({"id": i})).await.unwrap();
        }
        let ids = |v: &[Delivered]| -> Vec<Value> {
            v.iter()
                .map(|d| d.value.as_ref().unwrap()["id"].clone())
                .collect()
        };
        let mut c = a.resume("worker").await.unwrap();
        let first = within(&ra, "4 events", async {
            let mut out = Vec::new();
            while out.len() < 4 {
                out.push(c.next().await.unwrap().unwrap());
            }
            out
        })
        .await;
        // Events 0..3 processed; event 3 was read but not committed.
        c.commit(&first[2]).await.unwrap();
        drop(c);
        a.close().await.unwrap();
        let a = env.open("a", &ra);
        let mut c = a.resume("worker").await.unwrap();
        let rest = within(&ra, "the rest", async {
            let mut out = Vec::new();
            while out.len() < 3 {
                out.push(c.next().await.unwrap().unwrap());
            }
            out
        })
        .await;
        assert_eq!(ids(&rest), vec![json!(3), json!(4), json!(5)]);
        // One live reader per name: a second would commit over its progress.
        for busy in [a.resume("worker").await, a.from_scratch("worker").await] {
            let err = busy.unwrap_err();
            assert!(matches!(err, crate::EmitterError::ConsumerBusy(_)), "{err}");
        }
        drop(c);
        let mut c = a.from_scratch("worker").await.unwrap();
        assert_eq!(c.start(), 0);
        let again = c.next().await.unwrap().unwrap();
        assert_eq!(ids(&[again]), vec![json!(0)]);
        a.close().await.unwrap();
    })
    .await
}

/// `allow` restricts an emitter to the listed keys: others cannot connect.
pub async fn allow_restricts_peers(ra: Arc<dyn Runtime>, rb: Arc<dyn Runtime>) {
    limited(&ra.clone(), "allow_restricts_peers", async move {
        let env = Env::new();
        let b = env.open("b", &rb);
        let c = env.open("c", &rb);
        let a = Emitter::builder(env.tmp.path().join("a"))
            .config(config())
            .allow(b.id().await)
            .open(ra.clone(), schema())
            .unwrap();
        let addr = a.listen(loopback()).await.unwrap();
        assert_eq!(b.connect(addr).await.unwrap(), a.id().await);
        let idc = c.id().await;
        let mut a_events = a.events();
        // C's side of the handshake may finish before A checks C's key, so
        // the refusal shows at A.
        let _ = c.connect(addr).await;
        let refused = within(&ra, "A refuses C", async {
            loop {
                match a_events.next().await.expect("events") {
                    crate::MqEvent::Disconnected { reason, .. } => return reason,
                    crate::MqEvent::Connected { peer } => assert_ne!(peer, idc, "C got in"),
                    _ => {}
                }
            }
        })
        .await;
        assert_eq!(refused, peermq::CloseReason::Unauthorized(idc));
        let mut s = b.subscribe("Hello").await.unwrap();
        a.emit("Hello", json!({"from": "a"})).await.unwrap();
        take(&rb, &mut s, 1).await;
        for e in [c, b, a] {
            e.close().await.unwrap();
        }
    })
    .await
}

/// Waits until `em` has delivered `author`'s `EventPeer` that matches.
async fn announced_by(
    rt: &Arc<dyn Runtime>,
    em: &Emitter,
    author: peermq::PeerId,
    pred: impl Fn(&Value) -> bool,
) {
    wait_for(rt, em, "an EventPeer", |d| {
        d.name == EVENT_PEER && d.author == author && d.value.as_ref().is_some_and(&pred)
    })
    .await;
}

/// One `EventPeer` listing a hundred thousand addresses, and another that
/// speaks for someone else: every node that delivers them would otherwise
/// dial them all, forever.
pub async fn an_event_peer_flood_is_capped_and_speaks_only_for_its_author(
    ra: Arc<dyn Runtime>,
    rb: Arc<dyn Runtime>,
) {
    limited(&ra.clone(), "an_event_peer_flood", async move {
        let env = Env::new();
        let a = env.open("a", &ra);
        let b = env.open("b", &rb);
        let addr_a = a.listen(loopback()).await.unwrap();
        b.connect(addr_a).await.unwrap();
        let idb = b.id().await;
        let flood: Vec<Value> = (0..100_000u32)
            .map(|i| json!({"ip": format!("127.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256), "port": 9}))
            .collect();
        b.emit(EVENT_PEER, json!({"id": idb.to_string(), "addresses": flood}))
            .await
            .unwrap();
        let someone = peermq::Keypair::from_bytes(&[9; 32]).peer_id();
        b.emit(
            EVENT_PEER,
            json!({"id": someone.to_string(), "addresses": [{"ip": "127.0.0.2", "port": 1}]}),
        )
        .await
        .unwrap();
        b.emit("Hello", json!({"from": "b"})).await.unwrap();
        announced_by(&ra, &a, idb, |v| v["id"] == json!(someone.to_string())).await;
        // Delivery goes on past the flood.
        wait_for(&ra, &a, "B's Hello after its flood", |d| {
            d.name == "Hello" && d.author == idb
        })
        .await;
        let known = a.known_addresses().await.unwrap();
        assert!(known.len() <= 4, "{} addresses learned", known.len());
        assert!(
            !known.contains(&"127.0.0.2:1".parse().unwrap()),
            "an announcement for another id is ignored: {known:?}"
        );
        for e in [b, a] {
            e.close().await.unwrap();
        }
    })
    .await
}

/// B announces C's address as its own, and A hears of it through M: A
/// dials it expecting B's key, and C, which answers there, is refused
/// rather than served.
pub async fn a_learned_address_that_answers_with_another_key_is_not_connected(
    ra: Arc<dyn Runtime>,
    rb: Arc<dyn Runtime>,
) {
    limited(&ra.clone(), "a_learned_address_of_another_key", async move {
        let env = Env::new();
        let a = env.open("a", &ra);
        let m = env.open("m", &rb);
        let b = env.open("b", &rb);
        let c = env.open("c", &rb);
        let addr_m = m.listen(loopback()).await.unwrap();
        let addr_c = c.listen(loopback()).await.unwrap();
        a.connect(addr_m).await.unwrap();
        b.connect(addr_m).await.unwrap();
        let (idb, idc) = (b.id().await, c.id().await);
        let lie = json!({"id": idb.to_string(), "addresses": [{"ip": addr_c.ip().to_string(), "port": addr_c.port()}]});
        b.emit(EVENT_PEER, lie).await.unwrap();
        announced_by(&ra, &a, idb, |v| v["addresses"][0]["port"] == json!(addr_c.port())).await;
        within(&ra, "A learns the address", async {
            while !a.known_addresses().await.unwrap().contains(&addr_c) {
                a.mq().runtime().sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        // Several dial attempts' worth of time.
        a.mq().runtime().sleep(Duration::from_millis(600)).await;
        let peers = a.mq().peers().await.unwrap();
        assert!(
            !peers.iter().any(|p| p.peer == idc && p.connected),
            "A connected to C through B's announcement"
        );
        for e in [c, b, m, a] {
            e.close().await.unwrap();
        }
    })
    .await
}

/// A announces an address where something accepts and hangs up at once: B,
/// which hears of it through a relay, tries it a bounded number of times,
/// not forever.
pub async fn a_learned_address_that_never_answers_is_dialed_a_bounded_number_of_times(
    ra: Arc<dyn Runtime>,
    rb: Arc<dyn Runtime>,
) {
    limited(
        &ra.clone(),
        "a_learned_address_that_never_answers",
        async move {
            let env = Env::new();
            let a = env.open("a", &ra);
            let b = env.open("b", &rb);
            let relay = env.open("relay", &rb);
            let ida = a.id().await;
            let addr_r = relay.listen(loopback()).await.unwrap();
            let victim = rb.default_transport().bind(loopback()).await.unwrap();
            let addr_v = victim.local_addr().unwrap();
            let dials = Arc::new(AtomicUsize::new(0));
            let counted = dials.clone();
            rb.spawn(Box::pin(async move {
                while let Ok(t) = victim.accept().await {
                    counted.fetch_add(1, Ordering::SeqCst);
                    drop(t);
                }
            }));
            // B is not connected to A, so it dials what A announces.
            a.connect(addr_r).await.unwrap();
            b.connect(addr_r).await.unwrap();
            let announced = json!([{"ip": addr_v.ip().to_string(), "port": addr_v.port()}]);
            a.emit(
                EVENT_PEER,
                json!({"id": ida.to_string(), "addresses": announced}),
            )
            .await
            .unwrap();
            let most = crate::emitter::MAX_LEARNED_ATTEMPTS as usize;
            within(
                &rb,
                "B dials the announced address again and again",
                async {
                    while dials.load(Ordering::SeqCst) < most {
                        rb.sleep(Duration::from_millis(10)).await;
                    }
                },
            )
            .await;
            // Many times the longest backoff (250 ms here): an unbounded redial
            // would have come back several times.
            rb.sleep(Duration::from_secs(2)).await;
            assert_eq!(dials.load(Ordering::SeqCst), most);
            for e in [b, a, relay] {
                e.close().await.unwrap();
            }
        },
    )
    .await
}

//! The shared queue conformance suite with every connection over iroh
//! (relays off: peers meet at the addresses local discovery gives).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use peermq::Keypair;
use peermq_iroh::{Iroh, Relays};
use peermq_tokio::{conformance::Test, BoxFuture, Runtime, TokioRuntime, Transport};

/// tokio's executor and clock; each node's transport an iroh endpoint
/// keyed by the node's identity.
#[derive(Debug)]
struct OverIroh(Arc<TokioRuntime>);

impl Runtime for OverIroh {
    fn spawn(&self, future: BoxFuture<'static, ()>) {
        self.0.spawn(future)
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.0.sleep(duration)
    }

    fn default_transport(&self) -> Arc<dyn Transport> {
        self.0.default_transport()
    }

    fn transport_for(&self, key: &Keypair) -> io::Result<Arc<dyn Transport>> {
        Iroh::new().relays(Relays::Disabled).transport(key)
    }
}

fn run(test: Test) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("start a tokio runtime");
    rt.block_on(async {
        let r: Arc<dyn Runtime> = Arc::new(OverIroh(TokioRuntime::new()));
        test(r.clone(), r).await
    });
}

// Every test of the suite but the planted discovery entry, whose point is
// how the driver recovers from meeting the wrong key at an address: over
// iroh the dial itself fails there (TLS proves the key), which
// `tests/routes.rs` checks.
peermq_tokio::conformance_suite!(@tests run;
    readme_scenario,
    both_directions,
    reconnects_after_listener_restart,
    unauthorized_dialer_is_refused,
    remove_peer_cuts_the_peer_off,
    one_10_mib_message,
    ten_thousand_small_messages,
    sparse_read,
    acks,
    shutdown_flushes,
    a_slow_search_does_not_delay_a_peer_found_nearby,
    a_service_beside_the_queue_sees_every_arrival
);

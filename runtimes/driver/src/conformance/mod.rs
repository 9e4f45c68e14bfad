//! The conformance suites every runtime adapter runs, with the same test
//! names: [`queue`] through [`crate::conformance_suite!`] and [`emitter`]
//! through [`crate::emitter_conformance_suite!`]. Each test takes two
//! runtimes, so the same tests also check that nodes on different runtimes
//! talk to each other.
//!
//! Tests use short backoff so that retries happen within a fraction of a
//! second, a fresh temporary data and discovery directory each (so parallel
//! tests never find each other), and an overall time limit so that a hang
//! fails instead of stalling CI. They assert behaviour, never speed.

pub mod emitter;
pub mod queue;
mod stats;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::Runtime;

/// A test of either suite: given the runtime of the first node and of the
/// others.
pub type Test = fn(Arc<dyn Runtime>, Arc<dyn Runtime>) -> crate::BoxFuture<'static, ()>;

/// Defines the suite's tests, each run by `$run`, a function that takes a
/// [`Test`] and runs it to completion on the adapter's runtime.
#[macro_export]
macro_rules! conformance_suite {
    ($run:path) => {
        $crate::conformance_suite!(@tests $run;
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
            forged_discovery_entries_do_not_redirect_a_dial,
            a_slow_search_does_not_delay_a_peer_found_nearby,
            a_service_beside_the_queue_sees_every_arrival
        );
    };
    (@tests $run:path; $($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                $run(|a, b| ::std::boxed::Box::pin($crate::conformance::queue::$name(a, b)));
            }
        )*
    };
}

/// Defines the emitter suite's tests, each run by `$run`, a function that
/// takes a [`Test`] and runs it to completion on the adapter's runtime.
#[macro_export]
macro_rules! emitter_conformance_suite {
    ($run:path) => {
        $crate::emitter_conformance_suite!(@tests $run;
            one_emitter_on_its_own,
            two_connected_emitters,
            three_emitters_through_the_middle_one,
            removing_listeners,
            handler_errors_are_reported,
            an_offline_peer_syncs_later,
            unknown_types_replicate_raw,
            event_peer_auto_connect_and_stored_peers_after_restart,
            automatic_reconnect,
            old_events_are_not_emitted_again,
            streams_from_now_and_from_the_beginning,
            no_duplicate_event_peer,
            named_consumers_resume_and_start_over,
            allow_restricts_peers,
            an_event_peer_flood_is_capped_and_speaks_only_for_its_author,
            a_learned_address_that_answers_with_another_key_is_not_connected,
            a_learned_address_that_never_answers_is_dialed_a_bounded_number_of_times
        );
    };
    (@tests $run:path; $($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                $run(|a, b| ::std::boxed::Box::pin($crate::conformance::emitter::$name(a, b)));
            }
        )*
    };
}

/// Time any single test may take before it is failed as hung.
const TEST_LIMIT: Duration = Duration::from_secs(60);
/// Time to wait for one expected thing to happen.
const WAIT: Duration = Duration::from_secs(20);

pub(crate) fn loopback() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().expect("a socket address")
}

pub(crate) async fn limited(rt: &Arc<dyn Runtime>, what: &str, f: impl Future<Output = ()>) {
    if crate::timeout(&**rt, TEST_LIMIT, f).await.is_none() {
        panic!("{what} did not finish within {TEST_LIMIT:?}");
    }
}

pub(crate) async fn within<T>(rt: &Arc<dyn Runtime>, what: &str, f: impl Future<Output = T>) -> T {
    match crate::timeout(&**rt, WAIT, f).await {
        Some(v) => v,
        None => panic!("timed out waiting for {what}"),
    }
}

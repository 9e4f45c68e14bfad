//! Nodes on different runtimes talk to each other: the suite's tests with
//! node A on tokio and node B on smol or async-std.

use std::sync::Arc;

use peermq_async_std::AsyncStdRuntime;
use peermq_smol::SmolRuntime;
use peermq_tokio::{conformance, conformance::Test, Runtime, TokioRuntime};

fn with(other: Arc<dyn Runtime>, test: Test) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("start a tokio runtime");
    rt.block_on(async {
        let a: Arc<dyn Runtime> = TokioRuntime::new();
        test(a, other).await
    });
}

#[test]
fn tokio_and_smol_readme_scenario() {
    with(SmolRuntime::new(), |a, b| {
        Box::pin(conformance::queue::readme_scenario(a, b))
    });
}

#[test]
fn tokio_and_smol_both_directions() {
    with(SmolRuntime::new(), |a, b| {
        Box::pin(conformance::queue::both_directions(a, b))
    });
}

#[test]
fn tokio_and_smol_one_10_mib_message() {
    with(SmolRuntime::new(), |a, b| {
        Box::pin(conformance::queue::one_10_mib_message(a, b))
    });
}

#[test]
fn tokio_and_async_std_readme_scenario() {
    with(AsyncStdRuntime::new(), |a, b| {
        Box::pin(conformance::queue::readme_scenario(a, b))
    });
}

#[test]
fn tokio_and_async_std_both_directions() {
    with(AsyncStdRuntime::new(), |a, b| {
        Box::pin(conformance::queue::both_directions(a, b))
    });
}

#[test]
fn tokio_and_async_std_shutdown_flushes() {
    with(AsyncStdRuntime::new(), |a, b| {
        Box::pin(conformance::queue::shutdown_flushes(a, b))
    });
}

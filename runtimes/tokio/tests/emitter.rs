//! The event emitter's conformance suite, on tokio.

use std::sync::Arc;

use peermq_tokio::{conformance::Test, Runtime, TokioRuntime};

fn run(test: Test) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("start a tokio runtime");
    rt.block_on(async {
        let r: Arc<dyn Runtime> = TokioRuntime::new();
        test(r.clone(), r).await
    });
}

peermq_tokio::emitter_conformance_suite!(run);

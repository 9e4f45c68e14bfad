//! The event emitter's conformance suite, on async-std.
#![cfg(feature = "async-std")]

use std::sync::Arc;

use peermq_async_std::{conformance::Test, AsyncStdRuntime, Runtime};

fn run(test: Test) {
    let r: Arc<dyn Runtime> = AsyncStdRuntime::new();
    async_std::task::block_on(test(r.clone(), r));
}

peermq_async_std::emitter_conformance_suite!(run);

//! The event emitter's conformance suite, on smol.

use std::sync::Arc;

use peermq_smol::{conformance::Test, Runtime, SmolRuntime};

fn run(test: Test) {
    let r: Arc<dyn Runtime> = SmolRuntime::new();
    smol::block_on(test(r.clone(), r));
}

peermq_smol::emitter_conformance_suite!(run);

//! The emitter's schema loading: any text compiles as a `.proto` schema
//! or fails with an error, never a panic; a schema that compiles encodes
//! and decodes each of its event types.
//!
//! Input: the schema's source text (bytes that are not UTF-8 are
//! replaced, as a file read lossily would be).
#![no_main]

use libfuzzer_sys::fuzz_target;
use peermq::emitter::Schema;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    if data.len() > 4096 {
        return;
    }
    let source = String::from_utf8_lossy(data);
    let Ok(schema) = Schema::parse("fuzz.proto", &source) else {
        return;
    };
    assert_eq!(schema.source(), source);
    for name in schema.messages() {
        assert!(schema.get(&name).is_some(), "{name} is listed but unknown");
        let _ = schema.decode(&name, &[]);
        let _ = schema.decode(&name, &[0x0a, 0x01, 0x41, 0x10, 0x01]);
        if let Ok(bytes) = schema.encode(&name, &json!({})) {
            let v = schema.decode(&name, &bytes).expect("what encodes decodes");
            let again = schema.encode(&name, &v).expect("what decodes encodes");
            assert_eq!(
                schema.decode(&name, &again),
                Some(v),
                "{name}: a decoded value survives a round trip"
            );
        }
    }
});

//! Run-time protobuf schemas: event types, validation with errors that name
//! the field, and the JSON mapping.

use std::collections::BTreeMap;
use std::path::Path;

use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor,
    SerializeOptions,
};
use protox::file::{File, FileResolver, GoogleFileResolver};
use serde_json::Value;

/// The event type every emitter knows: a peer announcing where it listens.
pub const EVENT_PEER: &str = "EventPeer";

const BUILTIN_NAME: &str = "peermq/builtin.proto";
const BUILTIN: &str = r#"
syntax = "proto3";
package peermq;
// A node's listen addresses, announced so that others can connect to it.
message EventPeer {
  string id = 1;
  repeated Address addresses = 2;
}
message Address {
  string ip = 1;
  uint32 port = 2;
}
"#;

/// A schema could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The `.proto` text does not compile.
    #[error("schema {file} does not compile: {message}")]
    Compile {
        /// The file name given.
        file: String,
        /// The compiler's message.
        message: String,
    },
    /// The schema redefines a type the emitter reserves.
    #[error(
        "schema {file} defines `{name}`, which is reserved for the emitter's own events; rename it"
    )]
    Reserved {
        /// The file name given.
        file: String,
        /// The reserved name.
        name: String,
    },
}

/// A value does not match its event type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// No message type has this name.
    #[error("unknown event type `{name}`; the schema has: {known}")]
    UnknownType {
        /// The name asked for.
        name: String,
        /// The names available, comma-separated.
        known: String,
    },
    /// A field is not part of the type.
    #[error("`{path}` is not a field of {message}; its fields are: {known}")]
    UnknownField {
        /// Dotted path of the offending field.
        path: String,
        /// The message type.
        message: String,
        /// Its field names, comma-separated.
        known: String,
    },
    /// A field holds the wrong kind of value.
    #[error("field `{path}` of {message} must be {expected}, got {got}")]
    WrongType {
        /// Dotted path of the offending field.
        path: String,
        /// The message type holding it.
        message: String,
        /// What the field needs.
        expected: String,
        /// What was given (abbreviated JSON).
        got: String,
    },
    /// The value is not a JSON object.
    #[error("an event of type {message} must be a JSON object, got {got}")]
    NotAnObject {
        /// The message type.
        message: String,
        /// What was given.
        got: String,
    },
    /// The value passed the field checks but still did not convert.
    #[error("invalid {message}: {detail}")]
    Invalid {
        /// The message type.
        message: String,
        /// The converter's message.
        detail: String,
    },
}

/// An event schema: the message types of a `.proto` file, plus the built-in
/// [`EVENT_PEER`].
#[derive(Clone, Debug)]
pub struct Schema {
    types: BTreeMap<String, MessageDescriptor>,
    source: String,
}

struct MemoryResolver {
    name: String,
    source: String,
}

impl FileResolver for MemoryResolver {
    fn resolve_path(&self, path: &Path) -> Option<String> {
        (path == Path::new(&self.name)).then(|| self.name.clone())
    }

    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        if name == self.name {
            File::from_source(name, &self.source)
        } else if name == BUILTIN_NAME {
            File::from_source(name, BUILTIN)
        } else {
            GoogleFileResolver::new().open_file(name)
        }
    }
}

impl Schema {
    /// Compiles `.proto` source text; `name` is used in error messages.
    pub fn parse(name: &str, source: &str) -> Result<Self, SchemaError> {
        let compile_err = |e: protox::Error| SchemaError::Compile {
            file: name.to_string(),
            message: e.to_string(),
        };
        let resolver = MemoryResolver {
            name: name.to_string(),
            source: source.to_string(),
        };
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler.include_imports(true);
        compiler.open_file(name).map_err(compile_err)?;
        compiler.open_file(BUILTIN_NAME).map_err(compile_err)?;
        let pool: DescriptorPool = compiler.descriptor_pool();
        let mut types = BTreeMap::new();
        let mut ambiguous = Vec::new();
        for msg in pool.all_messages() {
            let builtin = msg.parent_file().name() == BUILTIN_NAME;
            if !builtin && msg.name() == EVENT_PEER {
                return Err(SchemaError::Reserved {
                    file: name.to_string(),
                    name: EVENT_PEER.to_string(),
                });
            }
            let from_user = msg.parent_file().name() == name;
            if !(from_user || builtin && msg.name() == EVENT_PEER) || msg.parent_message().is_some()
            {
                continue;
            }
            // Events are named by their simple name, as the original did;
            // full names stay available to disambiguate.
            if msg.full_name() != msg.name() {
                types.insert(msg.full_name().to_string(), msg.clone());
            }
            if types.insert(msg.name().to_string(), msg.clone()).is_some() {
                ambiguous.push(msg.name().to_string());
            }
        }
        for n in ambiguous {
            types.remove(&n);
        }
        Ok(Schema {
            types,
            source: source.to_string(),
        })
    }

    /// Reads and compiles a `.proto` file.
    pub fn load(path: &Path) -> Result<Self, SchemaError> {
        let source = std::fs::read_to_string(path).map_err(|e| SchemaError::Compile {
            file: path.display().to_string(),
            message: format!("cannot read it: {e}"),
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "schema.proto".into());
        Self::parse(&name, &source)
    }

    /// The source text the schema was compiled from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The event types, by simple name (and full name where they differ).
    pub fn messages(&self) -> Vec<String> {
        self.types
            .keys()
            .filter(|k| !k.contains('.'))
            .cloned()
            .collect()
    }

    /// The descriptor of event type `name`.
    pub fn get(&self, name: &str) -> Option<&MessageDescriptor> {
        self.types.get(name)
    }

    fn descriptor(&self, name: &str) -> Result<&MessageDescriptor, ValidationError> {
        self.get(name).ok_or_else(|| ValidationError::UnknownType {
            name: name.to_string(),
            known: self.messages().join(", "),
        })
    }

    /// Checks `value` against type `name` and encodes it as protobuf.
    pub fn encode(&self, name: &str, value: &Value) -> Result<Vec<u8>, ValidationError> {
        let desc = self.descriptor(name)?;
        check_message(desc, value, "")?;
        let opts = DeserializeOptions::new().deny_unknown_fields(true);
        let msg = DynamicMessage::deserialize_with_options(desc.clone(), value.clone(), &opts)
            .map_err(|e| ValidationError::Invalid {
                message: desc.name().to_string(),
                detail: e.to_string(),
            })?;
        Ok(msg.encode_to_vec())
    }

    /// Decodes protobuf `bytes` of type `name` into JSON, default values
    /// filled in and fields under their `.proto` names. `None` if the type is
    /// unknown here or the bytes do not parse as it.
    pub fn decode(&self, name: &str, bytes: &[u8]) -> Option<Value> {
        let desc = self.get(name)?;
        let msg = DynamicMessage::decode(desc.clone(), bytes).ok()?;
        let opts = SerializeOptions::new()
            .skip_default_fields(false)
            .use_proto_field_name(true)
            .stringify_64_bit_integers(false);
        msg.serialize_with_options(serde_json::value::Serializer, &opts)
            .ok()
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(40).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s
    }
}

fn check_message(
    desc: &MessageDescriptor,
    value: &Value,
    path: &str,
) -> Result<(), ValidationError> {
    let Value::Object(obj) = value else {
        if path.is_empty() {
            return Err(ValidationError::NotAnObject {
                message: desc.name().to_string(),
                got: short(value),
            });
        }
        return Err(wrong(desc, path, "an object", value));
    };
    for (k, v) in obj {
        let field = desc
            .get_field_by_name(k)
            .or_else(|| desc.get_field_by_json_name(k));
        let p = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        let Some(field) = field else {
            return Err(ValidationError::UnknownField {
                path: p,
                message: desc.name().to_string(),
                known: desc
                    .fields()
                    .map(|f| f.name().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        check_field(desc, &field, v, &p)?;
    }
    Ok(())
}

fn wrong(desc: &MessageDescriptor, path: &str, expected: &str, got: &Value) -> ValidationError {
    ValidationError::WrongType {
        path: path.to_string(),
        message: desc.name().to_string(),
        expected: expected.to_string(),
        got: short(got),
    }
}

fn check_field(
    desc: &MessageDescriptor,
    field: &FieldDescriptor,
    v: &Value,
    path: &str,
) -> Result<(), ValidationError> {
    if v.is_null() {
        return Ok(());
    }
    if field.is_map() {
        let Value::Object(m) = v else {
            return Err(wrong(desc, path, "an object (a map)", v));
        };
        let Kind::Message(entry) = field.kind() else {
            return Ok(());
        };
        let value_field = entry.map_entry_value_field();
        for (k, item) in m {
            check_kind(desc, &value_field.kind(), item, &format!("{path}.{k}"))?;
        }
        return Ok(());
    }
    if field.is_list() {
        let Value::Array(items) = v else {
            return Err(wrong(desc, path, "an array", v));
        };
        for (i, item) in items.iter().enumerate() {
            check_kind(desc, &field.kind(), item, &format!("{path}[{i}]"))?;
        }
        return Ok(());
    }
    check_kind(desc, &field.kind(), v, path)
}

fn check_kind(
    desc: &MessageDescriptor,
    kind: &Kind,
    v: &Value,
    path: &str,
) -> Result<(), ValidationError> {
    let int_in = |lo: i128, hi: i128| -> bool {
        let n = match v {
            Value::Number(n) => n
                .as_i64()
                .map(i128::from)
                .or_else(|| n.as_u64().map(i128::from)),
            Value::String(s) => s.parse::<i128>().ok(),
            _ => None,
        };
        n.is_some_and(|n| (lo..=hi).contains(&n))
    };
    let ok = match kind {
        Kind::Double | Kind::Float => {
            v.is_number() || matches!(v.as_str(), Some("NaN" | "Infinity" | "-Infinity"))
        }
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => int_in(i32::MIN.into(), i32::MAX.into()),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => int_in(i64::MIN.into(), i64::MAX.into()),
        Kind::Uint32 | Kind::Fixed32 => int_in(0, u32::MAX.into()),
        Kind::Uint64 | Kind::Fixed64 => int_in(0, u64::MAX.into()),
        Kind::Bool => v.is_boolean(),
        Kind::String | Kind::Bytes => v.is_string(),
        Kind::Enum(e) => match v {
            Value::String(s) => e.get_value_by_name(s).is_some(),
            Value::Number(n) => n.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
            _ => false,
        },
        Kind::Message(m) => {
            if m.full_name().starts_with("google.protobuf.") {
                // Well-known types have special JSON forms; the converter
                // checks them.
                true
            } else {
                return check_message(m, v, path);
            }
        }
    };
    if ok {
        return Ok(());
    }
    let expected = match kind {
        Kind::Double | Kind::Float => "a number".to_string(),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => "a 32-bit integer".to_string(),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => "a 64-bit integer".to_string(),
        Kind::Uint32 | Kind::Fixed32 => "a non-negative 32-bit integer".to_string(),
        Kind::Uint64 | Kind::Fixed64 => "a non-negative 64-bit integer".to_string(),
        Kind::Bool => "true or false".to_string(),
        Kind::String => "a string".to_string(),
        Kind::Bytes => "a base64 string".to_string(),
        Kind::Enum(e) => format!(
            "one of {}",
            e.values()
                .map(|x| x.name().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Kind::Message(m) => format!("a {} object", m.name()),
    };
    Err(wrong(desc, path, &expected, v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PROTO: &str = r#"
        syntax = "proto3";
        message Hello { string from = 1; string message = 2; }
        message userAdded { int32 id = 1; string username = 2; }
        message userRemoved { int32 id = 1; }
        message Nested { Hello inner = 1; repeated int32 ids = 2; }
    "#;

    #[test]
    fn roundtrip_with_defaults_filled_in() {
        let s = Schema::parse("example.proto", PROTO).unwrap();
        assert_eq!(
            s.messages(),
            vec!["EventPeer", "Hello", "Nested", "userAdded", "userRemoved"]
        );
        let bytes = s.encode("Hello", &json!({"from": "Matteo"})).unwrap();
        assert_eq!(
            s.decode("Hello", &bytes).unwrap(),
            json!({"from": "Matteo", "message": ""})
        );
        let bytes = s
            .encode("userAdded", &json!({"id": 1, "username": "user"}))
            .unwrap();
        assert_eq!(
            s.decode("userAdded", &bytes).unwrap(),
            json!({"id": 1, "username": "user"})
        );
    }

    #[test]
    fn validation_errors_name_the_field() {
        let s = Schema::parse("example.proto", PROTO).unwrap();
        let e = s
            .encode("userAdded", &json!({"id": "one"}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("field `id` of userAdded must be a 32-bit integer"),
            "{e}"
        );
        let e = s
            .encode("Hello", &json!({"frm": "x"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`frm` is not a field of Hello"), "{e}");
        let e = s
            .encode("Nested", &json!({"inner": {"from": 3}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`inner.from`"), "{e}");
        let e = s
            .encode("Nested", &json!({"ids": [1, "x"]}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`ids[1]`"), "{e}");
        let e = s.encode("Nope", &json!({})).unwrap_err().to_string();
        assert!(
            e.contains("unknown event type `Nope`") && e.contains("Hello"),
            "{e}"
        );
        assert!(matches!(
            s.encode("Hello", &json!(3)),
            Err(ValidationError::NotAnObject { .. })
        ));
    }

    #[test]
    fn bad_schemas_are_reported() {
        let e = Schema::parse("bad.proto", "message {").unwrap_err();
        assert!(matches!(e, SchemaError::Compile { .. }), "{e}");
        let e = Schema::parse(
            "r.proto",
            "syntax = \"proto3\"; message EventPeer { string x = 1; }",
        )
        .unwrap_err();
        assert!(matches!(e, SchemaError::Reserved { .. }), "{e}");
    }
}

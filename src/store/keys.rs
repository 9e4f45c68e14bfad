//! Keys of the node's metadata in [`super::Table::Meta`]. (Other tables'
//! keys belong to the modules that own them, e.g. [`crate::feed::block_key`].)

/// Meta key of the node's identity secret.
pub const META_IDENTITY: &[u8] = b"identity";
/// Meta key of the store format version.
pub const META_FORMAT: &[u8] = b"format";
/// Meta key of the categories the application created for received
/// messages.
pub const META_CATEGORIES: &[u8] = b"categories";

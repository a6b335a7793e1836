//! OAuth flows and the glue between configuration, storage and the protocol.

pub mod client_sync;

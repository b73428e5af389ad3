//! Kafka wire formats, without I/O and without a runtime.
//!
//! - [`record_batch`]: the v2 record batch header view, CRC-32C check, and the
//!   in-place rewrites a broker may make (base offset, leader epoch, log-append time).
//! - [`frame`]: request framing and header parsing, response framing.
//! - [`api`]: the APIs and versions Sluice advertises, and Kafka error codes.
//! - [`fetch_response`]: the Fetch response as a list of buffers (records not copied).
//! - [`compression`]: the batch codecs (gzip, snappy, lz4, zstd), bounded decompression.
//! - [`validate`]: record-level validation of a produced batch (Kafka's LogValidator).
//!
//! Request and response bodies are the `kafka-protocol` crate's types.

pub mod api;
pub mod compression;
pub mod fetch_response;
pub mod frame;
pub mod record_batch;
pub mod validate;

pub use kafka_protocol;

//! Kafka wire formats, without I/O and without a runtime.
//!
//! - [`record_batch`]: the v2 record batch header view, CRC-32C check, and the
//!   in-place rewrites a broker may make (base offset, leader epoch, log-append time).
//! - [`frame`]: request framing and header parsing, response framing.
//! - [`api`]: the APIs and versions Sluice advertises, and Kafka error codes.
//!
//! Request and response bodies are the `kafka-protocol` crate's types.

pub mod api;
pub mod frame;
pub mod record_batch;

pub use kafka_protocol;

//! Kafka wire formats, without I/O and without a runtime.
//!
//! For now this crate holds the view of a Kafka v2 record batch that the storage
//! engine needs: header parsing, the CRC-32C check, and the in-place rewrites a
//! broker is allowed to make (base offset, partition leader epoch, log-append time).

pub mod record_batch;

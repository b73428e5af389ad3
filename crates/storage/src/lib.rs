//! The partition log of Sluice: Kafka v2 record batches stored byte for byte in
//! O_DIRECT segment files, with sparse offset and time indexes, group commit,
//! crash recovery and retention. See ARCHITECTURE.md for the on-disk format.
//!
//! Single-core by design: a [`PartitionLog`] lives on the executor that opened
//! it and must be used only there.

pub mod cache;
pub mod compaction;
pub mod config;
pub mod error;
pub mod event;
pub mod index;
pub mod io;
mod log;
pub mod records;
mod recovery;
pub mod segment;
pub mod stats;

pub use cache::{CacheSlot, CacheStats, TailCache};
pub use compaction::{CompactionConfig, CompactionStats};
pub use config::{FlushPolicy, LogConfig};
pub use error::{LogError, LogResult};
pub use log::{now_ms, AppendInfo, AppendOptions, LogOffsets, PartitionLog, ReadBatches};
pub use records::Records;
pub use recovery::{CLEAN_SHUTDOWN_FILE, LOG_START_OFFSET_FILE};

//! One core's world: the partitions this core owns, the connections accepted
//! on it, the Kafka API handlers, and the routing of work to other cores.
//!
//! Everything in a [`shard::Shard`] lives on one executor; the only way
//! between shards is a [`mesh::ShardMsg`] over flume.

pub mod cluster_link;
pub mod connection;
pub mod egress;
pub mod fetch_sessions;
pub mod fetcher;
pub mod groups;
pub mod handlers;
pub mod inbox;
pub mod log_limit;
pub mod maintenance;
pub mod memory;
pub mod mesh;
pub mod metadata;
pub mod metrics;
pub mod partition;
pub mod producers;
pub mod replay;
pub mod replicas;
pub mod replication;
pub mod settings;
pub mod shard;
pub mod storage_dir;
pub mod topic_config;
pub mod topics;
pub mod zero_copy;

//! Messages between shards. Everything here is `Send` and carries record data
//! as `Bytes`, so a batch crosses cores without being copied.

use crate::metadata::TopicMeta;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// Work on one partition, done by the shard that owns it.
#[derive(Debug)]
pub enum PartitionOp {
    Produce {
        records: Bytes,
    },
    Fetch {
        offset: i64,
        max_bytes: usize,
        strict_max_bytes: bool,
    },
    ListOffsets {
        timestamp: i64,
    },
    /// DeleteRecords: move the log start offset to `before` (-1: the high watermark).
    DeleteRecords {
        before: i64,
    },
}

#[derive(Debug, Clone, Default)]
pub struct ProduceOutcome {
    pub error_code: i16,
    pub error_message: Option<String>,
    pub base_offset: i64,
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
}

#[derive(Debug, Clone, Default)]
pub struct FetchOutcome {
    pub error_code: i16,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub records: Bytes,
    /// A strict read found a first batch over the limit and returned nothing.
    pub oversized: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ListOffsetsOutcome {
    pub error_code: i16,
    pub offset: i64,
    pub timestamp: i64,
}

#[derive(Debug, Clone)]
pub enum PartitionReply {
    Produce(ProduceOutcome),
    Fetch(FetchOutcome),
    ListOffsets(ListOffsetsOutcome),
    /// (error code, low watermark).
    DeleteRecords((i16, i64)),
}

/// Changes to topic metadata, executed by the metadata writer (shard 0).
#[derive(Debug, Clone)]
pub enum AdminOp {
    CreateTopic {
        name: String,
        partitions: i32,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    },
    DeleteTopic {
        name: String,
    },
    CreatePartitions {
        name: String,
        count: i32,
        validate_only: bool,
    },
    /// Replace a topic's config overrides (already validated).
    AlterTopicConfigs {
        name: String,
        configs: BTreeMap<String, String>,
    },
}

#[derive(Debug, Clone, Default)]
pub struct AdminReply {
    pub error_code: i16,
    pub error_message: Option<String>,
}

pub enum ShardMsg {
    Partition {
        topic: String,
        partition: i32,
        op: PartitionOp,
        reply: flume::Sender<PartitionReply>,
    },
    /// Reply once any of these partitions holds data past the offset, or at the deadline.
    WaitForData {
        parts: Vec<(String, i32, i64)>,
        deadline: Instant,
        reply: flume::Sender<()>,
    },
    Admin {
        op: AdminOp,
        reply: flume::Sender<AdminReply>,
    },
    /// Open the partitions of this topic that this shard owns.
    OpenTopic {
        topic: Arc<TopicMeta>,
        reply: flume::Sender<()>,
    },
    /// Apply this topic's changed configs to the partitions open here.
    TopicConfigChanged {
        topic: Arc<TopicMeta>,
        reply: flume::Sender<()>,
    },
    /// Close and delete this shard's partitions of a deleted topic.
    DropTopic {
        topic: Arc<TopicMeta>,
        reply: flume::Sender<()>,
    },
    /// A whole request for a group coordinated by the receiving shard.
    Forward {
        frame: sluice_protocol::frame::RequestFrame,
        reply: flume::Sender<Result<Option<Bytes>, String>>,
    },
    /// A group's committed offsets (OffsetFetch v8+ asks several coordinators).
    CommittedOffsets {
        group: String,
        reply: flume::Sender<Result<crate::groups::offsets::GroupOffsets, String>>,
    },
    /// (group id, protocol type, state) of every group coordinated here.
    ListGroups {
        reply: flume::Sender<Vec<(String, String, String)>>,
    },
    DescribeGroup {
        group: String,
        reply: flume::Sender<Option<GroupInfo>>,
    },
    DeleteGroup {
        group: String,
        reply: flume::Sender<i16>,
    },
    AllocateProducerId {
        reply: flume::Sender<Result<i64, String>>,
    },
    Shutdown,
}

/// DescribeGroups data that crosses shards.
#[derive(Debug, Clone)]
pub struct GroupInfo {
    pub state: String,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<(String, Option<String>, String, String, Bytes, Bytes)>,
}

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
        /// -1: answer once every in-sync replica has it; 0 and 1: once the leader has.
        acks: i16,
        /// How long an acks=-1 produce waits for the in-sync replicas.
        timeout_ms: i32,
    },
    Fetch {
        offset: i64,
        max_bytes: usize,
        strict_max_bytes: bool,
        /// The follower node fetching (-1: a consumer).
        replica: i32,
        /// The leader epoch the client knows (-1: none): an older one is fenced.
        current_leader_epoch: i32,
        /// A follower's: the epoch of the last batch it has (-1: none).
        last_fetched_epoch: i32,
    },
    ListOffsets {
        timestamp: i64,
        current_leader_epoch: i32,
    },
    /// Where the log's `leader_epoch` ends (OffsetForLeaderEpoch).
    OffsetForLeaderEpoch {
        current_leader_epoch: i32,
        leader_epoch: i32,
    },
    /// DeleteRecords: move the log start offset to `before` (-1: the high watermark).
    DeleteRecords { before: i64 },
}

/// A long poll's condition on one partition: data past `offset` (a
/// follower's: in the log; a consumer's: below the high watermark).
#[derive(Debug, Clone)]
pub struct WaitFor {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub replica: bool,
}

impl PartitionOp {
    /// The leader epoch a client's request names, checked before it runs
    /// (a follower's fetch is checked by the leader's replica fetch).
    pub fn client_leader_epoch(&self) -> Option<i32> {
        match self {
            PartitionOp::Fetch {
                replica,
                current_leader_epoch,
                ..
            } if *replica < 0 => Some(*current_leader_epoch),
            PartitionOp::ListOffsets {
                current_leader_epoch,
                ..
            } => Some(*current_leader_epoch),
            _ => None,
        }
    }
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
    pub records: sluice_storage::Records,
    /// A strict read found a first batch over the limit and returned nothing.
    pub oversized: bool,
    /// To a follower: (epoch, end offset) where its log leaves the leader's.
    pub diverging: Option<(i32, i64)>,
}

#[derive(Debug, Clone, Default)]
pub struct ListOffsetsOutcome {
    pub error_code: i16,
    pub offset: i64,
    pub timestamp: i64,
    /// The leader's epoch (ListOffsets v4+; -1 with an error).
    pub leader_epoch: i32,
}

#[derive(Debug, Clone)]
pub enum PartitionReply {
    Produce(ProduceOutcome),
    Fetch(FetchOutcome),
    ListOffsets(ListOffsetsOutcome),
    /// (error code, low watermark).
    DeleteRecords((i16, i64)),
    /// (error code, leader epoch, end offset).
    OffsetForLeaderEpoch((i16, i32, i64)),
}

/// Changes to topic metadata, executed by the metadata writer (shard 0).
#[derive(Debug, Clone)]
pub enum AdminOp {
    CreateTopic {
        name: String,
        partitions: i32,
        /// -1: the broker's default_replication_factor.
        replication_factor: i32,
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
        parts: Vec<WaitFor>,
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
    /// The topic's leaders, leader epochs or ISRs changed: apply them to the
    /// replicas open here.
    ReplicaStates {
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
    /// The shard's figures, for a scrape of `/metrics`.
    Metrics {
        reply: flume::Sender<crate::metrics::ShardSnapshot>,
    },
    /// A whole request for a group coordinated by the receiving shard.
    Forward {
        frame: sluice_protocol::frame::RequestFrame,
        reply: flume::Sender<Result<Option<sluice_protocol::frame::ResponseFrame>, String>>,
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

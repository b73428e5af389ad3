//! The Kafka APIs Sluice answers and the versions it advertises. Only what is
//! implemented and tested is listed: ApiVersions is built from this table.

use kafka_protocol::messages::ApiKey;

/// (API, lowest version, highest version).
pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::InitProducerId, 0, 4),
];

/// The advertised version range of an API, if Sluice answers it at all.
pub fn supported_versions(api_key: i16) -> Option<(ApiKey, i16, i16)> {
    SUPPORTED_APIS
        .iter()
        .copied()
        .find(|(key, _, _)| *key as i16 == api_key)
}

/// Kafka error codes Sluice returns.
pub mod error_code {
    pub const NONE: i16 = 0;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const RECORD_LIST_TOO_LARGE: i16 = 18;
    pub const INVALID_REQUIRED_ACKS: i16 = 21;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_REQUEST: i16 = 42;
    pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
    pub const INVALID_CONFIG: i16 = 40;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
    pub const INVALID_RECORD: i16 = 87;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const UNKNOWN_PRODUCER_ID: i16 = 59;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const FENCED_INSTANCE_ID: i16 = 82;
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const INVALID_TXN_STATE: i16 = 48;
    pub const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;

    /// The Kafka name of a code, for log lines ("MESSAGE_TOO_LARGE").
    pub fn name(code: i16) -> &'static str {
        match code {
            NONE => "NONE",
            OFFSET_OUT_OF_RANGE => "OFFSET_OUT_OF_RANGE",
            CORRUPT_MESSAGE => "CORRUPT_MESSAGE",
            UNKNOWN_TOPIC_OR_PARTITION => "UNKNOWN_TOPIC_OR_PARTITION",
            REQUEST_TIMED_OUT => "REQUEST_TIMED_OUT",
            MESSAGE_TOO_LARGE => "MESSAGE_TOO_LARGE",
            INVALID_TOPIC_EXCEPTION => "INVALID_TOPIC_EXCEPTION",
            RECORD_LIST_TOO_LARGE => "RECORD_LIST_TOO_LARGE",
            INVALID_REQUIRED_ACKS => "INVALID_REQUIRED_ACKS",
            UNSUPPORTED_VERSION => "UNSUPPORTED_VERSION",
            TOPIC_ALREADY_EXISTS => "TOPIC_ALREADY_EXISTS",
            INVALID_PARTITIONS => "INVALID_PARTITIONS",
            INVALID_REPLICATION_FACTOR => "INVALID_REPLICATION_FACTOR",
            INVALID_REQUEST => "INVALID_REQUEST",
            UNSUPPORTED_FOR_MESSAGE_FORMAT => "UNSUPPORTED_FOR_MESSAGE_FORMAT",
            INVALID_CONFIG => "INVALID_CONFIG",
            KAFKA_STORAGE_ERROR => "KAFKA_STORAGE_ERROR",
            TRANSACTIONAL_ID_AUTHORIZATION_FAILED => "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
            INVALID_RECORD => "INVALID_RECORD",
            UNKNOWN_SERVER_ERROR => "UNKNOWN_SERVER_ERROR",
            OFFSET_METADATA_TOO_LARGE => "OFFSET_METADATA_TOO_LARGE",
            COORDINATOR_NOT_AVAILABLE => "COORDINATOR_NOT_AVAILABLE",
            ILLEGAL_GENERATION => "ILLEGAL_GENERATION",
            INCONSISTENT_GROUP_PROTOCOL => "INCONSISTENT_GROUP_PROTOCOL",
            INVALID_GROUP_ID => "INVALID_GROUP_ID",
            UNKNOWN_MEMBER_ID => "UNKNOWN_MEMBER_ID",
            INVALID_SESSION_TIMEOUT => "INVALID_SESSION_TIMEOUT",
            REBALANCE_IN_PROGRESS => "REBALANCE_IN_PROGRESS",
            OUT_OF_ORDER_SEQUENCE_NUMBER => "OUT_OF_ORDER_SEQUENCE_NUMBER",
            INVALID_PRODUCER_EPOCH => "INVALID_PRODUCER_EPOCH",
            UNKNOWN_PRODUCER_ID => "UNKNOWN_PRODUCER_ID",
            NON_EMPTY_GROUP => "NON_EMPTY_GROUP",
            GROUP_ID_NOT_FOUND => "GROUP_ID_NOT_FOUND",
            MEMBER_ID_REQUIRED => "MEMBER_ID_REQUIRED",
            FENCED_INSTANCE_ID => "FENCED_INSTANCE_ID",
            COORDINATOR_LOAD_IN_PROGRESS => "COORDINATOR_LOAD_IN_PROGRESS",
            INVALID_TXN_STATE => "INVALID_TXN_STATE",
            UNSUPPORTED_COMPRESSION_TYPE => "UNSUPPORTED_COMPRESSION_TYPE",
            _ => "an error code Sluice does not name",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::error_code;

    #[test]
    fn error_codes_have_their_kafka_names() {
        assert_eq!(error_code::name(10), "MESSAGE_TOO_LARGE");
        assert_eq!(error_code::name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(error_code::name(9999), "an error code Sluice does not name");
    }
}

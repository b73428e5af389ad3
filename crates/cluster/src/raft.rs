//! The Raft types of the metadata log: what openraft replicates (a
//! [`Command`]) and what applying one answers.

use crate::metadata::Command;
use serde::{Deserialize, Serialize};
use std::io::Cursor;

/// The outcome of applying one command: `None` if it changed the metadata,
/// else why it did not (the same on every node).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    pub error: Option<String>,
    /// The log index the command was applied at (readers wait for it).
    pub index: u64,
}

openraft::declare_raft_types!(
    /// The metadata log's types for openraft.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type RaftNodeId = u64;
pub type LogId = openraft::LogId<RaftNodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<RaftNodeId>;

//! The cluster layer of Sluice (issue: clusters).
//!
//! Cluster metadata is a log of [`Command`]s that the controller (the Raft
//! leader among the controller voters) appends and every node applies, in
//! log order, to its [`ClusterMetadata`]. Applying is deterministic and pure:
//! the same commands give the same metadata on every node, which is what a
//! replicated log needs of its state machine. Commands are checked when they
//! are applied, so a command that was valid when the controller proposed it
//! but no longer is (a topic deleted meanwhile) changes nothing on any node.
//!
//! What is here: the commands, the state machine, and placement (which nodes
//! hold a new partition). The Raft log that orders the commands (openraft),
//! node registration over the internal listener and routing in the shards
//! come next; today's single-node broker does not use this crate yet.

pub mod controller;
pub mod handle;
pub mod metadata;
pub mod network;
pub mod placement;
pub mod raft;
pub mod store;

pub use handle::ControllerHandle;
pub use metadata::{ClusterMetadata, Command, NodeInfo, PartitionState, TopicState};
pub use placement::place;
pub use raft::CommandResult;

/// A node of the cluster (Kafka's broker id / node id).
pub type NodeId = i32;

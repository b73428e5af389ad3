//! Consumer groups (classic protocol): the state machine, the core-local
//! offset store, and the coordinator that awaits between state-machine steps.
//! A group lives on exactly one shard: the one its id hashes to.

pub mod coordinator;
pub mod offsets;
pub mod state;

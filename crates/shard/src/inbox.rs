//! A shard's inbox: what other shards ask of it (`ShardMsg`), each message
//! handled in its own task, in arrival order. Above the handlers: a
//! forwarded group request runs the handlers here; the shard itself never
//! calls into them.

use crate::mesh::ShardMsg;
use crate::shard::Shard;
use sluice_protocol::api::error_code;
use std::rc::Rc;

/// Handles one message from another shard (spawned as its own task).
pub async fn handle(shard: Rc<Shard>, message: ShardMsg) {
    match message {
        ShardMsg::Partition {
            topic,
            partition,
            op,
            reply,
        } => {
            let answer = shard.execute(&topic, partition, op).await;
            let _ = reply.send_async(answer).await;
        }
        ShardMsg::WaitForData {
            parts,
            deadline,
            reply,
        } => {
            shard.wait_local(&parts, deadline).await;
            let _ = reply.send_async(()).await;
        }
        ShardMsg::Admin { op, reply } => {
            let answer = shard.execute_admin(op).await;
            let _ = reply.send_async(answer).await;
        }
        ShardMsg::OpenTopic { topic, reply } => {
            if let Err(e) = shard.open_topic(&topic).await {
                tracing::error!(shard = shard.id, "{e}");
            }
            let _ = reply.send_async(()).await;
        }
        ShardMsg::ReplicaStates { topic, reply } => {
            shard.apply_replica_states(&topic).await;
            let _ = reply.send_async(()).await;
        }
        ShardMsg::TopicConfigChanged { topic, reply } => {
            shard.apply_topic_config(&topic);
            let _ = reply.send_async(()).await;
        }
        ShardMsg::DropTopic { topic, reply } => {
            shard.drop_topic(&topic).await;
            let _ = reply.send_async(()).await;
        }
        ShardMsg::Forward { frame, reply } => {
            // Group requests only (never a fetch): no connection memory of their own here.
            let connection = Rc::new(crate::memory::ConnectionMemory::default());
            let answer = crate::handlers::handle_here(&shard, &connection, frame).await;
            let _ = reply.send_async(answer).await;
        }
        ShardMsg::CommittedOffsets { group, reply } => {
            let answer = shard.coordinator().map(|c| c.committed(&group));
            let _ = reply.send_async(answer).await;
        }
        ShardMsg::ListGroups { reply } => {
            let _ = reply.send_async(shard.local_groups()).await;
        }
        ShardMsg::DescribeGroup { group, reply } => {
            let _ = reply.send_async(shard.local_describe(&group)).await;
        }
        ShardMsg::DeleteGroup { group, reply } => {
            let answer = match shard.coordinator() {
                Ok(c) => c.delete(&group).await,
                Err(_) => error_code::UNKNOWN_SERVER_ERROR,
            };
            let _ = reply.send_async(answer).await;
        }
        ShardMsg::AllocateProducerId { reply } => {
            let answer = shard.allocate_producer_id().await;
            let _ = reply.send_async(answer).await;
        }
        ShardMsg::Metrics { reply } => {
            let _ = reply.send_async(shard.metrics_snapshot()).await;
        }
        ShardMsg::Shutdown => shard.stopping.set(true),
    }
}

//! A controller voter: one Raft node of the metadata log. Every voter starts
//! with the same list of voters and initializes the cluster with it (safe with
//! the same membership everywhere: openraft's voting settles it); the leader
//! appends commands, every voter applies the committed log to its
//! [`ClusterMetadata`], which readers see without locks.
//!
//! A command proposed on a voter that is not the leader is forwarded to the
//! leader over the internal listener; with no leader yet (an election under
//! way) it is retried until a deadline.

use crate::metadata::{ClusterMetadata, Command};
use crate::network::{call_within, serve, Network, Request, Response, RPC_TIMEOUT};
use crate::raft::{CommandResult, RaftNodeId, TypeConfig};
use crate::store::{LogStore, StateMachine};
use arc_swap::ArcSwap;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft, SnapshotPolicy};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// When each node (Kafka node id) was last heard from, as this voter saw it.
pub type Heartbeats = Arc<std::sync::Mutex<std::collections::HashMap<i32, Instant>>>;

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub node_id: RaftNodeId,
    /// Every controller voter: id → internal listener address (`host:port`).
    pub voters: BTreeMap<RaftNodeId, String>,
    /// This node's internal listener: its voter address, or, for a node that
    /// is not a voter (a learner of the log), its own.
    pub listen: String,
    /// Where the metadata log, vote and snapshots live.
    pub dir: PathBuf,
    /// How often the leader tells followers it is alive.
    pub heartbeat_ms: u64,
    /// A follower that hears nothing for a random time in this range starts an election.
    pub election_timeout_ms: (u64, u64),
    /// A snapshot is taken after this many applied entries (and the log behind it purged).
    pub snapshot_every_entries: u64,
    /// How often each node tells the controller leader it is alive.
    pub heartbeat_interval_ms: u64,
    /// A node not heard from this long is fenced (Kafka's broker.session.timeout.ms).
    pub session_timeout_ms: u64,
}

impl ControllerConfig {
    pub fn new(node_id: RaftNodeId, voters: BTreeMap<RaftNodeId, String>, dir: PathBuf) -> Self {
        ControllerConfig {
            node_id,
            listen: voters.get(&node_id).cloned().unwrap_or_default(),
            voters,
            dir,
            heartbeat_ms: 100,
            election_timeout_ms: (500, 1000),
            snapshot_every_entries: 1000,
            heartbeat_interval_ms: 1000,
            session_timeout_ms: 9000,
        }
    }
}

pub struct Controller {
    pub node_id: RaftNodeId,
    raft: Raft<TypeConfig>,
    voters: BTreeMap<RaftNodeId, String>,
    metadata: Arc<ArcSwap<ClusterMetadata>>,
    applied: Arc<tokio::sync::watch::Sender<u64>>,
    server: tokio::task::JoinHandle<()>,
    heartbeats: Heartbeats,
    session_timeout: Duration,
    heartbeat_interval: Duration,
}

/// Appends `command` if this node leads; else says who does.
async fn write_here(
    raft: &Raft<TypeConfig>,
    command: Command,
) -> Result<CommandResult, Option<RaftNodeId>> {
    match raft.client_write(command).await {
        Ok(response) => Ok(response.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
            Err(forward.leader_id)
        }
        Err(e) => {
            tracing::warn!(error = %e, "metadata command not appended");
            Err(None)
        }
    }
}

impl Controller {
    /// Opens the metadata log in `config.dir`, listens on this voter's
    /// internal address, and joins (or forms) the voters' cluster. Call
    /// inside a tokio runtime.
    pub async fn start(config: ControllerConfig) -> Result<Controller, String> {
        let addr = config.listen.clone();
        let voter = config.voters.contains_key(&config.node_id);
        let log =
            LogStore::open(&config.dir.join("log")).map_err(|e| format!("metadata log: {e}"))?;
        let state = StateMachine::open(&config.dir.join("state"))
            .map_err(|e| format!("metadata state: {e}"))?;
        let metadata = state.metadata();
        let applied = state.applied();
        let raft_config = openraft::Config {
            cluster_name: "sluice".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_ms.0,
            election_timeout_max: config.election_timeout_ms.1,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every_entries),
            max_in_snapshot_log_to_keep: 100,
            ..Default::default()
        }
        .validate()
        .map_err(|e| format!("raft settings: {e}"))?;
        let raft = Raft::new(config.node_id, Arc::new(raft_config), Network, log, state)
            .await
            .map_err(|e| format!("starting the metadata log: {e}"))?;
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|e| format!("internal listener {addr}: {e}"))?;
        let server_raft = raft.clone();
        let proposals = raft.clone();
        let heartbeats: Heartbeats = Default::default();
        let server = tokio::spawn(serve(
            listener,
            server_raft,
            move |command| {
                let raft = proposals.clone();
                async move {
                    write_here(&raft, command)
                        .await
                        .map_err(|leader| format!("not the controller leader (leader: {leader:?})"))
                }
            },
            heartbeats.clone(),
        ));
        let members: BTreeMap<RaftNodeId, BasicNode> = config
            .voters
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect();
        if voter {
            if let Err(e) = raft.initialize(members).await {
                // Already initialized (a restart): the log says who the voters are.
                tracing::debug!(node = config.node_id, error = %e, "metadata log already initialized");
            }
        } else {
            // Not a voter: ask the leader (whichever voter it is) to replicate
            // the log here, until one does.
            let voters = config.voters.clone();
            let (id, own) = (config.node_id, addr.clone());
            tokio::spawn(async move {
                loop {
                    for voter_addr in voters.values() {
                        let mut connection = None;
                        let request = Request::AddLearner {
                            id,
                            addr: own.clone(),
                        };
                        if let Ok(Response::AddLearner(Ok(()))) =
                            call_within(&mut connection, voter_addr, &request, RPC_TIMEOUT).await
                        {
                            tracing::info!(node = id, "following the metadata log as a learner");
                            return;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        }
        Ok(Controller {
            node_id: config.node_id,
            raft,
            voters: config.voters,
            metadata,
            applied,
            server,
            heartbeats,
            session_timeout: Duration::from_millis(config.session_timeout_ms),
            heartbeat_interval: Duration::from_millis(config.heartbeat_interval_ms),
        })
    }

    /// The metadata as of the last committed command this voter applied.
    pub fn metadata(&self) -> Arc<ClusterMetadata> {
        self.metadata.load_full()
    }

    /// The shared handle readers keep.
    pub fn metadata_handle(&self) -> Arc<ArcSwap<ClusterMetadata>> {
        self.metadata.clone()
    }

    /// Wakes on every applied entry (its index); the metadata is published first.
    pub fn watch_applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Raft metrics (the current leader, among others).
    pub fn metrics(
        &self,
    ) -> tokio::sync::watch::Receiver<openraft::RaftMetrics<RaftNodeId, BasicNode>> {
        self.raft.metrics()
    }

    /// The current leader, as this voter knows it.
    pub async fn leader(&self) -> Option<RaftNodeId> {
        self.raft.current_leader().await
    }

    /// Appends `command` through the leader (here or forwarded) and returns
    /// how it applied; retries while there is no leader, until `timeout`.
    pub async fn propose(
        &self,
        command: Command,
        timeout: Duration,
    ) -> Result<CommandResult, String> {
        let deadline = Instant::now() + timeout;
        let mut connection = None;
        let mut connected_to = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // A leader cut off from the others cannot commit: bounded.
            let leader =
                match tokio::time::timeout(left, write_here(&self.raft, command.clone())).await {
                    Ok(Ok(result)) => return Ok(result),
                    Ok(Err(leader)) => leader,
                    Err(_) => None,
                };
            if let Some(leader) = leader.filter(|l| *l != self.node_id) {
                if let Some(addr) = self.voters.get(&leader) {
                    if connected_to != Some(leader) {
                        connection = None;
                        connected_to = Some(leader);
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if let Ok(Response::Propose(Ok(result))) = call_within(
                        &mut connection,
                        addr,
                        &Request::Propose(command.clone()),
                        left.min(RPC_TIMEOUT),
                    )
                    .await
                    {
                        return Ok(result);
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no controller leader accepted the command within {timeout:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Tells the leader, every heartbeat interval, that node `kafka_id` is alive.
    /// A call that hangs (the leader's packets dropped) gives up after twice
    /// the interval and reconnects, to whichever node leads by then.
    pub async fn send_heartbeats(&self, kafka_id: i32) {
        let mut connection = None;
        let mut connected_to = None;
        loop {
            match self.leader().await {
                Some(leader) if leader == self.node_id => {
                    self.heartbeats
                        .lock()
                        .unwrap()
                        .insert(kafka_id, Instant::now());
                }
                Some(leader) => {
                    if connected_to != Some(leader) {
                        connection = None;
                        connected_to = Some(leader);
                    }
                    if let Some(addr) = self.voters.get(&leader) {
                        // Bounded: a leader cut off mid-call must not hold
                        // back the heartbeats to the next one.
                        let limit = (self.heartbeat_interval * 2).max(Duration::from_millis(200));
                        let request = Request::Heartbeat(kafka_id);
                        let _ = call_within(&mut connection, addr, &request, limit).await;
                    }
                }
                None => {}
            }
            tokio::time::sleep(self.heartbeat_interval).await;
        }
    }

    /// On the leader: fences nodes not heard from within the session timeout
    /// (their partitions lose their leader) and brings back fenced nodes that
    /// heartbeat again. A new leader waits one session timeout first: it has
    /// heard nobody yet.
    pub async fn watch_sessions(&self) {
        let mut leading_since: Option<Instant> = None;
        loop {
            tokio::time::sleep(self.heartbeat_interval.min(Duration::from_millis(500))).await;
            if self.leader().await != Some(self.node_id) {
                leading_since = None;
                continue;
            }
            let since = *leading_since.get_or_insert_with(Instant::now);
            if since.elapsed() < self.session_timeout {
                continue;
            }
            let metadata = self.metadata();
            let seen = self.heartbeats.lock().unwrap().clone();
            for node in metadata.nodes.values() {
                let alive = seen
                    .get(&node.info.id)
                    .is_some_and(|at| at.elapsed() < self.session_timeout);
                let command = match (node.fenced, alive) {
                    (false, false) => Command::FenceNode { id: node.info.id },
                    (true, true) => Command::RegisterNode(node.info.clone()),
                    _ => continue,
                };
                tracing::warn!(node = node.info.id, fenced = !alive, "node session changed");
                let _ = write_here(&self.raft, command).await;
            }
        }
    }

    /// Stops this voter (its log stays on disk).
    pub async fn shutdown(self) {
        self.stop().await;
    }

    /// Stops this voter where it is shared (its log stays on disk).
    pub async fn stop(&self) {
        self.server.abort();
        let _ = self.raft.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::NodeInfo;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn register(id: i32) -> Command {
        Command::RegisterNode(NodeInfo {
            id,
            kafka_host: "127.0.0.1".into(),
            kafka_port: 9000 + id,
            internal_addr: String::new(),
            cores: 1,
        })
    }

    async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Three voters form a cluster; commands proposed on any of them apply
    /// on all; the leader stops and another is elected within a few
    /// election timeouts; commands go on; the old leader restarts from its
    /// disk and catches up.
    #[test]
    fn three_voters_agree_survive_the_leader_and_catch_up_after_a_restart() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let voters: BTreeMap<u64, String> = (1..=3)
                .map(|id| (id, format!("127.0.0.1:{}", free_port())))
                .collect();
            let config = |id: u64| {
                ControllerConfig::new(id, voters.clone(), dir.path().join(format!("node-{id}")))
            };
            let mut nodes: BTreeMap<u64, Controller> = BTreeMap::new();
            for id in 1..=3 {
                nodes.insert(id, Controller::start(config(id)).await.unwrap());
            }
            // Proposed on every voter, applied on every voter.
            for id in 1..=3u64 {
                let result = nodes[&id]
                    .propose(register(id as i32), Duration::from_secs(10))
                    .await
                    .unwrap();
                assert_eq!(result.error, None);
            }
            for node in nodes.values() {
                wait_for("all registrations everywhere", || {
                    node.metadata().nodes.len() == 3
                })
                .await;
            }
            // A command that no longer fits is refused the same way everywhere.
            let again = nodes[&1]
                .propose(
                    Command::AllocateProducerIds { from: -1, to: 0 },
                    Duration::from_secs(5),
                )
                .await
                .unwrap();
            assert!(again.error.is_some());

            // The leader stops: another is elected, and commands go on.
            let leader = nodes[&1].leader().await.expect("a leader");
            let stopped_at = Instant::now();
            nodes.remove(&leader).unwrap().shutdown().await;
            let survivor = *nodes.keys().next().unwrap();
            let result = nodes[&survivor]
                .propose(
                    Command::AllocateProducerIds { from: 0, to: 1000 },
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
            assert_eq!(result.error, None);
            let failover = stopped_at.elapsed();
            assert!(
                failover < Duration::from_secs(5),
                "failover took {failover:?}"
            );
            let new_leader = nodes[&survivor].leader().await.unwrap();
            assert_ne!(new_leader, leader);

            // The old leader restarts from its files and catches up.
            let restarted = Controller::start(config(leader)).await.unwrap();
            wait_for("the restarted voter to catch up", || {
                restarted.metadata().next_producer_id == 1000
            })
            .await;
            assert_eq!(restarted.metadata().nodes.len(), 3);
            restarted.shutdown().await;
            for (_, node) in nodes {
                node.shutdown().await;
            }
        });
    }
}

//! The controller voter on its own thread (a tokio runtime, apart from the
//! shards' glommio executors), and the handle the rest of the broker uses:
//! propose a command from any thread and await the answer from any
//! executor, read the metadata without locks, and wait for an applied index.

use crate::controller::{Controller, ControllerConfig};
use crate::metadata::{ClusterMetadata, Command};
use crate::raft::CommandResult;
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

type Proposal = (Command, oneshot::Sender<Result<CommandResult, String>>);

/// Cheap to clone; `Send`.
#[derive(Clone)]
pub struct ControllerHandle {
    proposals: mpsc::UnboundedSender<Proposal>,
    metadata: Arc<ArcSwap<ClusterMetadata>>,
    applied: watch::Receiver<u64>,
    runtime: tokio::runtime::Handle,
    stop: mpsc::UnboundedSender<()>,
    /// The metadata log's leader (a Kafka node id; -1 while unknown).
    leader: Arc<std::sync::atomic::AtomicI64>,
}

/// How long a proposal may wait for a leader.
pub const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(15);

impl ControllerHandle {
    /// Starts the voter on a thread named `controller` and returns once its
    /// metadata log is open and it listens.
    /// `kafka_id`: this node's Kafka id, for its heartbeats.
    pub fn start(config: ControllerConfig, kafka_id: i32) -> Result<ControllerHandle, String> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("controller".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("controller runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let controller = match Controller::start(config).await {
                        Ok(controller) => Arc::new(controller),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let (proposals, mut incoming) = mpsc::unbounded_channel::<Proposal>();
                    let (stop, mut stopped) = mpsc::unbounded_channel::<()>();
                    // Each node logs who leads the metadata log, when it changes.
                    let mut metrics = controller.metrics();
                    let leader_now = Arc::new(std::sync::atomic::AtomicI64::new(-1));
                    let leader_seen = leader_now.clone();
                    tokio::spawn(async move {
                        let mut known = None;
                        loop {
                            let current = metrics.borrow_and_update().current_leader;
                            if current != known {
                                known = current;
                                // Raft ids are Kafka node ids + 1.
                                let leader = current.map_or(-1, |l| l as i64 - 1);
                                leader_seen.store(leader, std::sync::atomic::Ordering::Relaxed);
                                if current.is_some() {
                                    tracing::info!(leader, "controller leader");
                                }
                            }
                            if metrics.changed().await.is_err() {
                                return;
                            }
                        }
                    });
                    let beating = controller.clone();
                    tokio::spawn(async move { beating.send_heartbeats(kafka_id).await });
                    let watching = controller.clone();
                    tokio::spawn(async move { watching.watch_sessions().await });
                    let handle = ControllerHandle {
                        proposals,
                        metadata: controller.metadata_handle(),
                        applied: controller.watch_applied(),
                        runtime: tokio::runtime::Handle::current(),
                        stop,
                        leader: leader_now,
                    };
                    let _ = ready_tx.send(Ok(handle));
                    loop {
                        tokio::select! {
                            proposal = incoming.recv() => {
                                let Some((command, reply)) = proposal else { break };
                                let controller = controller.clone();
                                tokio::spawn(async move {
                                    let _ = reply.send(controller.propose(command, PROPOSAL_TIMEOUT).await);
                                });
                            }
                            _ = stopped.recv() => break,
                        }
                    }
                    controller.stop().await;
                });
            })
            .map_err(|e| format!("starting the controller thread: {e}"))?;
        ready_rx
            .recv()
            .map_err(|_| "the controller thread died while starting".to_string())?
    }

    /// Appends `command` to the metadata log (through the leader) and answers
    /// how it applied. Await it from any executor.
    pub async fn propose(&self, command: Command) -> Result<CommandResult, String> {
        let (reply, answer) = oneshot::channel();
        self.proposals
            .send((command, reply))
            .map_err(|_| "the controller has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the controller dropped the command".to_string())?
    }

    /// The node leading the metadata log, if known (for metrics).
    pub fn leader(&self) -> Option<i32> {
        match self.leader.load(std::sync::atomic::Ordering::Relaxed) {
            -1 => None,
            leader => Some(leader as i32),
        }
    }

    /// The metadata as of the last applied command.
    pub fn metadata(&self) -> Arc<ClusterMetadata> {
        self.metadata.load_full()
    }

    /// Wakes on every applied entry.
    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// The controller thread's runtime, for tasks that follow the metadata.
    pub fn runtime(&self) -> tokio::runtime::Handle {
        self.runtime.clone()
    }

    /// Stops the voter (its log stays on disk).
    pub fn stop(&self) {
        let _ = self.stop.send(());
    }
}

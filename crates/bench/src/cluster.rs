//! A client's changing view of the cluster, as a Kafka client keeps it: each
//! partition's leader (first from the run's topology), one connection per
//! broker, and a metadata refresh after an error that says the view is stale
//! (NOT_LEADER_OR_FOLLOWER, a lost connection, ...), at most once per backoff.

use crate::client::Conn;
use crate::retry;
use crate::topology;
use crate::worker::Worker;
use glommio::sync::Semaphore;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How often an unfinished refresh is looked at.
const REFRESH_POLL: Duration = Duration::from_millis(1);

/// A partition whose leader is not known.
pub const NO_LEADER: i32 = -1;

type Answer = Result<topology::Snapshot, String>;

/// A connection and the cap on its requests in flight.
pub struct Link {
    pub conn: Rc<Conn>,
    pub in_flight: Rc<Semaphore>,
}

pub struct Cluster {
    topics: Vec<String>,
    /// (topic index, partition) of each partition of the topology.
    partitions: Vec<(usize, i32)>,
    /// Per partition of the topology: its leader, or [`NO_LEADER`].
    pub leaders: Vec<i32>,
    brokers: BTreeMap<i32, String>,
    bootstrap: String,
    links: HashMap<i32, Link>,
    /// Nodes whose last connect failed: (failures in a row, next try).
    unreachable: HashMap<i32, (u32, Instant)>,
    in_flight_max: u64,
    stale: bool,
    /// Refreshes in a row that left the view stale (for the backoff).
    refreshes: u32,
    next_refresh: Instant,
    request_timeout: Duration,
    /// The Metadata request under way: its answer once it has come.
    refreshing: Option<Rc<RefCell<Option<Answer>>>>,
}

impl Cluster {
    pub fn new(worker: &Worker, bootstrap: &str, in_flight_max: u32) -> Cluster {
        let topology = &worker.topology;
        Cluster {
            topics: topology.topics.clone(),
            partitions: topology
                .partitions
                .iter()
                .map(|p| (p.topic, p.partition))
                .collect(),
            leaders: topology.partitions.iter().map(|p| p.leader).collect(),
            brokers: topology.brokers.clone(),
            bootstrap: bootstrap.to_string(),
            links: HashMap::new(),
            unreachable: HashMap::new(),
            in_flight_max: in_flight_max.max(1) as u64,
            stale: false,
            refreshes: 0,
            next_refresh: Instant::now(),
            refreshing: None,
            request_timeout: worker.workload.request_timeout(),
        }
    }

    /// The view is out of date: refresh it when the backoff allows.
    pub fn mark_stale(&mut self) {
        self.stale = true;
    }

    /// When to look at the refresh next: when its backoff ends, or soon if
    /// one is under way; `None` if none is needed.
    pub fn refresh_at(&self) -> Option<Instant> {
        if self.refreshing.is_some() {
            return Some(Instant::now() + REFRESH_POLL);
        }
        self.stale.then_some(self.next_refresh)
    }

    /// When `node` may be connected to again, if a failed connect has put
    /// it in a backoff (Kafka clients' `reconnect.backoff.ms`) that has not
    /// passed.
    pub fn next_try(&self, node: i32) -> Option<Instant> {
        let live = self.links.get(&node).is_some_and(|l| !l.conn.is_closed());
        let (_, at) = self.unreachable.get(&node)?;
        (!live && Instant::now() < *at).then_some(*at)
    }

    /// The connection to `node`, opened (again) if it is missing or broken;
    /// a failed connect puts the node in a backoff (see [`Cluster::next_try`]).
    pub async fn link(&mut self, node: i32) -> Result<&Link, String> {
        let live = self.links.get(&node).is_some_and(|l| !l.conn.is_closed());
        if !live {
            if let Some((failures, _)) = self.unreachable.get(&node) {
                if self.next_try(node).is_some() {
                    return Err(format!(
                        "node {node}: {failures} failed connect(s), waiting to try again"
                    ));
                }
            }
            let connected = match self.brokers.get(&node) {
                Some(addr) => Conn::connect(addr, self.request_timeout).await,
                None => Err(format!(
                    "metadata names leader {node}, which is not among the brokers"
                )),
            };
            let conn = match connected {
                Ok(conn) => conn,
                Err(e) => {
                    let failures = self.unreachable.get(&node).map_or(1, |f| f.0 + 1);
                    let next_try = Instant::now() + retry::backoff(failures);
                    self.unreachable.insert(node, (failures, next_try));
                    return Err(e);
                }
            };
            self.unreachable.remove(&node);
            self.links.insert(
                node,
                Link {
                    conn,
                    in_flight: Rc::new(Semaphore::new(self.in_flight_max)),
                },
            );
        }
        Ok(&self.links[&node])
    }

    /// Drives the refresh: starts one (in the background, from any broker:
    /// a connected one first, else the bootstrap address) if the view is
    /// stale and the backoff has passed, and applies its answer once it has
    /// come. Refreshes are at least [`retry::BACKOFF_MIN`] apart, further
    /// while they leave the view stale (a partition without a leader, or a
    /// failed refresh). Returns whether the leaders were just refreshed.
    pub fn poll_refresh(&mut self, now: Instant) -> bool {
        if let Some(slot) = &self.refreshing {
            let Some(answer) = slot.borrow_mut().take() else {
                return false;
            };
            self.refreshing = None;
            self.apply(answer);
            return true;
        }
        if self.stale && now >= self.next_refresh {
            let live = self
                .links
                .values()
                .find(|l| !l.conn.is_closed())
                .map(|l| l.conn.clone());
            let bootstrap = self.bootstrap.clone();
            let topics = self.topics.clone();
            let timeout = self.request_timeout;
            let slot = Rc::new(RefCell::new(None));
            self.refreshing = Some(slot.clone());
            glommio::spawn_local(async move {
                let answer = match live {
                    Some(conn) => Ok(conn),
                    None => Conn::connect(&bootstrap, timeout).await,
                };
                let answer = match answer {
                    Ok(conn) => topology::metadata(&conn, &topics).await,
                    Err(e) => Err(e),
                };
                *slot.borrow_mut() = Some(answer);
            })
            .detach();
        }
        false
    }

    /// One refresh if the view is stale: waits for its backoff and its answer.
    pub async fn refresh(&mut self) {
        if !self.stale && self.refreshing.is_none() {
            return;
        }
        loop {
            if self.poll_refresh(Instant::now()) {
                return;
            }
            let wait = self.refresh_at().map_or(REFRESH_POLL, |at| {
                at.saturating_duration_since(Instant::now())
            });
            glommio::timer::sleep(wait.max(REFRESH_POLL)).await;
        }
    }

    fn apply(&mut self, answer: Answer) {
        let refreshed = match answer {
            Ok(snapshot) => {
                self.leaders = self
                    .partitions
                    .iter()
                    .map(|&(topic, partition)| snapshot.leader(topic, partition))
                    .collect();
                if !snapshot.brokers.is_empty() {
                    self.brokers = snapshot.brokers;
                }
                true
            }
            Err(e) => {
                tracing::debug!("metadata refresh failed: {e}");
                false
            }
        };
        self.stale = !refreshed || self.leaders.contains(&NO_LEADER);
        if self.stale {
            self.refreshes += 1;
            self.next_refresh = Instant::now() + retry::backoff(self.refreshes);
        } else {
            self.refreshes = 0;
            self.next_refresh = Instant::now() + retry::BACKOFF_MIN;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stats;
    use crate::topology::{PartitionRef, Topology};
    use crate::worker::Control;
    use crate::workload::Workload;
    use std::sync::Arc;

    #[test]
    fn a_failed_connect_is_tried_again_only_after_a_backoff() {
        glommio::LocalExecutorBuilder::default()
            .io_memory(256 << 10)
            .spawn(|| async {
                let worker = Worker {
                    id: 0,
                    workload: Workload::default(),
                    topology: Topology {
                        topics: vec!["t".into()],
                        partitions: vec![PartitionRef {
                            topic: 0,
                            partition: 0,
                            leader: 1,
                        }],
                        // Nothing listens on port 1.
                        brokers: [(1, "127.0.0.1:1".to_string())].into(),
                    },
                    control: Arc::new(Control::new(0, 1)),
                    stats: std::cell::RefCell::new(Stats::default()),
                };
                let mut cluster = Cluster::new(&worker, "127.0.0.1:1", 1);
                let first = cluster.link(1).await.err().unwrap();
                assert!(first.contains("cannot connect to 127.0.0.1:1"), "{first}");
                let second = cluster.link(1).await.err().unwrap();
                assert_eq!(second, "node 1: 1 failed connect(s), waiting to try again");
                glommio::timer::sleep(retry::backoff_with(1, 1.2)).await;
                let third = cluster.link(1).await.err().unwrap();
                assert!(third.contains("cannot connect"), "{third}");
                assert_eq!(cluster.unreachable[&1].0, 2);
                assert!(cluster
                    .link(7)
                    .await
                    .err()
                    .unwrap()
                    .contains("not among the brokers"));
            })
            .unwrap()
            .join()
            .unwrap();
    }
}

//! The shard's side of replication: acting on each replica's role as the
//! metadata log changes it (followers fetch from their leader, see
//! `fetcher.rs`), proposing ISR changes for the partitions it leads, and
//! checkpointing high watermarks.

use crate::fetcher::Fetcher;
use crate::replication::Transition;
use crate::shard::{PartitionEntry, PartitionKey, Shard};
use std::rc::Rc;

impl Shard {
    /// Gives the replica its state from the metadata (leader, epoch,
    /// replicas, ISR) and acts on its new role.
    pub(crate) fn apply_replica_state(
        &self,
        topic: &crate::metadata::TopicMeta,
        partition: i32,
        entry: &Rc<PartitionEntry>,
    ) {
        let p = partition as usize;
        let node = self.settings.node_id;
        let leader = topic.leaders.get(p).copied().unwrap_or(node);
        let epoch = topic.leader_epochs.get(p).copied().unwrap_or(0);
        let replicas = topic.replicas.get(p).cloned().unwrap_or_else(|| vec![node]);
        let isr = topic
            .isr
            .get(p)
            .cloned()
            .unwrap_or_else(|| replicas.clone());
        let partition_epoch = topic.partition_epochs.get(p).copied().unwrap_or(0);
        let transition = entry.apply_replica_state(leader, epoch, partition_epoch, &replicas, &isr);
        let key = (topic.name.clone(), partition);
        let name = entry.log.name();
        match transition {
            Transition::Unchanged => {}
            Transition::BecameLeader => {
                self.unfollow(&key);
                if replicas.len() > 1 {
                    tracing::info!(
                        partition = name,
                        epoch,
                        log_end_offset = entry.log.high_watermark(),
                        high_watermark = entry.high_watermark(),
                        "leading partition"
                    );
                }
            }
            Transition::Leaderless => {
                self.unfollow(&key);
                tracing::warn!(
                    partition = name,
                    epoch,
                    "partition has no live in-sync replica to lead it"
                );
            }
            Transition::BecameFollower { leader, epoch } => {
                self.unfollow(&key);
                tracing::info!(
                    partition = name,
                    leader,
                    epoch,
                    log_end_offset = entry.log.high_watermark(),
                    "following partition leader"
                );
                let fetcher = self
                    .fetchers
                    .borrow_mut()
                    .entry(leader)
                    .or_insert_with(|| Fetcher::start(node, leader, self.controller.clone()))
                    .clone();
                fetcher.add(key, entry.clone(), epoch);
            }
        }
        if topic.name == crate::groups::offsets::OFFSETS_TOPIC {
            self.coordinate_bucket(partition as u32, entry, transition);
        }
        // The high watermark may have moved (an ISR shrank): wake long polls.
        self.data_arrived.notify();
    }

    /// The metadata changed leaders, epochs or ISRs of `topic`.
    pub(crate) async fn apply_replica_states(&self, topic: &crate::metadata::TopicMeta) {
        for partition in 0..topic.partition_count() {
            if topic.shard_of(partition, self.shard_count) != Some(self.id) {
                continue;
            }
            let entry = self
                .partitions
                .borrow()
                .get(&(topic.name.clone(), partition))
                .cloned();
            match entry {
                Some(entry) => self.apply_replica_state(topic, partition, &entry),
                // Not open yet (opening applies the state itself).
                None => {
                    let _ = self.local_partition(&topic.name, partition).await;
                }
            }
        }
    }

    /// A bucket of `__consumer_offsets` led here loads its groups' offsets;
    /// one led elsewhere now forgets them (and its groups' members).
    fn coordinate_bucket(&self, bucket: u32, entry: &Rc<PartitionEntry>, transition: Transition) {
        let Some(coordinator) = self.coordinator.borrow().clone() else {
            return;
        };
        match transition {
            Transition::Unchanged => {}
            Transition::BecameLeader => {
                let entry = entry.clone();
                glommio::spawn_local(async move { coordinator.attach(bucket, entry).await })
                    .detach();
            }
            Transition::BecameFollower { .. } | Transition::Leaderless => {
                coordinator.detach(bucket)
            }
        }
    }

    pub(crate) fn unfollow(&self, key: &PartitionKey) {
        for fetcher in self.fetchers.borrow().values() {
            fetcher.remove(key);
        }
    }

    /// Proposes `isr` for a partition this shard leads, in the background.
    pub(crate) fn propose_isr(
        &self,
        topic: &str,
        partition: i32,
        entry: &Rc<PartitionEntry>,
        isr: Vec<i32>,
    ) {
        let command = sluice_cluster::Command::AlterIsr {
            topic: topic.to_string(),
            partition,
            leader: self.settings.node_id,
            leader_epoch: entry.replica.leader_epoch.get(),
            partition_epoch: entry.replica.partition_epoch.get(),
            isr: isr.clone(),
        };
        tracing::info!(partition = entry.log.name(), from = ?entry.replica.isr.borrow(), to = ?isr, "proposing an ISR change");
        let counter = if isr.len() < entry.replica.isr.borrow().len() {
            &self.counters.isr_shrinks
        } else {
            &self.counters.isr_expands
        };
        counter.set(counter.get() + 1);
        let controller = self.controller.clone();
        let entry = entry.clone();
        glommio::spawn_local(async move {
            match controller.propose(command).await {
                // Applied: the metadata follower brings it here.
                Ok(result) if result.error.is_none() => {}
                Ok(result) => {
                    let reason = result.error.unwrap_or_default();
                    tracing::info!(partition = entry.log.name(), %reason, "ISR change refused");
                    entry.isr_proposal_refused(&isr);
                }
                // Maybe applied, maybe not: it stays pending (its members
                // keep counting) and is sent again; the partition epoch it
                // names lets it apply at most once.
                Err(e) => {
                    tracing::warn!(partition = entry.log.name(), error = %e, "ISR change unanswered; sending it again");
                    entry.replica.resend_isr.set(true);
                }
            }
        })
        .detach();
    }

    /// Leaders drop followers that were not caught up for
    /// `replica_lag_time_max_ms`; high watermarks are checkpointed.
    pub async fn check_replicas(&self) {
        let lag_max = std::time::Duration::from_millis(self.settings.replica_lag_time_max_ms);
        let entries = self.open_partitions();
        let mut checkpoints = Vec::new();
        for ((topic, partition), entry) in &entries {
            if let Some(isr) = entry
                .isr_to_resend()
                .or_else(|| entry.isr_without_laggards(lag_max))
            {
                self.propose_isr(topic, *partition, entry, isr);
            }
            checkpoints.extend(entry.prepare_high_watermark_checkpoint());
        }
        if checkpoints.is_empty() {
            return;
        }
        let _permit = self.snapshot_lock.acquire_permit(1).await;
        glommio::executor()
            .spawn_blocking(move || {
                for (path, hw) in checkpoints {
                    if path.parent().is_some_and(|d| d.exists()) {
                        if let Err(e) = crate::storage_dir::write_durably(&path, hw.to_string().as_bytes()) {
                            tracing::warn!(path = %path.display(), error = %e, "high watermark checkpoint failed");
                        }
                    }
                }
            })
            .await;
    }

    /// Stops every replica fetcher (shutdown).
    pub(crate) fn stop_fetchers(&self) {
        for fetcher in self.fetchers.borrow_mut().drain().map(|(_, f)| f) {
            fetcher.stop();
        }
    }
}

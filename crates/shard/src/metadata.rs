//! Topic metadata as this node's shards see it: an immutable snapshot that
//! the cluster follower (`cluster_link::follow`) replaces atomically after
//! every change of the cluster's metadata log; every shard reads it without
//! locks. `<data_dir>/metadata.toml`, where topics lived before the metadata
//! log, is read once to import them (`MetadataStore::load_legacy`).

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopicMeta {
    pub name: String,
    /// Topic id (UUID v4), returned by Metadata v10+.
    pub id: String,
    /// The shard that owns each partition, by partition index. Stable across
    /// restarts; taken modulo the shard count if the broker runs on fewer cores.
    pub partition_shards: Vec<u32>,
    /// Topic config overrides (`retention.ms`, ...), as given at creation.
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
    /// Per partition: the node that leads it (-1: none), from the cluster
    /// metadata. Empty in a legacy `metadata.toml` (every partition local).
    #[serde(default)]
    pub leaders: Vec<i32>,
    /// Per partition: its leader epoch.
    #[serde(default)]
    pub leader_epochs: Vec<i32>,
    /// Per partition: the nodes holding it.
    #[serde(default)]
    pub replicas: Vec<Vec<i32>>,
    /// Per partition: its in-sync replicas.
    #[serde(default)]
    pub isr: Vec<Vec<i32>>,
    /// Per partition: its partition epoch (ISR changes are proposed against it).
    #[serde(default)]
    pub partition_epochs: Vec<i32>,
}

/// `partition_shards` value of a partition this node holds no replica of.
pub const NOT_LOCAL: u32 = u32::MAX;

impl TopicMeta {
    pub fn partition_count(&self) -> i32 {
        self.partition_shards.len() as i32
    }

    pub fn shard_of(&self, partition: i32, shard_count: usize) -> Option<usize> {
        let shard = *self
            .partition_shards
            .get(usize::try_from(partition).ok()?)?;
        (shard != NOT_LOCAL).then_some(shard as usize % shard_count)
    }

    /// The node leading `partition` (-1: none; `None`: no such partition).
    pub fn leader(&self, partition: i32, this_node: i32) -> Option<i32> {
        let p = usize::try_from(partition).ok()?;
        if p >= self.partition_shards.len() {
            return None;
        }
        Some(self.leaders.get(p).copied().unwrap_or(this_node))
    }

    pub fn uuid(&self) -> uuid::Uuid {
        uuid::Uuid::parse_str(&self.id).unwrap_or(uuid::Uuid::nil())
    }
}

/// What every shard reads.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub topics: BTreeMap<String, Arc<TopicMeta>>,
    /// Topic id → name (Fetch v13+ names topics by id); rebuilt by the store
    /// whenever it publishes a snapshot.
    pub names_by_id: std::collections::HashMap<uuid::Uuid, String>,
}

impl Snapshot {
    fn index_ids(mut self) -> Snapshot {
        self.names_by_id = self
            .topics
            .values()
            .map(|t| (t.uuid(), t.name.clone()))
            .collect();
        self
    }

    pub fn topic_by_id(&self, id: uuid::Uuid) -> Option<&Arc<TopicMeta>> {
        self.topics.get(self.names_by_id.get(&id)?)
    }
}

#[derive(Serialize, Deserialize, Default)]
struct MetadataFile {
    #[serde(default)]
    topic: Vec<TopicMeta>,
}

pub struct MetadataStore {
    path: PathBuf,
    current: ArcSwap<Snapshot>,
    /// The metadata log index this snapshot reflects, once the shards acted on it.
    applied: std::sync::atomic::AtomicU64,
}

impl MetadataStore {
    pub const FILE_NAME: &'static str = "metadata.toml";

    /// Loads `<data_dir>/metadata.toml` (an absent file is an empty cluster).
    pub fn load(data_dir: &Path) -> Result<MetadataStore, String> {
        let path = data_dir.join(Self::FILE_NAME);
        let snapshot = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let file: MetadataFile =
                    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                Snapshot {
                    topics: file
                        .topic
                        .into_iter()
                        .map(|t| (t.name.clone(), Arc::new(t)))
                        .collect(),
                    names_by_id: Default::default(),
                }
                .index_ids()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Snapshot::default(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(MetadataStore {
            path,
            current: ArcSwap::from_pointee(snapshot),
            applied: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Publishes what the cluster metadata says about topics.
    pub fn publish(&self, next: Snapshot) {
        self.current.store(Arc::new(next.index_ids()));
    }

    /// The metadata log index every shard has acted on.
    pub fn applied_index(&self) -> u64 {
        self.applied.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn set_applied_index(&self, index: u64) {
        self.applied
            .store(index, std::sync::atomic::Ordering::Release);
    }

    /// The legacy file's path (renamed once its topics are imported).
    pub fn legacy_path(&self) -> &Path {
        &self.path
    }

    /// Writes `next` in the legacy `metadata.toml` format, then publishes it
    /// (tests of the import of older data dirs).
    #[cfg(test)]
    pub fn replace(&self, next: Snapshot) -> std::io::Result<()> {
        use std::io::Write;
        let file = MetadataFile {
            topic: next.topics.values().map(|t| (**t).clone()).collect(),
        };
        let text = toml::to_string(&file).map_err(std::io::Error::other)?;
        let temp = self.path.with_extension("toml.tmp");
        {
            let mut out = std::fs::File::create(&temp)?;
            out.write_all(text.as_bytes())?;
            out.sync_all()?;
        }
        std::fs::rename(&temp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        self.current.store(Arc::new(next.index_ids()));
        Ok(())
    }
}

/// Kafka's rule: 1..=249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("topic name `{name}` is not allowed"));
    }
    if name.len() > 249 {
        return Err(format!(
            "topic name is {} characters long, at most 249 allowed",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name `{name}` has the illegal character `{c}`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_survives_reload() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetadataStore::load(dir.path()).unwrap();
        assert!(store.snapshot().topics.is_empty());
        let mut next = Snapshot::default();
        let topic = TopicMeta {
            name: "orders".into(),
            id: uuid::Uuid::new_v4().to_string(),
            partition_shards: vec![0, 1, 0],
            configs: [("retention.ms".to_string(), "1000".to_string())].into(),
            leaders: vec![],
            leader_epochs: vec![],
            replicas: vec![],
            isr: vec![],
            partition_epochs: vec![],
        };
        next.topics.insert("orders".into(), Arc::new(topic.clone()));
        store.replace(next).unwrap();
        let again = MetadataStore::load(dir.path()).unwrap();
        assert_eq!(*again.snapshot().topics["orders"], topic);
        assert_eq!(topic.shard_of(1, 2), Some(1));
        assert_eq!(topic.shard_of(1, 1), Some(0));
        assert_eq!(topic.shard_of(3, 2), None);
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("a.b_c-9").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("bad name").is_err());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
    }
}

//! `/metrics` (Prometheus text format) and `/health` on their own listener
//! (`metrics_listen`), served by a few plain threads: a scrape asks every shard
//! for its snapshot (a message, like any other; nothing shared is touched
//! on the hot path), merges them, and encodes them with prometheus-client.
//! `/health` is 200 while every shard is serving, 503 during start-up and
//! shutdown.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use sluice_protocol::api::api_name;
use sluice_shard::mesh::ShardMsg;
use sluice_shard::metrics::{Histogram, ShardSnapshot};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// What prometheus-client writes is OpenMetrics text (counter families are
/// named without `_total`, `# UNIT` and `# EOF` lines), and says so: read as
/// the older Prometheus text format, counters would lose their type.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a scrape waits for a shard's answer.
const SHARD_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// What the listener serves: set up before the shards start.
#[derive(Default)]
pub struct Exporter {
    /// The shards' inboxes, once they exist.
    pub shards: OnceLock<Vec<flume::Sender<ShardMsg>>>,
    /// Every shard serves (after start-up, before shutdown).
    pub serving: AtomicBool,
}

/// Requests served at once, each by a thread of its own (so a slow scrape,
/// a busy shard or a client that sends nothing, does not hold up a health
/// probe behind it); beyond them the accepting thread answers `/health`
/// itself and anything else 503 at once.
const CONCURRENT_REQUESTS_MAX: usize = 4;

/// Binds `listen`, accepts on a thread of its own and hands each connection
/// to an idle one of `CONCURRENT_REQUESTS_MAX` serving threads.
pub fn start(listen: &str, exporter: Arc<Exporter>) -> Result<(), String> {
    let listener =
        TcpListener::bind(listen).map_err(|e| format!("metrics_listen {listen}: {e}"))?;
    tracing::info!(listen, "serving /metrics and /health");
    // Zero capacity: a connection goes to a thread waiting for one, or nowhere.
    let (handoff, connections) = flume::bounded::<TcpStream>(0);
    for i in 0..CONCURRENT_REQUESTS_MAX {
        let (exporter, connections) = (exporter.clone(), connections.clone());
        std::thread::Builder::new()
            .name(format!("metrics-{i}"))
            .spawn(move || {
                for stream in connections.iter() {
                    // A panic (a bug) loses this request, not the thread.
                    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        serve(stream, &exporter)
                    }));
                    match served {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::debug!(error = %e, "metrics request failed"),
                        Err(_) => tracing::error!("a metrics request panicked"),
                    }
                }
            })
            .map_err(|e| format!("metrics thread: {e}"))?;
    }
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                match handoff.try_send(stream) {
                    Ok(()) => {}
                    Err(
                        flume::TrySendError::Full(stream)
                        | flume::TrySendError::Disconnected(stream),
                    ) => answer_when_busy(stream, &exporter),
                }
            }
        })
        .map_err(|e| format!("metrics thread: {e}"))?;
    Ok(())
}

/// The answer when `CONCURRENT_REQUESTS_MAX` requests are being served:
/// `/health` still (it only reads a flag), anything else 503 "busy". The
/// request is read first, briefly (this is the accepting thread): closing a
/// socket with unread bytes resets it, and the client could lose the answer.
fn answer_when_busy(mut stream: TcpStream, exporter: &Exporter) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let request = read_request(&mut stream, Duration::from_millis(50));
    let (status, content_type, body) = match path_of(&request).as_str() {
        "/health" => health(exporter),
        _ => ("503 Service Unavailable", "text/plain", "busy\n".into()),
    };
    let _ = answer(&mut stream, status, content_type, &body);
}

/// The path of a request's first line, without a query.
fn path_of(request: &[u8]) -> String {
    let end = request
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(request.len());
    let line = String::from_utf8_lossy(&request[..end]);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    path.split('?').next().unwrap_or("").to_string()
}

type Answer = (&'static str, &'static str, String);

fn health(exporter: &Exporter) -> Answer {
    if exporter.serving.load(Ordering::Acquire) {
        ("200 OK", "text/plain", "serving\n".into())
    } else {
        (
            "503 Service Unavailable",
            "text/plain",
            "starting or stopping\n".into(),
        )
    }
}

/// The request's head (up to 8 KiB), as much as arrives `within` this long
/// in all (a client trickling bytes gets no more time than a silent one).
fn read_request(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let deadline = std::time::Instant::now() + within;
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    request
}

/// Writes a whole response at once, and closes the sending side.
fn answer(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    stream.shutdown(std::net::Shutdown::Write)
}

fn serve(mut stream: TcpStream, exporter: &Exporter) -> std::io::Result<()> {
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let request = read_request(&mut stream, Duration::from_secs(2));
    let (status, content_type, body) = match path_of(&request).as_str() {
        "/metrics" => match scrape(exporter) {
            Some(text) => ("200 OK", OPENMETRICS_CONTENT_TYPE, text),
            None => (
                "503 Service Unavailable",
                "text/plain",
                "shards not serving\n".into(),
            ),
        },
        "/health" => health(exporter),
        _ => ("404 Not Found", "text/plain", "not found\n".into()),
    };
    answer(&mut stream, status, content_type, &body)
}

/// Every shard's snapshot, merged and encoded; `None` before the shards run.
fn scrape(exporter: &Exporter) -> Option<String> {
    let shards = exporter.shards.get()?;
    let mut snapshots = Vec::new();
    for shard in shards {
        let (reply, answer) = flume::bounded(1);
        if shard.send(ShardMsg::Metrics { reply }).is_err() {
            continue;
        }
        if let Ok(snapshot) = answer.recv_timeout(SHARD_ANSWER_TIMEOUT) {
            snapshots.push(snapshot);
        }
    }
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape { snapshots }));
    let mut text = String::new();
    prometheus_client::encoding::text::encode_registry(&mut text, &registry).ok()?;
    text.push_str("# EOF\n");
    Some(text)
}

/// The merged figures of one scrape.
#[derive(Debug)]
struct Scrape {
    snapshots: Vec<ShardSnapshot>,
}

type Labels = Vec<(&'static str, String)>;

/// One metric family of constant values.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut rows = rows.into_iter().peekable();
    let Some((_, first)) = rows.peek() else {
        return Ok(());
    };
    let metric_type = first.metric_type();
    let mut metric = encoder.encode_descriptor(name, help, unit, metric_type)?;
    for (labels, value) in rows {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One histogram sample set.
fn histogram(
    mut metric: prometheus_client::encoding::MetricEncoder,
    h: &Histogram,
) -> Result<(), std::fmt::Error> {
    metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        h.sum_s,
        h.count,
        &h.bounds(),
        None,
    )
}

fn shard_label(s: &ShardSnapshot) -> Labels {
    vec![("shard", s.shard.to_string())]
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        // Traffic by topic, over every shard.
        let mut topics: BTreeMap<String, sluice_shard::metrics::TopicTraffic> = BTreeMap::new();
        for s in &self.snapshots {
            for (topic, t) in &s.topics {
                let sum = topics.entry(topic.clone()).or_default();
                sum.bytes_in += t.bytes_in;
                sum.messages_in += t.messages_in;
                sum.bytes_out += t.bytes_out;
                sum.messages_out += t.messages_out;
                sum.bytes_replicated += t.bytes_replicated;
            }
        }
        let by_topic = |f: fn(&sluice_shard::metrics::TopicTraffic) -> u64| {
            topics
                .iter()
                .map(move |(t, v)| (vec![("topic", t.clone())], ConstCounter::new(f(v))))
                .collect::<Vec<_>>()
        };
        family(
            e,
            "sluice_produced",
            "Record batch bytes appended, by topic",
            Some(&Unit::Bytes),
            by_topic(|t| t.bytes_in),
        )?;
        family(
            e,
            "sluice_produced_messages",
            "Records appended, by topic",
            None,
            by_topic(|t| t.messages_in),
        )?;
        family(
            e,
            "sluice_fetched",
            "Record batch bytes sent to consumers, by topic",
            Some(&Unit::Bytes),
            by_topic(|t| t.bytes_out),
        )?;
        family(
            e,
            "sluice_fetched_messages",
            "Records sent to consumers, by topic",
            None,
            by_topic(|t| t.messages_out),
        )?;
        family(
            e,
            "sluice_replica_fetched",
            "Record batch bytes sent to follower replicas, by topic",
            Some(&Unit::Bytes),
            by_topic(|t| t.bytes_replicated),
        )?;

        // Requests: latency histograms by API and version; error answers by code.
        let mut requests: BTreeMap<(i16, i16), Histogram> = BTreeMap::new();
        let mut errors: BTreeMap<(i16, i16), u64> = BTreeMap::new();
        for s in &self.snapshots {
            for (key, h) in &s.requests {
                requests.entry(*key).or_default().merge(h);
            }
            for (key, n) in &s.errors {
                *errors.entry(*key).or_default() += n;
            }
        }
        if !requests.is_empty() {
            let mut metric = e.encode_descriptor(
                "sluice_request_duration",
                "Time from a request's arrival to its response, by API and version",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for ((key, version), h) in &requests {
                let labels: Labels =
                    vec![("api", api_name(*key)), ("version", version.to_string())];
                histogram(metric.encode_family(&labels)?, h)?;
            }
        }
        family(
            e,
            "sluice_error_answers",
            "Answers carrying a Kafka error code (for a partition, topic or group), by API and code",
            None,
            errors.iter().map(|((key, code), n)| {
                (
                    vec![
                        ("api", api_name(*key)),
                        ("code", sluice_protocol::api::error_code::name(*code)),
                    ],
                    ConstCounter::new(*n),
                )
            }),
        )?;

        // Per shard.
        let per_shard = |f: fn(&ShardSnapshot) -> u64| {
            self.snapshots
                .iter()
                .map(move |s| (shard_label(s), ConstGauge::new(f(s) as i64)))
                .collect::<Vec<_>>()
        };
        let per_shard_total = |f: fn(&ShardSnapshot) -> u64| {
            self.snapshots
                .iter()
                .map(move |s| (shard_label(s), ConstCounter::new(f(s))))
                .collect::<Vec<_>>()
        };
        family(
            e,
            "sluice_connections",
            "Client connections open",
            None,
            per_shard(|s| s.connections_open),
        )?;
        family(
            e,
            "sluice_connections_accepted",
            "Client connections accepted",
            None,
            per_shard_total(|s| s.connections_accepted),
        )?;
        family(
            e,
            "sluice_memory_held",
            "Request and response bytes held against the shard's budget",
            Some(&Unit::Bytes),
            per_shard(|s| s.memory_held_bytes),
        )?;
        family(
            e,
            "sluice_memory_budget",
            "The shard's budget for request and response bytes",
            Some(&Unit::Bytes),
            per_shard(|s| s.memory_budget_bytes),
        )?;
        family(
            e,
            "sluice_tail_cache_hits",
            "Reads answered from the tail cache",
            None,
            per_shard_total(|s| s.cache.hits),
        )?;
        family(
            e,
            "sluice_tail_cache_misses",
            "Reads that went to the disk",
            None,
            per_shard_total(|s| s.cache.misses),
        )?;
        family(
            e,
            "sluice_tail_cache_hit",
            "Bytes read from the tail cache",
            Some(&Unit::Bytes),
            per_shard_total(|s| s.cache.hit_bytes),
        )?;
        family(
            e,
            "sluice_tail_cache_miss",
            "Bytes read from the disk",
            Some(&Unit::Bytes),
            per_shard_total(|s| s.cache.miss_bytes),
        )?;
        family(
            e,
            "sluice_read_ahead",
            "Bytes of disk reads served from windows read ahead",
            Some(&Unit::Bytes),
            per_shard_total(|s| s.cache.read_ahead_bytes),
        )?;
        family(
            e,
            "sluice_tail_cache_used",
            "Bytes held by the tail cache",
            Some(&Unit::Bytes),
            per_shard(|s| s.cache.used_bytes),
        )?;
        family(
            e,
            "sluice_tail_cache_capacity",
            "The tail cache's bound",
            Some(&Unit::Bytes),
            per_shard(|s| s.cache.capacity_bytes),
        )?;
        family(
            e,
            "sluice_partitions",
            "Partition replicas open on the shard",
            None,
            per_shard(|s| s.partitions.len() as u64),
        )?;
        family(
            e,
            "sluice_write_pending",
            "Appended bytes not yet written to segment files",
            Some(&Unit::Bytes),
            per_shard(|s| s.write_pending_bytes),
        )?;
        family(
            e,
            "sluice_write_buffer",
            "Page-aligned write buffers held by the partitions' tails (pending data and room for more)",
            Some(&Unit::Bytes),
            per_shard(|s| s.write_buffer_bytes),
        )?;
        family(
            e,
            "sluice_io_write_in_flight",
            "Write buffers handed to the disk and not yet written",
            Some(&Unit::Bytes),
            per_shard(|s| s.storage.write_in_flight_bytes),
        )?;
        family(
            e,
            "sluice_io_buffer_pool",
            "Write buffers kept for reuse",
            Some(&Unit::Bytes),
            per_shard(|s| s.storage.pooled_buffer_bytes),
        )?;
        family(
            e,
            "sluice_isr_shrinks",
            "ISR shrinks proposed by this node's leaders",
            None,
            per_shard_total(|s| s.isr_shrinks),
        )?;
        family(
            e,
            "sluice_isr_expands",
            "ISR expansions proposed by this node's leaders",
            None,
            per_shard_total(|s| s.isr_expands),
        )?;
        if let Some(first) = self.snapshots.first() {
            family(
                e,
                "sluice_controller_leader",
                "The node leading the cluster metadata log (-1: unknown)",
                None,
                [(
                    Labels::new(),
                    ConstGauge::new(first.controller_leader as i64),
                )],
            )?;
        }
        family(
            e,
            "sluice_partition_leaders",
            "Partitions the shard leads",
            None,
            per_shard(|s| s.partitions.iter().filter(|p| p.leader).count() as u64),
        )?;
        family(
            e,
            "sluice_under_replicated_partitions",
            "Led partitions whose in-sync replicas are fewer than their replicas",
            None,
            per_shard(|s| {
                s.partitions
                    .iter()
                    .filter(|p| p.leader && p.isr < p.replicas)
                    .count() as u64
            }),
        )?;

        // Storage: group commit and fdatasync, per core.
        family(
            e,
            "sluice_flush_rounds",
            "Group-commit rounds (one write batch and its fdatasyncs)",
            None,
            per_shard_total(|s| s.storage.flush_rounds),
        )?;
        family(
            e,
            "sluice_flush_written",
            "Segment bytes written by flush rounds (whole pages)",
            Some(&Unit::Bytes),
            per_shard_total(|s| s.storage.written_bytes),
        )?;
        if !self.snapshots.is_empty() {
            let mut metric = e.encode_descriptor(
                "sluice_fdatasync_duration",
                "fdatasync latency of segment files, by core",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for s in &self.snapshots {
                histogram(metric.encode_family(&shard_label(s))?, &s.storage.sync)?;
            }
        }

        // Per partition, and consumer lag (committed offset against the high
        // watermark, for partitions open on this node).
        let partition_labels = |p: &sluice_shard::metrics::PartitionGauges| -> Labels {
            vec![
                ("topic", p.topic.clone()),
                ("partition", p.partition.to_string()),
            ]
        };
        let partitions: Vec<_> = self.snapshots.iter().flat_map(|s| &s.partitions).collect();
        family(
            e,
            "sluice_log_size",
            "Bytes in the partition's segments",
            Some(&Unit::Bytes),
            partitions
                .iter()
                .map(|p| (partition_labels(p), ConstGauge::new(p.log_bytes as i64))),
        )?;
        family(
            e,
            "sluice_log_start_offset",
            "The partition's first offset",
            None,
            partitions
                .iter()
                .map(|p| (partition_labels(p), ConstGauge::new(p.log_start_offset))),
        )?;
        family(
            e,
            "sluice_high_watermark",
            "The partition's high watermark",
            None,
            partitions
                .iter()
                .map(|p| (partition_labels(p), ConstGauge::new(p.high_watermark))),
        )?;
        let high_watermarks: BTreeMap<(&str, i32), i64> = partitions
            .iter()
            .map(|p| ((p.topic.as_str(), p.partition), p.high_watermark))
            .collect();
        let committed: Vec<_> = self.snapshots.iter().flat_map(|s| &s.committed).collect();
        let committed_labels = |c: &sluice_shard::metrics::CommittedGauge| -> Labels {
            vec![
                ("group", c.group.clone()),
                ("topic", c.topic.clone()),
                ("partition", c.partition.to_string()),
            ]
        };
        family(
            e,
            "sluice_consumer_group_lag",
            "Records between a group's committed offset and the high watermark (partitions on this node)",
            None,
            committed.iter().filter_map(|c| {
                let hw = high_watermarks.get(&(c.topic.as_str(), c.partition))?;
                Some((committed_labels(c), ConstGauge::new((hw - c.offset).max(0))))
            }),
        )?;
        // Every committed offset of the groups this node coordinates: with
        // the high watermarks other nodes export, Prometheus computes the lag
        // of partitions that live elsewhere in a cluster.
        family(
            e,
            "sluice_consumer_group_committed_offset",
            "A group's committed offset of a partition (groups this node coordinates)",
            None,
            committed
                .iter()
                .map(|c| (committed_labels(c), ConstGauge::new(c.offset))),
        )?;
        Ok(())
    }
}

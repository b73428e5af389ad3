//! What one run measured: the JSON file `sluice-bench run --json` writes and
//! `sluice-bench report` reads. Every figure, plus the exact workload and
//! broker configuration, so a result file stands on its own.

use crate::workload::Workload;
use serde::{Deserialize, Serialize};

/// Bumped when a field changes meaning; `report` refuses other versions.
pub const RESULT_FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub format: u32,
    /// "sluice-bench 0.1.0".
    pub tool: String,
    /// Unix seconds when the run started.
    pub started_at_unix_s: u64,
    pub bootstrap: String,
    /// What the caller said about the broker (`--broker-info`, e.g. its
    /// command line and config file), verbatim.
    pub broker_info: String,
    /// The API versions the broker advertised: (api key, min, max).
    pub broker_api_versions: Vec<(i16, i16, i16)>,
    pub workload: Workload,
    /// Length of the measured window (after warm-up), seconds.
    pub measured_s: f64,
    /// Produce throughput over the measured window.
    pub produce: Throughput,
    /// Consume throughput over the measured window (for a backlog run: the drain).
    pub consume: Throughput,
    /// Whole-run totals, warm-up included: what `produced == consumed` checks.
    pub totals: Totals,
    /// Send to acknowledgement, per message, microseconds.
    pub publish_latency_us: Percentiles,
    /// Actual send time minus the time the rate schedule intended, per
    /// message, microseconds (coordinated-omission check; 0 at rate 0).
    pub publish_delay_us: Percentiles,
    /// Send time (carried in the payload) to consumption, per message,
    /// microseconds.
    pub e2e_latency_us: Percentiles,
    /// Produced minus consumed messages, sampled at each status interval.
    pub backlog_max_messages: u64,
    /// Every kind of error seen (failed produce, fetch, commit, heartbeat)
    /// and how often.
    #[serde(default)]
    pub errors: std::collections::BTreeMap<String, u64>,
    /// Retries by kind (Kafka error name, or "connection lost" / "cannot
    /// connect"): a batch re-sent, or a group, fetch, metadata or topic
    /// request repeated, after a retriable error, as a Kafka client does.
    #[serde(default)]
    pub retries: std::collections::BTreeMap<String, u64>,
    /// For a backlog run: the backlog built before the drain and how long the
    /// drain took.
    pub drain: Option<Drain>,
    /// One line per status interval, for plots over time.
    pub intervals: Vec<Interval>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Throughput {
    pub messages: u64,
    pub bytes: u64,
    pub msgs_per_s: f64,
    /// Megabytes (10^6 bytes) of message payload per second.
    pub mb_per_s: f64,
}

impl Throughput {
    pub fn over(messages: u64, bytes: u64, seconds: f64) -> Throughput {
        let seconds = seconds.max(1e-9);
        Throughput {
            messages,
            bytes,
            msgs_per_s: messages as f64 / seconds,
            mb_per_s: bytes as f64 / seconds / 1e6,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Totals {
    pub produced: u64,
    /// Messages never acknowledged: refused with a non-retriable error, or
    /// retried until the retry budget (`delivery_timeout_ms`) ran out.
    pub produce_errors: u64,
    /// Of `produce_errors`: the messages lost because the retry budget ran out.
    #[serde(default)]
    pub lost_after_retries: u64,
    pub consumed: u64,
}

/// Percentiles of one histogram, all in the histogram's unit (microseconds).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p75: u64,
    pub p95: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
    /// (percentile, value) points from p0 to max for a percentile plot,
    /// denser towards the tail.
    pub curve: Vec<(f64, u64)>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Drain {
    pub backlog_messages: u64,
    pub backlog_bytes: u64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Interval {
    /// Seconds since the start of the run (warm-up included).
    pub t_s: f64,
    pub produce_msgs_per_s: f64,
    pub produce_mb_per_s: f64,
    pub consume_msgs_per_s: f64,
    pub consume_mb_per_s: f64,
    pub publish_p99_us: u64,
    pub e2e_p99_us: u64,
    pub backlog_messages: u64,
}

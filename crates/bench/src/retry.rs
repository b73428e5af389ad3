//! Retries as Kafka clients do them: which errors are worth another try
//! (kafka-protocol's table of retriable codes), which of them mean the
//! client's metadata or coordinator is stale, exponential backoff with jitter
//! between tries (the Java client's `retry.backoff.ms` = 100 to
//! `retry.backoff.max.ms` = 1000), a time budget, and a count of every retry
//! by kind for the result.

use kafka_protocol::error::ResponseError;
use sluice_protocol::api::error_code::{
    self, COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, CORRUPT_MESSAGE,
    ILLEGAL_GENERATION, KAFKA_STORAGE_ERROR, REBALANCE_IN_PROGRESS, UNKNOWN_MEMBER_ID,
    UNKNOWN_TOPIC_OR_PARTITION,
};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The first backoff (Java: `retry.backoff.ms`).
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The backoff stops growing here (Java: `retry.backoff.max.ms`).
pub const BACKOFF_MAX: Duration = Duration::from_millis(1000);
/// Each backoff is scaled by a random factor in 1 ± this (Java's 20 %).
const JITTER: f64 = 0.2;

/// The retry kind of a connection that broke with requests in flight.
pub const CONNECTION_LOST: &str = "connection lost";
/// The retry kind of a request that got no response in time (the client
/// closed the connection, as Kafka clients do after `request.timeout.ms`).
pub const REQUEST_TIMEOUT: &str = "request timeout";
/// The retry kind of a connection that could not be opened.
pub const CANNOT_CONNECT: &str = "cannot connect";

/// NOT_LEADER_OR_FOLLOWER etc.; these are also the retry kinds in results.
pub fn name(code: i16) -> String {
    error_code::name(code)
}

/// A broker error worth sending the same request again for: kafka-protocol's
/// retriable codes (the Java client's `RetriableException`s), except
/// CORRUPT_MESSAGE: the bench would re-send the very bytes the broker refused.
pub fn is_retriable(code: i16) -> bool {
    code != CORRUPT_MESSAGE
        && ResponseError::try_from_code(code).is_some_and(|error| error.is_retriable())
}

/// A retriable error that says the client's idea of the partition's leader is
/// out of date (the Java client's `InvalidMetadataException`s): refresh
/// metadata before the retry.
pub fn is_stale_metadata(code: i16) -> bool {
    const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    const LEADER_NOT_AVAILABLE: i16 = 5;
    const REPLICA_NOT_AVAILABLE: i16 = 9;
    const NOT_CONTROLLER: i16 = 41;
    const LISTENER_NOT_FOUND: i16 = 72;
    const FENCED_LEADER_EPOCH: i16 = 74;
    const UNKNOWN_LEADER_EPOCH: i16 = 75;
    const UNKNOWN_TOPIC_ID: i16 = 100;
    const INCONSISTENT_TOPIC_ID: i16 = 103;
    matches!(
        code,
        UNKNOWN_TOPIC_OR_PARTITION
            | LEADER_NOT_AVAILABLE
            | NOT_LEADER_OR_FOLLOWER
            | REPLICA_NOT_AVAILABLE
            | NOT_CONTROLLER
            | KAFKA_STORAGE_ERROR
            | LISTENER_NOT_FOUND
            | FENCED_LEADER_EPOCH
            | UNKNOWN_LEADER_EPOCH
            | UNKNOWN_TOPIC_ID
            | INCONSISTENT_TOPIC_ID
    )
}

/// What a group member does about an error from its coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupError {
    /// NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE: find the coordinator
    /// again (FindCoordinator), then retry.
    Rediscover,
    /// COORDINATOR_LOAD_IN_PROGRESS: the same coordinator, after a backoff.
    Retry,
    /// REBALANCE_IN_PROGRESS, UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION: rejoin.
    Rejoin,
    /// Anything else: the operation fails.
    Fail,
}

pub fn group_error(code: i16) -> GroupError {
    const NOT_COORDINATOR: i16 = 16;
    match code {
        NOT_COORDINATOR | COORDINATOR_NOT_AVAILABLE => GroupError::Rediscover,
        COORDINATOR_LOAD_IN_PROGRESS => GroupError::Retry,
        REBALANCE_IN_PROGRESS | UNKNOWN_MEMBER_ID | ILLEGAL_GENERATION => GroupError::Rejoin,
        _ => GroupError::Fail,
    }
}

/// The backoff before retry number `retry` (1 for the first): 100 ms ×
/// 2^(retry − 1), at most 1 s, times `factor` (the jitter, 1 ± 0.2).
pub fn backoff_with(retry: u32, factor: f64) -> Duration {
    let exponent = retry.saturating_sub(1).min(16);
    let term = (BACKOFF_MIN * (1u32 << exponent)).min(BACKOFF_MAX);
    term.mul_f64(factor.clamp(1.0 - JITTER, 1.0 + JITTER))
}

/// [`backoff_with`] with a random jitter factor.
pub fn backoff(retry: u32) -> Duration {
    backoff_with(retry, 1.0 - JITTER + 2.0 * JITTER * random_unit())
}

/// A uniform number in [0, 1): xorshift per thread (jitter needs no more).
fn random_unit() -> f64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x9E37_79B9, |d| d.as_nanos() as u64)
                | 1,
        );
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// The retries of one operation (a group request, a fetch, a metadata
/// refresh): the backoff grows with each failure in a row, and the budget
/// runs from the first of them. Success starts afresh.
#[derive(Debug)]
pub struct Attempts {
    budget: Duration,
    failures: u32,
    first_failure: Option<Instant>,
}

impl Attempts {
    pub fn new(budget: Duration) -> Attempts {
        Attempts {
            budget,
            failures: 0,
            first_failure: None,
        }
    }

    /// After a retriable failure: the backoff to wait before the next try,
    /// or an error naming the operation if the budget is spent.
    pub fn next(&mut self, what: &str, kind: &str, now: Instant) -> Result<Duration, String> {
        let first = *self.first_failure.get_or_insert(now);
        self.failures += 1;
        if now.saturating_duration_since(first) >= self.budget {
            return Err(format!(
                "{what}: {kind}, still failing after {} retries in {:.1} s (the retry budget, delivery_timeout_ms)",
                self.failures - 1,
                self.budget.as_secs_f64()
            ));
        }
        Ok(backoff(self.failures))
    }

    /// Counts a retriable failure of `kind` and waits its backoff; an error
    /// once the budget is spent.
    pub async fn retry(&mut self, counts: &Counts, what: &str, kind: &str) -> Result<(), String> {
        let delay = self.next(what, kind, Instant::now())?;
        counts.note(kind);
        glommio::timer::sleep(delay).await;
        Ok(())
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.first_failure = None;
    }
}

/// Retries by kind (error name, or [`CONNECTION_LOST`]...), shared by every
/// worker thread.
#[derive(Debug, Default)]
pub struct Counts(Mutex<BTreeMap<String, u64>>);

impl Counts {
    pub fn note(&self, kind: &str) {
        let Ok(mut counts) = self.0.lock() else {
            return;
        };
        let first = !counts.contains_key(kind);
        *counts.entry(kind.to_string()).or_default() += 1;
        drop(counts);
        if first {
            tracing::info!("retrying after {kind} (further retries are counted)");
        }
    }

    pub fn add(&self, other: &BTreeMap<String, u64>) {
        if let Ok(mut counts) = self.0.lock() {
            for (kind, n) in other {
                *counts.entry(kind.clone()).or_default() += n;
            }
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().map(|c| c.clone()).unwrap_or_default()
    }

    pub fn total(&self) -> u64 {
        self.0.lock().map(|c| c.values().sum()).unwrap_or(0)
    }
}

/// "NOT_LEADER_OR_FOLLOWER 12, NOT_COORDINATOR 3": retries for a status or
/// summary line.
pub fn summary(counts: &BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_errors_of_a_failover_are_retriable_and_bad_input_is_not() {
        for code in [3, 5, 6, 7, 13, 14, 15, 16, 19, 20] {
            assert!(is_retriable(code), "{}", name(code));
        }
        // MESSAGE_TOO_LARGE, CORRUPT_MESSAGE, INVALID_RECORD, UNKNOWN_SERVER_ERROR,
        // an unknown code, and NONE.
        for code in [10, 2, 87, -1, 9999, 0] {
            assert!(!is_retriable(code), "{}", name(code));
        }
        assert_eq!(name(6), "NOT_LEADER_OR_FOLLOWER");
        assert_eq!(name(20), "NOT_ENOUGH_REPLICAS_AFTER_APPEND");
    }

    #[test]
    fn only_leadership_errors_refresh_metadata() {
        for code in [3, 5, 6, 74, 75] {
            assert!(is_stale_metadata(code), "{}", name(code));
            assert!(is_retriable(code), "{}", name(code));
        }
        for code in [7, 13, 16, 19, 20, 10] {
            assert!(!is_stale_metadata(code), "{}", name(code));
        }
    }

    #[test]
    fn group_errors_rediscover_retry_or_rejoin() {
        assert_eq!(group_error(16), GroupError::Rediscover);
        assert_eq!(group_error(15), GroupError::Rediscover);
        assert_eq!(group_error(14), GroupError::Retry);
        for code in [27, 25, 22] {
            assert_eq!(group_error(code), GroupError::Rejoin, "{}", name(code));
        }
        assert_eq!(group_error(24), GroupError::Fail); // INVALID_GROUP_ID
    }

    #[test]
    fn backoff_doubles_from_100_ms_to_1_s_with_jitter() {
        let ms = |retry| backoff_with(retry, 1.0).as_millis();
        assert_eq!(
            (1..=6).map(ms).collect::<Vec<_>>(),
            [100, 200, 400, 800, 1000, 1000]
        );
        assert_eq!(ms(u32::MAX), 1000);
        assert_eq!(backoff_with(1, 0.8), Duration::from_millis(80));
        assert_eq!(backoff_with(5, 1.2), Duration::from_millis(1200));
        assert_eq!(backoff_with(1, 7.0), Duration::from_millis(120), "clamped");
        for retry in 1..20 {
            let d = backoff(retry);
            assert!(d >= backoff_with(retry, 0.8) && d <= backoff_with(retry, 1.2));
        }
    }

    #[test]
    fn the_budget_runs_from_the_first_failure_and_success_resets_it() {
        let mut attempts = Attempts::new(Duration::from_secs(2));
        let t = Instant::now();
        assert!(attempts.next("JoinGroup g", "NOT_COORDINATOR", t).unwrap() <= BACKOFF_MIN * 2);
        assert!(attempts
            .next("JoinGroup g", "NOT_COORDINATOR", t + Duration::from_secs(1))
            .is_ok());
        let e = attempts
            .next("JoinGroup g", "NOT_COORDINATOR", t + Duration::from_secs(2))
            .unwrap_err();
        assert!(
            e.contains("JoinGroup g: NOT_COORDINATOR") && e.contains("2 retries"),
            "{e}"
        );
        attempts.succeeded();
        assert!(attempts.next("x", "y", t + Duration::from_secs(10)).is_ok());
    }

    #[test]
    fn counts_add_up_by_kind_and_read_as_a_line() {
        let counts = Counts::default();
        for _ in 0..12 {
            counts.note("NOT_LEADER_OR_FOLLOWER");
        }
        counts.add(&[("NOT_COORDINATOR".to_string(), 3)].into());
        assert_eq!(counts.total(), 15);
        assert_eq!(
            summary(&counts.snapshot()),
            "NOT_COORDINATOR 3, NOT_LEADER_OR_FOLLOWER 12"
        );
    }
}

//! Measurements. Each worker thread records into its own [`Stats`] (no
//! sharing); the coordinator collects and resets them once per status tick and
//! merges them, so percentiles cover exactly the ticks of a window.

use crate::result::Percentiles;
use hdrhistogram::Histogram;

/// Latencies are recorded in microseconds, 1 µs to 10 minutes, 3 significant digits.
const HIGHEST_US: u64 = 600_000_000;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("valid histogram bounds")
}

/// One worker's measurements since the last collection.
#[derive(Debug, Clone)]
pub struct Stats {
    pub produced: u64,
    pub produced_bytes: u64,
    pub produce_errors: u64,
    /// Of `produce_errors`: messages whose retry budget ran out.
    pub produce_lost: u64,
    pub consumed: u64,
    pub consumed_bytes: u64,
    pub publish_latency: Histogram<u64>,
    pub publish_delay: Histogram<u64>,
    pub e2e_latency: Histogram<u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            produced: 0,
            produced_bytes: 0,
            produce_errors: 0,
            produce_lost: 0,
            consumed: 0,
            consumed_bytes: 0,
            publish_latency: histogram(),
            publish_delay: histogram(),
            e2e_latency: histogram(),
        }
    }
}

impl Stats {
    /// Adds another's counts and histograms to these.
    pub fn merge(&mut self, other: &Stats) {
        self.produced += other.produced;
        self.produced_bytes += other.produced_bytes;
        self.produce_errors += other.produce_errors;
        self.produce_lost += other.produce_lost;
        self.consumed += other.consumed;
        self.consumed_bytes += other.consumed_bytes;
        // Same bounds on both sides, so `add` cannot fail.
        self.publish_latency
            .add(&other.publish_latency)
            .expect("same bounds");
        self.publish_delay
            .add(&other.publish_delay)
            .expect("same bounds");
        self.e2e_latency
            .add(&other.e2e_latency)
            .expect("same bounds");
    }

    /// Returns what was recorded and starts afresh.
    pub fn take(&mut self) -> Stats {
        std::mem::take(self)
    }
}

/// Records a microsecond value, clamping into the histogram's range.
pub fn record_us(histogram: &mut Histogram<u64>, us: u64) {
    histogram.saturating_record(us.clamp(1, HIGHEST_US));
}

/// The percentile points plotted by the report: dense towards the tail.
const CURVE_POINTS: &[f64] = &[
    0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 97.5, 99.0, 99.5, 99.75, 99.9, 99.95, 99.975, 99.99,
    99.995, 99.999, 100.0,
];

pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    let at = |p: f64| h.value_at_quantile(p / 100.0);
    Percentiles {
        count: h.len(),
        mean: h.mean(),
        p50: at(50.0),
        p75: at(75.0),
        p95: at(95.0),
        p99: at(99.0),
        p999: at(99.9),
        p9999: at(99.99),
        max: h.max(),
        curve: CURVE_POINTS.iter().map(|&p| (p, at(p))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_workers_gives_the_percentiles_of_all_values() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        // Worker a saw 1..=900 µs, worker b 901..=1000 µs: the merged p90 is 900.
        for v in 1..=900 {
            record_us(&mut a.publish_latency, v);
        }
        for v in 901..=1000 {
            record_us(&mut b.publish_latency, v);
        }
        a.produced = 900;
        b.produced = 100;
        b.produce_errors = 2;
        b.produce_lost = 1;
        let mut total = Stats::default();
        total.merge(&a);
        total.merge(&b);
        assert_eq!(total.produced, 1000);
        assert_eq!(total.produce_errors, 2);
        assert_eq!(total.produce_lost, 1);
        let p = percentiles(&total.publish_latency);
        assert_eq!(p.count, 1000);
        assert_eq!(p.p50, 500);
        assert_eq!(h_equiv(&total.publish_latency, 900), 900);
        assert_eq!(p.max, 1000);
        assert_eq!(p.p99, 990);
        assert_eq!(p.curve.first().unwrap().0, 0.0);
        assert_eq!(p.curve.last().unwrap(), &(100.0, 1000));
    }

    fn h_equiv(h: &Histogram<u64>, v: u64) -> u64 {
        h.value_at_quantile(v as f64 / 1000.0)
    }

    #[test]
    fn take_resets() {
        let mut s = Stats {
            consumed: 5,
            ..Stats::default()
        };
        record_us(&mut s.e2e_latency, 10);
        let taken = s.take();
        assert_eq!(taken.consumed, 5);
        assert_eq!(taken.e2e_latency.len(), 1);
        assert_eq!(s.consumed, 0);
        assert!(s.e2e_latency.is_empty());
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let mut h = histogram();
        record_us(&mut h, 0);
        record_us(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
        assert_eq!(
            percentiles(&Histogram::new(3).unwrap()),
            Percentiles::default()
        );
    }
}

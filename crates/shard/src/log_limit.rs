//! At most one log line per interval for things a client or the OS can make
//! happen many times a second (bad batches, accept failures at the file
//! descriptor limit): the first is logged, the rest are counted and the count
//! goes into the next line.

use std::cell::Cell;
use std::time::{Duration, Instant};

pub struct LogLimiter {
    interval: Duration,
    last: Cell<Option<Instant>>,
    suppressed: Cell<u64>,
}

impl LogLimiter {
    pub fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            interval,
            last: Cell::new(None),
            suppressed: Cell::new(0),
        }
    }

    /// `Some(lines suppressed since the last one)` if a line may be written now.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        match self.last.get() {
            Some(last) if now.duration_since(last) < self.interval => {
                self.suppressed.set(self.suppressed.get() + 1);
                None
            }
            _ => {
                self.last.set(Some(now));
                Some(self.suppressed.replace(0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_of_the_rest() {
        let limiter = LogLimiter::new(Duration::from_secs(1));
        let start = Instant::now();
        assert_eq!(limiter.allow_at(start), Some(0));
        for k in 1..=179 {
            assert_eq!(limiter.allow_at(start + Duration::from_millis(k * 5)), None);
        }
        assert_eq!(limiter.allow_at(start + Duration::from_secs(1)), Some(179));
        assert_eq!(limiter.allow_at(start + Duration::from_millis(1500)), None);
    }
}

//! The producer rate schedule. Message `i` is intended to go out at
//! `start + i / rate`; a producer that falls behind sends what is due at once
//! and the lateness is recorded as publish delay, so a slow broker cannot hide
//! behind a slower send rate (coordinated omission).

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RateLimiter {
    /// Messages per second; 0 = unlimited.
    rate: f64,
    /// Index of the next message to send.
    next: u64,
}

impl RateLimiter {
    pub fn new(messages_per_s: f64) -> RateLimiter {
        RateLimiter {
            rate: messages_per_s.max(0.0),
            next: 0,
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.rate == 0.0
    }

    /// When message `index` should go out, measured from the schedule's start.
    pub fn intended(&self, index: u64) -> Duration {
        if self.is_unlimited() {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(index as f64 / self.rate)
    }

    /// How many messages are due `elapsed` after the start and not yet taken.
    /// Takes them: the caller sends them now, in order, and the next call
    /// starts after them. Unlimited: `want` messages are always due.
    pub fn take_due(&mut self, elapsed: Duration, want: u64) -> std::ops::Range<u64> {
        let start = self.next;
        let end = if self.is_unlimited() {
            start + want
        } else {
            let due_total = (elapsed.as_secs_f64() * self.rate).floor() as u64 + 1;
            due_total.max(start).min(start + want)
        };
        self.next = end;
        start..end
    }

    /// Time from the start at which the next message falls due.
    pub fn next_due(&self) -> Duration {
        self.intended(self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn messages_fall_due_on_schedule() {
        let mut r = RateLimiter::new(1000.0); // one per ms
        assert_eq!(r.take_due(ms(0), 100), 0..1);
        assert_eq!(
            r.take_due(ms(0), 100),
            1..1,
            "nothing new due at the same instant"
        );
        assert_eq!(r.next_due(), ms(1));
        assert_eq!(r.take_due(ms(5), 100), 1..6);
        assert_eq!(r.intended(5), ms(5));
    }

    #[test]
    fn a_late_producer_catches_up_and_the_schedule_keeps_the_intended_times() {
        let mut r = RateLimiter::new(1000.0);
        r.take_due(ms(0), 100);
        // Stalled for 50 ms: 50 messages are due, their intended times are in the past.
        let due = r.take_due(ms(50), 1000);
        assert_eq!(due, 1..51);
        assert_eq!(r.intended(due.start), ms(1));
        // The rate does not rise afterwards: the next is due at 51 ms.
        assert_eq!(r.next_due(), ms(51));
    }

    #[test]
    fn taking_is_capped_by_want() {
        let mut r = RateLimiter::new(1000.0);
        assert_eq!(r.take_due(ms(100), 10), 0..10);
        assert_eq!(r.take_due(ms(100), 1000), 10..101);
    }

    #[test]
    fn unlimited_gives_what_is_asked_with_no_delay() {
        let mut r = RateLimiter::new(0.0);
        assert!(r.is_unlimited());
        assert_eq!(r.take_due(ms(0), 7), 0..7);
        assert_eq!(r.take_due(ms(0), 3), 7..10);
        assert_eq!(r.intended(9), Duration::ZERO);
    }
}

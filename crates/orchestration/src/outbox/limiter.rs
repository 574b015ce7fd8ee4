//! Token buckets per key: the per-page send rate (Meta allows 300 calls/s
//! per page for text, with a pause when Meta says a page is throttled), and
//! the per-app request rate on Baton's own API. It never sleeps: it says how
//! long to wait, and the caller wakes then or refuses.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use domain::{PageId, Timestamp};

/// A point in time a bucket refills by: the process's monotonic `Instant`,
/// or Baton's clock (`Timestamp`, which tests move by hand).
pub trait Moment: Copy + Ord {
    /// How long from `earlier` to `self` (zero if `earlier` is later).
    fn since(self, earlier: Self) -> Duration;
    fn after(self, by: Duration) -> Self;
}

impl Moment for Instant {
    fn since(self, earlier: Self) -> Duration {
        self.saturating_duration_since(earlier)
    }

    fn after(self, by: Duration) -> Self {
        self + by
    }
}

impl Moment for Timestamp {
    fn since(self, earlier: Self) -> Duration {
        Duration::from_millis(u64::try_from(self.millis() - earlier.millis()).unwrap_or(0))
    }

    fn after(self, by: Duration) -> Self {
        Timestamp::from_millis(
            self.millis()
                .saturating_add(i64::try_from(by.as_millis()).unwrap_or(i64::MAX)),
        )
    }
}

#[derive(Debug)]
pub struct RateLimiter<K = PageId, T = Instant> {
    rate: f64,
    burst: f64,
    pages: HashMap<K, Bucket<T>>,
    delayed: u64,
}

#[derive(Debug)]
struct Bucket<T> {
    tokens: f64,
    last: T,
    paused_until: Option<T>,
}

impl<K: Hash + Eq + Clone, T: Moment> RateLimiter<K, T> {
    pub fn new(per_second: f64, burst: f64) -> Self {
        Self {
            rate: per_second.max(0.001),
            burst: burst.max(1.0),
            pages: HashMap::new(),
            delayed: 0,
        }
    }

    fn bucket(&mut self, page: &K, now: T) -> &mut Bucket<T> {
        let (rate, burst) = (self.rate, self.burst);
        let b = self.pages.entry(page.clone()).or_insert(Bucket {
            tokens: burst,
            last: now,
            paused_until: None,
        });
        b.tokens = (b.tokens + now.since(b.last).as_secs_f64() * rate).min(burst);
        b.last = b.last.max(now);
        b
    }

    /// Takes one call for `page` now, or says how long until one is free.
    pub fn try_acquire(&mut self, page: &K, now: T) -> Result<(), Duration> {
        let rate = self.rate;
        let b = self.bucket(page, now);
        let wait = match b.paused_until {
            Some(until) if until > now => until.since(now),
            _ if b.tokens >= 1.0 => {
                b.tokens -= 1.0;
                return Ok(());
            }
            _ => Duration::from_secs_f64((1.0 - b.tokens) / rate),
        };
        self.delayed += 1;
        Err(wait)
    }

    /// Holds every send to `page` for `for_`: Meta said the page is throttled.
    pub fn pause(&mut self, page: &K, for_: Duration, now: T) {
        let b = self.bucket(page, now);
        b.tokens = 0.0;
        b.paused_until = Some(now.after(for_));
    }

    /// How often a send had to wait for the limiter.
    pub fn delayed(&self) -> u64 {
        self.delayed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_refills_at_the_rate_and_a_pause_holds_the_page() {
        let page = PageId::parse("1").unwrap();
        let other = PageId::parse("2").unwrap();
        let t0 = Instant::now();
        let mut l: RateLimiter = RateLimiter::new(10.0, 2.0);
        assert!(l.try_acquire(&page, t0).is_ok());
        assert!(l.try_acquire(&page, t0).is_ok());
        let wait = l.try_acquire(&page, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(l
            .try_acquire(&page, t0 + Duration::from_millis(100))
            .is_ok());
        l.pause(&page, Duration::from_secs(1), t0);
        assert!(l
            .try_acquire(&page, t0 + Duration::from_millis(500))
            .is_err());
        assert!(l.try_acquire(&other, t0).is_ok(), "pages are independent");
        assert!(l
            .try_acquire(&page, t0 + Duration::from_millis(1200))
            .is_ok());
        assert_eq!(l.delayed(), 2);
    }
}

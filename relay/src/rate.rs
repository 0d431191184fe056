//! A token bucket for per-session rate limits.

use crate::config::Rate;
use tokio::time::Instant;

/// Token bucket: `take(n)` succeeds while the bucket holds `n` tokens.
#[derive(Debug)]
pub struct TokenBucket {
    rate: Rate,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: Rate) -> Self {
        Self { rate, tokens: rate.burst, last: Instant::now() }
    }

    /// Take `n` tokens if available.
    pub fn take(&mut self, n: f64) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate.per_sec).min(self.rate.burst);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn refills_over_time() {
        let mut b = TokenBucket::new(Rate { per_sec: 10.0, burst: 2.0 });
        assert!(b.take(1.0) && b.take(1.0));
        assert!(!b.take(1.0));
        tokio::time::advance(std::time::Duration::from_millis(100)).await;
        assert!(b.take(1.0));
        assert!(!b.take(1.0));
    }
}

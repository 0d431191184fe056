//! The node's admission rate of new sessions: a token bucket on `Hello`, so a reconnect
//! storm (every client of a failed node arriving at once) is admitted at a bounded rate
//! instead of all paying for authentication, inbox subscriptions, joins and history replays
//! in the same second. A refused client is told when to come back: a `GoAway` whose
//! `reconnect_after_ms` spreads the refused over the time the bucket needs to admit them,
//! with jitter, then `RATE_LIMITED`.

use crate::config::Rate;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Shortest retry hint given to a refused client.
const MIN_HINT: Duration = Duration::from_millis(500);
/// Longest retry hint (the Rust client honours up to 30 s).
const MAX_HINT: Duration = Duration::from_secs(20);

struct State {
    tokens: f64,
    last: Instant,
    /// Refusals not yet expected back: decays at the admission rate.
    waiting: f64,
}

/// The admission bucket; `None` rate: unlimited.
pub(crate) struct SessionRate {
    rate: Option<Rate>,
    state: Mutex<State>,
}

impl SessionRate {
    /// A full bucket admitting `rate` (`per_sec` 0: unlimited).
    pub(crate) fn new(rate: Rate) -> Self {
        let rate = (rate.per_sec > 0.0).then_some(rate);
        let tokens = rate.map_or(0.0, |r| r.burst);
        Self { rate, state: Mutex::new(State { tokens, last: Instant::now(), waiting: 0.0 }) }
    }

    /// Admit one new session, or refuse it with a hint of when to retry: spread, with
    /// jitter, over the time the bucket needs to admit those refused before it.
    pub(crate) fn admit(&self) -> Result<(), Duration> {
        let Some(rate) = self.rate else { return Ok(()) };
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let elapsed = now.duration_since(st.last).as_secs_f64();
        st.last = now;
        st.tokens = (st.tokens + elapsed * rate.per_sec).min(rate.burst);
        st.waiting = (st.waiting - elapsed * rate.per_sec).max(0.0);
        if st.tokens >= 1.0 {
            st.tokens -= 1.0;
            return Ok(());
        }
        st.waiting += 1.0;
        let spread = Duration::from_secs_f64(st.waiting / rate.per_sec).clamp(MIN_HINT, MAX_HINT);
        Err(spread.mul_f64(0.5 + rand::random::<f64>() * 0.5).max(MIN_HINT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn admits_a_burst_then_the_rate_and_spreads_the_refused() {
        let r = SessionRate::new(Rate { per_sec: 100.0, burst: 10.0 });
        assert!((0..10).all(|_| r.admit().is_ok()));
        let hints: Vec<Duration> = (0..1000).map(|_| r.admit().expect_err("over the rate")).collect();
        assert!(hints.iter().all(|h| *h >= MIN_HINT && *h <= MAX_HINT));
        // The 1000th refused waits for about 10 s of admissions, the first about none.
        assert!(hints[999] > Duration::from_secs(4), "{:?}", hints[999]);
        assert!(hints[0] < Duration::from_secs(1));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!((0..10).all(|_| r.admit().is_ok()), "refilled at the rate");
        assert!(r.admit().is_err());
        assert!(SessionRate::new(Rate { per_sec: 0.0, burst: 0.0 }).admit().is_ok(), "0: unlimited");
    }
}

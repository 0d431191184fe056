//! A keyed rate limiter with bounded memory: login and registration attempts (accounts),
//! call invitations per caller.
//!
//! Each key (a username, a client address) allows `limit` attempts per `period`, as a
//! burst, then one more every `period / limit` (GCRA: one instant per key, the
//! "theoretical arrival time"). A key whose allowance is full again carries no
//! information and is dropped when the table is full; if the table is still full of live
//! keys, attempts under new keys are refused until some expire: under a flood of distinct
//! keys we fail closed rather than forget the keys that are being limited.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a full table waits between two sweeps for expired keys, so a flood of new
/// keys does not make every attempt scan the whole table.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Attempts per period per key, with at most `max_keys` keys remembered.
pub struct RateLimiter {
    /// Time one attempt uses up (`period / limit`); zero when unlimited.
    interval: Duration,
    period: Duration,
    max_keys: usize,
    state: Mutex<State>,
}

struct State {
    /// Per key: when its allowance will be full again.
    tat: HashMap<String, Instant>,
    last_sweep: Option<Instant>,
}

impl RateLimiter {
    /// `limit` attempts per `period` per key (0: unlimited), remembering at most `max_keys`.
    pub fn new(limit: u32, period: Duration, max_keys: usize) -> Self {
        let interval = if limit == 0 { Duration::ZERO } else { period / limit };
        Self { interval, period, max_keys, state: Mutex::new(State { tat: HashMap::new(), last_sweep: None }) }
    }

    /// Count an attempt under `key` at `now`; `Err(retry_after)` if it exceeds the limit
    /// (the refused attempt is not counted).
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        if self.interval.is_zero() {
            return Ok(());
        }
        // A poisoned lock only means another thread panicked mid-update; the map is still
        // a valid map.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let known = state.tat.get(key).copied();
        let tat = known.map_or(now, |t| t.max(now));
        let new_tat = tat + self.interval;
        if let Some(allowed_at) = new_tat.checked_sub(self.period) {
            if allowed_at > now {
                return Err(allowed_at - now);
            }
        }
        if known.is_none() && state.tat.len() >= self.max_keys {
            let due = state.last_sweep.is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_INTERVAL);
            if due {
                state.tat.retain(|_, t| *t > now);
                state.last_sweep = Some(now);
            }
            if state.tat.len() >= self.max_keys {
                return Err(SWEEP_INTERVAL);
            }
        }
        state.tat.insert(key.to_owned(), new_tat);
        Ok(())
    }

    /// Keys currently remembered.
    pub fn len(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).tat.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn burst_then_one_per_interval() {
        let limiter = RateLimiter::new(5, MINUTE, 100);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(limiter.check("alice", t0), Ok(()));
        }
        assert_eq!(limiter.check("alice", t0), Err(Duration::from_secs(12)));
        // Other keys are independent.
        assert_eq!(limiter.check("bob", t0), Ok(()));
        // One attempt frees up every 12 s.
        assert_eq!(limiter.check("alice", t0 + Duration::from_secs(11)), Err(Duration::from_secs(1)));
        assert_eq!(limiter.check("alice", t0 + Duration::from_secs(12)), Ok(()));
        assert!(limiter.check("alice", t0 + Duration::from_secs(12)).is_err());
        // After a full period the whole burst is back.
        let later = t0 + Duration::from_secs(12) + MINUTE;
        for _ in 0..5 {
            assert_eq!(limiter.check("alice", later), Ok(()));
        }
    }

    #[test]
    fn zero_means_unlimited() {
        let limiter = RateLimiter::new(0, MINUTE, 1);
        let t0 = Instant::now();
        for i in 0..1000 {
            assert_eq!(limiter.check(&format!("k{i}"), t0), Ok(()));
        }
        assert_eq!(limiter.len(), 0);
    }

    #[test]
    fn memory_is_bounded_and_expired_keys_are_evicted() {
        let limiter = RateLimiter::new(2, MINUTE, 3);
        let t0 = Instant::now();
        for k in ["a", "b", "c"] {
            assert_eq!(limiter.check(k, t0), Ok(()));
        }
        // Full of live keys: a new key is refused, known keys still count normally.
        assert_eq!(limiter.check("d", t0), Err(SWEEP_INTERVAL));
        assert_eq!(limiter.check("a", t0), Ok(()));
        assert!(limiter.check("a", t0).is_err());
        assert_eq!(limiter.len(), 3);
        // Once "b" and "c" have their allowance back (30 s), they make room.
        let later = t0 + Duration::from_secs(31);
        assert_eq!(limiter.check("d", later), Ok(()));
        assert_eq!(limiter.len(), 2, "b and c evicted, a (still limited) and d kept");
        assert!(limiter.check("a", later).is_ok(), "a regained one attempt after 30 s");
    }
}

//! What the cluster scenario counts: counters, latency histograms and errors by code,
//! shared by every member task.

use crate::bench::stats::histogram;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use switchboard_client::ClientError;

/// Chat latency histograms, sharded so thousands of member tasks rarely wait on one lock.
const SHARDS: usize = 16;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A counter.
#[derive(Default)]
pub struct Count(AtomicU64);

impl Count {
    /// Add one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Subtract one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Everything counted during a run.
pub struct Tally {
    chat_latency: Vec<Mutex<Histogram<u64>>>,
    /// Messages replayed from history after a reconnect (their latency includes the time
    /// the member was away, so they are kept apart).
    pub replay_latency: Mutex<Histogram<u64>>,
    pub call_setup: Mutex<Histogram<u64>>,
    pub reconnect: Mutex<Histogram<u64>>,
    /// Connect + Hello + Join while ramping up.
    pub connect: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    first_error: Mutex<Option<String>>,
    pub connected: Count,
    /// Members done ramping up (connected or given up).
    pub ramped: Count,
    pub connect_failures: Count,
    pub chat_sent: Count,
    pub chat_acked: Count,
    pub chat_failed: Count,
    pub chat_delivered: Count,
    pub chat_replayed: Count,
    pub duplicated: Count,
    pub reordered: Count,
    pub gaps: Count,
    pub history_gaps: Count,
    pub churns: Count,
    pub goaways: Count,
    pub lost_connections: Count,
    pub reconnects: Count,
    pub reconnect_failures: Count,
    pub calls_placed: Count,
    pub calls_answered: Count,
    pub calls_failed: Count,
    pub calls_ended: Count,
}

impl Tally {
    /// Empty.
    pub fn new() -> Self {
        Self {
            chat_latency: (0..SHARDS).map(|_| Mutex::new(histogram())).collect(),
            replay_latency: Mutex::new(histogram()),
            call_setup: Mutex::new(histogram()),
            reconnect: Mutex::new(histogram()),
            connect: Mutex::new(histogram()),
            errors: Mutex::new(BTreeMap::new()),
            first_error: Mutex::new(None),
            connected: Count::default(),
            ramped: Count::default(),
            connect_failures: Count::default(),
            chat_sent: Count::default(),
            chat_acked: Count::default(),
            chat_failed: Count::default(),
            chat_delivered: Count::default(),
            chat_replayed: Count::default(),
            duplicated: Count::default(),
            reordered: Count::default(),
            gaps: Count::default(),
            history_gaps: Count::default(),
            churns: Count::default(),
            goaways: Count::default(),
            lost_connections: Count::default(),
            reconnects: Count::default(),
            reconnect_failures: Count::default(),
            calls_placed: Count::default(),
            calls_answered: Count::default(),
            calls_failed: Count::default(),
            calls_ended: Count::default(),
        }
    }

    /// Record a live chat delivery's latency (µs) for member `i`.
    pub fn chat_latency(&self, i: usize, us: u64) {
        let _ = lock(&self.chat_latency[i % SHARDS]).record(us);
    }

    /// Record `us` in `h`.
    pub fn record(h: &Mutex<Histogram<u64>>, us: u64) {
        let _ = lock(h).record(us.max(1));
    }

    /// Every shard's chat latencies, merged.
    pub fn chat_latencies(&self) -> Histogram<u64> {
        let mut all = histogram();
        for h in &self.chat_latency {
            let _ = all.add(&*lock(h));
        }
        all
    }

    /// A copy of `h`.
    pub fn snapshot(h: &Mutex<Histogram<u64>>) -> Histogram<u64> {
        lock(h).clone()
    }

    /// Count an error under `key` (an error code's name, or what failed), keeping the first
    /// one's description.
    pub fn error(&self, key: &str, what: impl FnOnce() -> String) {
        *lock(&self.errors).entry(key.to_owned()).or_default() += 1;
        let mut first = lock(&self.first_error);
        if first.is_none() {
            *first = Some(what());
        }
    }

    /// Count a client error under its code (or its kind).
    pub fn client_error(&self, context: &str, e: &ClientError) {
        self.error(&error_key(e), || format!("{context}: {e}"));
    }

    /// Errors by code.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        lock(&self.errors).clone()
    }

    /// The first error seen.
    pub fn first_error(&self) -> Option<String> {
        lock(&self.first_error).clone()
    }
}

/// The key an error is counted under: the server's code, else what kind of failure it was.
pub fn error_key(e: &ClientError) -> String {
    if let Some(code) = e.code() {
        return code.as_str_name().to_owned();
    }
    match e {
        ClientError::Connect(_) => "CONNECT_FAILED",
        ClientError::Timeout(_) => "TIMEOUT",
        ClientError::Closed { .. } => "CLOSED",
        ClientError::Protocol(_) => "PROTOCOL",
        _ => "OTHER",
    }
    .to_owned()
}

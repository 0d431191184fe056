//! The in-process bus of the embedded single node.

use super::{
    Bucket, Bus, BusError, BusMessage, KvEntry, Log, LogAck, LogEntry, LogStream, LogUsage, StoreLimits, Subscription,
};
use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_protocol::pb::Participant;
use switchboard_protocol::subject::subject_matches;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Messages buffered per subscription before the publisher waits.
const SUBSCRIPTION_BUFFER: usize = 1024;

/// Subscriptions indexed for routing in O(subject tokens): exact subjects and `prefix.>`
/// patterns by their text in a map; patterns with `*` (few: node heartbeats) in a list.
#[derive(Default)]
struct Subscribers {
    by_pattern: HashMap<String, Vec<mpsc::Sender<BusMessage>>>,
    starred: Vec<(String, mpsc::Sender<BusMessage>)>,
}

impl Subscribers {
    fn add(&mut self, pattern: String, tx: mpsc::Sender<BusMessage>) {
        if pattern.split('.').any(|t| t == "*") {
            self.starred.push((pattern, tx));
        } else {
            self.by_pattern.entry(pattern).or_default().push(tx);
        }
    }

    /// Live subscribers whose pattern matches `subject` (closed ones are pruned).
    fn matching(&mut self, subject: &str) -> Vec<mpsc::Sender<BusMessage>> {
        let mut out = Vec::new();
        let mut candidates = vec![subject.to_owned()];
        let mut end = 0;
        while let Some(dot) = subject[end..].find('.') {
            end += dot;
            candidates.push(format!("{}.>", &subject[..end]));
            end += 1;
        }
        for pattern in candidates {
            if let Some(list) = self.by_pattern.get_mut(&pattern) {
                list.retain(|tx| !tx.is_closed());
                out.extend(list.iter().cloned());
                if list.is_empty() {
                    self.by_pattern.remove(&pattern);
                }
            }
        }
        self.starred.retain(|(_, tx)| !tx.is_closed());
        out.extend(self.starred.iter().filter(|(p, _)| subject_matches(p, subject)).map(|(_, tx)| tx.clone()));
        out
    }

    fn count(&mut self, pattern: &str) -> usize {
        self.by_pattern.values_mut().for_each(|l| l.retain(|tx| !tx.is_closed()));
        self.starred.retain(|(_, tx)| !tx.is_closed());
        self.by_pattern.get(pattern).map_or(0, Vec::len) + self.starred.iter().filter(|(p, _)| p == pattern).count()
    }
}

/// Entries a log follower may have queued before it is cut off (and must re-follow).
const FOLLOWER_BUFFER: usize = 8192;

#[derive(Default)]
struct KeyLog {
    entries: VecDeque<(u64, Instant, Bytes)>,
    followers: Vec<mpsc::Sender<Result<LogEntry, BusError>>>,
}

impl KeyLog {
    fn last(&self) -> u64 {
        self.entries.back().map_or(0, |(seq, _, _)| *seq)
    }
}

/// One log: its keys, its next sequence, and a global index (seq -> key) so the oldest
/// entry overall can be dropped when the log exceeds its byte budget, like a stream's
/// `max_bytes` with discard-old.
#[derive(Default)]
struct LogState {
    next: u64,
    keys: HashMap<String, KeyLog>,
    index: BTreeMap<u64, String>,
    bytes: usize,
    /// Sweep keys with nothing retained and no live follower when there are more than this.
    sweep_at: usize,
}

impl LogState {
    /// Forget keys that hold nothing (no entries, no live follower), so rooms that came and
    /// went leave no trace; amortised: runs when the key count doubled since the last sweep.
    fn sweep(&mut self) {
        if self.keys.len() <= self.sweep_at {
            return;
        }
        self.keys.retain(|_, k| {
            k.followers.retain(|tx| !tx.is_closed());
            !k.entries.is_empty() || !k.followers.is_empty()
        });
        self.sweep_at = (self.keys.len() * 2).max(1024);
    }

    /// Drop `key`'s entries beyond its count and age bounds.
    fn trim_key(&mut self, key: &str, max_msgs: i64, max_age: Duration) {
        let Some(key_log) = self.keys.get_mut(key) else { return };
        let now = Instant::now();
        while let Some((seq, at, payload)) = key_log.entries.front() {
            let expired = now.duration_since(*at) > max_age;
            if !expired && key_log.entries.len() as i64 <= max_msgs.max(0) {
                break;
            }
            self.bytes -= payload.len();
            self.index.remove(seq);
            key_log.entries.pop_front();
        }
    }

    /// Drop the oldest entries of the whole log while it exceeds `max_bytes` or holds more
    /// than `max_entries`.
    fn trim_total(&mut self, max_bytes: usize, max_entries: usize) {
        while self.bytes > max_bytes || self.index.len() > max_entries {
            let Some((seq, key)) = self.index.pop_first() else { break };
            if let Some(key_log) = self.keys.get_mut(&key) {
                if key_log.entries.front().is_some_and(|(s, _, _)| *s == seq) {
                    if let Some((_, _, payload)) = key_log.entries.pop_front() {
                        self.bytes -= payload.len();
                    }
                }
            }
        }
    }
}

/// In-process bus: subject matching with NATS wildcard rules, presence, key-value buckets
/// and logs in maps, with the NATS implementation's semantics (compare-and-set, bounded
/// retention, no responders).
#[derive(Default, Clone)]
pub struct LocalBus {
    subs: Arc<Mutex<Subscribers>>,
    presence: Arc<Mutex<HashMap<String, BTreeMap<String, Participant>>>>,
    kv: Arc<Mutex<Kv>>,
    logs: Arc<Mutex<HashMap<Log, LogState>>>,
    limits: StoreLimits,
}

/// The key-value buckets, with each entry's last write time, so the `Calls` bucket forgets
/// entries after `call_state_ttl` like the JetStream bucket's `max_age` (a call record per
/// invitation would otherwise stay in memory for the life of the process).
#[derive(Default)]
struct Kv {
    entries: HashMap<(Bucket, String), (KvEntry, Instant)>,
    /// Sweep expired entries when there are more than this (doubles after each sweep).
    sweep_at: usize,
}

impl Kv {
    fn expired(&self, bucket: Bucket, at: Instant, limits: &StoreLimits) -> bool {
        bucket == Bucket::Calls && at.elapsed() > limits.call_state_ttl
    }

    /// The live entry under `key`.
    fn get(&mut self, bucket: Bucket, key: &str, limits: &StoreLimits) -> Option<&mut KvEntry> {
        let k = (bucket, key.to_owned());
        if self.entries.get(&k).is_some_and(|(_, at)| self.expired(bucket, *at, limits)) {
            self.entries.remove(&k);
        }
        self.entries.get_mut(&k).map(|(e, _)| e)
    }

    /// Forget expired entries; amortised: when the entry count doubled since the last sweep.
    fn sweep(&mut self, limits: &StoreLimits) {
        if self.entries.len() <= self.sweep_at {
            return;
        }
        let ttl = limits.call_state_ttl;
        self.entries.retain(|(b, _), (_, at)| *b != Bucket::Calls || at.elapsed() <= ttl);
        self.sweep_at = (self.entries.len() * 2).max(1024);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LocalBus {
    /// An empty bus with the default retention.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty bus with the given retention.
    pub fn with_limits(limits: StoreLimits) -> Self {
        Self { limits, ..Self::default() }
    }

    /// Per key: entries and age; in all: bytes and entries.
    fn log_bounds(&self, log: Log) -> (i64, Duration, usize, usize) {
        let size = |v: i64| usize::try_from(v).unwrap_or(usize::MAX);
        match log {
            Log::RoomHistory => (
                self.limits.history_max_msgs,
                self.limits.history_max_age,
                size(self.limits.history_max_bytes),
                usize::MAX,
            ),
            Log::CallHistory => (
                self.limits.call_history_max,
                self.limits.call_history_max_age,
                size(self.limits.call_history_max_bytes),
                size(self.limits.call_history_max_records),
            ),
        }
    }

    /// Run `f` on `key`'s log (trimmed to its bounds) and the log's state.
    fn with_log<R>(&self, log: Log, key: &str, f: impl FnOnce(&mut LogState, &str) -> R) -> R {
        let (max_msgs, max_age, _, _) = self.log_bounds(log);
        let mut logs = lock(&self.logs);
        let state = logs.entry(log).or_insert_with(|| LogState { next: 1, sweep_at: 1024, ..LogState::default() });
        state.trim_key(key, max_msgs, max_age);
        f(state, key)
    }

    /// Number of live subscriptions on `subject` (exact pattern), for tests.
    pub fn subscription_count(&self, pattern: &str) -> usize {
        lock(&self.subs).count(pattern)
    }

    /// The retained entries of `key` after `after`.
    fn entries_after(state: &LogState, key: &str, after: u64) -> Vec<LogEntry> {
        state.keys.get(key).map_or_else(Vec::new, |k| {
            k.entries
                .iter()
                .filter(|(seq, _, _)| *seq > after)
                .map(|(seq, _, payload)| LogEntry { seq: *seq, payload: payload.clone() })
                .collect()
        })
    }
}

impl Bus for LocalBus {
    fn publish(&self, subject: String, payload: Bytes) -> BoxFuture<'_, Result<(), BusError>> {
        async move {
            let targets = self.subs.lock().unwrap_or_else(|e| e.into_inner()).matching(&subject);
            for tx in targets {
                // Like a NATS slow consumer, a full subscriber loses the message rather
                // than stalling the publisher.
                let _ = tx.try_send(BusMessage { subject: subject.clone(), payload: payload.clone(), reply: None });
            }
            Ok(())
        }
        .boxed()
    }

    fn subscribe(&self, subject: String) -> BoxFuture<'_, Result<Subscription, BusError>> {
        async move {
            let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
            self.subs.lock().unwrap_or_else(|e| e.into_inner()).add(subject, tx);
            Ok(tokio_stream_from(rx))
        }
        .boxed()
    }

    fn queue_subscribe(&self, subject: String, _group: String) -> BoxFuture<'_, Result<Subscription, BusError>> {
        // One process is one node: each queue group has a single member here.
        self.subscribe(subject)
    }

    fn request(&self, subject: String, payload: Bytes, timeout: Duration) -> BoxFuture<'_, Result<Bytes, BusError>> {
        async move {
            let targets = lock(&self.subs).matching(&subject);
            if targets.is_empty() {
                return Err(BusError::NoResponders);
            }
            let inbox = format!("_INBOX.{}", crate::ids::random_id(16));
            let mut replies = self.subscribe(inbox.clone()).await?;
            for tx in targets {
                let msg = BusMessage { subject: subject.clone(), payload: payload.clone(), reply: Some(inbox.clone()) };
                let _ = tx.try_send(msg);
            }
            match tokio::time::timeout(timeout, replies.next()).await {
                Ok(Some(reply)) => Ok(reply.payload),
                Ok(None) => Err(BusError::Other("reply subscription closed".into())),
                Err(_) => Err(BusError::Unavailable(format!("request on {subject} timed out"))),
            }
        }
        .boxed()
    }

    fn kv_get(&self, bucket: Bucket, key: &str) -> BoxFuture<'_, Result<Option<KvEntry>, BusError>> {
        let entry = lock(&self.kv).get(bucket, key, &self.limits).cloned();
        async move { Ok(entry) }.boxed()
    }

    fn kv_create(&self, bucket: Bucket, key: &str, value: Bytes) -> BoxFuture<'_, Result<u64, BusError>> {
        let mut kv = lock(&self.kv);
        let r = if kv.get(bucket, key, &self.limits).is_some() {
            Err(BusError::Conflict(format!("key {key} exists")))
        } else {
            kv.sweep(&self.limits);
            kv.entries.insert((bucket, key.to_owned()), (KvEntry { value, revision: 1 }, Instant::now()));
            Ok(1)
        };
        async move { r }.boxed()
    }

    fn kv_keys(&self, bucket: Bucket) -> BoxFuture<'_, Result<Vec<String>, BusError>> {
        let kv = lock(&self.kv);
        let keys = kv
            .entries
            .iter()
            .filter(|((b, _), (_, at))| *b == bucket && !kv.expired(bucket, *at, &self.limits))
            .map(|((_, k), _)| k.clone())
            .collect();
        async move { Ok(keys) }.boxed()
    }

    fn kv_put(&self, bucket: Bucket, key: &str, value: Bytes) -> BoxFuture<'_, Result<u64, BusError>> {
        let mut kv = lock(&self.kv);
        let revision = kv.get(bucket, key, &self.limits).map_or(0, |e| e.revision) + 1;
        kv.sweep(&self.limits);
        kv.entries.insert((bucket, key.to_owned()), (KvEntry { value, revision }, Instant::now()));
        async move { Ok(revision) }.boxed()
    }

    fn kv_purge(&self, bucket: Bucket, key: &str) -> BoxFuture<'_, Result<(), BusError>> {
        lock(&self.kv).entries.remove(&(bucket, key.to_owned()));
        async { Ok(()) }.boxed()
    }

    fn kv_purge_if(&self, bucket: Bucket, key: &str, revision: u64) -> BoxFuture<'_, Result<(), BusError>> {
        let mut kv = lock(&self.kv);
        let r = match kv.get(bucket, key, &self.limits) {
            Some(e) if e.revision == revision => {
                kv.entries.remove(&(bucket, key.to_owned()));
                Ok(())
            }
            _ => Err(BusError::Conflict(format!("key {key} is not at revision {revision}"))),
        };
        async move { r }.boxed()
    }

    fn kv_update(
        &self,
        bucket: Bucket,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> BoxFuture<'_, Result<u64, BusError>> {
        let mut kv = lock(&self.kv);
        let r = match kv.get(bucket, key, &self.limits) {
            Some(e) if e.revision == revision => {
                let entry = KvEntry { value, revision: revision + 1 };
                kv.entries.insert((bucket, key.to_owned()), (entry, Instant::now()));
                Ok(revision + 1)
            }
            _ => Err(BusError::Conflict(format!("key {key} is not at revision {revision}"))),
        };
        async move { r }.boxed()
    }

    fn log_append(
        &self,
        log: Log,
        key: &str,
        payload: Bytes,
        _dedupe_id: Option<String>,
    ) -> BoxFuture<'_, Result<LogAck, BusError>> {
        let (max_msgs, max_age, max_bytes, max_entries) = self.log_bounds(log);
        let seq = self.with_log(log, key, |state, key| {
            let seq = state.next;
            state.next += 1;
            state.bytes += payload.len();
            state.index.insert(seq, key.to_owned());
            state.sweep();
            let key_log = state.keys.entry(key.to_owned()).or_default();
            key_log.entries.push_back((seq, Instant::now(), payload.clone()));
            // A follower that fell this far behind is cut off; it re-follows from its seq.
            key_log.followers.retain(|tx| tx.try_send(Ok(LogEntry { seq, payload: payload.clone() })).is_ok());
            state.trim_key(key, max_msgs, max_age);
            state.trim_total(max_bytes, max_entries);
            seq
        });
        let ack: LogAck = async move { Ok(seq) }.boxed();
        async move { Ok(ack) }.boxed()
    }

    fn log_last(&self, log: Log, key: &str) -> BoxFuture<'_, Result<u64, BusError>> {
        let last = self.with_log(log, key, |state, key| state.keys.get(key).map_or(0, KeyLog::last));
        async move { Ok(last) }.boxed()
    }

    fn log_contains(&self, log: Log, key: &str, seq: u64) -> BoxFuture<'_, Result<bool, BusError>> {
        let found = self.with_log(log, key, |state, key| {
            state.keys.get(key).is_some_and(|k| k.entries.iter().any(|(s, _, _)| *s == seq))
        });
        async move { Ok(found) }.boxed()
    }

    fn log_read(
        &self,
        log: Log,
        key: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<LogEntry>, BusError>> {
        let mut entries = self.with_log(log, key, |state, key| Self::entries_after(state, key, after));
        entries.truncate(limit);
        async move { Ok(entries) }.boxed()
    }

    fn log_follow(&self, log: Log, key: &str, after: u64) -> BoxFuture<'_, Result<LogStream, BusError>> {
        let (retained, mut rx) = self.with_log(log, key, |state, key| {
            let retained: Vec<Result<LogEntry, BusError>> =
                Self::entries_after(state, key, after).into_iter().map(Ok).collect();
            let (tx, rx) = mpsc::channel(FOLLOWER_BUFFER);
            state.sweep();
            let key_log = state.keys.entry(key.to_owned()).or_default();
            key_log.followers.retain(|tx| !tx.is_closed());
            key_log.followers.push(tx);
            (retained, rx)
        });
        let live = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        async move { Ok(futures_util::stream::iter(retained).chain(live).boxed()) }.boxed()
    }

    fn log_usage(&self, log: Log) -> BoxFuture<'_, Result<LogUsage, BusError>> {
        let usage = lock(&self.logs).get(&log).map_or_else(LogUsage::default, |state| LogUsage {
            entries: state.index.len() as u64,
            bytes: state.bytes as u64,
            keys: state.keys.values().filter(|k| !k.entries.is_empty()).count() as u64,
        });
        async move { Ok(usage) }.boxed()
    }

    fn presence_put(&self, room: &str, participant: &Participant) -> BoxFuture<'_, Result<(), BusError>> {
        let mut map = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(room.to_owned()).or_default().insert(participant.session.clone(), participant.clone());
        async { Ok(()) }.boxed()
    }

    fn presence_remove(&self, room: &str, session: &str) -> BoxFuture<'_, Result<(), BusError>> {
        let mut map = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = map.get_mut(room) {
            r.remove(session);
            if r.is_empty() {
                map.remove(room);
            }
        }
        async { Ok(()) }.boxed()
    }

    fn presence_list(&self, room: &str) -> BoxFuture<'_, Result<Vec<Participant>, BusError>> {
        let map = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        let list = map.get(room).map(|r| r.values().cloned().collect()).unwrap_or_default();
        async move { Ok(list) }.boxed()
    }

    fn presence_of_node(&self, node: &str) -> BoxFuture<'_, Result<super::PresenceScan, BusError>> {
        let map = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        let records = map
            .iter()
            .flat_map(|(room, members)| members.values().map(move |p| (room.clone(), p.clone())))
            .filter(|(_, p)| p.node == node)
            .collect();
        let scanned = map.values().map(|m| m.len()).sum();
        async move { Ok(super::PresenceScan { records, scanned }) }.boxed()
    }

    fn presence_rooms(&self) -> BoxFuture<'_, Result<std::collections::BTreeMap<String, usize>, BusError>> {
        let map = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        let rooms = map.iter().map(|(room, members)| (room.clone(), members.len())).collect();
        async move { Ok(rooms) }.boxed()
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), BusError>> {
        async { Ok(()) }.boxed()
    }

    fn is_connected(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "local"
    }
}

fn tokio_stream_from(mut rx: mpsc::Receiver<BusMessage>) -> Subscription {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wildcard_delivery_and_unsubscribe_on_drop() {
        let bus = LocalBus::new();
        let mut sub = bus.subscribe("sb.room.a.>".into()).await.unwrap();
        bus.publish("sb.room.a.msg".into(), Bytes::from_static(b"1")).await.unwrap();
        bus.publish("sb.room.b.msg".into(), Bytes::from_static(b"2")).await.unwrap();
        let mut hb = bus.subscribe("sb.node.*.heartbeat".into()).await.unwrap();
        bus.publish("sb.node.n1.heartbeat".into(), Bytes::from_static(b"3")).await.unwrap();
        assert_eq!(&hb.next().await.unwrap().payload[..], b"3");
        let m = sub.next().await.unwrap();
        assert_eq!((m.subject.as_str(), &m.payload[..]), ("sb.room.a.msg", &b"1"[..]));
        assert_eq!(bus.subscription_count("sb.room.a.>"), 1);
        drop(sub);
        assert_eq!(bus.subscription_count("sb.room.a.>"), 0);
    }

    #[tokio::test]
    async fn call_history_is_bounded_in_all_oldest_first() {
        let limits = StoreLimits { call_history_max_records: 5, call_history_max_bytes: 40, ..StoreLimits::default() };
        let bus = LocalBus::with_limits(limits);
        for i in 0..20u8 {
            let ack =
                bus.log_append(Log::CallHistory, &format!("user{i}"), Bytes::from(vec![i; 4]), None).await.unwrap();
            ack.await.unwrap();
        }
        let usage = bus.log_usage(Log::CallHistory).await.unwrap();
        assert_eq!((usage.entries, usage.bytes, usage.keys), (5, 20, 5), "the record bound holds");
        assert!(bus.log_read(Log::CallHistory, "user14", 0, 10).await.unwrap().is_empty(), "oldest dropped");
        assert_eq!(bus.log_read(Log::CallHistory, "user15", 0, 10).await.unwrap().len(), 1);
        // Big records: the byte bound holds.
        for i in 0..3u8 {
            bus.log_append(Log::CallHistory, "big", Bytes::from(vec![i; 15]), None).await.unwrap().await.unwrap();
        }
        let usage = bus.log_usage(Log::CallHistory).await.unwrap();
        assert!(usage.bytes <= 40, "{usage:?}");
        let big = bus.log_read(Log::CallHistory, "big", 0, 10).await.unwrap();
        assert_eq!(big.iter().map(|e| e.payload[0]).collect::<Vec<_>>(), [1, 2], "the newest kept");
    }

    #[tokio::test(start_paused = true)]
    async fn call_state_expires_and_purges() {
        let limits = StoreLimits { call_state_ttl: Duration::from_secs(60), ..StoreLimits::default() };
        let bus = LocalBus::with_limits(limits);
        bus.kv_create(Bucket::Calls, "c1", Bytes::from_static(b"x")).await.unwrap();
        bus.kv_create(Bucket::Calls, "c2", Bytes::from_static(b"x")).await.unwrap();
        bus.kv_create(Bucket::Users, "u", Bytes::from_static(b"x")).await.unwrap();
        bus.kv_purge(Bucket::Calls, "c2").await.unwrap();
        assert!(bus.kv_get(Bucket::Calls, "c2").await.unwrap().is_none());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(bus.kv_get(Bucket::Calls, "c1").await.unwrap().is_none(), "expired like the bucket's max_age");
        assert!(bus.kv_keys(Bucket::Calls).await.unwrap().is_empty());
        assert!(bus.kv_get(Bucket::Users, "u").await.unwrap().is_some(), "other buckets do not expire");
        // An expired key can be created again.
        assert_eq!(bus.kv_create(Bucket::Calls, "c1", Bytes::from_static(b"y")).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn rooms_that_went_leave_no_log_keys_behind() {
        let bus = LocalBus::new();
        for i in 0..3000 {
            drop(bus.log_follow(Log::RoomHistory, &format!("room{i}"), 0).await.unwrap());
        }
        let kept = bus.log_append(Log::RoomHistory, "busy", Bytes::from_static(b"m"), None).await.unwrap();
        assert_eq!(kept.await.unwrap(), 1);
        let keys = lock(&bus.logs)[&Log::RoomHistory].keys.len();
        assert!(keys < 2100, "{keys} keys kept for 3,001 rooms of which one has history");
        assert_eq!(bus.log_read(Log::RoomHistory, "busy", 0, 10).await.unwrap().len(), 1);
    }
}

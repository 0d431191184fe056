//! The cluster bus: how nodes reach each other, and where cluster-wide state lives.
//!
//! [`NatsBus`] connects to a NATS cluster (core pub/sub and request/reply for traffic,
//! JetStream key-value buckets for presence, calls and accounts, JetStream streams for room
//! and call history); [`LocalBus`] is the in-process implementation with the same
//! semantics, used by the embedded single-node default and by unit tests.

mod consumers;
mod jetstream_open;
mod jetstream_ready;
mod local;
mod nats;
mod work;

pub use local::LocalBus;
pub use nats::{NatsBus, NatsOptions};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use switchboard_protocol::pb::Participant;

/// A message received from a subscription.
#[derive(Debug, Clone)]
pub struct BusMessage {
    /// The concrete subject it was published on.
    pub subject: String,
    /// The payload (an encoded `BusEnvelope`, or a request body).
    pub payload: Bytes,
    /// Where to send the reply, for a request.
    pub reply: Option<String>,
}

/// Key-value buckets (JetStream KV `<prefix>_<name>`; maps in the embedded bus).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// Call state, key = call id.
    Calls,
    /// Built-in accounts, key = user id.
    Users,
    /// Operator bans, key = user id, value = end of the ban (Unix ms, decimal).
    Bans,
    /// Seats of capped rooms, key = room id, value = JSON map session → node.
    Seats,
    /// Running rooms (for webhooks), key = room id, value = start (Unix ms, decimal).
    Rooms,
    /// Webhook events waiting for delivery, key = endpoint and event id.
    Webhooks,
}

impl Bucket {
    /// The bucket's name suffix.
    pub fn name(self) -> &'static str {
        match self {
            Bucket::Calls => "calls",
            Bucket::Users => "users",
            Bucket::Bans => "bans",
            Bucket::Seats => "seats",
            Bucket::Rooms => "rooms",
            Bucket::Webhooks => "webhooks",
        }
    }
}

/// Keys of [`Bucket::Rooms`] not refreshed for this long are forgotten (nodes hosting a
/// room refresh its key well within it).
pub const ROOMS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A key-value entry with its revision (for compare-and-set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// The value.
    pub value: Bytes,
    /// Its revision; pass it to [`Bus::kv_update`].
    pub revision: u64,
}

/// One change of a key-value entry, taken from a work queue shared by every node
/// ([`Bus::kv_work`]). Finish it with [`KvChange::done`], or hand it back with
/// [`KvChange::again_in`]; dropped without either, it goes to another node after a while.
pub struct KvChange {
    /// The key.
    pub key: String,
    /// The value written; `None` when the key was deleted or purged.
    pub value: Option<Bytes>,
    /// The revision this change made.
    pub revision: u64,
    reply: ChangeReply,
}

/// Answers the work queue for one change: done (`None`), or again after a delay.
type ChangeReply =
    Box<dyn FnOnce(Option<std::time::Duration>) -> BoxFuture<'static, Result<(), BusError>> + Send + Sync>;

impl KvChange {
    /// The change is handled: no node gets it again.
    pub async fn done(self) -> Result<(), BusError> {
        (self.reply)(None).await
    }

    /// Deliver the change again (to any node) after `delay`.
    pub async fn again_in(self, delay: std::time::Duration) -> Result<(), BusError> {
        (self.reply)(Some(delay)).await
    }
}

impl std::fmt::Debug for KvChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvChange").field("key", &self.key).field("revision", &self.revision).finish_non_exhaustive()
    }
}

/// A bucket's changes as a shared work queue; ends (or yields an error) when the bus
/// failed: follow it again.
pub type KvWork = BoxStream<'static, Result<KvChange, BusError>>;

/// Append-only logs, keyed (JetStream stream `<prefix>_<name>` with one subject per key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Log {
    /// Reliable room messages, key = room id.
    RoomHistory,
    /// Call records, key = user id (one record per party).
    CallHistory,
}

impl Log {
    /// The log's name suffix (stream name and subject token).
    pub fn name(self) -> &'static str {
        match self {
            Log::RoomHistory => "history",
            Log::CallHistory => "callhist",
        }
    }
}

/// One log entry: its sequence (increasing within the log, shared by all keys) and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Position in the log.
    pub seq: u64,
    /// The payload.
    pub payload: Bytes,
}

/// What a log holds right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogUsage {
    /// Entries retained.
    pub entries: u64,
    /// Bytes retained (payloads; JetStream also counts its per-message overhead).
    pub bytes: u64,
    /// Keys with at least one entry retained.
    pub keys: u64,
}

/// Resolves with an appended entry's sequence once the log stored it.
pub type LogAck = BoxFuture<'static, Result<u64, BusError>>;

/// A followed log key: retained entries, then live ones, in order. Ends (or yields an
/// error) when the follower fell behind or the bus failed; re-follow from the last seq seen.
pub type LogStream = BoxStream<'static, Result<LogEntry, BusError>>;

/// Retention of the logs and key-value buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreLimits {
    /// Reliable messages kept per room; 0 turns room history off.
    pub history_max_msgs: i64,
    /// Age after which room messages are dropped.
    pub history_max_age: std::time::Duration,
    /// Bytes of room history kept in all (oldest dropped first).
    pub history_max_bytes: i64,
    /// Keep room history in the NATS servers' memory instead of on disk: faster, lost
    /// when a server restarts (replicas still cover one server's loss).
    pub history_in_memory: bool,
    /// Call records kept per user.
    pub call_history_max: i64,
    /// Age after which call records are dropped.
    pub call_history_max_age: std::time::Duration,
    /// Bytes of call history kept in all (oldest records dropped first).
    pub call_history_max_bytes: i64,
    /// Call records kept in all, every user together (oldest dropped first). Also bounds
    /// the number of users with a history: each holds at least one record.
    pub call_history_max_records: i64,
    /// Age after which a call's live state is forgotten.
    pub call_state_ttl: std::time::Duration,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            history_max_msgs: 1000,
            history_max_age: std::time::Duration::from_secs(24 * 3600),
            history_max_bytes: 256 << 20,
            history_in_memory: false,
            call_history_max: 1000,
            call_history_max_age: std::time::Duration::from_secs(90 * 24 * 3600),
            call_history_max_bytes: 64 << 20,
            call_history_max_records: 100_000,
            call_state_ttl: std::time::Duration::from_secs(24 * 3600),
        }
    }
}

/// A node's presence records, from one pass over the presence store
/// ([`Bus::presence_of_node`]).
#[derive(Debug, Clone, Default)]
pub struct PresenceScan {
    /// The node's records, as `(room, participant)`.
    pub records: Vec<(String, Participant)>,
    /// Records read in all (every node's): what the pass cost.
    pub scanned: usize,
}

/// A live subscription; dropping it unsubscribes.
pub type Subscription = BoxStream<'static, BusMessage>;

/// Bus failures.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Not connected to the bus right now.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// A compare-and-set lost: the key exists, or its revision is not the expected one.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A request found no subscriber.
    #[error("no responders")]
    NoResponders,
    /// Any other failure.
    #[error("bus error: {0}")]
    Other(String),
}

/// What a node needs from the cluster bus.
pub trait Bus: Send + Sync + 'static {
    /// Publish `payload` on `subject` (fire and forget, ordered per publisher).
    fn publish(&self, subject: String, payload: Bytes) -> BoxFuture<'_, Result<(), BusError>>;
    /// Subscribe to `subject` (NATS wildcards allowed).
    fn subscribe(&self, subject: String) -> BoxFuture<'_, Result<Subscription, BusError>>;
    /// Subscribe as a member of a queue group: each message goes to one member.
    fn queue_subscribe(&self, subject: String, group: String) -> BoxFuture<'_, Result<Subscription, BusError>>;
    /// Send a request and wait for the first reply ([`BusError::NoResponders`] at once if
    /// nobody subscribes to `subject`).
    fn request(
        &self,
        subject: String,
        payload: Bytes,
        timeout: std::time::Duration,
    ) -> BoxFuture<'_, Result<Bytes, BusError>>;
    /// The entry under `key`, if any.
    fn kv_get(&self, bucket: Bucket, key: &str) -> BoxFuture<'_, Result<Option<KvEntry>, BusError>>;
    /// Create `key`; [`BusError::Conflict`] if it exists. Returns the revision.
    fn kv_create(&self, bucket: Bucket, key: &str, value: Bytes) -> BoxFuture<'_, Result<u64, BusError>>;
    /// Every key of the bucket (for small buckets).
    fn kv_keys(&self, bucket: Bucket) -> BoxFuture<'_, Result<Vec<String>, BusError>>;
    /// Set `key` whatever its revision. Returns the new revision.
    fn kv_put(&self, bucket: Bucket, key: &str, value: Bytes) -> BoxFuture<'_, Result<u64, BusError>>;
    /// Forget `key` without a trace (no tombstone); idempotent.
    fn kv_purge(&self, bucket: Bucket, key: &str) -> BoxFuture<'_, Result<(), BusError>>;
    /// Remove `key` if its revision is still `revision`; else [`BusError::Conflict`].
    fn kv_purge_if(&self, bucket: Bucket, key: &str, revision: u64) -> BoxFuture<'_, Result<(), BusError>>;
    /// Replace `key` if its revision is still `revision`; else [`BusError::Conflict`].
    fn kv_update(&self, bucket: Bucket, key: &str, value: Bytes, revision: u64)
        -> BoxFuture<'_, Result<u64, BusError>>;
    /// The changes of `bucket`'s entries as a work queue named `group`, shared by every
    /// node that follows it: each change goes to one of them, and again (to any) until it is
    /// [`KvChange::done`], so a change a node took when it died is handled by another.
    /// Changes written before the queue first existed are not in it. `None` where no other
    /// node can take over work (the in-process bus dies with its node).
    fn kv_work(&self, _bucket: Bucket, _group: &str) -> BoxFuture<'_, Result<Option<KvWork>, BusError>> {
        Box::pin(async { Ok(None) })
    }
    /// Append to `key`'s log. Resolves once the entry is handed to the bus (appends made
    /// one after the other keep their order); the returned [`LogAck`] resolves with the
    /// entry's sequence once it is stored, so a caller can have many appends in flight.
    /// Appends with the same `dedupe_id` within two minutes are stored once (a retry after
    /// an unclear failure gets the first one's sequence); the embedded bus, which has no
    /// unclear failures, ignores it.
    fn log_append(
        &self,
        log: Log,
        key: &str,
        payload: Bytes,
        dedupe_id: Option<String>,
    ) -> BoxFuture<'_, Result<LogAck, BusError>>;
    /// The sequence of `key`'s last retained entry (0 if none).
    fn log_last(&self, log: Log, key: &str) -> BoxFuture<'_, Result<u64, BusError>>;
    /// Whether `key`'s entry `seq` is still retained.
    fn log_contains(&self, log: Log, key: &str, seq: u64) -> BoxFuture<'_, Result<bool, BusError>>;
    /// Up to `limit` retained entries of `key` after `after`, oldest first.
    fn log_read(&self, log: Log, key: &str, after: u64, limit: usize)
        -> BoxFuture<'_, Result<Vec<LogEntry>, BusError>>;
    /// Follow `key`: its retained entries after `after`, then live ones.
    fn log_follow(&self, log: Log, key: &str, after: u64) -> BoxFuture<'_, Result<LogStream, BusError>>;
    /// How much `log` holds (for metrics).
    fn log_usage(&self, log: Log) -> BoxFuture<'_, Result<LogUsage, BusError>>;
    /// Record `participant` as present in `room`, cluster-wide.
    fn presence_put(&self, room: &str, participant: &Participant) -> BoxFuture<'_, Result<(), BusError>>;
    /// Remove a session's presence record in `room` (idempotent).
    fn presence_remove(&self, room: &str, session: &str) -> BoxFuture<'_, Result<(), BusError>>;
    /// Everyone recorded as present in `room`, cluster-wide.
    fn presence_list(&self, room: &str) -> BoxFuture<'_, Result<Vec<Participant>, BusError>>;
    /// Every presence record of `node`'s participants, for the node's own audit of the
    /// store. The store is read whole (records are keyed by room and session, not by node)
    /// and filtered here: the cost is one pass over every record cluster-wide.
    fn presence_of_node(&self, node: &str) -> BoxFuture<'_, Result<PresenceScan, BusError>>;
    /// Every room with presence records, with its participant count.
    fn presence_rooms(&self) -> BoxFuture<'_, Result<std::collections::BTreeMap<String, usize>, BusError>>;
    /// Flush published messages to the bus.
    fn flush(&self) -> BoxFuture<'_, Result<(), BusError>>;
    /// A counter that increases each time the bus (re)connects; `None` if it never
    /// disconnects (in-process). After a reconnect the node restores its presence records.
    fn connection_epochs(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    /// Make sure the presence, call and account buckets and the history logs exist (they
    /// may have been lost with the broker).
    fn ensure_stores(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async { Ok(()) })
    }
    /// Whether the bus is connected (readiness).
    fn is_connected(&self) -> bool;
    /// `nats` or `local`.
    fn kind(&self) -> &'static str;
}

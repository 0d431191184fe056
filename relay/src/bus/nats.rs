//! The NATS bus: core pub/sub and request/reply for traffic, JetStream key-value buckets
//! for presence, calls and accounts, JetStream streams for room and call history.

use super::consumers::{create_consumer, DeleteOnDrop};
use super::jetstream_open::{open_bucket, open_log};
use super::{
    Bucket, Bus, BusError, BusMessage, KvEntry, KvWork, Log, LogAck, LogEntry, LogStream, LogUsage, StoreLimits,
    Subscription,
};
use async_nats::jetstream::{self, consumer::push, consumer::DeliverPolicy, kv};
use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::StreamExt;
use prost::Message as _;
use std::time::Duration;
use switchboard_protocol::pb::Participant;

/// Webhook events older than this are forgotten (the longest `--webhook-retry-for`, plus
/// margin).
const WEBHOOKS_MAX_AGE: Duration = Duration::from_secs(25 * 3600);
/// Bytes of webhook events waiting in all; when full, new events are dropped (counted).
const WEBHOOKS_MAX_BYTES: i64 = 256 << 20;

/// How a node connects to NATS.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Server URL(s), comma separated: `nats://127.0.0.1:4222,nats://...`.
    pub url: String,
    /// Connection name shown in the server's monitoring (`/connz`).
    pub name: String,
    /// Subject prefix; also names the presence bucket (`<prefix>_presence`, dots as `_`).
    pub prefix: String,
    /// Replicas of the presence bucket (1 for a single server, 3 for a 3-node cluster).
    pub replicas: usize,
    /// Optional credentials file (`.creds`).
    pub credentials_file: Option<std::path::PathBuf>,
    /// Retention of history and call state.
    pub limits: StoreLimits,
    /// How often the client pings the server; three unanswered pings in a row count as a
    /// lost connection (a silent network partition is noticed within about 3× this).
    pub ping_interval: Duration,
    /// How long [`NatsBus::connect`] waits for JetStream to answer before it creates its
    /// streams (a fresh NATS cluster first elects its meta leader).
    pub jetstream_timeout: Duration,
}

/// NATS implementation of [`Bus`].
pub struct NatsBus {
    client: async_nats::Client,
    js: jetstream::Context,
    presence: kv::Store,
    /// Every bucket and stream, to re-create them after the broker lost them.
    bucket_configs: Vec<kv::Config>,
    stream_configs: Vec<jetstream::stream::Config>,
    calls: kv::Store,
    users: kv::Store,
    bans: kv::Store,
    seats: kv::Store,
    rooms: kv::Store,
    webhooks: kv::Store,
    room_history: jetstream::stream::Stream,
    call_history: jetstream::stream::Stream,
    prefix: String,
    epochs: tokio::sync::watch::Receiver<u64>,
}

/// A log stream's configuration: one subject per key under `<prefix>.<log>.`, bounded per
/// key, by age, by bytes and by messages in all (-1: unbounded), oldest dropped first.
fn log_config(
    prefix: &str,
    log: Log,
    (max_per_key, max_age, max_bytes, max_messages): (i64, Duration, i64, i64),
    storage: jetstream::stream::StorageType,
    replicas: usize,
) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: format!("{}_{}", prefix.replace('.', "_"), log.name()),
        subjects: vec![format!("{prefix}.{}.*", log.name())],
        max_messages_per_subject: max_per_key.max(1),
        max_age,
        max_bytes,
        max_messages,
        storage,
        num_replicas: replicas,
        discard: jetstream::stream::DiscardPolicy::Old,
        allow_direct: true,
        ..Default::default()
    }
}

/// What the NATS client says when no server answers for a JetStream stream: a publish
/// (`no stream found for given subject`) or a direct get (`requested JetStream resource
/// does not exist`) found nobody subscribed. The streams exist (every bucket is replicated
/// on every server with `--nats-replicas 3`); this is a stream without a leader on this
/// node's side: one being elected after its leader's server or route was lost, or a
/// minority side of a split that cannot elect one.
const NO_LEADER: [&str; 2] = ["no stream found for given subject", "requested JetStream resource does not exist"];

/// A JetStream failure as a bus error: [`BusError::Unavailable`] with what it means when
/// the stream has no leader ([`NO_LEADER`]; the error kinds differ per operation, their
/// text carries the cause), else [`BusError::Other`].
fn other(e: impl std::fmt::Display) -> BusError {
    let text = e.to_string();
    if NO_LEADER.iter().any(|m| text.contains(m)) {
        return BusError::Unavailable(format!(
            "{text}: JetStream has no leader for this store on this side right now (electing one after a NATS \
             server or route was lost, or no quorum in a split); retry"
        ));
    }
    BusError::Other(text)
}

impl NatsBus {
    /// Connect (retrying until the first connection succeeds is left to the caller) and
    /// make sure the presence bucket exists.
    pub async fn connect(opts: &NatsOptions) -> Result<Self, BusError> {
        let (epoch_tx, epochs) = tokio::sync::watch::channel(0u64);
        let epoch_tx = std::sync::Arc::new(epoch_tx);
        let mut connect = async_nats::ConnectOptions::new()
            .name(&opts.name)
            .connection_timeout(Duration::from_secs(5))
            .ping_interval(opts.ping_interval)
            // Keep reconnecting forever: a node without NATS is unready, not dead.
            .max_reconnects(None)
            .subscription_capacity(8192)
            .event_callback(move |event| {
                let epoch_tx = epoch_tx.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("connected to NATS");
                            epoch_tx.send_modify(|e| *e += 1);
                        }
                        async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS"),
                        other => tracing::debug!(?other, "NATS event"),
                    }
                }
            });
        if let Some(path) = &opts.credentials_file {
            connect = connect.credentials_file(path).await.map_err(other)?;
        }
        let urls: Vec<&str> = opts.url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        let client = connect
            .connect(urls.as_slice())
            .await
            .map_err(|e| BusError::Unavailable(format!("cannot connect to NATS at {}: {e}", opts.url)))?;
        let js = jetstream::new(client.clone());
        super::jetstream_ready::wait(&js, opts.jetstream_timeout).await?;
        let name = opts.prefix.replace('.', "_");
        let replicas = opts.replicas.max(1);
        let config = kv::Config {
            bucket: format!("{name}_presence"),
            description: "Switchboard room presence (one key per room and session)".into(),
            history: 1,
            storage: presence_storage(replicas),
            num_replicas: replicas,
            ..Default::default()
        };
        let presence = open_bucket(&js, config.clone()).await?;
        let calls_config = kv::Config {
            bucket: format!("{name}_{}", Bucket::Calls.name()),
            description: "Switchboard call state (key = call id)".into(),
            history: 1,
            max_age: opts.limits.call_state_ttl,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        };
        let calls = open_bucket(&js, calls_config.clone()).await?;
        let users_config = kv::Config {
            bucket: format!("{name}_{}", Bucket::Users.name()),
            description: "Switchboard built-in accounts (key = user id)".into(),
            history: 1,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        };
        let users = open_bucket(&js, users_config.clone()).await?;
        let bans_config = kv::Config {
            bucket: format!("{name}_{}", Bucket::Bans.name()),
            description: "Switchboard operator bans (key = user id, value = end, Unix ms)".into(),
            history: 1,
            max_age: Duration::from_secs(30 * 86_400),
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        };
        let bans = open_bucket(&js, bans_config.clone()).await?;
        let seats_config = kv::Config {
            bucket: format!("{name}_{}", Bucket::Seats.name()),
            description: "Switchboard seats of capped rooms (key = room id)".into(),
            history: 1,
            storage: jetstream::stream::StorageType::Memory,
            num_replicas: replicas,
            ..Default::default()
        };
        let seats = open_bucket(&js, seats_config.clone()).await?;
        let rooms_config = kv::Config {
            bucket: format!("{name}_{}", Bucket::Rooms.name()),
            description: "Switchboard running rooms, for webhooks (key = room id, value = start, Unix ms)".into(),
            history: 1,
            // Nodes hosting a room refresh its key (`webhooks::refresh_rooms`); this bounds
            // the keys of rooms whose every participant was on a node that died.
            max_age: super::ROOMS_MAX_AGE,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        };
        let rooms = open_bucket(&js, rooms_config.clone()).await?;
        let webhooks_config = kv::Config {
            bucket: format!("{name}_{}", Bucket::Webhooks.name()),
            description: "Switchboard webhook events waiting for delivery (key = endpoint.event)".into(),
            history: 1,
            max_age: WEBHOOKS_MAX_AGE,
            max_bytes: WEBHOOKS_MAX_BYTES,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        };
        let webhooks = open_bucket(&js, webhooks_config.clone()).await?;
        let l = &opts.limits;
        let storage = if l.history_in_memory {
            jetstream::stream::StorageType::Memory
        } else {
            jetstream::stream::StorageType::File
        };
        let room_history_config = log_config(
            &opts.prefix,
            Log::RoomHistory,
            (l.history_max_msgs, l.history_max_age, l.history_max_bytes, -1),
            storage,
            replicas,
        );
        let room_history = open_log(&js, room_history_config.clone()).await?;
        let call_history_config = log_config(
            &opts.prefix,
            Log::CallHistory,
            (l.call_history_max, l.call_history_max_age, l.call_history_max_bytes, l.call_history_max_records),
            jetstream::stream::StorageType::File,
            replicas,
        );
        let call_history = open_log(&js, call_history_config.clone()).await?;
        Ok(Self {
            client,
            js,
            presence,
            bucket_configs: vec![
                config,
                calls_config,
                users_config,
                bans_config,
                seats_config,
                rooms_config,
                webhooks_config,
            ],
            stream_configs: vec![room_history_config, call_history_config],
            calls,
            users,
            bans,
            seats,
            rooms,
            webhooks,
            room_history,
            call_history,
            prefix: opts.prefix.clone(),
            epochs,
        })
    }

    fn bucket(&self, bucket: Bucket) -> &kv::Store {
        match bucket {
            Bucket::Calls => &self.calls,
            Bucket::Users => &self.users,
            Bucket::Bans => &self.bans,
            Bucket::Seats => &self.seats,
            Bucket::Rooms => &self.rooms,
            Bucket::Webhooks => &self.webhooks,
        }
    }

    fn stream(&self, log: Log) -> &jetstream::stream::Stream {
        match log {
            Log::RoomHistory => &self.room_history,
            Log::CallHistory => &self.call_history,
        }
    }

    fn log_subject(&self, log: Log, key: &str) -> String {
        format!("{}.{}.{key}", self.prefix, log.name())
    }

    /// An ordered consumer over `key`'s log from `after + 1`.
    async fn log_consumer(
        &self,
        log: Log,
        key: &str,
        after: u64,
    ) -> Result<(jetstream::consumer::Consumer<push::OrderedConfig>, DeleteOnDrop), BusError> {
        let config = push::OrderedConfig {
            deliver_subject: self.client.new_inbox(),
            filter_subject: self.log_subject(log, key),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: after + 1 },
            ..Default::default()
        };
        create_consumer(self.stream(log), config).await
    }

    /// The underlying client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    fn key(room: &str, session: &str) -> String {
        format!("{room}.{session}")
    }
}

/// Where the presence bucket lives. One server: in memory (fast; if the server restarts,
/// every node's connection drops with it and each restores its own records). Replicated:
/// on disk, because a replica that restarts with an empty memory store has also forgotten
/// its Raft log, and once it leads (the next server of a rolling restart stops) the
/// bucket loses the records of nodes whose connection never dropped, which nothing restores.
fn presence_storage(replicas: usize) -> jetstream::stream::StorageType {
    if replicas > 1 {
        jetstream::stream::StorageType::File
    } else {
        jetstream::stream::StorageType::Memory
    }
}

/// The messages an ordered consumer has pending at its creation (at most `limit`): a
/// consistent snapshot of what it covers. Each message must arrive within 5 s.
async fn snapshot(
    consumer: jetstream::consumer::Consumer<push::OrderedConfig>,
    limit: usize,
    what: &str,
) -> Result<Vec<jetstream::Message>, BusError> {
    let mut pending = consumer.cached_info().num_pending.min(limit as u64);
    let mut out = Vec::with_capacity(pending.min(4096) as usize);
    if pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer.messages().await.map_err(other)?;
    while pending > 0 {
        let next = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .map_err(|_| BusError::Unavailable(format!("{what} timed out")))?;
        let Some(msg) = next else { break };
        out.push(msg.map_err(other)?);
        pending -= 1;
    }
    Ok(out)
}

fn nats_message(m: async_nats::Message) -> BusMessage {
    BusMessage { subject: m.subject.to_string(), payload: m.payload, reply: m.reply.map(|r| r.to_string()) }
}

/// Forget `key` of `store` without a trace: a purge of the key's subject in the bucket's
/// stream (a KV delete or purge leaves a marker per key, which every later listing streams).
fn purge_key(store: &kv::Store, key: &str) -> impl std::future::Future<Output = Result<(), BusError>> + Send {
    let (stream, subject) = (store.stream.clone(), format!("{}{key}", store.prefix));
    async move { stream.purge().filter(subject).await.map(|_| ()).map_err(other) }
}

impl Bus for NatsBus {
    fn publish(&self, subject: String, payload: Bytes) -> BoxFuture<'_, Result<(), BusError>> {
        async move { self.client.publish(subject, payload).await.map_err(|e| BusError::Unavailable(e.to_string())) }
            .boxed()
    }

    fn subscribe(&self, subject: String) -> BoxFuture<'_, Result<Subscription, BusError>> {
        async move {
            let sub = self.client.subscribe(subject).await.map_err(|e| BusError::Unavailable(e.to_string()))?;
            Ok(sub.map(nats_message).boxed())
        }
        .boxed()
    }

    fn queue_subscribe(&self, subject: String, group: String) -> BoxFuture<'_, Result<Subscription, BusError>> {
        async move {
            let sub =
                self.client.queue_subscribe(subject, group).await.map_err(|e| BusError::Unavailable(e.to_string()))?;
            Ok(sub.map(nats_message).boxed())
        }
        .boxed()
    }

    fn request(&self, subject: String, payload: Bytes, timeout: Duration) -> BoxFuture<'_, Result<Bytes, BusError>> {
        async move {
            let request = async_nats::Request::new().payload(payload).timeout(Some(timeout));
            match self.client.send_request(subject.clone(), request).await {
                Ok(reply) => Ok(reply.payload),
                Err(e) => Err(match e.kind() {
                    async_nats::RequestErrorKind::NoResponders => BusError::NoResponders,
                    async_nats::RequestErrorKind::TimedOut => {
                        BusError::Unavailable(format!("request on {subject} timed out"))
                    }
                    _ => BusError::Unavailable(e.to_string()),
                }),
            }
        }
        .boxed()
    }

    fn kv_get(&self, bucket: Bucket, key: &str) -> BoxFuture<'_, Result<Option<KvEntry>, BusError>> {
        let key = key.to_owned();
        async move {
            let entry = self.bucket(bucket).entry(key).await.map_err(other)?;
            Ok(entry
                .filter(|e| e.operation == kv::Operation::Put)
                .map(|e| KvEntry { value: e.value, revision: e.revision }))
        }
        .boxed()
    }

    fn kv_create(&self, bucket: Bucket, key: &str, value: Bytes) -> BoxFuture<'_, Result<u64, BusError>> {
        let key = key.to_owned();
        async move {
            self.bucket(bucket).create(&key, value).await.map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => BusError::Conflict(format!("key {key} exists")),
                _ => other(e),
            })
        }
        .boxed()
    }

    fn kv_keys(&self, bucket: Bucket) -> BoxFuture<'_, Result<Vec<String>, BusError>> {
        async move {
            let mut keys = self.bucket(bucket).keys().await.map_err(other)?;
            let mut out = Vec::new();
            while let Some(key) = keys.next().await {
                out.push(key.map_err(other)?);
            }
            Ok(out)
        }
        .boxed()
    }

    fn kv_put(&self, bucket: Bucket, key: &str, value: Bytes) -> BoxFuture<'_, Result<u64, BusError>> {
        let key = key.to_owned();
        async move { self.bucket(bucket).put(key, value).await.map_err(other) }.boxed()
    }

    fn kv_purge(&self, bucket: Bucket, key: &str) -> BoxFuture<'_, Result<(), BusError>> {
        purge_key(self.bucket(bucket), key).boxed()
    }

    fn kv_purge_if(&self, bucket: Bucket, key: &str, revision: u64) -> BoxFuture<'_, Result<(), BusError>> {
        let key = key.to_owned();
        async move {
            self.bucket(bucket).purge_expect_revision(&key, Some(revision)).await.map_err(|e| match e.kind() {
                kv::UpdateErrorKind::WrongLastRevision => {
                    BusError::Conflict(format!("key {key} is not at revision {revision}"))
                }
                _ => other(e),
            })
        }
        .boxed()
    }

    fn kv_update(
        &self,
        bucket: Bucket,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> BoxFuture<'_, Result<u64, BusError>> {
        let key = key.to_owned();
        async move {
            self.bucket(bucket).update(&key, value, revision).await.map_err(|e| match e.kind() {
                kv::UpdateErrorKind::WrongLastRevision => {
                    BusError::Conflict(format!("key {key} is not at revision {revision}"))
                }
                _ => other(e),
            })
        }
        .boxed()
    }

    fn kv_work(&self, bucket: Bucket, group: &str) -> BoxFuture<'_, Result<Option<KvWork>, BusError>> {
        let group = group.to_owned();
        // A webhook POST may take its whole timeout: give it longer before another node
        // takes the event over.
        let ack_wait = match bucket {
            Bucket::Webhooks => super::work::SLOW_ACK_WAIT,
            _ => super::work::ACK_WAIT,
        };
        async move { super::work::follow(self.bucket(bucket), &group, ack_wait).await.map(Some) }.boxed()
    }

    fn log_append(
        &self,
        log: Log,
        key: &str,
        payload: Bytes,
        dedupe_id: Option<String>,
    ) -> BoxFuture<'_, Result<LogAck, BusError>> {
        let subject = self.log_subject(log, key);
        async move {
            let mut headers = async_nats::HeaderMap::new();
            if let Some(id) = dedupe_id {
                headers.insert("Nats-Msg-Id", id.as_str());
            }
            let ack = self
                .js
                .publish_with_headers(subject, headers, payload)
                .await
                .map_err(|e| BusError::Unavailable(e.to_string()))?;
            let ack: LogAck =
                async move { ack.await.map(|a| a.sequence).map_err(|e| BusError::Unavailable(e.to_string())) }.boxed();
            Ok(ack)
        }
        .boxed()
    }

    fn log_last(&self, log: Log, key: &str) -> BoxFuture<'_, Result<u64, BusError>> {
        let subject = self.log_subject(log, key);
        async move {
            match self.stream(log).get_last_raw_message_by_subject(&subject).await {
                Ok(m) => Ok(m.sequence),
                Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
                Err(e) => Err(other(e)),
            }
        }
        .boxed()
    }

    fn log_contains(&self, log: Log, key: &str, seq: u64) -> BoxFuture<'_, Result<bool, BusError>> {
        let subject = self.log_subject(log, key);
        async move {
            if seq == 0 {
                return Ok(false);
            }
            match self.stream(log).get_raw_message(seq).await {
                Ok(m) => Ok(m.subject.as_str() == subject),
                Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => Ok(false),
                Err(e) => Err(other(e)),
            }
        }
        .boxed()
    }

    fn log_read(
        &self,
        log: Log,
        key: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<LogEntry>, BusError>> {
        let key = key.to_owned();
        async move {
            let (consumer, _delete) = self.log_consumer(log, &key, after).await?;
            snapshot(consumer, limit, "history read")
                .await?
                .into_iter()
                .map(|msg| {
                    Ok(LogEntry { seq: msg.info().map_err(other)?.stream_sequence, payload: msg.payload.clone() })
                })
                .collect()
        }
        .boxed()
    }

    fn log_follow(&self, log: Log, key: &str, after: u64) -> BoxFuture<'_, Result<LogStream, BusError>> {
        let key = key.to_owned();
        async move {
            let (consumer, delete) = self.log_consumer(log, &key, after).await?;
            let messages = consumer.messages().await.map_err(other)?;
            Ok(messages
                .map(move |m| {
                    let _owned_until_the_follower_stops = &delete;
                    let msg = m.map_err(other)?;
                    let seq = msg.info().map_err(other)?.stream_sequence;
                    Ok(LogEntry { seq, payload: msg.payload.clone() })
                })
                .boxed())
        }
        .boxed()
    }

    fn log_usage(&self, log: Log) -> BoxFuture<'_, Result<LogUsage, BusError>> {
        let mut stream = self.stream(log).clone();
        async move {
            let state = stream.info().await.map_err(other)?.state.clone();
            Ok(LogUsage { entries: state.messages, bytes: state.bytes, keys: state.subjects_count })
        }
        .boxed()
    }

    fn presence_put(&self, room: &str, participant: &Participant) -> BoxFuture<'_, Result<(), BusError>> {
        let key = Self::key(room, &participant.session);
        let value = Bytes::from(participant.encode_to_vec());
        async move { self.presence.put(key, value).await.map(|_| ()).map_err(other) }.boxed()
    }

    fn presence_remove(&self, room: &str, session: &str) -> BoxFuture<'_, Result<(), BusError>> {
        // Purged, not deleted: session ids are unique, so a busy room would otherwise pile up
        // one tombstone per past visit, all streamed to every later join's snapshot.
        purge_key(&self.presence, &Self::key(room, session)).boxed()
    }

    fn presence_list(&self, room: &str) -> BoxFuture<'_, Result<Vec<Participant>, BusError>> {
        let filter = format!("{}{}.*", self.presence.prefix, room);
        async move {
            // An ordered consumer over the room's keys, last value per key: `num_pending`
            // at creation says how many records make up the snapshot.
            let config = push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                filter_subject: filter,
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            };
            let (consumer, _delete) = create_consumer(&self.presence.stream, config).await?;
            let mut out = Vec::new();
            for msg in snapshot(consumer, usize::MAX, "presence snapshot").await? {
                let deleted =
                    msg.headers.as_ref().and_then(|h| h.get("KV-Operation")).is_some_and(|op| op.as_str() != "PUT");
                if deleted {
                    continue;
                }
                match Participant::decode(msg.payload.clone()) {
                    Ok(p) => out.push(p),
                    Err(e) => tracing::warn!(subject = %msg.subject, error = %e, "skipping bad presence record"),
                }
            }
            Ok(out)
        }
        .boxed()
    }

    fn presence_of_node(&self, node: &str) -> BoxFuture<'_, Result<super::PresenceScan, BusError>> {
        let node = node.to_owned();
        let prefix = self.presence.prefix.clone();
        async move {
            // One ordered consumer over the whole bucket, last value per key: every record
            // crosses the wire once (about 150 bytes each with its subject and reply), and
            // only this node's are kept.
            let config = push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                filter_subject: format!("{prefix}>"),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            };
            let (consumer, _delete) = create_consumer(&self.presence.stream, config).await?;
            let mut pending = consumer.cached_info().num_pending;
            let mut out = super::PresenceScan::default();
            if pending == 0 {
                return Ok(out);
            }
            let mut messages = consumer.messages().await.map_err(other)?;
            while pending > 0 {
                let next = tokio::time::timeout(Duration::from_secs(5), messages.next())
                    .await
                    .map_err(|_| BusError::Unavailable("presence listing timed out".into()))?;
                let Some(msg) = next else { break };
                let msg = msg.map_err(other)?;
                pending -= 1;
                out.scanned += 1;
                let deleted =
                    msg.headers.as_ref().and_then(|h| h.get("KV-Operation")).is_some_and(|op| op.as_str() != "PUT");
                let Some((room, _)) =
                    msg.subject.as_str().strip_prefix(prefix.as_str()).and_then(|k| k.split_once('.'))
                else {
                    continue;
                };
                if deleted {
                    continue;
                }
                match Participant::decode(msg.payload.clone()) {
                    Ok(p) if p.node == node => out.records.push((room.to_owned(), p)),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(subject = %msg.subject, error = %e, "skipping bad presence record"),
                }
            }
            Ok(out)
        }
        .boxed()
    }

    fn presence_rooms(&self) -> BoxFuture<'_, Result<std::collections::BTreeMap<String, usize>, BusError>> {
        async move {
            let mut rooms = std::collections::BTreeMap::new();
            // Keys are `<room>.<session>`; deleted keys are not listed.
            let mut keys = self.presence.keys().await.map_err(other)?;
            while let Some(key) = keys.next().await {
                let key = key.map_err(other)?;
                if let Some((room, _)) = key.split_once('.') {
                    *rooms.entry(room.to_owned()).or_insert(0) += 1;
                }
            }
            Ok(rooms)
        }
        .boxed()
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), BusError>> {
        async move { self.client.flush().await.map_err(other) }.boxed()
    }

    fn connection_epochs(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.epochs.clone())
    }

    fn ensure_stores(&self) -> BoxFuture<'_, Result<(), BusError>> {
        async move {
            for config in &self.bucket_configs {
                if let Err(e) = self.js.create_key_value(config.clone()).await {
                    // Exists with other settings (an operator changed them): use it as it is.
                    self.js.get_key_value(&config.bucket).await.map_err(|_| other(e))?;
                }
            }
            for config in &self.stream_configs {
                self.js.create_or_update_stream(config.clone()).await.map_err(other)?;
            }
            Ok(())
        }
        .boxed()
    }

    fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn kind(&self) -> &'static str {
        "nats"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_without_a_leader_is_unavailable_with_its_meaning() {
        match other("failed getting entry: no stream found for given subject") {
            BusError::Unavailable(m) => assert!(m.contains("no leader"), "{m}"),
            e => panic!("{e:?}"),
        }
        assert!(matches!(other("bad call record"), BusError::Other(_)));
    }
}

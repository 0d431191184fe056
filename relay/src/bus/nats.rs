//! The NATS bus: core pub/sub for traffic, a JetStream key-value bucket for presence.

use super::{Bus, BusError, BusMessage, Subscription};
use async_nats::jetstream::{self, consumer::push, consumer::DeliverPolicy, kv};
use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::StreamExt;
use prost::Message as _;
use std::time::Duration;
use switchboard_protocol::pb::Participant;

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
}

/// NATS implementation of [`Bus`].
pub struct NatsBus {
    client: async_nats::Client,
    js: jetstream::Context,
    presence: kv::Store,
    presence_config: kv::Config,
    epochs: tokio::sync::watch::Receiver<u64>,
}

fn other(e: impl std::fmt::Display) -> BusError {
    BusError::Other(e.to_string())
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
        let bucket = format!("{}_presence", opts.prefix.replace('.', "_"));
        let config = kv::Config {
            bucket: bucket.clone(),
            description: "Switchboard room presence (one key per room and session)".into(),
            history: 1,
            storage: jetstream::stream::StorageType::Memory,
            num_replicas: opts.replicas.max(1),
            ..Default::default()
        };
        let presence = match js.create_key_value(config.clone()).await {
            Ok(store) => store,
            Err(create_err) => js.get_key_value(&bucket).await.map_err(|e| {
                other(format!(
                    "presence bucket {bucket}: {create_err}; {e} \
                         (Switchboard needs nats-server 2.10 or later with JetStream enabled: -js)"
                ))
            })?,
        };
        Ok(Self { client, js, presence, presence_config: config, epochs })
    }

    /// The underlying client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    fn key(room: &str, session: &str) -> String {
        format!("{room}.{session}")
    }
}

impl Bus for NatsBus {
    fn publish(&self, subject: String, payload: Bytes) -> BoxFuture<'_, Result<(), BusError>> {
        async move { self.client.publish(subject, payload).await.map_err(|e| BusError::Unavailable(e.to_string())) }
            .boxed()
    }

    fn subscribe(&self, subject: String) -> BoxFuture<'_, Result<Subscription, BusError>> {
        async move {
            let sub = self.client.subscribe(subject).await.map_err(|e| BusError::Unavailable(e.to_string()))?;
            Ok(sub.map(|m| BusMessage { subject: m.subject.to_string(), payload: m.payload }).boxed())
        }
        .boxed()
    }

    fn presence_put(&self, room: &str, participant: &Participant) -> BoxFuture<'_, Result<(), BusError>> {
        let key = Self::key(room, &participant.session);
        let value = Bytes::from(participant.encode_to_vec());
        async move { self.presence.put(key, value).await.map(|_| ()).map_err(other) }.boxed()
    }

    fn presence_remove(&self, room: &str, session: &str) -> BoxFuture<'_, Result<(), BusError>> {
        let key = Self::key(room, session);
        async move { self.presence.delete(key).await.map_err(other) }.boxed()
    }

    fn presence_list(&self, room: &str) -> BoxFuture<'_, Result<Vec<Participant>, BusError>> {
        let filter = format!("{}{}.*", self.presence.prefix, room);
        async move {
            // An ordered consumer over the room's keys, last value per key: `num_pending`
            // at creation says how many records make up the snapshot.
            let consumer = self
                .presence
                .stream
                .create_consumer(push::OrderedConfig {
                    deliver_subject: self.client.new_inbox(),
                    filter_subject: filter,
                    deliver_policy: DeliverPolicy::LastPerSubject,
                    ..Default::default()
                })
                .await
                .map_err(other)?;
            let mut pending = consumer.cached_info().num_pending;
            let mut out = Vec::with_capacity(pending as usize);
            if pending == 0 {
                return Ok(out);
            }
            let mut messages = consumer.messages().await.map_err(other)?;
            while pending > 0 {
                let next = tokio::time::timeout(Duration::from_secs(5), messages.next())
                    .await
                    .map_err(|_| BusError::Unavailable("presence snapshot timed out".into()))?;
                let Some(msg) = next else { break };
                let msg = msg.map_err(other)?;
                pending -= 1;
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

    fn ensure_presence_store(&self) -> BoxFuture<'_, Result<(), BusError>> {
        async move { self.js.create_key_value(self.presence_config.clone()).await.map(|_| ()).map_err(other) }.boxed()
    }

    fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn kind(&self) -> &'static str {
        "nats"
    }
}

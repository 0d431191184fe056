//! The cluster bus: how nodes reach each other.
//!
//! [`NatsBus`] connects to a NATS cluster (core pub/sub for traffic, a JetStream key-value
//! bucket for presence); [`LocalBus`] is the in-process implementation with the same
//! semantics, used by the embedded single-node default and by unit tests.

mod local;
mod nats;

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
    /// The payload (an encoded `BusEnvelope`).
    pub payload: Bytes,
}

/// A live subscription; dropping it unsubscribes.
pub type Subscription = BoxStream<'static, BusMessage>;

/// Bus failures.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Not connected to the bus right now.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
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
    /// Record `participant` as present in `room`, cluster-wide.
    fn presence_put(&self, room: &str, participant: &Participant) -> BoxFuture<'_, Result<(), BusError>>;
    /// Remove a session's presence record in `room` (idempotent).
    fn presence_remove(&self, room: &str, session: &str) -> BoxFuture<'_, Result<(), BusError>>;
    /// Everyone recorded as present in `room`, cluster-wide.
    fn presence_list(&self, room: &str) -> BoxFuture<'_, Result<Vec<Participant>, BusError>>;
    /// Every room with presence records, with its participant count.
    fn presence_rooms(&self) -> BoxFuture<'_, Result<std::collections::BTreeMap<String, usize>, BusError>>;
    /// Flush published messages to the bus.
    fn flush(&self) -> BoxFuture<'_, Result<(), BusError>>;
    /// A counter that increases each time the bus (re)connects; `None` if it never
    /// disconnects (in-process). After a reconnect the node restores its presence records.
    fn connection_epochs(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    /// Make sure the presence store exists (it may have been lost with the broker).
    fn ensure_presence_store(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async { Ok(()) })
    }
    /// Whether the bus is connected (readiness).
    fn is_connected(&self) -> bool;
    /// `nats` or `local`.
    fn kind(&self) -> &'static str;
}

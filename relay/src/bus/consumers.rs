//! Ephemeral ordered consumers that are deleted on the server when their reader is gone,
//! replacements included.
//!
//! An ordered consumer otherwise lingers for its 30 s inactivity threshold after the reader
//! is gone (the client hard-codes it), each still pushing heartbeats at this node; a join
//! (presence snapshot, history follower) creates them, so under churn they pile up by the
//! thousand. After a gap (a reconnect, missed heartbeats, a sequence mismatch) the NATS
//! client re-creates an ordered consumer under the name `<original>_<n>` (`n` counting the
//! re-creations, the previous one deleted first): deleting only the original name left
//! each replacement to linger its 30 s, and a reconnect re-creates every follower at once.

use super::BusError;
use async_nats::jetstream::{self, consumer::push};
use std::time::Duration;

/// Replacement names tried after the original was found gone (re-creations of one
/// consumer during its reader's life; more are left to expire).
const MAX_REPLACEMENTS: usize = 32;
/// A re-creation may be in flight when the reader goes (its request sent, the reply not
/// yet read): look again this much later.
const SECOND_LOOK: Duration = Duration::from_secs(2);

/// Deletes its consumer (or the consumer's latest replacement) on the server when dropped.
pub(super) struct DeleteOnDrop {
    stream: jetstream::stream::Stream,
    name: String,
}

impl DeleteOnDrop {
    fn new(stream: &jetstream::stream::Stream, consumer: &jetstream::consumer::Consumer<push::OrderedConfig>) -> Self {
        Self { stream: stream.clone(), name: consumer.cached_info().name.clone() }
    }
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let (stream, name) = (self.stream.clone(), std::mem::take(&mut self.name));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if delete_latest(&stream, &name).await {
                    return; // never re-created: the original was the consumer
                }
                tokio::time::sleep(SECOND_LOOK).await;
                delete_latest(&stream, &name).await;
            });
        }
    }
}

/// Delete `name`, or else the replacements `name_1`, `name_2`, … up to the first that
/// exists, and the one after it (a re-creation racing this). True if `name` itself was
/// deleted.
async fn delete_latest(stream: &jetstream::stream::Stream, name: &str) -> bool {
    match delete(stream, name).await {
        Deleted::Yes => return true,
        Deleted::Failed => return false, // the bus is away: the server expires it
        Deleted::Missing => {}
    }
    for n in 1..=MAX_REPLACEMENTS {
        match delete(stream, &format!("{name}_{n}")).await {
            Deleted::Missing => continue,
            Deleted::Failed => return false,
            Deleted::Yes => {
                delete(stream, &format!("{name}_{}", n + 1)).await;
                return false;
            }
        }
    }
    false
}

enum Deleted {
    Yes,
    Missing,
    Failed,
}

async fn delete(stream: &jetstream::stream::Stream, name: &str) -> Deleted {
    match stream.delete_consumer(name).await {
        Ok(_) => Deleted::Yes,
        Err(e) => match e.kind() {
            jetstream::stream::ConsumerErrorKind::JetStream(js)
                if js.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND =>
            {
                Deleted::Missing
            }
            _ => {
                tracing::debug!(consumer = %name, error = %e, "deleting a finished consumer failed (it expires on its own)");
                Deleted::Failed
            }
        },
    }
}

/// Create an ordered consumer together with the guard that deletes it. In a task of its
/// own: if the caller gives up mid-way (a join cancelled by a disconnect, a follower
/// aborted because its room closed), creation still completes and the guard, dropped with
/// the unclaimed result, deletes the consumer instead of leaving it to expire.
pub(super) async fn create_consumer(
    stream: &jetstream::stream::Stream,
    config: push::OrderedConfig,
) -> Result<(jetstream::consumer::Consumer<push::OrderedConfig>, DeleteOnDrop), BusError> {
    let stream = stream.clone();
    tokio::spawn(async move {
        let consumer = stream.create_consumer(config).await.map_err(|e| BusError::Other(e.to_string()))?;
        let guard = DeleteOnDrop::new(&stream, &consumer);
        Ok((consumer, guard))
    })
    .await
    .map_err(|e| BusError::Other(e.to_string()))?
}

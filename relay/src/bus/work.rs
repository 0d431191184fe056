//! A key-value bucket's changes as a work queue shared by every node: each change goes to
//! one node and comes again (to any node) until it is acknowledged, so work a dying node
//! had taken is finished by another.
//!
//! On NATS this is a durable pull consumer on the bucket's stream (`KV_<bucket>`), one per
//! bucket and purpose, with explicit acknowledgement: a change a node took and never
//! acknowledged (it died) is delivered again after [`ACK_WAIT`]. The bucket keeps one
//! revision per key, so a change superseded by a later write leaves the queue with it.

use super::{BusError, KvChange, KvWork};
use async_nats::jetstream::{self, consumer::pull, AckKind};
use futures_util::{FutureExt, StreamExt};
use std::time::Duration;

/// How long a taken change stays with its node before it goes to another.
pub(super) const ACK_WAIT: Duration = Duration::from_secs(10);
/// The same, for work that may take longer (a webhook POST waits up to its timeout).
pub(super) const SLOW_ACK_WAIT: Duration = Duration::from_secs(30);
/// Changes handed out and not yet acknowledged, over all nodes.
const MAX_IN_FLIGHT: i64 = 10_000;

/// Follow `store`'s changes in the shared queue `<bucket>_<group>` (created on first use;
/// changes written before that are not in it).
pub(super) async fn follow(
    store: &async_nats::jetstream::kv::Store,
    group: &str,
    ack_wait: Duration,
) -> Result<KvWork, BusError> {
    let other = |e: &dyn std::fmt::Display| BusError::Unavailable(format!("work queue {group}: {e}"));
    let name = format!("{}_{group}", store.name);
    let config = pull::Config {
        durable_name: Some(name.clone()),
        description: Some(format!("Switchboard: changes of {} for {group}, shared by every node", store.name)),
        filter_subject: format!("{}>", store.prefix),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait,
        deliver_policy: jetstream::consumer::DeliverPolicy::New,
        max_ack_pending: MAX_IN_FLIGHT,
        ..Default::default()
    };
    let consumer = store.stream.get_or_create_consumer(&name, config).await.map_err(|e| other(&e))?;
    let messages = consumer.messages().await.map_err(|e| other(&e))?;
    let prefix = store.prefix.clone();
    Ok(messages
        .map(move |m| {
            let m = m.map_err(|e| BusError::Unavailable(e.to_string()))?;
            change(&prefix, m)
        })
        .boxed())
}

/// A delivered message as a [`KvChange`] that acknowledges (or asks for it again) itself.
fn change(prefix: &str, m: jetstream::Message) -> Result<KvChange, BusError> {
    let revision = m.info().map_err(|e| BusError::Other(e.to_string()))?.stream_sequence;
    let key = m.subject.as_str().strip_prefix(prefix).unwrap_or_default().to_owned();
    let removed =
        m.headers.as_ref().and_then(|h| h.get("KV-Operation")).is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
    let value = (!removed).then(|| m.payload.clone());
    Ok(KvChange {
        key,
        value,
        revision,
        reply: Box::new(move |again| {
            async move {
                let kind = match again {
                    None => AckKind::Ack,
                    Some(delay) => AckKind::Nak(Some(delay)),
                };
                m.ack_with(kind).await.map_err(|e| BusError::Unavailable(e.to_string()))
            }
            .boxed()
        }),
    })
}

//! The in-process bus of the embedded single node.

use super::{Bus, BusError, BusMessage, Subscription};
use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use switchboard_protocol::pb::Participant;
use switchboard_protocol::subject::subject_matches;
use tokio::sync::mpsc;

/// Messages buffered per subscription before the publisher waits.
const SUBSCRIPTION_BUFFER: usize = 1024;

type Subscribers = Vec<(u64, String, mpsc::Sender<BusMessage>)>;

/// In-process bus: subject matching with NATS wildcard rules, presence in a map.
#[derive(Default, Clone)]
pub struct LocalBus {
    subs: Arc<Mutex<Subscribers>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
    presence: Arc<Mutex<HashMap<String, BTreeMap<String, Participant>>>>,
}

impl LocalBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of live subscriptions on `subject` (exact pattern), for tests.
    pub fn subscription_count(&self, pattern: &str) -> usize {
        let mut subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|(_, _, tx)| !tx.is_closed());
        subs.iter().filter(|(_, p, _)| p == pattern).count()
    }
}

impl Bus for LocalBus {
    fn publish(&self, subject: String, payload: Bytes) -> BoxFuture<'_, Result<(), BusError>> {
        async move {
            let targets: Vec<mpsc::Sender<BusMessage>> = {
                let mut subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
                subs.retain(|(_, _, tx)| !tx.is_closed());
                subs.iter().filter(|(_, p, _)| subject_matches(p, &subject)).map(|(_, _, tx)| tx.clone()).collect()
            };
            for tx in targets {
                // Like a NATS slow consumer, a full subscriber loses the message rather
                // than stalling the publisher.
                let _ = tx.try_send(BusMessage { subject: subject.clone(), payload: payload.clone() });
            }
            Ok(())
        }
        .boxed()
    }

    fn subscribe(&self, subject: String) -> BoxFuture<'_, Result<Subscription, BusError>> {
        async move {
            let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
            let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.subs.lock().unwrap_or_else(|e| e.into_inner()).push((id, subject, tx));
            Ok(tokio_stream_from(rx))
        }
        .boxed()
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
        let m = sub.next().await.unwrap();
        assert_eq!((m.subject.as_str(), &m.payload[..]), ("sb.room.a.msg", &b"1"[..]));
        assert_eq!(bus.subscription_count("sb.room.a.>"), 1);
        drop(sub);
        assert_eq!(bus.subscription_count("sb.room.a.>"), 0);
    }
}

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

/// In-process bus: subject matching with NATS wildcard rules, presence in a map.
#[derive(Default, Clone)]
pub struct LocalBus {
    subs: Arc<Mutex<Subscribers>>,
    presence: Arc<Mutex<HashMap<String, BTreeMap<String, Participant>>>>,
}

impl LocalBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of live subscriptions on `subject` (exact pattern), for tests.
    pub fn subscription_count(&self, pattern: &str) -> usize {
        self.subs.lock().unwrap_or_else(|e| e.into_inner()).count(pattern)
    }
}

impl Bus for LocalBus {
    fn publish(&self, subject: String, payload: Bytes) -> BoxFuture<'_, Result<(), BusError>> {
        async move {
            let targets = self.subs.lock().unwrap_or_else(|e| e.into_inner()).matching(&subject);
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
            self.subs.lock().unwrap_or_else(|e| e.into_inner()).add(subject, tx);
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
        let mut hb = bus.subscribe("sb.node.*.heartbeat".into()).await.unwrap();
        bus.publish("sb.node.n1.heartbeat".into(), Bytes::from_static(b"3")).await.unwrap();
        assert_eq!(&hb.next().await.unwrap().payload[..], b"3");
        let m = sub.next().await.unwrap();
        assert_eq!((m.subject.as_str(), &m.payload[..]), ("sb.room.a.msg", &b"1"[..]));
        assert_eq!(bus.subscription_count("sb.room.a.>"), 1);
        drop(sub);
        assert_eq!(bus.subscription_count("sb.room.a.>"), 0);
    }
}

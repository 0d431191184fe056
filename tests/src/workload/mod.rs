//! A small chat-and-calls workload over a [multi-host cluster](crate::netns::cluster), and
//! the checks that nothing acknowledged went missing while the cluster was changed under it
//! (used by `tests/tests/rolling_upgrade.rs`, small in the test command and large as a
//! benchmark).
//!
//! [`Scale::clients`] members, alternately WebSocket through HAProxy and WebTransport through
//! the nginx UDP balancer, spread over the load hosts, each in one of [`Scale::rooms`] rooms
//! with [`ReconnectingClient`]s (backoff with jitter, rooms resumed from the last offset
//! delivered). Every member publishes reliable chat at [`Scale::publish_every`]; every
//! acknowledged message is recorded with its offset. [`Scale::call_pairs`] callers call their
//! callee over and over (answered when it rings, held, ended). [`checks`] compares what every
//! member's events showed with what was acknowledged.

pub mod calls;
pub mod checks;
pub mod member;

pub use member::{Member, Seen, Via};

use crate::netns::cluster::Cluster;
use crate::netns::HostRuntime;
use anyhow::Context;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchboard_client::{ReconnectPolicy, ReconnectingClient};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How big the workload is.
#[derive(Debug, Clone)]
pub struct Scale {
    /// Members (connections).
    pub clients: usize,
    /// Rooms (members are dealt round-robin).
    pub rooms: usize,
    /// Each member publishes a reliable message this often.
    pub publish_every: Duration,
    /// Caller/callee pairs placing calls one after another (members `k` and `k + rooms`; at
    /// most `rooms`).
    pub call_pairs: usize,
    /// How long an answered call is held before the caller ends it.
    pub call_hold: Duration,
}

impl Scale {
    /// The test command's size: 40 clients, 8 rooms of 5, a message per member per second,
    /// 4 call pairs holding calls 1.5 s.
    pub fn small() -> Self {
        Self {
            clients: 40,
            rooms: 8,
            publish_every: Duration::from_secs(1),
            call_pairs: 4,
            call_hold: Duration::from_millis(1500),
        }
    }

    /// The benchmark's size: 1,000 clients, 100 rooms of 10, 20 call pairs.
    pub fn full() -> Self {
        Self {
            clients: 1000,
            rooms: 100,
            publish_every: Duration::from_secs(2),
            call_pairs: 20,
            call_hold: Duration::from_secs(3),
        }
    }

    /// `self` with `SB_UPGRADE_CLIENTS`, `SB_UPGRADE_ROOMS`, `SB_UPGRADE_PUBLISH_MS`,
    /// `SB_UPGRADE_CALL_PAIRS` applied where set.
    pub fn from_env(mut self) -> Self {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        if let Some(v) = var("SB_UPGRADE_CLIENTS") {
            self.clients = v as usize;
        }
        if let Some(v) = var("SB_UPGRADE_ROOMS") {
            self.rooms = v.max(1) as usize;
        }
        if let Some(v) = var("SB_UPGRADE_PUBLISH_MS") {
            self.publish_every = Duration::from_millis(v.max(1));
        }
        if let Some(v) = var("SB_UPGRADE_CALL_PAIRS") {
            self.call_pairs = v as usize;
        }
        // Pairs are members k and k + rooms (see `Workload::start`).
        self.call_pairs = self.call_pairs.min(self.rooms).min(self.clients.saturating_sub(self.rooms));
        self
    }
}

/// Acknowledged reliable messages per room: (offset, payload) in acknowledgement order.
pub type Acked = Arc<Mutex<BTreeMap<String, Vec<(u64, Bytes)>>>>;

/// A running workload; see the [module docs](self).
pub struct Workload {
    /// The members, in creation order.
    pub members: Arc<Vec<Member>>,
    /// Acknowledged reliable messages.
    pub acked: Acked,
    /// Calls placed.
    pub ledger: calls::Ledger,
    /// Publishes that failed (refused or lost in transit; not acknowledged).
    pub publish_failures: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    publishers: Vec<JoinHandle<()>>,
    callers: Vec<JoinHandle<usize>>,
    // Last: the members' connections live on these.
    _runtimes: Vec<HostRuntime>,
}

/// Retry quickly, at most every 2 s: a restarted node is back within seconds.
fn policy() -> ReconnectPolicy {
    ReconnectPolicy { initial: Duration::from_millis(200), max: Duration::from_secs(2), ..Default::default() }
}

impl Workload {
    /// Connect and join every member (on the cluster's load hosts), then start publishing
    /// and calling.
    pub async fn start(cluster: &Cluster, scale: &Scale) -> anyhow::Result<Self> {
        let runtimes = cluster.load_hosts().iter().map(|h| h.runtime()).collect::<std::io::Result<Vec<_>>>()?;
        anyhow::ensure!(!runtimes.is_empty(), "the cluster has no load host");
        let mut connecting = Vec::new();
        for m in 0..scale.clients {
            // Every room mixes both transports and load hosts.
            let (user, room) = (format!("u{m:03}"), format!("r{:03}", m % scale.rooms));
            let via = if (m / scale.rooms).is_multiple_of(2) { Via::WebSocket } else { Via::WebTransport };
            let load = (m / 3) % runtimes.len();
            let token = crate::token(&user, &[&room]);
            let config = match via {
                Via::WebSocket => cluster.ws_config(&token),
                Via::WebTransport => cluster.wt_config(&token),
            };
            let connect = runtimes[load].spawn(ReconnectingClient::connect(vec![config], policy()));
            connecting.push((user, room, via, load, connect));
        }
        let mut members = Vec::new();
        for (user, room, via, load, connect) in connecting {
            let (client, events) = connect.await?.with_context(|| format!("{user} connecting ({via:?})"))?;
            let joined = client.join(&room).await.with_context(|| format!("{user} joining {room}"))?;
            members.push(Member::follow(user, room, via, load, client, events, &joined.participants));
        }
        let members = Arc::new(members);
        let (stop, stopped) = watch::channel(false);
        let acked: Acked = Arc::default();
        let publish_failures = Arc::new(AtomicUsize::new(0));
        let publishers = (0..members.len())
            .map(|m| {
                let (members, acked, failures) = (members.clone(), acked.clone(), publish_failures.clone());
                let stopped = stopped.clone();
                // Spread the members' first messages over one period.
                let offset = scale.publish_every.mul_f64(m as f64 / members.len().max(1) as f64);
                tokio::spawn(publish(members, m, scale.publish_every, offset, acked, failures, stopped))
            })
            .collect();
        let ledger: calls::Ledger = Arc::default();
        let callers = (0..scale.call_pairs)
            .map(|k| {
                // Caller over WebSocket, callee over WebTransport.
                let drive =
                    calls::drive(members.clone(), k, k + scale.rooms, scale.call_hold, ledger.clone(), stopped.clone());
                tokio::spawn(drive)
            })
            .collect();
        Ok(Self { members, acked, ledger, publish_failures, stop, publishers, callers, _runtimes: runtimes })
    }

    /// Whether every member is connected and back in its room.
    pub fn settled(&self) -> bool {
        self.members.iter().all(|m| m.seen().settled)
    }

    /// Wait until [`Self::settled`], at most `limit`; how long it took.
    pub async fn wait_settled(&self, limit: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        while !self.settled() {
            anyhow::ensure!(
                start.elapsed() < limit,
                "members not back in their rooms after {limit:?}: {}",
                self.unsettled()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(start.elapsed())
    }

    fn unsettled(&self) -> String {
        let who: Vec<String> =
            self.members.iter().filter(|m| !m.seen().settled).map(|m| format!("{} ({:?})", m.user, m.via)).collect();
        who.join(", ")
    }

    /// Indexes of the members whose current (or last) session is on `node`.
    pub fn on_node(&self, node: &str) -> Vec<usize> {
        (0..self.members.len()).filter(|&m| self.members[m].seen().node == node).collect()
    }

    /// Acknowledged reliable messages so far, over all rooms.
    pub fn acked_count(&self) -> usize {
        self.acked.lock().unwrap_or_else(|e| e.into_inner()).values().map(Vec::len).sum()
    }

    /// Acknowledged messages in the room that has the fewest.
    pub fn fewest_acked_in_a_room(&self) -> usize {
        let acked = self.acked.lock().unwrap_or_else(|e| e.into_inner());
        let rooms: std::collections::BTreeSet<&str> = self.members.iter().map(|m| m.room.as_str()).collect();
        rooms.iter().map(|r| acked.get(*r).map_or(0, Vec::len)).min().unwrap_or(0)
    }

    /// Calls whose caller saw them accepted and whose end was requested after `since`.
    pub fn calls_completed_since(&self, since: Instant) -> usize {
        let ledger = self.ledger.lock().unwrap_or_else(|e| e.into_inner());
        ledger.iter().filter(|p| p.invited > since && p.accepted.is_some() && p.ended.is_some()).count()
    }

    /// Stop publishing and calling; wait (bounded) for requests in flight and the calls in
    /// progress to end. Returns the invitations that failed.
    pub async fn stop(&mut self) -> anyhow::Result<usize> {
        let _ = self.stop.send(true);
        let limit = Duration::from_secs(60);
        for p in self.publishers.drain(..) {
            tokio::time::timeout(limit, p).await.context("a publisher did not stop")??;
        }
        let mut failed = 0;
        for c in self.callers.drain(..) {
            failed += tokio::time::timeout(limit, c).await.context("a caller did not stop")??;
        }
        Ok(failed)
    }

    /// Close every member's client.
    pub async fn close(&self) {
        for m in self.members.iter() {
            m.client.close().await;
        }
    }
}

/// Publish a reliable message from `members[m]` every `every` until stopped.
async fn publish(
    members: Arc<Vec<Member>>,
    m: usize,
    every: Duration,
    offset: Duration,
    acked: Acked,
    failures: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) {
    let member = &members[m];
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for seq in 0u64.. {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let payload = Bytes::from(format!("{}:{seq}", member.user));
        match member.client.publish(&member.room, payload.clone(), true, "chat").await {
            Ok(offset) => acked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(member.room.clone())
                .or_default()
                .push((offset, payload)),
            Err(_) => {
                failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

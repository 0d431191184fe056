//! The small workload of the partition tests: members of a few rooms on chosen nodes, each
//! keeping what it observes (its room's presence view, the reliable messages it received
//! per sender, the state of its calls); publishers that retry a refused publish until it
//! is acknowledged; and the checks: presence and calls converged (as clients see them and
//! as the JetStream buckets hold them), every acknowledged message delivered exactly once
//! and in order.

use bytes::Bytes;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchboard_client::{ClientConfig, ClientError, ErrorCode, Event, Events, ReconnectPolicy, ReconnectingClient};
use switchboard_protocol::pb::{self, CallState};
use switchboard_tests::netns::{Cluster, HostRuntime};
use switchboard_tests::token;

/// What one member observed.
#[derive(Default)]
pub struct Seen {
    /// Its room's participants: session id -> user.
    pub view: HashMap<String, String>,
    /// Payloads of reliable messages received, per sender user, in arrival order.
    pub got: HashMap<String, Vec<String>>,
    /// The latest state of each of its calls (the most advanced one seen).
    pub calls: HashMap<String, CallState>,
    /// Connections lost.
    pub disconnects: usize,
}

/// A client in one room (or, for call parties, in none).
pub struct Member {
    pub user: String,
    pub room: Option<String>,
    pub client: ReconnectingClient,
    pub seen: Arc<Mutex<Seen>>,
    /// When its join was acknowledged (messages first tried after it must reach it).
    pub joined_at: Instant,
    pub left: bool,
}

fn rank(s: CallState) -> u8 {
    match s {
        CallState::Ringing => 1,
        CallState::Accepted => 2,
        CallState::Ended => 3,
        _ => 0,
    }
}

fn policy() -> ReconnectPolicy {
    ReconnectPolicy { initial: Duration::from_millis(200), max: Duration::from_secs(2), ..Default::default() }
}

impl Member {
    /// Connect `user` on `runtime` to node `home` (the other nodes as fallbacks) and join
    /// `room` if given.
    pub async fn start(
        cluster: &Cluster,
        runtime: &HostRuntime,
        user: &str,
        room: Option<&str>,
        home: usize,
    ) -> anyhow::Result<Member> {
        let rooms: Vec<&str> = room.into_iter().collect();
        let tok = token(user, &rooms);
        let n = cluster.node_count();
        let configs: Vec<ClientConfig> =
            (0..n).map(|k| ClientConfig::new(cluster.node_ws_url((home + k) % n), tok.clone())).collect();
        let (client, events) = runtime.spawn(ReconnectingClient::connect(configs, policy())).await??;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut joined_at = Instant::now();
        if let Some(room) = room {
            // A join is refused (`UNAVAILABLE`) while the presence bucket has no leader on
            // the node's side (a split, or one being elected): retried, as an app would.
            let started = Instant::now();
            let mut refused = 0;
            let joined = loop {
                match client.join(room).await {
                    Err(ClientError::Server { code: ErrorCode::Unavailable, message })
                        if started.elapsed() < Duration::from_secs(60) =>
                    {
                        refused += 1;
                        if refused == 1 {
                            eprintln!("{user} joining {room}: {message}; retrying");
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    other => break other?,
                }
            };
            if refused > 0 {
                eprintln!("{user} joined {room} after {:.1?} ({refused} refusals)", started.elapsed());
            }
            joined_at = Instant::now();
            let mut s = seen.lock().unwrap();
            for p in joined.participants {
                s.view.insert(p.session, p.user);
            }
        }
        let own = user.to_owned();
        runtime.spawn(track(events, own, room.map(str::to_owned), seen.clone()));
        Ok(Member { user: user.into(), room: room.map(Into::into), client, seen, joined_at, left: false })
    }
}

async fn track(mut events: Events, own: String, room: Option<String>, seen: Arc<Mutex<Seen>>) {
    while let Some(ev) = events.recv().await {
        let mut s = seen.lock().unwrap();
        match ev {
            Event::Message(m) if Some(&m.room) == room.as_ref() => {
                if let Some(from) = m.from.as_ref().filter(|f| f.user != own) {
                    s.got.entry(from.user.clone()).or_default().push(String::from_utf8_lossy(&m.payload).into());
                }
            }
            Event::ParticipantJoined(j) => {
                if let Some(p) = j.participant {
                    s.view.insert(p.session, p.user);
                }
            }
            Event::ParticipantLeft(l) => {
                if let Some(p) = l.participant {
                    s.view.remove(&p.session);
                }
            }
            Event::Rejoined(j) => {
                s.view = j.participants.into_iter().map(|p| (p.session, p.user)).collect();
            }
            Event::Call(c) => {
                if let Some(call) = c.call {
                    let state = call.state();
                    let e = s.calls.entry(call.id).or_insert(state);
                    if rank(state) > rank(*e) {
                        *e = state;
                    }
                }
            }
            Event::Disconnected { .. } => s.disconnects += 1,
            Event::Closed { .. } => return,
            _ => {}
        }
    }
}

/// An acknowledged message and when its first attempt started.
#[derive(Clone)]
pub struct Acked {
    pub payload: String,
    pub first_try: Instant,
}

/// What a publisher did.
#[derive(Default)]
pub struct Published {
    pub acked: Vec<Acked>,
    /// Attempts refused or timed out (retried with a new attempt number).
    pub refused: usize,
}

/// Publish reliable messages `<user>:<seq>:<attempt>` every `period` until `stop`, each
/// retried (as a new attempt) until acknowledged. Bounded: at most 5,000 attempts.
pub async fn publish_loop(
    client: ReconnectingClient,
    user: String,
    room: String,
    period: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
    out: Arc<Mutex<Published>>,
) {
    let mut attempts = 0;
    let mut seq = 0;
    while !*stop.borrow() && attempts < 5_000 {
        let first_try = Instant::now();
        let mut attempt = 0;
        loop {
            attempts += 1;
            let payload = format!("{user}:{seq}:{attempt}");
            let sent = tokio::time::timeout(
                Duration::from_secs(5),
                client.publish(&room, Bytes::from(payload.clone()), true, "chat"),
            )
            .await;
            if let Ok(Ok(_)) = sent {
                out.lock().unwrap().acked.push(Acked { payload, first_try });
                break;
            }
            out.lock().unwrap().refused += 1;
            if *stop.borrow() || attempts >= 5_000 {
                return;
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        seq += 1;
        tokio::time::sleep(period).await;
    }
}

/// Presence as the members of each room see it, compared with their current sessions:
/// `None` when every (remaining) member sees exactly the others, else the first mismatch.
pub fn presence_mismatch(members: &[Member]) -> Option<String> {
    let mut sessions: HashMap<&str, BTreeSet<String>> = HashMap::new();
    for m in members.iter().filter(|m| !m.left) {
        if let Some(room) = &m.room {
            sessions.entry(room).or_default().insert(m.client.session_id());
        }
    }
    for m in members.iter().filter(|m| !m.left) {
        let Some(room) = &m.room else { continue };
        let own = m.client.session_id();
        let want: BTreeSet<String> = sessions[room.as_str()].iter().filter(|s| **s != own).cloned().collect();
        let seen = m.seen.lock().unwrap();
        let got: BTreeSet<String> = seen.view.keys().filter(|s| **s != own).cloned().collect();
        if got != want {
            let ghosts: Vec<_> = got.difference(&want).map(|s| seen.view[s].clone()).collect();
            let missing = want.difference(&got).count();
            return Some(format!("{} in {room}: ghosts {ghosts:?}, {missing} missing", m.user));
        }
    }
    None
}

/// The presence bucket against the members' current sessions: `None` if every room's
/// records are exactly its remaining members, else the first mismatch.
pub async fn stored_presence_mismatch(kv: &async_nats::jetstream::kv::Store, members: &[Member]) -> Option<String> {
    use futures_util::TryStreamExt;
    let keys: Vec<String> = match kv.keys().await {
        Ok(k) => match k.try_collect().await {
            Ok(k) => k,
            Err(e) => return Some(format!("listing presence keys: {e}")),
        },
        Err(e) => return Some(format!("listing presence keys: {e}")),
    };
    let stored: BTreeSet<String> = keys.into_iter().filter(|k| !k.starts_with("call-")).collect();
    let want: BTreeSet<String> = members
        .iter()
        .filter(|m| !m.left)
        .filter_map(|m| m.room.as_ref().map(|r| format!("{r}.{}", m.client.session_id())))
        .collect();
    (stored != want).then(|| {
        let ghosts: Vec<_> = stored.difference(&want).collect();
        let missing: Vec<_> = want.difference(&stored).collect();
        format!("presence bucket: ghost records {ghosts:?}, missing {missing:?}")
    })
}

/// A call's parties' observed state against its record: `None` if every party saw the
/// stored state, else the first mismatch.
pub async fn call_mismatch(kv: &async_nats::jetstream::kv::Store, call: &str, parties: &[&Member]) -> Option<String> {
    use switchboard_protocol::ProstMessage as _;
    let stored = match kv.get(call).await {
        Ok(Some(v)) => match pb::Call::decode(v) {
            Ok(c) => c.state(),
            Err(e) => return Some(format!("call {call}: bad record {e}")),
        },
        Ok(None) => return Some(format!("call {call}: no record")),
        Err(e) => return Some(format!("call {call}: {e}")),
    };
    for p in parties {
        let seen = p.seen.lock().unwrap().calls.get(call).copied();
        if seen != Some(stored) {
            return Some(format!("call {call}: {} sees {seen:?}, the record says {stored:?}", p.user));
        }
    }
    None
}

/// Delivery check for one receiver and one sender's acknowledged messages: the missing
/// (those the receiver should have got and did not), and any acknowledged message seen
/// twice or out of order.
pub struct Delivery {
    pub expected: usize,
    pub missing: usize,
    pub duplicated: usize,
    pub out_of_order: usize,
    /// Unacknowledged attempts that were delivered anyway (stored, ack lost).
    pub unacked_delivered: usize,
}

pub fn delivery(receiver: &Member, sender: &str, acked: &[Acked]) -> Delivery {
    let seen = receiver.seen.lock().unwrap();
    let got: &[String] = seen.got.get(sender).map(Vec::as_slice).unwrap_or(&[]);
    let want: Vec<&Acked> = acked.iter().filter(|a| a.first_try >= receiver.joined_at).collect();
    let wanted: BTreeSet<&str> = want.iter().map(|a| a.payload.as_str()).collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut order = Vec::new();
    let mut unacked = 0;
    for p in got {
        if wanted.contains(p.as_str()) {
            *counts.entry(p).or_default() += 1;
            order.push(seq_of(p));
        } else if !acked.iter().any(|a| a.payload == *p) {
            unacked += 1;
        }
    }
    Delivery {
        expected: want.len(),
        missing: wanted.iter().filter(|p| !counts.contains_key(*p)).count(),
        duplicated: counts.values().map(|c| c - 1).sum(),
        out_of_order: order.windows(2).filter(|w| w[1] <= w[0]).count(),
        unacked_delivered: unacked,
    }
}

fn seq_of(payload: &str) -> u64 {
    payload.split(':').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

//! One participant of the [workload](super): a [`ReconnectingClient`] in one room, and what
//! its event stream showed (node, reconnects, reliable messages, presence view, calls).

use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use switchboard_client::pb::{CallOutcome, CallState, Participant};
use switchboard_client::{Event, Events, ReconnectingClient};

/// How a member connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// WebSocket through HAProxy.
    WebSocket,
    /// WebTransport through the nginx UDP balancer.
    WebTransport,
}

/// The last state of a call as one party saw it (its events ranked, so a late `RINGING`
/// never hides an `ENDED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallSeen {
    /// The furthest state seen.
    pub state: CallState,
    /// Its outcome (for `ENDED`).
    pub outcome: CallOutcome,
}

fn rank(state: CallState) -> u8 {
    match state {
        CallState::Ringing => 1,
        CallState::Accepted | CallState::Rejected | CallState::Missed => 2,
        CallState::Ended => 3,
        CallState::Unspecified => 0,
    }
}

/// What a member's events showed so far.
#[derive(Debug, Default)]
pub struct Seen {
    /// The node of the current (or last) session.
    pub node: String,
    /// Connected and back in its room since the last loss.
    pub settled: bool,
    /// Connections lost (`Event::Disconnected`).
    pub disconnects: usize,
    /// When the last connection was lost.
    pub disconnected_at: Option<Instant>,
    /// When the room was last joined again after a reconnect.
    pub rejoined_at: Option<Instant>,
    /// Reliable messages of its room, in arrival order: (offset, payload).
    pub messages: Vec<(u64, Bytes)>,
    /// Its view of the room's presence: session -> user.
    pub view: BTreeMap<String, String>,
    /// Calls it is a party of: id -> the furthest state seen.
    pub calls: HashMap<String, CallSeen>,
    /// Rejoins told that history has a gap.
    pub history_gaps: usize,
    /// Errors it was told about (events and failed answers).
    pub errors: Vec<String>,
    /// Why its client stopped for good, if it did.
    pub closed: Option<String>,
}

/// One participant.
pub struct Member {
    /// User id (`u00`, `u01`, ...).
    pub user: String,
    /// Its room.
    pub room: String,
    /// How it connects.
    pub via: Via,
    /// Index of the load host it runs on.
    pub load: usize,
    /// Its client (requests from any runtime; its connection lives on the load host).
    pub client: ReconnectingClient,
    seen: Arc<Mutex<Seen>>,
}

impl Member {
    /// Start following `events` of `client`, already in `room` with the `participants`
    /// of its `Joined`.
    pub fn follow(
        user: String,
        room: String,
        via: Via,
        load: usize,
        client: ReconnectingClient,
        events: Events,
        participants: &[Participant],
    ) -> Self {
        let seen = Seen {
            node: client.welcome().node,
            settled: true,
            view: participants.iter().map(|p| (p.session.clone(), p.user.clone())).collect(),
            ..Default::default()
        };
        let seen = Arc::new(Mutex::new(seen));
        tokio::spawn(watch(user.clone(), room.clone(), client.clone(), events, seen.clone()));
        Self { user, room, via, load, client, seen }
    }

    /// What its events showed so far.
    pub fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Apply every event to `seen`; answer calls ringing this user (as a callee).
async fn watch(user: String, room: String, client: ReconnectingClient, mut events: Events, seen: Arc<Mutex<Seen>>) {
    let lock = || seen.lock().unwrap_or_else(|e| e.into_inner());
    while let Some(event) = events.recv().await {
        let mut answer = None;
        {
            let mut s = lock();
            match event {
                Event::Message(m) if m.reliable && m.room == room => s.messages.push((m.offset, m.payload)),
                Event::ParticipantJoined(p) if p.room == room => {
                    if let Some(p) = p.participant {
                        s.view.insert(p.session, p.user);
                    }
                }
                Event::ParticipantLeft(p) if p.room == room => {
                    if let Some(p) = p.participant {
                        s.view.remove(&p.session);
                    }
                }
                Event::Disconnected { .. } => {
                    s.disconnects += 1;
                    s.settled = false;
                    s.disconnected_at = Some(Instant::now());
                }
                Event::Reconnected { welcome } => s.node = welcome.node,
                Event::Rejoined(j) if j.room == room => {
                    s.view = j.participants.iter().map(|p| (p.session.clone(), p.user.clone())).collect();
                    s.history_gaps += usize::from(j.history_gap);
                    s.settled = true;
                    s.rejoined_at = Some(Instant::now());
                }
                Event::Call(e) => {
                    let call = e.call.clone().unwrap_or_default();
                    let now = CallSeen { state: e.state(), outcome: call.outcome() };
                    let entry = s.calls.entry(call.id.clone()).or_insert(now);
                    if rank(now.state) >= rank(entry.state) {
                        *entry = now;
                    }
                    if e.state() == CallState::Ringing && call.caller != user {
                        answer = Some(call.id);
                    }
                }
                Event::Error(e) => s.errors.push(format!("{:?}: {}", e.code(), e.message)),
                Event::Closed { code, reason } => s.closed = Some(format!("{code:?}: {reason}")),
                _ => {}
            }
        }
        if let Some(id) = answer {
            let (client, seen) = (client.clone(), seen.clone());
            tokio::spawn(async move {
                if let Err(e) = client.call_answer(&id, true).await {
                    seen.lock().unwrap_or_else(|e| e.into_inner()).errors.push(format!("answering {id}: {e}"));
                }
            });
        }
    }
}

//! [`ReconnectingClient`]: a session that survives lost connections.

use crate::{Client, ClientConfig, ClientError, Event, Events, MediaStats};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use switchboard_protocol::{pb, ErrorCode};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

/// When and how often to reconnect.
#[derive(Debug, Clone)]
pub struct ReconnectPolicy {
    /// Backoff ceiling of the first attempt.
    pub initial: Duration,
    /// Largest backoff ceiling.
    pub max: Duration,
    /// Growth of the ceiling per failed attempt.
    pub factor: f64,
    /// Failed attempts in a row before giving up (`None`: never give up).
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    /// 250 ms, doubling up to 10 s, never giving up.
    fn default() -> Self {
        Self { initial: Duration::from_millis(250), max: Duration::from_secs(10), factor: 2.0, max_attempts: None }
    }
}

impl ReconnectPolicy {
    /// The ceiling for attempt `n` (0-based): `initial * factor^n`, at most `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let secs = self.initial.as_secs_f64() * self.factor.max(1.0).powi(attempt.min(64) as i32);
        Duration::from_secs_f64(secs.min(self.max.as_secs_f64()))
    }

    /// A delay for attempt `n` with full jitter: uniform in `[0, ceiling(n)]`, so clients
    /// that lost the same node do not come back in lockstep.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.jittered(attempt, rand::random::<f64>())
    }

    /// `ceiling(attempt)` scaled by `unit` (clamped to `[0, 1]`): the pure part of [`Self::delay`].
    fn jittered(&self, attempt: u32, unit: f64) -> Duration {
        self.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// Errors after which reconnecting cannot help: the token, the grants, the protocol version
/// or an operator said no.
pub fn is_final(code: Option<ErrorCode>) -> bool {
    matches!(
        code,
        Some(
            ErrorCode::TokenInvalid
                | ErrorCode::TokenExpired
                | ErrorCode::TokenNotYetValid
                | ErrorCode::TokenAlgorithm
                | ErrorCode::Forbidden
                | ErrorCode::Kicked
                | ErrorCode::Banned
                | ErrorCode::UnsupportedVersion
        )
    )
}

/// The longest `GoAway.reconnect_after_ms` honoured (the server's hint is not trusted blindly).
const MAX_GOAWAY_WAIT: Duration = Duration::from_secs(30);
/// How long a connection closed to move away (after `GoAway`) may take to confirm its end.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What the client knows about one room.
#[derive(Debug, Default, Clone, Copy)]
struct RoomState {
    /// The application joined it: join it again after a reconnect.
    joined: bool,
    /// The room's last offset when it was joined (everything after it comes live).
    base: u64,
    /// The offset of the last reliable message delivered to the application.
    delivered: u64,
}

impl RoomState {
    /// Where a rejoin resumes: after everything the application has (`None`: nothing
    /// reliable seen, e.g. history off).
    fn resume_from(&self) -> Option<u64> {
        let at = self.base.max(self.delivered);
        (at > 0).then_some(at)
    }
}

struct State {
    current: Client,
    rooms: BTreeMap<String, RoomState>,
    configs: Vec<ClientConfig>,
    /// Index of the config in use.
    at: usize,
    /// Set for good once the application closed the client or it gave up: later requests
    /// fail with it.
    ended: Option<ClientError>,
    /// Media counters of the connections before `current`.
    past_media: MediaStats,
    /// Calls seen: id -> the furthest state delivered (see [`CallStates`]).
    calls: CallStates,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped whenever `current` or `ended` changes (requests between connections wait on it).
    changed: watch::Sender<u64>,
    /// Wakes a reconnect backoff when the application closes the client.
    closing: Notify,
    /// Every [`ReconnectingClient`] handle was dropped (see [`HandlesAlive`]).
    handles_gone: std::sync::atomic::AtomicBool,
    /// Notified when the last handle drops.
    handles_dropped: Notify,
    /// How long a request waits for a new connection.
    request_timeout: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Stop for good with `error` (unless already stopped); returns the client to close.
    fn end(&self, error: ClientError) -> Client {
        let current = {
            let mut s = self.lock();
            s.ended.get_or_insert(error);
            s.current.clone()
        };
        self.bump();
        current
    }
}

/// A [`Client`] that reconnects by itself. Cheap to clone; the clones share one session.
/// Its methods mirror [`Client`]'s; [`Self::join`] and [`Self::leave`] also maintain the
/// set of rooms joined again after a reconnect. See the [crate docs](crate) for an example.
///
/// What the application sees when a connection is lost for a reason that is not final (a
/// transport error, a node shutting down or sending `GoAway`, a heartbeat timeout, being
/// disconnected as a slow consumer):
///
/// 1. [`Event::Disconnected`], then after a backoff ([`ReconnectPolicy`]; after a `GoAway`,
///    its `reconnect_after_ms`, at most 30 s) a new session on the next node URL:
///    [`Event::Reconnected`].
/// 2. Per room it had joined, [`Event::Rejoined`] (with `history_gap`), then the room's
///    missed reliable messages, then live ones: no gap (unless `history_gap`) and no
///    duplicate (a reliable message at or below the last offset delivered in its room is
///    dropped). A room the server now refuses is reported as an [`Event::Error`] and
///    forgotten.
///
/// Requests in flight when the connection drops fail with [`ClientError::Closed`] (they
/// may or may not have reached the server; retry if that is safe). Requests made while
/// the client is between connections wait for the new session, up to the first config's
/// `request_timeout`, then fail with [`ClientError::Timeout`]; [`Self::media`] does not
/// wait. After a final error ([`is_final`]: bad token, `FORBIDDEN`, `KICKED`, `BANNED`, an
/// unsupported version), after giving up ([`ReconnectPolicy::max_attempts`]) or after
/// [`Self::close`], requests fail at once and [`Event::Closed`] is the last event.
///
/// The session lives while the application holds a handle (this type, cloned as needed)
/// or the [`Events`]: dropping only the events keeps a publisher working (its events are
/// discarded), dropping only the handles keeps a listener listening; dropping both closes
/// the session at once.
#[derive(Clone)]
pub struct ReconnectingClient {
    shared: Arc<Shared>,
    _handles: Arc<HandlesAlive>,
}

/// Shared by every clone of a [`ReconnectingClient`]; its drop means the last one is gone.
struct HandlesAlive(std::sync::Weak<Shared>);

impl Drop for HandlesAlive {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            shared.handles_gone.store(true, std::sync::atomic::Ordering::SeqCst);
            shared.handles_dropped.notify_one();
        }
    }
}

impl ReconnectingClient {
    /// Connect to the first reachable of `configs` (one per node URL, same token; the first
    /// config's `request_timeout` also bounds waiting for a reconnect), then keep the
    /// session alive. The events stream continues across reconnects; [`Event::Closed`] is
    /// its last event, once the client gives up, meets a final error or is closed.
    ///
    /// Fails if no config connects (a final refusal, such as a bad token, at once).
    pub async fn connect(
        configs: Vec<ClientConfig>,
        policy: ReconnectPolicy,
    ) -> Result<(ReconnectingClient, Events), ClientError> {
        let Some(first) = configs.first() else {
            return Err(ClientError::InvalidUrl("no node URL given".into()));
        };
        let (buffer, request_timeout) = (first.event_buffer.max(1), first.request_timeout);
        let mut last_err = None;
        for (at, config) in configs.iter().enumerate() {
            match Client::connect(config.clone()).await {
                Ok((client, events)) => {
                    let state = State {
                        current: client,
                        rooms: BTreeMap::new(),
                        configs,
                        at,
                        ended: None,
                        past_media: MediaStats::default(),
                        calls: CallStates::default(),
                    };
                    let shared = Arc::new(Shared {
                        state: Mutex::new(state),
                        changed: watch::Sender::new(0),
                        closing: Notify::new(),
                        handles_gone: std::sync::atomic::AtomicBool::new(false),
                        handles_dropped: Notify::new(),
                        request_timeout,
                    });
                    let (tx, rx) = mpsc::channel(buffer);
                    tokio::spawn(supervise(shared.clone(), events, tx, policy));
                    let handles = Arc::new(HandlesAlive(Arc::downgrade(&shared)));
                    return Ok((ReconnectingClient { shared, _handles: handles }, Events::from_receiver(rx)));
                }
                Err(e) if is_final(e.code()) => return Err(e),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or(ClientError::Timeout("connecting")))
    }

    /// The session in use now (it changes on reconnect: do not keep it). Closing it counts
    /// as a lost connection; use [`Self::close`] to stop.
    pub fn client(&self) -> Client {
        self.shared.lock().current.clone()
    }

    /// The current session's `Welcome`.
    pub fn welcome(&self) -> pb::Welcome {
        self.shared.lock().current.welcome().clone()
    }

    /// The current session's id.
    pub fn session_id(&self) -> String {
        self.shared.lock().current.session_id().to_owned()
    }

    /// Whether the current connection carries media on WebTransport media lanes (see
    /// [`Client::media_lanes`]; it can change on reconnect, e.g. to a node without lanes).
    pub fn media_lanes(&self) -> bool {
        self.shared.lock().current.media_lanes()
    }

    /// Media counters of this session, summed over all its connections (see
    /// [`Client::media_stats`]).
    pub fn media_stats(&self) -> MediaStats {
        let s = self.shared.lock();
        s.past_media + s.current.media_stats()
    }

    /// Whether the client stopped for good (closed, gave up, or a final error).
    pub fn is_closed(&self) -> bool {
        self.shared.lock().ended.is_some()
    }

    /// The live session, waiting (bounded) while the client reconnects.
    async fn ready(&self) -> Result<Client, ClientError> {
        // Subscribe before looking, so a change in between is not missed.
        let mut changes = self.shared.changed.subscribe();
        let deadline = Instant::now() + self.shared.request_timeout;
        loop {
            {
                let s = self.shared.lock();
                if let Some(e) = &s.ended {
                    return Err(e.clone());
                }
                if !s.current.is_closed() {
                    return Ok(s.current.clone());
                }
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ClientError::Closed { code: None, reason: "client dropped".into() }),
                Err(_) => return Err(ClientError::Timeout("waiting for a reconnect")),
            }
        }
    }

    /// Join `room` (and join it again after every reconnect, resuming where the
    /// application's stream left off).
    pub async fn join(&self, room: &str) -> Result<pb::Joined, ClientError> {
        let client = self.ready().await?;
        let joined = client.join(room).await?;
        let mut s = self.shared.lock();
        if !s.current.same_connection(&client) {
            // Replaced while joining: the new session is not in the room (and the reconnect
            // did not know to rejoin it).
            return Err(ClientError::Closed { code: None, reason: "connection lost while joining; retry".into() });
        }
        let room = s.rooms.entry(room.to_owned()).or_default();
        room.joined = true;
        room.base = room.base.max(joined.last_offset);
        Ok(joined)
    }

    /// Leave `room` (it is no longer joined again after a reconnect).
    pub async fn leave(&self, room: &str) -> Result<(), ClientError> {
        self.shared.lock().rooms.remove(room);
        self.ready().await?.leave(room).await
    }

    /// Publish (see [`Client::publish`]): the message's offset for a reliable message with
    /// history on, else 0.
    pub async fn publish(&self, room: &str, payload: Bytes, reliable: bool, kind: &str) -> Result<u64, ClientError> {
        self.ready().await?.publish(room, payload, reliable, kind).await
    }

    /// See [`Client::publish_nowait`].
    pub async fn publish_nowait(
        &self,
        room: &str,
        payload: Bytes,
        reliable: bool,
        kind: &str,
    ) -> Result<(), ClientError> {
        self.ready().await?.publish_nowait(room, payload, reliable, kind).await
    }

    /// See [`Client::signal_user`].
    pub async fn signal_user(
        &self,
        room: &str,
        user: &str,
        kind: pb::SignalKind,
        payload: Bytes,
    ) -> Result<(), ClientError> {
        self.ready().await?.signal_user(room, user, kind, payload).await
    }

    /// See [`Client::signal_session`].
    pub async fn signal_session(
        &self,
        room: &str,
        session: &str,
        kind: pb::SignalKind,
        payload: Bytes,
    ) -> Result<(), ClientError> {
        self.ready().await?.signal_session(room, session, kind, payload).await
    }

    /// See [`Client::call_invite`]: the new call's id.
    pub async fn call_invite(&self, callees: &[&str], media: pb::CallMedia) -> Result<String, ClientError> {
        self.ready().await?.call_invite(callees, media).await
    }

    /// See [`Client::call_answer`].
    pub async fn call_answer(&self, call: &str, accept: bool) -> Result<(), ClientError> {
        self.ready().await?.call_answer(call, accept).await
    }

    /// See [`Client::call_cancel`].
    pub async fn call_cancel(&self, call: &str) -> Result<(), ClientError> {
        self.ready().await?.call_cancel(call).await
    }

    /// See [`Client::call_end`].
    pub async fn call_end(&self, call: &str) -> Result<(), ClientError> {
        self.ready().await?.call_end(call).await
    }

    /// See [`Client::signal_call`].
    pub async fn signal_call(
        &self,
        call: &str,
        to_user: &str,
        kind: pb::SignalKind,
        payload: Bytes,
    ) -> Result<(), ClientError> {
        self.ready().await?.signal_call(call, to_user, kind, payload).await
    }

    /// See [`Client::signal_call_session`].
    pub async fn signal_call_session(
        &self,
        call: &str,
        to_session: &str,
        kind: pb::SignalKind,
        payload: Bytes,
    ) -> Result<(), ClientError> {
        self.ready().await?.signal_call_session(call, to_session, kind, payload).await
    }

    /// See [`Client::media`]. Does not wait for a reconnect: a stale frame is worthless.
    pub async fn media(&self, media: pb::Media) -> Result<(), ClientError> {
        self.client().media(media).await
    }

    /// See [`Client::keyframe_request`].
    pub async fn keyframe_request(&self, room: &str, session: &str, track: u32) -> Result<(), ClientError> {
        self.ready().await?.keyframe_request(room, session, track).await
    }

    /// See [`Client::layer_subscribe`]. A choice belongs to the session: after a reconnect
    /// (and for a sender that reconnected, under its new session id) choose again.
    pub async fn layer_subscribe(&self, room: &str, session: &str, layer: u32) -> Result<(), ClientError> {
        self.ready().await?.layer_subscribe(room, session, layer).await
    }

    /// Use `token` for the next reconnects and refresh the live session with it.
    pub async fn refresh_token(&self, token: &str) -> Result<(), ClientError> {
        self.shared.lock().configs.iter_mut().for_each(|c| c.token = token.to_owned());
        self.ready().await?.refresh_token(token).await
    }

    /// Close for good (no reconnect); [`Event::Closed`] follows.
    pub async fn close(&self) {
        let current = self.shared.end(ClientError::Closed { code: None, reason: "closed by the application".into() });
        self.shared.closing.notify_one();
        current.close().await;
    }
}

/// How forwarding one connection's events ended.
enum Lost {
    /// The connection ended; reconnect after `first_delay` (`None`: the backoff's).
    Ended { code: Option<ErrorCode>, reason: String, first_delay: Option<Duration> },
    /// The application dropped its [`Events`] and every handle.
    AppGone,
}

/// Forward events, track offsets, and reconnect when the connection ends.
async fn supervise(shared: Arc<Shared>, mut events: Events, out: mpsc::Sender<Event>, policy: ReconnectPolicy) {
    loop {
        let (code, reason, first_delay) = match forward(&shared, &mut events, &out).await {
            Lost::Ended { code, reason, first_delay } => (code, reason, first_delay),
            Lost::AppGone => {
                let current = shared.end(ClientError::Closed { code: None, reason: "events dropped".into() });
                current.close().await;
                return;
            }
        };
        let stopped = shared.lock().ended.is_some();
        if stopped || is_final(code) {
            shared.end(ClientError::Closed { code, reason: reason.clone() });
            let _ = out.send(Event::Closed { code, reason }).await;
            return;
        }
        tracing::info!(?code, %reason, "connection lost; reconnecting");
        if out.send(Event::Disconnected { code, reason }).await.is_err() {
            shared.end(ClientError::Closed { code: None, reason: "events dropped".into() });
            return;
        }
        match reconnect(&shared, &out, &policy, first_delay).await {
            Some(next) => events = next,
            None => return,
        }
    }
}

/// Forward one connection's events until it ends. On `GoAway`, close it after the hinted
/// delay so the client moves before the node has to cut it.
async fn forward(shared: &Shared, events: &mut Events, out: &mpsc::Sender<Event>) -> Lost {
    let mut events_gone = out.is_closed();
    let mut move_at: Option<Instant> = None;
    let mut moving = false;
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            // Nobody listens any more: without handles either, close now (not at the next
            // event: a quiet room would keep the session open for good).
            _ = out.closed(), if !events_gone => {
                events_gone = true;
                if shared.handles_gone.load(std::sync::atomic::Ordering::SeqCst) {
                    return Lost::AppGone;
                }
                continue;
            }
            _ = shared.handles_dropped.notified(), if events_gone => return Lost::AppGone,
            _ = tokio::time::sleep_until(move_at.unwrap_or_else(Instant::now)), if move_at.is_some() => {
                if moving {
                    // The old connection did not confirm its close: go on without it.
                    let reason = "moved after GoAway".to_owned();
                    return Lost::Ended { code: None, reason, first_delay: Some(Duration::ZERO) };
                }
                moving = true;
                move_at = Some(Instant::now() + CLOSE_GRACE);
                let current = shared.lock().current.clone();
                current.close().await;
                continue;
            }
        };
        let Some(event) = event else {
            return Lost::Ended { code: None, reason: "connection ended".into(), first_delay: None };
        };
        let event = match event {
            Event::Closed { code, reason } => {
                // Moved (or told to move): no further backoff; else the remaining hint.
                let first_delay = match move_at {
                    Some(_) if moving => Some(Duration::ZERO),
                    Some(at) => Some(at.saturating_duration_since(Instant::now())),
                    None => None,
                };
                let reason = if moving { format!("moving after GoAway ({reason})") } else { reason };
                return Lost::Ended { code, reason, first_delay };
            }
            Event::Message(m) if m.reliable && m.offset != 0 => {
                let duplicate = {
                    let mut s = shared.lock();
                    let room = s.rooms.entry(m.room.clone()).or_default();
                    let duplicate = m.offset <= room.delivered;
                    room.delivered = room.delivered.max(m.offset);
                    duplicate
                };
                if duplicate {
                    tracing::debug!(room = %m.room, offset = m.offset, "dropped a replayed duplicate");
                    continue;
                }
                Event::Message(m)
            }
            Event::Rejoined(j) => {
                if let Some(room) = shared.lock().rooms.get_mut(&j.room) {
                    let resumed_from = room.base.max(room.delivered);
                    if j.history_gap && j.last_offset < resumed_from {
                        // The room's history started over (its log was lost): its offsets
                        // restart below what this client saw, so forget the old ones.
                        *room = RoomState { joined: room.joined, base: j.last_offset, delivered: 0 };
                    } else if j.replayed == 0 {
                        // Nothing replayed: nothing between the resume point and
                        // `last_offset` will come, so the next resume may start there.
                        // (With a replay, `delivered` advances message by message; jumping
                        // ahead would skip the rest if the connection dropped mid-replay.)
                        room.base = room.base.max(j.last_offset);
                    }
                }
                Event::Rejoined(j)
            }
            Event::Left(l) => {
                shared.lock().rooms.remove(&l.room);
                Event::Left(l)
            }
            Event::Call(e) => {
                let id = e.call.as_ref().map(|c| c.id.clone()).unwrap_or_default();
                if !shared.lock().calls.advance(&id, e.state()) {
                    tracing::debug!(call = %id, "dropped a call state older than one delivered");
                    continue;
                }
                Event::Call(e)
            }
            Event::GoAway(g) => {
                if move_at.is_none() {
                    let wait = Duration::from_millis(u64::from(g.reconnect_after_ms)).min(MAX_GOAWAY_WAIT);
                    move_at = Some(Instant::now() + wait);
                }
                Event::GoAway(g)
            }
            other => other,
        };
        // Without a listener the event is dropped; the session stays for the handles.
        if !events_gone && out.send(event).await.is_err() {
            events_gone = true;
            if shared.handles_gone.load(std::sync::atomic::Ordering::SeqCst) {
                return Lost::AppGone;
            }
        }
    }
}

/// Reconnect with backoff, rotating through the configs; rejoin the rooms. `None` when
/// the client stopped (and `Event::Closed` was sent).
async fn reconnect(
    shared: &Arc<Shared>,
    out: &mpsc::Sender<Event>,
    policy: &ReconnectPolicy,
    first_delay: Option<Duration>,
) -> Option<Events> {
    let closed_by_app = || Event::Closed { code: None, reason: "closed by the application".into() };
    let mut attempt = 0u32;
    // A node that refused for now said when to come back (already spread by the node).
    let mut hinted: Option<Duration> = None;
    loop {
        let delay = match (attempt, first_delay, hinted.take()) {
            (_, _, Some(hint)) => hint.min(MAX_GOAWAY_WAIT),
            (0, Some(d), None) => d,
            _ => policy.delay(attempt),
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shared.closing.notified() => {}
        }
        let config = {
            let mut s = shared.lock();
            if s.ended.is_some() {
                None
            } else {
                s.at = (s.at + 1) % s.configs.len();
                let mut config = s.configs[s.at].clone();
                config.resume_calls = s.calls.live();
                Some(config)
            }
        };
        let Some(config) = config else {
            let _ = out.send(closed_by_app()).await;
            return None;
        };
        match Client::connect(config).await {
            Ok((client, events)) => {
                // Swap and snapshot under one lock: a concurrent `join` either lands in the
                // snapshot or sees the swap (and fails).
                let rooms: Option<Vec<(String, Option<u64>)>> = {
                    let mut s = shared.lock();
                    if s.ended.is_some() {
                        None
                    } else {
                        let past = s.current.media_stats();
                        s.past_media += past;
                        s.current = client.clone();
                        Some(
                            s.rooms
                                .iter()
                                .filter(|(_, r)| r.joined)
                                .map(|(n, r)| (n.clone(), r.resume_from()))
                                .collect(),
                        )
                    }
                };
                let Some(rooms) = rooms else {
                    client.close().await;
                    let _ = out.send(closed_by_app()).await;
                    return None;
                };
                shared.bump();
                let welcome = client.welcome().clone();
                tracing::info!(node = %welcome.node, session = %welcome.session_id, "reconnected");
                if out.send(Event::Reconnected { welcome }).await.is_err() {
                    shared.end(ClientError::Closed { code: None, reason: "events dropped".into() });
                    client.close().await;
                    return None;
                }
                // Rejoin while the supervisor forwards events again: a large replay must
                // not wait behind the other rooms' joins.
                tokio::spawn(rejoin(shared.clone(), client, rooms));
                return Some(events);
            }
            Err(e) if is_final(e.code()) => {
                let (code, reason) = (e.code(), e.to_string());
                shared.end(e);
                let _ = out.send(Event::Closed { code, reason }).await;
                return None;
            }
            Err(e) => {
                tracing::debug!(attempt, error = %e, "reconnect attempt failed");
                hinted = e.retry_after();
                attempt = attempt.saturating_add(1);
                if policy.max_attempts.is_some_and(|max| attempt >= max) {
                    let reason = format!("gave up reconnecting after {attempt} attempts: {e}");
                    shared.end(ClientError::Closed { code: e.code(), reason: reason.clone() });
                    let _ = out.send(Event::Closed { code: e.code(), reason }).await;
                    return None;
                }
            }
        }
    }
}

/// Join `rooms` again on `client`, each resuming after its offset. The answers reach the
/// application through the connection's own stream ([`Event::Rejoined`] before the replay,
/// or [`Event::Error`]); a room the server refuses now (grants changed, room full, ...) is
/// forgotten.
async fn rejoin(shared: Arc<Shared>, client: Client, rooms: Vec<(String, Option<u64>)>) {
    let joins = rooms.iter().map(|(room, from)| client.rejoin(room, *from));
    let results = futures_util::future::join_all(joins).await;
    for ((room, _), result) in rooms.into_iter().zip(results) {
        match result {
            Ok(_) => {}
            Err(ClientError::Server { code, message }) => {
                tracing::warn!(%room, ?code, %message, "rejoining a room was refused");
                shared.lock().rooms.remove(&room);
            }
            // The connection dropped again (the next reconnect rejoins) or timed out.
            Err(e) => tracing::warn!(%room, error = %e, "rejoining a room failed"),
        }
    }
}

mod calls;
#[cfg(test)]
mod tests;

use calls::CallStates;

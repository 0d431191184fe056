//! The session state machine, transport-agnostic.
//!
//! ```text
//! connected --Hello(valid token)--> active --(close | error | drain deadline)--> closed
//!     \--(other frame / bad token / hello timeout)--> closed with an Error frame
//! ```
//!
//! [`run`] drives one connection: it reads frames from the [`Transport`], handles them,
//! and writes the session's outbound queue in priority order. Identity (user, session,
//! node) is always stamped from the verified token and this session, never from a frame.

use crate::admission::{Refused, Ticket};
use crate::auth::Claims;
use crate::calls::{self, Actor};
use crate::context::NodeContext;
use crate::outbound::{Class, Outbound, Popped, Pushed, SessionCommand};
use crate::rate::TokenBucket;
use crate::rooms::{self, Member};
use crate::transport::{Lane, MediaTag, Outgoing, Transport, TransportError};
use crate::writing::{while_handling, write_batch, WriteFailed, WRITE_BATCH};
use bytes::Bytes;
use futures_util::FutureExt;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use switchboard_protocol::pb::{
    bus_envelope, client_frame, server_frame, signal, Ack, BusKeyframeRequest, BusSignal, ClientFrame, Error, GoAway,
    IceServers, KeyframeRequestEvent, Left, MediaEvent, Participant, Pong, Sender, ServerFrame, SignalEvent, Welcome,
};
use switchboard_protocol::subject::{validate_id, RoomChannel};
use switchboard_protocol::{decode_client_frame, encode, limits, now_ms, ErrorCode, PROTOCOL_VERSION};
use tokio::time::{sleep_until, Instant};

/// An authenticated session.
struct Session {
    node: Arc<NodeContext>,
    id: String,
    claims: Claims,
    outbound: Arc<Outbound>,
    rooms: BTreeSet<String>,
    requests: TokenBucket,
    media_bytes: TokenBucket,
    pings: TokenBucket,
    /// Frames refused over a rate limit: a client that keeps sending past its refusals is
    /// disconnected instead of costing the node an error frame per frame.
    refusals: TokenBucket,
    expires_at: Instant,
    /// The session is registered with the node (and its user's inbox attached).
    live: bool,
    /// Calls the client asked to resume (`Hello.calls`).
    resume_calls: Vec<String>,
    /// Publisher pushback while the node or a room is behind.
    pushback: crate::overload::Pushback,
    /// (room, sender session) pairs this session chose a simulcast layer for (at most
    /// `max_layer_subscriptions`).
    layer_choices: BTreeSet<(String, String)>,
}

/// Whatever the session holds in the node is given back on every exit path: the normal one
/// awaits [`release`]; a panic (or a cancelled task) drops the session here, which
/// hands the same work to a task of its own. The admission ticket and the user's slot are
/// guards of their own.
impl Drop for Session {
    fn drop(&mut self) {
        if !self.live && self.rooms.is_empty() {
            return;
        }
        if std::thread::panicking() {
            self.node.metrics.session_panics.inc();
            tracing::error!(session = %self.id, user = %self.claims.sub, "session task panicked; cleaning up after it");
        }
        let rooms = std::mem::take(&mut self.rooms);
        let live = std::mem::take(&mut self.live);
        let (node, id, user) = (self.node.clone(), self.id.clone(), self.claims.sub.clone());
        self.node.runtime.spawn(async move { release(&node, &id, &user, rooms, live).await });
    }
}

/// Leave the session's rooms, detach its user's inbox and unregister it.
async fn release(node: &Arc<NodeContext>, id: &str, user: &str, rooms: BTreeSet<String>, live: bool) {
    for room in rooms {
        Box::pin(rooms::leave(node, &room, id, "disconnected")).await;
    }
    if live {
        Box::pin(crate::calls::inbox::detach(node, user)).await;
        node.unregister_session(id);
    }
}

/// A frame handling outcome that ends the session.
struct Fatal(ErrorCode, String);

fn server(kind: server_frame::Kind) -> Bytes {
    encode(&ServerFrame { kind: Some(kind) })
}

fn error_frame(code: ErrorCode, message: impl Into<String>, ref_id: u64, fatal: bool) -> Bytes {
    server(server_frame::Kind::Error(Error { code: code as i32, message: message.into(), ref_id, fatal }))
}

/// Answer a reliable publish once the room's log has (or has not) stored it: an `Ack` with
/// the offset when the client asked for one (`id` != 0), an `Error` in any case on failure.
fn append_answered(node: &NodeContext, outbound: &Outbound, id: u64, stored: Result<u64, crate::bus::BusError>) {
    let frame = match stored {
        Ok(_) if id == 0 => return,
        Ok(offset) => server(server_frame::Kind::Ack(Ack { ref_id: id, offset, ..Default::default() })),
        Err(e) => {
            node.metrics.error(ErrorCode::Unavailable);
            error_frame(ErrorCode::Unavailable, e.to_string(), id, false)
        }
    };
    outbound.push(Class::Control, frame, false);
}

fn kind_name(kind: &client_frame::Kind) -> &'static str {
    match kind {
        client_frame::Kind::Hello(_) => "hello",
        client_frame::Kind::Ping(_) => "ping",
        client_frame::Kind::RefreshToken(_) => "refresh_token",
        client_frame::Kind::Join(_) => "join",
        client_frame::Kind::Leave(_) => "leave",
        client_frame::Kind::Publish(_) => "publish",
        client_frame::Kind::Signal(_) => "signal",
        client_frame::Kind::Media(_) => "media",
        client_frame::Kind::KeyframeRequest(_) => "keyframe_request",
        client_frame::Kind::IceServersRequest(_) => "ice_servers_request",
        client_frame::Kind::LayerSubscribe(_) => "layer_subscribe",
        client_frame::Kind::CallInvite(_) => "call_invite",
        client_frame::Kind::CallAnswer(_) => "call_answer",
        client_frame::Kind::CallCancel(_) => "call_cancel",
        client_frame::Kind::CallEnd(_) => "call_end",
    }
}

/// The furthest a token's expiry is scheduled: a validly signed token may say `exp` near
/// `u64::MAX`, which no clock can add.
const MAX_EXPIRY_WAIT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Deadline for a token expiring at `exp` (Unix seconds).
fn expiry_deadline(exp: u64) -> Instant {
    let now_s = crate::auth::now_secs();
    let wait = Duration::from_secs(exp.saturating_sub(now_s)).min(MAX_EXPIRY_WAIT);
    let now = Instant::now();
    now.checked_add(wait).unwrap_or(now + MAX_EXPIRY_WAIT)
}

/// How many frames over its rate limits a session may send (each answered `RATE_LIMITED`)
/// before it is disconnected: generous for a client that backs off late, finite for one that
/// ignores the answers.
fn refusal_tolerance(requests: crate::config::Rate) -> crate::config::Rate {
    crate::config::Rate { per_sec: requests.per_sec, burst: (4.0 * requests.burst).max(1000.0) }
}

/// The fatal frame telling a client why its connection was not admitted (an edge that
/// refuses before any session runs sends it itself).
pub fn refusal_frame(why: Refused) -> Bytes {
    error_frame(why.code(), why.to_string(), 0, true)
}

/// Drive one admitted connection until it ends. Whatever it holds in the node (rooms,
/// presence, its registration, admission slots, gauges) is given back however it ends,
/// panics included.
pub async fn run<T: Transport>(node: Arc<NodeContext>, mut transport: T, mut ticket: Ticket) {
    let kind = transport.kind();
    let label = crate::metrics::TransportLabel { transport: kind.as_str() };
    let peer = ticket.peer();
    let (code, reason) = match Box::pin(handshake(&node, &mut transport, &ticket)).await {
        Ok(mut session) => {
            ticket.authenticated();
            transport.set_max_frame(limits::MAX_FRAME_BYTES);
            let Some(_user_slot) = crate::admission::enter_user(&node, &session.claims.sub) else {
                node.metrics.error(ErrorCode::TooManyConnections);
                node.metrics
                    .admission_refusals
                    .get_or_create(&crate::metrics::ReasonLabel { reason: "user_sessions" })
                    .inc();
                let msg = "too many sessions of this user on this node";
                let (code, reason) = Box::pin(session.fatal(&mut transport, ErrorCode::TooManyConnections, msg)).await;
                transport.close(code, &reason).await;
                return;
            };
            node.metrics.sessions_total.get_or_create(&label).inc();
            node.register_session(&session.id, &session.claims.sub, session.outbound.clone());
            session.live = true;
            tracing::info!(session = %session.id, user = %session.claims.sub, transport = kind.as_str(), ?peer, "session started");
            // The user's inbox reaches this node before the client hears Welcome.
            let end = match Box::pin(crate::calls::inbox::attach(&node, &session.claims.sub)).await {
                Ok(()) => {
                    let calls = std::mem::take(&mut session.resume_calls);
                    crate::calls::resume::replay(&node, &session.claims.sub, &calls, &session.outbound).await;
                    session.serve(&mut transport).await
                }
                Err(e) => {
                    node.metrics.error(ErrorCode::Unavailable);
                    let msg = format!("cannot subscribe to the user's inbox: {e}");
                    Box::pin(session.fatal(&mut transport, ErrorCode::Unavailable, &msg)).await
                }
            };
            let rooms = std::mem::take(&mut session.rooms);
            let live = std::mem::take(&mut session.live);
            release(&node, &session.id, &session.claims.sub, rooms, live).await;
            tracing::info!(session = %session.id, code = end.0.as_str_name(), reason = %end.1, "session ended");
            end
        }
        Err(Fatal(code, reason)) => {
            tracing::debug!(code = code.as_str_name(), %reason, ?peer, "handshake failed");
            (code, reason)
        }
    };
    transport.close(code, &reason).await;
}

/// Wait for a valid `Hello`; answer `Welcome`, or send a fatal error.
async fn handshake<T: Transport>(
    node: &Arc<NodeContext>,
    transport: &mut T,
    ticket: &Ticket,
) -> Result<Session, Fatal> {
    match accept_hello(node, transport, ticket.hello_deadline()).await {
        Ok(session) => Ok(session),
        Err(Refusal::Silent(fatal)) => Err(fatal),
        Err(Refusal::Error(code, message, ref_id)) => {
            node.metrics.error(code);
            // Best effort: the connection is closed right after.
            let bytes = error_frame(code, message.clone(), ref_id, true);
            let _ = tokio::time::timeout(Duration::from_secs(1), transport.send(bytes.into())).await;
            Err(Fatal(code, message))
        }
    }
}

/// Why a connection did not become a session.
enum Refusal {
    /// Nothing to tell the client (it left).
    Silent(Fatal),
    /// Tell the client: code, message, the frame id it refers to.
    Error(ErrorCode, String, u64),
}

async fn accept_hello<T: Transport>(
    node: &Arc<NodeContext>,
    transport: &mut T,
    deadline: Instant,
) -> Result<Session, Refusal> {
    let received = tokio::select! {
        r = transport.recv() => r,
        _ = sleep_until(deadline) => {
            return Err(Refusal::Error(ErrorCode::HelloTimeout, "no Hello within the time limit".into(), 0));
        }
    };
    let bytes = match received {
        None => return Err(Refusal::Silent(Fatal(ErrorCode::Unspecified, "closed before Hello".into()))),
        Some(Err(TransportError::Io(e))) => {
            node.metrics
                .abrupt_closes
                .get_or_create(&crate::metrics::TransportLabel { transport: transport.kind().as_str() })
                .inc();
            return Err(Refusal::Silent(Fatal(ErrorCode::Unspecified, format!("connection lost before Hello: {e}"))));
        }
        Some(Err(e)) => return Err(Refusal::Error(transport_error_code(&e), e.to_string(), 0)),
        // Lanes open only after Welcome: before it, everything comes on the control stream.
        Some(Ok(incoming)) => incoming.frame,
    };
    node.metrics.bytes_in.inc_by(bytes.len() as u64);
    let frame = decode_client_frame(&bytes).map_err(|e| Refusal::Error(e.code(), e.to_string(), 0))?;
    let Some(client_frame::Kind::Hello(hello)) = frame.kind else {
        return Err(Refusal::Error(ErrorCode::HelloRequired, "the first frame must be Hello".into(), frame.id));
    };
    node.metrics.frames_in.get_or_create(&crate::metrics::KindLabel { kind: "hello" }).inc();
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(Refusal::Error(
            ErrorCode::UnsupportedVersion,
            format!("protocol version {} is not supported (server speaks {PROTOCOL_VERSION})", hello.protocol_version),
            frame.id,
        ));
    }
    if node.is_draining() {
        return Err(Refusal::Error(
            ErrorCode::ShuttingDown,
            "node is draining; connect to another node".into(),
            frame.id,
        ));
    }
    // Before verifying the token: refusing is the cheap part of a reconnect storm.
    if let Err(hint) = node.session_rate.admit() {
        node.metrics.admission_refusals.get_or_create(&crate::metrics::ReasonLabel { reason: "session_rate" }).inc();
        let after = hint.as_millis().min(u128::from(u32::MAX)) as u32;
        let go_away = GoAway { reason: "node admitting sessions at its rate limit".into(), reconnect_after_ms: after };
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            transport.send(server(server_frame::Kind::GoAway(go_away)).into()),
        )
        .await;
        return Err(Refusal::Error(
            ErrorCode::RateLimited,
            format!("the node is admitting new sessions at its rate limit; retry after {after} ms"),
            frame.id,
        ));
    }
    let claims = node.verifier.verify(&hello.token).map_err(|e| {
        node.metrics.auth_failures.get_or_create(&crate::metrics::CodeLabel { code: e.code().as_str_name() }).inc();
        Refusal::Error(e.code(), e.to_string(), frame.id)
    })?;
    if claims.sub == crate::admin::SERVER_USER {
        // The sender of the admin API's server messages: nobody may speak as it.
        return Err(Refusal::Error(
            ErrorCode::Forbidden,
            format!("the user id {:?} is reserved for server messages", crate::admin::SERVER_USER),
            frame.id,
        ));
    }
    if let Some(until) = crate::bans::banned_until(node, &claims.sub) {
        let secs = until.saturating_sub(now_ms()).div_ceil(1000);
        return Err(Refusal::Error(
            ErrorCode::Banned,
            format!("banned by an operator for {secs} more seconds"),
            frame.id,
        ));
    }
    let session = Session {
        node: node.clone(),
        id: crate::ids::session_id(),
        expires_at: expiry_deadline(claims.exp),
        outbound: Arc::new(Outbound::with_load(node.config.queue_limits, node.load.clone())),
        rooms: BTreeSet::new(),
        requests: TokenBucket::new(node.config.request_rate),
        media_bytes: TokenBucket::new(node.config.media_bytes_rate),
        pings: TokenBucket::new(node.config.ping_rate),
        refusals: TokenBucket::new(refusal_tolerance(node.config.request_rate)),
        live: false,
        resume_calls: hello.calls.into_iter().take(crate::calls::resume::MAX_RESUME_CALLS).collect(),
        pushback: Default::default(),
        layer_choices: BTreeSet::new(),
        claims,
    };
    let media_lanes = transport.open_media_lanes(hello.media_lanes);
    let welcome = Welcome {
        protocol_version: PROTOCOL_VERSION,
        session_id: session.id.clone(),
        node: node.config.node_id.clone(),
        user: session.claims.sub.clone(),
        name: session.claims.display_name().to_owned(),
        heartbeat_ms: node.config.client_heartbeat.as_millis() as u32,
        token_expires_at: session.claims.exp,
        max_frame_bytes: limits::MAX_FRAME_BYTES as u32,
        media_lanes,
        ice_servers: session.ice_servers(0),
    };
    session.outbound.push(Class::Control, server(server_frame::Kind::Welcome(welcome)), false);
    Ok(session)
}

fn transport_error_code(e: &TransportError) -> ErrorCode {
    match e {
        TransportError::TooLarge(_) => ErrorCode::FrameTooLarge,
        TransportError::Protocol(_) => ErrorCode::BadFrame,
        TransportError::Flood(_) => ErrorCode::RateLimited,
        TransportError::Io(_) => ErrorCode::Unspecified,
    }
}

impl Session {
    /// The node's ICE servers for this session's user, with fresh TURN credentials
    /// (`None` when the node has none configured).
    fn ice_servers(&self, ref_id: u64) -> Option<IceServers> {
        let ice = &self.node.config.ice;
        (!ice.is_empty()).then(|| IceServers { ref_id, ..ice.servers(&self.claims.sub, now_ms() / 1000) })
    }

    fn sender(&self) -> Sender {
        Sender {
            user: self.claims.sub.clone(),
            session: self.id.clone(),
            name: self.claims.display_name().to_owned(),
            node: self.node.config.node_id.clone(),
        }
    }

    fn reply(&self, bytes: Bytes) {
        if self.outbound.push(Class::Control, bytes, false) == Pushed::Overflow {
            self.node.metrics.slow_consumer_disconnects.inc();
        }
    }

    fn error(&self, code: ErrorCode, message: impl Into<String>, ref_id: u64) {
        self.node.metrics.error(code);
        self.reply(error_frame(code, message, ref_id, false));
    }

    fn ack(&self, ref_id: u64) {
        if ref_id != 0 {
            self.reply(server(server_frame::Kind::Ack(Ack { ref_id, ..Default::default() })));
        }
    }

    /// The session's main loop. Returns the close code and reason.
    async fn serve<T: Transport>(&mut self, transport: &mut T) -> (ErrorCode, String) {
        let idle_limit = self.node.config.client_heartbeat * 3;
        let mut idle_deadline = Instant::now() + idle_limit;
        let mut drain = self.node.drain_signal();
        let mut told_to_move = false;
        // Grow on the first burst only: an idle connection holds no batch buffer.
        let mut batch: Vec<Outgoing> = Vec::new();
        let mut dropped: Vec<MediaTag> = Vec::new();
        loop {
            let pause = self.pushback.pause();
            let paused = pause.is_some();
            tokio::select! {
                biased;
                popped = self.outbound.pop() => match popped {
                    Popped::Frame(bytes) => {
                        // Write what is queued now as one batch under one timer.
                        batch.push(bytes);
                        self.outbound.pop_frames(WRITE_BATCH - 1, &mut batch);
                        let written = write_batch(transport, &self.outbound, &mut batch, &mut dropped, self.node.config.write_timeout).await;
                        if let Err(failed) = written {
                            return Box::pin(self.write_failed(transport, failed)).await;
                        }
                        if !dropped.is_empty() {
                            Box::pin(self.media_dropped(&mut dropped)).await;
                        }
                    }
                    Popped::Closed(reason) => return Box::pin(self.fatal(transport, reason.code, &reason.message)).await,
                    Popped::Command(SessionCommand::LeaveRoom { room, reason }) => {
                        if self.rooms.remove(&room) {
                            self.layer_choices.retain(|(r, _)| *r != room);
                            Box::pin(rooms::leave(&self.node, &room, &self.id, &reason)).await;
                            self.reply(server(server_frame::Kind::Left(Left { room, reason })));
                        }
                    }
                },
                // Pushback: while paused, read nothing more from this publisher (TCP and
                // QUIC flow control slow it down); keep writing to it.
                cleared = crate::overload::Pushback::wait(&self.node.load, pause, || self.outbound.own_fanned_out()), if paused => {
                    self.pushback.resumed(cleared, &self.node.load, self.outbound.own_fanned_out());
                }
                received = transport.recv(), if !paused => {
                    let incoming = match received {
                        None => return (ErrorCode::Unspecified, "client closed".into()),
                        Some(Err(TransportError::Io(e))) => {
                            self.node.metrics.abrupt_closes.get_or_create(&crate::metrics::TransportLabel { transport: transport.kind().as_str() }).inc();
                            return (ErrorCode::Unspecified, format!("connection lost: {e}"));
                        }
                        Some(Err(e)) => {
                            let code = transport_error_code(&e);
                            self.node.metrics.error(code);
                            return Box::pin(self.fatal(transport, code, &e.to_string())).await;
                        }
                        Some(Ok(incoming)) => incoming,
                    };
                    idle_deadline = Instant::now() + idle_limit;
                    self.node.metrics.bytes_in.inc_by(incoming.frame.len() as u64);
                    // Boxed: handling a frame (joins, calls, history) is a large future that
                    // would otherwise sit inline in every idle session's task. What is
                    // queued meanwhile is written meanwhile (crate::writing).
                    let (outbound, deadline) = (self.outbound.clone(), self.node.config.write_timeout);
                    let handling = Box::pin(self.handle(incoming.frame, incoming.lane));
                    let (handled, written) = while_handling(transport, &outbound, handling, &mut dropped, deadline).await;
                    if let Err(Fatal(code, msg)) = handled {
                        return Box::pin(self.fatal(transport, code, &msg)).await;
                    }
                    if let Err(failed) = written {
                        return Box::pin(self.write_failed(transport, failed)).await;
                    }
                    if !dropped.is_empty() {
                        Box::pin(self.media_dropped(&mut dropped)).await;
                    }
                }
                // One timer for both deadlines (a timer is ~100 bytes in every idle session).
                _ = sleep_until(idle_deadline.min(self.expires_at)) => {
                    if Instant::now() >= idle_deadline {
                        self.node.metrics.error(ErrorCode::HeartbeatTimeout);
                        return Box::pin(self.fatal(transport, ErrorCode::HeartbeatTimeout, "no frame within three heartbeat intervals")).await;
                    }
                    self.node.metrics.error(ErrorCode::TokenExpired);
                    return Box::pin(self.fatal(transport, ErrorCode::TokenExpired, "token expired; refresh it before exp")).await;
                }
                changed = drain.changed(), if !told_to_move => {
                    told_to_move = true;
                    if changed.is_ok() && *drain.borrow() {
                        // Spread reconnects so a node's clients don't stampede one moment.
                        let after = rand::random_range(0..5_000u32);
                        self.reply(server(server_frame::Kind::GoAway(GoAway { reason: "node draining".into(), reconnect_after_ms: after })));
                    }
                }
            }
        }
    }

    /// The transport dropped media frames rather than wait: skip each of those tracks to its
    /// next keyframe and ask its sender for one (once per track per batch).
    async fn media_dropped(&self, dropped: &mut Vec<MediaTag>) {
        let mut asked: Vec<MediaTag> = Vec::new();
        for tag in dropped.drain(..) {
            if asked.iter().any(|a| a.origin == tag.origin && a.track == tag.track) {
                continue;
            }
            self.node
                .metrics
                .queue_drops
                .get_or_create(&crate::metrics::ClassLabel { class: Class::Media.as_str() })
                .inc();
            self.outbound.skip_to_keyframe(&tag.origin.session, tag.track);
            rooms::request_keyframe(&self.node, &tag.origin.room, tag.origin.session.clone(), tag.track).await;
            rooms::media_dropped(&self.node, &tag.origin.room, &self.id, &tag.origin.session, tag.track).await;
            asked.push(tag);
        }
    }

    /// Writing to the client failed: a transport error ends the session; a write that timed
    /// out ends it as a slow consumer.
    async fn write_failed<T: Transport>(&self, transport: &mut T, failed: WriteFailed) -> (ErrorCode, String) {
        match failed {
            WriteFailed::Transport(e) => (ErrorCode::Unspecified, format!("write failed: {e}")),
            WriteFailed::TimedOut => {
                self.node.metrics.slow_consumer_disconnects.inc();
                self.fatal(transport, ErrorCode::SlowConsumer, "write timed out: the client is not reading").await
            }
        }
    }

    /// Send a fatal error (best effort, bounded in time) and report the close.
    async fn fatal<T: Transport>(&self, transport: &mut T, code: ErrorCode, msg: &str) -> (ErrorCode, String) {
        let frame = error_frame(code, msg, 0, true).into();
        let _ = tokio::time::timeout(Duration::from_secs(1), transport.send(frame)).await;
        (code, msg.to_owned())
    }

    async fn handle(&mut self, bytes: Bytes, lane: Lane) -> Result<(), Fatal> {
        let frame: ClientFrame = match decode_client_frame(&bytes) {
            Ok(f) => f,
            Err(e) => {
                // A malformed frame is refused, the session carries on.
                self.error(e.code(), e.to_string(), 0);
                return Ok(());
            }
        };
        let id = frame.id;
        let Some(kind) = frame.kind else { return Ok(()) };
        let name = kind_name(&kind);
        self.node.metrics.frames_in.get_or_create(&crate::metrics::KindLabel { kind: name }).inc();
        let on_lane = lane == Lane::Media;
        if on_lane && !matches!(kind, client_frame::Kind::Media(_) | client_frame::Kind::KeyframeRequest(_)) {
            self.error(
                ErrorCode::InvalidArgument,
                format!("{name} may not use a media lane (datagrams and unidirectional streams carry Media and KeyframeRequest only)"),
                id,
            );
            return Ok(());
        }
        let limited = match &kind {
            // On a lane every frame also counts as a request: datagrams and streams are cheap
            // to send, so their number is bounded as well as their bytes.
            client_frame::Kind::Media(m) => {
                (on_lane && !self.requests.take(1.0)) || !self.media_bytes.take(m.payload.len() as f64)
            }
            client_frame::Kind::Ping(_) => !self.pings.take(1.0),
            client_frame::Kind::RefreshToken(_) => false,
            _ => !self.requests.take(1.0),
        };
        if limited {
            self.node.metrics.rate_limited.get_or_create(&crate::metrics::KindLabel { kind: name }).inc();
            if !self.refusals.take(1.0) {
                return Err(Fatal(ErrorCode::RateLimited, "kept sending far over the rate limit".into()));
            }
            self.error(ErrorCode::RateLimited, format!("{name} rate limit exceeded"), id);
            return Ok(());
        }
        match kind {
            client_frame::Kind::Hello(_) => {
                self.error(ErrorCode::AlreadyAuthenticated, "Hello was already received", id)
            }
            client_frame::Kind::Ping(p) => self.reply(server(server_frame::Kind::Pong(Pong { nonce: p.nonce }))),
            client_frame::Kind::IceServersRequest(_) => {
                let servers = self.ice_servers(id).unwrap_or(IceServers { ref_id: id, ..Default::default() });
                self.reply(server(server_frame::Kind::IceServers(servers)))
            }
            client_frame::Kind::RefreshToken(r) => self.refresh(id, &r.token).await?,
            client_frame::Kind::Join(j) => self.join(id, &j.room, j.resume_from).await,
            client_frame::Kind::Leave(l) => {
                if self.rooms.remove(&l.room) {
                    self.layer_choices.retain(|(room, _)| *room != l.room);
                    rooms::leave(&self.node, &l.room, &self.id, "left").await;
                    self.ack(id);
                } else {
                    self.error(ErrorCode::NotInRoom, format!("not in room {:?}", l.room), id);
                }
            }
            client_frame::Kind::Publish(p) => self.publish(id, p).await,
            client_frame::Kind::LayerSubscribe(l) => self.layer_subscribe(id, l).await,
            client_frame::Kind::Signal(s) => self.signal(id, s).await,
            client_frame::Kind::Media(m) => self.media(id, m).await,
            client_frame::Kind::KeyframeRequest(k) => {
                if !self.check_room(&k.room, id) {
                    return Ok(());
                }
                if !self.claims.may_send_media() {
                    self.error(ErrorCode::Forbidden, "token does not grant media", id);
                    return Ok(());
                }
                let event = KeyframeRequestEvent {
                    room: k.room.clone(),
                    from: Some(self.sender()),
                    track: k.track,
                    layer: None,
                };
                let req = BusKeyframeRequest { to_session: k.to_session, event: Some(event) };
                let subject = self.node.subjects.room(&k.room, RoomChannel::Media);
                self.publish_or_error(subject, bus_envelope::Kind::KeyframeRequest(req), id).await;
            }
            client_frame::Kind::CallInvite(inv) => {
                // Unset is audio (documented); a value the protocol does not define is refused.
                if switchboard_protocol::pb::CallMedia::try_from(inv.media).is_err() {
                    self.error(ErrorCode::InvalidArgument, format!("unknown call media {}", inv.media), id);
                    return Ok(());
                }
                let media = inv.media();
                self.call_op(id, |node, actor| async move { calls::invite(&node, &actor, &inv.callees, media).await })
                    .await
            }
            client_frame::Kind::CallAnswer(a) => {
                self.call_op(id, |node, actor| async move { calls::answer(&node, &actor, &a.call, a.accept).await })
                    .await
            }
            client_frame::Kind::CallCancel(c) => {
                self.call_op(id, |node, actor| async move { calls::cancel(&node, &actor, &c.call).await }).await
            }
            client_frame::Kind::CallEnd(c) => {
                self.call_op(id, |node, actor| async move { calls::hang_up(&node, &actor, &c.call).await }).await
            }
        }
        Ok(())
    }

    fn actor(&self) -> Actor {
        Actor { user: self.claims.sub.clone(), session: self.id.clone(), name: self.claims.display_name().to_owned() }
    }

    /// Run a call operation for this session; ack with the call id or send its error.
    async fn call_op<F, Fut>(&self, id: u64, op: F)
    where
        F: FnOnce(Arc<NodeContext>, Actor) -> Fut,
        Fut: std::future::Future<Output = Result<switchboard_protocol::pb::Call, calls::CallError>>,
    {
        if !self.claims.may_call() {
            return self.error(ErrorCode::Forbidden, "token does not grant calls", id);
        }
        match op(self.node.clone(), self.actor()).await {
            Ok(call) if id != 0 => {
                self.reply(server(server_frame::Kind::Ack(Ack { ref_id: id, call: call.id, ..Default::default() })))
            }
            Ok(_) => {}
            Err(e) => self.error(e.code(), e.to_string(), id),
        }
    }

    async fn publish_or_error(&self, subject: String, kind: bus_envelope::Kind, id: u64) {
        match self.node.publish(subject, kind).await {
            Ok(()) => self.ack(id),
            Err(e) => self.error(ErrorCode::Unavailable, e.to_string(), id),
        }
    }

    async fn refresh(&mut self, id: u64, token: &str) -> Result<(), Fatal> {
        let claims = match self.node.verifier.verify(token) {
            Ok(c) => c,
            Err(e) => {
                self.node
                    .metrics
                    .auth_failures
                    .get_or_create(&crate::metrics::CodeLabel { code: e.code().as_str_name() })
                    .inc();
                self.error(e.code(), e.to_string(), id);
                return Ok(());
            }
        };
        if claims.sub != self.claims.sub {
            self.error(ErrorCode::Forbidden, "a refreshed token must be for the same user", id);
            return Ok(());
        }
        self.expires_at = expiry_deadline(claims.exp);
        self.claims = claims;
        // Rooms no longer granted are left.
        let revoked: Vec<String> = self.rooms.iter().filter(|r| !self.claims.may_join(r)).cloned().collect();
        for room in revoked {
            self.rooms.remove(&room);
            self.layer_choices.retain(|(r, _)| *r != room);
            rooms::leave(&self.node, &room, &self.id, "grant revoked").await;
            self.reply(server(server_frame::Kind::Left(Left { room, reason: "grant revoked".into() })));
        }
        self.ack(id);
        Ok(())
    }

    async fn join(&mut self, id: u64, room: &str, resume_from: Option<u64>) {
        if let Err(e) = validate_id(room) {
            return self.error(ErrorCode::InvalidRoom, format!("room id: {e}"), id);
        }
        if room.starts_with(calls::CALL_ROOM_PREFIX) {
            // A call's room admits its connected parties, whatever the token's room grants.
            match calls::may_join_room(&self.node, room, &self.claims.sub).await {
                Ok(true) => {}
                Ok(false) => {
                    return self.error(
                        ErrorCode::Forbidden,
                        format!("only the caller and callees who accepted may join {room:?} while the call lasts"),
                        id,
                    )
                }
                Err(e) => return self.error(e.code(), e.to_string(), id),
            }
        } else if !self.claims.may_join(room) {
            return self.error(ErrorCode::Forbidden, format!("token does not grant room {room:?}"), id);
        }
        if self.rooms.contains(room) {
            return self.error(ErrorCode::InvalidArgument, format!("already in room {room:?}"), id);
        }
        if self.rooms.len() >= self.node.config.max_rooms_per_session {
            return self.error(
                ErrorCode::TooManyRooms,
                format!("a session may be in at most {} rooms", self.node.config.max_rooms_per_session),
                id,
            );
        }
        let participant = Participant {
            user: self.claims.sub.clone(),
            session: self.id.clone(),
            name: self.claims.display_name().to_owned(),
            node: self.node.config.node_id.clone(),
            joined_at_ms: now_ms(),
        };
        let member = Member { user: self.claims.sub.clone(), outbound: self.outbound.clone(), floor: 0 };
        let max_participants = self.claims.max_participants.map_or(self.node.config.max_participants, |n| n as usize);
        let req = rooms::JoinRequest { participant, member, ref_id: id, resume_from, max_participants };
        match rooms::join(&self.node, room, req).await {
            Ok(()) => {
                self.rooms.insert(room.to_owned());
            }
            Err(e) => self.error(rooms::join_error_code(&e), e.to_string(), id),
        }
    }

    fn check_room(&self, room: &str, id: u64) -> bool {
        if !self.rooms.contains(room) {
            self.error(ErrorCode::NotInRoom, format!("not in room {room:?}; join it first"), id);
            return false;
        }
        true
    }

    async fn publish(&mut self, id: u64, p: switchboard_protocol::pb::Publish) {
        if !self.check_room(&p.room, id) {
            return;
        }
        if !self.claims.may_publish() {
            return self.error(ErrorCode::Forbidden, "token does not grant publish", id);
        }
        if p.kind.len() > limits::MAX_KIND_LEN {
            return self.error(ErrorCode::InvalidArgument, "kind longer than 64 bytes", id);
        }
        let kind = if p.reliable { "reliable" } else { "unreliable" };
        if !self.admit_publish(&p.room, p.reliable, kind, id) {
            return;
        }
        let msg = switchboard_protocol::pb::Message {
            room: p.room.clone(),
            from: Some(self.sender()),
            offset: 0,
            payload: p.payload,
            kind: p.kind,
            reliable: p.reliable,
            sent_at_ms: now_ms(),
            prev_offset: 0,
        };
        if p.reliable && self.node.config.history {
            // A client's retry of the same request is stored once.
            let dedupe = (id != 0).then(|| format!("{}:{id}", self.id));
            match rooms::append_history(&self.node, &p.room, msg, dedupe).await {
                Ok(mut ack) => {
                    // An in-memory log has stored it already: answer now, no task.
                    if let Some(stored) = (&mut ack).now_or_never() {
                        return append_answered(&self.node, &self.outbound, id, stored);
                    }
                    // The ack comes when the log stored the message; meanwhile the session
                    // goes on (many messages in flight, each acked with its offset).
                    let (node, outbound) = (self.node.clone(), self.outbound.clone());
                    self.node.runtime.spawn(async move { append_answered(&node, &outbound, id, ack.await) });
                }
                Err(e) => self.error(ErrorCode::Unavailable, e.to_string(), id),
            }
            return;
        }
        let subject = self.node.subjects.room(&p.room, RoomChannel::Msg);
        self.publish_or_error(subject, bus_envelope::Kind::Message(msg), id).await;
    }

    /// Shed at the source while the node or the room is behind ([`crate::overload`]):
    /// unreliable data and media are dropped, a reliable message is taken and the session's
    /// reads pause (or, after a pause that did not help, refused with `RATE_LIMITED`).
    /// Returns whether to go on with the publish.
    fn admit_publish(&mut self, room: &str, reliable: bool, kind: &'static str, id: u64) -> bool {
        use crate::overload::Verdict;
        let verdict = if kind == "media" {
            self.pushback.media(&self.node.load, room)
        } else {
            self.pushback.publish(&self.node.load, room, reliable, self.outbound.own_fanned_out())
        };
        match verdict {
            Verdict::Accept | Verdict::AcceptAndWait => true,
            Verdict::AcceptAndPause => {
                self.node.metrics.overload_pushbacks.inc();
                true
            }
            Verdict::Shed => {
                self.node.metrics.overload_shed.get_or_create(&crate::metrics::KindLabel { kind }).inc();
                if reliable || id != 0 {
                    self.error(ErrorCode::RateLimited, "the node is overloaded: publish later", id);
                }
                false
            }
        }
    }

    async fn signal(&mut self, id: u64, s: switchboard_protocol::pb::Signal) {
        if switchboard_protocol::pb::SignalKind::try_from(s.kind).is_err() {
            return self.error(ErrorCode::InvalidArgument, format!("unknown signal kind {}", s.kind), id);
        }
        if s.room.is_empty() && !s.call.is_empty() {
            return self.call_signal(id, s).await;
        }
        if !self.check_room(&s.room, id) {
            return;
        }
        if !self.claims.may_signal() {
            return self.error(ErrorCode::Forbidden, "token does not grant signaling", id);
        }
        let (to_user, to_session) = match s.target {
            Some(signal::Target::ToUser(u)) => (u, String::new()),
            Some(signal::Target::ToSession(sess)) => (String::new(), sess),
            None => return self.error(ErrorCode::InvalidArgument, "signal needs to_user or to_session", id),
        };
        // Only towards participants of a room both share.
        if !rooms::has_target(&self.node, &s.room, &to_user, &to_session) {
            return self.error(ErrorCode::TargetNotFound, "the target is not a participant of this room", id);
        }
        let event = SignalEvent {
            room: s.room.clone(),
            from: Some(self.sender()),
            kind: s.kind,
            payload: s.payload,
            call: s.call,
        };
        let sig = BusSignal { to_user, to_session, event: Some(event) };
        let subject = self.node.subjects.room(&s.room, RoomChannel::Signal);
        self.publish_or_error(subject, bus_envelope::Kind::Signal(sig), id).await;
    }

    /// Call signaling without a room: to a party's inbox, only between parties of the call.
    async fn call_signal(&mut self, id: u64, s: switchboard_protocol::pb::Signal) {
        if !self.claims.may_signal() {
            return self.error(ErrorCode::Forbidden, "token does not grant signaling", id);
        }
        let call = match calls::get(&self.node, &s.call).await {
            Ok(c) => c,
            Err(e) => return self.error(e.code(), e.to_string(), id),
        };
        let (to_user, to_session) = match s.target {
            Some(signal::Target::ToUser(u)) => (u, String::new()),
            // A session target must be a party's known session (the caller's, or one that accepted).
            Some(signal::Target::ToSession(sess)) => match call.parties.iter().find(|p| p.session == sess) {
                Some(p) if !sess.is_empty() => (p.user.clone(), sess),
                _ => return self.error(ErrorCode::TargetNotFound, "no party of the call has that session", id),
            },
            None => return self.error(ErrorCode::InvalidArgument, "signal needs to_user or to_session", id),
        };
        if let Err(e) = calls::check_signal(&call, &self.claims.sub, &to_user) {
            return self.error(e.code(), e.to_string(), id);
        }
        let event = SignalEvent {
            room: String::new(),
            from: Some(self.sender()),
            kind: s.kind,
            payload: s.payload,
            call: s.call,
        };
        let sig = BusSignal { to_user: to_user.clone(), to_session, event: Some(event) };
        let subject = self.node.subjects.user_inbox(&to_user);
        self.publish_or_error(subject, bus_envelope::Kind::Signal(sig), id).await;
    }

    /// Choose the layer of a sender's simulcast video this session receives.
    async fn layer_subscribe(&mut self, id: u64, l: switchboard_protocol::pb::LayerSubscribe) {
        if !self.check_room(&l.room, id) {
            return;
        }
        if l.layer >= limits::MAX_LAYERS {
            let msg = format!("layer must be below {} (0 is the lowest)", limits::MAX_LAYERS);
            return self.error(ErrorCode::InvalidArgument, msg, id);
        }
        if l.session == self.id {
            return self.error(ErrorCode::InvalidArgument, "a session does not receive its own media", id);
        }
        if !rooms::has_target(&self.node, &l.room, "", &l.session) {
            return self.error(ErrorCode::TargetNotFound, format!("session {:?} is not in this room", l.session), id);
        }
        let key = (l.room.clone(), l.session.clone());
        let max = self.node.config.max_layer_subscriptions;
        if !self.layer_choices.contains(&key) && self.layer_choices.len() >= max {
            // Choices for senders that left no longer count.
            let node = self.node.clone();
            self.layer_choices.retain(|(room, sender)| rooms::has_target(&node, room, "", sender));
            if self.layer_choices.len() >= max {
                let msg = format!("a session may choose layers for at most {max} senders at once");
                return self.error(ErrorCode::TooManySubscriptions, msg, id);
            }
        }
        match rooms::choose_layer(&self.node, &l.room, &self.id, &l.session, l.layer).await {
            Ok(()) => {
                self.layer_choices.insert(key);
                self.ack(id);
            }
            Err(e) => self.error(e.code(), e.to_string(), id),
        }
    }

    async fn media(&mut self, id: u64, m: switchboard_protocol::pb::Media) {
        if !rooms::is_member(&self.node, &m.room, &self.id) {
            return self.error(ErrorCode::NotInRoom, format!("not in room {:?}", m.room), id);
        }
        if !self.claims.may_send_media() {
            return self.error(ErrorCode::Forbidden, "token does not grant media", id);
        }
        if m.codec.len() > limits::MAX_CODEC_LEN {
            return self.error(ErrorCode::InvalidArgument, "codec longer than 32 bytes", id);
        }
        if m.layer.is_some_and(|l| l >= limits::MAX_LAYERS) {
            return self.error(
                ErrorCode::InvalidArgument,
                format!("layer must be below {} (0 is the lowest)", limits::MAX_LAYERS),
                id,
            );
        }
        if m.audio_level.is_some_and(|l| l > limits::MAX_AUDIO_LEVEL) {
            return self.error(ErrorCode::InvalidArgument, "audio_level is -dBov, 0 to 127", id);
        }
        if !self.admit_publish(&m.room, false, "media", id) {
            return;
        }
        // A layer above 0 that no node wants goes nowhere (see `layer_interest`).
        if let Some(layer) = m.layer {
            if !crate::rooms::layer_published(&self.node, &m.room, layer) {
                self.node.metrics.layer_frames_unpublished.inc();
                return;
            }
        }
        let event = MediaEvent {
            room: m.room.clone(),
            from: Some(self.sender()),
            track: m.track,
            seq: m.seq,
            timestamp: m.timestamp,
            keyframe: m.keyframe,
            codec: m.codec,
            payload: m.payload,
            layer: m.layer,
            audio_level: m.audio_level,
        };
        // Simulcast layers go on subjects of their own: a node subscribes to the layers its
        // receivers want (see `rooms::layers`).
        let subject = match m.layer {
            Some(layer) => self.node.subjects.room_media_layer(&m.room, layer),
            None => self.node.subjects.room(&m.room, RoomChannel::Media),
        };
        self.publish_or_error(subject, bus_envelope::Kind::Media(event), id).await;
    }
}

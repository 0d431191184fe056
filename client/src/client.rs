//! The client handle, its events, and the background tasks that own the connection.

use crate::lanes::{Lane, LaneReceiver, MediaState, MediaStats};
use crate::transport::{self, Ended, Reader, Writer};
use crate::{ClientConfig, ClientError, TransportChoice};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_protocol::pb::{self, client_frame, server_frame, signal, ClientFrame, Hello};
use switchboard_protocol::{decode_server_frame, encode, ErrorCode, PROTOCOL_VERSION};
use tokio::sync::{mpsc, oneshot, watch};

/// Something the server sent that was not the answer to a request.
#[derive(Debug, Clone)]
pub enum Event {
    /// A room message.
    Message(pb::Message),
    /// Someone joined a room this session is in.
    ParticipantJoined(pb::ParticipantJoined),
    /// Someone left a room this session is in.
    ParticipantLeft(pb::ParticipantLeft),
    /// A large room's participant count changed (such rooms send this instead of
    /// individual joins and leaves).
    RoomStats(pb::RoomStats),
    /// Signaling addressed to this session or user.
    Signal(pb::SignalEvent),
    /// A relayed media frame.
    Media(pb::MediaEvent),
    /// A receiver asks this session for a keyframe (with `layer` set: of that simulcast
    /// layer, a receiver is switching to it).
    KeyframeRequest(pb::KeyframeRequestEvent),
    /// A room's active speaker changed (from the audio levels senders put on their frames:
    /// [`pb::Media::audio_level`]).
    ActiveSpeaker(pb::ActiveSpeaker),
    /// A call this user is a party of changed state.
    Call(pb::CallEvent),
    /// ([`crate::ReconnectingClient`]) the connection was lost for a reason that is not
    /// final; the client is reconnecting. Requests made meanwhile wait for the new session
    /// (up to the request timeout).
    Disconnected {
        /// The error code behind the loss, if the server gave one.
        code: Option<ErrorCode>,
        /// Why.
        reason: String,
    },
    /// ([`crate::ReconnectingClient`]) a new session replaced the lost one (`welcome.node`
    /// says which node it landed on, `welcome.session_id` its new id).
    Reconnected {
        /// The new session's `Welcome`.
        welcome: pb::Welcome,
    },
    /// ([`crate::ReconnectingClient`]) a room was joined again after a reconnect. It comes
    /// before the room's missed messages (if still in history), which then arrive as
    /// [`Event::Message`]s; `history_gap` says whether some could not be recovered (reload
    /// the room's state then).
    Rejoined(pb::Joined),
    /// This session was removed from a room by the server.
    Left(pb::Left),
    /// The node is draining: reconnect (elsewhere) after the hinted delay.
    GoAway(pb::GoAway),
    /// An error not tied to a request.
    Error(pb::Error),
    /// The connection ended; always the last event.
    Closed {
        /// The error code behind the close, if any.
        code: Option<ErrorCode>,
        /// Why.
        reason: String,
    },
}

/// The stream of [`Event`]s of one connection.
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` after [`Event::Closed`].
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    pub(crate) fn from_receiver(rx: mpsc::Receiver<Event>) -> Self {
        Self { rx }
    }
}

enum Reply {
    Ack(pb::Ack),
    Joined(pb::Joined),
    IceServers(pb::IceServers),
}

type ReplyTx = oneshot::Sender<Result<Reply, ClientError>>;

/// A request awaiting its answer.
struct Waiter {
    tx: ReplyTx,
    /// A rejoin of this room: its `Joined` (or `Error`) is also sent as an event
    /// ([`Event::Rejoined`], [`Event::Error`]), in order with the room's replayed messages.
    rejoin: Option<String>,
}

/// Requests awaiting their answer, and, once the connection has ended, how it ended (so
/// later requests fail at once with [`ClientError::Closed`] instead of timing out).
#[derive(Default)]
struct PendingState {
    waiting: HashMap<u64, Waiter>,
    ended: Option<ClientError>,
}

type Pending = Mutex<PendingState>;

enum Command {
    Frame(Bytes),
    Close,
}

struct Inner {
    commands: mpsc::Sender<Command>,
    pending: Arc<Pending>,
    next_id: AtomicU64,
    welcome: pb::Welcome,
    request_timeout: Duration,
    /// Becomes `true` when the writer has finished closing the connection.
    closed: watch::Receiver<bool>,
    /// Set by [`Client::close`]: the reader stops waiting for room in the event buffer
    /// (the application is no longer reading), so it can see the server's close.
    closing: watch::Sender<bool>,
    /// Media counters, and the media lanes when in use.
    media: Arc<MediaState>,
}

/// A connected, authenticated session. Cheap to clone; all clones share the connection,
/// which closes when the last clone is dropped (or on [`Client::close`]). Dropping closes
/// it in the background, on the runtime: a program about to exit (or stop its runtime)
/// should `close().await` instead, or the close may never reach the server.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

fn lock(p: &Pending) -> std::sync::MutexGuard<'_, PendingState> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

impl Client {
    /// Connect, authenticate with `Hello`, and start the connection's tasks.
    pub async fn connect(config: ClientConfig) -> Result<(Client, Events), ClientError> {
        let (mut reader, mut writer) = tokio::time::timeout(config.connect_timeout, transport::connect(&config))
            .await
            .map_err(|_| ClientError::Timeout("connecting"))??;
        // Lanes exist on WebTransport only; over WebSocket the node would say no anyway.
        let ask_lanes = config.media_lanes && matches!(config.transport(), Ok(TransportChoice::WebTransport));
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            token: config.token.clone(),
            client: config.client_name.clone(),
            media_lanes: ask_lanes,
            calls: config.resume_calls.clone(),
        };
        writer.send(encode(&ClientFrame { id: 0, kind: Some(client_frame::Kind::Hello(hello)) })).await?;
        // A node refusing for now (its session admission rate) says when to retry with a
        // `GoAway` before its error.
        let mut retry_after = None;
        let welcome = loop {
            let next = tokio::time::timeout(config.connect_timeout, reader.next())
                .await
                .map_err(|_| ClientError::Timeout("waiting for Welcome"))?;
            match next {
                Err(Ended { code, reason }) => return Err(ClientError::Closed { code, reason }),
                Ok(bytes) => {
                    match decode_server_frame(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))?.kind {
                        Some(server_frame::Kind::Welcome(w)) => break w,
                        Some(server_frame::Kind::GoAway(g)) if retry_after.is_none() => {
                            retry_after = Some(std::time::Duration::from_millis(u64::from(g.reconnect_after_ms)));
                        }
                        Some(server_frame::Kind::Error(e)) => {
                            return Err(match retry_after {
                                Some(retry_after) => {
                                    ClientError::RetryLater { code: e.code(), message: e.message, retry_after }
                                }
                                None => ClientError::Rejected { code: e.code(), message: e.message },
                            });
                        }
                        other => return Err(ClientError::Protocol(format!("expected Welcome, got {other:?}"))),
                    }
                }
            }
        };
        // Lanes only if this client asked and the node agreed.
        let (media, lanes) = match writer.wt_connection() {
            Some(connection) if ask_lanes && welcome.media_lanes => {
                writer.prioritize_control();
                (MediaState::with_lanes(connection.clone()), Some(LaneReceiver::start(connection)))
            }
            _ => (MediaState::control_only(), None),
        };
        let (commands, command_rx) = mpsc::channel(256);
        let (event_tx, rx) = mpsc::channel(config.event_buffer.max(1));
        let pending: Arc<Pending> = Arc::default();
        // Floor: a server announcing 0 must not make the client ping in a busy loop.
        let heartbeat = Duration::from_millis(u64::from(welcome.heartbeat_ms.max(250)));
        let (stop_writer, writer_stopped) = oneshot::channel();
        let (closed_tx, closed) = watch::channel(false);
        let (closing, closing_rx) = watch::channel(false);
        tokio::spawn(async move {
            write_loop(writer, command_rx, heartbeat, writer_stopped).await;
            let _ = closed_tx.send(true);
        });
        // The server answers every Ping, so silence for a few heartbeats means a dead
        // connection (a vanished node or network) that TCP may take minutes to notice.
        tokio::spawn(read_loop(
            reader,
            lanes,
            media.clone(),
            pending.clone(),
            event_tx,
            stop_writer,
            heartbeat * SILENT_HEARTBEATS,
            closing_rx,
        ));
        let inner = Inner {
            commands,
            pending,
            next_id: AtomicU64::new(1),
            welcome,
            request_timeout: config.request_timeout,
            closed,
            closing,
            media,
        };
        Ok((Client { inner: Arc::new(inner) }, Events { rx }))
    }

    /// The server's `Welcome`.
    pub fn welcome(&self) -> &pb::Welcome {
        &self.inner.welcome
    }

    /// This session's id.
    pub fn session_id(&self) -> &str {
        &self.inner.welcome.session_id
    }

    /// Whether media goes on WebTransport media lanes (datagrams and group streams) on this
    /// connection: asked for ([`ClientConfig::media_lanes`]) and granted by the node.
    pub fn media_lanes(&self) -> bool {
        self.inner.media.lanes()
    }

    /// This connection's media counters: frames sent and received per lane, stale frames
    /// dropped by the lanes' ordering rule, frames dropped on send.
    pub fn media_stats(&self) -> MediaStats {
        self.inner.media.stats()
    }

    /// Whether the connection has ended (requests then fail at once).
    pub fn is_closed(&self) -> bool {
        lock(&self.inner.pending).ended.is_some()
    }

    /// Whether `self` and `other` share one connection.
    pub(crate) fn same_connection(&self, other: &Client) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// How the connection ended (or a generic [`ClientError::Closed`] if not known yet).
    fn closed_error(&self) -> ClientError {
        lock(&self.inner.pending)
            .ended
            .clone()
            .unwrap_or_else(|| ClientError::Closed { code: None, reason: "connection closed".into() })
    }

    async fn send(&self, frame: Bytes) -> Result<(), ClientError> {
        if let Some(ended) = lock(&self.inner.pending).ended.clone() {
            return Err(ended);
        }
        match self.inner.commands.send(Command::Frame(frame)).await {
            Ok(()) => Ok(()),
            Err(_) => Err(self.closed_error()),
        }
    }

    async fn request(&self, kind: client_frame::Kind) -> Result<Reply, ClientError> {
        self.request_with(kind, None).await
    }

    async fn request_with(&self, kind: client_frame::Kind, rejoin: Option<String>) -> Result<Reply, ClientError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.inner.pending);
            if let Some(ended) = pending.ended.clone() {
                return Err(ended);
            }
            pending.waiting.insert(id, Waiter { tx, rejoin });
        }
        if let Err(e) = self.send(encode(&ClientFrame { id, kind: Some(kind) })).await {
            lock(&self.inner.pending).waiting.remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(self.inner.request_timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => {
                lock(&self.inner.pending).waiting.remove(&id);
                Err(ClientError::Timeout("waiting for the server's answer"))
            }
        }
    }

    async fn acked(&self, kind: client_frame::Kind) -> Result<pb::Ack, ClientError> {
        match self.request(kind).await? {
            Reply::Ack(a) => Ok(a),
            Reply::Joined(_) => Err(ClientError::Protocol("unexpected Joined".into())),
            Reply::IceServers(_) => Err(ClientError::Protocol("unexpected IceServers".into())),
        }
    }

    /// The ICE servers the node handed this session in `Welcome` (STUN, and TURN with
    /// credentials valid until `expires_at`); `None` when the node has none configured.
    pub fn ice_servers(&self) -> Option<&pb::IceServers> {
        self.inner.welcome.ice_servers.as_ref()
    }

    /// Ask the node for the ICE servers again, with fresh TURN credentials (do it before
    /// `expires_at` of the ones in use). Rate-limited like other requests.
    pub async fn refresh_ice_servers(&self) -> Result<pb::IceServers, ClientError> {
        match self.request(client_frame::Kind::IceServersRequest(pb::IceServersRequest {})).await? {
            Reply::IceServers(servers) => Ok(servers),
            _ => Err(ClientError::Protocol("expected IceServers".into())),
        }
    }

    /// Join `room`; returns everyone in it (cluster-wide, this session included).
    pub async fn join(&self, room: &str) -> Result<pb::Joined, ClientError> {
        self.join_from(room, None).await
    }

    /// Join `room`, resuming after `resume_from` (the last reliable message offset this
    /// client saw there): the missed messages follow the returned `Joined` (see its
    /// `history_gap` and `replayed`).
    pub async fn join_from(&self, room: &str, resume_from: Option<u64>) -> Result<pb::Joined, ClientError> {
        self.join_with(room, resume_from, false).await
    }

    /// [`Client::join_from`] that also emits the answer as an event: [`Event::Rejoined`],
    /// or [`Event::Error`] if refused (for [`crate::ReconnectingClient`]).
    pub(crate) async fn rejoin(&self, room: &str, resume_from: Option<u64>) -> Result<pb::Joined, ClientError> {
        self.join_with(room, resume_from, true).await
    }

    async fn join_with(&self, room: &str, resume_from: Option<u64>, rejoin: bool) -> Result<pb::Joined, ClientError> {
        let join = pb::Join { room: room.into(), resume_from };
        match self.request_with(client_frame::Kind::Join(join), rejoin.then(|| room.to_owned())).await? {
            Reply::Joined(j) => Ok(j),
            Reply::Ack(_) | Reply::IceServers(_) => Err(ClientError::Protocol("expected Joined".into())),
        }
    }

    /// Leave `room`.
    pub async fn leave(&self, room: &str) -> Result<(), ClientError> {
        self.acked(client_frame::Kind::Leave(pb::Leave { room: room.into() })).await?;
        self.inner.media.forget_room(room);
        Ok(())
    }

    /// Publish a room message; resolves when the server accepted it, with the message's
    /// offset in the room's history (0 for unreliable messages or with history off).
    pub async fn publish(&self, room: &str, payload: Bytes, reliable: bool, kind: &str) -> Result<u64, ClientError> {
        let p = pb::Publish { room: room.into(), payload, reliable, kind: kind.into() };
        self.acked(client_frame::Kind::Publish(p)).await.map(|a| a.offset)
    }

    /// Publish without waiting for (or asking for) the server's acknowledgement: pipelined
    /// sending for high rates. Errors still arrive as [`Event::Error`].
    pub async fn publish_nowait(
        &self,
        room: &str,
        payload: Bytes,
        reliable: bool,
        kind: &str,
    ) -> Result<(), ClientError> {
        let p = pb::Publish { room: room.into(), payload, reliable, kind: kind.into() };
        self.send(encode(&ClientFrame { id: 0, kind: Some(client_frame::Kind::Publish(p)) })).await
    }

    /// Signal every session of `user` in `room`.
    pub async fn signal_user(
        &self,
        room: &str,
        user: &str,
        kind: pb::SignalKind,
        payload: Bytes,
    ) -> Result<(), ClientError> {
        self.signal(room, signal::Target::ToUser(user.into()), kind, payload).await
    }

    /// Signal one session in `room`.
    pub async fn signal_session(
        &self,
        room: &str,
        session: &str,
        kind: pb::SignalKind,
        payload: Bytes,
    ) -> Result<(), ClientError> {
        self.signal(room, signal::Target::ToSession(session.into()), kind, payload).await
    }

    async fn signal(
        &self,
        room: &str,
        target: signal::Target,
        kind: pb::SignalKind,
        payload: Bytes,
    ) -> Result<(), ClientError> {
        let s = pb::Signal { room: room.into(), target: Some(target), kind: kind as i32, payload, call: String::new() };
        self.acked(client_frame::Kind::Signal(s)).await.map(drop)
    }

    /// Call `callees` (user ids); returns the new call's id. Every device of every party
    /// then receives [`Event::Call`]s.
    pub async fn call_invite(&self, callees: &[&str], media: pb::CallMedia) -> Result<String, ClientError> {
        let inv = pb::CallInvite { callees: callees.iter().map(|c| (*c).to_owned()).collect(), media: media as i32 };
        self.acked(client_frame::Kind::CallInvite(inv)).await.map(|a| a.call)
    }

    /// Accept (`true`) or reject a call on this device.
    pub async fn call_answer(&self, call: &str, accept: bool) -> Result<(), ClientError> {
        self.acked(client_frame::Kind::CallAnswer(pb::CallAnswer { call: call.into(), accept })).await.map(drop)
    }

    /// Withdraw a ringing call (caller only).
    pub async fn call_cancel(&self, call: &str) -> Result<(), ClientError> {
        self.acked(client_frame::Kind::CallCancel(pb::CallCancel { call: call.into() })).await.map(drop)
    }

    /// End a call for everyone.
    pub async fn call_end(&self, call: &str) -> Result<(), ClientError> {
        self.acked(client_frame::Kind::CallEnd(pb::CallEnd { call: call.into() })).await.map(drop)
    }

    /// Call signaling without a room: to every device of `to_user` (a party of `call`),
    /// on any node. Arrives as [`Event::Signal`] with `call` set.
    pub async fn signal_call(
        &self,
        call: &str,
        to_user: &str,
        kind: pb::SignalKind,
        payload: Bytes,
    ) -> Result<(), ClientError> {
        self.call_signal(call, signal::Target::ToUser(to_user.into()), kind, payload).await
    }

    /// Call signaling without a room to one session of a party of `call` (e.g. the device
    /// that accepted: [`pb::CallEvent::by`]).
    pub async fn signal_call_session(
        &self,
        call: &str,
        to_session: &str,
        kind: pb::SignalKind,
        payload: Bytes,
    ) -> Result<(), ClientError> {
        self.call_signal(call, signal::Target::ToSession(to_session.into()), kind, payload).await
    }

    async fn call_signal(
        &self,
        call: &str,
        target: signal::Target,
        kind: pb::SignalKind,
        payload: Bytes,
    ) -> Result<(), ClientError> {
        let s = pb::Signal { room: String::new(), target: Some(target), kind: kind as i32, payload, call: call.into() };
        self.acked(client_frame::Kind::Signal(s)).await.map(drop)
    }

    /// Send a media frame (fire and forget: no acknowledgement).
    ///
    /// With media lanes ([`Client::media_lanes`]) the frame goes as a QUIC datagram when it
    /// fits, else on the stream of its group (a keyframe starts a new group of its room and
    /// track); this never waits on the network: a frame no lane can take at once is dropped
    /// and counted ([`MediaStats::send_dropped`]). Without lanes it is queued on the
    /// connection like any request.
    pub async fn media(&self, media: pb::Media) -> Result<(), ClientError> {
        let frame = ClientFrame { id: 0, kind: Some(client_frame::Kind::Media(media)) };
        let bytes = encode(&frame);
        if let Some(client_frame::Kind::Media(media)) = &frame.kind {
            if self.inner.media.lanes() {
                if let Some(ended) = lock(&self.inner.pending).ended.clone() {
                    return Err(ended);
                }
                self.inner.media.send(bytes, media);
                return Ok(());
            }
        }
        self.send(bytes).await?;
        self.inner.media.sent_on_control();
        Ok(())
    }

    /// Ask `session` in `room` for a keyframe of `track`.
    pub async fn keyframe_request(&self, room: &str, session: &str, track: u32) -> Result<(), ClientError> {
        let k = pb::KeyframeRequest { room: room.into(), to_session: session.into(), track };
        self.acked(client_frame::Kind::KeyframeRequest(k)).await.map(drop)
    }

    /// Choose which simulcast layer of `session`'s video this session receives in `room`
    /// (0 the lowest; the default for a sender never chosen). The node switches on the new
    /// layer's next keyframe (it asks the sender for one), so media arriving right after the
    /// acknowledgement may still be of the old layer; it may also hold this session lower
    /// while its link drops media. Fails with `TOO_MANY_SUBSCRIPTIONS` past the node's bound
    /// of senders chosen for, `TARGET_NOT_FOUND` when `session` is not in the room.
    pub async fn layer_subscribe(&self, room: &str, session: &str, layer: u32) -> Result<(), ClientError> {
        let l = pb::LayerSubscribe { room: room.into(), session: session.into(), layer };
        self.acked(client_frame::Kind::LayerSubscribe(l)).await.map(drop)
    }

    /// Replace the session's token.
    pub async fn refresh_token(&self, token: &str) -> Result<(), ClientError> {
        self.acked(client_frame::Kind::RefreshToken(pb::RefreshToken { token: token.into() })).await.map(drop)
    }

    /// Send arbitrary bytes as one frame (for testing servers with bad input).
    pub async fn send_raw(&self, frame: Bytes) -> Result<(), ClientError> {
        self.send(frame).await
    }

    /// Close the connection normally, for every clone, and wait until the close is done:
    /// over WebSocket a close frame (1000) answered by the server's close frame, over
    /// WebTransport the session closed (1000) and the QUIC close sent. Each step
    /// is bounded (a few seconds in all against a server that does not answer).
    pub async fn close(&self) {
        self.inner.closing.send_replace(true);
        let _ = self.inner.commands.send(Command::Close).await;
        let mut closed = self.inner.closed.clone();
        // An error means the writer task is gone, which is closed too.
        let _ = closed.wait_for(|done| *done).await;
    }
}

/// Owns the sending half: frames from the [`Client`]s and a `Ping` every heartbeat. Ends on
/// [`Command::Close`], when every `Client` is dropped, on a write error, or when the
/// reader reports the connection ended (`stop`); then closes the connection and waits
/// (bounded) for the reader to see the server's side of the close.
async fn write_loop(
    mut writer: Writer,
    mut commands: mpsc::Receiver<Command>,
    heartbeat: Duration,
    mut stop: oneshot::Receiver<()>,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let mut nonce = 0u64;
    let mut reader_done = false;
    loop {
        let frame = tokio::select! {
            _ = &mut stop => {
                reader_done = true;
                break;
            }
            cmd = commands.recv() => match cmd {
                Some(Command::Frame(f)) => f,
                Some(Command::Close) | None => break,
            },
            _ = tick.tick() => {
                nonce += 1;
                encode(&ClientFrame { id: 0, kind: Some(client_frame::Kind::Ping(pb::Ping { nonce })) })
            }
        };
        if writer.send(frame).await.is_err() {
            break;
        }
    }
    writer.close().await;
    if !reader_done {
        // The reader ends once the server answered the close; a process exiting before that
        // would leave the server an abrupt end.
        let _ = tokio::time::timeout(transport::CLOSE_TIMEOUT, stop).await;
    }
}

/// Heartbeats without any frame from the server after which the connection counts as dead.
const SILENT_HEARTBEATS: u32 = 3;

/// Owns the receiving half: answers pending requests, forwards everything else as
/// [`Event`]s (media from the `lanes` too, counted and ordered by `media`), and finally fails
/// what is still pending, stops the writer and sends [`Event::Closed`]. A server silent on
/// the control stream for `silence_limit` ends the connection with `HEARTBEAT_TIMEOUT`.
#[allow(clippy::too_many_arguments)]
async fn read_loop(
    mut reader: Reader,
    mut lanes: Option<LaneReceiver>,
    media: Arc<MediaState>,
    pending: Arc<Pending>,
    events: mpsc::Sender<Event>,
    stop_writer: oneshot::Sender<()>,
    silence_limit: Duration,
    mut closing: watch::Receiver<bool>,
) {
    let mut fatal: Option<ErrorCode> = None;
    // One timer for the whole connection, re-armed only when it fires (from the last frame's
    // time), not a timer per frame: at high message rates arming and cancelling one per frame
    // cost more than decoding it.
    let mut last_frame = tokio::time::Instant::now();
    let silence = tokio::time::sleep(silence_limit);
    tokio::pin!(silence);
    let ended = loop {
        let (lane, next) = tokio::select! {
            // Cancel-safe: both transports' `next` keep partial data in their own buffers.
            next = reader.next() => (Lane::Control, next),
            (lane, frame) = next_lane(&mut lanes) => (lane, Ok(frame)),
            () = &mut silence => {
                let deadline = last_frame + silence_limit;
                if deadline > tokio::time::Instant::now() {
                    silence.as_mut().reset(deadline);
                    continue;
                }
                let reason = format!("no frame from the server for {} ms", silence_limit.as_millis());
                break Ended { code: Some(ErrorCode::HeartbeatTimeout), reason };
            }
        };
        let bytes = match next {
            Ok(b) => b,
            Err(ended) => break ended,
        };
        if lane == Lane::Control {
            last_frame = tokio::time::Instant::now();
        }
        let kind = match decode_server_frame(&bytes) {
            Ok(f) => f.kind,
            Err(e) => {
                tracing::warn!(error = %e, ?lane, "undecodable server frame");
                continue;
            }
        };
        if lane != Lane::Control && !matches!(kind, Some(server_frame::Kind::Media(_))) {
            tracing::debug!(?lane, "ignored a frame other than media on a media lane");
            continue;
        }
        let event = match kind {
            None | Some(server_frame::Kind::Pong(_)) | Some(server_frame::Kind::Welcome(_)) => continue,
            Some(server_frame::Kind::Ack(a)) => {
                answer(&pending, a.ref_id, Ok(Reply::Ack(a)));
                continue;
            }
            Some(server_frame::Kind::IceServers(servers)) => {
                answer(&pending, servers.ref_id, Ok(Reply::IceServers(servers)));
                continue;
            }
            Some(server_frame::Kind::Joined(j)) => {
                let waiter = lock(&pending).waiting.remove(&j.ref_id);
                match waiter {
                    Some(w) if w.rejoin.is_some() => {
                        let _ = w.tx.send(Ok(Reply::Joined(j.clone())));
                        Event::Rejoined(j)
                    }
                    Some(w) => {
                        let _ = w.tx.send(Ok(Reply::Joined(j)));
                        continue;
                    }
                    None => continue,
                }
            }
            Some(server_frame::Kind::Error(e)) => {
                if e.fatal {
                    fatal = Some(e.code());
                }
                let waiter = if e.ref_id != 0 { lock(&pending).waiting.remove(&e.ref_id) } else { None };
                match waiter {
                    Some(w) => {
                        let _ = w.tx.send(Err(ClientError::Server { code: e.code(), message: e.message.clone() }));
                        match w.rejoin {
                            // The application did not make this request: tell it as an event.
                            Some(room) => {
                                let message = format!("rejoining {room}: {}", e.message);
                                Event::Error(pb::Error { message, ref_id: 0, ..e })
                            }
                            None => continue,
                        }
                    }
                    None => Event::Error(e),
                }
            }
            Some(server_frame::Kind::GoAway(g)) => Event::GoAway(g),
            Some(server_frame::Kind::Left(l)) => {
                media.forget_room(&l.room);
                Event::Left(l)
            }
            Some(server_frame::Kind::ParticipantJoined(p)) => Event::ParticipantJoined(p),
            Some(server_frame::Kind::ParticipantLeft(p)) => {
                if let Some(who) = &p.participant {
                    media.forget_sender(&p.room, &who.session);
                }
                Event::ParticipantLeft(p)
            }
            Some(server_frame::Kind::RoomStats(r)) => Event::RoomStats(r),
            Some(server_frame::Kind::Message(m)) => Event::Message(m),
            Some(server_frame::Kind::Signal(s)) => Event::Signal(s),
            Some(server_frame::Kind::Media(m)) => {
                if !media.received(lane, &m) {
                    continue; // stale: an older frame of its track than the last delivered
                }
                Event::Media(m)
            }
            Some(server_frame::Kind::KeyframeRequest(k)) => Event::KeyframeRequest(k),
            Some(server_frame::Kind::ActiveSpeaker(a)) => Event::ActiveSpeaker(a),
            Some(server_frame::Kind::Call(c)) => Event::Call(c),
        };
        // Backpressure: a consumer that does not read stops this reader (and the server
        // eventually disconnects it as a slow consumer), until the application closes the
        // client: then events are dropped, so the reader sees the server's close. A dropped
        // receiver is ignored.
        if let Err(mpsc::error::TrySendError::Full(event)) = events.try_send(event) {
            tokio::select! {
                _ = events.send(event) => {}
                _ = closing.wait_for(|c| *c) => {}
            }
        }
    };
    let code = ended.code.or(fatal);
    let closed = ClientError::Closed { code, reason: ended.reason.clone() };
    let waiting = {
        let mut state = lock(&pending);
        state.ended = Some(closed.clone());
        std::mem::take(&mut state.waiting)
    };
    for (_, w) in waiting {
        let _ = w.tx.send(Err(closed.clone()));
    }
    let _ = stop_writer.send(());
    let _ = events.send(Event::Closed { code, reason: ended.reason }).await;
}

/// The next frame from the media lanes; pending for good without lanes or once they ended
/// (the control stream then reports how the connection ended). Cancel-safe.
async fn next_lane(lanes: &mut Option<LaneReceiver>) -> (Lane, Bytes) {
    if let Some(receiver) = lanes {
        if let Some(frame) = receiver.next().await {
            return frame;
        }
        *lanes = None;
    }
    std::future::pending().await
}

fn answer(pending: &Pending, ref_id: u64, reply: Result<Reply, ClientError>) {
    if let Some(w) = lock(pending).waiting.remove(&ref_id) {
        let _ = w.tx.send(reply);
    }
}

#[cfg(test)]
mod tests;

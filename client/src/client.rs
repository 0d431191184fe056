//! The client handle, its events, and the background tasks that own the connection.

use crate::transport::{self, Ended, Reader, Writer};
use crate::{ClientConfig, ClientError};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_protocol::pb::{self, client_frame, server_frame, signal, ClientFrame, Hello};
use switchboard_protocol::{decode_server_frame, encode, ErrorCode, PROTOCOL_VERSION};
use tokio::sync::{mpsc, oneshot};

/// Something the server sent that was not the answer to a request.
#[derive(Debug, Clone)]
pub enum Event {
    /// A room message.
    Message(pb::Message),
    /// Someone joined a room this session is in.
    ParticipantJoined(pb::ParticipantJoined),
    /// Someone left a room this session is in.
    ParticipantLeft(pb::ParticipantLeft),
    /// Signaling addressed to this session or user.
    Signal(pb::SignalEvent),
    /// A relayed media frame.
    Media(pb::MediaEvent),
    /// A receiver asks this session for a keyframe.
    KeyframeRequest(pb::KeyframeRequestEvent),
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
}

enum Reply {
    Ack,
    Joined(pb::Joined),
}

type ReplyTx = oneshot::Sender<Result<Reply, ClientError>>;

/// Requests awaiting their answer, and, once the connection has ended, how it ended (so
/// later requests fail at once with [`ClientError::Closed`] instead of timing out).
#[derive(Default)]
struct PendingState {
    waiting: HashMap<u64, ReplyTx>,
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
}

/// A connected, authenticated session. Cheap to clone; all clones share the connection,
/// which closes when the last clone is dropped (or on [`Client::close`]).
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
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            token: config.token.clone(),
            client: config.client_name.clone(),
        };
        writer.send(encode(&ClientFrame { id: 0, kind: Some(client_frame::Kind::Hello(hello)) })).await?;
        let first = tokio::time::timeout(config.connect_timeout, reader.next())
            .await
            .map_err(|_| ClientError::Timeout("waiting for Welcome"))?;
        let welcome = match first {
            Err(Ended { code, reason }) => return Err(ClientError::Closed { code, reason }),
            Ok(bytes) => match decode_server_frame(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))?.kind {
                Some(server_frame::Kind::Welcome(w)) => w,
                Some(server_frame::Kind::Error(e)) => {
                    return Err(ClientError::Rejected { code: e.code(), message: e.message });
                }
                other => return Err(ClientError::Protocol(format!("expected Welcome, got {other:?}"))),
            },
        };
        let (commands, command_rx) = mpsc::channel(256);
        let (event_tx, rx) = mpsc::channel(config.event_buffer.max(1));
        let pending: Arc<Pending> = Arc::default();
        let heartbeat = Duration::from_millis(u64::from(welcome.heartbeat_ms.max(1000)));
        let (stop_writer, writer_stopped) = oneshot::channel();
        tokio::spawn(write_loop(writer, command_rx, heartbeat, writer_stopped));
        tokio::spawn(read_loop(reader, pending.clone(), event_tx, stop_writer));
        let inner =
            Inner { commands, pending, next_id: AtomicU64::new(1), welcome, request_timeout: config.request_timeout };
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
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.inner.pending);
            if let Some(ended) = pending.ended.clone() {
                return Err(ended);
            }
            pending.waiting.insert(id, tx);
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

    async fn acked(&self, kind: client_frame::Kind) -> Result<(), ClientError> {
        match self.request(kind).await? {
            Reply::Ack => Ok(()),
            Reply::Joined(_) => Err(ClientError::Protocol("unexpected Joined".into())),
        }
    }

    /// Join `room`; returns everyone in it (cluster-wide, this session included).
    pub async fn join(&self, room: &str) -> Result<pb::Joined, ClientError> {
        match self.request(client_frame::Kind::Join(pb::Join { room: room.into(), resume_from: None })).await? {
            Reply::Joined(j) => Ok(j),
            Reply::Ack => Err(ClientError::Protocol("expected Joined, got Ack".into())),
        }
    }

    /// Leave `room`.
    pub async fn leave(&self, room: &str) -> Result<(), ClientError> {
        self.acked(client_frame::Kind::Leave(pb::Leave { room: room.into() })).await
    }

    /// Publish a room message; resolves when the server accepted it.
    pub async fn publish(&self, room: &str, payload: Bytes, reliable: bool, kind: &str) -> Result<(), ClientError> {
        let p = pb::Publish { room: room.into(), payload, reliable, kind: kind.into() };
        self.acked(client_frame::Kind::Publish(p)).await
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
        self.acked(client_frame::Kind::Signal(s)).await
    }

    /// Send a media frame (fire and forget: no acknowledgement).
    pub async fn media(&self, media: pb::Media) -> Result<(), ClientError> {
        self.send(encode(&ClientFrame { id: 0, kind: Some(client_frame::Kind::Media(media)) })).await
    }

    /// Ask `session` in `room` for a keyframe of `track`.
    pub async fn keyframe_request(&self, room: &str, session: &str, track: u32) -> Result<(), ClientError> {
        let k = pb::KeyframeRequest { room: room.into(), to_session: session.into(), track };
        self.acked(client_frame::Kind::KeyframeRequest(k)).await
    }

    /// Replace the session's token.
    pub async fn refresh_token(&self, token: &str) -> Result<(), ClientError> {
        self.acked(client_frame::Kind::RefreshToken(pb::RefreshToken { token: token.into() })).await
    }

    /// Send arbitrary bytes as one frame (for testing servers with bad input).
    pub async fn send_raw(&self, frame: Bytes) -> Result<(), ClientError> {
        self.send(frame).await
    }

    /// Close the connection.
    pub async fn close(&self) {
        let _ = self.inner.commands.send(Command::Close).await;
    }
}

/// Owns the sending half: frames from the [`Client`]s and a `Ping` every heartbeat. Ends on
/// [`Command::Close`], when every `Client` is dropped, on a write error, or when the
/// reader reports the connection ended (`stop`).
async fn write_loop(
    mut writer: Writer,
    mut commands: mpsc::Receiver<Command>,
    heartbeat: Duration,
    mut stop: oneshot::Receiver<()>,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let mut nonce = 0u64;
    loop {
        let frame = tokio::select! {
            _ = &mut stop => break,
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
            return;
        }
    }
    writer.close().await;
}

/// Owns the receiving half: answers pending requests, forwards everything else as
/// [`Event`]s, and finally fails what is still pending, stops the writer and sends
/// [`Event::Closed`].
async fn read_loop(
    mut reader: Reader,
    pending: Arc<Pending>,
    events: mpsc::Sender<Event>,
    stop_writer: oneshot::Sender<()>,
) {
    let mut fatal: Option<ErrorCode> = None;
    let ended = loop {
        let bytes = match reader.next().await {
            Ok(b) => b,
            Err(ended) => break ended,
        };
        let kind = match decode_server_frame(&bytes) {
            Ok(f) => f.kind,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable server frame");
                continue;
            }
        };
        let event = match kind {
            None | Some(server_frame::Kind::Pong(_)) | Some(server_frame::Kind::Welcome(_)) => continue,
            Some(server_frame::Kind::Ack(a)) => {
                answer(&pending, a.ref_id, Ok(Reply::Ack));
                continue;
            }
            Some(server_frame::Kind::Joined(j)) => {
                answer(&pending, j.ref_id, Ok(Reply::Joined(j)));
                continue;
            }
            Some(server_frame::Kind::Error(e)) => {
                if e.fatal {
                    fatal = Some(e.code());
                }
                let waiting = e.ref_id != 0 && lock(&pending).waiting.contains_key(&e.ref_id);
                if waiting {
                    answer(&pending, e.ref_id, Err(ClientError::Server { code: e.code(), message: e.message }));
                    continue;
                }
                Event::Error(e)
            }
            Some(server_frame::Kind::GoAway(g)) => Event::GoAway(g),
            Some(server_frame::Kind::Left(l)) => Event::Left(l),
            Some(server_frame::Kind::ParticipantJoined(p)) => Event::ParticipantJoined(p),
            Some(server_frame::Kind::ParticipantLeft(p)) => Event::ParticipantLeft(p),
            Some(server_frame::Kind::Message(m)) => Event::Message(m),
            Some(server_frame::Kind::Signal(s)) => Event::Signal(s),
            Some(server_frame::Kind::Media(m)) => Event::Media(m),
            Some(server_frame::Kind::KeyframeRequest(k)) => Event::KeyframeRequest(k),
        };
        // Backpressure: a consumer that does not read stops this reader (and the server
        // eventually disconnects it as a slow consumer). A dropped receiver is ignored.
        let _ = events.send(event).await;
    };
    let code = ended.code.or(fatal);
    let closed = ClientError::Closed { code, reason: ended.reason.clone() };
    let waiting = {
        let mut state = lock(&pending);
        state.ended = Some(closed.clone());
        std::mem::take(&mut state.waiting)
    };
    for (_, tx) in waiting {
        let _ = tx.send(Err(closed.clone()));
    }
    let _ = stop_writer.send(());
    let _ = events.send(Event::Closed { code, reason: ended.reason }).await;
}

fn answer(pending: &Pending, ref_id: u64, reply: Result<Reply, ClientError>) {
    if let Some(tx) = lock(pending).waiting.remove(&ref_id) {
        let _ = tx.send(reply);
    }
}

#[cfg(test)]
mod tests {
    //! The connection logic against a scripted in-process WebSocket server.

    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use switchboard_protocol::{close_code, decode_client_frame};
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;

    type ServerWs = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

    fn frame(kind: server_frame::Kind) -> Message {
        Message::Binary(encode(&pb::ServerFrame { kind: Some(kind) }))
    }

    fn welcome() -> Message {
        frame(server_frame::Kind::Welcome(pb::Welcome {
            protocol_version: PROTOCOL_VERSION,
            session_id: "s1".into(),
            heartbeat_ms: 15_000,
            ..Default::default()
        }))
    }

    async fn next_client_frame(ws: &mut ServerWs) -> ClientFrame {
        loop {
            match ws.next().await.expect("client went away").expect("read") {
                Message::Binary(b) => return decode_client_frame(&b).expect("valid client frame"),
                _ => continue,
            }
        }
    }

    /// Serve one connection with `script`; returns the URL to connect to.
    async fn serve<F, Fut>(script: F) -> String
    where
        F: FnOnce(ServerWs) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            script(tokio_tungstenite::accept_async(tcp).await.unwrap()).await;
        });
        url
    }

    fn config(url: String) -> ClientConfig {
        let mut config = ClientConfig::new(url, "token");
        config.connect_timeout = Duration::from_secs(5);
        config.request_timeout = Duration::from_secs(5);
        config
    }

    #[tokio::test]
    async fn hello_welcome_and_requests_matched_by_id() {
        let url = serve(|mut ws| async move {
            match next_client_frame(&mut ws).await.kind {
                Some(client_frame::Kind::Hello(h)) => assert_eq!((h.protocol_version, h.token.as_str()), (1, "token")),
                other => panic!("expected Hello, got {other:?}"),
            }
            ws.send(welcome()).await.unwrap();
            let join = next_client_frame(&mut ws).await;
            let publish = next_client_frame(&mut ws).await;
            assert!(join.id != 0 && publish.id > join.id);
            // Answer out of order, with an event in between.
            ws.send(frame(server_frame::Kind::Error(pb::Error {
                code: ErrorCode::Forbidden as i32,
                message: "no".into(),
                ref_id: publish.id,
                fatal: false,
            })))
            .await
            .unwrap();
            ws.send(frame(server_frame::Kind::GoAway(pb::GoAway::default()))).await.unwrap();
            let joined = pb::Joined { ref_id: join.id, room: "demo".into(), ..Default::default() };
            ws.send(frame(server_frame::Kind::Joined(joined))).await.unwrap();
            while ws.next().await.is_some() {}
        })
        .await;
        let (client, mut events) = Client::connect(config(url)).await.unwrap();
        assert_eq!(client.session_id(), "s1");
        let (joined, published) =
            tokio::join!(client.join("demo"), client.publish("demo", Bytes::from_static(b"x"), true, "chat"));
        assert_eq!(joined.unwrap().room, "demo");
        assert_eq!(published.unwrap_err().code(), Some(ErrorCode::Forbidden));
        assert!(matches!(events.recv().await, Some(Event::GoAway(_))));
    }

    #[tokio::test]
    async fn refusal_is_typed() {
        let url = serve(|mut ws| async move {
            next_client_frame(&mut ws).await;
            let error =
                pb::Error { code: ErrorCode::TokenInvalid as i32, message: "bad token".into(), ref_id: 0, fatal: true };
            ws.send(frame(server_frame::Kind::Error(error))).await.unwrap();
            let _ = ws.close(None).await;
        })
        .await;
        match Client::connect(config(url)).await {
            Err(ClientError::Rejected { code, message }) => {
                assert_eq!((code, message.as_str()), (ErrorCode::TokenInvalid, "bad token"))
            }
            other => panic!("expected Rejected, got {:?}", other.map(|_| ())),
        }
    }

    #[tokio::test]
    async fn server_close_ends_events_and_fails_requests_at_once() {
        let url = serve(|mut ws| async move {
            next_client_frame(&mut ws).await;
            ws.send(welcome()).await.unwrap();
            let code = close_code(ErrorCode::SlowConsumer).into();
            let _ = ws.close(Some(CloseFrame { code, reason: "too slow".into() })).await;
            while ws.next().await.is_some() {}
        })
        .await;
        let (client, mut events) = Client::connect(config(url)).await.unwrap();
        match events.recv().await {
            Some(Event::Closed { code, reason }) => {
                assert_eq!((code, reason.as_str()), (Some(ErrorCode::SlowConsumer), "too slow"))
            }
            other => panic!("expected Closed, got {other:?}"),
        }
        assert!(events.recv().await.is_none());
        let started = std::time::Instant::now();
        let err = client.join("demo").await.unwrap_err();
        assert!(matches!(err, ClientError::Closed { code: Some(ErrorCode::SlowConsumer), .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(client.media(pb::Media::default()).await.is_err());
    }
}

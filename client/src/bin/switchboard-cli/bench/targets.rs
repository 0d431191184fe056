//! What a benchmark connects to: Switchboard (WebSocket or WebTransport, via the client
//! library), the bare broadcast baseline, or nats-server's own WebSocket listener.

use anyhow::{bail, Context};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::net::IpAddr;
use switchboard_client::pb::server_frame::Kind;
use switchboard_client::{pb, websocket_connect, Client, ClientConfig, Event, Events, Ws};
use switchboard_protocol::{decode_server_frame, encode, PROTOCOL_VERSION};
use tokio_tungstenite::tungstenite::Message;

/// The kind of server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetKind {
    /// A Switchboard node (ws:// or https:// URLs).
    Switchboard,
    /// `bare-broadcast` (one global room).
    Bare,
    /// nats-server's WebSocket listener (room = subject).
    NatsWs,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    pub kind: TargetKind,
    pub urls: Vec<String>,
    pub token: String,
    /// `--cert-hash`: one SHA-256 (hex), or several comma-separated (one per WebTransport
    /// node: a connection accepts a certificate matching any of them).
    pub cert_hash: Option<String>,
    pub source_ips: Vec<IpAddr>,
    /// nats-ws: the subject a publisher-only connection publishes to.
    pub publish_subject: String,
    /// WebTransport: ask for media lanes (`--wt-lanes on`, [`ClientConfig::media_lanes`]).
    pub media_lanes: bool,
}

impl Target {
    pub fn name(&self) -> String {
        let kind = match self.kind {
            TargetKind::Switchboard if self.urls.iter().all(|u| u.starts_with("https")) => "switchboard-wt",
            TargetKind::Switchboard => "switchboard-ws",
            TargetKind::Bare => "bare",
            TargetKind::NatsWs => "nats-ws",
        };
        if self.urls.len() > 1 {
            format!("{kind}x{}", self.urls.len())
        } else {
            kind.into()
        }
    }

    /// A connection that publishes to `room` (for nats-ws without subscribing to it).
    pub async fn connect_publisher(&self, i: usize, room: &str) -> anyhow::Result<(Tx, Rx)> {
        if self.kind == TargetKind::NatsWs {
            let target = Target { publish_subject: room.into(), ..self.clone() };
            return Box::pin(target.connect(i, None)).await;
        }
        self.connect(i, Some(room)).await
    }

    /// A receive-only connection joined to `room`. To Switchboard it is a raw session over
    /// WebSocket or WebTransport (Hello, Join, then frames read straight off the connection,
    /// a Ping every heartbeat) rather than the client library, whose event channel and task hop would
    /// make the load generator, not the server, the limit: the bare baseline's receivers
    /// are raw too.
    pub async fn connect_receiver(&self, i: usize, room: &str) -> anyhow::Result<(Tx, Rx)> {
        let url = &self.urls[i % self.urls.len()];
        let ip = (!self.source_ips.is_empty()).then(|| self.source_ips[i % self.source_ips.len()]);
        if self.kind == TargetKind::Switchboard && url.starts_with("https") {
            let (pinger, rx) = super::raw_wt::connect(url, ip, &self.cert_hashes(), &self.token, room).await?;
            return Ok((Tx::Raw { _pinger: pinger }, Rx::RawWt(Box::new(rx))));
        }
        if self.kind != TargetKind::Switchboard || !url.starts_with("ws") {
            return self.connect(i, Some(room)).await;
        }
        let (mut sink, mut stream) = websocket_connect(url, ip).await?.split();
        let hello = pb::Hello {
            protocol_version: PROTOCOL_VERSION,
            token: self.token.clone(),
            client: "bench".into(),
            ..Default::default()
        };
        send_frame(&mut sink, 0, pb::client_frame::Kind::Hello(hello)).await?;
        let welcome = match next_control(&mut stream).await? {
            Kind::Welcome(w) => w,
            other => bail!("expected Welcome, got {other:?}"),
        };
        send_frame(&mut sink, 1, pb::client_frame::Kind::Join(pb::Join { room: room.into(), resume_from: None }))
            .await?;
        match next_control(&mut stream).await? {
            Kind::Joined(_) => {}
            other => bail!("joining {room}: {other:?}"),
        }
        let heartbeat = std::time::Duration::from_millis(u64::from(welcome.heartbeat_ms.max(250)));
        let pinger = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
            loop {
                tick.tick().await;
                let ping = pb::client_frame::Kind::Ping(pb::Ping { nonce: 0 });
                if send_frame(&mut sink, 0, ping).await.is_err() {
                    return;
                }
            }
        });
        Ok((Tx::Raw { _pinger: AbortOnDrop(pinger.abort_handle()) }, Rx::Raw(stream)))
    }

    /// The certificate hashes of `--cert-hash` (a comma-separated list).
    pub fn cert_hashes(&self) -> Vec<String> {
        split_hashes(self.cert_hash.as_deref())
    }

    /// The client-library configuration of Switchboard connection `i` (spread over the URLs
    /// and source addresses).
    pub fn client_config(&self, i: usize) -> ClientConfig {
        let url = &self.urls[i % self.urls.len()];
        let mut config = ClientConfig::new(url, &self.token);
        config.cert_hashes = self.cert_hashes();
        config.bind_ip = (!self.source_ips.is_empty()).then(|| self.source_ips[i % self.source_ips.len()]);
        config.event_buffer = 4096;
        config.media_lanes = self.media_lanes;
        config
    }

    /// Connection `i` (spread over the URLs and source addresses), joined to `room` (no
    /// room: connected and authenticated only; for nats-ws, not subscribed).
    pub async fn connect(&self, i: usize, room: Option<&str>) -> anyhow::Result<(Tx, Rx)> {
        let url = &self.urls[i % self.urls.len()];
        let ip = (!self.source_ips.is_empty()).then(|| self.source_ips[i % self.source_ips.len()]);
        match self.kind {
            TargetKind::Switchboard => {
                let (client, events) =
                    Client::connect(self.client_config(i)).await.with_context(|| format!("connecting to {url}"))?;
                if let Some(room) = room {
                    client.join(room).await.with_context(|| format!("joining {room}"))?;
                }
                Ok((Tx::Switchboard { client, room: room.unwrap_or_default().into() }, Rx::Switchboard(events)))
            }
            TargetKind::Bare => {
                let (sink, stream) = websocket_connect(url, ip).await?.split();
                Ok((Tx::Ws(sink), Rx::Ws(stream)))
            }
            TargetKind::NatsWs => {
                let (mut sink, stream) = websocket_connect(url, ip).await?.split();
                let subject = room.unwrap_or(&self.publish_subject);
                let sub = if room.is_some() { format!("SUB {subject} 1\r\n") } else { String::new() };
                let hello = format!(
                    "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"echo\":false}}\r\n{sub}PING\r\n"
                );
                sink.send(Message::Binary(Bytes::from(hello))).await?;
                let mut rx = Rx::Nats { stream, buf: BytesMut::new() };
                rx.wait_pong().await?;
                Ok((Tx::Nats { sink, subject: subject.into() }, rx))
            }
        }
    }
}

/// The hashes of a comma-separated `--cert-hash` (blanks skipped).
pub fn split_hashes(list: Option<&str>) -> Vec<String> {
    list.into_iter().flat_map(|l| l.split(',')).map(str::trim).filter(|h| !h.is_empty()).map(str::to_owned).collect()
}

async fn send_frame(sink: &mut SplitSink<Ws, Message>, id: u64, kind: pb::client_frame::Kind) -> anyhow::Result<()> {
    Ok(sink.send(Message::Binary(encode(&pb::ClientFrame { id, kind: Some(kind) }))).await?)
}

/// The next frame that answers a request (skipping presence and the like); fails on an
/// `Error` frame, a close or a 10 s silence.
async fn next_control(stream: &mut SplitStream<Ws>) -> anyhow::Result<Kind> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let msg = tokio::time::timeout_at(deadline, stream.next())
            .await
            .context("no answer from the server within 10 s")?
            .context("connection closed")??;
        let Message::Binary(b) = msg else { continue };
        match decode_server_frame(&b)?.kind {
            Some(Kind::Error(e)) => bail!("server error {:?}: {}", e.code(), e.message),
            Some(k @ (Kind::Welcome(_) | Kind::Joined(_) | Kind::Ack(_))) => return Ok(k),
            _ => {}
        }
    }
}

/// Aborts a task when dropped.
pub struct AbortOnDrop(tokio::task::AbortHandle);

impl AbortOnDrop {
    /// Guard `task`.
    pub fn new(task: tokio::task::AbortHandle) -> Self {
        Self(task)
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sending half.
pub enum Tx {
    Switchboard {
        client: Client,
        room: String,
    },
    /// A raw receive-only session: its pinger holds the socket's sending half.
    Raw {
        _pinger: AbortOnDrop,
    },
    Ws(SplitSink<Ws, Message>),
    Nats {
        sink: SplitSink<Ws, Message>,
        subject: String,
    },
}

impl Tx {
    /// Publish one room message (pipelined: no wait for acknowledgements).
    pub async fn send(&mut self, payload: Bytes) -> anyhow::Result<()> {
        match self {
            Tx::Switchboard { client, room } => Ok(client.publish_nowait(room, payload, true, "bench").await?),
            Tx::Ws(sink) => Ok(sink.send(Message::Binary(payload)).await?),
            Tx::Raw { .. } => bail!("a receive-only connection does not send"),
            Tx::Nats { sink, subject } => {
                let mut frame = BytesMut::with_capacity(payload.len() + 64);
                frame.extend_from_slice(format!("PUB {subject} {}\r\n", payload.len()).as_bytes());
                frame.extend_from_slice(&payload);
                frame.extend_from_slice(b"\r\n");
                Ok(sink.send(Message::Binary(frame.freeze())).await?)
            }
        }
    }

    /// Send a media frame (Switchboard only).
    pub async fn media(&mut self, media: pb::Media) -> anyhow::Result<()> {
        match self {
            Tx::Switchboard { client, .. } => Ok(client.media(media).await?),
            _ => bail!("media frames need a Switchboard target"),
        }
    }

    /// The Switchboard client, if any.
    pub fn client(&self) -> Option<&Client> {
        match self {
            Tx::Switchboard { client, .. } => Some(client),
            _ => None,
        }
    }
}

/// Receiving half.
pub enum Rx {
    Switchboard(Events),
    /// A raw Switchboard WebSocket session.
    Raw(SplitStream<Ws>),
    /// A raw Switchboard WebTransport session.
    RawWt(Box<super::raw_wt::RawWtRx>),
    Ws(SplitStream<Ws>),
    Nats {
        stream: SplitStream<Ws>,
        buf: BytesMut,
    },
}

impl Rx {
    /// The next room message's (or media frame's) payload; `None` when the connection ends.
    pub async fn recv(&mut self) -> Option<Bytes> {
        match self {
            Rx::Switchboard(events) => loop {
                match events.recv().await? {
                    Event::Message(m) => return Some(m.payload),
                    Event::Media(m) => return Some(m.payload),
                    Event::Closed { .. } => return None,
                    _ => {}
                }
            },
            Rx::Raw(stream) => loop {
                let b = match stream.next().await? {
                    Ok(Message::Binary(b)) => b,
                    Ok(_) => continue,
                    Err(_) => return None,
                };
                // Only the payload is read (the receivers measure the server, not prost).
                match field(&b, 0, b.len(), 10).map(|m| (m, 4)).or_else(|| field(&b, 0, b.len(), 12).map(|m| (m, 8))) {
                    Some(((start, end), payload_field)) => {
                        if let Some((s, e)) = field(&b, start, end, payload_field) {
                            return Some(b.slice(s..e));
                        }
                    }
                    None if field(&b, 0, b.len(), 5).is_some() => return None, // GoAway
                    None => {}
                }
            },
            Rx::RawWt(rx) => rx.payload().await,
            Rx::Ws(stream) => loop {
                match stream.next().await? {
                    Ok(Message::Binary(b)) => return Some(b),
                    Ok(_) => {}
                    Err(_) => return None,
                }
            },
            Rx::Nats { .. } => self.nats_next().await,
        }
    }

    async fn fill(stream: &mut SplitStream<Ws>, buf: &mut BytesMut) -> Option<()> {
        loop {
            match stream.next().await? {
                Ok(Message::Binary(b)) => {
                    buf.extend_from_slice(&b);
                    return Some(());
                }
                Ok(Message::Text(t)) => {
                    buf.extend_from_slice(t.as_bytes());
                    return Some(());
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    async fn wait_pong(&mut self) -> anyhow::Result<()> {
        let Rx::Nats { stream, buf } = self else { return Ok(()) };
        loop {
            if let Some(pos) = find(buf, b"PONG\r\n") {
                buf.advance(pos + 6);
                return Ok(());
            }
            if find(buf, b"-ERR").is_some() {
                bail!("nats-server refused: {}", String::from_utf8_lossy(buf));
            }
            Self::fill(stream, buf).await.context("nats-server closed during the handshake")?;
        }
    }

    /// Parse `MSG <subject> <sid> <len>\r\n<payload>\r\n` (skipping INFO, PING, PONG, +OK).
    async fn nats_next(&mut self) -> Option<Bytes> {
        let Rx::Nats { stream, buf } = self else { return None };
        loop {
            if let Some(eol) = find(buf, b"\r\n") {
                let line = String::from_utf8_lossy(&buf[..eol]).into_owned();
                if let Some(rest) = line.strip_prefix("MSG ") {
                    let len: usize = rest.split_whitespace().last()?.parse().ok()?;
                    if buf.len() >= eol + 2 + len + 2 {
                        buf.advance(eol + 2);
                        let payload = buf.split_to(len).freeze();
                        buf.advance(2);
                        return Some(payload);
                    }
                } else if line.starts_with("-ERR") {
                    return None;
                } else {
                    buf.advance(eol + 2); // INFO, PING (idle pings come every 2 min), PONG, +OK
                    continue;
                }
            }
            Self::fill(stream, buf).await?;
        }
    }
}

/// A protobuf varint at `*pos` (advancing it).
fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// The byte range of the first length-delimited field `number` of the message in
/// `buf[start..end]` (skipping other fields without decoding them).
pub(super) fn field(buf: &[u8], start: usize, end: usize, number: u64) -> Option<(usize, usize)> {
    let mut pos = start;
    while pos < end {
        let key = varint(buf, &mut pos)?;
        match key & 7 {
            0 => {
                varint(buf, &mut pos)?;
            }
            1 => pos += 8,
            5 => pos += 4,
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).ok()?;
                let (s, e) = (pos, pos.checked_add(len)?);
                if e > end {
                    return None;
                }
                if key >> 3 == number {
                    return Some((s, e));
                }
                pos = e;
            }
            _ => return None,
        }
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

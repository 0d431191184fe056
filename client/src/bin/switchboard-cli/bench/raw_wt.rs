//! Raw receive-only WebTransport sessions for the load generator: Hello and Join on the
//! control stream, then records read straight off the stream (only the payload looked at),
//! so WebTransport figures measure the server rather than the client library's reader.

use super::targets::{field, AbortOnDrop};
use anyhow::{bail, Context};
use bytes::Bytes;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use switchboard_client::{parse_cert_hash, pb};
use switchboard_protocol::framing::{encode_record, RecordDecoder};
use switchboard_protocol::limits::MAX_FRAME_BYTES;
use switchboard_protocol::{decode_server_frame, encode, PROTOCOL_VERSION};
use wtransport::tls::Sha256Digest;
use wtransport::{ClientConfig, Connection, Endpoint, RecvStream, SendStream};

/// The receiving half of a raw WebTransport session.
pub struct RawWtRx {
    /// Keeps the session open.
    _connection: Connection,
    recv: RecvStream,
    decoder: RecordDecoder,
    buf: Box<[u8]>,
}

async fn send_frame(send: &mut SendStream, id: u64, kind: pb::client_frame::Kind) -> anyhow::Result<()> {
    let frame = encode(&pb::ClientFrame { id, kind: Some(kind) });
    Ok(send.write_all(&encode_record(&frame)).await?)
}

impl RawWtRx {
    /// The next record, or `None` when the stream ends.
    async fn record(&mut self) -> Option<Bytes> {
        loop {
            if let Ok(Some(r)) = self.decoder.next_record() {
                return Some(r);
            }
            match self.recv.read(&mut self.buf).await {
                Ok(Some(n)) => self.decoder.extend(&self.buf[..n]),
                _ => return None,
            }
        }
    }

    /// The next room message's or media frame's payload.
    pub async fn payload(&mut self) -> Option<Bytes> {
        loop {
            let b = self.record().await?;
            if let Some(((s, e), n)) =
                field(&b, 0, b.len(), 10).map(|m| (m, 4)).or_else(|| field(&b, 0, b.len(), 12).map(|m| (m, 8)))
            {
                if let Some((ps, pe)) = field(&b, s, e, n) {
                    return Some(b.slice(ps..pe));
                }
            } else if field(&b, 0, b.len(), 5).is_some() {
                return None; // GoAway
            }
        }
    }

    /// The next answer to a request; fails on `Error` or after 10 s.
    async fn control(&mut self) -> anyhow::Result<pb::server_frame::Kind> {
        use pb::server_frame::Kind;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let b = tokio::time::timeout_at(deadline, self.record())
                .await
                .context("no answer from the server within 10 s")?
                .context("control stream closed")?;
            match decode_server_frame(&b)?.kind {
                Some(Kind::Error(e)) => bail!("server error {:?}: {}", e.code(), e.message),
                Some(k @ (Kind::Welcome(_) | Kind::Joined(_))) => return Ok(k),
                _ => {}
            }
        }
    }
}

/// Open a raw session to `url` from `ip`, join `room`, and keep it alive with a Ping every
/// heartbeat (the returned guard stops the pinger).
pub async fn connect(
    url: &str,
    ip: Option<IpAddr>,
    cert_hashes: &[String],
    token: &str,
    room: &str,
) -> anyhow::Result<(AbortOnDrop, RawWtRx)> {
    let builder = match ip {
        Some(ip) => ClientConfig::builder().with_bind_address(SocketAddr::new(ip, 0)),
        None => ClientConfig::builder().with_bind_default(),
    };
    let config = if cert_hashes.is_empty() {
        builder.with_native_certs().build()
    } else {
        let hashes =
            cert_hashes.iter().map(|h| parse_cert_hash(h).map(Sha256Digest::new)).collect::<Result<Vec<_>, _>>()?;
        builder.with_server_certificate_hashes(hashes).build()
    };
    let connection = Endpoint::client(config)?.connect(url).await.with_context(|| format!("connecting to {url}"))?;
    let (mut send, recv) = connection.open_bi().await?.await?;
    let mut rx = RawWtRx {
        _connection: connection,
        recv,
        decoder: RecordDecoder::new(MAX_FRAME_BYTES),
        buf: vec![0u8; 64 * 1024].into_boxed_slice(),
    };
    let hello = pb::Hello {
        protocol_version: PROTOCOL_VERSION,
        token: token.into(),
        client: "bench".into(),
        ..Default::default()
    };
    send_frame(&mut send, 0, pb::client_frame::Kind::Hello(hello)).await?;
    let pb::server_frame::Kind::Welcome(welcome) = rx.control().await? else { bail!("expected Welcome") };
    send_frame(&mut send, 1, pb::client_frame::Kind::Join(pb::Join { room: room.into(), resume_from: None })).await?;
    rx.control().await.with_context(|| format!("joining {room}"))?;
    let heartbeat = Duration::from_millis(u64::from(welcome.heartbeat_ms.max(250)));
    let pinger = tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        loop {
            tick.tick().await;
            if send_frame(&mut send, 0, pb::client_frame::Kind::Ping(pb::Ping { nonce: 0 })).await.is_err() {
                return;
            }
        }
    });
    Ok((AbortOnDrop::new(pinger.abort_handle()), rx))
}

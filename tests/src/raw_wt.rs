//! A raw WebTransport peer speaking the wire protocol by hand over real QUIC.

use crate::WAIT;
use switchboard_protocol::framing::{encode_record, RecordDecoder};
use switchboard_protocol::pb::{client_frame, server_frame, ClientFrame, Hello, ServerFrame};
use switchboard_protocol::{decode_server_frame, encode, limits::MAX_FRAME_BYTES, PROTOCOL_VERSION};
use wtransport::tls::Sha256Digest;
use wtransport::{ClientConfig, Connection, Endpoint, RecvStream, SendStream};

/// What the server sent next.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // test helper: size does not matter
pub enum WtReceived {
    /// A server frame.
    Frame(server_frame::Kind),
    /// The session closed; the application close code if the server gave one.
    Closed(Option<u64>),
}

/// A raw WebTransport session with its control stream.
pub struct RawWt {
    connection: Connection,
    send: SendStream,
    recv: RecvStream,
    decoder: RecordDecoder,
}

/// Parse a 64-char hex SHA-256.
pub fn digest(hex: &str) -> Sha256Digest {
    let bytes: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex digest")).collect();
    Sha256Digest::new(bytes.try_into().expect("32 bytes"))
}

impl RawWt {
    /// Open a session to `url` trusting the certificate with `cert_hash`, and the control
    /// stream.
    pub async fn connect(url: &str, cert_hash: &str) -> Self {
        crate::within(WAIT, "WebTransport connect", Self::try_connect(url, cert_hash))
            .await
            .expect("WebTransport session")
    }

    /// Like [`RawWt::connect`], returning the failure instead of panicking.
    pub async fn try_connect(url: &str, cert_hash: &str) -> Result<Self, String> {
        let config =
            ClientConfig::builder().with_bind_default().with_server_certificate_hashes([digest(cert_hash)]).build();
        let endpoint = Endpoint::client(config).map_err(|e| e.to_string())?;
        let connection = endpoint.connect(url).await.map_err(|e| e.to_string())?;
        let opening = connection.open_bi().await.map_err(|e| e.to_string())?;
        let (send, recv) = opening.await.map_err(|e| e.to_string())?;
        Ok(Self { connection, send, recv, decoder: RecordDecoder::new(MAX_FRAME_BYTES) })
    }

    /// Open a WebTransport session (QUIC and CONNECT handshakes) without a control stream:
    /// what a client that never authenticates holds. The endpoint must outlive the session.
    pub async fn session_only(
        url: &str,
        cert_hash: &str,
    ) -> Result<(Endpoint<wtransport::endpoint::endpoint_side::Client>, Connection), String> {
        let config =
            ClientConfig::builder().with_bind_default().with_server_certificate_hashes([digest(cert_hash)]).build();
        let endpoint = Endpoint::client(config).map_err(|e| e.to_string())?;
        let connection = endpoint.connect(url).await.map_err(|e| e.to_string())?;
        Ok((endpoint, connection))
    }

    /// Send raw bytes as the stream's next bytes (not framed).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.expect("writing");
    }

    /// Send raw bytes, returning a failure (the session closed) instead of panicking.
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.send.write_all(bytes).await.map_err(|e| e.to_string())
    }

    /// Send one frame as a record.
    pub async fn send(&mut self, id: u64, kind: client_frame::Kind) {
        let frame = encode(&ClientFrame { id, kind: Some(kind) });
        self.send_raw(&encode_record(&frame)).await;
    }

    /// Send `Hello`.
    pub async fn hello(&mut self, token: &str) {
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            token: token.into(),
            client: "raw-wt-test".into(),
            ..Default::default()
        };
        self.send(1, client_frame::Kind::Hello(hello)).await;
    }

    /// Send `Hello` asking for media lanes.
    pub async fn hello_lanes(&mut self, token: &str) {
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            token: token.into(),
            client: "raw-wt-test".into(),
            media_lanes: true,
            ..Default::default()
        };
        self.send(1, client_frame::Kind::Hello(hello)).await;
    }

    /// The session.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Send one client frame as a datagram.
    pub fn send_datagram(&self, kind: client_frame::Kind) {
        let frame = encode(&ClientFrame { id: 0, kind: Some(kind) });
        self.connection.send_datagram(&frame).expect("datagram sent");
    }

    /// Open a unidirectional stream and write `frames` on it as records (not finished).
    pub async fn send_on_stream(&self, frames: &[client_frame::Kind]) -> SendStream {
        let mut stream = within_wait("opening a stream", async {
            self.connection.open_uni().await.expect("open uni").await.expect("uni stream")
        })
        .await;
        for kind in frames {
            let frame = encode(&ClientFrame { id: 0, kind: Some(kind.clone()) });
            stream.write_all(&encode_record(&frame)).await.expect("writing a record");
        }
        stream
    }

    /// The next datagram from the node, decoded.
    pub async fn datagram(&self) -> server_frame::Kind {
        let datagram = within_wait("a datagram", self.connection.receive_datagram()).await.expect("datagram");
        let ServerFrame { kind } = decode_server_frame(&datagram.payload()).expect("datagram decodes");
        kind.expect("kind")
    }

    /// The next unidirectional stream the node opens.
    pub async fn group(&self) -> LaneStream {
        let recv = within_wait("a unidirectional stream", self.connection.accept_uni()).await.expect("uni stream");
        LaneStream { recv, decoder: RecordDecoder::new(MAX_FRAME_BYTES) }
    }

    /// The next frame or the close.
    pub async fn next(&mut self) -> WtReceived {
        crate::within(WAIT, "a WebTransport server frame", async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                if let Some(record) = self.decoder.next_record().expect("server records are well formed") {
                    let ServerFrame { kind } = decode_server_frame(&record).expect("server frame decodes");
                    return WtReceived::Frame(kind.expect("kind"));
                }
                match self.recv.read(&mut buf).await {
                    Ok(Some(n)) => self.decoder.extend(&buf[..n]),
                    Ok(None) | Err(_) => {
                        let reason = self.connection.closed().await;
                        return WtReceived::Closed(app_code(&reason));
                    }
                }
            }
        })
        .await
    }

    /// The next frame, panicking on close.
    pub async fn frame(&mut self) -> server_frame::Kind {
        match self.next().await {
            WtReceived::Frame(f) => f,
            WtReceived::Closed(c) => panic!("session closed ({c:?}) while a frame was expected"),
        }
    }

    /// Hello and expect `Welcome`.
    pub async fn authenticated(url: &str, cert_hash: &str, token: &str) -> (Self, switchboard_protocol::pb::Welcome) {
        let mut wt = Self::connect(url, cert_hash).await;
        wt.hello(token).await;
        match wt.frame().await {
            server_frame::Kind::Welcome(w) => (wt, w),
            other => panic!("expected Welcome, got {other:?}"),
        }
    }
}

/// A unidirectional stream from the node: records of `ServerFrame`s.
pub struct LaneStream {
    recv: RecvStream,
    decoder: RecordDecoder,
}

impl LaneStream {
    /// The next frame on this stream.
    pub async fn frame(&mut self) -> server_frame::Kind {
        within_wait("a frame on a unidirectional stream", async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                if let Some(record) = self.decoder.next_record().expect("well-formed records") {
                    let ServerFrame { kind } = decode_server_frame(&record).expect("server frame decodes");
                    return kind.expect("kind");
                }
                let n = self.recv.read(&mut buf).await.expect("reading the stream").expect("the stream goes on");
                self.decoder.extend(&buf[..n]);
            }
        })
        .await
    }
}

async fn within_wait<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    crate::within(WAIT, what, fut).await
}

fn app_code(err: &wtransport::error::ConnectionError) -> Option<u64> {
    match err {
        wtransport::error::ConnectionError::ApplicationClosed(close) => Some(close.code().into_inner()),
        _ => None,
    }
}

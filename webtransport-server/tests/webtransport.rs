//! The WebTransport edge in-process: a node on the embedded bus, `WtServer` on a random UDP
//! port, and a raw wtransport client speaking the wire protocol by hand.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use switchboard_protocol::framing::{encode_record, RecordDecoder};
use switchboard_protocol::pb::{client_frame, server_frame, ClientFrame, Hello, Ping, ServerFrame};
use switchboard_protocol::{
    close_code, decode_server_frame, encode, limits::MAX_FRAME_BYTES, ErrorCode, PROTOCOL_VERSION,
};
use switchboard_relay::auth::DEV_SECRET;
use switchboard_relay::{Claims, LocalBus, Minter, Node, RelayConfig, Verifier, VerifyKey};
use switchboard_webtransport::{WtConfig, WtServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wtransport::error::{ConnectingError, ConnectionError};
use wtransport::tls::Sha256Digest;
use wtransport::{ClientConfig, Connection, Endpoint, RecvStream, SendStream};

/// Bound on every wait.
const WAIT: Duration = Duration::from_secs(5);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

struct Server {
    node: Arc<Node>,
    addr: SocketAddr,
    hash: String,
    /// The served hash as it rotates.
    served: switchboard_webtransport::CertificateHash,
    serving: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(hello_timeout: Duration) -> Self {
        let config = RelayConfig { hello_timeout, ..RelayConfig::default() };
        let verifier = Verifier::new(&VerifyKey::Hmac(DEV_SECRET.as_bytes().to_vec()), config.token_leeway_secs)
            .expect("verifier");
        let node = Node::start(config, verifier, Arc::new(LocalBus::new())).await.expect("node");
        let wt = WtConfig { addr: "127.0.0.1:0".parse().unwrap(), ..WtConfig::default() };
        let server = WtServer::bind(wt).await.expect("bind");
        let addr = server.local_addr().expect("local addr");
        let hash = server.certificate_sha256_hex();
        assert_eq!(server.generated_certificate_sha256_hex().as_deref(), Some(hash.as_str()));
        let served = server.generated_certificate_hash().expect("a generated certificate");
        let serving = tokio::spawn(server.serve(node.clone()));
        Self { node, addr, hash, served, serving }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    async fn session(&self, path: &str) -> Result<Connection, ConnectingError> {
        let bytes: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&self.hash[2 * i..2 * i + 2], 16).unwrap()).collect();
        let digest = Sha256Digest::new(bytes.try_into().unwrap());
        let config = ClientConfig::builder().with_bind_default().with_server_certificate_hashes([digest]).build();
        let endpoint = Endpoint::client(config).expect("client endpoint");
        within("the WebTransport session", endpoint.connect(self.url(path))).await
    }

    async fn client(&self) -> Client {
        let connection = self.session("/wt").await.expect("session");
        let (send, recv) = within("the control stream", async { connection.open_bi().await.expect("open").await })
            .await
            .expect("control stream");
        Client { connection, send, recv, decoder: RecordDecoder::new(MAX_FRAME_BYTES) }
    }
}

fn token(user: &str) -> String {
    let claims = Claims::new(user, &["*"], 3600);
    Minter::hmac(DEV_SECRET.as_bytes()).mint(&claims).expect("token")
}

struct Client {
    connection: Connection,
    send: SendStream,
    recv: RecvStream,
    decoder: RecordDecoder,
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // test helper: size does not matter
enum Event {
    Frame(server_frame::Kind),
    /// The connection closed, with the application close code if any.
    Closed(Option<u64>),
}

impl Client {
    async fn send(&mut self, id: u64, kind: client_frame::Kind) {
        let record = encode_record(&encode(&ClientFrame { id, kind: Some(kind) }));
        self.send.write_all(&record).await.expect("write");
    }

    async fn hello(&mut self, user: &str) -> server_frame::Kind {
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            token: token(user),
            client: "wt-test".into(),
            ..Default::default()
        };
        self.send(1, client_frame::Kind::Hello(hello)).await;
        self.frame().await
    }

    async fn next(&mut self) -> Event {
        within("a server frame or the close", async {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                if let Some(record) = self.decoder.next_record().expect("server records are well formed") {
                    let ServerFrame { kind } = decode_server_frame(&record).expect("server frame");
                    return Event::Frame(kind.expect("frame kind"));
                }
                match self.recv.read(&mut buf).await {
                    Ok(Some(n)) => self.decoder.extend(&buf[..n]),
                    Ok(None) | Err(_) => return Event::Closed(app_code(self.connection.closed().await)),
                }
            }
        })
        .await
    }

    async fn frame(&mut self) -> server_frame::Kind {
        match self.next().await {
            Event::Frame(kind) => kind,
            Event::Closed(code) => panic!("closed ({code:?}) while a frame was expected"),
        }
    }

    /// Skip frames until the connection closes; its application close code.
    async fn closed(&mut self) -> Option<u64> {
        loop {
            if let Event::Closed(code) = self.next().await {
                return code;
            }
        }
    }
}

fn app_code(error: ConnectionError) -> Option<u64> {
    match error {
        ConnectionError::ApplicationClosed(close) => Some(close.code().into_inner()),
        _ => None,
    }
}

fn code(error: ErrorCode) -> Option<u64> {
    Some(close_code(error).into())
}

#[tokio::test]
async fn hello_welcome_then_an_oversized_record_closes_with_frame_too_large() {
    let server = Server::start(Duration::from_secs(10)).await;
    assert_eq!(server.hash.len(), 64);
    assert!(server.hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{}", server.hash);
    let mut client = server.client().await;
    match client.hello("wendy").await {
        server_frame::Kind::Welcome(welcome) => {
            assert_eq!(welcome.user, "wendy");
            assert_eq!(welcome.node, server.node.id());
        }
        other => panic!("expected Welcome, got {other:?}"),
    }
    client.send(2, client_frame::Kind::Ping(Ping::default())).await;
    assert!(matches!(client.frame().await, server_frame::Kind::Pong(_)));
    // A record announcing more than the limit: refused before any payload is buffered.
    client.send.write_all(&(MAX_FRAME_BYTES as u32 + 1).to_be_bytes()).await.expect("write");
    assert_eq!(client.closed().await, code(ErrorCode::FrameTooLarge));
}

#[tokio::test]
async fn other_paths_get_404() {
    let server = Server::start(Duration::from_secs(10)).await;
    assert!(matches!(server.session("/other").await, Err(ConnectingError::SessionRejected)));
}

#[tokio::test]
async fn a_truncated_control_stream_is_a_protocol_error() {
    let server = Server::start(Duration::from_secs(10)).await;
    let mut client = server.client().await;
    assert!(matches!(client.hello("wendy").await, server_frame::Kind::Welcome(_)));
    // Half a record, then the end of the stream.
    client.send.write_all(&encode_record(b"partial")[..6]).await.expect("write");
    within("finishing the stream", client.send.finish()).await.expect("finish");
    assert_eq!(client.closed().await, code(ErrorCode::BadFrame));
}

#[tokio::test]
async fn extra_streams_are_refused_and_the_control_stream_carries_on() {
    let server = Server::start(Duration::from_secs(10)).await;
    let mut client = server.client().await;
    assert!(matches!(client.hello("wendy").await, server_frame::Kind::Welcome(_)));
    // More streams than the server allows at once: each is stopped, so opening never stalls.
    for i in 0..20 {
        let (mut send, mut recv) =
            within("an extra stream", async { client.connection.open_bi().await.expect("open").await })
                .await
                .expect("open");
        let _ = send.write_all(b"ignored").await;
        assert!(within("the extra stream's stop", send.stopped()).await.to_string().contains("stopped"), "stream {i}");
        let mut buf = [0u8; 16];
        assert!(within("the extra stream's reset", recv.read(&mut buf)).await.is_err(), "stream {i}");
    }
    for i in 0..20 {
        let mut uni =
            within("an extra uni stream", async { client.connection.open_uni().await.expect("open uni").await })
                .await
                .expect("open uni");
        let _ = uni.write_all(b"ignored").await;
        assert!(within("the uni stream's stop", uni.stopped()).await.to_string().contains("stopped"), "uni {i}");
    }
    client.send(2, client_frame::Kind::Ping(Ping { nonce: 7 })).await;
    assert!(matches!(client.frame().await, server_frame::Kind::Pong(p) if p.nonce == 7));
}

#[tokio::test]
async fn no_control_stream_closes_with_hello_timeout() {
    let server = Server::start(Duration::from_millis(300)).await;
    let connection = server.session("/wt").await.expect("session");
    let closed = within("the close", connection.closed()).await;
    assert_eq!(app_code(closed), code(ErrorCode::HelloTimeout));
}

#[tokio::test]
async fn draining_refuses_new_sessions_and_serve_returns_when_sessions_end() {
    let server = Server::start(Duration::from_secs(10)).await;
    let mut client = server.client().await;
    assert!(matches!(client.hello("wendy").await, server_frame::Kind::Welcome(_)));
    let node = server.node.clone();
    let drained = tokio::spawn(async move { node.drain(Duration::from_secs(5)).await });
    assert!(matches!(client.frame().await, server_frame::Kind::GoAway(_)));
    assert!(server.session("/wt").await.is_err(), "a new session while draining");
    client.connection.close(wtransport::VarInt::from_u32(0), b"moving"); // the client leaves
    within("serve to return", server.serving).await.expect("serve");
    within("the drain", drained).await.expect("drain");
}

/// One request to the probe listener; the status code and body.
async fn http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    within("a probe response", async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let _ = stream.write_all(request).await;
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        let text = String::from_utf8(response).expect("utf-8 response");
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
        (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
    })
    .await
}

#[tokio::test]
async fn probe_listener() {
    let server = Server::start(Duration::from_secs(10)).await;
    let listener = switchboard_webtransport::probe::bind("127.0.0.1:0".parse().unwrap()).await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let origins = switchboard_relay::AllowedOrigins::new(["https://app.example.com"]);
    tokio::spawn(switchboard_webtransport::probe::serve(
        listener,
        server.node.clone(),
        Some(server.served.clone()),
        origins,
    ));
    assert_eq!(http(addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await, (200, "ok\n".into()));
    assert_eq!(http(addr, b"GET /readyz HTTP/1.1\r\n\r\n").await.0, 200);
    let (status, metrics) = http(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("switchboard_"), "{metrics}");
    assert_eq!(http(addr, b"GET /certificate.sha256 HTTP/1.1\r\n\r\n").await, (200, format!("{}\n", server.hash)));
    assert_eq!(http(addr, b"GET /nope HTTP/1.1\r\n\r\n").await.0, 404);
    // CORS: only the certificate hash is for browsers, and only for allowed origins.
    let head = |request: &'static [u8]| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request).await.expect("write");
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        String::from_utf8(response).expect("utf-8").to_ascii_lowercase()
    };
    let allowed = head(b"GET /certificate.sha256 HTTP/1.1\r\nOrigin: https://app.example.com\r\n\r\n").await;
    assert!(allowed.contains("access-control-allow-origin: https://app.example.com\r\n"), "{allowed}");
    for refused in [
        &b"GET /certificate.sha256 HTTP/1.1\r\nOrigin: https://evil.example.net\r\n\r\n"[..],
        b"GET /certificate.sha256 HTTP/1.1\r\nOrigin: https://app.example.com\r\nOrigin: https://evil.example.net\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nOrigin: https://app.example.com\r\n\r\n",
    ] {
        let answer = head(refused).await;
        assert!(!answer.contains("access-control-allow-origin"), "{answer}");
    }
    assert_eq!(http(addr, b"POST /healthz HTTP/1.1\r\n\r\n").await.0, 405);
    // One byte over the request limit, without an end of headers (all of it is read, so the
    // close is clean).
    assert_eq!(http(addr, &[b'a'; 8 * 1024 + 1]).await.0, 400);
    server.node.drain(Duration::ZERO).await;
    assert_eq!(http(addr, b"GET /readyz HTTP/1.1\r\n\r\n").await.0, 503);
}

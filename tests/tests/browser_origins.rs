//! The browser origin policy (`--allowed-origins`) on every browser-facing path of a real
//! node: CORS on the HTTP API (preflights and actual requests), the WebSocket upgrade with
//! two `Origin` headers, and the WebTransport CONNECT request's `Origin`.

use switchboard_tests::http::{exchange, Response};
use switchboard_tests::{token, within, NodeOptions, TestNode, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wtransport::endpoint::ConnectOptions;
use wtransport::error::ConnectingError;
use wtransport::{ClientConfig, Endpoint};

const APP: &str = "https://app.example.com";
const EVIL: &str = "https://evil.example.net";
const FORBIDDEN: &str = "switchboard_errors_total{code=\"ERROR_CODE_FORBIDDEN\"}";

fn node_with(args: &[&str]) -> NodeOptions {
    NodeOptions { args: args.iter().map(|a| a.to_string()).collect(), ..Default::default() }
}

/// The browser-facing endpoints: path, method, the header a page sends that needs a
/// preflight.
const BROWSER_FACING: &[(&str, &str, &str)] = &[
    ("/api/calls?user=alice", "GET", "authorization"),
    ("/api/ice-servers", "GET", "authorization"),
    ("/api/auth/login", "POST", "content-type"),
    ("/api/auth/register", "POST", "content-type"),
    ("/api/endpoints", "GET", "content-type"),
    ("/api/dev/token", "POST", "content-type"),
    ("/certificate.sha256", "GET", "content-type"),
];

async fn preflight(node: &TestNode, path: &str, method: &str, header: &str, origins: &[&str]) -> Response {
    let mut headers: Vec<(&str, &str)> = origins.iter().map(|o| ("Origin", *o)).collect();
    headers.extend([("Access-Control-Request-Method", method), ("Access-Control-Request-Headers", header)]);
    exchange(node.http_port, "OPTIONS", path, &headers, None).await.expect("preflight")
}

/// The actual request a page makes (GET, or POST with a JSON body), from `origins`.
async fn actual(node: &TestNode, path: &str, method: &str, origins: &[&str]) -> Response {
    let auth = format!("Bearer {}", token("alice", &["demo"]));
    let mut headers: Vec<(&str, &str)> = origins.iter().map(|o| ("Origin", *o)).collect();
    headers.push(("Authorization", &auth));
    let body = (method == "POST").then_some(r#"{"name":"Alice","username":"alice","password":"x"}"#);
    exchange(node.http_port, method, path, &headers, body).await.expect("request")
}

fn assert_allowed(res: &Response, origin: &str, what: &str) {
    assert_eq!(res.header("access-control-allow-origin"), Some(origin), "{what}: {res:?}");
    let vary = res.header("vary").unwrap_or_default().to_ascii_lowercase();
    assert!(vary.contains("origin"), "{what}: Vary names Origin: {res:?}");
    // Nothing uses cookies: no credentialed requests.
    assert_eq!(res.header("access-control-allow-credentials"), None, "{what}: {res:?}");
}

/// A preflight that lets the request through: 204, the origin reflected, the method and
/// both headers allowed, cacheable.
fn assert_allowed_preflight(res: &Response, origin: &str, method: &str, what: &str) {
    assert_eq!(res.status, 204, "{what}: preflight allowed: {res:?}");
    assert_allowed(res, origin, what);
    let allowed = res.header("access-control-allow-headers").unwrap_or_default().to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"), "{what}: {res:?}");
    assert!(res.header("access-control-allow-methods").unwrap_or_default().contains(method), "{what}: {res:?}");
    let max_age: u64 = res.header("access-control-max-age").and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!((60..=7200).contains(&max_age), "{what}: max-age {max_age}");
}

fn assert_no_cors(res: &Response, what: &str) {
    for name in ["access-control-allow-origin", "access-control-allow-methods", "access-control-allow-headers"] {
        assert_eq!(res.header(name), None, "{what}: no {name}: {res:?}");
    }
}

/// A preflight refused for its origin: 403, no CORS headers.
fn assert_refused_preflight(res: &Response, what: &str) {
    assert_eq!(res.status, 403, "{what}: preflight refused: {res:?}");
    assert_no_cors(res, what);
}

#[tokio::test]
async fn cors_follows_the_allow_list() {
    let node = TestNode::start(node_with(&["--allowed-origins", "https://app.example.com/", "--dev-tokens"])).await;
    for &(path, method, header) in BROWSER_FACING {
        // An allowed origin: the preflight lets the request through, the answer is readable.
        let res = preflight(&node, path, method, header, &[APP]).await;
        assert_allowed_preflight(&res, APP, method, path);
        assert_allowed(&actual(&node, path, method, &[APP]).await, APP, path);

        // Another origin, or two Origin headers (the first allowed): no preflight, nothing
        // readable.
        for origins in [&[EVIL][..], &[APP, EVIL][..], &["https://app.example.com.evil.net"][..]] {
            let what = format!("{path} from {origins:?}");
            assert_refused_preflight(&preflight(&node, path, method, header, origins).await, &what);
            assert_no_cors(&actual(&node, path, method, origins).await, &what);
        }
        // A method the endpoint does not take is no preflight's to allow.
        let other = if method == "GET" { "DELETE" } else { "PUT" };
        let res = preflight(&node, path, other, header, &[APP]).await;
        assert!(!(200..300).contains(&res.status), "{path}: {other} refused: {res:?}");
    }
    // The answer a page reads cross-origin is the real one.
    let res = actual(&node, "/api/calls?user=alice", "GET", &[APP]).await;
    assert_eq!(res.status, 200, "{res:?}");
    assert!(res.body.contains("\"calls\""), "{res:?}");
    // The admin API is for servers, not pages: no CORS at all.
    let res = preflight(&node, "/api/rooms", "GET", "authorization", &[APP]).await;
    assert!(!(200..300).contains(&res.status), "admin API: {res:?}");
    assert_no_cors(&res, "admin API");
}

#[tokio::test]
async fn cors_without_a_list_allows_any_single_origin() {
    let node = TestNode::start(NodeOptions::default()).await;
    for &(path, method, header) in BROWSER_FACING {
        let res = preflight(&node, path, method, header, &[EVIL]).await;
        // The origin is reflected (not `*`): the same answer as with a list.
        assert_allowed_preflight(&res, EVIL, method, path);
        assert_allowed(&actual(&node, path, method, &[EVIL]).await, EVIL, path);
        assert_refused_preflight(&preflight(&node, path, method, header, &[APP, EVIL]).await, path);
    }
}

#[tokio::test]
async fn cors_allow_lists_take_wildcard_subdomains_and_a_star() {
    let node = TestNode::start(node_with(&["--allowed-origins", "https://*.example.com,http://127.0.0.1:3000"])).await;
    let (path, method, header) = ("/api/calls?user=alice", "GET", "authorization");
    for origin in ["https://app.example.com", "https://pr-12.preview.example.com", "http://127.0.0.1:3000"] {
        assert_allowed_preflight(&preflight(&node, path, method, header, &[origin]).await, origin, method, origin);
        assert_allowed(&actual(&node, path, method, &[origin]).await, origin, origin);
        assert_eq!(ws_upgrade_status(&node, &[origin]).await, 101, "{origin}");
    }
    for origin in ["https://example.com", "https://app.example.com.evil.net", "http://app.example.com", EVIL] {
        assert_refused_preflight(&preflight(&node, path, method, header, &[origin]).await, origin);
        assert_no_cors(&actual(&node, path, method, &[origin]).await, origin);
        assert_eq!(ws_upgrade_status(&node, &[origin]).await, 403, "{origin}");
    }

    // `*` spells out the default: any one origin, reflected.
    let any = TestNode::start(node_with(&["--allowed-origins", "*"])).await;
    assert_allowed_preflight(&preflight(&any, path, method, header, &[EVIL]).await, EVIL, method, "*");
    assert_allowed(&actual(&any, path, method, &[EVIL]).await, EVIL, "*");
    assert_refused_preflight(&preflight(&any, path, method, header, &[APP, EVIL]).await, "* and two origins");
}

/// The status line of a WebSocket upgrade sent with these `Origin` headers (raw TCP: client
/// libraries send one value per header name).
async fn ws_upgrade_status(node: &TestNode, origins: &[&str]) -> u16 {
    let mut req = format!(
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        node.http_port
    );
    for o in origins {
        req.push_str(&format!("Origin: {o}\r\n"));
    }
    req.push_str("\r\n");
    within(WAIT, "WebSocket upgrade answer", async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", node.http_port)).await.expect("connect");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).await.expect("read") == 1 {
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    })
    .await
}

#[tokio::test]
async fn websocket_upgrades_with_two_origin_headers_are_refused() {
    let node = TestNode::start(node_with(&["--allowed-origins", APP])).await;
    assert_eq!(ws_upgrade_status(&node, &[APP]).await, 101);
    assert_eq!(ws_upgrade_status(&node, &[]).await, 101);
    assert_eq!(ws_upgrade_status(&node, &[APP, EVIL]).await, 403);
    assert_eq!(ws_upgrade_status(&node, &[EVIL, APP]).await, 403);
    assert_eq!(ws_upgrade_status(&node, &[APP, APP]).await, 403);
    assert!(node.metric(FORBIDDEN).await >= 3.0);
    // Without a list any one origin may connect, but never two.
    let open = TestNode::start(NodeOptions::default()).await;
    assert_eq!(ws_upgrade_status(&open, &[EVIL]).await, 101);
    assert_eq!(ws_upgrade_status(&open, &[APP, EVIL]).await, 403);
}

/// Open a WebTransport session (and its control stream) with this `Origin`, if any.
async fn wt_session(node: &TestNode, hash: &str, origin: Option<&str>) -> Result<(), ConnectingError> {
    let config = ClientConfig::builder()
        .with_bind_default()
        .with_server_certificate_hashes([switchboard_tests::raw_wt::digest(hash)])
        .build();
    let endpoint = Endpoint::client(config).expect("client endpoint");
    let mut options = ConnectOptions::builder(node.wt_url());
    if let Some(o) = origin {
        options = options.add_header("origin", o);
    }
    within(WAIT, "WebTransport CONNECT", async {
        let connection = endpoint.connect(options.build()).await?;
        connection.open_bi().await.expect("stream").await.expect("control stream");
        Ok(())
    })
    .await
}

/// Sessions from origins outside `https://app.example.com,http://127.0.0.1:3000` are refused.
async fn check_webtransport_allow_list(node: &TestNode) {
    let hash = node.cert_hash().await;
    for origin in [EVIL, "https://app.example.com.evil.net", "null"] {
        let refused = wt_session(node, &hash, Some(origin)).await;
        assert!(matches!(refused, Err(ConnectingError::SessionRejected)), "{origin}: {refused:?}");
    }
    assert!(node.metric(FORBIDDEN).await >= 3.0);
    wt_session(node, &hash, Some(APP)).await.expect("an allowed origin");
    wt_session(node, &hash, Some("http://127.0.0.1:3000")).await.expect("an allowed origin");
    wt_session(node, &hash, None).await.expect("native clients send no Origin");
}

#[tokio::test]
async fn webtransport_sessions_from_other_origins_are_refused() {
    let allow = node_with(&["--allowed-origins", "https://app.example.com,http://127.0.0.1:3000"]);
    check_webtransport_allow_list(&TestNode::start(allow.clone()).await).await;
    let open = TestNode::start(NodeOptions::default()).await;
    wt_session(&open, &open.cert_hash().await, Some(EVIL)).await.expect("no list: any origin");
    // The QUIC-only node takes the same flag.
    check_webtransport_allow_list(&TestNode::start_webtransport_only(allow).await).await;
}

//! Built-in accounts (`--accounts`) over HTTP against real nodes: registration, login, the
//! token opening a WebSocket session, taken names (also under concurrent registration),
//! bad credentials, weak input, rate limits, the disabled default, signing with a private
//! key, and a user registered through one node logging in through another on NATS.

use std::time::Duration;
use switchboard_client::{Client, ClientConfig, ErrorCode};
use switchboard_relay::auth::now_secs;
use switchboard_tests::raw::RawWs;
use switchboard_tests::{within, NatsServer, NodeOptions, TestNode, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A response: status, headers (lower-case names), JSON body.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: serde_json::Value,
}

impl Response {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    fn token(&self) -> String {
        self.body["token"].as_str().unwrap_or_else(|| panic!("no token in {}", self.body)).to_owned()
    }
}

/// POST `body` to `path` on the node, with extra headers. (The shared helper returns no
/// headers, and these tests need `Retry-After`.)
async fn post_with(node: &TestNode, path: &str, body: &str, extra: &[(&str, &str)]) -> Response {
    let port = node.http_port;
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in extra {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    let raw = within(WAIT, "an HTTP response", async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        s.write_all(request.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read");
        String::from_utf8(buf).expect("UTF-8 response")
    })
    .await;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = serde_json::from_str(body).unwrap_or_else(|_| serde_json::Value::String(body.to_owned()));
    Response { status, headers, body }
}

async fn post(node: &TestNode, path: &str, body: serde_json::Value) -> Response {
    post_with(node, path, &body.to_string(), &[]).await
}

async fn register(node: &TestNode, username: &str, password: &str) -> Response {
    post(node, "/api/auth/register", serde_json::json!({"username": username, "password": password})).await
}

async fn login(node: &TestNode, username: &str, password: &str) -> Response {
    post(node, "/api/auth/login", serde_json::json!({"username": username, "password": password})).await
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Accounts on, rate limits off (the rate-limit test turns them on).
fn unlimited() -> Vec<String> {
    args(&[
        "--accounts",
        "--accounts-login-per-user",
        "0",
        "--accounts-login-per-ip",
        "0",
        "--accounts-register-per-ip",
        "0",
    ])
}

/// Hello with `token` on the node's WebSocket edge; the user id in Welcome.
async fn session_user(node: &TestNode, token: &str) -> (String, String) {
    let (ws, welcome) = RawWs::authenticated(&node.ws_url(), token).await;
    ws.close().await;
    (welcome.user, welcome.name)
}

#[tokio::test]
async fn register_login_and_the_token_opens_a_session() {
    let mut opts = unlimited();
    opts.extend(args(&["--accounts-rooms", "lobby,team-*", "--accounts-token-ttl", "600"]));
    let node = TestNode::start(NodeOptions { args: opts, ..Default::default() }).await;

    let r = post(
        &node,
        "/api/auth/register",
        serde_json::json!({"username": "alice", "password": "correct horse", "name": " Alice A. "}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!((r.body["user"].as_str(), r.body["name"].as_str()), (Some("alice"), Some("Alice A.")));
    let expires_at = r.body["expires_at"].as_u64().expect("expires_at");
    assert!((now_secs() + 590..=now_secs() + 610).contains(&expires_at), "ttl 600: {expires_at}");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(session_user(&node, &r.token()).await, ("alice".to_owned(), "Alice A.".to_owned()));

    let r = login(&node, "alice", "correct horse").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!((r.body["user"].as_str(), r.body["name"].as_str()), (Some("alice"), Some("Alice A.")));
    // The token grants the configured rooms, and only those.
    let (client, _events) = Client::connect(ClientConfig::new(node.ws_url(), r.token())).await.expect("connect");
    assert_eq!(client.welcome().user, "alice");
    client.join("lobby").await.expect("join lobby");
    client.join("team-red").await.expect("join team-red");
    assert_eq!(client.join("other").await.unwrap_err().code(), Some(ErrorCode::Forbidden));

    // A name without a display name gets `name: null` and the id in Welcome.
    let r = register(&node, "bob_2", "another password").await;
    assert_eq!((r.status, r.body["name"].is_null()), (201, true), "{}", r.body);
    assert_eq!(session_user(&node, &r.token()).await.0, "bob_2");

    // Taken: refused, and the first registration's password still holds.
    let r = register(&node, "alice", "a different password").await;
    assert_eq!((r.status, r.code()), (409, "username_taken"), "{}", r.body);
    assert_eq!(login(&node, "alice", "a different password").await.status, 401);
    assert_eq!(login(&node, "alice", "correct horse").await.status, 200);

    // Wrong password and unknown user look the same.
    let wrong = login(&node, "alice", "wrong horse").await;
    let unknown = login(&node, "nobody", "correct horse").await;
    assert_eq!((wrong.status, wrong.code()), (401, "invalid_credentials"));
    assert_eq!((unknown.status, unknown.code()), (401, "invalid_credentials"));
    assert_eq!(wrong.body, unknown.body);
    assert_eq!(login(&node, "Alice", "correct horse").await.code(), "invalid_credentials");
}

#[tokio::test]
async fn weak_or_malformed_input_gets_a_clear_400() {
    let node = TestNode::start(NodeOptions { args: unlimited(), ..Default::default() }).await;
    let cases: &[(serde_json::Value, &str, &str)] = &[
        (serde_json::json!({"username": "Alice", "password": "correct horse"}), "invalid_username", "lower case"),
        (serde_json::json!({"username": "al", "password": "correct horse"}), "invalid_username", "3 to 32"),
        (serde_json::json!({"username": "x".repeat(33), "password": "correct horse"}), "invalid_username", "3 to 32"),
        (serde_json::json!({"username": "al.ice", "password": "correct horse"}), "invalid_username", "a-z, 0-9"),
        (serde_json::json!({"username": "server", "password": "correct horse"}), "invalid_username", "reserved"),
        (serde_json::json!({"username": "alice", "password": "short"}), "weak_password", "at least 8"),
        (serde_json::json!({"username": "alice", "password": "x".repeat(257)}), "weak_password", "at most 256"),
        (serde_json::json!({"username": "alice_99", "password": "alice_99"}), "weak_password", "username"),
        (
            serde_json::json!({"username": "alice", "password": "correct horse", "name": "n".repeat(65)}),
            "invalid_name",
            "64",
        ),
        (serde_json::json!({"username": "alice"}), "invalid_json", "password"),
        (serde_json::json!({"username": "alice", "password": "correct horse", "admin": true}), "invalid_json", "admin"),
        (serde_json::json!({"username": 7, "password": "correct horse"}), "invalid_json", "string"),
    ];
    for (body, code, hint) in cases {
        let r = post(&node, "/api/auth/register", body.clone()).await;
        assert_eq!((r.status, r.code()), (400, *code), "{body}: {}", r.body);
        let message = r.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(hint), "{body}: message {message:?} should mention {hint:?}");
    }
    let r = post_with(&node, "/api/auth/register", "{not json", &[]).await;
    assert_eq!((r.status, r.code()), (400, "invalid_json"));
    let r = post_with(&node, "/api/auth/login", "[]", &[]).await;
    assert_eq!((r.status, r.code()), (400, "invalid_json"));
    // None of them registered anything.
    assert_eq!(register(&node, "alice", "correct horse").await.status, 201);
}

#[tokio::test]
async fn concurrent_registrations_of_one_name_have_one_winner() {
    let node = TestNode::start(NodeOptions { args: unlimited(), ..Default::default() }).await;
    let attempts = (0..8).map(|i| {
        let node = &node;
        async move { (i, register(node, "carol", &format!("password number {i}")).await) }
    });
    let results = futures_util::future::join_all(attempts).await;
    let winners: Vec<usize> = results.iter().filter(|(_, r)| r.status == 201).map(|(i, _)| *i).collect();
    assert_eq!(winners.len(), 1, "exactly one 201: {:?}", results.iter().map(|(_, r)| r.status).collect::<Vec<_>>());
    for (_, r) in results.iter().filter(|(_, r)| r.status != 201) {
        assert_eq!((r.status, r.code()), (409, "username_taken"), "{}", r.body);
    }
    // The winner's password is the one stored.
    for i in 0..8 {
        let expected = if i == winners[0] { 200 } else { 401 };
        assert_eq!(login(&node, "carol", &format!("password number {i}")).await.status, expected, "password {i}");
    }
}

#[tokio::test]
async fn attempts_are_rate_limited_per_username_and_per_address() {
    let node = TestNode::start(NodeOptions {
        args: args(&[
            "--accounts",
            "--accounts-login-per-user",
            "3",
            "--accounts-login-per-ip",
            "5",
            "--accounts-register-per-ip",
            "2",
        ]),
        ..Default::default()
    })
    .await;
    let retry_after = |r: &Response| -> u64 {
        assert_eq!((r.status, r.code()), (429, "rate_limited"), "{}", r.body);
        r.header("retry-after").and_then(|v| v.parse().ok()).expect("a numeric Retry-After")
    };

    // Registration: 2 per minute from one address.
    assert_eq!(register(&node, "dan", "dans password").await.status, 201);
    assert_eq!(register(&node, "eve", "eves password").await.status, 201);
    let r = register(&node, "fay", "fays password").await;
    assert!((1..=60).contains(&retry_after(&r)));

    // Login: 3 per minute per username; then even the right password waits.
    for _ in 0..3 {
        assert_eq!(login(&node, "dan", "guess guess").await.status, 401);
    }
    let r = login(&node, "dan", "dans password").await;
    assert!((1..=20).contains(&retry_after(&r)), "one attempt frees up every 20 s");
    // Another username from the same address still gets through (5th attempt here)...
    assert_eq!(login(&node, "eve", "eves password").await.status, 200);
    // ... until the per-address limit (5 per minute). A forged X-Forwarded-For does not
    // help: it is not trusted without --accounts-trust-forwarded.
    let body = serde_json::json!({"username": "eve", "password": "eves password"}).to_string();
    let r = post_with(&node, "/api/auth/login", &body, &[("X-Forwarded-For", "203.0.113.7")]).await;
    assert!((1..=12).contains(&retry_after(&r)), "one attempt frees up every 12 s");
}

#[tokio::test]
async fn accounts_are_off_by_default() {
    let node = TestNode::start(NodeOptions::default()).await;
    for path in ["/api/auth/register", "/api/auth/login"] {
        let r = post(&node, path, serde_json::json!({"username": "alice", "password": "correct horse"})).await;
        assert_eq!((r.status, r.code()), (404, "accounts_disabled"), "{path}: {}", r.body);
        // Whatever the body.
        assert_eq!(post_with(&node, path, "garbage", &[]).await.code(), "accounts_disabled");
    }
}

#[tokio::test]
async fn tokens_are_signed_with_the_private_key_when_the_node_verifies_with_a_public_key() {
    let dir = std::env::temp_dir().join(format!("switchboard-accounts-{}", switchboard_relay::ids::random_id(8)));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key pair");
    let (public, private) = (dir.join("public.pem"), dir.join("private.pem"));
    std::fs::write(&public, pair.public_key_pem()).expect("write public key");
    std::fs::write(&private, pair.serialize_pem()).expect("write private key");
    let public_arg = public.display().to_string();
    let private_arg = private.display().to_string();

    // Without the private key the node refuses to start, and says why.
    let output = within(
        WAIT,
        "the node to refuse to start",
        tokio::process::Command::new(switchboard_tests::binary("switchboard"))
            .args(["serve", "--accounts", "--no-webtransport", "--http-addr", "127.0.0.1:0"])
            .args(["--jwt-public-key", &public_arg, "--jwt-algorithm", "es256"])
            .env_remove("SWITCHBOARD_JWT_SECRET")
            .env_remove("SWITCHBOARD_JWT_PRIVATE_KEY")
            .env_remove("SWITCHBOARD_NATS_URL")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("running switchboard");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--jwt-private-key"), "{stderr}");

    let mut opts = unlimited();
    opts.extend(args(&[
        "--jwt-public-key",
        &public_arg,
        "--jwt-algorithm",
        "es256",
        "--jwt-private-key",
        &private_arg,
    ]));
    let node = TestNode::start(NodeOptions { args: opts, ..Default::default() }).await;
    let r = register(&node, "gus", "guss password").await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(session_user(&node, &r.token()).await.0, "gus");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn accounts_are_shared_by_the_nodes_of_a_nats_cluster() {
    let nats = NatsServer::start().await;
    let opts = |id: &str| NodeOptions {
        nats_url: Some(nats.url()),
        node_id: Some(id.into()),
        args: args(&["--accounts"]),
        ..Default::default()
    };
    let (a, b) = tokio::join!(TestNode::start(opts("acc-a")), TestNode::start(opts("acc-b")));

    // Registered through A, logs in through B; B's token opens a session on A and B.
    let r = register(&a, "hana", "hanas password").await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = login(&b, "hana", "hanas password").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["user"], "hana");
    let token = r.token();
    assert_eq!(session_user(&a, &token).await.0, "hana");
    assert_eq!(session_user(&b, &token).await.0, "hana");
    // B knows the name is taken, and the password is wrong.
    assert_eq!(register(&b, "hana", "other password").await.code(), "username_taken");
    assert_eq!(login(&b, "hana", "wrong password").await.code(), "invalid_credentials");
    assert_eq!(login(&b, "nobody", "hanas password").await.code(), "invalid_credentials");

    // Concurrent registrations of one name through both nodes: one winner cluster-wide.
    let attempts = (0..8).map(|i| {
        let node = if i % 2 == 0 { &a } else { &b };
        async move { (i, register(node, "ivan", &format!("password number {i}")).await) }
    });
    let results = within(Duration::from_secs(30), "the registrations", futures_util::future::join_all(attempts)).await;
    let statuses: Vec<u16> = results.iter().map(|(_, r)| r.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 7, "{statuses:?}");
    let winner = results.iter().find(|(_, r)| r.status == 201).map(|(i, _)| *i).unwrap_or_default();
    assert_eq!(login(&a, "ivan", &format!("password number {winner}")).await.status, 200);
    assert_eq!(login(&b, "ivan", &format!("password number {winner}")).await.status, 200);
}

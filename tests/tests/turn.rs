//! ICE servers with short-lived TURN credentials, checked against a real coturn
//! (`use-auth-secret`): the credentials a node hands out (in `Welcome`, on
//! `IceServersRequest`, over `GET /api/ice-servers`) allocate a relay; expired ones and
//! forged ones (wrong secret, a username stretched past its expiry, another user's name on
//! the credential) are refused with 401.

use switchboard_protocol::pb::{client_frame, server_frame, IceServersRequest};
use switchboard_relay::auth::now_secs;
use switchboard_relay::ice::{turn_credential, turn_username};
use switchboard_tests::raw::RawWs;
use switchboard_tests::turn::{allocate, Allocation, Coturn};
use switchboard_tests::{token, NodeOptions, TestNode};

const TURN_SECRET: &str = "turn-shared-secret-for-the-tests";

async fn node_with(turn: &Coturn, extra: &[&str]) -> TestNode {
    let mut args: Vec<String> = vec![
        "--stun-url".into(),
        format!("stun:{}", turn.addr),
        "--turn-url".into(),
        format!("turn:{}?transport=udp", turn.addr),
        "--turn-ttl".into(),
        "600".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let env = vec![("SWITCHBOARD_TURN_SECRET".to_owned(), TURN_SECRET.to_owned())];
    TestNode::start(NodeOptions { args, env, ..Default::default() }).await
}

fn relayed(a: &Allocation) -> bool {
    matches!(a, Allocation::Relayed(addr) if addr.ip().is_loopback() && addr.port() != 0)
}

#[tokio::test]
async fn coturn_accepts_the_nodes_credentials_and_refuses_expired_and_forged_ones() {
    let turn = Coturn::start(TURN_SECRET).await;
    let node = node_with(&turn, &[]).await;
    let before = now_secs();

    // Welcome: STUN without credentials, TURN with `<expiry>:<user>` valid for the TTL.
    let (mut ws, welcome) = RawWs::authenticated(&node.ws_url(), &token("alice", &["demo"])).await;
    let ice = welcome.ice_servers.expect("Welcome carries ICE servers");
    assert_eq!(ice.servers.len(), 2, "{ice:?}");
    assert_eq!(ice.servers[0].urls, [format!("stun:{}", turn.addr)]);
    assert!(ice.servers[0].username.is_empty() && ice.servers[0].credential.is_empty());
    let server = &ice.servers[1];
    assert_eq!(server.urls, [format!("turn:{}?transport=udp", turn.addr)]);
    assert!((before + 600..=now_secs() + 600).contains(&ice.expires_at), "{ice:?}");
    assert_eq!(server.username, format!("{}:alice", ice.expires_at));
    let a = allocate(turn.addr, &server.username, &server.credential).await.expect("TURN exchange");
    assert!(relayed(&a), "coturn refused the Welcome's credentials: {a:?}\n{}", turn.log());

    // IceServersRequest: answered with fresh credentials for the same user, accepted too.
    ws.send(7, client_frame::Kind::IceServersRequest(IceServersRequest {})).await;
    let fresh = match ws.frame().await {
        server_frame::Kind::IceServers(s) => s,
        other => panic!("expected IceServers, got {other:?}"),
    };
    assert_eq!(fresh.ref_id, 7);
    assert!(fresh.expires_at >= ice.expires_at);
    let t = &fresh.servers[1];
    assert_eq!(t.username, format!("{}:alice", fresh.expires_at));
    assert!(relayed(&allocate(turn.addr, &t.username, &t.credential).await.expect("TURN exchange")));

    // Over HTTP, with the user's token.
    let bob = token("bob", &["demo"]);
    let auth = format!("Bearer {bob}");
    let res =
        switchboard_tests::http::exchange(node.http_port, "GET", "/api/ice-servers", &[("Authorization", &auth)], None)
            .await
            .expect("HTTP");
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.header("cache-control"), Some("no-store"));
    let body: serde_json::Value = serde_json::from_str(&res.body).expect("JSON");
    let expires_at = body["expires_at"].as_u64().expect("expires_at");
    assert_eq!(body["ice_servers"][0], serde_json::json!({"urls": [format!("stun:{}", turn.addr)]}));
    let (user, cred) =
        (body["ice_servers"][1]["username"].as_str().unwrap(), body["ice_servers"][1]["credential"].as_str().unwrap());
    assert_eq!(user, format!("{expires_at}:bob"));
    assert!(relayed(&allocate(turn.addr, user, cred).await.expect("TURN exchange")));

    // Refused: expired (derived with the right secret, expiry in the past) ...
    let expired = turn_username(now_secs() - 5, "alice");
    let refused = |a: Allocation| matches!(a, Allocation::Refused(401, _));
    let a = allocate(turn.addr, &expired, &turn_credential(TURN_SECRET.as_bytes(), &expired)).await.unwrap();
    assert!(refused(a.clone()), "expired credentials: {a:?}");
    // ... a wrong secret ...
    let a = allocate(turn.addr, user, &turn_credential(b"not-the-secret", user)).await.unwrap();
    assert!(refused(a.clone()), "wrong secret: {a:?}");
    // ... a username stretched past its expiry, with the genuine credential ...
    let stretched = turn_username(expires_at + 86_400, "bob");
    let a = allocate(turn.addr, &stretched, cred).await.unwrap();
    assert!(refused(a.clone()), "stretched expiry: {a:?}");
    // ... and the credential under another user's name.
    let a = allocate(turn.addr, &format!("{expires_at}:mallory"), cred).await.unwrap();
    assert!(refused(a.clone()), "another user: {a:?}");
    // The genuine one still works after all that.
    assert!(relayed(&allocate(turn.addr, user, cred).await.unwrap()));
}

#[tokio::test]
async fn the_http_endpoint_wants_a_valid_token_and_a_node_without_turn_hands_out_none() {
    let turn = Coturn::start(TURN_SECRET).await;
    let node = node_with(&turn, &[]).await;
    for auth in [None, Some("Bearer not-a-jwt".to_owned()), Some(format!("Basic {}", token("bob", &["demo"])))] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let res =
            switchboard_tests::http::exchange(node.http_port, "GET", "/api/ice-servers", &headers, None).await.unwrap();
        assert_eq!(res.status, 401, "{auth:?}: {}", res.body);
        let body: serde_json::Value = serde_json::from_str(&res.body).unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }

    // No ICE servers configured: none in Welcome, an empty list on request and over HTTP.
    let bare = TestNode::start(NodeOptions::default()).await;
    let (mut ws, welcome) = RawWs::authenticated(&bare.ws_url(), &token("alice", &["demo"])).await;
    assert_eq!(welcome.ice_servers, None);
    ws.send(3, client_frame::Kind::IceServersRequest(IceServersRequest {})).await;
    assert!(matches!(ws.frame().await, server_frame::Kind::IceServers(s) if s.ref_id == 3 && s.servers.is_empty()));
    let auth = format!("Bearer {}", token("alice", &["demo"]));
    let (status, body) =
        switchboard_tests::http::request(bare.http_port, "GET", "/api/ice-servers", &[("Authorization", &auth)], None)
            .await
            .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"ice_servers": [], "expires_at": null})
    );
}

#[tokio::test]
async fn a_node_refuses_to_start_with_turn_urls_but_no_secret_or_a_bad_url() {
    let bin = switchboard_tests::binary("switchboard");
    for (args, want) in [
        (vec!["--turn-url", "turn:127.0.0.1:3478"], "--turn-secret"),
        (vec!["--turn-url", "http://127.0.0.1:3478", "--turn-secret", "s"], "must start with turn: or turns:"),
        (vec!["--stun-url", "turn:127.0.0.1", "--turn-secret", "s"], "must start with stun: or stuns:"),
        (vec!["--turn-ttl", "60"], "300..=86400"),
    ] {
        let out = tokio::time::timeout(
            switchboard_tests::WAIT,
            tokio::process::Command::new(&bin)
                .args(["serve", "--http-addr", "127.0.0.1:0", "--no-webtransport"])
                .args(&args)
                .env_remove("SWITCHBOARD_TURN_SECRET")
                .output(),
        )
        .await
        .expect("the node exits")
        .expect("running switchboard");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{args:?}: {err}");
    }
}

//! User ids the server speaks as (`server`, the sender of the operator's server messages)
//! or that users would read as the operator's are never handed out by the node's own token
//! issuers: development tokens and `switchboard token` refuse them, as registration does
//! (`accounts.rs`).

use switchboard_tests::{binary, http, NodeOptions, TestNode};

#[tokio::test]
async fn dev_tokens_refuse_reserved_user_ids() {
    let node = TestNode::start(NodeOptions { args: vec!["--dev-tokens".into()], ..Default::default() }).await;
    let post = |name: &str| {
        let body = serde_json::json!({ "name": name }).to_string();
        let port = node.http_port;
        async move {
            let (status, text) = http::request(port, "POST", "/api/dev/token", &[], Some(&body)).await.expect("HTTP");
            (status, serde_json::from_str::<serde_json::Value>(&text).expect("JSON"))
        }
    };
    for name in ["Server", "server", "Admin"] {
        let (status, body) = post(name).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("reserved_name")), "{name}: {body}");
    }
    let (status, body) = post("Alice").await;
    assert_eq!((status, body["user"].as_str()), (200, Some("alice")), "{body}");
}

#[tokio::test]
async fn the_token_command_refuses_reserved_user_ids() {
    let run = |sub: &str| {
        std::process::Command::new(binary("switchboard"))
            .args(["token", "--sub", sub, "--room", "lobby"])
            .output()
            .expect("running switchboard token")
    };
    let refused = run("server");
    assert!(!refused.status.success(), "a token for `server` was minted");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("reserved"), "{stderr}");
    assert!(refused.stdout.is_empty());
    let minted = run("alice");
    assert!(minted.status.success());
    assert_eq!(String::from_utf8_lossy(&minted.stdout).split('.').count(), 3, "a JWT");
}

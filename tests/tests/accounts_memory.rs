//! The memory argon2 takes on an accounts node stays bounded: logins reuse a fixed set of
//! hashing buffers instead of leaving a freed 19 MiB block behind in the allocator of every
//! thread that ever hashed.

use switchboard_tests::{http, NodeOptions, TestNode};

/// argon2id's default memory cost (m = 19456 KiB), what one hash works in.
const HASH_KIB: u64 = 19 * 1024;
const LOGINS: usize = 40;
/// Logins in flight at once: more than the node hashes at a time, so that hashing runs on
/// as many threads as the node lets it.
const CONCURRENCY: usize = 8;

async fn post(node: &TestNode, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let (status, text) = http::request(node.http_port, "POST", path, &[], Some(&body.to_string())).await.expect("HTTP");
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

#[tokio::test]
async fn rss_stays_bounded_across_logins() {
    let args = ["--accounts", "--accounts-login-per-user", "0", "--accounts-login-per-ip", "0"];
    let node = TestNode::start(NodeOptions { args: args.map(String::from).to_vec(), ..Default::default() }).await;
    let creds = serde_json::json!({"username": "alice", "password": "correct horse"});
    assert_eq!(post(&node, "/api/auth/register", creds.clone()).await.0, 201);
    // One login first, so the baseline includes a hash's worth of memory in use.
    assert_eq!(post(&node, "/api/auth/login", creds.clone()).await.0, 200);
    let before = node.rss_kib().expect("RSS");
    for _ in 0..LOGINS / CONCURRENCY {
        let logins = (0..CONCURRENCY).map(|_| post(&node, "/api/auth/login", creds.clone()));
        for (status, body) in futures_util::future::join_all(logins).await {
            assert_eq!(status, 200, "{body}");
        }
    }
    let after = node.rss_kib().expect("RSS");
    let growth = after.saturating_sub(before);
    eprintln!(
        "RSS after 1 login {} MiB, after {} more ({CONCURRENCY} at a time) {} MiB: +{} MiB",
        before / 1024,
        LOGINS,
        after / 1024,
        growth / 1024
    );
    // Unbounded, every thread that hashed keeps its freed block (+200 MiB and more was
    // seen); bounded, the growth stays under a few hashes' worth whatever the thread count.
    assert!(growth < 3 * HASH_KIB, "RSS grew by {} MiB over {LOGINS} logins", growth / 1024);
}

//! Test harness: real `nats-server` processes (single or clustered) and real `switchboard`
//! nodes on free loopback ports, plus small helpers (tokens, HTTP GETs, timeouts).
//!
//! Everything started here is killed when its handle drops, so a failing test leaves
//! nothing behind. Only loopback addresses are used.

pub mod http;
pub mod nats;
pub mod node;

pub use nats::{NatsCluster, NatsServer};
pub use node::{NodeOptions, TestNode};

use std::future::Future;
use std::time::Duration;
use switchboard_relay::auth::{Claims, Minter};

/// The HS256 secret the test nodes are started with.
pub const TEST_SECRET: &str = "switchboard-test-secret-0123456789abcdef";

/// Default time limit for waiting on an event.
pub const WAIT: Duration = Duration::from_secs(10);

/// Await `fut` for at most `limit`, panicking with `what` on timeout.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Claims for `sub` granting `rooms`, valid for an hour.
pub fn claims(sub: &str, rooms: &[&str]) -> Claims {
    Claims { name: Some(format!("{sub} (test)")), ..Claims::new(sub, rooms, 3600) }
}

/// Sign `claims` with [`TEST_SECRET`].
pub fn sign(claims: &Claims) -> String {
    Minter::hmac(TEST_SECRET.as_bytes()).mint(claims).expect("signing a test token")
}

/// A token for `sub` granting `rooms`.
pub fn token(sub: &str, rooms: &[&str]) -> String {
    sign(&claims(sub, rooms))
}

/// A free TCP port on 127.0.0.1.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("binding a free TCP port").port()
}

/// A free UDP port on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("binding a free UDP port").port()
}

/// Poll `check` every 25 ms until it returns `Some`, for at most `limit`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    within(limit, what, async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await
}

/// Path of a binary built from this workspace (`target/<profile>/<name>`), overridable
/// with `SWITCHBOARD_BIN_DIR`.
pub fn binary(name: &str) -> std::path::PathBuf {
    let dir = match std::env::var_os("SWITCHBOARD_BIN_DIR") {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("current_exe");
            // target/<profile>/deps/<test> -> target/<profile>
            exe.parent().and_then(|p| p.parent()).expect("target dir").to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(path.exists(), "{} not found: build the binaries first (`cargo build --workspace --bins`)", path.display());
    path
}

pub mod lb;
pub mod raw;
pub mod raw_wt;

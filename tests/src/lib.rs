//! Test harness: real `nats-server` processes (single or clustered) and real `switchboard`
//! nodes on free loopback ports, plus small helpers (tokens, HTTP GETs, timeouts).
//!
//! Everything started here is killed when its handle drops, so a failing test leaves
//! nothing behind. Only loopback addresses are used.

pub mod http;
pub mod nats;
pub mod netns;
pub mod node;
pub mod proxy;
pub mod turn;
pub mod webhook_receiver;
pub mod workload;

pub use nats::{NatsCluster, NatsServer};
pub use node::{NodeOptions, TestNode};
pub use webhook_receiver::WebhookReceiver;

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

/// Ports this test process has handed out: the OS may offer a just-released port again,
/// and two servers of one test must not get the same one.
static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

fn unused(mut probe: impl FnMut() -> u16) -> u16 {
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = probe();
        if !handed.contains(&port) {
            handed.push(port);
            return port;
        }
    }
    panic!("no unused port after 1000 tries");
}

/// A free TCP port on 127.0.0.1 (never one already handed out in this process).
pub fn free_tcp_port() -> u16 {
    unused(|| {
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("binding a free TCP port").port()
    })
}

/// A free UDP port on 127.0.0.1 (never one already handed out in this process).
pub fn free_udp_port() -> u16 {
    unused(|| {
        std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("binding a free UDP port").port()
    })
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

/// Write a fresh self-signed identity for `localhost`/`127.0.0.1` into `dir` as `key.pem`
/// and `cert.pem`, as a secret rotation would: each file complete on disk before it is
/// renamed into place, key first so a reload that sees the new certificate finds its key.
/// Returns the identity (for its certificate PEM or hash).
///
/// Written with `std::fs` on purpose: wtransport's async `store_pemfile` does not flush its
/// `tokio::fs::File`, so the renamed file can be read while still incomplete.
pub fn write_identity(dir: &std::path::Path) -> wtransport::Identity {
    let identity = wtransport::Identity::self_signed(["localhost", "127.0.0.1"]).expect("self-signed identity");
    let cert_pem: String = identity.certificate_chain().as_slice().iter().map(|c| c.to_pem()).collect();
    for (name, pem) in [("key.pem", identity.private_key().to_secret_pem()), ("cert.pem", cert_pem)] {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, pem).expect("writing a PEM file");
        std::fs::rename(&tmp, dir.join(name)).expect("renaming a PEM file into place");
    }
    identity
}

/// The PEM of `identity`'s certificate chain (what a client is given to trust).
pub fn certificate_pem(identity: &wtransport::Identity) -> Vec<u8> {
    identity.certificate_chain().as_slice().iter().map(|c| c.to_pem()).collect::<String>().into_bytes()
}

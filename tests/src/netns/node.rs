//! A Switchboard node (and optionally its `nats-server`) running on a lab host.
//!
//! Both processes run inside the host's namespace (`ip netns exec`), on fixed ports (the
//! namespace is the host's own network stack, so nothing else uses them): NATS on
//! `127.0.0.1:4222` (monitoring 8222) with JetStream in a temporary directory, the node on
//! `0.0.0.0:8080` (HTTP, WebSocket) and `0.0.0.0:4433` (WebTransport). Killed on drop, and
//! with the lab at the latest.

use super::Host;
use crate::{binary, wait_for, TEST_SECRET};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Child;

/// HTTP and WebSocket port of a [`LabNode`].
pub const HTTP_PORT: u16 = 8080;
/// WebTransport (UDP) port of a [`LabNode`].
pub const WT_PORT: u16 = 4433;
const NATS_PORT: u16 = 4222;
const NATS_MONITOR_PORT: u16 = 8222;

/// A `switchboard serve` on a lab host, with its own `nats-server` beside it or embedded.
pub struct LabNode {
    host: Host,
    node: Child,
    _nats: Option<LabNats>,
    /// SHA-256 of the node's generated WebTransport certificate (hex).
    pub cert_hash: String,
}

/// A `nats-server` with JetStream on a lab host; its store is removed on drop.
struct LabNats {
    _child: Child,
    store: std::path::PathBuf,
}

impl Drop for LabNats {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

impl LabNode {
    /// Start a node on `host` with `args` added to `switchboard serve`'s; with `nats`, a
    /// `nats-server` (JetStream) on the same host first, else the embedded single node. Waits
    /// until the node is ready (at most 60 s each).
    pub async fn start(host: &Host, nats: bool, args: &[&str]) -> Self {
        let mut node = host.command(binary("switchboard"));
        node.args(["serve", "--http-addr", "0.0.0.0:8080", "--wt-addr", "0.0.0.0:4433"]).args(args);
        let nats = if nats {
            let store = std::env::temp_dir().join(format!(
                "switchboard-lab-nats-{}-{}",
                std::process::id(),
                switchboard_relay::ids::random_id(8)
            ));
            std::fs::create_dir_all(&store).expect("a NATS store directory");
            let child = host
                .command(crate::nats::nats_binary())
                .args(["-a", "127.0.0.1", "-p", &NATS_PORT.to_string(), "-m", &NATS_MONITOR_PORT.to_string()])
                .arg("-js")
                .arg("-sd")
                .arg(&store)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("starting nats-server in a lab host (set NATS_SERVER_BIN)");
            let nats = LabNats { _child: child, store };
            wait_http(host, NATS_MONITOR_PORT, "/healthz", "nats-server healthy").await;
            node.args(["--nats-url", &format!("nats://127.0.0.1:{NATS_PORT}")]);
            Some(nats)
        } else {
            node.env_remove("SWITCHBOARD_NATS_URL");
            None
        };
        let node = node
            .env("SWITCHBOARD_JWT_SECRET", TEST_SECRET)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting switchboard in a lab host");
        let mut this = Self { host: host.clone(), node, _nats: nats, cert_hash: String::new() };
        wait_http(host, HTTP_PORT, "/readyz", "the node ready").await;
        let (_, hash) = this.get_path("/certificate.sha256").await.expect("the certificate hash");
        this.cert_hash = hash.trim().to_owned();
        this
    }

    /// `ws://<host>:8080/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}:{HTTP_PORT}/ws", self.host.addr())
    }

    /// `https://<host>:4433/wt`.
    pub fn wt_url(&self) -> String {
        format!("https://{}:{WT_PORT}/wt", self.host.addr())
    }

    /// The node's process id.
    pub fn pid(&self) -> Option<u32> {
        self.node.id()
    }

    /// GET `path` from the node's HTTP port (from inside its host).
    pub async fn get_path(&self, path: &str) -> Option<(u16, String)> {
        get(&self.host, HTTP_PORT, path).await
    }
}

async fn get(host: &Host, port: u16, path: &str) -> Option<(u16, String)> {
    let path = path.to_owned();
    host.run(move || async move { crate::http::get(port, &path).await.ok() }).await
}

async fn wait_http(host: &Host, port: u16, path: &str, what: &str) {
    wait_for(Duration::from_secs(60), what, || async {
        get(host, port, path).await.filter(|(status, _)| *status == 200)
    })
    .await;
}

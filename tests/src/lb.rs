//! HAProxy in front of test nodes, configured from `deploy/haproxy/haproxy.cfg.tmpl` (the
//! same template `deploy/local-cluster` uses).

use crate::{free_tcp_port, wait_for};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running HAProxy (killed on drop).
pub struct TestLb {
    child: Child,
    /// The frontend port (HTTP and WebSocket).
    pub port: u16,
    dir: std::path::PathBuf,
}

impl TestLb {
    /// Start HAProxy balancing over the nodes' HTTP ports, and wait until it routes to a
    /// ready node.
    pub async fn start(backends: &[u16]) -> Self {
        let template_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/haproxy/haproxy.cfg.tmpl");
        let template = std::fs::read_to_string(&template_path).expect("reading the HAProxy template");
        let port = free_tcp_port();
        let servers: Vec<String> =
            backends.iter().enumerate().map(|(i, p)| format!("    server node{i} 127.0.0.1:{p} check")).collect();
        let config =
            template.replace("{{FRONTEND}}", &format!("127.0.0.1:{port}")).replace("{{SERVERS}}", &servers.join("\n"));
        let dir = std::env::temp_dir().join(format!("switchboard-lb-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config).expect("writing haproxy.cfg");
        let child = Command::new(std::env::var("HAPROXY_BIN").unwrap_or_else(|_| "haproxy".into()))
            .arg("-f")
            .arg(&cfg)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting haproxy (install it: apt-get install -y haproxy; scripts/test.sh does)");
        let lb = Self { child, port, dir };
        wait_for(Duration::from_secs(15), "HAProxy to route to a ready node", || async move {
            matches!(crate::http::get(port, "/readyz").await, Ok((200, _))).then_some(())
        })
        .await;
        lb
    }

    /// `ws://127.0.0.1:<port>/ws` through the balancer.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }
}

impl Drop for TestLb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! `nats-server` processes on free loopback ports, with JetStream, single or clustered.

use crate::{free_tcp_port, wait_for};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One `nats-server` process (killed on drop).
pub struct NatsServer {
    child: Option<Child>,
    /// Client port.
    pub port: u16,
    /// Monitoring port (`/connz`, `/subsz`, `/jsz`).
    pub monitor_port: u16,
    /// Cluster (route) port, if clustered.
    pub cluster_port: Option<u16>,
    args: Vec<String>,
    _store: tempdir::TempDir,
}

mod tempdir {
    /// A temporary directory removed on drop.
    pub struct TempDir(pub std::path::PathBuf);
    impl TempDir {
        pub fn new(tag: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "switchboard-test-{tag}-{}-{}",
                std::process::id(),
                switchboard_relay::ids::random_id(8)
            ));
            std::fs::create_dir_all(&path).expect("creating a temp dir");
            Self(path)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The `nats-server` binary: `NATS_SERVER_BIN`, else `nats-server` on `PATH`.
pub fn nats_binary() -> String {
    std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into())
}

impl NatsServer {
    /// Start a standalone server with JetStream.
    pub async fn start() -> Self {
        Self::start_with(None, &[]).await
    }

    async fn start_with(cluster: Option<(&str, u16, &[u16])>, extra: &[&str]) -> Self {
        let mut server = Self::prepare(cluster, extra);
        server.spawn().await;
        server
    }

    /// A server on its own ports and store, not started yet.
    fn prepare(cluster: Option<(&str, u16, &[u16])>, extra: &[&str]) -> Self {
        let port = free_tcp_port();
        let monitor_port = free_tcp_port();
        let store = tempdir::TempDir::new("nats");
        let mut args: Vec<String> = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-m".into(),
            monitor_port.to_string(),
            "-js".into(),
            "-sd".into(),
            store.0.display().to_string(),
        ];
        let mut cluster_port = None;
        if let Some((name, cport, routes)) = cluster {
            cluster_port = Some(cport);
            args.extend([
                "--name".into(),
                format!("n{cport}"),
                "--cluster_name".into(),
                name.into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{cport}"),
                "--routes".into(),
                routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(","),
            ]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Self { child: None, port, monitor_port, cluster_port, args, _store: store }
    }

    async fn spawn(&mut self) {
        let log_path = self._store.0.join("nats-server.log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("nats-server log file");
        let child = Command::new(nats_binary())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting nats-server (install it: scripts/test.sh does)");
        self.child = Some(child);
        let port = self.monitor_port;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        // A clustered JetStream server is healthy only once a quorum formed, which needs
        // the servers started after it: for those, wait for the monitor endpoint here and
        // for health in `NatsCluster::start`.
        let probe = if self.cluster_port.is_some() { "/varz" } else { "/healthz" };
        loop {
            if let Ok((200, _)) = crate::http::get(port, probe).await {
                return;
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || tokio::time::Instant::now() > deadline {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                panic!(
                    "nats-server {} (args {:?}) did not serve /healthz (exit: {exited:?}); log tail:\n{}",
                    nats_binary(),
                    self.args,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kill the server (SIGKILL) and wait for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start the server again with the same ports and store.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// GET a monitoring endpoint and parse it as JSON.
    pub async fn monitor(&self, path: &str) -> serde_json::Value {
        let (status, body) = crate::http::get(self.monitor_port, path).await.expect("monitoring endpoint");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).expect("monitoring JSON")
    }

    /// For each client connection whose name contains `name_part`: how many of its
    /// subscriptions are on exactly `subject`.
    pub async fn subscriptions_on(&self, name_part: &str, subject: &str) -> Vec<(String, usize)> {
        let connz = self.monitor("/connz?subs=1&limit=1024").await;
        let mut out = Vec::new();
        for c in connz["connections"].as_array().cloned().unwrap_or_default() {
            let name = c["name"].as_str().unwrap_or_default().to_owned();
            if !name.contains(name_part) {
                continue;
            }
            let n = c["subscriptions_list"]
                .as_array()
                .map(|l| l.iter().filter(|s| s.as_str() == Some(subject)).count())
                .unwrap_or(0);
            out.push((name, n));
        }
        out
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster of `nats-server`s with JetStream, routes between all of them.
pub struct NatsCluster {
    /// The servers.
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Start `n` clustered servers and wait until each sees the others as routes.
    pub async fn start(n: usize) -> Self {
        let mut cluster = Self::prepare(n);
        cluster.start_rest().await;
        cluster
    }

    /// `n` clustered servers of which only the first is started: with `n` ≥ 3 its
    /// JetStream has no meta leader (no majority) until [`NatsCluster::start_rest`].
    pub async fn start_first_of(n: usize) -> Self {
        let mut cluster = Self::prepare(n);
        cluster.servers[0].spawn().await;
        cluster
    }

    fn prepare(n: usize) -> Self {
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_tcp_port()).collect();
        let name = format!("sbtest{}", switchboard_relay::ids::random_id(6));
        let servers = cluster_ports
            .iter()
            .map(|&cport| {
                let routes: Vec<u16> = cluster_ports.iter().copied().filter(|p| *p != cport).collect();
                NatsServer::prepare(Some((&name, cport, &routes)), &[])
            })
            .collect();
        Self { servers }
    }

    /// Start the servers not running yet, then wait until each sees the others as routes
    /// and reports JetStream healthy (a meta leader elected).
    pub async fn start_rest(&mut self) {
        let n = self.servers.len();
        for s in &mut self.servers {
            if s.child.is_none() {
                s.spawn().await;
            }
        }
        for s in &self.servers {
            let port = s.monitor_port;
            wait_for(Duration::from_secs(20), "cluster routes", || async move {
                let (_, body) = crate::http::get(port, "/routez").await.ok()?;
                let v: serde_json::Value = serde_json::from_str(&body).ok()?;
                (v["num_routes"].as_u64()? as usize >= n - 1).then_some(())
            })
            .await;
        }
        for s in &self.servers {
            let port = s.monitor_port;
            wait_for(Duration::from_secs(30), "clustered JetStream health", || async move {
                matches!(crate::http::get(port, "/healthz").await, Ok((200, _))).then_some(())
            })
            .await;
        }
    }

    /// All client URLs, comma separated.
    pub fn url(&self) -> String {
        self.servers.iter().map(|s| s.url()).collect::<Vec<_>>().join(",")
    }
}

//! A multi-host Switchboard cluster in a [`Lab`]: every piece on its own host (network
//! namespace, own address, own port space), with real faults between them.
//!
//! Hosts, in this order on the lab's router (`10.77.<i>.2`, `i` counted from 1):
//! - `nats1..natsN`: a JetStream cluster of `nats-server`s (client port [`NATS_PORT`], routes
//!   [`NATS_ROUTE_PORT`], monitoring [`NATS_MONITOR_PORT`]);
//! - `node1..nodeM`: `switchboard serve` (HTTP/WebSocket [`HTTP_PORT`], WebTransport UDP
//!   [`WT_PORT`]), node ids `node1..`, all connected to every NATS server, presence replicated
//!   3 times when there are 3 NATS servers, one shared WebTransport certificate
//!   ([`Cluster::cert_hash`]) so a client behind the UDP balancer trusts whichever node it
//!   lands on;
//! - `haproxy` (and `haproxy2..haproxyB` with [`ClusterConfig::balancers`]): HAProxy on
//!   [`HTTP_PORT`] over the nodes' HTTP ports (`deploy/haproxy/haproxy.cfg.tmpl`: least
//!   connections, only ready nodes); several stand for a DNS name with several balancer
//!   addresses, each client using one ([`Cluster::ws_urls`]);
//! - `nginx`: nginx's `stream` module on UDP [`WT_PORT`] over the nodes' WebTransport ports,
//!   `hash $remote_addr consistent` (`deploy/nginx/wt-udp.conf.tmpl`), with
//!   [`ClusterConfig::nginx_workers`] worker processes;
//! - `load1..loadK`: hosts for clients (nothing runs there until a test puts it there, e.g.
//!   with [`Host::runtime`] or [`Host::command`]), each with
//!   [`ClusterConfig::load_addresses`] more addresses ([`Cluster::load_addresses`]).
//!
//! Every process here has a descriptor limit (20,000 on the machines this runs on, not
//! raisable there); a large run spreads what needs descriptors: HAProxy takes two per
//! WebSocket client (so `balancers`), an nginx worker one per WebTransport client
//! (`nginx_workers`), a node one per WebSocket client (nodes).
//!
//! Faults: [`Cluster::cut_link`] / [`Cluster::restore_link`] (the host's link down/up),
//! [`Cluster::partition`] / [`Cluster::heal`] (iptables DROP between two groups of hosts at
//! the router, links up), [`Cluster::shape`] (loss, delay, jitter, rate: [`Profile`]),
//! [`Cluster::kill9`] (SIGKILL of a host's process). Lifecycle: [`Cluster::stop_node`]
//! (SIGTERM: the node drains) / [`Cluster::start_node`] / [`Cluster::restart_node`], and
//! [`Cluster::stop_nats`] (SIGTERM or lame duck mode: clients move to the other servers) /
//! [`Cluster::start_nats`] / [`Cluster::restart_nats`]; a piece starts again with the same
//! address, ports, id and (for NATS) store.
//!
//! Dropping the cluster kills every process, deletes the namespaces (with their rules and
//! qdiscs) and the working directory (configurations, stores, logs), also when a test
//! panics; the tails of the logs are printed first if it is panicking.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use switchboard_tests::netns::cluster::{Cluster, ClusterConfig};
//! use switchboard_client::{ReconnectPolicy, ReconnectingClient};
//!
//! let config = ClusterConfig { node_args: vec!["--heartbeat".into(), "1".into()], ..Default::default() };
//! let mut cluster = match Cluster::start(config).await {
//!     Ok(cluster) => cluster,
//!     Err(e) if e.is_unavailable() => {
//!         eprintln!("SKIPPED: {e}");
//!         return Ok(());
//!     }
//!     Err(e) => return Err(e.into()),
//! };
//! // A client on a load host, through HAProxy; it lives on the host's runtime.
//! let runtime = cluster.load_host(0).runtime()?;
//! let config = cluster.ws_config(&switchboard_tests::token("alice", &["lobby"]));
//! let (alice, _events) =
//!     runtime.spawn(ReconnectingClient::connect(vec![config], ReconnectPolicy::default())).await??;
//! alice.join("lobby").await?;
//! let node = cluster.node_index(&alice.welcome().node).expect("a cluster node");
//!
//! // Faults.
//! let host = cluster.node_host(node).clone();
//! cluster.cut_link(&host)?;
//! cluster.restore_link(&host)?;
//! let (a, b) = (cluster.nats_host(0).clone(), cluster.node_host(1).clone());
//! cluster.partition(&[&a], &[&b])?;
//! cluster.heal()?;
//! cluster.restart_node(node).await?; // SIGTERM (drain), then start again
//! cluster.restart_nats(0).await?; // SIGTERM, then start again
//! # Ok(())
//! # }
//! ```

mod pieces;
mod ready;

pub use pieces::{node_id, HTTP_PORT, NATS_MONITOR_PORT, NATS_PORT, NATS_ROUTE_PORT, WT_PORT};

use super::{Host, HostProcess, Lab, Profile, Unavailable};
use crate::TEST_SECRET;
use anyhow::{ensure, Context};
use std::process::ExitStatus;
use std::time::Duration;
use switchboard_client::ClientConfig;

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Name of the lab (part of its namespace names).
    pub name: String,
    /// NATS servers (1: a single JetStream server; 3: a JetStream cluster).
    pub nats: usize,
    /// Switchboard nodes.
    pub nodes: usize,
    /// Hosts for load generators and test clients.
    pub load_hosts: usize,
    /// Flags added to every node's `switchboard serve` (e.g. `--heartbeat 1`).
    pub node_args: Vec<String>,
    /// HS256 secret of the nodes' tokens ([`crate::token`] signs with the default).
    pub jwt_secret: String,
    /// `RUST_LOG` of the nodes.
    pub log_level: String,
    /// How [`Cluster::stop_nats`] stops a NATS server: `None`, SIGTERM (it closes its
    /// client connections at once, they reconnect to the other servers); `Some(d)`, lame
    /// duck mode (SIGUSR2: it stops accepting and moves its clients away over `d`, at least
    /// 30 s, nats-server's minimum, then exits).
    pub nats_lame_duck: Option<Duration>,
    /// Limit for each piece to become ready at start (a debug build on a loaded machine is
    /// slow).
    pub ready_timeout: Duration,
    /// Limit for a node to exit after SIGTERM (its drain); keep above its `--drain-timeout`.
    pub stop_timeout: Duration,
    /// HAProxy's global `maxconn` (concurrent client connections); `None` keeps the
    /// template's (8,000). HAProxy sizes its own descriptor limit from it.
    pub haproxy_maxconn: Option<u32>,
    /// HAProxy hosts (at least 1), each over every node.
    pub balancers: usize,
    /// nginx worker processes (at least 1); the kernel spreads client flows over them
    /// (`reuseport`), each with its own descriptors.
    pub nginx_workers: usize,
    /// Addresses added to each load host besides its own (`10.77.<i>.3` onwards).
    pub load_addresses: usize,
}

impl Default for ClusterConfig {
    /// 3 NATS servers, 4 nodes, 1 HAProxy, 1 nginx worker, 2 load hosts with one address
    /// each, the test secret, `warn` logs, NATS stopped with SIGTERM, 60 s to start, 40 s to
    /// stop.
    fn default() -> Self {
        Self {
            name: "cluster".into(),
            nats: 3,
            nodes: 4,
            load_hosts: 2,
            node_args: Vec::new(),
            jwt_secret: TEST_SECRET.into(),
            log_level: "warn".into(),
            nats_lame_duck: None,
            ready_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(40),
            haproxy_maxconn: None,
            balancers: 1,
            nginx_workers: 1,
            load_addresses: 0,
        }
    }
}

/// Why a cluster did not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No lab can be made here (not root, a missing tool): skip.
    #[error("{0}")]
    Unavailable(#[from] Unavailable),
    /// Starting failed.
    #[error("starting the cluster: {0:#}")]
    Start(#[from] anyhow::Error),
}

impl ClusterError {
    /// Whether the machine cannot run a cluster at all (tests skip then).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// A running cluster; see the [module docs](self). Torn down on drop.
pub struct Cluster {
    // Processes before the lab: fields drop in order, so they die before their namespaces.
    nats: Vec<HostProcess>,
    nodes: Vec<HostProcess>,
    haproxy: Vec<HostProcess>,
    nginx: HostProcess,
    loads: Vec<Host>,
    load_addresses: Vec<Vec<std::net::Ipv4Addr>>,
    config: ClusterConfig,
    cert_hash: String,
    lab: Lab,
    dir: WorkDir,
}

/// The cluster's working directory (configurations, stores, logs), removed on drop.
struct WorkDir(std::path::PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        // `SB_CLUSTER_KEEP_LOGS=<dir>`: the logs (`*.log`) are copied to `<dir>/<lab tag>/`
        // first, to study a run afterwards (the test's output gives the wall-clock times).
        if let Some(keep) = std::env::var_os("SB_CLUSTER_KEEP_LOGS") {
            let name = self.0.file_name().map(|n| n.to_owned()).unwrap_or_default();
            let to = std::path::Path::new(&keep).join(name);
            if std::fs::create_dir_all(&to).is_ok() {
                for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
                    let path = entry.path();
                    if path.extension().is_some_and(|e| e == "log") {
                        let _ = std::fs::copy(&path, to.join(entry.file_name()));
                    }
                }
                eprintln!("cluster logs kept in {}", to.display());
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Cluster {
    /// [`Cluster::start`] for a test: `None` (after printing `SKIPPED: <why>`) where the
    /// machine cannot run it (no root, a tool missing); panics on any other failure.
    pub async fn start_or_skip(config: ClusterConfig) -> Option<Self> {
        match Self::start(config).await {
            Ok(cluster) => Some(cluster),
            Err(e) if e.is_unavailable() => {
                eprintln!("SKIPPED: {e}");
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// Make the hosts, start every piece and wait until each serves: NATS healthy with its
    /// routes, every node ready, HAProxy routing to a ready node, nginx listening.
    pub async fn start(config: ClusterConfig) -> Result<Self, ClusterError> {
        if config.nats == 0 || config.nodes == 0 || config.balancers == 0 || config.nginx_workers == 0 {
            return Err(anyhow::anyhow!("at least one NATS server, node, HAProxy and nginx worker").into());
        }
        check_tools()?;
        let mut lab = Lab::start(&config.name)?;
        let dir = WorkDir(std::env::temp_dir().join(format!("switchboard-{}", lab.tag())));
        std::fs::create_dir_all(&dir.0).context("the cluster's working directory")?;
        let identity = crate::write_identity(&dir.0);
        let cert_hash =
            identity.certificate_chain().as_slice()[0].hash().as_ref().iter().map(|b| format!("{b:02x}")).collect();

        let nats_hosts =
            (1..=config.nats).map(|i| lab.host(&format!("nats{i}"))).collect::<anyhow::Result<Vec<_>>>()?;
        let node_hosts =
            (1..=config.nodes).map(|i| lab.host(&format!("node{i}"))).collect::<anyhow::Result<Vec<_>>>()?;
        let haproxy_hosts = (1..=config.balancers)
            .map(|i| lab.host(&if i == 1 { "haproxy".into() } else { format!("haproxy{i}") }))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let nginx_host = lab.host("nginx")?;
        let loads =
            (1..=config.load_hosts).map(|i| lab.host(&format!("load{i}"))).collect::<anyhow::Result<Vec<_>>>()?;
        let load_addresses =
            loads.iter().map(|h| lab.add_addresses(h, config.load_addresses)).collect::<anyhow::Result<Vec<_>>>()?;

        let nats = (0..config.nats)
            .map(|i| pieces::nats(&nats_hosts, i, &config, &dir.0))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let nats_url = nats_url(&nats_hosts);
        let nodes =
            node_hosts.iter().enumerate().map(|(i, h)| pieces::node(h, i, &nats_url, &config, &dir.0)).collect();
        let haproxy = haproxy_hosts
            .iter()
            .enumerate()
            .map(|(i, h)| pieces::haproxy(h, i, &node_hosts, config.haproxy_maxconn, &dir.0))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let nginx = pieces::nginx(&nginx_host, &node_hosts, config.nginx_workers, &dir.0)?;
        let mut cluster = Self { nats, nodes, haproxy, nginx, loads, load_addresses, config, cert_hash, lab, dir };

        // All NATS servers first (a JetStream cluster is healthy only with a quorum), then
        // the nodes together, then the balancers in front of them.
        for s in &mut cluster.nats {
            s.start()?;
        }
        for i in 0..cluster.nats.len() {
            cluster.wait_nats(i).await?;
        }
        for n in &mut cluster.nodes {
            n.start()?;
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_node(i).await?;
        }
        let limit = cluster.config.ready_timeout;
        for h in &mut cluster.haproxy {
            h.start()?;
            ready::http_ok(h, HTTP_PORT, "/readyz", "HAProxy routing to a ready node", limit).await?;
        }
        cluster.nginx.start()?;
        ready::udp_bound(&mut cluster.nginx, WT_PORT, limit).await?;
        Ok(cluster)
    }

    /// The lab underneath (for what the cluster does not wrap, e.g. [`Lab::rebind`]).
    pub fn lab(&mut self) -> &mut Lab {
        &mut self.lab
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The working directory: configurations, JetStream stores and every piece's log
    /// (`nats1.log`, `node1.log`, `haproxy.log`, `nginx.log`); removed on drop (the logs
    /// copied first to `$SB_CLUSTER_KEEP_LOGS/<lab tag>/` when that is set).
    pub fn work_dir(&self) -> &std::path::Path {
        &self.dir.0
    }

    // ----- addresses -----

    /// NATS server `i`'s host (0-based).
    pub fn nats_host(&self, i: usize) -> &Host {
        self.nats[i].host()
    }

    /// Node `i`'s host (0-based; its id is [`node_id`]`(i)`).
    pub fn node_host(&self, i: usize) -> &Host {
        self.nodes[i].host()
    }

    /// The (first) HAProxy's host.
    pub fn haproxy_host(&self) -> &Host {
        self.haproxy[0].host()
    }

    /// Every HAProxy's host ([`ClusterConfig::balancers`]).
    pub fn haproxy_hosts(&self) -> Vec<&Host> {
        self.haproxy.iter().map(|p| p.host()).collect()
    }

    /// nginx's (the UDP balancer's) host.
    pub fn nginx_host(&self) -> &Host {
        self.nginx.host()
    }

    /// Load host `i` (0-based).
    pub fn load_host(&self, i: usize) -> &Host {
        &self.loads[i]
    }

    /// Every load host.
    pub fn load_hosts(&self) -> &[Host] {
        &self.loads
    }

    /// Load host `i`'s addresses besides its own ([`ClusterConfig::load_addresses`]).
    pub fn load_addresses(&self, i: usize) -> &[std::net::Ipv4Addr] {
        &self.load_addresses[i]
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Number of NATS servers.
    pub fn nats_count(&self) -> usize {
        self.nats.len()
    }

    /// The index of the node with id `node_id` (as in `Welcome.node`).
    pub fn node_index(&self, node_id: &str) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| pieces::node_id(i) == node_id)
    }

    /// Every NATS server's client URL, comma separated (as the nodes are given).
    pub fn nats_url(&self) -> String {
        nats_url(&self.nats.iter().map(|s| s.host().clone()).collect::<Vec<_>>())
    }

    /// WebSocket URL through the (first) HAProxy: `ws://<haproxy>:8080/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}:{HTTP_PORT}/ws", self.haproxy_host().addr())
    }

    /// WebSocket URLs through every HAProxy, in host order.
    pub fn ws_urls(&self) -> Vec<String> {
        self.haproxy.iter().map(|p| format!("ws://{}:{HTTP_PORT}/ws", p.host().addr())).collect()
    }

    /// WebTransport URL through nginx: `https://<nginx>:4433/wt` (trust [`Self::cert_hash`]).
    pub fn wt_url(&self) -> String {
        format!("https://{}:{WT_PORT}/wt", self.nginx_host().addr())
    }

    /// Node `i`'s own WebSocket URL (not balanced).
    pub fn node_ws_url(&self, i: usize) -> String {
        format!("ws://{}:{HTTP_PORT}/ws", self.node_host(i).addr())
    }

    /// Node `i`'s own WebTransport URL (not balanced).
    pub fn node_wt_url(&self, i: usize) -> String {
        format!("https://{}:{WT_PORT}/wt", self.node_host(i).addr())
    }

    /// SHA-256 (hex) of the WebTransport certificate every node serves.
    pub fn cert_hash(&self) -> &str {
        &self.cert_hash
    }

    /// A client config for `token` through HAProxy (WebSocket).
    pub fn ws_config(&self, token: &str) -> ClientConfig {
        ClientConfig::new(self.ws_url(), token)
    }

    /// A client config for `token` through nginx (WebTransport).
    pub fn wt_config(&self, token: &str) -> ClientConfig {
        ClientConfig::new(self.wt_url(), token).with_cert_hash(self.cert_hash.clone())
    }

    /// GET `path` from node `i`'s HTTP port (from inside its host): status and body, `None`
    /// if it does not answer.
    pub async fn node_get(&self, i: usize, path: &str) -> Option<(u16, String)> {
        ready::get(self.node_host(i), HTTP_PORT, path).await
    }

    /// GET a monitoring endpoint of NATS server `i` (`/varz`, `/connz`, `/subsz`, `/jsz`,
    /// `/routez`, `/healthz`) as JSON; `None` if it does not answer.
    pub async fn nats_monitor(&self, i: usize, path: &str) -> Option<serde_json::Value> {
        let (_, body) = ready::get(self.nats_host(i), NATS_MONITOR_PORT, path).await?;
        serde_json::from_str(&body).ok()
    }

    // ----- faults -----

    /// Take `host`'s link down: nothing passes to or from it (its processes keep running).
    pub fn cut_link(&self, host: &Host) -> anyhow::Result<()> {
        self.lab.link_down(host)
    }

    /// Bring `host`'s link back up.
    pub fn restore_link(&self, host: &Host) -> anyhow::Result<()> {
        self.lab.link_up(host)
    }

    /// Drop every packet between each host of `a` and each host of `b`, both ways, at the
    /// router (links stay up; traffic within a group and to third hosts passes). Adds to
    /// earlier partitions; [`Self::heal`] removes them all.
    pub fn partition(&self, a: &[&Host], b: &[&Host]) -> anyhow::Result<()> {
        for x in a {
            for y in b {
                ensure!(x.name() != y.name(), "{} is in both groups", x.name());
                self.lab.partition(x, y)?;
            }
        }
        Ok(())
    }

    /// Remove every partition.
    pub fn heal(&self) -> anyhow::Result<()> {
        self.lab.heal_all()
    }

    /// Impair `host`'s link with `profile` ([`Profile::clean`] removes it).
    pub fn shape(&mut self, host: &Host, profile: Profile) -> anyhow::Result<()> {
        self.lab.shape(host, profile)
    }

    /// SIGKILL the process on `host` (a NATS server, a node or a balancer); start it again
    /// with [`Self::start_nats`] / [`Self::start_node`].
    pub fn kill9(&mut self, host: &Host) -> anyhow::Result<()> {
        let process = self.process_on(host).with_context(|| format!("no process of the cluster on {}", host.name()))?;
        ensure!(process.running(), "the process on {} is not running", host.name());
        process.kill9();
        Ok(())
    }

    // ----- lifecycle -----

    /// SIGTERM node `i` and wait for it to exit (its drain: `GoAway` to every client, up to
    /// its `--drain-timeout`), at most [`ClusterConfig::stop_timeout`] before SIGKILL and an
    /// error.
    pub async fn stop_node(&mut self, i: usize) -> anyhow::Result<ExitStatus> {
        let limit = self.config.stop_timeout;
        self.nodes[i].stop(libc::SIGTERM, limit).await
    }

    /// Start node `i` (stopped or killed) again, same address, ports and id, and wait until
    /// it is ready.
    pub async fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].start()?;
        self.wait_node(i).await
    }

    /// [`Self::stop_node`] then [`Self::start_node`]; an error if the drain did not exit 0.
    pub async fn restart_node(&mut self, i: usize) -> anyhow::Result<()> {
        let status = self.stop_node(i).await?;
        ensure!(status.success(), "{} exited with {status} on SIGTERM", node_id(i));
        self.start_node(i).await
    }

    /// Whether node `i`'s process runs.
    pub fn node_running(&mut self, i: usize) -> bool {
        self.nodes[i].running()
    }

    /// Stop NATS server `i` gracefully and wait for the exit: SIGTERM, or lame duck mode
    /// (SIGUSR2) if [`ClusterConfig::nats_lame_duck`] is set. Its clients (the nodes)
    /// reconnect to the other servers.
    pub async fn stop_nats(&mut self, i: usize) -> anyhow::Result<ExitStatus> {
        let (signal, limit) = match self.config.nats_lame_duck {
            Some(duration) => (libc::SIGUSR2, duration + self.config.stop_timeout),
            None => (libc::SIGTERM, self.config.stop_timeout),
        };
        self.nats[i].stop(signal, limit).await
    }

    /// Start NATS server `i` again (same address, ports, name and store) and wait until it
    /// routes to the others and is healthy (JetStream current).
    pub async fn start_nats(&mut self, i: usize) -> anyhow::Result<()> {
        self.nats[i].start()?;
        self.wait_nats(i).await
    }

    /// [`Self::stop_nats`] then [`Self::start_nats`].
    pub async fn restart_nats(&mut self, i: usize) -> anyhow::Result<()> {
        self.stop_nats(i).await?;
        self.start_nats(i).await
    }

    /// Whether NATS server `i`'s process runs.
    pub fn nats_running(&mut self, i: usize) -> bool {
        self.nats[i].running()
    }

    /// A line per piece: role, host, address, process id and what to connect to (for
    /// `deploy/netns-cluster status` and test logs).
    pub fn describe(&mut self) -> String {
        let mut out = String::new();
        let mut line = |p: &mut HostProcess, what: String| {
            let state = if p.running() { format!("pid {}", p.pid().unwrap_or(0)) } else { "stopped".into() };
            let h = p.host();
            out.push_str(&format!(
                "{:<8} {:<12} {:<10} {}: ip netns exec {}\n",
                h.name(),
                h.addr(),
                state,
                what,
                h.namespace()
            ));
        };
        for p in &mut self.nats {
            let a = p.host().addr();
            line(p, format!("nats://{a}:{NATS_PORT} (monitor http://{a}:{NATS_MONITOR_PORT})"));
        }
        for p in &mut self.nodes {
            let a = p.host().addr();
            line(p, format!("http://{a}:{HTTP_PORT} ws://{a}:{HTTP_PORT}/ws https://{a}:{WT_PORT}/wt"));
        }
        let wt = self.wt_url();
        for p in &mut self.haproxy {
            let ws = format!("ws://{}:{HTTP_PORT}/ws", p.host().addr());
            line(p, format!("{ws} (WebSocket balancer)"));
        }
        line(&mut self.nginx, format!("{wt} (WebTransport UDP balancer)"));
        for (h, more) in self.loads.iter().zip(&self.load_addresses) {
            let more = match (more.first(), more.last()) {
                (Some(a), Some(b)) => format!(" (and {a}..{b})"),
                _ => String::new(),
            };
            out.push_str(&format!(
                "{:<8} {:<12} {:<10} load host{more}: ip netns exec {}\n",
                h.name(),
                h.addr(),
                "-",
                h.namespace()
            ));
        }
        out
    }

    fn process_on(&mut self, host: &Host) -> Option<&mut HostProcess> {
        self.nats
            .iter_mut()
            .chain(self.nodes.iter_mut())
            .chain(self.haproxy.iter_mut())
            .chain([&mut self.nginx])
            .find(|p| p.host().namespace() == host.namespace())
    }

    async fn wait_node(&mut self, i: usize) -> anyhow::Result<()> {
        let limit = self.config.ready_timeout;
        ready::http_ok(&mut self.nodes[i], HTTP_PORT, "/readyz", &format!("{} ready", node_id(i)), limit).await
    }

    async fn wait_nats(&mut self, i: usize) -> anyhow::Result<()> {
        let (limit, peers) = (self.config.ready_timeout, self.nats.len() - 1);
        let what = format!("nats{} healthy", i + 1);
        if peers > 0 {
            ready::nats_routes(&mut self.nats[i], peers, limit).await?;
        }
        ready::http_ok(&mut self.nats[i], NATS_MONITOR_PORT, "/healthz", &what, limit).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in self.nats.iter().chain(&self.nodes).chain(&self.haproxy).chain([&self.nginx]) {
                let tail = p.log_tail(15);
                if !tail.is_empty() {
                    eprintln!("--- {} ({}) log tail:\n{tail}", p.host().name(), p.log_path().display());
                }
            }
        }
    }
}

fn nats_url(hosts: &[Host]) -> String {
    hosts.iter().map(|h| format!("nats://{}:{NATS_PORT}", h.addr())).collect::<Vec<_>>().join(",")
}

/// The cluster's own tools (the lab checks its own): nats-server, haproxy, nginx with the
/// stream module, and the built `switchboard` binary.
fn check_tools() -> Result<(), Unavailable> {
    let found = |bin: &str, arg: &str| {
        std::process::Command::new(bin)
            .arg(arg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !found(&crate::nats::nats_binary(), "--version") {
        return Err(Unavailable("nats-server not found (set NATS_SERVER_BIN; scripts/test.sh installs it)".into()));
    }
    if !found(&pieces::haproxy_binary(), "-v") {
        return Err(Unavailable("haproxy not found (apt-get install haproxy; scripts/test.sh installs it)".into()));
    }
    if !found(&pieces::nginx_binary(), "-v") {
        return Err(Unavailable(
            "nginx not found (apt-get install nginx libnginx-mod-stream; scripts/test.sh installs them)".into(),
        ));
    }
    Ok(())
}

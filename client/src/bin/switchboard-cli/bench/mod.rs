//! `switchboard-cli bench`: a bounded load generator (loopback only) printing a one-line
//! JSON summary and a human line per run.
//!
//! Scenarios:
//! * `fanout`: one publisher, `--clients` subscribers in one room, `--size`-byte messages at
//!   `--rate` per second for `--duration` seconds; `--rate 0` is the maximum rate: a closed
//!   loop keeping at most `--window` messages ahead of the slowest sampled receiver;
//! * `pairs`: `--clients`/2 rooms of two, both sides sending at `--rate` each;
//! * `media`: `--rooms` rooms × (2 senders, `--clients` receivers, `--slow-receivers` of them
//!   never reading), 30 fps frames of 1–8 KiB with a keyframe every 30 frames;
//! * `media-room`: one room, `--senders` (2) senders of 30 fps video-like frames (1–2 KB
//!   deltas, a 20–40 KB keyframe every second; `--layers` simulcast layers, receivers
//!   choosing `--want-layer`) and `--clients` receivers (8 in `bench/compare`), every member
//!   also chatting once a second; receivers may sit behind an impaired link
//!   (`--receiver-netns`). Frame latency, delivered/expected, freezes, chat latency, lost and
//!   duplicated chat (see `media_room.rs`); `--wt-lanes` picks WebTransport's media lanes;
//! * `idle`: `--clients` connections that stay idle for `--duration` seconds (RSS per
//!   connection and the server's CPU while idle, i.e. heartbeats, with `--server-pid`);
//! * `churn`: connect/join/leave/disconnect cycles, `--clients` at a time, for `--duration`
//!   or `--cycles` in all, after `--warmup-cycles` (RSS before, after the warm-up and after);
//! * `cluster`: one process's share of a cluster-wide workload (rooms of 10 chatting, 1:1
//!   calls, churn, mixed WebSocket and WebTransport): see `cluster/mod.rs`.
//!
//! With `--server-pid` (repeatable: one per node) the report has the servers' summed RSS
//! before and after and their CPU use during the run (with several, each one's as well).
//! `media-room` spreads its members over several nodes with `--node` (senders and receivers
//! round robin) or `--node` for the senders and `--receiver-node` for the receivers, and
//! reports a nats-server's CPU with `--nats-pid`.
//!
//! Latency is measured from timestamps embedded in payloads (same process, monotonic clock).

mod cluster;
mod media_room;
mod metrics;
mod netns;
mod raw_wt;
mod scenarios;
mod stats;
mod targets;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
pub use targets::TargetKind;

/// Arguments of `bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// fanout, pairs, media, media-room, idle, churn or cluster.
    #[arg(long, value_enum)]
    pub scenario: scenarios::Scenario,
    /// What to measure: switchboard, bare (bare-broadcast) or nats-ws (nats-server websocket).
    #[arg(long, value_enum, default_value = "switchboard")]
    pub target: TargetKind,
    /// Server URL; repeat to spread connections over several nodes (round robin; in
    /// media-room, the senders, and the receivers unless --receiver-node). Default: --url.
    /// WebTransport nodes with self-signed certificates: give every node's hash in
    /// --cert-hash, comma-separated (a connection accepts any of them).
    #[arg(long = "node")]
    pub nodes: Vec<String>,
    /// media-room: the receivers connect here (repeat to spread them round robin over several
    /// nodes), the senders to --node (or --url): e.g. a webinar's senders on one node and its
    /// audience on another. Default: the receivers share the senders' nodes.
    #[arg(long = "receiver-node")]
    pub receiver_nodes: Vec<String>,
    /// Connections (subscribers, receivers per room, pair members, idle or concurrent churners).
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Rooms (media).
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Messages per second per sender; 0 = as fast as possible (fanout: as fast as the
    /// receivers keep up, see --window).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// fanout at --rate 0: most messages the publisher keeps ahead of the slowest of 16
    /// sampled receivers (a closed loop that finds the rate the server sustains).
    #[arg(long, default_value_t = 200)]
    pub window: u64,
    /// Payload bytes (at least 8: the timestamp).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Seconds of sending (or holding, for idle); bounded to 600.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Spread connections over source addresses 127.0.0.1 .. 127.0.0.N (past the ~28k
    /// ephemeral ports of one source address).
    #[arg(long, default_value_t = 1)]
    pub source_addrs: u8,
    /// In a netns lab: a source address of this load host to bind clients to (repeat; they
    /// are used in turn). Emulates clients behind many addresses, so a balancer that hashes
    /// the client address spreads them as it would real clients.
    #[arg(long = "source-ip")]
    pub source_ips: Vec<Ipv4Addr>,
    /// PID of a server process, to report its RSS and CPU use; repeat for several nodes
    /// (figures are summed).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// media-room: PID of the nodes' nats-server, to report its CPU use apart from the nodes'
    /// (`nats_cpu_percent`).
    #[arg(long = "nats-pid")]
    pub nats_pid: Option<u32>,
    /// media: receivers per room that join and never read (0 for the reference run).
    #[arg(long, default_value_t = 1)]
    pub slow_receivers: usize,
    /// churn: stop after this many cycles in all (0: run for --duration only).
    #[arg(long, default_value_t = 0)]
    pub cycles: u64,
    /// churn: cycles run before the measured ones (allocator and caches warm up), so the
    /// RSS comparison shows growth, not first use.
    #[arg(long, default_value_t = 0)]
    pub warmup_cycles: u64,
    /// A node's metrics endpoint (`http://127.0.0.1:PORT/metrics`), to wait for it to close
    /// every connection before reading RSS; default: derived from a `ws://` --node.
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// Connections opened at once while setting up.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// media-room: open the receivers' connections inside this network namespace (a name
    /// from `ip netns list`, e.g. a `deploy/netns-lab` client host), so they reach the node
    /// through that host's shaped link; repeat to spread the receivers over several (round
    /// robin). Senders connect from the bench's own namespace. Needs root.
    #[arg(long = "receiver-netns")]
    pub receiver_netns: Vec<String>,
    /// media-room: media senders (members 0..N); the --clients receivers follow.
    #[arg(long, default_value_t = 2)]
    pub senders: usize,
    /// media-room: simulcast layers per sender (1..=3), each its own track (track 1 + layer),
    /// every layer a quarter of the bytes of the one above; 1: one track without a layer.
    #[arg(long, default_value_t = 1)]
    pub layers: u32,
    /// media-room: the layer every receiver chooses for every sender: low (layer 0, the
    /// node's default: no LayerSubscribe is sent) or top.
    #[arg(long, value_enum, default_value = "low")]
    pub want_layer: media_room::WantLayer,
    #[command(flatten)]
    pub cluster: cluster::ClusterArgs,
}

impl BenchArgs {
    fn target(
        &self,
        url: &str,
        token: &str,
        cert_hash: Option<String>,
        media_lanes: bool,
    ) -> anyhow::Result<targets::Target> {
        let urls = if self.nodes.is_empty() { vec![url.to_owned()] } else { self.nodes.clone() };
        let mut lab_targets = false;
        for u in urls.iter().chain(&self.receiver_nodes).chain(&self.metrics_url) {
            let host = u.split("://").nth(1).and_then(|r| r.split(['/', ':']).next()).unwrap_or_default();
            let lab = in_lab_net(host);
            lab_targets |= lab;
            anyhow::ensure!(
                matches!(host, "127.0.0.1" | "localhost") || host.starts_with("127.") || u.contains("://[::1]") || lab,
                "bench targets loopback (or the netns lab's {}/{}) only, not {u}",
                LAB_NET.0,
                LAB_NET.1
            );
        }
        // In a lab the kernel picks the source (the client host's own address) unless
        // --source-ip names the host's addresses.
        anyhow::ensure!(!lab_targets || self.source_addrs <= 1, "--source-addrs is for loopback targets");
        anyhow::ensure!(
            self.source_ips.is_empty() || lab_targets,
            "--source-ip is for netns lab targets ({}/{}); use --source-addrs on loopback",
            LAB_NET.0,
            LAB_NET.1
        );
        if let Some(ip) = self.source_ips.iter().find(|ip| !in_lab_net(&ip.to_string())) {
            anyhow::bail!("--source-ip {ip} is outside the netns lab's {}/{}", LAB_NET.0, LAB_NET.1);
        }
        let source_ips = if lab_targets {
            self.source_ips.iter().map(|&ip| IpAddr::V4(ip)).collect()
        } else {
            (1..=self.source_addrs.max(1)).map(|i| IpAddr::from([127, 0, 0, i])).collect()
        };
        if let Some(w) = check_cert_hashes(urls.iter().chain(&self.receiver_nodes), cert_hash.as_deref())? {
            eprintln!("{w}");
        }
        Ok(targets::Target {
            kind: self.target,
            urls,
            token: token.to_owned(),
            cert_hash,
            source_ips,
            publish_subject: String::new(),
            media_lanes,
        })
    }

    /// Where to read the first node's open connections: --metrics-url, or the HTTP port of a
    /// WebSocket node.
    fn metrics_url(&self, target: &targets::Target) -> Option<String> {
        if self.metrics_url.is_some() || target.kind != TargetKind::Switchboard {
            return self.metrics_url.clone();
        }
        let rest = target.urls.first()?.strip_prefix("ws://")?;
        let authority = rest.split('/').next()?;
        Some(format!("http://{authority}/metrics"))
    }

    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration.clamp(0.1, 600.0))
    }
}

/// Run a benchmark and print its report; `media_lanes` is the global `--wt-lanes`.
pub async fn run(
    args: BenchArgs,
    url: &str,
    token: &str,
    cert_hash: Option<String>,
    media_lanes: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(args.size >= 8, "--size must be at least 8 bytes (the timestamp)");
    anyhow::ensure!(args.clients >= 1 && args.clients <= 100_000, "--clients must be 1..=100000");
    let media_room = args.scenario == scenarios::Scenario::MediaRoom;
    anyhow::ensure!(args.receiver_netns.is_empty() || media_room, "--receiver-netns is for --scenario media-room");
    anyhow::ensure!(args.receiver_nodes.is_empty() || media_room, "--receiver-node is for --scenario media-room");
    anyhow::ensure!(args.nats_pid.is_none() || media_room, "--nats-pid is for --scenario media-room");
    let target = args.target(url, token, cert_hash, media_lanes)?;
    let report = scenarios::run(&args, &target).await?;
    report.print();
    Ok(())
}

/// `--cert-hash` (comma-separated) against the nodes: every hash must parse (an error
/// otherwise); fewer hashes than WebTransport nodes gives a warning (each node generates its
/// own certificate unless they share one: a node whose hash is missing refuses the handshake).
fn check_cert_hashes<'a>(urls: impl Iterator<Item = &'a String>, list: Option<&str>) -> anyhow::Result<Option<String>> {
    let hashes = targets::split_hashes(list);
    for h in &hashes {
        switchboard_client::parse_cert_hash(h)
            .map_err(|e| anyhow::anyhow!("--cert-hash {h}: not a SHA-256 in hex ({e})"))?;
    }
    let mut wt: Vec<&str> = urls.filter(|u| u.starts_with("https://")).map(String::as_str).collect();
    wt.sort_unstable();
    wt.dedup();
    Ok((!hashes.is_empty() && hashes.len() < wt.len()).then(|| {
        format!(
            "warning: {} WebTransport nodes but {} --cert-hash: unless they share a certificate, give each \
             node's hash, comma-separated (curl http://HOST:PORT/certificate.sha256 on each)",
            wt.len(),
            hashes.len()
        )
    }))
}

/// The impaired-network lab's private range (`switchboard_tests::netns::LAB_NET`,
/// `deploy/netns-lab`): its addresses exist only inside the lab's network namespaces on this
/// machine, so bench admits them besides loopback (and nothing else).
pub const LAB_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 77, 0, 0), 16);

/// Whether `host` is an IPv4 address inside [`LAB_NET`].
fn in_lab_net(host: &str) -> bool {
    let shift = 32 - u32::from(LAB_NET.1);
    host.parse::<Ipv4Addr>().is_ok_and(|ip| u32::from(ip) >> shift == u32::from(LAB_NET.0) >> shift)
}

#[cfg(test)]
mod lab_net_tests {
    use super::{check_cert_hashes, in_lab_net};

    #[test]
    fn several_webtransport_nodes_want_a_hash_each() {
        let h = "ab".repeat(32);
        let two = ["https://127.0.0.1:1/wt".to_owned(), "https://127.0.0.1:2/wt".to_owned()];
        let warns = |urls: &[String], list: &str| check_cert_hashes(urls.iter(), Some(list)).unwrap().is_some();
        assert!(check_cert_hashes(two.iter(), None).unwrap().is_none(), "no hash: a CA's certificates");
        assert!(warns(&two, &h), "one hash for two nodes");
        assert!(!warns(&two, &format!("{h}, {h}")));
        assert!(!warns(&[two[0].clone(), two[0].clone()], &h), "the same node twice");
        assert!(check_cert_hashes(two.iter(), Some(&format!("{h},xyz"))).is_err(), "not hex");
    }

    #[test]
    fn only_the_lab_range_is_admitted_besides_loopback() {
        for host in ["10.77.0.1", "10.77.1.2", "10.77.255.254"] {
            assert!(in_lab_net(host), "{host}");
        }
        for host in ["10.76.1.2", "10.78.0.1", "10.0.0.1", "192.168.1.1", "8.8.8.8", "localhost", "10.77.1", "", "::1"]
        {
            assert!(!in_lab_net(host), "{host}");
        }
    }
}

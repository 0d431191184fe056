//! `netns-cluster`: a whole Switchboard cluster on one machine, every piece on its own
//! network-namespace host (`switchboard_tests::netns::cluster`): NATS servers, nodes,
//! HAProxy (WebSocket), nginx (WebTransport, UDP) and load hosts. Prints where everything is,
//! then runs until SIGINT or SIGTERM and tears it all down.
//!
//! `deploy/netns-cluster up|down|status` runs it in the background. Needs root.

use clap::Parser;
use std::io::Write;
use switchboard_tests::netns::{self, Cluster, ClusterConfig};

#[derive(Parser, Debug)]
#[command(about = "A Switchboard cluster in network namespaces: NATS, nodes, HAProxy, nginx (UDP), load hosts")]
struct Args {
    /// Switchboard nodes.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// NATS servers (3: a JetStream cluster).
    #[arg(long, default_value_t = 3)]
    nats: usize,
    /// Hosts for clients and load generators.
    #[arg(long, default_value_t = 2)]
    load_hosts: usize,
    /// A flag for every node's `switchboard serve` (repeat: `--node-arg=--heartbeat --node-arg=5`).
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
    /// HAProxy's global `maxconn` (default: the template's 8,000); raise it for large runs.
    #[arg(long)]
    haproxy_maxconn: Option<u32>,
    /// HAProxy hosts (`haproxy`, `haproxy2`, ...), each over every node: one takes at most
    /// about half its descriptor limit in WebSocket clients.
    #[arg(long, default_value_t = 1)]
    balancers: usize,
    /// nginx worker processes, each with its own descriptors (one per WebTransport client).
    #[arg(long, default_value_t = 1)]
    nginx_workers: usize,
    /// Addresses added to each load host besides its own, for clients to bind to.
    #[arg(long, default_value_t = 0)]
    load_addresses: usize,
    /// HS256 secret of the nodes' tokens.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", default_value = "local-cluster-secret-change-me-0123456789")]
    jwt_secret: String,
    /// Name of the lab (part of the namespace names).
    #[arg(long, default_value = "cluster")]
    name: String,
    /// Write the hosts, one `ROLE NAME ADDRESS NAMESPACE [MORE,ADDRESSES]` line each, to this
    /// file (a load host's added addresses, comma separated, in a fifth column).
    #[arg(long)]
    hosts_file: Option<std::path::PathBuf>,
    /// Only remove the namespaces of labs whose process is gone, then exit.
    #[arg(long)]
    remove_stale: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.remove_stale {
        netns::remove_stale();
        return Ok(());
    }
    let config = ClusterConfig {
        name: args.name,
        nats: args.nats,
        nodes: args.nodes,
        load_hosts: args.load_hosts,
        node_args: args.node_args,
        jwt_secret: args.jwt_secret,
        haproxy_maxconn: args.haproxy_maxconn,
        balancers: args.balancers,
        nginx_workers: args.nginx_workers,
        load_addresses: args.load_addresses,
        ..ClusterConfig::default()
    };
    let mut cluster = Cluster::start(config).await?;
    if let Some(path) = &args.hosts_file {
        let mut file = std::fs::File::create(path)?;
        let mut hosts: Vec<(&str, _, String)> = Vec::new();
        hosts.extend((0..cluster.nats_count()).map(|i| ("nats", cluster.nats_host(i), String::new())));
        hosts.extend((0..cluster.node_count()).map(|i| ("node", cluster.node_host(i), String::new())));
        hosts.extend(cluster.haproxy_hosts().into_iter().map(|h| ("haproxy", h, String::new())));
        hosts.push(("nginx", cluster.nginx_host(), String::new()));
        for (i, h) in cluster.load_hosts().iter().enumerate() {
            let more: Vec<String> = cluster.load_addresses(i).iter().map(|a| a.to_string()).collect();
            hosts.push(("load", h, more.join(",")));
        }
        for (role, h, more) in hosts {
            let line = format!("{role} {} {} {} {more}", h.name(), h.addr(), h.namespace());
            writeln!(file, "{}", line.trim_end())?;
        }
    }
    print!("{}", cluster.describe());
    println!("logs: {}", cluster.work_dir().display());
    println!("WebSocket through HAProxy:     {}", cluster.ws_urls().join(" "));
    println!("WebTransport through nginx:   {} (--cert-hash {})", cluster.wt_url(), cluster.cert_hash());
    println!("NATS:                         {}", cluster.nats_url());
    println!("ready: cluster {} up; SIGINT or SIGTERM tears it down", cluster.lab().tag());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(cluster);
    println!("cluster torn down");
    Ok(())
}

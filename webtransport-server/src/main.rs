//! `webtransport-server`: a QUIC-only Switchboard node (WebTransport edge, cluster bus,
//! auth), with a small HTTP listener for health, readiness, metrics and the certificate
//! hash.

use anyhow::Context;
use clap::Parser;
use std::time::Duration;
use switchboard_node::{build_node, init_logging, shutdown_signal, NodeArgs};
use switchboard_webtransport::{probe, WtArgs, WtConfig, WtServer};

#[derive(Debug, Parser)]
#[command(name = "webtransport-server", version, about = "Switchboard WebTransport-only node")]
struct Args {
    /// HTTP listen address for /healthz, /readyz, /metrics and /certificate.sha256.
    #[arg(long, env = "SWITCHBOARD_HTTP_ADDR", default_value = "0.0.0.0:8081")]
    http_addr: std::net::SocketAddr,
    #[command(flatten)]
    wt: WtArgs,
    #[command(flatten)]
    node: NodeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args.node);
    let node = build_node(&args.node).await?;
    let config = WtConfig { allowed_origins: args.node.allowed_origins(), ..args.wt.config() };
    let server = WtServer::bind(config).await.context("starting WebTransport")?;
    tracing::info!(addr = %server.local_addr()?, node = node.id(), "WebTransport listening");
    let listener = probe::bind(args.http_addr).await.with_context(|| format!("binding {}", args.http_addr))?;
    tokio::spawn(probe::serve(
        listener,
        node.clone(),
        server.generated_certificate_hash(),
        args.node.allowed_origins(),
    ));
    let serving = tokio::spawn(server.serve(node.clone()));
    shutdown_signal().await;
    tracing::info!("shutdown signal: draining");
    node.drain(Duration::from_secs(args.node.drain_timeout)).await;
    // Let the QUIC close frames of the last sessions go out before the process exits.
    let _ = tokio::time::timeout(Duration::from_secs(3), serving).await;
    Ok(())
}

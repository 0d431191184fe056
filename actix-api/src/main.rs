//! `switchboard`: a Switchboard node (HTTP API, WebSocket edge, WebTransport edge) and
//! development tools.
//!
//! `main` only wires configuration -> node (auth, bus) -> edges -> signals.

mod admin;
mod http;
mod openapi;
mod token;
mod ws;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use switchboard_webtransport::cli::{build_node, init_logging, NodeArgs};
use switchboard_webtransport::WtArgs;
use switchboard_webtransport::WtServer;

#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about = "Switchboard relay node", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve HTTP + WebSocket and WebTransport (the default).
    Serve(Box<ServeArgs>),
    /// Print a signed development token.
    Token(token::TokenArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// HTTP API and WebSocket listen address.
    #[arg(long, env = "SWITCHBOARD_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Serve WebSocket only (no WebTransport listener).
    #[arg(long, env = "SWITCHBOARD_NO_WEBTRANSPORT")]
    no_webtransport: bool,
    /// API key of the admin HTTP API (`/api/...`); without it the admin API is disabled.
    #[arg(long, env = "SWITCHBOARD_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "SWITCHBOARD_HTTP_WORKERS")]
    http_workers: Option<usize>,
    #[command(flatten)]
    wt: WtArgs,
    #[command(flatten)]
    node: NodeArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(args)) => token::run(args),
        Some(Command::Serve(args)) => serve(*args),
        None => serve(cli.serve),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(&args.node);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(serve_async(args))
}

async fn serve_async(args: ServeArgs) -> anyhow::Result<()> {
    let node = build_node(&args.node).await?;
    let mut wt_task = None;
    let (cert_sha256, wt_port) = if args.no_webtransport {
        (None, None)
    } else {
        let server = WtServer::bind(args.wt.config()).await.context("starting WebTransport")?;
        let hash = server.generated_certificate_sha256_hex();
        let port = server.local_addr()?.port();
        tracing::info!(addr = %server.local_addr()?, "WebTransport listening");
        wt_task = Some(tokio::spawn(server.serve(node.clone())));
        (hash, Some(port))
    };
    let drain_timeout = Duration::from_secs(args.node.drain_timeout);
    let state = actix_web::web::Data::new(http::AppState {
        node: node.clone(),
        cert_sha256,
        wt_port,
        admin_key: args.admin_key.clone().filter(|k| !k.is_empty()),
        drain_timeout,
    });
    if state.admin_key.is_none() {
        tracing::info!("admin API disabled (no --admin-key)");
    }
    let workers = args.http_workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let server =
        actix_web::HttpServer::new(move || actix_web::App::new().app_data(state.clone()).configure(http::routes))
            .workers(workers)
            // Small real-time frames must not wait for Nagle's algorithm (and the peer's
            // delayed ACK): without this, WebSocket delivery gained ~10-40 ms under load.
            .on_connect(|conn, _| {
                if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
                    let _ = tcp.set_nodelay(true);
                }
            })
            .disable_signals()
            .shutdown_timeout(5)
            .bind(args.http_addr)
            .with_context(|| format!("binding {}", args.http_addr))?
            .run();
    tracing::info!(addr = %args.http_addr, node = node.id(), "HTTP and WebSocket listening");
    let handle = server.handle();
    let node_for_signal: Arc<switchboard_relay::Node> = node.clone();
    tokio::spawn(async move {
        switchboard_webtransport::cli::shutdown_signal().await;
        tracing::info!("shutdown signal: draining");
        node_for_signal.drain(drain_timeout).await;
        handle.stop(true).await;
    });
    server.await.context("HTTP server")?;
    // Let the WebTransport edge send its sessions' close frames before the process exits.
    if let Some(task) = wt_task {
        let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
    }
    tracing::info!("stopped");
    Ok(())
}

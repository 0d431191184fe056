//! `switchboard`: a Switchboard node (HTTP API, WebSocket edge, WebTransport edge) and
//! development tools.
//!
//! `main` only wires configuration -> node (auth, bus) -> edges -> signals.

mod accounts;
mod admin;
mod calls_api;
mod cors;
mod http;
mod ice_api;
mod openapi;
mod origin;
mod tls;
mod token;
mod web;
mod ws;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use switchboard_node::{build_node, init_logging, NodeArgs};
use switchboard_webtransport::WtServer;
use switchboard_webtransport::{WtArgs, WtConfig};

/// Time a client has to send its request line and headers (a slow client is answered 408 and
/// closed).
const HTTP_REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to complete a TLS handshake on the HTTP listener.
const HTTP_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Open HTTP connections per worker thread; beyond it new ones wait in the kernel's backlog.
const HTTP_MAX_CONNECTIONS_PER_WORKER: usize = 25_000;
/// TLS handshakes in progress per worker thread.
const HTTP_MAX_TLS_HANDSHAKES_PER_WORKER: usize = 256;

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
    /// Serve `POST /api/dev/token` (tokens for any name, for the demo) even with a
    /// configured `--jwt-secret`. Always on with the built-in development secret.
    #[arg(long, env = "SWITCHBOARD_DEV_TOKENS")]
    dev_tokens: bool,
    /// TLS certificate chain (PEM) for HTTP and WebSocket (`https://`, `wss://`); with
    /// `--http-tls-key`. Reloaded when the files change. Without it: plain HTTP.
    #[arg(long, env = "SWITCHBOARD_HTTP_TLS_CERT", requires = "http_tls_key")]
    http_tls_cert: Option<std::path::PathBuf>,
    /// TLS private key (PEM) for `--http-tls-cert`.
    #[arg(long, env = "SWITCHBOARD_HTTP_TLS_KEY", requires = "http_tls_cert")]
    http_tls_key: Option<std::path::PathBuf>,
    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "SWITCHBOARD_HTTP_WORKERS")]
    http_workers: Option<usize>,
    #[command(flatten)]
    wt: WtArgs,
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    accounts: accounts::AccountArgs,
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
    let accounts = accounts::Accounts::from_args(&args.accounts, &args.node, node.verifier())?;
    let mut wt_task = None;
    let (cert_sha256, wt_port) = if args.no_webtransport {
        (None, None)
    } else {
        let config = WtConfig { allowed_origins: args.node.allowed_origins(), ..args.wt.config() };
        let server = WtServer::bind(config).await.context("starting WebTransport")?;
        let hash = server.generated_certificate_hash();
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
        accounts,
        allowed_origins: args.node.allowed_origins(),
    });
    let dev_secret = args.node.jwt_secret.is_none() && args.node.jwt_public_key.is_none();
    let hmac_secret = match (&args.node.jwt_public_key, &args.node.jwt_secret) {
        (Some(_), _) => None,
        (None, secret) => Some(secret.as_deref().unwrap_or(switchboard_relay::auth::DEV_SECRET).as_bytes()),
    };
    let web_state = actix_web::web::Data::new(web::WebState::new(dev_secret, args.dev_tokens, hmac_secret));
    if state.admin_key.is_none() {
        tracing::info!("admin API disabled (no --admin-key)");
    }
    let workers = args.http_workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    // Each worker holds at most its own share of the connections.
    let http_limit = i64::try_from(workers.saturating_mul(HTTP_MAX_CONNECTIONS_PER_WORKER)).unwrap_or(i64::MAX);
    node.metrics()
        .connection_limit
        .get_or_create(&switchboard_relay::metrics::TransportLabel { transport: "websocket" })
        .set(http_limit);
    let server = actix_web::HttpServer::new(move || {
        let origins = state.allowed_origins.clone();
        actix_web::App::new()
            .app_data(state.clone())
            .app_data(web_state.clone())
            .configure(|cfg| http::routes(cfg, &origins))
            .configure(|cfg| web::routes(cfg, &origins))
    })
    .workers(workers)
    // Small real-time frames must not wait for Nagle's algorithm (and the peer's
    // delayed ACK): without this, WebSocket delivery gained ~10-40 ms under load.
    .on_connect(|conn, _| {
        type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
        if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
            let _ = tcp.set_nodelay(true);
        } else if let Some(tls) = conn.downcast_ref::<Tls>() {
            let _ = tls.get_ref().0.set_nodelay(true);
        }
    })
    .disable_signals()
    .shutdown_timeout(5)
    // What a connection may hold before its request (and so before the WebSocket admission):
    // stated here rather than left to actix-web's defaults, which these are.
    .client_request_timeout(HTTP_REQUEST_HEAD_TIMEOUT)
    .tls_handshake_timeout(HTTP_TLS_HANDSHAKE_TIMEOUT)
    .max_connections(HTTP_MAX_CONNECTIONS_PER_WORKER)
    .max_connection_rate(HTTP_MAX_TLS_HANDSHAKES_PER_WORKER);
    let tls = match (&args.http_tls_cert, &args.http_tls_key) {
        (Some(cert), Some(key)) => Some(tls::server_config(cert.clone(), key.clone(), node.clone())?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https/wss" } else { "http/ws" };
    let server = match tls {
        Some(config) => server.bind_rustls_0_23(args.http_addr, config),
        None => server.bind(args.http_addr),
    }
    .with_context(|| format!("binding {}", args.http_addr))?
    .run();
    tracing::info!(addr = %args.http_addr, node = node.id(), scheme, "HTTP and WebSocket listening");
    let handle = server.handle();
    let node_for_signal: Arc<switchboard_relay::Node> = node.clone();
    tokio::spawn(async move {
        switchboard_node::shutdown_signal().await;
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

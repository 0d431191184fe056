//! A minimal HTTP/1.1 listener for the standalone WebTransport node: `GET /healthz`,
//! `/readyz`, `/metrics` and `/certificate.sha256`. Requests are bounded in size (8 KiB)
//! and time (5 s); anything else gets 404 or 400. Only `/certificate.sha256` is for browsers:
//! it answers CORS under `--allowed-origins`, the probes none.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use switchboard_relay::{AllowedOrigins, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_REQUEST: usize = 8 * 1024;
/// Probe connections served at once; more wait in the listen backlog.
const MAX_CONCURRENT: usize = 64;

/// Serve probes on `listener` until the process ends.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    cert_sha256: Option<crate::CertificateHash>,
    origins: AllowedOrigins,
) {
    let cert = Arc::new(cert_sha256);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                tracing::warn!(error = %e, "probe listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (node, cert, origins) = (node.clone(), cert.clone(), origins.clone());
        tokio::spawn(async move {
            if tokio::time::timeout(Duration::from_secs(5), handle(stream, &node, &cert, &origins)).await.is_err() {
                tracing::debug!(%peer, "probe request timed out");
            }
            drop(slot);
        });
    }
}

/// Bind the probe listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// The CORS headers of a browser-facing answer: the request's origin reflected when the
/// allow-list admits it (a request with several `Origin` headers gets none).
fn cors_headers(head: &str, origins: &AllowedOrigins) -> String {
    let values: Vec<&str> = head
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("origin"))
        .map(|(_, value)| value.trim())
        .collect();
    match values.as_slice() {
        [origin] if origins.check(values.iter().map(|v| v.as_bytes())).is_ok() => {
            format!("access-control-allow-origin: {origin}\r\nvary: Origin\r\n")
        }
        _ => String::new(),
    }
}

async fn handle(
    mut stream: TcpStream,
    node: &Node,
    cert: &Option<crate::CertificateHash>,
    origins: &AllowedOrigins,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            return respond(&mut stream, 400, "text/plain", "bad request\n", "").await;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let line = head.split("\r\n").next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return respond(&mut stream, 405, "text/plain", "method not allowed\n", "").await;
    }
    match path {
        "/healthz" => respond(&mut stream, 200, "text/plain", "ok\n", "").await,
        "/readyz" => {
            let ready = node.is_ready();
            let body = format!(
                "{{\"ready\":{ready},\"node\":\"{}\",\"draining\":{},\"bus_connected\":{},\"sessions\":{}}}",
                node.id(),
                node.is_draining(),
                node.bus().is_connected(),
                node.session_count()
            );
            respond(&mut stream, if ready { 200 } else { 503 }, "application/json", &body, "").await
        }
        "/metrics" => respond(&mut stream, 200, "text/plain; version=0.0.4", &node.metrics().encode(), "").await,
        "/certificate.sha256" => {
            let cors = cors_headers(&head, origins);
            match cert {
                Some(hash) => respond(&mut stream, 200, "text/plain", &format!("{}\n", hash.current()), &cors).await,
                None => respond(&mut stream, 404, "text/plain", "no generated certificate\n", &cors).await,
            }
        }
        _ => respond(&mut stream, 404, "text/plain", "not found\n", "").await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
    cors: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         {cors}connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

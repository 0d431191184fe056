//! Reading a node's Prometheus endpoint (loopback, plain HTTP/1.0: one GET, no client
//! library needed for it).

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sum of `switchboard_connections` over transports at `url` (`http://HOST:PORT/metrics`);
/// `None` if the endpoint cannot be read.
pub async fn open_connections(url: &str) -> Option<u64> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let body = get(authority, &path).await?;
    Some(
        body.lines()
            .filter(|l| l.starts_with("switchboard_connections{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64,
    )
}

async fn get(authority: &str, path: &str) -> Option<String> {
    let io = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?;
        (status == "200").then(|| body.to_owned())
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), io).await.ok()?
}

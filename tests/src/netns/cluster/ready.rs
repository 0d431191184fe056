//! Waiting for a piece of a [`Cluster`](super::Cluster) to serve, bounded, failing early
//! (with its log) if its process exits meanwhile.

use super::super::{Host, HostProcess};
use anyhow::bail;
use std::time::Duration;

/// Poll interval of the waits.
const POLL: Duration = Duration::from_millis(100);

/// GET `path` on `port` from inside `host` (`127.0.0.1`): status and body.
pub async fn get(host: &Host, port: u16, path: &str) -> Option<(u16, String)> {
    let path = path.to_owned();
    host.run(move || async move { crate::http::get(port, &path).await.ok() }).await
}

/// Wait until `check` holds, for at most `limit`, while `process` runs.
async fn until<F, Fut>(process: &mut HostProcess, what: &str, limit: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut(Host) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if !process.running() {
            bail!("{what}: the process exited; log tail:\n{}", process.log_tail(20));
        }
        if check(process.host().clone()).await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{what}: not within {limit:?}; log tail:\n{}", process.log_tail(20));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Wait until `GET path` on `port` answers 200 from inside the process's host.
pub async fn http_ok(
    process: &mut HostProcess,
    port: u16,
    path: &str,
    what: &str,
    limit: Duration,
) -> anyhow::Result<()> {
    until(process, what, limit, |host| async move { matches!(get(&host, port, path).await, Some((200, _))) }).await
}

/// Wait until a NATS server routes to `peers` others (its `/routez`).
pub async fn nats_routes(process: &mut HostProcess, peers: usize, limit: Duration) -> anyhow::Result<()> {
    let port = super::pieces::NATS_MONITOR_PORT;
    until(process, "NATS routes", limit, |host| async move {
        let Some((200, body)) = get(&host, port, "/routez").await else { return false };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["num_routes"].as_u64().is_some_and(|n| n as usize >= peers)
    })
    .await
}

/// Wait until something listens on UDP `port` on the process's host (`ss`).
pub async fn udp_bound(process: &mut HostProcess, port: u16, limit: Duration) -> anyhow::Result<()> {
    until(process, "the UDP listener", limit, |host| async move {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", host.namespace(), "ss", "-Hlun", &format!("sport = :{port}")])
            .output();
        out.is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
    })
    .await
}

//! One delivery of one event to one endpoint: the stored record, the signed POST, and what
//! to do after it (done, again after a backoff, or give up once the event is too old).

use super::config::WebhookConfig;
use super::signature::sign;
use crate::metrics::{Metrics, ReasonLabel};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// First retry delay; each retry waits about as long as the event has waited so far
/// (doubling), up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// An event waiting for one endpoint (the value stored in the delivery queue). It names its
/// URL, so any node delivers it, whatever its own endpoint list (a rollout changing it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Pending {
    pub url: String,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created_at_ms: u64,
    /// The exact JSON body (what the signature covers).
    pub body: String,
}

impl Pending {
    /// The store key: the endpoint (hashed URL) and the event id, so an event reported by
    /// two nodes is stored once per endpoint.
    pub fn key(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.url.as_bytes());
        let endpoint: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        format!("e{endpoint}.{}", self.id)
    }
}

/// What became of an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The endpoint answered 2xx.
    Delivered,
    /// Try again after this long.
    Retry(Duration),
    /// Retried for `retry_for`: dropped.
    Expired,
}

/// The HTTP client for webhooks: no redirects (a receiver that moved must be reconfigured,
/// and following one could send signed events somewhere unintended), bounded time.
pub(crate) fn client(config: &WebhookConfig) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        .pool_max_idle_per_host(config.concurrency)
        .user_agent(concat!("switchboard-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// How long to wait before the next attempt of an event that has waited `age`.
fn backoff(age: Duration) -> Duration {
    let base = age.clamp(MIN_BACKOFF, MAX_BACKOFF);
    // ±20 %, so endpoints coming back are not hit by every retry at once.
    base.mul_f64(0.8 + rand::random::<f64>() * 0.4)
}

/// POST `p` once and decide what follows.
pub(crate) async fn attempt(
    client: &reqwest::Client,
    config: &WebhookConfig,
    metrics: &Metrics,
    p: &Pending,
) -> Outcome {
    let now = now_ms();
    let age = Duration::from_millis(now.saturating_sub(p.created_at_ms));
    let timestamp = now / 1000;
    let sent = client
        .post(&p.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("Webhook-Id", &p.id)
        .header("Webhook-Timestamp", timestamp.to_string())
        .header("Webhook-Signature", sign(&config.secret, timestamp, p.body.as_bytes()))
        .body(p.body.clone())
        .send()
        .await;
    let failure = match sent {
        Ok(res) if res.status().is_success() => {
            metrics.webhook_sent.inc();
            metrics
                .webhook_latency_seconds
                .observe(Duration::from_millis(now_ms() - p.created_at_ms.min(now)).as_secs_f64());
            tracing::debug!(id = %p.id, kind = %p.kind, url = %p.url, "webhook delivered");
            return Outcome::Delivered;
        }
        Ok(res) => format!("HTTP {}", res.status().as_u16()),
        Err(e) if e.is_timeout() => "timed out".to_owned(),
        Err(e) if e.is_connect() => "cannot connect".to_owned(),
        Err(e) => e.to_string(),
    };
    metrics.webhook_failed.inc();
    if age >= config.retry_for {
        metrics.webhook_dropped.get_or_create(&ReasonLabel { reason: "expired" }).inc();
        tracing::warn!(id = %p.id, kind = %p.kind, url = %p.url, %failure, waited = ?age, "webhook dropped: retried for too long");
        return Outcome::Expired;
    }
    metrics.webhook_retried.inc();
    let delay = backoff(age);
    tracing::info!(id = %p.id, kind = %p.kind, url = %p.url, %failure, retry_in = ?delay, "webhook failed; will retry");
    Outcome::Retry(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_age_within_bounds() {
        assert!(backoff(Duration::ZERO) >= Duration::from_millis(800));
        assert!(backoff(Duration::ZERO) <= Duration::from_millis(1200));
        let later = backoff(Duration::from_secs(60));
        assert!(later >= Duration::from_secs(48) && later <= Duration::from_secs(72));
        assert!(backoff(Duration::from_secs(100_000)) <= Duration::from_secs(360));
    }

    #[test]
    fn keys_are_per_endpoint_and_event() {
        let p = Pending {
            url: "https://a/h".into(),
            id: "evt_00".into(),
            kind: "room.started".into(),
            created_at_ms: 0,
            body: "{}".into(),
        };
        let q = Pending { url: "https://b/h".into(), ..p.clone() };
        assert_ne!(p.key(), q.key());
        assert!(p.key().ends_with(".evt_00"));
        assert!(p.key().chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_'));
    }
}

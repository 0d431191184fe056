//! Webhook configuration: endpoints (`--webhook`), each with an event filter, the shared
//! signing secret and the delivery bounds.

use std::time::Duration;

/// The event types a webhook can receive.
pub const EVENT_TYPES: &[&str] = &[
    "room.started",
    "room.finished",
    "participant.joined",
    "participant.left",
    "call.created",
    "call.answered",
    "call.ended",
    "user.banned",
    "user.kicked",
];

/// Endpoints configured per node at most (each event is stored once per matching endpoint).
pub const MAX_ENDPOINTS: usize = 16;

/// One endpoint: where events are POSTed and which ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Patterns of event types: `*`, `room.*`, or an exact type. Empty: every event.
    pub events: Vec<String>,
}

impl Endpoint {
    /// Parse `URL` or `URL EVENTS`, where EVENTS is a comma-separated list of event types or
    /// `<group>.*` patterns (`https://app.example/hooks room.*,call.ended`).
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let mut parts = spec.split_whitespace();
        let url = parts.next().ok_or_else(|| ConfigError(format!("webhook {spec:?}: no URL")))?;
        let parsed = reqwest::Url::parse(url).map_err(|e| ConfigError(format!("webhook URL {url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(ConfigError(format!("webhook URL {url:?}: must be http:// or https:// with a host")));
        }
        let events: Vec<String> = match parts.next() {
            None => Vec::new(),
            Some(list) => list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        };
        if let Some(extra) = parts.next() {
            return Err(ConfigError(format!("webhook {spec:?}: unexpected {extra:?} (use `URL type,type,...`)")));
        }
        for pattern in &events {
            if !EVENT_TYPES.iter().any(|t| matches(pattern, t)) {
                return Err(ConfigError(format!(
                    "webhook {url}: event filter {pattern:?} matches no event (known: {})",
                    EVENT_TYPES.join(", ")
                )));
            }
        }
        Ok(Self { url: url.to_owned(), events })
    }

    /// Whether this endpoint receives events of `event_type`.
    pub fn wants(&self, event_type: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|p| matches(p, event_type))
    }
}

/// Whether `pattern` (`*`, `group.*` or exact) matches `event_type`.
fn matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix(".*") {
        _ if pattern == "*" => true,
        Some(group) => event_type.strip_prefix(group).is_some_and(|rest| rest.starts_with('.')),
        None => pattern == event_type,
    }
}

/// Webhook settings of a node. With no endpoints, nothing is recorded or sent.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where events go.
    pub endpoints: Vec<Endpoint>,
    /// Shared secret of the `Webhook-Signature` HMAC.
    pub secret: String,
    /// Events waiting on this node to be stored for delivery; more are dropped (counted).
    pub queue: usize,
    /// How long an event is retried before it is dropped (counted).
    pub retry_for: Duration,
    /// Time allowed for one POST (connect, send, status line).
    pub timeout: Duration,
    /// POSTs in flight from this node at once.
    pub concurrency: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            secret: String::new(),
            queue: 10_000,
            retry_for: Duration::from_secs(3600),
            timeout: Duration::from_secs(10),
            concurrency: 32,
        }
    }
}

impl WebhookConfig {
    /// Whether any endpoint is configured.
    pub fn enabled(&self) -> bool {
        !self.endpoints.is_empty()
    }

    /// Whether any endpoint receives events of `event_type`.
    pub fn wants(&self, event_type: &str) -> bool {
        self.endpoints.iter().any(|e| e.wants(event_type))
    }

    /// Check the settings as a whole.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        if self.endpoints.len() > MAX_ENDPOINTS {
            return Err(ConfigError(format!("at most {MAX_ENDPOINTS} webhook endpoints")));
        }
        if self.secret.len() < 16 {
            return Err(ConfigError("--webhook-secret must be set, at least 16 bytes, when a --webhook is".into()));
        }
        if self.queue == 0 || self.concurrency == 0 {
            return Err(ConfigError("webhook queue and concurrency must be at least 1".into()));
        }
        Ok(())
    }
}

/// A bad webhook setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_and_without_filters() {
        let all = Endpoint::parse("https://app.example/hooks").unwrap();
        assert!(all.wants("room.started") && all.wants("call.ended"));
        let some = Endpoint::parse("http://10.0.0.1:9000/h room.*,call.ended").unwrap();
        assert!(some.wants("room.finished"));
        assert!(some.wants("call.ended"));
        assert!(!some.wants("call.created"));
        assert!(!some.wants("roomx.started"));
    }

    #[test]
    fn bad_endpoints_are_refused_clearly() {
        for bad in
            ["", "ftp://x/y", "not a url", "https://x/h room.*,nope", "https://x/h room.* extra", "https://x/h rooms.*"]
        {
            assert!(Endpoint::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_secret_is_required() {
        let mut c = WebhookConfig { endpoints: vec![Endpoint::parse("https://x/h").unwrap()], ..Default::default() };
        assert!(c.validate().is_err());
        c.secret = "0123456789abcdef".into();
        assert!(c.validate().is_ok());
        assert!(WebhookConfig::default().validate().is_ok());
    }
}

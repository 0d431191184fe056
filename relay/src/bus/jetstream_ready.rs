//! Waiting at start-up until JetStream answers, before any stream or bucket is created.
//!
//! A fresh clustered NATS elects its JetStream meta leader only once a majority of its
//! servers have routed to each other; until then the JetStream API answers nothing (a
//! request is dropped and times out) or `503 JetStream system temporarily unavailable`. A
//! stream created in that window waits for the client's whole request timeout (10 s) and
//! fails, so the node polls the cheapest JetStream request there is, the account info
//! (`$JS.API.INFO`, answered by the meta leader), with a short timeout of its own, until
//! it answers, and only then creates its streams.

use super::BusError;
use async_nats::jetstream::{self, context::AccountErrorKind};
use std::time::Duration;
use tokio::time::Instant;

/// How long the first probe waits for its answer (a request sent while there is no meta
/// leader is dropped, never answered late); each probe that gets no answer doubles it, up
/// to [`PROBE_TIMEOUT_MAX`], so a slow but working leader is waited for too.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// The longest a probe waits: far below the 10 s a stream creation would wait.
const PROBE_TIMEOUT_MAX: Duration = Duration::from_secs(2);
/// Pause between probes.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How often the wait is logged while it lasts.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What one probe found.
enum Probe {
    Ready,
    /// Not yet: the meta leader is being elected (or the server is restarting).
    NotYet(String),
    /// An answer waiting will not change.
    Fatal(String),
}

async fn probe(js: &mut jetstream::Context, timeout: &mut Duration) -> Probe {
    js.set_timeout(*timeout);
    match js.query_account().await {
        Ok(_) => Probe::Ready,
        Err(e) => match e.kind() {
            AccountErrorKind::TimedOut => {
                *timeout = (*timeout * 2).min(PROBE_TIMEOUT_MAX);
                Probe::NotYet("no answer: no JetStream meta leader yet".into())
            }
            // 503: "JetStream system temporarily unavailable" (no meta leader).
            AccountErrorKind::JetStream(err) if err.code() == 503 => Probe::NotYet(err.to_string()),
            AccountErrorKind::JetStream(err) => Probe::Fatal(err.to_string()),
            AccountErrorKind::JetStreamUnavailable => {
                Probe::NotYet("no responders: JetStream is not enabled on this server (yet?)".into())
            }
            AccountErrorKind::Other => Probe::NotYet(e.to_string()),
        },
    }
}

/// Wait until JetStream answers through `js`, for at most `limit`; logs its progress.
pub(super) async fn wait(js: &jetstream::Context, limit: Duration) -> Result<(), BusError> {
    let mut js = js.clone();
    let mut timeout = PROBE_TIMEOUT;
    let start = Instant::now();
    let deadline = start + limit;
    let mut next_log = start;
    let mut waited = false;
    loop {
        let reason = match probe(&mut js, &mut timeout).await {
            Probe::Ready if !waited => return Ok(()),
            Probe::Ready => {
                tracing::info!(waited_ms = start.elapsed().as_millis() as u64, "JetStream ready");
                return Ok(());
            }
            Probe::Fatal(reason) => return Err(BusError::Other(format!("JetStream refused: {reason}"))),
            Probe::NotYet(reason) => reason,
        };
        waited = true;
        let now = Instant::now();
        if now >= deadline {
            return Err(BusError::Unavailable(format!(
                "JetStream not ready after {:.0?} ({reason}); a clustered NATS needs a majority \
                 of its servers up and routed to elect a meta leader, and every server needs \
                 JetStream enabled (-js)",
                limit
            )));
        }
        if now >= next_log {
            tracing::info!(
                waited_s = start.elapsed().as_secs(),
                limit_s = limit.as_secs(),
                %reason,
                "waiting for JetStream before creating streams"
            );
            next_log = now + PROGRESS_EVERY;
        }
        tokio::time::sleep(RETRY_PAUSE.min(deadline - now)).await;
    }
}

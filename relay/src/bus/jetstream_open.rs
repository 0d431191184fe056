//! Opening the node's JetStream buckets and streams at start-up, while other nodes may be
//! opening the same ones at the same moment (a cluster started at once).
//!
//! Every node creates every bucket and stream it uses, with the same configuration; a
//! creation is idempotent for an identical configuration, so whichever node comes first
//! creates it and the others get the same answer. Except on a fresh cluster: while one
//! node's creation is still being proposed, the meta leader may leave a concurrent request
//! for the same stream unanswered (seen with nats-server 2.15: a create racing another
//! node's create or update got no answer, and the node waited out the client's 10 s request
//! timeout, then reconnected and started over). So each request here waits at most
//! [`REQUEST_TIMEOUT`]; after a timeout or an error the bucket or stream is looked up (the
//! other node's request may have created it), and the creation is tried again, for at most
//! [`OPEN_LIMIT`].
//!
//! Streams are created first and updated only when they exist with another configuration
//! (changed limits), so nodes starting together with the same flags never update.

use super::BusError;
use async_nats::jetstream::{self, context::CreateStreamErrorKind, kv, ErrorCode};
use std::future::Future;
use std::time::Duration;
use tokio::time::{timeout, Instant};

/// How long one creation or lookup may wait for its answer (a creation takes milliseconds
/// once JetStream answers: `jetstream_ready` waited for that).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one bucket or stream is tried before start-up fails on it.
const OPEN_LIMIT: Duration = Duration::from_secs(20);
/// Pause between tries.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// `fut`, or a timeout error after [`REQUEST_TIMEOUT`].
async fn bounded<T, E: std::fmt::Display>(fut: impl Future<Output = Result<T, E>>) -> Result<T, String> {
    match timeout(REQUEST_TIMEOUT, fut).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
    }
}

/// Create with `create`, else look up with `get`, until one succeeds or [`OPEN_LIMIT`]
/// passes.
async fn open<T, C, CF, G, GF>(what: &str, create: C, get: G) -> Result<T, BusError>
where
    C: Fn() -> CF,
    CF: Future<Output = Result<T, String>>,
    G: Fn() -> GF,
    GF: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + OPEN_LIMIT;
    loop {
        let create_err = match create().await {
            Ok(opened) => return Ok(opened),
            Err(e) => e,
        };
        let get_err = match get().await {
            Ok(opened) => {
                tracing::debug!(what, error = %create_err, "created by another node");
                return Ok(opened);
            }
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(BusError::Other(format!(
                "{what}: {create_err}; {get_err} \
                 (Switchboard needs nats-server 2.10 or later with JetStream enabled: -js)"
            )));
        }
        tracing::info!(what, create = %create_err, lookup = %get_err, "retrying to open");
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Create a key-value bucket, or open it if it exists.
pub(super) async fn open_bucket(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, BusError> {
    let bucket = config.bucket.clone();
    open(
        &format!("bucket {bucket}"),
        || bounded(js.create_key_value(config.clone())),
        || bounded(js.get_key_value(&bucket)),
    )
    .await
}

/// Create a stream, or update it (its limits) if it exists with another configuration.
async fn create_or_update(
    js: &jetstream::Context,
    config: &jetstream::stream::Config,
) -> Result<jetstream::stream::Stream, String> {
    match timeout(REQUEST_TIMEOUT, js.create_stream(config.clone())).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => match e.kind() {
            CreateStreamErrorKind::JetStream(err) if err.error_code() == ErrorCode::STREAM_NAME_EXIST => {
                bounded(js.update_stream(config.clone())).await?;
                bounded(js.get_stream(&config.name)).await
            }
            _ => Err(e.to_string()),
        },
        Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
    }
}

/// Create a log stream, or update its limits if it exists.
pub(super) async fn open_log(
    js: &jetstream::Context,
    config: jetstream::stream::Config,
) -> Result<jetstream::stream::Stream, BusError> {
    let name = config.name.clone();
    open(&format!("stream {name}"), || create_or_update(js, &config), || bounded(js.get_stream(&name))).await
}

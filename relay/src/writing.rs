//! Writing a session's outbound queue to its transport, also while the session handles a
//! client frame.
//!
//! A handler may wait on NATS (a join's presence record and announcement, a call, a history
//! append) for as long as NATS takes. Were nothing written meanwhile, a session receiving a
//! busy room would stop draining its queue for that long, overflow it and be closed as a slow
//! consumer while its client was reading as fast as it could ([`while_handling`]).

use crate::outbound::Outbound;
use crate::transport::{MediaTag, Outgoing, Transport};
use std::future::Future;
use std::time::Duration;

/// Frames written per wake-up of a session's writer: a burst costs one wake-up and one write
/// deadline, not one per frame.
pub const WRITE_BATCH: usize = 32;

/// Why writing stopped.
#[derive(Debug)]
pub enum WriteFailed {
    /// The transport failed.
    Transport(String),
    /// The client took nothing for the whole write deadline.
    TimedOut,
}

/// Write `batch` (drained), taken from `outbound`, within `deadline`; the tags of media
/// frames the transport dropped go to `dropped`. Runs to completion once started: a cancelled
/// write would lose frames. While it runs, `outbound` knows its writer waits on the client
/// ([`Outbound::set_writing`]: an overflow while it has been stuck in one write for
/// [`crate::outbound::SLOW_WRITE`] is the client's, not the node's).
pub async fn write_batch<T: Transport>(
    transport: &mut T,
    outbound: &Outbound,
    batch: &mut Vec<Outgoing>,
    dropped: &mut Vec<MediaTag>,
    deadline: Duration,
) -> Result<(), WriteFailed> {
    outbound.set_writing(true);
    let result = match tokio::time::timeout(deadline, transport.send_all(batch, dropped)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(WriteFailed::Transport(e.to_string())),
        Err(_) => Err(WriteFailed::TimedOut),
    };
    outbound.set_writing(false);
    batch.clear();
    result
}

/// Run `work` (handling a client frame) to completion while writing the frames queued on
/// `outbound` meanwhile, batch by batch. Writing pauses at a queued command or close (the
/// session's loop takes those once `work` is done) and stops at the first failed write,
/// which is returned beside `work`'s output: `work` is never cancelled midway (a half-done
/// join would leave its presence record behind).
pub async fn while_handling<T: Transport, R>(
    transport: &mut T,
    outbound: &Outbound,
    work: impl Future<Output = R>,
    dropped: &mut Vec<MediaTag>,
    deadline: Duration,
) -> (R, Result<(), WriteFailed>) {
    let mut work = std::pin::pin!(work);
    let mut written = Ok(());
    let mut writing = true;
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            biased;
            out = &mut work => return (out, written),
            ready = outbound.frames_ready(), if writing => {
                if !ready {
                    writing = false;
                    continue;
                }
                outbound.pop_frames(WRITE_BATCH, &mut batch);
                written = write_batch(transport, outbound, &mut batch, dropped, deadline).await;
                writing = written.is_ok();
            }
        }
    }
}

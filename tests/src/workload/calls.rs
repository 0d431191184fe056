//! 1:1 calls of the [workload](super): a caller invites its callee (whose member answers
//! when it rings), holds the call, ends it, and starts the next one, until stopped.

use super::member::Member;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchboard_client::pb::{CallMedia, CallState};
use switchboard_client::{ClientError, ErrorCode};
use tokio::sync::watch;

/// Longest wait for a call to be answered or ended (a party may be moving nodes).
const STATE_WAIT: Duration = Duration::from_secs(20);
/// Attempts to end a call whose end request failed in transit.
const END_ATTEMPTS: usize = 20;

/// One invitation the server acknowledged.
#[derive(Debug, Clone)]
pub struct Placed {
    /// The call's id.
    pub id: String,
    /// Index of the caller's member.
    pub caller: usize,
    /// Index of the callee's member.
    pub callee: usize,
    /// When it was acknowledged.
    pub invited: Instant,
    /// When the caller saw it accepted, if it did.
    pub accepted: Option<Instant>,
    /// When the caller's end request was answered (or found it over), if it was.
    pub ended: Option<Instant>,
}

/// The calls placed so far, shared with the drivers.
pub type Ledger = Arc<Mutex<Vec<Placed>>>;

/// Drive calls from `members[caller]` to `members[callee]` until `stop`; each call is held
/// for `hold` once answered. Invitations refused or lost in transit are counted in
/// `failed` and retried after a pause.
pub async fn drive(
    members: Arc<Vec<Member>>,
    caller: usize,
    callee: usize,
    hold: Duration,
    ledger: Ledger,
    stop: watch::Receiver<bool>,
) -> usize {
    let mut failed = 0;
    let stopper = stop.clone();
    let pause = |d: Duration| {
        let mut stop = stopper.clone();
        async move {
            let _ = tokio::time::timeout(d, stop.wait_for(|s| *s)).await;
        }
    };
    while !*stop.borrow() {
        let client = &members[caller].client;
        let id = match client.call_invite(&[members[callee].user.as_str()], CallMedia::Audio).await {
            Ok(id) => id,
            Err(_) => {
                failed += 1;
                pause(Duration::from_millis(500)).await;
                continue;
            }
        };
        let at = {
            let mut l = ledger.lock().unwrap_or_else(|e| e.into_inner());
            l.push(Placed { id: id.clone(), caller, callee, invited: Instant::now(), accepted: None, ended: None });
            l.len() - 1
        };
        let state = wait_state(&members[caller], &id, |s| s != CallState::Ringing).await;
        if state == Some(CallState::Accepted) {
            ledger.lock().unwrap_or_else(|e| e.into_inner())[at].accepted = Some(Instant::now());
            pause(hold).await;
        }
        if state != Some(CallState::Ended) {
            // Answered (end it) or still ringing (cancel it): either way it must end.
            finish(client, &id, state == Some(CallState::Accepted)).await;
        }
        ledger.lock().unwrap_or_else(|e| e.into_inner())[at].ended = Some(Instant::now());
        pause(Duration::from_millis(300)).await;
    }
    failed
}

/// End (or cancel) `id`, retrying requests lost in transit; done when the server says it
/// is over (`CALL_STATE` / `CALL_NOT_FOUND`: someone else ended it first).
async fn finish(client: &switchboard_client::ReconnectingClient, id: &str, answered: bool) {
    for _ in 0..END_ATTEMPTS {
        let result = if answered { client.call_end(id).await } else { client.call_cancel(id).await };
        match result {
            Ok(()) => return,
            Err(ClientError::Server { code: ErrorCode::CallState | ErrorCode::CallNotFound, .. }) if !answered => {
                // Answered meanwhile (end it instead), or already over.
                let _ = client.call_end(id).await;
                return;
            }
            Err(ClientError::Server { code: ErrorCode::CallState | ErrorCode::CallNotFound, .. }) => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// Wait (bounded) until `member` saw call `id` in a state `done` accepts.
async fn wait_state(member: &Member, id: &str, done: impl Fn(CallState) -> bool) -> Option<CallState> {
    let deadline = Instant::now() + STATE_WAIT;
    loop {
        let state = member.seen().calls.get(id).map(|c| c.state);
        if state.is_some_and(&done) || Instant::now() > deadline {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! The calls a [`ReconnectingClient`](super::ReconnectingClient) has seen, so that after a
//! reconnect it asks the node for the state of the live ones (`Hello.calls`) and never
//! hands the application a state older than one it already delivered.

use std::collections::BTreeMap;
use switchboard_protocol::pb::CallState;

/// Calls remembered at most (live ones first; ended ones only to drop stale repeats).
const MAX_CALLS: usize = 256;
/// Live calls resumed on a reconnect at most (the node looks at 16).
const MAX_RESUMED: usize = 16;

/// How far a call has got: later states never go back to earlier ones.
fn rank(state: CallState) -> u8 {
    match state {
        CallState::Unspecified => 0,
        CallState::Ringing => 1,
        CallState::Accepted | CallState::Rejected | CallState::Missed => 2,
        CallState::Ended => 3,
    }
}

/// Call id -> (rank of the furthest state delivered, order seen).
#[derive(Debug, Default)]
pub(super) struct CallStates {
    calls: BTreeMap<String, (u8, u64)>,
    next: u64,
}

impl CallStates {
    /// Record `state` of call `id`; `false` if it is older than one already delivered (a
    /// resumed state crossing a live event), so the event should be dropped.
    pub(super) fn advance(&mut self, id: &str, state: CallState) -> bool {
        let r = rank(state);
        if self.calls.get(id).is_some_and(|(seen, _)| r < *seen) {
            return false;
        }
        self.next += 1;
        self.calls.insert(id.to_owned(), (r, self.next));
        if self.calls.len() > MAX_CALLS {
            // Forget the oldest ended call, else the oldest call.
            let ended = self.calls.iter().filter(|(_, (r, _))| *r == 3).min_by_key(|(_, (_, at))| *at);
            let oldest = ended.or_else(|| self.calls.iter().min_by_key(|(_, (_, at))| *at));
            if let Some(key) = oldest.map(|(k, _)| k.clone()) {
                self.calls.remove(&key);
            }
        }
        true
    }

    /// The calls not ended yet, most recent first (at most 16).
    pub(super) fn live(&self) -> Vec<String> {
        let mut live: Vec<(&String, u64)> =
            self.calls.iter().filter(|(_, (r, _))| *r < 3).map(|(id, (_, at))| (id, *at)).collect();
        live.sort_by_key(|(_, at)| std::cmp::Reverse(*at));
        live.into_iter().take(MAX_RESUMED).map(|(id, _)| id.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_never_go_back_and_live_calls_are_resumed() {
        let mut c = CallStates::default();
        assert!(c.advance("a", CallState::Ringing));
        assert!(c.advance("a", CallState::Accepted));
        assert!(c.advance("b", CallState::Ringing));
        assert_eq!(c.live(), vec!["b".to_owned(), "a".to_owned()]);
        assert!(c.advance("a", CallState::Ended));
        assert!(!c.advance("a", CallState::Accepted), "a resumed ACCEPTED after ENDED is stale");
        assert!(c.advance("a", CallState::Ended), "a repeated end is delivered (idempotent)");
        assert_eq!(c.live(), vec!["b".to_owned()]);
    }

    #[test]
    fn bounded() {
        let mut c = CallStates::default();
        for i in 0..1000 {
            c.advance(&format!("c{i}"), CallState::Ended);
        }
        assert!(c.calls.len() <= MAX_CALLS);
    }
}

//! Churn: a share of the connections per minute is closed and reconnected (the member
//! resumes its room), as users dropping off and coming back do.

use super::fleet::{Fleet, Phase, Wake};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tries to find a connected member that is not in a call, per churn.
const PICK_TRIES: usize = 20;

/// Churn `percent_per_min` percent of the members a minute (jittered gaps) from `start`
/// while the run lasts. Members in a call are left alone (their call is measured).
pub async fn drive(fleet: Arc<Fleet>, percent_per_min: f64, start: Instant) {
    let n = fleet.slots.len();
    let per_sec = n as f64 * percent_per_min / 100.0 / 60.0;
    if per_sec <= 0.0 {
        return;
    }
    let gap = 1.0 / per_sec;
    let mut phase = fleet.phase.clone();
    let mut next = start + Duration::from_secs_f64(gap * rand::random_range(0.0..1.0));
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next.into()) => {}
            _ = phase.changed() => {}
        }
        if !matches!(fleet.phase(), Phase::Run(_)) {
            return;
        }
        next += Duration::from_secs_f64(gap * rand::random_range(0.5..1.5));
        let pick = (0..PICK_TRIES).map(|_| rand::random_range(0..n)).find(|&i| {
            let s = &fleet.slots[i];
            s.connected.load(Ordering::Relaxed) && !s.in_call.load(Ordering::Relaxed)
        });
        if let Some(i) = pick {
            fleet.tally.churns.inc();
            fleet.slots[i].wake(Wake::Churn);
        }
    }
}

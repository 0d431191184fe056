//! The participant cap, cluster-wide.
//!
//! Each node's view of a room lags joins on other nodes by a bus round trip, so a cap
//! checked against the view alone let concurrent joins on different nodes all pass. A
//! capped join takes a *seat* instead: the room's seats are one entry in the `Seats`
//! key-value bucket (JetStream KV `<prefix>_seats`, key = room), a map session → node,
//! changed only by compare-and-set, so of any joins racing for the last seat exactly one
//! wins. A seat is given back when its session leaves, when the reaper finds its node dead,
//! and, when the room looks full, seats of nodes that stopped heartbeating are dropped
//! first (a node that died between taking a seat and announcing the participant): the
//! count never leaks. Joins without a cap take no seat (the view still counts them).

use crate::bus::{Bucket, BusError};
use crate::context::NodeContext;
use crate::rooms::JoinError;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// Compare-and-set attempts of one seat change before giving up (`UNAVAILABLE`).
const ATTEMPTS: u32 = 64;

/// Seats this node's sessions hold: room → sessions.
#[derive(Default)]
pub(crate) struct Seats {
    held: Mutex<HashMap<String, HashSet<String>>>,
}

impl Seats {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<String>>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A seat taken for a join in progress: given back when dropped unless [`Seat::keep`] ran.
pub(crate) struct Seat {
    node: Weak<NodeContext>,
    room: String,
    session: String,
    kept: bool,
}

impl Seat {
    /// The join completed: the seat stays until the session leaves.
    pub(crate) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let Some(node) = self.node.upgrade() else { return };
        let (room, session) = (std::mem::take(&mut self.room), std::mem::take(&mut self.session));
        node.runtime.clone().spawn(async move { release(&node, &room, &session).await });
    }
}

type Map = BTreeMap<String, String>;

fn decode(value: &[u8]) -> Map {
    serde_json::from_slice(value).unwrap_or_default()
}

/// Change the room's seats with `change` (false: nothing to write) by compare-and-set.
async fn update(
    node: &NodeContext,
    room: &str,
    mut change: impl FnMut(&mut Map) -> Result<bool, JoinError>,
) -> Result<(), JoinError> {
    for attempt in 0..ATTEMPTS {
        let entry = node.bus.kv_get(Bucket::Seats, room).await?;
        let mut seats = entry.as_ref().map(|e| decode(&e.value)).unwrap_or_default();
        if !change(&mut seats)? {
            return Ok(());
        }
        let value = Bytes::from(serde_json::to_vec(&seats).map_err(|e| BusError::Other(e.to_string()))?);
        let written = match entry {
            Some(e) => node.bus.kv_update(Bucket::Seats, room, value, e.revision).await,
            None => node.bus.kv_create(Bucket::Seats, room, value).await,
        };
        match written {
            Ok(_) => return Ok(()),
            Err(BusError::Conflict(_)) => {
                // Lost a race: spread the retries of a crowd joining at once.
                let jitter = rand::random::<u64>() % (2 + u64::from(attempt.min(8)) * 4);
                tokio::time::sleep(Duration::from_millis(jitter)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(BusError::Unavailable(format!("room {room}: too many concurrent joins; retry")).into())
}

/// Take a seat in `room` for `session` under `cap` (`ROOM_FULL` when none is free).
pub(crate) async fn take(node: &Arc<NodeContext>, room: &str, session: &str, cap: usize) -> Result<Seat, JoinError> {
    let me = node.config.node_id.clone();
    update(node, room, |seats| {
        if seats.contains_key(session) {
            return Ok(false);
        }
        if seats.len() >= cap {
            let now = Instant::now();
            seats.retain(|_, owner| !node.node_is_dead(owner, now));
            if seats.len() >= cap {
                return Err(JoinError::Full { room: room.to_owned(), limit: cap });
            }
        }
        seats.insert(session.to_owned(), me.clone());
        Ok(true)
    })
    .await?;
    node.seats.lock().entry(room.to_owned()).or_default().insert(session.to_owned());
    Ok(Seat { node: Arc::downgrade(node), room: room.to_owned(), session: session.to_owned(), kept: false })
}

async fn remove(node: &NodeContext, room: &str, sessions: &[String]) {
    let r = update(node, room, |seats| {
        let before = seats.len();
        sessions.iter().for_each(|s| {
            seats.remove(s);
        });
        Ok(seats.len() != before)
    })
    .await;
    if let Err(e) = r {
        // The reaper or the next full join drops it once this node is gone; until then the
        // session is counted.
        tracing::warn!(room, error = %e, "giving back a seat failed");
    }
}

/// Give back `session`'s seat in `room`, if this node holds one for it.
pub(crate) async fn release(node: &NodeContext, room: &str, session: &str) {
    let held = {
        let mut seats = node.seats.lock();
        let held = seats.get_mut(room).is_some_and(|s| s.remove(session));
        if seats.get(room).is_some_and(HashSet::is_empty) {
            seats.remove(room);
        }
        held
    };
    if held {
        remove(node, room, &[session.to_owned()]).await;
    }
}

/// Give back the seats of participants the reaper found on dead nodes, in rooms this node
/// knows to be capped (it holds a seat there).
pub(crate) async fn release_dead(node: &NodeContext, stale: &[(String, String)]) {
    let mut by_room: HashMap<&str, Vec<String>> = HashMap::new();
    {
        let seats = node.seats.lock();
        for (room, session) in stale {
            if seats.contains_key(room) {
                by_room.entry(room).or_default().push(session.clone());
            }
        }
    }
    for (room, sessions) in by_room {
        remove(node, room, &sessions).await;
    }
}

/// Record this node's seats again (after the bus lost its in-memory buckets), whatever the
/// cap: these sessions are already in.
pub(crate) async fn restore(node: &NodeContext) {
    let held: Vec<(String, Vec<String>)> =
        node.seats.lock().iter().map(|(room, s)| (room.clone(), s.iter().cloned().collect())).collect();
    let me = node.config.node_id.clone();
    for (room, sessions) in held {
        let r = update(node, &room, |seats| {
            let before = seats.len();
            sessions.iter().for_each(|s| {
                seats.insert(s.clone(), me.clone());
            });
            Ok(seats.len() != before)
        })
        .await;
        if let Err(e) = r {
            tracing::warn!(room, error = %e, "restoring seats failed");
        }
    }
}

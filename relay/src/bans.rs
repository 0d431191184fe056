//! Operator bans: cluster-wide, broadcast with the kick that starts them and kept in the
//! bus's `Bans` bucket, so nodes started during a ban know it.

use crate::bus::{Bucket, BusError};
use crate::context::NodeContext;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use switchboard_protocol::now_ms;

/// Bans remembered at most (the oldest-ending go first beyond it).
const MAX_BANS: usize = 100_000;

/// The bans this node knows: user -> end of the ban (Unix ms).
#[derive(Default)]
pub(crate) struct Bans(Mutex<HashMap<String, u64>>);

impl Bans {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The end of `user`'s ban (Unix ms), if banned now.
pub(crate) fn banned_until(node: &NodeContext, user: &str) -> Option<u64> {
    let mut bans = node.bans.lock();
    match bans.get(user) {
        Some(&until) if until > now_ms() => Some(until),
        Some(_) => {
            bans.remove(user);
            None
        }
        None => None,
    }
}

/// Remember a ban on this node.
pub(crate) fn ban(node: &NodeContext, user: &str, until_ms: u64) {
    let mut bans = node.bans.lock();
    if bans.len() >= MAX_BANS {
        let now = now_ms();
        bans.retain(|_, until| *until > now);
        if bans.len() >= MAX_BANS {
            if let Some(first) = bans.iter().min_by_key(|(_, until)| **until).map(|(u, _)| u.clone()) {
                bans.remove(&first);
            }
        }
    }
    bans.insert(user.to_owned(), until_ms);
}

/// Store a ban in the bus so nodes that start during it know it.
pub(crate) async fn store_ban(node: &NodeContext, user: &str, until_ms: u64) -> Result<(), BusError> {
    node.bus.kv_put(Bucket::Bans, user, Bytes::from(until_ms.to_string())).await.map(|_| ())
}

/// Load the bans in force from the bus (at start).
pub(crate) async fn load_bans(node: &NodeContext) -> Result<usize, BusError> {
    let now = now_ms();
    let mut loaded = 0;
    for user in node.bus.kv_keys(Bucket::Bans).await? {
        let Some(entry) = node.bus.kv_get(Bucket::Bans, &user).await? else { continue };
        let until = std::str::from_utf8(&entry.value).ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        if until > now {
            ban(node, &user, until);
            loaded += 1;
        }
    }
    Ok(loaded)
}

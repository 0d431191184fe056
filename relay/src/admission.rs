//! Admission control: caps on open connections per IP address and sessions per user on
//! this node, and operator bans (cluster-wide: broadcast with the kick that starts them and
//! kept in the bus's `Bans` bucket, so nodes started during a ban know it).

use crate::bus::{Bucket, BusError};
use crate::node::Node;
use bytes::Bytes;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use switchboard_protocol::now_ms;

/// Bans remembered at most (the oldest-ending go first beyond it).
const MAX_BANS: usize = 100_000;

#[derive(Default)]
pub(crate) struct Admission {
    by_ip: Mutex<HashMap<IpAddr, usize>>,
    by_user: Mutex<HashMap<String, usize>>,
    bans: Mutex<HashMap<String, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Take one slot of `key` in `map` unless `cap` (non-zero) slots are taken.
fn take<K: std::hash::Hash + Eq + Clone>(map: &Mutex<HashMap<K, usize>>, key: &K, cap: usize) -> bool {
    let mut map = lock(map);
    let n = map.entry(key.clone()).or_insert(0);
    if cap > 0 && *n >= cap {
        if *n == 0 {
            map.remove(key);
        }
        return false;
    }
    *n += 1;
    true
}

fn give_back<K: std::hash::Hash + Eq>(map: &Mutex<HashMap<K, usize>>, key: &K) {
    let mut map = lock(map);
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// A connection's hold on its IP address's slot; released on drop.
pub(crate) struct IpSlot {
    node: Arc<Node>,
    ip: Option<IpAddr>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            give_back(&self.node.admission.by_ip, &ip);
        }
    }
}

/// A session's hold on its user's slot; released on drop.
pub(crate) struct UserSlot {
    node: Arc<Node>,
    user: String,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        give_back(&self.node.admission.by_user, &self.user);
    }
}

/// Admit a connection from `ip`, or `None` when the IP has its cap of connections.
pub(crate) fn enter_ip(node: &Arc<Node>, ip: Option<IpAddr>) -> Option<IpSlot> {
    if let Some(addr) = ip {
        if !take(&node.admission.by_ip, &addr, node.config.max_connections_per_ip) {
            return None;
        }
    }
    Some(IpSlot { node: node.clone(), ip })
}

/// Admit a session of `user`, or `None` when the user has its cap of sessions here.
pub(crate) fn enter_user(node: &Arc<Node>, user: &str) -> Option<UserSlot> {
    take(&node.admission.by_user, &user.to_owned(), node.config.max_sessions_per_user)
        .then(|| UserSlot { node: node.clone(), user: user.to_owned() })
}

/// The end of `user`'s ban (Unix ms), if banned now.
pub(crate) fn banned_until(node: &Node, user: &str) -> Option<u64> {
    let mut bans = lock(&node.admission.bans);
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
pub(crate) fn ban(node: &Node, user: &str, until_ms: u64) {
    let mut bans = lock(&node.admission.bans);
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
pub(crate) async fn store_ban(node: &Node, user: &str, until_ms: u64) -> Result<(), BusError> {
    node.bus.kv_put(Bucket::Bans, user, Bytes::from(until_ms.to_string())).await.map(|_| ())
}

/// Load the bans in force from the bus (at start).
pub(crate) async fn load_bans(node: &Node) -> Result<usize, BusError> {
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

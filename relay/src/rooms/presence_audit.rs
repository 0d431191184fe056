//! The presence audit: every so often a node checks that the presence store holds exactly
//! its local participants' records, and repairs what differs.
//!
//! The repairs after a heal or a reconnect ([`crate::heal`]) run once, when something
//! visibly happened. A store can also lose acknowledged writes with nothing to show for it:
//! after a NATS split healed, a JetStream replica catching up (`Expected first catchup
//! entry to be a snapshot and peerstate` in its log) left the bucket without 13 of 19
//! records for good, although every node's writes had been acknowledged and their own
//! checks right after had found them (RELIABILITY.md, partitions (b)). A node that joined a
//! room later would not have seen those participants. So each node audits its own part:
//!
//! - one pass over the store lists this node's records ([`crate::bus::Bus::presence_of_node`]),
//!   between two snapshots of its local participants (before and after the pass);
//! - **missing** (a participant local in both snapshots without a record, or with a record
//!   of another node) and **wrong** (a record with another value) are written again, under
//!   the room's join/leave lock and only if the session is still a local member: a leave
//!   holds that lock while it removes its record, so the audit never puts back a session
//!   that left;
//! - **stale** (a record of this node with no local participant in either snapshot, in two
//!   rounds in a row: a join writes its record before the session becomes a member, so a
//!   record seen once may be a join in progress) is removed, under the room's lock if the
//!   room is open here. A session that rejoined the room at that moment (the same session id
//!   again) would lose its record until the next round writes it back as missing.
//!
//! At most [`MAX_REPAIRS`] writes a round, [`WRITES_IN_FLIGHT`] at a time; the rest waits for
//! the next round. Rounds are skipped while the node is cut off from the bus or a repair
//! after a heal or reconnect is running (that one writes every record anyway).
//!
//! **Cost.** Records are keyed by room and session, not by node, so a pass reads the whole
//! store: every record crosses from NATS to the node once (about 150 bytes with its subject
//! and delivery headers; one ordered consumer, no request per record) and is decoded; the
//! node compares in memory. Rounds are at least `presence_audit_interval` apart (10 s by
//! default, ± a quarter of jitter so the nodes do not read together) and at least one
//! second per [`RECORDS_PER_SEC`] records read: at 100,000 connections over 4 nodes (about
//! 100,000 records, 25,000 per node) a round reads ~15 MB in ~0.5 s and comes every ~50 s,
//! ~300 KB/s per node, ~1.2 MB/s from NATS for the 4; with a few hundred records, every
//! 10 s. Writes only for what differs: none when the store is right.

use super::Room;
use crate::bus::BusError;
use crate::context::NodeContext;
use crate::metrics::KindLabel;
use futures_util::StreamExt;
use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;
use switchboard_protocol::pb::Participant;
use tokio::time::Instant;

/// Records read per second on average over the rounds: a larger store stretches the
/// interval (see the module's cost note).
const RECORDS_PER_SEC: f64 = 2_000.0;
/// Writes (puts and removals) of one round at most.
const MAX_REPAIRS: usize = 4_096;
/// Writes of a round in flight at once (as the repair after a heal).
const WRITES_IN_FLIGHT: usize = 32;

/// A record's key: (room, session).
type Key = (String, String);

/// Audit this node's presence records until the node is gone (every
/// `presence_audit_interval`, jittered; never if it is zero).
pub(crate) async fn run(weak: Weak<NodeContext>) {
    let Some(base) = weak.upgrade().map(|n| n.config.presence_audit_interval) else { return };
    if base.is_zero() {
        return;
    }
    let mut stale_before = HashSet::new();
    let mut wait = base;
    loop {
        let jitter = rand::rng().random_range(0.75..1.25);
        tokio::time::sleep(wait.mul_f64(jitter)).await;
        let Some(node) = weak.upgrade() else { return };
        wait = base;
        if node.cut_off(Instant::now()) || node.heal.store_repair_running() {
            continue;
        }
        match audit(&node, &mut stale_before).await {
            Ok(Round { scanned, truncated: false }) => {
                wait = base.max(Duration::from_secs_f64(scanned as f64 / RECORDS_PER_SEC));
            }
            Ok(Round { truncated: true, .. }) => {}
            Err(e) => tracing::debug!(error = %e, "presence audit skipped (store not answering)"),
        }
    }
}

/// What a round did.
struct Round {
    /// Records read.
    scanned: usize,
    /// More to repair than one round writes.
    truncated: bool,
}

enum Repair {
    /// Write the local participant's record again (`missing` or `wrong`).
    Put(&'static str, String, String),
    /// Remove a record of this node without a local participant.
    Remove(String, String),
}

/// This node's local participants, by (room, session).
fn local_records(node: &NodeContext) -> HashMap<Key, Participant> {
    let mut out = HashMap::new();
    for room in node.rooms.all() {
        let st = room.lock();
        for session in st.local.keys() {
            if let Some(p) = st.view.get(session) {
                out.insert((room.id.clone(), session.clone()), p.clone());
            }
        }
    }
    out
}

/// One audit round: compare, then repair. `stale_before` holds the stale records of the
/// previous round (a record is removed when stale twice in a row).
async fn audit(node: &Arc<NodeContext>, stale_before: &mut HashSet<Key>) -> Result<Round, BusError> {
    let before = local_records(node);
    let scan = node.bus.presence_of_node(&node.config.node_id).await?;
    let after = local_records(node);
    let stored: HashMap<Key, Participant> =
        scan.records.into_iter().map(|(room, p)| ((room, p.session.clone()), p)).collect();
    let mut repairs = Vec::new();
    for (key, p) in &after {
        if !before.contains_key(key) {
            continue; // joined during the pass: its record may be newer than the pass
        }
        match stored.get(key) {
            None => repairs.push(Repair::Put("missing", key.0.clone(), key.1.clone())),
            Some(s) if s != p => repairs.push(Repair::Put("wrong", key.0.clone(), key.1.clone())),
            Some(_) => {}
        }
    }
    let stale: HashSet<Key> =
        stored.into_keys().filter(|k| !before.contains_key(k) && !after.contains_key(k)).collect();
    repairs
        .extend(stale.intersection(stale_before).map(|(room, session)| Repair::Remove(room.clone(), session.clone())));
    *stale_before = stale;
    let truncated = repairs.len() > MAX_REPAIRS;
    repairs.truncate(MAX_REPAIRS);
    if repairs.is_empty() {
        return Ok(Round { scanned: scan.scanned, truncated });
    }
    let done: Vec<&'static str> = futures_util::stream::iter(repairs)
        .map(|r| repair(node, r))
        .buffer_unordered(WRITES_IN_FLIGHT)
        .filter_map(|kind| async move { kind })
        .collect()
        .await;
    let mut counts: HashMap<&'static str, u64> = HashMap::new();
    for kind in done {
        *counts.entry(kind).or_default() += 1;
    }
    for (kind, n) in &counts {
        node.metrics.presence_store_repairs.get_or_create(&KindLabel { kind }).inc_by(*n);
    }
    let count = |k| counts.get(k).copied().unwrap_or(0);
    if !counts.is_empty() {
        tracing::info!(
            missing = count("missing"),
            wrong = count("wrong"),
            stale = count("stale"),
            scanned = scan.scanned,
            "presence audit repaired this node's records in the store"
        );
    }
    Ok(Round { scanned: scan.scanned, truncated })
}

/// Carry out one repair; its kind if a write was made.
async fn repair(node: &Arc<NodeContext>, repair: Repair) -> Option<&'static str> {
    match repair {
        Repair::Put(kind, room_id, session) => {
            let room = node.rooms.get(&room_id)?;
            let _ops = room.ops.lock().await;
            let current = current_participant(&room, &session)?;
            match node.bus.presence_put(&room_id, &current).await {
                Ok(()) => Some(kind),
                Err(e) => {
                    tracing::warn!(room = room_id, session, error = %e, "presence audit: writing a record failed");
                    None
                }
            }
        }
        Repair::Remove(room_id, session) => {
            let room = node.rooms.get(&room_id);
            let _ops = match &room {
                Some(r) => Some(r.ops.lock().await),
                None => None,
            };
            if room.as_ref().is_some_and(|r| r.lock().local.contains_key(&session)) {
                return None; // a member again (joined meanwhile)
            }
            match node.bus.presence_remove(&room_id, &session).await {
                Ok(()) => Some("stale"),
                Err(e) => {
                    tracing::warn!(room = room_id, session, error = %e, "presence audit: removing a record failed");
                    None
                }
            }
        }
    }
}

/// The record a local member of an open room should have, if it still is one.
fn current_participant(room: &Room, session: &str) -> Option<Participant> {
    let st = room.lock();
    if st.closed || !st.local.contains_key(session) {
        return None;
    }
    st.view.get(session).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Bus, LocalBus};

    fn participant(node: &str, session: &str) -> Participant {
        Participant { user: format!("u-{session}"), session: session.into(), node: node.into(), ..Default::default() }
    }

    /// A record removed behind the node's back comes back; a stale one of its own goes after
    /// two rounds; other nodes' records are left alone.
    #[tokio::test]
    async fn repairs_missing_and_stale_records() {
        let bus = Arc::new(LocalBus::new());
        let config = crate::RelayConfig { node_id: "n1".into(), ..Default::default() };
        let verifier = crate::Verifier::new(&crate::VerifyKey::Hmac(vec![7; 32]), 5).unwrap();
        let subjects = switchboard_protocol::subject::Subjects::new("sb").unwrap();
        let node = Arc::new(NodeContext::new(config, verifier, bus.clone(), subjects));
        let outbound = Arc::new(crate::outbound::Outbound::new(Default::default()));
        let member = crate::rooms::Member { user: "u-s1".into(), outbound, floor: 0 };
        let p = participant("n1", "s1");
        crate::rooms::join(
            &node,
            "r",
            crate::rooms::JoinRequest {
                participant: p.clone(),
                member,
                ref_id: 1,
                resume_from: None,
                max_participants: 0,
            },
        )
        .await
        .unwrap();
        bus.presence_remove("r", "s1").await.unwrap();
        bus.presence_put("r", &participant("n1", "gone")).await.unwrap();
        bus.presence_put("r", &participant("n2", "other")).await.unwrap();
        let mut stale = HashSet::new();
        audit(&node, &mut stale).await.unwrap();
        let sessions = |list: Vec<Participant>| {
            let mut s: Vec<String> = list.into_iter().map(|p| p.session).collect();
            s.sort();
            s
        };
        assert_eq!(sessions(bus.presence_list("r").await.unwrap()), ["gone", "other", "s1"]);
        audit(&node, &mut stale).await.unwrap();
        assert_eq!(sessions(bus.presence_list("r").await.unwrap()), ["other", "s1"]);
        let repairs = |kind| node.metrics.presence_store_repairs.get_or_create(&KindLabel { kind }).get();
        assert_eq!((repairs("missing"), repairs("stale")), (1, 1));
    }
}

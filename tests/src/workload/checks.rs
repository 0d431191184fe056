//! What the [workload](super) must show after the cluster changed under it.

use super::calls::Placed;
use super::member::Member;
use super::Acked;
use std::collections::{BTreeMap, HashSet};
use switchboard_client::pb::{CallOutcome, CallState};

/// Whether `payload` (`<user>:<seq>`) was published by `member` (a node does not echo a
/// session's own messages to it, so those are not expected back; a replay after a
/// reconnect may bring them, once).
fn own(member: &Member, payload: &[u8]) -> bool {
    payload.strip_prefix(member.user.as_bytes()).is_some_and(|rest| rest.first() == Some(&b':'))
}

/// Every acknowledged reliable message of a room reached every other member of it exactly
/// once, in the room's order (offsets strictly increasing), with its payload; nothing
/// reached a member twice (not even messages whose publish was not acknowledged). `Ok`:
/// deliveries checked (acknowledged messages × the other members of their room).
pub fn messages(members: &[Member], acked: &Acked) -> Result<usize, String> {
    let acked = acked.lock().unwrap_or_else(|e| e.into_inner());
    let mut checked = 0;
    for m in members {
        let seen = m.seen();
        let mut last = 0;
        let mut payloads = HashSet::new();
        for (offset, payload) in &seen.messages {
            if *offset <= last {
                return Err(format!(
                    "{}: offset {offset} after {last} in {} (duplicate or out of order)",
                    m.user, m.room
                ));
            }
            last = *offset;
            if !payloads.insert(payload.clone()) {
                return Err(format!("{}: {payload:?} delivered twice in {}", m.user, m.room));
            }
        }
        let got: BTreeMap<u64, &bytes::Bytes> = seen.messages.iter().map(|(o, p)| (*o, p)).collect();
        for (offset, payload) in acked.get(&m.room).into_iter().flatten().filter(|(_, p)| !own(m, p)) {
            match got.get(offset) {
                Some(p) if *p == payload => checked += 1,
                Some(p) => {
                    return Err(format!(
                        "{}: offset {offset} in {} is {p:?}, acknowledged as {payload:?}",
                        m.user, m.room
                    ))
                }
                None => {
                    return Err(format!(
                        "{}: acknowledged {payload:?} (offset {offset}) of {} never arrived",
                        m.user, m.room
                    ))
                }
            }
        }
        if seen.history_gaps > 0 {
            return Err(format!("{}: {} rejoins reported a history gap", m.user, seen.history_gaps));
        }
    }
    Ok(checked)
}

/// Whether every acknowledged message has reached every member of its room (what
/// [`messages`] then checks in full).
pub fn messages_arrived(members: &[Member], acked: &Acked) -> bool {
    let acked = acked.lock().unwrap_or_else(|e| e.into_inner());
    members.iter().all(|m| {
        let seen = m.seen();
        let got: HashSet<u64> = seen.messages.iter().map(|(o, _)| *o).collect();
        acked.get(&m.room).into_iter().flatten().all(|(o, p)| own(m, p) || got.contains(o))
    })
}

/// Every member's view of its room is exactly the members' current sessions (no ghost, no
/// one missing). `Err` names the first difference.
pub fn presence(members: &[Member]) -> Result<(), String> {
    let mut expected: BTreeMap<&str, BTreeMap<String, String>> = BTreeMap::new();
    for m in members {
        expected.entry(m.room.as_str()).or_default().insert(m.client.session_id(), m.user.clone());
    }
    for m in members {
        let want = &expected[m.room.as_str()];
        let view = m.seen().view.clone();
        if &view != want {
            let ghosts: Vec<_> = view.iter().filter(|(s, _)| !want.contains_key(*s)).collect();
            let missing: Vec<_> = want.iter().filter(|(s, _)| !view.contains_key(*s)).collect();
            let nodes: Vec<String> = members
                .iter()
                .filter(|o| o.room == m.room)
                .map(|o| format!("{}@{}/{}", o.user, o.seen().node, o.client.session_id()))
                .collect();
            return Err(format!(
                "{} sees {}: ghosts {ghosts:?}, missing {missing:?} (members {nodes:?})",
                m.user, m.room
            ));
        }
    }
    Ok(())
}

/// What the calls came to.
#[derive(Debug, Default, Clone, Copy)]
pub struct CallReport {
    /// Invitations acknowledged.
    pub placed: usize,
    /// Calls answered and completed (both parties saw `ENDED(COMPLETED)`).
    pub completed: usize,
    /// Calls that ended `OFFLINE` (the callee had no connected device: it was moving).
    pub offline: usize,
    /// Calls that ended otherwise (missed, cancelled), consistently at both parties.
    pub other: usize,
}

/// Every acknowledged call ended, and both parties saw the same end: the caller saw
/// `ENDED`; the callee saw the same `ENDED` outcome, or nothing at all when it was
/// offline (`ENDED(OFFLINE)`).
pub fn calls(members: &[Member], placed: &[Placed]) -> Result<CallReport, String> {
    let mut report = CallReport { placed: placed.len(), ..Default::default() };
    for p in placed {
        let caller = members[p.caller].seen().calls.get(&p.id).copied();
        let callee = members[p.callee].seen().calls.get(&p.id).copied();
        let who = format!("call {} ({} -> {})", p.id, members[p.caller].user, members[p.callee].user);
        let Some(caller) = caller.filter(|c| c.state == CallState::Ended) else {
            return Err(format!("{who}: the caller's last state is {caller:?}, not ENDED"));
        };
        match callee {
            None if caller.outcome == CallOutcome::Offline => {}
            Some(c) if c == caller => {}
            other => return Err(format!("{who}: the caller saw {caller:?}, the callee {other:?}")),
        }
        if caller.outcome == CallOutcome::Completed {
            report.completed += 1;
        } else if caller.outcome == CallOutcome::Offline {
            report.offline += 1;
        } else {
            report.other += 1;
        }
    }
    Ok(report)
}

/// Whether every placed call has reached `ENDED` at both parties (or the callee never
/// heard of it): what [`calls`] then checks in full.
pub fn calls_settled(members: &[Member], placed: &[Placed]) -> bool {
    placed.iter().all(|p| {
        let ended = |m: usize| members[m].seen().calls.get(&p.id).map(|c| c.state == CallState::Ended);
        ended(p.caller) == Some(true) && ended(p.callee) != Some(false)
    })
}

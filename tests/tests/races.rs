//! Known cluster races, each shown fixed over real nodes and a real nats-server (a 3-server
//! JetStream cluster where the race is between nodes):
//!
//! - the participant cap holds cluster-wide under concurrent joins on different nodes, and
//!   its seats come back on leave and when a node dies (no leak);
//! - a call's history record survives the death of the node that ended the call before it
//!   appended the record (another node re-drives it from the calls bucket);
//! - an invitation is answered at once even when a node holding the callee's inbox does
//!   not answer the ring (it used to wait up to 3 s).

use futures_util::StreamExt;
use std::time::Duration;
use switchboard_protocol::pb::{
    client_frame, server_frame, CallAnswer, CallEnd, CallEvent, CallInvite, CallMedia, CallOutcome, CallState,
    PartyStatus,
};
use switchboard_protocol::ErrorCode;
use switchboard_tests::raw::RawWs;
use switchboard_tests::{token, wait_for, within, NatsCluster, NodeOptions, TestNode, WAIT};

/// A raw WebSocket peer that keeps the frames a wait skipped.
struct Peer {
    ws: RawWs,
    backlog: std::collections::VecDeque<server_frame::Kind>,
}

impl Peer {
    async fn new(node: &TestNode, user: &str, rooms: &[&str]) -> Self {
        let (ws, _) = RawWs::authenticated(&node.ws_url(), &token(user, rooms)).await;
        Self { ws, backlog: Default::default() }
    }

    async fn send(&mut self, id: u64, kind: client_frame::Kind) {
        self.ws.send(id, kind).await;
    }

    /// The first frame (backlog first) that `pick` accepts; others stay in the backlog.
    async fn until<T>(&mut self, what: &str, mut pick: impl FnMut(&server_frame::Kind) -> Option<T>) -> T {
        if let Some(i) = self.backlog.iter().position(|f| pick(f).is_some()) {
            let f = self.backlog.remove(i).expect("index in range");
            return pick(&f).expect("picked before");
        }
        within(WAIT, what, async {
            loop {
                let f = self.ws.frame().await;
                match pick(&f) {
                    Some(v) => return v,
                    None => self.backlog.push_back(f),
                }
            }
        })
        .await
    }

    /// The reply to request `id`: Ok(ack) or Err(error code).
    async fn reply(&mut self, id: u64) -> Result<switchboard_protocol::pb::Ack, ErrorCode> {
        self.until(&format!("reply to {id}"), |f| match f {
            server_frame::Kind::Ack(a) if a.ref_id == id => Some(Ok(a.clone())),
            server_frame::Kind::Error(e) if e.ref_id == id => Some(Err(e.code())),
            _ => None,
        })
        .await
    }

    /// Join `room`: Ok once `Joined` arrives, or the error code.
    async fn join(&mut self, id: u64, room: &str) -> Result<(), ErrorCode> {
        let join = switchboard_protocol::pb::Join { room: room.into(), resume_from: None };
        self.send(id, client_frame::Kind::Join(join)).await;
        self.until(&format!("join {room}"), |f| match f {
            server_frame::Kind::Joined(j) if j.ref_id == id => Some(Ok(())),
            server_frame::Kind::Error(e) if e.ref_id == id => Some(Err(e.code())),
            _ => None,
        })
        .await
    }

    async fn call_event(&mut self, call: &str, state: CallState) -> CallEvent {
        self.until(&format!("call event {state:?}"), |f| match f {
            server_frame::Kind::Call(e) if e.state() == state && e.call.as_ref().is_some_and(|c| c.id == call) => {
                Some(e.clone())
            }
            _ => None,
        })
        .await
    }
}

fn invite(callees: &[&str]) -> client_frame::Kind {
    client_frame::Kind::CallInvite(CallInvite {
        callees: callees.iter().map(|c| c.to_string()).collect(),
        media: CallMedia::Audio as i32,
    })
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A node that holds a callee's inbox and answers its ring late (a stalled or cut-off node,
/// as the ringing node sees it) does not hold up the caller's answer. Shown by order, not by
/// time: carol's only "device" is a plain NATS client that answers her ring only after the
/// caller has the answer to the invitation, and bob, a real device on another node rung in
/// the same invitation, accepts as soon as he rings. The caller has its invitation
/// acknowledged before bob has the acknowledgement of his acceptance (which takes the ring,
/// bob's answer and a compare-and-set across nodes), and carol is still ringing (her late
/// answer did no harm). Before the fix the invitation waited for every ring: bob accepted
/// and was acknowledged while the caller waited, until carol's ring request timed out (3 s).
#[tokio::test]
async fn an_invite_is_answered_before_a_silent_node_answers_the_ring() {
    let nats = NatsCluster::start(3).await;
    let opts = |id: &str, server: usize| NodeOptions {
        nats_url: Some(nats.servers[server].url()),
        node_id: Some(id.into()),
        args: args(&["--call-ring-timeout", "30"]),
        ..Default::default()
    };
    let (n1, n2) = tokio::join!(TestNode::start(opts("alpha", 0)), TestNode::start(opts("beta", 1)));
    let mut alice = Peer::new(&n1, "alice", &["lobby"]).await;
    let mut bob = Peer::new(&n2, "bob", &["lobby"]).await;

    // Carol's inbox is held only by the silent client on the third server.
    let silent = async_nats::connect(nats.servers[2].url()).await.expect("connecting to NATS");
    let mut rings = silent.subscribe("sb.user.carol").await.expect("subscribing");
    silent.flush().await.expect("flush");

    // Who has the answer to their request first: the caller (invitation) or bob (acceptance).
    let order = std::sync::atomic::AtomicUsize::new(0);
    alice.send(4, invite(&["bob", "carol"])).await;
    let caller = async {
        alice.reply(4).await.expect("invite acked");
        let place = order.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Only now does carol's device answer its ring.
        let ring = within(WAIT, "carol's ring", rings.next()).await.expect("ring request");
        let reply = ring.reply.expect("a ring is a request");
        silent.publish(reply, "1".into()).await.expect("answering the ring");
        silent.flush().await.expect("flush");
        let accepted = alice
            .until("bob's acceptance", |f| match f {
                server_frame::Kind::Call(e) if e.state() == CallState::Accepted => e.call.clone(),
                _ => None,
            })
            .await;
        (place, accepted)
    };
    let callee = async {
        let call = bob
            .until("bob rung", |f| match f {
                server_frame::Kind::Call(e) if e.state() == CallState::Ringing => e.call.as_ref().map(|c| c.id.clone()),
                _ => None,
            })
            .await;
        bob.send(5, client_frame::Kind::CallAnswer(CallAnswer { call, accept: true })).await;
        bob.reply(5).await.expect("answer acked");
        order.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    };
    let ((caller_place, accepted), callee_place) = tokio::join!(caller, callee);
    assert_eq!(
        (caller_place, callee_place),
        (0, 1),
        "the invitation was answered only after its callees' rings (bob's acceptance was acknowledged first)"
    );
    let carol = accepted.parties.into_iter().find(|p| p.user == "carol");
    assert_eq!(carol.map(|p| p.status()), Some(PartyStatus::Ringing), "carol, who answered her ring, still rings");
}

/// The node that ended a call dies before appending its history records (a test-only crash
/// point aborts it right after the ending write, as `kill -9` would): another node
/// re-drives the records from the calls bucket, so each party's history holds the call
/// exactly once, and the other party hears that the call ended.
#[tokio::test]
async fn a_call_ended_by_a_node_that_dies_is_still_recorded_once() {
    let nats = NatsCluster::start(3).await;
    let opts = |id: &str, server: usize, env: &[(&str, &str)]| NodeOptions {
        nats_url: Some(nats.servers[server].url()),
        node_id: Some(id.into()),
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        args: args(&["--call-ring-timeout", "30"]),
        ..Default::default()
    };
    let crash = [("SWITCHBOARD_TEST_CRASH_BEFORE_HISTORY_APPEND", "1")];
    let (alpha, mut beta) =
        tokio::join!(TestNode::start(opts("alpha", 0, &[])), TestNode::start(opts("beta", 1, &crash)));
    let mut alice = Peer::new(&alpha, "alice", &["lobby"]).await;
    let mut bob = Peer::new(&beta, "bob", &["lobby"]).await;

    alice.send(2, invite(&["bob"])).await;
    let call = alice.reply(2).await.expect("invite acked").call;
    bob.call_event(&call, CallState::Ringing).await;
    bob.send(3, client_frame::Kind::CallAnswer(CallAnswer { call: call.clone(), accept: true })).await;
    bob.reply(3).await.expect("answer acked");
    alice.call_event(&call, CallState::Accepted).await;
    // Bob hangs up on beta: beta ends the call in the bucket and dies before recording it.
    bob.send(4, client_frame::Kind::CallEnd(CallEnd { call: call.clone() })).await;
    let exit = beta.wait_exit(WAIT).await;
    assert_eq!(exit, None, "beta died of a signal at the crash point");

    // Alpha re-drives (after a grace period, and after the queue's redelivery time if beta
    // had taken the change): each party's history gets the call, once.
    let records = |user: &'static str| {
        let (alpha, call) = (&alpha, &call);
        async move {
            let path = format!("/api/calls?user={user}");
            let (status, body) = alpha.admin(Some(&token(user, &["lobby"])), &path, None).await;
            assert_eq!(status, 200, "{body}");
            let mine: Vec<serde_json::Value> =
                body["calls"].as_array().expect("calls").iter().filter(|c| c["id"] == **call).cloned().collect();
            mine
        }
    };
    for user in ["alice", "bob"] {
        wait_for(Duration::from_secs(30), &format!("{user}'s call record"), || async {
            Some(records(user).await).filter(|r| !r.is_empty())
        })
        .await;
    }
    // The ENDED event goes out after the records are written; then the call is settled.
    let ended = alice.call_event(&call, CallState::Ended).await;
    assert_eq!(ended.call.map(|c| c.outcome), Some(CallOutcome::Completed as i32));
    for user in ["alice", "bob"] {
        let mine = records(user).await;
        assert_eq!(mine.len(), 1, "{user}'s history holds the call exactly once: {mine:?}");
        assert_eq!(mine[0]["outcome"].as_str(), Some("completed"), "{mine:?}");
    }
    assert_eq!(alpha.metric("switchboard_call_history_redriven_total").await, 1.0, "one call re-driven");
}

/// Concurrent joins on three nodes against a cap of 3: never more than 3 in, and exactly 3
/// (the losers of a race retry, they are not refused while a seat is free). A seat comes
/// back when its member leaves, and when its node is killed (after the node timeout).
#[tokio::test]
async fn the_participant_cap_holds_cluster_wide() {
    const CAP: usize = 3;
    const PER_NODE: usize = 4;
    const ROUNDS: usize = 4;
    let nats = NatsCluster::start(3).await;
    let opts = |id: &str, server: usize| NodeOptions {
        nats_url: Some(nats.servers[server].url()),
        node_id: Some(id.into()),
        args: args(&["--max-participants", &CAP.to_string(), "--node-timeout", "3"]),
        ..Default::default()
    };
    let (n1, n2, n3) = tokio::join!(
        TestNode::start(opts("alpha", 0)),
        TestNode::start(opts("beta", 1)),
        TestNode::start(opts("gamma", 2))
    );
    let mut nodes = [n1, n2, n3];
    let rooms: Vec<String> = (0..ROUNDS).map(|r| format!("cap{r}")).collect();
    let room_refs: Vec<&str> = rooms.iter().map(String::as_str).collect();
    let mut in_rooms = Vec::new();
    for room in &rooms {
        let mut peers = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            for j in 0..PER_NODE {
                peers.push((i, Peer::new(node, &format!("u{i}x{j}"), &room_refs).await));
            }
        }
        let results = futures_util::future::join_all(peers.iter_mut().map(|(_, p)| p.join(1, room))).await;
        let admitted = results.iter().filter(|r| r.is_ok()).count();
        let refused: Vec<ErrorCode> = results.iter().filter_map(|r| r.err()).collect();
        println!("{room}: {admitted} admitted of {}", results.len());
        assert!(refused.iter().all(|c| *c == ErrorCode::RoomFull), "refusals are ROOM_FULL: {refused:?}");
        assert_eq!(admitted, CAP, "{room}: the cap holds cluster-wide under concurrent joins");
        let members: Vec<(usize, Peer)> =
            peers.into_iter().zip(results).filter(|(_, r)| r.is_ok()).map(|(p, _)| p).collect();
        in_rooms.push(members);
    }

    // A member leaves: its seat is free for the next join.
    let room = &rooms[0];
    let (_, leaver) = in_rooms[0].pop().expect("a member");
    drop(leaver);
    let mut late = Peer::new(&nodes[0], "late", &room_refs).await;
    join_eventually(&mut late, room, WAIT, "a seat given back on leave").await;

    // A node dies with seated members: after the node timeout its seats are free.
    let room = &rooms[1];
    let victim = in_rooms[1][0].0;
    let survivor = (victim + 1) % 3;
    nodes[victim].kill();
    let mut after = Peer::new(&nodes[survivor], "after", &room_refs).await;
    // Generous: the node timeout is 3 s. (A CI run timed out at 30 s: when no surviving
    // node hosted the room, the joiner's view counted the dead node's presence records,
    // which no live node reaped; records of nodes known dead are now left out.)
    join_eventually(&mut after, room, Duration::from_secs(60), "the dead node's seats given back").await;
}

/// Join `room`, retrying while it is full, within `limit`.
async fn join_eventually(peer: &mut Peer, room: &str, limit: Duration, what: &str) {
    within(limit, what, async {
        for id in 10u64.. {
            match peer.join(id, room).await {
                Ok(()) => return,
                Err(ErrorCode::RoomFull) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(code) => panic!("join refused with {code:?}"),
            }
        }
    })
    .await
}

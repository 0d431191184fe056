//! Calls across two nodes on a real nats-server: ringing every device of the callee on
//! both nodes, answering on one (the other is told), races resolving to one outcome,
//! signaling between parties and its refusal to outsiders, ring timeout, offline callees,
//! call history over HTTP, and the NATS request/reply API.

use bytes::Bytes;
use switchboard_protocol::pb::{
    client_frame, server_frame, signal, Call, CallAnswer, CallCancel, CallEnd, CallEvent, CallInvite, CallMedia,
    CallOutcome, CallState, Join, Signal, SignalKind,
};
use switchboard_protocol::ErrorCode;
use switchboard_tests::raw::RawWs;
use switchboard_tests::{token, wait_for, within, NatsServer, NodeOptions, TestNode, WAIT};

const ADMIN_KEY: &str = "calls-test-admin-key";

async fn two_nodes(nats: &NatsServer, ring_timeout_secs: u64) -> (TestNode, TestNode) {
    let opts = |id: &str| NodeOptions {
        nats_url: Some(nats.url()),
        node_id: Some(id.into()),
        args: vec![
            "--call-ring-timeout".into(),
            ring_timeout_secs.to_string(),
            "--admin-key".into(),
            ADMIN_KEY.into(),
            "--request-rate".into(),
            "10000".into(),
        ],
        ..Default::default()
    };
    tokio::join!(TestNode::start(opts("alpha")), TestNode::start(opts("beta")))
}

/// A raw WebSocket peer that keeps the frames a wait skipped, so waits may come in any
/// order (events of concurrent operations interleave).
struct Peer {
    ws: RawWs,
    backlog: std::collections::VecDeque<server_frame::Kind>,
}

impl Peer {
    async fn send(&mut self, id: u64, kind: client_frame::Kind) {
        self.ws.send(id, kind).await;
    }
}

async fn user(node: &TestNode, name: &str) -> (Peer, String) {
    let (ws, welcome) = RawWs::authenticated(&node.ws_url(), &token(name, &["lobby"])).await;
    (Peer { ws, backlog: Default::default() }, welcome.session_id)
}

/// The first frame (backlog first) that `pick` accepts; others stay in the backlog.
async fn until<T>(p: &mut Peer, what: &str, mut pick: impl FnMut(&server_frame::Kind) -> Option<T>) -> T {
    if let Some(i) = p.backlog.iter().position(|f| pick(f).is_some()) {
        let f = p.backlog.remove(i).expect("index in range");
        return pick(&f).expect("picked before");
    }
    within(WAIT, what, async {
        loop {
            let f = p.ws.frame().await;
            match pick(&f) {
                Some(v) => return v,
                None => p.backlog.push_back(f),
            }
        }
    })
    .await
}

async fn call_event(p: &mut Peer, call: &str, state: CallState) -> CallEvent {
    until(p, &format!("call event {state:?}"), |f| match f {
        server_frame::Kind::Call(e) if e.state() == state && e.call.as_ref().is_some_and(|c| c.id == call) => {
            Some(e.clone())
        }
        _ => None,
    })
    .await
}

/// The reply to request `id`: Ok(ack) or Err(error code).
async fn reply(p: &mut Peer, id: u64) -> Result<switchboard_protocol::pb::Ack, ErrorCode> {
    until(p, &format!("reply to {id}"), |f| match f {
        server_frame::Kind::Ack(a) if a.ref_id == id => Some(Ok(a.clone())),
        server_frame::Kind::Error(e) if e.ref_id == id => Some(Err(e.code())),
        _ => None,
    })
    .await
}

async fn invite(ws: &mut Peer, id: u64, callees: &[&str]) -> String {
    let inv = CallInvite { callees: callees.iter().map(|c| c.to_string()).collect(), media: CallMedia::Video as i32 };
    ws.send(id, client_frame::Kind::CallInvite(inv)).await;
    let ack = reply(ws, id).await.expect("invite acked");
    assert!(!ack.call.is_empty(), "the invite's Ack carries the call id");
    ack.call
}

fn answer(call: &str, accept: bool) -> client_frame::Kind {
    client_frame::Kind::CallAnswer(CallAnswer { call: call.into(), accept })
}

fn join(room: &str) -> client_frame::Kind {
    client_frame::Kind::Join(Join { room: room.into(), resume_from: None })
}

fn call_signal(call: &str, room: &str, to_user: &str, payload: &'static [u8]) -> client_frame::Kind {
    client_frame::Kind::Signal(Signal {
        room: room.into(),
        target: Some(signal::Target::ToUser(to_user.into())),
        kind: SignalKind::Offer as i32,
        payload: Bytes::from_static(payload),
        call: call.into(),
    })
}

async fn http_get(node: &TestNode, path: &str, bearer: &str) -> (u16, serde_json::Value) {
    node.admin(Some(bearer), path, None).await
}

#[tokio::test]
async fn a_call_rings_every_device_on_both_nodes_and_is_answered_once() {
    let nats = NatsServer::start().await;
    let (n1, n2) = two_nodes(&nats, 30).await;
    let (mut alice, _) = user(&n1, "alice").await;
    let (mut bob1, _) = user(&n1, "bob").await;
    let (mut bob2, bob2_session) = user(&n2, "bob").await;
    let (mut eve, _) = user(&n2, "eve").await;

    let call = invite(&mut alice, 2, &["bob"]).await;
    let ringing = call_event(&mut alice, &call, CallState::Ringing).await;
    let room = ringing.call.unwrap().room;
    assert_eq!(room, format!("call-{call}"));
    for bob in [&mut bob1, &mut bob2] {
        let ev = call_event(bob, &call, CallState::Ringing).await;
        assert_eq!(ev.by.unwrap().user, "alice");
        assert_eq!(ev.call.unwrap().media(), CallMedia::Video);
    }

    // Bob answers on his second device (node beta): his first device is told.
    bob2.send(3, answer(&call, true)).await;
    reply(&mut bob2, 3).await.expect("answer acked");
    let elsewhere = call_event(&mut bob1, &call, CallState::Accepted).await;
    assert!(elsewhere.answered_elsewhere, "bob's other device hears the call was answered elsewhere");
    assert_eq!(elsewhere.by.as_ref().unwrap().session, bob2_session);
    let here = call_event(&mut bob2, &call, CallState::Accepted).await;
    assert!(!here.answered_elsewhere);
    let seen = call_event(&mut alice, &call, CallState::Accepted).await;
    assert_eq!(seen.by.unwrap().user, "bob");
    // A second answer from the other device is refused.
    bob1.send(4, answer(&call, true)).await;
    assert_eq!(reply(&mut bob1, 4).await.unwrap_err(), ErrorCode::CallState);

    // The parties join the call's room and signal there; an outsider can do neither.
    alice.send(5, join(&room)).await;
    until(&mut alice, "Joined call room", |f| matches!(f, server_frame::Kind::Joined(_)).then_some(())).await;
    bob2.send(5, join(&room)).await;
    until(&mut bob2, "Joined call room", |f| matches!(f, server_frame::Kind::Joined(_)).then_some(())).await;
    eve.send(5, join(&room)).await;
    assert_eq!(reply(&mut eve, 5).await.unwrap_err(), ErrorCode::Forbidden);
    alice.send(6, call_signal(&call, &room, "bob", b"v=0 offer")).await;
    reply(&mut alice, 6).await.expect("signal acked");
    let sig = until(&mut bob2, "offer", |f| match f {
        server_frame::Kind::Signal(s) => Some(s.clone()),
        _ => None,
    })
    .await;
    assert_eq!((&sig.payload[..], sig.from.unwrap().user.as_str()), (&b"v=0 offer"[..], "alice"));
    // Call signaling without a room goes to every device of the party.
    alice.send(7, call_signal(&call, "", "bob", b"ice restart")).await;
    reply(&mut alice, 7).await.expect("inbox signal acked");
    for bob in [&mut bob1, &mut bob2] {
        let sig = until(bob, "inbox signal", |f| match f {
            server_frame::Kind::Signal(s) if s.call == call => Some(s.clone()),
            _ => None,
        })
        .await;
        assert_eq!(&sig.payload[..], b"ice restart");
    }
    eve.send(8, call_signal(&call, "", "bob", b"spoof")).await;
    assert_eq!(reply(&mut eve, 8).await.unwrap_err(), ErrorCode::CallState);

    // Alice hangs up: everyone hears ENDED (completed, with a duration); the room empties.
    alice.send(9, client_frame::Kind::CallEnd(CallEnd { call: call.clone() })).await;
    // Whoever hears ENDED finds the call in their history at once (apps refresh it then).
    let heard = call_event(&mut bob1, &call, CallState::Ended).await.call.unwrap();
    let (_, body) = http_get(&n1, "/api/calls?user=bob", ADMIN_KEY).await;
    assert_eq!(body["calls"][0]["id"].as_str(), Some(call.as_str()), "history when ENDED is heard: {body}");
    reply(&mut alice, 9).await.expect("end acked");
    let ended = call_event(&mut alice, &call, CallState::Ended).await.call.unwrap();
    for ended in [heard, ended] {
        assert_eq!(ended.outcome(), CallOutcome::Completed);
        assert!(ended.answered_at_ms > 0 && ended.ended_at_ms >= ended.answered_at_ms);
    }
    // Bob's device in the call room hears the end and leaves the room.
    assert_eq!(call_event(&mut bob2, &call, CallState::Ended).await.call.unwrap().outcome(), CallOutcome::Completed);
    let left = until(&mut bob2, "Left call room", |f| match f {
        server_frame::Kind::Left(l) => Some(l.clone()),
        _ => None,
    })
    .await;
    assert_eq!((left.room.as_str(), left.reason.as_str()), (room.as_str(), "call_ended"));

    // History: newest first, readable by the user's own token or the admin key only.
    let alice_token = token("alice", &[]);
    let (status, body) = http_get(&n2, "/api/calls?user=alice", &alice_token).await;
    assert_eq!(status, 200, "{body}");
    let first = &body["calls"][0];
    assert_eq!((first["id"].as_str(), first["outcome"].as_str()), (Some(call.as_str()), Some("completed")));
    assert_eq!(first["caller"], "alice");
    assert!(first["duration_ms"].as_u64().is_some());
    let (status, body) = http_get(&n1, "/api/calls?user=bob", ADMIN_KEY).await;
    assert_eq!((status, body["calls"][0]["id"].as_str()), (200, Some(call.as_str())));
    let (status, _) = http_get(&n1, "/api/calls?user=bob", &alice_token).await;
    assert_eq!(status, 403);
    let (status, _) = http_get(&n1, "/api/calls?user=bob", "not-a-token").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn ring_timeout_offline_callee_reject_and_cancel() {
    let nats = NatsServer::start().await;
    let (n1, n2) = two_nodes(&nats, 1).await;
    let (mut alice, _) = user(&n1, "alice").await;
    let (mut bob, _) = user(&n2, "bob").await;

    // Nobody answers: both nodes time the ring out; the call ends as missed, once.
    let call = invite(&mut alice, 2, &["bob"]).await;
    call_event(&mut bob, &call, CallState::Ringing).await;
    for ws in [&mut alice, &mut bob] {
        let ended = call_event(ws, &call, CallState::Ended).await.call.unwrap();
        assert_eq!(ended.outcome(), CallOutcome::Missed);
    }
    // A callee with no device anywhere: the caller is told at once.
    let call = invite(&mut alice, 3, &["carol"]).await;
    let ended = call_event(&mut alice, &call, CallState::Ended).await.call.unwrap();
    assert_eq!(ended.outcome(), CallOutcome::Offline);
    // Rejected.
    let call = invite(&mut alice, 4, &["bob"]).await;
    call_event(&mut bob, &call, CallState::Ringing).await;
    bob.send(5, answer(&call, false)).await;
    reply(&mut bob, 5).await.expect("reject acked");
    call_event(&mut alice, &call, CallState::Rejected).await;
    let ended = call_event(&mut alice, &call, CallState::Ended).await.call.unwrap();
    assert_eq!(ended.outcome(), CallOutcome::Rejected);
    // Cancelled by the caller; the callee cannot answer any more.
    let call = invite(&mut alice, 6, &["bob"]).await;
    call_event(&mut bob, &call, CallState::Ringing).await;
    alice.send(7, client_frame::Kind::CallCancel(CallCancel { call: call.clone() })).await;
    reply(&mut alice, 7).await.expect("cancel acked");
    let ended = call_event(&mut bob, &call, CallState::Ended).await.call.unwrap();
    assert_eq!(ended.outcome(), CallOutcome::Cancelled);
    bob.send(8, answer(&call, true)).await;
    assert_eq!(reply(&mut bob, 8).await.unwrap_err(), ErrorCode::CallState);
    // Bad input.
    alice.send(9, client_frame::Kind::CallInvite(CallInvite { callees: vec![], media: 0 })).await;
    assert_eq!(reply(&mut alice, 9).await.unwrap_err(), ErrorCode::InvalidArgument);
    alice.send(10, client_frame::Kind::CallInvite(CallInvite { callees: vec!["a.b".into()], media: 0 })).await;
    assert_eq!(reply(&mut alice, 10).await.unwrap_err(), ErrorCode::InvalidArgument);
    alice.send(11, answer("no-such-call", true)).await;
    assert_eq!(reply(&mut alice, 11).await.unwrap_err(), ErrorCode::CallNotFound);

    // Every missed call ended exactly once across both nodes (the timers race).
    let ended = n1.metric("switchboard_call_transitions_total{kind=\"ended\"}").await
        + n2.metric("switchboard_call_transitions_total{kind=\"ended\"}").await;
    assert_eq!(ended, 4.0, "missed + offline + rejected + cancelled, each ended by one node");
}

/// Accept vs. cancel, and two devices accepting, sent at the same moment from two nodes:
/// each round resolves to exactly one outcome, which every party hears.
#[tokio::test]
async fn races_resolve_to_one_outcome() {
    let nats = NatsServer::start().await;
    let (n1, n2) = two_nodes(&nats, 30).await;
    let (mut alice, _) = user(&n1, "alice").await;
    let (mut bob1, _) = user(&n1, "bob").await;
    let (mut bob2, _) = user(&n2, "bob").await;
    let mut id = 100;
    let mut outcomes = [0usize; 2];
    for round in 0..20 {
        id += 10;
        let call = invite(&mut alice, id, &["bob"]).await;
        call_event(&mut bob1, &call, CallState::Ringing).await;
        call_event(&mut bob2, &call, CallState::Ringing).await;
        if round % 2 == 0 {
            // Accept (bob on beta) vs. cancel (alice on alpha).
            tokio::join!(
                bob2.send(id + 1, answer(&call, true)),
                alice.send(id + 1, client_frame::Kind::CallCancel(CallCancel { call: call.clone() }))
            );
            let (accepted, cancelled) = tokio::join!(reply(&mut bob2, id + 1), reply(&mut alice, id + 1));
            assert!(accepted.is_ok() != cancelled.is_ok(), "round {round}: exactly one of accept/cancel wins");
            outcomes[usize::from(accepted.is_ok())] += 1;
            if accepted.is_ok() {
                call_event(&mut bob1, &call, CallState::Accepted).await;
                alice.send(id + 2, client_frame::Kind::CallEnd(CallEnd { call: call.clone() })).await;
                reply(&mut alice, id + 2).await.expect("end acked");
            }
        } else {
            // Both of bob's devices accept at once.
            tokio::join!(bob1.send(id + 1, answer(&call, true)), bob2.send(id + 1, answer(&call, true)));
            let (r1, r2) = tokio::join!(reply(&mut bob1, id + 1), reply(&mut bob2, id + 1));
            assert!(r1.is_ok() != r2.is_ok(), "round {round}: exactly one device wins");
            let loser = if r1.is_ok() { r2 } else { r1 };
            assert_eq!(loser.unwrap_err(), ErrorCode::CallState);
            alice.send(id + 2, client_frame::Kind::CallEnd(CallEnd { call: call.clone() })).await;
            reply(&mut alice, id + 2).await.expect("end acked");
        }
        let ended: Call = call_event(&mut alice, &call, CallState::Ended).await.call.unwrap();
        assert!(matches!(ended.outcome(), CallOutcome::Completed | CallOutcome::Cancelled));
        call_event(&mut bob1, &call, CallState::Ended).await;
        call_event(&mut bob2, &call, CallState::Ended).await;
    }
    eprintln!("accept-vs-cancel rounds: {} cancelled first, {} accepted first", outcomes[0], outcomes[1]);
    let ended = n1.metric("switchboard_call_transitions_total{kind=\"ended\"}").await
        + n2.metric("switchboard_call_transitions_total{kind=\"ended\"}").await;
    assert_eq!(ended, 20.0, "each call ended exactly once");
}

/// Backends drive calls over NATS request/reply with the users' tokens.
#[tokio::test]
async fn calls_over_nats_request_reply() {
    let nats = NatsServer::start().await;
    let (_n1, n2) = two_nodes(&nats, 30).await;
    let (mut bob, _) = user(&n2, "bob").await;
    let client = async_nats::connect(nats.url()).await.expect("connecting to NATS");
    let request = |op: &str, body: serde_json::Value| {
        let client = client.clone();
        let subject = format!("sb.calls.request.{op}");
        async move {
            let reply = within(WAIT, "call request reply", client.request(subject, body.to_string().into()))
                .await
                .expect("request");
            serde_json::from_slice::<serde_json::Value>(&reply.payload).expect("JSON reply")
        }
    };
    let created =
        request("create", serde_json::json!({"token": token("alice", &[]), "callees": ["bob"], "media": "audio"}))
            .await;
    assert_eq!(created["ok"], true, "{created}");
    let call = created["call"]["id"].as_str().expect("call id").to_owned();
    assert_eq!(created["call"]["state"], "ringing");
    call_event(&mut bob, &call, CallState::Ringing).await;
    // Same rules as sessions: alice cannot answer her own call; a forged token is refused.
    let refused = request("answer", serde_json::json!({"token": token("alice", &[]), "call": call})).await;
    assert_eq!((refused["ok"].as_bool(), refused["error"]["code"].as_str()), (Some(false), Some("CALL_STATE")));
    let forged = request("answer", serde_json::json!({"token": "x.y.z", "call": call})).await;
    assert_eq!(forged["error"]["code"], "TOKEN_INVALID");
    let answered = request("answer", serde_json::json!({"token": token("bob", &[]), "call": call})).await;
    assert_eq!(answered["call"]["state"], "accepted", "{answered}");
    call_event(&mut bob, &call, CallState::Accepted).await;
    let ended = request("end", serde_json::json!({"token": token("bob", &[]), "call": call})).await;
    assert_eq!(ended["call"]["outcome"], "completed", "{ended}");
    call_event(&mut bob, &call, CallState::Ended).await;
    let bad = request("create", serde_json::json!({"nope": 1})).await;
    assert_eq!(bad["error"]["code"], "BAD_FRAME");
}

/// An embedded node with extra flags.
async fn embedded(args: &[&str]) -> TestNode {
    let mut all = vec!["--admin-key", ADMIN_KEY, "--request-rate", "10000"];
    all.extend_from_slice(args);
    TestNode::start(NodeOptions { args: all.iter().map(|a| a.to_string()).collect(), ..Default::default() }).await
}

fn cancel(call: &str) -> client_frame::Kind {
    client_frame::Kind::CallCancel(CallCancel { call: call.into() })
}

/// The ids of `user`'s call history, newest first (admin key).
async fn history_ids(node: &TestNode, user: &str) -> Vec<String> {
    let (status, body) = http_get(node, &format!("/api/calls?user={user}&limit=200"), ADMIN_KEY).await;
    assert_eq!(status, 200, "{body}");
    body["calls"].as_array().expect("calls").iter().map(|c| c["id"].as_str().expect("id").to_owned()).collect()
}

/// A caller flooding one victim with invite-and-cancel rounds: invitations over the
/// caller's rate get RATE_LIMITED (and ring nobody), the victim is rung only for the
/// allowed ones, and their history keeps one unanswered call from that caller, not one
/// per round.
#[tokio::test]
async fn invite_flood_is_rate_limited_and_does_not_spam_the_victim() {
    const RATE: u64 = 5; // per minute: a burst of 5, then one every 12 s
    let node = embedded(&["--call-invite-rate", &RATE.to_string()]).await;
    let (mut alice, _) = user(&node, "alice").await;
    let (mut bob, _) = user(&node, "bob").await;
    let (mut carol, _) = user(&node, "carol").await;
    let started = std::time::Instant::now();
    let (mut accepted, mut limited) = (Vec::new(), 0);
    for round in 0..20u64 {
        let id = 10 + round * 2;
        let inv = CallInvite { callees: vec!["bob".into()], media: CallMedia::Audio as i32 };
        alice.send(id, client_frame::Kind::CallInvite(inv)).await;
        match reply(&mut alice, id).await {
            Ok(ack) => {
                alice.send(id + 1, cancel(&ack.call)).await;
                reply(&mut alice, id + 1).await.expect("cancel acked");
                accepted.push(ack.call);
            }
            Err(code) => {
                assert_eq!(code, ErrorCode::RateLimited);
                limited += 1;
            }
        }
    }
    // The burst, plus what the rate refilled meanwhile (one per 12 s) and one for rounding.
    let allowed = RATE + started.elapsed().as_secs() * RATE / 60 + 1;
    assert!(accepted.len() as u64 <= allowed, "{} invitations accepted, allowed {allowed}", accepted.len());
    assert!(accepted.len() as u64 >= RATE, "the burst of {RATE} is accepted");
    assert_eq!(node.metric("switchboard_call_invites_refused_total{reason=\"rate_limited\"}").await, limited as f64);

    // Another caller's invitation marks the end of bob's inbox: every ring from alice came before it.
    let marker = invite(&mut carol, 2, &["bob"]).await;
    let mut rung = 0;
    loop {
        let f = until(&mut bob, "a ring", |f| match f {
            server_frame::Kind::Call(e) if e.state() == CallState::Ringing => e.call.clone(),
            _ => None,
        })
        .await;
        if f.id == marker {
            break;
        }
        assert!(accepted.contains(&f.id), "bob is rung only for accepted invitations");
        rung += 1;
    }
    assert_eq!(rung, accepted.len(), "bob is rung once per accepted invitation");

    // Alice's history has every call; bob's has one unanswered call from alice.
    let alice_history = history_ids(&node, "alice").await;
    assert_eq!(alice_history.len(), accepted.len());
    let bob_history = history_ids(&node, "bob").await;
    assert_eq!(bob_history, vec![accepted[0].clone()], "one missed call from alice in bob's history");
    let skipped = node.metric("switchboard_call_history_skipped_total{reason=\"repeat_missed\"}").await;
    assert_eq!(skipped, (accepted.len() - 1) as f64);
}

/// Invitations to ids that never connected store one record (the caller's), no per-callee
/// history; the history store is bounded by records in all and by bytes, oldest first.
/// An unset media value is recorded as audio; a value the protocol does not define is refused.
#[tokio::test]
async fn calls_to_never_seen_ids_leave_bounded_storage() {
    const MAX_RECORDS: usize = 40;
    let node = embedded(&["--call-invite-rate", "0", "--call-history-max-records", &MAX_RECORDS.to_string()]).await;
    let (mut alice, _) = user(&node, "alice").await;
    let unknown = CallInvite { callees: vec!["bob".into()], media: 7 };
    alice.send(9, client_frame::Kind::CallInvite(unknown)).await;
    assert_eq!(reply(&mut alice, 9).await.unwrap_err(), ErrorCode::InvalidArgument);
    let mut calls = Vec::new();
    for i in 0..100u64 {
        let callees: Vec<String> = (0..16).map(|j| format!("ghost{i}x{j}")).collect();
        let inv = CallInvite { callees, media: 0 };
        alice.send(10 + i, client_frame::Kind::CallInvite(inv)).await;
        let call = reply(&mut alice, 10 + i).await.expect("invite acked").call;
        let ended = call_event(&mut alice, &call, CallState::Ended).await.call.expect("call");
        assert_eq!(ended.outcome(), CallOutcome::Offline);
        assert_eq!(ended.media, CallMedia::Audio as i32, "an unset media value is recorded as audio");
        calls.push(call);
    }
    // Only alice has a history, and only the newest MAX_RECORDS calls are kept.
    let records = wait_for(WAIT, "history size metrics", || async {
        let users = node.metric("switchboard_call_history_users").await;
        let records = node.metric("switchboard_call_history_records").await;
        (users == 1.0 && records == MAX_RECORDS as f64).then_some(records)
    })
    .await;
    assert_eq!(records, MAX_RECORDS as f64);
    // Nor is the live state of a call that reached nobody kept.
    alice.send(9, client_frame::Kind::CallEnd(CallEnd { call: calls[0].clone() })).await;
    assert_eq!(reply(&mut alice, 9).await.unwrap_err(), ErrorCode::CallNotFound);
    assert!(history_ids(&node, "ghost0x0").await.is_empty(), "no history for an id that never connected");
    assert!(history_ids(&node, "ghost99x15").await.is_empty());
    let kept = history_ids(&node, "alice").await;
    let newest: Vec<String> = calls.iter().rev().take(MAX_RECORDS).cloned().collect();
    assert_eq!(kept, newest, "the oldest records were dropped first");
    assert_eq!(node.metric("switchboard_call_history_skipped_total{reason=\"offline\"}").await, 1600.0);

    // The byte bound: records of ~200 bytes under a 2,000-byte budget.
    const MAX_BYTES: u64 = 2000;
    let node = embedded(&["--call-invite-rate", "0", "--call-history-max-bytes", &MAX_BYTES.to_string()]).await;
    let (mut alice, _) = user(&node, "alice").await;
    let mut calls = Vec::new();
    for i in 0..50u64 {
        let call = invite(&mut alice, 10 + i, &[&format!("ghost{i}")]).await;
        call_event(&mut alice, &call, CallState::Ended).await;
        calls.push(call);
    }
    let kept = history_ids(&node, "alice").await;
    assert!(kept.len() > 2 && kept.len() < 50, "{} records kept", kept.len());
    let newest: Vec<String> = calls.iter().rev().take(kept.len()).cloned().collect();
    assert_eq!(kept, newest, "the oldest records were dropped first");
    let bytes = wait_for(WAIT, "history bytes metric", || async {
        let bytes = node.metric("switchboard_call_history_bytes").await;
        (bytes > 0.0).then_some(bytes)
    })
    .await;
    assert!(bytes <= MAX_BYTES as f64, "{bytes} bytes of call history kept");
}

/// On NATS: the request/reply `create` obeys the caller's rate, and invitations to ids
/// that never connected add no subject to the call history stream, whose limits come from
/// the flags.
#[tokio::test]
async fn nats_call_history_is_bounded_and_create_is_rate_limited() {
    let nats = NatsServer::start().await;
    let args = ["--call-invite-rate", "3", "--call-history-max-bytes", "1000000", "--call-history-max-records", "500"];
    let _node = TestNode::start(NodeOptions {
        nats_url: Some(nats.url()),
        args: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    })
    .await;
    let client = async_nats::connect(nats.url()).await.expect("connecting to NATS");
    let mut codes = Vec::new();
    for i in 0..5 {
        let callees: Vec<String> = (0..16).map(|j| format!("ghost{i}x{j}")).collect();
        let body = serde_json::json!({"token": token("alice", &[]), "callees": callees, "media": "video"});
        let reply = within(WAIT, "create reply", client.request("sb.calls.request.create", body.to_string().into()))
            .await
            .expect("request");
        let reply: serde_json::Value = serde_json::from_slice(&reply.payload).expect("JSON reply");
        codes.push(reply["error"]["code"].as_str().unwrap_or("ok").to_owned());
    }
    assert_eq!(codes, ["ok", "ok", "ok", "RATE_LIMITED", "RATE_LIMITED"]);
    let js = async_nats::jetstream::new(client);
    let info = wait_for(WAIT, "three call records stored", || {
        let js = js.clone();
        async move {
            let info = js.get_stream("sb_callhist").await.ok()?.info().await.ok()?.clone();
            (info.state.messages == 3).then_some(info)
        }
    })
    .await;
    assert_eq!(info.state.subjects_count, 1, "only the caller has a history subject");
    assert_eq!((info.config.max_bytes, info.config.max_messages), (1_000_000, 500));
    // Ringing (and forgetting a call that reached nobody) runs after the answer.
    wait_for(WAIT, "calls that reached nobody are not kept", || {
        let js = js.clone();
        async move {
            let mut calls = js.get_stream("KV_sb_calls").await.ok()?;
            (calls.info().await.ok()?.state.messages == 0).then_some(())
        }
    })
    .await;
}

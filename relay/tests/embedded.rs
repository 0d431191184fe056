//! The relay core on the in-process bus, driven through an in-memory transport: sessions,
//! rooms, presence, fan-out and refusals, without any network.

use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use switchboard_protocol::pb::{client_frame, server_frame, ClientFrame, Hello, Join, Publish, ServerFrame};
use switchboard_protocol::{decode_server_frame, encode, ErrorCode, PROTOCOL_VERSION};
use switchboard_relay::auth::{Claims, Minter};
use switchboard_relay::{LocalBus, Node, RelayConfig, Transport, TransportError, TransportKind, Verifier, VerifyKey};
use tokio::sync::mpsc;

const SECRET: &[u8] = b"an-embedded-test-secret-of-32-bytes!";

/// A frame that makes the in-memory transport panic inside the session's task.
const PANIC: &[u8] = b"panic in the session task";

struct MemTransport {
    rx: mpsc::Receiver<Bytes>,
    tx: mpsc::Sender<Bytes>,
    closed: mpsc::Sender<ErrorCode>,
}

impl Transport for MemTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::WebSocket
    }
    async fn recv(&mut self) -> Option<Result<switchboard_relay::Incoming, TransportError>> {
        let frame = self.rx.recv().await?;
        // Fault injection: a bug anywhere in the session's task.
        assert!(frame != PANIC, "injected panic");
        Some(Ok(frame.into()))
    }
    fn set_max_frame(&mut self, _bytes: usize) {}
    async fn send(&mut self, frame: switchboard_relay::Outgoing) -> Result<switchboard_relay::Sent, TransportError> {
        self.tx.send(frame.frame).await.map_err(|e| TransportError::Io(e.to_string()))?;
        Ok(switchboard_relay::Sent::Written)
    }
    async fn close(self, code: ErrorCode, _reason: &str) {
        let _ = self.closed.send(code).await;
    }
}

struct Peer {
    to_server: mpsc::Sender<Bytes>,
    from_server: mpsc::Receiver<Bytes>,
    closed: mpsc::Receiver<ErrorCode>,
    task: tokio::task::JoinHandle<()>,
}

impl Peer {
    fn connect(node: &Arc<Node>) -> Self {
        let (to_server, rx) = mpsc::channel(64);
        let (tx, from_server) = mpsc::channel(64);
        let (closed_tx, closed) = mpsc::channel(1);
        let task = tokio::spawn(switchboard_relay::run_session(
            node.clone(),
            MemTransport { rx, tx, closed: closed_tx },
            switchboard_relay::admit(node, TransportKind::WebSocket, None).expect("admitted"),
        ));
        Self { to_server, from_server, closed, task }
    }

    async fn send(&self, id: u64, kind: client_frame::Kind) {
        self.to_server.send(encode(&ClientFrame { id, kind: Some(kind) })).await.unwrap();
    }

    async fn next(&mut self) -> server_frame::Kind {
        let bytes = tokio::time::timeout(Duration::from_secs(5), self.from_server.recv())
            .await
            .expect("timed out waiting for a server frame")
            .expect("connection closed");
        let ServerFrame { kind } = decode_server_frame(&bytes).unwrap();
        kind.expect("frame kind")
    }

    async fn hello(node: &Arc<Node>, sub: &str, rooms: &[&str]) -> Self {
        let mut p = Self::connect(node);
        let claims = Claims::new(sub, rooms, 600);
        let token = Minter::hmac(SECRET).mint(&claims).unwrap();
        p.send(
            1,
            client_frame::Kind::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                token,
                client: "test".into(),
                ..Default::default()
            }),
        )
        .await;
        assert!(matches!(p.next().await, server_frame::Kind::Welcome(_)));
        p
    }
}

async fn node() -> Arc<Node> {
    node_on(RelayConfig::default(), Arc::new(LocalBus::new())).await
}

async fn node_on(config: RelayConfig, bus: Arc<LocalBus>) -> Arc<Node> {
    let verifier = Verifier::new(&VerifyKey::Hmac(SECRET.to_vec()), 0).unwrap();
    Node::start(config, verifier, bus).await.unwrap()
}

#[tokio::test]
async fn room_messages_and_presence_on_one_node() {
    let node = node().await;
    let mut alice = Peer::hello(&node, "alice", &["demo"]).await;
    let mut bob = Peer::hello(&node, "bob", &["demo"]).await;
    alice.send(2, client_frame::Kind::Join(Join { room: "demo".into(), resume_from: None })).await;
    let server_frame::Kind::Joined(j) = alice.next().await else { panic!("expected Joined") };
    assert_eq!((j.ref_id, j.participants.len()), (2, 1));
    bob.send(2, client_frame::Kind::Join(Join { room: "demo".into(), resume_from: None })).await;
    let server_frame::Kind::Joined(j) = bob.next().await else { panic!("expected Joined") };
    assert_eq!(j.participants.len(), 2);
    let server_frame::Kind::ParticipantJoined(pj) = alice.next().await else { panic!("expected ParticipantJoined") };
    assert_eq!(pj.participant.unwrap().user, "bob");

    let payload = Bytes::from_static(b"hi bob");
    alice
        .send(
            3,
            client_frame::Kind::Publish(Publish {
                room: "demo".into(),
                payload: payload.clone(),
                reliable: true,
                kind: "chat".into(),
            }),
        )
        .await;
    assert!(matches!(alice.next().await, server_frame::Kind::Ack(a) if a.ref_id == 3));
    let server_frame::Kind::Message(m) = bob.next().await else { panic!("expected Message") };
    let from = m.from.unwrap();
    assert_eq!((from.user.as_str(), m.payload), ("alice", payload));
    assert_eq!(node.room_count(), 1);

    drop(bob.to_server); // bob disconnects
    let server_frame::Kind::ParticipantLeft(pl) = alice.next().await else { panic!("expected ParticipantLeft") };
    assert_eq!((pl.participant.unwrap().user.as_str(), pl.reason.as_str()), ("bob", "disconnected"));
}

#[tokio::test]
async fn frame_before_hello_is_refused() {
    let node = node().await;
    let mut p = Peer::connect(&node);
    p.send(5, client_frame::Kind::Join(Join { room: "demo".into(), resume_from: None })).await;
    let server_frame::Kind::Error(e) = p.next().await else { panic!("expected Error") };
    assert_eq!((e.code(), e.ref_id, e.fatal), (ErrorCode::HelloRequired, 5, true));
    assert_eq!(p.closed.recv().await, Some(ErrorCode::HelloRequired));
}

#[tokio::test]
async fn forbidden_room_and_publish_outside_room() {
    let node = node().await;
    let mut p = Peer::hello(&node, "carol", &["demo"]).await;
    p.send(2, client_frame::Kind::Join(Join { room: "secret".into(), resume_from: None })).await;
    assert!(
        matches!(p.next().await, server_frame::Kind::Error(e) if e.code() == ErrorCode::Forbidden && e.ref_id == 2)
    );
    p.send(3, client_frame::Kind::Join(Join { room: "bad.room".into(), resume_from: None })).await;
    assert!(matches!(p.next().await, server_frame::Kind::Error(e) if e.code() == ErrorCode::InvalidRoom));
    p.send(4, client_frame::Kind::Publish(Publish { room: "demo".into(), ..Default::default() })).await;
    assert!(matches!(p.next().await, server_frame::Kind::Error(e) if e.code() == ErrorCode::NotInRoom));
    // Garbage is answered, and the session carries on.
    p.to_server.send(Bytes::from_static(&[0xff, 0xff, 0xff])).await.unwrap();
    assert!(matches!(p.next().await, server_frame::Kind::Error(e) if e.code() == ErrorCode::BadFrame && !e.fatal));
    p.send(5, client_frame::Kind::Ping(Default::default())).await;
    assert!(matches!(p.next().await, server_frame::Kind::Pong(_)));
}

/// Two nodes sharing one bus: a node that dies without a word (its sessions vanish, its
/// heartbeats stop) has its participants reported as left by the survivors.
#[tokio::test]
async fn dead_node_participants_are_reported_left() {
    let bus = Arc::new(LocalBus::new());
    let fast = |id: &str| RelayConfig {
        node_id: id.into(),
        node_heartbeat: Duration::from_millis(50),
        node_timeout: Duration::from_millis(300),
        ..RelayConfig::default()
    };
    let a = node_on(fast("a"), bus.clone()).await;
    // Node b runs on a runtime of its own, so that it can die at once, as a process does.
    let rt_b = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let b = rt_b.spawn(node_on(fast("b"), bus.clone())).await.unwrap();
    let mut alice = Peer::hello(&a, "alice", &["demo"]).await;
    alice.send(2, client_frame::Kind::Join(Join { room: "demo".into(), resume_from: None })).await;
    assert!(matches!(alice.next().await, server_frame::Kind::Joined(_)));
    let b2 = b.clone();
    let mut bob = rt_b.spawn(async move { Peer::hello(&b2, "bob", &["demo"]).await }).await.unwrap();
    bob.send(2, client_frame::Kind::Join(Join { room: "demo".into(), resume_from: None })).await;
    let server_frame::Kind::Joined(j) = bob.next().await else { panic!("expected Joined") };
    assert_eq!(j.participants.len(), 2, "bob sees alice, who joined on the other node");
    let server_frame::Kind::ParticipantJoined(pj) = alice.next().await else { panic!("expected ParticipantJoined") };
    assert_eq!(pj.participant.unwrap().node, "b");

    // Node b "crashes": no task of it runs a line more (no leave is sent).
    rt_b.shutdown_background();
    drop(b);
    let started = tokio::time::Instant::now();
    let server_frame::Kind::ParticipantLeft(pl) = alice.next().await else { panic!("expected ParticipantLeft") };
    assert_eq!((pl.participant.unwrap().user.as_str(), pl.reason.as_str()), ("bob", "node_lost"));
    // Detected by the node timeout (300 ms here), not the default one (10 s): well under
    // it, with room for a loaded machine.
    let elapsed = started.elapsed();
    assert!(elapsed < RelayConfig::default().node_timeout / 2, "reported after {elapsed:?}");
    // Its stale presence record is cleared too.
    use switchboard_relay::Bus;
    assert_eq!(bus.presence_list("demo").await.unwrap().len(), 1);
}

/// A participant's last messages arrive before the notice that it left.
#[tokio::test]
async fn last_messages_arrive_before_the_leave() {
    let node = node().await;
    let mut alice = Peer::hello(&node, "alice", &["demo"]).await;
    let mut bob = Peer::hello(&node, "bob", &["demo"]).await;
    for p in [&mut alice, &mut bob] {
        p.send(2, client_frame::Kind::Join(Join { room: "demo".into(), resume_from: None })).await;
        assert!(matches!(p.next().await, server_frame::Kind::Joined(_)));
    }
    assert!(matches!(alice.next().await, server_frame::Kind::ParticipantJoined(_)));
    for i in 0..20u64 {
        let p =
            Publish { room: "demo".into(), payload: Bytes::from(i.to_string()), reliable: true, kind: String::new() };
        bob.send(0, client_frame::Kind::Publish(p)).await;
    }
    drop(bob.to_server);
    for i in 0..20u64 {
        match alice.next().await {
            server_frame::Kind::Message(m) => assert_eq!(m.payload, Bytes::from(i.to_string())),
            other => panic!("message {i} expected, got {other:?}"),
        }
    }
    assert!(matches!(alice.next().await, server_frame::Kind::ParticipantLeft(_)));
}

/// A large room's `Joined` lists the first participants only, says how many there are, and
/// stays under the frame limit.
#[tokio::test]
async fn joined_lists_at_most_the_limit_in_large_rooms() {
    use switchboard_protocol::limits::{MAX_FRAME_BYTES, MAX_JOINED_PARTICIPANTS};
    use switchboard_relay::Bus;
    let bus = Arc::new(LocalBus::new());
    // Participants recorded by (simulated) other nodes.
    for i in 0..MAX_JOINED_PARTICIPANTS + 50 {
        let p = switchboard_protocol::pb::Participant {
            user: format!("user{i}"),
            session: format!("s{i:05}"),
            name: "x".repeat(64),
            node: "other".into(),
            joined_at_ms: i as u64,
        };
        bus.presence_put("big", &p).await.unwrap();
    }
    let node = node_on(RelayConfig::default(), bus).await;
    let mut p = Peer::hello(&node, "late", &["big"]).await;
    p.send(2, client_frame::Kind::Join(Join { room: "big".into(), resume_from: None })).await;
    let bytes = tokio::time::timeout(Duration::from_secs(5), p.from_server.recv()).await.unwrap().unwrap();
    assert!(bytes.len() < MAX_FRAME_BYTES);
    let Some(server_frame::Kind::Joined(j)) = decode_server_frame(&bytes).unwrap().kind else {
        panic!("expected Joined")
    };
    assert_eq!(j.participants.len(), MAX_JOINED_PARTICIPANTS);
    assert_eq!(j.participant_count as usize, MAX_JOINED_PARTICIPANTS + 51);
    assert!(j.participants_truncated);
}

impl Peer {
    /// Skip frames until `pick` accepts one.
    async fn until<T>(&mut self, mut pick: impl FnMut(server_frame::Kind) -> Option<T>) -> T {
        loop {
            if let Some(v) = pick(self.next().await) {
                return v;
            }
        }
    }

    async fn call_event(&mut self, state: CallState) -> switchboard_protocol::pb::Call {
        self.until(|f| match f {
            server_frame::Kind::Call(e) if e.state() == state => e.call,
            _ => None,
        })
        .await
    }

    async fn reply(&mut self, id: u64) -> Result<switchboard_protocol::pb::Ack, ErrorCode> {
        self.until(|f| match f {
            server_frame::Kind::Ack(a) if a.ref_id == id => Some(Ok(a)),
            server_frame::Kind::Error(e) if e.ref_id == id => Some(Err(e.code())),
            _ => None,
        })
        .await
    }
}

use switchboard_protocol::pb::{CallAnswer, CallEnd, CallInvite, CallOutcome, CallState};

#[tokio::test]
async fn calls_work_on_the_embedded_bus() {
    let node = node().await;
    let mut alice = Peer::hello(&node, "alice", &[]).await;
    let mut bob = Peer::hello(&node, "bob", &[]).await;
    alice.send(2, client_frame::Kind::CallInvite(CallInvite { callees: vec!["bob".into()], media: 1 })).await;
    let call = alice.reply(2).await.expect("invite acked").call;
    assert_eq!(bob.call_event(CallState::Ringing).await.id, call);
    bob.send(3, client_frame::Kind::CallAnswer(CallAnswer { call: call.clone(), accept: true })).await;
    bob.reply(3).await.expect("answer acked");
    alice.call_event(CallState::Accepted).await;
    // Only parties may join the call's room; the room needs no token grant.
    bob.send(4, client_frame::Kind::Join(Join { room: format!("call-{call}"), resume_from: None })).await;
    bob.until(|f| matches!(f, server_frame::Kind::Joined(_)).then_some(())).await;
    let mut eve = Peer::hello(&node, "eve", &["*"]).await;
    eve.send(2, client_frame::Kind::Join(Join { room: format!("call-{call}"), resume_from: None })).await;
    assert_eq!(eve.reply(2).await.unwrap_err(), ErrorCode::Forbidden);
    bob.send(5, client_frame::Kind::CallEnd(CallEnd { call: call.clone() })).await;
    bob.reply(5).await.expect("end acked");
    assert_eq!(alice.call_event(CallState::Ended).await.outcome(), CallOutcome::Completed);
    // A callee with no session anywhere: offline at once.
    alice.send(6, client_frame::Kind::CallInvite(CallInvite { callees: vec!["carol".into()], media: 1 })).await;
    let call = alice.reply(6).await.expect("invite acked").call;
    let ended = alice.call_event(CallState::Ended).await;
    assert_eq!((ended.id.as_str(), ended.outcome()), (call.as_str(), CallOutcome::Offline));
}

#[tokio::test]
async fn a_full_room_refuses_the_next_join() {
    let config = RelayConfig { max_participants: 2, ..RelayConfig::default() };
    let node = node_on(config, Arc::new(LocalBus::new())).await;
    let join = |room: &str| client_frame::Kind::Join(Join { room: room.into(), resume_from: None });
    let mut peers = Vec::new();
    for name in ["a", "b"] {
        let mut p = Peer::hello(&node, name, &["*"]).await;
        p.send(2, join("small")).await;
        p.until(|f| matches!(f, server_frame::Kind::Joined(_)).then_some(())).await;
        peers.push(p);
    }
    let mut c = Peer::hello(&node, "c", &["*"]).await;
    c.send(2, join("small")).await;
    assert_eq!(c.reply(2).await.unwrap_err(), ErrorCode::RoomFull);
    // A token's own limit overrides the server's.
    let claims = Claims { max_participants: Some(1), ..Claims::new("d", &["*"], 600) };
    let mut d = Peer::connect(&node);
    let token = Minter::hmac(SECRET).mint(&claims).unwrap();
    d.send(
        1,
        client_frame::Kind::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            token,
            client: "t".into(),
            ..Default::default()
        }),
    )
    .await;
    assert!(matches!(d.next().await, server_frame::Kind::Welcome(_)));
    d.send(2, join("solo")).await;
    d.until(|f| matches!(f, server_frame::Kind::Joined(_)).then_some(())).await;
    c.send(3, client_frame::Kind::Join(Join { room: "other".into(), resume_from: None })).await;
    c.until(|f| matches!(f, server_frame::Kind::Joined(_)).then_some(())).await;
    let mut e = Peer::connect(&node);
    let token =
        Minter::hmac(SECRET).mint(&Claims { max_participants: Some(1), ..Claims::new("e", &["*"], 600) }).unwrap();
    e.send(
        1,
        client_frame::Kind::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            token,
            client: "t".into(),
            ..Default::default()
        }),
    )
    .await;
    assert!(matches!(e.next().await, server_frame::Kind::Welcome(_)));
    e.send(2, join("other")).await;
    assert_eq!(e.reply(2).await.unwrap_err(), ErrorCode::RoomFull, "limit 1 from the token, 1 already in");
}

#[tokio::test]
async fn large_rooms_get_counts_instead_of_a_join_storm() {
    let config =
        RelayConfig { presence_events_max: 3, node_heartbeat: Duration::from_millis(100), ..RelayConfig::default() };
    let node = node_on(config, Arc::new(LocalBus::new())).await;
    let join = client_frame::Kind::Join(Join { room: "big".into(), resume_from: None });
    let mut first = Peer::hello(&node, "u0", &["*"]).await;
    first.send(2, join.clone()).await;
    first.until(|f| matches!(f, server_frame::Kind::Joined(_)).then_some(())).await;
    let mut others = Vec::new();
    for i in 1..6 {
        let mut p = Peer::hello(&node, &format!("u{i}"), &["*"]).await;
        p.send(2, join.clone()).await;
        p.until(|f| matches!(f, server_frame::Kind::Joined(_)).then_some(())).await;
        others.push(p);
    }
    // Events while the room is small (2 and 3 participants), then one count for the rest.
    // (A heartbeat may fall between the joins: intermediate counts are fine.)
    let mut joined_events = 0;
    first
        .until(|f| match f {
            server_frame::Kind::ParticipantJoined(_) => {
                joined_events += 1;
                None
            }
            server_frame::Kind::RoomStats(s) if s.participant_count == 6 => Some(()),
            _ => None,
        })
        .await;
    assert_eq!(joined_events, 2, "individual events only while the room had at most 3");
}

/// A panic in a session's task (a bug anywhere on its path) still gives back everything the
/// session held: its rooms (the others see it leave), its registration, its gauges.
#[tokio::test]
async fn a_panicking_session_is_cleaned_up() {
    let node = node().await;
    let mut alice = Peer::hello(&node, "alice", &["demo"]).await;
    let mut bob = Peer::hello(&node, "bob", &["demo"]).await;
    alice.send(2, client_frame::Kind::Join(Join { room: "demo".into(), resume_from: None })).await;
    assert!(matches!(alice.next().await, server_frame::Kind::Joined(_)));
    bob.send(2, client_frame::Kind::Join(Join { room: "demo".into(), resume_from: None })).await;
    assert!(matches!(bob.next().await, server_frame::Kind::Joined(_)));
    assert!(matches!(alice.next().await, server_frame::Kind::ParticipantJoined(_)));
    assert_eq!(node.session_count(), 2);

    bob.to_server.send(Bytes::from_static(PANIC)).await.unwrap();
    let joined = tokio::time::timeout(Duration::from_secs(5), &mut bob.task).await.expect("the task ended");
    assert!(joined.unwrap_err().is_panic(), "the injected panic ended bob's task");
    let server_frame::Kind::ParticipantLeft(left) = alice.next().await else { panic!("expected ParticipantLeft") };
    assert_eq!(left.participant.unwrap().user, "bob");
    // Unregistered right after the rooms are left, on the cleanup's own task.
    tokio::time::timeout(Duration::from_secs(5), async {
        while node.session_count() != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("bob is no longer registered");
    let metrics = node.metrics().encode();
    for line in [
        "switchboard_session_panics_total 1",
        "switchboard_connections{transport=\"websocket\"} 1",
        "switchboard_pending_connections{transport=\"websocket\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line:?} missing from:\n{metrics}");
    }
    assert_eq!(node.bus().presence_list("demo").await.unwrap().len(), 1, "bob's presence record is gone");
}

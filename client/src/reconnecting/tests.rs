//! Backoff (pure), and reconnecting against scripted in-process WebSocket servers.

use super::*;
use crate::test_server::{config, drain, frame, handshake, next_client_frame, serve, serve_each, ServerWs};
use futures_util::SinkExt;
use std::sync::atomic::Ordering;
use switchboard_protocol::close_code;
use switchboard_protocol::pb::{client_frame, server_frame};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

fn fast() -> ReconnectPolicy {
    ReconnectPolicy { initial: Duration::from_millis(10), ..ReconnectPolicy::default() }
}

async fn next_event(events: &mut Events) -> Event {
    tokio::time::timeout(Duration::from_secs(5), events.recv()).await.expect("an event in time").expect("an event")
}

fn message(room: &str, offset: u64, prev_offset: u64) -> tokio_tungstenite::tungstenite::Message {
    frame(server_frame::Kind::Message(pb::Message {
        room: room.into(),
        offset,
        prev_offset,
        reliable: true,
        payload: offset.to_string().into(),
        ..Default::default()
    }))
}

fn joined(ref_id: u64, room: &str, last_offset: u64, replayed: u32) -> tokio_tungstenite::tungstenite::Message {
    frame(server_frame::Kind::Joined(pb::Joined {
        ref_id,
        room: room.into(),
        last_offset,
        replayed,
        ..Default::default()
    }))
}

/// Read a `Join`; returns its id, room and resume point.
async fn next_join(ws: &mut ServerWs) -> (u64, String, Option<u64>) {
    let f = next_client_frame(ws).await;
    match f.kind {
        Some(client_frame::Kind::Join(j)) => (f.id, j.room, j.resume_from),
        other => panic!("expected Join, got {other:?}"),
    }
}

async fn close_with(ws: &mut ServerWs, code: ErrorCode, reason: &str) {
    let error = pb::Error { code: code as i32, message: reason.into(), ref_id: 0, fatal: true };
    ws.send(frame(server_frame::Kind::Error(error))).await.unwrap();
    let _ = ws.close(Some(CloseFrame { code: close_code(code).into(), reason: reason.into() })).await;
    drain(ws).await;
}

#[test]
fn backoff_grows_to_the_cap_with_full_jitter() {
    let p = ReconnectPolicy::default();
    assert_eq!(p.ceiling(0), Duration::from_millis(250));
    assert_eq!(p.ceiling(2), Duration::from_secs(1));
    assert_eq!(p.ceiling(10), Duration::from_secs(10));
    assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(10));
    // Full jitter: the whole range [0, ceiling], never beyond (even for odd random input).
    assert_eq!(p.jittered(3, 0.0), Duration::ZERO);
    assert_eq!(p.jittered(3, 1.0), p.ceiling(3));
    assert_eq!(p.jittered(3, 0.5), p.ceiling(3) / 2);
    assert_eq!(p.jittered(3, 7.0), p.ceiling(3));
    assert_eq!(p.jittered(3, -1.0), Duration::ZERO);
    let delays: Vec<Duration> = (0..200).map(|_| p.delay(3)).collect();
    assert!(delays.iter().all(|d| *d <= p.ceiling(3)));
    let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
    assert!(distinct.len() > 100, "jittered delays differ");
    // A factor below 1 does not shrink the backoff.
    let odd = ReconnectPolicy { initial: Duration::from_millis(100), factor: 0.5, ..p };
    assert_eq!(odd.ceiling(5), Duration::from_millis(100));
}

#[test]
fn final_errors_stop_reconnecting() {
    assert!(is_final(Some(ErrorCode::TokenExpired)));
    assert!(is_final(Some(ErrorCode::Kicked)));
    assert!(is_final(Some(ErrorCode::Banned)));
    assert!(is_final(Some(ErrorCode::UnsupportedVersion)));
    assert!(!is_final(Some(ErrorCode::ShuttingDown)));
    assert!(!is_final(Some(ErrorCode::SlowConsumer)));
    assert!(!is_final(Some(ErrorCode::HeartbeatTimeout)));
    assert!(!is_final(None));
}

#[test]
fn resume_point_is_the_later_of_join_and_delivery() {
    assert_eq!(RoomState::default().resume_from(), None);
    assert_eq!(RoomState { joined: true, base: 7, delivered: 0 }.resume_from(), Some(7));
    assert_eq!(RoomState { joined: true, base: 10, delivered: 12 }.resume_from(), Some(12));
}

/// Node A serves three rooms, delivers two messages, then vanishes; the client moves to
/// node B, rejoins each room from where it was, and gets the rest once, in order.
#[tokio::test]
async fn reconnects_to_the_next_node_and_resumes_every_room() {
    let (drop_a, a_may_drop) = oneshot::channel::<()>();
    let url_a = serve(|mut ws| async move {
        handshake(&mut ws, "s1").await;
        for (room, last) in [("chat", 10), ("quiet", 7), ("nohist", 0)] {
            let (id, name, from) = next_join(&mut ws).await;
            assert_eq!((name.as_str(), from), (room, None));
            ws.send(joined(id, room, last, 0)).await.unwrap();
        }
        ws.send(message("chat", 11, 10)).await.unwrap();
        ws.send(message("chat", 12, 11)).await.unwrap();
        let unreliable = pb::Message { room: "nohist".into(), payload: "u".into(), ..Default::default() };
        ws.send(frame(server_frame::Kind::Message(unreliable))).await.unwrap();
        let _ = a_may_drop.await;
        // Vanish without a close frame (a killed node).
    })
    .await;
    let (resumes_tx, resumes_rx) = oneshot::channel();
    let url_b = serve(|mut ws| async move {
        assert_eq!(handshake(&mut ws, "s2").await, "token");
        // The rejoins are pipelined: answer them in arrival order.
        let mut resumes = BTreeMap::new();
        for _ in 0..3 {
            let (id, room, from) = next_join(&mut ws).await;
            resumes.insert(room.clone(), from);
            match room.as_str() {
                "chat" => {
                    ws.send(joined(id, "chat", 14, 3)).await.unwrap();
                    // The replay overlaps what the client has (12): it must drop it.
                    for (offset, prev) in [(12, 11), (13, 12), (14, 13)] {
                        ws.send(message("chat", offset, prev)).await.unwrap();
                    }
                }
                "quiet" => ws.send(joined(id, "quiet", 9, 0)).await.unwrap(),
                _ => ws.send(joined(id, &room, 0, 0)).await.unwrap(),
            }
        }
        let _ = resumes_tx.send(resumes);
        ws.send(message("chat", 15, 14)).await.unwrap();
        drain(&mut ws).await;
    })
    .await;

    let (client, mut events) = ReconnectingClient::connect(vec![config(url_a), config(url_b)], fast()).await.unwrap();
    assert_eq!(client.session_id(), "s1");
    for room in ["chat", "quiet", "nohist"] {
        client.join(room).await.unwrap();
    }
    for want in [11, 12] {
        assert!(matches!(next_event(&mut events).await, Event::Message(m) if m.offset == want));
    }
    assert!(matches!(next_event(&mut events).await, Event::Message(m) if m.offset == 0 && m.room == "nohist"));
    drop_a.send(()).unwrap();
    assert!(matches!(next_event(&mut events).await, Event::Disconnected { code: None, .. }));
    match next_event(&mut events).await {
        Event::Reconnected { welcome } => {
            assert_eq!((welcome.session_id.as_str(), welcome.node.as_str()), ("s2", "node-s2"))
        }
        other => panic!("expected Reconnected, got {other:?}"),
    }
    let mut rejoined = Vec::new();
    let mut chat = Vec::new();
    while chat.last() != Some(&15) {
        match next_event(&mut events).await {
            Event::Rejoined(j) => {
                assert!(!j.history_gap);
                if j.room == "chat" {
                    assert!(chat.is_empty(), "Rejoined comes before the room's replay");
                }
                rejoined.push(j.room);
            }
            Event::Message(m) => chat.push(m.offset),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(chat, [13, 14, 15], "the rest of the room once, in order");
    rejoined.sort();
    assert_eq!(rejoined, ["chat", "nohist", "quiet"]);
    let resumes = resumes_rx.await.unwrap();
    assert_eq!(resumes["chat"], Some(12), "after the last message delivered");
    assert_eq!(resumes["quiet"], Some(7), "after the room's offset at join");
    assert_eq!(resumes["nohist"], None, "nothing reliable seen");
    assert_eq!(client.session_id(), "s2");
}

#[tokio::test]
async fn no_reconnect_after_a_final_error() {
    let (url, accepted) = serve_each(|n, mut ws| async move {
        handshake(&mut ws, &format!("s{n}")).await;
        if n == 0 {
            close_with(&mut ws, ErrorCode::Kicked, "removed by an operator").await;
        } else {
            drain(&mut ws).await;
        }
    })
    .await;
    let (client, mut events) = ReconnectingClient::connect(vec![config(url)], fast()).await.unwrap();
    assert!(matches!(next_event(&mut events).await, Event::Error(e) if e.code() == ErrorCode::Kicked));
    assert!(matches!(next_event(&mut events).await, Event::Closed { code: Some(ErrorCode::Kicked), .. }));
    // The stream ended: the supervisor is gone, so no reconnect can follow.
    assert!(events.recv().await.is_none());
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert!(client.is_closed());
    let err = client.publish("demo", "x".into(), true, "").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Kicked));
}

#[tokio::test]
async fn a_final_refusal_while_reconnecting_stops() {
    let (url, accepted) = serve_each(|n, mut ws| async move {
        if n == 0 {
            handshake(&mut ws, "s0").await;
            let code = close_code(ErrorCode::SlowConsumer).into();
            let _ = ws.close(Some(CloseFrame { code, reason: "too slow".into() })).await;
            drain(&mut ws).await;
        } else {
            next_client_frame(&mut ws).await;
            close_with(&mut ws, ErrorCode::TokenExpired, "token expired").await;
        }
    })
    .await;
    let (_client, mut events) = ReconnectingClient::connect(vec![config(url)], fast()).await.unwrap();
    assert!(matches!(next_event(&mut events).await, Event::Disconnected { code: Some(ErrorCode::SlowConsumer), .. }));
    assert!(matches!(next_event(&mut events).await, Event::Closed { code: Some(ErrorCode::TokenExpired), .. }));
    assert!(events.recv().await.is_none());
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn gives_up_after_max_attempts() {
    let url_a = serve(|mut ws| async move {
        handshake(&mut ws, "s1").await; // then vanish
    })
    .await;
    // Nothing listens on B's port.
    let url_b = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("ws://{}/ws", l.local_addr().unwrap())
    };
    let policy = ReconnectPolicy { max_attempts: Some(3), ..fast() };
    let (client, mut events) = ReconnectingClient::connect(vec![config(url_a), config(url_b)], policy).await.unwrap();
    assert!(matches!(next_event(&mut events).await, Event::Disconnected { .. }));
    match next_event(&mut events).await {
        Event::Closed { reason, .. } => assert!(reason.contains("gave up"), "{reason}"),
        other => panic!("expected Closed, got {other:?}"),
    }
    assert!(events.recv().await.is_none());
    assert!(matches!(client.join("demo").await, Err(ClientError::Closed { .. })));
}

#[tokio::test]
async fn go_away_moves_to_another_node_after_the_hint() {
    let (a_closed_tx, a_closed) = oneshot::channel();
    let url_a = serve(|mut ws| async move {
        handshake(&mut ws, "s1").await;
        let g = pb::GoAway { reason: "draining".into(), reconnect_after_ms: 50 };
        ws.send(frame(server_frame::Kind::GoAway(g))).await.unwrap();
        drain(&mut ws).await; // the client leaves by itself
        let _ = a_closed_tx.send(());
    })
    .await;
    let url_b = serve(|mut ws| async move {
        handshake(&mut ws, "s2").await;
        drain(&mut ws).await;
    })
    .await;
    let (client, mut events) = ReconnectingClient::connect(vec![config(url_a), config(url_b)], fast()).await.unwrap();
    assert!(matches!(next_event(&mut events).await, Event::GoAway(g) if g.reconnect_after_ms == 50));
    assert!(matches!(next_event(&mut events).await, Event::Disconnected { .. }));
    assert!(matches!(next_event(&mut events).await, Event::Reconnected { welcome } if welcome.session_id == "s2"));
    tokio::time::timeout(Duration::from_secs(5), a_closed).await.expect("left node A").unwrap();
    client.close().await;
    assert!(matches!(next_event(&mut events).await, Event::Closed { .. }));
    assert!(events.recv().await.is_none());
}

#[tokio::test]
async fn requests_made_while_reconnecting_wait_for_the_new_session() {
    let (open_gate, gate) = oneshot::channel::<()>();
    let gate = Arc::new(Mutex::new(Some(gate)));
    let (url, _) = serve_each(move |n, mut ws| {
        let gate = gate.clone();
        async move {
            if n == 0 {
                handshake(&mut ws, "s0").await; // then vanish
                return;
            }
            let gate = gate.lock().unwrap().take();
            if let Some(gate) = gate {
                let _ = gate.await;
            }
            handshake(&mut ws, "s1").await;
            let f = next_client_frame(&mut ws).await;
            assert!(matches!(f.kind, Some(client_frame::Kind::Publish(_))));
            ws.send(frame(server_frame::Kind::Ack(pb::Ack { ref_id: f.id, offset: 77, ..Default::default() })))
                .await
                .unwrap();
            drain(&mut ws).await;
        }
    })
    .await;
    let (client, mut events) = ReconnectingClient::connect(vec![config(url)], fast()).await.unwrap();
    assert!(matches!(next_event(&mut events).await, Event::Disconnected { .. }));
    let publishing = tokio::spawn({
        let client = client.clone();
        async move { client.publish("demo", "x".into(), true, "").await }
    });
    open_gate.send(()).unwrap();
    assert!(matches!(next_event(&mut events).await, Event::Reconnected { .. }));
    assert_eq!(publishing.await.unwrap().unwrap(), 77);
}

#[tokio::test]
async fn close_during_backoff_ends_at_once() {
    let (url, _) = serve_each(|_, mut ws| async move {
        handshake(&mut ws, "s0").await; // then vanish
    })
    .await;
    // A long backoff: close must not wait for it.
    let policy = ReconnectPolicy { initial: Duration::from_secs(60), max: Duration::from_secs(60), ..fast() };
    let (client, mut events) = ReconnectingClient::connect(vec![config(url)], policy).await.unwrap();
    assert!(matches!(next_event(&mut events).await, Event::Disconnected { .. }));
    client.close().await;
    assert!(matches!(next_event(&mut events).await, Event::Closed { .. }));
    assert!(events.recv().await.is_none());
    assert!(matches!(client.publish("demo", "x".into(), true, "").await, Err(ClientError::Closed { .. })));
}

#[tokio::test]
async fn a_room_refused_on_rejoin_is_reported_and_forgotten() {
    let (url, _) = serve_each(|n, mut ws| async move {
        handshake(&mut ws, &format!("s{n}")).await;
        match n {
            0 => {
                for _ in 0..2 {
                    let (id, room, _) = next_join(&mut ws).await;
                    ws.send(joined(id, &room, 0, 0)).await.unwrap();
                }
                drain(&mut ws).await; // the test closes this connection below
            }
            1 => {
                for _ in 0..2 {
                    let (id, room, _) = next_join(&mut ws).await;
                    if room == "b" {
                        let error = pb::Error {
                            code: ErrorCode::Forbidden as i32,
                            message: "no".into(),
                            ref_id: id,
                            fatal: false,
                        };
                        ws.send(frame(server_frame::Kind::Error(error))).await.unwrap();
                    } else {
                        ws.send(joined(id, &room, 0, 0)).await.unwrap();
                    }
                }
                // Vanish once the client saw both answers (it publishes then).
                let f = next_client_frame(&mut ws).await;
                assert!(matches!(f.kind, Some(client_frame::Kind::Publish(_))));
            }
            _ => {
                let (id, room, _) = next_join(&mut ws).await;
                assert_eq!(room, "a", "only the room still joined");
                ws.send(joined(id, &room, 0, 0)).await.unwrap();
                let f = next_client_frame(&mut ws).await;
                assert!(matches!(f.kind, Some(client_frame::Kind::Publish(_))), "no join of b: {f:?}");
                ws.send(frame(server_frame::Kind::Ack(pb::Ack { ref_id: f.id, ..Default::default() }))).await.unwrap();
                drain(&mut ws).await;
            }
        }
    })
    .await;
    let (client, mut events) = ReconnectingClient::connect(vec![config(url)], fast()).await.unwrap();
    client.join("a").await.unwrap();
    client.join("b").await.unwrap();
    client.client().close().await; // a lost connection, as far as the reconnecting client knows
    assert!(matches!(next_event(&mut events).await, Event::Disconnected { .. }));
    assert!(matches!(next_event(&mut events).await, Event::Reconnected { .. }));
    let (mut rejoined, mut refused) = (false, false);
    while !(rejoined && refused) {
        match next_event(&mut events).await {
            Event::Rejoined(j) => rejoined |= j.room == "a",
            Event::Error(e) => {
                assert_eq!(e.code(), ErrorCode::Forbidden);
                assert!(e.message.contains("rejoining b"), "{}", e.message);
                refused = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let _ = client.publish_nowait("a", "x".into(), true, "").await;
    assert!(matches!(next_event(&mut events).await, Event::Disconnected { .. }));
    assert!(matches!(next_event(&mut events).await, Event::Reconnected { .. }));
    assert!(matches!(next_event(&mut events).await, Event::Rejoined(j) if j.room == "a"));
    assert_eq!(client.publish("a", "y".into(), true, "").await.unwrap(), 0);
}

#[tokio::test]
async fn a_room_whose_history_started_over_is_not_mistaken_for_duplicates() {
    let (resumed_tx, resumed) = oneshot::channel();
    let resumed_tx = Arc::new(Mutex::new(Some(resumed_tx)));
    let (url, _) = serve_each(move |n, mut ws| {
        let resumed_tx = resumed_tx.clone();
        async move {
            handshake(&mut ws, &format!("s{n}")).await;
            let (id, room, from) = next_join(&mut ws).await;
            if n == 0 {
                ws.send(joined(id, &room, 40, 0)).await.unwrap();
                ws.send(message(&room, 41, 40)).await.unwrap();
                drain(&mut ws).await; // the test closes this connection
                return;
            }
            if let Some(tx) = resumed_tx.lock().unwrap().take() {
                let _ = tx.send(from);
            }
            // The log was lost: the room's offsets start over, below the resume point.
            let j =
                pb::Joined { ref_id: id, room: room.clone(), last_offset: 1, history_gap: true, ..Default::default() };
            ws.send(frame(server_frame::Kind::Joined(j))).await.unwrap();
            ws.send(message(&room, 2, 1)).await.unwrap();
            drain(&mut ws).await;
        }
    })
    .await;
    let (client, mut events) = ReconnectingClient::connect(vec![config(url)], fast()).await.unwrap();
    client.join("chat").await.unwrap();
    assert!(matches!(next_event(&mut events).await, Event::Message(m) if m.offset == 41));
    client.client().close().await;
    assert!(matches!(next_event(&mut events).await, Event::Disconnected { .. }));
    assert!(matches!(next_event(&mut events).await, Event::Reconnected { .. }));
    assert!(matches!(next_event(&mut events).await, Event::Rejoined(j) if j.history_gap));
    assert!(matches!(next_event(&mut events).await, Event::Message(m) if m.offset == 2));
    assert_eq!(resumed.await.unwrap(), Some(41));
}

/// Dropping only the events keeps a publisher working; dropping the handles too closes
/// the session at once, even in a quiet room.
#[tokio::test]
async fn the_session_lives_while_handles_or_events_do() {
    let (closed_tx, closed_rx) = oneshot::channel();
    let url = serve(|mut ws| async move {
        handshake(&mut ws, "s0").await;
        // Answer one publish, then wait for the close.
        let f = next_client_frame(&mut ws).await;
        assert!(matches!(f.kind, Some(client_frame::Kind::Publish(_))), "{f:?}");
        let ack = pb::Ack { ref_id: f.id, offset: 5, ..Default::default() };
        ws.send(frame(server_frame::Kind::Ack(ack))).await.unwrap();
        drain(&mut ws).await; // returns when the client closes
        let _ = closed_tx.send(());
    })
    .await;
    let (client, events) = ReconnectingClient::connect(vec![config(url)], fast()).await.unwrap();
    drop(events);
    assert_eq!(client.publish("demo", "x".into(), true, "").await.unwrap(), 5, "a publisher without listener works");
    let other = client.clone();
    drop(client);
    assert!(!other.is_closed(), "a remaining handle keeps the session");
    drop(other);
    tokio::time::timeout(Duration::from_secs(5), closed_rx).await.expect("closed in time").unwrap();
}

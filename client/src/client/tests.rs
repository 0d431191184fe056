//! The connection logic against a scripted in-process WebSocket server.

use super::*;
use crate::test_server::{config, frame, handshake, next_client_frame, serve, welcome};
use futures_util::{SinkExt, StreamExt};
use switchboard_protocol::close_code;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

#[tokio::test]
async fn hello_welcome_and_requests_matched_by_id() {
    let url = serve(|mut ws| async move {
        match next_client_frame(&mut ws).await.kind {
            Some(client_frame::Kind::Hello(h)) => assert_eq!((h.protocol_version, h.token.as_str()), (1, "token")),
            other => panic!("expected Hello, got {other:?}"),
        }
        ws.send(welcome("s1")).await.unwrap();
        let join = next_client_frame(&mut ws).await;
        let publish = next_client_frame(&mut ws).await;
        assert!(join.id != 0 && publish.id > join.id);
        // Answer out of order, with an event in between.
        ws.send(frame(server_frame::Kind::Error(pb::Error {
            code: ErrorCode::Forbidden as i32,
            message: "no".into(),
            ref_id: publish.id,
            fatal: false,
        })))
        .await
        .unwrap();
        ws.send(frame(server_frame::Kind::GoAway(pb::GoAway::default()))).await.unwrap();
        let joined = pb::Joined { ref_id: join.id, room: "demo".into(), ..Default::default() };
        ws.send(frame(server_frame::Kind::Joined(joined))).await.unwrap();
        while ws.next().await.is_some() {}
    })
    .await;
    let (client, mut events) = Client::connect(config(url)).await.unwrap();
    assert_eq!(client.session_id(), "s1");
    let (joined, published) =
        tokio::join!(client.join("demo"), client.publish("demo", Bytes::from_static(b"x"), true, "chat"));
    assert_eq!(joined.unwrap().room, "demo");
    assert_eq!(published.unwrap_err().code(), Some(ErrorCode::Forbidden));
    assert!(matches!(events.recv().await, Some(Event::GoAway(_))));
}

#[tokio::test]
async fn refusal_is_typed() {
    let url = serve(|mut ws| async move {
        next_client_frame(&mut ws).await;
        let error =
            pb::Error { code: ErrorCode::TokenInvalid as i32, message: "bad token".into(), ref_id: 0, fatal: true };
        ws.send(frame(server_frame::Kind::Error(error))).await.unwrap();
        let _ = ws.close(None).await;
    })
    .await;
    match Client::connect(config(url)).await {
        Err(ClientError::Rejected { code, message }) => {
            assert_eq!((code, message.as_str()), (ErrorCode::TokenInvalid, "bad token"))
        }
        other => panic!("expected Rejected, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn server_close_ends_events_and_fails_requests_at_once() {
    let url = serve(|mut ws| async move {
        next_client_frame(&mut ws).await;
        ws.send(welcome("s1")).await.unwrap();
        let code = close_code(ErrorCode::SlowConsumer).into();
        let _ = ws.close(Some(CloseFrame { code, reason: "too slow".into() })).await;
        while ws.next().await.is_some() {}
    })
    .await;
    let (client, mut events) = Client::connect(config(url)).await.unwrap();
    match events.recv().await {
        Some(Event::Closed { code, reason }) => {
            assert_eq!((code, reason.as_str()), (Some(ErrorCode::SlowConsumer), "too slow"))
        }
        other => panic!("expected Closed, got {other:?}"),
    }
    assert!(events.recv().await.is_none());
    let started = std::time::Instant::now();
    let err = client.join("demo").await.unwrap_err();
    assert!(matches!(err, ClientError::Closed { code: Some(ErrorCode::SlowConsumer), .. }), "{err:?}");
    // At once, not after the request timeout (the alternative this tells apart); no absolute
    // bound (the suite runs on loaded machines).
    let timeout = config(String::new()).request_timeout;
    assert!(started.elapsed() < timeout / 2, "failed after {:?}", started.elapsed());
    assert!(client.media(pb::Media::default()).await.is_err());
}

/// Answer the next request (which must be `expect`ed) with an `Ack` built by `ack`.
async fn ack_next(ws: &mut crate::test_server::ServerWs, ack: pb::Ack) -> ClientFrame {
    let f = next_client_frame(ws).await;
    assert_ne!(f.id, 0, "a request carries an id");
    ws.send(frame(server_frame::Kind::Ack(pb::Ack { ref_id: f.id, ..ack }))).await.unwrap();
    f
}

#[tokio::test]
async fn publish_returns_the_offset_from_the_ack() {
    let url = serve(|mut ws| async move {
        handshake(&mut ws, "s1").await;
        let f = ack_next(&mut ws, pb::Ack { offset: 42, ..Default::default() }).await;
        assert!(matches!(f.kind, Some(client_frame::Kind::Publish(p)) if p.reliable && p.room == "demo"));
        // Unreliable (or history off): the server acks with offset 0.
        ack_next(&mut ws, pb::Ack::default()).await;
        crate::test_server::drain(&mut ws).await;
    })
    .await;
    let (client, _events) = Client::connect(config(url)).await.unwrap();
    assert_eq!(client.publish("demo", Bytes::from_static(b"x"), true, "chat").await.unwrap(), 42);
    assert_eq!(client.publish("demo", Bytes::from_static(b"y"), false, "chat").await.unwrap(), 0);
}

#[tokio::test]
async fn call_requests_carry_their_fields_and_invite_returns_the_call_id() {
    let url = serve(|mut ws| async move {
        handshake(&mut ws, "s1").await;
        let invite = ack_next(&mut ws, pb::Ack { call: "call-1".into(), ..Default::default() }).await;
        match invite.kind {
            Some(client_frame::Kind::CallInvite(i)) => {
                assert_eq!(i.callees, ["bob", "carol"]);
                assert_eq!(i.media(), pb::CallMedia::Video);
            }
            other => panic!("expected CallInvite, got {other:?}"),
        }
        let answer = ack_next(&mut ws, pb::Ack::default()).await;
        assert!(matches!(answer.kind, Some(client_frame::Kind::CallAnswer(a)) if a.call == "call-1" && !a.accept));
        let signal = ack_next(&mut ws, pb::Ack::default()).await;
        match signal.kind {
            Some(client_frame::Kind::Signal(s)) => {
                assert_eq!((s.room.as_str(), s.call.as_str(), s.kind()), ("", "call-1", pb::SignalKind::Offer));
                assert_eq!(s.target, Some(pb::signal::Target::ToSession("s9".into())));
            }
            other => panic!("expected Signal, got {other:?}"),
        }
        let cancel = ack_next(&mut ws, pb::Ack::default()).await;
        assert!(matches!(cancel.kind, Some(client_frame::Kind::CallCancel(c)) if c.call == "call-1"));
        // A call that is gone: the typed error reaches the caller.
        let end = next_client_frame(&mut ws).await;
        assert!(matches!(end.kind, Some(client_frame::Kind::CallEnd(ref c)) if c.call == "call-1"));
        let error = pb::Error {
            code: ErrorCode::CallNotFound as i32,
            message: "no such call".into(),
            ref_id: end.id,
            fatal: false,
        };
        ws.send(frame(server_frame::Kind::Error(error))).await.unwrap();
        let event = pb::CallEvent { state: pb::CallState::Ringing as i32, ..Default::default() };
        ws.send(frame(server_frame::Kind::Call(event))).await.unwrap();
        crate::test_server::drain(&mut ws).await;
    })
    .await;
    let (client, mut events) = Client::connect(config(url)).await.unwrap();
    assert_eq!(client.call_invite(&["bob", "carol"], pb::CallMedia::Video).await.unwrap(), "call-1");
    client.call_answer("call-1", false).await.unwrap();
    client.signal_call_session("call-1", "s9", pb::SignalKind::Offer, Bytes::from_static(b"sdp")).await.unwrap();
    client.call_cancel("call-1").await.unwrap();
    let err = client.call_end("call-1").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::CallNotFound));
    assert!(matches!(events.recv().await, Some(Event::Call(c)) if c.state() == pb::CallState::Ringing));
}

#[tokio::test]
async fn a_silent_server_ends_the_connection_with_heartbeat_timeout() {
    let url = serve(|mut ws| async move {
        next_client_frame(&mut ws).await;
        let w = pb::Welcome { protocol_version: PROTOCOL_VERSION, heartbeat_ms: 250, ..Default::default() };
        ws.send(crate::test_server::welcome_frame(w)).await.unwrap();
        // Read (the client's pings) but never answer.
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    let (client, mut events) = Client::connect(config(url)).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.expect("closed in time");
    assert!(matches!(closed, Some(Event::Closed { code: Some(ErrorCode::HeartbeatTimeout), .. })), "{closed:?}");
    assert!(client.is_closed());
}

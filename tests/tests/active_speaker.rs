//! The active speaker, across two real nodes on a real nats-server: two speakers on
//! different nodes put audio levels on their frames; every member on either node hears
//! `ActiveSpeaker` name the loud one, and the other when they swap.

use bytes::Bytes;
use std::time::Duration;
use switchboard_client::{pb, Client, ClientConfig, Event, Events};
use switchboard_tests::{token, within, NatsServer, NodeOptions, TestNode, WAIT};
use tokio::sync::watch;

const ROOM: &str = "speakers";

/// Sends a 20 ms Opus-sized audio frame with the level `level` says, until dropped.
fn speak(client: Client, level: watch::Receiver<u32>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for seq in 0.. {
            tick.tick().await;
            let frame = pb::Media {
                room: ROOM.into(),
                track: 2,
                seq,
                timestamp: seq * 20_000,
                keyframe: true,
                codec: "opus".into(),
                payload: Bytes::from(vec![0u8; 60]),
                audio_level: Some(*level.borrow()),
                ..Default::default()
            };
            if client.media(frame).await.is_err() || level.has_changed().is_err() {
                return;
            }
        }
    });
}

/// Wait for an `ActiveSpeaker` naming `session` (earlier ones of others are skipped).
async fn speaker_is(events: &mut Events, session: &str, who: &str) -> pb::ActiveSpeaker {
    within(WAIT, &format!("{who} to hear the new active speaker"), async {
        loop {
            match events.recv().await.expect("event stream ended") {
                Event::ActiveSpeaker(a) if a.session == session => return a,
                Event::Error(e) => panic!("{who} got {e:?}"),
                _ => {}
            }
        }
    })
    .await
}

async fn connect(node: &TestNode, user: &str) -> (Client, Events) {
    // Room audio arrives meanwhile: room for all of it while a test looks elsewhere.
    let mut config = ClientConfig::new(node.ws_url(), token(user, &[ROOM]));
    config.event_buffer = 100_000;
    let (c, ev) = Client::connect(config).await.unwrap();
    c.join(ROOM).await.unwrap();
    (c, ev)
}

#[tokio::test]
async fn the_loudest_speaker_is_announced_on_every_node() {
    let nats = NatsServer::start().await;
    let opts = |id: &str| NodeOptions { nats_url: Some(nats.url()), node_id: Some(id.into()), ..Default::default() };
    let (n1, n2) = tokio::join!(TestNode::start(opts("east")), TestNode::start(opts("west")));
    let (alice, _alice_events) = connect(&n1, "alice").await;
    let (bob, _bob_events) = connect(&n2, "bob").await;
    let (_east, mut east) = connect(&n1, "listener-east").await;
    let (_west, mut west) = connect(&n2, "listener-west").await;
    let (a_id, b_id) = (alice.session_id().to_owned(), bob.session_id().to_owned());

    // Alice talks (-10 dBov), Bob is near silence (-100 dBov).
    let (alice_level, a_rx) = watch::channel(10);
    let (bob_level, b_rx) = watch::channel(100);
    speak(alice, a_rx);
    speak(bob, b_rx);
    for (events, who) in [(&mut east, "east"), (&mut west, "west")] {
        let a = speaker_is(events, &a_id, who).await;
        assert_eq!(a.user, "alice");
        assert_eq!(a.room, ROOM);
        assert!(a.level < 30, "{a:?}");
    }

    // They swap: Bob takes over on both nodes.
    alice_level.send(100).unwrap();
    bob_level.send(15).unwrap();
    for (events, who) in [(&mut east, "east"), (&mut west, "west")] {
        assert_eq!(speaker_is(events, &b_id, who).await.user, "bob");
    }
    for node in [&n1, &n2] {
        assert!(node.metric("switchboard_active_speaker_changes_total").await >= 2.0);
    }
}

//! `switchboard-cli`: join rooms and print events as JSON lines, or send a message.

mod bench;

use anyhow::Context;
use base64::Engine;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use switchboard_client::{pb, Client, ClientConfig, Event};

#[derive(Debug, Parser)]
#[command(name = "switchboard-cli", version, about = "Switchboard command-line client")]
struct Cli {
    /// Node URL: ws://HOST:PORT/ws (WebSocket) or https://HOST:PORT/wt (WebTransport).
    #[arg(long, global = true, env = "SWITCHBOARD_URL", default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Token (JWT), e.g. from `switchboard token`.
    #[arg(long, global = true, env = "SWITCHBOARD_TOKEN", hide_env_values = true, default_value = "")]
    token: String,
    /// SHA-256 (hex) of the server's self-signed WebTransport certificate
    /// (`curl http://HOST:8080/certificate.sha256`).
    #[arg(long, global = true, env = "SWITCHBOARD_CERT_HASH")]
    cert_hash: Option<String>,
    /// WebTransport: accept any certificate (development only).
    #[arg(long, global = true)]
    insecure: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Join rooms and print every event as one JSON line (the welcome first).
    Join {
        /// Room to join (repeat for several).
        #[arg(long = "room", required = true)]
        rooms: Vec<String>,
        /// Exit after this many room messages.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Load-test a node (loopback only): see `bench --help`.
    Bench(Box<bench::BenchArgs>),
    /// Join a room, publish one message, wait for the server's acknowledgement.
    Send {
        /// The room.
        #[arg(long)]
        room: String,
        /// The message (UTF-8).
        #[arg(long)]
        message: String,
        /// Application message kind.
        #[arg(long, default_value = "chat")]
        kind: String,
        /// Send unreliably (may be dropped for slow receivers).
        #[arg(long)]
        unreliable: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = match cli.command {
        Command::Bench(args) => return bench::run(*args, &cli.url, &cli.token, cli.cert_hash).await,
        other => other,
    };
    anyhow::ensure!(!cli.token.is_empty(), "--token (or SWITCHBOARD_TOKEN) is required");
    let mut config = ClientConfig::new(&cli.url, &cli.token);
    config.insecure = cli.insecure;
    config.cert_hashes.extend(cli.cert_hash.clone());
    let (client, mut events) = Client::connect(config).await.with_context(|| format!("connecting to {}", cli.url))?;
    match command {
        Command::Join { rooms, count } => {
            let w = client.welcome();
            print(json!({"event": "welcome", "session": w.session_id, "node": w.node, "user": w.user,
                         "heartbeat_ms": w.heartbeat_ms, "token_expires_at": w.token_expires_at}));
            for room in &rooms {
                let joined = client.join(room).await.with_context(|| format!("joining {room}"))?;
                print(json!({"event": "joined", "room": joined.room,
                             "participants": joined.participants.iter().map(participant).collect::<Vec<_>>()}));
            }
            let mut messages = 0u64;
            // Listen for Ctrl-C once, so a signal arriving between two events is not lost.
            let ctrl_c = tokio::signal::ctrl_c();
            tokio::pin!(ctrl_c);
            loop {
                let event = tokio::select! {
                    e = events.recv() => e,
                    _ = &mut ctrl_c => break,
                };
                let Some(event) = event else { break };
                let closed = matches!(event, Event::Closed { .. });
                messages += u64::from(matches!(event, Event::Message(_)));
                print(event_json(&event));
                if closed {
                    anyhow::bail!("connection closed");
                }
                if count.is_some_and(|n| messages >= n) {
                    break;
                }
            }
            client.close().await;
        }
        Command::Send { room, message, kind, unreliable } => {
            client.join(&room).await.with_context(|| format!("joining {room}"))?;
            client.publish(&room, message.into_bytes().into(), !unreliable, &kind).await.context("publishing")?;
            client.close().await;
        }
        Command::Bench(_) => {} // ran above, before connecting
    }
    Ok(())
}

fn print(v: Value) {
    println!("{v}");
}

fn participant(p: &pb::Participant) -> Value {
    json!({"user": p.user, "session": p.session, "name": p.name, "node": p.node})
}

fn sender(s: &Option<pb::Sender>) -> Value {
    match s {
        Some(s) => json!({"user": s.user, "session": s.session, "name": s.name, "node": s.node}),
        None => Value::Null,
    }
}

/// UTF-8 payloads as text, anything else as base64.
fn payload(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => json!(s),
        Err(_) => json!({"base64": base64::engine::general_purpose::STANDARD.encode(bytes)}),
    }
}

fn event_json(event: &Event) -> Value {
    match event {
        Event::Message(m) => json!({"event": "message", "room": m.room, "from": sender(&m.from), "offset": m.offset,
                                    "kind": m.kind, "reliable": m.reliable, "payload": payload(&m.payload)}),
        Event::ParticipantJoined(p) => {
            json!({"event": "participant_joined", "room": p.room, "participant": p.participant.as_ref().map(participant)})
        }
        Event::ParticipantLeft(p) => json!({"event": "participant_left", "room": p.room, "reason": p.reason,
                                            "participant": p.participant.as_ref().map(participant)}),
        Event::Signal(s) => json!({"event": "signal", "room": s.room, "from": sender(&s.from),
                                   "kind": s.kind().as_str_name(), "call": s.call, "payload": payload(&s.payload)}),
        Event::Media(m) => json!({"event": "media", "room": m.room, "from": sender(&m.from), "track": m.track,
                                  "seq": m.seq, "keyframe": m.keyframe, "codec": m.codec, "bytes": m.payload.len()}),
        Event::KeyframeRequest(k) => json!({"event": "keyframe_request", "room": k.room, "track": k.track}),
        Event::Left(l) => json!({"event": "left", "room": l.room, "reason": l.reason}),
        Event::GoAway(g) => json!({"event": "go_away", "reason": g.reason, "reconnect_after_ms": g.reconnect_after_ms}),
        Event::Error(e) => {
            json!({"event": "error", "code": e.code().as_str_name(), "message": e.message, "fatal": e.fatal})
        }
        Event::Closed { code, reason } => {
            json!({"event": "closed", "code": code.map(|c| c.as_str_name()), "reason": reason})
        }
    }
}

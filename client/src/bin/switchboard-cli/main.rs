//! `switchboard-cli`: join rooms and print events as JSON lines, send a message, or place,
//! answer and follow calls.

mod bench;

use anyhow::Context;
use base64::Engine;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use switchboard_client::{pb, Client, ClientConfig, ClientError, Event, Events, ReconnectPolicy, ReconnectingClient};

#[derive(Debug, Parser)]
#[command(name = "switchboard-cli", version, about = "Switchboard command-line client")]
struct Cli {
    /// Node URL: ws://HOST:PORT/ws (WebSocket) or https://HOST:PORT/wt (WebTransport).
    /// With `join --reconnect`, several nodes, comma separated (tried in turn).
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
    /// WebTransport: media on QUIC datagrams and per-group streams (`on`) or on the
    /// ordered control stream (`off`).
    #[arg(long, global = true, env = "SWITCHBOARD_WT_LANES", default_value = "on", value_parser = ["on", "off"])]
    wt_lanes: String,
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
        /// Survive lost connections: reconnect (rotating through the --url list) and resume
        /// every room from the last message printed.
        #[arg(long)]
        reconnect: bool,
    },
    /// Place, answer or follow calls.
    #[command(subcommand)]
    Call(CallCommand),
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

#[derive(Debug, Subcommand)]
enum CallCommand {
    /// Ring users: prints the call id, then the call's events until it ends (or Ctrl-C).
    Invite {
        /// Callee user id (repeat for several).
        #[arg(long = "to", required = true)]
        to: Vec<String>,
        /// A video call (default: audio).
        #[arg(long)]
        video: bool,
    },
    /// Accept a ringing call from this device, then print its events until it ends; or
    /// `--reject` it.
    Answer {
        /// The call id.
        call: String,
        /// Reject instead of accepting.
        #[arg(long)]
        reject: bool,
    },
    /// Withdraw a ringing call (caller only).
    Cancel {
        /// The call id.
        call: String,
    },
    /// End a call for every party.
    End {
        /// The call id.
        call: String,
    },
    /// Print this user's call events and call signaling as JSON lines until Ctrl-C.
    Listen,
}

/// A plain session, or one that reconnects by itself (`join --reconnect`).
enum Session {
    Plain(Client),
    Resilient(ReconnectingClient),
}

impl Session {
    fn welcome(&self) -> pb::Welcome {
        match self {
            Session::Plain(c) => c.welcome().clone(),
            Session::Resilient(c) => c.welcome(),
        }
    }

    async fn join(&self, room: &str) -> Result<pb::Joined, ClientError> {
        match self {
            Session::Plain(c) => c.join(room).await,
            Session::Resilient(c) => c.join(room).await,
        }
    }

    async fn close(&self) {
        match self {
            Session::Plain(c) => c.close().await,
            Session::Resilient(c) => c.close().await,
        }
    }
}

/// One config per `--url` entry.
fn configs(cli: &Cli) -> Vec<ClientConfig> {
    cli.url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|url| {
            let mut config = ClientConfig::new(url, &cli.token);
            config.insecure = cli.insecure;
            config.media_lanes = cli.wt_lanes == "on";
            config.cert_hashes.extend(cli.cert_hash.clone());
            config
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    // Placeholder swapped in so `cli` can still be borrowed for its connection settings.
    let command = std::mem::replace(&mut cli.command, Command::Call(CallCommand::Listen));
    let command = match command {
        Command::Bench(args) => {
            return bench::run(*args, &cli.url, &cli.token, cli.cert_hash, cli.wt_lanes == "on").await
        }
        other => other,
    };
    anyhow::ensure!(!cli.token.is_empty(), "--token (or SWITCHBOARD_TOKEN) is required");
    let mut configs = configs(&cli);
    anyhow::ensure!(!configs.is_empty(), "--url is required");
    // Signals are caught from here on: whatever the command is doing, a Ctrl-C or SIGTERM
    // ends it and the connection is closed properly (not cut for the node to time out).
    let shutdown = shutdown_signal().context("installing signal handlers")?;
    tokio::pin!(shutdown);
    let reconnect = matches!(command, Command::Join { reconnect: true, .. });
    let connect = async {
        anyhow::Ok(match reconnect {
            true => {
                let (c, e) = ReconnectingClient::connect(configs, ReconnectPolicy::default())
                    .await
                    .with_context(|| format!("connecting to {}", cli.url))?;
                (Session::Resilient(c), e)
            }
            false => {
                let config = configs.swap_remove(0);
                let url = config.url.clone();
                let (c, e) = Client::connect(config).await.with_context(|| format!("connecting to {url}"))?;
                (Session::Plain(c), e)
            }
        })
    };
    let (session, mut events) = tokio::select! {
        connected = connect => connected?,
        () = &mut shutdown => return Ok(()),
    };
    let result = tokio::select! {
        result = run(command, &session, &mut events) => result,
        () = &mut shutdown => Ok(()),
    };
    session.close().await;
    result
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when this is called,
/// not at its first poll, so a signal arriving at any time after it is never met with the
/// default action (exiting without closing the connection).
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// Run one command on a connected session (closing it is the caller's job).
async fn run(command: Command, session: &Session, events: &mut Events) -> anyhow::Result<()> {
    match command {
        Command::Join { rooms, count, .. } => {
            let w = session.welcome();
            print(json!({"event": "welcome", "session": w.session_id, "node": w.node, "user": w.user,
                         "heartbeat_ms": w.heartbeat_ms, "token_expires_at": w.token_expires_at,
                         "media_lanes": w.media_lanes}));
            for room in &rooms {
                let joined = session.join(room).await.with_context(|| format!("joining {room}"))?;
                print(json!({"event": "joined", "room": joined.room,
                             "participants": joined.participants.iter().map(participant).collect::<Vec<_>>()}));
            }
            let mut messages = 0u64;
            while let Some(event) = events.recv().await {
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
        }
        Command::Send { room, message, kind, unreliable } => {
            let Session::Plain(client) = session else { unreachable!("send connects plainly") };
            client.join(&room).await.with_context(|| format!("joining {room}"))?;
            let offset =
                client.publish(&room, message.into_bytes().into(), !unreliable, &kind).await.context("publishing")?;
            if offset != 0 {
                print(json!({"event": "sent", "room": room, "offset": offset}));
            }
        }
        Command::Call(action) => {
            let Session::Plain(client) = session else { unreachable!("calls connect plainly") };
            call(client, events, &action).await?;
        }
        Command::Bench(_) => {} // ran in main, before connecting
    }
    Ok(())
}

/// Run one `call` subcommand.
async fn call(client: &Client, events: &mut Events, action: &CallCommand) -> anyhow::Result<()> {
    match action {
        CallCommand::Invite { to, video } => {
            let callees: Vec<&str> = to.iter().map(String::as_str).collect();
            let media = if *video { pb::CallMedia::Video } else { pb::CallMedia::Audio };
            let id = client.call_invite(&callees, media).await.context("inviting")?;
            print(json!({"event": "invited", "call": id}));
            follow_calls(events, Some(&id)).await
        }
        CallCommand::Answer { call, reject } => {
            client.call_answer(call, !reject).await.context("answering")?;
            print(json!({"event": if *reject { "rejected" } else { "accepted" }, "call": call}));
            if *reject {
                return Ok(());
            }
            follow_calls(events, Some(call)).await
        }
        CallCommand::Cancel { call } => client.call_cancel(call).await.context("cancelling"),
        CallCommand::End { call } => client.call_end(call).await.context("ending"),
        CallCommand::Listen => follow_calls(events, None).await,
    }
}

/// Print call events and call signaling (of `only` call, or all) until that call ends or
/// the connection closes (or a signal: see `main`).
async fn follow_calls(events: &mut Events, only: Option<&str>) -> anyhow::Result<()> {
    loop {
        let Some(event) = events.recv().await else { return Ok(()) };
        let (call_id, ended) = match &event {
            Event::Call(c) => {
                let id = c.call.as_ref().map(|c| c.id.as_str()).unwrap_or_default();
                (Some(id.to_owned()), c.state() == pb::CallState::Ended)
            }
            Event::Signal(s) if !s.call.is_empty() => (Some(s.call.clone()), false),
            Event::Error(_) | Event::GoAway(_) | Event::Closed { .. } => (None, false),
            _ => continue,
        };
        if let (Some(want), Some(id)) = (only, &call_id) {
            if want != id {
                continue;
            }
        }
        print(event_json(&event));
        if matches!(event, Event::Closed { .. }) {
            anyhow::bail!("connection closed");
        }
        if ended && only.is_some() {
            return Ok(());
        }
    }
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
                                  "seq": m.seq, "keyframe": m.keyframe, "codec": m.codec, "bytes": m.payload.len(),
                                  "layer": m.layer, "audio_level": m.audio_level}),
        Event::KeyframeRequest(k) => {
            json!({"event": "keyframe_request", "room": k.room, "track": k.track, "layer": k.layer})
        }
        Event::ActiveSpeaker(a) => json!({"event": "active_speaker", "room": a.room, "session": a.session,
                                          "user": a.user, "level": a.level}),
        Event::Left(l) => json!({"event": "left", "room": l.room, "reason": l.reason}),
        Event::RoomStats(r) => json!({"event": "room_stats", "room": r.room, "participant_count": r.participant_count}),
        Event::Disconnected { code, reason } => {
            json!({"event": "disconnected", "code": code.map(|c| c.as_str_name()), "reason": reason})
        }
        Event::Reconnected { welcome } => {
            json!({"event": "reconnected", "session": welcome.session_id, "node": welcome.node})
        }
        Event::Rejoined(j) => json!({"event": "rejoined", "room": j.room, "history_gap": j.history_gap,
                                     "replayed": j.replayed, "last_offset": j.last_offset}),
        Event::Call(c) => {
            let call = c.call.clone().unwrap_or_default();
            json!({"event": "call", "call": call.id, "state": c.state().as_str_name(), "by": sender(&c.by),
                   "answered_elsewhere": c.answered_elsewhere, "room": call.room,
                   "outcome": call.outcome().as_str_name(), "duration_ms": call.duration_ms})
        }
        Event::GoAway(g) => json!({"event": "go_away", "reason": g.reason, "reconnect_after_ms": g.reconnect_after_ms}),
        Event::Error(e) => {
            json!({"event": "error", "code": e.code().as_str_name(), "message": e.message, "fatal": e.fatal})
        }
        Event::Closed { code, reason } => {
            json!({"event": "closed", "code": code.map(|c| c.as_str_name()), "reason": reason})
        }
    }
}

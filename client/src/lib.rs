//! Rust client for Switchboard, over WebSocket or WebTransport with the same API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), switchboard_client::ClientError> {
//! use switchboard_client::{Client, ClientConfig, Event};
//! let (client, mut events) = Client::connect(ClientConfig::new("ws://127.0.0.1:8080/ws", "<jwt>")).await?;
//! let joined = client.join("demo").await?;
//! println!("{} participants", joined.participants.len());
//! // Reliable, with room history on: the message's offset in the room (else 0).
//! let offset = client.publish("demo", "hello".into(), true, "chat").await?;
//! println!("stored at {offset}");
//! while let Some(event) = events.recv().await {
//!     if let Event::Message(m) = event {
//!         println!("{:?}", m.payload);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! The URL picks the transport: `ws://` / `wss://` for WebSocket, `https://` for
//! WebTransport (pass the server's certificate hash for a self-signed certificate).
//!
//! # Media lanes
//!
//! Over WebTransport, media leaves the ordered control stream by default
//! ([`ClientConfig::media_lanes`]): [`Client::media`] sends a frame that fits a QUIC datagram
//! as one, and larger frames on one unidirectional stream per group (a keyframe starts a
//! group); media from the node's datagrams and streams arrives as [`Event::Media`] like any
//! other, a stale frame (older than the last delivered of its track, unless a newer keyframe)
//! dropped. [`Client::media_lanes`] says whether the node granted lanes and
//! [`Client::media_stats`] counts what went on which lane ([`MediaStats`]).
//!
//! # Surviving lost connections
//!
//! A [`Client`] is one session: when its connection ends, [`Event::Closed`] is its last
//! event. A [`ReconnectingClient`] keeps a session alive across lost connections and node
//! moves (`GoAway`): it reconnects with backoff and jitter ([`ReconnectPolicy`]), rotating
//! through the node URLs it was given, joins its rooms again resuming from the last
//! reliable message it delivered, and drops replayed duplicates, so the application keeps
//! one [`Events`] stream without gaps or duplicates (see [`ReconnectingClient`] for the
//! exact rules).
//!
//! ```no_run
//! # async fn demo() -> Result<(), switchboard_client::ClientError> {
//! use switchboard_client::{ClientConfig, Event, ReconnectPolicy, ReconnectingClient};
//! let urls = ["ws://10.0.0.1:8080/ws", "ws://10.0.0.2:8080/ws"];
//! let configs = urls.iter().map(|u| ClientConfig::new(*u, "<jwt>")).collect();
//! let (client, mut events) = ReconnectingClient::connect(configs, ReconnectPolicy::default()).await?;
//! client.join("demo").await?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::Message(m) => println!("{} {:?}", m.offset, m.payload),
//!         Event::Disconnected { reason, .. } => println!("reconnecting: {reason}"),
//!         Event::Reconnected { welcome } => println!("now on node {}", welcome.node),
//!         Event::Rejoined(j) if j.history_gap => println!("{}: some messages are lost; reload", j.room),
//!         Event::Closed { code, reason } => {
//!             println!("gave up, closed, or a final error ({code:?}): {reason}");
//!             break;
//!         }
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Calls
//!
//! A call rings every device of every callee; each party's devices get [`Event::Call`] on
//! every change. Accepted parties join the call's room (`call.room`) for room signaling
//! and media, or signal each other without a room ([`Client::signal_call`]).
//!
//! ```no_run
//! # async fn demo(caller: switchboard_client::Client, callee: switchboard_client::Client,
//! #               mut callee_events: switchboard_client::Events) -> Result<(), switchboard_client::ClientError> {
//! use switchboard_client::{pb, Event};
//! let id = caller.call_invite(&["bob"], pb::CallMedia::Video).await?;
//! // On one of bob's devices:
//! while let Some(Event::Call(e)) = callee_events.recv().await {
//!     let call = e.call.clone().unwrap_or_default();
//!     if call.id == id && e.state() == pb::CallState::Ringing {
//!         callee.call_answer(&call.id, true).await?;
//!         callee.join(&call.room).await?;
//!         break;
//!     }
//! }
//! caller.signal_call(&id, "bob", pb::SignalKind::Offer, "<sdp>".into()).await?;
//! caller.call_end(&id).await?;
//! # Ok(()) }
//! ```

mod client;
mod config;
mod error;
mod lanes;
mod reconnecting;
#[cfg(test)]
mod test_server;
mod transport;

pub use client::{Client, Event, Events};
pub use config::{parse_cert_hash, ClientConfig, TransportChoice};
pub use error::ClientError;
pub use lanes::MediaStats;
pub use reconnecting::{is_final, ReconnectPolicy, ReconnectingClient};
pub use switchboard_protocol::pb;
pub use switchboard_protocol::ErrorCode;
pub use transport::ws::{websocket_connect, Ws};

//! Rust client for Switchboard, over WebSocket or WebTransport with the same API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), switchboard_client::ClientError> {
//! use switchboard_client::{Client, ClientConfig, Event};
//! let (client, mut events) = Client::connect(ClientConfig::new("ws://127.0.0.1:8080/ws", "<jwt>")).await?;
//! let joined = client.join("demo").await?;
//! println!("{} participants", joined.participants.len());
//! client.publish("demo", "hello".into(), true, "chat").await?;
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

mod client;
mod config;
mod error;
mod transport;

pub use client::{Client, Event, Events};
pub use config::{parse_cert_hash, ClientConfig, TransportChoice};
pub use error::ClientError;
pub use switchboard_protocol::pb;
pub use switchboard_protocol::ErrorCode;
pub use transport::ws::{websocket_connect, Ws};

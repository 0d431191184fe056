//! Switchboard's transport-agnostic core, shared by the WebSocket and WebTransport edges.
//!
//! ```text
//! transport adapter -> session (auth, limits, state machine) -> rooms (registry, fan-out)
//!   -> bus (NATS | in-process) -> other nodes' rooms -> their sessions' outbound queues
//! ```
//!
//! An edge accepts a connection, wraps it in a [`Transport`] and calls [`session::run`]
//! with the shared [`Node`].

pub mod admin;
mod admission;
pub mod auth;
pub mod bus;
pub mod calls;
pub mod config;
pub mod ids;
pub mod limiter;
pub mod metrics;
pub mod node;
pub mod outbound;
pub mod rate;
mod rooms;
pub mod session;
pub mod transport;

pub use auth::{Claims, Minter, Verifier, VerifyKey};
pub use bus::{Bus, BusError, LocalBus, NatsBus, NatsOptions};
pub use config::RelayConfig;
pub use node::Node;
pub use session::{run as run_session, ConnInfo};
pub use transport::{Transport, TransportError, TransportKind};

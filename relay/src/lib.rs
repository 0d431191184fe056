//! Switchboard's transport-agnostic core, shared by the WebSocket and WebTransport edges.
//!
//! ```text
//! transport adapter -> session (auth, limits, state machine) -> rooms (registry, fan-out)
//!   -> bus (NATS | in-process) -> other nodes' rooms -> their sessions' outbound queues
//! ```
//!
//! An edge admits a connection as it arrives ([`admit`]: caps per address and the budget of
//! connections that have not authenticated, counted atomically), wraps it in a
//! [`Transport`] and calls [`session::run`] with the shared [`Node`] and the admission's
//! [`Ticket`].

pub mod admin;
pub mod admission;
pub mod auth;
mod bans;
pub mod bus;
pub mod calls;
pub mod config;
mod heal;
pub mod ids;
pub mod limiter;
pub mod metrics;
pub mod node;
pub mod origin;
pub mod outbound;
pub mod rate;
mod rooms;
pub mod session;
pub mod transport;

pub use admission::{admit, Refused, Ticket};
pub use auth::{Claims, Minter, Verifier, VerifyKey};
pub use bus::{Bus, BusError, LocalBus, NatsBus, NatsOptions};
pub use config::RelayConfig;
pub use node::Node;
pub use origin::{AllowedOrigins, OriginRefused};
pub use session::run as run_session;
pub use transport::{Incoming, Lane, MediaOrigin, MediaTag, Outgoing, Sent, Transport, TransportError, TransportKind};

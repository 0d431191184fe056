//! Switchboard's transport-agnostic core, shared by the WebSocket and WebTransport edges.
//!
//! ```text
//! transport adapter -> session (auth, limits, state machine) -> rooms (registry, fan-out)
//!   -> bus (NATS | in-process) -> other nodes' rooms -> their sessions' outbound queues
//! ```
//!
//! An edge admits a connection as it arrives ([`admit`]: caps per address and the budget of
//! connections that have not authenticated, counted atomically), wraps it in a
//! [`Transport`] and calls [`run_session`] with the shared [`Node`] and the admission's
//! [`Ticket`].
//!
//! Dependencies point one way:
//!
//! ```text
//! edges (actix-api, webtransport-server) -> Node (node.rs: start, background tasks, drain)
//!   -> parts (session, rooms, calls, admin, admission, bans) -> NodeContext (context.rs,
//!      liveness.rs: config, bus, metrics, session registry, liveness; each part's state)
//! ```
//!
//! [`Node`] owns the [`NodeContext`] and is the only place that starts the tasks driving
//! the parts (heartbeats and the reaper, the admin and call-service listeners, presence
//! restore after a reconnect). The parts take `&NodeContext` (or `Arc`/`Weak` of it when
//! they spawn) and never name `Node`, so nothing calls back up. The context holds each
//! part's state (`Rooms`, `Admission`, ...) as data but calls into none of them. Edges reach
//! the public functions of [`admin`] and [`calls`] with [`Node::context`].

pub mod admin;
pub mod admission;
pub mod auth;
mod bans;
pub mod bus;
pub mod calls;
pub mod config;
mod context;
mod heal;
pub mod ice;
pub mod ids;
pub mod layer_interest;
pub mod layers;
pub mod limiter;
mod liveness;
pub mod metrics;
pub mod node;
pub mod origin;
pub mod outbound;
pub mod overload;
pub mod rate;
mod rooms;
mod rooms_cap;
pub mod session;
mod session_rate;
pub mod speaker;
pub mod transport;
pub mod webhooks;
mod writing;

pub use admission::{Refused, Ticket};
pub use auth::{Claims, Minter, Verifier, VerifyKey};
pub use bus::{Bus, BusError, LocalBus, NatsBus, NatsOptions};
pub use config::RelayConfig;
pub use context::NodeContext;
pub use node::{admit, run_session, Node};
pub use origin::{AllowedOrigins, OriginRefused};
pub use transport::{Incoming, Lane, MediaOrigin, MediaTag, Outgoing, Sent, Transport, TransportError, TransportKind};

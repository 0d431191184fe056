//! Admission of connections, decided once, atomically, when a connection arrives (before
//! any handshake): the cap on open connections per address, and the budget of connections
//! that have not authenticated yet (per node and per address), so a flood of idle
//! handshakes cannot hold what authenticated users need. Also the cap on sessions per user.
//!
//! Every admitted connection holds a [`Ticket`]: it counts the connection in the
//! `connections` gauge (and in `pending_connections` until `Hello` is accepted), and gives
//! everything back when dropped, on every exit path of the session, panics included.

use crate::context::NodeContext;
use crate::transport::TransportKind;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use switchboard_protocol::ErrorCode;
use tokio::time::Instant;

/// Counts of one address's connections.
#[derive(Debug, Default)]
struct PerAddress {
    open: usize,
    pending: usize,
}

#[derive(Default)]
struct State {
    by_ip: HashMap<IpAddr, PerAddress>,
    /// Connections of the whole node that have not authenticated yet.
    pending: usize,
}

/// The node's admission counts.
#[derive(Default)]
pub(crate) struct Admission {
    state: Mutex<State>,
    by_user: Mutex<HashMap<String, usize>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a connection was not admitted. The client gets `TOO_MANY_CONNECTIONS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The address has `--max-connections-per-ip` connections open.
    #[error("too many connections from this address")]
    Address,
    /// The address has `--max-pending-per-ip` connections that have not authenticated yet.
    #[error("too many connections from this address are still authenticating")]
    AddressPending,
    /// The node has `--max-pending-connections` connections that have not authenticated yet.
    #[error("too many connections are authenticating on this node; retry shortly")]
    NodePending,
}

impl Refused {
    /// The error code the client is told.
    pub fn code(self) -> ErrorCode {
        ErrorCode::TooManyConnections
    }

    /// The `reason` label of `admission_refusals_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refused::Address => "address",
            Refused::AddressPending => "address_pending",
            Refused::NodePending => "node_pending",
        }
    }
}

/// An admitted connection's hold on its address's slots, the node's budget and the gauges;
/// released on drop.
pub struct Ticket {
    node: Arc<NodeContext>,
    peer: Option<SocketAddr>,
    transport: TransportKind,
    pending: bool,
    hello_deadline: Instant,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("peer", &self.peer)
            .field("transport", &self.transport)
            .field("pending", &self.pending)
            .finish()
    }
}

/// Admit a connection of `transport` from `peer`, counting it at once (atomically with the
/// caps), or refuse it. The connection must authenticate by [`Ticket::hello_deadline`].
pub fn admit(node: &Arc<NodeContext>, transport: TransportKind, peer: Option<SocketAddr>) -> Result<Ticket, Refused> {
    let config = &node.config;
    let ip = peer.map(|p| p.ip().to_canonical());
    {
        let mut state = lock(&node.admission.state);
        if state.pending >= config.max_pending_connections && config.max_pending_connections > 0 {
            return Err(refused(node, Refused::NodePending));
        }
        if let Some(ip) = ip {
            let counts = state.by_ip.entry(ip).or_default();
            let verdict = if config.max_connections_per_ip > 0 && counts.open >= config.max_connections_per_ip {
                Some(Refused::Address)
            } else if config.max_pending_per_ip > 0 && counts.pending >= config.max_pending_per_ip {
                Some(Refused::AddressPending)
            } else {
                None
            };
            // Only an address with open connections can be over a cap (caps are at least 1),
            // so a refusal never leaves an empty entry behind.
            if let Some(why) = verdict {
                drop(state);
                return Err(refused(node, why));
            }
            counts.open += 1;
            counts.pending += 1;
        }
        state.pending += 1;
    }
    let label = crate::metrics::TransportLabel { transport: transport.as_str() };
    node.metrics.connections.get_or_create(&label).inc();
    node.metrics.pending_connections.get_or_create(&label).inc();
    Ok(Ticket {
        node: node.clone(),
        peer: peer.map(|p| SocketAddr::new(p.ip().to_canonical(), p.port())),
        transport,
        pending: true,
        hello_deadline: Instant::now() + config.hello_timeout,
    })
}

fn refused(node: &NodeContext, why: Refused) -> Refused {
    node.metrics.admission_refusals.get_or_create(&crate::metrics::ReasonLabel { reason: why.label() }).inc();
    node.metrics.error(why.code());
    why
}

impl Ticket {
    /// The peer's address (IPv4-mapped IPv6 addresses shown as IPv4), for logs.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The transport the connection uses.
    pub fn transport(&self) -> TransportKind {
        self.transport
    }

    /// By when the connection must have sent a valid `Hello` (the hello timeout from
    /// admission: a WebTransport handshake and control stream count against it too).
    pub fn hello_deadline(&self) -> Instant {
        self.hello_deadline
    }

    /// Whether the connection has not authenticated yet.
    pub fn is_pending(&self) -> bool {
        self.pending
    }

    /// The connection authenticated: it leaves the pending budget.
    pub(crate) fn authenticated(&mut self) {
        if std::mem::take(&mut self.pending) {
            self.leave_pending();
        }
    }

    fn leave_pending(&self) {
        let mut state = lock(&self.node.admission.state);
        state.pending = state.pending.saturating_sub(1);
        if let Some(ip) = self.peer.map(|p| p.ip()) {
            if let Some(counts) = state.by_ip.get_mut(&ip) {
                counts.pending = counts.pending.saturating_sub(1);
            }
        }
        drop(state);
        self.node.metrics.pending_connections.get_or_create(&self.label()).dec();
    }

    fn label(&self) -> crate::metrics::TransportLabel {
        crate::metrics::TransportLabel { transport: self.transport.as_str() }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if std::mem::take(&mut self.pending) {
            self.leave_pending();
        }
        if let Some(ip) = self.peer.map(|p| p.ip()) {
            let mut state = lock(&self.node.admission.state);
            if let Some(counts) = state.by_ip.get_mut(&ip) {
                counts.open = counts.open.saturating_sub(1);
                if counts.open == 0 {
                    state.by_ip.remove(&ip);
                }
            }
        }
        self.node.metrics.connections.get_or_create(&self.label()).dec();
    }
}

/// Take one slot of `key` in `map` unless `cap` (non-zero) slots are taken.
fn take<K: std::hash::Hash + Eq + Clone>(map: &Mutex<HashMap<K, usize>>, key: &K, cap: usize) -> bool {
    let mut map = lock(map);
    let n = map.entry(key.clone()).or_insert(0);
    if cap > 0 && *n >= cap {
        if *n == 0 {
            map.remove(key);
        }
        return false;
    }
    *n += 1;
    true
}

/// A session's hold on its user's slot; released on drop.
pub(crate) struct UserSlot {
    node: Arc<NodeContext>,
    user: String,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut map = lock(&self.node.admission.by_user);
        if let Some(n) = map.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.user);
            }
        }
    }
}

/// Admit a session of `user`, or `None` when the user has its cap of sessions here.
pub(crate) fn enter_user(node: &Arc<NodeContext>, user: &str) -> Option<UserSlot> {
    take(&node.admission.by_user, &user.to_owned(), node.config.max_sessions_per_user)
        .then(|| UserSlot { node: node.clone(), user: user.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LocalBus, Node, RelayConfig, Verifier, VerifyKey};

    async fn node(config: RelayConfig) -> Arc<NodeContext> {
        let verifier = Verifier::new(&VerifyKey::Hmac(b"0123456789abcdef0123456789abcdef".to_vec()), 5).expect("key");
        Node::start(config, verifier, Arc::new(LocalBus::new())).await.expect("node").context().clone()
    }

    fn addr(last: u8) -> Option<SocketAddr> {
        Some(SocketAddr::from(([10, 0, 0, last], 1000)))
    }

    fn gauge(node: &NodeContext, pending: bool) -> i64 {
        let label = crate::metrics::TransportLabel { transport: "websocket" };
        if pending {
            node.metrics.pending_connections.get_or_create(&label).get()
        } else {
            node.metrics.connections.get_or_create(&label).get()
        }
    }

    #[tokio::test]
    async fn pending_connections_are_capped_per_address_and_per_node() {
        let config = RelayConfig { max_pending_per_ip: 2, max_pending_connections: 3, ..Default::default() };
        let node = node(config).await;
        let ws = TransportKind::WebSocket;
        let a1 = admit(&node, ws, addr(1)).expect("first");
        let mut a2 = admit(&node, ws, addr(1)).expect("second");
        assert_eq!(admit(&node, ws, addr(1)).unwrap_err(), Refused::AddressPending);
        // Authenticated connections leave the pending budget.
        a2.authenticated();
        let _a3 = admit(&node, ws, addr(1)).expect("a slot came back");
        let _b1 = admit(&node, ws, addr(2)).expect("another address");
        assert_eq!(gauge(&node, true), 3);
        assert_eq!(admit(&node, ws, addr(3)).unwrap_err(), Refused::NodePending);
        drop(a1);
        let _c1 = admit(&node, ws, addr(3)).expect("a node slot came back");
        assert_eq!(gauge(&node, false), 4);
        drop(a2);
        assert_eq!(gauge(&node, false), 3);
        assert_eq!(gauge(&node, true), 3);
    }

    #[tokio::test]
    async fn open_connections_are_capped_per_address_and_counted_once() {
        let config = RelayConfig { max_connections_per_ip: 2, ..Default::default() };
        let node = node(config).await;
        let ws = TransportKind::WebSocket;
        // IPv4-mapped IPv6 and IPv4 are the same address.
        let mapped = Some(SocketAddr::new("::ffff:10.0.0.1".parse().expect("address"), 5));
        let mut a = admit(&node, ws, addr(1)).expect("first");
        a.authenticated();
        let _b = admit(&node, ws, mapped).expect("second");
        assert_eq!(admit(&node, ws, addr(1)).unwrap_err(), Refused::Address);
        drop(a);
        let _c = admit(&node, ws, addr(1)).expect("freed");
        assert_eq!(lock(&node.admission.state).by_ip.len(), 1);
    }
}

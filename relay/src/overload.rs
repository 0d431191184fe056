//! Telling a slow client from an overloaded node, and shedding load at its source.
//!
//! When the node itself is the bottleneck (CPU), every receiver's outbound queue grows at
//! once: disconnecting them all as `SLOW_CONSUMER` turns an overload into a collapse (and
//! the reconnect storm that follows). So a session's queue reports when it is *backlogged*
//! (its room-data class over half its bound) and [`Load`] counts them:
//!
//! * a backlogged session whose room peers are not behind is slow: past its queue's bound it
//!   is disconnected as before;
//! * when a large share of the node's sessions ([`Load::node_overloaded`]) or most of a
//!   room's local members ([`room_behind`]) are backlogged, the node is behind, not the
//!   client: reliable frames may go past the bound into an overdraft (at most
//!   [`OVERDRAFT`] times the bound per session and [`OVERDRAFT_BUDGET_BYTES`] per node), and
//!   the session layer pushes back on publishers instead (their reads pause, unreliable data
//!   and media are dropped at the source).

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How far past its bound a reliable class may grow while the node (or the room) is behind:
/// the hard bound is this many times the configured one.
pub const OVERDRAFT: usize = 4;

/// Bytes all sessions of a node may hold past their bounds together. Past it, the next
/// reliable frame over a bound disconnects its session as `SLOW_CONSUMER`, as without
/// overload handling: memory stays bounded whatever the load.
pub const OVERDRAFT_BUDGET_BYTES: usize = 256 << 20;

/// Fewest backlogged sessions that make the node overloaded (a few slow clients never do).
pub const NODE_MIN_BACKLOGGED: usize = 8;

/// Share of the node's sessions that must be backlogged for the node to be overloaded: one
/// in this many.
pub const NODE_BACKLOGGED_SHARE: usize = 4;

/// Fewest backlogged local members that make a room behind.
pub const ROOM_MIN_BACKLOGGED: usize = 3;

/// Share of a room's local members that must be backlogged for the room to be behind: one
/// in this many. (When the node is the bottleneck, members drain unevenly: waiting for
/// most of them let the stragglers reach their bounds first.)
pub const ROOM_BACKLOGGED_SHARE: usize = 10;

/// Longest a publisher's reads pause while the node or its room is behind; past it the
/// next reliable publish into an overloaded room is answered `RATE_LIMITED`.
pub const PUSHBACK_MAX: Duration = Duration::from_millis(500);

/// Room messages a publisher may have accepted but not yet fanned out on this node before
/// its reads pause.
pub const PUBLISH_WINDOW: u64 = 256;

/// How often a paused publisher re-checks whether its messages in flight were fanned out.
const RECHECK: Duration = Duration::from_millis(5);

/// The node's view of its own load. Shared by every session's outbound queue.
pub struct Load {
    /// Sessions with an outbound queue attached to this load.
    sessions: AtomicUsize,
    /// Sessions whose room-data class is over half its bound.
    backlogged: AtomicUsize,
    /// Bytes queued past their class's bound, over all sessions.
    overdraft_bytes: AtomicUsize,
    /// Rooms whose local members were mostly backlogged at their last fan-out, with those
    /// members' backlog flags (re-read, so a room clears as its members catch up).
    behind_rooms: Mutex<HashMap<String, Vec<Arc<AtomicBool>>>>,
    /// `behind_rooms.len()`, readable without the lock: every fan-out and publish asks, and
    /// almost always no room is behind.
    behind_count: AtomicUsize,
    /// Woken when the node or a room stops being behind.
    cleared: Notify,
    overloaded_gauge: Gauge,
    excused: Counter,
}

impl std::fmt::Debug for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Load")
            .field("sessions", &self.sessions.load(Ordering::Relaxed))
            .field("backlogged", &self.backlogged.load(Ordering::Relaxed))
            .finish()
    }
}

impl Default for Load {
    fn default() -> Self {
        Self::new(Gauge::default(), Counter::default())
    }
}

impl Load {
    /// A load with no sessions. `overloaded` is set to 1 while the node is overloaded;
    /// `excused` counts reliable frames queued past a bound because the node was behind.
    pub fn new(overloaded: Gauge, excused: Counter) -> Self {
        Self {
            sessions: AtomicUsize::new(0),
            backlogged: AtomicUsize::new(0),
            overdraft_bytes: AtomicUsize::new(0),
            behind_rooms: Mutex::default(),
            behind_count: AtomicUsize::new(0),
            cleared: Notify::new(),
            overloaded_gauge: overloaded,
            excused,
        }
    }

    /// Whether a large share of the node's sessions are backlogged: the node, not its
    /// clients, is the bottleneck.
    pub fn node_overloaded(&self) -> bool {
        overloaded(self.backlogged.load(Ordering::Relaxed), self.sessions.load(Ordering::Relaxed))
    }

    /// Whether publishing into `room` should be pushed back: the node is overloaded or the
    /// room's members are mostly behind.
    pub fn is_behind(&self, room: &str) -> bool {
        self.node_overloaded() || self.room_is_behind(room)
    }

    fn room_is_behind(&self, room: &str) -> bool {
        if self.behind_count.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let rooms = self.rooms();
        let Some(flags) = rooms.get(room) else { return false };
        room_behind(flags.iter().filter(|f| f.load(Ordering::Relaxed)).count(), flags.len())
    }

    /// Sessions backlogged now.
    pub fn backlogged(&self) -> usize {
        self.backlogged.load(Ordering::Relaxed)
    }

    /// Record whether `room` is behind (from a fan-out, see [`survey`]); `flags` gives its
    /// members' backlog flags when it just fell behind.
    fn note_room(&self, room: &str, behind: bool, flags: impl FnOnce() -> Vec<Arc<AtomicBool>>) {
        if !behind && self.behind_count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let removed = {
            let mut rooms = self.rooms();
            let removed = if behind {
                if !rooms.contains_key(room) {
                    rooms.insert(room.to_owned(), flags());
                }
                false
            } else {
                rooms.remove(room).is_some()
            };
            self.behind_count.store(rooms.len(), Ordering::Relaxed);
            removed
        };
        if removed {
            self.cleared.notify_waiters();
        }
    }

    /// Wait until publishing into `room` need not be pushed back and `caught_up` holds (the
    /// publisher's own messages in flight were fanned out), or until `deadline`. Returns
    /// whether it cleared.
    pub async fn until_clear(&self, room: &str, deadline: Instant, caught_up: impl Fn() -> bool) -> bool {
        let clear = || !self.is_behind(room) && caught_up();
        loop {
            let notified = self.cleared.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if clear() {
                return true;
            }
            // Fan-outs do not notify: re-check at a short interval too (only paused
            // publishers wait here, each at most PUSHBACK_MAX).
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(RECHECK) => {}
                _ = tokio::time::sleep_until(deadline) => return clear(),
            }
        }
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Arc<AtomicBool>>>> {
        self.behind_rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn session_added(&self) {
        let before = self.sessions.fetch_add(1, Ordering::Relaxed);
        self.update_gauge(self.backlogged(), before + 1);
    }

    pub(crate) fn session_removed(&self, was_backlogged: bool) {
        let sessions = self.sessions.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        if was_backlogged {
            self.set_backlogged(false);
        } else {
            self.update_gauge(self.backlogged(), sessions);
        }
    }

    /// A session's queue crossed its backlog mark.
    pub(crate) fn set_backlogged(&self, now: bool) {
        let sessions = self.sessions.load(Ordering::Relaxed);
        let after = if now {
            self.backlogged.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            let before =
                self.backlogged.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some(b.saturating_sub(1)));
            before.unwrap_or(0).saturating_sub(1)
        };
        if !now {
            // The node, or one of the rooms behind, may have caught up: waiters re-check.
            self.cleared.notify_waiters();
        }
        self.update_gauge(after, sessions);
    }

    fn update_gauge(&self, backlogged: usize, sessions: usize) {
        self.overloaded_gauge.set(i64::from(overloaded(backlogged, sessions)));
    }

    /// Take `bytes` of the node's overdraft budget; false when it is spent.
    pub(crate) fn take_overdraft(&self, bytes: usize) -> bool {
        let taken = self
            .overdraft_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used + bytes <= OVERDRAFT_BUDGET_BYTES).then_some(used + bytes)
            })
            .is_ok();
        if taken {
            self.excused.inc();
        }
        taken
    }

    /// Give `bytes` of overdraft back.
    pub(crate) fn return_overdraft(&self, bytes: usize) {
        if bytes > 0 {
            let _ = self
                .overdraft_bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| Some(used.saturating_sub(bytes)));
        }
    }

    /// Bytes queued past their bounds now, over the node.
    pub fn overdraft_bytes(&self) -> usize {
        self.overdraft_bytes.load(Ordering::Relaxed)
    }
}

fn overloaded(backlogged: usize, sessions: usize) -> bool {
    backlogged >= NODE_MIN_BACKLOGGED && backlogged.saturating_mul(NODE_BACKLOGGED_SHARE) >= sessions
}

/// Whether a room is behind: of its `members` local members, `backlogged` are, at least
/// [`ROOM_MIN_BACKLOGGED`] and one in [`ROOM_BACKLOGGED_SHARE`]. One slow member never makes
/// its room behind.
pub fn room_behind(backlogged: usize, members: usize) -> bool {
    backlogged >= ROOM_MIN_BACKLOGGED && backlogged * ROOM_BACKLOGGED_SHARE >= members
}

/// Count the backlogged queues among a room's local members, record whether `room` is
/// behind in `load` and return it (for [`crate::outbound::Outbound::push_among`]).
pub(crate) fn survey<'a>(
    load: &Load,
    room: &str,
    members: impl ExactSizeIterator<Item = &'a crate::outbound::Outbound> + Clone,
) -> bool {
    let total = members.len();
    if total < ROOM_MIN_BACKLOGGED {
        return false;
    }
    let backlogged = members.clone().filter(|q| q.is_backlogged()).count();
    let behind = room_behind(backlogged, total);
    load.note_room(room, behind, || members.map(|q| q.backlog_flag()).collect());
    behind
}

/// What to do with a publish while the node may be behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not behind: carry on.
    Accept,
    /// Behind: take this reliable message, then pause the publisher's reads until the node
    /// or the room catches up (at most [`PUSHBACK_MAX`]).
    AcceptAndPause,
    /// Not behind, but the publisher is [`PUBLISH_WINDOW`] messages ahead of their fan-out:
    /// take it, then pause its reads until half the window is fanned out.
    AcceptAndWait,
    /// Behind: drop it at the source (unreliable data, media), or refuse it with
    /// `RATE_LIMITED` (a reliable message after a pause that did not clear).
    Shed,
}

/// One session's pushback state as a publisher.
#[derive(Debug, Default)]
pub struct Pushback {
    /// While paused: the room published into, the end of the pause and how many of the
    /// session's messages must have been fanned out by then.
    pause: Option<(String, Instant, u64)>,
    /// Room messages of the session accepted so far.
    published: u64,
    /// The last pause ended at its deadline with the room still behind.
    overdue: bool,
}

impl Pushback {
    /// Judge a publish into `room` (`reliable`: a reliable room message; else unreliable
    /// data); `fanned_out`: how many of the session's messages were fanned out so far.
    pub fn publish(&mut self, load: &Load, room: &str, reliable: bool, fanned_out: u64) -> Verdict {
        if !load.is_behind(room) {
            self.overdue = false;
            self.published += 1;
            // Flow control, overloaded or not: a publisher gets at most PUBLISH_WINDOW
            // messages ahead of their fan-out (reading frames is much cheaper than fanning
            // them out, so without it the backlog only shows once it is thousands deep).
            if self.published.saturating_sub(fanned_out) >= PUBLISH_WINDOW {
                let target = self.published - PUBLISH_WINDOW / 2;
                self.pause = Some((room.to_owned(), Instant::now() + PUSHBACK_MAX, target));
                return Verdict::AcceptAndWait;
            }
            return Verdict::Accept;
        }
        if !reliable {
            return Verdict::Shed;
        }
        let verdict = if self.overdue {
            Verdict::Shed
        } else {
            self.published += 1;
            Verdict::AcceptAndPause
        };
        self.pause = Some((room.to_owned(), Instant::now() + PUSHBACK_MAX, self.published));
        verdict
    }

    /// Judge a media frame into `room`: shed while behind (it does not pause the session).
    pub fn media(&self, load: &Load, room: &str) -> Verdict {
        if load.is_behind(room) {
            Verdict::Shed
        } else {
            Verdict::Accept
        }
    }

    /// The pause in force, for [`Pushback::wait`].
    pub fn pause(&self) -> Option<(String, Instant, u64)> {
        self.pause.clone()
    }

    /// Wait for `pause` to end: when its room clears and the publisher's messages in flight
    /// were fanned out (`fanned_out` reaches the count at the pause), true; or at its
    /// deadline, false. Never resolves without a pause.
    pub async fn wait(load: &Load, pause: Option<(String, Instant, u64)>, fanned_out: impl Fn() -> u64) -> bool {
        match pause {
            Some((room, deadline, published)) => load.until_clear(&room, deadline, || fanned_out() >= published).await,
            None => std::future::pending().await,
        }
    }

    /// The pause ended (`cleared`: the room caught up); `fanned_out` as in
    /// [`Pushback::publish`].
    pub fn resumed(&mut self, cleared: bool, load: &Load, fanned_out: u64) {
        let Some((room, ..)) = self.pause.take() else { return };
        if !cleared && !load.is_behind(&room) {
            // Not behind, yet its messages never all showed: some were not fanned out here
            // (a failed append, a room left). Forgive them, or the window would shrink.
            self.published = fanned_out;
        }
        self.overdue = !cleared && load.is_behind(&room);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_slow_sessions_never_overload_the_node() {
        let load = Load::default();
        for _ in 0..100 {
            load.session_added();
        }
        for _ in 0..NODE_MIN_BACKLOGGED - 1 {
            load.set_backlogged(true);
        }
        assert!(!load.node_overloaded(), "under the minimum");
        for _ in 0..20 {
            load.set_backlogged(true);
        }
        assert!(load.node_overloaded(), "a quarter of the sessions are behind");
        for _ in 0..20 {
            load.set_backlogged(false);
        }
        assert!(!load.node_overloaded());
    }

    #[test]
    fn rooms_are_behind_only_when_a_share_of_members_are() {
        assert!(!room_behind(1, 2), "one slow member of two");
        assert!(!room_behind(2, 3));
        assert!(room_behind(3, 4));
        assert!(!room_behind(9, 100), "under a tenth");
        assert!(room_behind(10, 100));
    }

    #[tokio::test(start_paused = true)]
    async fn publishers_wait_until_the_room_clears_or_the_deadline() {
        let load = std::sync::Arc::new(Load::default());
        let flags: Vec<_> = (0..4).map(|_| Arc::new(AtomicBool::new(true))).collect();
        load.note_room("r", true, || flags.clone());
        assert!(load.is_behind("r") && !load.is_behind("other"));
        let deadline = Instant::now() + Duration::from_secs(1);
        assert!(!load.until_clear("r", deadline, || true).await, "still behind at the deadline");
        let waiter = {
            let load = load.clone();
            tokio::spawn(async move { load.until_clear("r", Instant::now() + Duration::from_secs(60), || true).await })
        };
        tokio::task::yield_now().await;
        flags[0].store(false, Ordering::Relaxed);
        flags[1].store(false, Ordering::Relaxed);
        load.set_backlogged(true);
        load.set_backlogged(false); // as a member's queue reports catching up
        assert!(waiter.await.expect("task"), "woken when the room's members caught up");
    }

    #[tokio::test(start_paused = true)]
    async fn a_publisher_is_paused_then_refused_while_the_room_stays_behind() {
        let load = Load::default();
        let mut p = Pushback::default();
        assert_eq!(p.publish(&load, "r", true, 0), Verdict::Accept);
        load.note_room("r", true, || (0..3).map(|_| Arc::new(AtomicBool::new(true))).collect());
        assert_eq!(p.publish(&load, "r", false, 1), Verdict::Shed, "unreliable data is shed first");
        assert_eq!(p.publish(&load, "r", true, 1), Verdict::AcceptAndPause);
        let cleared = Pushback::wait(&load, p.pause(), || u64::MAX).await;
        assert!(!cleared);
        p.resumed(cleared, &load, 1);
        assert_eq!(p.publish(&load, "r", true, 2), Verdict::Shed, "a pause that did not help: refuse");
        load.note_room("r", false, Vec::new);
        assert_eq!(p.publish(&load, "r", true, 2), Verdict::Accept);
        // The window: at most PUBLISH_WINDOW ahead of the fan-out.
        let mut q = Pushback::default();
        for _ in 0..PUBLISH_WINDOW - 1 {
            assert_eq!(q.publish(&load, "r", true, 0), Verdict::Accept);
        }
        assert_eq!(q.publish(&load, "r", true, 0), Verdict::AcceptAndWait);
        assert!(!Pushback::wait(&load, q.pause(), || PUBLISH_WINDOW / 2 - 1).await);
        assert!(Pushback::wait(&load, q.pause(), || PUBLISH_WINDOW / 2).await);
    }

    #[test]
    fn the_overdraft_budget_is_bounded() {
        let load = Load::default();
        assert!(load.take_overdraft(OVERDRAFT_BUDGET_BYTES));
        assert!(!load.take_overdraft(1));
        load.return_overdraft(10);
        assert!(load.take_overdraft(10));
    }
}

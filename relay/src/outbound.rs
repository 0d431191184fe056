//! A session's bounded outbound queue with priority classes.
//!
//! Frames are queued by class and sent in priority order: control > signal > data > media.
//! Every class is bounded in frames and bytes. When a class is full:
//! * media: the queued media frames are discarded and the (sender, track) pairs that lost
//!   frames skip everything up to their next keyframe (the caller asks the sender for one);
//! * unreliable data: the new frame is dropped;
//! * reliable data, signaling, control: the queue closes with `SLOW_CONSUMER`: the session
//!   is disconnected with a clear reason instead of growing memory;
//! * except reliable room data while the node or the room is behind ([`crate::overload`]):
//!   then the client is not the slow one, and the frame goes into a bounded overdraft.

use crate::overload::{Load, OVERDRAFT};
use crate::transport::{MediaTag, Outgoing};
use bytes::Bytes;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use switchboard_protocol::ErrorCode;
use tokio::sync::Notify;

/// How long a session's writer may be stuck in one transport write before an overflow of
/// its reliable room data is the client's (closed) rather than the node's (overdraft).
pub const SLOW_WRITE: std::time::Duration = std::time::Duration::from_secs(1);

/// Milliseconds since the first call in this process, plus a day (a clock an atomic can
/// hold; never 0, and a time a while before the first call is still representable).
fn clock_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64 + 86_400_000
}

/// Most (sender, track) pairs a session waits on for a keyframe at once.
const MAX_AWAITING_KEYFRAME: usize = 256;

/// Priority class of an outbound frame (lower sends first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Session control: welcome, errors, acks, pongs, go-away, presence.
    Control = 0,
    /// Signaling.
    Signal = 1,
    /// Room messages.
    Data = 2,
    /// Media frames.
    Media = 3,
}

impl Class {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        ["control", "signal", "data", "media"][self as usize]
    }
}

/// Bounds of each class: `(frames, bytes)`, indexed by [`Class`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Per class: the maximum number of queued frames and bytes.
    pub per_class: [(usize, usize); 4],
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            per_class: [
                (512, 1 << 20),  // control: 1 MiB
                (512, 2 << 20),  // signal: 2 MiB
                (1024, 4 << 20), // data: 4 MiB
                (256, 4 << 20),  // media: 4 MiB
            ],
        }
    }
}

/// Why a queue was closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// The error code sent to the client.
    pub code: ErrorCode,
    /// Human-readable reason.
    pub message: String,
}

/// What happened to a pushed frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// Queued for sending.
    Queued,
    /// Dropped (droppable frame, class full, or waiting for a keyframe).
    Dropped,
    /// Media overflowed: this frame and the queued media were dropped; ask the sender for a
    /// keyframe.
    NeedKeyframe,
    /// The queue overflowed on a reliable frame and is now closed.
    Overflow,
    /// The queue was already closed.
    Closed,
}

/// An instruction from the node to a session, delivered through its queue ahead of frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCommand {
    /// The server removed the session from a room (e.g. an operator's kick).
    LeaveRoom {
        /// The room.
        room: String,
        /// Why, as told to the client and the room.
        reason: String,
    },
}

/// What [`Outbound::pop`] returns.
#[derive(Debug)]
pub enum Popped {
    /// A command for the session itself.
    Command(SessionCommand),
    /// The next frame to send.
    Frame(Outgoing),
    /// The queue was closed: send the reason and end the session.
    Closed(CloseReason),
}

struct State {
    commands: VecDeque<SessionCommand>,
    queues: [VecDeque<Outgoing>; 4],
    bytes: [usize; 4],
    closed: Option<CloseReason>,
    /// (sender session, track) pairs whose media is skipped until a keyframe.
    awaiting_keyframe: HashSet<(String, u32)>,
    /// The room-data class is over half its bound (reported to the node's [`Load`]).
    backlogged: bool,
    /// Bytes of room data queued past the class's bound (taken from the node's budget).
    overdraft: usize,
}

/// The bounded, prioritised outbound queue of one session. One consumer (the session's
/// writer), many producers (fan-out).
pub struct Outbound {
    state: Mutex<State>,
    notify: Notify,
    limits: QueueLimits,
    load: Option<Arc<Load>>,
    /// `State::backlogged`, readable without the lock (rooms behind re-read it).
    backlog_flag: Arc<AtomicBool>,
    /// Room messages of this session fanned out on this node so far (publisher pushback
    /// waits for its messages in flight).
    own_fanned_out: AtomicU64,
    /// When the session's current transport write began, in ms on [`clock_ms`]; 0 while it
    /// is not inside one ([`Outbound::set_writing`]).
    write_began_ms: AtomicU64,
}

impl Outbound {
    /// An empty queue that knows nothing of its node's load: every overflow of a reliable
    /// class is the client's.
    pub fn new(limits: QueueLimits) -> Self {
        Self::build(limits, None)
    }

    /// An empty queue reporting its backlog to the node's `load`, and excused past its
    /// room-data bound while the node is overloaded.
    pub fn with_load(limits: QueueLimits, load: Arc<Load>) -> Self {
        load.session_added();
        Self::build(limits, Some(load))
    }

    fn build(limits: QueueLimits, load: Option<Arc<Load>>) -> Self {
        Self {
            state: Mutex::new(State {
                commands: VecDeque::new(),
                queues: Default::default(),
                bytes: [0; 4],
                closed: None,
                awaiting_keyframe: HashSet::new(),
                backlogged: false,
                overdraft: 0,
            }),
            notify: Notify::new(),
            limits,
            load,
            backlog_flag: Arc::default(),
            own_fanned_out: AtomicU64::new(0),
            write_began_ms: AtomicU64::new(0),
        }
    }

    /// Report the room-data class crossing its backlog mark (half its bound) to the load.
    fn settle(&self, st: &mut State) {
        let Some(load) = &self.load else { return };
        let i = Class::Data as usize;
        let (max_frames, max_bytes) = self.limits.per_class[i];
        let now = st.queues[i].len() * 2 > max_frames || st.bytes[i] * 2 > max_bytes;
        if now != st.backlogged {
            st.backlogged = now;
            self.backlog_flag.store(now, Ordering::Relaxed);
            load.set_backlogged(now);
        }
    }

    /// Take a popped room-data frame of `len` bytes off the overdraft.
    fn popped_data(&self, st: &mut State, len: usize) {
        let back = st.overdraft.min(len);
        if back > 0 {
            st.overdraft -= back;
            if let Some(load) = &self.load {
                load.return_overdraft(back);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent in a way that
        // matters more than losing the session, so recover from poisoning.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue a non-media frame. `droppable` frames are dropped when the class is full;
    /// others close the queue with `SLOW_CONSUMER`, unless the node is overloaded (room
    /// data only, see [`Outbound::push_among`]).
    pub fn push(&self, class: Class, frame: Bytes, droppable: bool) -> Pushed {
        self.push_among(class, frame, droppable, false)
    }

    /// [`Outbound::push`] for a fan-out that found the session's room `peers_behind`
    /// ([`crate::overload::room_behind`]): then, as when the node is overloaded, a reliable
    /// room-data frame over the class's bound goes into the overdraft (up to
    /// [`OVERDRAFT`] times the bound, within the node's budget) instead of closing the queue.
    pub fn push_among(&self, class: Class, frame: Bytes, droppable: bool, peers_behind: bool) -> Pushed {
        let mut st = self.lock();
        if st.closed.is_some() {
            return Pushed::Closed;
        }
        let (max_frames, max_bytes) = self.limits.per_class[class as usize];
        let i = class as usize;
        if st.queues[i].len() >= max_frames || st.bytes[i] + frame.len() > max_bytes {
            if droppable {
                return Pushed::Dropped;
            }
            if class == Class::Data && self.excused(&st, &frame, peers_behind) {
                st.overdraft += frame.len();
                st.bytes[i] += frame.len();
                st.queues[i].push_back(frame.into());
                self.settle(&mut st);
                drop(st);
                self.notify.notify_one();
                return Pushed::Queued;
            }
            st.closed = Some(CloseReason {
                code: ErrorCode::SlowConsumer,
                message: format!("outbound {} queue full: the client is not reading fast enough", class.as_str()),
            });
            drop(st);
            self.notify.notify_one();
            return Pushed::Overflow;
        }
        st.bytes[i] += frame.len();
        st.queues[i].push_back(frame.into());
        if class == Class::Data {
            self.settle(&mut st);
        }
        drop(st);
        self.notify.notify_one();
        Pushed::Queued
    }

    /// Whether a room-data frame over the bound may go into the overdraft: the node, the
    /// room or this session's writer is behind (not the client), the hard bound holds and
    /// the node's budget has room.
    ///
    /// The writer is behind unless it has been stuck in one transport write for
    /// [`SLOW_WRITE`]: a client that does not read keeps its session waiting inside a write
    /// (its connection takes nothing more), while a session outside one, or briefly inside
    /// one, waits for the node's CPU (its own task, or the edge's connection task that takes
    /// what it wrote). That happens to a few sessions at a time: an edge's worker thread
    /// polls tasks woken from other threads (by a fan-out) once per 31 polls of tasks woken
    /// on its own, so under load a fan-out's recipients can wait there in a group while
    /// others write. A client that reads too slowly is still closed at the hard bound.
    fn excused(&self, st: &State, frame: &Bytes, peers_behind: bool) -> bool {
        let Some(load) = &self.load else { return false };
        let i = Class::Data as usize;
        let (max_frames, max_bytes) = self.limits.per_class[i];
        let within_hard =
            st.queues[i].len() < max_frames * OVERDRAFT && st.bytes[i] + frame.len() <= max_bytes * OVERDRAFT;
        let node_behind = peers_behind || load.node_overloaded() || !self.write_stuck();
        within_hard && node_behind && load.take_overdraft(frame.len())
    }

    /// The session's writer entered (`true`) or left (`false`) a write to its transport.
    pub fn set_writing(&self, writing: bool) {
        self.write_began_ms.store(if writing { clock_ms() } else { 0 }, Ordering::Relaxed);
    }

    /// Whether the writer has been inside its current transport write for [`SLOW_WRITE`].
    fn write_stuck(&self) -> bool {
        let began = self.write_began_ms.load(Ordering::Relaxed);
        began != 0 && clock_ms().saturating_sub(began) >= SLOW_WRITE.as_millis() as u64
    }

    /// Pretend the current write began `ago` earlier (tests of [`SLOW_WRITE`]).
    #[cfg(test)]
    fn backdate_write(&self, ago: std::time::Duration) {
        let _ = self.write_began_ms.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
            (b != 0).then(|| b.saturating_sub(ago.as_millis() as u64).max(1))
        });
    }

    /// Whether the room-data class is over half its bound.
    pub fn is_backlogged(&self) -> bool {
        self.backlog_flag.load(Ordering::Relaxed)
    }

    /// One of this session's room messages was fanned out to its room here.
    pub fn own_message_fanned_out(&self) {
        self.own_fanned_out.fetch_add(1, Ordering::Relaxed);
    }

    /// How many of this session's room messages were fanned out here so far.
    pub fn own_fanned_out(&self) -> u64 {
        self.own_fanned_out.load(Ordering::Relaxed)
    }

    /// A shared view of [`Outbound::is_backlogged`] (false once the queue is gone).
    pub fn backlog_flag(&self) -> Arc<AtomicBool> {
        self.backlog_flag.clone()
    }

    /// Queue a media frame; `tag` names its sender and track.
    pub fn push_media(&self, frame: Bytes, tag: &MediaTag) -> Pushed {
        let (source, track, keyframe) = (tag.origin.session.as_str(), tag.track, tag.keyframe);
        let mut st = self.lock();
        if st.closed.is_some() {
            return Pushed::Closed;
        }
        let key_waiting =
            !st.awaiting_keyframe.is_empty() && st.awaiting_keyframe.contains(&(source.to_owned(), track));
        if key_waiting {
            if !keyframe {
                return Pushed::Dropped;
            }
            st.awaiting_keyframe.remove(&(source.to_owned(), track));
        }
        let i = Class::Media as usize;
        let (max_frames, max_bytes) = self.limits.per_class[i];
        if st.queues[i].len() >= max_frames || st.bytes[i] + frame.len() > max_bytes {
            // Drop what is queued: stale media is worthless, a fresh keyframe is what helps.
            st.queues[i].clear();
            st.bytes[i] = 0;
            // Bounded: senders choose track numbers. Past the bound the set is reset, so the
            // worst case is a few undecodable frames, never unbounded memory.
            await_keyframe(&mut st, source, track);
            return Pushed::NeedKeyframe;
        }
        st.bytes[i] += frame.len();
        st.queues[i].push_back(Outgoing { frame, media: Some(tag.clone()) });
        drop(st);
        self.notify.notify_one();
        Pushed::Queued
    }

    /// Skip the media of `(source, track)` up to its next keyframe: the transport dropped one
    /// of its frames, so what follows cannot be decoded.
    pub fn skip_to_keyframe(&self, source: &str, track: u32) {
        await_keyframe(&mut self.lock(), source, track);
    }

    /// Queue a command for the session (bounded like the control class).
    pub fn push_command(&self, command: SessionCommand) -> Pushed {
        let mut st = self.lock();
        if st.closed.is_some() {
            return Pushed::Closed;
        }
        if st.commands.len() >= self.limits.per_class[Class::Control as usize].0 {
            return Pushed::Dropped;
        }
        st.commands.push_back(command);
        drop(st);
        self.notify.notify_one();
        Pushed::Queued
    }

    /// Close the queue: the consumer gets [`Popped::Closed`] next (queued frames are
    /// discarded). The first reason wins.
    pub fn close(&self, code: ErrorCode, message: impl Into<String>) {
        let mut st = self.lock();
        if st.closed.is_none() {
            st.closed = Some(CloseReason { code, message: message.into() });
        }
        drop(st);
        self.notify.notify_one();
    }

    /// Whether the queue is closed.
    pub fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }

    /// Total queued bytes.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes.iter().sum()
    }

    /// Move up to `max` more queued frames (priority order) into `out`, without waiting;
    /// stops at a pending command or close, which the next [`Outbound::pop`] returns.
    pub fn pop_frames(&self, max: usize, out: &mut Vec<Outgoing>) {
        let mut st = self.lock();
        if st.closed.is_some() || !st.commands.is_empty() {
            return;
        }
        let mut taken = 0;
        for i in 0..4 {
            while taken < max {
                let Some(frame) = st.queues[i].pop_front() else { break };
                st.bytes[i] -= frame.frame.len();
                if i == Class::Data as usize {
                    self.popped_data(&mut st, frame.frame.len());
                }
                out.push(frame);
                taken += 1;
            }
        }
        self.settle(&mut st);
    }

    /// Wait until [`Outbound::pop_frames`] has a frame to take (true), or until a command
    /// or the close is pending (false: [`Outbound::pop`] returns it). Takes nothing;
    /// cancel-safe.
    pub async fn frames_ready(&self) -> bool {
        loop {
            {
                let st = self.lock();
                if st.closed.is_some() || !st.commands.is_empty() {
                    return false;
                }
                if st.queues.iter().any(|q| !q.is_empty()) {
                    return true;
                }
            }
            self.notify.notified().await;
        }
    }

    /// Wait for the next frame in priority order, or for the close. Cancel-safe.
    pub async fn pop(&self) -> Popped {
        loop {
            {
                let mut st = self.lock();
                if let Some(reason) = &st.closed {
                    return Popped::Closed(reason.clone());
                }
                if let Some(command) = st.commands.pop_front() {
                    return Popped::Command(command);
                }
                for i in 0..4 {
                    if let Some(frame) = st.queues[i].pop_front() {
                        st.bytes[i] -= frame.frame.len();
                        if i == Class::Data as usize {
                            self.popped_data(&mut st, frame.frame.len());
                            self.settle(&mut st);
                        }
                        return Popped::Frame(frame);
                    }
                }
            }
            self.notify.notified().await;
        }
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        if let Some(load) = &self.load {
            let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
            load.return_overdraft(std::mem::take(&mut st.overdraft));
            load.session_removed(std::mem::take(&mut st.backlogged));
            self.backlog_flag.store(false, Ordering::Relaxed);
        }
    }
}

/// Mark `(source, track)` as waiting for a keyframe. Bounded: senders choose track numbers;
/// past the bound the set is reset, so the worst case is a few undecodable frames, never
/// unbounded memory.
fn await_keyframe(st: &mut State, source: &str, track: u32) {
    if st.awaiting_keyframe.len() >= MAX_AWAITING_KEYFRAME {
        st.awaiting_keyframe.clear();
    }
    st.awaiting_keyframe.insert((source.to_owned(), track));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Outbound {
        Outbound::new(QueueLimits { per_class: [(4, 100), (4, 100), (2, 100), (2, 100)] })
    }

    fn tag(source: &str, track: u32, keyframe: bool) -> MediaTag {
        let origin = std::sync::Arc::new(crate::transport::MediaOrigin { room: "r".into(), session: source.into() });
        MediaTag { origin, track, keyframe }
    }

    fn media(q: &Outbound, frame: &'static [u8], source: &str, track: u32, keyframe: bool) -> Pushed {
        q.push_media(Bytes::from_static(frame), &tag(source, track, keyframe))
    }

    async fn next(q: &Outbound) -> Bytes {
        match q.pop().await {
            Popped::Frame(b) => b.frame,
            other => panic!("expected a frame: {other:?}"),
        }
    }

    #[tokio::test]
    async fn priority_order() {
        let q = small();
        media(&q, b"m", "s", 1, true);
        q.push(Class::Data, Bytes::from_static(b"d"), false);
        q.push(Class::Signal, Bytes::from_static(b"s"), false);
        q.push(Class::Control, Bytes::from_static(b"c"), false);
        let order: Vec<Bytes> = vec![next(&q).await, next(&q).await, next(&q).await, next(&q).await];
        assert_eq!(order, vec!["c", "s", "d", "m"]);
    }

    #[tokio::test]
    async fn batches_keep_priority_and_stop_at_commands() {
        let q = small();
        q.push(Class::Data, Bytes::from_static(b"d"), false);
        q.push(Class::Control, Bytes::from_static(b"c"), false);
        q.push(Class::Signal, Bytes::from_static(b"s"), false);
        let mut out = Vec::new();
        let frames = |out: &Vec<Outgoing>| out.iter().map(|o| o.frame.clone()).collect::<Vec<_>>();
        q.pop_frames(2, &mut out);
        assert_eq!(frames(&out), vec!["c", "s"]);
        q.push_command(SessionCommand::LeaveRoom { room: "r".into(), reason: "x".into() });
        q.pop_frames(8, &mut out);
        assert_eq!(out.len(), 2, "a pending command comes first, through pop()");
        assert!(matches!(q.pop().await, Popped::Command(_)));
        q.pop_frames(8, &mut out);
        assert_eq!(frames(&out), vec!["c", "s", "d"]);
    }

    #[tokio::test]
    async fn reliable_overflow_closes_with_slow_consumer() {
        let q = small();
        assert_eq!(q.push(Class::Data, Bytes::from_static(b"1"), false), Pushed::Queued);
        assert_eq!(q.push(Class::Data, Bytes::from_static(b"2"), false), Pushed::Queued);
        assert_eq!(q.push(Class::Data, Bytes::from_static(b"3"), true), Pushed::Dropped);
        assert_eq!(q.push(Class::Data, Bytes::from_static(b"4"), false), Pushed::Overflow);
        assert_eq!(q.push(Class::Control, Bytes::from_static(b"x"), false), Pushed::Closed);
        match q.pop().await {
            Popped::Closed(r) => assert_eq!(r.code, ErrorCode::SlowConsumer),
            other => panic!("expected close: {other:?}"),
        }
    }

    #[tokio::test]
    async fn behind_peers_excuse_reliable_overflow_up_to_the_hard_bound() {
        let load = Arc::new(Load::default());
        let q = Outbound::with_load(QueueLimits { per_class: [(4, 100), (4, 100), (2, 100), (2, 100)] }, load.clone());
        for i in 0..2 {
            assert_eq!(q.push(Class::Data, Bytes::from(vec![i]), false), Pushed::Queued);
        }
        assert!(q.is_backlogged());
        assert_eq!(load.backlogged(), 1);
        // Peers behind: past the bound into the overdraft, up to OVERDRAFT times the bound.
        for i in 2..2 * OVERDRAFT {
            assert_eq!(q.push_among(Class::Data, Bytes::from(vec![i as u8]), false, true), Pushed::Queued);
        }
        assert_eq!(load.overdraft_bytes(), 2 * OVERDRAFT - 2);
        assert_eq!(q.push_among(Class::Data, Bytes::from_static(b"x"), false, true), Pushed::Overflow);
        drop(q);
        assert_eq!((load.overdraft_bytes(), load.backlogged()), (0, 0), "given back");
        // Alone behind while its writer waits on the transport: the client is slow.
        let q = Outbound::with_load(QueueLimits { per_class: [(4, 100), (4, 100), (2, 100), (2, 100)] }, load.clone());
        q.set_writing(true);
        q.backdate_write(SLOW_WRITE);
        q.push(Class::Data, Bytes::from_static(b"1"), false);
        q.push(Class::Data, Bytes::from_static(b"2"), false);
        assert_eq!(q.push_among(Class::Data, Bytes::from_static(b"3"), false, false), Pushed::Overflow);
        // Alone behind, its writer outside a write (waiting for the node's CPU): excused.
        let q = Outbound::with_load(QueueLimits { per_class: [(4, 100), (4, 100), (2, 100), (2, 100)] }, load.clone());
        q.push(Class::Data, Bytes::from_static(b"1"), false);
        q.push(Class::Data, Bytes::from_static(b"2"), false);
        assert_eq!(q.push_among(Class::Data, Bytes::from_static(b"3"), false, false), Pushed::Queued);
        // Alone behind, inside a write that began just now (the edge has not taken it yet):
        // excused; stuck in it for SLOW_WRITE: the client's.
        let q = Outbound::with_load(QueueLimits { per_class: [(4, 100), (4, 100), (2, 100), (2, 100)] }, load.clone());
        q.set_writing(true);
        q.push(Class::Data, Bytes::from_static(b"1"), false);
        q.push(Class::Data, Bytes::from_static(b"2"), false);
        assert_eq!(q.push_among(Class::Data, Bytes::from_static(b"3"), false, false), Pushed::Queued);
        q.backdate_write(SLOW_WRITE);
        assert_eq!(q.push_among(Class::Data, Bytes::from_static(b"4"), false, false), Pushed::Overflow);
        q.set_writing(false);
    }

    #[tokio::test]
    async fn draining_returns_the_overdraft_and_the_backlog() {
        let load = Arc::new(Load::default());
        let q = Outbound::with_load(QueueLimits { per_class: [(4, 100), (4, 100), (2, 100), (2, 100)] }, load.clone());
        for i in 0..5u8 {
            q.push_among(Class::Data, Bytes::from(vec![i; 3]), false, true);
        }
        assert_eq!(load.overdraft_bytes(), 9);
        let mut out = Vec::new();
        q.pop_frames(3, &mut out);
        assert_eq!(load.overdraft_bytes(), 0);
        assert!(q.is_backlogged(), "2 of 2 frames still queued");
        let _ = q.pop().await;
        assert!(!q.is_backlogged());
        assert_eq!(load.backlogged(), 0);
    }

    #[tokio::test]
    async fn media_overflow_skips_to_next_keyframe() {
        let q = small();
        assert_eq!(media(&q, b"k1", "a", 1, true), Pushed::Queued);
        assert_eq!(media(&q, b"d1", "a", 1, false), Pushed::Queued);
        assert_eq!(media(&q, b"d2", "a", 1, false), Pushed::NeedKeyframe);
        assert_eq!(q.queued_bytes(), 0);
        assert_eq!(media(&q, b"d3", "a", 1, false), Pushed::Dropped);
        // Another sender's track is unaffected.
        assert_eq!(media(&q, b"o1", "b", 1, false), Pushed::Queued);
        assert_eq!(media(&q, b"k2", "a", 1, true), Pushed::Queued);
        assert_eq!(next(&q).await, "o1");
        assert_eq!(next(&q).await, "k2");
    }

    #[tokio::test]
    async fn a_transport_drop_skips_that_track_to_its_next_keyframe() {
        let q = small();
        q.skip_to_keyframe("a", 1);
        assert_eq!(media(&q, b"d1", "a", 1, false), Pushed::Dropped);
        assert_eq!(media(&q, b"d1", "a", 2, false), Pushed::Queued, "other tracks flow");
        assert_eq!(media(&q, b"k1", "a", 1, true), Pushed::Queued);
        assert_eq!(next(&q).await, "d1");
        match q.pop().await {
            Popped::Frame(o) => {
                assert_eq!(o.frame, "k1");
                let tag = o.media.expect("media frames keep their tag");
                assert_eq!((tag.origin.session.as_str(), tag.track, tag.keyframe), ("a", 1, true));
            }
            other => panic!("expected a frame: {other:?}"),
        }
    }

    #[tokio::test]
    async fn keyframe_waits_are_bounded_whatever_tracks_senders_use() {
        let q = Outbound::new(QueueLimits { per_class: [(4, 100), (4, 100), (2, 100), (0, 0)] });
        for track in 0..10_000u32 {
            assert_eq!(media(&q, b"d", "a", track, false), Pushed::NeedKeyframe);
        }
        assert!(q.lock().awaiting_keyframe.len() <= MAX_AWAITING_KEYFRAME);
    }
}

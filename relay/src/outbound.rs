//! A session's bounded outbound queue with priority classes.
//!
//! Frames are queued by class and sent in priority order: control > signal > data > media.
//! Every class is bounded in frames and bytes. When a class is full:
//! * media: the queued media frames are discarded and the (sender, track) pairs that lost
//!   frames skip everything up to their next keyframe (the caller asks the sender for one);
//! * unreliable data: the new frame is dropped;
//! * reliable data, signaling, control: the queue closes with `SLOW_CONSUMER`: the session
//!   is disconnected with a clear reason instead of growing memory.

use crate::transport::{MediaTag, Outgoing};
use bytes::Bytes;
use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use switchboard_protocol::ErrorCode;
use tokio::sync::Notify;

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
}

/// The bounded, prioritised outbound queue of one session. One consumer (the session's
/// writer), many producers (fan-out).
pub struct Outbound {
    state: Mutex<State>,
    notify: Notify,
    limits: QueueLimits,
}

impl Outbound {
    /// An empty queue.
    pub fn new(limits: QueueLimits) -> Self {
        Self {
            state: Mutex::new(State {
                commands: VecDeque::new(),
                queues: Default::default(),
                bytes: [0; 4],
                closed: None,
                awaiting_keyframe: HashSet::new(),
            }),
            notify: Notify::new(),
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent in a way that
        // matters more than losing the session, so recover from poisoning.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue a non-media frame. `droppable` frames are dropped when the class is full;
    /// others close the queue with `SLOW_CONSUMER`.
    pub fn push(&self, class: Class, frame: Bytes, droppable: bool) -> Pushed {
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
        drop(st);
        self.notify.notify_one();
        Pushed::Queued
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
                out.push(frame);
                taken += 1;
            }
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
                        return Popped::Frame(frame);
                    }
                }
            }
            self.notify.notified().await;
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

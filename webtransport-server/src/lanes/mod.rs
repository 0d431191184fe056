//! Media lanes: a WebTransport session's media off its control stream.
//!
//! ```text
//! control, signaling, chat -> the bidirectional control stream (ordered, higher priority)
//! media that fits a datagram -> one QUIC datagram per frame (never retransmitted)
//! larger media (keyframes)   -> one unidirectional stream per group of (sender, track)
//! ```
//!
//! A *group* starts at a keyframe. When the next group of the same sender and track starts,
//! the old group's stream is finished, and reset if not all of it was acknowledged yet:
//! stale video is worthless, and a loss in one group never delays the next. Media never
//! waits: a frame its stream cannot take at once (flow control, stream credit, a bound) is
//! dropped, and the receiver skips that track to its next keyframe, which the node asks the
//! sender for. Clients opt in with `Hello.media_lanes`; the node says `Welcome.media_lanes`.
//!
//! From the client, datagrams and unidirectional streams may carry `Media` and
//! `KeyframeRequest` only (the session refuses anything else), bounded by the QUIC stream
//! limit, the session's frame size limit, and its request and media byte rates.

mod incoming;
mod outgoing;

pub(crate) use incoming::{LaneReader, MAX_MEDIA_STREAMS};
pub(crate) use outgoing::MediaSender;

/// QUIC send priority of the control stream: above every media stream (quinn sends buffered
/// data of higher-priority streams first), so a media burst never delays a signal or a chat
/// message on the same connection.
pub(crate) const CONTROL_PRIORITY: i32 = 1;

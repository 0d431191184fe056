//! Media lanes on WebTransport (README "Media lanes (WebTransport)"): media off the ordered
//! control stream, so that a lost packet delays only the media it carried.
//!
//! ```text
//! media that fits a datagram -> one QUIC datagram per frame (both ways)
//! larger media (keyframes)   -> one unidirectional stream per group (a keyframe starts one)
//! everything else            -> the control stream, as without lanes
//! ```
//!
//! A client asks with `Hello.media_lanes`; the node answers `Welcome.media_lanes`. The
//! application sees no difference: media from every lane arrives as [`crate::Event::Media`]
//! in the one event stream, filtered by the ordering rule ([`order`]), and
//! [`crate::Client::media`] picks the lane. [`MediaStats`] counts what went where.

mod order;
mod receive;
mod send;
mod stats;

pub(crate) use receive::LaneReceiver;
pub use stats::MediaStats;
pub(crate) use stats::{Lane, MediaCounters};

use bytes::Bytes;
use order::MediaOrder;
use send::LaneSender;
use std::sync::{Arc, Mutex, MutexGuard};
use switchboard_protocol::pb;

/// QUIC transport settings of a client asking for lanes, on top of the transport's own
/// windows: room for the node's group streams (HTTP/3 takes three unidirectional streams of
/// its own) and a connection window that bounds what all streams together can make the
/// client buffer.
pub(crate) fn configure_transport(transport: &mut wtransport::quinn::TransportConfig) {
    use wtransport::quinn::VarInt;
    transport
        .max_concurrent_uni_streams(VarInt::from_u32(3 + receive::MAX_GROUP_STREAMS as u32))
        .receive_window(VarInt::from_u32(RECEIVE_WINDOW));
}

/// Connection-level receive window with lanes: 64 group streams of up to 256 KiB records
/// in flight, beside the control stream's own window.
const RECEIVE_WINDOW: u32 = 16 << 20;

/// One session's media bookkeeping, shared by its handles and its reader: counters always;
/// the lane sender and the ordering state when lanes are in use.
pub(crate) struct MediaState {
    counters: MediaCounters,
    lanes: Option<Lanes>,
}

struct Lanes {
    sender: Mutex<LaneSender>,
    order: Mutex<MediaOrder>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MediaState {
    /// Media on the control stream only (WebSocket, lanes off or refused).
    pub(crate) fn control_only() -> Arc<Self> {
        Arc::new(Self { counters: MediaCounters::default(), lanes: None })
    }

    /// Media on lanes of `connection`.
    pub(crate) fn with_lanes(connection: wtransport::Connection) -> Arc<Self> {
        let lanes = Lanes { sender: Mutex::new(LaneSender::new(connection)), order: Mutex::default() };
        Arc::new(Self { counters: MediaCounters::default(), lanes: Some(lanes) })
    }

    /// Whether media goes on lanes.
    pub(crate) fn lanes(&self) -> bool {
        self.lanes.is_some()
    }

    /// The counters now.
    pub(crate) fn stats(&self) -> MediaStats {
        self.counters.snapshot()
    }

    /// Count a media frame sent on the control stream.
    pub(crate) fn sent_on_control(&self) {
        self.counters.sent(Lane::Control);
    }

    /// Send an encoded `ClientFrame` carrying `Media` on a lane. `false`: no lanes (send it on
    /// the control stream).
    pub(crate) fn send(&self, frame: Bytes, media: &pb::Media) -> bool {
        let Some(lanes) = &self.lanes else { return false };
        lock(&lanes.sender).send(frame, &media.room, media.track, media.keyframe, &self.counters);
        true
    }

    /// A media frame arrived on `lane`: count it; whether to deliver it (the ordering rule,
    /// with lanes).
    pub(crate) fn received(&self, lane: Lane, media: &pb::MediaEvent) -> bool {
        self.counters.received(lane);
        let Some(lanes) = &self.lanes else { return true };
        let session = media.from.as_ref().map_or("", |f| f.session.as_str());
        let deliver = lock(&lanes.order).admit(&media.room, session, media.track, media.seq, media.keyframe);
        if !deliver {
            self.counters.stale();
        }
        deliver
    }

    /// This session is no longer in `room`: forget its tracks' order.
    pub(crate) fn forget_room(&self, room: &str) {
        if let Some(lanes) = &self.lanes {
            lock(&lanes.order).forget_room(room);
        }
    }

    /// `session` left `room`: forget its tracks' order.
    pub(crate) fn forget_sender(&self, room: &str, session: &str) {
        if let Some(lanes) = &self.lanes {
            lock(&lanes.order).forget_sender(room, session);
        }
    }
}

//! Media counters: how many media frames went which way on which lane.

use std::sync::atomic::{AtomicU64, Ordering};

/// Which way a media frame travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// A QUIC datagram.
    Datagram,
    /// A unidirectional QUIC stream (one group of one track).
    Stream,
    /// The ordered connection: the WebSocket, or WebTransport's control stream.
    Control,
}

/// A snapshot of one session's media counters ([`crate::Client::media_stats`]). Frames, not
/// bytes; `Media` frames only (keyframe requests are not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaStats {
    /// Media frames received on QUIC datagrams.
    pub received_datagrams: u64,
    /// Media frames received on unidirectional QUIC streams (group streams).
    pub received_streams: u64,
    /// Media frames received on the ordered connection (WebSocket, or WebTransport's
    /// control stream).
    pub received_control: u64,
    /// Media frames sent as QUIC datagrams.
    pub sent_datagrams: u64,
    /// Media frames sent on unidirectional QUIC streams.
    pub sent_streams: u64,
    /// Media frames sent on the ordered connection.
    pub sent_control: u64,
    /// Received frames not delivered because they were older than the last frame delivered
    /// for their track (the ordering rule of media lanes); counted in `received_*` too.
    pub stale_dropped: u64,
    /// Frames [`crate::Client::media`] dropped because no lane could take them at once.
    pub send_dropped: u64,
}

impl std::ops::Add for MediaStats {
    type Output = MediaStats;

    fn add(self, o: MediaStats) -> MediaStats {
        MediaStats {
            received_datagrams: self.received_datagrams + o.received_datagrams,
            received_streams: self.received_streams + o.received_streams,
            received_control: self.received_control + o.received_control,
            sent_datagrams: self.sent_datagrams + o.sent_datagrams,
            sent_streams: self.sent_streams + o.sent_streams,
            sent_control: self.sent_control + o.sent_control,
            stale_dropped: self.stale_dropped + o.stale_dropped,
            send_dropped: self.send_dropped + o.send_dropped,
        }
    }
}

impl std::ops::AddAssign for MediaStats {
    fn add_assign(&mut self, o: MediaStats) {
        *self = *self + o;
    }
}

/// The live counters behind [`MediaStats`], shared by the client handles and the reader.
#[derive(Debug, Default)]
pub(crate) struct MediaCounters {
    received: [AtomicU64; 3],
    sent: [AtomicU64; 3],
    stale_dropped: AtomicU64,
    send_dropped: AtomicU64,
}

fn index(lane: Lane) -> usize {
    match lane {
        Lane::Datagram => 0,
        Lane::Stream => 1,
        Lane::Control => 2,
    }
}

impl MediaCounters {
    pub(crate) fn received(&self, lane: Lane) {
        self.received[index(lane)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sent(&self, lane: Lane) {
        self.sent[index(lane)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stale(&self) {
        self.stale_dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn send_dropped(&self) {
        self.send_dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> MediaStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MediaStats {
            received_datagrams: get(&self.received[0]),
            received_streams: get(&self.received[1]),
            received_control: get(&self.received[2]),
            sent_datagrams: get(&self.sent[0]),
            sent_streams: get(&self.sent[1]),
            sent_control: get(&self.sent[2]),
            stale_dropped: get(&self.stale_dropped),
            send_dropped: get(&self.send_dropped),
        }
    }
}

//! The members of one cluster-bench process and what they share: names, tokens, where each
//! connects, the run's phase and the tally.

use super::calls::Pending;
use super::order::SenderOrder;
use super::tally::Tally;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use switchboard_client::{Client, ClientConfig};
use tokio::sync::{watch, Notify, Semaphore};

/// Members per room.
pub const ROOM_SIZE: usize = 10;

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Opening connections.
    Ramp,
    /// Chatting, calling and churning since the instant given.
    Run(Instant),
    /// Sending has stopped; deliveries in flight are awaited.
    Drain,
    /// Members close their connections.
    Close,
}

/// Why a member's connection is to be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Wake {
    /// Nothing asked.
    None = 0,
    /// Churn: close and reconnect now.
    Churn = 1,
    /// The node sent GoAway: reconnect after its hint.
    GoAway = 2,
    /// The connection ended without being asked to.
    Lost = 3,
}

/// One member (one user, one connection at a time, one room).
pub struct Slot {
    pub user: String,
    pub room: String,
    /// The live session, for the call driver.
    pub client: Mutex<Option<Client>>,
    /// Wakes the member task (see `wake`).
    pub notify: Notify,
    wake: AtomicU8,
    /// A reconnect hint from GoAway, in ms.
    pub goaway_after_ms: AtomicU64,
    /// Set while a call of this member is in progress (the drivers skip it).
    pub in_call: AtomicBool,
    /// Bumped whenever the member drops a session (closing it or finding it lost), so the
    /// reader of a session the member dropped does not report its end as a loss.
    pub generation: AtomicU64,
    /// Chat numbers handed out (`0..sent`), and each answered publish by number.
    pub sent: AtomicU64,
    pub sends: Mutex<Vec<SendRecord>>,
    /// This member's sessions in its room: what it was owed, and the joins for the report.
    pub journal: Mutex<Journal>,
    /// Receive side: one order check per room member (by position in the room).
    pub order: Mutex<Vec<SenderOrder>>,
    /// The room's last reliable offset this member has seen (resume point).
    pub last_offset: AtomicU64,
    /// Reconnects of this member (any reason).
    pub reconnects: AtomicU64,
    /// The reader of the member's latest session (awaited after closing it on purpose, so
    /// the resume point includes what the session had already received).
    pub reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Whether the member has a joined session now.
    pub connected: AtomicBool,
    /// Whether the member's chat loop has stopped (every publish answered or failed).
    pub chat_done: AtomicBool,
}

impl Slot {
    /// Ask the member task to replace its connection (the first reason asked wins until it
    /// has been handled).
    pub fn wake(&self, why: Wake) {
        if self.wake.compare_exchange(Wake::None as u8, why as u8, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            self.notify.notify_one();
        }
    }

    /// Take the pending reason, if any.
    pub fn take_wake(&self) -> Wake {
        match self.wake.swap(Wake::None as u8, Ordering::SeqCst) {
            1 => Wake::Churn,
            2 => Wake::GoAway,
            3 => Wake::Lost,
            _ => Wake::None,
        }
    }

    /// The live client, if connected.
    pub fn client(&self) -> Option<Client> {
        self.client.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replace the live client.
    pub fn set_client(&self, c: Option<Client>) {
        *self.client.lock().unwrap_or_else(|e| e.into_inner()) = c;
    }
}

/// One chat publish, once answered.
#[derive(Debug, Clone, Copy, Default)]
pub struct SendRecord {
    /// When it was sent and answered (`now_us`).
    pub sent_us: u64,
    pub answered_us: u64,
    /// Its offset in the room's history, if acknowledged.
    pub offset: Option<u64>,
}

/// Joins kept per member for the report (the first ones; later ones are only counted).
const JOINS_KEPT: usize = 16;
/// History gaps kept per member (a member with more is failing anyway).
const GAPS_KEPT: usize = 64;

/// One session of a member in its room.
#[derive(Debug, Clone, Copy)]
pub struct JoinRecord {
    /// When the join was answered (`now_us`).
    pub at_us: u64,
    pub resume_from: Option<u64>,
    /// `Joined.last_offset`, `history_gap` and `replayed`.
    pub last_offset: u64,
    pub history_gap: bool,
    pub replayed: u32,
    /// When and why the member dropped the session (`now_us`).
    pub ended: Option<(u64, &'static str)>,
}

/// What a member was owed of its room's messages and how its sessions went.
#[derive(Debug, Default)]
pub struct Journal {
    /// The offset its first join started after (`Joined.last_offset` of a join without
    /// resume, the resume point of one with); `None` until it joined.
    pub floor: Option<u64>,
    /// Offset ranges `(after, before)` its resuming joins reported missing
    /// (`history_gap`); `before` is `u64::MAX` until the session's first message.
    pub gaps: Vec<(u64, u64)>,
    pub joins: Vec<JoinRecord>,
    pub joins_not_kept: u64,
}

impl Journal {
    /// A session joined, answered with `joined` (resuming after `resume_from`).
    pub fn joined(&mut self, at_us: u64, resume_from: Option<u64>, joined: &switchboard_client::pb::Joined) {
        self.floor.get_or_insert(resume_from.unwrap_or(joined.last_offset));
        // An earlier gap no message closed: this join answers for the same point again.
        if self.gaps.last().is_some_and(|g| g.1 == u64::MAX) {
            self.gaps.pop();
        }
        if joined.history_gap && self.gaps.len() < GAPS_KEPT {
            self.gaps.push((resume_from.unwrap_or(0), u64::MAX));
        }
        let record = JoinRecord {
            at_us,
            resume_from,
            last_offset: joined.last_offset,
            history_gap: joined.history_gap,
            replayed: joined.replayed,
            ended: None,
        };
        if self.joins.len() < JOINS_KEPT {
            self.joins.push(record);
        } else {
            self.joins_not_kept += 1;
        }
    }

    /// The session's first chat message arrived at `offset`: it closes an open gap.
    pub fn first_message(&mut self, offset: u64) {
        if let Some(g) = self.gaps.last_mut().filter(|g| g.1 == u64::MAX) {
            g.1 = offset;
        }
    }

    /// The member dropped its session (`why`).
    pub fn ended(&mut self, at_us: u64, why: &'static str) {
        if self.joins_not_kept == 0 {
            if let Some(j) = self.joins.last_mut().filter(|j| j.ended.is_none()) {
                j.ended = Some((at_us, why));
            }
        }
    }
}

/// How members connect.
pub struct Endpoints {
    pub ws_urls: Vec<String>,
    pub wt_urls: Vec<String>,
    /// Fraction of members over WebTransport.
    pub wt_fraction: f64,
    pub cert_hashes: Vec<String>,
    pub source_ips: Vec<IpAddr>,
    pub media_lanes: bool,
}

impl Endpoints {
    /// Whether member `i` connects over WebTransport: spread evenly, `wt_fraction` of all.
    pub fn is_wt(&self, i: usize) -> bool {
        let f = self.wt_fraction.clamp(0.0, 1.0);
        ((i + 1) as f64 * f).floor() > (i as f64 * f).floor()
    }
}

/// Shared by every task of the run.
pub struct Fleet {
    pub slots: Vec<Slot>,
    pub tally: Tally,
    /// Calls waiting for their answer.
    pub calls: Pending,
    pub endpoints: Endpoints,
    key: EncodingKey,
    /// The room grant of every token: this process's rooms (`{prefix}-*`).
    rooms_grant: String,
    token_ttl_secs: u64,
    /// One chat message per member per this interval.
    pub chat_interval: Duration,
    pub phase: watch::Receiver<Phase>,
    /// Bounds connection attempts in flight.
    pub connecting: Semaphore,
}

impl Fleet {
    /// `n` members named `{prefix}-u{i}` in rooms `{prefix}-r{i / ROOM_SIZE}`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        n: usize,
        prefix: &str,
        endpoints: Endpoints,
        secret: &[u8],
        token_ttl_secs: u64,
        chat_interval: Duration,
        phase: watch::Receiver<Phase>,
        concurrency: usize,
    ) -> Self {
        let slots = (0..n)
            .map(|i| {
                let room_first = i / ROOM_SIZE * ROOM_SIZE;
                let members = ROOM_SIZE.min(n - room_first);
                Slot {
                    user: format!("{prefix}-u{i}"),
                    room: format!("{prefix}-r{}", i / ROOM_SIZE),
                    client: Mutex::new(None),
                    notify: Notify::new(),
                    wake: AtomicU8::new(0),
                    goaway_after_ms: AtomicU64::new(0),
                    in_call: AtomicBool::new(false),
                    generation: AtomicU64::new(0),
                    sent: AtomicU64::new(0),
                    sends: Mutex::new(Vec::new()),
                    journal: Mutex::new(Journal::default()),
                    order: Mutex::new(vec![SenderOrder::default(); members]),
                    last_offset: AtomicU64::new(0),
                    reconnects: AtomicU64::new(0),
                    reader: Mutex::new(None),
                    connected: AtomicBool::new(false),
                    chat_done: AtomicBool::new(false),
                }
            })
            .collect();
        Self {
            slots,
            tally: Tally::new(),
            calls: Pending::default(),
            endpoints,
            key: EncodingKey::from_secret(secret),
            rooms_grant: format!("{prefix}-*"),
            token_ttl_secs,
            chat_interval,
            phase,
            connecting: Semaphore::new(concurrency.max(1)),
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// A token for member `i`: its user, its process's rooms, valid for the run.
    fn token(&self, i: usize) -> anyhow::Result<String> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let claims = json!({"sub": self.slots[i].user, "exp": now + self.token_ttl_secs, "iat": now,
                            "rooms": [self.rooms_grant]});
        Ok(jsonwebtoken::encode(&Header::default(), &claims, &self.key)?)
    }

    /// The client configuration of member `i`'s `attempt`-th connection (rotating through
    /// its transport's URLs, so a reconnect tries the next node when there are several).
    pub fn config(&self, i: usize, attempt: usize) -> anyhow::Result<ClientConfig> {
        let e = &self.endpoints;
        let urls = if e.is_wt(i) { &e.wt_urls } else { &e.ws_urls };
        anyhow::ensure!(!urls.is_empty(), "no URL for member {i}'s transport");
        let mut c = ClientConfig::new(&urls[(i + attempt) % urls.len()], self.token(i)?);
        c.cert_hashes.extend(e.cert_hashes.iter().cloned());
        c.bind_ip = (!e.source_ips.is_empty()).then(|| e.source_ips[i % e.source_ips.len()]);
        c.media_lanes = e.media_lanes;
        c.event_buffer = 256;
        c.client_name = "bench-cluster".into();
        Ok(c)
    }

    /// Index of member `i` within its room.
    pub fn position(i: usize) -> usize {
        i % ROOM_SIZE
    }
}

#[cfg(test)]
mod tests {
    use super::Endpoints;

    fn endpoints(f: f64) -> Endpoints {
        Endpoints {
            ws_urls: vec!["ws://127.0.0.1:1/ws".into()],
            wt_urls: vec!["https://127.0.0.1:1/wt".into()],
            wt_fraction: f,
            cert_hashes: vec![],
            source_ips: vec![],
            media_lanes: false,
        }
    }

    #[test]
    fn the_webtransport_fraction_is_spread_evenly() {
        for (f, want) in [(0.0, 0), (0.25, 25), (0.5, 50), (1.0, 100)] {
            let e = endpoints(f);
            assert_eq!((0..100).filter(|&i| e.is_wt(i)).count(), want, "{f}");
        }
        // Every window of 10 has its share, not the first half all of one kind.
        let e = endpoints(0.3);
        assert!((0..100).step_by(10).all(|s| (s..s + 10).filter(|&i| e.is_wt(i)).count() == 3));
    }
}

//! Network profiles: what a shaped link does to each packet.

use std::time::Duration;

/// How a host's link is impaired. Each field applies to EACH direction of the link
/// separately except where said: the delay is half the round trip (so RTT = 2 × `one_way`),
/// the jitter is split the same way, the loss probability is per packet per direction
/// (a round trip is lost with probability 1 − (1 − loss)²), the rate caps each direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// Name for reports.
    pub name: &'static str,
    /// Added round-trip time (split evenly between the two directions).
    pub rtt: Duration,
    /// Round-trip jitter: each direction's delay is uniform in one-way ± jitter/2, so the
    /// round trip stays within RTT ± jitter. Packets are never reordered by it.
    pub jitter: Duration,
    /// Packet loss probability per direction, 0.0..1.0.
    pub loss: f64,
    /// Rate cap per direction, bits per second (`None`: no cap).
    pub rate_bps: Option<u64>,
}

impl Profile {
    /// No impairment at all (no rule, no helper, no qdisc).
    pub const fn clean() -> Self {
        Self { name: "clean", rtt: Duration::ZERO, jitter: Duration::ZERO, loss: 0.0, rate_bps: None }
    }

    /// Home Wi-Fi: 20 ms RTT, 5 ms jitter, 0.5 % loss.
    pub const fn wifi() -> Self {
        Self {
            name: "wifi",
            rtt: Duration::from_millis(20),
            jitter: Duration::from_millis(5),
            loss: 0.005,
            rate_bps: None,
        }
    }

    /// A phone on a cellular network: 80 ms RTT, 20 ms jitter, 2 % loss, 8 Mbit/s.
    pub const fn mobile() -> Self {
        Self {
            name: "mobile",
            rtt: Duration::from_millis(80),
            jitter: Duration::from_millis(20),
            loss: 0.02,
            rate_bps: Some(8_000_000),
        }
    }

    /// A bad link: 150 ms RTT, 5 % loss, 2 Mbit/s.
    pub const fn bad() -> Self {
        Self {
            name: "bad",
            rtt: Duration::from_millis(150),
            jitter: Duration::ZERO,
            loss: 0.05,
            rate_bps: Some(2_000_000),
        }
    }

    /// A long, clean path: 150 ms RTT (another continent), no loss, no rate cap; what one
    /// connection carries here is set by its flow-control windows and congestion control.
    pub const fn long() -> Self {
        Self { name: "long", rtt: Duration::from_millis(150), jitter: Duration::ZERO, loss: 0.0, rate_bps: None }
    }

    /// All named profiles.
    pub const fn all() -> [Self; 5] {
        [Self::clean(), Self::wifi(), Self::mobile(), Self::bad(), Self::long()]
    }

    /// The profile called `name` (`clean`, `wifi`, `mobile`, `bad`, `long`).
    pub fn named(name: &str) -> Option<Self> {
        Self::all().into_iter().find(|p| p.name == name)
    }

    /// One direction's delay.
    pub fn one_way(&self) -> Duration {
        self.rtt / 2
    }

    /// One direction's jitter (± around [`Profile::one_way`]).
    pub fn one_way_jitter(&self) -> Duration {
        self.jitter / 2
    }
}

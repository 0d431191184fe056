//! Active speaker detection for one room, from the audio levels senders report.
//!
//! Senders put an RFC 6464 level on their audio frames (`Media.audio_level`: -dBov, 0 the
//! loudest, 127 silence). Every node hosting a room receives all of the room's audio (it is
//! not layered), so each one computes the room's speaker itself from the same frames, and no
//! extra bus traffic is needed; the nodes agree but for frames in flight at a change.
//!
//! Per sender, the loudness (127 - level, dB above -127 dBov) is smoothed with an
//! exponential moving average of time constant [`SMOOTHING`]; a sender silent on the wire
//! for [`STALE`] counts as silent. The loudest sender above [`SPEAKING`] becomes the
//! speaker when it beats the current one by [`MARGIN`] dB for [`SWITCH_HOLD`] in a row, and
//! no sooner than [`MIN_INTERVAL`] after the last change: a short cough or two people at
//! the same level do not make it flap. When everyone falls silent the last speaker stays.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Time constant of the loudness average.
pub const SMOOTHING: Duration = Duration::from_millis(300);
/// A sender with no level for this long counts as silent.
pub const STALE: Duration = Duration::from_millis(500);
/// Smoothed loudness (dB above -127 dBov) above which a sender is speaking: -50 dBov.
pub const SPEAKING: f32 = 77.0;
/// How much louder (dB) a sender must be than the current speaker to take over.
pub const MARGIN: f32 = 6.0;
/// How long a sender must stay the louder one before it takes over.
pub const SWITCH_HOLD: Duration = Duration::from_millis(300);
/// At most one change per room per this interval.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Senders tracked per room (a room's senders are its participants; past this, new ones
/// are ignored until some leave).
pub const MAX_TRACKED: usize = 256;

struct Level {
    user: String,
    loudness: f32,
    last: Instant,
}

/// A new active speaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Its session.
    pub session: String,
    /// Its user.
    pub user: String,
    /// Its smoothed level, -dBov.
    pub level: u32,
}

/// One room's detector.
#[derive(Default)]
pub struct Detector {
    levels: HashMap<String, Level>,
    current: Option<String>,
    /// The sender beating the current one, since when.
    candidate: Option<(String, Instant)>,
    last_change: Option<Instant>,
}

impl Detector {
    /// The current speaker's session.
    pub fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// A frame of `session` with `level` (-dBov, clamped to 127) arrived at `now`. Returns
    /// the new speaker if this changed it.
    pub fn observe(&mut self, session: &str, user: &str, level: u32, now: Instant) -> Option<Change> {
        let loud = 127.0 - level.min(127) as f32;
        let tracked = self.levels.len();
        match self.levels.get_mut(session) {
            Some(l) => {
                let dt = now.saturating_duration_since(l.last).as_secs_f32();
                let alpha = 1.0 - (-dt / SMOOTHING.as_secs_f32()).exp();
                l.loudness += alpha * (loud - l.loudness);
                l.last = now;
            }
            None if tracked < MAX_TRACKED => {
                self.levels.insert(session.to_owned(), Level { user: user.to_owned(), loudness: loud, last: now });
            }
            None => return None,
        }
        self.evaluate(now)
    }

    fn score(&self, session: &str, now: Instant) -> f32 {
        self.levels.get(session).map_or(0.0, |l| {
            if now.saturating_duration_since(l.last) > STALE {
                0.0
            } else {
                l.loudness
            }
        })
    }

    fn evaluate(&mut self, now: Instant) -> Option<Change> {
        let (best, best_score) = self
            .levels
            .keys()
            .map(|s| (s, self.score(s, now)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(s, score)| (s.clone(), score))?;
        let current_score = self.current.as_deref().map_or(0.0, |c| self.score(c, now));
        if best_score < SPEAKING || self.current.as_deref() == Some(&best) || best_score < current_score + MARGIN {
            self.candidate = None;
            return None;
        }
        match &self.candidate {
            Some((c, _)) if *c == best => {}
            _ => {
                self.candidate = Some((best, now));
                return None;
            }
        }
        let since = self.candidate.as_ref().map_or(now, |c| c.1);
        if now.saturating_duration_since(since) < SWITCH_HOLD
            || self.last_change.is_some_and(|t| now.saturating_duration_since(t) < MIN_INTERVAL)
        {
            return None;
        }
        self.candidate = None;
        self.last_change = Some(now);
        self.current = Some(best.clone());
        let user = self.levels.get(&best).map(|l| l.user.clone()).unwrap_or_default();
        Some(Change { session: best, user, level: (127.0 - best_score).round().clamp(0.0, 127.0) as u32 })
    }

    /// Forget senders `keep` refuses (they left the room).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.levels.retain(|s, _| keep(s));
        if self.current.as_deref().is_some_and(|c| !keep(c)) {
            self.current = None;
        }
        if self.candidate.as_ref().is_some_and(|(c, _)| !keep(c)) {
            self.candidate = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: Duration = Duration::from_millis(20);

    /// Feed 20 ms frames of `levels` (session, level) for `frames` frames; the changes.
    fn run(d: &mut Detector, t: &mut Instant, frames: u32, levels: &[(&str, u32)]) -> Vec<String> {
        let mut changes = Vec::new();
        for _ in 0..frames {
            *t += FRAME;
            for (s, l) in levels {
                if let Some(c) = d.observe(s, &format!("user-{s}"), *l, *t) {
                    assert_eq!(c.user, format!("user-{}", c.session));
                    changes.push(c.session);
                }
            }
        }
        changes
    }

    #[test]
    fn the_loud_one_becomes_the_speaker_and_the_other_takes_over() {
        let (mut d, mut t) = (Detector::default(), Instant::now());
        assert_eq!(run(&mut d, &mut t, 50, &[("a", 20), ("b", 90)]), ["a"]);
        assert_eq!(run(&mut d, &mut t, 100, &[("a", 90), ("b", 25)]), ["b"]);
        // Everyone silent: the last speaker stays, no event.
        assert!(run(&mut d, &mut t, 100, &[("a", 127), ("b", 127)]).is_empty());
        assert_eq!(d.current(), Some("b"));
    }

    #[test]
    fn close_levels_and_short_bursts_do_not_flap() {
        let (mut d, mut t) = (Detector::default(), Instant::now());
        assert_eq!(run(&mut d, &mut t, 50, &[("a", 30), ("b", 90)]), ["a"]);
        // b as loud as a, alternating 3 dB around it: within the margin.
        let mut changes = Vec::new();
        for i in 0..50 {
            let (la, lb) = if i % 2 == 0 { (30, 28) } else { (30, 33) };
            changes.extend(run(&mut d, &mut t, 10, &[("a", la), ("b", lb)]));
        }
        assert!(changes.is_empty(), "{changes:?}");
        // A 100 ms shout of b is shorter than the hold.
        assert!(run(&mut d, &mut t, 5, &[("a", 40), ("b", 0)]).is_empty());
        assert!(run(&mut d, &mut t, 50, &[("a", 30), ("b", 90)]).is_empty());
    }

    #[test]
    fn changes_are_rate_limited() {
        let (mut d, mut t) = (Detector::default(), Instant::now());
        let mut changes = Vec::new();
        // Speakers swap every 700 ms for 9.8 s (each swap would be taken ~450 ms in): at
        // most one change a second.
        for i in 0..14 {
            let levels: &[(&str, u32)] = if i % 2 == 0 { &[("a", 10), ("b", 100)] } else { &[("a", 100), ("b", 10)] };
            changes.extend(run(&mut d, &mut t, 35, levels));
        }
        assert!((2..=10).contains(&changes.len()), "{changes:?}");
    }

    #[test]
    fn a_leaver_is_forgotten() {
        let (mut d, mut t) = (Detector::default(), Instant::now());
        run(&mut d, &mut t, 50, &[("a", 20)]);
        assert_eq!(d.current(), Some("a"));
        d.retain(|s| s != "a");
        assert_eq!(d.current(), None);
        assert_eq!(run(&mut d, &mut t, 50, &[("b", 20)]), ["b"]);
    }
}

//! Exactly-once, in-order checks of one sender's reliable messages at one receiver.
//!
//! Senders number their messages 0, 1, 2, ...; a receiver expects each number once, in
//! that order. A number above the next expected one leaves a gap (the skipped numbers are
//! remembered as missing); a missing number that arrives later is out of order; any other
//! number at or below the highest seen is a duplicate. Whether a missing number is *lost*
//! is decided at the end, against what the sender's node acknowledged ([`SenderOrder::settle`]):
//! a message whose publish failed may or may not have been delivered.

use std::collections::BTreeSet;

/// Most missing numbers remembered per sender at one receiver; more are counted as
/// [`SenderOrder::overflow`] (and reported as lost: that many gaps is a failure anyway).
const MISSING_MAX: usize = 4096;

/// What one delivery was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The next expected number.
    InOrder,
    /// Above the next expected: the numbers in between are missing (for now).
    Gap,
    /// A missing number, arriving after a higher one.
    Reordered,
    /// Already delivered.
    Duplicate,
}

/// One receiver's view of one sender.
#[derive(Debug, Default, Clone)]
pub struct SenderOrder {
    /// The next expected number; `None` until anchored (a receiver that joined after the
    /// sender started anchors at the first number it sees).
    next: Option<u64>,
    missing: BTreeSet<u64>,
    overflow: u64,
}

impl SenderOrder {
    /// A receiver that was in the room before the sender's first message.
    pub fn from_start() -> Self {
        Self { next: Some(0), ..Self::default() }
    }

    /// Record the delivery of number `seq`.
    pub fn see(&mut self, seq: u64) -> Seen {
        let next = *self.next.get_or_insert(seq);
        if seq == next {
            self.next = Some(next + 1);
            return Seen::InOrder;
        }
        if seq > next {
            for s in next..seq {
                if self.missing.len() < MISSING_MAX {
                    self.missing.insert(s);
                } else {
                    self.overflow += 1;
                }
            }
            self.next = Some(seq + 1);
            return Seen::Gap;
        }
        if self.missing.remove(&seq) {
            Seen::Reordered
        } else {
            Seen::Duplicate
        }
    }

    /// (lost, pending) given that the sender handed out numbers `0..sent` and that those
    /// in `unacked` were never acknowledged: acknowledged numbers still missing below the
    /// highest delivered are lost; acknowledged numbers above it have not arrived (yet).
    pub fn settle(&self, sent: u64, unacked: &[u64]) -> (u64, u64) {
        let acked = |s: &u64| !unacked.contains(s);
        let lost = self.missing.iter().filter(|s| acked(s)).count() as u64 + self.overflow;
        let from = self.next.unwrap_or(sent);
        let pending = (from..sent).filter(acked).count() as u64;
        (lost, pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_deliveries_settle_clean() {
        let mut o = SenderOrder::from_start();
        for s in 0..5 {
            assert_eq!(o.see(s), Seen::InOrder);
        }
        assert_eq!(o.settle(5, &[]), (0, 0));
        assert_eq!(o.settle(7, &[]), (0, 2), "two acknowledged, not yet delivered");
    }

    #[test]
    fn gaps_reorders_and_duplicates_are_told_apart() {
        let mut o = SenderOrder::from_start();
        assert_eq!(o.see(0), Seen::InOrder);
        assert_eq!(o.see(3), Seen::Gap);
        assert_eq!(o.see(1), Seen::Reordered);
        assert_eq!(o.see(1), Seen::Duplicate);
        assert_eq!(o.see(3), Seen::Duplicate);
        // 2 is missing: lost if acknowledged, not if its publish failed.
        assert_eq!(o.settle(4, &[]), (1, 0));
        assert_eq!(o.settle(4, &[2]), (0, 0));
    }

    #[test]
    fn a_receiver_from_the_start_misses_the_first_message() {
        let mut o = SenderOrder::from_start();
        assert_eq!(o.see(1), Seen::Gap);
        assert_eq!(o.settle(2, &[]), (1, 0));
    }

    #[test]
    fn a_late_receiver_anchors_at_its_first_delivery() {
        let mut o = SenderOrder::default();
        assert_eq!(o.see(7), Seen::InOrder);
        assert_eq!(o.see(8), Seen::InOrder);
        assert_eq!(o.settle(9, &[]), (0, 0));
        assert_eq!(SenderOrder::default().settle(3, &[]), (0, 0), "never anchored: nothing expected");
    }
}

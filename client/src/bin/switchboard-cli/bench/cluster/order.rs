//! Exactly-once, in-order checks of one sender's reliable messages at one receiver.
//!
//! Senders number their messages 0, 1, 2, ...; a receiver expects each number once, in
//! that order. A number above the next expected one leaves a gap (the skipped numbers are
//! remembered as missing); a missing number that arrives later is out of order; any other
//! number at or below the highest seen is a duplicate. Whether a missing number is *lost*
//! is decided at the end ([`SenderOrder::settle`]), against where the sender's node stored
//! it (the offset its acknowledgement carried) and what the receiver was owed:
//! * a message whose publish was not acknowledged may or may not have been delivered;
//! * a message stored at or below the offset of the receiver's first join (`Joined.last_offset`
//!   of a join without resume) was never owed to it: a join delivers only what follows it,
//!   whenever the sender's acknowledgement arrives (under load seconds after the join);
//! * a message in a range a resuming join reported missing (`Joined.history_gap`: older than
//!   the node could replay) was reported, not silently lost.

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

/// One receiver's view of one sender. Every receiver starts at the sender's number 0;
/// what it was owed is decided at the end from offsets ([`SenderOrder::settle`]).
#[derive(Debug, Default, Clone)]
pub struct SenderOrder {
    /// The next expected number.
    next: u64,
    missing: BTreeSet<u64>,
    overflow: u64,
}

/// What a receiver was owed of the room's messages: those stored after `floor` (the offset
/// of its first join; `None`: it never joined) outside the `gaps` its joins reported.
#[derive(Debug, Clone, Copy)]
pub struct Owed<'a> {
    pub floor: Option<u64>,
    /// Offset ranges `(after, before)`, both exclusive, a resuming join reported missing.
    pub gaps: &'a [(u64, u64)],
}

impl Owed<'_> {
    /// Why a message stored at `offset` was not owed, if it was not.
    pub fn excuse(&self, offset: u64) -> Option<Excuse> {
        match self.floor {
            None => Some(Excuse::BeforeJoin),
            Some(f) if offset <= f => Some(Excuse::BeforeJoin),
            _ if self.gaps.iter().any(|&(a, b)| a < offset && offset < b) => Some(Excuse::ReportedGap),
            _ => None,
        }
    }
}

/// Why a missing message was not lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Excuse {
    /// Stored before the receiver's first join (at or below its floor).
    BeforeJoin,
    /// Within a gap a resuming join reported.
    ReportedGap,
}

/// One receiver's account of one sender, at the end.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Settled {
    /// Acknowledged messages owed to the receiver.
    pub expected: u64,
    /// Numbers of owed messages missing below the highest delivered.
    pub lost: Vec<u64>,
    /// Missing numbers beyond [`MISSING_MAX`] (counted as lost, not classified).
    pub overflow: u64,
    /// Missing, acknowledged, stored before the receiver joined: not owed.
    pub before_join: Vec<u64>,
    /// Missing, acknowledged, within a gap a join reported: not owed.
    pub in_reported_gap: Vec<u64>,
    /// Owed messages above the highest delivered (not arrived yet).
    pub pending: u64,
}

impl SenderOrder {
    /// Record the delivery of number `seq`.
    pub fn see(&mut self, seq: u64) -> Seen {
        let next = self.next;
        if seq == next {
            self.next = next + 1;
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
            self.next = seq + 1;
            return Seen::Gap;
        }
        if self.missing.remove(&seq) {
            Seen::Reordered
        } else {
            Seen::Duplicate
        }
    }

    /// The account, given the offset each of the sender's numbers was acknowledged at
    /// (`acked[seq]`, `None`: not acknowledged, or not answered yet) and what the receiver
    /// was owed.
    pub fn settle(&self, acked: &[Option<u64>], owed: Owed<'_>) -> Settled {
        let mut s = Settled { overflow: self.overflow, ..Settled::default() };
        let owed_at = |seq: u64| acked.get(seq as usize).copied().flatten().map(|o| (o, owed.excuse(o)));
        for (seq, offset) in acked.iter().enumerate() {
            if offset.is_some_and(|o| owed.excuse(o).is_none()) {
                s.expected += 1;
                if seq as u64 >= self.next {
                    s.pending += 1;
                }
            }
        }
        for &seq in &self.missing {
            match owed_at(seq) {
                None => {}
                Some((_, None)) => s.lost.push(seq),
                Some((_, Some(Excuse::BeforeJoin))) => s.before_join.push(seq),
                Some((_, Some(Excuse::ReportedGap))) => s.in_reported_gap.push(seq),
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FROM_START: Owed<'static> = Owed { floor: Some(0), gaps: &[] };

    /// Numbers 0.. acknowledged at offsets `first`, `first + 1`, ...
    fn acked(first: u64, n: u64) -> Vec<Option<u64>> {
        (0..n).map(|s| Some(first + s)).collect()
    }

    #[test]
    fn in_order_deliveries_settle_clean() {
        let mut o = SenderOrder::default();
        for s in 0..5 {
            assert_eq!(o.see(s), Seen::InOrder);
        }
        let s = o.settle(&acked(1, 5), FROM_START);
        assert_eq!((s.expected, s.lost.len(), s.pending), (5, 0, 0));
        let s = o.settle(&acked(1, 7), FROM_START);
        assert_eq!((s.expected, s.pending), (7, 2), "two acknowledged, not yet delivered");
    }

    #[test]
    fn gaps_reorders_and_duplicates_are_told_apart() {
        let mut o = SenderOrder::default();
        assert_eq!(o.see(0), Seen::InOrder);
        assert_eq!(o.see(3), Seen::Gap);
        assert_eq!(o.see(1), Seen::Reordered);
        assert_eq!(o.see(1), Seen::Duplicate);
        assert_eq!(o.see(3), Seen::Duplicate);
        // 2 is missing: lost if acknowledged, not if its publish failed.
        assert_eq!(o.settle(&acked(1, 4), FROM_START).lost, vec![2]);
        let unacked_2 = [Some(1), Some(2), None, Some(4)];
        let s = o.settle(&unacked_2, FROM_START);
        assert_eq!((s.lost.len(), s.expected), (0, 3));
    }

    #[test]
    fn a_receiver_from_the_start_misses_the_first_message() {
        let mut o = SenderOrder::default();
        assert_eq!(o.see(1), Seen::Gap);
        assert_eq!(o.settle(&acked(1, 2), FROM_START).lost, vec![0]);
    }

    /// Issue 14: a member joining while its room chats is owed only what was stored after
    /// its join, even when the sender's acknowledgement came after the join (under load
    /// seconds later). Counting from the sender's first message made those "lost".
    #[test]
    fn messages_stored_before_a_late_join_are_not_owed() {
        let mut o = SenderOrder::default();
        // The sender's 0..3 were stored at offsets 11..14, the receiver joined at floor 13
        // (0..2 before it, 2 acknowledged only after the join): it gets 3 and 4.
        assert_eq!(o.see(3), Seen::Gap);
        assert_eq!(o.see(4), Seen::InOrder);
        let late = Owed { floor: Some(13), gaps: &[] };
        let s = o.settle(&acked(11, 6), late);
        assert_eq!(s.lost, Vec::<u64>::new());
        assert_eq!(s.before_join, vec![0, 1, 2]);
        assert_eq!((s.expected, s.pending), (3, 1), "3, 4 and 5 owed; 5 not arrived yet");
        // The old accounting (owed everything acknowledged) called 0, 1 and 2 lost.
        assert_eq!(o.settle(&acked(11, 6), FROM_START).lost, vec![0, 1, 2]);
        // But a message stored after the join and skipped is lost.
        let mut o = SenderOrder::default();
        o.see(4);
        assert_eq!(o.settle(&acked(11, 5), late).lost, vec![3]);
    }

    #[test]
    fn messages_in_a_reported_history_gap_are_not_lost() {
        let mut o = SenderOrder::default();
        o.see(0);
        o.see(5);
        // Resumed after offset 1, the join reported a gap; replay began at offset 5.
        let owed = Owed { floor: Some(0), gaps: &[(1, 5)] };
        let s = o.settle(&acked(1, 6), owed);
        assert_eq!(s.in_reported_gap, vec![1, 2, 3], "offsets 2..=4");
        assert_eq!(s.lost, vec![4], "offset 5 is not in the gap");
        assert_eq!(s.expected, 3);
    }

    #[test]
    fn a_member_that_never_joined_is_owed_nothing() {
        let never = Owed { floor: None, gaps: &[] };
        let s = SenderOrder::default().settle(&acked(1, 3), never);
        assert_eq!((s.expected, s.pending, s.lost.len()), (0, 0, 0));
    }
}

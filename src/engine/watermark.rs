//! The `P:mirror` `zxid` watermark: a zxid W such that every change under the root with a zxid
//! at or below W is in Redis.
//!
//! Why it can be known although a 3.8 server sends no zxid with its events: on one session,
//! ZooKeeper delivers every watch event for a change *before* the reply to any read that was
//! served after that change. So when the reply to a read arrives carrying zxid Z (the highest
//! zxid in the `Stat`s it returned), the event of every change at or below Z has already been
//! delivered, and each of those events has marked a path dirty. Once every such mark has been
//! read again and written (Redis acknowledged it, or refused it as older than what it holds), Z
//! is a true watermark. Each event gets a sequence number; a *candidate* is `(events seen when
//! the reply arrived, Z)`, released when no mark with a sequence number below it is open.
//!
//! Events are lost while the session is disconnected and a new session starts with none:
//! until the walk that follows has written the whole tree, nothing is released (the walk is
//! what covers the changes no event reported). A walk's own reads are candidates like any
//! other, released once the walk is done.

use std::collections::{BTreeMap, VecDeque};

/// Most candidates kept. When full, the newest replaces the last one: a candidate with a later
/// sequence number and a higher zxid only waits longer, so merging can delay the watermark but
/// never make it claim too much.
const MAX_CANDIDATES: usize = 256;

#[derive(Debug, Default)]
pub(crate) struct Watermark {
    /// Sequence number of the last watch event.
    events: u64,
    /// Marks (event sequence numbers) whose read has not been written yet, with their counts.
    open: BTreeMap<u64, usize>,
    /// `(events seen at the reply, zxid)`, both non-decreasing.
    candidates: VecDeque<(u64, i64)>,
    /// Whether a walk that must cover lost events is still running: nothing is released.
    blocked: bool,
    /// The watermark: only grows.
    released: i64,
}

impl Watermark {
    /// A watch event arrived: its sequence number, for the marks it sets.
    pub fn next_event(&mut self) -> u64 {
        self.events += 1;
        self.events
    }

    /// A path was marked dirty by event `seq` (and was not already marked).
    pub fn open(&mut self, seq: u64) {
        *self.open.entry(seq).or_default() += 1;
    }

    /// The read for mark `seq` has been written (or will never be needed: the path is gone
    /// from the mirror's concern, e.g. filtered out).
    pub fn close(&mut self, seq: u64) {
        if let Some(count) = self.open.get_mut(&seq) {
            *count -= 1;
            if *count == 0 {
                self.open.remove(&seq);
            }
        }
    }

    /// A read's reply arrived, showing zxids up to `zxid`; the events before it are all in.
    pub fn reply(&mut self, zxid: i64) {
        if zxid <= self.released {
            return;
        }
        let candidate = (self.events, zxid);
        let full = self.candidates.len() >= MAX_CANDIDATES;
        match self.candidates.back_mut() {
            Some(last) if last.1 >= zxid => {
                // An older zxid is no news; keep the later sequence number's stricter claim.
                last.0 = last.0.max(self.events);
            }
            Some(last) if full => *last = candidate,
            _ => self.candidates.push_back(candidate),
        }
    }

    /// Events may have been lost (disconnect, expiry, Redis lost what was written): forget
    /// every open mark and candidate, and release nothing until [`Watermark::unblock`].
    pub fn block(&mut self) {
        self.open.clear();
        self.candidates.clear();
        self.blocked = true;
    }

    /// The walk that covers what the lost events reported is complete.
    pub fn unblock(&mut self) {
        self.blocked = false;
    }

    /// Raises the watermark as far as the open marks allow; returns it if it moved.
    pub fn release(&mut self) -> Option<i64> {
        if self.blocked {
            return None;
        }
        // Every mark below this is closed (u64::MAX: none is open).
        let first_open = self.open.keys().next().copied().unwrap_or(u64::MAX);
        let mut moved = None;
        while let Some(&(seen, zxid)) = self.candidates.front() {
            if seen >= first_open {
                break;
            }
            self.candidates.pop_front();
            if zxid > self.released {
                self.released = zxid;
                moved = Some(zxid);
            }
        }
        moved
    }

    #[cfg(test)]
    pub fn value(&self) -> i64 {
        self.released
    }

    /// The watermark, if it may be claimed now: not while a walk that covers lost events runs
    /// (Redis may have lost what it counted on, e.g. after a flush).
    pub fn claimable(&self) -> Option<i64> {
        (!self.blocked).then_some(self.released)
    }

    /// Marks open now.
    #[cfg(test)]
    pub fn open_marks(&self) -> usize {
        self.open.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_released_only_when_every_earlier_event_is_written() {
        let mut w = Watermark::default();
        // /r/a changes at 101 (event 1), /r/b at 102 (event 2).
        let a = w.next_event();
        w.open(a);
        let b = w.next_event();
        w.open(b);
        // b's read answers first, showing 102.
        w.reply(102);
        w.close(b);
        assert_eq!(w.release(), None, "a@101 is not written yet: 102 would claim it");
        w.close(a);
        assert_eq!(w.release(), Some(102));
        assert_eq!(w.value(), 102);
    }

    #[test]
    fn a_reply_before_a_later_event_is_released_without_waiting_for_it() {
        let mut w = Watermark::default();
        let a = w.next_event();
        w.open(a);
        w.reply(101);
        w.close(a);
        let b = w.next_event();
        w.open(b);
        // Event 2 came after the reply: it does not hold back 101.
        assert_eq!(w.release(), Some(101));
        assert_eq!(w.release(), None);
    }

    #[test]
    fn nothing_is_released_while_a_covering_walk_runs_and_it_never_goes_down() {
        let mut w = Watermark::default();
        w.reply(50);
        assert_eq!(w.release(), Some(50));
        w.block();
        w.reply(90);
        assert_eq!(w.release(), None);
        w.unblock();
        assert_eq!(w.release(), Some(90));
        w.reply(70);
        assert_eq!(w.release(), None);
        assert_eq!(w.value(), 90);
    }

    #[test]
    fn many_candidates_merge_without_claiming_more() {
        let mut w = Watermark::default();
        let first = w.next_event();
        w.open(first);
        for zxid in 1..=10_000 {
            w.next_event();
            w.reply(zxid);
        }
        assert!(w.candidates.len() <= MAX_CANDIDATES);
        assert_eq!(w.release(), None, "the first event is still open");
        w.close(first);
        assert_eq!(w.release(), Some(10_000));
    }
}

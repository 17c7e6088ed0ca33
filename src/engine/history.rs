//! Whether ZooKeeper's history went back: restored from a backup, or rebuilt and re-imported.
//!
//! Then every zxid of ZooKeeper is below what Redis holds, and the scripts, which never go
//! backwards, would refuse every write for ever. A server that is merely behind (a lagging
//! follower) shows the same symptom for a moment, so the judgment is only ever made on a
//! *synced* walk: before the walk reads anything, the driver reads `P:mirror` (`zxid`,
//! `epoch`), then has the session's server `sync` with the leader, then reads the `Stat` of
//! the root's ancestors. After that the server has everything committed before the claim was
//! read, so in one history:
//!
//! - every zxid the watermark ever claimed is at most the highest zxid M the walk then finds
//!   (`czxid`/`mzxid`/`pzxid` over the subtree, tombstone zxids, the root's ancestors): a claim
//!   is a zxid some read returned, and what a read returned is still visible after the sync,
//!   in the znode itself or in the `pzxid` of an ancestor that recorded its delete;
//! - no put of a read made after the sync is refused as older than Redis, or tombstoned:
//!   what Redis holds came from an earlier read (one mirror writes in read order).
//!
//! So a claim above M proves the history went back ([`Verdict::WentBack`]). Refused puts are
//! only suspicious ([`Verdict::Suspect`]: another mirror may have written a newer read in
//! between), and a second synced walk that is refused too confirms them: that covers a
//! restored ZooKeeper that took more changes than it lost before the mirror saw it, so that M
//! passed the old claim again. The decision is here, I/O-free; the reads are the driver's.

use crate::store::StoredMark;

/// What the sync before a walk answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SyncPoint {
    /// `P:mirror` as read just before the sync.
    pub stored: StoredMark,
    /// The highest zxid among the root's ancestors, read just after it.
    pub above_root: i64,
}

/// What one walk learned for the judgment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Evidence {
    /// The sync's answer; `None` when it failed (the walk is then not judged).
    pub synced: Option<SyncPoint>,
    /// The highest zxid the walk's reads returned (M).
    pub highest: i64,
    /// Whether the walk found the root present: without it there is nothing to compare.
    pub root_present: bool,
    /// The walk's puts Redis refused as older than it holds, or as tombstoned.
    pub refused: u64,
    /// The walk could not see part of the subtree: a znode it may not read (an ACL closed
    /// since), or children the filter keeps it out of (a filter narrowed since the claim was
    /// made). The znode that earned the claim may lie there, and `setACL` leaves no zxid in
    /// any `Stat`, so a claim above M proves nothing; refused puts still do (twice).
    pub partial: bool,
}

impl Evidence {
    /// A read of the walk returned these zxids.
    pub fn saw(&mut self, zxid: i64) {
        self.highest = self.highest.max(zxid);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The walk was not synced, the root is absent, or `P:mirror` is of another history.
    Unjudged,
    /// One history, as far as this walk can tell.
    Same,
    /// Puts were refused although the claim is within reach: walk again, synced, to confirm.
    Suspect { redis_zxid: i64, zookeeper_zxid: i64, refused: u64 },
    /// Redis claims a zxid above everything a synced ZooKeeper holds.
    WentBack { redis_zxid: i64, zookeeper_zxid: i64 },
}

/// The judgment of a finished walk, by a mirror of history `epoch`.
pub(crate) fn judge(evidence: &Evidence, epoch: u64) -> Verdict {
    let Some(sync) = evidence.synced else { return Verdict::Unjudged };
    if !evidence.root_present || sync.stored.epoch != epoch {
        return Verdict::Unjudged;
    }
    let highest = evidence.highest.max(sync.above_root);
    let redis_zxid = sync.stored.zxid.unwrap_or(0);
    if redis_zxid > highest && !evidence.partial {
        Verdict::WentBack { redis_zxid, zookeeper_zxid: highest }
    } else if evidence.refused > 0 {
        Verdict::Suspect { redis_zxid, zookeeper_zxid: highest, refused: evidence.refused }
    } else if redis_zxid > highest {
        Verdict::Unjudged
    } else {
        Verdict::Same
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synced(zxid: Option<i64>, epoch: u64) -> Evidence {
        Evidence {
            synced: Some(SyncPoint { stored: StoredMark { zxid, epoch }, above_root: 3 }),
            highest: 0,
            root_present: true,
            refused: 0,
            partial: false,
        }
    }

    #[test]
    fn a_claim_above_what_a_synced_zookeeper_holds_is_a_restore() {
        let mut e = synced(Some(900), 0);
        e.saw(120);
        assert_eq!(judge(&e, 0), Verdict::WentBack { redis_zxid: 900, zookeeper_zxid: 120 });
        e.saw(900);
        assert_eq!(judge(&e, 0), Verdict::Same);
    }

    #[test]
    fn without_a_sync_or_a_root_or_in_another_history_nothing_is_judged() {
        let mut e = synced(Some(900), 0);
        e.saw(120);
        assert_eq!(judge(&Evidence { synced: None, ..e }, 0), Verdict::Unjudged);
        assert_eq!(judge(&Evidence { root_present: false, ..e }, 0), Verdict::Unjudged);
        assert_eq!(judge(&e, 1), Verdict::Unjudged, "the claim is of history 0, the mirror is in 1");
    }

    #[test]
    fn refused_puts_within_reach_of_the_claim_are_only_suspect() {
        let mut e = synced(Some(100), 2);
        e.saw(150);
        e.refused = 4;
        assert_eq!(judge(&e, 2), Verdict::Suspect { redis_zxid: 100, zookeeper_zxid: 150, refused: 4 });
    }

    #[test]
    fn the_ancestors_above_the_root_count() {
        // A tombstone zxid may be an ancestor's pzxid, above anything in the subtree.
        let mut e = synced(Some(50), 0);
        e.saw(10);
        e.synced = e.synced.map(|s| SyncPoint { above_root: 60, ..s });
        assert_eq!(judge(&e, 0), Verdict::Same);
    }
}

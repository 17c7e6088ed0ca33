//! Whether ZooKeeper's history went back: restored from a backup, or rebuilt and re-imported.
//!
//! Then every zxid of ZooKeeper is below what Redis holds, and the scripts, which never go
//! backwards, would refuse every write for ever. A server that is merely behind (a lagging
//! follower) shows the same symptom for a moment, so the judgment is only ever made on a
//! *synced* read: first what Redis holds is read, then the session's server `sync`s with the
//! leader, then ZooKeeper is read. After that the server has everything committed before Redis
//! was read, and whatever Redis held then came from a read of ZooKeeper made before it, so in
//! one history ZooKeeper now holds that, or something newer. Two judgments rest on this:
//!
//! - **The claim.** Before a walk reads anything, the driver reads `P:mirror` (`zxid`,
//!   `epoch`), syncs, and reads the `Stat` of the root's ancestors. Every zxid the watermark
//!   ever claimed is then at most the highest zxid M the walk finds (`czxid`/`mzxid`/`pzxid`
//!   over the subtree, tombstone zxids, the root's ancestors): a claim is a zxid some read
//!   returned, and what a read returned is still visible after the sync, in the znode itself
//!   or in the `pzxid` of an ancestor that recorded its delete. So a claim above M proves the
//!   history went back ([`judge`], [`Verdict::WentBack`]).
//! - **Refused writes.** A put of the walk that Redis refused as older than it holds (or as
//!   tombstoned) proves nothing by itself: another mirror of the same root (a supported setup)
//!   may have written a newer read in between, and under load it routinely does. So a walk
//!   with refusals is [`Verdict::Suspect`], and the driver re-reads a bounded sample of the
//!   refused paths ([`MAX_RECHECKS`]) the same rigorous way: each path's stored version from
//!   Redis (meta `czxid`, `mzxid`, `pzxid`, `aversion`, `epoch`; the tombstone), then a sync,
//!   then the same paths from ZooKeeper. In one history the synced read is at least the stored
//!   version by `(czxid, mzxid, pzxid, aversion)` and is no incarnation a stored tombstone of
//!   the history declared dead (`czxid` at or below it). A stored version of the mirror's
//!   history above the synced one (or a synced znode the tombstone buried) proves the history
//!   went back ([`confirm`]); anything else (another writer's newer reads, a znode gone since,
//!   which its parent's `pzxid` records) is [`Verdict::Same`]. This covers a restored
//!   ZooKeeper that took more changes than it lost before the mirror saw it, so that M passed
//!   the old claim again, and another mirror's race cannot fool it.
//!
//! The decisions are here, I/O-free; the reads are the driver's.

use crate::error::ZkError;
use crate::store::{StoredMark, StoredVersion};
use crate::znode::Fetched;

/// Refused paths a walk keeps for the confirmation: a sample, enough to find one the restore
/// left behind (every refusal of a restore is one), few enough to re-read in one request.
pub(crate) const MAX_RECHECKS: usize = 16;

/// What the sync before a walk answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SyncPoint {
    /// `P:mirror` as read just before the sync.
    pub stored: StoredMark,
    /// The highest zxid among the root's ancestors, read just after it.
    pub above_root: i64,
}

/// What one walk learned for the judgment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Evidence {
    /// The sync's answer; `None` when it failed (the walk is then not judged).
    pub synced: Option<SyncPoint>,
    /// The highest zxid the walk's reads returned (M).
    pub highest: i64,
    /// Whether the walk found the root present: without it there is nothing to compare.
    pub root_present: bool,
    /// The walk's puts Redis refused as older than it holds, or as tombstoned.
    pub refused: u64,
    /// The first [`MAX_RECHECKS`] of those puts' paths, for the confirmation.
    pub refused_paths: Vec<String>,
    /// The walk could not see part of the subtree: a znode it may not read (an ACL closed
    /// since), or children the filter keeps it out of (a filter narrowed since the claim was
    /// made). The znode that earned the claim may lie there, and `setACL` leaves no zxid in
    /// any `Stat`, so a claim above M proves nothing; refused puts are still confirmed path by
    /// path.
    pub partial: bool,
}

impl Evidence {
    /// A read of the walk returned these zxids.
    pub fn saw(&mut self, zxid: i64) {
        self.highest = self.highest.max(zxid);
    }

    /// Redis refused the walk's put of `path` as older than it holds, or as tombstoned.
    pub fn refused(&mut self, path: &str) {
        self.refused += 1;
        if self.refused_paths.len() < MAX_RECHECKS {
            self.refused_paths.push(path.to_owned());
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The walk was not synced, the root is absent, or `P:mirror` is of another history; or
    /// the confirmation could read nothing.
    Unjudged,
    /// One history, as far as these reads can tell.
    Same,
    /// Puts were refused although the claim is within reach: confirm with the refused paths
    /// ([`confirm`]) before rebuilding anything.
    Suspect { refused: u64 },
    /// Redis holds something (a claim, a version) above what a synced ZooKeeper holds.
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
    } else if evidence.refused > 0 && !evidence.refused_paths.is_empty() {
        Verdict::Suspect { refused: evidence.refused }
    } else if redis_zxid > highest {
        Verdict::Unjudged
    } else {
        Verdict::Same
    }
}

/// One refused path re-read for the confirmation: what Redis held, read first, and what
/// ZooKeeper answered after the sync that followed.
#[derive(Debug)]
pub(crate) struct Recheck {
    pub path: String,
    pub stored: StoredVersion,
    pub current: Result<Fetched, ZkError>,
}

/// The confirmation of a [`Verdict::Suspect`] walk by a mirror of history `epoch`: whether one
/// of the refused paths proves the history went back, with the two zxids that tell and the path.
/// Only what Redis holds of history `epoch` counts (an older history's version is replaced by
/// the mirror's writes, a newer one is refused as such and followed). A znode ZooKeeper no
/// longer has, or a read that failed, proves nothing.
pub(crate) fn confirm(rechecks: &[Recheck], epoch: u64) -> (Verdict, Option<&str>) {
    let mut judged = false;
    for recheck in rechecks {
        let stat = match &recheck.current {
            Ok(Fetched::Present(znode)) => znode.stat,
            Ok(Fetched::Unreadable { stat, .. }) => *stat,
            Ok(Fetched::Absent { .. }) => {
                judged = true;
                continue;
            }
            Err(_) => continue,
        };
        judged = true;
        let current = [stat.czxid, stat.mzxid, stat.pzxid, i64::from(stat.aversion)];
        let zookeeper_zxid = stat.czxid.max(stat.mzxid).max(stat.pzxid);
        if let Some(meta) = recheck.stored.meta.filter(|m| m.epoch == epoch) {
            let stored = [meta.czxid, meta.mzxid, meta.pzxid, meta.aversion];
            if stored > current {
                let redis_zxid = meta.czxid.max(meta.mzxid).max(meta.pzxid);
                return (Verdict::WentBack { redis_zxid, zookeeper_zxid }, Some(&recheck.path));
            }
        }
        if let Some(tomb) = recheck.stored.tomb.filter(|t| t.epoch == epoch) {
            // Every incarnation created up to the tombstone's zxid was dead when it was laid.
            if stat.czxid <= tomb.zxid {
                return (Verdict::WentBack { redis_zxid: tomb.zxid, zookeeper_zxid }, Some(&recheck.path));
            }
        }
    }
    (if judged { Verdict::Same } else { Verdict::Unjudged }, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{StoredMeta, StoredTomb};
    use crate::znode::{Znode, ZnodeStat};

    fn synced(zxid: Option<i64>, epoch: u64) -> Evidence {
        Evidence {
            synced: Some(SyncPoint { stored: StoredMark { zxid, epoch }, above_root: 3 }),
            root_present: true,
            ..Evidence::default()
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
        assert_eq!(judge(&Evidence { synced: None, ..e.clone() }, 0), Verdict::Unjudged);
        assert_eq!(judge(&Evidence { root_present: false, ..e.clone() }, 0), Verdict::Unjudged);
        assert_eq!(judge(&e, 1), Verdict::Unjudged, "the claim is of history 0, the mirror is in 1");
    }

    #[test]
    fn refused_puts_within_reach_of_the_claim_are_only_suspect_and_keep_a_bounded_sample() {
        let mut e = synced(Some(100), 2);
        e.saw(150);
        for i in 0..40 {
            e.refused(&format!("/r/{i}"));
        }
        assert_eq!(judge(&e, 2), Verdict::Suspect { refused: 40 });
        assert_eq!(e.refused_paths.len(), MAX_RECHECKS);
        assert_eq!(e.refused_paths[0], "/r/0");
    }

    #[test]
    fn the_ancestors_above_the_root_count() {
        // A tombstone zxid may be an ancestor's pzxid, above anything in the subtree.
        let mut e = synced(Some(50), 0);
        e.saw(10);
        e.synced = e.synced.map(|s| SyncPoint { above_root: 60, ..s });
        assert_eq!(judge(&e, 0), Verdict::Same);
    }

    fn meta(czxid: i64, mzxid: i64, pzxid: i64, aversion: i64, epoch: u64) -> StoredVersion {
        StoredVersion { meta: Some(StoredMeta { czxid, mzxid, pzxid, aversion, epoch }), tomb: None }
    }

    fn present(czxid: i64, mzxid: i64, pzxid: i64, aversion: i32) -> Result<Fetched, ZkError> {
        let stat = ZnodeStat { czxid, mzxid, pzxid, aversion, ..ZnodeStat::default() };
        Ok(Fetched::Present(Znode { path: "/r/a".into(), data: Vec::new(), stat, children: Vec::new() }))
    }

    fn recheck(stored: StoredVersion, current: Result<Fetched, ZkError>) -> Recheck {
        Recheck { path: "/r/a".into(), stored, current }
    }

    #[test]
    fn a_synced_zookeeper_as_new_as_redis_or_newer_is_the_same_history() {
        // Another writer's newer reads: ZooKeeper holds them too, or has moved on.
        let rechecks = [
            recheck(meta(5, 40, 5, 0, 0), present(5, 40, 5, 0)),
            recheck(meta(5, 40, 5, 0, 0), present(5, 41, 5, 0)),
            recheck(meta(5, 40, 5, 0, 0), present(9, 9, 9, 0)), // re-created since
            recheck(meta(5, 40, 5, 0, 0), Ok(Fetched::Absent { path: "/r/a".into(), tomb_zxid: Some(44) })),
        ];
        assert_eq!(confirm(&rechecks, 0), (Verdict::Same, None));
    }

    #[test]
    fn a_stored_version_newer_than_a_synced_zookeeper_is_a_restore() {
        let rechecks =
            [recheck(meta(5, 40, 5, 0, 0), present(5, 41, 5, 0)), recheck(meta(5, 40, 7, 0, 0), present(5, 40, 6, 0))];
        assert_eq!(confirm(&rechecks, 0), (Verdict::WentBack { redis_zxid: 40, zookeeper_zxid: 40 }, Some("/r/a")));
        // Ordered like put.lua: by the tuple, aversion last.
        let acl = [recheck(meta(5, 40, 5, 3, 0), present(5, 40, 5, 2))];
        assert!(matches!(confirm(&acl, 0).0, Verdict::WentBack { .. }));
        let hidden = [recheck(
            meta(5, 40, 5, 0, 0),
            Ok(Fetched::Unreadable {
                path: "/r/a".into(),
                stat: ZnodeStat { czxid: 5, mzxid: 30, ..ZnodeStat::default() },
            }),
        )];
        assert!(matches!(confirm(&hidden, 0).0, Verdict::WentBack { .. }), "an unreadable znode's Stat counts");
    }

    #[test]
    fn a_synced_znode_a_tombstone_of_the_history_buried_is_a_restore() {
        let tomb = |zxid, epoch| StoredVersion { meta: None, tomb: Some(StoredTomb { zxid, epoch }) };
        let buried = [recheck(tomb(50, 1), present(5, 60, 5, 0))];
        assert_eq!(confirm(&buried, 1).0, Verdict::WentBack { redis_zxid: 50, zookeeper_zxid: 60 });
        let reborn = [recheck(tomb(50, 1), present(51, 51, 51, 0))];
        assert_eq!(confirm(&reborn, 1).0, Verdict::Same, "a re-create after the delete");
    }

    #[test]
    fn only_this_historys_versions_count_and_failed_reads_prove_nothing() {
        let other = [recheck(meta(5, 40, 5, 0, 0), present(1, 1, 1, 0))];
        assert_eq!(confirm(&other, 1), (Verdict::Same, None), "Redis holds history 0, the mirror is in 1");
        let failed = [recheck(meta(5, 40, 5, 0, 0), Err(ZkError::AuthFailed))];
        assert_eq!(confirm(&failed, 0), (Verdict::Unjudged, None));
        let nothing_stored = [recheck(StoredVersion::default(), present(1, 1, 1, 0))];
        assert_eq!(confirm(&nothing_stored, 0), (Verdict::Same, None));
    }
}

//! How far the copy is behind ZooKeeper, measured on the subtree itself.
//!
//! Why not ZooKeeper's own last zxid (`srvr`'s `Zxid:`): it counts every transaction of the
//! ensemble, including writes outside the root and session bookkeeping (each client that
//! connects is one). The mirror's `zxid` only moves with changes under its root, so an idle,
//! exact mirror would look further behind with every unrelated write. Instead, [`read_clock`]
//! reads the `Stat` of every znode below the root (one read per znode, as one anti-entropy pass
//! does) and takes the highest `mzxid`/`pzxid`: exactly what the mirror's `zxid` reaches once
//! everything is applied.
//!
//! Architecture invariant: only reads ZooKeeper; knows nothing of Redis. The caller reads the
//! mirror's `zxid` *after* the walk, so a change the mirror applied while we walked does not
//! count as lag.

use futures::FutureExt;
use zookeeper_client::{Client, Error as ZkClientError, Stat};

use crate::zkwalk::{Walk, WalkLimits};

/// One `getChildren` per path (it answers the `Stat` too, without the data a multi-read's
/// `getData` would carry), 256 in flight.
const LIMITS: WalkLimits = WalkLimits { batch: 1, requests: 256, bytes: usize::MAX };

/// A failure that stops the walk.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path} from ZooKeeper: {source}")]
pub struct LagError {
    pub path: String,
    pub source: ZkClientError,
}

/// What the subtree's `Stat`s say about its latest changes.
#[derive(Clone, Debug, Default)]
pub struct SubtreeClock {
    /// Highest `mzxid` or `pzxid` below (and at) the root; 0 when the root does not exist.
    pub head: i64,
    /// Znodes read, and znodes ZooKeeper would not show us (`NoAuth`, not counted).
    pub znodes: u64,
    pub unreadable: u64,
    /// `(mzxid, mtime)` of every znode read.
    changes: Vec<(i64, i64)>,
}

/// How far a mirror that has applied everything up to some zxid is behind a [`SubtreeClock`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Behind {
    /// `head - applied`, at least 0: a zxid distance, not a count of changes.
    pub zxids: i64,
    /// Znodes whose last data change or create (`mzxid`) is not yet covered.
    pub pending: u64,
    /// ZooKeeper's `mtime` (unix ms, the server's clock) of the oldest of those; `None` when
    /// none is pending, or when only deletes are (ZooKeeper records no time for a delete).
    pub oldest_pending_mtime_ms: Option<i64>,
}

impl SubtreeClock {
    pub fn behind(&self, applied_zxid: i64) -> Behind {
        let pending = self.changes.iter().filter(|(mzxid, _)| *mzxid > applied_zxid);
        let (count, oldest) = pending.fold((0u64, None::<i64>), |(n, oldest), (_, mtime)| {
            (n + 1, Some(oldest.map_or(*mtime, |o| o.min(*mtime))))
        });
        Behind { zxids: (self.head - applied_zxid).max(0), pending: count, oldest_pending_mtime_ms: oldest }
    }
}

/// Reads the `Stat` of every znode at or below `root` (with its children, in one request).
pub async fn read_clock(zk: &Client, root: &str) -> Result<SubtreeClock, LagError> {
    let mut clock = SubtreeClock::default();
    let zk = zk.clone();
    let mut walk: Walk<Result<(Vec<String>, Stat), ZkClientError>> = Walk::new(root, LIMITS, move |paths| {
        let reads: Vec<_> =
            paths.into_iter().map(|path| zk.get_children(&path).map(move |read| (path, read))).collect();
        futures::future::join_all(reads).boxed()
    });
    while let Some((path, read)) = walk.next().await {
        match read {
            Ok((children, stat)) => {
                clock.znodes += 1;
                clock.head = clock.head.max(stat.mzxid).max(stat.pzxid);
                clock.changes.push((stat.mzxid, stat.mtime));
                walk.descend(&path, &children);
            }
            // Deleted while we walked (or the root does not exist yet).
            Err(ZkClientError::NoNode) => {}
            Err(ZkClientError::NoAuth) => clock.unreadable += 1,
            Err(source) => return Err(LagError { path, source }),
        }
    }
    Ok(clock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behind_counts_what_the_applied_zxid_does_not_cover() {
        let clock =
            SubtreeClock { head: 20, znodes: 3, unreadable: 0, changes: vec![(5, 1000), (12, 3000), (15, 2000)] };
        assert_eq!(clock.behind(20), Behind { zxids: 0, pending: 0, oldest_pending_mtime_ms: None });
        assert_eq!(clock.behind(25).zxids, 0);
        assert_eq!(clock.behind(10), Behind { zxids: 10, pending: 2, oldest_pending_mtime_ms: Some(2000) });
        // Only a delete pending (the parent's pzxid moved): a distance, but no time.
        assert_eq!(clock.behind(15), Behind { zxids: 5, pending: 0, oldest_pending_mtime_ms: None });
    }
}

//! The walk: a depth-first read of the whole subtree, then a sweep of Redis for keys whose
//! znode the walk did not find. Cold sync, reconcile (reconnect, expiry, Redis loss) and the
//! anti-entropy pass are all this one walk; [`WalkReason`] only changes what is shown and logged.

use std::time::Instant;

use super::history::Evidence;

/// Why a walk runs; it decides the phase shown meanwhile and the log line at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WalkReason {
    ColdSync,
    Reconnect,
    SessionExpired,
    RedisLost,
    WatchRestored,
    AntiEntropy,
    /// ZooKeeper's history went back (restored from a backup, rebuilt): rewrite everything
    /// under the new history (`epoch`).
    HistoryReset,
}

impl WalkReason {
    /// The `reason` label of `zkmirror_walks_total`.
    pub fn label(self) -> &'static str {
        match self {
            WalkReason::ColdSync => "cold_sync",
            WalkReason::Reconnect => "reconnect",
            WalkReason::SessionExpired => "session_expired",
            WalkReason::RedisLost => "redis_lost",
            WalkReason::WatchRestored => "watch_restored",
            WalkReason::AntiEntropy => "anti_entropy",
            WalkReason::HistoryReset => "history_reset",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            WalkReason::ColdSync => "cold sync",
            WalkReason::Reconnect => "reconcile after reconnect",
            WalkReason::SessionExpired => "reconcile after session expiry",
            WalkReason::RedisLost => "resync after Redis lost data",
            WalkReason::WatchRestored => "reconcile after the watch was restored",
            WalkReason::AntiEntropy => "anti-entropy pass",
            WalkReason::HistoryReset => "rebuild after ZooKeeper went back in history",
        }
    }

    /// Whether this walk covers changes no event reported (everything but anti-entropy, which
    /// runs while the watch reports every change).
    pub fn covers_lost_events(self) -> bool {
        self != WalkReason::AntiEntropy
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WalkStage {
    /// Reading the tree.
    Reading,
    /// Listing Redis keys whose znode no longer appears in its parent's children.
    Sweeping,
    /// Confirming the sweep's candidates against ZooKeeper.
    Confirming,
}

/// A walk of the whole subtree in progress.
pub(crate) struct Walk {
    pub reason: WalkReason,
    /// Distinguishes this walk's reads from those of a walk that was abandoned.
    pub generation: u64,
    pub started: Instant,
    /// Depth-first stack of `(path, descend)`: memory is depth × fan-out, not the tree.
    stack: Vec<(String, bool)>,
    /// What `stack` holds by the memory budget's account, kept as paths come and go: the
    /// read scheduler asks on every step, and a fan-out of 20,000 makes summing costly.
    stack_bytes: usize,
    /// Reads issued by this walk whose write Redis has not acknowledged yet.
    pub open: usize,
    pub visited: u64,
    pub stage: WalkStage,
    /// False once Redis was found to hold nothing of the subtree before this walk wrote
    /// anything: then no key of ours can be stray and the sweep is skipped. (A key written
    /// meanwhile by someone else, e.g. a second mirror that dies between writing a znode and
    /// deleting it, waits for the next anti-entropy pass.)
    pub sweep_needed: bool,
    /// The `SCAN` cursor of the sweep's next page (0: none left).
    pub sweep_cursor: u64,
    /// Written and deleted counters when the walk started, for its closing log line.
    pub before: (u64, u64),
    /// No path is read before the sync of the root is answered (or failed): only reads
    /// after it may judge whether ZooKeeper went back.
    pub awaiting_sync: bool,
    /// What the walk learned for that judgment.
    pub evidence: Evidence,
}

impl Walk {
    pub fn new(reason: WalkReason, generation: u64, root: &str, now: Instant, before: (u64, u64)) -> Walk {
        Walk {
            reason,
            generation,
            started: now,
            stack: vec![(root.to_owned(), true)],
            stack_bytes: stack_cost(root),
            open: 0,
            visited: 0,
            stage: WalkStage::Reading,
            sweep_needed: true,
            sweep_cursor: 0,
            before,
            awaiting_sync: true,
            evidence: Evidence::default(),
        }
    }

    /// Whether the walk has paths to hand to the read scheduler now.
    pub fn reading(&self) -> bool {
        self.stage != WalkStage::Sweeping && !self.awaiting_sync
    }

    /// Whether everything this stage asked for has been read and written.
    pub fn drained(&self) -> bool {
        self.stack.is_empty() && self.open == 0
    }

    /// Bytes the stack holds, roughly (for the memory account).
    pub fn bytes(&self) -> usize {
        self.stack_bytes
    }

    /// Paths waiting on the stack.
    pub fn waiting(&self) -> usize {
        self.stack.len()
    }

    /// Adds a path to read; `descend`: walk its children once it is read.
    pub fn push(&mut self, path: String, descend: bool) {
        self.stack_bytes += stack_cost(&path);
        self.stack.push((path, descend));
    }

    /// The next path to read, if any.
    pub fn pop(&mut self) -> Option<(String, bool)> {
        let (path, descend) = self.stack.pop()?;
        self.stack_bytes -= stack_cost(&path);
        Some((path, descend))
    }
}

/// What one path on the stack costs, roughly: its bytes and the entry around them.
fn stack_cost(path: &str) -> usize {
    path.len() + 32
}

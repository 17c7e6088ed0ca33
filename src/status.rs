//! The mirror's phase and counters, shared between the running mirror and its handles.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering::Relaxed};

/// Where the mirror is in its life. Written to `P:mirror` `state` from one place
/// (`Engine::publish_phase` in `mirror.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// First walk of the subtree since start: Redis may still miss znodes.
    Syncing,
    /// Every change ZooKeeper reports is applied as it arrives.
    Live,
    /// Walking the subtree again after a reconnect, a session expiry or a Redis loss; readers
    /// keep the old values until new ones replace them.
    Reconciling,
    /// ZooKeeper or Redis is unreachable; the mirror retries and will reconcile.
    Degraded,
    /// Shut down cleanly.
    Stopped,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Syncing => "syncing",
            Phase::Live => "live",
            Phase::Reconciling => "reconciling",
            Phase::Degraded => "degraded",
            Phase::Stopped => "stopped",
        }
    }

    fn from_u8(value: u8) -> Phase {
        match value {
            0 => Phase::Syncing,
            1 => Phase::Live,
            2 => Phase::Reconciling,
            3 => Phase::Degraded,
            _ => Phase::Stopped,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Phase::Syncing => 0,
            Phase::Live => 1,
            Phase::Reconciling => 2,
            Phase::Degraded => 3,
            Phase::Stopped => 4,
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counters updated by the mirror's one task and read by any handle. Plain relaxed atomics:
/// each value is independent and only ever read for display.
#[derive(Debug, Default)]
pub struct Counters {
    phase: AtomicU8,
    applied_zxid: AtomicI64,
    pub(crate) events: AtomicU64,
    pub(crate) reads: AtomicU64,
    pub(crate) written: AtomicU64,
    pub(crate) unchanged: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) deleted: AtomicU64,
    pub(crate) unreadable: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) walks: AtomicU64,
    pub(crate) last_walk_nodes: AtomicU64,
    pub(crate) last_walk_ms: AtomicU64,
    pub(crate) walk_progress: AtomicU64,
    pub(crate) zk_connected: AtomicBool,
    pub(crate) redis_connected: AtomicBool,
    pub(crate) synced: AtomicBool,
}

impl Counters {
    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.store(phase.to_u8(), Relaxed);
    }

    pub(crate) fn raise_zxid(&self, zxid: i64) {
        self.applied_zxid.fetch_max(zxid, Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn snapshot(&self) -> MirrorStatus {
        MirrorStatus {
            phase: Phase::from_u8(self.phase.load(Relaxed)),
            applied_zxid: self.applied_zxid.load(Relaxed),
            events: self.events.load(Relaxed),
            reads: self.reads.load(Relaxed),
            written: self.written.load(Relaxed),
            unchanged: self.unchanged.load(Relaxed),
            refused: self.refused.load(Relaxed),
            deleted: self.deleted.load(Relaxed),
            unreadable: self.unreadable.load(Relaxed),
            batches: self.batches.load(Relaxed),
            walks: self.walks.load(Relaxed),
            last_walk_nodes: self.last_walk_nodes.load(Relaxed),
            last_walk_ms: self.last_walk_ms.load(Relaxed),
            walk_progress: self.walk_progress.load(Relaxed),
            zk_connected: self.zk_connected.load(Relaxed),
            redis_connected: self.redis_connected.load(Relaxed),
            synced: self.synced.load(Relaxed),
        }
    }
}

/// A point-in-time view of a running mirror, from [`crate::MirrorHandle::status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MirrorStatus {
    pub phase: Phase,
    /// Highest zxid known to be in Redis (data, child and delete changes).
    pub applied_zxid: i64,
    /// Watch events received.
    pub events: u64,
    /// ZooKeeper reads completed.
    pub reads: u64,
    /// Znodes written to Redis because they differed.
    pub written: u64,
    /// Znodes found already exact (nothing written).
    pub unchanged: u64,
    /// Writes refused by Redis because it held a newer read or a tombstone.
    pub refused: u64,
    /// Znodes removed from Redis.
    pub deleted: u64,
    /// Reads refused by ZooKeeper (`NoAuth`).
    pub unreadable: u64,
    /// Redis pipelines sent.
    pub batches: u64,
    /// Completed walks (cold sync, reconciles, anti-entropy passes).
    pub walks: u64,
    /// Znodes visited by the last completed walk, and how long it took.
    pub last_walk_nodes: u64,
    pub last_walk_ms: u64,
    /// Znodes read so far by the walk in progress (0 when none runs).
    pub walk_progress: u64,
    pub zk_connected: bool,
    pub redis_connected: bool,
    /// The first walk (cold sync) has completed.
    pub synced: bool,
}

//! One status recorder: every count the engine keeps goes to the handles' [`Counters`] and to
//! the Prometheus metrics in one call, so the two cannot drift apart.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::observe::EngineMetrics;
use crate::status::{Counters, Phase};
use crate::store::BatchOutcome;

pub(crate) struct Recorder {
    counters: Arc<Counters>,
    metrics: EngineMetrics,
}

impl Recorder {
    pub fn new(counters: Arc<Counters>, target: &str, prefix: &str, root: &str) -> Recorder {
        Recorder { counters, metrics: EngineMetrics::new(target, prefix, root) }
    }

    pub fn events_total(&self) -> u64 {
        self.counters.events.load(Relaxed)
    }

    /// Written and deleted so far, for a walk's closing line.
    pub fn written_deleted(&self) -> (u64, u64) {
        (self.counters.written.load(Relaxed), self.counters.deleted.load(Relaxed))
    }

    pub fn event(&self) {
        Counters::add(&self.counters.events, 1);
        self.metrics.events.increment(1);
    }

    pub fn reads(&self, n: u64, round_trip: Duration) {
        Counters::add(&self.counters.reads, n);
        self.metrics.reads.increment(n);
        self.metrics.zk_read.record(round_trip.as_secs_f64());
    }

    pub fn batch_sent(&self, writes: usize) {
        Counters::add(&self.counters.batches, 1);
        self.metrics.batches.increment(1);
        self.metrics.batch_size.record(writes as f64);
    }

    pub fn batch_done(&self, outcome: &BatchOutcome, round_trip: Duration) {
        let (c, m) = (&self.counters, &self.metrics);
        Counters::add(&c.written, outcome.written);
        Counters::add(&c.unchanged, outcome.unchanged);
        Counters::add(&c.refused, outcome.refused);
        Counters::add(&c.deleted, outcome.deleted);
        m.written.increment(outcome.written);
        m.unchanged.increment(outcome.unchanged);
        m.refused.increment(outcome.refused);
        m.failed.increment(outcome.failed);
        m.deleted.increment(outcome.deleted);
        m.redis_write.record(round_trip.as_secs_f64());
    }

    /// The watermark in Redis moved.
    pub fn applied_zxid(&self, zxid: i64) {
        self.counters.raise_zxid(zxid);
        self.metrics.applied_zxid.set(self.counters.snapshot().applied_zxid as f64);
    }

    pub fn propagation(&self, delay_ms: i64) {
        self.metrics.propagation.record(delay_ms as f64 / 1000.0);
    }

    pub fn unreadable(&self) {
        Counters::add(&self.counters.unreadable, 1);
        self.metrics.skipped_noauth.increment(1);
    }

    pub fn filtered(&self) {
        self.metrics.skipped_filtered.increment(1);
    }

    pub fn walk_progress(&self, visited: u64) {
        self.counters.walk_progress.store(visited, Relaxed);
    }

    pub fn walk_done(&self, reason: &'static str, visited: u64, elapsed: Duration) {
        let c = &self.counters;
        Counters::add(&c.walks, 1);
        c.last_walk_nodes.store(visited, Relaxed);
        c.last_walk_ms.store(elapsed.as_millis() as u64, Relaxed);
        c.walk_progress.store(0, Relaxed);
        c.synced.store(true, Relaxed);
        self.metrics.nodes.set(visited as f64);
        self.metrics.walk_done(reason, elapsed.as_secs_f64());
    }

    pub fn connections(&self, phase: Phase, zk: bool, redis: bool) {
        let c = &self.counters;
        c.set_phase(phase);
        c.zk_connected.store(zk, Relaxed);
        c.redis_connected.store(redis, Relaxed);
        self.metrics.zk_connected.set(if zk { 1.0 } else { 0.0 });
        self.metrics.redis_connected.set(if redis { 1.0 } else { 0.0 });
    }

    pub fn phase(&self) -> Phase {
        self.counters.snapshot().phase
    }
}

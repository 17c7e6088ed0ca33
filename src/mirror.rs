//! The mirror itself: a snapshot, then the changes after it.
//!
//! ```text
//!   start / reconnect / expiry / Redis loss / anti-entropy
//!        │
//!        ▼
//!   1. watch:  (re-)add ONE persistent recursive watch on the root   ── events buffer from here
//!   2. walk:   read every znode (depth first, many reads in flight), write what differs,
//!              then sweep Redis for keys whose znode is gone
//!   3. live:   each event marks paths dirty → read → write
//! ```
//!
//! The hand-off between the walk and live changes is the watch: it is in place *before* the walk
//! reads anything, so a change made during the walk is either seen by the walk's read or
//! reported by an event whose read comes later. Both go through the same ordered pipeline, and
//! the Lua scripts refuse any write older than what Redis holds, so the order in which a walk
//! read and an event read land cannot make a version go backwards.
//!
//! Everything runs in one task (`Engine`), which owns all mutable state; concurrency comes
//! from keeping many ZooKeeper reads and one Redis pipeline in flight at once, not from threads.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::OptionFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use tracing::{debug, info, warn};
use zookeeper_client::{EventType, PersistentWatcher, SessionState, WatchedEvent};

use crate::config::MirrorConfig;
use crate::error::{MirrorError, StoreError, ZkError};
use crate::observe::EngineMetrics;
use crate::path;
use crate::shutdown::{self, Shutdown, ShutdownTrigger};
use crate::status::{Counters, MirrorStatus, Phase};
use crate::store::{BatchOutcome, Store, Write};
use crate::zk::ZkSession;
use crate::znode::Fetched;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Most writes in one Redis pipeline.
const MAX_BATCH_WRITES: usize = 1000;
/// Most payload bytes in one Redis pipeline (a few 1 MB znodes at most).
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Most paths in one multi-read request while the mirror keeps up.
const MAX_READ_BATCH: usize = 64;
/// Most paths in one multi-read request under a backlog of changes. With the requests in
/// flight bounded, their size sets how many changes per second the mirror can read (paths in
/// flight / ZooKeeper's latency, which grows with its queue at high write rates).
const MAX_READ_BATCH_BACKLOG: usize = 256;
/// Most read requests in flight while a walk reads the tree (cold sync, reconcile): enough to
/// keep ZooKeeper busy with 64-path multi-reads.
const WALK_READ_REQUESTS: usize = 16;
/// Most read requests in flight for changes alone, once a backlog of a full request
/// ([`MAX_READ_BATCH_BACKLOG`] paths) waits. Short of that, one: while it is answered, newly
/// dirty paths gather and leave together in the next multi-read (group commit, as on the Redis
/// side). A lone change is still read at once, and under load ZooKeeper serves one request per
/// many changes instead of one per few, which would take its CPU from the writers (measured on
/// 2 cores at ZooKeeper's ceiling: 5–7 % more writes per second with one request than with
/// four, and the mirror's lag no worse).
const LIVE_READ_REQUESTS: usize = 4;
/// Read requests an anti-entropy walk may have in flight: it runs while the mirror is live, so
/// it yields ZooKeeper and Redis to the changes readers are waiting for.
const ANTI_ENTROPY_READ_REQUESTS: usize = 2;
/// Fetched results waiting for Redis before reads pause: bounds memory when Redis is slower.
const MAX_READY: usize = 4 * MAX_BATCH_WRITES;
/// Changes per second (since the last anti-entropy tick) above which the anti-entropy pass is
/// postponed: it re-reads and re-compares the whole tree, which on a busy machine delays the
/// live changes readers are waiting for. The price: what only the pass catches (an ACL change,
/// a znode becoming readable) waits longer, up to `1 + ANTI_ENTROPY_MAX_POSTPONED` intervals.
const ANTI_ENTROPY_BUSY_RATE: f64 = 1000.0;
/// Intervals in a row the anti-entropy pass may be postponed; then it runs whatever the load.
const ANTI_ENTROPY_MAX_POSTPONED: u32 = 4;
/// `SCAN` pages (1000 keys each) the cold sync's look for keys of the subtree may take before
/// it gives up and sweeps as usual: an empty Redis answers in one.
const SUBTREE_CHECK_PAGES: usize = 16;

/// A mirror of one subtree, ready to run.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use zkmirror::{Mirror, MirrorConfig};
/// let mirror = Mirror::new(MirrorConfig::new("127.0.0.1:2181", "redis://127.0.0.1/", "/app"))?;
/// let handle = mirror.handle();
/// let task = tokio::spawn(mirror.run());
/// // ... later
/// handle.stop();
/// task.await??;
/// # Ok(()) }
/// ```
pub struct Mirror {
    config: MirrorConfig,
    counters: Arc<Counters>,
    trigger: ShutdownTrigger,
    shutdown: Shutdown,
}

/// Observes and stops a [`Mirror`] from anywhere; cheap to clone.
#[derive(Clone)]
pub struct MirrorHandle {
    counters: Arc<Counters>,
    trigger: ShutdownTrigger,
    root: Arc<str>,
}

impl MirrorHandle {
    /// Asks the mirror to stop; `run()` then returns `Ok(())`.
    pub fn stop(&self) {
        self.trigger.fire();
    }

    pub fn status(&self) -> MirrorStatus {
        self.counters.snapshot()
    }

    pub fn phase(&self) -> Phase {
        self.status().phase
    }

    /// The root this mirror copies.
    pub fn root(&self) -> &str {
        &self.root
    }
}

impl Mirror {
    /// Validates `config`; nothing connects until [`Mirror::run`].
    pub fn new(config: MirrorConfig) -> Result<Mirror, MirrorError> {
        config.validate()?;
        let (trigger, shutdown) = shutdown::channel();
        let counters = Arc::new(Counters::default());
        counters.set_phase(Phase::Syncing);
        Ok(Mirror { config, counters, trigger, shutdown })
    }

    pub fn handle(&self) -> MirrorHandle {
        MirrorHandle {
            counters: self.counters.clone(),
            trigger: self.trigger.clone(),
            root: Arc::from(self.config.root.as_str()),
        }
    }

    /// Runs until stopped through a handle. Unreachable servers are retried with backoff;
    /// only a rejected ZooKeeper credential ends it with an error.
    pub async fn run(self) -> Result<(), MirrorError> {
        let store = Store::new(&self.config)?;
        let mut engine = Engine::new(self.config, store, self.counters, self.shutdown);
        let result = engine.run().await;
        engine.stop().await;
        result
    }
}

/// Why a walk runs; it decides the phase shown meanwhile and the log line at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WalkReason {
    ColdSync,
    Reconnect,
    SessionExpired,
    RedisLost,
    AntiEntropy,
}

impl WalkReason {
    /// The `reason` label of `zkmirror_walks_total`.
    fn label(self) -> &'static str {
        match self {
            WalkReason::ColdSync => "cold_sync",
            WalkReason::Reconnect => "reconnect",
            WalkReason::SessionExpired => "session_expired",
            WalkReason::RedisLost => "redis_lost",
            WalkReason::AntiEntropy => "anti_entropy",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            WalkReason::ColdSync => "cold sync",
            WalkReason::Reconnect => "reconcile after reconnect",
            WalkReason::SessionExpired => "reconcile after session expiry",
            WalkReason::RedisLost => "resync after Redis lost data",
            WalkReason::AntiEntropy => "anti-entropy pass",
        }
    }
}

/// A walk of the whole subtree in progress.
struct Walk {
    reason: WalkReason,
    /// Distinguishes this walk's reads from those of a walk that was abandoned.
    generation: u64,
    started: Instant,
    /// Depth-first stack of `(path, descend)`: memory is depth × fan-out, not the tree.
    stack: Vec<(String, bool)>,
    /// Reads issued by this walk whose write Redis has not acknowledged yet.
    open: usize,
    visited: u64,
    stage: WalkStage,
    /// False once Redis was found to hold nothing of the subtree before this walk wrote
    /// anything: then no key of ours can be stray and the sweep is skipped. (A key written
    /// meanwhile by someone else, e.g. a second mirror that dies between writing a znode and
    /// deleting it, waits for the next anti-entropy pass.)
    sweep_needed: bool,
    before: MirrorStatus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WalkStage {
    /// Reading the tree.
    Reading,
    /// Listing Redis keys whose znode no longer appears in its parent's children.
    Sweeping,
    /// Confirming the sweep's candidates against ZooKeeper.
    Confirming,
}

/// One completed ZooKeeper read.
struct Read {
    path: String,
    /// The walk generation that asked for it and whether to descend into its children.
    walk: Option<(u64, bool)>,
    result: Result<Fetched, ZkError>,
}

/// A Redis pipeline in flight, and what it carried.
struct Batch {
    writes: Vec<Write>,
    /// Writes per walk generation, to close the walk's accounting when Redis acknowledges.
    walk_writes: Vec<(u64, usize)>,
    applied_zxid: i64,
    root_written: Option<bool>,
    retried: bool,
    /// `mtime` of the live (event-driven) puts, for the propagation-delay histogram.
    live_mtimes: Vec<i64>,
}

/// How a session ended.
enum SessionEnd {
    Shutdown,
    Expired,
}

/// Paths waiting to be read, each once.
#[derive(Default)]
struct DirtyPaths {
    order: VecDeque<String>,
    members: HashSet<String>,
}

impl DirtyPaths {
    fn push(&mut self, path: &str) {
        if self.members.insert(path.to_owned()) {
            self.order.push_back(path.to_owned());
        }
    }

    fn len(&self) -> usize {
        self.order.len()
    }

    fn pop(&mut self) -> Option<String> {
        let path = self.order.pop_front()?;
        self.members.remove(&path);
        Some(path)
    }

    fn clear(&mut self) {
        self.order.clear();
        self.members.clear();
    }
}

/// The one task that owns the mirror's state.
struct Engine {
    config: MirrorConfig,
    store: Store,
    counters: Arc<Counters>,
    metrics: EngineMetrics,
    shutdown: Shutdown,
    started_at_ms: u64,

    dirty: DirtyPaths,
    walk: Option<Walk>,
    next_generation: u64,
    /// Reads in flight, a batch (one multi-read) per entry, answered in the order sent.
    reads: FuturesOrdered<BoxFuture<Vec<Read>>>,
    /// Paths in `reads`, which the read window bounds.
    reads_in_flight: usize,
    ready: VecDeque<(Write, Option<u64>)>,
    batch: Option<BoxFuture<(Batch, Result<BatchOutcome, StoreError>)>>,
    status_write: Option<BoxFuture<Result<bool, StoreError>>>,
    sweep: Option<BoxFuture<Result<Vec<String>, StoreError>>>,
    /// The cold sync's look at whether Redis holds any key of the subtree, tagged with the
    /// walk's generation. Writes wait for it, or it would see the walk's own keys.
    subtree_check: Option<BoxFuture<(u64, Result<bool, StoreError>)>>,

    zk_connected: bool,
    redis_down: bool,
    scripts_loaded: bool,
    first_sync_done: bool,
    /// Whether Redis should hold the root: if it stops doing so, Redis lost our data.
    root_in_redis: bool,
    published_phase: Option<Phase>,
    /// Paths already logged as unreadable, so each is logged once.
    unreadable_logged: HashSet<String>,
    last_redis_error_log: Option<Instant>,
    /// While Redis is down: when to try it next, and how long to wait after that.
    redis_retry_at: Instant,
    redis_backoff: Backoff,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Engine {
    fn new(config: MirrorConfig, store: Store, counters: Arc<Counters>, shutdown: Shutdown) -> Engine {
        Engine {
            metrics: EngineMetrics::new(&config.prefix, &config.root),
            config,
            store,
            counters,
            shutdown,
            started_at_ms: now_ms(),
            dirty: DirtyPaths::default(),
            walk: None,
            next_generation: 1,
            reads: FuturesOrdered::new(),
            reads_in_flight: 0,
            ready: VecDeque::new(),
            batch: None,
            status_write: None,
            sweep: None,
            subtree_check: None,
            zk_connected: false,
            redis_down: false,
            scripts_loaded: false,
            first_sync_done: false,
            root_in_redis: false,
            published_phase: None,
            unreadable_logged: HashSet::new(),
            last_redis_error_log: None,
            redis_retry_at: Instant::now(),
            redis_backoff: Backoff::new(),
        }
    }

    /// Sessions, one after another: each expiry ends one and the next starts with a walk.
    async fn run(&mut self) -> Result<(), MirrorError> {
        info!(root = %self.config.root, zk = %self.config.zk_servers, redis = %self.store.server(),
              prefix = %self.config.prefix, "zkmirror starting");
        let mut reason = WalkReason::ColdSync;
        let mut backoff = Backoff::new();
        loop {
            self.publish_phase();
            let session = tokio::select! {
                _ = self.shutdown.fired() => return Ok(()),
                session = ZkSession::connect(&self.config) => session,
            };
            let session = match session {
                Ok(session) => session,
                Err(ZkError::AuthFailed) => return Err(ZkError::AuthFailed.into()),
                Err(error) => {
                    warn!(%error, retry_in = ?backoff.peek(), "ZooKeeper unreachable; retrying");
                    if self.sleep(backoff.next()).await {
                        return Ok(());
                    }
                    continue;
                }
            };
            let watcher = match session.watch(&self.config.root).await {
                Ok(watcher) => watcher,
                Err(error) => {
                    warn!(%error, "cannot add the watch; reconnecting");
                    if self.sleep(backoff.next()).await {
                        return Ok(());
                    }
                    continue;
                }
            };
            backoff.reset();
            self.zk_connected = true;
            info!(session = %session.session_id(), servers = %session.servers(), "ZooKeeper session established");
            self.start_walk(reason);
            match self.live(&session, watcher).await? {
                SessionEnd::Shutdown => return Ok(()),
                SessionEnd::Expired => {
                    warn!("ZooKeeper session expired: starting a new session, a new watch and a reconcile");
                    self.abandon_session_work();
                    reason = WalkReason::SessionExpired;
                }
            }
        }
    }

    /// Sleeps unless shut down first; returns whether shutdown fired.
    async fn sleep(&mut self, duration: Duration) -> bool {
        tokio::select! {
            _ = self.shutdown.fired() => true,
            _ = tokio::time::sleep(duration) => false,
        }
    }

    /// The event loop of one session: watch events, reads completing, Redis acknowledging,
    /// and the timers, until the session expires or the mirror is stopped.
    async fn live(&mut self, session: &ZkSession, mut watcher: PersistentWatcher) -> Result<SessionEnd, MirrorError> {
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut anti_entropy = tokio::time::interval(self.config.anti_entropy_interval);
        anti_entropy.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        anti_entropy.reset();
        let mut events_at_tick = (self.counters.events.load(std::sync::atomic::Ordering::Relaxed), Instant::now());
        let mut postponed = 0;
        if !self.scripts_loaded {
            // Before the first pipeline: left to the heartbeat, the load could lose the race
            // with it, and the NOSCRIPT answer would be taken for a Redis restart (a needless
            // resync replacing the cold sync). A Redis that does not answer is the heartbeat's.
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(1), self.store.load_scripts()).await {
                self.scripts_loaded = true;
            }
        }
        loop {
            self.issue_reads(session);
            self.send_batch();
            self.advance_walk();
            self.publish_phase();
            tokio::select! {
                biased;
                _ = self.shutdown.fired() => return Ok(SessionEnd::Shutdown),
                event = watcher.changed() => {
                    match self.on_event(event) {
                        EventOutcome::Continue => {}
                        EventOutcome::Reconnected => {
                            session.disable_nagle();
                            // zookeeper-client does not restore persistent watches on reconnect:
                            // add ours again, then reconcile what the gap may have hidden.
                            match session.watch(&self.config.root).await {
                                Ok(fresh) => watcher = fresh,
                                Err(error) => warn!(%error, "cannot re-add the watch after reconnect; will retry on the next reconnect"),
                            }
                            self.start_walk(WalkReason::Reconnect);
                        }
                        EventOutcome::Expired => return Ok(SessionEnd::Expired),
                        EventOutcome::AuthFailed => return Err(ZkError::AuthFailed.into()),
                    }
                }
                Some(batch) = self.reads.next(), if !self.reads.is_empty() => {
                    self.reads_in_flight -= batch.len();
                    for read in batch {
                        if let Some(end) = self.on_read(read) {
                            return Ok(end);
                        }
                    }
                }
                Some((batch, result)) = OptionFuture::from(self.batch.as_mut()), if self.batch.is_some() => {
                    self.batch = None;
                    self.on_batch(batch, result).await;
                }
                Some((generation, result)) = OptionFuture::from(self.subtree_check.as_mut()), if self.subtree_check.is_some() => {
                    self.subtree_check = None;
                    self.on_subtree_checked(generation, result);
                }
                Some(result) = OptionFuture::from(self.sweep.as_mut()), if self.sweep.is_some() => {
                    self.sweep = None;
                    self.on_sweep(result);
                }
                Some(result) = OptionFuture::from(self.status_write.as_mut()), if self.status_write.is_some() => {
                    self.status_write = None;
                    self.on_status_written(result);
                }
                _ = heartbeat.tick() => self.on_heartbeat().await,
                _ = anti_entropy.tick() => {
                    // Over the time since the last tick, which a busy loop can stretch.
                    let events = self.counters.events.load(std::sync::atomic::Ordering::Relaxed);
                    let rate = events.saturating_sub(events_at_tick.0) as f64 / events_at_tick.1.elapsed().as_secs_f64().max(1e-3);
                    events_at_tick = (events, Instant::now());
                    if self.walk.is_none() && !self.redis_down && self.zk_connected {
                        if anti_entropy_postponed(rate, postponed) {
                            postponed += 1;
                            debug!(changes_per_s = rate as u64, postponed, "anti-entropy pass postponed: changes are arriving fast");
                        } else {
                            postponed = 0;
                            self.start_walk(WalkReason::AntiEntropy);
                        }
                    }
                }
            }
        }
    }

    fn on_event(&mut self, event: WatchedEvent) -> EventOutcome {
        let is_root = event.path == self.config.root;
        match event.event_type {
            EventType::Session => {
                return match event.session_state {
                    SessionState::Disconnected => {
                        warn!("ZooKeeper connection lost; changes made meanwhile will be reconciled on reconnect");
                        self.zk_connected = false;
                        EventOutcome::Continue
                    }
                    SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                        info!("ZooKeeper connection restored within the session");
                        self.zk_connected = true;
                        EventOutcome::Reconnected
                    }
                    SessionState::Expired | SessionState::Closed => EventOutcome::Expired,
                    SessionState::AuthFailed => EventOutcome::AuthFailed,
                };
            }
            _ if self.redis_down => {
                // Nothing can be written; the reconcile after Redis returns covers this change.
            }
            EventType::NodeCreated => {
                self.mark_dirty(&event.path);
                if !is_root {
                    self.mark_dirty(path::parent(&event.path).unwrap_or("/"));
                }
            }
            EventType::NodeDeleted => {
                // Parent first: readers stop seeing the name before its keys go.
                if !is_root {
                    self.mark_dirty(path::parent(&event.path).unwrap_or("/"));
                }
                self.mark_dirty(&event.path);
            }
            EventType::NodeDataChanged | EventType::NodeChildrenChanged => self.mark_dirty(&event.path),
        }
        Counters::add(&self.counters.events, 1);
        self.metrics.events.increment(1);
        EventOutcome::Continue
    }

    /// Queues a read of `path` if the filter copies it.
    fn mark_dirty(&mut self, path: &str) {
        if self.config.filter.copies(&self.config.root, path) {
            self.dirty.push(path);
        }
    }

    /// Starts (or restarts) a walk from the root. Dirty paths stay: the walk does not replace
    /// reads that events asked for.
    fn start_walk(&mut self, reason: WalkReason) {
        let generation = self.next_generation;
        self.next_generation += 1;
        if reason != WalkReason::AntiEntropy {
            info!("{} started", reason.describe());
        } else {
            debug!("{} started", reason.describe());
        }
        self.sweep = None;
        // A look begun for an earlier walk would hold this walk's writes back for nothing.
        self.subtree_check = None;
        self.walk = Some(Walk {
            reason,
            generation,
            started: Instant::now(),
            stack: vec![(self.config.root.clone(), true)],
            open: 0,
            visited: 0,
            stage: WalkStage::Reading,
            sweep_needed: true,
            before: self.counters.snapshot(),
        });
        if reason == WalkReason::ColdSync && self.batch.is_none() && self.ready.is_empty() {
            let (store, root) = (self.store.clone(), self.config.root.clone());
            self.subtree_check =
                Some(Box::pin(async move { (generation, store.may_hold_subtree(&root, SUBTREE_CHECK_PAGES).await) }));
        }
    }

    fn on_subtree_checked(&mut self, generation: u64, result: Result<bool, StoreError>) {
        match result {
            Ok(false) => {
                if let Some(walk) = self.walk.as_mut().filter(|w| w.generation == generation) {
                    debug!("Redis holds no key of the subtree: the cold sync will need no sweep");
                    walk.sweep_needed = false;
                }
            }
            Ok(true) => {}
            // The first pipeline will meet the same failure and handle it.
            Err(error) => debug!(%error, "cannot tell whether Redis holds the subtree; the cold sync will sweep"),
        }
    }

    /// Fills the read window: event-dirty paths first (they are what readers wait for), then
    /// the walk.
    fn issue_reads(&mut self, session: &ZkSession) {
        if self.redis_down || !self.zk_connected {
            return;
        }
        let walk_reading =
            self.walk.as_ref().is_some_and(|w| w.stage != WalkStage::Sweeping && w.reason != WalkReason::AntiEntropy);
        let max_requests = if walk_reading {
            WALK_READ_REQUESTS
        } else if self.dirty.len() >= MAX_READ_BATCH_BACKLOG {
            LIVE_READ_REQUESTS
        } else {
            1
        };
        while self.reads.len() < max_requests
            && self.reads_in_flight < self.config.read_window
            && self.ready.len() < MAX_READY
        {
            let free_requests = max_requests - self.reads.len();
            let per_request = self.dirty.len().div_ceil(free_requests).clamp(MAX_READ_BATCH, MAX_READ_BATCH_BACKLOG);
            let room = (self.config.read_window - self.reads_in_flight).min(per_request);
            let mut batch: Vec<(String, Option<(u64, bool)>)> = Vec::new();
            while batch.len() < room {
                if let Some(path) = self.dirty.pop() {
                    batch.push((path, None));
                } else if let Some(walk) = self.walk.as_mut().filter(|w| {
                    w.stage != WalkStage::Sweeping
                        && (w.reason != WalkReason::AntiEntropy || self.reads.len() < ANTI_ENTROPY_READ_REQUESTS)
                }) {
                    match walk.stack.pop() {
                        Some((path, descend)) => {
                            walk.open += 1;
                            batch.push((path, Some((walk.generation, descend))));
                        }
                        None => break,
                    }
                } else {
                    break;
                }
            }
            if batch.is_empty() {
                break;
            }
            self.reads_in_flight += batch.len();
            let (sent, round_trip) = (Instant::now(), self.metrics.zk_read.clone());
            let (paths, walks): (Vec<String>, Vec<Option<(u64, bool)>>) = batch.into_iter().unzip();
            let fetch = session.fetch_many(paths);
            self.reads.push_back(Box::pin(async move {
                let results = fetch.await;
                round_trip.record(sent.elapsed().as_secs_f64());
                results.into_iter().zip(walks).map(|((path, result), walk)| Read { path, walk, result }).collect()
            }));
        }
    }

    fn on_read(&mut self, read: Read) -> Option<SessionEnd> {
        Counters::add(&self.counters.reads, 1);
        self.metrics.reads.increment(1);
        let current = self.walk.as_ref().map(|w| w.generation);
        let walk_generation = read.walk.map(|(generation, _)| generation).filter(|g| Some(*g) == current);
        let fetched = match read.result {
            Ok(fetched) => fetched,
            Err(ZkError::SessionExpired) => return Some(SessionEnd::Expired),
            Err(error) => {
                // Connection loss: the reconcile after reconnect covers this path. Anything
                // else: read it again.
                if self.zk_connected
                    && !matches!(&error, ZkError::Read { source: zookeeper_client::Error::ConnectionLoss, .. })
                {
                    warn!(%error, "read failed; retrying");
                    self.dirty.push(&read.path);
                }
                self.close_walk_items(walk_generation, 1);
                return None;
            }
        };
        let (root, filter) = (&self.config.root, &self.config.filter);
        let write = match fetched {
            Fetched::Present(znode) => {
                if let (Some(walk), Some((_, true))) = (self.walk.as_mut(), read.walk) {
                    if Some(walk.generation) == walk_generation {
                        walk.visited += 1;
                        self.counters.walk_progress.store(walk.visited, std::sync::atomic::Ordering::Relaxed);
                        if filter.may_descend(root, &znode.path) {
                            walk.stack.extend(znode.children.iter().map(|name| (path::child(&znode.path, name), true)));
                        }
                    }
                }
                if !filter.copies(root, &znode.path) {
                    // Walked through (an include below it may match) or left behind by an old
                    // filter: it must hold no keys.
                    self.metrics.skipped_filtered.increment(1);
                    self.ready.push_back((Write::Hide { path: znode.path }, walk_generation));
                    return None;
                }
                if self.unreadable_logged.remove(&znode.path) {
                    info!(path = %znode.path, "znode is readable again: mirroring it");
                }
                Write::Put(znode)
            }
            Fetched::Absent { path, tomb_zxid } => {
                if path == self.config.root {
                    warn!(root = %path, "root does not exist in ZooKeeper; waiting for it to be created");
                }
                Write::Delete { path, tomb_zxid }
            }
            Fetched::Unreadable { path } => {
                Counters::add(&self.counters.unreadable, 1);
                self.metrics.skipped_noauth.increment(1);
                if self.unreadable_logged.insert(path.clone()) {
                    warn!(%path, "cannot read {path} (NoAuth): skipping it and its subtree; grant READ to the mirror's identity to mirror it");
                }
                Write::Hide { path }
            }
        };
        self.ready.push_back((write, walk_generation));
        None
    }

    /// Sends the next Redis pipeline if none is in flight: everything ready, up to the batch
    /// bounds. A lone change goes out at once; under load, changes that arrive while one
    /// pipeline is in flight share the next (group commit).
    fn send_batch(&mut self) {
        if self.batch.is_some() || self.ready.is_empty() || self.redis_down || self.subtree_check.is_some() {
            return;
        }
        let mut writes = Vec::new();
        let mut walk_writes: Vec<(u64, usize)> = Vec::new();
        let mut bytes = 0;
        let mut applied_zxid = 0;
        let mut root_written = None;
        let mut live_mtimes = Vec::new();
        while let Some((write, generation)) = self.ready.pop_front() {
            bytes += write.weight();
            match &write {
                Write::Put(znode) => {
                    applied_zxid = applied_zxid.max(znode.stat.last_zxid());
                    if generation.is_none() {
                        live_mtimes.push(znode.stat.mtime);
                    }
                    if znode.path == self.config.root {
                        root_written = Some(true);
                    }
                }
                Write::Delete { path, tomb_zxid } => {
                    applied_zxid = applied_zxid.max(tomb_zxid.unwrap_or(0));
                    if *path == self.config.root {
                        root_written = Some(false);
                    }
                }
                Write::Hide { path } => {
                    if *path == self.config.root {
                        root_written = Some(false);
                    }
                }
            }
            if let Some(generation) = generation {
                match walk_writes.last_mut() {
                    Some((g, n)) if *g == generation => *n += 1,
                    _ => walk_writes.push((generation, 1)),
                }
            }
            writes.push(write);
            if writes.len() >= MAX_BATCH_WRITES || bytes >= MAX_BATCH_BYTES {
                break;
            }
        }
        self.dispatch(Batch { writes, walk_writes, applied_zxid, root_written, retried: false, live_mtimes });
    }

    fn dispatch(&mut self, batch: Batch) {
        Counters::add(&self.counters.batches, 1);
        self.metrics.batches.increment(1);
        self.metrics.batch_size.record(batch.writes.len() as f64);
        let send = self.store.apply(&batch.writes, batch.applied_zxid, now_ms());
        let (sent, round_trip) = (Instant::now(), self.metrics.redis_write.clone());
        self.batch = Some(Box::pin(async move {
            let result = send.await;
            round_trip.record(sent.elapsed().as_secs_f64());
            (batch, result)
        }));
    }

    async fn on_batch(&mut self, mut batch: Batch, result: Result<BatchOutcome, StoreError>) {
        match result {
            Ok(outcome) => {
                let c = &self.counters;
                Counters::add(&c.written, outcome.written);
                Counters::add(&c.unchanged, outcome.unchanged);
                Counters::add(&c.refused, outcome.refused);
                Counters::add(&c.deleted, outcome.deleted);
                c.raise_zxid(batch.applied_zxid);
                let m = &self.metrics;
                m.written.increment(outcome.written);
                m.unchanged.increment(outcome.unchanged);
                m.refused.increment(outcome.refused);
                m.deleted.increment(outcome.deleted);
                m.applied_zxid.set(c.snapshot().applied_zxid as f64);
                // ZooKeeper's mtime to the moment Redis acknowledged; only for recent data
                // changes (a parent re-read for a child change keeps an old mtime).
                let now = now_ms() as i64;
                for mtime in &batch.live_mtimes {
                    let delay_ms = now - mtime;
                    if (0..60_000).contains(&delay_ms) {
                        m.propagation.record(delay_ms as f64 / 1000.0);
                    }
                }
                if let Some(present) = batch.root_written {
                    self.root_in_redis = present;
                }
                for (generation, n) in batch.walk_writes {
                    self.close_walk_items(Some(generation), n);
                }
            }
            Err(error) if error.is_noscript() && !batch.retried => {
                // Redis restarted (or SCRIPT FLUSH): load the scripts and send the same batch
                // again; its reads are only milliseconds old.
                info!(redis = %self.store.server(), "Redis has no scripts loaded (restarted?); loading them");
                match self.store.load_scripts().await {
                    Ok(()) => {
                        batch.retried = true;
                        self.dispatch(batch);
                        // A restart may also have emptied Redis: check everything.
                        self.start_walk(WalkReason::RedisLost);
                    }
                    Err(error) => self.redis_failed(error),
                }
            }
            Err(error) => self.redis_failed(error),
        }
    }

    /// Redis is unreachable or failing: drop what was to be written (a reconcile rewrites it
    /// once Redis answers again) and wait for the heartbeat to find it back.
    fn redis_failed(&mut self, error: StoreError) {
        if !self.redis_down {
            warn!(%error, "Redis write failed; pausing, retrying every heartbeat, will reconcile when it is back");
        }
        self.redis_down = true;
        self.scripts_loaded = false;
        self.ready.clear();
        self.dirty.clear();
        self.walk = None;
        self.sweep = None;
        self.subtree_check = None;
    }

    fn close_walk_items(&mut self, generation: Option<u64>, n: usize) {
        if let (Some(walk), Some(generation)) = (self.walk.as_mut(), generation) {
            if walk.generation == generation {
                walk.open = walk.open.saturating_sub(n);
            }
        }
    }

    /// Moves a walk through its stages once the current one has drained.
    fn advance_walk(&mut self) {
        let Some(walk) = self.walk.as_mut() else { return };
        if !walk.stack.is_empty() || walk.open > 0 || self.sweep.is_some() {
            return;
        }
        match walk.stage {
            WalkStage::Reading if !walk.sweep_needed => {
                let Some(walk) = self.walk.take() else { return };
                self.finish_walk(walk);
            }
            WalkStage::Reading => {
                debug!(
                    nodes = walk.visited,
                    ms = walk.started.elapsed().as_millis() as u64,
                    "walk read the tree; sweeping Redis for keys of gone znodes"
                );
                walk.stage = WalkStage::Sweeping;
                let store = self.store.clone();
                let root = self.config.root.clone();
                let filter = self.config.filter.clone();
                self.sweep = Some(Box::pin(async move {
                    let keep = |path: &str| filter.copies(&root, path);
                    store.stray_paths(&root, keep).await
                }));
            }
            WalkStage::Sweeping => {}
            WalkStage::Confirming => {
                let Some(walk) = self.walk.take() else { return };
                self.finish_walk(walk);
            }
        }
    }

    fn on_sweep(&mut self, result: Result<Vec<String>, StoreError>) {
        match result {
            Ok(strays) => {
                if let Some(walk) = self.walk.as_mut() {
                    if !strays.is_empty() {
                        debug!(count = strays.len(), "keys in Redis whose znode was not found by the walk; confirming");
                    }
                    walk.stack.extend(strays.into_iter().map(|path| (path, false)));
                    walk.stage = WalkStage::Confirming;
                }
            }
            Err(error) => self.redis_failed(error),
        }
    }

    fn finish_walk(&mut self, walk: Walk) {
        let elapsed = walk.started.elapsed();
        let after = self.counters.snapshot();
        let c = &self.counters;
        Counters::add(&c.walks, 1);
        c.last_walk_nodes.store(walk.visited, std::sync::atomic::Ordering::Relaxed);
        c.last_walk_ms.store(elapsed.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
        c.walk_progress.store(0, std::sync::atomic::Ordering::Relaxed);
        c.synced.store(true, std::sync::atomic::Ordering::Relaxed);
        self.metrics.nodes.set(walk.visited as f64);
        self.metrics.walk_done(walk.reason.label(), elapsed.as_secs_f64());
        let written = after.written - walk.before.written;
        let deleted = after.deleted - walk.before.deleted;
        if walk.reason == WalkReason::AntiEntropy && written == 0 && deleted == 0 {
            debug!(nodes = walk.visited, ms = elapsed.as_millis() as u64, "anti-entropy pass: Redis was exact");
        } else {
            info!(
                nodes = walk.visited,
                written,
                deleted,
                ms = elapsed.as_millis() as u64,
                "{} done: {} znodes in {:.3} s",
                walk.reason.describe(),
                walk.visited,
                elapsed.as_secs_f64()
            );
        }
        self.first_sync_done = true;
    }

    /// The phase follows from the state; this is the one place that derives it and the one
    /// place that triggers writing it to `P:mirror`.
    fn publish_phase(&mut self) {
        let phase = if self.redis_down || !self.zk_connected {
            Phase::Degraded
        } else {
            match self.walk.as_ref().map(|w| w.reason) {
                Some(_) if !self.first_sync_done => Phase::Syncing,
                Some(WalkReason::AntiEntropy) | None => Phase::Live,
                Some(_) => Phase::Reconciling,
            }
        };
        self.counters.set_phase(phase);
        let c = &self.counters;
        c.zk_connected.store(self.zk_connected, std::sync::atomic::Ordering::Relaxed);
        c.redis_connected.store(!self.redis_down, std::sync::atomic::Ordering::Relaxed);
        self.metrics.zk_connected.set(if self.zk_connected { 1.0 } else { 0.0 });
        self.metrics.redis_connected.set(if self.redis_down { 0.0 } else { 1.0 });
        if self.published_phase != Some(phase) && self.status_write.is_none() && !self.redis_down {
            self.published_phase = Some(phase);
            self.write_status(phase);
        }
    }

    /// Writes the status hash and checks whether Redis still holds the root.
    fn write_status(&mut self, phase: Phase) {
        let store = self.store.clone();
        let fields = [
            ("state", phase.as_str().to_owned()),
            ("heartbeat", now_ms().to_string()),
            ("root", self.config.root.clone()),
            ("started_at", self.started_at_ms.to_string()),
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
        ];
        let root = self.config.root.clone();
        let check_root = self.root_in_redis;
        self.status_write = Some(Box::pin(async move {
            store.write_status(&fields).await?;
            if check_root {
                store.holds(&root).await
            } else {
                Ok(true)
            }
        }));
    }

    fn on_status_written(&mut self, result: Result<bool, StoreError>) {
        match result {
            Ok(true) => {}
            Ok(false) => {
                if self.root_in_redis && !self.redis_down {
                    warn!(redis = %self.store.server(),
                          "Redis no longer holds the mirror's keys (flushed, restarted empty or deleted): resyncing");
                    self.root_in_redis = false;
                    self.scripts_loaded = false;
                    self.start_walk(WalkReason::RedisLost);
                }
            }
            Err(error) => {
                self.published_phase = None;
                self.redis_failed(error);
            }
        }
    }

    async fn on_heartbeat(&mut self) {
        if self.redis_down && Instant::now() < self.redis_retry_at {
            return;
        }
        if self.redis_down || !self.scripts_loaded {
            match self.store.load_scripts().await {
                Ok(()) => {
                    self.scripts_loaded = true;
                    self.redis_backoff.reset();
                    if self.redis_down {
                        info!(redis = %self.store.server(), "Redis is reachable again: reconciling");
                        self.redis_down = false;
                        self.published_phase = None;
                        self.start_walk(WalkReason::RedisLost);
                    }
                }
                Err(error) => {
                    let now = Instant::now();
                    let wait = self.redis_backoff.next().min(Duration::from_secs(5));
                    self.redis_retry_at = now + wait;
                    if self.last_redis_error_log.is_none_or(|t| now.duration_since(t) > Duration::from_secs(30)) {
                        warn!(%error, retry_in = ?wait, "Redis unreachable; retrying with backoff (at most every 5 s)");
                        self.last_redis_error_log = Some(now);
                    }
                    self.redis_down = true;
                    return;
                }
            }
        }
        if self.status_write.is_none() {
            let phase = self.counters.snapshot().phase;
            self.published_phase = Some(phase);
            self.write_status(phase);
        }
    }

    /// Everything in flight belongs to the old session: drop it. The next walk covers it.
    fn abandon_session_work(&mut self) {
        self.reads = FuturesOrdered::new();
        self.reads_in_flight = 0;
        self.dirty.clear();
        self.walk = None;
        self.sweep = None;
        self.subtree_check = None;
        self.zk_connected = false;
    }

    /// Best-effort clean stop: let the pipeline in flight land, then say `stopped`.
    async fn stop(&mut self) {
        if let Some(batch) = self.batch.take() {
            if let Ok((batch, Ok(outcome))) = tokio::time::timeout(Duration::from_secs(2), batch).await {
                self.counters.raise_zxid(batch.applied_zxid);
                Counters::add(&self.counters.written, outcome.written);
            }
        }
        self.counters.set_phase(Phase::Stopped);
        let fields = [("state", Phase::Stopped.as_str().to_owned()), ("heartbeat", now_ms().to_string())];
        let _ = tokio::time::timeout(Duration::from_secs(2), self.store.write_status(&fields)).await;
        info!("zkmirror stopped");
    }
}

/// Whether the anti-entropy pass that is due should wait one more interval: changes arrived
/// faster than [`ANTI_ENTROPY_BUSY_RATE`] over the last one, and it has not yet waited
/// [`ANTI_ENTROPY_MAX_POSTPONED`] intervals in a row.
fn anti_entropy_postponed(changes_per_s: f64, postponed_so_far: u32) -> bool {
    changes_per_s > ANTI_ENTROPY_BUSY_RATE && postponed_so_far < ANTI_ENTROPY_MAX_POSTPONED
}

enum EventOutcome {
    Continue,
    Reconnected,
    Expired,
    AuthFailed,
}

/// Exponential backoff from 100 ms to 10 s.
struct Backoff {
    current: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { current: Duration::from_millis(100) }
    }

    fn peek(&self) -> Duration {
        self.current
    }

    fn next(&mut self) -> Duration {
        let now = self.current;
        self.current = (self.current * 2).min(Duration::from_secs(10));
        now
    }

    fn reset(&mut self) {
        *self = Backoff::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anti_entropy_runs_on_a_quiet_or_moderately_busy_tree() {
        assert!(!anti_entropy_postponed(0.0, 0));
        assert!(!anti_entropy_postponed(ANTI_ENTROPY_BUSY_RATE, 0));
    }

    #[test]
    fn anti_entropy_waits_while_changes_pour_in_but_not_forever() {
        assert!(anti_entropy_postponed(5_000.0, 0));
        assert!(anti_entropy_postponed(5_000.0, ANTI_ENTROPY_MAX_POSTPONED - 1));
        assert!(!anti_entropy_postponed(5_000.0, ANTI_ENTROPY_MAX_POSTPONED));
    }
}

//! The engine core: the whole mirror as a state machine that does no I/O.
//!
//! ```text
//!   start / reconnect / expiry / Redis loss / watch restored / anti-entropy
//!        │
//!        ▼
//!   1. watch:  (re-)add ONE persistent recursive watch on the root   ── events buffer from here
//!   2. walk:   read every znode (depth first, many reads in flight), write what differs,
//!              then sweep Redis for keys whose znode is gone
//!   3. live:   each event marks paths dirty → read → write
//! ```
//!
//! [`Core`] is fed [`Input`]s (what ZooKeeper and Redis answered, what the watch reported, the
//! clock) and hands out [`Effect`]s (read these paths, write this batch, load the scripts, ...).
//! [`driver`] turns effects into futures and their results back into inputs; it is the only
//! part that awaits anything, and it awaits nothing inline, so a slow server stalls nothing but
//! the work waiting for it.
//!
//! The snapshot-then-changes hand-off is the order of the first two steps, kept by the core:
//! no read is issued until the watch is in place ([`WatchState::Active`]), so a change made
//! during the walk is either seen by the walk's read or reported by an event whose read comes
//! later. Both go through the same ordered pipeline, and the Lua scripts refuse any write older
//! than what Redis holds, so the order in which a walk read and an event read land cannot make a
//! version go backwards.
//!
//! One type per concern: [`walk::Walk`], the read scheduler ([`reads`]), the write queue
//! ([`writes`]), the Redis link ([`RedisLink`]), the watermark ([`watermark`]) and the recorder
//! ([`record`]).

pub(crate) mod driver;
pub(crate) mod history;
pub(crate) mod reads;
pub(crate) mod record;
pub(crate) mod walk;
pub(crate) mod watermark;
pub(crate) mod writes;

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::config::{Leadership, MirrorConfig};
use crate::error::{MirrorError, StoreError, ZkError};
use crate::filter::Filter;
use crate::path;
use crate::status::Phase;
use crate::store::{Applied, Refusal, Write, WriteOutcome};
use crate::znode::Fetched;

use history::{Recheck, SyncPoint, Verdict};
use reads::{DirtyPaths, ReadMode, ReadRoom};
use record::Recorder;
use walk::{Walk, WalkReason, WalkStage};
use watermark::Watermark;
use writes::{Pending, WriteQueue};

/// Ready writes before reads pause: bounds the count when Redis is slower than ZooKeeper (the
/// memory budget bounds their bytes).
const MAX_READY: usize = 4 * writes::MAX_BATCH_WRITES;
/// Changes per second (since the last anti-entropy tick) above which the anti-entropy pass is
/// postponed: it re-reads and re-compares the whole tree, which on a busy machine delays the
/// live changes readers are waiting for. The price: what only the pass catches (an ACL change,
/// a znode becoming readable) waits longer, up to `1 + ANTI_ENTROPY_MAX_POSTPONED` intervals.
const ANTI_ENTROPY_BUSY_RATE: f64 = 1000.0;
/// Intervals in a row the anti-entropy pass may be postponed; then it runs whatever the load.
const ANTI_ENTROPY_MAX_POSTPONED: u32 = 4;
/// `SCAN` pages (1000 keys each) the cold sync's look for keys of the subtree may take before
/// it gives up and sweeps as usual: an empty Redis answers in one.
pub(crate) const SUBTREE_CHECK_PAGES: usize = 16;
/// Bytes charged per path in flight beyond its data: Stat, path, children names of a typical
/// znode, and the client's decoding.
const READ_OVERHEAD_BYTES: usize = 4096;
/// Writes whose script failed kept for a retry; past that, left to the next walk.
const MAX_FAILED_WRITES: usize = 10_000;
/// How long a write whose script failed waits before it is read and written again.
const FAILED_WRITE_RETRY: Duration = Duration::from_secs(10);
/// Share of the memory budget that dirty paths may take before they are dropped for a
/// reconcile walk (which reads everything they named, with bounded memory).
const DIRTY_SHARE: usize = 4;

/// What the engine was told.
#[derive(Debug)]
pub(crate) enum Input {
    /// A ZooKeeper session is open.
    Connected,
    ConnectFailed(ZkError),
    WatchAdded,
    WatchFailed(ZkError),
    /// The session's connection dropped (the session may still be alive).
    Disconnected,
    /// The connection is back within the same session.
    Reconnected,
    /// The session ended for good (expired or closed).
    SessionEnded,
    AuthFailed,
    /// A watch event on `path`.
    Changed {
        path: String,
        kind: Change,
    },
    /// The oldest read request in flight was answered (requests are answered in order).
    /// `read_at_ms`: when the oldest read behind the answer was sent, if before this request
    /// (a hub may answer from another target's read, see `zkhub`); else the request's own.
    ReadDone {
        results: Vec<(String, Result<Fetched, ZkError>)>,
        read_at_ms: Option<u64>,
    },
    /// The pipeline in flight was answered: one outcome per write.
    WriteDone(Result<Applied, StoreError>),
    /// The scripts are loaded; `Ok` carries the history (`epoch`) `P:mirror` names (0: none).
    ScriptsLoaded(Result<u64, StoreError>),
    /// The sync before walk `generation` was answered (or failed: the walk is not judged).
    Synced {
        generation: u64,
        result: Result<SyncPoint, String>,
    },
    SubtreeChecked {
        generation: u64,
        result: Result<bool, StoreError>,
    },
    /// The confirmation asked after walk `generation` was answered: each path's stored version
    /// and what ZooKeeper holds after the sync (or why it could not be read).
    HistoryConfirmed {
        generation: u64,
        result: Result<Vec<Recheck>, String>,
    },
    /// One page of the sweep: the cursor of the next page (0: the last) and its candidates.
    SweepDone {
        generation: u64,
        result: Result<(u64, Vec<String>), StoreError>,
    },
    /// The status hash was written; `Ok(false)`: it did not exist before this write.
    StatusWritten(Result<bool, StoreError>),
}

#[cfg(test)]
impl Input {
    /// A read answered from this request's own read (no older read shared into it).
    pub fn read_done(results: Vec<(String, Result<Fetched, ZkError>)>) -> Input {
        Input::ReadDone { results, read_at_ms: None }
    }
}

/// A watch event's kind, as far as the mirror cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Created,
    Deleted,
    Data,
}

/// What the engine asks the driver to do.
#[derive(Debug)]
pub(crate) enum Effect {
    /// Open a new ZooKeeper session.
    Connect,
    /// Forget the session, its watcher and every read in flight (it ended).
    DropSession,
    /// (Re-)add the persistent recursive watch on the root.
    AddWatch,
    /// Set `TCP_NODELAY` on the session's new socket (off the event loop: it scans `/proc`).
    DisableNagle,
    /// One multi-read of these paths; answered with [`Input::ReadDone`] in send order.
    Read(Vec<String>),
    /// One pipeline of writes, then the watermark; answered with [`Input::WriteDone`]. Redis
    /// refuses every write of it once its clock is past `read_deadline_ms`.
    Write {
        writes: Arc<Vec<Write>>,
        zxid: Option<i64>,
        read_deadline_ms: Option<u64>,
        /// The mirror's history: the scripts order by it before any zxid.
        epoch: u64,
    },
    /// Read `P:mirror`'s claim, sync the session's server with the leader, read the root's
    /// ancestors; answered with [`Input::Synced`]. Walk `generation` reads nothing before.
    SyncRoot {
        generation: u64,
    },
    /// Read what Redis holds of `paths` (puts of walk `generation` it refused), then sync the
    /// session's server with the leader, then read the same paths from ZooKeeper; answered
    /// with [`Input::HistoryConfirmed`] (see [`history::confirm`]).
    ConfirmHistory {
        generation: u64,
        paths: Vec<String>,
    },
    LoadScripts,
    CheckSubtree {
        generation: u64,
    },
    /// One page of the sweep, from `cursor` (a `SCAN` cursor; 0 starts it).
    Sweep {
        generation: u64,
        cursor: u64,
    },
    /// Set these status fields; answered with whether the status hash existed before.
    WriteStatus {
        fields: Vec<(&'static str, String)>,
    },
}

/// The ZooKeeper side's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ZkLink {
    /// A connect is in flight.
    Connecting,
    /// Waiting before the next connect attempt.
    Waiting { until: Instant },
    /// A session is open and connected.
    Connected { watch: WatchState },
    /// A session is open but its connection dropped.
    Disconnected,
}

/// The persistent watch of a connected session. A mirror without its watch is not live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WatchState {
    Adding,
    RetryAt(Instant),
    Active,
}

/// The Redis side's state: one state, not three flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RedisLink {
    /// The scripts are being loaded; writes wait (a NOSCRIPT answer would look like a restart).
    Loading {
        was_down: bool,
    },
    Up,
    /// Unreachable or failing: try again at `retry_at`.
    Down {
        retry_at: Instant,
    },
}

/// One read request in flight.
struct ReadRequest {
    items: Vec<ReadItem>,
    sent: Instant,
    sent_ms: u64,
    /// The watch epoch it was sent in: only replies sent under the current watch count for
    /// the watermark.
    watch_epoch: u64,
}

#[derive(Clone, Copy)]
struct ReadItem {
    /// The walk generation that asked for it and whether to descend into its children.
    walk: Option<(u64, bool)>,
    mark: Option<u64>,
}

pub(crate) struct Core {
    root: String,
    filter: Filter,
    heartbeat_interval: Duration,
    anti_entropy_interval: Duration,
    read_window: usize,
    memory_budget: usize,
    /// What one read in flight may hold at most, as far as the mirror knows: the configured
    /// `max_znode_bytes`, raised to the next power of two above any larger znode a read
    /// returned (a server whose `jute.maxbuffer` is larger, or a setting below the ensemble's).
    /// Kept, so that reads sent after the first such znode are charged what they may hold.
    max_znode_bytes: usize,
    read_charge: usize,
    /// Most paths in one read request: its reply, at worst that many of the largest znode, is
    /// built whole in ZooKeeper's heap and held three times here while decoded.
    max_request_paths: usize,
    /// Bytes kept back from reads for the extra copies of the one reply being decoded.
    read_reserve: usize,
    /// How long a read may be held before Redis refuses its write: half the tombstone ttl, so
    /// that a read older than any tombstone it could meet is never written (and clocks of the
    /// mirror's host and Redis may differ by up to the other half).
    max_read_age_ms: u64,
    started_at_ms: u64,
    record: Recorder,

    zk: ZkLink,
    zk_backoff: Backoff,
    /// Counts watches added: replies to reads sent under an earlier watch do not count.
    watch_epoch: u64,
    /// The reason of the walk the next watch starts.
    next_walk: WalkReason,
    redis: RedisLink,
    redis_backoff: Backoff,
    last_redis_error_log: Option<Instant>,
    /// The last Redis failure's text: a different one is logged even within the 30 s.
    last_redis_error: Option<String>,
    /// Redis answers, but its ACLs refuse a command the writes need (an operator gave the
    /// mirror's user too few rights). The copy cannot advance, so the status says `degraded`
    /// even while the link is up; the status hash itself needs no refused command and can say
    /// so. Cleared by the first batch Redis applies.
    redis_refusing: bool,

    dirty: DirtyPaths,
    walk: Option<Walk>,
    next_generation: u64,
    reads: VecDeque<ReadRequest>,
    paths_in_flight: usize,
    /// After a failed read: no read until then.
    read_retry_at: Option<Instant>,
    read_backoff: Backoff,
    writes: WriteQueue,
    batch_sent: Option<Instant>,
    /// A batch Redis answered NOSCRIPT to, sent again once the scripts are loaded.
    noscript_batch: Option<writes::Batch>,
    watermark: Watermark,
    published_zxid: i64,

    subtree_check: Option<u64>,
    sweep: Option<u64>,
    status_in_flight: bool,
    published_phase: Option<Phase>,
    first_sync_done: bool,
    /// Whether this run has written the status hash: from then on, finding it gone means Redis
    /// lost the mirror's keys.
    status_written: bool,
    /// Writes whose script failed (a key of the wrong type): read and written again later,
    /// their marks kept open so the watermark does not claim them.
    failed_writes: Vec<(String, Option<u64>)>,
    failed_retry_at: Option<Instant>,
    /// Znodes found unreadable (NoAuth). ACLs are not inherited, but the rule is that nothing
    /// below an unreadable znode is mirrored, readable or not: the walk cannot list its
    /// children, so a copy of some of them could never be kept exact, and `verify` checks the
    /// same rule. Holds only the znodes where the walk stopped, each logged once.
    unreadable: HashSet<String>,
    /// What `unreadable` holds by the memory budget's account, kept as paths come and go.
    unreadable_bytes: usize,

    heartbeat_at: Instant,
    anti_entropy_at: Instant,
    anti_entropy_postponed: u32,
    events_at_tick: (u64, Instant),

    effects: VecDeque<Effect>,
    fatal: Option<MirrorError>,
    /// Once fatal, for good: the core asks for nothing more, whatever it is fed.
    halted: bool,
    /// Set when this mirror leads an election: its token goes with every script (the store
    /// holds it), and its name and token into the status hash.
    leadership: Option<Leadership>,

    /// The history (`epoch`) every write carries (see [`history`]): 0 until ZooKeeper is first
    /// seen going back, or what `P:mirror` names when that is higher.
    epoch: u64,
    /// A new history must still be claimed in `P:mirror` (`epoch`, `zxid` restarting at 0).
    history_unclaimed: bool,
    /// The history the pipeline in flight was sent under.
    batch_epoch: u64,
    /// A confirmation asked and not answered yet (see [`history::confirm`]).
    confirming: Option<Confirming>,
    /// The last history reset this run saw, for the status hash.
    history_reset: Option<HistoryReset>,
}

/// A confirmation in flight: the walk whose refusals it checks, the history it judges for, and
/// whether the watermark stays blocked until it answers (the walk covered lost events: its end
/// releases the watermark only once the refusals are known to be a race, not a restore).
#[derive(Clone, Copy, Debug)]
struct Confirming {
    generation: u64,
    epoch: u64,
    unblock: bool,
}

/// A detected history reset: when, and the two zxids that told.
#[derive(Clone, Copy, Debug)]
struct HistoryReset {
    at_ms: u64,
    redis_zxid: i64,
    zookeeper_zxid: i64,
}

pub(crate) use crate::clock::unix_ms as now_ms;

impl Core {
    pub fn new(config: &MirrorConfig, record: Recorder, now: Instant) -> Core {
        let mut core = Core {
            root: config.root.clone(),
            filter: config.filter.clone(),
            heartbeat_interval: config.heartbeat_interval,
            anti_entropy_interval: config.anti_entropy_interval,
            read_window: config.read_window,
            memory_budget: config.memory_budget,
            // Set by `charge_reads_as` below.
            max_znode_bytes: 0,
            read_charge: 0,
            max_request_paths: 1,
            read_reserve: 0,
            max_read_age_ms: (config.tombstone_ttl.as_millis() as u64 / 2).max(1),
            started_at_ms: now_ms(),
            record,
            zk: ZkLink::Connecting,
            zk_backoff: Backoff::new(),
            watch_epoch: 0,
            next_walk: WalkReason::ColdSync,
            redis: RedisLink::Loading { was_down: false },
            redis_refusing: false,
            redis_backoff: Backoff::between(Duration::from_millis(100), Duration::from_secs(5)),
            last_redis_error_log: None,
            last_redis_error: None,
            dirty: DirtyPaths::default(),
            walk: None,
            next_generation: 1,
            reads: VecDeque::new(),
            paths_in_flight: 0,
            read_retry_at: None,
            read_backoff: Backoff::new(),
            writes: WriteQueue::new(config.memory_budget),
            batch_sent: None,
            noscript_batch: None,
            watermark: Watermark::default(),
            published_zxid: 0,
            subtree_check: None,
            sweep: None,
            status_in_flight: false,
            published_phase: None,
            first_sync_done: false,
            status_written: false,
            failed_writes: Vec::new(),
            failed_retry_at: None,
            unreadable: HashSet::new(),
            unreadable_bytes: 0,
            heartbeat_at: now,
            anti_entropy_at: now + config.anti_entropy_interval,
            anti_entropy_postponed: 0,
            events_at_tick: (0, now),
            effects: VecDeque::new(),
            fatal: None,
            halted: false,
            leadership: config.leadership.clone(),
            epoch: 0,
            history_unclaimed: false,
            batch_epoch: 0,
            confirming: None,
            history_reset: None,
        };
        core.charge_reads_as(config.max_znode_bytes);
        // The scripts first, before any pipeline; the session meanwhile.
        core.effects.push_back(Effect::LoadScripts);
        core.effects.push_back(Effect::Connect);
        core.watermark.block();
        core
    }

    /// The next thing to do, if any.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// Set once the mirror cannot go on: ZooKeeper rejected the credentials, or Redis's fence
    /// says a newer leader writes now ([`MirrorError::Deposed`]).
    pub fn take_fatal(&mut self) -> Option<MirrorError> {
        let fatal = self.fatal.take();
        self.halted |= fatal.is_some();
        fatal
    }

    /// A script refused this leader's token for a newer one (`seen`): stop at once. Nothing
    /// more is asked of the driver, so nothing more is written; the service steps down.
    fn deposed(&mut self, seen: i64) {
        if self.halted {
            return;
        }
        let fence = self.leadership.as_ref().map_or(0, |l| l.fence);
        tracing::error!(root = %self.root, fence, seen,
            "deposed: Redis holds a newer leader's fencing token; this instance stops writing now");
        self.effects.clear();
        self.fatal = Some(MirrorError::Deposed { root: self.root.clone(), fence, seen });
        self.halted = true;
    }

    /// When [`Core::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Instant {
        let mut at = self.heartbeat_at.min(self.anti_entropy_at);
        match self.zk {
            ZkLink::Waiting { until } => at = at.min(until),
            ZkLink::Connected { watch: WatchState::RetryAt(t) } => at = at.min(t),
            _ => {}
        }
        if let RedisLink::Down { retry_at } = self.redis {
            at = at.min(retry_at);
        }
        if let Some(t) = self.read_retry_at {
            at = at.min(t);
        }
        if let Some(t) = self.failed_retry_at {
            at = at.min(t);
        }
        at
    }

    /// The clock moved: run what is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.halted {
            return;
        }
        if let ZkLink::Waiting { until } = self.zk {
            if now >= until {
                self.zk = ZkLink::Connecting;
                self.effects.push_back(Effect::Connect);
            }
        }
        if let ZkLink::Connected { watch: WatchState::RetryAt(t) } = self.zk {
            if now >= t {
                self.zk = ZkLink::Connected { watch: WatchState::Adding };
                self.effects.push_back(Effect::AddWatch);
            }
        }
        if self.read_retry_at.is_some_and(|t| now >= t) {
            self.read_retry_at = None;
        }
        if self.failed_retry_at.is_some_and(|t| now >= t) {
            self.failed_retry_at = None;
            for (path, mark) in std::mem::take(&mut self.failed_writes) {
                if let Some(superseded) = self.dirty.push(&path, mark) {
                    self.watermark.close(superseded);
                }
            }
        }
        if let RedisLink::Down { retry_at } = self.redis {
            if now >= retry_at {
                // The probe: loading the scripts is what a returning Redis needs first anyway.
                self.redis = RedisLink::Loading { was_down: true };
                self.effects.push_back(Effect::LoadScripts);
            }
        }
        if now >= self.heartbeat_at {
            self.heartbeat_at = now + self.heartbeat_interval;
            if self.redis == RedisLink::Up && !self.status_in_flight {
                let phase = self.record.phase();
                self.published_phase = Some(phase);
                self.write_status(phase);
            }
        }
        if now >= self.anti_entropy_at {
            self.anti_entropy_at = now + self.anti_entropy_interval;
            self.anti_entropy_tick(now);
        }
        self.step(now);
    }

    /// Handles one input, then moves everything forward.
    pub fn handle(&mut self, input: Input, now: Instant) {
        if self.halted {
            return;
        }
        match input {
            Input::Connected => {
                self.zk_backoff.reset();
                self.zk = ZkLink::Connected { watch: WatchState::Adding };
                self.effects.push_back(Effect::AddWatch);
            }
            Input::ConnectFailed(ZkError::AuthFailed) | Input::AuthFailed => {
                self.fatal = Some(ZkError::AuthFailed.into())
            }
            Input::ConnectFailed(error) => {
                let wait = self.zk_backoff.next_delay();
                warn!(%error, retry_in = ?wait, "ZooKeeper unreachable; retrying");
                self.zk = ZkLink::Waiting { until: now + wait };
            }
            Input::WatchAdded => self.on_watch_added(now),
            Input::WatchFailed(error) if error.is_session_expired() => {
                // Without a watch no session event reaches us: the watch's own answer is how
                // we learn the session is gone.
                self.on_session_ended();
            }
            Input::WatchFailed(error) => {
                if matches!(self.zk, ZkLink::Connected { .. }) {
                    let wait = self.zk_backoff.next_delay();
                    warn!(%error, retry_in = ?wait, root = %self.root,
                          "cannot add the watch on the root: not live until it is back; retrying");
                    self.zk = ZkLink::Connected { watch: WatchState::RetryAt(now + wait) };
                }
            }
            Input::Disconnected => {
                if matches!(self.zk, ZkLink::Connected { .. }) {
                    warn!("ZooKeeper connection lost; changes made meanwhile will be reconciled on reconnect");
                    self.zk = ZkLink::Disconnected;
                    // Events of the gap will never come: the reconcile after reconnect covers them.
                    self.watermark.block();
                }
            }
            Input::Reconnected => {
                info!("ZooKeeper connection restored within the session");
                self.effects.push_back(Effect::DisableNagle);
                // zookeeper-client does not restore persistent watches on reconnect: add ours
                // again, then reconcile what the gap may have hidden.
                self.zk = ZkLink::Connected { watch: WatchState::Adding };
                self.next_walk = WalkReason::Reconnect;
                self.effects.push_back(Effect::AddWatch);
            }
            Input::SessionEnded => self.on_session_ended(),
            Input::Changed { path, kind } => self.on_change(&path, kind, now),
            Input::ReadDone { results, read_at_ms } => self.on_reads(results, read_at_ms, now),
            Input::WriteDone(result) => self.on_batch(result, now),
            Input::ScriptsLoaded(result) => self.on_scripts(result, now),
            Input::Synced { generation, result } => self.on_synced(generation, result),
            Input::SubtreeChecked { generation, result } => self.on_subtree_checked(generation, result),
            Input::HistoryConfirmed { generation, result } => self.on_confirmed(generation, result, now),
            Input::SweepDone { generation, result } => self.on_sweep(generation, result, now),
            Input::StatusWritten(result) => self.on_status_written(result, now),
        }
        self.step(now);
    }

    /// Moves everything forward that can move: reads, the pipeline, the walk, the phase.
    fn step(&mut self, now: Instant) {
        if self.halted {
            return;
        }
        self.issue_reads(now);
        // Before the pipeline: a walk that just finished releases the watermark it carries.
        self.advance_walk(now);
        self.send_batch(now);
        self.publish_phase();
    }

    fn watch_active(&self) -> bool {
        self.zk == ZkLink::Connected { watch: WatchState::Active }
    }

    fn on_watch_added(&mut self, now: Instant) {
        if !matches!(self.zk, ZkLink::Connected { .. }) {
            return;
        }
        self.zk = ZkLink::Connected { watch: WatchState::Active };
        self.watch_epoch += 1;
        self.zk_backoff.reset();
        // Reads that failed with the connection are not the new watch's problem: read at once.
        self.read_retry_at = None;
        self.read_backoff.reset();
        let reason = self.next_walk;
        self.next_walk = WalkReason::WatchRestored;
        self.start_walk(reason, now);
    }

    /// Everything read in the old session is dropped, ready writes included: a read held across
    /// an expiry may be older than a tombstone's life (see `schema/layout.md`); the next walk
    /// reads it again.
    fn on_session_ended(&mut self) {
        warn!("ZooKeeper session expired: starting a new session, a new watch and a reconcile");
        self.effects.push_back(Effect::DropSession);
        self.reads.clear();
        self.paths_in_flight = 0;
        self.dirty.clear();
        self.walk = None;
        self.sweep = None;
        self.subtree_check = None;
        // The driver drops the confirmation with the session; the reconcile judges again.
        self.confirming = None;
        self.writes.clear_ready();
        self.watermark.block();
        self.next_walk = WalkReason::SessionExpired;
        self.zk = ZkLink::Connecting;
        self.effects.push_back(Effect::Connect);
    }

    fn on_change(&mut self, path: &str, kind: Change, now: Instant) {
        self.record.event();
        if !matches!(self.redis, RedisLink::Up | RedisLink::Loading { was_down: false }) {
            // Nothing can be written; the reconcile after Redis returns covers this change.
            return;
        }
        let seq = self.watermark.next_event();
        let is_root = path == self.root;
        let parent = path::parent(path).unwrap_or("/").to_owned();
        match kind {
            Change::Created => {
                self.mark_dirty(path, seq);
                if !is_root {
                    self.mark_dirty(&parent, seq);
                }
            }
            Change::Deleted => {
                // Parent first: readers stop seeing the name before its keys go.
                if !is_root {
                    self.mark_dirty(&parent, seq);
                }
                self.mark_dirty(path, seq);
            }
            Change::Data => self.mark_dirty(path, seq),
        }
        if self.dirty.bytes() > self.memory_budget / DIRTY_SHARE {
            // More distinct paths changed than the budget holds: read them all by walking.
            warn!(paths = self.dirty.len(), "too many changed paths to hold: reconciling instead");
            self.dirty.clear();
            self.watermark.block();
            self.start_walk(WalkReason::Reconnect, now);
        }
    }

    /// Queues a read of `path` if the filter copies it.
    fn mark_dirty(&mut self, path: &str, seq: u64) {
        if !self.filter.copies(&self.root, path) {
            return;
        }
        if self.dirty.is_marked(path) {
            return;
        }
        self.watermark.open(seq);
        // Not marked yet (checked above): nothing is superseded.
        let _ = self.dirty.push(path, Some(seq));
    }

    /// Starts (or restarts) a walk from the root. Dirty paths stay: the walk does not replace
    /// reads that events asked for.
    fn start_walk(&mut self, reason: WalkReason, now: Instant) {
        let generation = self.next_generation;
        self.next_generation += 1;
        if reason != WalkReason::AntiEntropy {
            info!("{} started", reason.describe());
        } else {
            debug!("{} started", reason.describe());
        }
        if reason.covers_lost_events() {
            self.watermark.block();
            // This walk's end releases the watermark; a confirmation in flight must not.
            if let Some(c) = self.confirming.as_mut() {
                c.unblock = false;
            }
        }
        self.sweep = None;
        // A look begun for an earlier walk would hold this walk's writes back for nothing.
        self.subtree_check = None;
        self.walk = Some(Walk::new(reason, generation, &self.root, now, self.record.written_deleted()));
        self.effects.push_back(Effect::SyncRoot { generation });
        if reason == WalkReason::ColdSync && self.writes.is_idle() {
            self.subtree_check = Some(generation);
            self.effects.push_back(Effect::CheckSubtree { generation });
        }
    }

    fn on_subtree_checked(&mut self, generation: u64, result: Result<bool, StoreError>) {
        if self.subtree_check != Some(generation) {
            return;
        }
        self.subtree_check = None;
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

    /// Charges every read from now on as a znode of `max_znode_bytes`, and sizes requests and
    /// the decoding reserve for it.
    fn charge_reads_as(&mut self, max_znode_bytes: usize) {
        let max_znode_bytes = max_znode_bytes.max(1);
        self.max_znode_bytes = max_znode_bytes;
        self.read_charge = max_znode_bytes.saturating_add(READ_OVERHEAD_BYTES);
        self.max_request_paths = (self.memory_budget / max_znode_bytes.saturating_mul(8)).max(1);
        // A reply is held three times while it is decoded (zookeeper-client 0.11): in the
        // client's receive buffer, in the reply it copies out of that, and as decoded znodes.
        // Each path in flight is charged once, as the largest znode; the two extra copies of
        // the one reply being decoded are reserved once, for the largest request.
        self.read_reserve = 2usize.saturating_mul(self.max_request_paths).saturating_mul(max_znode_bytes);
    }

    /// A read returned more than a read is charged (its data and its children's names
    /// together): the budget no longer bounds the reads in flight. Reads sent from now on are
    /// charged the next power of two above it; those already in flight cannot be called back.
    /// Logged once per raise, so at most once per power of two.
    fn note_reply_size(&mut self, path: &str, data_bytes: usize, children_bytes: usize) {
        let bytes = data_bytes.saturating_add(children_bytes);
        if bytes <= self.read_charge {
            return;
        }
        let charged = self.max_znode_bytes;
        let raised = bytes.checked_next_power_of_two().unwrap_or(bytes);
        let advice = if data_bytes > charged {
            "max_znode_size is below this ensemble's largest znode: set it to the ensemble's jute.maxbuffer"
        } else {
            "its children's names, read with its data, are what goes over"
        };
        let slow = if self.memory_budget < raised.saturating_mul(6) {
            "; memory_budget is now under six times that, so reads go a few at a time: raise memory_budget"
        } else {
            ""
        };
        warn!(
            %path,
            data_bytes,
            children_bytes,
            charged,
            now_charged = raised,
            "{path} read {data_bytes} bytes of data and {children_bytes} of children's names, more than a read is charged against the memory budget ({charged} bytes): reads are charged {raised} bytes from now on ({advice}){slow}"
        );
        self.charge_reads_as(raised);
    }

    /// Bytes the mirror holds now, by the memory budget's account.
    fn held_bytes(&self) -> usize {
        self.writes.bytes() + self.dirty.bytes() + self.walk.as_ref().map_or(0, Walk::bytes) + self.unreadable_bytes
    }

    /// Fills the read window: event-dirty paths first (they are what readers wait for), then
    /// the walk. Every path in flight is charged as the largest znode ZooKeeper can return, so
    /// what the replies hold stays within the memory budget whatever the values' sizes.
    fn issue_reads(&mut self, now: Instant) {
        if !self.watch_active() || self.redis != RedisLink::Up || self.read_retry_at.is_some() {
            return;
        }
        loop {
            if self.writes.ready_len() >= MAX_READY {
                return;
            }
            let free = self
                .memory_budget
                .saturating_sub(self.held_bytes() + self.read_reserve + self.paths_in_flight * self.read_charge);
            let mut budget_paths = free / self.read_charge;
            if budget_paths == 0 && self.paths_in_flight == 0 && self.writes.is_idle() {
                // Nothing else is held: one read at a time always makes progress.
                budget_paths = 1;
            }
            let mode = match self.walk.as_ref().filter(|w| w.reading()) {
                Some(w) if w.reason == WalkReason::AntiEntropy => ReadMode::AntiEntropy,
                Some(_) => ReadMode::Walk,
                None => ReadMode::Changes,
            };
            let walk_waiting = self.walk.as_ref().filter(|w| w.reading()).map_or(0, Walk::waiting);
            let room = ReadRoom {
                mode,
                dirty: self.dirty.len(),
                waiting: self.dirty.len() + walk_waiting,
                requests_in_flight: self.reads.len(),
                paths_in_flight: self.paths_in_flight,
                max_paths: self.read_window.min(self.paths_in_flight + budget_paths),
                max_request: self.max_request_paths,
            };
            let Some(size) = room.next_request_size() else { return };
            let mut paths = Vec::new();
            let mut items = Vec::new();
            while paths.len() < size {
                if let Some((path, mark)) = self.dirty.pop() {
                    paths.push(path);
                    items.push(ReadItem { walk: None, mark });
                } else if let Some(walk) = self.walk.as_mut().filter(|w| w.reading() && room.walk_may_read()) {
                    match walk.pop() {
                        Some((path, descend)) => {
                            walk.open += 1;
                            paths.push(path);
                            items.push(ReadItem { walk: Some((walk.generation, descend)), mark: None });
                        }
                        None => break,
                    }
                } else {
                    break;
                }
            }
            if paths.is_empty() {
                return;
            }
            self.paths_in_flight += paths.len();
            self.reads.push_back(ReadRequest { items, sent: now, sent_ms: now_ms(), watch_epoch: self.watch_epoch });
            self.effects.push_back(Effect::Read(paths));
        }
    }

    fn on_reads(&mut self, results: Vec<(String, Result<Fetched, ZkError>)>, read_at_ms: Option<u64>, now: Instant) {
        let Some(mut request) = self.reads.pop_front() else { return };
        // The deadline on old reads counts from the oldest read behind the answer.
        request.sent_ms = read_at_ms.map_or(request.sent_ms, |t| t.min(request.sent_ms));
        self.paths_in_flight = self.paths_in_flight.saturating_sub(request.items.len());
        self.record.reads(results.len() as u64, now.duration_since(request.sent));
        let mut failed: Option<(usize, String, ZkError)> = None;
        let mut highest_zxid = None;
        for ((path, result), item) in results.into_iter().zip(request.items) {
            match result {
                Ok(fetched) => {
                    if let Fetched::Present(z) = &fetched {
                        let children_bytes = z.children.iter().map(|c| c.len() + 4).sum::<usize>();
                        self.note_reply_size(&z.path, z.data.len(), children_bytes);
                    }
                    let zxid = match &fetched {
                        Fetched::Present(z) => Some(z.stat.czxid.max(z.stat.mzxid).max(z.stat.pzxid)),
                        Fetched::Absent { tomb_zxid, .. } => *tomb_zxid,
                        Fetched::Unreadable { .. } => None,
                    };
                    highest_zxid = highest_zxid.max(zxid);
                    if let Some(walk) = self.walk.as_mut().filter(|w| item.walk.is_some_and(|(g, _)| g == w.generation))
                    {
                        walk.evidence.saw(zxid.unwrap_or(0));
                        if matches!(&fetched, Fetched::Present(z) if z.path == self.root) {
                            walk.evidence.root_present = true;
                        }
                        // What the walk cannot see below here may hold the claim's znode.
                        let descends = item.walk.is_some_and(|(_, descend)| descend);
                        walk.evidence.partial |= match &fetched {
                            Fetched::Unreadable { .. } => true,
                            Fetched::Present(z) => {
                                descends && !z.children.is_empty() && !self.filter.may_descend(&self.root, &z.path)
                            }
                            Fetched::Absent { .. } => false,
                        };
                    }
                    self.on_read(fetched, item, request.sent_ms);
                }
                Err(error) if error.is_session_expired() => {
                    self.on_session_ended();
                    return;
                }
                Err(error) => {
                    // Read it again after a pause: a walk's path goes back on its stack (its
                    // children must still be walked), a change's back among the dirty paths.
                    match item.walk {
                        Some((generation, descend)) => match self.walk.as_mut() {
                            Some(walk) if walk.generation == generation => {
                                walk.open = walk.open.saturating_sub(1);
                                walk.push(path.clone(), descend);
                            }
                            _ => {}
                        },
                        None => {
                            if let Some(superseded) = self.dirty.push(&path, item.mark) {
                                self.watermark.close(superseded);
                            }
                        }
                    }
                    match &mut failed {
                        Some((count, _, _)) => *count += 1,
                        None => failed = Some((1, path, error)),
                    }
                }
            }
        }
        if let Some((count, first, error)) = failed {
            // One line per failed request, however many paths it carried.
            let wait = self.read_backoff.next_delay();
            if self.watch_active() {
                warn!(paths = count, first = %first, %error, retry_in = ?wait, "ZooKeeper read failed; retrying");
            }
            self.read_retry_at = Some(now + wait);
        } else {
            self.read_backoff.reset();
            if request.watch_epoch == self.watch_epoch && self.watch_active() {
                if let Some(zxid) = highest_zxid {
                    self.watermark.reply(zxid);
                }
            }
        }
    }

    fn on_read(&mut self, fetched: Fetched, item: ReadItem, read_at_ms: u64) {
        let current = self.walk.as_ref().map(|w| w.generation);
        let walk_generation = item.walk.map(|(generation, _)| generation).filter(|g| Some(*g) == current);
        let write = match fetched {
            Fetched::Present(znode) => {
                if let (Some(walk), Some((_, true))) = (self.walk.as_mut(), item.walk) {
                    if Some(walk.generation) == walk_generation {
                        walk.visited += 1;
                        self.record.walk_progress(walk.visited);
                        if self.filter.may_descend(&self.root, &znode.path) {
                            for name in &znode.children {
                                walk.push(path::child(&znode.path, name), true);
                            }
                        }
                    }
                }
                if self.forget_unreadable(&znode.path) {
                    info!(path = %znode.path, "znode is readable again: mirroring it");
                }
                if !self.filter.copies(&self.root, &znode.path) {
                    // Walked through (an include below it may match) or left behind by an old
                    // filter: it must hold no keys.
                    self.record.filtered();
                    Write::Exclude { path: znode.path }
                } else if self.below_unreadable(&znode.path) {
                    // Found through the watch or the sweep below a znode the mirror cannot
                    // read: not mirrored (see `unreadable`).
                    Write::Exclude { path: znode.path }
                } else {
                    Write::Put(znode)
                }
            }
            Fetched::Absent { path, tomb_zxid } => {
                self.forget_unreadable(&path);
                if path == self.root {
                    warn!(root = %path, "root does not exist in ZooKeeper; waiting for it to be created");
                }
                Write::Delete { path, tomb_zxid }
            }
            Fetched::Unreadable { path, stat } => {
                self.record.unreadable();
                self.note_unreadable(&path);
                Write::Hide { path, stat }
            }
        };
        self.writes.push(Pending { write, walk: walk_generation, mark: item.mark, read_at_ms });
    }

    /// Whether a proper ancestor of `path` (below the root or the root itself) is unreadable.
    fn below_unreadable(&self, path: &str) -> bool {
        if self.unreadable.is_empty() || path == self.root {
            return false;
        }
        std::iter::successors(path::parent(path), |p| if *p == self.root { None } else { path::parent(p) })
            .any(|ancestor| self.unreadable.contains(ancestor))
    }

    /// Forgets an unreadable znode (readable again, or gone); whether it was remembered.
    fn forget_unreadable(&mut self, path: &str) -> bool {
        let was = self.unreadable.remove(path);
        if was {
            self.unreadable_bytes -= unreadable_cost(path);
        }
        was
    }

    /// Remembers an unreadable znode, logging it the first time.
    fn note_unreadable(&mut self, path: &str) {
        if self.unreadable.insert(path.to_owned()) {
            self.unreadable_bytes += unreadable_cost(path);
            warn!(%path, "cannot read {path} (NoAuth): skipping it and its subtree; grant READ to the mirror's identity to mirror it");
        }
    }

    /// Sends the next Redis pipeline if none is in flight: everything ready, up to the batch
    /// bounds, and the watermark if it moved. A lone change goes out at once; under load,
    /// changes that arrive while one pipeline is in flight share the next (group commit).
    fn send_batch(&mut self, now: Instant) {
        if self.redis != RedisLink::Up || self.subtree_check.is_some() || self.writes.in_flight() {
            return;
        }
        let zxid = if self.history_unclaimed {
            // A new history: `zxid` restarts at 0 in it, once (advance_zxid.lua lets a newer
            // history lower it), then grows again as the rebuild earns it.
            Some(0)
        } else {
            self.watermark.claimable().filter(|z| *z > self.published_zxid)
        };
        if let Some((writes, oldest_read_ms)) = self.writes.start_batch(zxid) {
            self.record.batch_sent(writes.len());
            self.dispatch(writes, zxid, oldest_read_ms, now);
        }
    }

    /// Hands the pipeline now in flight to the driver, with the deadline past which Redis
    /// refuses its writes (its oldest read's send time plus `max_read_age_ms`).
    fn dispatch(&mut self, writes: Arc<Vec<Write>>, zxid: Option<i64>, oldest_read_ms: Option<u64>, now: Instant) {
        self.batch_sent = Some(now);
        self.batch_epoch = self.epoch;
        let read_deadline_ms = oldest_read_ms.map(|t| t + self.max_read_age_ms);
        self.effects.push_back(Effect::Write { writes, zxid, read_deadline_ms, epoch: self.epoch });
    }

    fn on_batch(&mut self, result: Result<Applied, StoreError>, now: Instant) {
        let Some(batch) = self.writes.finish_batch() else { return };
        let round_trip = self.batch_sent.take().map_or(Duration::ZERO, |t| now.duration_since(t));
        match result {
            Ok(applied) => {
                self.redis_refusing = false;
                if let Some(seen) = applied.outcomes.iter().find_map(|o| match o {
                    WriteOutcome::Refused(Refusal::Fenced { seen }) => Some(*seen),
                    _ => None,
                }) {
                    return self.deposed(seen);
                }
                let counts = applied.counts();
                self.record.batch_done(&counts, round_trip);
                if applied.status_missing && self.status_written {
                    // The status hash is gone since the last heartbeat wrote it: Redis lost
                    // our keys (FLUSHALL under load). The same as the heartbeat finding it.
                    self.on_redis_lost(now);
                } else if let Some(why) = &applied.zxid_failure {
                    warn!(why = %why, "cannot raise P:mirror zxid; the status hash needs repair");
                } else if let Some(zxid) = batch.zxid {
                    // A claim sent in an older history (a reset came while it was in flight)
                    // says nothing of this one: counted, it would hold this history's claims
                    // back until they pass it.
                    if self.batch_epoch == self.epoch {
                        self.history_unclaimed = false;
                        self.published_zxid = self.published_zxid.max(zxid);
                        self.record.applied_zxid(zxid);
                    }
                }
                // ZooKeeper's mtime to the moment Redis acknowledged; only for recent data
                // changes (a parent re-read for a child change keeps an old mtime).
                let now_ms = now_ms() as i64;
                for mtime in &batch.live_mtimes {
                    let delay_ms = now_ms - mtime;
                    if (0..60_000).contains(&delay_ms) {
                        self.record.propagation(delay_ms);
                    }
                }
                for (generation, n) in &batch.walk_writes {
                    if let Some(walk) = self.walk.as_mut().filter(|w| w.generation == *generation) {
                        walk.open = walk.open.saturating_sub(*n);
                    }
                }
                let (mut failed, mut stale, mut newer_history) = (0, 0, 0);
                let current_walk = self.walk.as_ref().map(|w| w.generation);
                for (((write, mark), walk), outcome) in
                    batch.writes.iter().zip(&batch.marks).zip(&batch.walks).zip(&applied.outcomes)
                {
                    let refused_put = matches!(write, Write::Put(_))
                        && matches!(outcome, WriteOutcome::Refused(Refusal::Older | Refusal::Tombstoned));
                    if refused_put && walk.is_some() && *walk == current_walk {
                        if let Some(w) = self.walk.as_mut() {
                            w.evidence.refused(write.path());
                        }
                    }
                    if matches!(outcome, WriteOutcome::Refused(Refusal::NewerHistory)) {
                        newer_history += 1;
                    }
                    let landed = !matches!(outcome, WriteOutcome::Refused(Refusal::Stale) | WriteOutcome::Failed(_));
                    if landed {
                        if let Some(mark) = mark {
                            self.watermark.close(*mark);
                        }
                        continue;
                    }
                    // What this write carries is not in Redis: keep it out of the watermark until
                    // a later write of the path lands. A walk's write answers no event; its mark
                    // is 0, which holds back every claim (the walk may have been the only thing
                    // to know of the change).
                    let mark = mark.unwrap_or_else(|| {
                        self.watermark.open(0);
                        0
                    });
                    if let WriteOutcome::Failed(why) = outcome {
                        if failed == 0 {
                            warn!(path = %write.path(), why = %why, failed = counts.failed,
                                  "Redis refused the write of {} (a key of the layout holds the wrong type?); \
                                   other znodes go on, this one is retried later", write.path());
                        }
                        failed += 1;
                        if self.failed_writes.len() < MAX_FAILED_WRITES {
                            self.failed_writes.push((write.path().to_owned(), Some(mark)));
                        }
                        // Past that many broken keys the rest are left to the next walk, and their
                        // marks stay open: nothing more is claimed until someone repairs Redis.
                    } else {
                        // Held past its deadline (the mirror was paused?): read it again.
                        stale += 1;
                        if let Some(superseded) = self.dirty.push(write.path(), Some(mark)) {
                            self.watermark.close(superseded);
                        }
                    }
                }
                if stale > 0 {
                    warn!(
                        writes = stale,
                        max_age_ms = self.max_read_age_ms,
                        "Redis refused writes of reads held too long (was the mirror paused?); reading them again"
                    );
                }
                if failed > 0 && self.failed_retry_at.is_none() {
                    self.failed_retry_at = Some(now + FAILED_WRITE_RETRY);
                }
                self.watermark.release();
                if newer_history > 0 && self.batch_epoch == self.epoch {
                    // Another mirror saw ZooKeeper go back and moved Redis to a newer history
                    // (or P:mirror lost its `epoch`): follow it, past what this one knows.
                    self.begin_history(
                        format!(
                            "Redis refused {newer_history} writes: it holds keys of a history newer than {}",
                            self.epoch
                        ),
                        None,
                        now,
                    );
                }
            }
            Err(StoreError::Fenced { seen, .. }) => self.deposed(seen),
            Err(error) if error.is_noscript() && !batch.retried => {
                // Redis restarted (or SCRIPT FLUSH): load the scripts and send the same batch
                // again; its reads are only milliseconds old.
                info!(%error, "Redis has no scripts loaded (restarted?); loading them");
                self.published_zxid = 0;
                self.noscript_batch = Some(batch);
                self.redis = RedisLink::Loading { was_down: false };
                self.effects.push_back(Effect::LoadScripts);
                // A restart may also have emptied Redis: check everything.
                self.start_walk(WalkReason::RedisLost, now);
            }
            Err(error @ StoreError::Denied { .. }) => {
                self.redis_failed(error, now);
                self.redis_refusing = true;
            }
            Err(error) => self.redis_failed(error, now),
        }
    }

    fn on_scripts(&mut self, result: Result<u64, StoreError>, now: Instant) {
        let RedisLink::Loading { was_down } = self.redis else { return };
        match result {
            Ok(stored_epoch) => {
                if stored_epoch > self.epoch {
                    // Another mirror (or an earlier run) rebuilt the copy after ZooKeeper went
                    // back: write in its history.
                    info!(root = %self.root, epoch = stored_epoch, "P:mirror names history {stored_epoch}; mirroring in it");
                    self.epoch = stored_epoch;
                    // What the watermark holds was earned in the old history: claimed in the
                    // new one it would cover zxids this history has not reached. Start it
                    // again; the walk that follows earns it.
                    self.watermark = Watermark::default();
                    self.watermark.block();
                    self.published_zxid = 0;
                }
                self.redis = RedisLink::Up;
                self.redis_backoff.reset();
                if let Some(mut batch) = self.noscript_batch.take() {
                    batch.retried = true;
                    // Redis restarted: what the claim counted on may be gone; the resync walk
                    // earns it again.
                    batch.zxid = None;
                    let (writes, oldest_read_ms) = self.writes.resend(batch);
                    self.dispatch(writes, None, oldest_read_ms, now);
                }
                if was_down {
                    info!("Redis is reachable again: reconciling");
                    self.published_phase = None;
                    if self.watch_active() {
                        self.start_walk(WalkReason::RedisLost, now);
                    }
                }
            }
            Err(StoreError::Fenced { seen, .. }) => self.deposed(seen),
            Err(error) => {
                self.noscript_batch = None;
                self.redis_failed(error, now);
            }
        }
    }

    /// Redis is unreachable or failing: drop what was to be written (a reconcile rewrites it
    /// once Redis answers again) and probe it with backoff.
    fn redis_failed(&mut self, error: StoreError, now: Instant) {
        let wait = self.redis_backoff.next_delay();
        // A probe after the backoff fails in `Loading { was_down: true }`: still the same outage,
        // logged at most every 30 s, not at every retry; but a new cause (the connection was
        // dropped, now the certificate is refused) is news and logged at once.
        let why = error.to_string();
        let new_cause = self.last_redis_error.as_deref() != Some(why.as_str());
        if !matches!(self.redis, RedisLink::Down { .. } | RedisLink::Loading { was_down: true }) {
            warn!(%error, retry_in = ?wait, "Redis write failed; pausing, will reconcile when it is back");
            self.last_redis_error_log = Some(now);
        } else if new_cause || self.last_redis_error_log.is_none_or(|t| now.duration_since(t) > Duration::from_secs(30))
        {
            warn!(%error, retry_in = ?wait, "Redis unreachable; retrying with backoff (at most every 5 s)");
            self.last_redis_error_log = Some(now);
        }
        self.last_redis_error = Some(why);
        self.redis = RedisLink::Down { retry_at: now + wait };
        // Whatever Redis holds when it returns, the watermark is written again after the
        // reconcile.
        self.published_zxid = 0;
        self.writes.clear_ready();
        self.dirty.clear();
        self.walk = None;
        self.sweep = None;
        self.subtree_check = None;
        // Its answer must not unblock the watermark: the reconcile after Redis returns does.
        self.confirming = None;
        self.published_phase = None;
        self.watermark.block();
        // Say so, best effort: readers trust `zxid` while `state` is `live`, and a Redis that
        // fails in part (one node of a cluster, a new primary the old claim may not hold) may
        // still take the status hash. One write; its failure changes nothing.
        if !self.status_in_flight {
            self.write_status(Phase::Degraded);
        }
        // When Redis returns, the scripts are loaded and a reconcile walk runs (`on_scripts`).
    }

    /// Moves a walk through its stages once the current one has drained.
    fn advance_walk(&mut self, now: Instant) {
        let Some(walk) = self.walk.as_mut() else { return };
        if !walk.drained() || self.sweep.is_some() {
            return;
        }
        // The sweep goes a `SCAN` page at a time, the next once the candidates of the last are
        // confirmed: what it holds stays small, however much was deleted meanwhile.
        let next_page = match walk.stage {
            WalkStage::Reading if walk.sweep_needed => {
                debug!(
                    nodes = walk.visited,
                    ms = now.duration_since(walk.started).as_millis() as u64,
                    "walk read the tree; sweeping Redis for keys of gone znodes"
                );
                Some(0)
            }
            WalkStage::Confirming if walk.sweep_cursor != 0 => Some(walk.sweep_cursor),
            WalkStage::Reading | WalkStage::Confirming => None,
            WalkStage::Sweeping => return,
        };
        match next_page {
            Some(cursor) => {
                walk.stage = WalkStage::Sweeping;
                self.sweep = Some(walk.generation);
                self.effects.push_back(Effect::Sweep { generation: walk.generation, cursor });
            }
            None => {
                if let Some(walk) = self.walk.take() {
                    self.finish_walk(walk, now);
                }
            }
        }
    }

    fn on_sweep(&mut self, generation: u64, result: Result<(u64, Vec<String>), StoreError>, now: Instant) {
        if self.sweep != Some(generation) {
            return;
        }
        self.sweep = None;
        match result {
            Ok((next_cursor, strays)) => {
                if let Some(walk) = self.walk.as_mut().filter(|w| w.generation == generation) {
                    walk.sweep_cursor = next_cursor;
                    if !strays.is_empty() {
                        debug!(count = strays.len(), "keys in Redis whose znode was not found by the walk; confirming");
                    }
                    for path in strays {
                        walk.push(path, false);
                    }
                    walk.stage = WalkStage::Confirming;
                }
            }
            Err(error) => self.redis_failed(error, now),
        }
    }

    /// The sync before walk `generation` answered: its reads may start, and they may judge.
    fn on_synced(&mut self, generation: u64, result: Result<SyncPoint, String>) {
        let Some(walk) = self.walk.as_mut().filter(|w| w.generation == generation && w.awaiting_sync) else { return };
        walk.awaiting_sync = false;
        match result {
            Ok(point) => walk.evidence.synced = Some(point),
            Err(why) => debug!(%why, "cannot sync before the walk; it will not judge ZooKeeper's history"),
        }
    }

    /// ZooKeeper's history went back (or Redis holds a newer one): start history `epoch + 1`,
    /// say so once, and rewrite the copy under it. Nothing is blanked: each key keeps its old
    /// value until the rebuild walk rewrites it (or its sweep finds the znode gone).
    fn begin_history(&mut self, why: String, zxids: Option<(i64, i64)>, now: Instant) {
        let from = self.epoch;
        self.epoch += 1;
        // A confirmation in flight judged for the old history: its answer is ignored.
        self.confirming = None;
        if let Some((redis_zxid, zookeeper_zxid)) = zxids {
            warn!(
                root = %self.root, redis_zxid, zookeeper_zxid, epoch = self.epoch,
                "ZooKeeper's history went back under {} (restored from a backup, or rebuilt and re-imported?): \
                 Redis holds zxid {redis_zxid} (0x{redis_zxid:x}), a synced walk of ZooKeeper found at most \
                 {zookeeper_zxid} (0x{zookeeper_zxid:x}); {why}. Rebuilding the copy under history {} \
                 (was {from}); readers keep the old values until each key is rewritten",
                self.root, self.epoch
            );
            self.history_reset = Some(HistoryReset { at_ms: now_ms(), redis_zxid, zookeeper_zxid });
        } else {
            warn!(root = %self.root, epoch = self.epoch, "{why}; rewriting the copy of {} under history {} (was {from})",
                  self.root, self.epoch);
        }
        // The old history's claim says nothing of this one: start the watermark again.
        self.watermark = Watermark::default();
        self.watermark.block();
        self.published_zxid = 0;
        self.history_unclaimed = true;
        self.published_phase = None;
        self.start_walk(WalkReason::HistoryReset, now);
    }

    fn finish_walk(&mut self, walk: Walk, now: Instant) {
        let mut release = walk.reason.covers_lost_events();
        match history::judge(&walk.evidence, self.epoch) {
            Verdict::Unjudged | Verdict::Same => {}
            Verdict::WentBack { redis_zxid, zookeeper_zxid } => {
                self.record.walk_done(walk.reason.label(), walk.visited, now.duration_since(walk.started));
                self.first_sync_done = true;
                let why = "P:mirror claims more than ZooKeeper holds".to_owned();
                return self.begin_history(why, Some((redis_zxid, zookeeper_zxid)), now);
            }
            Verdict::Suspect { refused } => {
                // Another mirror's newer reads, or a restore: re-read a sample of the refused
                // paths, Redis first, then synced ZooKeeper (see `history`). A walk that covered
                // lost events keeps the watermark blocked until the answer.
                let mut paths = walk.evidence.refused_paths.clone();
                paths.truncate(self.max_request_paths);
                info!(root = %self.root, refused, rechecked = paths.len(),
                      "a synced walk's writes were refused as older than Redis holds; re-reading them, \
                       synced, to tell another writer's newer reads from a restore of ZooKeeper");
                let inherited = self.confirming.is_some_and(|c| c.unblock);
                self.confirming =
                    Some(Confirming { generation: walk.generation, epoch: self.epoch, unblock: release || inherited });
                self.effects.push_back(Effect::ConfirmHistory { generation: walk.generation, paths });
                release = false;
            }
        }
        let elapsed = now.duration_since(walk.started);
        self.record.walk_done(walk.reason.label(), walk.visited, elapsed);
        let (written, deleted) = self.record.written_deleted();
        let (written, deleted) = (written - walk.before.0, deleted - walk.before.1);
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
        if release {
            self.watermark.unblock();
            self.watermark.release();
        }
    }

    /// The confirmation of walk `generation`'s refusals answered: a restore, or a race.
    fn on_confirmed(&mut self, generation: u64, result: Result<Vec<Recheck>, String>, now: Instant) {
        let Some(asked) = self.confirming.filter(|c| c.generation == generation && c.epoch == self.epoch) else {
            return;
        };
        self.confirming = None;
        match result {
            Ok(rechecks) => match history::confirm(&rechecks, self.epoch) {
                (Verdict::WentBack { redis_zxid, zookeeper_zxid }, path) => {
                    let why = format!(
                        "Redis holds a version of {} of this history newer than a synced ZooKeeper holds",
                        path.unwrap_or("a refused path")
                    );
                    return self.begin_history(why, Some((redis_zxid, zookeeper_zxid)), now);
                }
                (verdict, _) => {
                    info!(root = %self.root, rechecked = rechecks.len(), ?verdict,
                          "the refused writes were another writer's newer reads: ZooKeeper holds what Redis \
                           holds, or newer; no restore");
                }
            },
            Err(why) => debug!(%why, "cannot confirm the refused writes; the next synced walk judges again"),
        }
        if asked.unblock {
            self.watermark.unblock();
            self.watermark.release();
        }
    }

    fn anti_entropy_tick(&mut self, now: Instant) {
        // Over the time since the last tick, which a busy loop can stretch.
        let events = self.record.events_total();
        let (at_tick, since) = self.events_at_tick;
        let rate = events.saturating_sub(at_tick) as f64 / now.duration_since(since).as_secs_f64().max(1e-3);
        self.events_at_tick = (events, now);
        if self.walk.is_none() && self.redis == RedisLink::Up && self.watch_active() {
            if anti_entropy_postponed(rate, self.anti_entropy_postponed) {
                self.anti_entropy_postponed += 1;
                debug!(
                    changes_per_s = rate as u64,
                    postponed = self.anti_entropy_postponed,
                    "anti-entropy pass postponed: changes are arriving fast"
                );
            } else {
                self.anti_entropy_postponed = 0;
                self.start_walk(WalkReason::AntiEntropy, now);
            }
        }
    }

    /// The phase follows from the state; this is the one place that derives it and the one
    /// place that triggers writing it to `P:mirror`.
    fn publish_phase(&mut self) {
        let redis_up = self.redis == RedisLink::Up;
        let zk_connected = matches!(self.zk, ZkLink::Connected { .. });
        let phase = if !redis_up || !self.watch_active() || self.redis_refusing {
            Phase::Degraded
        } else {
            match self.walk.as_ref().map(|w| w.reason) {
                Some(_) if !self.first_sync_done => Phase::Syncing,
                Some(WalkReason::AntiEntropy) | None => Phase::Live,
                Some(_) => Phase::Reconciling,
            }
        };
        let phase =
            if phase == Phase::Degraded && !self.first_sync_done && redis_up && zk_connected && !self.redis_refusing {
                // Connected, adding the watch before the cold sync: still syncing.
                Phase::Syncing
            } else {
                phase
            };
        self.record.connections(phase, zk_connected, redis_up);
        // A Redis that refuses our writes still answers: its status hash can say `degraded`.
        if self.published_phase != Some(phase) && !self.status_in_flight && (redis_up || self.redis_refusing) {
            self.published_phase = Some(phase);
            self.write_status(phase);
        }
    }

    /// Writes the status hash and checks whether Redis still holds the root.
    fn write_status(&mut self, phase: Phase) {
        use crate::schema::status_field;
        self.status_in_flight = true;
        let mut fields = vec![
            (status_field::STATE, phase.as_str().to_owned()),
            (status_field::HEARTBEAT, now_ms().to_string()),
            (status_field::ROOT, self.root.clone()),
            (status_field::STARTED_AT, self.started_at_ms.to_string()),
            (status_field::VERSION, env!("CARGO_PKG_VERSION").to_owned()),
        ];
        if let Some(reset) = self.history_reset {
            fields.push((status_field::HISTORY_RESET_AT, reset.at_ms.to_string()));
            fields.push((status_field::HISTORY_RESET_REDIS_ZXID, reset.redis_zxid.to_string()));
            fields.push((status_field::HISTORY_RESET_ZOOKEEPER_ZXID, reset.zookeeper_zxid.to_string()));
        }
        if let Some(leadership) = &self.leadership {
            fields.push((status_field::LEADER, leadership.instance.clone()));
            fields.push((status_field::LEADER_SINCE, leadership.since_ms.to_string()));
            fields.push((status_field::FENCE, leadership.fence.to_string()));
        }
        self.effects.push_back(Effect::WriteStatus { fields });
    }

    /// Redis no longer holds the mirror's keys: load the scripts again (a restarted Redis has
    /// none) and resync, claiming nothing until the walk has written everything again.
    fn on_redis_lost(&mut self, now: Instant) {
        warn!("Redis no longer holds the mirror's keys (flushed, restarted empty or deleted): resyncing");
        self.published_zxid = 0;
        self.redis = RedisLink::Loading { was_down: false };
        self.effects.push_back(Effect::LoadScripts);
        self.published_phase = None;
        if self.watch_active() {
            self.start_walk(WalkReason::RedisLost, now);
        }
    }

    fn on_status_written(&mut self, result: Result<bool, StoreError>, now: Instant) {
        self.status_in_flight = false;
        match result {
            Ok(existed) => {
                // The status hash is this mirror's own key, whatever the filter admits: once
                // written, its absence means Redis lost the mirror's keys (flushed, restarted
                // empty, or deleted by hand).
                if !existed && self.status_written && self.redis == RedisLink::Up {
                    self.on_redis_lost(now);
                }
                self.status_written = true;
            }
            Err(StoreError::Fenced { seen, .. }) => self.deposed(seen),
            Err(error) => {
                self.published_phase = None;
                if self.redis == RedisLink::Up {
                    self.redis_failed(error, now);
                }
            }
        }
    }
}

#[cfg(test)]
impl Core {
    /// The writes of the pipeline in flight.
    pub fn writes_in_flight(&self) -> Vec<&Write> {
        self.writes.in_flight_writes()
    }
}

/// What one remembered unreadable path costs, roughly: its bytes and the set's entry.
fn unreadable_cost(path: &str) -> usize {
    path.len() + 32
}

/// Whether the anti-entropy pass that is due should wait one more interval: changes arrived
/// faster than [`ANTI_ENTROPY_BUSY_RATE`] over the last one, and it has not yet waited
/// [`ANTI_ENTROPY_MAX_POSTPONED`] intervals in a row.
fn anti_entropy_postponed(changes_per_s: f64, postponed_so_far: u32) -> bool {
    changes_per_s > ANTI_ENTROPY_BUSY_RATE && postponed_so_far < ANTI_ENTROPY_MAX_POSTPONED
}

#[cfg(test)]
mod review2_tests;
#[cfg(test)]
mod review_tests;
#[cfg(test)]
mod tests;

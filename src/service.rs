//! The daemon: one [`Mirror`] per configured (prefix, root), a control channel for reloads, and
//! the process-wide pieces (metrics endpoint, aggregate status of shared prefixes, progress,
//! the check of Redis's eviction policy).
//!
//! Reload follows one path whatever asked for it: the file watcher and SIGHUP only send
//! [`Control::Reload`]; [`plan`] compares the running configs with the new ones (pure, unit
//! tested) and [`Service::apply`] carries the plan out, returning a [`ReloadOutcome`] that says
//! what happened, failures included. An invalid file never stops what runs.
//!
//! Every task the service spawns is owned: mirrors by their `JoinHandle`, everything else in a
//! `JoinSet`. On shutdown each is joined, or aborted and then joined; none is left detached.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
pub use crate::config::MirrorKey;
use crate::config::{Leadership, MirrorConfig};
use crate::election::{Election, ElectionConfig, ElectionError, Notice, Role};
use crate::error::{MirrorError, StoreError};
use crate::mirror::{Mirror, MirrorHandle};
use crate::schema::status_field;
use crate::settings::{Overrides, Settings, SettingsError};
use crate::shutdown::{self, Shutdown};
use crate::status::Phase;
use crate::store::Store;

/// How long a mirror has to stop (let its last pipeline land, write `stopped`) before its task
/// is aborted.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A root whose heartbeat is older than this many heartbeat intervals makes its prefix's
/// aggregate `degraded` (5 s by default, `zkmirror status`'s default limit).
const STALE_HEARTBEATS: u32 = 5;

/// Messages on the control channel.
#[derive(Debug)]
pub enum Control {
    /// Read the settings again and apply what changed. `why` names the trigger for the log.
    Reload { why: &'static str },
    /// The targets registered in ZooKeeper now (`--targets-from`), sorted by name.
    Registered(Vec<crate::registry::Registration>),
}

// ---------------------------------------------------------------------------------------------
// The plan: what a reload must do, from the configs alone
// ---------------------------------------------------------------------------------------------

/// What it takes to go from one set of mirrors to another. Keys are listed in key order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// New (prefix, root) pairs: cold-synced.
    pub start: Vec<MirrorKey>,
    /// Pairs no longer configured.
    pub stop: Vec<Stop>,
    /// Pairs whose config changed (filter, timings, servers, sharing of the prefix): stopped,
    /// then started again; the first walk reconciles, so what a new filter excludes loses its
    /// keys. Their keys are never purged: the same prefix and root stay mirrored.
    pub restart: Vec<MirrorKey>,
    /// Pairs whose config is unchanged: left running.
    pub keep: Vec<MirrorKey>,
}

/// A mirror to stop, and whether its keys go with it.
#[derive(Debug, PartialEq, Eq)]
pub struct Stop {
    pub key: MirrorKey,
    /// Remove its keys once it stopped. False when a new mirror with the same prefix covers its
    /// root (the root or an ancestor of it): that mirror's first walk reconciles those keys,
    /// and purging them first would only blank what readers see meanwhile. False for every
    /// stop under `keep_keys_on_remove` ([`Plan::keeping_keys`]).
    pub purge: bool,
}

impl Plan {
    /// The plan under `keep_keys_on_remove = true`: stopped mirrors keep their keys.
    pub fn keeping_keys(mut self, keep: bool) -> Plan {
        if keep {
            for stop in &mut self.stop {
                stop.purge = false;
            }
        }
        self
    }

    /// Whether nothing starts, stops or restarts.
    pub fn changes_nothing(&self) -> bool {
        self.start.is_empty() && self.stop.is_empty() && self.restart.is_empty()
    }
}

/// Compares the running configs (`old`) with the wanted ones (`new`), mirror by (target,
/// prefix, root). Pure: it decides, [`Service::apply`] does. A changed prefix is a different
/// mirror: the old one stops (its keys purged unless covered), the new one starts. A target
/// that is gone takes nothing with it: its mirrors stop and its keys stay (an operator who drops
/// a regional Redis from the list, or a registration that vanished, has not asked for its data
/// to be deleted, and the copy stays readable there).
pub fn plan(old: &[MirrorConfig], new: &[MirrorConfig]) -> Plan {
    let old_by: BTreeMap<MirrorKey, &MirrorConfig> = old.iter().map(|c| (c.key(), c)).collect();
    let new_by: BTreeMap<MirrorKey, &MirrorConfig> = new.iter().map(|c| (c.key(), c)).collect();
    let mut plan = Plan::default();
    for (key, running) in &old_by {
        match new_by.get(key) {
            Some(wanted) if *wanted == *running => plan.keep.push(key.clone()),
            Some(_) => plan.restart.push(key.clone()),
            None => {
                let target_stays = new_by.keys().any(|n| n.target == key.target);
                let covered = new_by.keys().any(|n| {
                    n.target == key.target && n.prefix == key.prefix && crate::path::is_within(&key.root, &n.root)
                });
                plan.stop.push(Stop { key: key.clone(), purge: target_stays && !covered });
            }
        }
    }
    plan.start = new_by.keys().filter(|k| !old_by.contains_key(*k)).cloned().collect();
    plan
}

// ---------------------------------------------------------------------------------------------
// The outcome: what a reload did
// ---------------------------------------------------------------------------------------------

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    Unchanged,
    Applied(Applied),
    /// The new settings were invalid; the running ones stay.
    Rejected(String),
}

/// What an applied reload did. A mirror that failed to start is listed in `failed` only, never
/// as started or restarted; the next reload tries it again.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub started: Vec<MirrorKey>,
    pub stopped: Vec<MirrorKey>,
    pub restarted: Vec<MirrorKey>,
    /// What did not go as planned, each with why: a mirror that cannot start (not running
    /// now), one that did not stop in time (aborted), keys that could not be removed.
    pub failed: Vec<(MirrorKey, String)>,
}

impl Applied {
    /// Whether everything planned happened.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }
}

fn list(keys: &[MirrorKey]) -> String {
    keys.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

// ---------------------------------------------------------------------------------------------
// The running mirrors
// ---------------------------------------------------------------------------------------------

/// The handles of the running mirrors, shared with `/readyz`, the aggregate and the progress
/// reporter. A poisoned lock (a panic while it was held) still holds a valid list, so it is
/// read through: before, it read as "no root configured".
#[derive(Clone, Default)]
pub struct Observers {
    inner: Arc<Mutex<Vec<(MirrorKey, MirrorHandle)>>>,
}

impl Observers {
    pub fn snapshot(&self) -> Vec<(MirrorKey, MirrorHandle)> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn handles(&self) -> Vec<MirrorHandle> {
        self.snapshot().into_iter().map(|(_, h)| h).collect()
    }

    fn replace(&self, running: Vec<(MirrorKey, MirrorHandle)>) {
        *self.inner.lock().unwrap_or_else(PoisonError::into_inner) = running;
    }
}

struct Running {
    config: MirrorConfig,
    handle: MirrorHandle,
    task: JoinHandle<Result<(), MirrorError>>,
}

/// The mirrors of this process, keyed by (prefix, root).
pub struct Service {
    running: BTreeMap<MirrorKey, Running>,
    observers: Observers,
    /// Best-effort Redis chores of reloads (clearing what a shared prefix left behind): owned
    /// here, reaped as they end, aborted by [`Service::stop`].
    chores: JoinSet<()>,
    stop_grace: Duration,
    /// One ZooKeeper session, watch and read per root, shared by that root's targets.
    hubs: crate::zkhub::ZkHubs,
}

impl Service {
    pub fn new() -> Service {
        Service {
            running: BTreeMap::new(),
            observers: Observers::default(),
            chores: JoinSet::new(),
            stop_grace: STOP_GRACE,
            hubs: crate::zkhub::ZkHubs::default(),
        }
    }

    /// The handles of the running mirrors, for observers.
    pub fn observers(&self) -> Observers {
        self.observers.clone()
    }

    /// The configs of the running mirrors.
    pub fn configs(&self) -> Vec<MirrorConfig> {
        self.running.values().map(|r| r.config.clone()).collect()
    }

    /// Brings the running mirrors in line with `settings` ([`plan`]): stops first (and their
    /// purges), then restarts, then starts, so that no two mirrors of one (prefix, root) ever
    /// run together and a purge never races a new mirror's writes.
    pub async fn apply(&mut self, settings: &Settings) -> ReloadOutcome {
        while self.chores.try_join_next().is_some() {}
        let plan = plan(&self.configs(), &settings.mirrors).keeping_keys(settings.keep_keys_on_remove);
        if plan.changes_nothing() {
            return ReloadOutcome::Unchanged;
        }
        let wanted: BTreeMap<MirrorKey, &MirrorConfig> = settings.mirrors.iter().map(|c| (c.key(), c)).collect();
        let mut applied = Applied::default();
        // Every mirror to stop (removed or restarted) is asked at once and awaited together:
        // a mirror slow to stop (its Redis hangs, and its last `stopped` write waits out its
        // timeout) delays no other mirror's stop or start beyond its own.
        let stopping: Vec<MirrorKey> =
            plan.stop.iter().map(|s| s.key.clone()).chain(plan.restart.iter().cloned()).collect();
        let stopped = self.stop_many(&stopping, &mut applied).await;
        // A root none of whose targets runs any more closes its session now.
        self.hubs.reap().await;
        for stop in plan.stop {
            if let Some(config) = stopped.get(&stop.key) {
                if stop.purge {
                    if let Err(e) = purge(config).await {
                        applied.failed.push((stop.key.clone(), format!("its keys could not be removed: {e}")));
                    }
                }
            }
            applied.stopped.push(stop.key);
        }
        for key in plan.restart {
            if let Some(config) = wanted.get(&key) {
                match self.start_one((*config).clone()) {
                    Ok(()) => applied.restarted.push(key),
                    Err(e) => applied.failed.push((key, format!("cannot start: {e}"))),
                }
            }
        }
        for key in plan.start {
            if let Some(config) = wanted.get(&key) {
                match self.start_one((*config).clone()) {
                    Ok(()) => applied.started.push(key),
                    Err(e) => applied.failed.push((key, format!("cannot start: {e}"))),
                }
            }
        }
        self.publish();
        ReloadOutcome::Applied(applied)
    }

    fn start_one(&mut self, config: MirrorConfig) -> Result<(), MirrorError> {
        let mirror = Mirror::new(config.clone())?.with_feed(self.hubs.subscribe(&config));
        if !config.shared_prefix {
            self.chores.spawn(forget_shared_status(config.clone()));
        }
        let handle = mirror.handle();
        let task = tokio::spawn(mirror.run());
        self.running.insert(config.key(), Running { config, handle, task });
        Ok(())
    }

    /// Stops one mirror and waits for its task; returns its config if it was running.
    /// Stops these mirrors, all asked at once and awaited together (each aborted past the
    /// grace), and gives back the configs of those that were running.
    async fn stop_many(&mut self, keys: &[MirrorKey], applied: &mut Applied) -> BTreeMap<MirrorKey, MirrorConfig> {
        let running: Vec<(MirrorKey, Running)> =
            keys.iter().filter_map(|key| self.running.remove(key).map(|r| (key.clone(), r))).collect();
        for (_, r) in &running {
            r.handle.stop();
        }
        let grace = self.stop_grace;
        let ends = futures::future::join_all(running.into_iter().map(|(key, r)| async move {
            let end = stop_task(r.task, grace).await;
            (key, r.config, end)
        }))
        .await;
        let mut configs = BTreeMap::new();
        for (key, config, end) in ends {
            if let Some(problem) = report_end(&key, end, grace) {
                applied.failed.push((key.clone(), problem));
            }
            configs.insert(key, config);
        }
        configs
    }

    fn publish(&self) {
        self.observers.replace(self.running.iter().map(|(k, r)| (k.clone(), r.handle.clone())).collect());
    }

    /// A mirror whose task ended on its own (only a fatal error does that), if any.
    async fn reap_failed(&mut self) -> Option<(MirrorKey, MirrorError)> {
        while self.chores.try_join_next().is_some() {}
        let finished: Vec<MirrorKey> =
            self.running.iter().filter(|(_, r)| r.task.is_finished()).map(|(k, _)| k.clone()).collect();
        if !finished.is_empty() {
            // A root whose last target ended closes its session too.
            self.hubs.reap().await;
        }
        for key in finished {
            if let Some(running) = self.running.remove(&key) {
                self.publish();
                match running.task.await {
                    Ok(Err(e)) => return Some((key, e)),
                    Ok(Ok(())) => {}
                    Err(e) => error!(mirror = %key, error = %e, "mirror task panicked"),
                }
            }
        }
        None
    }

    /// Stops every mirror (all asked at once, then each awaited, aborted past the grace) and
    /// ends the chores.
    pub async fn stop(mut self) {
        self.stop_all().await;
        self.chores.shutdown().await;
    }

    /// Stops every mirror at once, as [`Service::stop`], and stays usable: a leader that lost
    /// its leadership stops all its mirrors and may start them again when it leads again.
    pub async fn stop_all(&mut self) {
        let running = std::mem::take(&mut self.running);
        self.publish();
        for r in running.values() {
            r.handle.stop();
        }
        let grace = self.stop_grace;
        let ends = running.into_iter().map(|(key, r)| async move {
            let end = stop_task(r.task, grace).await;
            report_end(&key, end, grace);
        });
        futures::future::join_all(ends).await;
        self.hubs.stop().await;
        // The chores write to Redis (clearing a shared prefix's leftovers): not once stopped.
        self.chores.abort_all();
        while self.chores.join_next().await.is_some() {}
    }
}

impl Default for Service {
    fn default() -> Self {
        Service::new()
    }
}

/// How a task ended when asked to stop.
#[derive(Debug)]
enum Ended<T> {
    Returned(T),
    Panicked(String),
    /// It did not end within the grace period and was aborted (and has ended since).
    Aborted,
}

/// Waits `grace` for `task` to end; past it aborts the task and waits until it has ended. An
/// abandoned handle would leave the old engine writing while its replacement starts.
async fn stop_task<T>(mut task: JoinHandle<T>, grace: Duration) -> Ended<T> {
    match tokio::time::timeout(grace, &mut task).await {
        Ok(Ok(value)) => Ended::Returned(value),
        Ok(Err(e)) => Ended::Panicked(e.to_string()),
        Err(_) => {
            task.abort();
            match task.await {
                // It ended by itself between the timeout and the abort.
                Ok(value) => Ended::Returned(value),
                Err(e) if e.is_panic() => Ended::Panicked(e.to_string()),
                Err(_) => Ended::Aborted,
            }
        }
    }
}

/// Logs how a mirror ended; returns the problem, if any, for the reload's outcome.
fn report_end(key: &MirrorKey, end: Ended<Result<(), MirrorError>>, grace: Duration) -> Option<String> {
    match end {
        Ended::Returned(Ok(())) => None,
        Ended::Returned(Err(e)) => {
            warn!(mirror = %key, error = %e, "mirror ended with an error");
            None
        }
        Ended::Panicked(e) => {
            error!(mirror = %key, error = %e, "mirror task panicked");
            Some(format!("its task panicked: {e}"))
        }
        Ended::Aborted => {
            warn!(mirror = %key, "mirror did not stop within {grace:?}: aborted");
            Some(format!("did not stop within {grace:?}: aborted"))
        }
    }
}

async fn purge(config: &MirrorConfig) -> Result<u64, StoreError> {
    let store = Store::new(config)?;
    let n = store.purge(&config.root).await?;
    info!(root = %config.root, prefix = %config.prefix, znodes = n, "root no longer mirrored: its keys were removed");
    Ok(n)
}

/// A root whose prefix is not shared (any more) writes `P:mirror` itself: the `roots` field an
/// aggregate left there and the root's own `P:mirror:{ROOT}` would only mislead readers
/// (`zkmirror status` reports every root an aggregate lists). Best effort: a Redis that is down
/// now is a problem the mirror itself reports.
async fn forget_shared_status(config: MirrorConfig) {
    let Ok(store) = Store::new(&config) else { return };
    let keys = store.keys().clone();
    let mut stale_roots = redis::cmd("HDEL");
    stale_roots.arg(keys.status()).arg(status_field::ROOTS);
    let mut stale_status = redis::cmd("DEL");
    stale_status.arg(keys.root_status(&config.root));
    for cmd in [stale_roots, stale_status] {
        if let Err(e) = store.query(&cmd).await {
            debug!(root = %config.root, error = %e, "cannot clear the status a shared prefix left behind");
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What Redis must promise: no eviction
// ---------------------------------------------------------------------------------------------

/// Why a `maxmemory-policy` endangers the copy, or `None` for `noeviction`.
pub fn eviction_risk(policy: &str) -> Option<&'static str> {
    match policy {
        "noeviction" => None,
        p if p.starts_with("volatile-") => Some(
            "under memory pressure Redis evicts keys that have a TTL, and the mirror's only such keys are \
             its tombstones: a late write of a deleted znode then finds no tombstone and brings it back",
        ),
        p if p.starts_with("allkeys-") => Some(
            "under memory pressure Redis evicts any key, so a znode's data, meta and children can be torn apart \
             (a reader finds data without meta, or the reverse) and deleted znodes can come back",
        ),
        _ => Some("it is not noeviction, the only policy under which Redis never drops the mirror's keys"),
    }
}

/// What [`check_eviction_policy`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum PolicyCheck {
    /// `maxmemory-policy` is `noeviction`.
    Safe,
    /// Another policy, and why it is a risk.
    Risky { policy: String, why: &'static str },
    /// Redis refused to say (an ACL user without `INFO`, a managed Redis that forbids it).
    Unknown(String),
}

/// Asks Redis for its `maxmemory-policy`, from `INFO memory` (its `maxmemory_policy` line),
/// on every primary (each node of a cluster has its own), each answer with the node's address.
/// Not `CONFIG GET`: the mirror's least-privilege ACL user (`schema/redis-acl.conf`) has no
/// `CONFIG`, which would also show it `requirepass` and `masterauth`, and managed Redis often
/// renames or forbids it; `INFO` tells the policy and nothing secret. A node's `Err`: it could
/// not be reached (ask it again later); a refusal is [`PolicyCheck::Unknown`]. `Err` for the
/// whole call: not even a cluster's slot map could be read.
pub async fn check_eviction_policy(
    config: &MirrorConfig,
) -> Result<Vec<(String, Result<PolicyCheck, StoreError>)>, StoreError> {
    let store = Store::new(config)?;
    let mut cmd = redis::cmd("INFO");
    cmd.arg("memory");
    let mut checks = Vec::new();
    for (node, answer) in store.query_each_primary(&cmd).await? {
        let answer = match answer {
            Ok(answer) => answer,
            Err(StoreError::Redis { source, .. })
                if matches!(source.kind(), redis::ErrorKind::Server(_) | redis::ErrorKind::Extension) =>
            {
                checks.push((node, Ok(PolicyCheck::Unknown(source.to_string()))));
                continue;
            }
            Err(e @ StoreError::Denied { .. }) => {
                checks.push((node, Ok(PolicyCheck::Unknown(e.to_string()))));
                continue;
            }
            Err(e) => {
                checks.push((node, Err(e)));
                continue;
            }
        };
        let text: String = redis::from_redis_value(answer).unwrap_or_default();
        let check = match info_field(&text, "maxmemory_policy") {
            None => PolicyCheck::Unknown("INFO memory shows no maxmemory_policy".to_owned()),
            Some(policy) => match eviction_risk(policy) {
                None => PolicyCheck::Safe,
                Some(why) => PolicyCheck::Risky { policy: policy.to_owned(), why },
            },
        };
        checks.push((node, Ok(check)));
    }
    Ok(checks)
}

/// The value of `field` in an `INFO` answer (`field:value` lines).
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| line.trim_end().strip_prefix(field)?.strip_prefix(':'))
}

/// Logs one node's verdict: a warning for a policy that may evict the mirror's keys.
fn log_policy(server: &str, node: &str, check: PolicyCheck) {
    match check {
        PolicyCheck::Safe => {
            info!(redis = %server, %node, "Redis's maxmemory-policy is noeviction on {node}: it never evicts the mirror's keys")
        }
        PolicyCheck::Risky { policy, why } => warn!(redis = %server, %node,
            "Redis's maxmemory-policy is {policy}, not noeviction, on {node}: {why}; set `maxmemory-policy noeviction` \
             (see \"What Redis must promise\" in schema/layout.md)"),
        PolicyCheck::Unknown(why) => {
            debug!(redis = %server, %node, %why, "cannot read Redis's maxmemory-policy on {node}; not checked there")
        }
    }
}

/// Checks the policy of the Redis `config` names (each primary of a cluster), asking a node
/// again while it cannot be reached, and logs each node's verdict once: a warning for a policy
/// that may evict the mirror's keys.
async fn warn_about_eviction(config: MirrorConfig, mut shutdown: Shutdown) {
    let server = crate::config::mask_url(&config.redis_url);
    let mut backoff = Backoff::between(Duration::from_secs(1), Duration::from_secs(60));
    let mut judged: HashSet<String> = HashSet::new();
    loop {
        match check_eviction_policy(&config).await {
            Ok(checks) => {
                let mut pending = false;
                for (node, check) in checks {
                    if judged.contains(&node) {
                        continue;
                    }
                    match check {
                        Ok(check) => {
                            log_policy(&server, &node, check);
                            judged.insert(node);
                        }
                        Err(e) => {
                            debug!(redis = %server, %node, error = %e, "cannot check Redis's maxmemory-policy on {node} yet; retrying");
                            pending = true;
                        }
                    }
                }
                if !pending {
                    return;
                }
            }
            Err(e) => debug!(redis = %server, error = %e, "cannot check Redis's maxmemory-policy yet; retrying"),
        }
        tokio::select! {
            _ = shutdown.fired() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------------------------

/// Runs the daemon until `shutdown` fires or a mirror fails for good (rejected credentials).
///
/// With `[ha]` (`--ha PATH`) the process starts only the election: the mirrors run while it
/// leads (each config carrying its [`Leadership`]), and all stop at once when it no longer
/// does. Reloads apply in both roles: a standby keeps the new settings for when it leads.
pub async fn run(file: Option<PathBuf>, overrides: Overrides, mut shutdown: Shutdown) -> Result<(), RunError> {
    // Listen for SIGHUP first: until a handler exists, SIGHUP would terminate the process.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let mut settings = Settings::load(file.as_deref(), &overrides)?;
    let metrics_addr = settings.metrics_addr;
    let ha = settings.ha.clone();
    let (control_tx, mut control_rx) = mpsc::channel::<Control>(16);
    let mut service = Service::new();
    // Everything but the mirrors and the aggregate: each ends when `background_stop` fires (or
    // its input ends), and is aborted if it does not.
    let mut background: JoinSet<()> = JoinSet::new();
    let (background_stop, background_shutdown) = shutdown::channel();
    let (role_tx, role_rx) = watch::channel(Role::Standby);

    if let Some(addr) = settings.metrics_addr {
        let prometheus = crate::observe::install_prometheus().map_err(RunError::Metrics)?;
        let observers = service.observers();
        let readiness = match &ha {
            None => crate::observe::readiness_of(move || observers.handles()),
            Some(ha) => {
                crate::observe::ha_readiness_of(move || observers.handles(), role_rx.clone(), ha.instance.clone())
            }
        };
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| RunError::Listen(addr, e))?;
        let stop = background_shutdown.clone();
        background.spawn(async move {
            if let Err(e) = crate::observe::serve(listener, prometheus, readiness, stop).await {
                error!(%addr, error = %e, "metrics endpoint failed");
            }
        });
    }
    let mut watcher =
        FileWatch::start(file.as_deref(), &settings.watched_files(), control_tx.clone(), &mut background)?;
    background.spawn(forward_sighup(hangups, control_tx.clone(), background_shutdown.clone()));
    background.spawn(report_progress(service.observers(), background_shutdown.clone()));
    let mut policy_checked: BTreeSet<String> = BTreeSet::new();
    let mut check_policies = |mirrors: &[MirrorConfig], background: &mut JoinSet<()>| {
        for m in mirrors {
            if policy_checked.insert(m.redis_url.clone()) {
                background.spawn(warn_about_eviction(m.clone(), background_shutdown.clone()));
            }
        }
    };
    check_policies(&settings.mirrors, &mut background);
    let started_at = now_ms();
    let observers = service.observers();
    let aggregate = |mirrors: &[MirrorConfig]| {
        let (stop, stopped) = shutdown::channel();
        Aggregator {
            stop,
            task: tokio::spawn(aggregate_shared_status(observers.clone(), mirrors.to_vec(), started_at, stopped)),
        }
    };

    // The election, with --ha; the mirrors and the aggregate run only while it leads.
    let (notice_tx, mut notice_rx) = mpsc::channel::<Notice>(4);
    let (step_down_tx, step_down_rx) = mpsc::channel::<String>(4);
    let (election_stop, election_shutdown) = shutdown::channel();
    let mut election: Option<JoinHandle<Result<(), ElectionError>>> = None;
    let mut leading: Option<Leadership> = None;
    let mut leader_metrics = ha.as_ref().map(|ha| crate::observe::LeaderMetrics::new(&ha.instance));
    let mut aggregator: Option<Aggregator> = None;
    // How the election and the registry reach ZooKeeper, updated by reloads (new TLS files,
    // credentials): each new session of theirs uses the latest.
    let (zk_tx, zk_rx) = watch::channel(settings.zk_connect().unwrap_or_else(|| crate::zk::ZkConnect::new("")));
    // The targets registered in ZooKeeper, as last read (empty without --targets-from).
    let mut registrations: Vec<crate::registry::Registration> = Vec::new();
    if let Some(path) = settings.targets_from.clone() {
        info!(registry = %path, "reading the Redis targets registered under {path}");
        let tx = control_tx.clone();
        let send = move |found| {
            let tx = tx.clone();
            async move { tx.send(Control::Registered(found)).await.is_ok() }
        };
        background.spawn(crate::registry::watch(zk_rx.clone(), path, send, background_shutdown.clone()));
    }
    match &ha {
        Some(ha) => {
            info!(election = %ha.path, instance = %ha.instance, "high availability: standing by until elected");
            let zk = zk_rx.clone();
            let config = ElectionConfig { zk, path: ha.path.clone(), instance: ha.instance.clone() };
            let contender = Election::new(config, notice_tx.clone(), step_down_rx, role_tx, election_shutdown);
            election = Some(tokio::spawn(contender.run()));
        }
        None => {
            let wanted = wanted(&settings, &registrations, None);
            aggregator = Some(aggregate(&wanted.mirrors));
            log_outcome(&service.apply(&wanted).await);
        }
    }
    drop(notice_tx);

    let mut reap = tokio::time::interval(Duration::from_millis(500));
    let result = loop {
        tokio::select! {
            _ = shutdown.fired() => break Ok(()),
            Some(control) = control_rx.recv() => match control {
                Control::Reload { why } => {
                    info!(trigger = why, "reloading settings");
                    let outcome = match Settings::load(file.as_deref(), &overrides) {
                        // The registry's task and its templates are the start's: a reload that
                        // moved or dropped it would stop every registered target while the task
                        // still reads the old path. Refused whole; the running settings stay.
                        Ok(new) if new.targets_from != settings.targets_from => ReloadOutcome::Rejected(format!(
                            "targets_from changed ({:?} to {:?}): it is read at start only, restart zkmirror to apply it",
                            settings.targets_from, new.targets_from
                        )),
                        Ok(new) => {
                            if new.metrics_addr != metrics_addr {
                                warn!("[metrics] addr is read at start only: restart zkmirror to serve it elsewhere");
                            }
                            if new.ha != ha {
                                warn!("[ha] is read at start only: restart zkmirror to compete elsewhere or under another name");
                            }
                            check_policies(&new.mirrors, &mut background);
                            watcher.follow(&new.watched_files());
                            if let Some(zk) = new.zk_connect() {
                                zk_tx.send_if_modified(|current| {
                                    let changed = *current != zk;
                                    if changed && (ha.is_some() || settings.targets_from.is_some()) {
                                        info!("reload: the next ZooKeeper session of the election and the registry uses the new settings");
                                    }
                                    if changed {
                                        *current = zk;
                                    }
                                    changed
                                });
                            }
                            settings = new;
                            if ha.is_some() && leading.is_none() {
                                info!("reload: standing by; the new settings apply once this instance leads");
                                ReloadOutcome::Unchanged
                            } else {
                                // One aggregator, for the new set of roots; the old one must not
                                // write while mirrors stop and start.
                                if let Some(old) = aggregator.take() {
                                    old.abort().await;
                                }
                                let led = wanted(&settings, &registrations, leading.as_ref());
                                let outcome = service.apply(&led).await;
                                // The aggregate carries the leadership too: it names the leader
                                // and its writes are fenced like the mirrors'.
                                aggregator = Some(aggregate(&led.mirrors));
                                outcome
                            }
                        }
                        Err(e) => ReloadOutcome::Rejected(e.to_string()),
                    };
                    log_outcome(&outcome);
                }
                Control::Registered(found) => {
                    registrations = found;
                    if ha.is_some() && leading.is_none() {
                        continue; // applied once this instance leads
                    }
                    if let Some(old) = aggregator.take() {
                        old.abort().await;
                    }
                    let led = wanted(&settings, &registrations, leading.as_ref());
                    check_policies(&led.mirrors, &mut background);
                    log_outcome(&service.apply(&led).await);
                    aggregator = Some(aggregate(&led.mirrors));
                }
            },
            Some(notice) = notice_rx.recv() => match notice {
                Notice::Leading(leadership) => {
                    info!(instance = %leadership.instance, fence = leadership.fence, "elected leader: starting the mirrors");
                    leading = Some(leadership);
                    if let Some(m) = leader_metrics.as_mut() {
                        m.leading();
                    }
                    let led = wanted(&settings, &registrations, leading.as_ref());
                    log_outcome(&service.apply(&led).await);
                    aggregator = Some(aggregate(&led.mirrors));
                }
                Notice::NotLeading { why, stopped } => {
                    // Stopped without a last word: a deposed leader must not write even
                    // `stopped` over its successor's status.
                    if let Some(old) = aggregator.take() {
                        old.abort().await;
                    }
                    service.stop_all().await;
                    leading = None;
                    if let Some(m) = leader_metrics.as_mut() {
                        m.standing_by();
                    }
                    warn!(reason = %why, "no longer the leader: every mirror is stopped; standing by");
                    let _ = stopped.send(());
                }
            },
            ended = async {
                match election.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            }, if election.is_some() => {
                election = None;
                match ended {
                    Ok(Ok(())) => break Ok(()),
                    Ok(Err(e)) => break Err(RunError::Election(e)),
                    Err(e) => break Err(RunError::Election(ElectionError::Path { path: ha.as_ref().map(|h| h.path.clone()).unwrap_or_default(), why: format!("the election task panicked: {e}") })),
                }
            }
            _ = reap.tick() => {
                // A finished background task (the endpoint failed, a check is done) is reaped.
                while background.try_join_next().is_some() {}
                if let Some(m) = leader_metrics.as_ref() {
                    m.tick();
                }
                if let Some((key, e)) = service.reap_failed().await {
                    if ha.is_some() && matches!(e, MirrorError::Deposed { .. }) {
                        // The election stops every mirror (a Notice follows) and competes again.
                        let _ = step_down_tx.try_send(format!("mirror of {key}: {e}"));
                        continue;
                    }
                    break Err(RunError::Mirror(key.to_string(), e));
                }
            }
        }
    };
    service.stop().await;
    // After the mirrors: the aggregate says `stopped` too.
    if let Some(aggregator) = aggregator.take() {
        aggregator.stop().await;
    }
    // Only now resign: a standby must not start while this leader's mirrors still write.
    election_stop.fire();
    if let Some(mut task) = election.take() {
        if tokio::time::timeout(Duration::from_secs(5), &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
    }
    background_stop.fire();
    drop(watcher); // ends the debounce task: its channel closes
    let joined =
        tokio::time::timeout(Duration::from_secs(5), async { while background.join_next().await.is_some() {} }).await;
    if joined.is_err() {
        background.shutdown().await;
    }
    result
}

/// The running aggregate of shared prefixes (see [`aggregate_shared_status`]).
struct Aggregator {
    stop: shutdown::ShutdownTrigger,
    task: JoinHandle<()>,
}

impl Aggregator {
    /// Asks it to write `stopped` and end; aborts it past 5 s.
    async fn stop(mut self) {
        self.stop.fire();
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task).await.is_err() {
            self.abort().await;
        }
    }

    /// Ends it without a last write.
    async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// The mirrors to run: the settings' own and those of the registered targets, each carrying
/// `leadership` (with --ha, while leading). A registration that cannot be used is logged.
fn wanted(
    settings: &Settings,
    registrations: &[crate::registry::Registration],
    leadership: Option<&Leadership>,
) -> Settings {
    let mut settings = settings.clone();
    let (registered, refused) = settings.registered(registrations);
    let registry = settings.targets_from.as_deref().unwrap_or("").trim_end_matches('/');
    for (name, why) in refused {
        warn!(error = %format!("registration {registry}/{name}: {why}"), "registration left out");
    }
    settings.mirrors.extend(registered);
    for m in &mut settings.mirrors {
        m.leadership = leadership.cloned();
    }
    settings
}

fn log_outcome(outcome: &ReloadOutcome) {
    match outcome {
        ReloadOutcome::Unchanged => info!("reload: nothing changed"),
        ReloadOutcome::Applied(a) => {
            let (started, stopped, restarted) = (list(&a.started), list(&a.stopped), list(&a.restarted));
            if a.is_complete() {
                info!(%started, %stopped, %restarted, "reload applied");
            } else {
                let failed: Vec<String> = a.failed.iter().map(|(k, why)| format!("{k}: {why}")).collect();
                error!(%started, %stopped, %restarted, failed = %failed.join("; "), "reload applied in part");
            }
        }
        ReloadOutcome::Rejected(why) => error!("reload rejected, the running configuration stays: {why}"),
    }
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(String),
    #[error("cannot listen on {0} for metrics: {1}")]
    Listen(std::net::SocketAddr, std::io::Error),
    #[error("cannot watch the config file {0}: {1}")]
    Watch(PathBuf, notify::Error),
    #[error("mirror of {0} stopped: {1}")]
    Mirror(String, MirrorError),
    #[error(transparent)]
    Election(#[from] ElectionError),
}

/// Watches the config file and every file its settings read (TLS certificates and keys,
/// credentials: [`Settings::watched_files`]) and sends a reload when one changes, after a short
/// quiet period so one save is one reload. Each file's folder is watched, not the file:
/// editors and `mv` replace files rather than write them, and a Kubernetes secret volume swaps
/// its `..data` link, which counts as a change of every file in the folder. The debounce task
/// ends when the watch is dropped.
struct FileWatch {
    watcher: notify::RecommendedWatcher,
    /// The file names that count, by folder.
    watched: std::sync::Arc<std::sync::Mutex<BTreeMap<PathBuf, BTreeSet<std::ffi::OsString>>>>,
    config: Option<PathBuf>,
}

impl FileWatch {
    fn start(
        config: Option<&Path>,
        files: &[PathBuf],
        control: mpsc::Sender<Control>,
        tasks: &mut JoinSet<()>,
    ) -> Result<FileWatch, RunError> {
        let watched: std::sync::Arc<std::sync::Mutex<BTreeMap<PathBuf, BTreeSet<std::ffi::OsString>>>> =
            Default::default();
        let seen = watched.clone();
        // Capacity 1: a pending "something changed" is all the debounce needs (bounded memory
        // however fast the files change).
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            let watched = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let ours = event.paths.iter().any(|p| {
                let name = p.file_name();
                watched
                    .values()
                    .any(|names| name.is_some_and(|n| names.contains(n) || (n == "..data" && !names.is_empty())))
            });
            if ours {
                let _ = tx.try_send(());
            }
        })
        .map_err(|e| RunError::Watch(config.map_or_else(|| PathBuf::from("."), Path::to_owned), e))?;
        tasks.spawn(async move {
            while rx.recv().await.is_some() {
                // Debounce: wait until the files have been quiet for 200 ms.
                while let Ok(Some(())) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {}
                if control.send(Control::Reload { why: "a watched file changed" }).await.is_err() {
                    return;
                }
            }
        });
        let mut watch = FileWatch { watcher, watched, config: config.map(Path::to_owned) };
        if let Some(config) = config {
            watch.add(config).map_err(|e| RunError::Watch(config.to_owned(), e))?;
        }
        watch.follow(files);
        Ok(watch)
    }

    /// Watches these files (besides the config file) from now on, instead of the previous ones.
    fn follow(&mut self, files: &[PathBuf]) {
        use notify::Watcher;
        let old: Vec<PathBuf> = self.lock().keys().cloned().collect();
        self.lock().clear();
        if let Some(config) = self.config.clone() {
            let _ = self.note(&config);
        }
        for file in files {
            let _ = self.note(file);
        }
        let now: BTreeSet<PathBuf> = self.lock().keys().cloned().collect();
        for folder in old.iter().filter(|f| !now.contains(*f)) {
            let _ = self.watcher.unwatch(folder);
        }
        for folder in now.iter().filter(|f| !old.contains(f)) {
            if let Err(e) = self.watcher.watch(folder, notify::RecursiveMode::NonRecursive) {
                warn!(folder = %folder.display(), error = %e, "cannot watch the folder of a TLS or credentials file: reload with SIGHUP after changing it");
            }
        }
    }

    fn add(&mut self, file: &Path) -> Result<(), notify::Error> {
        use notify::Watcher;
        let folder = self.note(file);
        self.watcher.watch(&folder, notify::RecursiveMode::NonRecursive)
    }

    /// Records the file's name under its folder; returns the folder.
    fn note(&self, file: &Path) -> PathBuf {
        let folder = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned();
        if let Some(name) = file.file_name() {
            self.lock().entry(folder.clone()).or_default().insert(name.to_owned());
        }
        folder
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, BTreeSet<std::ffi::OsString>>> {
        self.watched.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

async fn forward_sighup(
    hangups: std::io::Result<tokio::signal::unix::Signal>,
    control: mpsc::Sender<Control>,
    mut shutdown: Shutdown,
) {
    let Ok(mut hangups) = hangups else {
        warn!("cannot listen for SIGHUP; reload by editing the config file instead");
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.fired() => return,
            hangup = hangups.recv() => {
                if hangup.is_none() || control.send(Control::Reload { why: "SIGHUP" }).await.is_err() {
                    return;
                }
            }
        }
    }
}

use crate::clock::unix_ms as now_ms;

// ---------------------------------------------------------------------------------------------
// The aggregate status of shared prefixes
// ---------------------------------------------------------------------------------------------

/// What one root of a shared prefix contributes to the aggregate: its phase (in process) and
/// its own status hash's `zxid` and `heartbeat` (as read from Redis).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RootReport {
    phase: Phase,
    zxid: Option<i64>,
    heartbeat: Option<u64>,
}

/// The fields of a shared prefix's `P:mirror`, or `None` while a root is (re)starting (`None`
/// in `reports`): no aggregate without every root.
///
/// - `zxid`: the lowest of the roots' own `zxid` *as stored in Redis* (absent counts as 0).
///   Each root's own `zxid` is its claim about the keys and survives restarts; the lowest is
///   true for every root. (The in-process counters it came from before restart at 0, so the
///   aggregate dropped to 0 on every restart; carrying them over would not survive a process
///   restart, and could only repeat what Redis holds.) A root's value only grows between the
///   read and the write, so the aggregate never claims more than any root has applied.
/// - `heartbeat`: the oldest of the roots' heartbeats: a wedged root does not hide behind a
///   fresh aggregate. Left out (not refreshed) while a root has none.
/// - `state`: the worst of the roots' phases, and at least `degraded` while a root's heartbeat
///   is older than `stale_after_ms` or absent.
fn aggregate_fields(
    roots: &[&str],
    reports: &[Option<RootReport>],
    now_ms: u64,
    stale_after_ms: u64,
    started_at: &str,
) -> Option<Vec<(&'static str, String)>> {
    let reports: Vec<RootReport> = reports.iter().copied().collect::<Option<_>>()?;
    let mut worst = reports.iter().map(|r| r.phase).max_by_key(|p| phase_rank(*p)).unwrap_or(Phase::Syncing);
    let stale = reports.iter().any(|r| r.heartbeat.is_none_or(|h| now_ms.saturating_sub(h) > stale_after_ms));
    if stale && phase_rank(worst) < phase_rank(Phase::Degraded) {
        worst = Phase::Degraded;
    }
    let zxid = reports.iter().map(|r| r.zxid.unwrap_or(0)).min().unwrap_or(0);
    let heartbeat = reports.iter().map(|r| r.heartbeat).collect::<Option<Vec<u64>>>().and_then(|h| h.into_iter().min());
    let mut fields = vec![(status_field::STATE, worst.as_str().to_owned()), (status_field::ZXID, zxid.to_string())];
    if let Some(heartbeat) = heartbeat {
        fields.push((status_field::HEARTBEAT, heartbeat.to_string()));
    }
    fields.extend([
        (status_field::ROOTS, roots.join(",")),
        (status_field::ROOT, roots.join(",")),
        (status_field::STARTED_AT, started_at.to_owned()),
        (status_field::VERSION, env!("CARGO_PKG_VERSION").to_owned()),
    ]);
    Some(fields)
}

/// Reads `zxid` and `heartbeat` of a root's own status hash.
async fn read_root_status(store: &Store, root: &str) -> Result<(Option<i64>, Option<u64>), StoreError> {
    let mut cmd = redis::cmd("HMGET");
    cmd.arg(store.keys().root_status(root)).arg(status_field::ZXID).arg(status_field::HEARTBEAT);
    let answer = store.query(&cmd).await?;
    let fields: Vec<Option<String>> = redis::from_redis_value(answer).unwrap_or_default();
    let field = |i: usize| fields.get(i).cloned().flatten();
    Ok((field(0).and_then(|z| z.parse().ok()), field(1).and_then(|h| h.parse().ok())))
}

/// For prefixes shared by several roots, `P:mirror` is the aggregate ([`aggregate_fields`]);
/// each root's own status is in `P:mirror:{ROOT}`. One runs at a time: a reload aborts it and
/// starts one for the new set of roots. When `stop` fires (after the mirrors stopped) it writes
/// `stopped` once more and ends.
async fn aggregate_shared_status(
    observers: Observers,
    mirrors: Vec<MirrorConfig>,
    started_at: u64,
    mut stop: Shutdown,
) {
    let mut by_prefix: BTreeMap<(&str, &str), Vec<&MirrorConfig>> = BTreeMap::new();
    for m in mirrors.iter().filter(|m| m.shared_prefix) {
        by_prefix.entry((m.target.as_str(), m.prefix.as_str())).or_default().push(m);
    }
    let mut groups: Vec<AggregateGroup<'_>> = by_prefix
        .iter()
        .filter_map(|((target, _), group)| {
            let stale_after =
                group.iter().map(|m| m.heartbeat_interval).max().unwrap_or(Duration::from_secs(1)) * STALE_HEARTBEATS;
            Store::new(group[0]).ok().map(|store| AggregateGroup {
                target,
                store,
                roots: group.iter().map(|m| m.root.as_str()).collect(),
                stale_after_ms: stale_after.as_millis() as u64,
                leadership: group[0].leadership.as_ref(),
                failing: false,
            })
        })
        .collect();
    let started_at = started_at.to_string();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let stopping = tokio::select! {
            _ = stop.fired() => true,
            _ = tick.tick() => false,
        };
        let snapshot = observers.snapshot();
        // Each (target, prefix) at once: a Redis that is down or slow (each command may wait
        // for its timeouts) must not hold back the aggregate of another target.
        futures::future::join_all(groups.iter_mut().map(|g| g.write(&snapshot, stopping, &started_at))).await;
        if stopping {
            return;
        }
    }
}

/// The roots sharing one prefix in one target, whose aggregate `P:mirror` one task writes.
struct AggregateGroup<'a> {
    target: &'a str,
    store: Store,
    roots: Vec<&'a str>,
    stale_after_ms: u64,
    leadership: Option<&'a crate::config::Leadership>,
    /// Whether the last write failed: a failure is logged once per outage.
    failing: bool,
}

impl AggregateGroup<'_> {
    async fn write(&mut self, snapshot: &[(MirrorKey, MirrorHandle)], stopping: bool, started_at: &str) {
        let prefix = self.store.keys().prefix().to_owned();
        let fields = if stopping {
            Ok(Some(vec![
                (status_field::STATE, Phase::Stopped.as_str().to_owned()),
                (status_field::HEARTBEAT, now_ms().to_string()),
            ]))
        } else {
            let mut reports = Vec::with_capacity(self.roots.len());
            let mut read = Ok(());
            for root in &self.roots {
                let phase = snapshot
                    .iter()
                    .find(|(k, _)| k.target == self.target && k.prefix == prefix && k.root == *root)
                    .map(|(_, h)| h.status().phase);
                match read_root_status(&self.store, root).await {
                    Ok((zxid, heartbeat)) => reports.push(phase.map(|phase| RootReport { phase, zxid, heartbeat })),
                    Err(e) => {
                        read = Err(e);
                        break;
                    }
                }
            }
            read.map(|()| aggregate_fields(&self.roots, &reports, now_ms(), self.stale_after_ms, started_at))
        };
        let written = match fields {
            Ok(Some(mut fields)) => {
                if let Some(leadership) = self.leadership {
                    // The aggregate names the leader too, and a deposed one's is refused.
                    fields.push((status_field::LEADER, leadership.instance.clone()));
                    fields.push((status_field::LEADER_SINCE, leadership.since_ms.to_string()));
                    fields.push((status_field::FENCE, leadership.fence.to_string()));
                }
                self.store.write_aggregate_status(&fields).await
            }
            Ok(None) => Ok(()), // a root is (re)starting: no aggregate without it
            Err(e) => Err(e),
        };
        match written {
            Ok(()) if self.failing => {
                self.failing = false;
                info!(%prefix, target = %self.target, "the aggregate status is written again");
            }
            Ok(()) => {}
            // Once per outage: the mirrors report Redis themselves.
            Err(e) if !self.failing => {
                self.failing = true;
                warn!(%prefix, target = %self.target, error = %e, "cannot write the aggregate status");
            }
            Err(_) => {}
        }
    }
}

fn phase_rank(phase: Phase) -> u8 {
    match phase {
        Phase::Live => 0,
        Phase::Reconciling => 1,
        Phase::Syncing => 2,
        Phase::Degraded => 3,
        Phase::Stopped => 4,
    }
}

// ---------------------------------------------------------------------------------------------
// Progress
// ---------------------------------------------------------------------------------------------

/// During walks, shows progress: a bar per mirror when stderr is a terminal, a log line every
/// five seconds otherwise.
async fn report_progress(observers: Observers, mut shutdown: Shutdown) {
    let terminal = std::io::stderr().is_terminal();
    let bars = indicatif::MultiProgress::new();
    let mut shown: HashMap<MirrorKey, indicatif::ProgressBar> = HashMap::new();
    let mut tick = tokio::time::interval(if terminal { Duration::from_millis(200) } else { Duration::from_secs(5) });
    loop {
        tokio::select! {
            _ = shutdown.fired() => break,
            _ = tick.tick() => {}
        }
        for (key, handle) in observers.snapshot() {
            let status = handle.status();
            let walking = matches!(status.phase, Phase::Syncing | Phase::Reconciling) && status.walk_progress > 0;
            if terminal {
                match (walking, shown.get(&key)) {
                    (true, Some(bar)) => bar.set_position(status.walk_progress),
                    (true, None) => {
                        let bar = bars.add(indicatif::ProgressBar::new_spinner());
                        bar.set_style(
                            indicatif::ProgressStyle::with_template(
                                "{spinner} {prefix} {msg} {pos} znodes ({per_sec})",
                            )
                            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                        );
                        bar.set_prefix(key.to_string());
                        bar.set_message(status.phase.as_str());
                        bar.set_position(status.walk_progress);
                        shown.insert(key, bar);
                    }
                    (false, Some(_)) => {
                        if let Some(bar) = shown.remove(&key) {
                            bar.finish_and_clear();
                        }
                    }
                    (false, None) => {}
                }
            } else if walking {
                info!(root = %key.root, prefix = %key.prefix, target = %key.target, state = %status.phase, znodes = status.walk_progress,
                      "walk in progress");
            }
        }
    }
    for bar in shown.into_values() {
        bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::Filter;

    /// Servers nobody listens on: a mirror started here retries quietly until stopped.
    fn config(prefix: &str, root: &str) -> MirrorConfig {
        let mut c = MirrorConfig::new("127.0.0.1:1", "redis://127.0.0.1:1/", root);
        c.prefix = prefix.to_owned();
        c
    }

    fn key(prefix: &str, root: &str) -> MirrorKey {
        MirrorKey { target: crate::config::DEFAULT_TARGET.to_owned(), prefix: prefix.to_owned(), root: root.to_owned() }
    }

    fn stop(prefix: &str, root: &str, purge: bool) -> Stop {
        Stop { key: key(prefix, root), purge }
    }

    #[test]
    fn a_target_that_is_gone_keeps_its_keys_and_a_root_removed_from_a_target_does_not() {
        let in_target = |target: &str, root: &str| {
            let mut c = config("zk", root);
            c.target = target.to_owned();
            c
        };
        let old = [in_target("eu", "/a"), in_target("eu", "/b"), in_target("us", "/a")];
        // "us" is gone (its Redis keeps its copy); "eu" no longer mirrors /b (purged there).
        let new = [in_target("eu", "/a")];
        let p = plan(&old, &new);
        let stops: Vec<(String, String, bool)> =
            p.stop.iter().map(|s| (s.key.target.clone(), s.key.root.clone(), s.purge)).collect();
        assert_eq!(stops, [("eu".into(), "/b".into(), true), ("us".into(), "/a".into(), false)]);
        assert_eq!(p.keep.len(), 1);
        // A new target starts its own mirrors; the others are kept.
        let more = [in_target("eu", "/a"), in_target("eu", "/b"), in_target("us", "/a"), in_target("ap", "/a")];
        let p = plan(&old, &more);
        assert_eq!(p.start.iter().map(|k| k.target.as_str()).collect::<Vec<_>>(), ["ap"]);
        assert_eq!(p.keep.len(), 3);
    }

    #[test]
    fn the_same_configs_plan_nothing() {
        let both = [config("zk", "/a"), config("zk", "/b")];
        let p = plan(&both, &both);
        assert!(p.changes_nothing());
        assert_eq!(p.keep, [key("zk", "/a"), key("zk", "/b")]);
    }

    /// Defect 3: keyed by root, the second entry replaced the first.
    #[test]
    fn one_root_under_two_prefixes_is_two_mirrors() {
        let p = plan(&[], &[config("a", "/app"), config("b", "/app")]);
        assert_eq!(p.start, [key("a", "/app"), key("b", "/app")]);
        let p = plan(&[config("a", "/app")], &[config("a", "/app"), config("b", "/app")]);
        assert_eq!((p.start, p.keep), (vec![key("b", "/app")], vec![key("a", "/app")]));
    }

    #[test]
    fn a_changed_config_restarts_and_keeps_its_keys() {
        let mut filtered = config("zk", "/a");
        filtered.filter = Filter::new(&[], &["/a/locks/**".to_owned()], None).expect("valid filter");
        let p = plan(&[config("zk", "/a")], &[filtered]);
        assert_eq!(p.restart, [key("zk", "/a")]);
        assert!(p.stop.is_empty() && p.start.is_empty());
    }

    #[test]
    fn a_removed_root_stops_and_loses_its_keys_unless_asked_to_keep_them() {
        let p = plan(&[config("zk", "/a"), config("zk", "/b")], &[config("zk", "/a")]);
        assert_eq!(p.stop, [stop("zk", "/b", true)]);
        let p = plan(&[config("zk", "/a"), config("zk", "/b")], &[config("zk", "/a")]).keeping_keys(true);
        assert_eq!(p.stop, [stop("zk", "/b", false)]);
    }

    #[test]
    fn a_changed_prefix_is_another_mirror() {
        let p = plan(&[config("old", "/a")], &[config("new", "/a")]);
        assert_eq!(p.stop, [stop("old", "/a", true)]);
        assert_eq!(p.start, [key("new", "/a")]);
    }

    /// A new mirror of an ancestor under the same prefix reconciles the old root's keys: purging
    /// them first would only blank them for readers. A new descendant covers only part of them.
    #[test]
    fn keys_a_new_mirror_covers_are_not_purged() {
        let p = plan(&[config("zk", "/a/b")], &[config("zk", "/a")]);
        assert_eq!(p.stop, [stop("zk", "/a/b", false)]);
        let p = plan(&[config("zk", "/a/b")], &[config("zk", "/a/b/c")]);
        assert_eq!(p.stop, [stop("zk", "/a/b", true)]);
        let p = plan(&[config("zk", "/a/b")], &[config("other", "/a")]);
        assert_eq!(p.stop, [stop("zk", "/a/b", true)]);
    }

    fn settings(mirrors: Vec<MirrorConfig>) -> Settings {
        let mut settings = Settings::of_mirrors(mirrors);
        settings.keep_keys_on_remove = true;
        settings
    }

    /// A root that cannot start is reported as failed, never as started or restarted, and the
    /// next reload tries it again. (Settings validate every config at load; an embedder's may
    /// not have.)
    #[tokio::test]
    async fn a_mirror_that_cannot_start_is_reported_failed_not_started() {
        let mut service = Service::new();
        let bad = config("zk", "relative");
        let outcome = service.apply(&settings(vec![config("zk", "/good"), bad.clone()])).await;
        let ReloadOutcome::Applied(applied) = outcome else { panic!("{outcome:?}") };
        assert_eq!(applied.started, [key("zk", "/good")]);
        assert!(!applied.is_complete());
        assert_eq!(applied.failed.len(), 1, "{:?}", applied.failed);
        assert_eq!(applied.failed[0].0, key("zk", "relative"));
        assert!(applied.failed[0].1.contains("cannot start") && applied.failed[0].1.contains("relative"));
        assert_eq!(service.observers().handles().len(), 1);

        // Restarting it fails the same way: it is not "restarted".
        let mut good = config("zk", "/good");
        good.anti_entropy_interval = Duration::from_secs(60);
        let outcome = service.apply(&settings(vec![good, bad])).await;
        let ReloadOutcome::Applied(applied) = outcome else { panic!("{outcome:?}") };
        assert_eq!(applied.restarted, [key("zk", "/good")]);
        assert_eq!(applied.started, Vec::<MirrorKey>::new());
        assert_eq!(applied.failed.len(), 1, "{:?}", applied.failed);
        service.stop().await;
    }

    /// Defect 17: a mirror that does not stop within the grace period was left running (its
    /// handle dropped) while its replacement started.
    #[tokio::test]
    async fn a_task_that_does_not_stop_in_time_is_aborted_and_awaited() {
        let alive = Arc::new(());
        let held = alive.clone();
        let task = tokio::spawn(async move {
            let _held = held;
            std::future::pending::<()>().await
        });
        let end = stop_task(task, Duration::from_millis(20)).await;
        assert!(matches!(end, Ended::Aborted), "{end:?}");
        assert_eq!(Arc::strong_count(&alive), 1, "the task is still alive after stop_task returned");

        let quick = tokio::spawn(async { 7 });
        assert!(matches!(stop_task(quick, Duration::from_secs(60)).await, Ended::Returned(7)));
    }

    /// Defect 8: `lock().unwrap_or_default()` read a poisoned lock as "no root configured".
    #[test]
    fn a_poisoned_lock_still_lists_the_running_mirrors() {
        let observers = Observers::default();
        let mirror = Mirror::new(config("zk", "/app")).expect("valid config");
        observers.replace(vec![(key("zk", "/app"), mirror.handle())]);
        let inner = observers.inner.clone();
        let poisoner = std::thread::spawn(move || {
            let _guard = inner.lock();
            panic!("poisoning the observers' lock on purpose");
        });
        assert!(poisoner.join().is_err());
        assert!(observers.inner.is_poisoned());
        assert_eq!(observers.handles().len(), 1);
        let readiness = crate::observe::readiness_of({
            let observers = observers.clone();
            move || observers.handles()
        });
        let verdict = readiness().expect_err("not synced");
        assert!(verdict.contains("/app") && !verdict.contains("no root configured"), "{verdict}");
        // And writing through it works too.
        observers.replace(Vec::new());
        assert!(observers.snapshot().is_empty());
    }

    const NOW: u64 = 1_000_000;
    const STALE: u64 = 5_000;

    fn report(phase: Phase, zxid: Option<i64>, heartbeat: Option<u64>) -> Option<RootReport> {
        Some(RootReport { phase, zxid, heartbeat })
    }

    fn field(fields: &[(&'static str, String)], name: &str) -> Option<String> {
        fields.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone())
    }

    /// Defect 17: the aggregate's zxid came from in-process counters, 0 after every restart.
    #[test]
    fn the_aggregate_zxid_is_the_lowest_of_the_roots_stored_ones() {
        let reports = [report(Phase::Live, Some(500), Some(NOW)), report(Phase::Live, Some(400), Some(NOW - 100))];
        let fields = aggregate_fields(&["/a", "/b"], &reports, NOW, STALE, "1").expect("all roots run");
        assert_eq!(field(&fields, status_field::ZXID).as_deref(), Some("400"));
        assert_eq!(field(&fields, status_field::STATE).as_deref(), Some("live"));
        assert_eq!(field(&fields, status_field::ROOTS).as_deref(), Some("/a,/b"));
        // A root that has applied nothing yet: the aggregate claims nothing.
        let reports = [report(Phase::Live, Some(500), Some(NOW)), report(Phase::Syncing, None, Some(NOW))];
        let fields = aggregate_fields(&["/a", "/b"], &reports, NOW, STALE, "1").expect("all roots run");
        assert_eq!(field(&fields, status_field::ZXID).as_deref(), Some("0"));
        assert_eq!(field(&fields, status_field::STATE).as_deref(), Some("syncing"));
    }

    /// Defect 17: a wedged root kept a fresh aggregate heartbeat (written by another task).
    #[test]
    fn a_stale_root_ages_the_aggregate_and_degrades_it() {
        let wedged = NOW - 60_000;
        let reports = [report(Phase::Live, Some(5), Some(NOW)), report(Phase::Live, Some(5), Some(wedged))];
        let fields = aggregate_fields(&["/a", "/b"], &reports, NOW, STALE, "1").expect("all roots run");
        assert_eq!(field(&fields, status_field::HEARTBEAT), Some(wedged.to_string()));
        assert_eq!(field(&fields, status_field::STATE).as_deref(), Some("degraded"));
        // No heartbeat at all: not refreshed, and degraded.
        let reports = [report(Phase::Live, Some(5), Some(NOW)), report(Phase::Live, Some(5), None)];
        let fields = aggregate_fields(&["/a", "/b"], &reports, NOW, STALE, "1").expect("all roots run");
        assert_eq!(field(&fields, status_field::HEARTBEAT), None);
        assert_eq!(field(&fields, status_field::STATE).as_deref(), Some("degraded"));
        // Worse than degraded stays worse.
        let reports = [report(Phase::Stopped, Some(5), Some(wedged)), report(Phase::Live, Some(5), Some(NOW))];
        let fields = aggregate_fields(&["/a", "/b"], &reports, NOW, STALE, "1").expect("all roots run");
        assert_eq!(field(&fields, status_field::STATE).as_deref(), Some("stopped"));
    }

    #[test]
    fn no_aggregate_while_a_root_restarts() {
        let reports = [report(Phase::Live, Some(5), Some(NOW)), None];
        assert_eq!(aggregate_fields(&["/a", "/b"], &reports, NOW, STALE, "1"), None);
    }

    #[test]
    fn the_policy_is_read_from_info_memory() {
        let info = "# Memory\r\nused_memory:1\r\nmaxmemory_policy:allkeys-lru\r\nmaxmemory_policy_x:no\r\n";
        assert_eq!(info_field(info, "maxmemory_policy"), Some("allkeys-lru"));
        assert_eq!(info_field(info, "maxmemory"), None);
    }

    #[test]
    fn only_noeviction_keeps_every_key() {
        assert_eq!(eviction_risk("noeviction"), None);
        assert!(eviction_risk("volatile-lru").is_some_and(|why| why.contains("tombstones")));
        assert!(eviction_risk("volatile-ttl").is_some_and(|why| why.contains("tombstones")));
        assert!(eviction_risk("allkeys-lru").is_some_and(|why| why.contains("torn")));
        assert!(eviction_risk("allkeys-random").is_some_and(|why| why.contains("torn")));
        assert!(eviction_risk("something-new").is_some());
    }
}

//! The daemon: one [`Mirror`] per configured root, a control channel for reloads, and the
//! process-wide pieces (metrics endpoint, aggregate status of shared prefixes, progress).
//!
//! Reload follows one path whatever asked for it: the file watcher and SIGHUP only send
//! [`Control::Reload`]; [`Service::apply`] compares the new settings with the running ones and
//! returns a [`ReloadOutcome`], which is logged. An invalid file never stops what runs.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::config::MirrorConfig;
use crate::error::MirrorError;
use crate::mirror::{Mirror, MirrorHandle};
use crate::settings::{Overrides, Settings, SettingsError};
use crate::shutdown::{self, Shutdown};
use crate::status::Phase;
use crate::store::Store;

/// Messages on the control channel.
#[derive(Debug)]
pub enum Control {
    /// Read the settings again and apply what changed. `why` names the trigger for the log.
    Reload { why: &'static str },
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    Unchanged,
    Applied {
        started: Vec<String>,
        stopped: Vec<String>,
        restarted: Vec<String>,
    },
    /// The new settings were invalid; the running ones stay.
    Rejected(String),
}

struct Running {
    config: MirrorConfig,
    handle: MirrorHandle,
    task: JoinHandle<Result<(), MirrorError>>,
}

/// The mirrors of this process, keyed by root.
pub struct Service {
    running: BTreeMap<String, Running>,
    keep_keys_on_remove: bool,
    /// Shared with `/readyz` and the status aggregator.
    handles: Arc<Mutex<Vec<MirrorHandle>>>,
}

impl Service {
    pub fn new() -> Service {
        Service { running: BTreeMap::new(), keep_keys_on_remove: false, handles: Arc::new(Mutex::new(Vec::new())) }
    }

    /// The handles of the running mirrors, for observers.
    pub fn handles(&self) -> Arc<Mutex<Vec<MirrorHandle>>> {
        self.handles.clone()
    }

    /// Brings the running mirrors in line with `settings`: new roots start (cold sync), removed
    /// roots stop (and lose their keys unless `keep_keys_on_remove`), changed roots restart
    /// (their first walk reconciles, so a filter change removes what is now excluded).
    pub async fn apply(&mut self, settings: &Settings) -> ReloadOutcome {
        self.keep_keys_on_remove = settings.keep_keys_on_remove;
        let wanted: BTreeMap<&str, &MirrorConfig> = settings.mirrors.iter().map(|m| (m.root.as_str(), m)).collect();
        let (mut started, mut stopped, mut restarted) = (Vec::new(), Vec::new(), Vec::new());
        let roots: Vec<String> = self.running.keys().cloned().collect();
        for root in roots {
            match wanted.get(root.as_str()) {
                Some(config) if **config == self.running[&root].config => {}
                Some(config) => {
                    let old = self.stop_root(&root).await;
                    if let Some(old) = old {
                        if old.prefix != config.prefix && !self.keep_keys_on_remove {
                            purge(&old).await;
                        }
                    }
                    self.start_root((*config).clone());
                    restarted.push(root);
                }
                None => {
                    if let Some(old) = self.stop_root(&root).await {
                        if !self.keep_keys_on_remove {
                            purge(&old).await;
                        }
                    }
                    stopped.push(root);
                }
            }
        }
        for (root, config) in wanted {
            if !self.running.contains_key(root) {
                self.start_root(config.clone());
                started.push(root.to_owned());
            }
        }
        self.publish_handles();
        if started.is_empty() && stopped.is_empty() && restarted.is_empty() {
            ReloadOutcome::Unchanged
        } else {
            ReloadOutcome::Applied { started, stopped, restarted }
        }
    }

    fn start_root(&mut self, config: MirrorConfig) {
        let root = config.root.clone();
        if !config.shared_prefix {
            tokio::spawn(forget_shared_status(config.clone()));
        }
        match Mirror::new(config.clone()) {
            Ok(mirror) => {
                let handle = mirror.handle();
                let task = tokio::spawn(mirror.run());
                self.running.insert(root, Running { config, handle, task });
            }
            // Settings were validated before; this would be a bug, not bad input.
            Err(e) => error!(%root, error = %e, "cannot start mirror"),
        }
    }

    async fn stop_root(&mut self, root: &str) -> Option<MirrorConfig> {
        let running = self.running.remove(root)?;
        running.handle.stop();
        match tokio::time::timeout(Duration::from_secs(10), running.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(%root, error = %e, "mirror ended with an error"),
            Ok(Err(e)) => warn!(%root, error = %e, "mirror task failed"),
            Err(_) => warn!(%root, "mirror did not stop within 10 s; abandoned"),
        }
        Some(running.config)
    }

    fn publish_handles(&self) {
        let handles: Vec<MirrorHandle> = self.running.values().map(|r| r.handle.clone()).collect();
        if let Ok(mut shared) = self.handles.lock() {
            *shared = handles;
        }
    }

    /// A mirror whose task ended on its own (only a fatal error does that), if any.
    async fn reap_failed(&mut self) -> Option<(String, MirrorError)> {
        let finished: Vec<String> =
            self.running.iter().filter(|(_, r)| r.task.is_finished()).map(|(k, _)| k.clone()).collect();
        for root in finished {
            if let Some(running) = self.running.remove(&root) {
                self.publish_handles();
                match running.task.await {
                    Ok(Err(e)) => return Some((root, e)),
                    Ok(Ok(())) => {}
                    Err(e) => error!(%root, error = %e, "mirror task panicked"),
                }
            }
        }
        None
    }

    pub async fn stop(mut self) {
        let roots: Vec<String> = self.running.keys().cloned().collect();
        for root in roots {
            self.stop_root(&root).await;
        }
    }
}

impl Default for Service {
    fn default() -> Self {
        Service::new()
    }
}

async fn purge(config: &MirrorConfig) {
    match Store::new(config) {
        Ok(store) => match store.purge(&config.root).await {
            Ok(n) => {
                info!(root = %config.root, prefix = %config.prefix, keys = n, "root no longer mirrored: its keys were removed")
            }
            Err(e) => warn!(root = %config.root, error = %e, "cannot remove the keys of a root no longer mirrored"),
        },
        Err(e) => warn!(root = %config.root, error = %e, "cannot remove the keys of a root no longer mirrored"),
    }
}

/// A root whose prefix is not shared (any more) writes `P:mirror` itself: the `roots` field an
/// aggregate left there and the root's own `P:mirror:{ROOT}` would only mislead readers
/// (`zkmirror status` reports every root an aggregate lists). Best effort: a Redis that is down
/// now is a problem the mirror itself reports.
async fn forget_shared_status(config: MirrorConfig) {
    let Ok(store) = Store::new(&config) else { return };
    let keys = store.keys().clone();
    let mut stale_roots = redis::cmd("HDEL");
    stale_roots.arg(keys.status()).arg("roots");
    let mut stale_status = redis::cmd("DEL");
    stale_status.arg(keys.root_status(&config.root));
    for cmd in [stale_roots, stale_status] {
        if let Err(e) = store.query(&cmd).await {
            debug!(root = %config.root, error = %e, "cannot clear the status a shared prefix left behind");
            return;
        }
    }
}

/// Runs the daemon until `shutdown` fires or a mirror fails for good (rejected credentials).
pub async fn run(file: Option<PathBuf>, overrides: Overrides, mut shutdown: Shutdown) -> Result<(), RunError> {
    // Listen for SIGHUP first: until a handler exists, SIGHUP would terminate the process.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let settings = Settings::load(file.as_deref(), &overrides)?;
    let metrics_addr = settings.metrics_addr;
    let (control_tx, mut control_rx) = mpsc::channel::<Control>(16);
    let mut service = Service::new();
    let (observers_stop, observers_shutdown) = shutdown::channel();

    if let Some(addr) = settings.metrics_addr {
        let prometheus = crate::observe::install_prometheus().map_err(RunError::Metrics)?;
        let handles = service.handles();
        let readiness = crate::observe::readiness_of(move || handles.lock().map(|h| h.clone()).unwrap_or_default());
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| RunError::Listen(addr, e))?;
        tokio::spawn({
            let shutdown = observers_shutdown.clone();
            async move {
                if let Err(e) = crate::observe::serve(listener, prometheus, readiness, shutdown).await {
                    error!(%addr, error = %e, "metrics endpoint failed");
                }
            }
        });
    }
    let _watcher = match &file {
        Some(path) => Some(watch_file(path, control_tx.clone())?),
        None => None,
    };
    tokio::spawn(forward_sighup(hangups, control_tx.clone()));
    tokio::spawn(report_progress(service.handles(), observers_shutdown.clone()));
    let started_at = now_ms();
    let handles = service.handles();
    let aggregate = |mirrors: &[MirrorConfig]| {
        let (stop, stopped) = shutdown::channel();
        (stop, tokio::spawn(aggregate_shared_status(handles.clone(), mirrors.to_vec(), started_at, stopped)))
    };
    let (mut aggregator_stop, mut aggregator) = aggregate(&settings.mirrors);

    service.apply(&settings).await;
    let mut reap = tokio::time::interval(Duration::from_millis(500));
    let result = loop {
        tokio::select! {
            _ = shutdown.fired() => break Ok(()),
            Some(Control::Reload { why }) = control_rx.recv() => {
                info!(trigger = why, "reloading settings");
                let outcome = match Settings::load(file.as_deref(), &overrides) {
                    Ok(new) => {
                        if new.metrics_addr != metrics_addr {
                            warn!("[metrics] addr is read at start only: restart zkmirror to serve it elsewhere");
                        }
                        // One aggregator, for the new set of roots; the old one must not write
                        // while mirrors stop and start.
                        aggregator.abort();
                        let _ = (&mut aggregator).await;
                        let outcome = service.apply(&new).await;
                        (aggregator_stop, aggregator) = aggregate(&new.mirrors);
                        outcome
                    }
                    Err(e) => ReloadOutcome::Rejected(e.to_string()),
                };
                match &outcome {
                    ReloadOutcome::Unchanged => info!("reload: nothing changed"),
                    ReloadOutcome::Applied { started, stopped, restarted } => {
                        info!(?started, ?stopped, ?restarted, "reload applied")
                    }
                    ReloadOutcome::Rejected(why) => {
                        error!("reload rejected, the running configuration stays: {why}")
                    }
                }
            }
            _ = reap.tick() => {
                if let Some((root, e)) = service.reap_failed().await {
                    break Err(RunError::Mirror(root, e));
                }
            }
        }
    };
    service.stop().await;
    // After the mirrors: the aggregate says `stopped` too.
    aggregator_stop.fire();
    if tokio::time::timeout(Duration::from_secs(5), &mut aggregator).await.is_err() {
        aggregator.abort();
    }
    observers_stop.fire();
    result
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
}

/// Watches the config file's folder (editors replace files rather than write them) and sends a
/// reload when the file changes, after a short quiet period so one save is one reload.
fn watch_file(path: &Path, control: mpsc::Sender<Control>) -> Result<notify::RecommendedWatcher, RunError> {
    use notify::{RecursiveMode, Watcher};
    let name = path.file_name().map(|n| n.to_owned());
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned();
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let ours = event.paths.iter().any(|p| p.file_name() == name.as_deref());
            if ours && !matches!(event.kind, notify::EventKind::Access(_)) {
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| RunError::Watch(path.to_owned(), e))?;
    watcher.watch(&folder, RecursiveMode::NonRecursive).map_err(|e| RunError::Watch(path.to_owned(), e))?;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait until the file has been quiet for 200 ms.
            while let Ok(Some(())) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {}
            if control.send(Control::Reload { why: "config file changed" }).await.is_err() {
                return;
            }
        }
    });
    Ok(watcher)
}

async fn forward_sighup(hangups: std::io::Result<tokio::signal::unix::Signal>, control: mpsc::Sender<Control>) {
    let Ok(mut hangups) = hangups else {
        warn!("cannot listen for SIGHUP; reload by editing the config file instead");
        return;
    };
    while hangups.recv().await.is_some() {
        if control.send(Control::Reload { why: "SIGHUP" }).await.is_err() {
            return;
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// For prefixes shared by several roots, `P:mirror` is the aggregate: the worst state, the
/// lowest applied zxid (everything up to it is in, for every root), the list of roots. Each
/// root's own status is in `P:mirror:{ROOT}`. One runs at a time: a reload aborts it and starts
/// one for the new set of roots. When `stop` fires (after the mirrors stopped) it writes
/// `stopped` once more and ends.
async fn aggregate_shared_status(
    handles: Arc<Mutex<Vec<MirrorHandle>>>,
    mirrors: Vec<MirrorConfig>,
    started_at: u64,
    mut stop: Shutdown,
) {
    let mut by_prefix: HashMap<&str, Vec<&MirrorConfig>> = HashMap::new();
    for m in mirrors.iter().filter(|m| m.shared_prefix) {
        by_prefix.entry(m.prefix.as_str()).or_default().push(m);
    }
    let groups: Vec<(Store, Vec<&str>)> = by_prefix
        .values()
        .filter_map(|group| {
            Store::new(group[0]).ok().map(|store| (store, group.iter().map(|m| m.root.as_str()).collect()))
        })
        .collect();
    let started_at = started_at.to_string();
    let mut failing = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let stopping = tokio::select! {
            _ = stop.fired() => true,
            _ = tick.tick() => false,
        };
        let snapshot = handles.lock().map(|h| h.clone()).unwrap_or_default();
        for (store, roots) in &groups {
            let statuses: Vec<_> = snapshot.iter().filter(|h| roots.contains(&h.root())).map(|h| h.status()).collect();
            let mut fields = vec![("state", Phase::Stopped.as_str().to_owned()), ("heartbeat", now_ms().to_string())];
            if !stopping {
                if statuses.len() != roots.len() {
                    continue; // a root is (re)starting: no aggregate without it
                }
                let worst = statuses.iter().map(|s| s.phase).max_by_key(|p| phase_rank(*p)).unwrap_or(Phase::Syncing);
                let zxid = statuses.iter().map(|s| s.applied_zxid).min().unwrap_or(0);
                fields = vec![
                    ("state", worst.as_str().to_owned()),
                    ("zxid", zxid.to_string()),
                    ("heartbeat", now_ms().to_string()),
                    ("roots", roots.join(",")),
                    ("root", roots.join(",")),
                    ("started_at", started_at.clone()),
                    ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ];
            }
            match store.write_hash(&store.keys().status(), &fields).await {
                Ok(()) if failing => {
                    failing = false;
                    info!(prefix = %store.keys().prefix(), "the aggregate status is written again");
                }
                Ok(()) => {}
                // Once per outage: the mirrors report Redis themselves.
                Err(e) if !failing => {
                    failing = true;
                    warn!(prefix = %store.keys().prefix(), error = %e, "cannot write the aggregate status");
                }
                Err(_) => {}
            }
        }
        if stopping {
            return;
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

/// During walks, shows progress: a bar per root when stderr is a terminal, a log line every
/// five seconds otherwise.
async fn report_progress(handles: Arc<Mutex<Vec<MirrorHandle>>>, mut shutdown: Shutdown) {
    let terminal = std::io::stderr().is_terminal();
    let bars = indicatif::MultiProgress::new();
    let mut shown: HashMap<String, indicatif::ProgressBar> = HashMap::new();
    let mut tick = tokio::time::interval(if terminal { Duration::from_millis(200) } else { Duration::from_secs(5) });
    loop {
        tokio::select! {
            _ = shutdown.fired() => break,
            _ = tick.tick() => {}
        }
        let snapshot = handles.lock().map(|h| h.clone()).unwrap_or_default();
        for handle in &snapshot {
            let status = handle.status();
            let walking = matches!(status.phase, Phase::Syncing | Phase::Reconciling) && status.walk_progress > 0;
            if terminal {
                match (walking, shown.get(handle.root())) {
                    (true, Some(bar)) => bar.set_position(status.walk_progress),
                    (true, None) => {
                        let bar = bars.add(indicatif::ProgressBar::new_spinner());
                        bar.set_style(
                            indicatif::ProgressStyle::with_template(
                                "{spinner} {prefix} {msg} {pos} znodes ({per_sec})",
                            )
                            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                        );
                        bar.set_prefix(handle.root().to_owned());
                        bar.set_message(status.phase.as_str());
                        bar.set_position(status.walk_progress);
                        shown.insert(handle.root().to_owned(), bar);
                    }
                    (false, Some(_)) => {
                        if let Some(bar) = shown.remove(handle.root()) {
                            bar.finish_and_clear();
                        }
                    }
                    (false, None) => {}
                }
            } else if walking {
                info!(root = %handle.root(), state = %status.phase, znodes = status.walk_progress, "walk in progress");
            }
        }
    }
    for bar in shown.into_values() {
        bar.finish_and_clear();
    }
}

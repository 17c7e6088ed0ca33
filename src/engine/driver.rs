//! The driver: turns the core's effects into futures and their results back into inputs. It
//! owns the I/O handles (the ZooKeeper session and its watcher, the Redis store) and nothing of
//! the mirror's logic. It awaits nothing inline: every server call is a future polled by the
//! one `select!`, so a slow or dead server delays only the work that waits for it, never the
//! heartbeat, the watch or the other side.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::future::OptionFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use tracing::{info, warn};
use zookeeper_client::{EventType, PersistentWatcher, SessionState, WatchedEvent};

use super::history::{Recheck, SyncPoint};
use super::{Change, Core, Effect, Input};
use crate::config::MirrorConfig;
use crate::error::{MirrorError, StoreError, ZkError};
use crate::shutdown::Shutdown;
use crate::store::{Applied, Store};
use crate::zk::ZkSession;
use crate::zkhub::{Delivered, ZkFeed};
use crate::znode::Fetched;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
/// What one multi-read answers: each path with what was found.
type ReadResults = Vec<(String, Result<Fetched, ZkError>)>;
/// A sweep's answer, tagged with the walk generation that asked.
type SweepResult = (u64, Result<(u64, Vec<String>), StoreError>);
/// A confirmation's answer, tagged with the walk generation whose refusals it checks.
type ConfirmResult = (u64, Result<Vec<Recheck>, String>);

/// The futures of one kind the driver can have in flight; each `Option` holds at most one,
/// because the core never asks for a second before the first is answered.
#[derive(Default)]
struct InFlight {
    connect: Option<BoxFuture<Result<ZkSession, ZkError>>>,
    add_watch: Option<BoxFuture<Result<PersistentWatcher, ZkError>>>,
    reads: FuturesOrdered<BoxFuture<ReadResults>>,
    batch: Option<BoxFuture<Result<Applied, StoreError>>>,
    scripts: Option<BoxFuture<Result<u64, StoreError>>>,
    sync: Option<BoxFuture<(u64, Result<SyncPoint, String>)>>,
    /// A newer ask replaces an older one: the core only awaits the latest.
    confirm: Option<BoxFuture<ConfirmResult>>,
    subtree_check: Option<BoxFuture<(u64, Result<bool, StoreError>)>>,
    sweep: Option<BoxFuture<SweepResult>>,
    status: Option<BoxFuture<Result<bool, StoreError>>>,
    /// Setting `TCP_NODELAY` scans `/proc/self/fd`: a blocking task, joined here.
    nagle: Option<tokio::task::JoinHandle<()>>,
}

/// Runs the mirror until `shutdown` fires (Ok) or ZooKeeper rejects the credentials (Err).
/// With a `feed`, the ZooKeeper side is a hub's session shared with the root's other
/// targets ([`crate::zkhub`]); without, the mirror opens its own.
pub(crate) async fn drive(
    config: MirrorConfig,
    store: Store,
    mut core: Core,
    mut shutdown: Shutdown,
    mut feed: Option<ZkFeed>,
) -> Result<(), MirrorError> {
    info!(root = %config.root, zk = %config.zk_servers, redis = %store.server(), prefix = %config.prefix,
          "zkmirror starting");
    let mut session: Option<ZkSession> = None;
    let mut watcher: Option<PersistentWatcher> = None;
    let mut f = InFlight::default();
    let result = loop {
        while let Some(effect) = core.poll_effect() {
            match feed.as_mut() {
                Some(feed) => start_shared(effect, &config, &store, &mut session, feed, &mut f),
                None => start(effect, &config, &store, &mut session, &mut watcher, &mut f),
            }
        }
        if let Some(error) = core.take_fatal() {
            break Err(error);
        }
        let deadline = tokio::time::Instant::from_std(core.poll_timeout());
        let input = tokio::select! {
            biased;
            _ = shutdown.fired() => break Ok(()),
            // Events before replies: ZooKeeper sends a change's event before the reply to any
            // read served after it, and the watermark relies on seeing them in that order.
            event = next_event(&mut watcher), if watcher.is_some() => match event {
                Some(input) => input,
                None => continue,
            },
            // The hub delivers events and read answers in session order, in one queue.
            delivered = next_delivery(&mut feed), if feed.is_some() => match delivered {
                Some(Delivered::Connected(s)) => {
                    session = Some(s);
                    Input::Connected
                }
                Some(Delivered::Input { input, .. }) => input,
                None => {
                    // The hub ended under a running mirror: its reads will never be answered,
                    // so this mirror cannot go on; the service reports it.
                    let source = zookeeper_client::Error::UnexpectedError("the ZooKeeper hub of this root stopped".into());
                    break Err(MirrorError::Zk(ZkError::Read { path: config.root.clone(), source }));
                }
            },
            result = settled(&mut f.connect), if f.connect.is_some() => {
                match result {
                    Ok(s) => {
                        info!(session = %s.session_id(), servers = %s.servers(), "ZooKeeper session established");
                        session = Some(s);
                        Input::Connected
                    }
                    Err(error) => Input::ConnectFailed(error),
                }
            }
            result = settled(&mut f.add_watch), if f.add_watch.is_some() => {
                match result {
                    Ok(fresh) => {
                        watcher = Some(fresh);
                        Input::WatchAdded
                    }
                    Err(error) => Input::WatchFailed(error),
                }
            }
            Some(results) = f.reads.next(), if !f.reads.is_empty() => Input::ReadDone { results, read_at_ms: None },
            result = settled(&mut f.batch), if f.batch.is_some() => Input::WriteDone(result),
            result = settled(&mut f.scripts), if f.scripts.is_some() => Input::ScriptsLoaded(result),
            (generation, result) = settled(&mut f.sync), if f.sync.is_some() => Input::Synced { generation, result },
            (generation, result) = settled(&mut f.confirm), if f.confirm.is_some() => {
                Input::HistoryConfirmed { generation, result }
            }
            (generation, result) = settled(&mut f.subtree_check), if f.subtree_check.is_some() => {
                Input::SubtreeChecked { generation, result }
            }
            (generation, result) = settled(&mut f.sweep), if f.sweep.is_some() => Input::SweepDone { generation, result },
            result = settled(&mut f.status), if f.status.is_some() => Input::StatusWritten(result),
            Some(_) = OptionFuture::from(f.nagle.as_mut()), if f.nagle.is_some() => {
                f.nagle = None;
                continue;
            }
            _ = tokio::time::sleep_until(deadline) => {
                core.handle_timeout(Instant::now());
                continue;
            }
        };
        core.handle(input, Instant::now());
    };
    if matches!(result, Err(MirrorError::Deposed { .. })) {
        // Deposed: not one more write, not even `stopped` (the new leader owns the status).
        drop(f);
    } else {
        stop(&store, f).await;
    }
    result
}

/// Awaits the future in `slot`, then empties the slot. Polled through `&mut`, so a `select!`
/// branch that loses the race leaves the future in its slot for the next turn.
pub(crate) async fn settled<T>(slot: &mut Option<BoxFuture<T>>) -> T {
    let output = match slot.as_mut() {
        Some(future) => future.await,
        None => std::future::pending().await,
    };
    *slot = None;
    output
}

/// Best-effort clean stop: let the pipeline in flight land, then say `stopped`.
async fn stop(store: &Store, mut f: InFlight) {
    if let Some(batch) = f.batch.take() {
        let _ = tokio::time::timeout(Duration::from_secs(2), batch).await;
    }
    if let Some(nagle) = f.nagle.take() {
        nagle.abort();
        let _ = nagle.await;
    }
    use crate::schema::status_field;
    let fields = [
        (status_field::STATE, crate::status::Phase::Stopped.as_str().to_owned()),
        (status_field::HEARTBEAT, super::now_ms().to_string()),
    ];
    let _ = tokio::time::timeout(Duration::from_secs(2), store.write_status(&fields)).await;
    info!("zkmirror stopped");
}

async fn next_delivery(feed: &mut Option<ZkFeed>) -> Option<Delivered> {
    match feed.as_mut() {
        Some(feed) => feed.next().await,
        None => std::future::pending().await,
    }
}

/// The next watch event as an input; `None` for events the mirror ignores.
async fn next_event(watcher: &mut Option<PersistentWatcher>) -> Option<Input> {
    let event: WatchedEvent = match watcher.as_mut() {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    };
    let input = input_of(event);
    if matches!(input, Input::SessionEnded) {
        // The watcher is done; the core asks for a new session.
        *watcher = None;
    }
    Some(input)
}

/// What a watch event tells the engine: a change of the session's state, or of a znode. One
/// translation for a mirror's own session and for the hub's.
pub(crate) fn input_of(event: WatchedEvent) -> Input {
    let kind = match event.event_type {
        EventType::Session => {
            return match event.session_state {
                SessionState::Disconnected => Input::Disconnected,
                SessionState::SyncConnected | SessionState::ConnectedReadOnly => Input::Reconnected,
                SessionState::Expired | SessionState::Closed => Input::SessionEnded,
                SessionState::AuthFailed => Input::AuthFailed,
            };
        }
        EventType::NodeCreated => Change::Created,
        EventType::NodeDeleted => Change::Deleted,
        EventType::NodeDataChanged | EventType::NodeChildrenChanged => Change::Data,
    };
    Input::Changed { path: event.path, kind }
}

/// Starts what an effect asks for, with the ZooKeeper side a hub's: the session's lifecycle,
/// the watch and the reads go to the hub; the rest is as with a session of its own.
fn start_shared(
    effect: Effect,
    config: &MirrorConfig,
    store: &Store,
    session: &mut Option<ZkSession>,
    feed: &mut ZkFeed,
    f: &mut InFlight,
) {
    match effect {
        Effect::Connect => feed.connect(),
        Effect::DropSession => {
            *session = None;
            f.sync = None;
            f.confirm = None;
            feed.drop_session();
        }
        Effect::AddWatch => feed.add_watch(),
        // The hub sets it on its own session's sockets.
        Effect::DisableNagle => {}
        Effect::Read(paths) => feed.read(paths),
        Effect::SyncRoot { generation } => {
            // As with a session of its own: the claim first, then the sync (the hub's, which
            // also keeps reads sent before it from being shared with this mirror).
            let store = store.clone();
            let sync = feed.sync();
            f.sync = Some(Box::pin(async move {
                // The hub's sync is sent even when the claim cannot be read: it is also what
                // keeps reads sent before this walk from being shared with it.
                let stored = store.stored_mark().await;
                let above_root = sync.await;
                let result = match (stored, above_root) {
                    (Ok(stored), Ok(above_root)) => Ok(SyncPoint { stored, above_root }),
                    (Err(e), _) => Err(e.to_string()),
                    (_, Err(e)) => Err(e.to_string()),
                };
                (generation, result)
            }));
        }
        other => {
            let mut no_watcher = None;
            start(other, config, store, session, &mut no_watcher, f)
        }
    }
}

/// Starts the future (or the change of handles) an effect asks for.
fn start(
    effect: Effect,
    config: &MirrorConfig,
    store: &Store,
    session: &mut Option<ZkSession>,
    watcher: &mut Option<PersistentWatcher>,
    f: &mut InFlight,
) {
    match effect {
        Effect::Connect => {
            let config = config.clone();
            f.connect = Some(Box::pin(async move { ZkSession::connect(&config).await }));
        }
        Effect::DropSession => {
            *session = None;
            *watcher = None;
            f.add_watch = None;
            f.sync = None;
            f.confirm = None;
            f.reads = FuturesOrdered::new();
        }
        Effect::AddWatch => match session.clone() {
            Some(s) => {
                let root = config.root.clone();
                f.add_watch = Some(Box::pin(async move { s.watch(&root).await }));
            }
            None => warn!("asked to add the watch without a session; waiting for one"),
        },
        Effect::DisableNagle => {
            if let (Some(s), None) = (session.as_ref(), f.nagle.as_ref()) {
                let s = s.clone();
                f.nagle = Some(tokio::task::spawn_blocking(move || s.disable_nagle()));
            }
        }
        Effect::Read(paths) => match session.as_ref() {
            Some(s) => f.reads.push_back(Box::pin(s.fetch_many(paths))),
            None => {
                // No session: answer at once with a connection loss, so the core re-queues.
                let error = ZkError::Read { path: paths.join(", "), source: zookeeper_client::Error::ConnectionLoss };
                let results = paths.into_iter().map(|p| (p, Err(error.clone()))).collect();
                f.reads.push_back(Box::pin(std::future::ready(results)));
            }
        },
        Effect::Write { writes, zxid, read_deadline_ms, epoch } => {
            let send = store.apply(&writes, zxid, super::now_ms(), read_deadline_ms, epoch);
            f.batch = Some(Box::pin(send));
        }
        Effect::LoadScripts => {
            let store = store.clone();
            f.scripts = Some(Box::pin(async move {
                store.load_scripts().await?;
                // A leader's fence goes up with its scripts, before any write: at start, and
                // after every Redis loss (a flushed Redis lost the fence too).
                store.publish_fence().await?;
                Ok(store.stored_mark().await?.epoch)
            }));
        }
        Effect::SyncRoot { generation } => {
            // The claim first, then the sync: whatever the claim counts on was committed before
            // the sync was sent, so the synced server has it (see `history`).
            let (store, session, root) = (store.clone(), session.clone(), config.root.clone());
            f.sync = Some(Box::pin(async move {
                let result = async {
                    let session = session.ok_or_else(|| "no ZooKeeper session".to_owned())?;
                    let stored = store.stored_mark().await.map_err(|e| e.to_string())?;
                    let above_root = session.sync_root(&root).await.map_err(|e| e.to_string())?;
                    Ok(SyncPoint { stored, above_root })
                };
                (generation, result.await)
            }));
        }
        Effect::ConfirmHistory { generation, paths } => {
            // Redis first, then the sync, then ZooKeeper: whatever Redis held was read from
            // ZooKeeper before the sync, so in one history the synced reads are at least as new
            // (see `history::confirm`).
            let (store, session, root) = (store.clone(), session.clone(), config.root.clone());
            f.confirm = Some(Box::pin(async move {
                let result = async {
                    let session = session.ok_or_else(|| "no ZooKeeper session".to_owned())?;
                    let stored = store.stored_versions(&paths).await.map_err(|e| e.to_string())?;
                    session.sync_root(&root).await.map_err(|e| e.to_string())?;
                    let current = session.fetch_many(paths).await;
                    Ok(current
                        .into_iter()
                        .zip(stored)
                        .map(|((path, current), stored)| Recheck { path, stored, current })
                        .collect())
                };
                (generation, result.await)
            }));
        }
        Effect::CheckSubtree { generation } => {
            let (store, root) = (store.clone(), config.root.clone());
            f.subtree_check =
                Some(Box::pin(
                    async move { (generation, store.may_hold_subtree(&root, super::SUBTREE_CHECK_PAGES).await) },
                ));
        }
        Effect::Sweep { generation, cursor } => {
            let (store, root, filter) = (store.clone(), config.root.clone(), config.filter.clone());
            f.sweep = Some(Box::pin(async move {
                let keep = |path: &str| filter.copies(&root, path);
                (generation, store.stray_page(&root, cursor, keep).await)
            }));
        }
        Effect::WriteStatus { fields } => {
            let store = store.clone();
            f.status = Some(Box::pin(async move { store.write_status(&fields).await.map(|w| w.existed) }));
        }
    }
}

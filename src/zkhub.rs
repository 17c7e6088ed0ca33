//! One ZooKeeper session, one persistent watch and, as far as it is safe, one read per path
//! for every Redis target of a root: the targets' engines subscribe to a hub instead of each
//! opening a session of its own.
//!
//! Each subscriber (one target's driver) gets the session's events and its own read answers
//! in session order, through a bounded queue of its own: a target whose queue is full (its
//! task starved) loses its events, is told its session ended once it drains, and reconciles,
//! as after a real expiry; the others never wait for it.
//!
//! A path one target asks for is not read again when another target's read of it was sent
//! after every event the asking target has seen (so that answer is at least as new as what
//! the asker knows, and arrives after those events), in the same session, after the asker's
//! last `sync`, and answered less than [`SHARED_MAX_AGE`] ago. Otherwise it is read anew.
//! Read answers carry the send time of the oldest read behind them: the engine's deadline on
//! old reads (a tombstone's life) counts from there.
//!
//! Architecture invariant: the hub never touches Redis, and no subscriber ever waits for
//! another.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use metrics::{counter, Counter};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};
use zookeeper_client::{PersistentWatcher, WatchedEvent};

use crate::config::MirrorConfig;
use crate::engine::driver::{input_of, settled, BoxFuture};
use crate::engine::{now_ms, Input};
use crate::error::ZkError;
use crate::zk::{ZkConnect, ZkSession};
use crate::znode::Fetched;

/// What one multi-read answers: each path with what was found.
pub(crate) type ReadResults = Vec<(String, Result<Fetched, ZkError>)>;
/// A finished sync: the subscriber that asked, where to answer, and the answer.
type SyncDone = (u64, oneshot::Sender<Result<i64, ZkError>>, Result<i64, ZkError>);

/// Bytes one delivery in a subscriber's queue is reckoned at for its count (an event's path
/// and its envelope); a queue holds a 4,096th of its mirror's memory budget in deliveries
/// (16,384 at the default budget), within [`MIN_FEED`, `MAX_FEED`], and its events' bytes are
/// bounded too ([`FEED_BUDGET_SHARE`]); past either it overflows and reconciles.
const DELIVERY_BYTES: usize = 4096;
const MIN_FEED: usize = 64;
const MAX_FEED: usize = 16_384;
/// Bytes a subscriber's queue may hold besides its count, as a share of its mirror's memory
/// budget: the count alone would let deliveries of long paths hold far more than
/// [`DELIVERY_BYTES`] each. A read's answer is not counted here: its engine charges it as a
/// read in flight until it is received.
const FEED_BUDGET_SHARE: usize = 16;
/// What a delivery is reckoned at beyond the path it carries (the envelope, the input).
const DELIVERY_ENVELOPE_BYTES: usize = 128;
/// Commands queued to the hub by all its subscribers together (each engine has at most a few
/// dozen outstanding: its reads in flight, a connect, a watch, a sync).
const COMMAND_CAPACITY: usize = 1024;
/// How long an answered read may still be handed to a target that asks for the same path.
pub(crate) const SHARED_MAX_AGE: Duration = Duration::from_secs(2);
/// How often an overflowed subscriber's queue is checked for room.
const OVERFLOW_CHECK: Duration = Duration::from_millis(20);
/// How long the service waits for a hub's task to end before aborting it.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// What a subscriber asks of its hub.
pub(crate) enum Command {
    Subscribe {
        id: u64,
        target: String,
        deliveries: mpsc::Sender<Delivery>,
        queued: QueuedBytes,
    },
    Unsubscribe {
        id: u64,
    },
    Connect {
        id: u64,
    },
    AddWatch {
        id: u64,
    },
    /// The subscriber's engine dropped its session (it ended): forget its reads, start a new
    /// epoch of deliveries.
    DropSession {
        id: u64,
    },
    /// `seen`: the sequence number of the last event the subscriber handed its engine.
    Read {
        id: u64,
        seen: u64,
        paths: Vec<String>,
    },
    /// A `sync` of the root (and its ancestors' highest zxid): reads sent before it are not
    /// shared with this subscriber afterwards.
    Sync {
        id: u64,
        reply: oneshot::Sender<Result<i64, ZkError>>,
    },
}

/// One delivery, stamped with the subscriber's epoch (its count of dropped sessions): one
/// queued before a drop is stale, and the subscriber skips it.
pub(crate) struct Delivery {
    pub epoch: u64,
    pub what: Delivered,
    /// What it adds to its queue's [`QueuedBytes`] until received.
    bytes: usize,
}

/// The bytes in one subscriber's queue: added by the hub as it queues, taken off by the feed
/// as it receives, so that a queue is bounded in bytes as well as by count.
#[derive(Clone)]
pub(crate) struct QueuedBytes {
    queued: Arc<AtomicUsize>,
    max: usize,
}

impl QueuedBytes {
    /// Counts `bytes` in if they fit, or if the queue is empty (a delivery larger than the
    /// bound alone, a path of more than 64 KiB, must still get through).
    fn try_add(&self, bytes: usize) -> bool {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                q.checked_add(bytes).filter(|n| q == 0 || *n <= self.max)
            })
            .is_ok()
    }

    fn take(&self, bytes: usize) {
        let _ = self.queued.fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| Some(q.saturating_sub(bytes)));
    }
}

/// One subscriber's queue, for a mirror with this memory budget: bounded by count (a 4,096th
/// of the budget in deliveries, within [`MIN_FEED`, `MAX_FEED`]) and by bytes (a
/// [`FEED_BUDGET_SHARE`]th of it, at least 64 KiB).
fn feed_queue(memory_budget: usize) -> (mpsc::Sender<Delivery>, mpsc::Receiver<Delivery>, QueuedBytes) {
    let (sender, receiver) = mpsc::channel((memory_budget / DELIVERY_BYTES).clamp(MIN_FEED, MAX_FEED));
    let queued =
        QueuedBytes { queued: Arc::new(AtomicUsize::new(0)), max: (memory_budget / FEED_BUDGET_SHARE).max(64 << 10) };
    (sender, receiver, queued)
}

/// What a delivery is reckoned at in its queue's bytes (see [`FEED_BUDGET_SHARE`]).
fn delivery_bytes(what: &Delivered) -> usize {
    match what {
        Delivered::Input { input: Input::Changed { path, .. }, .. } => DELIVERY_ENVELOPE_BYTES + path.len(),
        Delivered::Input { input: Input::ReadDone { .. }, .. } => 0,
        _ => DELIVERY_ENVELOPE_BYTES,
    }
}

pub(crate) enum Delivered {
    /// The hub's session, for what the driver still does on its own (a history confirmation's
    /// reads); the engine is told [`Input::Connected`].
    Connected(ZkSession),
    /// An input for the engine as it is (a read's answer carries the send time of the oldest
    /// read behind it); `seq` is set for a change event: its number in the hub's count.
    Input { seq: Option<u64>, input: Input },
}

fn input(input: Input) -> Delivered {
    Delivered::Input { seq: None, input }
}

/// One subscription: what a target's driver holds. Dropping it unsubscribes.
pub(crate) struct ZkFeed {
    id: u64,
    commands: mpsc::Sender<Command>,
    deliveries: mpsc::Receiver<Delivery>,
    queued: QueuedBytes,
    /// Commands the hub's queue had no room for yet, sent in order as it drains; bounded by
    /// what one engine has outstanding.
    backlog: VecDeque<Command>,
    epoch: u64,
    seen: u64,
    _member: Member,
}

/// Counts a hub's subscribers, so the service knows when a hub has none left.
struct Member(Arc<AtomicUsize>);

impl Drop for Member {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ZkFeed {
    pub fn send(&mut self, command: Command) {
        self.backlog.push_back(command);
        self.flush();
    }

    pub fn connect(&mut self) {
        self.send(Command::Connect { id: self.id });
    }

    pub fn add_watch(&mut self) {
        self.send(Command::AddWatch { id: self.id });
    }

    /// The engine dropped its session: every delivery queued before this is stale.
    pub fn drop_session(&mut self) {
        self.epoch += 1;
        self.send(Command::DropSession { id: self.id });
    }

    pub fn read(&mut self, paths: Vec<String>) {
        self.send(Command::Read { id: self.id, seen: self.seen, paths });
    }

    /// A future that asks the hub for a `sync` of the root and answers the highest zxid of
    /// the root's ancestors (see [`ZkSession::sync_root`]).
    pub fn sync(&self) -> impl Future<Output = Result<i64, ZkError>> + Send + 'static {
        let (commands, id) = (self.commands.clone(), self.id);
        async move {
            let (reply, answer) = oneshot::channel();
            let gone = || ZkError::Read { path: "/".into(), source: zookeeper_client::Error::ConnectionLoss };
            commands.send(Command::Sync { id, reply }).await.map_err(|_| gone())?;
            answer.await.map_err(|_| gone())?
        }
    }

    fn flush(&mut self) {
        while let Some(command) = self.backlog.pop_front() {
            match self.commands.try_send(command) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(command)) => {
                    self.backlog.push_front(command);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.backlog.clear();
                    return;
                }
            }
        }
    }

    /// The next current delivery (stale ones skipped); `None` once the hub is gone. While it
    /// waits, commands the hub had no room for are sent as room frees.
    pub async fn next(&mut self) -> Option<Delivered> {
        loop {
            let delivery = tokio::select! {
                biased;
                delivery = self.deliveries.recv() => delivery?,
                permit = self.commands.reserve(), if !self.backlog.is_empty() => {
                    match permit {
                        Ok(permit) => {
                            if let Some(command) = self.backlog.pop_front() {
                                permit.send(command);
                            }
                        }
                        Err(_) => self.backlog.clear(),
                    }
                    continue;
                }
            };
            self.queued.take(delivery.bytes);
            if delivery.epoch < self.epoch {
                continue;
            }
            if let Delivered::Input { seq: Some(seq), .. } = &delivery.what {
                self.seen = *seq;
            }
            return Some(delivery.what);
        }
    }
}

impl Drop for ZkFeed {
    fn drop(&mut self) {
        // Best effort: a hub whose queue is full notices the closed queue at its next delivery.
        let _ = self.commands.try_send(Command::Unsubscribe { id: self.id });
    }
}

/// The hubs of one process, one per (ZooKeeper settings, root); owned by the service.
#[derive(Default)]
pub(crate) struct ZkHubs {
    hubs: Vec<HubEntry>,
    next_id: u64,
}

struct HubEntry {
    connect: ZkConnect,
    root: String,
    commands: mpsc::Sender<Command>,
    members: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl ZkHubs {
    /// A subscription to the hub of `config`'s ZooKeeper settings and root, started if none
    /// runs.
    pub fn subscribe(&mut self, config: &MirrorConfig) -> ZkFeed {
        let connect = config.zk_connect();
        // A hub whose task has ended (it cannot, short of a bug) is replaced, not reused.
        self.hubs.retain(|h| !h.commands.is_closed());
        let at = match self.hubs.iter().position(|h| h.connect == connect && h.root == config.root) {
            Some(at) => at,
            None => {
                let (commands, receiver) = mpsc::channel(COMMAND_CAPACITY);
                let hub = Hub::new(config.clone());
                let task = tokio::spawn(hub.run(receiver));
                self.hubs.push(HubEntry {
                    connect,
                    root: config.root.clone(),
                    commands,
                    members: Arc::new(AtomicUsize::new(0)),
                    task,
                });
                self.hubs.len() - 1
            }
        };
        let entry = &self.hubs[at];
        self.next_id += 1;
        let id = self.next_id;
        let (sender, deliveries, queued) = feed_queue(config.memory_budget);
        entry.members.fetch_add(1, Ordering::SeqCst);
        let mut feed = ZkFeed {
            id,
            commands: entry.commands.clone(),
            deliveries,
            queued: queued.clone(),
            backlog: VecDeque::new(),
            epoch: 0,
            seen: 0,
            _member: Member(entry.members.clone()),
        };
        // First in the feed's own order: a full hub queue only delays it, with what follows.
        feed.send(Command::Subscribe { id, target: config.target.clone(), deliveries: sender, queued });
        feed
    }

    /// Ends the hubs no mirror subscribes to any more (their session closes with them).
    pub async fn reap(&mut self) {
        let (idle, busy): (Vec<HubEntry>, Vec<HubEntry>) =
            std::mem::take(&mut self.hubs).into_iter().partition(|h| h.members.load(Ordering::SeqCst) == 0);
        self.hubs = busy;
        Self::end(idle).await;
    }

    /// Ends every hub (after the mirrors have stopped).
    pub async fn stop(&mut self) {
        Self::end(std::mem::take(&mut self.hubs)).await;
    }

    async fn end(hubs: Vec<HubEntry>) {
        let ends = hubs.into_iter().map(|hub| async move {
            drop(hub.commands);
            let mut task = hub.task;
            if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
            }
        });
        futures::future::join_all(ends).await;
    }
}

/// What one subscriber asked and has not been answered yet, in its order.
struct Request {
    parts: Vec<Part>,
    read_at_ms: u64,
}

struct Part {
    path: String,
    /// The hub read that answers it (0: answered from what the hub held).
    read_id: u64,
    answer: Option<Result<Fetched, ZkError>>,
}

struct Subscriber {
    /// The Redis target's name, for the log.
    target: String,
    deliveries: mpsc::Sender<Delivery>,
    queued: QueuedBytes,
    epoch: u64,
    /// The hub session this subscriber was told it is connected to.
    session_gen: Option<u64>,
    wants_connect: bool,
    wants_watch: bool,
    /// Gets change events: it was told the watch is added, in this connection.
    watching: bool,
    /// Reads with a lower id were sent before this subscriber's last sync: not shared with it.
    min_read_id: u64,
    requests: VecDeque<Request>,
    /// Its queue was full: it gets nothing until it has room for the end of its session, which
    /// sends it to a reconcile.
    overflowed: bool,
}

impl Subscriber {
    /// Queues `what` for this subscriber if its queue has room by count and by bytes (a queue
    /// over its bytes answers `Full`, as one over its count does); a refused delivery is
    /// dropped.
    fn try_queue(&self, what: Delivered) -> Result<(), mpsc::error::TrySendError<()>> {
        use mpsc::error::TrySendError::{Closed, Full};
        let bytes = delivery_bytes(&what);
        if !self.queued.try_add(bytes) {
            return Err(Full(()));
        }
        self.deliveries.try_send(Delivery { epoch: self.epoch, what, bytes }).map_err(|e| {
            self.queued.take(bytes);
            match e {
                Full(_) => Full(()),
                Closed(_) => Closed(()),
            }
        })
    }
}

/// The newest read of a path: in flight (`answer` None) or answered at `done_at`.
struct Latest {
    read_id: u64,
    sent_seq: u64,
    session_gen: u64,
    sent_ms: u64,
    done_at: Option<Instant>,
    answer: Option<Fetched>,
    bytes: usize,
}

struct ReadInfo {
    sent_ms: u64,
    session_gen: u64,
    /// The paths sent, each once.
    paths: Vec<String>,
    waiters: Vec<u64>,
}

struct Hub {
    config: MirrorConfig,
    subscribers: BTreeMap<u64, Subscriber>,
    session: Option<ZkSession>,
    session_gen: u64,
    connecting: Option<BoxFuture<Result<ZkSession, ZkError>>>,
    watcher: Option<PersistentWatcher>,
    watch_active: bool,
    adding: Option<BoxFuture<Result<PersistentWatcher, ZkError>>>,
    /// Events received so far, over every session.
    seq: u64,
    next_read_id: u64,
    reads: FuturesOrdered<BoxFuture<(u64, ReadResults)>>,
    read_info: HashMap<u64, ReadInfo>,
    latest: HashMap<String, Latest>,
    /// Answered reads kept for sharing, oldest first: (path, read id).
    kept: VecDeque<(String, u64)>,
    kept_bytes: usize,
    max_kept_bytes: usize,
    syncs: FuturesUnordered<BoxFuture<SyncDone>>,
    nagle: Option<JoinHandle<()>>,
    paths_read: Counter,
    paths_shared: Counter,
}

fn connection_loss(path: &str) -> ZkError {
    ZkError::Read { path: path.to_owned(), source: zookeeper_client::Error::ConnectionLoss }
}

/// What an answered read holds, roughly: the data, the children's names and the path.
fn fetched_bytes(fetched: &Fetched) -> usize {
    match fetched {
        Fetched::Present(z) => {
            z.path.len() + z.data.len() + z.children.iter().map(|c| c.len() + 24).sum::<usize>() + 160
        }
        Fetched::Absent { path, .. } | Fetched::Unreadable { path, .. } => path.len() + 160,
    }
}

impl Hub {
    fn new(config: MirrorConfig) -> Hub {
        let root = config.root.clone();
        Hub {
            max_kept_bytes: (config.memory_budget / 4).clamp(1 << 20, 64 << 20),
            config,
            subscribers: BTreeMap::new(),
            session: None,
            session_gen: 0,
            connecting: None,
            watcher: None,
            watch_active: false,
            adding: None,
            seq: 0,
            next_read_id: 1,
            reads: FuturesOrdered::new(),
            read_info: HashMap::new(),
            latest: HashMap::new(),
            kept: VecDeque::new(),
            kept_bytes: 0,
            syncs: FuturesUnordered::new(),
            nagle: None,
            paths_read: counter!("zkmirror_hub_paths_read_total", "root" => root.clone()),
            paths_shared: counter!("zkmirror_hub_paths_shared_total", "root" => root),
        }
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        info!(root = %self.config.root, zk = %self.config.zk_servers, "ZooKeeper hub starting: one session for every target of this root");
        loop {
            // Checked on every pass, not only when the hub idles: the other targets' traffic
            // may never leave it idle for long.
            let mut overflowed = self.subscribers.values().any(|s| s.overflowed);
            if overflowed {
                self.recover_overflowed();
                overflowed = self.subscribers.values().any(|s| s.overflowed);
            }
            tokio::select! {
                biased;
                // Events before replies: ZooKeeper sends a change's event before the reply to
                // any read served after it, and every engine's watermark relies on that order.
                event = next_event(&mut self.watcher), if self.watcher.is_some() => self.on_event(event),
                result = settled(&mut self.connecting), if self.connecting.is_some() => self.on_connected(result),
                result = settled(&mut self.adding), if self.adding.is_some() => self.on_watch(result),
                Some((read_id, results)) = self.reads.next(), if !self.reads.is_empty() => self.on_read(read_id, results),
                Some((id, reply, result)) = self.syncs.next(), if !self.syncs.is_empty() => {
                    if let Some(s) = self.subscribers.get_mut(&id) {
                        s.min_read_id = self.next_read_id;
                    }
                    let _ = reply.send(result);
                }
                command = commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                Some(_) = futures::future::OptionFuture::from(self.nagle.as_mut()), if self.nagle.is_some() => self.nagle = None,
                _ = tokio::time::sleep(OVERFLOW_CHECK), if overflowed => self.recover_overflowed(),
            }
        }
        if let Some(nagle) = self.nagle.take() {
            nagle.abort();
            let _ = nagle.await;
        }
        info!(root = %self.config.root, "ZooKeeper hub stopped");
    }

    fn deliver(&mut self, id: u64, what: Delivered) {
        let Some(s) = self.subscribers.get_mut(&id) else { return };
        if s.overflowed {
            return;
        }
        match s.try_queue(what) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!(root = %self.config.root, target = %s.target, "target fell behind this root's ZooKeeper events (its queue is full): it will reconcile once it catches up");
                s.overflowed = true;
                s.watching = false;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.subscribers.remove(&id);
            }
        }
    }

    /// The subscribers waiting on what `flag` marks (a connect, a watch), their marks cleared.
    fn take_waiting(&mut self, flag: impl Fn(&mut Subscriber) -> &mut bool) -> Vec<u64> {
        self.subscribers.iter_mut().filter_map(|(id, s)| std::mem::take(flag(s)).then_some(*id)).collect()
    }

    fn ids(&self, pick: impl Fn(&Subscriber) -> bool) -> Vec<u64> {
        self.subscribers.iter().filter(|(_, s)| pick(s)).map(|(id, _)| *id).collect()
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Subscribe { id, target, deliveries, queued } => {
                // A subscriber whose Unsubscribe was lost (the queue was full) is gone now.
                self.subscribers.retain(|_, s| !s.deliveries.is_closed());
                self.subscribers.insert(
                    id,
                    Subscriber {
                        target,
                        deliveries,
                        queued,
                        epoch: 0,
                        session_gen: None,
                        wants_connect: false,
                        wants_watch: false,
                        watching: false,
                        min_read_id: 0,
                        requests: VecDeque::new(),
                        overflowed: false,
                    },
                );
            }
            Command::Unsubscribe { id } => {
                self.subscribers.remove(&id);
            }
            Command::Connect { id } => {
                if let Some(session) = self.session.clone() {
                    if let Some(s) = self.subscribers.get_mut(&id) {
                        s.session_gen = Some(self.session_gen);
                    }
                    self.deliver(id, Delivered::Connected(session));
                } else if let Some(s) = self.subscribers.get_mut(&id) {
                    s.wants_connect = true;
                    if self.connecting.is_none() {
                        let config = self.config.clone();
                        self.connecting = Some(Box::pin(async move { ZkSession::connect(&config).await }));
                    }
                }
            }
            Command::AddWatch { id } => {
                if self.session.is_none() {
                    let error = ZkError::Watch {
                        path: self.config.root.clone(),
                        source: zookeeper_client::Error::ConnectionLoss,
                    };
                    self.deliver(id, input(Input::WatchFailed(error)));
                } else if self.watch_active {
                    if let Some(s) = self.subscribers.get_mut(&id) {
                        s.watching = !s.overflowed;
                    }
                    self.deliver(id, input(Input::WatchAdded));
                } else if let Some(s) = self.subscribers.get_mut(&id) {
                    s.wants_watch = true;
                    if self.adding.is_none() {
                        if let Some(session) = self.session.clone() {
                            let root = self.config.root.clone();
                            self.adding = Some(Box::pin(async move { session.watch(&root).await }));
                        }
                    }
                }
            }
            Command::DropSession { id } => {
                if let Some(s) = self.subscribers.get_mut(&id) {
                    s.epoch += 1;
                    s.session_gen = None;
                    s.wants_connect = false;
                    s.wants_watch = false;
                    s.watching = false;
                    s.requests.clear();
                    s.overflowed = false;
                }
            }
            Command::Read { id, seen, paths } => self.on_read_asked(id, seen, paths),
            Command::Sync { id, reply } => match self.session.clone() {
                Some(session) => {
                    let root = self.config.root.clone();
                    self.syncs.push(Box::pin(async move {
                        let result = session.sync_root(&root).await;
                        (id, reply, result)
                    }));
                }
                None => {
                    let _ = reply.send(Err(connection_loss(&self.config.root)));
                }
            },
        }
    }

    fn on_read_asked(&mut self, id: u64, seen: u64, paths: Vec<String>) {
        let Some(s) = self.subscribers.get(&id) else { return };
        let now = now_ms();
        let (overflowed, min_read_id) = (s.overflowed, s.min_read_id);
        let mut request = Request { parts: Vec::with_capacity(paths.len()), read_at_ms: now };
        if overflowed || self.session.is_none() {
            for path in paths {
                let error = connection_loss(&path);
                request.parts.push(Part { path, read_id: 0, answer: Some(Err(error)) });
            }
        } else {
            let mut to_read = Vec::new();
            let mut joined: Vec<u64> = Vec::new();
            let mut shared = 0u64;
            for path in paths {
                let usable = self.latest.get(&path).filter(|l| {
                    // An in-flight entry is joined only through its read's waiters list.
                    (l.answer.is_some() || self.read_info.contains_key(&l.read_id))
                        && l.session_gen == self.session_gen
                        && l.sent_seq >= seen
                        && l.read_id >= min_read_id
                        && l.done_at.is_none_or(|t| t.elapsed() <= SHARED_MAX_AGE)
                });
                match usable {
                    Some(l) => {
                        request.read_at_ms = request.read_at_ms.min(l.sent_ms);
                        shared += 1;
                        match &l.answer {
                            Some(answer) => {
                                request.parts.push(Part { path, read_id: 0, answer: Some(Ok(answer.clone())) })
                            }
                            None => {
                                if !joined.contains(&l.read_id) {
                                    joined.push(l.read_id);
                                }
                                request.parts.push(Part { path, read_id: l.read_id, answer: None });
                            }
                        }
                    }
                    None => {
                        to_read.push(path.clone());
                        request.parts.push(Part { path, read_id: self.next_read_id, answer: None });
                    }
                }
            }
            self.paths_shared.increment(shared);
            for read_id in joined {
                if let Some(info) = self.read_info.get_mut(&read_id) {
                    if !info.waiters.contains(&id) {
                        info.waiters.push(id);
                    }
                }
            }
            if !to_read.is_empty() {
                self.send_read(id, to_read, now);
            }
        }
        if let Some(s) = self.subscribers.get_mut(&id) {
            s.requests.push_back(request);
        }
        self.flush(id);
    }

    fn send_read(&mut self, id: u64, paths: Vec<String>, now: u64) {
        let Some(session) = self.session.as_ref() else { return };
        let read_id = self.next_read_id;
        self.next_read_id += 1;
        self.paths_read.increment(paths.len() as u64);
        for path in &paths {
            let latest = Latest {
                read_id,
                sent_seq: self.seq,
                session_gen: self.session_gen,
                sent_ms: now,
                done_at: None,
                answer: None,
                bytes: 0,
            };
            if let Some(old) = self.latest.insert(path.clone(), latest) {
                self.kept_bytes -= old.bytes;
            }
        }
        let info = ReadInfo { sent_ms: now, session_gen: self.session_gen, paths: paths.clone(), waiters: vec![id] };
        self.read_info.insert(read_id, info);
        let read = session.fetch_many(paths);
        self.reads.push_back(Box::pin(async move { (read_id, read.await) }));
    }

    fn on_read(&mut self, read_id: u64, results: ReadResults) {
        let Some(info) = self.read_info.remove(&read_id) else { return };
        let info_session_gen = info.session_gen;
        let now = Instant::now();
        let expired = results.iter().any(|(_, r)| r.as_ref().is_err_and(ZkError::is_session_expired));
        // An answer is kept for sharing only where another target could ask for it; a lone
        // target's answers go to it alone, moved, never copied.
        let keep = self.subscribers.len() > 1;
        for (path, result) in &results {
            // A path asked twice in one read (a walk's and an event's) is kept once.
            let Some(latest) = self.latest.get_mut(path).filter(|l| l.read_id == read_id && l.answer.is_none()) else {
                continue;
            };
            match result {
                Ok(fetched) if keep => {
                    latest.bytes = fetched_bytes(fetched);
                    latest.answer = Some(fetched.clone());
                    latest.done_at = Some(now);
                    self.kept_bytes += latest.bytes;
                    self.kept.push_back((path.clone(), read_id));
                }
                _ => {
                    self.latest.remove(path);
                }
            }
        }
        // A path the answer left out (fetch_many answers each, but a gap must not leave an
        // in-flight entry behind that later asks would join and wait on for ever).
        for path in &info.paths {
            if self.latest.get(path).is_some_and(|l| l.read_id == read_id && l.answer.is_none()) {
                self.latest.remove(path);
            }
        }
        self.trim_kept(now);
        let mut answers: HashMap<String, Result<Fetched, ZkError>> = results.into_iter().collect();
        let waiters = info.waiters.len();
        for (i, id) in info.waiters.into_iter().enumerate() {
            let Some(s) = self.subscribers.get_mut(&id) else { continue };
            // The last waiter takes each answer instead of a copy, at the path's last use: a
            // path may wait on this read more than once (a walk's and an event's in one
            // request, or a later request joining its own read).
            let mut uses: HashMap<String, usize> = HashMap::new();
            if i + 1 == waiters {
                for request in s.requests.iter() {
                    for part in request.parts.iter().filter(|p| p.read_id == read_id && p.answer.is_none()) {
                        *uses.entry(part.path.clone()).or_default() += 1;
                    }
                }
            }
            for request in s.requests.iter_mut() {
                for part in request.parts.iter_mut().filter(|p| p.read_id == read_id && p.answer.is_none()) {
                    let last_use = uses.get_mut(&part.path).is_some_and(|n| {
                        *n -= 1;
                        *n == 0
                    });
                    let answer = if last_use { answers.remove(&part.path) } else { answers.get(&part.path).cloned() };
                    part.answer = Some(answer.unwrap_or_else(|| Err(connection_loss(&part.path))));
                    request.read_at_ms = request.read_at_ms.min(info.sent_ms);
                }
            }
            self.flush(id);
        }
        if expired && self.session.is_some() && info_session_gen == self.session_gen {
            // The engines that got this answer end their session; so does the hub, for all,
            // rather than hand out the dead session again before its watcher says so.
            let gen = Some(self.session_gen);
            let in_session = self.ids(|s| s.session_gen == gen);
            self.end_session(in_session);
        }
    }

    /// Forgets answered reads past their age or beyond the bytes kept, oldest first.
    fn trim_kept(&mut self, now: Instant) {
        while let Some((path, read_id)) = self.kept.front() {
            let current = self.latest.get(path).filter(|l| l.read_id == *read_id && l.answer.is_some());
            let expired = current.is_none_or(|l| {
                self.kept_bytes > self.max_kept_bytes
                    || l.done_at.is_some_and(|t| now.duration_since(t) > SHARED_MAX_AGE)
            });
            if !expired {
                break;
            }
            if let Some(l) = current.map(|l| l.bytes) {
                self.kept_bytes -= l;
                self.latest.remove(path);
            }
            self.kept.pop_front();
        }
    }

    /// Delivers the subscriber's answered requests, in its order, as far as they are complete.
    fn flush(&mut self, id: u64) {
        loop {
            let Some(s) = self.subscribers.get_mut(&id) else { return };
            if s.overflowed {
                return;
            }
            let complete = s.requests.front().is_some_and(|r| r.parts.iter().all(|p| p.answer.is_some()));
            if !complete {
                return;
            }
            if s.deliveries.is_closed() {
                self.subscribers.remove(&id);
                return;
            }
            let permit = match s.deliveries.try_reserve() {
                Ok(permit) => permit,
                Err(mpsc::error::TrySendError::Full(())) => {
                    warn!(root = %self.config.root, target = %s.target, "target fell behind this root's ZooKeeper answers (its queue is full): it will reconcile once it catches up");
                    s.overflowed = true;
                    s.watching = false;
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(())) => return,
            };
            let Some(request) = s.requests.pop_front() else { return };
            let read_at_ms = request.read_at_ms;
            let results = request
                .parts
                .into_iter()
                .map(|p| {
                    let answer = p.answer.unwrap_or_else(|| Err(connection_loss(&p.path)));
                    (p.path, answer)
                })
                .collect();
            permit.send(Delivery {
                epoch: s.epoch,
                what: input(Input::ReadDone { results, read_at_ms: Some(read_at_ms) }),
                bytes: 0,
            });
        }
    }

    /// An overflowed subscriber with room again is told its session ended: its engine drops
    /// everything it read, asks for the session (the hub's, still open) and the watch again,
    /// and reconciles, as after a real expiry. Nothing it asked before is answered any more
    /// (its engine forgot those reads with the session).
    fn recover_overflowed(&mut self) {
        for id in self.ids(|s| s.overflowed) {
            let Some(s) = self.subscribers.get_mut(&id) else { continue };
            match s.try_queue(input(Input::SessionEnded)) {
                Ok(()) => {
                    s.overflowed = false;
                    s.session_gen = None;
                    s.watching = false;
                    s.requests.clear();
                    info!(root = %self.config.root, target = %s.target, "target that fell behind caught up: it starts over with a reconcile");
                }
                Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.subscribers.remove(&id);
                }
            }
        }
    }

    fn on_connected(&mut self, result: Result<ZkSession, ZkError>) {
        let waiting = self.take_waiting(|s| &mut s.wants_connect);
        match result {
            Ok(session) => {
                info!(root = %self.config.root, session = %session.session_id(), servers = %session.servers(),
                      "ZooKeeper session established (shared by every target of this root)");
                self.session_gen += 1;
                self.session = Some(session.clone());
                self.watch_active = false;
                for id in waiting {
                    if let Some(s) = self.subscribers.get_mut(&id) {
                        s.session_gen = Some(self.session_gen);
                    }
                    self.deliver(id, Delivered::Connected(session.clone()));
                }
            }
            Err(error) => {
                for id in waiting {
                    self.deliver(id, input(Input::ConnectFailed(error.clone())));
                }
            }
        }
    }

    fn on_watch(&mut self, result: Result<PersistentWatcher, ZkError>) {
        let waiting = self.take_waiting(|s| &mut s.wants_watch);
        match result {
            Ok(watcher) => {
                self.watcher = Some(watcher);
                self.watch_active = true;
                for id in waiting {
                    if let Some(s) = self.subscribers.get_mut(&id) {
                        s.watching = !s.overflowed;
                    }
                    self.deliver(id, input(Input::WatchAdded));
                }
            }
            Err(error) => {
                let expired = error.is_session_expired();
                for id in &waiting {
                    self.deliver(*id, input(Input::WatchFailed(error.clone())));
                }
                if expired {
                    // The waiting engines learn it from their watch's answer; tell the rest.
                    let gen = Some(self.session_gen);
                    let others = self.ids(|s| s.session_gen == gen && !s.overflowed);
                    self.end_session(others.into_iter().filter(|id| !waiting.contains(id)).collect());
                }
            }
        }
    }

    /// The session ended: `tell` hears it; every read of it is forgotten.
    fn end_session(&mut self, tell: Vec<u64>) {
        self.session = None;
        self.watcher = None;
        self.watch_active = false;
        self.adding = None;
        self.latest.clear();
        self.kept.clear();
        self.kept_bytes = 0;
        for id in tell {
            self.deliver(id, input(Input::SessionEnded));
        }
        for s in self.subscribers.values_mut() {
            s.session_gen = None;
            s.watching = false;
        }
    }

    fn on_event(&mut self, event: WatchedEvent) {
        let in_session = self.ids(|s| s.session_gen == Some(self.session_gen));
        match input_of(event) {
            Input::Changed { path, kind } => {
                self.seq += 1;
                let seq = self.seq;
                for id in self.ids(|s| s.watching) {
                    let input = Input::Changed { path: path.clone(), kind };
                    self.deliver(id, Delivered::Input { seq: Some(seq), input });
                }
            }
            Input::SessionEnded => self.end_session(in_session),
            change @ (Input::Disconnected | Input::Reconnected | Input::AuthFailed) => {
                if matches!(change, Input::Reconnected) {
                    // zookeeper-client does not restore persistent watches on reconnect: each
                    // engine asks for the watch again, and the first ask re-adds it.
                    self.watch_active = false;
                    for s in self.subscribers.values_mut() {
                        s.watching = false;
                    }
                    if let (Some(session), None) = (self.session.clone(), self.nagle.as_ref()) {
                        self.nagle = Some(tokio::task::spawn_blocking(move || session.disable_nagle()));
                    }
                }
                // Every engine in the session hears it (each its own copy of the unit variant).
                for id in in_session {
                    let copy = match change {
                        Input::Disconnected => Input::Disconnected,
                        Input::Reconnected => Input::Reconnected,
                        _ => Input::AuthFailed,
                    };
                    self.deliver(id, input(copy));
                }
            }
            // A watch event is nothing else.
            _ => {}
        }
    }
}

async fn next_event(watcher: &mut Option<PersistentWatcher>) -> WatchedEvent {
    match watcher.as_mut() {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Change;

    /// A hub with one subscriber whose engine has not drained its queue yet: the hub, the
    /// subscriber's feed (as its driver holds it), the hub's end of the feed's commands, and
    /// the queue's byte count.
    fn stalled_subscriber(memory_budget: usize) -> (Hub, ZkFeed, mpsc::Receiver<Command>, QueuedBytes) {
        let mut config = MirrorConfig::new("127.0.0.1:1", "redis://127.0.0.1:1", "/r");
        config.memory_budget = memory_budget;
        let mut hub = Hub::new(config);
        let (deliveries, receiver, queued) = feed_queue(memory_budget);
        let (commands, hub_commands) = mpsc::channel(COMMAND_CAPACITY);
        let feed = ZkFeed {
            id: 1,
            commands,
            deliveries: receiver,
            queued: queued.clone(),
            backlog: VecDeque::new(),
            epoch: 0,
            seen: 0,
            _member: Member(Arc::new(AtomicUsize::new(1))),
        };
        hub.on_command(Command::Subscribe { id: 1, target: "a".into(), deliveries, queued: queued.clone() });
        (hub, feed, hub_commands, queued)
    }

    fn event(seq: u64, path: String) -> Delivered {
        Delivered::Input { seq: Some(seq), input: Input::Changed { path, kind: Change::Created } }
    }

    fn queued_bytes(queued: &QueuedBytes) -> usize {
        queued.queued.load(Ordering::Acquire)
    }

    #[tokio::test]
    async fn a_queue_of_long_paths_overflows_by_bytes_before_its_count_and_recovers() {
        let budget = 8 << 20; // 2,048 deliveries, 512 KiB
        let (mut hub, mut feed, _commands, queued) = stalled_subscriber(budget);
        let long = "n".repeat(900);
        let mut accepted = 0;
        for i in 0..1000u64 {
            hub.deliver(1, event(i, format!("/r/{i:04}{long}")));
            if hub.subscribers[&1].overflowed {
                break;
            }
            accepted += 1;
        }
        assert!(hub.subscribers[&1].overflowed, "1,000 events of 900-byte paths fit in the queue");
        assert!(accepted < 2048 / 2, "the count would have held {accepted} and more");
        assert!(queued_bytes(&queued) <= budget / 16, "over the queue's bytes");
        // The engine drains its queue through its feed, which takes each delivery's bytes off.
        for _ in 0..accepted {
            assert!(matches!(feed.next().await, Some(Delivered::Input { input: Input::Changed { .. }, .. })));
        }
        assert_eq!(queued_bytes(&queued), 0, "the feed gave back every byte it received");
        // Then the hub tells it its session ended, once: it starts over with a reconcile.
        hub.recover_overflowed();
        assert!(!hub.subscribers[&1].overflowed);
        assert!(matches!(feed.next().await, Some(Delivered::Input { input: Input::SessionEnded, .. })));
        assert_eq!(queued_bytes(&queued), 0);
    }

    #[tokio::test]
    async fn stale_deliveries_give_their_bytes_back_too() {
        let (mut hub, mut feed, mut commands, queued) = stalled_subscriber(8 << 20);
        for i in 0..3u64 {
            hub.deliver(1, event(i, format!("/r/old{i}")));
        }
        // The engine drops its session: what was queued before is stale, and skipped.
        feed.drop_session();
        let drop = commands.try_recv().expect("the feed's DropSession");
        hub.on_command(drop);
        hub.deliver(1, event(3, "/r/new".to_owned()));
        match feed.next().await {
            Some(Delivered::Input { input: Input::Changed { path, .. }, .. }) => assert_eq!(path, "/r/new"),
            _ => panic!("the current delivery, after the stale ones"),
        }
        assert_eq!(queued_bytes(&queued), 0, "the skipped deliveries' bytes were given back");
    }

    #[test]
    fn a_delivery_larger_than_the_bound_gets_through_an_empty_queue() {
        let (mut hub, _feed, _commands, queued) = stalled_subscriber(1 << 20); // 64 KiB
        hub.deliver(1, event(0, format!("/r/{}", "n".repeat(100 << 10))));
        assert!(!hub.subscribers[&1].overflowed, "a 100 KiB path alone must not overflow an empty queue");
        hub.deliver(1, event(1, "/r/next".to_owned()));
        assert!(hub.subscribers[&1].overflowed, "but nothing more fits behind it");
        assert!(queued_bytes(&queued) > 64 << 10);
    }

    #[test]
    fn short_paths_are_bounded_by_the_count() {
        let (mut hub, _feed, _commands, queued) = stalled_subscriber(8 << 20);
        for i in 0..2048u64 {
            hub.deliver(1, event(i, format!("/r/n{i}")));
        }
        assert!(!hub.subscribers[&1].overflowed, "2,048 short events fit: the count's bound");
        assert!(queued_bytes(&queued) < (8 << 20) / 16);
        hub.deliver(1, event(2048, "/r/one-more".into()));
        assert!(hub.subscribers[&1].overflowed, "the 2,049th does not");
    }
}

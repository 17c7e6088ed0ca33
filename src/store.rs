//! The Redis side: applies batches of znode writes through the schema's Lua scripts, writes the
//! status hash, and finds keys that no longer belong to the tree.
//!
//! Architecture invariant: this module never imports `zookeeper_client`; it only sees the
//! [`crate::znode`] types. It names no key itself: [`Keys`] does.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::{Pipeline, Value};

use crate::cluster::{ClusterConn, ClusterLink, ClusterUrl};
use crate::config::{mask_url, MirrorConfig};
use crate::error::StoreError;
use crate::path;
use crate::schema::{status_field, KeyKind, Keys, Scripts};
use crate::sentinel::{SentinelLink, SentinelUrl};
use crate::znode::{Znode, ZnodeStat};

/// One change to make in Redis for one znode.
#[derive(Debug)]
pub enum Write {
    /// Write data, meta and children (the script refuses older reads and tombstoned ones).
    Put(Znode),
    /// The znode is gone: remove its keys, leave a tombstone at `tomb_zxid`.
    Delete { path: String, tomb_zxid: Option<i64> },
    /// The mirror may not read the znode (`NoAuth`): remove its keys, no tombstone, unless
    /// Redis holds a read newer than `stat` (the znode's `Stat` when it was found unreadable):
    /// ordered by `(czxid, mzxid, pzxid, aversion)` like a put, so a stale `NoAuth` cannot
    /// remove what a newer readable read wrote (opening an ACL bumps `aversion`).
    Hide { path: String, stat: ZnodeStat },
    /// The filter leaves the znode out: remove its keys, no tombstone, whatever Redis holds.
    /// Unconditional because it follows from the configuration, not from a read.
    Exclude { path: String },
}

impl Write {
    pub fn path(&self) -> &str {
        match self {
            Write::Put(znode) => &znode.path,
            Write::Delete { path, .. } | Write::Hide { path, .. } | Write::Exclude { path } => path,
        }
    }

    /// Bytes this write puts on the wire, roughly; batches are bounded by it.
    pub fn weight(&self) -> usize {
        match self {
            Write::Put(znode) => {
                256 + znode.path.len() + znode.data.len() + znode.children.iter().map(|c| c.len() + 8).sum::<usize>()
            }
            Write::Delete { path, .. } | Write::Hide { path, .. } | Write::Exclude { path } => 128 + path.len(),
        }
    }
}

/// What one batch did, counted from the scripts' answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Znodes written because Redis differed.
    pub written: u64,
    /// Znodes already exact: nothing was written.
    pub unchanged: u64,
    /// Writes refused because Redis already held a newer read (or a tombstone).
    pub refused: u64,
    /// Znodes whose keys were removed.
    pub deleted: u64,
    /// Writes whose script failed (a key of the wrong type, say): nothing of them was written.
    pub failed: u64,
}

/// Why a script refused a write: Redis already holds something newer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The stored read is newer by `(czxid, mzxid, pzxid, aversion)`.
    Older,
    /// A tombstone says every incarnation up to this read's `czxid` is dead.
    Tombstoned,
    /// A delete found a newer incarnation stored (its `czxid` is above the tombstone zxid).
    NewerIncarnation,
    /// Redis's clock was past the read's deadline: the read was held too long (the mirror was
    /// paused?) and may predate a tombstone that has expired since. Read it again.
    Stale,
    /// The slot's fence holds `seen`, a newer leader's token: this writer is deposed.
    Fenced { seen: i64 },
    /// Redis holds a version (or tombstone) of a newer history (`epoch`) than the write's: a
    /// mirror saw ZooKeeper go back (a restore) and rebuilt the copy; this one must adopt it.
    NewerHistory,
}

/// What `P:mirror` says of the watermark and the history it belongs to: read before a walk's
/// sync, to judge afterwards whether ZooKeeper went back (see `engine::history`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoredMark {
    /// `zxid`, absent until a first claim.
    pub zxid: Option<i64>,
    /// `epoch`, absent = 0.
    pub epoch: u64,
}

/// What Redis holds of one path, read to confirm that ZooKeeper went back (see
/// `engine::history`): the stored version's order and history, and the tombstone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoredVersion {
    /// From `P:{PATH}:meta`; `None` when absent (or not a hash of numbers: proves nothing).
    pub meta: Option<StoredMeta>,
    /// From `P:{PATH}:tomb`; `None` when absent (or malformed).
    pub tomb: Option<StoredTomb>,
}

/// The fields of a stored version the scripts order by, and its history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoredMeta {
    pub czxid: i64,
    pub mzxid: i64,
    pub pzxid: i64,
    pub aversion: i64,
    /// `epoch`, absent = 0.
    pub epoch: u64,
}

/// A tombstone: every incarnation created up to `zxid`, in history `epoch`, is dead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoredTomb {
    pub zxid: i64,
    pub epoch: u64,
}

impl StoredTomb {
    /// `T` (history 0) or `T@E`, as `delete.lua` writes it.
    fn parse(value: &str) -> Option<StoredTomb> {
        let (zxid, epoch) = value.split_once('@').unwrap_or((value, "0"));
        Some(StoredTomb { zxid: zxid.parse().ok()?, epoch: epoch.parse().ok()? })
    }
}

/// What became of one [`Write`] of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Written,
    /// Redis was already exact: nothing written, nothing appended to the stream.
    Unchanged,
    Refused(Refusal),
    /// The znode's keys were removed (delete or hide).
    Deleted,
    /// The script failed for this znode only (for example a key of the layout holding the
    /// wrong type, or `P:changes` not a stream); the text is Redis's answer and names the key
    /// where the script could. Nothing of this write was applied: every script checks what can
    /// fail before its first write. Retrying gives the same answer until someone repairs the
    /// key, so it is this znode's problem (log, count, skip), not Redis being down.
    Failed(String),
}

/// The answer to [`Store::apply`]: one outcome per write, in the order given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub outcomes: Vec<WriteOutcome>,
    /// Why raising the status `zxid` failed, when it was asked for and did (the status key of
    /// the wrong type, say). The writes' outcomes stand regardless.
    pub zxid_failure: Option<String>,
    /// The status hash did not exist when the zxid was to be raised: Redis lost the mirror's
    /// keys since the status was last written (nothing was written by `advance_zxid.lua`).
    pub status_missing: bool,
}

impl Applied {
    pub fn counts(&self) -> BatchOutcome {
        let mut counts = BatchOutcome::default();
        for outcome in &self.outcomes {
            match outcome {
                WriteOutcome::Written => counts.written += 1,
                WriteOutcome::Unchanged => counts.unchanged += 1,
                WriteOutcome::Refused(_) => counts.refused += 1,
                WriteOutcome::Deleted => counts.deleted += 1,
                WriteOutcome::Failed(_) => counts.failed += 1,
            }
        }
        counts
    }

    /// The writes that failed: their index in the batch and Redis's answer.
    pub fn failures(&self) -> impl Iterator<Item = (usize, &str)> {
        self.outcomes.iter().enumerate().filter_map(|(i, outcome)| match outcome {
            WriteOutcome::Failed(why) => Some((i, why.as_str())),
            _ => None,
        })
    }
}

/// Whether an error answered to one command of a pipeline is Redis's state rather than the
/// command's keys: the same command would succeed later or elsewhere, so the whole batch
/// fails (the caller treats Redis as down, or reloads the scripts for `NOSCRIPT`). Anything
/// else (`WRONGTYPE`, a script's own error) concerns the one write.
fn is_server_state(error: &redis::ServerError) -> bool {
    use redis::ServerErrorKind as K;
    match error.kind() {
        Some(K::NoScript | K::BusyLoading | K::ReadOnly | K::MasterDown | K::TryAgain | K::ClusterDown) => true,
        Some(K::Moved | K::Ask | K::CrossSlot | K::NoPerm | K::ExecAbort) => true,
        Some(_) => false,
        None => matches!(error.code(), "OOM" | "BUSY" | "MISCONF" | "NOREPLICAS" | "LOADING" | "NOAUTH"),
    }
}

/// A pipeline answer's text for a log line: code and detail, as Redis sent them.
fn describe(error: &redis::ServerError) -> String {
    match error.details() {
        Some(detail) => format!("{} {detail}", error.code()),
        None => error.code().to_owned(),
    }
}

/// What [`Store::write_status`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusWrite {
    /// Whether the status hash existed just before this write; false after the first write of
    /// a run means Redis lost the mirror's keys.
    pub existed: bool,
}

/// A write's change-stream entry behind a cluster, before its script answered.
enum StreamEntry {
    Put(Vec<(&'static str, String)>),
    Delete { path: String, reason: &'static str },
}

/// How the store reaches Redis.
#[derive(Clone)]
enum Link {
    /// One server: redis-rs's `ConnectionManager` reconnects to it after a failure.
    Direct(ConnectionManager),
    /// The primary of a Sentinel service: resolved again through the sentinels after a
    /// failure, since after a failover it is another server (see [`crate::sentinel`]).
    Sentinel(Arc<SentinelLink>),
    /// A Redis Cluster: each command to the primary of its slot, pipelines split per node,
    /// redirects followed per command (see [`crate::cluster`]).
    Cluster(Arc<ClusterLink>),
}

/// The connection one command or pipeline goes over.
#[derive(Clone)]
enum Conn {
    Direct(ConnectionManager),
    Node(MultiplexedConnection),
    Cluster(ClusterConn),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Conn::Direct(conn) => conn.req_packed_command(cmd),
            Conn::Node(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Direct(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Node(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Direct(conn) => conn.get_db(),
            Conn::Node(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// A handle on the mirror's Redis. Cheap to clone: clones share one multiplexed connection.
#[derive(Clone)]
pub struct Store {
    link: Link,
    keys: Keys,
    scripts: Arc<Scripts>,
    /// The URL with the password masked: what errors and logs name.
    server: String,
    /// The ACL user the URL names (`default` when none): what a refusal by Redis's ACLs names.
    user: String,
    tombstone_ttl_ms: u64,
    changes_maxlen: u64,
    /// `P:mirror`, or `P:mirror:{ROOT}` when the prefix is shared by several roots.
    status_key: String,
    /// The leader's fencing token, sent with every script; `None` for a mirror run without
    /// an election (its scripts are not fenced).
    fence: Option<i64>,
    /// `fence` as the scripts take it: decimal, or empty.
    fence_arg: String,
    /// Whether consecutive puts of a batch go to `put_batch.lua`, up to [`PUT_BATCH`] per call,
    /// instead of one `put.lua` call each: on one Redis or a Sentinel primary, where every key
    /// is on the one server. (A Redis Cluster keeps `put.lua`: one znode's keys share a slot,
    /// different znodes' do not.)
    put_batches: bool,
}

/// Most znodes in one `put_batch.lua` call. The call is one atomic step of Redis: at about
/// 8 µs per znode, 128 hold other clients back for about a millisecond, and already share
/// nearly all of the per-call cost (a call of 100 znodes cost as much per znode as one of 1000).
const PUT_BATCH: usize = 128;

/// One command of a write pipeline, and the writes it answers for.
enum Sent {
    /// `put.lua` or `delete.lua` for the write at this index.
    One { index: usize, is_put: bool },
    /// `put_batch.lua` for `count` puts from this index on; it answers an array, one per put.
    Puts { first: usize, count: usize },
}

impl Store {
    /// Builds the handle without connecting: the first command connects, and a Redis that is
    /// down at start is retried by the caller like any later outage.
    pub fn new(config: &MirrorConfig) -> Result<Store, StoreError> {
        let server = mask_url(&config.redis_url);
        let connection_timeout = Duration::from_secs(2);
        let response_timeout = Duration::from_secs(10);
        let node_config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connection_timeout))
            .set_response_timeout(Some(response_timeout));
        let cluster = ClusterUrl::parse(&config.redis_url);
        let (link, user) = match SentinelUrl::parse(&config.redis_url) {
            None if cluster.is_some() => {
                let parsed = cluster.into_iter().flatten().next().ok_or_else(|| StoreError::Unexpected {
                    server: server.clone(),
                    what: "the Cluster URL",
                    detail: ClusterUrl::parse(&config.redis_url).and_then(Result::err).unwrap_or_default(),
                })?;
                let user = parsed.user.clone().unwrap_or_else(|| "default".to_owned());
                let link = ClusterLink::new(parsed, &config.redis_tls, config.redis_password.as_ref(), node_config);
                (Link::Cluster(Arc::new(link)), user)
            }
            Some(parsed) => {
                let parsed = parsed.map_err(|why| StoreError::Unexpected {
                    server: server.clone(),
                    what: "the Sentinel URL",
                    detail: why,
                })?;
                let user = parsed.user.clone().unwrap_or_else(|| "default".to_owned());
                let link = SentinelLink::new(parsed, &config.redis_tls, config.redis_password.as_ref(), node_config)
                    .map_err(|source| StoreError::Redis { server: server.clone(), source })?;
                (Link::Sentinel(Arc::new(link)), user)
            }
            None => {
                // The URL, TLS material and password, as every command connects (Nagle off there too).
                let client =
                    config.redis_client().map_err(|source| StoreError::Redis { server: server.clone(), source })?;
                // Named in ACL refusals: which user lacks the right.
                let user = client.get_connection_info().redis_settings().username().unwrap_or("default").to_owned();
                let manager_config = redis::aio::ConnectionManagerConfig::new()
                    .set_number_of_retries(1)
                    .set_connection_timeout(Some(connection_timeout))
                    .set_response_timeout(Some(response_timeout));
                let conn = ConnectionManager::new_lazy_with_config(client, manager_config)
                    .map_err(|source| StoreError::Redis { server: server.clone(), source })?;
                (Link::Direct(conn), user)
            }
        };
        // Every key on one server: several znodes per script call (see `put_batches`). A link
        // whose znodes lie on several servers or slots (a Redis Cluster) must not match here.
        let put_batches = matches!(link, Link::Direct(_) | Link::Sentinel(_));
        Ok(Store {
            put_batches,
            link,
            keys: Keys::new(&config.prefix),
            scripts: Arc::new(Scripts::load()),
            server,
            user,
            tombstone_ttl_ms: config.tombstone_ttl.as_millis() as u64,
            changes_maxlen: config.changes_maxlen,
            status_key: if config.shared_prefix {
                Keys::new(&config.prefix).root_status(&config.root)
            } else {
                Keys::new(&config.prefix).status()
            },
            fence: config.leadership.as_ref().map(|l| l.fence),
            fence_arg: config.leadership.as_ref().map(|l| l.fence.to_string()).unwrap_or_default(),
        })
    }

    /// The same store, sending every put through `put.lua` one znode per call when `batches`
    /// is false (as a Redis Cluster must): the tests compare both paths' answers write by write.
    #[doc(hidden)]
    pub fn with_put_batches(mut self, batches: bool) -> Store {
        self.put_batches = batches;
        self
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    fn error(&self, source: redis::RedisError) -> StoreError {
        if let Link::Sentinel(link) = &self.link {
            // A server gone, or demoted to a replica (`READONLY`): ask the sentinels again.
            if crate::sentinel::needs_resolving(&source) {
                link.invalidate();
            }
        }
        match refused_by_acl(&self.scripts, source.code().unwrap_or(""), source.detail()) {
            Some(action) => self.denied(action, source.to_string()),
            None => StoreError::Redis { server: self.server.clone(), source },
        }
    }

    fn denied(&self, action: String, reply: String) -> StoreError {
        StoreError::Denied { server: self.server.clone(), user: self.user.clone(), action, reply }
    }

    /// The connection for the next command. Behind Sentinel, once the primary changed (the
    /// connection reached another server than the one written to before), every command fails
    /// with the [`crate::sentinel::Switch`] until [`Store::load_scripts`] acknowledges it: the
    /// engine takes the failure for an outage and reconciles when Redis answers again (its
    /// probe is `load_scripts`), so writes the old primary acknowledged and the new one lacks
    /// are rewritten, and no watermark earned on the old one is claimed on the new one.
    async fn conn(&self) -> Result<Conn, StoreError> {
        match &self.link {
            Link::Direct(manager) => Ok(Conn::Direct(manager.clone())),
            Link::Sentinel(link) => {
                let conn = link.connection().await.map_err(|e| self.error(e))?;
                if let Some(switch) = link.pending_switch() {
                    let source = switch.error(&link.url().service);
                    return Err(StoreError::Redis { server: self.server.clone(), source });
                }
                Ok(Conn::Node(conn))
            }
            Link::Cluster(link) => {
                if let Some(switch) = link.pending_switch() {
                    return Err(StoreError::Redis { server: self.server.clone(), source: switch.error() });
                }
                Ok(Conn::Cluster(ClusterConn(link.clone())))
            }
        }
    }

    /// Loads the Lua scripts. Needed after every (re)connect: a Redis restarted empty has none,
    /// and scripts inside a pipeline are not loaded for us.
    ///
    /// Also acknowledges a change of Sentinel primary (see [`Store::conn`]): the engine loads
    /// the scripts when Redis returns from an outage and at every resync, and a reconcile walk
    /// follows each time.
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        if let Link::Sentinel(link) = &self.link {
            link.connection().await.map_err(|e| self.error(e))?;
            if let Some(switch) = link.take_switch() {
                tracing::warn!(from = %switch.from, to = %switch.to,
                               "writing to a new Redis primary: reconciling the copy (a failover may have lost writes)");
            }
        }
        if let Link::Cluster(link) = &self.link {
            // Every primary, so that no node answers NOSCRIPT to a pipeline (redis-rs loads no
            // script there); asking for them refreshes the slot map, which is where a failover
            // shows (a new primary's id): acknowledged here, and the engine reconciles.
            let primaries = link.primaries().await.map_err(|e| self.error(e))?;
            if let Some(switch) = link.take_switch() {
                tracing::warn!(from = ?switch.from, to = ?switch.to,
                               "writing to new Redis Cluster primaries: reconciling the copy (a failover may have lost writes)");
            }
            for (_, mut conn) in primaries {
                for script in self.scripts.all() {
                    script.load_async(&mut conn).await.map_err(|e| self.error(e))?;
                }
            }
            return Ok(());
        }
        let mut conn = self.conn().await?;
        for script in self.scripts.all() {
            script.load_async(&mut conn).await.map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    /// Raises the fence of every hash slot to this leader's token (`fence.lua` on each of the
    /// 16,384 fence keys): done before a leader's first write, and again whenever its scripts
    /// are loaded (a Redis that lost its keys lost the fence too). From then on a deposed
    /// leader's write is refused in every slot, also in slots this leader has not written yet.
    /// Does nothing for a mirror run without an election.
    ///
    /// Fails with [`StoreError::Fenced`] if a slot has seen a newer token: another instance
    /// has led since this one won its election.
    pub async fn publish_fence(&self) -> Result<(), StoreError> {
        let Some(token) = self.fence else { return Ok(()) };
        let mut conn = self.conn().await?;
        const CHUNK: usize = 2048;
        for first in (0..crate::fence::SLOTS).step_by(CHUNK) {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for slot in first..(first + CHUNK).min(crate::fence::SLOTS) {
                pipe.cmd("EVALSHA").arg(self.scripts.fence.get_hash()).arg(1).arg(self.keys.fence(slot)).arg(token);
            }
            let answers: Vec<Value> = pipe.query_async(&mut conn).await.map_err(|e| self.error(e))?;
            for answer in answers {
                if let Value::ServerError(e) = answer {
                    return Err(self.refusal_error(&e, token));
                }
            }
        }
        Ok(())
    }

    /// The fence key a script writing `key` is passed: the one of `key`'s hash slot. A mirror
    /// run without an election sends no token, so its scripts never read the key; it passes
    /// `key` itself (in the same slot, and free to build) instead of computing one per write.
    fn fence_key_for(&self, key: &str) -> String {
        match self.fence {
            Some(_) => self.keys.fence_for(key),
            None => key.to_owned(),
        }
    }

    /// The error for a script's error reply outside a batch: [`StoreError::Fenced`] for the
    /// fence's `FENCED`, else the reply as Redis gave it.
    fn refusal_error(&self, e: &redis::ServerError, token: i64) -> StoreError {
        match fenced_by(e.code(), e.details()) {
            Some((seen, key)) => StoreError::Fenced { server: self.server.clone(), key, fence: token, seen },
            None => self.error(e.clone().into()),
        }
    }

    /// Applies `writes` in order in one pipeline (one round trip) and answers one
    /// [`WriteOutcome`] per write. The pipeline is built now; the returned future only sends it.
    ///
    /// A script failing on one znode (a key of the wrong type) fails that write alone. Only a
    /// connection error, or an answer that says Redis itself cannot take writes now (`NOSCRIPT`,
    /// `LOADING`, `READONLY`, `OOM`, ...), fails the whole call.
    ///
    /// `advance_to`, when given, raises the status `zxid` (never lowers it) after the writes,
    /// in the same pipeline, whatever the writes answer: the store does not judge it. It is the
    /// caller's decision, and the caller must only send a zxid every change at or below which
    /// Redis has already acknowledged (a watermark over earlier outcomes), never one that
    /// counts on writes of this very pipeline, which may fail or be refused. A zxid that this
    /// batch's own writes earn goes with a later pipeline, once their outcomes are known.
    ///
    /// `read_deadline_ms`, when given, is a unix time in ms by Redis's clock past which every
    /// write of the batch is refused as stale ([`Refusal::Stale`]): the caller passes the time
    /// its oldest read was sent plus a bound below the tombstone ttl.
    ///
    /// `epoch` is the mirror's history: every script orders by it before any zxid (see
    /// `schema/layout.md`, "ZooKeeper went back"), and the watermark is claimed in it.
    pub fn apply(
        &self,
        writes: &[Write],
        advance_to: Option<i64>,
        now_ms: u64,
        read_deadline_ms: Option<u64>,
        epoch: u64,
    ) -> impl Future<Output = Result<Applied, StoreError>> + Send + 'static {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let deadline = read_deadline_ms.map(|d| d.to_string()).unwrap_or_default();
        let cluster = matches!(self.link, Link::Cluster(_));
        let mut sent: Vec<Sent> = Vec::new();
        let mut i = 0;
        while i < writes.len() {
            let puts = if self.put_batches && !cluster {
                writes[i..].iter().take(PUT_BATCH).take_while(|w| matches!(w, Write::Put(_))).count()
            } else {
                0
            };
            if puts > 0 {
                let znodes = writes[i..i + puts].iter().filter_map(|w| match w {
                    Write::Put(znode) => Some(znode),
                    _ => None,
                });
                self.add_put_batch(&mut pipe, znodes, puts, now_ms, &deadline, epoch);
                sent.push(Sent::Puts { first: i, count: puts });
                i += puts;
            } else {
                self.add_write(&mut pipe, &writes[i], now_ms, &deadline, epoch, cluster);
                sent.push(Sent::One { index: i, is_put: matches!(writes[i], Write::Put(_)) });
                i += 1;
            }
        }
        let mut advance = redis::pipe();
        if let Some(zxid) = advance_to {
            // Behind a cluster, sent after the change-stream entries (see `apply_cluster`).
            self.add_advance(if cluster { &mut advance } else { &mut pipe }, zxid, epoch);
        }
        let entries: Vec<StreamEntry> =
            if cluster { writes.iter().map(|w| self.stream_entry(w)).collect() } else { Vec::new() };
        let store = self.clone();
        let total = writes.len();
        async move {
            let mut conn = store.conn().await?;
            let mut answers: Vec<Value> = match &conn {
                Conn::Cluster(link) => store.apply_cluster(&link.0, &pipe, &advance, entries).await?,
                _ => pipe.query_async(&mut conn).await.map_err(|e| store.error(e))?,
            };
            let expected = sent.len() + usize::from(advance_to.is_some());
            if answers.len() != expected {
                return Err(
                    store.unexpected("a write pipeline", format!("{} answers to {expected} commands", answers.len()))
                );
            }
            // Every error answered, also inside a batch's array (one per znode).
            let errors = || {
                answers.iter().flat_map(|a| match a {
                    Value::Array(items) => items.iter().collect::<Vec<_>>(),
                    other => vec![other],
                })
            };
            // A refusal by Redis's ACLs concerns every write alike (the user lacks a right), not
            // one znode: inside a script it comes as a plain `ERR`, so it is looked for first.
            if let Some(denied) = errors().find_map(|a| match a {
                Value::ServerError(e) => refused_by_acl(&store.scripts, e.code(), e.details())
                    .map(|action| store.denied(action, describe(e))),
                _ => None,
            }) {
                return Err(denied);
            }
            if let Some(error) = errors().find_map(|a| match a {
                Value::ServerError(e) if is_server_state(e) => Some(e.clone()),
                _ => None,
            }) {
                return Err(store.error(error.into()));
            }
            let advance_answer = if advance_to.is_some() { answers.pop() } else { None };
            let status_missing = matches!(advance_answer, Some(Value::Nil));
            let zxid_failure = match advance_answer {
                Some(Value::ServerError(e)) => {
                    if let (Some(token), Some((seen, key))) = (store.fence, fenced_by(e.code(), e.details())) {
                        return Err(StoreError::Fenced { server: store.server.clone(), key, fence: token, seen });
                    }
                    Some(describe(&e))
                }
                _ => None,
            };
            let mut outcomes = Vec::with_capacity(total);
            for (command, answer) in sent.into_iter().zip(answers) {
                match command {
                    Sent::One { index, is_put } => {
                        debug_assert_eq!(index, outcomes.len());
                        outcomes.push(script_outcome(is_put, answer));
                    }
                    Sent::Puts { first, count } => {
                        debug_assert_eq!(first, outcomes.len());
                        match answer {
                            Value::Array(items) if items.len() == count => {
                                outcomes.extend(items.into_iter().map(|item| script_outcome(true, item)));
                            }
                            // The call failed as a whole (nothing of it applies: each znode's
                            // writes come after everything that can fail for it, and Redis's own
                            // errors were handled above): the same answer for each of its puts.
                            Value::ServerError(e) => {
                                outcomes.extend(std::iter::repeat_n(WriteOutcome::Failed(describe(&e)), count));
                            }
                            other => {
                                let why = format!("unexpected answer to {count} puts: {other:?}");
                                outcomes.extend(std::iter::repeat_n(WriteOutcome::Failed(why), count));
                            }
                        }
                    }
                }
            }
            Ok(Applied { outcomes, zxid_failure, status_missing })
        }
    }

    /// `put_batch.lua` for `count` znodes (see the script's header for its KEYS and ARGV).
    fn add_put_batch<'z>(
        &self,
        pipe: &mut Pipeline,
        znodes: impl Iterator<Item = &'z Znode> + Clone,
        count: usize,
        now_ms: u64,
        deadline: &str,
        epoch: u64,
    ) {
        let keys = &self.keys;
        // EVALSHA built by hand: scripts in a pipeline are not loaded for us (see load_scripts).
        let cmd = pipe.cmd("EVALSHA").arg(self.scripts.put_batch.get_hash()).arg(1 + 5 * count).arg(keys.changes());
        for znode in znodes.clone() {
            let data_key = keys.data(&znode.path);
            let fence_key = self.fence_key_for(&data_key);
            cmd.arg(data_key)
                .arg(keys.meta(&znode.path))
                .arg(keys.children(&znode.path))
                .arg(keys.tomb(&znode.path))
                .arg(fence_key);
        }
        cmd.arg(now_ms).arg(self.changes_maxlen).arg(deadline).arg(epoch).arg(&self.fence_arg);
        for znode in znodes {
            cmd.arg(znode.children.len())
                .arg(&znode.stat.fields()[..])
                .arg(&znode.path)
                .arg(znode.data.as_slice())
                .arg(&znode.children);
        }
    }

    /// The cluster's half of [`Store::apply`]: the scripts (which append nothing to the change
    /// stream there: it is in another slot) through the link, one pipeline per node; then, in the
    /// batch's order, one `XADD` for each write a script applied, to the stream's own node; then
    /// the status `zxid`, if asked for. So a stream entry is always appended after its change is
    /// in the keys, and before any `zxid` that covers it is claimed (the caller claims a batch's
    /// own zxid only with a later batch, once this one answered). A node that fails fails the
    /// call, after the entries of what the other nodes applied are appended: the engine takes
    /// Redis for down and reconciles. Answers as the single-Redis pipeline would: one value per
    /// write (a delete's `{1, mzxid, version, zxid}` as 1), then the status answer if asked.
    async fn apply_cluster(
        &self,
        link: &ClusterLink,
        writes: &Pipeline,
        advance: &Pipeline,
        entries: Vec<StreamEntry>,
    ) -> Result<Vec<Value>, StoreError> {
        let cmds: Vec<&redis::Cmd> = writes.cmd_iter().collect();
        let (answers, failure) = link.run(&cmds).await;
        let mut appends: Vec<redis::Cmd> = Vec::new();
        for (answer, entry) in answers.iter().zip(entries) {
            match (answer, entry) {
                (Some(Value::Int(1)), StreamEntry::Put(fields)) => appends.push(self.append_cmd(&fields)),
                (Some(Value::Array(deleted)), StreamEntry::Delete { path, reason }) => {
                    let text = |i: usize| -> String {
                        deleted.get(i).and_then(|v| redis::from_redis_value_ref::<String>(v).ok()).unwrap_or_default()
                    };
                    let fields = [
                        ("op", "del".to_owned()),
                        ("path", path),
                        ("mzxid", text(1)),
                        ("version", text(2)),
                        ("zxid", text(3)),
                        ("reason", reason.to_owned()),
                    ];
                    appends.push(self.append_cmd(&fields));
                }
                _ => {}
            }
        }
        if !appends.is_empty() {
            let refs: Vec<&redis::Cmd> = appends.iter().collect();
            let (appended, append_failure) = link.run(&refs).await;
            if let Some(e) = append_failure {
                return Err(self.error(e));
            }
            if let Some(Some(Value::ServerError(e))) =
                appended.into_iter().find(|a| matches!(a, Some(Value::ServerError(_))))
            {
                // A newer leader's fence in the stream's slot: deposed, as a refused script is.
                if let (Some(token), Some((seen, key))) = (self.fence, fenced_by(e.code(), e.details())) {
                    return Err(StoreError::Fenced { server: self.server.clone(), key, fence: token, seen });
                }
                // NOSCRIPT (a node flushed or restarted), LOADING, READONLY, ...: Redis's state,
                // which the engine handles as it does for the scripts (reload, then reconcile).
                if is_server_state(&e) {
                    return Err(self.error(e.into()));
                }
                // The stream key holds another type, or the stream's node refuses writes: the
                // changes are in, their entries are not, so no zxid may be claimed over them.
                if failure.is_none() {
                    return Err(self.unexpected("an append to the change stream", describe(&e)));
                }
            }
        }
        if let Some(e) = failure {
            return Err(self.error(e));
        }
        let mut answers: Vec<Value> = answers
            .into_iter()
            .map(|a| match a {
                Some(Value::Array(deleted)) if matches!(deleted.first(), Some(Value::Int(1))) => Value::Int(1),
                Some(value) => value,
                None => Value::Nil,
            })
            .collect();
        if !advance.is_empty() {
            // A failover seen during this call (a redirect's refresh showed a new primary): the
            // promoted node may lack what the zxid would claim; the engine reconciles first.
            if let Some(switch) = link.pending_switch() {
                return Err(StoreError::Redis { server: self.server.clone(), source: switch.error() });
            }
            let cmds: Vec<&redis::Cmd> = advance.cmd_iter().collect();
            let (mut advanced, failure) = link.run(&cmds).await;
            if let Some(e) = failure {
                return Err(self.error(e));
            }
            answers.push(advanced.pop().flatten().unwrap_or(Value::Nil));
        }
        Ok(answers)
    }

    /// `append.lua` for one change-stream entry: fenced in the stream's own slot.
    fn append_cmd(&self, fields: &[(&str, String)]) -> redis::Cmd {
        let changes = self.keys.changes();
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.scripts.append.get_hash()).arg(2).arg(&changes).arg(self.fence_key_for(&changes));
        cmd.arg(&self.fence_arg).arg(self.changes_maxlen);
        for (field, value) in fields {
            cmd.arg(*field).arg(value);
        }
        cmd
    }

    /// What a write's change-stream entry will say, behind a cluster (see `apply_cluster`): a
    /// put's whole entry (everything is known before the script runs), a delete's path and
    /// reason (the deleted version comes from the script's answer).
    fn stream_entry(&self, write: &Write) -> StreamEntry {
        match write {
            Write::Put(znode) => StreamEntry::Put(vec![
                ("op", "put".to_owned()),
                ("path", znode.path.clone()),
                ("mzxid", znode.stat.mzxid.to_string()),
                ("version", znode.stat.version.to_string()),
                ("czxid", znode.stat.czxid.to_string()),
            ]),
            Write::Delete { path, .. } => StreamEntry::Delete { path: path.clone(), reason: "delete" },
            Write::Hide { path, .. } | Write::Exclude { path } => {
                StreamEntry::Delete { path: path.clone(), reason: "hide" }
            }
        }
    }

    fn add_advance(&self, pipe: &mut Pipeline, zxid: i64, epoch: u64) {
        // EVALSHA built by hand: scripts in a pipeline are not loaded for us (see load_scripts).
        pipe.cmd("EVALSHA")
            .arg(self.scripts.advance_zxid.get_hash())
            .arg(2)
            .arg(&self.status_key)
            .arg(self.fence_key_for(&self.status_key))
            .arg(zxid.to_string())
            .arg(epoch)
            .arg(&self.fence_arg);
    }

    /// `zxid` and `epoch` of this mirror's status hash (absent: `None` and 0).
    pub async fn stored_mark(&self) -> Result<StoredMark, StoreError> {
        let mut conn = self.conn().await?;
        let (zxid, epoch): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(&self.status_key)
            .arg(status_field::ZXID)
            .arg(status_field::EPOCH)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        let number = |field: &'static str, value: Option<String>| -> Result<Option<i64>, StoreError> {
            value
                .map(|v| {
                    v.parse::<i64>().map_err(|_| {
                        self.unexpected("a status field", format!("{} {field} is {v:?}, not a number", self.status_key))
                    })
                })
                .transpose()
        };
        let zxid = number(status_field::ZXID, zxid)?;
        let epoch = number(status_field::EPOCH, epoch)?.unwrap_or(0).max(0) as u64;
        Ok(StoredMark { zxid, epoch })
    }

    /// What Redis holds of each of `paths` (meta and tombstone), in order, in one pipeline. A
    /// key that is absent, of the wrong type or malformed reads as `None`: it proves nothing.
    pub async fn stored_versions(&self, paths: &[String]) -> Result<Vec<StoredVersion>, StoreError> {
        const FIELDS: [&str; 5] = ["czxid", "mzxid", "pzxid", "aversion", status_field::EPOCH];
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for path in paths {
            pipe.cmd("HMGET").arg(self.keys.meta(path)).arg(&FIELDS[..]);
            pipe.cmd("GET").arg(self.keys.tomb(path));
        }
        let mut conn = self.conn().await?;
        let answers: Vec<Value> = pipe.query_async(&mut conn).await.map_err(|e| self.error(e))?;
        if answers.len() != 2 * paths.len() {
            let detail = format!("{} answers to {} commands", answers.len(), 2 * paths.len());
            return Err(self.unexpected("a read of stored versions", detail));
        }
        if let Some(error) = answers.iter().find_map(|a| match a {
            Value::ServerError(e) if is_server_state(e) => Some(e.clone()),
            _ => None,
        }) {
            return Err(self.error(error.into()));
        }
        let text = |value: &Value| -> Option<String> { redis::from_redis_value_ref::<Option<String>>(value).ok()? };
        let mut versions = Vec::with_capacity(paths.len());
        for pair in answers.chunks(2) {
            let meta = match &pair[0] {
                Value::Array(fields) if fields.len() == FIELDS.len() => {
                    let number = |i: usize| text(&fields[i]).and_then(|v| v.parse::<i64>().ok());
                    match (number(0), number(1), number(2), number(3)) {
                        (Some(czxid), Some(mzxid), Some(pzxid), Some(aversion)) => {
                            let epoch = number(4).unwrap_or(0).max(0) as u64;
                            Some(StoredMeta { czxid, mzxid, pzxid, aversion, epoch })
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            let tomb = text(&pair[1]).and_then(|v| StoredTomb::parse(&v));
            versions.push(StoredVersion { meta, tomb });
        }
        Ok(versions)
    }

    fn unexpected(&self, what: &'static str, detail: String) -> StoreError {
        StoreError::Unexpected { server: self.server.clone(), what, detail }
    }

    /// The history (`epoch`) goes right after the fixed arguments each script already had: put
    /// ARGV[16] (data and children follow it), delete ARGV[7] (the hide-only Stat follows it).
    ///
    /// `cluster`: the scripts append nothing to the change stream, which is in another slot: the
    /// stream key is replaced by the data key (same slot, never read) and the stream length by
    /// an empty argument (see `apply_cluster`).
    fn add_write(&self, pipe: &mut Pipeline, write: &Write, now_ms: u64, deadline: &str, epoch: u64, cluster: bool) {
        let keys = &self.keys;
        let path = write.path();
        let script = match write {
            Write::Put(_) => &self.scripts.put,
            Write::Delete { .. } | Write::Hide { .. } | Write::Exclude { .. } => &self.scripts.delete,
        };
        let data_key = keys.data(path);
        let fence_key = self.fence_key_for(&data_key);
        let changes = if cluster { data_key.clone() } else { keys.changes() };
        let maxlen = if cluster { String::new() } else { self.changes_maxlen.to_string() };
        // EVALSHA built by hand: scripts in a pipeline are not loaded for us (see load_scripts).
        let cmd = pipe
            .cmd("EVALSHA")
            .arg(script.get_hash())
            .arg(6)
            .arg(data_key)
            .arg(keys.meta(path))
            .arg(keys.children(path))
            .arg(keys.tomb(path))
            .arg(changes)
            .arg(fence_key);
        match write {
            Write::Put(znode) => {
                cmd.arg(&znode.stat.fields()[..])
                    .arg(now_ms)
                    .arg(path)
                    .arg(&maxlen)
                    .arg(deadline)
                    .arg(epoch)
                    .arg(&self.fence_arg)
                    .arg(znode.data.as_slice())
                    .arg(&znode.children);
                return;
            }
            Write::Delete { tomb_zxid, .. } => {
                cmd.arg(tomb_zxid.map(|z| z.to_string()).unwrap_or_default())
                    .arg(self.tombstone_ttl_ms)
                    .arg(path)
                    .arg(&maxlen)
                    .arg("delete")
                    .arg(deadline)
                    .arg(epoch)
                    .arg(&["", "", "", ""][..]);
            }
            Write::Hide { stat, .. } => {
                cmd.arg("").arg(self.tombstone_ttl_ms).arg(path).arg(&maxlen).arg("hide").arg(deadline);
                cmd.arg(epoch).arg(stat.czxid).arg(stat.mzxid).arg(stat.pzxid).arg(stat.aversion);
            }
            Write::Exclude { .. } => {
                cmd.arg("")
                    .arg(self.tombstone_ttl_ms)
                    .arg(path)
                    .arg(&maxlen)
                    .arg("exclude")
                    .arg(deadline)
                    .arg(epoch)
                    .arg(&["", "", "", ""][..]);
            }
        }
        // delete.lua's ARGV 12, after the hide stat (ARGV 8..11); put.lua's went before the data.
        cmd.arg(&self.fence_arg);
    }

    /// Sets fields of this mirror's status hash (`P:mirror`, or `P:mirror:{ROOT}`) and tells
    /// whether the hash existed just before (`status.lua`): Redis's loss detector.
    ///
    /// Once a run has written its status, [`StatusWrite::existed`] false means Redis lost the
    /// mirror's keys since the previous write (a flush, a restart without persistence, someone
    /// deleting them), seen on the next heartbeat whatever the filter admits. The first write
    /// of a run may well find no hash (a first start, a new prefix): only the caller knows
    /// which write is its first. A Redis restarted from an older snapshot brings the hash back
    /// and is not seen here (its missing scripts are: `NOSCRIPT`).
    ///
    /// Works without [`Store::load_scripts`]: the script is loaded on `NOSCRIPT` and sent again.
    pub async fn write_status(&self, fields: &[(&str, String)]) -> Result<StatusWrite, StoreError> {
        self.write_status_at(&self.status_key, fields).await
    }

    /// Sets fields of the prefix's aggregate `P:mirror` (several roots sharing the prefix),
    /// through the same fenced `status.lua`: a deposed leader's aggregate is refused too.
    pub async fn write_aggregate_status(&self, fields: &[(&str, String)]) -> Result<(), StoreError> {
        self.write_status_at(&self.keys.status(), fields).await.map(drop)
    }

    async fn write_status_at(&self, key: &str, fields: &[(&str, String)]) -> Result<StatusWrite, StoreError> {
        // Behind a cluster, during a change of primaries (which fails every command until the
        // reconcile, this one too: that is how the engine learns of it), the status still says
        // `degraded`, whatever the caller wanted written: readers trust `zxid` while `state` is
        // `live`, and the status's node may well be up while the promoted one lacks what `zxid`
        // claims. Best effort; it claims nothing.
        if let Link::Cluster(link) = &self.link {
            if let Some(switch) = link.pending_switch() {
                let mut conn = Conn::Cluster(ClusterConn(link.clone()));
                let now = crate::clock::unix_ms();
                let degraded = [
                    (status_field::STATE, crate::status::Phase::Degraded.as_str().to_owned()),
                    (status_field::HEARTBEAT, now.to_string()),
                ];
                let _ = self.write_status_on(&mut conn, key, &degraded).await;
                return Err(StoreError::Redis { server: self.server.clone(), source: switch.error() });
            }
        }
        let mut conn = self.conn().await?;
        self.write_status_on(&mut conn, key, fields).await
    }

    async fn write_status_on(
        &self,
        conn: &mut Conn,
        key: &str,
        fields: &[(&str, String)],
    ) -> Result<StatusWrite, StoreError> {
        if fields.is_empty() {
            // HSET needs a field; there is nothing to write, only the question to answer.
            let existed: bool = redis::cmd("EXISTS").arg(key).query_async(conn).await.map_err(|e| self.error(e))?;
            return Ok(StatusWrite { existed });
        }
        let mut invocation = self.scripts.status.key(key);
        invocation.key(self.fence_key_for(key)).arg(&self.fence_arg);
        for (field, value) in fields {
            invocation.arg(*field).arg(value);
        }
        let existed: i64 = invocation.invoke_async(conn).await.map_err(|e| match (self.fence, e.code()) {
            (Some(token), Some(code)) => match fenced_by(code, e.detail()) {
                Some((seen, key)) => StoreError::Fenced { server: self.server.clone(), key, fence: token, seen },
                None => self.error(e),
            },
            _ => self.error(e),
        })?;
        Ok(StatusWrite { existed: existed == 1 })
    }

    /// One `SCAN` page of the sweep: the stored znodes below `root` (not `root` itself) that
    /// Redis cannot show to be linked from the root, or that `keep` rejects (a filter changed),
    /// candidates for deletion to be confirmed against ZooKeeper; and the next cursor (0 at the
    /// end). A path may come twice across pages: `SCAN` may repeat. The caller pages, so what it
    /// holds is a page, however much is stray.
    ///
    /// A key is judged by its whole chain of links from the root: every ancestor's children
    /// set, from `root` down, must name the next component. Run after a walk has rewritten
    /// every children set, this finds in ONE pass everything deleted while no watch could
    /// report it, however deep: the top of a deleted subtree is missing from its parent's set,
    /// and so is a link in the chain of every key below it, although the deleted znodes' own
    /// (stale) children sets still name their children. Judging by the parent's set alone
    /// peeled one level per pass. Keys no children set ever pointed at are found too.
    ///
    /// A link whose parent the filter does not copy cannot be shown (that parent has no keys),
    /// so keys below such a znode are always candidates: correct, at the price of confirming
    /// them against ZooKeeper on every sweep.
    ///
    /// Cost: one `SISMEMBER` per distinct link of the page's paths, in one pipeline; memory is
    /// the page (1000 keys) times the depth, never the tree.
    pub async fn stray_page(
        &self,
        root: &str,
        cursor: u64,
        keep: impl Fn(&str) -> bool,
    ) -> Result<(u64, Vec<String>), StoreError> {
        let mut conn = self.conn().await?;
        let pattern = self.keys.scan_pattern(root);
        let (next, keys) = self.scan_page(&mut conn, cursor, &pattern).await?;
        let paths: HashSet<&str> = keys
            .iter()
            .filter_map(|key| self.keys.parse(key))
            .filter(|(kind, path)| *kind != KeyKind::Tomb && *path != root && path::is_within(path, root))
            .map(|(_, path)| path)
            .collect();
        let mut strays = Vec::new();
        // Every link of the kept paths' chains, once: (parent, child name) -> index in the pipeline.
        let mut links: HashMap<(&str, &str), usize> = HashMap::new();
        let mut judged: Vec<(&str, Vec<usize>)> = Vec::new();
        for p in paths {
            if !keep(p) {
                strays.push(p.to_owned());
                continue;
            }
            let mut chain = Vec::new();
            let mut provable = true;
            for (parent, name) in chain_links(root, p) {
                if !keep(parent) && parent != root {
                    provable = false;
                    break;
                }
                let n = links.len();
                chain.push(*links.entry((parent, name)).or_insert(n));
            }
            if provable {
                judged.push((p, chain));
            } else {
                strays.push(p.to_owned());
            }
        }
        if !links.is_empty() {
            let mut ordered: Vec<(&(&str, &str), &usize)> = links.iter().collect();
            ordered.sort_by_key(|(_, i)| **i);
            let mut pipe = redis::pipe();
            for ((parent, name), _) in ordered {
                pipe.cmd("SISMEMBER").arg(self.keys.children(parent)).arg(*name);
            }
            let member: Vec<bool> = pipe.query_async(&mut conn).await.map_err(|e| self.error(e))?;
            for (p, chain) in judged {
                if !chain.iter().all(|i| member.get(*i).copied().unwrap_or(false)) {
                    strays.push(p.to_owned());
                }
            }
        }
        Ok((next, strays))
    }

    /// Whether Redis may hold keys of znodes at or below `root` (tombstones aside): false only
    /// when a complete `SCAN` of at most `max_pages` pages found none. A cold sync into a Redis
    /// that holds nothing of the subtree leaves no stray keys of its own to sweep afterwards:
    /// every key it writes is of a znode it read, and a znode deleted after its read is reported
    /// by the watch. On a larger keyspace the scan gives up and answers true (sweep as usual).
    pub async fn may_hold_subtree(&self, root: &str, max_pages: usize) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let pattern = self.keys.scan_pattern(root);
        let mut cursor: u64 = 0;
        for _ in 0..max_pages {
            let (next, keys) = self.scan_page(&mut conn, cursor, &pattern).await?;
            let found = keys
                .iter()
                .filter_map(|key| self.keys.parse(key))
                .any(|(kind, path)| kind != KeyKind::Tomb && path::is_within(path, root));
            if found {
                return Ok(true);
            }
            if next == 0 {
                return Ok(false);
            }
            cursor = next;
        }
        Ok(true)
    }

    /// One page of `SCAN cursor MATCH pattern`: the next cursor (0 at the end) and the keys.
    async fn scan_page(&self, conn: &mut Conn, cursor: u64, pattern: &str) -> Result<(u64, Vec<String>), StoreError> {
        redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .map_err(|e| self.error(e))
    }

    /// Deletes every key of the znodes at or below `root` (and this root's status): used when a
    /// root is removed from the configuration. Pages through `SCAN`; each znode found goes
    /// through `delete.lua` (mode `exclude`), so a leader's purge is fenced like any write: a
    /// deposed leader's reload cannot delete what the new leader mirrors. Tombstones are left to
    /// expire. Answers the number of znodes removed.
    pub async fn purge(&self, root: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        let pattern = self.keys.scan_pattern(root);
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let (next, keys) = self.scan_page(&mut conn, cursor, &pattern).await?;
            let paths: std::collections::BTreeSet<&str> = keys
                .iter()
                .filter_map(|k| self.keys.parse(k))
                .filter(|(kind, path)| *kind != KeyKind::Tomb && path::is_within(path, root))
                .map(|(_, path)| path)
                .collect();
            if !paths.is_empty() {
                let writes: Vec<Write> = paths.into_iter().map(|p| Write::Exclude { path: p.to_owned() }).collect();
                let applied = self.apply(&writes, None, 0, None, 0).await?;
                for outcome in &applied.outcomes {
                    match outcome {
                        WriteOutcome::Deleted => removed += 1,
                        WriteOutcome::Refused(Refusal::Fenced { seen }) => {
                            return Err(StoreError::Fenced {
                                server: self.server.clone(),
                                key: self.keys.fence_for(&self.keys.data(root)),
                                fence: self.fence.unwrap_or(0),
                                seen: *seen,
                            });
                        }
                        _ => {}
                    }
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let _: u64 = redis::cmd("DEL")
            .arg(self.keys.root_status(root))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(removed)
    }

    /// Runs one raw command on the mirror's connection (used by `verify` and tests' helpers).
    pub async fn query(&self, cmd: &redis::Cmd) -> Result<Value, StoreError> {
        let mut conn = self.conn().await?;
        cmd.query_async(&mut conn).await.map_err(|e| self.error(e))
    }

    /// Runs one raw command on every primary, for what each node holds on its own (`INFO`):
    /// the one server, or each primary of a cluster, with the node's address and its answer (a
    /// node that cannot be reached answered by its error; the others are still asked). Only a
    /// cluster whose slot map cannot be read fails the whole call.
    pub async fn query_each_primary(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<Vec<(String, Result<Value, StoreError>)>, StoreError> {
        let Link::Cluster(link) = &self.link else {
            return Ok(vec![(self.server.clone(), self.query(cmd).await)]);
        };
        let answers = link.each_primary(cmd).await.map_err(|e| self.error(e))?;
        Ok(answers
            .into_iter()
            .map(|(addr, answer)| {
                let answer = answer.map_err(|e| match self.error(e) {
                    StoreError::Redis { source, .. } => StoreError::Redis { server: addr.clone(), source },
                    other => other,
                });
                (addr, answer)
            })
            .collect())
    }
}

/// What Redis's ACLs refused, when a reply is such a refusal: the command (`the command SCAN`),
/// or for a script the command on the line Redis names (`XADD in put.lua, line 130: ...`);
/// `None` for any other reply. Redis answers a refusal of a top-level command `NOPERM`, but one
/// of a script's `redis.call` a plain `ERR` that names neither command nor key, only the
/// script's hash and line (Redis 7.0: `The user executing the script can't run this command or
/// subcommand script: SHA, on @user_script:LINE.`); the line of the script's text tells.
fn refused_by_acl(scripts: &Scripts, code: &str, detail: Option<&str>) -> Option<String> {
    let detail = detail.unwrap_or("");
    let in_script = detail.contains("The user executing the script can't") || detail.contains("ACL failure in script");
    if code != "NOPERM" && !in_script {
        return None;
    }
    let refused = if detail.contains("access") && detail.contains("key") { "a key" } else { "a command" };
    let quoted = |text: &str, after: &str| -> Option<String> {
        let rest = &text[text.find(after)? + after.len()..];
        Some(rest[..rest.find('\'')?].to_uppercase())
    };
    if in_script {
        let sha = detail.split("script: ").nth(1).and_then(|rest| rest.split(',').next()).unwrap_or("");
        let line: Option<usize> = detail
            .split("@user_script:")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok());
        return Some(match line.and_then(|line| scripts.line(sha, line).map(|found| (line, found))) {
            Some((line, (name, text))) => match quoted(text, "redis.call('") {
                Some(command) if refused == "a command" => {
                    format!("the command {command} in {name}, line {line}: {text}")
                }
                Some(command) => format!("a key of its {command} in {name}, line {line}: {text}"),
                None => format!("{refused} in {name}, line {line}: {text}"),
            },
            None => format!("{refused} in one of its scripts"),
        });
    }
    Some(match quoted(detail, "run the '") {
        Some(command) => format!("the command {command}"),
        None => refused.to_owned(),
    })
}

/// The fence's refusal (`FENCED <seen> <key>: ...`, see `schema/common.lua`): the token the
/// slot has seen and the fence key; `None` for any other error.
fn fenced_by(code: &str, details: Option<&str>) -> Option<(i64, String)> {
    if code != "FENCED" {
        return None;
    }
    let mut words = details?.split_whitespace();
    let seen = words.next()?.parse().ok()?;
    let key = words.next().unwrap_or("").trim_end_matches(':').to_owned();
    Some((seen, key))
}

/// One script's answer for one write (or one element of `put_batch.lua`'s array).
fn script_outcome(is_put: bool, answer: Value) -> WriteOutcome {
    match answer {
        Value::ServerError(e) => match fenced_by(e.code(), e.details()) {
            Some((seen, _)) => WriteOutcome::Refused(Refusal::Fenced { seen }),
            None => WriteOutcome::Failed(describe(&e)),
        },
        Value::Int(code) => outcome_of(is_put, code),
        other => WriteOutcome::Failed(format!("unexpected answer {other:?}")),
    }
}

/// A script's numeric answer as an outcome (the codes are in each script's header).
fn outcome_of(is_put: bool, code: i64) -> WriteOutcome {
    match (is_put, code) {
        (true, 0) => WriteOutcome::Unchanged,
        (true, 1) => WriteOutcome::Written,
        (true, 2) => WriteOutcome::Refused(Refusal::Older),
        (true, 3) => WriteOutcome::Refused(Refusal::Tombstoned),
        (_, 4) => WriteOutcome::Refused(Refusal::Stale),
        (_, 5) => WriteOutcome::Refused(Refusal::NewerHistory),
        (false, 0) => WriteOutcome::Unchanged,
        (false, 1) => WriteOutcome::Deleted,
        (false, 2) => WriteOutcome::Refused(Refusal::NewerIncarnation),
        (false, 3) => WriteOutcome::Refused(Refusal::Older),
        (_, code) => WriteOutcome::Failed(format!("unexpected script answer {code}")),
    }
}

/// The links from `root` down to `path` (below it): each ancestor, from `root` on, with the name
/// of the next component. `/r/a/b` below `/r` gives `(/r, a)`, `(/r/a, b)`.
fn chain_links<'p>(root: &'p str, path: &'p str) -> impl Iterator<Item = (&'p str, &'p str)> + 'p {
    let mut links: Vec<(&str, &str)> = std::iter::successors(Some(path), |p| path::parent(p))
        .take_while(move |p| *p != root && path::is_within(p, root))
        .filter_map(|p| path::parent(p).map(|parent| (parent, path::name(p))))
        .collect();
    links.reverse();
    links.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tombstone_reads_with_or_without_its_history() {
        assert_eq!(StoredTomb::parse("30"), Some(StoredTomb { zxid: 30, epoch: 0 }));
        assert_eq!(StoredTomb::parse("30@2"), Some(StoredTomb { zxid: 30, epoch: 2 }));
        assert_eq!(StoredTomb::parse("x@2"), None);
        assert_eq!(StoredTomb::parse("30@"), None);
    }

    /// The replies of Redis 7.0, as the ACL tests in tests/acl.rs meet them for real.
    #[test]
    fn an_acl_refusal_names_the_command_or_the_script_line() {
        let scripts = Scripts::load();
        let top = "this user has no permissions to run the 'scan' command";
        assert_eq!(refused_by_acl(&scripts, "NOPERM", Some(top)).as_deref(), Some("the command SCAN"));
        let key = "this user has no permissions to access one of the keys used as arguments";
        assert_eq!(refused_by_acl(&scripts, "NOPERM", Some(key)).as_deref(), Some("a key"));
        let sha = scripts.put.get_hash();
        let common = include_str!("../schema/common.lua").lines().count();
        let xadd = include_str!("../schema/put.lua").lines().position(|l| l.contains("redis.call('XADD'")).unwrap_or(0);
        let line = common + 2 + xadd;
        let lua = format!(
            "The user executing the script can't run this command or subcommand script: {sha}, on @user_script:{line}."
        );
        let action = refused_by_acl(&scripts, "ERR", Some(&lua)).unwrap_or_default();
        assert!(
            action.starts_with(&format!("the command XADD in put.lua, line {line}: redis.call('XADD'")),
            "{action}"
        );
        let lua_key = lua.replace("run this command or subcommand", "access at least one of the keys mentioned");
        let action = refused_by_acl(&scripts, "ERR", Some(&lua_key)).unwrap_or_default();
        assert!(action.starts_with("a key of its XADD in put.lua"), "{action}");
        assert_eq!(refused_by_acl(&scripts, "ERR", Some("WRONGTYPE zk:changes holds a hash")), None);
        assert_eq!(refused_by_acl(&scripts, "WRONGTYPE", None), None);
    }

    #[test]
    fn a_chain_runs_from_the_root_to_the_path() {
        let links: Vec<_> = chain_links("/r", "/r/a/b/c").collect();
        assert_eq!(links, [("/r", "a"), ("/r/a", "b"), ("/r/a/b", "c")]);
        let links: Vec<_> = chain_links("/", "/a/b").collect();
        assert_eq!(links, [("/", "a"), ("/a", "b")]);
        assert_eq!(chain_links("/r", "/r").count(), 0);
    }
}

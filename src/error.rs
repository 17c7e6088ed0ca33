//! Error types. Each names the path, key or server it concerns and, where it helps, what to do.

use thiserror::Error;

/// A configuration value that cannot work; reported before anything connects.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("bad root {root:?}: {why}")]
    BadRoot { root: String, why: String },
    #[error("bad prefix {prefix:?}: {why}")]
    BadPrefix { prefix: String, why: String },
    #[error("bad Redis URL {url}: {why}")]
    BadRedisUrl { url: String, why: String },
    #[error("bad ZooKeeper address {zk:?}: {why}")]
    BadZkAddress { zk: String, why: String },
    #[error("bad ZooKeeper auth: {why} (expected user:password)")]
    BadZkAuth { why: String },
    #[error("bad setting {name}: {why}")]
    BadSetting { name: &'static str, why: String },
}

/// Failures talking to ZooKeeper.
#[derive(Clone, Debug, Error)]
pub enum ZkError {
    #[error("cannot connect to ZooKeeper at {servers}: {source}")]
    Connect { servers: String, source: zookeeper_client::Error },
    /// No server accepted a TCP connection; `why` holds each one's io error (refused, DNS, ...).
    #[error("cannot connect to ZooKeeper at {servers}: {why}")]
    Unreachable { servers: String, why: String },
    /// TLS failed: a certificate did not validate (wrong CA, expired, not yet valid, another
    /// host's), the server refused ours, or one side speaks TLS and the other does not. `why`
    /// names each server with its cause, and the files used.
    #[error("cannot connect to ZooKeeper at {servers}: TLS: {why}")]
    Tls { servers: String, why: String },
    /// A server accepted the connection but no session was established in time.
    #[error("cannot connect to ZooKeeper at {servers}: no session within {within:?} (the port answers; is it ZooKeeper, and is it serving?)")]
    NoSession { servers: String, within: std::time::Duration },
    /// The session is gone for good: a new session, a new watch and a reconcile are needed.
    #[error("ZooKeeper session expired")]
    SessionExpired,
    /// ZooKeeper rejected the mirror's credentials: retrying will not help.
    #[error("ZooKeeper rejected the mirror's credentials (AuthFailed): check --zk-auth")]
    AuthFailed,
    #[error("cannot watch {path} on ZooKeeper: {source}")]
    Watch { path: String, source: zookeeper_client::Error },
    #[error("cannot read {path} from ZooKeeper: {source}")]
    Read { path: String, source: zookeeper_client::Error },
}

impl ZkError {
    /// Whether the session is gone for good, however the error reached us (a read, a watch).
    pub fn is_session_expired(&self) -> bool {
        matches!(
            self,
            ZkError::SessionExpired
                | ZkError::Watch { source: zookeeper_client::Error::SessionExpired, .. }
                | ZkError::Read { source: zookeeper_client::Error::SessionExpired, .. }
        )
    }
}

/// Failures talking to Redis.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The text says when the failure was TLS's, and which check failed (see
    /// [`crate::redis_conn::describe`]).
    #[error("Redis at {server}: {}", crate::redis_conn::describe(source, server))]
    Redis { server: String, source: redis::RedisError },
    #[error("Redis at {server} answered {what} with something unexpected: {detail}")]
    Unexpected { server: String, what: &'static str, detail: String },
    /// A script refused this leader's write: the fence key `key` holds `seen`, a newer
    /// leader's token than this one's `fence`.
    #[error("Redis at {server} refused a write of fencing token {fence}: {key} holds {seen}, a newer leader's")]
    Fenced { server: String, key: String, fence: i64, seen: i64 },
    /// Redis's ACLs refused the mirror's user a command or a key (`NOPERM`, or a script's
    /// `redis.call` refused): it was given fewer rights than the mirror needs. `action` names
    /// the command (for a script: the script, its line and what it was writing). Redis applies
    /// `ACL SETUSER` at once, so the mirror retries with backoff and recovers once granted.
    #[error(
        "Redis at {server} refused user {user} {action}: {reply}; the mirror's Redis user lacks a right it needs: \
         grant it every right of the `zkmirror` line of schema/redis-acl.conf, with `~PREFIX:*` for each prefix \
         (see \"Redis ACL users\" in schema/layout.md; Redis's ACL LOG names what it refused)"
    )]
    Denied { server: String, user: String, action: String, reply: String },
}

impl StoreError {
    /// Redis restarted without our scripts (or flushed them): load them and retry.
    pub fn is_noscript(&self) -> bool {
        matches!(self, StoreError::Redis { source, .. }
            if source.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
    }
}

/// Why a running mirror stopped.
#[derive(Debug, Error)]
pub enum MirrorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Zk(#[from] ZkError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Redis refused a write for a newer leader's fencing token: this instance is no longer
    /// the leader and must stop writing.
    #[error("deposed: Redis holds fencing token {seen} for root {root}, newer than this leader's {fence}; another instance leads now")]
    Deposed { root: String, fence: i64, seen: i64 },
}

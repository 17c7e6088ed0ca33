//! The ZooKeeper side: one session, one persistent recursive watch, and reads that return
//! whole-znode snapshots.
//!
//! Architecture invariant: this module never imports `redis` and never writes to ZooKeeper.

use std::future::Future;

use std::time::Duration;

use zookeeper_client::{
    AddWatchMode, Client, Connector, Error as ZkClientError, MultiReadResult, PersistentWatcher, Stat,
};

use crate::config::{MirrorConfig, ZkDigest};
use crate::error::ZkError;
use crate::path;
use crate::tls::TlsFiles;
use crate::znode::{Fetched, Znode, ZnodeStat};

/// One ZooKeeper session. Cheap to clone (the client is shared).
#[derive(Clone)]
pub struct ZkSession {
    client: Client,
    servers: String,
    /// The servers' addresses, to find the client's sockets (see [`crate::nodelay`]).
    peers: std::sync::Arc<std::collections::HashSet<std::net::SocketAddr>>,
}

impl ZkSession {
    /// Opens a session (see [`ZkConnect::connect`]). The caller retries with backoff.
    pub async fn connect(config: &MirrorConfig) -> Result<ZkSession, ZkError> {
        let client = config.zk_connect().connect(false).await?;
        let session = ZkSession {
            client,
            servers: config.zk_servers.clone(),
            peers: std::sync::Arc::new(crate::nodelay::resolve(&config.zk_servers).await),
        };
        session.disable_nagle();
        Ok(session)
    }

    /// Sets `TCP_NODELAY` on the session's connection; call again after every reconnect (a
    /// reconnect opens a new socket).
    pub fn disable_nagle(&self) {
        crate::nodelay::set_on_sockets_to(&self.peers);
    }

    pub fn servers(&self) -> &str {
        &self.servers
    }

    pub fn session_id(&self) -> String {
        self.client.session_id().to_string()
    }

    /// Adds the persistent recursive watch on `root` (which may not exist yet).
    ///
    /// zookeeper-client 0.11.2 does not re-register persistent watches when it reconnects
    /// within a session (its `SetWatches` leaves them out), so the mirror calls this again after
    /// every reconnect and swaps in the new watcher.
    pub async fn watch(&self, root: &str) -> Result<PersistentWatcher, ZkError> {
        self.client
            .watch(root, AddWatchMode::PersistentRecursive)
            .await
            .map_err(|source| ZkError::Watch { path: root.to_owned(), source })
    }

    /// Syncs the session's server with the leader, then reads the `Stat` of every proper
    /// ancestor of `root` and answers the highest zxid among them (0 for `/`).
    ///
    /// After the sync, this session's reads see everything the leader committed before it:
    /// a server that is briefly behind (a lagging follower) catches up first, so a walk read
    /// after this is a fair judge of whether ZooKeeper's history went back (see
    /// `engine::history`). The ancestors count because a tombstone zxid may be one of their
    /// `pzxid`s (see `absent`), and such a zxid may have reached the watermark.
    pub async fn sync_root(&self, root: &str) -> Result<i64, ZkError> {
        self.client.sync(root).await.map_err(|source| read_error(root.to_owned(), source))?;
        let mut highest = 0;
        for ancestor in std::iter::successors(path::parent(root), |p| path::parent(p)) {
            match self.client.check_stat(ancestor).await {
                Ok(Some(stat)) => highest = highest.max(stat.czxid).max(stat.mzxid).max(stat.pzxid),
                Ok(None) => {}
                Err(source) => return Err(read_error(ancestor.to_owned(), source)),
            }
        }
        Ok(highest)
    }

    /// Reads one or more paths with one multi-read request: under load (a walk, a burst of
    /// events) this costs ZooKeeper one request instead of two per path. Each path is read as
    /// a `getData` and a `getChildren` in that one request, which ZooKeeper answers from one
    /// state of its tree, so data, Stat and children agree without a follow-up read (a lone
    /// inner znode, such as a parent after a create, takes one round trip, not two). Only paths
    /// found absent need more (a tombstone zxid, see `absent`). Results come in `paths` order.
    pub fn fetch_many(
        &self,
        paths: Vec<String>,
    ) -> impl Future<Output = Vec<(String, Result<Fetched, ZkError>)>> + Send + 'static {
        fetch_many(self.client.clone(), paths)
    }
}

/// [`ZkSession::fetch_many`] on any client: the one decoder of a `getData`+`getChildren`
/// multi-read, shared by the engine and by every walk of [`crate::zkwalk`] (`verify`, `export`).
pub async fn fetch_many(client: Client, paths: Vec<String>) -> Vec<(String, Result<Fetched, ZkError>)> {
    let mut reader = client.new_multi_reader();
    let mut rejected = None;
    for path in &paths {
        if let Err(source) = reader.add_get_data(path).and_then(|()| reader.add_get_children(path)) {
            rejected = Some(read_error(path.clone(), source));
            break;
        }
    }
    let answers = match rejected {
        Some(error) => Err(error),
        None => reader.commit().await.map_err(|source| read_error(paths.join(", "), source)),
    };
    let answers = match answers {
        Ok(answers) if answers.len() == 2 * paths.len() => answers,
        Ok(answers) => {
            let why = format!("multi-read answered {} results for {} reads", answers.len(), 2 * paths.len());
            let error = ZkError::Read { path: paths.join(", "), source: ZkClientError::UnexpectedError(why) };
            return paths.into_iter().map(|p| (p, Err(error.clone()))).collect();
        }
        Err(error) => return paths.into_iter().map(|p| (p, Err(error.clone()))).collect(),
    };
    let mut answers = answers.into_iter();
    let settled: Vec<(String, Settled)> = paths
        .into_iter()
        .map(|path| {
            let result = settle_next(&path, &mut answers);
            (path, result)
        })
        .collect();
    // Paths found absent need their ancestors' Stats and one more read, unreadable ones their
    // Stat; all at once.
    let completions = settled.into_iter().map(|(path, settled)| {
        let client = &client;
        async move {
            let result = complete(client, path.clone(), settled).await;
            (path, result)
        }
    });
    futures::future::join_all(completions).await
}

/// How to reach ZooKeeper: the one place where a session's connector is set up (session
/// timeout, digest credentials, TLS), for the mirrors, the election and every command.
#[derive(Clone, Debug, PartialEq)]
pub struct ZkConnect {
    /// The connect string, `[tcp://|tcp+tls://]host:port[,...][/chroot]`.
    pub servers: String,
    pub auth: Option<ZkDigest>,
    /// `Some`: TLS to every server (never plain TCP).
    pub tls: Option<TlsFiles>,
    pub session_timeout: Duration,
}

impl ZkConnect {
    pub fn new(servers: impl Into<String>) -> ZkConnect {
        ZkConnect { servers: servers.into(), auth: None, tls: None, session_timeout: Duration::from_secs(10) }
    }

    /// zookeeper-client's connector for these settings.
    pub fn connector(&self) -> Result<Connector, ZkError> {
        let mut connector = Client::connector().with_session_timeout(self.session_timeout);
        if let Some(digest) = &self.auth {
            connector = connector.with_auth("digest", format!("{}:{}", digest.user, digest.password).as_bytes());
        }
        if let Some(files) = &self.tls {
            let options = files.zk_options().map_err(|e| self.tls_error(e.to_string()))?;
            connector = connector.with_tls(options);
        }
        Ok(connector)
    }

    /// Opens a session: probes the servers first ([`ZkConnect::probe`]), so that a refused
    /// port, an unknown host or a failed TLS handshake is reported at once with its cause
    /// (zookeeper-client turns each into a silent `ConnectionLoss` and retries until the
    /// session timeout); then connects. `eager`: give up once every server has been tried
    /// (one-shot commands), instead of retrying for a session timeout. A plain session that
    /// fails against a port that speaks TLS says so.
    pub async fn connect(&self, eager: bool) -> Result<Client, ZkError> {
        // A `tcp://` server beside TLS would be plain TCP: refused before anything connects,
        // not merely skipped by the probe (the session could still pick it).
        for server in self.servers.split(',').map(str::trim) {
            split_server(server, self.tls.is_some()).map_err(|why| self.tls_error(why))?;
        }
        let per_server = self.session_timeout * 2 / 5;
        self.probe(per_server).await?;
        let mut connector = self.connector()?;
        if eager {
            connector = connector.with_fail_eagerly();
        }
        let connected = match &self.tls {
            Some(_) => connector.secure_connect(&self.servers).await,
            None => connector.connect(&self.servers).await,
        };
        let error = match connected {
            Ok(client) => return Ok(client),
            Err(ZkClientError::AuthFailed) => return Err(ZkError::AuthFailed),
            Err(ZkClientError::Timeout) => {
                ZkError::NoSession { servers: self.servers.clone(), within: self.session_timeout }
            }
            Err(source) => ZkError::Connect { servers: self.servers.clone(), source },
        };
        if self.tls.is_none() {
            if let Some(server) = self.first_speaking_tls(per_server).await {
                return Err(self.tls_error(format!(
                    "{server} answers with TLS, and no --zk-tls-ca was given: this is a secureClientPort; give the \
                     CA (--zk-tls-ca, [zookeeper] tls_ca) to connect with TLS, or use the server's plain clientPort"
                )));
            }
        }
        Err(error)
    }

    /// Opens, and at once closes, a connection to each server until one accepts: over TCP,
    /// or with TLS a full handshake (and one four-letter word, to learn whether the server
    /// took the client certificate). The error names every server with its own cause.
    pub async fn probe(&self, timeout: Duration) -> Result<(), ZkError> {
        let tls_config = match &self.tls {
            Some(files) => Some(files.client_config().map_err(|e| self.tls_error(e.to_string()))?),
            None => None,
        };
        let mut failures = Vec::new();
        let mut tls_failed = false;
        for server in self.servers.split(',').map(str::trim) {
            let (tls, host_port) = match split_server(server, self.tls.is_some()) {
                Ok(split) => split,
                Err(why) => {
                    failures.push(why);
                    continue;
                }
            };
            let outcome = match (tls, &tls_config, &self.tls) {
                (true, Some(config), Some(files)) => match host_port.rsplit_once(':') {
                    Some((host, port)) => {
                        let host = host.trim_start_matches('[').trim_end_matches(']');
                        match port.parse::<u16>() {
                            Ok(port) => {
                                let result =
                                    crate::tls::probe_handshake(config.clone(), files, host, port, timeout).await;
                                tls_failed |= result.is_err();
                                result
                            }
                            Err(_) => Err("not host:port".to_owned()),
                        }
                    }
                    None => Err("not host:port".to_owned()),
                },
                (true, _, _) => Err("tcp+tls:// needs --zk-tls-ca".to_owned()),
                (false, _, _) => match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(host_port)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(error)) => Err(error.to_string()),
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                },
            };
            match outcome {
                Ok(()) => return Ok(()),
                Err(why) => failures.push(format!("{host_port}: {why}")),
            }
        }
        let why = failures.join("; ");
        if tls_failed {
            return Err(self.tls_error(why));
        }
        Err(ZkError::Unreachable { servers: self.servers.clone(), why })
    }

    /// The first server (`host:port`) that answers a TLS hello, if any.
    async fn first_speaking_tls(&self, timeout: Duration) -> Option<String> {
        for server in self.servers.split(',').map(str::trim) {
            let Ok((_, host_port)) = split_server(server, false) else { continue };
            let Some((host, port)) = host_port.rsplit_once(':') else { continue };
            let Ok(port) = port.parse::<u16>() else { continue };
            if crate::tls::speaks_tls(host.trim_start_matches('[').trim_end_matches(']'), port, timeout).await {
                return Some(host_port.to_owned());
            }
        }
        None
    }

    fn tls_error(&self, why: String) -> ZkError {
        let files = self.tls.as_ref().map(|f| format!(" ({})", f.describe())).unwrap_or_default();
        ZkError::Tls { servers: self.servers.clone(), why: format!("{why}{files}") }
    }
}

/// One server of a connect string as (TLS?, `host:port`). Without a scheme a server speaks
/// TLS exactly when TLS is configured; a scheme must agree with that (never plain TCP when TLS
/// was asked for).
pub(crate) fn split_server(server: &str, tls_configured: bool) -> Result<(bool, &str), String> {
    let (scheme, rest) = match server.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, server),
    };
    let host_port = rest.split('/').next().unwrap_or(rest);
    match (scheme, tls_configured) {
        (None, tls) => Ok((tls, host_port)),
        (Some("tcp+tls"), true) => Ok((true, host_port)),
        (Some("tcp"), false) => Ok((false, host_port)),
        (Some("tcp"), true) => Err(format!(
            "{host_port}: tcp:// would be plain TCP, and TLS was asked for: write the server without tcp://"
        )),
        (Some("tcp+tls"), false) => Err(format!("{host_port}: tcp+tls:// needs the CA: give --zk-tls-ca")),
        (Some(other), _) => Err(format!("{host_port}: {other}:// is not supported (tcp:// or tcp+tls://)")),
    }
}

/// What one path's answers in a multi-read say, before any follow-up read.
#[derive(Debug)]
enum Settled {
    Done(Result<Fetched, ZkError>),
    /// `NoNode`: [`absent`] finds the tombstone zxid.
    Absent,
    /// `NoAuth`: [`unreadable`] finds the `Stat` that orders the hide.
    Unreadable,
}

/// The follow-up read a settled answer needs, if any.
async fn complete(client: &Client, path: String, settled: Settled) -> Result<Fetched, ZkError> {
    match settled {
        Settled::Done(result) => result,
        Settled::Absent => absent(client, path).await,
        Settled::Unreadable => unreadable(client, path).await,
    }
}

/// [`settle`] on the next two answers of a multi-read (a path's `getData`, then its
/// `getChildren`).
fn settle_next(path: &str, answers: &mut impl Iterator<Item = MultiReadResult>) -> Settled {
    match (answers.next(), answers.next()) {
        (Some(data), Some(children)) => settle(path, data, children),
        _ => {
            Settled::Done(Err(read_error(path.to_owned(), ZkClientError::UnexpectedError("missing answer".to_owned()))))
        }
    }
}

/// A path's `getData` and `getChildren` answers, from one multi-read, as a snapshot, or the
/// follow-up it needs (absent: its tombstone zxid; unreadable: its `Stat`).
fn settle(path: &str, data: MultiReadResult, children: MultiReadResult) -> Settled {
    let path = path.to_owned();
    Settled::Done(match (data, children) {
        (MultiReadResult::Data { data, stat }, MultiReadResult::Children { children }) => {
            Ok(Fetched::Present(Znode { path, data, stat: convert(&stat), children }))
        }
        (MultiReadResult::Error { err: ZkClientError::NoNode }, _) => return Settled::Absent,
        (MultiReadResult::Error { err: ZkClientError::NoAuth }, _)
        | (_, MultiReadResult::Error { err: ZkClientError::NoAuth }) => return Settled::Unreadable,
        (MultiReadResult::Error { err }, _) | (_, MultiReadResult::Error { err }) => Err(read_error(path, err)),
        other => Err(read_error(path, ZkClientError::UnexpectedError(format!("multi-read answered {other:?}")))),
    })
}

/// Data, Stat and children of one znode from one atomic multi-read.
async fn snapshot(client: &Client, path: String) -> Result<Fetched, ZkError> {
    let mut reader = client.new_multi_reader();
    if let Err(source) = reader.add_get_data(&path).and_then(|()| reader.add_get_children(&path)) {
        return Err(read_error(path, source));
    }
    let results = reader.commit().await.map_err(|source| read_error(path.clone(), source))?;
    let settled = settle_next(&path, &mut results.into_iter());
    complete(client, path, settled).await
}

/// Attempts [`unreadable`] makes before it gives up on a znode that keeps changing.
const UNREADABLE_ATTEMPTS: usize = 3;

/// The path answered `NoAuth`: find the `Stat` at which it is unreadable, so that the hide is
/// ordered like every other write (issue 10, defect 12: an unordered hide let a stale `NoAuth`
/// remove a znode already written from a newer, readable read).
///
/// `exists()` needs no READ permission. Three requests leave at once and one session answers
/// them in order: `exists`, `getData`, `exists`. When both Stats are equal and `getData` is
/// still refused, nothing changed in between (every change bumps a Stat field; `setACL` bumps
/// `aversion`), so the znode is unreadable at exactly that Stat: neither older (a hide that
/// would lose to a read made while it was briefly open) nor newer (one that would beat a
/// readable read of the same state). When they differ the znode is changing: try again.
async fn unreadable(client: &Client, path: String) -> Result<Fetched, ZkError> {
    for _ in 0..UNREADABLE_ATTEMPTS {
        let before = client.check_stat(&path);
        let again = client.get_data(&path);
        let after = client.check_stat(&path);
        let (before, again, after) = (before.await, again.await, after.await);
        match again {
            Err(ZkClientError::NoAuth) => {}
            Err(ZkClientError::NoNode) => return Box::pin(absent(client, path)).await,
            Ok(_) => return Box::pin(snapshot(client, path)).await,
            Err(source) => return Err(read_error(path, source)),
        }
        match (before, after) {
            (Ok(Some(before)), Ok(Some(after))) if before == after => {
                return Ok(Fetched::Unreadable { path, stat: convert(&before) })
            }
            (Err(source), _) | (_, Err(source)) => return Err(read_error(path, source)),
            _ => continue,
        }
    }
    let why = format!("unreadable, and its Stat changed on each of {UNREADABLE_ATTEMPTS} reads");
    Err(read_error(path, ZkClientError::UnexpectedError(why)))
}

/// The path was found absent: read it again, after reading its ancestors' `Stat`s.
///
/// Why this order: if the path is still absent at the later read, every incarnation of it
/// created before the ancestors were read is dead, so the largest `pzxid` among them is a safe
/// tombstone zxid. A delete bumps its parent's `pzxid`, so the tombstone also covers the
/// incarnation whose delete we are reacting to. The parent alone usually suffices; when it is
/// gone too, the whole chain up to `/` (which always exists) is read.
async fn absent(client: &Client, path: String) -> Result<Fetched, ZkError> {
    let ancestors: Vec<String> =
        std::iter::successors(path::parent(&path), |p| path::parent(p)).map(str::to_owned).collect();
    for depth in [1, ancestors.len()] {
        let stat_reads: Vec<_> = ancestors.iter().take(depth).map(|a| client.check_stat(a)).collect();
        let again = client.get_data(&path);
        let mut tomb_zxid: Option<i64> = None;
        for read in stat_reads {
            if let Ok(Some(stat)) = read.await {
                tomb_zxid = tomb_zxid.max(Some(stat.pzxid));
            }
        }
        match again.await {
            Ok((_, stat)) if stat.num_children > 0 => return Box::pin(snapshot(client, path)).await,
            Ok((data, stat)) => {
                return Ok(Fetched::Present(Znode { path, data, stat: convert(&stat), children: Vec::new() }))
            }
            Err(ZkClientError::NoNode) if tomb_zxid.is_some() || depth == ancestors.len() => {
                return Ok(Fetched::Absent { path, tomb_zxid })
            }
            Err(ZkClientError::NoNode) => continue,
            Err(ZkClientError::NoAuth) => return Box::pin(unreadable(client, path)).await,
            Err(source) => return Err(read_error(path, source)),
        }
    }
    Ok(Fetched::Absent { path, tomb_zxid: None })
}

fn read_error(path: String, source: ZkClientError) -> ZkError {
    match source {
        ZkClientError::SessionExpired => ZkError::SessionExpired,
        ZkClientError::AuthFailed => ZkError::AuthFailed,
        source => ZkError::Read { path, source },
    }
}

pub fn convert(stat: &Stat) -> ZnodeStat {
    ZnodeStat {
        czxid: stat.czxid,
        mzxid: stat.mzxid,
        pzxid: stat.pzxid,
        ctime: stat.ctime,
        mtime: stat.mtime,
        version: stat.version,
        cversion: stat.cversion,
        aversion: stat.aversion,
        ephemeral_owner: stat.ephemeral_owner,
        data_length: stat.data_length,
        num_children: stat.num_children,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(num_children: i32) -> Stat {
        Stat {
            czxid: 5,
            mzxid: 7,
            pzxid: 9,
            ctime: 1,
            mtime: 2,
            version: 3,
            cversion: 4,
            aversion: 0,
            ephemeral_owner: 0,
            data_length: 1,
            num_children,
        }
    }

    fn error(err: ZkClientError) -> MultiReadResult {
        MultiReadResult::Error { err }
    }

    #[test]
    fn a_data_and_children_pair_is_one_snapshot() {
        let data = MultiReadResult::Data { data: b"x".to_vec(), stat: stat(2) };
        let children = MultiReadResult::Children { children: vec!["a".into(), "b".into()] };
        match settle("/r/p", data, children) {
            Settled::Done(Ok(Fetched::Present(znode))) => {
                assert_eq!(znode.path, "/r/p");
                assert_eq!(znode.data, b"x");
                assert_eq!((znode.stat.mzxid, znode.stat.num_children), (7, 2));
                assert_eq!(znode.children, ["a", "b"]);
            }
            other => panic!("expected a present znode, got {other:?}"),
        }
    }

    #[test]
    fn absent_unreadable_and_failed_reads_are_told_apart() {
        let children = || MultiReadResult::Children { children: Vec::new() };
        assert!(matches!(
            settle("/r/gone", error(ZkClientError::NoNode), error(ZkClientError::NoNode)),
            Settled::Absent
        ));
        assert!(matches!(
            settle("/r/secret", error(ZkClientError::NoAuth), error(ZkClientError::NoAuth)),
            Settled::Unreadable
        ));
        let data = MultiReadResult::Data { data: Vec::new(), stat: stat(0) };
        assert!(matches!(settle("/r/half", data, error(ZkClientError::NoAuth)), Settled::Unreadable));
        assert!(matches!(
            settle("/r/lost", error(ZkClientError::ConnectionLoss), children()),
            Settled::Done(Err(ZkError::Read { path, .. })) if path == "/r/lost"
        ));
        let swapped = settle("/r/odd", children(), MultiReadResult::Data { data: Vec::new(), stat: stat(0) });
        assert!(matches!(swapped, Settled::Done(Err(ZkError::Read { .. }))));
    }
}

//! The ZooKeeper side: one session, one persistent recursive watch, and reads that return
//! whole-znode snapshots.
//!
//! Architecture invariant: this module never imports `redis` and never writes to ZooKeeper.

use std::future::Future;

use zookeeper_client::{AddWatchMode, Client, Error as ZkClientError, MultiReadResult, PersistentWatcher, Stat};

use crate::config::MirrorConfig;
use crate::error::ZkError;
use crate::path;
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
    /// Opens a session (with digest auth when configured). Fails at once, naming each server's
    /// io error, when no server accepts a TCP connection; after about one session timeout when
    /// one does but no session comes. The caller retries with backoff.
    pub async fn connect(config: &MirrorConfig) -> Result<ZkSession, ZkError> {
        // zookeeper-client 0.11.2 turns a failed TCP connect into `ConnectionLoss` (the io error
        // is logged at debug and dropped) and retries until the session timeout, then reports
        // `Timeout`: a refused port looked like 10 s of silence, then "timeout". The probe finds
        // the real cause first, at the cost of one extra connection per session.
        probe(&config.zk_servers, config.session_timeout * 2 / 5)
            .await
            .map_err(|why| ZkError::Unreachable { servers: config.zk_servers.clone(), why })?;
        let mut connector = Client::connector().with_session_timeout(config.session_timeout);
        if let Some(digest) = &config.zk_auth {
            connector = connector.with_auth("digest", format!("{}:{}", digest.user, digest.password).as_bytes());
        }
        let client = connector.connect(&config.zk_servers).await.map_err(|source| match source {
            ZkClientError::AuthFailed => ZkError::AuthFailed,
            ZkClientError::Timeout => {
                ZkError::NoSession { servers: config.zk_servers.clone(), within: config.session_timeout }
            }
            source => ZkError::Connect { servers: config.zk_servers.clone(), source },
        })?;
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

/// Opens, and at once closes, a TCP connection to each server of the connect string
/// (`[tcp://]host:port[,...][/chroot]`) until one accepts. The error names every server with
/// its own cause: the OS's text for a refused connection or an unknown host, or no answer
/// within `timeout` (each server is given `timeout`, as the client gives each connection).
pub async fn probe(servers: &str, timeout: std::time::Duration) -> Result<(), String> {
    let mut failures = Vec::new();
    for server in servers.split(',').map(str::trim) {
        let (scheme, rest) = server.split_once("://").unwrap_or(("tcp", server));
        let host_port = rest.split('/').next().unwrap_or(rest);
        if scheme != "tcp" {
            failures.push(format!("{host_port}: {scheme}:// is not supported (this build speaks plain tcp:// only)"));
            continue;
        }
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(host_port)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(error)) => failures.push(format!("{host_port}: {error}")),
            Err(_) => failures.push(format!("{host_port}: no answer within {timeout:?}")),
        }
    }
    Err(failures.join("; "))
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

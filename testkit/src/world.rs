//! Mirror-specific helpers: run a mirror in-process, build trees, and wait until Redis is the
//! exact copy (judged by the independent `zkmirror::verify` comparison, key by key) or until a
//! mirror in another process reports a state.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::task::JoinHandle;
use zkmirror::{Mirror, MirrorConfig, MirrorError, MirrorHandle, Phase};
use zookeeper_client::{Acls, Client, CreateMode};

/// How long a test waits for the mirror to converge. Generous: machines are shared and slow.
pub const CONVERGE: Duration = Duration::from_secs(60);

/// Defaults for tests: a short session (expiry tests stay fast), a fast heartbeat, and an
/// anti-entropy pass so rare that only the watch can explain what a test observes.
pub fn test_config(zk: &str, redis_url: &str, root: &str) -> MirrorConfig {
    let mut config = MirrorConfig::new(zk, redis_url, root);
    config.session_timeout = Duration::from_secs(2);
    config.heartbeat_interval = Duration::from_millis(200);
    config.anti_entropy_interval = Duration::from_secs(3600);
    config
}

/// A mirror running on the test's runtime.
pub struct RunningMirror {
    pub handle: MirrorHandle,
    task: JoinHandle<Result<(), MirrorError>>,
}

impl RunningMirror {
    pub fn start(config: MirrorConfig) -> RunningMirror {
        init_logging();
        let mirror = Mirror::new(config).expect("test config is valid");
        let handle = mirror.handle();
        RunningMirror { handle, task: tokio::spawn(mirror.run()) }
    }

    /// Stops it cleanly and checks that `run()` returned `Ok`.
    pub async fn stop(self) {
        self.handle.stop();
        match tokio::time::timeout(Duration::from_secs(30), self.task).await {
            Ok(Ok(Ok(()))) => {}
            other => panic!("mirror did not stop cleanly: {other:?}"),
        }
    }

    /// Waits until `run()` returns by itself (no stop asked) and gives its result.
    pub async fn finished(self) -> Result<(), MirrorError> {
        match tokio::time::timeout(CONVERGE, self.task).await {
            Ok(Ok(result)) => result,
            other => panic!("mirror did not end by itself: {other:?}"),
        }
    }

    /// Kills it mid-flight, as a crash would: no clean shutdown runs.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    pub async fn wait_for_phase(&self, phase: Phase) {
        let handle = self.handle.clone();
        super::wait_until(CONVERGE, &format!("the mirror is {phase}"), || {
            let handle = handle.clone();
            async move {
                let status = handle.status();
                if status.phase == phase {
                    Ok(())
                } else {
                    Err(format!("{status:?}"))
                }
            }
        })
        .await
    }
}

/// Log lines of this binary's in-process mirrors, kept for [`logged`]; at most 8 MiB (the older
/// half is dropped when full).
static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());
const LOGS_MAX: usize = 8 << 20;

struct LogCapture;

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut logs = LOGS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if logs.len() + buf.len() > LOGS_MAX {
            let half = logs.len() / 2;
            logs.drain(..half);
        }
        logs.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Like [`init_logging`], and keeps every line for [`logged`] too. Call it before the binary's
/// first mirror starts (a process has one subscriber: the first installed wins).
pub fn init_logging_captured() {
    use tracing_subscriber::fmt::writer::MakeWriterExt;
    let writer = tracing_subscriber::fmt::TestWriter::new().and(|| LogCapture);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("zkmirror=info")),
        )
        .with_ansi(false)
        .with_writer(writer)
        .try_init();
}

/// The captured log lines (see [`init_logging_captured`]) that contain every one of `needles`.
pub fn logged(needles: &[&str]) -> Vec<String> {
    let logs = LOGS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    String::from_utf8_lossy(&logs)
        .lines()
        .filter(|line| needles.iter().all(|needle| line.contains(needle)))
        .map(str::to_owned)
        .collect()
}

pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("zkmirror=info")),
        )
        .with_test_writer()
        .try_init();
}

pub async fn redis_conn(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap_or_else(|e| panic!("bad Redis URL {url}: {e}"))
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("connecting to Redis at {url}: {e}"))
}

/// A connection to the Redis `config` names, made as the mirror makes it (its TLS material and
/// password): what a test uses to look at a TLS Redis.
pub async fn redis_conn_for(config: &MirrorConfig) -> MultiplexedConnection {
    let url = &config.redis_url;
    match config
        .redis_connect(&redis::AsyncConnectionConfig::new())
        .await
        .unwrap_or_else(|e| panic!("connecting to Redis at {url}: {e}"))
    {
        zkmirror::redis_conn::RedisConn::Node(conn) => conn,
        zkmirror::redis_conn::RedisConn::Cluster(_) => panic!("{url} is a cluster: use cluster_conn"),
    }
}

/// A connection to any Redis URL, a Cluster URL included (commands routed by slot).
pub async fn any_conn(url: &str) -> zkmirror::redis_conn::RedisConn {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(5)));
    zkmirror::redis_conn::connect_any(url, &Default::default(), None, &config)
        .await
        .unwrap_or_else(|e| panic!("connecting to Redis at {url}: {e}"))
}

/// [`redis_conn`] with another response timeout than redis-rs's default (500 ms): a benchmark's
/// `FLUSHALL` of a large copy or a verify's large pipelines take longer.
pub async fn redis_conn_with_response_timeout(url: &str, timeout: Duration) -> MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(timeout));
    redis::Client::open(url)
        .unwrap_or_else(|e| panic!("bad Redis URL {url}: {e}"))
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap_or_else(|e| panic!("connecting to Redis at {url}: {e}"))
}

/// `P:mirror` `state`, as the mirror under `prefix` last wrote it; `None` when absent.
pub async fn mirror_state(conn: &mut MultiplexedConnection, prefix: &str) -> Option<String> {
    let key = zkmirror::testing::Keys::new(prefix).status();
    redis::cmd("HGET").arg(key).arg(zkmirror::testing::status_field::STATE).query_async(conn).await.expect("HGET state")
}

/// Polls `P:mirror` `state` every 0.5 ms until it is `want`, and returns when it was seen;
/// `None` after `timeout`. Panics as soon as `mirror` (the mirror's process) has exited.
pub async fn wait_for_state(
    conn: &mut MultiplexedConnection,
    prefix: &str,
    mirror: &mut crate::Guarded,
    want: &str,
    timeout: Duration,
) -> Option<std::time::Instant> {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if mirror_state(conn, prefix).await.as_deref() == Some(want) {
            return Some(std::time::Instant::now());
        }
        mirror.assert_running();
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    None
}

/// Waits until Redis holds exactly the subtree at `root` under `prefix`; on timeout panics
/// with the comparison's readable diff.
pub async fn assert_converges(zk: &Client, redis_url: &str, prefix: &str, root: &str) -> zkmirror::verify::Report {
    assert_converges_on(zk, &redis_conn(redis_url).await, prefix, root).await
}

/// [`assert_converges`] on a connection the test made (over TLS, say: [`redis_conn_for`]).
/// Any connection will do (one server's, a cluster's: `verify` scans every primary).
pub async fn assert_converges_on<C: redis::aio::ConnectionLike + Clone + Send + Sync>(
    zk: &Client,
    conn: &C,
    prefix: &str,
    root: &str,
) -> zkmirror::verify::Report {
    super::wait_until(CONVERGE, &format!("Redis is the exact copy of {root}"), || {
        let mut conn = conn.clone();
        async move {
            let report = zkmirror::verify::compare(zk, &mut conn, prefix, root).await.map_err(|e| e.to_string())?;
            if report.is_exact() {
                Ok(report)
            } else {
                Err(report.to_string())
            }
        }
    })
    .await
}

/// Creates a tree below `root` (which must exist): `fanout` children per inner node, `depth`
/// levels, each znode holding `data_len` bytes. Creates a level at a time, many requests in
/// flight. Returns how many znodes it created.
pub async fn create_tree(client: &Client, root: &str, fanout: usize, depth: usize, data_len: usize) -> usize {
    let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
    let data = vec![b'x'; data_len];
    let mut level = vec![root.to_owned()];
    let mut created = 0;
    for _ in 0..depth {
        let mut next = Vec::with_capacity(level.len() * fanout);
        for parent in &level {
            for i in 0..fanout {
                next.push(format!("{parent}/n{i}"));
            }
        }
        for chunk in next.chunks(2000) {
            let creates: Vec<_> = chunk.iter().map(|p| client.create(p, &data, &options)).collect();
            for (path, result) in chunk.iter().zip(futures::future::join_all(creates).await) {
                result.unwrap_or_else(|e| panic!("creating {path}: {e}"));
            }
        }
        created += next.len();
        level = next;
    }
    created
}

/// Reads `P:{path}:meta` `mzxid` (as a number) or `None` when absent.
pub async fn stored_mzxid(conn: &mut MultiplexedConnection, prefix: &str, path: &str) -> Option<i64> {
    let field: Option<String> = redis::cmd("HGET")
        .arg(format!("{prefix}:{{{path}}}:meta"))
        .arg("mzxid")
        .query_async(conn)
        .await
        .expect("HGET meta");
    field.map(|f| f.parse().expect("mzxid is decimal"))
}

/// `HGET key field`; `None` when absent.
pub async fn hget(conn: &MultiplexedConnection, key: &str, field: &str) -> Option<String> {
    let mut conn = conn.clone();
    redis::cmd("HGET").arg(key).arg(field).query_async(&mut conn).await.expect("HGET")
}

/// Waits until `key` has `field` equal to `want`.
pub async fn wait_for_field(conn: &MultiplexedConnection, key: &str, field: &str, want: &str) {
    super::wait_until(CONVERGE, &format!("{key} {field} is {want}"), || async {
        match hget(conn, key, field).await {
            Some(have) if have == want => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// A znode as a read would return it, with no children: what the script tests write.
pub fn znode(path: &str, data: &str, czxid: i64, mzxid: i64) -> zkmirror::testing::Znode {
    zkmirror::testing::Znode {
        path: path.to_owned(),
        data: data.as_bytes().to_vec(),
        stat: zkmirror::testing::ZnodeStat {
            czxid,
            mzxid,
            pzxid: czxid,
            data_length: data.len() as i32,
            ..zkmirror::testing::ZnodeStat::default()
        },
        children: Vec::new(),
    }
}

/// `path`'s data in the copy (prefix `zk`) at `url`, if any (`None` also when Redis cannot be
/// read).
pub async fn stored_data(url: &str, path: &str) -> Option<Vec<u8>> {
    let mut conn = redis_conn(url).await;
    redis::cmd("GET").arg(format!("zk:{{{path}}}")).query_async(&mut conn).await.ok().flatten()
}

/// Waits until `path`'s data in the copy (prefix `zk`) at `url` is `want`.
pub async fn wait_for_data(url: &str, path: &str, want: &[u8]) {
    super::wait_until(CONVERGE, &format!("{path} = {:?} in {url}", String::from_utf8_lossy(want)), || async {
        match stored_data(url, path).await {
            Some(got) if got == want => Ok(()),
            got => Err(format!("holds {:?}", got.map(|g| String::from_utf8_lossy(&g).into_owned()))),
        }
    })
    .await;
}

/// Deletes `path` and everything below it, deepest first; panics on any failure.
pub async fn delete_tree(zk: &zookeeper_client::Client, path: &str) {
    let (children, _) = zk.get_children(path).await.expect("listing a subtree to delete");
    for child in children {
        Box::pin(delete_tree(zk, &format!("{path}/{child}"))).await;
    }
    zk.delete(path, None).await.expect("deleting a znode");
}

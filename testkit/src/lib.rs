//! zkmirror's test and benchmark harness (a dev-only crate, never published): real ZooKeeper
//! and Redis servers, a cuttable TCP proxy, guarded child processes, clients, and the waits
//! that decide when a copy has converged.
//!
//! Why a crate: the integration tests (`tests/*.rs`) and the benchmark (`benches/mirror.rs`)
//! need the same servers and waits, and a crate is the one way to share code between them
//! without one including the other's files. Each test binary still says `mod common;`:
//! `tests/common/mod.rs` only re-exports this crate, so `common::world::…`,
//! `common::servers::free_port` and `common::{ZkServer, wait_until, …}` keep their names.
//!
//! - [`binary`]: the real `zkmirror` binary: one-shot commands and the daemon with its log.
//! - [`servers`]: [`ZkServer`], [`RedisServer`], free ports, the process plumbing below.
//! - [`proxy`]: [`TcpProxy`], a TCP forwarder whose connections can be cut and restored.
//! - [`blackhole`]: [`Blackhole`], a server that accepts and reads but never answers.
//! - [`process`]: [`Guarded`], any other child process (the `zkmirror` binary, helper roles).
//! - [`chaos`]: a random load on a subtree and a reader counting broken promises.
//! - [`cluster`]: [`cluster::ClusterSetup`], a Redis Cluster of 3 primaries (and replicas).
//! - [`tls`]: [`tls::Pki`], a throwaway CA with server, client and broken certificates.
//! - [`world`]: an in-process mirror, Redis connections, trees, and the convergence waits.
//! - here: unique roots, ZooKeeper clients, [`create_all`], [`wait_until`], [`http_get`].
//!
//! Process hygiene: every process the harness starts goes through `servers::spawn_guarded`,
//! which (a) sets `PR_SET_PDEATHSIG(SIGKILL)` so the kernel kills it if the test binary dies
//! abruptly, and (b) records the pid so an `atexit` handler kills whatever is still alive when
//! the binary exits normally (the process-wide [`ZkServer::shared`] server is a `static` and is
//! never dropped). Processes owned by a test are killed by pid in their `Drop`.

pub mod binary;
pub mod blackhole;
pub mod chaos;
pub mod cluster;
pub mod process;
pub mod proxy;
pub mod servers;
pub mod tls;
pub mod world;

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use zookeeper_client::{Acls, Client, CreateMode, Stat};

pub use blackhole::Blackhole;
pub use process::Guarded;
pub use proxy::TcpProxy;
pub use servers::{RedisServer, RedisTls, ZkServer};

/// Session timeout used by [`zk_client`].
///
/// The harness ZooKeeper runs with `tickTime=200`, so the server accepts session timeouts from
/// 400 ms to 4 s. 4 s is the largest allowed: tests that run in parallel on a loaded machine
/// must not see their sessions expire by accident. Tests that *want* expiry use
/// [`zk_client_with_session_timeout`] with a short timeout.
pub const ZK_SESSION_TIMEOUT: Duration = Duration::from_secs(4);

/// Interval between two evaluations of the condition in [`wait_until`].
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Returns a ZooKeeper path unique to this call, e.g. `/t-basic-3-4711`.
///
/// Tests share one ZooKeeper server per binary ([`ZkServer::shared`]) and run in parallel, so
/// each test works below its own root. The counter separates calls within the binary; the pid
/// separates concurrent test binaries should they ever share a server.
pub fn unique_root(name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // '/' would create nesting and a few other characters are reserved in ZooKeeper paths.
    let name: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    format!("/t-{name}-{n}-{}", std::process::id())
}

/// Connects a ZooKeeper client with [`ZK_SESSION_TIMEOUT`]; panics if that fails.
pub async fn zk_client(connect: &str) -> Client {
    zk_client_with_session_timeout(connect, ZK_SESSION_TIMEOUT).await
}

/// Connects a ZooKeeper client with the given session timeout (the harness server accepts
/// 400 ms ..= 4 s); panics if that fails.
pub async fn zk_client_with_session_timeout(connect: &str, session_timeout: Duration) -> Client {
    Client::connector()
        .with_session_timeout(session_timeout)
        .connect(connect)
        .await
        .unwrap_or_else(|err| panic!("connecting a ZooKeeper client to {connect}: {err}"))
}

/// Creates the persistent node `path` with `data`, creating missing parents (with empty data)
/// first, and returns the node's [`Stat`]. If `path` already exists its data is overwritten,
/// so the post-condition is always "`path` exists and holds `data`".
///
/// Panics with the failing path on any ZooKeeper error.
pub async fn create_all(client: &Client, path: &str, data: &[u8]) -> Stat {
    let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
    let parent = match path.rfind('/') {
        Some(0) | None => None,
        Some(i) => Some(&path[..i]),
    };
    if let Some(parent) = parent {
        client.mkdir(parent, &options).await.unwrap_or_else(|err| panic!("creating parents {parent} of {path}: {err}"));
    }
    match client.create(path, data, &options).await {
        Ok((stat, _)) => stat,
        Err(zookeeper_client::Error::NodeExists) => {
            client.set_data(path, data, None).await.unwrap_or_else(|err| panic!("overwriting existing {path}: {err}"))
        }
        Err(err) => panic!("creating {path}: {err}"),
    }
}

/// Polls `condition` every 50 ms until it returns `Ok(value)`, and returns that value.
///
/// The `Err` of the condition explains what was observed instead ("3 keys, want 4"); when
/// `deadline` passes, this panics with `what` and the last such explanation, which is what you
/// want to read in a failing test. A single attempt that hangs (a request against a
/// disconnected server, say) is cut off at the deadline as well.
pub async fn wait_until<T, E, F, Fut>(deadline: Duration, what: &str, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Display,
{
    let end = tokio::time::Instant::now() + deadline;
    let mut last = String::from("(condition never completed)");
    loop {
        match tokio::time::timeout_at(end, condition()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(observed)) => last = observed.to_string(),
            Err(_) => last = format!("last attempt still pending at the deadline; before that: {last}"),
        }
        if tokio::time::Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting until {what}; last observed: {last}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `GET path` over plain HTTP/1.1: the status code and the body. Enough for the mirror's
/// `/metrics`, `/healthz` and `/readyz`; no HTTP client crate needed.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let code = response.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Ok((code, body))
}

/// Copies the folder `from` into `to`, recursively (a scratch copy of `fixtures/`, so that a
/// test's `import` and `export` work nowhere near the checkout). Panics naming what failed.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("creating {}: {e}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("reading {}: {e}", from.display())) {
        let entry = entry.unwrap_or_else(|e| panic!("reading an entry of {}: {e}", from.display()));
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap_or_else(|e| panic!("the type of {}: {e}", entry.path().display())).is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target)
                .unwrap_or_else(|e| panic!("copying {} to {}: {e}", entry.path().display(), target.display()));
        }
    }
}

//! The operator commands besides `run`, one module each: parse the arguments, call the library,
//! turn the outcome into text (or JSON) and an exit code. No mirroring logic lives here.
//!
//! Exit codes, the same for every command: 0 when the answer is "yes" (exact, live, found),
//! 1 when it is "no" (differences, stale or not live, no such znode), 2 when there is no answer
//! (bad arguments, a server unreachable: the message names it). `main` maps an `Err` to 2.
//!
//! - [`run`]: `zkmirror run` (the daemon) and `zkmirror check-config`.
//! - [`verify`]: `zkmirror verify`, ZooKeeper against Redis with a grace period.
//! - [`status`]: `zkmirror status`, the status hash and the lag behind ZooKeeper.
//! - [`read`]: `zkmirror get` and `zkmirror ls`, reading Redis as an application does.
//! - [`transfer`]: `zkmirror import` and `zkmirror export`.

pub mod read;
pub mod run;
pub mod status;
pub mod transfer;
pub mod verify;

use std::process::ExitCode;
use std::time::Duration;

use crate::config::{mask_url, validate_prefix, validate_redis_url, validate_zk_servers};
use crate::ZkDigest;
use anyhow::Context;
use clap::Args;
use redis::aio::MultiplexedConnection;

/// The answer is "no": differences, a stale mirror, a missing znode.
pub const NO: u8 = 1;

/// How long a one-shot command waits for ZooKeeper to accept a session.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two attempts.
const CONNECT_RETRY: Duration = Duration::from_millis(250);

/// Where the copy is.
// Its field docs are `--help` text (clap), not rustdoc: `[user:password@]` is not a link.
#[allow(rustdoc::broken_intra_doc_links)]
#[derive(Args)]
pub struct RedisArgs {
    /// Redis URL, redis://[user:password@]host:port[/db] (rediss:// for TLS).
    #[arg(long, env = "ZKMIRROR_REDIS", default_value = crate::config::DEFAULT_REDIS_URL)]
    pub redis: String,
    /// Key prefix in Redis.
    #[arg(long, env = "ZKMIRROR_PREFIX", default_value = "zk")]
    pub prefix: String,
}

/// Where ZooKeeper is, for commands that need it.
#[derive(Args)]
pub struct ZkArgs {
    /// ZooKeeper servers, host:port[,host:port...].
    #[arg(long, env = "ZKMIRROR_ZK", default_value = crate::config::DEFAULT_ZK_SERVERS)]
    pub zk: String,
    /// ZooKeeper digest credentials, user:password.
    #[arg(long, env = "ZKMIRROR_ZK_AUTH", hide_env_values = true)]
    pub zk_auth: Option<ZkDigest>,
}

pub fn no() -> ExitCode {
    ExitCode::from(NO)
}

/// A one-shot ZooKeeper session. Each attempt fails fast (`fail_eagerly`) when no server
/// answers; attempts repeat until `CONNECT_TIMEOUT`, so a server that is still starting (its
/// port open, sessions not yet served) is waited for. The error names the servers.
pub async fn connect_zk(servers: &str, auth: Option<&ZkDigest>) -> anyhow::Result<zookeeper_client::Client> {
    validate_zk_servers(servers)?;
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    loop {
        let mut connector =
            zookeeper_client::Client::connector().with_session_timeout(Duration::from_secs(10)).with_fail_eagerly();
        if let Some(digest) = auth {
            connector = connector.with_auth("digest", format!("{}:{}", digest.user, digest.password).as_bytes());
        }
        let error = match tokio::time::timeout_at(deadline, connector.connect(servers)).await {
            Ok(Ok(client)) => return Ok(client),
            // Wrong credentials will not get better by waiting.
            Ok(Err(error @ zookeeper_client::Error::AuthFailed)) => {
                return Err(error).with_context(|| format!("ZooKeeper at {servers} refused --zk-auth"))
            }
            // The client says only "no hosts" when no server accepted the connection: ask
            // the OS why (refused, unknown host, ...).
            Ok(Err(error)) => match crate::zk::probe(servers, CONNECT_RETRY * 8).await {
                Err(why) => why,
                Ok(()) => error.to_string(),
            },
            Err(_) => "no session".to_owned(),
        };
        if tokio::time::Instant::now() + CONNECT_RETRY >= deadline {
            anyhow::bail!("cannot connect to ZooKeeper at {servers}: {error} (tried for {CONNECT_TIMEOUT:?})");
        }
        tokio::time::sleep(CONNECT_RETRY).await;
    }
}

/// A connection to the copy's Redis, after checking the URL and the prefix. Returns the
/// server's name (password masked) for messages.
pub async fn connect_redis(args: &RedisArgs) -> anyhow::Result<(MultiplexedConnection, String)> {
    validate_prefix(&args.prefix)?;
    validate_redis_url(&args.redis)?;
    let server = mask_url(&args.redis);
    let client = redis::Client::open(args.redis.as_str()).with_context(|| format!("bad Redis URL {server}"))?;
    // Not `.context()`: a RedisError's text already ends with its io error's, which `{:#}`
    // would print a second time as the source.
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to Redis at {server}: {e}"))?;
    Ok((conn, server))
}

/// `1234` ms as `1.2 s`, `12 ms`, `3m 12s`, `2h 5m`, for people.
pub fn human_ms(ms: i64) -> String {
    let ms = ms.max(0);
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m {}s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{}h {}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// Unix time in ms, by this machine's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Writes `bytes` to stdout as they are. A closed pipe (`| head`) is not an error.
pub fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("cannot write to stdout"),
        _ => Ok(()),
    }
}

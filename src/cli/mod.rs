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

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{mask_url, validate_prefix, validate_redis_url, validate_zk_servers};
use crate::redis_conn::RedisConn;
use crate::redis_conn::{describe, describe_with_files, PasswordFile, RedisFiles, RedisTls};
use crate::settings::Overrides;
use crate::{ZkConnect, ZkDigest};
use anyhow::Context;
use clap::Args;

/// The answer is "no": differences, a stale mirror, a missing znode.
pub const NO: u8 = 1;

/// How long a one-shot command waits for ZooKeeper to accept a session.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a one-shot command waits for Redis to connect: TCP, the TLS handshake, AUTH.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two attempts.
const CONNECT_RETRY: Duration = Duration::from_millis(250);

/// Where the copy is.
// Its field docs are `--help` text (clap), not rustdoc: `[user:password@]` is not a link.
#[allow(rustdoc::broken_intra_doc_links)]
#[derive(Args)]
pub struct RedisArgs {
    /// Redis URL, redis://[user:password@]host:port[/db] (rediss:// for TLS), or
    /// redis+sentinel://[user:password@]host:port[,host:port...]/service (rediss+sentinel://), or
    /// redis+cluster://[user:password@]host:port[,host:port...] (rediss+cluster://).
    #[arg(long, env = "ZKMIRROR_REDIS", default_value = crate::config::DEFAULT_REDIS_URL)]
    pub redis: String,
    /// Key prefix in Redis.
    #[arg(long, env = "ZKMIRROR_PREFIX", default_value = "zk")]
    pub prefix: String,
    #[command(flatten)]
    pub files: RedisFileArgs,
}

/// The Redis connection's files, the same flags for every command that reads Redis (and for
/// `run`, where the `[redis]` keys of the settings file give them too).
#[derive(Args, Clone, Debug, Default)]
pub struct RedisFileArgs {
    /// PEM CA certificate(s) trusted for a rediss:// server's certificate (without it: the
    /// system roots).
    #[arg(long, env = "ZKMIRROR_REDIS_TLS_CA", value_name = "FILE")]
    pub redis_tls_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with --redis-tls-key).
    #[arg(long, env = "ZKMIRROR_REDIS_TLS_CERT", value_name = "FILE")]
    pub redis_tls_cert: Option<PathBuf>,
    /// PEM private key of --redis-tls-cert.
    #[arg(long, env = "ZKMIRROR_REDIS_TLS_KEY", value_name = "FILE")]
    pub redis_tls_key: Option<PathBuf>,
    /// A file holding the Redis password (a trailing newline is ignored), used with the URL's
    /// user, or `default`.
    #[arg(long, env = "ZKMIRROR_REDIS_PASSWORD_FILE", value_name = "FILE")]
    pub redis_password_file: Option<PathBuf>,
}

impl RedisFileArgs {
    /// Reads and checks the files for `url`; the error names the flag and the file.
    pub fn load(&self, url: &str) -> anyhow::Result<(RedisTls, Option<PasswordFile>)> {
        let files = RedisFiles {
            tls_ca: self.redis_tls_ca.as_deref(),
            tls_cert: self.redis_tls_cert.as_deref(),
            tls_key: self.redis_tls_key.as_deref(),
            password_file: self.redis_password_file.as_deref(),
        };
        files.load(url).map_err(|e| anyhow::anyhow!("{}: {}", e.setting.flag(), e.why))
    }
}

/// Where ZooKeeper is and how to reach it: the same flags (and environment) for every command
/// that talks to ZooKeeper.
#[derive(Args, Clone, Default)]
pub struct ZkArgs {
    /// ZooKeeper servers, host:port[,host:port...] [default: 127.0.0.1:2181].
    #[arg(long, env = "ZKMIRROR_ZK")]
    pub zk: Option<String>,
    /// ZooKeeper digest credentials, user:password.
    #[arg(long, env = "ZKMIRROR_ZK_AUTH", hide_env_values = true, value_parser = DigestParser)]
    pub zk_auth: Option<ZkDigest>,
    /// A file holding the ZooKeeper digest credentials, user:password (a trailing newline is
    /// ignored); instead of --zk-auth.
    #[arg(long, env = "ZKMIRROR_ZK_AUTH_FILE", value_name = "FILE")]
    pub zk_auth_file: Option<PathBuf>,
    /// TLS to every ZooKeeper server: the CA (PEM) their certificates must be signed by.
    #[arg(long, env = "ZKMIRROR_ZK_TLS_CA", value_name = "FILE")]
    pub zk_tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) for mutual TLS (ZooKeeper's x509 scheme); needs --zk-tls-key.
    #[arg(long, env = "ZKMIRROR_ZK_TLS_CERT", value_name = "FILE")]
    pub zk_tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "ZKMIRROR_ZK_TLS_KEY", value_name = "FILE")]
    pub zk_tls_key: Option<PathBuf>,
}

/// Parses `--zk-auth` without echoing it: clap's own error for a bad value quotes the value,
/// which for a password pasted alone (no `user:`) is the secret.
#[derive(Clone)]
struct DigestParser;

impl clap::builder::TypedValueParser for DigestParser {
    type Value = ZkDigest;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<ZkDigest, clap::Error> {
        let refused = |why: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("--zk-auth (or ZKMIRROR_ZK_AUTH): {why}\n"),
            )
        };
        let text = value.to_str().ok_or_else(|| refused("not UTF-8".to_owned()))?;
        text.parse::<ZkDigest>().map_err(|e| refused(e.to_string()))
    }
}

impl ZkArgs {
    /// These flags as settings overrides.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            zk: self.zk.clone(),
            zk_auth: self.zk_auth.clone(),
            zk_auth_file: self.zk_auth_file.clone(),
            zk_tls_ca: self.zk_tls_ca.clone(),
            zk_tls_cert: self.zk_tls_cert.clone(),
            zk_tls_key: self.zk_tls_key.clone(),
            ..Overrides::default()
        }
    }

    /// The ZooKeeper settings, files read and checked (for commands without a settings file).
    pub fn resolve(&self) -> anyhow::Result<ZkConnect> {
        Ok(crate::settings::zk_connect(&self.overrides())?)
    }
}

pub fn no() -> ExitCode {
    ExitCode::from(NO)
}

/// A one-shot ZooKeeper session. Each attempt fails fast (`fail_eagerly`) when no server
/// answers; attempts repeat until `CONNECT_TIMEOUT`, so a server that is still starting (its
/// port open, sessions not yet served) is waited for. A TLS failure (a certificate that does
/// not validate, a plain port where TLS was asked) or rejected credentials end it at once:
/// waiting will not help. The error names the servers.
pub async fn connect_zk(zk: &ZkConnect) -> anyhow::Result<zookeeper_client::Client> {
    validate_zk_servers(&zk.servers)?;
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    // Each attempt's probe gets a few retry pauses, the session the whole remaining time.
    let mut zk = zk.clone();
    zk.session_timeout = zk.session_timeout.min(CONNECT_TIMEOUT);
    loop {
        let error = match tokio::time::timeout_at(deadline, zk.connect(true)).await {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(error @ crate::ZkError::AuthFailed)) => {
                return Err(anyhow::anyhow!("ZooKeeper at {} refused the digest credentials: {error}", zk.servers))
            }
            Ok(Err(error @ crate::ZkError::Tls { .. })) => return Err(error.into()),
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("cannot connect to ZooKeeper at {}: no session", zk.servers),
        };
        if tokio::time::Instant::now() + CONNECT_RETRY >= deadline {
            anyhow::bail!("{error} (tried for {CONNECT_TIMEOUT:?})");
        }
        tokio::time::sleep(CONNECT_RETRY).await;
    }
}

/// A connection to the copy's Redis, after checking the URL, the prefix and the files. Returns
/// the server's name (password masked) for messages.
pub async fn connect_redis(args: &RedisArgs) -> anyhow::Result<(RedisConn, String)> {
    validate_prefix(&args.prefix)?;
    validate_redis_url(&args.redis)?;
    let (tls, password) = args.files.load(&args.redis)?;
    connect_redis_with(&args.redis, &tls, password.as_ref()).await
}

/// A connection to `url` with the TLS material and password given (already loaded). A server
/// that never completes the handshake (a plain port asked for TLS) or never answers is given
/// up after `REDIS_CONNECT_TIMEOUT`, with a message saying what that usually means.
pub async fn connect_redis_with(
    url: &str,
    tls: &RedisTls,
    password: Option<&PasswordFile>,
) -> anyhow::Result<(RedisConn, String)> {
    let server = mask_url(url);
    if !crate::sentinel::is_sentinel_url(url) && !crate::cluster::is_cluster_url(url) {
        crate::redis_conn::client(url, tls, password)
            .map_err(|e| anyhow::anyhow!("bad Redis URL {server}: {}", describe(&e, &server)))?;
    }
    let config = redis::AsyncConnectionConfig::new().set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT));
    // Not `.context()`: a RedisError's text already ends with its io error's, which `{:#}`
    // would print a second time as the source. Behind Sentinel: the primary named now.
    let conn = crate::redis_conn::connect_any(url, tls, password, &config).await.map_err(|e| {
        anyhow::anyhow!("cannot connect to Redis at {server}: {}", describe_with_files(&e, &server, tls))
    })?;
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
    i64::try_from(crate::clock::unix_ms()).unwrap_or(i64::MAX)
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

/// The mirrors of the targets registered under `path` (`targets_from`), as the running mirror
/// would make them (their secrets from the settings), and the registrations it would leave out
/// (by name, or by znode for one it cannot use at all), with why: for `status` and `verify`
/// with `--config`.
pub(crate) async fn registered_mirrors(
    settings: &crate::settings::Settings,
    zk: &zookeeper_client::Client,
    servers: &str,
    path: &str,
) -> anyhow::Result<(Vec<crate::MirrorConfig>, Vec<(String, String)>)> {
    let (registrations, unusable) = crate::registry::read_registrations(zk, path)
        .await
        .map_err(|e| anyhow::anyhow!("reading {path} in ZooKeeper at {servers}: {e}"))?;
    let (mirrors, mut left_out) = settings.registered(&registrations);
    left_out.extend(unusable);
    Ok((mirrors, left_out))
}

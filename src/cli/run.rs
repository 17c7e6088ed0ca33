//! `zkmirror run` (the daemon) and `zkmirror check-config`. Settings come from an optional TOML
//! file, then environment variables, then flags (clap merges the last two, flags first).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::settings::{parse_duration_text, Overrides, Settings};
use anyhow::Context;
use clap::Args;
use tracing::info;

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    settings: SettingsArgs,
}

#[derive(Args)]
pub struct CheckConfigArgs {
    /// The TOML file to check.
    file: PathBuf,
    #[command(flatten)]
    settings: SettingsArgs,
}

/// Every setting, optional here: a value not given falls back to the file, then the default.
#[derive(Args)]
struct SettingsArgs {
    /// TOML settings file (watched: a valid change applies without a restart; SIGHUP reloads).
    #[arg(long, env = "ZKMIRROR_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    zk: super::ZkArgs,
    /// Redis URL, redis://[user:password@]host:port[/db] (rediss:// for TLS), or
    /// redis+sentinel://[user:password@]host:port[,host:port...]/service (rediss+sentinel://), or
    /// redis+cluster://[user:password@]host:port[,host:port...] (rediss+cluster://)
    /// [default: redis://127.0.0.1:6379/].
    /// Several targets: give --redis once per target, each as NAME=URL.
    #[arg(long, env = "ZKMIRROR_REDIS", value_name = "[NAME=]URL")]
    redis: Vec<String>,
    #[command(flatten)]
    redis_files: super::RedisFileArgs,
    /// The subtree to mirror (an absolute ZooKeeper path); replaces the file's [[roots]].
    #[arg(long, env = "ZKMIRROR_ROOT")]
    root: Option<String>,
    /// Key prefix in Redis [default: zk].
    #[arg(long, env = "ZKMIRROR_PREFIX")]
    prefix: Option<String>,
    /// ZooKeeper session timeout (the server clamps it) [default: 10s].
    #[arg(long, env = "ZKMIRROR_SESSION_TIMEOUT", value_parser = parse_duration_text)]
    session_timeout: Option<Duration>,
    /// How often the whole subtree is compared again, catching ACL changes and znodes that
    /// became readable (no watch reports those); postponed, at most 4 intervals in a row,
    /// while changes arrive faster than 1,000/s [default: 30s].
    #[arg(long, env = "ZKMIRROR_ANTI_ENTROPY_INTERVAL", value_parser = parse_duration_text)]
    anti_entropy_interval: Option<Duration>,
    /// How long a tombstone outlives its delete [default: 60s].
    #[arg(long, env = "ZKMIRROR_TOMBSTONE_TTL", value_parser = parse_duration_text)]
    tombstone_ttl: Option<Duration>,
    /// Approximate length cap of the change stream [default: 10000].
    #[arg(long, env = "ZKMIRROR_CHANGES_MAXLEN")]
    changes_maxlen: Option<u64>,
    /// Most znode reads in flight at once [default: 1024].
    #[arg(long, env = "ZKMIRROR_READ_WINDOW")]
    read_window: Option<usize>,
    /// Bytes the mirror may hold at once: reads in flight (each counted as the largest
    /// znode), writes waiting for Redis, changed paths not yet read [default: 64MiB].
    #[arg(long, env = "ZKMIRROR_MEMORY_BUDGET", value_parser = parse_size_text, value_name = "SIZE")]
    memory_budget: Option<u64>,
    /// The largest znode the ZooKeeper servers accept (their jute.maxbuffer) [default: 1MiB].
    #[arg(long, env = "ZKMIRROR_MAX_ZNODE_SIZE", value_parser = parse_size_text, value_name = "SIZE")]
    max_znode_size: Option<u64>,
    /// Serve Prometheus metrics, /healthz and /readyz on this address (off by default).
    #[arg(long, env = "ZKMIRROR_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Run as one of several instances for the same roots: compete for leadership through
    /// ephemeral znodes under this ZooKeeper path (outside every root); only the leader writes
    /// to Redis (see "Running two or more mirrors" in the README).
    #[arg(long, env = "ZKMIRROR_HA", value_name = "PATH")]
    ha: Option<String>,
    /// This instance's name among the competitors (with --ha) [default: HOSTNAME:PID].
    #[arg(long, env = "ZKMIRROR_INSTANCE", value_name = "NAME")]
    instance: Option<String>,
    /// Also mirror into every Redis target registered under this ZooKeeper path (outside every
    /// root): each child znode names one, as JSON {"url": "redis://HOST:PORT/"} (see
    /// schema/targets.md); secrets come from [target_secrets.NAME] in the settings file.
    #[arg(long, env = "ZKMIRROR_TARGETS_FROM", value_name = "PATH")]
    targets_from: Option<String>,
}

impl SettingsArgs {
    fn split(self) -> (Option<PathBuf>, Overrides) {
        let overrides = Overrides {
            redis: self.redis,
            redis_tls_ca: self.redis_files.redis_tls_ca,
            redis_tls_cert: self.redis_files.redis_tls_cert,
            redis_tls_key: self.redis_files.redis_tls_key,
            redis_password_file: self.redis_files.redis_password_file,
            root: self.root,
            prefix: self.prefix,
            session_timeout: self.session_timeout,
            anti_entropy_interval: self.anti_entropy_interval,
            tombstone_ttl: self.tombstone_ttl,
            changes_maxlen: self.changes_maxlen,
            read_window: self.read_window,
            memory_budget: self.memory_budget,
            max_znode_size: self.max_znode_size,
            metrics_addr: self.metrics_addr,
            ha: self.ha,
            instance: self.instance,
            targets_from: self.targets_from,
            ..self.zk.overrides()
        };
        (self.config, overrides)
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let (file, overrides) = args.settings.split();
    // Fail fast on bad settings, before any signal handler or server is set up.
    let settings = Settings::load(file.as_deref(), &overrides)?;
    preflight(&settings).await?;
    let (trigger, shutdown) = crate::shutdown::channel();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    let daemon = tokio::spawn(crate::service::run(file, overrides, shutdown));
    tokio::pin!(daemon);
    tokio::select! {
        result = &mut daemon => { result.context("the daemon task panicked")??; return Ok(ExitCode::SUCCESS) }
        _ = tokio::signal::ctrl_c() => info!("SIGINT received: stopping"),
        _ = sigterm.recv() => info!("SIGTERM received: stopping"),
    }
    trigger.fire();
    daemon.await.context("the daemon task panicked")??;
    Ok(ExitCode::SUCCESS)
}

/// Each server once, before the daemon starts: what waiting cannot fix ends the start with one
/// message naming the server (and the files) and exit code 2 (a certificate the TLS files do
/// not accept, a client certificate refused, plain TCP against TLS either way, credentials
/// refused). A server that is down or unreachable is not an error here: the mirror retries it,
/// as it does any outage later.
async fn preflight(settings: &Settings) -> anyhow::Result<()> {
    const WITHIN: std::time::Duration = std::time::Duration::from_secs(5);
    let mut zk_checked: Vec<crate::ZkConnect> = Vec::new();
    let mut redis_checked: Vec<&crate::MirrorConfig> = Vec::new();
    // With only registered targets there is no mirror yet, but the registry's ZooKeeper.
    let registry_zk = settings.mirrors.is_empty().then(|| settings.zk_connect()).flatten();
    if let Some(zk) = registry_zk {
        let mut probe = zk.clone();
        probe.session_timeout = probe.session_timeout.min(WITHIN);
        if let Ok(Err(e @ (crate::ZkError::Tls { .. } | crate::ZkError::AuthFailed))) =
            tokio::time::timeout(WITHIN * 2, probe.connect(true)).await
        {
            return Err(e.into());
        }
    }
    for m in &settings.mirrors {
        let zk = m.zk_connect();
        if !zk_checked.contains(&zk) {
            let mut probe = zk.clone();
            probe.session_timeout = probe.session_timeout.min(WITHIN);
            match tokio::time::timeout(WITHIN * 2, probe.connect(true)).await {
                Ok(Err(e @ (crate::ZkError::Tls { .. } | crate::ZkError::AuthFailed))) => return Err(e.into()),
                Ok(Ok(client)) => drop(client),
                // Down, unreachable, slow: the mirror retries.
                Ok(Err(_)) | Err(_) => {}
            }
            zk_checked.push(zk);
        }
        let same_redis = |c: &&crate::MirrorConfig| {
            c.redis_url == m.redis_url && c.redis_tls == m.redis_tls && c.redis_password == m.redis_password
        };
        if !redis_checked.iter().any(same_redis) {
            let server = crate::config::mask_url(&m.redis_url);
            if !crate::sentinel::is_sentinel_url(&m.redis_url) && !crate::cluster::is_cluster_url(&m.redis_url) {
                m.redis_client().map_err(|e| anyhow::anyhow!("bad Redis URL {server}: {e}"))?;
            }
            redis_checked.push(m);
        }
    }
    // Every Redis at once: a hung target costs the start its timeout once, not once per target.
    let checks = redis_checked.iter().map(|m| async move {
        let config =
            redis::AsyncConnectionConfig::new().set_connection_timeout(Some(WITHIN)).set_response_timeout(Some(WITHIN));
        match m.redis_connect(&config).await {
            Err(e) if crate::redis_conn::is_misconfiguration(&e, &m.redis_url) => Err(anyhow::anyhow!(
                "cannot connect to Redis at {}: {}",
                crate::config::mask_url(&m.redis_url),
                crate::redis_conn::describe_with_files(&e, &m.redis_url, &m.redis_tls)
            )),
            _ => Ok(()),
        }
    });
    for result in futures::future::join_all(checks).await {
        result?;
    }
    Ok(())
}

/// Validates a settings file (with any flags or environment on top) and prints the effective
/// settings with secrets masked.
pub async fn check_config(args: CheckConfigArgs) -> anyhow::Result<ExitCode> {
    let (_, overrides) = args.settings.split();
    let settings = Settings::load(Some(&args.file), &overrides)?;
    println!("# {}: valid; effective settings (secrets masked):\n", args.file.display());
    print!("{}", settings.render_masked());
    Ok(ExitCode::SUCCESS)
}

fn parse_size_text(text: &str) -> Result<u64, String> {
    crate::settings::parse_size(text)
}

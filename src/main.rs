//! The `zkmirror` command line: `run` mirrors, `verify` compares. Errors become messages and
//! exit codes here, at the edge; the library below uses typed errors.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing::{error, info};
use zkmirror::{Mirror, MirrorConfig, ZkDigest};

#[derive(Parser)]
#[command(name = "zkmirror", version, about = "Mirror a ZooKeeper subtree into Redis, exactly and monotonically")]
struct Cli {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, global = true, env = "ZKMIRROR_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Mirror the subtree until stopped (SIGINT or SIGTERM).
    Run(RunArgs),
    /// Compare Redis with the subtree once; exit 0 only when they match exactly.
    Verify(VerifyArgs),
}

#[derive(Args)]
struct Servers {
    /// ZooKeeper servers, host:port[,host:port...].
    #[arg(long, env = "ZKMIRROR_ZK")]
    zk: String,
    /// Redis URL, redis://[user:password@]host:port[/db].
    #[arg(long, env = "ZKMIRROR_REDIS")]
    redis: String,
    /// The subtree to mirror (an absolute ZooKeeper path).
    #[arg(long, env = "ZKMIRROR_ROOT")]
    root: String,
    /// Key prefix in Redis.
    #[arg(long, env = "ZKMIRROR_PREFIX", default_value = "zk")]
    prefix: String,
    /// ZooKeeper digest credentials, user:password.
    #[arg(long, env = "ZKMIRROR_ZK_AUTH", hide_env_values = true)]
    zk_auth: Option<ZkDigest>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    servers: Servers,
    /// ZooKeeper session timeout (the server clamps it), e.g. 10s.
    #[arg(long, env = "ZKMIRROR_SESSION_TIMEOUT", default_value = "10s", value_parser = humantime_duration)]
    session_timeout: Duration,
    /// How often the whole subtree is compared again (catches ACL changes and znodes that
    /// became readable, which no watch reports), e.g. 30s.
    #[arg(long, env = "ZKMIRROR_ANTI_ENTROPY_INTERVAL", default_value = "30s", value_parser = humantime_duration)]
    anti_entropy_interval: Duration,
    /// How long a tombstone outlives its delete, e.g. 60s.
    #[arg(long, env = "ZKMIRROR_TOMBSTONE_TTL", default_value = "60s", value_parser = humantime_duration)]
    tombstone_ttl: Duration,
    /// Approximate length cap of the change stream.
    #[arg(long, env = "ZKMIRROR_CHANGES_MAXLEN", default_value_t = 10_000)]
    changes_maxlen: u64,
    /// ZooKeeper reads kept in flight at once.
    #[arg(long, env = "ZKMIRROR_READ_WINDOW", default_value_t = 1024)]
    read_window: usize,
}

#[derive(Args)]
struct VerifyArgs {
    #[command(flatten)]
    servers: Servers,
}

/// Parses `250ms`, `10s`, `5m` or a plain number of seconds.
fn humantime_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.find(|c: char| !c.is_ascii_digit() && c != '.').map_or((text, "s"), |i| text.split_at(i));
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 250ms, 10s or 5m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("zkmirror: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run(args) => runtime.block_on(run(args)),
        Command::Verify(args) => runtime.block_on(verify(args)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            error!("{e:#}");
            eprintln!("zkmirror: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn config_from(servers: Servers) -> MirrorConfig {
    let mut config = MirrorConfig::new(servers.zk, servers.redis, servers.root);
    config.prefix = servers.prefix;
    config.zk_auth = servers.zk_auth;
    config
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut config = config_from(args.servers);
    config.session_timeout = args.session_timeout;
    config.anti_entropy_interval = args.anti_entropy_interval;
    config.tombstone_ttl = args.tombstone_ttl;
    config.changes_maxlen = args.changes_maxlen;
    config.read_window = args.read_window;
    let mirror = Mirror::new(config)?;
    let handle = mirror.handle();
    let mut task = tokio::spawn(mirror.run());
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        result = &mut task => { result.context("mirror task panicked")??; return Ok(ExitCode::SUCCESS) }
        _ = tokio::signal::ctrl_c() => info!("SIGINT received: stopping"),
        _ = sigterm.recv() => info!("SIGTERM received: stopping"),
    }
    handle.stop();
    task.await.context("mirror task panicked")??;
    Ok(ExitCode::SUCCESS)
}

async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let config = config_from(args.servers);
    config.validate()?;
    let mut connector = zookeeper_client::Client::connector();
    if let Some(digest) = &config.zk_auth {
        connector = connector.with_auth("digest", format!("{}:{}", digest.user, digest.password).as_bytes());
    }
    let zk = connector
        .with_session_timeout(Duration::from_secs(10))
        .connect(&config.zk_servers)
        .await
        .with_context(|| format!("cannot connect to ZooKeeper at {}", config.zk_servers))?;
    let redis = redis::Client::open(config.redis_url.as_str())?;
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("cannot connect to Redis at {}", zkmirror::config::mask_url(&config.redis_url)))?;
    let report = zkmirror::verify::compare(&zk, &mut conn, &config.prefix, &config.root).await?;
    println!("{report}");
    Ok(if report.is_exact() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

//! `zkmirror get` and `zkmirror ls`: read one znode from Redis the way an application does
//! ([`crate::reader`]); ZooKeeper is not asked.

use std::process::ExitCode;

use crate::reader;
use crate::schema::Keys;
use clap::Args;

use super::{connect_redis, no, write_stdout, RedisArgs};

#[derive(Args)]
pub struct GetArgs {
    /// The znode, an absolute ZooKeeper path.
    path: String,
    /// Print the znode's Stat as Redis holds it (`field: value` lines) instead of its data.
    #[arg(long)]
    meta: bool,
    #[command(flatten)]
    redis: RedisArgs,
}

#[derive(Args)]
pub struct LsArgs {
    /// The znode, an absolute ZooKeeper path.
    path: String,
    #[command(flatten)]
    redis: RedisArgs,
}

/// Prints the data, byte for byte (or the Stat with `--meta`); exit 1 when Redis does not hold
/// the znode.
pub async fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    check_path(&args.path)?;
    let (mut conn, server) = connect_redis(&args.redis).await?;
    let keys = Keys::new(&args.redis.prefix);
    let found =
        reader::get(&mut conn, &keys, &args.path).await.map_err(|e| anyhow::anyhow!("Redis at {server}: {e}"))?;
    let Some(znode) = found else {
        return Ok(missing(&args.path, &server, &keys));
    };
    if args.meta {
        let text: String = znode.meta.iter().map(|(field, value)| format!("{field}: {value}\n")).collect();
        write_stdout(text.as_bytes())?;
    } else {
        write_stdout(&znode.data)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the child names, sorted, one per line (nothing for a leaf); exit 1 when Redis does
/// not hold the znode.
pub async fn ls(args: LsArgs) -> anyhow::Result<ExitCode> {
    check_path(&args.path)?;
    let (mut conn, server) = connect_redis(&args.redis).await?;
    let keys = Keys::new(&args.redis.prefix);
    let found =
        reader::children(&mut conn, &keys, &args.path).await.map_err(|e| anyhow::anyhow!("Redis at {server}: {e}"))?;
    let Some(names) = found else {
        return Ok(missing(&args.path, &server, &keys));
    };
    let text: String = names.iter().map(|name| format!("{name}\n")).collect();
    write_stdout(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

fn check_path(path: &str) -> anyhow::Result<()> {
    crate::path::validate(path).map_err(|e| match e {
        crate::ConfigError::BadRoot { root, why } => anyhow::anyhow!("bad znode path {root:?}: {why}"),
        other => other.into(),
    })
}

fn missing(path: &str, server: &str, keys: &Keys) -> ExitCode {
    eprintln!(
        "zkmirror: no znode {path} in Redis at {server} (no key {}): it is not in ZooKeeper, \
         not below a mirrored root, or not mirrored yet",
        keys.meta(path)
    );
    no()
}

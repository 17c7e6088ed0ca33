//! `zkmirror verify`: compares the subtree in ZooKeeper with its copy in Redis, key by key,
//! independently of any running mirror ([`crate::verify`]). Differences that settle within
//! the grace period (changes in flight) are not reported.
//!
//! One root from flags (with `--include`/`--exclude`/`--max-depth` as its filter), or with
//! `--config FILE` every root of a settings file, each with its own prefix and filter: what
//! `zkmirror run --config FILE` with the same flags and environment mirrors.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::filter::Filter;
use crate::schema::{KeyKind, Keys};
use crate::settings::{Overrides, Settings};
use crate::verify::{compare_settled, Report};
use crate::MirrorConfig;
use anyhow::Context;
use clap::Args;
use serde_json::json;

use super::{connect_redis_with, connect_zk, no, write_stdout};
use crate::settings::parse_duration_text;

#[derive(Args)]
pub struct VerifyArgs {
    /// Verify every root of this settings file, each with its own prefix and filter; the
    /// other flags and the environment override the file as they do for `run`.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["include", "exclude", "max_depth"])]
    config: Option<PathBuf>,
    #[command(flatten)]
    zk: super::ZkArgs,
    /// Redis URL, redis://[user:password@]host:port[/db] (rediss:// for TLS)
    /// [default: redis://127.0.0.1:6379/].
    /// Several targets: give --redis once per target, each as NAME=URL.
    #[arg(long, env = "ZKMIRROR_REDIS", value_name = "[NAME=]URL")]
    redis: Vec<String>,
    #[command(flatten)]
    redis_files: super::RedisFileArgs,
    /// The mirrored subtree (an absolute ZooKeeper path); with --config, replaces the file's
    /// roots (as for `run`).
    #[arg(long, env = "ZKMIRROR_ROOT", required_unless_present = "config")]
    root: Option<String>,
    /// Key prefix in Redis [default: zk].
    #[arg(long, env = "ZKMIRROR_PREFIX")]
    prefix: Option<String>,
    /// Only znodes matching this glob are expected in Redis (repeatable; as `include` of a
    /// `[[roots]]` entry).
    #[arg(long, value_name = "GLOB")]
    include: Vec<String>,
    /// Znodes matching this glob are expected to have no keys (repeatable).
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// Znodes deeper than this below the root (the root is 0) are expected to have no keys.
    #[arg(long, value_name = "N")]
    max_depth: Option<usize>,
    /// How long a difference may take to go away (a change in flight) before it is reported,
    /// e.g. 5s; 0 reports the first comparison as it is.
    #[arg(long, env = "ZKMIRROR_VERIFY_GRACE", default_value = "3s", value_parser = parse_duration_text)]
    grace: Duration,
    /// How many differences the text output lists per root (--json lists all).
    #[arg(long, default_value_t = 20)]
    show: usize,
    /// Print one JSON object (see the README, "Operating it") instead of text.
    #[arg(long)]
    json: bool,
}

/// The roots to verify, from the file or the flags.
fn roots(args: &VerifyArgs) -> anyhow::Result<(Vec<MirrorConfig>, Settings)> {
    let overrides = Overrides {
        redis: args.redis.clone(),
        redis_tls_ca: args.redis_files.redis_tls_ca.clone(),
        redis_tls_cert: args.redis_files.redis_tls_cert.clone(),
        redis_tls_key: args.redis_files.redis_tls_key.clone(),
        redis_password_file: args.redis_files.redis_password_file.clone(),
        root: args.root.clone(),
        prefix: args.prefix.clone(),
        ..args.zk.overrides()
    };
    let settings = Settings::load(args.config.as_deref(), &overrides)?;
    let mut mirrors = settings.mirrors.clone();
    if args.config.is_none() {
        let filter = Filter::new(&args.include, &args.exclude, args.max_depth)?;
        for m in &mut mirrors {
            m.filter = filter.clone();
        }
    }
    Ok((mirrors, settings))
}

pub async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let (mut mirrors, settings) = roots(&args)?;
    // One process's settings name one ZooKeeper for all roots, and one Redis per target.
    let zk_connect = settings.zk_connect().context("no root to verify")?;
    let zk = connect_zk(&zk_connect).await?;
    // With --config, the targets registered in ZooKeeper are verified beside the file's.
    let mut left_out = Vec::new();
    if let (Some(_), Some(path)) = (&args.config, settings.targets_from.as_deref()) {
        let (registered, refused) = super::registered_mirrors(&settings, &zk, &zk_connect.servers, path).await?;
        mirrors.extend(registered);
        // On stderr: stdout stays the report (or its JSON).
        for (name, why) in &refused {
            eprintln!(
                "registration {name} (under {path}): left out, as the mirror leaves it out, and not verified: {why}"
            );
        }
        left_out = refused;
    }
    if mirrors.is_empty() {
        anyhow::bail!(
            "no Redis target to verify: none in the settings, and {} registered (of which {} left out); give --redis URL",
            if left_out.is_empty() { "none" } else { "only unusable ones" },
            left_out.len()
        );
    }
    let mut connections: Vec<(&str, crate::redis_conn::RedisConn, String)> = Vec::new();
    let mut reports = Vec::new();
    for m in &mirrors {
        let at = match connections.iter().position(|(target, ..)| *target == m.target) {
            Some(at) => at,
            None => {
                let (conn, server) = connect_redis_with(&m.redis_url, &m.redis_tls, m.redis_password.as_ref()).await?;
                connections.push((&m.target, conn, server));
                connections.len() - 1
            }
        };
        let (_, conn, server) = &mut connections[at];
        let report = compare_settled(&zk, conn, &m.prefix, &m.root, &m.filter, args.grace)
            .await
            .with_context(|| format!("verifying {} in Redis at {server}", m.key()))?;
        reports.push((m, report, server.clone()));
    }
    let exact = reports.iter().all(|(_, r, _)| r.is_exact());
    let text = if args.json {
        let each = reports.iter().map(|(m, r, _)| json_report(r, m, args.grace));
        let value = match (&args.config, reports.len()) {
            (None, 1) => each.into_iter().next().unwrap_or_default(),
            _ => json!({ "exact": exact, "roots": each.collect::<Vec<_>>() }),
        };
        format!("{value}\n")
    } else {
        reports.iter().map(|(m, r, server)| text_report(r, m, server, args.grace, args.show)).collect()
    };
    write_stdout(text.as_bytes())?;
    Ok(if exact { ExitCode::SUCCESS } else { no() })
}

fn text_report(report: &Report, m: &MirrorConfig, server: &str, grace: Duration, show: usize) -> String {
    let settled = match report.settled {
        0 => String::new(),
        n => format!("; {n} keys differed at first and settled within the {grace:?} grace"),
    };
    let unreadable = match report.unreadable {
        0 => String::new(),
        n => format!("; {n} znodes unreadable to this session, skipped"),
    };
    let filter = if m.filter.is_all() { String::new() } else { format!("; filter: {}", m.filter.describe()) };
    let target =
        if m.target == crate::config::DEFAULT_TARGET { String::new() } else { format!("target {}, ", m.target) };
    let scope =
        format!("{} znodes under {} ({target}Redis {server}, prefix {}{filter})", report.znodes, m.root, m.prefix);
    if report.is_exact() {
        return format!("exact: {scope} match{unreadable}{settled}\n");
    }
    let n = report.differences.len();
    let mut out = format!("DIFFERENT: {n} keys differ over {scope}, still after {grace:?}{unreadable}{settled}\n");
    for d in report.differences.iter().take(show) {
        out.push_str(&format!("  {d}\n"));
    }
    if n > show {
        out.push_str(&format!("  ... and {} more (--json lists all)\n", n - show));
    }
    out
}

fn json_report(report: &Report, m: &MirrorConfig, grace: Duration) -> serde_json::Value {
    let keys = Keys::new(&m.prefix);
    let differences: Vec<serde_json::Value> = report
        .differences
        .iter()
        .map(|d| {
            let (kind, path) = match keys.parse(&d.key) {
                Some((kind, path)) => (Some(kind_name(kind)), Some(path)),
                None => (None, None),
            };
            json!({ "key": d.key, "path": path, "kind": kind, "what": d.what })
        })
        .collect();
    json!({
        "exact": report.is_exact(),
        "target": m.target,
        "root": m.root,
        "prefix": m.prefix,
        "filter": (!m.filter.is_all()).then(|| m.filter.describe()),
        "znodes": report.znodes,
        "unreadable": report.unreadable,
        "settled": report.settled,
        "grace_ms": grace.as_millis() as u64,
        "differences": differences,
    })
}

fn kind_name(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Data => "data",
        KeyKind::Meta => "meta",
        KeyKind::Children => "children",
        KeyKind::Tomb => "tomb",
    }
}

//! `zkmirror verify`: compares the subtree in ZooKeeper with its copy in Redis, key by key,
//! independently of any running mirror ([`zkmirror::verify`]). Differences that settle within
//! the grace period (changes in flight) are not reported.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::json;
use zkmirror::schema::{KeyKind, Keys};
use zkmirror::verify::{compare_settled, Report};

use super::{connect_redis, connect_zk, no, write_stdout, RedisArgs};
use super::{config_from, humantime_duration, Servers};

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    servers: Servers,
    /// How long a difference may take to go away (a change in flight) before it is reported,
    /// e.g. 5s; 0 reports the first comparison as it is.
    #[arg(long, env = "ZKMIRROR_VERIFY_GRACE", default_value = "3s", value_parser = humantime_duration)]
    grace: Duration,
    /// How many differences the text output lists (--json lists all).
    #[arg(long, default_value_t = 20)]
    show: usize,
    /// Print one JSON object (see the operators' guide) instead of text.
    #[arg(long)]
    json: bool,
}

pub async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let config = config_from(args.servers);
    config.validate()?;
    let redis_args = RedisArgs { redis: config.redis_url.clone(), prefix: config.prefix.clone() };
    let (mut conn, server) = connect_redis(&redis_args).await?;
    let zk = connect_zk(&config.zk_servers, config.zk_auth.as_ref()).await?;
    let report = compare_settled(&zk, &mut conn, &config.prefix, &config.root, args.grace).await?;
    let keys = Keys::new(&config.prefix);
    let text = if args.json {
        let mut text = json_report(&report, &keys, &config.root, args.grace).to_string();
        text.push('\n');
        text
    } else {
        text_report(&report, &config.root, &config.prefix, &server, args.grace, args.show)
    };
    write_stdout(text.as_bytes())?;
    Ok(if report.is_exact() { ExitCode::SUCCESS } else { no() })
}

fn text_report(report: &Report, root: &str, prefix: &str, server: &str, grace: Duration, show: usize) -> String {
    let settled = match report.settled {
        0 => String::new(),
        n => format!("; {n} keys differed at first and settled within the {grace:?} grace"),
    };
    let unreadable = match report.unreadable {
        0 => String::new(),
        n => format!("; {n} znodes unreadable to this session, skipped"),
    };
    let scope = format!("{} znodes under {root} (Redis {server}, prefix {prefix})", report.znodes);
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

fn json_report(report: &Report, keys: &Keys, root: &str, grace: Duration) -> serde_json::Value {
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
        "root": root,
        "prefix": keys.prefix(),
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

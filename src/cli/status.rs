//! `zkmirror status`: what the mirror last wrote to `P:mirror`, judged: live and a recent
//! heartbeat, or not. With `--zk`, also how far the copy is behind ZooKeeper
//! ([`zkmirror::lag`]).
//!
//! Definitions (also in `docs/operators-commands.md`):
//! - heartbeat age = now − `heartbeat`, both by wall clocks (this machine's and the mirror's);
//! - behind in zxids = the subtree's highest `mzxid`/`pzxid` in ZooKeeper − the mirror's `zxid`;
//! - behind in ms = now − ZooKeeper's `mtime` of the oldest create or data change under the
//!   root that the mirror's `zxid` does not cover yet (0 when none; unknown when only deletes
//!   are pending, as ZooKeeper records no time for a delete).

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::json;
use zkmirror::lag::{read_clock, Behind, SubtreeClock};
use zkmirror::reader::{mirror_state, MirrorState};
use zkmirror::schema::Keys;
use zkmirror::ZkDigest;

use super::{connect_redis, connect_zk, human_ms, no, now_ms, write_stdout, RedisArgs};
use super::humantime_duration;

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// ZooKeeper servers: also report how far the copy is behind ZooKeeper. This reads the Stat
    /// of every znode under the mirrored root (as one anti-entropy pass does).
    #[arg(long, env = "ZKMIRROR_ZK")]
    zk: Option<String>,
    /// ZooKeeper digest credentials, user:password.
    #[arg(long, env = "ZKMIRROR_ZK_AUTH", hide_env_values = true)]
    zk_auth: Option<ZkDigest>,
    /// A heartbeat older than this makes the mirror stale (exit 1), e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = humantime_duration)]
    max_heartbeat_age: Duration,
    /// With --zk: a change not yet mirrored after this long makes the mirror stale (exit 1).
    #[arg(long, requires = "zk", value_parser = humantime_duration)]
    max_lag: Option<Duration>,
    /// Print one JSON object (see the operators' guide) instead of text.
    #[arg(long)]
    json: bool,
}

/// How far behind, as reported.
struct Lag {
    clock: SubtreeClock,
    behind: Behind,
    /// `None`: only deletes pending, whose time ZooKeeper does not record.
    ms: Option<i64>,
}

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let (mut conn, server) = connect_redis(&args.redis).await?;
    let keys = Keys::new(&args.redis.prefix);
    let Some(mut state) = read_state(&mut conn, &keys, &server).await? else {
        let message = format!(
            "no mirror status in Redis at {server}: {} is absent (no mirror has run with prefix {})",
            keys.status(),
            keys.prefix()
        );
        if args.json {
            let value = json!({ "ok": false, "problems": [message], "prefix": keys.prefix(), "key": keys.status() });
            write_stdout(format!("{value}\n").as_bytes())?;
        } else {
            write_stdout(format!("NOT OK: {message}\n").as_bytes())?;
        }
        return Ok(no());
    };
    let mut lag = None;
    if let (Some(servers), Some(root)) = (&args.zk, state.root.clone()) {
        let zk = connect_zk(servers, args.zk_auth.as_ref()).await?;
        let clock = read_clock(&zk, &root).await?;
        // Read the mirror's zxid after the walk: what it applied meanwhile is not lag.
        state = read_state(&mut conn, &keys, &server).await?.unwrap_or(state);
        let behind = clock.behind(state.zxid.unwrap_or(0));
        let ms = match (behind.zxids, behind.oldest_pending_mtime_ms) {
            (_, Some(mtime)) => Some((now_ms() - mtime).max(0)),
            (0, None) => Some(0),
            (_, None) => None,
        };
        lag = Some(Lag { clock, behind, ms });
    }
    let now = now_ms();
    let heartbeat_age = state.heartbeat_ms.map(|h| (now - h).max(0));
    let problems = judge(&state, heartbeat_age, lag.as_ref(), &args);
    let text = if args.json {
        format!("{}\n", json_status(&state, heartbeat_age, lag.as_ref(), &problems, &keys))
    } else {
        text_status(&state, heartbeat_age, lag.as_ref(), &problems, &args, &server, &keys, now)
    };
    write_stdout(text.as_bytes())?;
    Ok(if problems.is_empty() { ExitCode::SUCCESS } else { no() })
}

async fn read_state(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    server: &str,
) -> anyhow::Result<Option<MirrorState>> {
    mirror_state(conn, keys).await.map_err(|e| anyhow::anyhow!("Redis at {server}: {e}"))
}

/// Why the mirror is not fine; empty when it is.
fn judge(state: &MirrorState, heartbeat_age: Option<i64>, lag: Option<&Lag>, args: &StatusArgs) -> Vec<String> {
    let mut problems = Vec::new();
    match state.state.as_deref() {
        Some("live") => {}
        Some(other) => problems.push(format!("state is {other}, not live")),
        None => problems.push("no state field".to_owned()),
    }
    let limit = args.max_heartbeat_age.as_millis() as i64;
    match heartbeat_age {
        Some(age) if age > limit => problems.push(format!(
            "stale: heartbeat {} ago (limit {})",
            human_ms(age),
            human_ms(limit)
        )),
        Some(_) => {}
        None => problems.push("stale: no heartbeat field".to_owned()),
    }
    if let (Some(max), Some(Lag { ms: Some(ms), .. })) = (args.max_lag, lag) {
        let max = max.as_millis() as i64;
        if *ms > max {
            problems.push(format!(
                "stale: a change made {} ago is not mirrored yet (limit {})",
                human_ms(*ms),
                human_ms(max)
            ));
        }
    }
    problems
}

#[allow(clippy::too_many_arguments)]
fn text_status(
    state: &MirrorState,
    heartbeat_age: Option<i64>,
    lag: Option<&Lag>,
    problems: &[String],
    args: &StatusArgs,
    server: &str,
    keys: &Keys,
    now: i64,
) -> String {
    let unknown = || "unknown".to_owned();
    let phase = state.state.clone().unwrap_or_else(unknown);
    let verdict = if problems.is_empty() { format!("OK: {phase}") } else { format!("NOT OK: {}", problems.join("; ")) };
    let zxid = state.zxid.map_or_else(unknown, |z| format!("{z} (0x{z:x})"));
    let heartbeat = heartbeat_age.map_or_else(unknown, |age| {
        format!("{} ago (stale after {})", human_ms(age), human_ms(args.max_heartbeat_age.as_millis() as i64))
    });
    let behind = match lag {
        None if args.zk.is_none() => "unknown (pass --zk to ask ZooKeeper)".to_owned(),
        None => "unknown (the status names no root)".to_owned(),
        Some(lag) => {
            let ms = lag.ms.map_or_else(|| "time unknown (only deletes pending)".to_owned(), human_ms);
            format!(
                "{} zxids, {ms} ({} znodes not yet mirrored; ZooKeeper's latest zxid under the root is {}, over {} znodes)",
                lag.behind.zxids, lag.behind.pending, lag.clock.head, lag.clock.znodes
            )
        }
    };
    let started = state.started_at_ms.map_or_else(unknown, |s| format!("{} ago", human_ms(now - s)));
    let rows = [
        ("state", phase),
        ("zxid", zxid),
        ("heartbeat", heartbeat),
        ("behind", behind),
        ("roots", state.root.clone().unwrap_or_else(unknown)),
        ("started", started),
        ("version", state.version.clone().unwrap_or_else(unknown)),
        ("status key", format!("{} in Redis at {server}", keys.status())),
    ];
    let mut out = format!("{verdict}\n");
    for (name, value) in rows {
        out.push_str(&format!("  {name:<12}{value}\n"));
    }
    out
}

fn json_status(
    state: &MirrorState,
    heartbeat_age: Option<i64>,
    lag: Option<&Lag>,
    problems: &[String],
    keys: &Keys,
) -> serde_json::Value {
    let behind = lag.map(|lag| {
        json!({
            "zookeeper_zxid": lag.clock.head,
            "zxids": lag.behind.zxids,
            "ms": lag.ms,
            "pending_znodes": lag.behind.pending,
            "znodes": lag.clock.znodes,
            "unreadable": lag.clock.unreadable,
        })
    });
    json!({
        "ok": problems.is_empty(),
        "problems": problems,
        "prefix": keys.prefix(),
        "key": keys.status(),
        "state": state.state,
        "zxid": state.zxid,
        "heartbeat_ms": state.heartbeat_ms,
        "heartbeat_age_ms": heartbeat_age,
        "started_at_ms": state.started_at_ms,
        "version": state.version,
        "roots": state.root.iter().collect::<Vec<_>>(),
        "behind": behind,
    })
}

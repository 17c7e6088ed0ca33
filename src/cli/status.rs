//! `zkmirror status`: what the mirror last wrote to `P:mirror`, judged: live and a recent
//! heartbeat, or not. With `--lag` (or `--zk`), also how far the copy is behind ZooKeeper
//! (`crate::lag`).
//!
//! When several roots share the prefix, `P:mirror` is their aggregate and lists them in
//! `roots`; each root's own status is `P:mirror:{ROOT}`. Then every root is reported and judged
//! on its own (lag included) after the aggregate, and any root not fine makes the answer "no".
//!
//! Definitions (also in the README, "Operating it"):
//! - heartbeat age = now − `heartbeat`, both by wall clocks (this machine's and the mirror's);
//! - behind in zxids = the subtree's highest `mzxid`/`pzxid` in ZooKeeper − the mirror's `zxid`;
//! - behind in ms = now − ZooKeeper's `mtime` of the oldest create or data change under the
//!   root that the mirror's `zxid` does not cover yet (0 when none; unknown when only deletes
//!   are pending, as ZooKeeper records no time for a delete).

use std::process::ExitCode;
use std::time::Duration;

use crate::lag::{read_clock, Behind, SubtreeClock};
use crate::reader::{mirror_state, root_state, MirrorState};
use crate::redis_conn::RedisConn;
use crate::schema::Keys;
use clap::Args;
use serde_json::json;

use super::{connect_redis, connect_zk, human_ms, no, now_ms, write_stdout, RedisArgs};
use crate::settings::parse_duration_text;

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// Report every Redis target (and prefix) of this settings file, each judged on its own;
    /// exit 0 only when all are fine. Replaces --redis and --prefix.
    #[arg(long, value_name = "FILE", conflicts_with = "instances")]
    config: Option<std::path::PathBuf>,
    /// Also report how far the copy is behind ZooKeeper (at --zk). This reads the Stat of
    /// every znode under the mirrored root (as one anti-entropy pass does).
    #[arg(long)]
    lag: bool,
    /// ZooKeeper (for --lag and --instances): --zk (giving it implies --lag), its credentials
    /// and TLS.
    #[command(flatten)]
    zk: super::ZkArgs,
    /// A heartbeat older than this makes the mirror stale (exit 1), e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = parse_duration_text)]
    max_heartbeat_age: Duration,
    /// With --lag (or --zk): a change not yet mirrored after this long makes the mirror stale
    /// (exit 1).
    #[arg(long, value_parser = parse_duration_text)]
    max_lag: Option<Duration>,
    /// Print one JSON object (see the README, "Operating it") instead of text.
    #[arg(long)]
    json: bool,
    /// List the instances competing under the election path (--ha) instead, in line order,
    /// each with its role; exit 1 when none leads. Reads ZooKeeper only (at --zk).
    #[arg(long, requires = "ha")]
    instances: bool,
    /// The election path the instances were started with (`zkmirror run --ha`).
    #[arg(long, env = "ZKMIRROR_HA", value_name = "PATH")]
    ha: Option<String>,
}

/// How far behind, as reported.
struct Lag {
    clock: SubtreeClock,
    behind: Behind,
    /// `None`: only deletes pending, whose time ZooKeeper does not record.
    ms: Option<i64>,
}

/// One status hash, read and judged.
struct Section {
    /// `P:mirror` or `P:mirror:{ROOT}`.
    key: String,
    /// The root this section is about (`None` for the aggregate of shared roots).
    root: Option<String>,
    state: MirrorState,
    heartbeat_age: Option<i64>,
    lag: Option<Lag>,
    /// Why it is not fine; empty when it is.
    problems: Vec<String>,
    /// `leader`, `leader_since` and `fence`, written by a leader elected with `--ha`.
    leadership: Leadership,
}

/// The leadership fields of a status hash (all absent for a mirror run without `--ha`).
#[derive(Default)]
struct Leadership {
    leader: Option<String>,
    since_ms: Option<i64>,
    fence: Option<String>,
}

async fn read_leadership(conn: &mut RedisConn, key: &str, server: &str) -> anyhow::Result<Leadership> {
    let (leader, since, fence): (Option<String>, Option<String>, Option<String>) = redis::cmd("HMGET")
        .arg(key)
        .arg("leader")
        .arg("leader_since")
        .arg("fence")
        .query_async(conn)
        .await
        .map_err(|e| anyhow::anyhow!("Redis at {server}: reading {key}: {e}"))?;
    Ok(Leadership { leader, since_ms: since.and_then(|s| s.trim().parse().ok()), fence })
}

impl StatusArgs {
    /// The ZooKeeper servers to measure the lag against, if the lag is asked for: `--zk` (or
    /// `ZKMIRROR_ZK`) asks by itself, `--lag` alone uses the default servers.
    fn lag_servers(&self) -> Option<&str> {
        match (&self.zk.zk, self.lag) {
            (Some(servers), _) => Some(servers),
            (None, true) => Some(crate::config::DEFAULT_ZK_SERVERS),
            (None, false) => None,
        }
    }
}

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    if args.instances {
        return instances(&args).await;
    }
    if args.max_lag.is_some() && args.lag_servers().is_none() {
        anyhow::bail!("--max-lag needs --lag (or --zk): the lag is measured against ZooKeeper");
    }
    let zk = match args.lag_servers() {
        Some(servers) => {
            let mut zk = args.zk.resolve()?;
            zk.servers = servers.to_owned();
            Some(connect_zk(&zk).await?)
        }
        None => None,
    };
    let Some(file) = &args.config else {
        let (mut conn, server) = connect_redis(&args.redis).await?;
        let keys = Keys::new(&args.redis.prefix);
        let report = report(&args, &mut conn, &server, &keys, zk.as_ref()).await?;
        write_stdout(report.text.as_bytes())?;
        return Ok(if report.ok { ExitCode::SUCCESS } else { no() });
    };
    // Every target and prefix of the settings file, each judged on its own: one target down
    // does not hide how the others are.
    let settings = crate::settings::Settings::load(Some(file), &crate::settings::Overrides::default())?;
    // The targets registered in ZooKeeper count as the file's own: the mirror writes them too.
    let mut mirrors = settings.mirrors.clone();
    let (mut ok, mut texts, mut values) = (true, String::new(), Vec::new());
    let mut registry_json = serde_json::Value::Null;
    if let Some(path) = settings.targets_from.as_deref() {
        let registered = async {
            let zk = settings.zk_connect().ok_or_else(|| anyhow::anyhow!("the settings name no ZooKeeper"))?;
            super::registered_mirrors(&settings, &connect_zk(&zk).await?, &zk.servers, path).await
        };
        match registered.await {
            Ok((registered, left_out)) => {
                mirrors.extend(registered);
                for (name, why) in &left_out {
                    texts.push_str(&format!(
                        "registration {name} (under {path}): left out, as the mirror leaves it out: {why}\n"
                    ));
                }
                let left_out: Vec<_> = left_out.iter().map(|(name, why)| json!({ "name": name, "why": why })).collect();
                registry_json = json!({ "path": path, "left_out": left_out });
            }
            Err(e) => {
                ok = false;
                texts.push_str(&format!("registered targets (under {path}): NOT OK: cannot read them: {e:#}\n"));
                registry_json = json!({ "path": path, "problem": format!("cannot read them: {e:#}") });
            }
        }
    }
    if mirrors.is_empty() && ok && texts.is_empty() {
        anyhow::bail!(
            "{} names no Redis target, and none is registered under {}",
            file.display(),
            settings.targets_from.as_deref().unwrap_or("")
        );
    }
    // Registrations there, every one left out: no target is mirrored, which is not fine.
    ok &= !mirrors.is_empty();
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for m in &mirrors {
        if seen.contains(&(m.target.as_str(), m.prefix.as_str())) {
            continue;
        }
        seen.push((&m.target, &m.prefix));
        let keys = Keys::new(&m.prefix);
        let server = crate::config::mask_url(&m.redis_url);
        let report = match super::connect_redis_with(&m.redis_url, &m.redis_tls, m.redis_password.as_ref()).await {
            Ok((mut conn, server)) => report(&args, &mut conn, &server, &keys, zk.as_ref()).await,
            Err(e) => Err(e),
        };
        let report = report.unwrap_or_else(|e| Report::failed(&args, &keys, format!("{e:#}")));
        ok &= report.ok;
        if args.json {
            let mut value = report.value;
            value["target"] = json!(m.target);
            value["server"] = json!(server);
            values.push(value);
        } else {
            texts.push_str(&format!("target {} (Redis {server}):\n{}", m.target, report.text));
        }
    }
    let text = if args.json {
        let mut value = json!({ "ok": ok, "targets": values });
        if !registry_json.is_null() {
            value["registry"] = registry_json;
        }
        format!("{value}\n")
    } else {
        texts
    };
    write_stdout(text.as_bytes())?;
    Ok(if ok { ExitCode::SUCCESS } else { no() })
}

/// One status, judged: whether it is fine, and the text or JSON shown for it.
struct Report {
    ok: bool,
    text: String,
    value: serde_json::Value,
}

impl Report {
    /// A status that could not be read at all (the problem says why).
    fn failed(args: &StatusArgs, keys: &Keys, message: String) -> Report {
        let value = json!({ "ok": false, "problems": [message], "prefix": keys.prefix(), "key": keys.status() });
        let text = if args.json { format!("{value}\n") } else { format!("NOT OK: {message}\n") };
        Report { ok: false, text, value }
    }
}

/// Reads and judges the status of `keys`' prefix in one Redis.
async fn report(
    args: &StatusArgs,
    conn: &mut RedisConn,
    server: &str,
    keys: &Keys,
    zk: Option<&zookeeper_client::Client>,
) -> anyhow::Result<Report> {
    let Some(state) = read_state(conn, keys, None, server).await? else {
        let message = format!(
            "no mirror status in Redis at {server}: {} is absent (no mirror has run with prefix {})",
            keys.status(),
            keys.prefix()
        );
        return Ok(Report::failed(args, keys, message));
    };
    let ctx = Inquiry { args, keys, server, zk };
    let shared = state.is_shared();
    let (top, each) = if shared {
        let top = ctx.judge(keys.status(), None, state, None);
        let mut each = Vec::new();
        for root in top.state.roots.clone() {
            each.push(ctx.observe(conn, Some(&root)).await?);
        }
        (top, each)
    } else {
        let root = state.root.clone();
        (ctx.observe_with(conn, None, state, root.as_deref()).await?, Vec::new())
    };
    let (mut top, mut each) = (top, each);
    for section in std::iter::once(&mut top).chain(each.iter_mut()) {
        section.leadership = read_leadership(conn, &section.key, server).await?;
    }
    let ok = top.problems.is_empty() && each.iter().all(|s| s.problems.is_empty());
    let mut value = json_section(&top, &ctx, ok, &each);
    if shared {
        value["per_root"] = each.iter().map(|s| json_section(s, &ctx, s.problems.is_empty(), &[])).collect();
    }
    let text = if args.json {
        format!("{value}\n")
    } else {
        let mut out = text_section(&top, &ctx, &each, shared);
        for section in &each {
            out.push_str(&text_section(section, &ctx, &[], false));
        }
        out
    };
    Ok(Report { ok, text, value })
}

/// What every section is judged and shown with.
struct Inquiry<'a> {
    args: &'a StatusArgs,
    keys: &'a Keys,
    server: &'a str,
    zk: Option<&'a zookeeper_client::Client>,
}

impl Inquiry<'_> {
    /// Reads and judges one root's own status hash (`root`), or `P:mirror` (`None`).
    async fn observe(&self, conn: &mut RedisConn, root: Option<&str>) -> anyhow::Result<Section> {
        let key = root.map_or_else(|| self.keys.status(), |r| self.keys.root_status(r));
        match read_state(conn, self.keys, root, self.server).await? {
            Some(state) => self.observe_with(conn, root, state, root).await,
            None => Ok(Section {
                problems: vec![format!("{key} is absent (this root's mirror has not written its status)")],
                key,
                root: root.map(str::to_owned),
                state: MirrorState::default(),
                heartbeat_age: None,
                lag: None,
                leadership: Leadership::default(),
            }),
        }
    }

    /// Judges `state` (read from the hash of `status_root`), measuring the lag of the subtree
    /// at `lag_root` when ZooKeeper was given.
    async fn observe_with(
        &self,
        conn: &mut RedisConn,
        status_root: Option<&str>,
        mut state: MirrorState,
        lag_root: Option<&str>,
    ) -> anyhow::Result<Section> {
        let key = status_root.map_or_else(|| self.keys.status(), |r| self.keys.root_status(r));
        let mut lag = None;
        if let (Some(zk), Some(root)) = (self.zk, lag_root) {
            let clock = read_clock(zk, root).await?;
            // Read the mirror's zxid after the walk: what it applied meanwhile is not lag.
            state = read_state(conn, self.keys, status_root, self.server).await?.unwrap_or(state);
            let behind = clock.behind(state.zxid.unwrap_or(0));
            let ms = match (behind.zxids, behind.oldest_pending_mtime_ms) {
                (_, Some(mtime)) => Some((now_ms() - mtime).max(0)),
                (0, None) => Some(0),
                (_, None) => None,
            };
            lag = Some(Lag { clock, behind, ms });
        }
        Ok(self.judge(key, status_root.map(str::to_owned), state, lag))
    }

    /// Why the mirror is not fine; empty when it is.
    fn judge(&self, key: String, root: Option<String>, state: MirrorState, lag: Option<Lag>) -> Section {
        let args = self.args;
        let heartbeat_age = state.heartbeat_ms.map(|h| (now_ms() - h).max(0));
        let mut problems = Vec::new();
        match state.state.as_deref() {
            Some("live") => {}
            Some(other) => problems.push(format!("state is {other}, not live")),
            None => problems.push("no state field".to_owned()),
        }
        let limit = args.max_heartbeat_age.as_millis() as i64;
        match heartbeat_age {
            Some(age) if age > limit => {
                problems.push(format!("stale: heartbeat {} ago (limit {})", human_ms(age), human_ms(limit)))
            }
            Some(_) => {}
            None => problems.push("stale: no heartbeat field".to_owned()),
        }
        if let (Some(max), Some(Lag { ms: Some(ms), .. })) = (args.max_lag, &lag) {
            let max = max.as_millis() as i64;
            if *ms > max {
                problems.push(format!(
                    "stale: a change made {} ago is not mirrored yet (limit {})",
                    human_ms(*ms),
                    human_ms(max)
                ));
            }
        }
        Section { key, root, state, heartbeat_age, lag, problems, leadership: Leadership::default() }
    }
}

/// Reads `P:mirror` (`root` is `None`) or `P:mirror:{ROOT}`.
async fn read_state(
    conn: &mut RedisConn,
    keys: &Keys,
    root: Option<&str>,
    server: &str,
) -> anyhow::Result<Option<MirrorState>> {
    let state = match root {
        None => mirror_state(conn, keys).await,
        Some(root) => root_state(conn, keys, root).await,
    };
    state.map_err(|e| anyhow::anyhow!("Redis at {server}: {e}"))
}

/// One section as text. The first section's verdict line speaks for the whole answer: with
/// shared roots (`each`), their problems are listed there too, each naming its root.
fn text_section(section: &Section, ctx: &Inquiry<'_>, each: &[Section], shared: bool) -> String {
    let unknown = || "unknown".to_owned();
    let state = &section.state;
    let phase = state.state.clone().unwrap_or_else(unknown);
    let mut problems = section.problems.clone();
    for s in each {
        problems.extend(s.problems.iter().map(|p| format!("{}: {p}", s.root.as_deref().unwrap_or("?"))));
    }
    let verdict = if problems.is_empty() { format!("OK: {phase}") } else { format!("NOT OK: {}", problems.join("; ")) };
    let zxid = state.zxid.map_or_else(unknown, |z| format!("{z} (0x{z:x})"));
    let heartbeat = section.heartbeat_age.map_or_else(unknown, |age| {
        format!("{} ago (stale after {})", human_ms(age), human_ms(ctx.args.max_heartbeat_age.as_millis() as i64))
    });
    let behind = match &section.lag {
        None if ctx.args.lag_servers().is_none() => "unknown (pass --lag to ask ZooKeeper)".to_owned(),
        None => "unknown (the status names no root)".to_owned(),
        Some(lag) => {
            let ms = lag.ms.map_or_else(|| "time unknown (only deletes pending)".to_owned(), human_ms);
            format!(
                "{} zxids, {ms} ({} znodes not yet mirrored; ZooKeeper's latest zxid under the root is {}, over {} znodes)",
                lag.behind.zxids, lag.behind.pending, lag.clock.head, lag.clock.znodes
            )
        }
    };
    let started = state.started_at_ms.map_or_else(unknown, |s| format!("{} ago", human_ms(now_ms() - s)));
    let mut rows = vec![("state", phase), ("zxid", zxid), ("heartbeat", heartbeat)];
    if !shared {
        rows.push(("behind", behind));
    }
    if section.root.is_none() {
        let roots = if shared { state.roots.join(", ") } else { state.root.clone().unwrap_or_else(unknown) };
        rows.push(("roots", roots));
    }
    let lead = &section.leadership;
    if let Some(leader) = &lead.leader {
        rows.push(("leader", leader.clone()));
        let since = lead.since_ms.map_or_else(unknown, |s| format!("{} ago", human_ms(now_ms() - s)));
        rows.push(("leading", since));
        rows.push(("fence", lead.fence.clone().unwrap_or_else(unknown)));
    }
    rows.push(("started", started));
    rows.push(("version", state.version.clone().unwrap_or_else(unknown)));
    rows.push(("status key", format!("{} in Redis at {}", section.key, ctx.server)));
    let mut out = match &section.root {
        Some(root) => format!("root {root}: {verdict}\n"),
        None if shared => {
            format!("{verdict} (aggregate of {} roots sharing prefix {})\n", state.roots.len(), ctx.keys.prefix())
        }
        None => format!("{verdict}\n"),
    };
    for (name, value) in rows {
        out.push_str(&format!("  {name:<12}{value}\n"));
    }
    out
}

/// One section as JSON; `ok` and the problems of `each` (shared roots) make the aggregate's
/// answer the whole answer.
fn json_section(section: &Section, ctx: &Inquiry<'_>, ok: bool, each: &[Section]) -> serde_json::Value {
    let state = &section.state;
    let behind = section.lag.as_ref().map(|lag| {
        json!({
            "zookeeper_zxid": lag.clock.head,
            "zxids": lag.behind.zxids,
            "ms": lag.ms,
            "pending_znodes": lag.behind.pending,
            "znodes": lag.clock.znodes,
            "unreadable": lag.clock.unreadable,
        })
    });
    let mut problems = section.problems.clone();
    for s in each {
        problems.extend(s.problems.iter().map(|p| format!("{}: {p}", s.root.as_deref().unwrap_or("?"))));
    }
    let roots: Vec<String> = match (&section.root, state.is_shared()) {
        (Some(root), _) => vec![root.clone()],
        (None, true) => state.roots.clone(),
        (None, false) => state.root.iter().cloned().collect(),
    };
    json!({
        "ok": ok,
        "problems": problems,
        "prefix": ctx.keys.prefix(),
        "key": section.key,
        "state": state.state,
        "zxid": state.zxid,
        "heartbeat_ms": state.heartbeat_ms,
        "heartbeat_age_ms": section.heartbeat_age,
        "started_at_ms": state.started_at_ms,
        "version": state.version,
        "roots": roots,
        "behind": behind,
        "leader": section.leadership.leader,
        "leader_since_ms": section.leadership.since_ms,
        "fence": section.leadership.fence,
    })
}

/// One competitor under the election path, as `--instances` lists it.
struct Competitor {
    lock: String,
    sequence: i64,
    instance: String,
    session: i64,
    czxid: i64,
}

/// `zkmirror status --instances`: the lock znodes under the election path in line order; the
/// first leads (the lowest sequence holds the lock), the others stand by.
async fn instances(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let path = args.ha.as_deref().unwrap_or_default();
    crate::settings::validate_ha_path(path, std::iter::empty()).map_err(|(_, why)| anyhow::anyhow!(why))?;
    let connect = args.zk.resolve()?;
    let servers = connect.servers.as_str();
    let zk = connect_zk(&connect).await?;
    let children = match zk.list_children(path).await {
        Ok(children) => children,
        Err(zookeeper_client::Error::NoNode) => Vec::new(),
        Err(e) => anyhow::bail!("ZooKeeper at {servers}: listing the election path {path}: {e}"),
    };
    let mut line = Vec::new();
    for (sequence, name) in crate::election::in_line(&children) {
        let lock = crate::path::child(path, &name);
        match zk.get_data(&lock).await {
            Ok((data, stat)) => line.push(Competitor {
                lock,
                sequence,
                instance: String::from_utf8_lossy(&data).into_owned(),
                session: stat.ephemeral_owner,
                czxid: stat.czxid,
            }),
            // It left between the listing and the read.
            Err(zookeeper_client::Error::NoNode) => {}
            Err(e) => anyhow::bail!("ZooKeeper at {servers}: reading {lock}: {e}"),
        }
    }
    let role = |i: usize| if i == 0 { "leader" } else { "standby" };
    let text = if args.json {
        let list: Vec<serde_json::Value> = line
            .iter()
            .enumerate()
            .map(|(i, c)| {
                json!({
                    "lock": c.lock,
                    "sequence": c.sequence,
                    "instance": c.instance,
                    "role": role(i),
                    "session": format!("{:#x}", c.session),
                    "fence": c.czxid,
                })
            })
            .collect();
        format!("{}\n", json!({ "ok": !line.is_empty(), "election": path, "instances": list }))
    } else if line.is_empty() {
        format!("NOT OK: no instance competes under {path} (ZooKeeper at {servers})\n")
    } else {
        let mut out = format!("OK: {} instance(s) under {path}, {} leads\n", line.len(), line[0].instance);
        for (i, c) in line.iter().enumerate() {
            out.push_str(&format!(
                "  {:<8} {}  {}  (session {:#x}, fence {})\n",
                role(i),
                c.instance,
                crate::path::name(&c.lock),
                c.session,
                c.czxid
            ));
        }
        out
    };
    write_stdout(text.as_bytes())?;
    Ok(if line.is_empty() { no() } else { ExitCode::SUCCESS })
}

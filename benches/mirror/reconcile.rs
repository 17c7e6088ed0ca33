//! Section 4, reconcile: on a quiet tree, the mirror's ZooKeeper connection goes through a
//! [`TcpProxy`]; cutting and restoring it forces a reconcile (reconnect within the session →
//! `reconciling` → `live`). Measured: its time against the raw read through the same proxy, and
//! the Redis writes it made, which should be none since nothing changed.
//!
//! Writes are counted three ways: entries added to `P:changes` (`XINFO STREAM` `entries-added`;
//! every applied znode write adds one), znodes whose `mirrored_at` changed, and, for context,
//! Redis's own count of key modifications (`rdb_changes_since_last_save`, which also counts the
//! status hash's heartbeats). `EVALSHA` calls tell how many znodes the scripts compared.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::support::{self, info_field, median, CpuSample, Guarded, Servers, Verdict, PREFIX};
use zkmirror_testkit::TcpProxy;

#[derive(Clone, Debug, Serialize)]
pub struct Reconcile {
    pub znodes: usize,
    /// Raw pipelined reads through the same proxy (one request per read, and 64 per
    /// multi-read), every run and the medians; the reference is the faster.
    pub raw_read_s: Vec<f64>,
    pub raw_batched_s: Vec<f64>,
    pub raw_read_median_s: f64,
    pub raw_batched_median_s: f64,
    pub reference_s: f64,
    pub cut_to_degraded_s: Option<f64>,
    pub cut_held_s: f64,
    pub restore_to_reconciling_s: Option<f64>,
    /// `reconciling` first seen → `live` again: the reconcile walk itself.
    pub reconciling_to_live_s: Option<f64>,
    pub restore_to_live_s: Option<f64>,
    pub walk_ratio: Option<f64>,
    pub total_ratio: Option<f64>,
    pub stream_entries_added: i64,
    pub mirrored_at_changed: usize,
    pub redis_key_changes: i64,
    pub evalsha_calls: i64,
    /// The mirror's own log line about the reconcile, if it wrote one.
    pub mirror_log_line: Option<String>,
    pub states_seen: Vec<String>,
    /// Restore → live, percent of one core.
    pub cpu_percent_mirror: f64,
    pub cpu_percent_zookeeper: f64,
    pub cpu_percent_outside: f64,
    pub verified_exact: bool,
}

pub async fn run(nodes: usize, runs: usize) -> Reconcile {
    let servers = Servers::start().await;
    let proxy = TcpProxy::start(servers.zk.addr());
    let redis_url = servers.redis.url();
    let client = support::zk_client(&servers.zk.connect_string()).await;
    eprintln!("[reconcile] populating {nodes} znodes ...");
    support::populate(&client, nodes).await;
    let via_proxy = support::zk_client(&proxy.connect_string()).await;
    let mut conn = support::redis_conn(&redis_url).await;
    let mut mirror = support::spawn_mirror(&proxy.connect_string(), &redis_url, "reconcile");
    support::wait_state(&mut conn, &mut mirror, "live", Duration::from_secs(600))
        .await
        .expect("the mirror did not reach `live`; see target/bench-logs/reconcile.log");
    let (mut raw_read_s, mut raw_batched_s) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        raw_read_s.push(support::timed_raw_walk(&via_proxy, nodes, false).await.as_secs_f64());
        raw_batched_s.push(support::timed_raw_walk(&via_proxy, nodes, true).await.as_secs_f64());
    }
    // Quiet: let the first status writes settle.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let paths = support::tree_paths(nodes);
    let before_mirrored_at = mirrored_at(&mut conn, &paths).await;
    let before = Counters::read(&mut conn).await;
    let log_lines_before = reconcile_lines(&support::mirror_log("reconcile")).len();

    eprintln!("[reconcile] cutting the mirror's ZooKeeper connection ...");
    let cut_at = Instant::now();
    proxy.cut();
    let mut states = StateTrace::default();
    let degraded = states.until(&mut conn, &mut mirror, Duration::from_secs(10), |s| s == "degraded").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pids = [mirror.pid(), servers.zk.pid().unwrap_or(0), servers.redis.pid().unwrap_or(0), std::process::id()];
    let cpu = CpuSample::take(&pids);
    let restored_at = Instant::now();
    proxy.restore();
    let reconciling = states.until(&mut conn, &mut mirror, Duration::from_secs(30), |s| s == "reconciling").await;
    let live = states.until(&mut conn, &mut mirror, Duration::from_secs(600), |s| s == "live").await;
    let cpu = cpu.since(&pids);
    // Anything the reconcile still had in flight has landed once it reports live.
    let after = Counters::read(&mut conn).await;
    let after_mirrored_at = mirrored_at(&mut conn, &paths).await;
    let changed = before_mirrored_at.iter().zip(&after_mirrored_at).filter(|(a, b)| a != b).count();
    let log_line = reconcile_lines(&support::mirror_log("reconcile")).get(log_lines_before).cloned();
    let (report, _) = support::verify(&client, &mut conn).await;
    mirror.assert_running();
    mirror.stop();

    let (raw_read_median_s, raw_batched_median_s) = (median(&raw_read_s), median(&raw_batched_s));
    let raw = raw_read_median_s.min(raw_batched_median_s);
    let walk = match (reconciling, live) {
        (Some(r), Some(l)) => Some(l.duration_since(r).as_secs_f64()),
        _ => None,
    };
    let total = live.map(|l| l.duration_since(restored_at).as_secs_f64());
    Reconcile {
        znodes: nodes,
        raw_read_s,
        raw_batched_s,
        raw_read_median_s,
        raw_batched_median_s,
        reference_s: raw,
        cut_to_degraded_s: degraded.map(|d| d.duration_since(cut_at).as_secs_f64()),
        cut_held_s: restored_at.duration_since(cut_at).as_secs_f64(),
        restore_to_reconciling_s: reconciling.map(|r| r.duration_since(restored_at).as_secs_f64()),
        reconciling_to_live_s: walk,
        restore_to_live_s: total,
        walk_ratio: walk.map(|w| w / raw),
        total_ratio: total.map(|t| t / raw),
        stream_entries_added: after.entries_added - before.entries_added,
        mirrored_at_changed: changed,
        redis_key_changes: after.dirty - before.dirty,
        evalsha_calls: after.evalsha - before.evalsha,
        mirror_log_line: log_line,
        states_seen: states.seen,
        cpu_percent_mirror: cpu.processes[0],
        cpu_percent_zookeeper: cpu.processes[1],
        cpu_percent_outside: cpu.outside,
        verified_exact: report.is_exact(),
    }
}

pub fn verdicts(r: &Reconcile) -> Vec<Verdict> {
    vec![
        Verdict::new(
            "reconcile completed (reconciling → live)",
            "yes",
            if r.reconciling_to_live_s.is_some() { "yes" } else { "no" },
            r.reconciling_to_live_s.is_some(),
        ),
        Verdict::new(
            format!("znode writes by a reconcile of an unchanged {}-znode tree", crate::cold_sync::group(r.znodes)),
            "0",
            format!("{} stream entries, {} mirrored_at changed", r.stream_entries_added, r.mirrored_at_changed),
            r.stream_entries_added == 0 && r.mirrored_at_changed == 0,
        ),
    ]
}

pub fn print(r: &Reconcile, verdicts: &[Verdict]) {
    let s = |v: Option<f64>| v.map_or("never".to_owned(), |v| format!("{v:.3} s"));
    let x = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}×"));
    println!();
    println!(
        "4. Reconcile ({} znodes, quiet; the mirror's ZooKeeper connection cut and restored through a TCP proxy)",
        r.znodes
    );
    println!(
        "   raw read through the same proxy (median of {}): {:.3} s one request per read, {:.3} s batched; reference {:.3} s",
        r.raw_read_s.len(),
        r.raw_read_median_s,
        r.raw_batched_median_s,
        r.reference_s
    );
    println!(
        "   cut → degraded {}; cut held {:.3} s; restore → reconciling {}; reconciling → live {} ({} the reference); restore → live {} ({})",
        s(r.cut_to_degraded_s),
        r.cut_held_s,
        s(r.restore_to_reconciling_s),
        s(r.reconciling_to_live_s),
        x(r.walk_ratio),
        s(r.restore_to_live_s),
        x(r.total_ratio)
    );
    println!(
        "   Redis writes: {} P:changes entries added, {} znodes with a new mirrored_at; {} key modifications in all (incl. status hash), {} EVALSHA calls",
        r.stream_entries_added, r.mirrored_at_changed, r.redis_key_changes, r.evalsha_calls
    );
    println!(
        "   states seen: {}; copy exact afterwards: {}; CPU restore → live, % of one core: mirror {:.0}, ZooKeeper {:.0}, outside the benchmark {:.0}",
        r.states_seen.join(" → "),
        if r.verified_exact { "yes" } else { "NO" },
        r.cpu_percent_mirror,
        r.cpu_percent_zookeeper,
        r.cpu_percent_outside
    );
    if let Some(line) = &r.mirror_log_line {
        println!("   mirror's log: {line}");
    }
    for v in verdicts {
        println!("   {}: {} (target {}) {}", v.what, v.measured, v.target, v.mark());
    }
}

/// Redis-side counters read before and after the reconcile.
struct Counters {
    entries_added: i64,
    dirty: i64,
    evalsha: i64,
}

impl Counters {
    async fn read(conn: &mut redis::aio::MultiplexedConnection) -> Counters {
        let stream: redis::Value = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(format!("{PREFIX}:changes"))
            .query_async(conn)
            .await
            .expect("XINFO STREAM");
        let entries_added =
            stream_field(&stream, "entries-added").expect("XINFO STREAM has entries-added (Redis ≥ 7.0)");
        let persistence: String = redis::cmd("INFO").arg("persistence").query_async(conn).await.expect("INFO");
        let dirty = info_field(&persistence, "rdb_changes_since_last_save").and_then(|v| v.parse().ok()).unwrap_or(0);
        let stats: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await.expect("INFO");
        let evalsha = info_field(&stats, "cmdstat_evalsha")
            .and_then(|v| v.split(',').find_map(|f| f.strip_prefix("calls=")).and_then(|c| c.parse().ok()))
            .unwrap_or(0);
        Counters { entries_added, dirty, evalsha }
    }
}

fn stream_field(value: &redis::Value, name: &str) -> Option<i64> {
    match value {
        redis::Value::Array(items) => items.chunks(2).find_map(|pair| match pair {
            [redis::Value::BulkString(k), redis::Value::Int(v)] if k == name.as_bytes() => Some(*v),
            [redis::Value::SimpleString(k), redis::Value::Int(v)] if k == name => Some(*v),
            _ => None,
        }),
        redis::Value::Map(pairs) => pairs.iter().find_map(|(k, v)| match (k, v) {
            (redis::Value::BulkString(k), redis::Value::Int(v)) if k == name.as_bytes() => Some(*v),
            (redis::Value::SimpleString(k), redis::Value::Int(v)) if k == name => Some(*v),
            _ => None,
        }),
        _ => None,
    }
}

/// `mirrored_at` of every znode, in `paths` order.
async fn mirrored_at(conn: &mut redis::aio::MultiplexedConnection, paths: &[String]) -> Vec<Option<String>> {
    let keys = zkmirror::testing::Keys::new(PREFIX);
    let mut all = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(1000) {
        let mut pipe = redis::pipe();
        for p in chunk {
            pipe.hget(keys.meta(p), "mirrored_at");
        }
        let values: Vec<Option<String>> = pipe.query_async(conn).await.expect("HGET mirrored_at");
        all.extend(values);
    }
    all
}

/// The mirror's log lines that report a finished reconcile.
fn reconcile_lines(log: &str) -> Vec<String> {
    log.lines().filter(|l| l.contains("reconcile after") && l.contains("done")).map(str::to_owned).collect()
}

/// `P:mirror` `state` polled every 0.5 ms, each change kept.
#[derive(Default)]
struct StateTrace {
    seen: Vec<String>,
}

impl StateTrace {
    /// Polls until `want(state)`; returns when that state was first seen.
    async fn until(
        &mut self,
        conn: &mut redis::aio::MultiplexedConnection,
        mirror: &mut Guarded,
        timeout: Duration,
        want: impl Fn(&str) -> bool,
    ) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let state = support::mirror_state(conn).await.unwrap_or_else(|| "(absent)".into());
            let now = Instant::now();
            if self.seen.last() != Some(&state) {
                self.seen.push(state.clone());
            }
            if want(&state) {
                return Some(now);
            }
            mirror.assert_running();
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        None
    }
}

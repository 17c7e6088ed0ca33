//! Section 6, failover: two `zkmirror run --ha` instances on one small tree; the leader is
//! killed (kill -9 and SIGTERM, alternately), a change is made in ZooKeeper the moment after,
//! and the time from the kill until Redis shows that change is measured. The killed instance is
//! started again as the new standby, so every round has one leader and one standby.
//!
//! Per takeover it also notes, to tell what bounds the figure: when the killed process was
//! gone, when the new leader's log says it leads (it saw the lock znode go and read its own
//! lock's `Stat`: the election's share), how long its cold sync onto the existing copy took
//! (its log), and when `P:mirror` first names it. A change visible before the new leader's log
//! says it leads was written by the old leader while it stopped (SIGTERM drains): counted apart.
//!
//! And the standby while it stands by: its CPU (% of one core) over 5 s, and its RSS.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::support::{self, median, CpuSample, Guarded, Servers, Verdict, PREFIX};

/// The election path (outside the root, as `--ha` requires).
const ELECTION: &str = "/bench-election";
/// A small tree: the cold sync a new leader makes onto the copy is short.
const NODES: usize = 1_000;
/// The znode changed after each kill (exists in the tree of [`support::tree_paths`]).
const KNOWN: &str = "/bench/n0";
/// How long a standby is sampled for its CPU use.
const STANDBY_SAMPLE: Duration = Duration::from_secs(5);
/// Pause between the Redis polls: 1 ms (tokio's timer resolution), not a busy loop, so that the
/// poller does not take one of the two cores the instances, ZooKeeper and Redis share; against
/// targets of seconds the millisecond is no error.
const POLL: Duration = Duration::from_millis(1);
/// A takeover not visible by then counts as never.
const GIVE_UP: Duration = Duration::from_secs(30);
/// The slack on top of the session timeout after kill -9, and the SIGTERM bound.
const TARGET_SLACK_MS: f64 = 2000.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Kill9,
    Sigterm,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Kill9 => "kill -9",
            Kind::Sigterm => "SIGTERM",
        }
    }

    fn signal(self) -> libc::c_int {
        match self {
            Kind::Kill9 => libc::SIGKILL,
            Kind::Sigterm => libc::SIGTERM,
        }
    }
}

/// One takeover. Times are from the kill (the instant before `kill(2)`), in ms.
#[derive(Clone, Debug, Serialize)]
pub struct Takeover {
    pub round: usize,
    pub kind: Kind,
    pub old_leader: String,
    pub new_leader: String,
    /// ZooKeeper acknowledged the `setData` made right after the kill.
    pub ack_ms: f64,
    /// Redis first returned the new value (`GET`): the figure.
    pub visible_ms: Option<f64>,
    /// The killed process had exited (seen by the poll loop).
    pub old_exited_ms: Option<f64>,
    /// The new leader's log: `election: leading` (it saw its predecessor's lock go).
    pub elected_ms: Option<f64>,
    /// `P:mirror` `leader` first named the new leader.
    pub status_names_new_leader_ms: Option<f64>,
    /// The new leader's own log: its cold sync onto the existing copy (walk time).
    pub cold_sync_ms: Option<f64>,
    /// The change was in Redis before the new leader led: the old leader wrote it on its way out.
    pub written_by_old_leader: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct KindSummary {
    pub kind: Kind,
    pub takeovers: usize,
    /// Takeovers whose change was never seen within 30 s.
    pub never_visible: usize,
    pub visible_median_ms: f64,
    pub visible_worst_ms: f64,
    pub elected_median_ms: f64,
    pub elected_worst_ms: f64,
    pub cold_sync_median_ms: f64,
    pub cold_sync_worst_ms: f64,
    pub written_by_old_leader: usize,
    pub target_ms: f64,
    pub met: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Failover {
    pub znodes: usize,
    /// `--session-timeout` of both instances (the harness ZooKeeper has tickTime=200, so it
    /// grants 400 ms to 4 s as asked).
    pub session_timeout_ms: u64,
    pub poll_interval_ms: f64,
    pub takeovers: Vec<Takeover>,
    pub kill9: KindSummary,
    pub sigterm: KindSummary,
    /// The standby over [`STANDBY_SAMPLE`]: % of one core, its RSS at the end and its peak.
    pub standby_sample_s: f64,
    pub standby_cpu_percent: f64,
    pub standby_rss_mb: f64,
    pub standby_peak_rss_mb: f64,
    /// The whole machine less the standby over the sample (the leader, the servers, this
    /// process, and anything outside the benchmark), % of one core.
    pub rest_of_machine_percent: f64,
    /// After the last takeover, Redis is the exact copy of the tree.
    pub verified_exact: bool,
}

/// A running instance: its name, process and log.
struct Instance {
    name: String,
    log: String,
    process: Guarded,
}

fn spawn(servers: &Servers, name: &str, incarnation: usize, session: &str) -> Instance {
    let log = format!("failover-{name}-{incarnation}");
    let extra = ["--ha", ELECTION, "--instance", name, "--session-timeout", session];
    let process = support::spawn_mirror_with(&servers.zk.connect_string(), &servers.redis.url(), &log, &extra);
    Instance { name: name.to_owned(), log, process }
}

pub async fn run(rounds_per_kind: usize, session_timeout_ms: u64) -> Failover {
    let session = format!("{session_timeout_ms}ms");
    let servers = Servers::start().await;
    let client = support::zk_client(&servers.zk.connect_string()).await;
    eprintln!("[failover] populating {NODES} znodes ...");
    support::populate(&client, NODES).await;
    let mut conn = support::redis_conn(&servers.redis.url()).await;
    let status_key = zkmirror::testing::Keys::new(PREFIX).status();
    let data_key = zkmirror::testing::Keys::new(PREFIX).data(KNOWN);

    let mut incarnation = 0;
    let mut leader = spawn(&servers, "a", incarnation, &session);
    wait_leading_live(&mut conn, &status_key, &leader.name).await;
    incarnation += 1;
    let mut standby = spawn(&servers, "b", incarnation, &session);
    wait_competing(&client, &standby).await;

    // The standby standing by: nothing but its election session.
    eprintln!("[failover] sampling the standby for {} s ...", STANDBY_SAMPLE.as_secs());
    let pid = standby.process.pid();
    let sample = CpuSample::take(&[pid]);
    let sample_started = Instant::now();
    tokio::time::sleep(STANDBY_SAMPLE).await;
    let cpu = sample.since(&[pid]);
    let standby_sample_s = sample_started.elapsed().as_secs_f64();
    let (standby_rss_mb, standby_peak_rss_mb) = rss_mb(pid);

    let kinds: Vec<Kind> =
        (0..2 * rounds_per_kind).map(|i| if i % 2 == 0 { Kind::Kill9 } else { Kind::Sigterm }).collect();
    let mut takeovers = Vec::with_capacity(kinds.len());
    for (round, &kind) in kinds.iter().enumerate() {
        let value = format!("failover-{round}");
        let kill_real_ns = support::realtime_ns();
        let killed_at = Instant::now();
        // SAFETY: kill(2) on our own child, not yet reaped (Guarded reaps it only in stop/drop).
        let rc = unsafe { libc::kill(leader.process.pid() as libc::pid_t, kind.signal()) };
        assert_eq!(rc, 0, "kill({}): {}", leader.process.pid(), std::io::Error::last_os_error());
        client.set_data(KNOWN, value.as_bytes(), None).await.unwrap_or_else(|e| panic!("setData {KNOWN}: {e}"));
        let ack_ms = ms(killed_at.elapsed());

        let (mut visible, mut exited, mut named) = (None, None, None);
        while killed_at.elapsed() < GIVE_UP && (visible.is_none() || exited.is_none() || named.is_none()) {
            let (data, named_leader): (Option<String>, Option<String>) = redis::pipe()
                .get(&data_key)
                .hget(&status_key, zkmirror::testing::status_field::LEADER)
                .query_async(&mut conn)
                .await
                .expect("GET data, HGET leader");
            let now = killed_at.elapsed();
            if visible.is_none() && data.as_deref() == Some(value.as_str()) {
                visible = Some(now);
            }
            if named.is_none() && named_leader.as_deref() == Some(standby.name.as_str()) {
                named = Some(now);
            }
            if exited.is_none() && has_exited(&leader.process) {
                exited = Some(now);
            }
            tokio::time::sleep(POLL).await;
        }
        // The round ends with the new leader live, so that the next kill meets a leader.
        wait_leading_live(&mut conn, &status_key, &standby.name).await;
        let log = support::mirror_log(&standby.log);
        let elected_ms = log_time_ns(&log, "election: leading").map(|t| (t as f64 - kill_real_ns as f64) / 1e6);
        let cold_sync_ms = cold_sync_ms(&log);
        let visible_ms = visible.map(ms);
        let takeover = Takeover {
            round,
            kind,
            old_leader: leader.name.clone(),
            new_leader: standby.name.clone(),
            ack_ms,
            visible_ms,
            old_exited_ms: exited.map(ms),
            elected_ms,
            status_names_new_leader_ms: named.map(ms),
            cold_sync_ms,
            written_by_old_leader: matches!((visible_ms, elected_ms), (Some(v), Some(e)) if v < e),
        };
        eprintln!(
            "[failover] {round:>2} {:<7} {} → {}: visible {} ms (ack {:.1}, old gone {}, elected {}, cold sync {}){}",
            kind.label(),
            takeover.old_leader,
            takeover.new_leader,
            opt(takeover.visible_ms),
            takeover.ack_ms,
            opt(takeover.old_exited_ms),
            opt(takeover.elected_ms),
            opt(takeover.cold_sync_ms),
            if takeover.written_by_old_leader { " [written by the old leader]" } else { "" }
        );
        takeovers.push(takeover);

        // The killed one (exited by now, or SIGKILLed after 5 s) comes back as the standby.
        leader.process.stop();
        incarnation += 1;
        let restarted = spawn(&servers, &leader.name, incarnation, &session);
        leader = std::mem::replace(&mut standby, restarted);
        wait_competing(&client, &standby).await;
    }
    let (report, _) = support::verify(&client, &mut conn).await;
    leader.process.stop();
    standby.process.stop();

    let session_ms = session_timeout_ms as f64;
    Failover {
        znodes: NODES,
        session_timeout_ms,
        poll_interval_ms: POLL.as_secs_f64() * 1000.0,
        kill9: summary(&takeovers, Kind::Kill9, session_ms + TARGET_SLACK_MS),
        sigterm: summary(&takeovers, Kind::Sigterm, TARGET_SLACK_MS),
        takeovers,
        standby_sample_s,
        standby_cpu_percent: cpu.processes[0],
        standby_rss_mb,
        standby_peak_rss_mb,
        rest_of_machine_percent: cpu.outside,
        verified_exact: report.is_exact(),
    }
}

fn summary(takeovers: &[Takeover], kind: Kind, target_ms: f64) -> KindSummary {
    let of: Vec<&Takeover> = takeovers.iter().filter(|t| t.kind == kind).collect();
    let visible: Vec<f64> = of.iter().filter_map(|t| t.visible_ms).collect();
    let elected: Vec<f64> = of.iter().filter_map(|t| t.elected_ms).collect();
    let cold: Vec<f64> = of.iter().filter_map(|t| t.cold_sync_ms).collect();
    let worst = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
    let never_visible = of.len() - visible.len();
    let visible_worst_ms = worst(&visible);
    KindSummary {
        kind,
        takeovers: of.len(),
        never_visible,
        visible_median_ms: median(&visible),
        visible_worst_ms,
        elected_median_ms: median(&elected),
        elected_worst_ms: worst(&elected),
        cold_sync_median_ms: median(&cold),
        cold_sync_worst_ms: worst(&cold),
        written_by_old_leader: of.iter().filter(|t| t.written_by_old_leader).count(),
        target_ms,
        met: !of.is_empty() && never_visible == 0 && visible_worst_ms <= target_ms,
    }
}

/// Waits until `P:mirror` names `instance` as leader and says `live`.
async fn wait_leading_live(conn: &mut redis::aio::MultiplexedConnection, status_key: &str, instance: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (leader, state): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(status_key)
            .arg(zkmirror::testing::status_field::LEADER)
            .arg(zkmirror::testing::status_field::STATE)
            .query_async(conn)
            .await
            .expect("HMGET leader state");
        if leader.as_deref() == Some(instance) && state.as_deref() == Some("live") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{instance} did not lead a live mirror within 120 s ({leader:?}, {state:?})"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `instance` competes (its log says so) and the election holds exactly two lock
/// znodes: the dead leader's is gone, so the next round starts from one leader, one standby.
async fn wait_competing(client: &zookeeper_client::Client, instance: &Instance) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let competing = support::mirror_log(&instance.log).contains("election: competing for leadership");
        let locks = client.list_children(ELECTION).await.map(|c| c.len()).unwrap_or(0);
        if competing && locks == 2 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not compete within 120 s (log says competing: {competing}; {locks} lock znodes)",
            instance.name
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether our child has exited (not reaped: `Guarded` does that).
fn has_exited(process: &Guarded) -> bool {
    // SAFETY: waitid with WNOWAIT|WNOHANG on our own child only observes its state.
    let (rc, pid) = unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        let rc = libc::waitid(libc::P_PID, process.pid(), &mut info, flags);
        (rc, info.si_pid())
    };
    rc != 0 || pid != 0
}

/// VmRSS and VmHWM of `pid`, in MB.
fn rss_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The time (unix ns) of the first log line containing `needle`.
fn log_time_ns(log: &str, needle: &str) -> Option<u64> {
    log.lines().find(|l| l.contains(needle)).and_then(|l| l.split_whitespace().next()).and_then(parse_rfc3339_ns)
}

/// `ms=` of the new leader's `cold sync done` line.
fn cold_sync_ms(log: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains("cold sync done"))?;
    line.split_whitespace().find_map(|w| w.strip_prefix("ms=")).and_then(|v| v.parse().ok())
}

/// `2026-12-01T12:34:56.123456Z` (the log's timestamps, UTC) as unix nanoseconds.
fn parse_rfc3339_ns(text: &str) -> Option<u64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<u64>().ok());
    let (h, min, s) = (t.next()??, t.next()??, t.next()??);
    let digits = frac.len().min(9);
    let nanos = frac.get(..digits)?.parse::<u64>().ok()? * 10u64.pow(9 - digits as u32);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(((days * 86_400 + h * 3600 + min * 60 + s) * 1_000_000_000) + nanos)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.0}"))
}

pub fn verdicts(f: &Failover) -> Vec<Verdict> {
    let row = |s: &KindSummary, target: String| {
        Verdict::new(
            format!("failover {}: kill → change visible, worst of {}", s.kind_label(), s.takeovers),
            target,
            if s.never_visible > 0 {
                format!("{} never visible", s.never_visible)
            } else {
                format!("median {:.0} ms, worst {:.0} ms", s.visible_median_ms, s.visible_worst_ms)
            },
            s.met,
        )
    };
    let mut v = vec![
        row(&f.kill9, format!("≤ session {} ms + 2 s = {:.0} ms", f.session_timeout_ms, f.kill9.target_ms)),
        row(&f.sigterm, format!("≤ {:.0} ms", f.sigterm.target_ms)),
    ];
    v.push(Verdict::new(
        "failover: Redis exact after the last takeover",
        "exact",
        if f.verified_exact { "exact" } else { "NOT exact" },
        f.verified_exact,
    ));
    v
}

impl KindSummary {
    fn kind_label(&self) -> &'static str {
        self.kind.label()
    }
}

pub fn print(f: &Failover, verdicts: &[Verdict]) {
    println!();
    println!(
        "6. Failover (two instances, --session-timeout {} ms, {} znodes; kill the leader, setData at once, poll GET every {} ms)",
        f.session_timeout_ms, f.znodes, f.poll_interval_ms
    );
    println!("   | kind | takeovers | kill → visible median | worst | target | kill → elected median | worst | cold sync median | worst | written by the old leader |");
    println!("   |---|---|---|---|---|---|---|---|---|---|");
    for s in [&f.kill9, &f.sigterm] {
        println!(
            "   | {} | {} | {:.0} ms | {:.0} ms | ≤ {:.0} ms, {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {} |",
            s.kind_label(),
            s.takeovers,
            s.visible_median_ms,
            s.visible_worst_ms,
            s.target_ms,
            support::mark(s.met),
            s.elected_median_ms,
            s.elected_worst_ms,
            s.cold_sync_median_ms,
            s.cold_sync_worst_ms,
            s.written_by_old_leader
        );
    }
    println!(
        "   standby over {:.1} s: {:.2} % of one core, RSS {:.1} MB (peak {:.1} MB); rest of the machine {:.0} %",
        f.standby_sample_s, f.standby_cpu_percent, f.standby_rss_mb, f.standby_peak_rss_mb, f.rest_of_machine_percent
    );
    for v in verdicts {
        println!("   {} {}: {} (target {})", v.mark(), v.what, v.measured, v.target);
    }
}

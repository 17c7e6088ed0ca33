//! Section 3, write ceiling: a pipelined writer (a separate process) raises the `setData` rate
//! step by step until ZooKeeper's achieved rate falls below 90 % of the target; for each step,
//! the mirror's lag and how long after the load Redis is exact again.
//!
//! * Writer: one ZooKeeper session, up to `--window` requests in flight, request `k` sent at
//!   `start + k / rate` (or as soon as the window allows), for the step's duration. It records
//!   the zxid and CLOCK_MONOTONIC of every acknowledgement.
//! * Lag poller: a thread of this process with its own blocking Redis connection reads
//!   `P:mirror` `zxid` every `POLL_EVERY` and records each new value with its time. A change's
//!   lag = time of the first poll showing `zxid` ≥ its zxid − its acknowledgement time.
//!   Resolution: one poll period (reported). A thread rather than a process: it only needs its
//!   own connection and clock, and this process is otherwise idle while the writer runs.
//! * Exact again: from the last acknowledgement until `P:mirror` `zxid` reaches the highest
//!   acknowledged zxid, then `verify::compare` confirms (repeated until exact).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use serde::{Deserialize, Serialize};

use crate::latency::{path_arg, read_json, read_paths, write_json, RoleArgs};
use crate::support::{self, mono_ns, CpuSample, CpuUse, Guarded, Percentiles, Rng, Servers, Verdict, DATA_LEN, PREFIX};

const POLL_EVERY: Duration = Duration::from_micros(500);
/// A step's achieved rate below this share of its target means ZooKeeper took all it could.
const SATURATED: f64 = 0.9;
/// The target for the mirror's lag at ZooKeeper's ceiling.
const LAG_P99_TARGET_MS: f64 = 100.0;

#[derive(Serialize, Deserialize)]
pub struct CeilingWriterLog {
    /// `(zxid, ack_ns)` per acknowledged `setData`.
    pub acks: Vec<(i64, u64)>,
    /// Send → acknowledgement per acknowledged `setData`: ZooKeeper's own latency, queueing
    /// included. The mirror's reads wait in the same queue.
    pub ack_latency_ns: Vec<i64>,
    pub sent: u64,
    pub errors: u64,
    pub started_ns: u64,
    pub last_ack_ns: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub target_rate: f64,
    pub seconds: f64,
    pub acked: u64,
    pub errors: u64,
    pub achieved_rate: f64,
    /// The writer's own send → acknowledgement latency during this step.
    pub zk_ack: Percentiles,
    /// The longest event Redis's latency monitor saw during the step (ms): a fast command
    /// taking this long means Redis was waiting for a CPU.
    pub redis_stall_max_ms: u64,
    pub lag: Percentiles,
    /// Acknowledged changes whose zxid `P:mirror` had not reached when polling stopped.
    pub lag_never_reached: usize,
    /// Last acknowledgement → `P:mirror` `zxid` ≥ the highest acknowledged zxid.
    pub caught_up_after_s: Option<f64>,
    /// Last acknowledgement → start of the `verify::compare` that found Redis exact.
    pub exact_after_s: Option<f64>,
    pub verify_s: f64,
    pub poll_period_us: f64,
    pub cpu_percent_mirror: f64,
    pub cpu_percent_zookeeper: f64,
    pub cpu_percent_redis: f64,
    pub cpu_percent_writer: f64,
    pub cpu_percent_outside: f64,
    /// The whole machine's busy time, in percent of one core (at most 100 × cores).
    pub cpu_percent_machine: f64,
    /// Run-queue wait of the mirror's threads and of Redis, in percent of the step: how long
    /// each was ready to run but had no CPU.
    pub waiting_percent_mirror: f64,
    pub waiting_percent_redis: f64,
}

/// A step of the reference pass: ZooKeeper alone, no mirror.
#[derive(Clone, Debug, Serialize)]
pub struct RefStep {
    pub target_rate: f64,
    pub achieved_rate: f64,
    /// The writer's own send → acknowledgement latency during this step.
    pub zk_ack: Percentiles,
    pub acked: u64,
    pub errors: u64,
    pub cpu_percent_zookeeper: f64,
    pub cpu_percent_writer: f64,
    pub cpu_percent_outside: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Ceiling {
    pub znodes: usize,
    pub window: usize,
    /// The same writer and steps against ZooKeeper alone, before the mirror started.
    pub reference: Vec<RefStep>,
    pub steps: Vec<Step>,
    /// Index of the step with the highest achieved rate: ZooKeeper's ceiling here.
    pub ceiling_step: usize,
    /// Whether the last step fell below 90 % of its target (otherwise the list of steps ran out
    /// before ZooKeeper saturated).
    pub saturated: bool,
}

pub async fn run(nodes: usize, rates: &[f64], seconds: f64, window: usize) -> Ceiling {
    let servers = Servers::start().await;
    let zk = servers.zk.connect_string();
    let redis_url = servers.redis.url();
    let client = support::zk_client(&zk).await;
    eprintln!("[ceiling] populating {nodes} znodes ...");
    support::populate(&client, nodes).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let paths_file = dir.path().join("leaves");
    std::fs::write(&paths_file, support::leaf_paths(nodes).join("\n")).expect("writing the leaves");
    let writer = |rate: f64, tag: usize, pids: &[u32]| {
        run_writer(&zk, &paths_file, &dir.path().join(format!("step{tag}.json")), rate, seconds, window, tag, pids)
    };
    let zk_pid = servers.zk.pid().unwrap_or(0);
    let redis_pid = servers.redis.pid().unwrap_or(0);

    // The reference: the same steps against ZooKeeper alone, before the mirror starts.
    let mut reference = Vec::new();
    for (i, &rate) in rates.iter().enumerate() {
        eprintln!("[ceiling] reference step {}: {rate}/s for {seconds} s, no mirror ...", i + 1);
        let run = writer(rate, 100 + i, &[zk_pid]);
        let step = RefStep {
            target_rate: rate,
            achieved_rate: run.achieved_rate(),
            zk_ack: run.zk_ack(),
            acked: run.log.acks.len() as u64,
            errors: run.log.errors,
            cpu_percent_zookeeper: run.cpu.processes[0],
            cpu_percent_writer: run.cpu.processes[1],
            cpu_percent_outside: run.cpu.outside,
        };
        eprintln!("[ceiling] reference step {}: achieved {:.0}/s", i + 1, step.achieved_rate);
        let stop = step.achieved_rate < SATURATED * rate;
        reference.push(step);
        if stop {
            break;
        }
    }

    let mut conn = support::redis_conn(&redis_url).await;
    let mut mirror = support::spawn_mirror(&zk, &redis_url, "ceiling");
    support::wait_state(&mut conn, &mut mirror, "live", Duration::from_secs(600))
        .await
        .expect("the mirror did not reach `live`; see target/bench-logs/ceiling.log");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut steps = Vec::new();
    let mut saturated = false;
    for (i, &rate) in rates.iter().enumerate() {
        eprintln!("[ceiling] step {}: {rate}/s for {seconds} s ...", i + 1);
        let poller = LagPoller::start(&redis_url);
        support::redis_stalls_reset(&mut conn).await;
        let run = writer(rate, i, &[mirror.pid(), zk_pid, redis_pid]);
        let redis_stall_max_ms = support::redis_stall_max_ms(&mut conn).await;
        let highest = run.log.acks.iter().map(|&(z, _)| z).max().unwrap_or(0);
        poller.wait_for(highest, Duration::from_secs(300));
        let trace = poller.stop();
        let caught = trace.points.iter().find(|&&(_, z)| z >= highest).map(|&(t, _)| t);
        let mut exact_after = None;
        let mut verify_s = 0.0;
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let started_ns = mono_ns();
            let (report, took) = support::verify(&client, &mut conn).await;
            verify_s = took.as_secs_f64();
            if report.is_exact() {
                exact_after = Some(started_ns.saturating_sub(run.log.last_ack_ns) as f64 / 1e9);
                break;
            }
            eprintln!("[ceiling] step {}: not exact yet: {}", i + 1, report.to_string().lines().next().unwrap_or(""));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        mirror.assert_running();

        let mut lags = Vec::with_capacity(run.log.acks.len());
        let mut never = 0;
        for &(zxid, ack_ns) in &run.log.acks {
            let i = trace.points.partition_point(|&(_, z)| z < zxid);
            match trace.points.get(i) {
                Some(&(t, _)) => lags.push(t as i64 - ack_ns as i64),
                None => never += 1,
            }
        }
        let step = Step {
            target_rate: rate,
            seconds,
            acked: run.log.acks.len() as u64,
            errors: run.log.errors,
            achieved_rate: run.achieved_rate(),
            zk_ack: run.zk_ack(),
            redis_stall_max_ms,
            lag: Percentiles::of(lags),
            lag_never_reached: never,
            caught_up_after_s: caught.map(|t| t.saturating_sub(run.log.last_ack_ns) as f64 / 1e9),
            exact_after_s: exact_after,
            verify_s,
            poll_period_us: trace.period_us,
            cpu_percent_mirror: run.cpu.processes[0],
            cpu_percent_zookeeper: run.cpu.processes[1],
            cpu_percent_redis: run.cpu.processes[2],
            cpu_percent_writer: run.cpu.processes[3],
            cpu_percent_outside: run.cpu.outside,
            cpu_percent_machine: run.cpu.machine,
            waiting_percent_mirror: run.cpu.waiting[0],
            waiting_percent_redis: run.cpu.waiting[2],
        };
        eprintln!(
            "[ceiling] step {}: achieved {:.0}/s, lag p50 {:.2} ms p99 {:.2} ms max {:.2} ms, caught up after {:?} s, exact after {:?} s",
            i + 1,
            step.achieved_rate,
            step.lag.p50_ms,
            step.lag.p99_ms,
            step.lag.max_ms,
            step.caught_up_after_s,
            step.exact_after_s
        );
        let stop = step.achieved_rate < SATURATED * rate;
        steps.push(step);
        if stop {
            saturated = true;
            break;
        }
    }
    mirror.stop();
    let ceiling_step =
        steps.iter().enumerate().max_by(|a, b| a.1.achieved_rate.total_cmp(&b.1.achieved_rate)).map_or(0, |(i, _)| i);
    Ceiling { znodes: nodes, window, reference, steps, ceiling_step, saturated }
}

/// One run of the writer process and the CPU use meanwhile.
struct WriterRun {
    log: CeilingWriterLog,
    /// `pids` as given, then the writer, then this process.
    cpu: CpuUse,
}

impl WriterRun {
    fn achieved_rate(&self) -> f64 {
        let span_s = self.log.last_ack_ns.saturating_sub(self.log.started_ns) as f64 / 1e9;
        self.log.acks.len() as f64 / span_s.max(1e-9)
    }

    /// The writer's own send → acknowledgement latency.
    fn zk_ack(&self) -> Percentiles {
        Percentiles::of(self.log.ack_latency_ns.clone())
    }
}

#[allow(clippy::too_many_arguments)]
fn run_writer(
    zk: &str,
    paths_file: &Path,
    out: &Path,
    rate: f64,
    seconds: f64,
    window: usize,
    tag: usize,
    pids: &[u32],
) -> WriterRun {
    let mut writer = Guarded::spawn(
        "the ceiling writer",
        support::role_command(
            "ceiling-writer",
            &[
                "--zk".into(),
                zk.to_owned(),
                "--paths-file".into(),
                path_arg(paths_file),
                "--rate".into(),
                rate.to_string(),
                "--seconds".into(),
                seconds.to_string(),
                "--window".into(),
                window.to_string(),
                "--tag".into(),
                tag.to_string(),
                "--out".into(),
                path_arg(out),
            ],
        ),
    );
    let mut pids = pids.to_vec();
    pids.extend([writer.pid(), std::process::id()]);
    let cpu = CpuSample::take(&pids);
    // The writer's CPU time is read after it exits but before it is reaped.
    writer.wait_exited_unreaped();
    let cpu = cpu.since(&pids);
    writer.wait_success();
    WriterRun { log: read_json(out), cpu }
}

pub fn verdicts(c: &Ceiling) -> Vec<Verdict> {
    let Some(top) = c.steps.get(c.ceiling_step) else {
        return Vec::new();
    };
    let mut verdicts = vec![Verdict::new(
        format!("mirror lag p99 at ZooKeeper's ceiling ({:.0}/s achieved)", top.achieved_rate),
        format!("< {LAG_P99_TARGET_MS:.0} ms"),
        format!("{:.2} ms", top.lag.p99_ms),
        top.lag.count > 0 && top.lag_never_reached == 0 && top.lag.p99_ms < LAG_P99_TARGET_MS,
    )];
    if !c.saturated {
        verdicts.push(Verdict::new(
            "ZooKeeper saturated within the steps",
            format!("a step below {:.0} % of its target", SATURATED * 100.0),
            "never: raise the steps",
            false,
        ));
    }
    let inexact = c.steps.iter().filter(|s| s.exact_after_s.is_none()).count();
    if inexact > 0 {
        verdicts.push(Verdict::new(
            "Redis exact again after every step",
            "exact",
            format!("{inexact} steps not exact in 120 s"),
            false,
        ));
    }
    verdicts
}

pub fn print(c: &Ceiling, verdicts: &[Verdict]) {
    println!();
    println!(
        "3. Write ceiling ({} znodes; pipelined setData on random leaves, {} in flight at most; lag = ack → P:mirror zxid ≥ its zxid)",
        c.znodes, c.window
    );
    println!(
        "{:>9} {:>9} {:>10} {:>6} {:>15} {:>9} {:>9} {:>9} {:>6} {:>9} {:>8} {:>11} {:>5}  CPU % mirror/ZK/Redis/writer/outside  no CPU % mirror/Redis",
        "target/s", "ZK alone", "w/ mirror", "share", "ZK ack p50/p99", "lag p50", "lag p99", "lag max", "<100ms", "caught up", "exact", "Redis stall", "busy"
    );
    for (i, s) in c.steps.iter().enumerate() {
        let alone = c
            .reference
            .iter()
            .find(|r| r.target_rate == s.target_rate)
            .map_or("-".to_owned(), |r| format!("{:.0}", r.achieved_rate));
        println!(
            "{:>9.0} {:>9} {:>10.0} {:>5.0}% {:>15} {:>6.2} ms {:>6.2} ms {:>6.1} ms {:>6} {:>9} {:>8} {:>8} ms {:>4.0}%  {:.0}/{:.0}/{:.0}/{:.0}/{:.0}  {:.0}/{:.0}{}",
            s.target_rate,
            alone,
            s.achieved_rate,
            100.0 * s.achieved_rate / s.target_rate,
            format!("{:.1}/{:.1} ms", s.zk_ack.p50_ms, s.zk_ack.p99_ms),
            s.lag.p50_ms,
            s.lag.p99_ms,
            s.lag.max_ms,
            support::mark(s.lag.count > 0 && s.lag_never_reached == 0 && s.lag.p99_ms < LAG_P99_TARGET_MS),
            s.caught_up_after_s.map_or("never".into(), |t| format!("{t:.3} s")),
            s.exact_after_s.map_or("NO".into(), |t| format!("{t:.2} s")),
            s.redis_stall_max_ms,
            s.cpu_percent_machine / std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
            s.cpu_percent_mirror,
            s.cpu_percent_zookeeper,
            s.cpu_percent_redis,
            s.cpu_percent_writer,
            s.cpu_percent_outside,
            s.waiting_percent_mirror,
            s.waiting_percent_redis,
            if i == c.ceiling_step { "  ← ceiling" } else { "" }
        );
    }
    let best_alone = c.reference.iter().map(|r| r.achieved_rate).fold(0.0, f64::max);
    if let Some(top) = c.steps.get(c.ceiling_step) {
        println!(
            "   ZooKeeper's ceiling: {:.0}/s alone (reference pass, no mirror), {:.0}/s with the mirror reading every change ({:.2}× of alone)",
            best_alone,
            top.achieved_rate,
            top.achieved_rate / best_alone.max(1e-9)
        );
    }
    if let Some(s) = c.steps.first() {
        println!(
            "   ZK ack = the writer's own send → acknowledgement latency in that step (ZooKeeper's queue, which the mirror's reads share); Redis stall = the longest event in Redis's latency monitor (a plain command taking milliseconds: Redis was waiting for a CPU)"
        );
        println!(
            "   busy = the whole machine's CPU time over all its cores; no CPU = run-queue wait (/proc/PID/task/*/schedstat): the share of the step the mirror's threads / Redis were ready to run but had no core"
        );
        println!(
            "   resolution: P:mirror zxid polled every {:.0} µs; \"exact\" = last ack → start of the verify that found Redis exact (a verify takes ~{:.2} s)",
            s.poll_period_us, s.verify_s
        );
    }
    for (i, s) in c.steps.iter().enumerate().filter(|(_, s)| s.errors > 0 || s.lag_never_reached > 0) {
        println!(
            "   step {}: {} setData errors, {} acks never reached by P:mirror zxid",
            i + 1,
            s.errors,
            s.lag_never_reached
        );
    }
    for v in verdicts {
        println!("   {}: {} (target {}) {}", v.what, v.measured, v.target, v.mark());
    }
}

// ---------------------------------------------------------------------------------------------
// The lag poller
// ---------------------------------------------------------------------------------------------

struct LagPoller {
    stop: Arc<AtomicBool>,
    latest: Arc<AtomicI64>,
    thread: std::thread::JoinHandle<Trace>,
}

struct Trace {
    /// `(time_ns, zxid)` each time `P:mirror` `zxid` changed (and the first reading).
    points: Vec<(u64, i64)>,
    period_us: f64,
}

impl LagPoller {
    fn start(redis_url: &str) -> LagPoller {
        let mut conn = support::redis_sync_conn(redis_url);
        let stop = Arc::new(AtomicBool::new(false));
        let latest = Arc::new(AtomicI64::new(0));
        let (stop2, latest2) = (stop.clone(), latest.clone());
        let key = format!("{PREFIX}:mirror");
        let thread = std::thread::spawn(move || {
            let mut points: Vec<(u64, i64)> = Vec::new();
            let started = mono_ns();
            let mut polls = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                let zxid: Option<String> =
                    redis::cmd("HGET").arg(&key).arg("zxid").query(&mut conn).expect("HGET zxid");
                let t = mono_ns();
                polls += 1;
                let zxid: i64 = zxid.and_then(|z| z.parse().ok()).unwrap_or(0);
                if points.last().is_none_or(|&(_, z)| z != zxid) {
                    points.push((t, zxid));
                    latest2.store(zxid, Ordering::Relaxed);
                }
                std::thread::sleep(POLL_EVERY);
            }
            let period_us = (mono_ns() - started) as f64 / 1e3 / polls.max(1) as f64;
            Trace { points, period_us }
        });
        LagPoller { stop, latest, thread }
    }

    /// Waits until the poller has seen the mirror's zxid reach `zxid` (or `timeout` passes);
    /// when it did is in the trace.
    fn wait_for(&self, zxid: i64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && self.latest.load(Ordering::Relaxed) < zxid {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn stop(self) -> Trace {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the lag poller panicked")
    }
}

// ---------------------------------------------------------------------------------------------
// The writer process
// ---------------------------------------------------------------------------------------------

/// `role ceiling-writer --zk Z --paths-file F --rate R --seconds S --window W --tag T --out F`.
pub fn writer_main(args: &RoleArgs) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let paths = read_paths(&args.paths_file);
        let client = support::zk_client(&args.zk).await;
        let mut rng = Rng::new(0x5eed_1000 + args.tag);
        let period_ns = 1e9 / args.rate;
        let start = tokio::time::Instant::now();
        let end = start + Duration::from_secs_f64(args.seconds);
        let mut log = CeilingWriterLog {
            acks: Vec::new(),
            ack_latency_ns: Vec::new(),
            sent: 0,
            errors: 0,
            started_ns: mono_ns(),
            last_ack_ns: 0,
        };
        let mut inflight = FuturesUnordered::new();
        let mut k: u64 = 0;
        let handle = |(result, sent_ns): (Result<i64, zookeeper_client::Error>, u64), log: &mut CeilingWriterLog| {
            let now = mono_ns();
            match result {
                Ok(zxid) => {
                    log.acks.push((zxid, now));
                    log.ack_latency_ns.push(now as i64 - sent_ns as i64);
                    log.last_ack_ns = now;
                }
                Err(_) => log.errors += 1,
            }
        };
        loop {
            let now = tokio::time::Instant::now();
            if now >= end {
                break;
            }
            let due = start + Duration::from_nanos((k as f64 * period_ns) as u64);
            if inflight.len() >= args.window || now < due {
                tokio::select! {
                    Some(result) = inflight.next(), if !inflight.is_empty() => handle(result, &mut log),
                    _ = tokio::time::sleep_until(due.min(end)), if now < due => {}
                }
                continue;
            }
            let mut value = format!("{}-{k}", args.tag).into_bytes();
            value.resize(DATA_LEN, b'.');
            let sent_ns = mono_ns();
            let set = client.set_data(&paths[rng.below(paths.len())], &value, None);
            inflight.push(set.map(move |r| (r.map(|stat| stat.mzxid), sent_ns)));
            log.sent += 1;
            k += 1;
            while let Some(Some(result)) = inflight.next().now_or_never() {
                handle(result, &mut log);
            }
        }
        while let Some(result) = inflight.next().await {
            handle(result, &mut log);
        }
        write_json(&args.out, &log);
    });
}

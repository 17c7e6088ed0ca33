//! Section 9, several targets: one `zkmirror run` writing three independent Redis servers
//! (`--redis t1=... --redis t2=... --redis t3=...`) against the same process writing one, same
//! ZooKeeper and tree, alternately. Cold sync: from emptied servers until every target says
//! `live` and is exact. Propagation: the measurement of section 2, the reader polling the
//! first target. Reported as medians and 3-target / 1-target ratios, beside the cores the
//! machine has, and the packets ZooKeeper received per cold sync: each target is a mirror of
//! its own, but the targets of a root share one ZooKeeper session and, where safe, its reads
//! (`src/zkhub.rs`).

use std::time::{Duration, Instant};

use serde::Serialize;
use zkmirror_testkit::{RedisServer, ZkServer};

use crate::latency::{self, MirrorLinks};
use crate::support::{self, median, Verdict};

#[derive(Clone, Debug, Serialize)]
pub struct Targets {
    pub znodes: usize,
    pub cores: usize,
    pub one_cold_sync_s: Vec<f64>,
    pub three_cold_sync_s: Vec<f64>,
    pub one_cold_sync_median_s: f64,
    pub three_cold_sync_median_s: f64,
    /// Three targets / one, medians.
    pub cold_sync_ratio: f64,
    pub one_mirror_cpu_s: Vec<f64>,
    pub three_mirror_cpu_s: Vec<f64>,
    /// Packets ZooKeeper received from start to every target `live` (before the checks read it).
    pub one_zk_packets: Vec<u64>,
    pub three_zk_packets: Vec<u64>,
    pub one_propagation_p50_ms: f64,
    pub one_propagation_p99_ms: f64,
    pub three_propagation_p50_ms: f64,
    pub three_propagation_p99_ms: f64,
    pub propagation_p50_ratio: f64,
    pub propagation_p99_ratio: f64,
    /// Reads that saw a version go backwards, a torn pair or a blank, over every pass.
    pub broken_reads: u64,
    pub verified_exact: bool,
}

pub async fn run(nodes: usize, runs: usize, rate: f64, seconds: f64) -> Targets {
    let zk = ZkServer::start_for_benchmark();
    let redis = [RedisServer::start(), RedisServer::start(), RedisServer::start()];
    support::record_versions(&zk, &redis[0].url()).await;
    let client = support::zk_client(&zk.connect_string()).await;
    eprintln!("[targets] populating {nodes} znodes ...");
    support::populate(&client, nodes).await;
    let one = MirrorLinks { zk: zk.connect_string(), redis: redis[0].url(), extra: Vec::new(), log_name: "targets-1" };
    let three = MirrorLinks {
        zk: zk.connect_string(),
        redis: format!("t1={}", redis[0].url()),
        extra: [
            "--redis".to_owned(),
            format!("t2={}", redis[1].url()),
            "--redis".to_owned(),
            format!("t3={}", redis[2].url()),
        ]
        .to_vec(),
        log_name: "targets-3",
    };
    let mut conns = Vec::new();
    for r in &redis {
        conns.push(support::redis_conn(&r.url()).await);
    }
    let (mut one_s, mut three_s, mut one_cpu, mut three_cpu) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut one_packets, mut three_packets) = (Vec::new(), Vec::new());
    let mut verified_exact = true;
    for run in 1..=runs {
        for (links, count, times, cpu, packets) in [
            (&one, 1, &mut one_s, &mut one_cpu, &mut one_packets),
            (&three, 3, &mut three_s, &mut three_cpu, &mut three_packets),
        ] {
            for conn in &mut conns {
                let _: () = redis::cmd("FLUSHALL").query_async(conn).await.expect("FLUSHALL");
            }
            let extra: Vec<&str> = links.extra.iter().map(String::as_str).collect();
            let packets_before = support::zookeeper_packets_received(&zk);
            let started = Instant::now();
            let mut mirror = support::spawn_mirror_with(&links.zk, &links.redis, links.log_name, &extra);
            for conn in conns.iter_mut().take(count) {
                support::wait_state(conn, &mut mirror, "live", Duration::from_secs(600)).await.unwrap_or_else(|| {
                    panic!("a target did not reach `live`; see target/bench-logs/{}.log", links.log_name)
                });
            }
            let cold = started.elapsed();
            packets.push(support::zookeeper_packets_received(&zk).saturating_sub(packets_before));
            let usage = support::process_usage(mirror.pid());
            for conn in conns.iter_mut().take(count) {
                let (report, _) = support::verify(&client, conn).await;
                if !report.is_exact() || report.znodes as usize != nodes {
                    eprintln!("[targets] {}: a copy is NOT exact after `live`: {report}", links.log_name);
                    verified_exact = false;
                }
            }
            mirror.stop();
            eprintln!(
                "[targets] run {run}/{runs} {}: cold sync {:.3} s, mirror CPU {:.2} s, ZooKeeper packets {}",
                links.log_name,
                cold.as_secs_f64(),
                usage.cpu.as_secs_f64(),
                packets.last().copied().unwrap_or(0)
            );
            times.push(cold.as_secs_f64());
            cpu.push(usage.cpu.as_secs_f64());
        }
    }
    let pids = [zk.pid().unwrap_or(0), redis[0].pid().unwrap_or(0)];
    let (mut one_passes, mut three_passes) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        for (links, passes) in [(&one, &mut one_passes), (&three, &mut three_passes)] {
            eprintln!("[targets] propagation {run}/{runs}, {} ...", links.log_name);
            passes
                .push(latency::run_on(&zk.connect_string(), &redis[0].url(), pids, links, nodes, rate, seconds).await);
        }
    }
    let (broken, med) = (latency::broken_reads, latency::median_of);
    let p50 = |l: &latency::Latency| l.latency.p50_ms;
    let p99 = |l: &latency::Latency| l.latency.p99_ms;
    let (one_median, three_median) = (median(&one_s), median(&three_s));
    Targets {
        znodes: nodes,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        one_cold_sync_median_s: one_median,
        three_cold_sync_median_s: three_median,
        cold_sync_ratio: three_median / one_median,
        one_cold_sync_s: one_s,
        three_cold_sync_s: three_s,
        one_mirror_cpu_s: one_cpu,
        three_mirror_cpu_s: three_cpu,
        one_zk_packets: one_packets,
        three_zk_packets: three_packets,
        one_propagation_p50_ms: med(&one_passes, p50),
        one_propagation_p99_ms: med(&one_passes, p99),
        three_propagation_p50_ms: med(&three_passes, p50),
        three_propagation_p99_ms: med(&three_passes, p99),
        propagation_p50_ratio: med(&three_passes, p50) / med(&one_passes, p50),
        propagation_p99_ratio: med(&three_passes, p99) / med(&one_passes, p99),
        broken_reads: broken(&one_passes) + broken(&three_passes),
        verified_exact: verified_exact && one_passes.iter().chain(&three_passes).all(|l| l.verified_exact),
    }
}

/// No target on the ratios (the issue asks for them to be reported); what must hold with
/// three targets as with one: exact copies and no broken read.
pub fn verdicts(t: &Targets) -> Vec<Verdict> {
    vec![
        Verdict::new(
            "targets: every copy exact after each cold sync and propagation pass",
            "exact",
            if t.verified_exact { "exact" } else { "NOT exact" },
            t.verified_exact,
        ),
        Verdict::new("targets: backwards, torn or blank reads", "0", t.broken_reads.to_string(), t.broken_reads == 0),
    ]
}

pub fn print(t: &Targets, verdicts: &[Verdict]) {
    println!();
    println!(
        "9. Several targets (one process writing 3 independent Redis servers against 1, alternately; {} znodes; {} cold syncs and propagation passes each, medians; {} cores)",
        t.znodes,
        t.one_cold_sync_s.len(),
        t.cores
    );
    println!("{:<34} {:>12} {:>12} {:>10}", "", "1 target", "3 targets", "3/1");
    println!(
        "{:<34} {:>10.3} s {:>10.3} s {:>9.2}×",
        "cold sync, all live (median)", t.one_cold_sync_median_s, t.three_cold_sync_median_s, t.cold_sync_ratio
    );
    println!(
        "{:<34} {:>10.2} s {:>10.2} s {:>9.2}×",
        "mirror CPU per cold sync (median)",
        median(&t.one_mirror_cpu_s),
        median(&t.three_mirror_cpu_s),
        median(&t.three_mirror_cpu_s) / median(&t.one_mirror_cpu_s)
    );
    let as_f64 = |v: &[u64]| v.iter().map(|&p| p as f64).collect::<Vec<f64>>();
    let (one_packets, three_packets) = (median(&as_f64(&t.one_zk_packets)), median(&as_f64(&t.three_zk_packets)));
    println!(
        "{:<34} {:>12.0} {:>12.0} {:>9.2}×",
        "ZooKeeper packets per cold sync",
        one_packets,
        three_packets,
        three_packets / one_packets
    );
    println!(
        "{:<34} {:>9.2} ms {:>9.2} ms {:>9.2}×",
        "propagation p50 (first target)", t.one_propagation_p50_ms, t.three_propagation_p50_ms, t.propagation_p50_ratio
    );
    println!(
        "{:<34} {:>9.2} ms {:>9.2} ms {:>9.2}×",
        "propagation p99 (first target)", t.one_propagation_p99_ms, t.three_propagation_p99_ms, t.propagation_p99_ratio
    );
    for v in verdicts {
        println!("   {}: {} (target {}) {}", v.what, v.measured, v.target, v.mark());
    }
}

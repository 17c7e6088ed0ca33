//! Section 1, cold sync: for each tree size, on fresh servers, the raw pipelined read of the
//! whole tree (the reference) against zkmirror's cold sync, from process start until Redis is
//! exact, with the mirror's CPU seconds and peak RSS.
//!
//! Runs are interleaved (raw, cold, raw, cold, ...) so that anything else slowing the machine
//! down hits both alike; each cold sync starts a new mirror process on an emptied Redis.
//! Reported: the median of each, their ratio, and the largest peak RSS of any run.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::support::{self, median, CpuSample, Servers, Verdict};

#[derive(Clone, Debug, Serialize)]
pub struct ColdSync {
    pub znodes: usize,
    pub populate_s: f64,
    /// Every run, in order. `raw_read`: one request per read; `raw_batched`: 64 reads per
    /// multi-read request. The reference is the faster of the two medians.
    pub raw_read_s: Vec<f64>,
    pub raw_batched_s: Vec<f64>,
    /// Context, not the reference: the same znodes written to Redis with plain pipelined
    /// commands (`support::raw_write`), without the change stream.
    pub raw_write_s: Vec<f64>,
    /// The same with the one `P:changes` entry per znode the contract asks for: every key the
    /// cold sync writes, plainly (the issue's reference, "a plain pipelined write of the same
    /// keys").
    pub raw_write_stream_s: Vec<f64>,
    /// Context, and the cold sync's floor here: the same znodes through zkmirror's own Redis
    /// stage (`Store::apply`, `put_batch.lua` as on one Redis) with no ZooKeeper
    /// (`support::scripted_write`).
    pub scripted_write_s: Vec<f64>,
    /// Context: the same, one `put.lua` call per znode (as to a Redis Cluster, and as the
    /// mirror wrote to one Redis before `put_batch.lua`).
    pub scripted_single_s: Vec<f64>,
    pub cold_sync_s: Vec<f64>,
    /// CPU seconds of Redis's main thread during the raw write, the Redis stage alone (both
    /// ways) and the cold sync (`support::redis_main_cpu_s`): the time Redis itself takes.
    pub redis_cpu_raw_write_s: Vec<f64>,
    pub redis_cpu_raw_write_stream_s: Vec<f64>,
    pub redis_cpu_scripted_s: Vec<f64>,
    pub redis_cpu_scripted_single_s: Vec<f64>,
    pub redis_cpu_cold_s: Vec<f64>,
    /// Medians of each run's ratio to the raw write of the same run, in Redis CPU.
    pub redis_cpu_cold_to_raw_write: f64,
    pub redis_cpu_scripted_to_raw_write: f64,
    pub redis_cpu_scripted_single_to_raw_write: f64,
    pub mirror_cpu_s: Vec<f64>,
    pub mirror_peak_rss_mb: Vec<f64>,
    /// CPU used outside the benchmark's processes during each raw read and each cold sync,
    /// percent of one core: how much another workload competed.
    pub outside_cpu_percent_raw: Vec<f64>,
    pub outside_cpu_percent_cold: Vec<f64>,
    /// ZooKeeper's and Redis's CPU during each cold sync, percent of one core: which server the
    /// cold sync keeps busy (Redis runs commands on one thread: near 100 % means Redis-bound).
    pub zookeeper_cpu_percent_cold: Vec<f64>,
    pub redis_cpu_percent_cold: Vec<f64>,
    /// Medians (RSS: the largest).
    pub raw_read_median_s: f64,
    pub raw_batched_median_s: f64,
    pub raw_write_median_s: f64,
    pub raw_write_stream_median_s: f64,
    pub scripted_write_median_s: f64,
    pub scripted_single_median_s: f64,
    /// Cold sync / the raw write without the stream (the figure earlier runs reported).
    pub ratio_to_raw_write: f64,
    /// Cold sync / the raw write of every key, the stream included: the target for one
    /// Redis (≤ 1.5×).
    pub ratio_to_raw_write_stream: f64,
    pub scripted_to_raw_write_stream: f64,
    pub redis_cpu_cold_to_raw_write_stream: f64,
    /// The Redis stage alone / the raw write, batched and one `put.lua` per znode.
    pub scripted_to_raw_write: f64,
    pub scripted_single_to_raw_write: f64,
    /// Cold sync / the scripted write: how close the cold sync runs to its Redis stage alone.
    pub ratio_to_scripted_write: f64,
    pub reference_s: f64,
    pub cold_sync_median_s: f64,
    /// Cold sync / the reference (the faster raw read).
    pub ratio: f64,
    pub ratio_to_unbatched: f64,
    pub mirror_cpu_median_s: f64,
    pub mirror_peak_rss_max_mb: f64,
    /// `verify::compare` after each cold sync (not timed into it).
    pub verified_exact: bool,
}

pub async fn run(nodes: usize, runs: usize) -> ColdSync {
    let servers = Servers::start().await;
    let client = support::zk_client(&servers.zk.connect_string()).await;
    eprintln!(
        "[cold sync {nodes}] populating {nodes} znodes × {} bytes, fanout {} ...",
        support::DATA_LEN,
        support::FANOUT
    );
    let populate = support::populate(&client, nodes).await;
    eprintln!("[cold sync {nodes}] populated in {:.1} s", populate.as_secs_f64());
    let mut conn = support::redis_conn(&servers.redis.url()).await;

    let mut result = ColdSync {
        znodes: nodes,
        populate_s: populate.as_secs_f64(),
        raw_read_s: Vec::new(),
        raw_batched_s: Vec::new(),
        raw_write_s: Vec::new(),
        raw_write_stream_s: Vec::new(),
        scripted_write_s: Vec::new(),
        scripted_single_s: Vec::new(),
        cold_sync_s: Vec::new(),
        redis_cpu_raw_write_s: Vec::new(),
        redis_cpu_raw_write_stream_s: Vec::new(),
        redis_cpu_scripted_s: Vec::new(),
        redis_cpu_scripted_single_s: Vec::new(),
        redis_cpu_cold_s: Vec::new(),
        redis_cpu_cold_to_raw_write: 0.0,
        redis_cpu_scripted_to_raw_write: 0.0,
        redis_cpu_scripted_single_to_raw_write: 0.0,
        mirror_cpu_s: Vec::new(),
        mirror_peak_rss_mb: Vec::new(),
        outside_cpu_percent_raw: Vec::new(),
        outside_cpu_percent_cold: Vec::new(),
        zookeeper_cpu_percent_cold: Vec::new(),
        redis_cpu_percent_cold: Vec::new(),
        raw_read_median_s: 0.0,
        raw_batched_median_s: 0.0,
        raw_write_median_s: 0.0,
        raw_write_stream_median_s: 0.0,
        scripted_write_median_s: 0.0,
        scripted_single_median_s: 0.0,
        ratio_to_raw_write: 0.0,
        ratio_to_raw_write_stream: 0.0,
        scripted_to_raw_write_stream: 0.0,
        redis_cpu_cold_to_raw_write_stream: 0.0,
        scripted_to_raw_write: 0.0,
        scripted_single_to_raw_write: 0.0,
        ratio_to_scripted_write: 0.0,
        reference_s: 0.0,
        cold_sync_median_s: 0.0,
        ratio: 0.0,
        ratio_to_unbatched: 0.0,
        mirror_cpu_median_s: 0.0,
        mirror_peak_rss_max_mb: 0.0,
        verified_exact: true,
    };
    let server_pids = [servers.zk.pid().unwrap_or(0), servers.redis.pid().unwrap_or(0), std::process::id()];
    for run in 1..=runs {
        let cpu = CpuSample::take(&server_pids);
        let raw = support::timed_raw_walk(&client, nodes, false).await;
        let batched = support::timed_raw_walk(&client, nodes, true).await;
        result.outside_cpu_percent_raw.push(cpu.since(&server_pids).outside);
        result.raw_read_s.push(raw.as_secs_f64());
        result.raw_batched_s.push(batched.as_secs_f64());

        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.expect("FLUSHALL");
        let redis_cpu = support::redis_main_cpu_s(&mut conn).await;
        let raw_write = support::raw_write(&mut conn, nodes, false).await;
        result.raw_write_s.push(raw_write.as_secs_f64());
        result.redis_cpu_raw_write_s.push(support::redis_main_cpu_s(&mut conn).await - redis_cpu);
        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.expect("FLUSHALL");
        let redis_cpu = support::redis_main_cpu_s(&mut conn).await;
        let raw_write_stream = support::raw_write(&mut conn, nodes, true).await;
        result.raw_write_stream_s.push(raw_write_stream.as_secs_f64());
        result.redis_cpu_raw_write_stream_s.push(support::redis_main_cpu_s(&mut conn).await - redis_cpu);
        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.expect("FLUSHALL");
        let redis_cpu = support::redis_main_cpu_s(&mut conn).await;
        let scripted_write = support::scripted_write(&servers.redis.url(), nodes, true).await;
        result.scripted_write_s.push(scripted_write.as_secs_f64());
        result.redis_cpu_scripted_s.push(support::redis_main_cpu_s(&mut conn).await - redis_cpu);
        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.expect("FLUSHALL");
        let redis_cpu = support::redis_main_cpu_s(&mut conn).await;
        let scripted_single = support::scripted_write(&servers.redis.url(), nodes, false).await;
        result.scripted_single_s.push(scripted_single.as_secs_f64());
        result.redis_cpu_scripted_single_s.push(support::redis_main_cpu_s(&mut conn).await - redis_cpu);
        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.expect("FLUSHALL");
        let redis_cpu = support::redis_main_cpu_s(&mut conn).await;
        let log_name = format!("cold-sync-{nodes}-run{run}");
        let started = Instant::now();
        let mut mirror = support::spawn_mirror(&servers.zk.connect_string(), &servers.redis.url(), &log_name);
        let pids = [server_pids[0], server_pids[1], server_pids[2], mirror.pid()];
        let cpu = CpuSample::take(&pids);
        // `live` is written once the first walk and its sweep are done.
        support::wait_state(&mut conn, &mut mirror, "live", Duration::from_secs(600)).await.unwrap_or_else(|| {
            panic!("the mirror did not reach `live` within 600 s; see target/bench-logs/{log_name}.log")
        });
        let cold = started.elapsed();
        let cpu = cpu.since(&pids);
        // Includes the mirror's status writes and `live` polling: a few commands, next to
        // tens of thousands of znodes.
        result.redis_cpu_cold_s.push(support::redis_main_cpu_s(&mut conn).await - redis_cpu);
        result.outside_cpu_percent_cold.push(cpu.outside);
        result.zookeeper_cpu_percent_cold.push(cpu.processes[0]);
        result.redis_cpu_percent_cold.push(cpu.processes[1]);
        let usage = support::process_usage(mirror.pid());
        let (report, _) = support::verify(&client, &mut conn).await;
        if !report.is_exact() || report.znodes as usize != nodes {
            eprintln!("[cold sync {nodes}] run {run}: the copy is NOT exact after `live`: {report}");
            result.verified_exact = false;
        }
        mirror.stop();
        eprintln!(
            "[cold sync {nodes}] run {run}/{runs}: raw read {:.3} s, batched {:.3} s, raw write {:.3} s ({:.3} s with the stream), scripted write {:.3} s (put.lua one per call {:.3} s), cold sync {:.3} s ({:.2}× the faster read, {:.2}× the raw write, {:.2}× with the stream), CPU {:.2} s, peak RSS {:.1} MB",
            raw.as_secs_f64(),
            batched.as_secs_f64(),
            raw_write.as_secs_f64(),
            raw_write_stream.as_secs_f64(),
            scripted_write.as_secs_f64(),
            scripted_single.as_secs_f64(),
            cold.as_secs_f64(),
            cold.as_secs_f64() / raw.min(batched).as_secs_f64(),
            cold.as_secs_f64() / raw_write.as_secs_f64(),
            cold.as_secs_f64() / raw_write_stream.as_secs_f64(),
            usage.cpu.as_secs_f64(),
            usage.peak_rss_kib as f64 / 1024.0
        );
        result.cold_sync_s.push(cold.as_secs_f64());
        result.mirror_cpu_s.push(usage.cpu.as_secs_f64());
        result.mirror_peak_rss_mb.push(usage.peak_rss_kib as f64 / 1024.0);
    }
    result.raw_read_median_s = median(&result.raw_read_s);
    result.raw_batched_median_s = median(&result.raw_batched_s);
    result.raw_write_median_s = median(&result.raw_write_s);
    result.raw_write_stream_median_s = median(&result.raw_write_stream_s);
    result.scripted_write_median_s = median(&result.scripted_write_s);
    result.scripted_single_median_s = median(&result.scripted_single_s);
    result.reference_s = result.raw_read_median_s.min(result.raw_batched_median_s);
    result.cold_sync_median_s = median(&result.cold_sync_s);
    result.ratio = result.cold_sync_median_s / result.reference_s;
    result.ratio_to_unbatched = result.cold_sync_median_s / result.raw_read_median_s;
    result.ratio_to_scripted_write = result.cold_sync_median_s / result.scripted_write_median_s;
    result.ratio_to_raw_write = result.cold_sync_median_s / result.raw_write_median_s;
    result.ratio_to_raw_write_stream = result.cold_sync_median_s / result.raw_write_stream_median_s;
    result.scripted_to_raw_write_stream = result.scripted_write_median_s / result.raw_write_stream_median_s;
    result.scripted_to_raw_write = result.scripted_write_median_s / result.raw_write_median_s;
    result.scripted_single_to_raw_write = result.scripted_single_median_s / result.raw_write_median_s;
    let per_run = |of: &[f64]| -> f64 {
        let ratios: Vec<f64> = of.iter().zip(&result.redis_cpu_raw_write_s).map(|(x, raw)| x / raw).collect();
        median(&ratios)
    };
    result.redis_cpu_cold_to_raw_write = per_run(&result.redis_cpu_cold_s);
    result.redis_cpu_cold_to_raw_write_stream = {
        let ratios: Vec<f64> =
            result.redis_cpu_cold_s.iter().zip(&result.redis_cpu_raw_write_stream_s).map(|(x, raw)| x / raw).collect();
        median(&ratios)
    };
    result.redis_cpu_scripted_to_raw_write = per_run(&result.redis_cpu_scripted_s);
    result.redis_cpu_scripted_single_to_raw_write = per_run(&result.redis_cpu_scripted_single_s);
    result.mirror_cpu_median_s = median(&result.mirror_cpu_s);
    result.mirror_peak_rss_max_mb = result.mirror_peak_rss_mb.iter().copied().fold(0.0, f64::max);
    result
}

/// The targets: ratio ≤ 1.2 at every size; cold sync ≤ 1.5× the raw write of the same
/// keys to one Redis (issue 14, "The Redis stage"); peak RSS ≤ 50 MB at 20,000 znodes and
/// ≤ 1.5× that at 200,000 (judged only when both sizes ran).
pub fn verdicts(results: &[ColdSync]) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    for r in results {
        verdicts.push(Verdict::new(
            format!("cold sync / faster raw read at {} znodes", r.znodes),
            "≤ 1.20×",
            format!("{:.2}×", r.ratio),
            r.ratio <= 1.2,
        ));
        verdicts.push(Verdict::new(
            format!("cold sync / raw write of the same keys (stream included) to one Redis at {} znodes", r.znodes),
            "≤ 1.50×",
            format!("{:.2}× ({:.2}× without the stream)", r.ratio_to_raw_write_stream, r.ratio_to_raw_write),
            r.ratio_to_raw_write_stream <= 1.5,
        ));
        if !r.verified_exact {
            verdicts.push(Verdict::new(
                format!("copy exact after cold sync at {} znodes", r.znodes),
                "exact",
                "NOT exact",
                false,
            ));
        }
    }
    let at = |n: usize| results.iter().find(|r| r.znodes == n);
    if let Some(small) = at(20_000) {
        verdicts.push(Verdict::new(
            "mirror peak RSS at 20,000 znodes",
            "≤ 50 MB",
            format!("{:.1} MB", small.mirror_peak_rss_max_mb),
            small.mirror_peak_rss_max_mb <= 50.0,
        ));
        if let Some(large) = at(200_000) {
            let limit = 1.5 * small.mirror_peak_rss_max_mb;
            verdicts.push(Verdict::new(
                "mirror peak RSS at 200,000 znodes",
                format!("≤ 1.5 × RSS at 20k = {limit:.1} MB"),
                format!("{:.1} MB", large.mirror_peak_rss_max_mb),
                large.mirror_peak_rss_max_mb <= limit,
            ));
        }
    }
    verdicts
}

pub fn print(results: &[ColdSync], verdicts: &[Verdict]) {
    println!();
    println!(
        "1. Cold sync (median of {} interleaved runs; raw reads = same client, 1024 reads in flight, one request per read or {} per multi-read; ratio to the faster)",
        results.first().map_or(0, |r| r.raw_read_s.len()),
        support::READ_BATCH
    );
    println!(
        "{:>8} {:>11} {:>11} {:>11} {:>11} {:>11} {:>7} {:>7} {:>11} {:>10} {:>7}  {:>5}  outside CPU % (raw/cold, max of runs)",
        "znodes", "raw read", "raw batched", "raw write", "put.lua", "cold sync", "ratio", "≤1.20×", "mirror CPU", "peak RSS", "RSS", "exact"
    );
    for r in results {
        let ratio_ok = r.ratio <= 1.2;
        let rss_verdict = verdicts
            .iter()
            .find(|v| v.what.starts_with("mirror peak RSS") && v.what.contains(&group(r.znodes)))
            .map_or("-", |v| v.mark());
        println!(
            "{:>8} {:>9.3} s {:>9.3} s {:>9.3} s {:>9.3} s {:>9.3} s {:>6.2}× {:>7} {:>9.2} s {:>7.1} MB {:>7}  {:>5}  {:.0}/{:.0}",
            r.znodes,
            r.raw_read_median_s,
            r.raw_batched_median_s,
            r.raw_write_median_s,
            r.scripted_write_median_s,
            r.cold_sync_median_s,
            r.ratio,
            support::mark(ratio_ok),
            r.mirror_cpu_median_s,
            r.mirror_peak_rss_max_mb,
            rss_verdict,
            if r.verified_exact { "yes" } else { "NO" },
            r.outside_cpu_percent_raw.iter().copied().fold(0.0, f64::max),
            r.outside_cpu_percent_cold.iter().copied().fold(0.0, f64::max)
        );
    }
    println!("   ratio = cold sync / the faster raw read. Context, not references: raw write = the same keys written with plain pipelined commands; put.lua = the same znodes through zkmirror's own Redis stage (Store::apply, put_batch.lua as on one Redis) with no ZooKeeper, the floor of a cold sync here");
    for r in results {
        println!(
            "   {} znodes: cold sync / put.lua alone = {:.2}× (what reading ZooKeeper adds to the Redis stage)",
            r.znodes, r.ratio_to_scripted_write
        );
        println!(
            "   {} znodes, to the raw write: cold sync {:.2}× (without the stream), the Redis stage alone {:.2}× (put_batch.lua, {:.3} s), {:.2}× with one put.lua call per znode ({:.3} s)",
            r.znodes,
            r.ratio_to_raw_write,
            r.scripted_to_raw_write,
            r.scripted_write_median_s,
            r.scripted_single_to_raw_write,
            r.scripted_single_median_s
        );
        println!(
            "   {} znodes, to the raw write with the stream entries ({:.3} s): cold sync {:.2}× (the target, ≤ 1.50×), the Redis stage alone {:.2}×; Redis's own CPU: cold sync {:.2}× the raw write's {:.3} s",
            r.znodes,
            r.raw_write_stream_median_s,
            r.ratio_to_raw_write_stream,
            r.scripted_to_raw_write_stream,
            r.redis_cpu_cold_to_raw_write_stream,
            median(&r.redis_cpu_raw_write_stream_s)
        );
        println!(
            "   {} znodes, Redis's own CPU (main thread) to the raw write's {:.3} s: cold sync {:.2}×, the Redis stage alone {:.2}× (put_batch.lua), {:.2}× (put.lua one per call); median of runs' ratios",
            r.znodes,
            median(&r.redis_cpu_raw_write_s),
            r.redis_cpu_cold_to_raw_write,
            r.redis_cpu_scripted_to_raw_write,
            r.redis_cpu_scripted_single_to_raw_write
        );
    }
    for r in results {
        println!(
            "   during the cold sync of {} znodes (median of runs), % of one core: ZooKeeper {:.0}, Redis {:.0}, mirror {:.0}",
            r.znodes,
            median(&r.zookeeper_cpu_percent_cold),
            median(&r.redis_cpu_percent_cold),
            100.0 * r.mirror_cpu_median_s / r.cold_sync_median_s
        );
    }
    for v in verdicts.iter().filter(|v| v.what.starts_with("mirror peak RSS")) {
        println!("   {}: {} (target {}) {}", v.what, v.measured, v.target, v.mark());
    }
}

/// `20,000` for 20000: how the verdicts name a size.
pub fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

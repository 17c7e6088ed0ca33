//! zkmirror's benchmark (not a test): on fresh servers of its own, measures in one run
//! (a) a raw pipelined read of the whole tree with the same ZooKeeper client — the reference —
//! and (b) zkmirror's cold sync, from process start until Redis is exact, and reports their
//! ratio with the mirror's CPU seconds and peak RSS.
//!
//! Run it with `scripts/bench` (see the README). Options: `--nodes N` (repeatable; default
//! 20000), `--json FILE`.

#[path = "../tests/common/mod.rs"]
#[allow(dead_code)]
mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{RedisServer, ZkServer};
use futures::stream::{FuturesOrdered, StreamExt};
use zookeeper_client::{Acls, Client, CreateMode};

const DATA_LEN: usize = 100;
const FANOUT: usize = 10;

struct ColdSync {
    nodes: usize,
    raw_read: Duration,
    cold_sync: Duration,
    cpu: Duration,
    peak_rss_kib: u64,
}

fn main() {
    let mut sizes = Vec::new();
    let mut json_path = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--nodes" => sizes.push(args.next().and_then(|n| n.parse().ok()).expect("--nodes takes a number")),
            "--json" => json_path = args.next(),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    if sizes.is_empty() {
        sizes.push(20_000);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let results: Vec<ColdSync> = sizes.iter().map(|&n| runtime.block_on(cold_sync(n))).collect();

    println!();
    println!("zkmirror cold sync ({} cores, {})", num_cpus(), chrono_free_date());
    println!("{:>8} {:>12} {:>12} {:>7} {:>9} {:>10}", "znodes", "raw read", "cold sync", "ratio", "mirror CPU", "peak RSS");
    for r in &results {
        println!(
            "{:>8} {:>10.3} s {:>10.3} s {:>7.2} {:>8.2} s {:>7.1} MB",
            r.nodes,
            r.raw_read.as_secs_f64(),
            r.cold_sync.as_secs_f64(),
            r.cold_sync.as_secs_f64() / r.raw_read.as_secs_f64(),
            r.cpu.as_secs_f64(),
            r.peak_rss_kib as f64 / 1024.0
        );
    }
    if let Some(path) = json_path {
        let rows: Vec<String> = results
            .iter()
            .map(|r| {
                format!(
                    "{{\"znodes\":{},\"raw_read_s\":{:.6},\"cold_sync_s\":{:.6},\"ratio\":{:.4},\"mirror_cpu_s\":{:.3},\"mirror_peak_rss_mb\":{:.1}}}",
                    r.nodes,
                    r.raw_read.as_secs_f64(),
                    r.cold_sync.as_secs_f64(),
                    r.cold_sync.as_secs_f64() / r.raw_read.as_secs_f64(),
                    r.cpu.as_secs_f64(),
                    r.peak_rss_kib as f64 / 1024.0
                )
            })
            .collect();
        let json = format!(
            "{{\"command\":{:?},\"cores\":{},\"cold_sync\":[{}]}}\n",
            std::env::args().collect::<Vec<_>>().join(" "),
            num_cpus(),
            rows.join(",")
        );
        std::fs::write(&path, json).unwrap_or_else(|e| panic!("writing {path}: {e}"));
        println!("figures written to {path}");
    }
}

async fn cold_sync(nodes: usize) -> ColdSync {
    let zk = ZkServer::start();
    let redis = RedisServer::start();
    let client = Client::connector()
        .with_session_timeout(Duration::from_secs(4))
        .connect(&zk.connect_string())
        .await
        .expect("connect to ZooKeeper");
    let root = "/bench";
    eprintln!("populating {nodes} znodes × {DATA_LEN} bytes, fanout {FANOUT} ...");
    populate(&client, root, nodes).await;

    // The reference: the same client reading the whole tree, pipelined. Best of three.
    let mut raw_read = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let read = raw_walk(&client, root).await;
        raw_read = raw_read.min(started.elapsed());
        assert_eq!(read, nodes, "raw walk read a different tree");
    }

    // zkmirror's cold sync, as a separate process, until it reports `live` in Redis.
    let started = Instant::now();
    let mut mirror = spawn_mirror(&zk.connect_string(), &redis.url(), root);
    let mut conn = redis::Client::open(redis.url().as_str())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis");
    loop {
        let state: Option<String> =
            redis::cmd("HGET").arg("zk:mirror").arg("state").query_async(&mut conn).await.expect("HGET");
        if state.as_deref() == Some("live") {
            break;
        }
        if let Ok(Some(status)) = mirror.try_wait() {
            panic!("the mirror exited early: {status}");
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let cold_sync = started.elapsed();
    let (cpu, peak_rss_kib) = process_usage(mirror.id());
    let report = zkmirror::verify::compare(&client, &mut conn, "zk", root).await.expect("compare");
    assert!(report.is_exact(), "the cold sync did not produce an exact copy: {report}");
    assert_eq!(report.znodes as usize, nodes);
    stop(&mut mirror);
    ColdSync { nodes, raw_read, cold_sync, cpu, peak_rss_kib }
}

/// A complete `FANOUT`-ary tree of `nodes` znodes in breadth-first order: node `i`'s parent is
/// node `(i - 1) / FANOUT`.
async fn populate(client: &Client, root: &str, nodes: usize) {
    let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
    let data = vec![b'v'; DATA_LEN];
    let mut paths: Vec<String> = Vec::with_capacity(nodes);
    paths.push(root.to_owned());
    for i in 1..nodes {
        let parent = &paths[(i - 1) / FANOUT];
        paths.push(format!("{parent}/n{}", (i - 1) % FANOUT));
    }
    // Parents come before children in this order; creating in chunks keeps that true.
    let mut start = 0;
    while start < nodes {
        // A chunk must not contain a node and its parent: cut at the first index whose parent
        // is inside the chunk.
        let mut end = (start + 5000).min(nodes);
        if start > 0 {
            end = end.min(start * FANOUT + 1).max(start + 1);
        } else {
            end = 1;
        }
        let creates: Vec<_> = paths[start..end].iter().map(|p| client.create(p, &data, &options)).collect();
        for (path, result) in paths[start..end].iter().zip(futures::future::join_all(creates).await) {
            result.unwrap_or_else(|e| panic!("creating {path}: {e}"));
        }
        start = end;
    }
}

/// Reads every znode's data and, for inner nodes, its children: the least a copy must read.
async fn raw_walk(client: &Client, root: &str) -> usize {
    let mut stack = vec![root.to_owned()];
    let mut reads = FuturesOrdered::new();
    let mut count = 0;
    loop {
        while reads.len() < 1024 {
            let Some(path) = stack.pop() else { break };
            let data = client.get_data(&path);
            let client = client.clone();
            reads.push_back(async move {
                let (_, stat) = data.await.expect("get_data");
                let children = if stat.num_children > 0 {
                    client.get_children(&path).await.expect("get_children").0
                } else {
                    Vec::new()
                };
                (path, children)
            });
        }
        let Some((path, children)) = reads.next().await else { break };
        count += 1;
        stack.extend(children.into_iter().map(|c| format!("{path}/{c}")));
    }
    count
}

fn spawn_mirror(zk: &str, redis: &str, root: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_zkmirror"))
        .args(["run", "--zk", zk, "--redis", redis, "--root", root])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("start zkmirror")
}

fn stop(child: &mut Child) {
    // SIGTERM: the mirror shuts down cleanly.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
}

/// CPU time (user + system) and peak RSS of a running process, from /proc.
fn process_usage(pid: u32) -> (Duration, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/pid/stat");
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/pid/status");
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    (Duration::from_millis(ticks * 1000 / hz.max(1)), hwm)
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn chrono_free_date() -> String {
    Command::new("date").arg("-u").arg("+%Y-%m-%d").output().ok().map_or_else(
        || "unknown date".into(),
        |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
    )
}

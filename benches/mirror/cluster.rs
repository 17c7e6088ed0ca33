//! Section 8, Redis Cluster: the same tree mirrored into a single redis-server and into a Redis
//! Cluster of 3 primaries (`testkit::cluster`, on this machine, loopback), in the same run,
//! alternately: the cold sync (process start until `live`, then `verify`), and the propagation of
//! single changes (ZooKeeper's acknowledgement of a `setData` until a reader of the target sees the
//! new `mzxid`). Printed as cluster / single ratios, beside the number of cores (3 primaries on
//! fewer cores than 4 share them with ZooKeeper and the mirror: the ratio then shows the cost of
//! the extra hops more than any scaling).
//!
//! The propagation is measured in this process (a paced writer and a polling reader, the same
//! loop for both targets), not with `latency::run_on`: that section's reader is a separate
//! process speaking to one server, and its `FLUSHALL` goes to one server too.

use std::time::{Duration, Instant};

use serde::Serialize;
use zkmirror_testkit::cluster::ClusterSetup;

use crate::support::{self, median, Percentiles, Verdict, PREFIX, ROOT};

#[derive(Clone, Debug, Serialize)]
pub struct Cluster {
    pub znodes: usize,
    pub primaries: usize,
    pub cores: usize,
    pub single_cold_sync_s: Vec<f64>,
    pub cluster_cold_sync_s: Vec<f64>,
    pub single_cold_sync_median_s: f64,
    pub cluster_cold_sync_median_s: f64,
    /// Cluster / single (below 1: the cluster is faster).
    pub cold_sync_ratio: f64,
    pub single_propagation: Percentiles,
    pub cluster_propagation: Percentiles,
    /// p50 and p99, cluster / single.
    pub propagation_p50_ratio: f64,
    pub propagation_p99_ratio: f64,
    pub verified_exact: bool,
}

/// A connection to either target (a cluster's commands go to the node of their slot).
async fn conn(url: &str) -> zkmirror::redis_conn::RedisConn {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    zkmirror::redis_conn::connect_any(url, &Default::default(), None, &config)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// Empties the target: every primary of a cluster.
async fn flush(url: &str, cluster: Option<&ClusterSetup>) {
    match cluster {
        None => {
            let _: () =
                redis::cmd("FLUSHALL").query_async(&mut support::redis_conn(url).await).await.expect("FLUSHALL");
        }
        Some(cluster) => {
            for (port, _, _) in cluster.primaries() {
                let mut node = support::redis_conn(&ClusterSetup::node_url(port)).await;
                let _: () = redis::cmd("FLUSHALL").query_async(&mut node).await.expect("FLUSHALL");
            }
        }
    }
}

/// Until `P:mirror` `state` is `live`; panics after `timeout`.
async fn wait_live(
    conn: &mut zkmirror::redis_conn::RedisConn,
    mirror: &mut zkmirror_testkit::Guarded,
    timeout: Duration,
) {
    let key = format!("{PREFIX}:mirror");
    let started = Instant::now();
    while started.elapsed() < timeout {
        let state: Option<String> = redis::cmd("HGET").arg(&key).arg("state").query_async(conn).await.unwrap_or(None);
        if state.as_deref() == Some("live") {
            return;
        }
        mirror.assert_running();
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    panic!("the mirror did not reach `live` within {timeout:?}");
}

/// One cold sync into the emptied target: seconds until `live`, and whether `verify` found it exact.
async fn cold_sync(zk: &str, url: &str, cluster: Option<&ClusterSetup>, nodes: usize, log_name: &str) -> (f64, bool) {
    flush(url, cluster).await;
    let mut c = conn(url).await;
    let started = Instant::now();
    let mut mirror = support::spawn_mirror(zk, url, log_name);
    wait_live(&mut c, &mut mirror, Duration::from_secs(600)).await;
    let took = started.elapsed().as_secs_f64();
    let client = support::zk_client(zk).await;
    let report = zkmirror::verify::compare(&client, &mut c, PREFIX, ROOT).await.expect("verify::compare");
    mirror.stop();
    (took, report.is_exact() && report.znodes as usize == nodes)
}

/// `changes` single `setData`s on leaves, one at a time, each awaited until the target shows its
/// `mzxid` (polled every 100 µs): acknowledgement → seen, in ns.
async fn propagation(zk: &str, url: &str, nodes: usize, changes: usize, log_name: &str) -> Vec<i64> {
    let mut c = conn(url).await;
    let mut mirror = support::spawn_mirror(zk, url, log_name);
    wait_live(&mut c, &mut mirror, Duration::from_secs(600)).await;
    let client = support::zk_client(zk).await;
    let leaves = support::leaf_paths(nodes);
    let mut rng = support::Rng::new(0x5eed_00c1);
    let mut samples = Vec::with_capacity(changes);
    for i in 0..changes {
        let path = &leaves[rng.below(leaves.len())];
        let stat = client.set_data(path, format!("c{i}").as_bytes(), None).await.expect("set_data");
        let acked = Instant::now();
        let key = format!("{PREFIX}:{{{path}}}:meta");
        loop {
            let mzxid: Option<i64> =
                redis::cmd("HGET").arg(&key).arg("mzxid").query_async(&mut c).await.unwrap_or(None);
            if mzxid.is_some_and(|m| m >= stat.mzxid) {
                break;
            }
            if acked.elapsed() > Duration::from_secs(30) {
                panic!("{path} did not reach Redis within 30 s");
            }
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
        samples.push(acked.elapsed().as_nanos() as i64);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    mirror.stop();
    samples
}

pub async fn run(nodes: usize, runs: usize, changes: usize) -> Cluster {
    let servers = support::Servers::start().await;
    let cluster = tokio::task::block_in_place(ClusterSetup::start);
    let zk = servers.zk.connect_string();
    let single_url = servers.redis.url();
    let cluster_url = cluster.url();
    let client = support::zk_client(&zk).await;
    eprintln!("[cluster] populating {nodes} znodes ...");
    support::populate(&client, nodes).await;
    let mut result = Cluster {
        znodes: nodes,
        primaries: cluster.primaries().len(),
        cores: support::machine().cores,
        single_cold_sync_s: Vec::new(),
        cluster_cold_sync_s: Vec::new(),
        single_cold_sync_median_s: 0.0,
        cluster_cold_sync_median_s: 0.0,
        cold_sync_ratio: 0.0,
        single_propagation: Percentiles::default(),
        cluster_propagation: Percentiles::default(),
        propagation_p50_ratio: 0.0,
        propagation_p99_ratio: 0.0,
        verified_exact: true,
    };
    for run in 1..=runs {
        let (single, exact) = cold_sync(&zk, &single_url, None, nodes, &format!("cluster-single-run{run}")).await;
        result.verified_exact &= exact;
        result.single_cold_sync_s.push(single);
        let (clustered, exact) =
            cold_sync(&zk, &cluster_url, Some(&cluster), nodes, &format!("cluster-cluster-run{run}")).await;
        result.verified_exact &= exact;
        result.cluster_cold_sync_s.push(clustered);
        eprintln!("[cluster] run {run}/{runs}: cold sync single {single:.3} s, cluster {clustered:.3} s");
    }
    result.single_cold_sync_median_s = median(&result.single_cold_sync_s);
    result.cluster_cold_sync_median_s = median(&result.cluster_cold_sync_s);
    result.cold_sync_ratio = result.cluster_cold_sync_median_s / result.single_cold_sync_median_s;
    result.single_propagation =
        Percentiles::of(propagation(&zk, &single_url, nodes, changes, "cluster-single-propagation").await);
    result.cluster_propagation =
        Percentiles::of(propagation(&zk, &cluster_url, nodes, changes, "cluster-cluster-propagation").await);
    result.propagation_p50_ratio = result.cluster_propagation.p50_ms / result.single_propagation.p50_ms;
    result.propagation_p99_ratio = result.cluster_propagation.p99_ms / result.single_propagation.p99_ms;
    result
}

/// Exactness only: the issue asks for the ratios, not a bound on them.
pub fn verdicts(r: &Cluster) -> Vec<Verdict> {
    vec![Verdict::new(
        "cluster: every cold sync ends exact (verify, every primary)",
        "exact",
        if r.verified_exact { "exact" } else { "NOT exact" },
        r.verified_exact,
    )]
}

pub fn print(r: &Cluster, verdicts: &[Verdict]) {
    println!();
    println!(
        "8. Redis Cluster ({} primaries) against one redis-server, same run, {} znodes, {} cores",
        r.primaries, r.znodes, r.cores
    );
    println!("  {:<28} {:>12} {:>12} {:>10}", "", "single", "cluster", "ratio");
    println!(
        "  {:<28} {:>10.3} s {:>10.3} s {:>9.2}×",
        "cold sync (median)", r.single_cold_sync_median_s, r.cluster_cold_sync_median_s, r.cold_sync_ratio
    );
    println!(
        "  {:<28} {:>9.2} ms {:>9.2} ms {:>9.2}×",
        "propagation p50", r.single_propagation.p50_ms, r.cluster_propagation.p50_ms, r.propagation_p50_ratio
    );
    println!(
        "  {:<28} {:>9.2} ms {:>9.2} ms {:>9.2}×",
        "propagation p99", r.single_propagation.p99_ms, r.cluster_propagation.p99_ms, r.propagation_p99_ratio
    );
    for v in verdicts {
        println!("  {} {}: {}", v.mark(), v.what, v.measured);
    }
}

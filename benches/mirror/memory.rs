//! Section 5, memory: the mirror's peak RSS over a cold sync of trees whose size and values
//! differ by orders of magnitude, with the default memory budget (64 MiB). What it holds is
//! bounded in bytes, so the peak should stay flat: 20,000 × 100 B, 200,000 × 100 B and
//! 400 × 1 MB (about 400 MB of values) in one run.

use std::time::{Duration, Instant};

use serde::Serialize;
use zookeeper_client::{Acls, CreateMode};

use crate::support::{self, Servers, Verdict};

/// Values of the large-value tree: just under ZooKeeper's default `jute.maxbuffer`.
const LARGE_VALUE: usize = 1_000_000;
const LARGE_ZNODES: usize = 400;
/// The mirror's default `memory_budget`.
const BUDGET_MB: f64 = 64.0;

#[derive(Clone, Debug, Serialize)]
pub struct MemoryRow {
    pub znodes: usize,
    pub value_bytes: usize,
    pub tree_mb: f64,
    pub cold_sync_s: f64,
    pub mirror_peak_rss_mb: f64,
    pub verified_exact: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Memory {
    pub rows: Vec<MemoryRow>,
    /// Peak RSS of the mirror on a one-znode tree: its baseline.
    pub baseline_rss_mb: f64,
}

/// Creates `count` children of the benchmark root holding `value` bytes each (flat: the
/// large-value tree has no depth to speak of, like a config set of big files).
async fn populate_flat(client: &zookeeper_client::Client, count: usize, value: usize) {
    let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
    client.create(support::ROOT, b"", &options).await.expect("creating the benchmark root");
    let data = vec![b'v'; value];
    let paths: Vec<String> = (0..count).map(|i| format!("{}/big{i:04}", support::ROOT)).collect();
    for chunk in paths.chunks(8) {
        let creates: Vec<_> = chunk.iter().map(|p| client.create(p, &data, &options)).collect();
        for (path, result) in chunk.iter().zip(futures::future::join_all(creates).await) {
            result.unwrap_or_else(|e| panic!("creating {path}: {e}"));
        }
    }
}

/// One cold sync on fresh servers: the tree made by `populate`, then `zkmirror run` until
/// `live`, then its peak RSS.
async fn one(label: &str, znodes: usize, value_bytes: usize) -> MemoryRow {
    let servers = Servers::start().await;
    let client = support::zk_client(&servers.zk.connect_string()).await;
    eprintln!("[memory] {label}: populating ...");
    if value_bytes == support::DATA_LEN && znodes > 1 {
        support::populate(&client, znodes).await;
    } else {
        populate_flat(&client, znodes.saturating_sub(1), value_bytes).await;
    }
    let mut conn = support::redis_conn(&servers.redis.url()).await;
    let started = Instant::now();
    let mut mirror =
        support::spawn_mirror(&servers.zk.connect_string(), &servers.redis.url(), &format!("memory-{label}"));
    support::wait_state(&mut conn, &mut mirror, "live", Duration::from_secs(600))
        .await
        .unwrap_or_else(|| panic!("the mirror did not reach `live` for {label}"));
    let cold = started.elapsed();
    let usage = support::process_usage(mirror.pid());
    let (report, _) = support::verify(&client, &mut conn).await;
    mirror.stop();
    let row = MemoryRow {
        znodes,
        value_bytes,
        tree_mb: (znodes * value_bytes) as f64 / 1e6,
        cold_sync_s: cold.as_secs_f64(),
        mirror_peak_rss_mb: usage.peak_rss_kib as f64 / 1024.0,
        verified_exact: report.is_exact(),
    };
    eprintln!(
        "[memory] {label}: cold sync {:.3} s, peak RSS {:.1} MB, exact {}",
        row.cold_sync_s, row.mirror_peak_rss_mb, row.verified_exact
    );
    row
}

pub async fn run() -> Memory {
    let baseline = one("one-znode", 1, support::DATA_LEN).await;
    let rows = vec![
        one("20k-100B", 20_000, support::DATA_LEN).await,
        one("200k-100B", 200_000, support::DATA_LEN).await,
        one("400-1MB", LARGE_ZNODES + 1, LARGE_VALUE).await,
    ];
    Memory { rows, baseline_rss_mb: baseline.mirror_peak_rss_mb }
}

/// Peak RSS stays within the baseline plus the budget plus the clients' retained socket
/// buffers (8 MiB, see tests/memory.rs), whatever the tree.
pub fn verdicts(m: &Memory) -> Vec<Verdict> {
    let limit = m.baseline_rss_mb + BUDGET_MB + 8.0;
    m.rows
        .iter()
        .map(|r| {
            Verdict::new(
                format!("mirror peak RSS, {} znodes × {} B", r.znodes, r.value_bytes),
                format!("≤ baseline + budget + 8 = {limit:.0} MB, exact"),
                format!("{:.1} MB{}", r.mirror_peak_rss_mb, if r.verified_exact { "" } else { ", NOT exact" }),
                r.mirror_peak_rss_mb <= limit && r.verified_exact,
            )
        })
        .collect()
}

pub fn print(m: &Memory, verdicts: &[Verdict]) {
    println!();
    println!(
        "5. Memory (cold sync, default memory_budget {BUDGET_MB} MiB; baseline on a one-znode tree {:.1} MB)",
        m.baseline_rss_mb
    );
    println!("   | znodes | value | tree | cold sync | mirror peak RSS |");
    println!("   |---|---|---|---|---|");
    for r in &m.rows {
        println!(
            "   | {} | {} B | {:.0} MB | {:.3} s | {:.1} MB |",
            r.znodes, r.value_bytes, r.tree_mb, r.cold_sync_s, r.mirror_peak_rss_mb
        );
    }
    for v in verdicts {
        println!("   {} {}: {} (target {})", v.mark(), v.what, v.measured, v.target);
    }
}

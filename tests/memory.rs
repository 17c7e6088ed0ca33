//! Memory stays within the budget whatever the values' sizes: a cold sync of a tree of 1 MB
//! znodes, measured as the peak resident set of a real `zkmirror run` process.

mod common;

use std::process::{Command, Stdio};

use common::world::{assert_converges, redis_conn, wait_for_field};
use common::{create_all, unique_root, zk_client, RedisServer, ZkServer};
use zookeeper_client::{Acls, CreateMode};

/// Znodes of [`VALUE`] bytes: together more than twice the budget (and little enough for the
/// test ZooKeeper's 256 MB heap, which also serves a verify of them).
const ZNODES: usize = 40;
/// Just under ZooKeeper's default `jute.maxbuffer` (0xfffff).
const VALUE: usize = 1_000_000;

/// The peak resident set (`VmHWM`) of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc/PID/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_sync_of_one_megabyte_values_stays_within_the_memory_budget() {
    let zk = ZkServer::shared();
    let redis = RedisServer::start();
    let client = zk_client(&zk.connect_string()).await;
    let root = unique_root("memory");
    create_all(&client, &root, b"").await;
    let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
    let value = vec![b'v'; VALUE];
    let paths: Vec<String> = (0..ZNODES).map(|i| format!("{root}/big{i}")).collect();
    for chunk in paths.chunks(8) {
        let creates: Vec<_> = chunk.iter().map(|path| client.create(path, &value, &options)).collect();
        for result in futures::future::join_all(creates).await {
            result.expect("creating a 1 MB znode");
        }
    }

    let small = unique_root("memory-small");
    create_all(&client, &format!("{small}/tiny"), b"x").await;
    let baseline = cold_sync_peak(&client, zk, &redis, &small, &[]).await;
    let peak = cold_sync_peak(&client, zk, &redis, &root, &[]).await;
    let budget: u64 = 16 << 20;
    let tree = (ZNODES * VALUE) as u64;
    // What the process holds for the tree, above its own baseline (runtime, clients, code,
    // measured on a one-znode tree), stays within the budget instead of growing with the tree.
    // Beyond the budget's account: the capacity the two clients' socket buffers keep after
    // their largest request or pipeline (measured: 3–6 MiB at budgets of 8, 16 and 32 MiB).
    let retained_buffers: u64 = 8 << 20;
    assert!(
        peak.saturating_sub(baseline) <= budget + retained_buffers,
        "peak RSS {} MiB (baseline {} MiB) for a {} MiB tree with a {} MiB budget",
        peak >> 20,
        baseline >> 20,
        tree >> 20,
        budget >> 20
    );
}

/// A `--max-znode-size` set far below what the tree holds (16 KiB for znodes of 150 KB) lets
/// the walk send hundreds of reads at once. The first larger znode a read returns raises what
/// every later read is charged, so the reads in flight below it stay within the budget: the
/// parents are read first, and their 300 children are then read at the raised charge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_znode_above_max_znode_size_raises_the_charge_and_memory_stays_within_the_budget() {
    const PARENTS: usize = 10;
    const CHILDREN: usize = 30;
    const LARGE: usize = 150_000;
    // A server of its own: the test servers' heap is 256 MB, and ZooKeeper keeps the last 500
    // writes whole in its commit log besides the tree, so this 46 MB tree and the other test's
    // 40 MB one together exhaust a shared server (seen: OutOfMemoryError under `cargo test`).
    let zk = &ZkServer::start();
    let redis = RedisServer::start();
    let client = zk_client(&zk.connect_string()).await;
    let root = unique_root("memory-charge");
    create_all(&client, &root, b"").await;
    let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
    let value = vec![b'w'; LARGE];
    for p in 0..PARENTS {
        let parent = format!("{root}/p{p}");
        client.create(&parent, &value, &options).await.expect("creating a parent");
        let paths: Vec<String> = (0..CHILDREN).map(|c| format!("{parent}/c{c}")).collect();
        let creates: Vec<_> = paths.iter().map(|path| client.create(path, &value, &options)).collect();
        for result in futures::future::join_all(creates).await {
            result.expect("creating a 150 KB znode");
        }
    }
    let small = unique_root("memory-charge-small");
    create_all(&client, &format!("{small}/tiny"), b"x").await;
    let low_charge = ["--max-znode-size", "16KiB"];
    let baseline = cold_sync_peak(&client, zk, &redis, &small, &low_charge).await;
    let peak = cold_sync_peak(&client, zk, &redis, &root, &low_charge).await;
    let budget: u64 = 16 << 20;
    let tree = (PARENTS * (CHILDREN + 1) * LARGE) as u64;
    // As above: the budget, plus the capacity the clients' socket buffers keep. Charged 16 KiB
    // a read, the 300 children would all be in flight at once: 45 MB.
    let retained_buffers: u64 = 8 << 20;
    eprintln!("peak RSS {} KiB, baseline {} KiB", peak >> 10, baseline >> 10);
    assert!(
        peak.saturating_sub(baseline) <= budget + retained_buffers,
        "peak RSS {} MiB (baseline {} MiB) for a {} MiB tree with a {} MiB budget and reads first charged 16 KiB",
        peak >> 20,
        baseline >> 20,
        tree >> 20,
        budget >> 20
    );
}

/// Runs `zkmirror run --memory-budget 16MiB` (and `extra` arguments) on `root` until its cold
/// sync is done and Redis is exact; returns its peak RSS, and stops it.
async fn cold_sync_peak(
    client: &zookeeper_client::Client,
    zk: &ZkServer,
    redis: &RedisServer,
    root: &str,
    extra: &[&str],
) -> u64 {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zkmirror"))
        .args(["run", "--zk", &zk.connect_string(), "--redis", &redis.url(), "--root", root])
        .args(["--memory-budget", "16MiB"])
        .args(extra)
        .env_remove("ZKMIRROR_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting zkmirror run");
    let pid = child.id();
    let conn = redis_conn(&redis.url()).await;
    // `live` is written once the cold sync (first walk and its sweep) is done.
    wait_for_field(&conn, "zk:mirror", "state", "live").await;
    assert_converges(client, &redis.url(), "zk", root).await;
    let peak = peak_rss(pid);
    // SAFETY: `pid` is our own child, still running (it is waited for just below).
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().expect("waiting for zkmirror");
    assert!(status.success(), "zkmirror run exited with {status}");
    peak
}

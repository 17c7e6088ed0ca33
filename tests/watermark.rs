//! `P:mirror` `zxid` is a watermark: every change under the root with a zxid at or below it is
//! in Redis, under continuous load and not only once ZooKeeper is quiet. This is what a reader
//! that wants to read its own writes stands on.

mod common;

use std::sync::{Arc, Mutex};

use common::world::{assert_converges, redis_conn, test_config, RunningMirror};
use common::{create_all, unique_root, zk_client, RedisServer, ZkServer};
use zkmirror::Phase;

/// Enough leaves that the mirror falls behind into a backlog (several reads in flight, replies
/// arriving while earlier-marked paths are still unread), which is where a watermark taken from
/// the writes of one pipeline would claim too much.
const LEAVES: usize = 1000;
const WRITERS: usize = 4;
const WRITES_PER_WRITER: usize = 3000;
/// setData requests each writer keeps in flight.
const WRITER_DEPTH: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_write_at_or_below_the_watermark_is_ever_missing_from_redis() {
    let zk = ZkServer::shared();
    let redis = RedisServer::start();
    let setup = zk_client(&zk.connect_string()).await;
    let root = unique_root("watermark");
    let leaves: Vec<String> = (0..LEAVES).map(|i| format!("{root}/leaf{i}")).collect();
    for leaf in &leaves {
        create_all(&setup, leaf, b"0").await;
    }
    let mirror = RunningMirror::start(test_config(&zk.connect_string(), &redis.url(), &root));
    mirror.wait_for_phase(Phase::Live).await;

    // Writers, each with its own session, set the leaves in turn (many requests in flight)
    // and log each write's zxid once ZooKeeper acknowledged it.
    let log: Arc<Mutex<Vec<(usize, i64)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (client, leaves, log) = (zk_client(&zk.connect_string()).await, leaves.clone(), log.clone());
        writers.push(tokio::spawn(async move {
            for round in 0..WRITES_PER_WRITER / WRITER_DEPTH {
                let picks: Vec<usize> = (0..WRITER_DEPTH).map(|i| (round * 7919 + i * 131 + w * 17) % LEAVES).collect();
                let sets: Vec<_> = picks.iter().map(|&leaf| client.set_data(&leaves[leaf], b"v", None)).collect();
                let stats = futures::future::join_all(sets).await;
                let mut log = log.lock().expect("log");
                for (leaf, stat) in picks.into_iter().zip(stats) {
                    log.push((leaf, stat.expect("set_data").mzxid));
                }
            }
        }));
    }

    // The reader: the watermark first, then every leaf's stored mzxid (values only grow, so
    // reading them after the watermark is sound), then the log.
    let mut conn = redis_conn(&redis.url()).await;
    let (mut samples, mut missing, mut rounds_under_load) = (0u64, Vec::new(), 0u64);
    while !writers.iter().all(|w| w.is_finished()) {
        let watermark: Option<i64> =
            redis::cmd("HGET").arg("zk:mirror").arg("zxid").query_async(&mut conn).await.unwrap();
        let Some(watermark) = watermark else { continue };
        let mut pipe = redis::pipe();
        for leaf in &leaves {
            pipe.cmd("HGET").arg(format!("zk:{{{leaf}}}:meta")).arg("mzxid");
        }
        let stored: Vec<Option<i64>> = pipe.query_async(&mut conn).await.unwrap();
        let log = log.lock().expect("log").clone();
        let mut claimed_any = false;
        for (leaf, zxid) in log.iter().filter(|(_, zxid)| *zxid <= watermark) {
            samples += 1;
            claimed_any = true;
            if stored[*leaf].unwrap_or(0) < *zxid {
                missing.push((leaves[*leaf].clone(), *zxid, watermark, stored[*leaf]));
            }
        }
        if claimed_any && log.len() < WRITERS * WRITES_PER_WRITER {
            rounds_under_load += 1;
        }
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    assert_converges(&setup, &redis.url(), "zk", &root).await;
    assert!(
        missing.is_empty(),
        "{} of {samples} writes at or below the watermark were missing: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // A watermark that never moved would pass the check above trivially.
    assert!(rounds_under_load >= 10, "the watermark claimed writes in only {rounds_under_load} rounds under load");
    mirror.stop().await;
}

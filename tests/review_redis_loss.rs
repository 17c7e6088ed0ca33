//! Adversarial review: Redis losing the mirror's keys while changes keep coming, against real
//! ZooKeeper and Redis.
//! It failed before advance_zxid.lua stopped recreating a flushed status hash (commit 5455a06
//! has it as an ignored, failing test).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::world::{create_tree, redis_conn, test_config, RunningMirror, CONVERGE};
use common::{create_all, unique_root, wait_until, zk_client, RedisServer, ZkServer};
use zkmirror::Phase;

/// Loss detector (defect 16 of issue 10) defeated under load. The status hash `P:mirror` is
/// the detector: absent at a heartbeat means Redis lost the keys. But `advance_zxid.lua` (sent
/// with nearly every pipeline while changes arrive) does `HSET P:mirror zxid W`, which
/// re-creates the hash after a `FLUSHALL`. The next heartbeat's `status.lua` then finds it and
/// answers "existed": no resync. Redis stays without the untouched znodes until the
/// anti-entropy pass (an hour away here; 30–150 s by default), while `P:mirror` `zxid` claims
/// everything up to the latest change is in.
///
/// Interleaving: FLUSHALL → pipeline [put /hot, advance_zxid W] re-creates `P:mirror` →
/// heartbeat `status.lua` EXISTS = 1 → no RedisLost walk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_under_load_is_noticed_and_refilled() {
    let zk = ZkServer::shared();
    let redis = RedisServer::start();
    let client = Arc::new(zk_client(&zk.connect_string()).await);
    let root = unique_root("flush-under-load");
    create_all(&client, &root, b"r").await;
    create_tree(&client, &root, 10, 2, 10).await;
    let hot = format!("{root}/hot");
    create_all(&client, &hot, b"0").await;
    let still = format!("{root}/n3/n7");

    let mirror = RunningMirror::start(test_config(&zk.connect_string(), &redis.url(), &root));
    mirror.wait_for_phase(Phase::Live).await;
    let mut conn = redis_conn(&redis.url()).await;
    let data_key = format!("zk:{{{still}}}");
    wait_until(CONVERGE, "the untouched znode is in Redis", || {
        let mut conn = conn.clone();
        let key = data_key.clone();
        async move {
            let n: u64 = redis::cmd("EXISTS").arg(&key).query_async(&mut conn).await.map_err(|e| e.to_string())?;
            if n == 1 {
                Ok(())
            } else {
                Err("absent".to_owned())
            }
        }
    })
    .await;

    // A steady stream of changes to one znode: every few ms a pipeline with a new watermark.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, hot, stop) = (client.clone(), hot.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let _ = client.set_data(&hot, i.to_string().as_bytes(), None).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.expect("FLUSHALL");

    // Heartbeats are every 200 ms: 15 s is 75 of them. A noticed loss refills the tree in well
    // under a second here (111 znodes).
    let mut false_claims = 0;
    let mut back = false;
    for _ in 0..150 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (exists, zxid): (u64, Option<String>) = redis::pipe()
            .atomic()
            .cmd("EXISTS")
            .arg(&data_key)
            .cmd("HGET")
            .arg("zk:mirror")
            .arg("zxid")
            .query_async(&mut conn)
            .await
            .expect("EXISTS + HGET");
        if exists == 1 {
            back = true;
            break;
        }
        if zxid.is_some() {
            false_claims += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = writer.await;
    mirror.stop().await;
    assert!(
        back,
        "{still} not back 15 s after FLUSHALL (the loss was never noticed); meanwhile P:mirror claimed a zxid \
         above its creation in {false_claims} of 150 samples"
    );
}

//! ZooKeeper restored from a backup (defect 13 of issue 10), against real servers: every zxid
//! of the restored ZooKeeper is below what Redis holds, so the scripts refused every write for
//! ever. The mirror must see that ZooKeeper's history went back, say so in `P:mirror`, and
//! rebuild the copy under a new history (`epoch`) until Redis is exact again.

mod common;

use common::world::{assert_converges, create_tree, hget, redis_conn, stored_mzxid, test_config, RunningMirror};
use common::{copy_dir, create_all, wait_until, zk_client, RedisServer, ZkServer};
use zkmirror::Phase;
use zookeeper_client::{Acls, CreateMode};

/// Stops ZooKeeper (SIGKILL: acknowledged writes are in its transaction log) and puts the
/// contents of `from` in place of its dataDir, then starts it again on the same port.
fn restart_from(zk: &mut ZkServer, from: &std::path::Path) {
    zk.stop();
    let data = zk.data_dir();
    std::fs::remove_dir_all(&data).unwrap_or_else(|e| panic!("removing {}: {e}", data.display()));
    copy_dir(from, &data);
    zk.restart();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zookeeper_restored_from_a_backup_is_detected_and_mirrored_again() {
    let mut zk = ZkServer::start();
    let redis = RedisServer::start();
    let root = "/restore".to_owned();
    let leaves: Vec<String> = (0..6).map(|i| format!("{root}/leaf{i}")).collect();
    {
        let client = zk_client(&zk.connect_string()).await;
        for leaf in &leaves {
            create_all(&client, leaf, b"backup").await;
        }
        create_tree(&client, &format!("{root}/leaf0"), 3, 2, 8).await;
    }

    // The backup: a copy of the dataDir of a stopped server.
    zk.stop();
    let backup = tempfile::tempdir().expect("a temp dir for the backup");
    copy_dir(&zk.data_dir(), backup.path());
    zk.restart();

    let client = zk_client(&zk.connect_string()).await;
    let config = test_config(&zk.connect_string(), &redis.url(), &root);
    let mirror = RunningMirror::start(config);
    mirror.wait_for_phase(Phase::Live).await;
    assert_converges(&client, &redis.url(), "zk", &root).await;

    // Many changes after the backup, so that Redis ends well past it: sets, a new subtree,
    // deletes (of a leaf and of a whole subtree).
    let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
    let mut last = 0;
    for round in 0..40 {
        for leaf in &leaves[1..4] {
            let stat = client.set_data(leaf, format!("after-{round}").as_bytes(), None).await.expect("set_data");
            last = stat.mzxid;
        }
    }
    client.create(&format!("{root}/later"), b"later", &options).await.expect("create later");
    create_tree(&client, &format!("{root}/later"), 4, 2, 8).await;
    for i in 0..3 {
        for j in 0..3 {
            client.delete(&format!("{root}/leaf0/n{i}/n{j}"), None).await.expect("delete grandchild");
        }
        client.delete(&format!("{root}/leaf0/n{i}"), None).await.expect("delete child");
    }
    client.delete(&leaves[5], None).await.expect("delete leaf5");
    assert_converges(&client, &redis.url(), "zk", &root).await;
    let conn = redis_conn(&redis.url()).await;
    wait_until(common::world::CONVERGE, "the watermark passes the last change", || async {
        match hget(&conn, "zk:mirror", "zxid").await.and_then(|z| z.parse::<i64>().ok()) {
            Some(z) if z >= last => Ok(()),
            other => Err(format!("zxid {other:?}, last change {last}")),
        }
    })
    .await;
    drop(client);

    // ZooKeeper goes back to the backup, on the same port, and takes a few changes there.
    restart_from(&mut zk, backup.path());
    let client = zk_client(&zk.connect_string()).await;
    client.set_data(&leaves[1], b"restored", None).await.expect("set_data after the restore");
    client.create(&format!("{root}/born-after-restore"), b"new", &options).await.expect("create after the restore");
    client.delete(&leaves[4], None).await.expect("delete after the restore");

    assert_converges(&client, &redis.url(), "zk", &root).await;
    let epoch = hget(&conn, "zk:mirror", "epoch").await;
    assert_eq!(epoch.as_deref(), Some("1"), "P:mirror epoch: the restore starts history 1");
    let reset = hget(&conn, "zk:mirror", "history_reset_at").await;
    assert!(reset.is_some(), "P:mirror names no history reset");
    let from: i64 =
        hget(&conn, "zk:mirror", "history_reset_redis_zxid").await.and_then(|z| z.parse().ok()).unwrap_or(0);
    assert!(from >= last, "the reset names Redis's zxid {from}, below the last change before the restore {last}");

    // And the mirror goes on mirroring the new history.
    let stat = client.set_data(&leaves[2], b"later still", None).await.expect("set_data");
    let mut conn2 = conn.clone();
    wait_until(common::world::CONVERGE, "a change after the restore is mirrored", || {
        let mut conn = conn2.clone();
        let leaf = leaves[2].clone();
        async move {
            match stored_mzxid(&mut conn, "zk", &leaf).await {
                Some(m) if m == stat.mzxid => Ok(()),
                other => Err(format!("stored mzxid {other:?}, want {}", stat.mzxid)),
            }
        }
    })
    .await;
    let data: Option<Vec<u8>> =
        redis::cmd("GET").arg(format!("zk:{{{}}}", leaves[2])).query_async(&mut conn2).await.expect("GET");
    assert_eq!(data.as_deref(), Some(&b"later still"[..]));
    mirror.stop().await;
}

/// The same restore, but seen late: the mirror is down while the restored ZooKeeper takes more
/// changes than it lost, so its zxids pass Redis's claim again and only the refused writes
/// tell (they are older than the old history's versions of the same znodes). Their paths, re-read
/// from Redis, then from a synced ZooKeeper, prove it: Redis holds versions ZooKeeper no longer has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_seen_after_zookeeper_passed_the_old_claim_is_detected_by_its_refused_writes() {
    let mut zk = ZkServer::start();
    let redis = RedisServer::start();
    let root = "/restore-late".to_owned();
    let leaves: Vec<String> = (0..4).map(|i| format!("{root}/leaf{i}")).collect();
    {
        let client = zk_client(&zk.connect_string()).await;
        for leaf in &leaves {
            create_all(&client, leaf, b"backup").await;
        }
    }
    zk.stop();
    let backup = tempfile::tempdir().expect("a temp dir for the backup");
    copy_dir(&zk.data_dir(), backup.path());
    zk.restart();

    let client = zk_client(&zk.connect_string()).await;
    let config = test_config(&zk.connect_string(), &redis.url(), &root);
    let mirror = RunningMirror::start(config.clone());
    mirror.wait_for_phase(Phase::Live).await;
    let mut last = 0;
    for round in 0..30 {
        for leaf in &leaves[1..] {
            last = client.set_data(leaf, format!("old-{round}").as_bytes(), None).await.expect("set_data").mzxid;
        }
    }
    assert_converges(&client, &redis.url(), "zk", &root).await;
    let conn = redis_conn(&redis.url()).await;
    wait_until(common::world::CONVERGE, "the watermark passes the last change", || async {
        match hget(&conn, "zk:mirror", "zxid").await.and_then(|z| z.parse::<i64>().ok()) {
            Some(z) if z >= last => Ok(()),
            other => Err(format!("zxid {other:?}, last change {last}")),
        }
    })
    .await;
    mirror.kill().await;
    drop(client);

    // Restored, and busy on one leaf until its zxids are past everything Redis claims.
    restart_from(&mut zk, backup.path());
    let client = zk_client(&zk.connect_string()).await;
    let mut now = 0;
    let mut round = 0;
    while now <= last + 10 {
        now = client.set_data(&leaves[0], format!("new-{round}").as_bytes(), None).await.expect("set_data").mzxid;
        round += 1;
    }
    client.set_data(&leaves[2], b"new history", None).await.expect("set_data");

    let mirror = RunningMirror::start(config);
    assert_converges(&client, &redis.url(), "zk", &root).await;
    assert_eq!(hget(&conn, "zk:mirror", "epoch").await.as_deref(), Some("1"));
    assert!(hget(&conn, "zk:mirror", "history_reset_at").await.is_some(), "P:mirror names no history reset");
    mirror.stop().await;
}

//! The chaos suite (issue 12): each scenario runs a steady random load on the subtree while a
//! reader polls the copy in a tight loop, breaks something, and ends with the full exact-match
//! check. In every scenario no read may see a znode's `mzxid` go backwards or its data and meta
//! disagree, and the change stream may hold no entry out of order for any one path. Blank reads
//! are allowed only where Redis itself lost its data.
//!
//! The scenarios that need an election run `zkmirror run --ha` processes in `tests/ha.rs`:
//! kill -9 then SIGSTOP of the leader under load (1, 2), three instances at once then two
//! killed (6), the leader's ZooKeeper link cut briefly and long (4). The zombie's held pipeline (3)
//! is in `tests/fence.rs`. Here: the servers restarted under a fenced leader (5).

mod common;

use std::time::Duration;

use common::chaos::{stream_disorder, Load, Reader};
use common::world::{assert_converges, redis_conn, test_config, RunningMirror};
use common::{create_all, unique_root, zk_client, RedisServer, ZkServer};
use zkmirror::{Leadership, Phase};

/// Load before, during and after each break: long enough for a few hundred changes.
const LOAD_SPELL: Duration = Duration::from_secs(2);

/// Scenario 5: ZooKeeper restarted under load, then redis-server restarted empty under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_restarted_under_load_end_exact_with_nothing_backwards() {
    let mut zk = ZkServer::start();
    let mut redis = RedisServer::start();
    let root = unique_root("chaos-restarts");
    let setup = zk_client(&zk.connect_string()).await;
    create_all(&setup, &format!("{root}/k0"), b"seed").await;
    drop(setup);

    let mut config = test_config(&zk.connect_string(), &redis.url(), &root);
    config.leadership = Some(Leadership { instance: "chaos".into(), since_ms: 1, fence: 1 });
    let mirror = RunningMirror::start(config);
    mirror.wait_for_phase(Phase::Live).await;
    let load = Load::start(&zk.connect_string(), &root, 5);
    let reader = Reader::start(&redis.url(), "zk", &root);
    tokio::time::sleep(LOAD_SPELL).await;

    // ZooKeeper restarts (sessions survive a short restart; the mirror reconnects and
    // reconciles), the load goes on.
    zk.restart();
    tokio::time::sleep(LOAD_SPELL).await;

    // Redis comes back empty: readers see blanks until the resync, and must see nothing
    // backwards afterwards. The reader's memory of versions goes with the lost data.
    let before_loss = reader.stop().await;
    redis.restart();
    let reader = Reader::start(&redis.url(), "zk", &root);
    tokio::time::sleep(LOAD_SPELL).await;

    let load = load.stop().await;
    let client = zk_client(&zk.connect_string()).await;
    let report = assert_converges(&client, &redis.url(), "zk", &root).await;
    let after_loss = reader.stop().await;
    let mut conn = redis_conn(&redis.url()).await;
    let disorder = stream_disorder(&mut conn, "zk").await;

    assert!(load.applied > 100, "the load hardly ran: {load:?}");
    assert!(before_loss.reads > 100 && after_loss.reads > 100, "the reader hardly read");
    for (what, seen) in [("before Redis lost its data", &before_loss), ("after", &after_loss)] {
        assert!(seen.backwards.is_empty(), "{what}: mzxid went backwards: {:?}", seen.backwards);
        assert!(seen.torn.is_empty(), "{what}: data and meta disagreed: {:?}", seen.torn);
    }
    assert!(disorder.is_empty(), "change stream out of order: {disorder:?}");
    assert!(report.is_exact());
    mirror.stop().await;
}

/// The reader's checks can fail: a version set back by hand and a data key whose meta does
/// not match are both reported, and so is a stream entry out of order.
#[tokio::test]
async fn the_reader_reports_a_version_going_backwards_a_torn_pair_and_stream_disorder() {
    let redis = RedisServer::start();
    let mut conn = redis_conn(&redis.url()).await;
    let root = "/chaos-self-test";
    let (data, meta) = (format!("zk:{{{root}/k0}}"), format!("zk:{{{root}/k0}}:meta"));
    let set = |mzxid: i64, value: &'static str| {
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("SET").arg(&data).arg(value).cmd("HSET").arg(&meta).arg("mzxid").arg(mzxid);
        pipe.cmd("HSET").arg(&meta).arg("data_length").arg(value.len());
        pipe
    };
    let _: () = set(20, "new").query_async(&mut conn).await.unwrap();
    let reader = Reader::start(&redis.url(), "zk", root);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _: () = set(10, "old").query_async(&mut conn).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _: () = redis::cmd("SET").arg(&data).arg("longer than its meta says").query_async(&mut conn).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = reader.stop().await;
    assert!(seen.backwards.iter().any(|(_, before, now)| (*before, *now) == (20, 10)), "{seen:?}");
    assert!(!seen.torn.is_empty(), "{seen:?}");

    for (mzxid, op) in [("5", "put"), ("7", "del"), ("7", "put")] {
        let _: String = redis::cmd("XADD")
            .arg("zk:changes")
            .arg("*")
            .arg("op")
            .arg(op)
            .arg("path")
            .arg("/x")
            .arg("mzxid")
            .arg(mzxid)
            .arg("reason")
            .arg("delete")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    assert_eq!(stream_disorder(&mut conn, "zk").await.len(), 1, "a put of the deleted version is disorder");
}

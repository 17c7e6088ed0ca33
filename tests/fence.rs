//! The fence: a deposed leader's writes are refused by Redis itself, whatever it holds or sends
//! late. Against a real redis-server (and ZooKeeper for the mirrors); see `schema/layout.md`,
//! "Several mirrors: the fence".

mod common;

use std::time::Duration;

use common::world::{assert_converges, hget, redis_conn, test_config, wait_for_field, znode, RunningMirror};
use common::{create_all, unique_root, wait_until, zk_client, RedisServer, TcpProxy, ZkServer};
use zkmirror::testing::{Refusal, Store, Write, WriteOutcome, ZnodeStat};
use zkmirror::{Leadership, MirrorConfig, MirrorError, Phase, StoreError};

fn leader(fence: i64) -> Option<Leadership> {
    Some(Leadership { instance: format!("instance-{fence}"), since_ms: 1, fence })
}

fn store(redis: &RedisServer, fence: Option<i64>) -> Store {
    let mut config = MirrorConfig::new("127.0.0.1:1", redis.url(), "/app");
    config.leadership = fence.and_then(leader);
    Store::new(&config).expect("store")
}

async fn get(store: &Store, key: &str) -> Option<String> {
    redis::from_redis_value(store.query(redis::cmd("GET").arg(key)).await.expect("GET")).expect("string")
}

async fn dbsize(store: &Store) -> i64 {
    redis::from_redis_value(store.query(&redis::cmd("DBSIZE")).await.expect("DBSIZE")).expect("int")
}

fn fenced(outcome: &WriteOutcome) -> Option<i64> {
    match outcome {
        WriteOutcome::Refused(Refusal::Fenced { seen }) => Some(*seen),
        _ => None,
    }
}

#[tokio::test]
async fn every_script_refuses_a_deposed_leaders_token_and_writes_nothing() {
    let redis = RedisServer::start();
    let old = store(&redis, Some(10));
    let new = store(&redis, Some(20));
    old.load_scripts().await.unwrap();
    old.publish_fence().await.expect("the first leader publishes");
    let writes = vec![Write::Put(znode("/app", "old", 5, 5)), Write::Put(znode("/app/gone", "x", 6, 6))];
    old.apply(&writes, None, 1, None, 0).await.expect("the first leader writes");
    old.write_status(&[("state", "live".into())]).await.expect("status");

    new.publish_fence().await.expect("the newer leader publishes");
    let keys_before = dbsize(&new).await;

    // Every write of the old leader, of every kind, refused with the newer token named.
    let stat = ZnodeStat { czxid: 6, mzxid: 6, pzxid: 6, ..ZnodeStat::default() };
    let late = vec![
        Write::Put(znode("/app", "stale", 5, 9)),
        Write::Put(znode("/app/new", "x", 7, 7)),
        Write::Delete { path: "/app/gone".into(), tomb_zxid: Some(8) },
        Write::Hide { path: "/app/gone".into(), stat },
        Write::Exclude { path: "/app/gone".into() },
    ];
    let applied = old.apply(&late, None, 2, None, 0).await.expect("the pipeline is answered");
    assert_eq!(applied.outcomes.iter().map(fenced).collect::<Vec<_>>(), vec![Some(20); 5], "{applied:?}");
    // The watermark and the status too: the whole call fails as fenced.
    match old.apply(&[], Some(99), 3, None, 0).await {
        Err(StoreError::Fenced { fence: 10, seen: 20, .. }) => {}
        other => panic!("advance_zxid of a deposed leader: {other:?}"),
    }
    match old.write_status(&[("state", "live".into())]).await {
        Err(StoreError::Fenced { fence: 10, seen: 20, key, .. }) => assert!(key.starts_with("zk:fence:{"), "{key}"),
        other => panic!("status of a deposed leader: {other:?}"),
    }
    match old.write_aggregate_status(&[("state", "stopped".into())]).await {
        Err(StoreError::Fenced { fence: 10, seen: 20, .. }) => {}
        other => panic!("the aggregate status of a deposed leader: {other:?}"),
    }
    match old.purge("/app").await {
        Err(StoreError::Fenced { fence: 10, seen: 20, .. }) => {}
        other => panic!("a deposed leader's purge of a removed root: {other:?}"),
    }
    match old.publish_fence().await {
        Err(StoreError::Fenced { fence: 10, seen: 20, .. }) => {}
        other => panic!("a deposed leader publishing again: {other:?}"),
    }
    assert_eq!(get(&new, "zk:{/app}").await.as_deref(), Some("old"), "the refused put was written");
    assert_eq!(get(&new, "zk:{/app/gone}").await.as_deref(), Some("x"), "the refused delete was applied");
    assert_eq!(dbsize(&new).await, keys_before, "a refused script wrote a key");

    // The newer leader writes; a mirror run without an election is not fenced at all.
    let applied = new.apply(&[Write::Put(znode("/app", "new", 5, 9))], None, 4, None, 0).await.unwrap();
    assert_eq!(applied.outcomes, vec![WriteOutcome::Written]);
    let lone = store(&redis, None);
    let applied = lone.apply(&[Write::Put(znode("/app", "lone", 5, 10))], None, 5, None, 0).await.unwrap();
    assert_eq!(applied.outcomes, vec![WriteOutcome::Written]);
}

/// A Redis that lost everything lost the fence too. The next leader's writes raise the fence of
/// each slot they write, so an older token is refused there even before a publish.
#[tokio::test]
async fn a_write_raises_its_slots_fence() {
    let redis = RedisServer::start();
    let old = store(&redis, Some(10));
    let new = store(&redis, Some(20));
    new.load_scripts().await.unwrap();
    new.apply(&[Write::Put(znode("/app/a", "new", 5, 9))], None, 1, None, 0).await.unwrap();
    let applied = old.apply(&[Write::Put(znode("/app/a", "old", 5, 12))], None, 2, None, 0).await.unwrap();
    assert_eq!(applied.outcomes.iter().map(fenced).collect::<Vec<_>>(), vec![Some(20)]);
    assert_eq!(get(&new, "zk:{/app/a}").await.as_deref(), Some("new"));
}

/// Chaos scenario 3 of issue 12: a zombie's stale pipeline. Leader A's traffic to Redis is held
/// in a proxy (a pause, a path stuck in retransmission) while it sends a batch read before the
/// takeover; leader B takes over and writes newer data; then A's held batch reaches Redis. It
/// must be refused, A must stop by itself with `Deposed`, and Redis must stay B's exact copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_leaders_held_pipeline_is_refused_after_a_takeover() {
    let zk = ZkServer::shared();
    let redis = RedisServer::start();
    let client = zk_client(&zk.connect_string()).await;
    let root = unique_root("fence-zombie");
    create_all(&client, &format!("{root}/k"), b"v0").await;
    create_all(&client, &format!("{root}/doomed/child"), b"d").await;
    let proxy = TcpProxy::start(redis.addr());

    let mut config_a = test_config(&zk.connect_string(), &format!("redis://{}/", proxy.addr()), &root);
    config_a.leadership = leader(100);
    let a = RunningMirror::start(config_a);
    a.wait_for_phase(Phase::Live).await;
    let conn = redis_conn(&redis.url()).await;
    wait_for_field(&conn, "zk:mirror", "leader", "instance-100").await;

    // A's traffic stops at the proxy; what it reads of these changes waits there.
    let reads_before = a.handle.status().reads;
    proxy.hold();
    client.set_data(&format!("{root}/k"), b"v1", None).await.unwrap();
    client.delete(&format!("{root}/doomed/child"), None).await.unwrap();
    client.delete(&format!("{root}/doomed"), None).await.unwrap();
    // A has read the changes and sent its batch into the held proxy: its last read is done.
    wait_until(Duration::from_secs(30), "A read the changes", || {
        let handle = a.handle.clone();
        async move { (handle.status().reads >= reads_before + 3).then_some(()).ok_or("not yet") }
    })
    .await;

    // B takes over with a higher token and writes newer data than A holds.
    let mut config_b = test_config(&zk.connect_string(), &redis.url(), &root);
    config_b.leadership = leader(200);
    let b = RunningMirror::start(config_b);
    b.wait_for_phase(Phase::Live).await;
    client.set_data(&format!("{root}/k"), b"v2", None).await.unwrap();
    create_all(&client, &format!("{root}/doomed"), b"reborn").await;
    assert_converges(&client, &redis.url(), "zk", &root).await;

    // A's stale batch arrives now.
    proxy.release();
    match a.finished().await {
        Err(MirrorError::Deposed { fence: 100, seen: 200, .. }) => {}
        other => panic!("the zombie leader did not step down: {other:?}"),
    }
    let report = assert_converges(&client, &redis.url(), "zk", &root).await;
    assert!(report.is_exact());
    let k: Option<String> =
        redis::cmd("GET").arg(format!("zk:{{{root}/k}}")).query_async(&mut conn.clone()).await.unwrap();
    assert_eq!(k.as_deref(), Some("v2"));
    assert_eq!(hget(&conn, "zk:mirror", "fence").await.as_deref(), Some("200"));
    assert_eq!(hget(&conn, "zk:mirror", "leader").await.as_deref(), Some("instance-200"));
    b.stop().await;
}

/// `append.lua`, the change-stream append a Redis Cluster needs (the stream lies in another slot
/// than the znode): a deposed leader's late entry is refused in the stream's own slot, with
/// nothing appended, and the current leader's goes in. On one redis-server, where the script is
/// the same as on a cluster node.
#[tokio::test]
async fn a_deposed_leaders_late_stream_entry_is_refused() {
    let redis = RedisServer::start();
    let old = store(&redis, Some(10));
    let new = store(&redis, Some(20));
    old.load_scripts().await.unwrap();
    new.publish_fence().await.expect("the newer leader publishes");
    let scripts = zkmirror::testing::Scripts::load();
    let append = |token: &str, mzxid: &str| {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(scripts.append.get_hash())
            .arg(2)
            .arg("zk:changes")
            .arg(zkmirror::testing::Keys::new("zk").fence_for("zk:changes"));
        cmd.arg(token).arg(1000).arg("op").arg("put").arg("path").arg("/app").arg("mzxid").arg(mzxid);
        cmd
    };
    let late = old.query(&append("10", "5")).await;
    let refused = late.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(refused.contains("FENCED") && refused.contains("20 zk:fence:"), "the deposed leader's entry: {refused}");
    let length: i64 =
        redis::from_redis_value(new.query(redis::cmd("XLEN").arg("zk:changes")).await.expect("XLEN")).expect("int");
    assert_eq!(length, 0, "the refused entry was appended");
    new.query(&append("20", "6")).await.expect("the leader's entry");
    let length: i64 =
        redis::from_redis_value(new.query(redis::cmd("XLEN").arg("zk:changes")).await.expect("XLEN")).expect("int");
    assert_eq!(length, 1);
}

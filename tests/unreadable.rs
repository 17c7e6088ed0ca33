//! Reading a znode the mirror may not read, against a real ZooKeeper: the answer carries the
//! znode's `Stat` (from `exists()`, which needs no permission), by which the hide is ordered.

mod common;

use common::world::test_config;
use common::{create_all, unique_root, zk_client, ZkServer};
use zkmirror::testing::Fetched;
use zkmirror::testing::ZkSession;
use zookeeper_client::{Acls, CreateMode};

/// Defect 12 of issue 10: `Fetched::Unreadable` carried no `Stat`, so a hide could not be
/// ordered against what Redis holds. Now it carries the Stat at which the read was refused:
/// after a `setACL` that keeps it closed, a newer one (`aversion` bumped); once opened, the
/// same fetch finds it present.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_znode_is_reported_with_its_stat() {
    let zk = ZkServer::shared();
    let client = zk_client(&zk.connect_string()).await;
    let root = unique_root("unreadable-stat");
    create_all(&client, &root, b"").await;
    let owner = zk_client(&zk.connect_string()).await;
    owner.auth("digest", b"owner:secret").await.unwrap();
    let secret = format!("{root}/secret");
    owner.create(&secret, b"classified", &CreateMode::Persistent.with_acls(Acls::creator_all())).await.unwrap();
    owner.set_data(&secret, b"classified, v2", None).await.unwrap();

    // The mirror's session is anonymous.
    let session = ZkSession::connect(&test_config(&zk.connect_string(), "redis://127.0.0.1:1/", &root))
        .await
        .expect("a ZooKeeper session");
    let fetch = |session: ZkSession, path: String| async move {
        let mut answers = session.fetch_many(vec![path]).await;
        answers.pop().expect("one answer").1.expect("a read")
    };
    let expected = owner.check_stat(&secret).await.unwrap().expect("the secret exists");
    match fetch(session.clone(), secret.clone()).await {
        Fetched::Unreadable { path, stat } => {
            assert_eq!(path, secret);
            assert_eq!(
                (stat.czxid, stat.mzxid, stat.pzxid, stat.aversion),
                (expected.czxid, expected.mzxid, expected.pzxid, expected.aversion)
            );
            assert_eq!((stat.version, stat.data_length), (1, 14));
        }
        other => panic!("expected the secret unreadable, got {other:?}"),
    }
    // An ACL change that keeps it closed: a newer Stat.
    owner.set_acl(&secret, &Acls::creator_all(), None).await.unwrap();
    match fetch(session.clone(), secret.clone()).await {
        Fetched::Unreadable { stat, .. } => assert_eq!(stat.aversion, expected.aversion + 1),
        other => panic!("expected the secret unreadable, got {other:?}"),
    }
    owner.set_acl(&secret, &Acls::anyone_all(), None).await.unwrap();
    match fetch(session.clone(), secret.clone()).await {
        Fetched::Present(znode) => assert_eq!(znode.data, b"classified, v2"),
        other => panic!("expected the opened secret present, got {other:?}"),
    }
}

/// Defect 11 of issue 10: ACLs are not inherited. When `/r/x` turns unreadable and `/r/x/c`
/// (with `/r/x/c/d`) stays readable, the mirror used to hide `x`'s keys, then its sweep found
/// `/r/x/c`, read it fine and put it back, while deeper keys stayed stale and `verify` reported
/// them for ever. The rule now: nothing below an unreadable znode is mirrored, and mirror and
/// verify agree on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_below_an_unreadable_znode_is_mirrored_and_verify_agrees() {
    let zk = ZkServer::shared();
    let redis = common::RedisServer::start();
    let client = zk_client(&zk.connect_string()).await;
    let root = unique_root("unreadable-inner");
    let x = format!("{root}/x");
    let (c, d) = (format!("{x}/c"), format!("{x}/c/d"));
    create_all(&client, &d, b"deep").await;
    create_all(&client, &format!("{root}/open"), b"visible").await;
    let mut config = test_config(&zk.connect_string(), &redis.url(), &root);
    // Only the anti-entropy pass notices an ACL change (no watch fires for it).
    config.anti_entropy_interval = std::time::Duration::from_millis(500);
    let mirror = common::world::RunningMirror::start(config);
    mirror.wait_for_phase(zkmirror::Phase::Live).await;
    common::world::assert_converges(&client, &redis.url(), "zk", &root).await;

    // Close x to the mirror's (anonymous) identity; c and d stay open to anyone.
    client.auth("digest", b"owner:secret").await.unwrap();
    let owner_only = Acls::creator_all();
    client.set_acl(&x, &owner_only, None).await.unwrap();

    let conn = common::world::redis_conn(&redis.url()).await;
    let keys_below: Vec<String> = [&x, &c, &d]
        .iter()
        .flat_map(|p| [format!("zk:{{{p}}}"), format!("zk:{{{p}}}:meta"), format!("zk:{{{p}}}:children")])
        .collect();
    common::wait_until(common::world::CONVERGE, "no key at or below the unreadable znode", || {
        let (mut conn, keys) = (conn.clone(), keys_below.clone());
        async move {
            let held: u64 = redis::cmd("EXISTS").arg(&keys).query_async(&mut conn).await.map_err(|e| e.to_string())?;
            if held == 0 {
                Ok(())
            } else {
                Err(format!("{held} keys at or below {} still in Redis", keys[0]))
            }
        }
    })
    .await;
    // It stays that way over further passes (the sweep must not put c back), and verify, as
    // the mirror (anonymous), finds the copy exact.
    let anonymous = zk_client(&zk.connect_string()).await;
    for _ in 0..4 {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let mut conn = conn.clone();
        let held: u64 = redis::cmd("EXISTS").arg(&keys_below).query_async(&mut conn).await.unwrap();
        assert_eq!(held, 0, "a later pass brought keys below the unreadable znode back");
        let report = zkmirror::verify::compare(&anonymous, &mut conn, "zk", &root).await.unwrap();
        assert!(report.is_exact(), "verify disagrees with the mirror: {report}");
    }
    mirror.stop().await;
}

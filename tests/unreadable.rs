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

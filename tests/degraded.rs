//! The status hash tells the truth while ZooKeeper is unreachable: `P:mirror` says `degraded`
//! with a fresh heartbeat, from the start and after the connection is lost, instead of being
//! absent or going stale.

mod common;

use common::servers::free_port;
use common::world::{redis_conn, test_config, RunningMirror, CONVERGE};
use common::{create_all, unique_root, wait_until, zk_client, RedisServer, TcpProxy, ZkServer};
use zkmirror::Phase;

/// `state` and `heartbeat` of `zk:mirror`.
async fn status(conn: &mut redis::aio::MultiplexedConnection) -> (Option<String>, Option<u64>) {
    redis::cmd("HMGET").arg("zk:mirror").arg("state").arg("heartbeat").query_async(conn).await.expect("HMGET")
}

async fn wait_degraded_with_fresh_heartbeats(conn: &redis::aio::MultiplexedConnection) {
    let first = wait_until(CONVERGE, "P:mirror says degraded", || {
        let mut conn = conn.clone();
        async move {
            match status(&mut conn).await {
                (Some(state), Some(heartbeat)) if state == "degraded" => Ok(heartbeat),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    // And the heartbeat keeps moving while ZooKeeper stays away.
    wait_until(CONVERGE, "the heartbeat moves on while degraded", || {
        let mut conn = conn.clone();
        async move {
            match status(&mut conn).await {
                (Some(state), Some(heartbeat)) if state == "degraded" && heartbeat > first => Ok(()),
                other => Err(format!("{other:?} (first heartbeat {first})")),
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_down_at_start_is_reported_as_degraded() {
    let redis = RedisServer::start();
    let nobody = format!("127.0.0.1:{}", free_port());
    let mirror = RunningMirror::start(test_config(&nobody, &redis.url(), "/never"));
    let conn = redis_conn(&redis.url()).await;
    wait_degraded_with_fresh_heartbeats(&conn).await;
    assert_eq!(mirror.handle.phase(), Phase::Degraded);
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_zookeeper_connection_is_reported_as_degraded_then_live_again() {
    let zk = ZkServer::shared();
    let redis = RedisServer::start();
    let proxy = TcpProxy::start(zk.addr());
    let client = zk_client(&zk.connect_string()).await;
    let root = unique_root("degraded");
    create_all(&client, &format!("{root}/a"), b"1").await;
    let mirror = RunningMirror::start(test_config(&proxy.connect_string(), &redis.url(), &root));
    mirror.wait_for_phase(Phase::Live).await;
    let conn = redis_conn(&redis.url()).await;
    proxy.cut();
    // Past the 2 s session: the session expires, and the heartbeat must not stop with it.
    wait_degraded_with_fresh_heartbeats(&conn).await;
    proxy.restore();
    mirror.wait_for_phase(Phase::Live).await;
    mirror.stop().await;
}

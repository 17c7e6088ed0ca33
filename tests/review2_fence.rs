//! The fence after Redis lost its data, against a real redis-server: what a second adversarial
//! review found. See `schema/layout.md`, "Several mirrors: the fence".

mod common;

use common::RedisServer;
use zkmirror::testing::Store;
use zkmirror::{Leadership, MirrorConfig};

fn store(redis: &RedisServer, fence: i64) -> Store {
    let mut config = MirrorConfig::new("127.0.0.1:1", redis.url(), "/app");
    config.leadership = Some(Leadership { instance: format!("instance-{fence}"), since_ms: 1, fence });
    Store::new(&config).expect("store")
}

fn status(fence: i64) -> Vec<(&'static str, String)> {
    vec![("state", "live".into()), ("leader", format!("instance-{fence}")), ("fence", fence.to_string())]
}

/// Redis is flushed while a deposed leader (a zombie that has not yet noticed) still runs. A
/// flush takes the fence keys too, so the zombie's next heartbeat is accepted and re-creates the
/// status hash. The newer leader's heartbeat must still see that Redis lost its keys: otherwise
/// it never resyncs (readers see blanks until the next anti-entropy pass) and its next
/// `advance_zxid` claims its watermark over keys Redis no longer holds.
#[tokio::test]
async fn a_zombie_recreating_the_status_after_a_flush_does_not_hide_the_loss_from_the_leader() {
    let redis = RedisServer::start();
    let zombie = store(&redis, 10);
    let leader = store(&redis, 20);
    zombie.load_scripts().await.unwrap();
    zombie.publish_fence().await.unwrap();
    zombie.write_status(&status(10)).await.unwrap();
    leader.publish_fence().await.unwrap();
    // The leader's first heartbeat (not judged: it finds the previous leader's fence), then
    // one that finds its own.
    leader.write_status(&status(20)).await.unwrap();
    assert!(leader.write_status(&status(20)).await.unwrap().existed);
    // The leader has claimed 500 (all of it applied).
    let claim = leader.apply(&[], Some(500), 1, None, 0).await.unwrap();
    assert!(!claim.status_missing && claim.zxid_failure.is_none(), "{claim:?}");

    let _: () = redis::cmd("FLUSHALL").query_async(&mut redis_conn(&redis).await).await.unwrap();

    // The zombie's heartbeat lands (nothing fences it any more) and sees the loss itself.
    let seen = zombie.write_status(&status(10)).await.expect("the zombie's heartbeat after the flush");
    assert!(!seen.existed);

    // The leader's next heartbeat, or its next claim, must tell it that Redis lost its keys.
    let claim = leader.apply(&[], Some(600), 2, None, 0).await.unwrap();
    assert!(claim.status_missing, "the leader claimed 600 over a flushed Redis: {claim:?}");
    let seen = leader.write_status(&status(20)).await.unwrap();
    assert!(!seen.existed, "the leader's heartbeat did not see that Redis lost its keys");
}

async fn redis_conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

//! Defect 7: a slow or dead Redis behind one root must delay nothing but that root's writes:
//! not its own watch, not another root, not a reload.
//!
//! The construction. `[[roots]]` has no Redis URL of its own (one `[redis] url` serves every
//! root), so `zkmirror run` cannot give one root a dead Redis and another a live one. The
//! library can: the test drives the daemon's own [`Service`] (what `zkmirror run` runs, with
//! its reloads) on the test's current-thread runtime, which is what `zkmirror run` uses too
//! (`src/main.rs`), with two mirrors whose configs name different Redis servers. Root A's
//! Redis is a [`Blackhole`]: it accepts connections and reads requests but never answers, so
//! every request of A's costs A its full client timeout.
//!
//! What the old engine (before the rewrite, c9473d2) got wrong: it awaited script loading
//! inline in its event loop (`on_heartbeat`, `on_batch`, the start of `live`). Against a
//! Redis that never answers, each such await lasts at least one redis-rs connection timeout
//! (2 s, `Store::new`), twice per `load_scripts` (one retry), and the heartbeat starts another
//! soon after (its backoff begins at 100 ms). While it waits, the loop handles nothing: A's
//! watch events are not even counted (`zkmirror_events_received_total`, the metric `/metrics`
//! serves for A). So the test waits for each of A's events at most [`STEP`] = 1 s, half the
//! shortest such stall, and makes [`ROUNDS`] changes spaced so that they span well over one
//! full stall cycle of the old code: the old engine cannot count them all in time.
//!
//! Root B (its own task, like every mirror of the daemon) and the reload are checked in the
//! same rounds. They guard the rest of the promise: the old engine did not stall those (each
//! mirror is its own task), and nothing may start to.

mod common;

use std::time::Duration;

use common::world::{init_logging, redis_conn, stored_mzxid, test_config};
use common::{create_all, unique_root, wait_until, zk_client, Blackhole, RedisServer, ZkServer};
use zkmirror::testing::{ReloadOutcome, Service, Settings};
use zkmirror::{MirrorConfig, MirrorHandle, Phase};

/// The longest a change may take to be seen: half of the old engine's shortest inline stall
/// (one 2 s redis-rs connection timeout). Nothing the new engine does on this path waits on
/// Redis, so on a healthy machine this takes milliseconds.
const STEP: Duration = Duration::from_secs(1);

/// Rounds of changes; with [`SPACING`] they span over 6 s, more than one whole stall cycle of
/// the old engine (≥ 4 s in `load_scripts`, then at most a few hundred ms of backoff).
const ROUNDS: usize = 20;
const SPACING: Duration = Duration::from_millis(300);

fn settings(mirrors: Vec<MirrorConfig>) -> Settings {
    let mut settings = Settings::of_mirrors(mirrors);
    settings.keep_keys_on_remove = true;
    settings
}

fn handle_of(service: &Service, root: &str) -> MirrorHandle {
    service
        .observers()
        .handles()
        .into_iter()
        .find(|h| h.root() == root)
        .unwrap_or_else(|| panic!("no running mirror of {root}"))
}

/// Sets `path` to `data` and waits at most [`STEP`] until Redis (`prefix`) holds that version.
async fn mirrored_within_step(
    client: &zookeeper_client::Client,
    conn: &redis::aio::MultiplexedConnection,
    prefix: &str,
    path: &str,
    data: &[u8],
    what: &str,
) {
    let stat = client.set_data(path, data, None).await.unwrap_or_else(|e| panic!("setting {path}: {e}"));
    wait_until(STEP, what, || {
        let mut conn = conn.clone();
        async move {
            match stored_mzxid(&mut conn, prefix, path).await {
                Some(z) if z == stat.mzxid => Ok(()),
                other => Err(format!("{path} holds mzxid {other:?}, want {}", stat.mzxid)),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_dead_redis_behind_one_root_delays_nothing_else() {
    init_logging();
    let zk = ZkServer::shared();
    let redis = RedisServer::start();
    let hole = Blackhole::start();
    let client = zk_client(&zk.connect_string()).await;
    let conn = redis_conn(&redis.url()).await;
    let (root_a, root_b, root_c) = (unique_root("iso-a"), unique_root("iso-b"), unique_root("iso-c"));
    let (leaf_a, leaf_b, leaf_c) = (format!("{root_a}/x"), format!("{root_b}/x"), format!("{root_c}/x"));
    for leaf in [&leaf_a, &leaf_b, &leaf_c] {
        create_all(&client, leaf, b"0").await;
    }
    let config = |redis_url: &str, root: &str, prefix: &str| {
        let mut c = test_config(&zk.connect_string(), redis_url, root);
        c.prefix = prefix.to_owned();
        c
    };
    let a = config(&hole.redis_url(), &root_a, "a");
    let b = config(&redis.url(), &root_b, "b");
    let c = config(&redis.url(), &root_c, "c");

    let mut service = Service::new();
    let outcome = service.apply(&settings(vec![a.clone(), b.clone()])).await;
    assert!(matches!(outcome, ReloadOutcome::Applied(_)), "{outcome:?}");
    let handle_a = handle_of(&service, &root_a);

    // A is mid-request: its Redis has been sent something it will never answer.
    wait_until(Duration::from_secs(30), "root A has sent its dead Redis a request", || async {
        if hole.bytes_received() > 0 {
            Ok(())
        } else {
            Err(format!("{} connections, nothing received", hole.connections()))
        }
    })
    .await;

    for round in 0..ROUNDS {
        // A's own watch: each event is handled (counted) while its Redis requests hang.
        let before = handle_a.status().events;
        client.set_data(&leaf_a, format!("a{round}").as_bytes(), None).await.expect("setting A's leaf");
        wait_until(STEP, &format!("round {round}: root A counts its watch event while its Redis hangs"), || async {
            let status = handle_a.status();
            if status.events > before {
                Ok(())
            } else {
                Err(format!("{status:?}"))
            }
        })
        .await;

        // Another root keeps mirroring.
        let what = format!("round {round}: root B mirrors a change while A's Redis hangs");
        mirrored_within_step(&client, &conn, "b", &leaf_b, format!("b{round}").as_bytes(), &what).await;

        // A reload in the middle: B restarts with a changed config, C starts.
        if round == ROUNDS / 2 {
            let mut b2 = b.clone();
            b2.anti_entropy_interval = Duration::from_secs(1800);
            let outcome = service.apply(&settings(vec![a.clone(), b2, c.clone()])).await;
            let ReloadOutcome::Applied(applied) = &outcome else { panic!("the reload did nothing: {outcome:?}") };
            assert!(applied.is_complete(), "{outcome:?}");
            assert_eq!(applied.restarted.len() + applied.started.len(), 2, "{outcome:?}");
            wait_until(Duration::from_secs(30), "the reloaded roots are live", || async {
                let phases: Vec<(String, Phase)> =
                    service.observers().handles().iter().map(|h| (h.root().to_owned(), h.phase())).collect();
                let live = |root: &str| phases.iter().any(|(r, p)| r == root && *p == Phase::Live);
                if live(&root_b) && live(&root_c) {
                    Ok(())
                } else {
                    Err(format!("{phases:?}"))
                }
            })
            .await;
        }
        if round > ROUNDS / 2 {
            let what = format!("round {round}: root C, started by the reload, mirrors a change");
            mirrored_within_step(&client, &conn, "c", &leaf_c, format!("c{round}").as_bytes(), &what).await;
        }
        tokio::time::sleep(SPACING).await;
    }

    // Its Redis never answered, so A cannot claim to be live.
    assert_ne!(handle_a.phase(), Phase::Live, "{:?}", handle_a.status());
    service.stop().await;
}

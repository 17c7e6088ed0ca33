//! Scenarios an adversarial review of the engine found broken, kept as regression tests (each
//! failed before its fix).
//! Each was committed first as an ignored, failing test (commit 5455a06), then fixed.

use super::tests::Script;
use super::*;
use crate::znode::{Znode, ZnodeStat};

pub(super) fn present(path: &str, czxid: i64, mzxid: i64, children: &[&str]) -> Fetched {
    Fetched::Present(Znode {
        path: path.to_owned(),
        data: b"v".to_vec(),
        stat: ZnodeStat { czxid, mzxid, pzxid: czxid, ..ZnodeStat::default() },
        children: children.iter().map(|c| (*c).to_owned()).collect(),
    })
}

pub(super) fn reads_of(effects: &[Effect]) -> Vec<Vec<String>> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Read(paths) => Some(paths.clone()),
            _ => None,
        })
        .collect()
}

/// The `zxid` every pipeline asked for so far carries (None: no claim).
fn claims(effects: &[Effect]) -> Vec<i64> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Write { zxid, .. } => *zxid,
            _ => None,
        })
        .collect()
}

pub(super) fn answer_all(paths: &[String], fetched: impl Fn(&str) -> Fetched) -> Input {
    Input::read_done(paths.iter().map(|p| (p.clone(), Ok(fetched(p)))).collect())
}

/// Cold sync of `/r` (czxid 2) with one child `/r/a` (czxid 2, mzxid 200) into an empty Redis:
/// the root's read is answered and written; `/r/a`'s read is answered and its write is the one
/// pipeline in flight. Returns everything asked for so far.
fn cold_sync_up_to_the_childs_write() -> (Script, Vec<Effect>) {
    let mut s = Script::live(|_| {});
    s.feed(Input::SubtreeChecked { generation: 1, result: Ok(false) });
    let mut seen = s.take();
    let root = reads_of(&seen);
    s.feed(answer_all(&root[0], |p| present(p, 2, 2, &["a"])));
    seen.extend(s.take());
    s.ack();
    seen.extend(s.take());
    let child = reads_of(&seen).concat();
    assert!(child.contains(&"/r/a".to_owned()), "the walk reads /r/a: {child:?}");
    s.feed(answer_all(&["/r/a".to_owned()], |p| present(p, 2, 200, &[])));
    seen.extend(s.take());
    assert!(s.core.writes_in_flight().iter().any(|w| w.path() == "/r/a"), "the write of /r/a is in flight");
    (s, seen)
}

/// Finding 1a. A walk counts a write whose script failed (a key of the wrong type, defect 14) as
/// done: the walk ends, unblocks the watermark and releases the zxid its read showed, although
/// the change is not in Redis. `failed_writes` keeps *marks* open for this reason, but a walk's
/// reads carry no mark.
#[test]
fn a_walk_whose_write_failed_does_not_claim_the_unwritten_change() {
    let (mut s, mut seen) = cold_sync_up_to_the_childs_write();
    s.answer_batch(|w| {
        if w.path() == "/r/a" {
            WriteOutcome::Failed("WRONGTYPE Operation against a key holding the wrong kind of value".into())
        } else {
            WriteOutcome::Written
        }
    });
    seen.extend(s.take());
    for _ in 0..3 {
        s.ack();
        seen.extend(s.take());
    }
    let claimed = claims(&seen);
    assert!(
        claimed.iter().all(|z| *z < 200),
        "P:mirror zxid raised to {claimed:?} while /r/a@200 is not in Redis (its write failed)"
    );
}

/// Finding 1b. The same with a write refused as stale (the mirror was paused past half the
/// tombstone ttl, defect 10): the read goes back among the dirty paths *without a mark*, the
/// walk counts it as written and ends, and the watermark claims 200 before `/r/a`'s re-read is
/// written.
#[test]
fn a_walk_whose_write_was_refused_as_stale_does_not_claim_it_before_the_reread_lands() {
    let (mut s, mut seen) = cold_sync_up_to_the_childs_write();
    s.answer_batch(|w| if w.path() == "/r/a" { WriteOutcome::Refused(Refusal::Stale) } else { WriteOutcome::Written });
    seen.extend(s.take());
    // Whatever pipelines follow, before the re-read of /r/a is answered.
    for _ in 0..3 {
        if s.core.writes_in_flight().is_empty() {
            break;
        }
        s.ack();
        seen.extend(s.take());
    }
    let reread = reads_of(&seen).concat().iter().filter(|p| *p == "/r/a").count();
    assert_eq!(reread, 2, "the stale read of /r/a is read again");
    let claimed = claims(&seen);
    assert!(
        claimed.iter().all(|z| *z < 200),
        "P:mirror zxid raised to {claimed:?} while /r/a@200 was refused and its re-read is not written"
    );
}

/// A live core whose watermark has been published at 100, with a status write answered (so
/// the loss detector is armed).
fn live_with_watermark_published() -> Script {
    let mut s = Script::live(|_| {});
    s.feed(Input::SubtreeChecked { generation: 1, result: Ok(false) });
    let root = reads_of(&s.take());
    s.feed(answer_all(&root[0], |p| present(p, 2, 100, &[])));
    s.ack();
    let effects = s.take();
    assert_eq!(claims(&effects), [100], "the cold sync's watermark goes out alone");
    s.status_answered(true);
    s
}

/// Finding 2. After `NOSCRIPT` (Redis restarted: it may be empty, or an older snapshot) the
/// batch is sent again as it was, `zxid` included: `advance_zxid.lua` writes the old watermark
/// into the restarted Redis, which does not hold what it claims, while the resync walk has only
/// just started. The claim should wait for that walk.
#[test]
fn a_batch_resent_after_noscript_carries_no_claim_into_the_restarted_redis() {
    let mut s = Script::live(|_| {});
    s.feed(Input::SubtreeChecked { generation: 1, result: Ok(false) });
    let root = reads_of(&s.take());
    s.feed(answer_all(&root[0], |p| present(p, 2, 100, &[])));
    s.ack();
    // The pipeline carrying zxid 100 meets a Redis that restarted since.
    assert_eq!(claims(&s.take()), [100]);
    let noscript = StoreError::Redis {
        server: "redis".into(),
        source: redis::RedisError::from((redis::ErrorKind::Server(redis::ServerErrorKind::NoScript), "no script")),
    };
    assert!(noscript.is_noscript());
    s.feed(Input::WriteDone(Err(noscript)));
    s.take();
    s.feed(Input::ScriptsLoaded(Ok(0)));
    let resent = s.take();
    assert!(
        claims(&resent).is_empty(),
        "the restarted Redis holds nothing yet, but the resent pipeline claims zxid {:?}",
        claims(&resent)
    );
}

/// Finding 3. After Redis lost the mirror's keys (the status hash found absent), the resync walk
/// rewrites everything, but the watermark is only sent when it *moves* past what was published
/// before the loss: on a quiet tree `P:mirror` `zxid` stays absent until ZooKeeper changes.
#[test]
fn the_watermark_is_written_again_after_redis_lost_the_keys() {
    let mut s = live_with_watermark_published();
    s.ack();
    s.take();
    while s.core.status_in_flight {
        s.status_answered(true);
    }
    s.wait(Duration::from_secs(1));
    assert!(s.take().iter().any(|e| matches!(e, Effect::WriteStatus { .. })), "heartbeat");
    s.status_answered(false); // FLUSHALL since the last heartbeat
    assert!(s.take().iter().any(|e| matches!(e, Effect::LoadScripts)));
    s.feed(Input::ScriptsLoaded(Ok(0)));
    let mut seen = s.take();
    let root: Vec<String> = reads_of(&seen).concat();
    assert_eq!(root, ["/r"], "the resync walk reads the root again");
    s.feed(answer_all(&root, |p| present(p, 2, 100, &[])));
    seen.extend(s.take());
    for _ in 0..4 {
        if s.core.writes_in_flight().is_empty() {
            if let Some(Effect::Sweep { generation, .. }) =
                seen.iter().rev().find(|e| matches!(e, Effect::Sweep { .. }))
            {
                let generation = *generation;
                s.feed(Input::SweepDone { generation, result: Ok((0, vec![])) });
                seen.extend(s.take());
            }
        }
        if !s.core.writes_in_flight().is_empty() {
            s.ack();
            seen.extend(s.take());
        }
    }
    assert!(s.core.walk.is_none(), "the resync walk is done");
    assert!(claims(&seen).contains(&100), "Redis holds everything up to 100 again, but no pipeline says so");
}

/// Finding 4. A session that expires before its first watch is in place is never replaced:
/// without a watcher no session event reaches the driver, `ZkSession::watch` answers
/// `SessionExpired` (as `ZkError::Watch`), and the core retries `AddWatch` on the dead session
/// for ever, `degraded`, with no `Connect`.
#[test]
fn a_session_that_expires_before_its_watch_is_added_is_replaced() {
    let mut s = Script::new(|_| {});
    s.feed(Input::ScriptsLoaded(Ok(0)));
    s.feed(Input::Connected);
    s.take();
    let mut reconnected = false;
    for _ in 0..20 {
        let expired = ZkError::Watch { path: "/r".into(), source: zookeeper_client::Error::SessionExpired };
        s.feed(Input::WatchFailed(expired));
        s.wait(Duration::from_secs(11));
        let effects = s.take();
        if effects.iter().any(|e| matches!(e, Effect::Connect | Effect::DropSession)) {
            reconnected = true;
            break;
        }
        assert!(effects.iter().any(|e| matches!(e, Effect::AddWatch)), "{effects:?}");
    }
    assert!(reconnected, "20 AddWatch on an expired session, never a new session");
}

/// Finding 5 (minor). One disconnect fails every request in flight (up to 16 during a walk);
/// each failure draws the next, longer backoff (`read_backoff.next_delay()` per request) and the
/// last one sets `read_retry_at`, which the reconnect does not clear: the reconcile after the
/// watch is back waits a random 0.1–10 s (measured 0.4–2.1 s in three runs of this script)
/// before its first read, although the failures were all the one disconnect.
#[test]
fn reads_resume_once_the_watch_is_back_after_a_disconnect() {
    // Small znodes, so that the budget lets the walk keep its 16 requests in flight.
    let mut s = Script::live(|c| c.max_znode_bytes = 16 << 10);
    s.feed(Input::SubtreeChecked { generation: 1, result: Ok(true) });
    let root = reads_of(&s.take());
    let names: Vec<String> = (0..2000).map(|i| format!("c{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    s.feed(answer_all(&root[0], |p| present(p, 2, 5, &names)));
    let requests = reads_of(&s.take());
    assert!(requests.len() >= 8, "many requests in flight: {}", requests.len());
    s.feed(Input::Disconnected);
    for request in &requests {
        let lost = ZkError::Read { path: request[0].clone(), source: zookeeper_client::Error::ConnectionLoss };
        s.feed(Input::read_done(request.iter().map(|p| (p.clone(), Err(lost.clone()))).collect()));
    }
    s.feed(Input::Reconnected);
    s.feed(Input::WatchAdded);
    let reads = reads_of(&s.take());
    assert!(
        !reads.is_empty(),
        "the watch is back and a reconcile walk started, but no read until {:?} from now",
        s.core.read_retry_at.map(|t| t.duration_since(s.now))
    );
}

/// Finding 6 (fixed). The sweep's candidates were taken whole (`Store::stray_paths` collected
/// every page) onto the walk's stack: a subtree deleted while the mirror was away was held
/// entirely, beyond `memory_budget`. Now the sweep goes a `SCAN` page at a time: the next page
/// is asked for only once the candidates of the last are confirmed.
#[test]
fn the_sweeps_candidates_stay_within_the_memory_budget() {
    let budget = 6 << 20; // the smallest budget the config accepts
    let mut s = Script::live(|c| c.memory_budget = budget);
    s.feed(Input::SubtreeChecked { generation: 1, result: Ok(true) });
    let root = reads_of(&s.take());
    s.feed(answer_all(&root[0], |p| present(p, 2, 5, &[])));
    s.ack();
    assert!(s.take().iter().any(|e| matches!(e, Effect::Sweep { generation: 1, cursor: 0 })));
    // 200,000 keys of a subtree deleted while the mirror was away, 1,000 per SCAN page.
    let mut cursor = 0;
    for page in 0..200u64 {
        let strays: Vec<String> =
            (0..1000).map(|i| format!("/r/gone/level-two/level-three/n{:06}", page * 1000 + i)).collect();
        let next = if page == 199 { 0 } else { page + 1 };
        s.feed(Input::SweepDone { generation: 1, result: Ok((next, strays)) });
        assert!(
            s.core.held_bytes() <= budget,
            "the mirror holds {} bytes, over its budget of {budget}",
            s.core.held_bytes()
        );
        // Confirm the page: every candidate is gone from ZooKeeper.
        loop {
            let effects = s.take();
            let asked_next = effects.iter().find_map(|e| match e {
                Effect::Sweep { cursor, .. } => Some(*cursor),
                _ => None,
            });
            if let Some(asked) = asked_next {
                cursor = asked;
                break;
            }
            let reads = reads_of(&effects);
            for read in &reads {
                s.feed(Input::read_done(
                    read.iter()
                        .map(|p| (p.clone(), Ok(Fetched::Absent { path: p.clone(), tomb_zxid: Some(9) })))
                        .collect(),
                ));
            }
            if !s.core.writes_in_flight().is_empty() {
                s.ack();
            } else if reads.is_empty() {
                break;
            }
        }
        if next == 0 {
            break;
        }
        assert_eq!(cursor, next, "the next page is asked for only after this one is confirmed");
    }
    assert!(s.core.walk.is_none(), "the walk ends after the last page");
}

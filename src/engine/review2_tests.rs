//! Scenarios the second adversarial review (the fence, ZooKeeper going back) found broken, kept
//! as regression tests; each failed before its fix.

use super::history::SyncPoint;
use super::review_tests::{answer_all, reads_of};
use super::tests::Script;
use super::*;
use crate::store::StoredMark;
use crate::znode::ZnodeStat;

/// A znode of the first incarnation (czxid 2) at `mzxid`.
fn present(path: &str, mzxid: i64, children: &[&str]) -> Fetched {
    super::review_tests::present(path, 2, mzxid, children)
}

/// The history and the claim of every pipeline asked for.
fn claims(effects: &[Effect]) -> Vec<(u64, Option<i64>)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Write { epoch, zxid, .. } => Some((*epoch, *zxid)),
            _ => None,
        })
        .collect()
}

fn syncs(effects: &[Effect]) -> Vec<u64> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::SyncRoot { generation } => Some(*generation),
            _ => None,
        })
        .collect()
}

fn sweeps(effects: &[Effect]) -> Vec<u64> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Sweep { generation, .. } => Some(*generation),
            _ => None,
        })
        .collect()
}

fn has_write(effects: &[Effect]) -> bool {
    effects.iter().any(|e| matches!(e, Effect::Write { .. }))
}

/// `P:mirror` held `zxid` of history `epoch` when the sync was sent.
fn sync_point(zxid: i64, epoch: u64) -> Result<SyncPoint, String> {
    Ok(SyncPoint { stored: StoredMark { zxid: Some(zxid), epoch }, above_root: 0 })
}

/// Acknowledges the pipeline asked for in `pending` (if any) and every one that follows, and
/// answers each sweep with an empty last page; returns everything asked for meanwhile.
fn settle(s: &mut Script, mut pending: Vec<Effect>) -> Vec<Effect> {
    let mut all = Vec::new();
    loop {
        let wrote = has_write(&pending);
        let swept = sweeps(&pending);
        all.append(&mut pending);
        if wrote {
            s.ack();
        }
        for generation in &swept {
            s.feed(Input::SweepDone { generation: *generation, result: Ok((0, Vec::new())) });
        }
        pending = s.take();
        if !wrote && swept.is_empty() && !has_write(&pending) && sweeps(&pending).is_empty() {
            all.append(&mut pending);
            return all;
        }
    }
}

/// A core whose test answers each walk's sync itself, scripts loaded in history 0, connected,
/// watch added, the cold sync's look at Redis answered.
fn synced(subtree_held: bool) -> Script {
    let mut s = Script::new(|_| {});
    s.manual_sync = true;
    s.feed(Input::ScriptsLoaded(Ok(0)));
    s.feed(Input::Connected);
    s.feed(Input::WatchAdded);
    s.feed(Input::SubtreeChecked { generation: 1, result: Ok(subtree_held) });
    s.take();
    s
}

/// The claim `P:mirror` holds is true, but the znode that earned it lies below a znode whose ACL
/// was closed to the mirror since (or that a narrowed filter leaves out): no walk can see it, and
/// `setACL` leaves no zxid in any `Stat`. The walk's highest zxid is then below the claim without
/// ZooKeeper having gone back; taking it for a restore bumps the history, restarts the watermark
/// at 0 and rebuilds the whole copy for nothing.
#[test]
fn a_claim_hidden_below_an_unreadable_znode_is_not_taken_for_a_restore() {
    let mut s = synced(false);
    // /r/x/c was set at 900 while readable, and claimed; then /r/x was closed to the mirror.
    s.feed(Input::Synced { generation: 1, result: sync_point(900, 0) });
    let root = s.reads();
    assert_eq!(root, vec![vec!["/r".to_owned()]]);
    s.feed(answer_all(&root[0], |p| present(p, 30, &["x"])));
    let mut seen = s.take();
    let x = reads_of(&seen);
    assert_eq!(x, vec![vec!["/r/x".to_owned()]]);
    let stat = ZnodeStat { czxid: 20, mzxid: 20, pzxid: 25, ..ZnodeStat::default() };
    s.feed(Input::read_done(vec![("/r/x".to_owned(), Ok(Fetched::Unreadable { path: "/r/x".into(), stat }))]));
    seen.extend(s.take());
    let seen = settle(&mut s, seen);
    assert_eq!(syncs(&seen), Vec::<u64>::new(), "a second walk was started: {:?}", claims(&seen));
    assert!(claims(&seen).iter().all(|(epoch, _)| *epoch == 0), "a new history was started: {:?}", claims(&seen));
}

/// The same with a filter narrowed since the claim was made (here `max_depth` 1, where the
/// previous run copied everything): the walk does not read below `/r/x`, where the claim was
/// earned.
#[test]
fn a_claim_hidden_by_a_narrowed_filter_is_not_taken_for_a_restore() {
    let mut s = Script::new(|c| c.filter = crate::filter::Filter::new(&[], &[], Some(1)).expect("filter"));
    s.manual_sync = true;
    s.feed(Input::ScriptsLoaded(Ok(0)));
    s.feed(Input::Connected);
    s.feed(Input::WatchAdded);
    s.feed(Input::SubtreeChecked { generation: 1, result: Ok(false) });
    s.take();
    s.feed(Input::Synced { generation: 1, result: sync_point(900, 0) });
    let root = s.reads();
    s.feed(answer_all(&root[0], |p| present(p, 30, &["x"])));
    let mut seen = s.take();
    let x = reads_of(&seen);
    assert_eq!(x, vec![vec!["/r/x".to_owned()]]);
    s.feed(answer_all(&x[0], |p| present(p, 20, &["c"])));
    seen.extend(s.take());
    let seen = settle(&mut s, seen);
    assert!(reads_of(&seen).concat().iter().all(|p| p != "/r/x/c"), "the filter keeps the walk above /r/x/c");
    assert_eq!(syncs(&seen), Vec::<u64>::new(), "a second walk was started: {:?}", claims(&seen));
    assert!(claims(&seen).iter().all(|(epoch, _)| *epoch == 0), "a new history was started: {:?}", claims(&seen));
}

/// A restore is detected at the end of an anti-entropy walk while a pipeline carrying a claim of
/// the old history is still in flight. Its acknowledgement must not count as a claim of the new
/// history: the new history's `zxid` would then stay at 0 until ZooKeeper passes that old value,
/// although the rebuild has earned it.
#[test]
fn an_old_historys_claim_acknowledged_after_a_reset_does_not_hold_back_the_new_one() {
    let mut s = synced(false);
    s.feed(Input::Synced { generation: 1, result: Err("not synced (test)".into()) });
    let root = s.reads();
    s.feed(answer_all(&root[0], |p| present(p, 30, &[])));
    let pending = s.take();
    let seen = settle(&mut s, pending);
    assert_eq!(claims(&seen), vec![(0, None), (0, Some(30))], "the cold sync claims 30");

    // The anti-entropy walk, synced: Redis claims 500 of history 0.
    s.wait(Duration::from_secs(3600));
    assert_eq!(syncs(&s.take()), vec![2]);
    s.feed(Input::Synced { generation: 2, result: sync_point(500, 0) });
    let walk_read = s.reads();
    // A change to /r (zxid 40) while the walk's read of /r is in flight; its read follows.
    s.feed(Input::Changed { path: "/r".into(), kind: Change::Data });
    s.feed(answer_all(&walk_read[0], |p| present(p, 30, &[])));
    let event_read = s.reads();
    s.feed(answer_all(&event_read[0], |p| present(p, 40, &[])));
    s.take();
    s.ack(); // the walk's write of /r: the walk drains and asks for its sweep
    assert_eq!(sweeps(&s.take()), vec![2]);
    s.ack(); // the event's write of /r(40)
    assert_eq!(claims(&s.take()), vec![(0, Some(40))], "40 is claimed, in history 0");
    // That claim is still in flight when the sweep ends the walk: 500 > 30, a restore.
    s.feed(Input::SweepDone { generation: 2, result: Ok((0, Vec::new())) });
    assert_eq!(syncs(&s.take()), vec![3], "the rebuild walk starts");
    s.ack(); // the old history's claim of 40 lands (advance_zxid refuses it: history 1 is newer)
    assert_eq!(claims(&s.take()), vec![(1, Some(0))], "history 1 is claimed from 0");
    s.ack();

    // The rebuild reads /r at 40 and writes it under history 1: 40 is in, in history 1.
    s.feed(Input::Synced { generation: 3, result: sync_point(0, 1) });
    let rebuild = s.reads();
    s.feed(answer_all(&rebuild[0], |p| present(p, 40, &[])));
    let pending = s.take();
    let seen = settle(&mut s, pending);
    assert!(
        claims(&seen).contains(&(1, Some(40))),
        "the rebuild's watermark is never claimed in history 1: {:?}",
        claims(&seen)
    );
}

/// A running mirror whose Redis was away comes back to find `P:mirror` in a newer history
/// (another mirror saw ZooKeeper go back and rebuilt). It adopts that history, but the
/// watermark it carried over is of the old one: claiming it in the new history would say
/// that every change up to an old-history zxid is in, far above what the new ZooKeeper holds.
#[test]
fn a_newer_history_adopted_on_reload_starts_the_watermark_again() {
    let mut s = Script::live(|_| {});
    s.feed(Input::SubtreeChecked { generation: 1, result: Ok(false) });
    let root = s.reads();
    s.feed(answer_all(&root[0], |p| present(p, 900, &[])));
    let pending = s.take();
    let seen = settle(&mut s, pending);
    assert!(claims(&seen).contains(&(0, Some(900))));

    let down = StoreError::Unexpected { server: "redis".into(), what: "test", detail: "down".into() };
    s.feed(Input::StatusWritten(Err(down)));
    s.wait(Duration::from_millis(301));
    assert!(s.take().iter().any(|e| matches!(e, Effect::LoadScripts)));
    // Meanwhile ZooKeeper was restored (it holds zxids up to 150) and another mirror rebuilt
    // the copy under history 1.
    s.feed(Input::ScriptsLoaded(Ok(1)));
    let walk = s.reads();
    assert_eq!(walk, vec![vec!["/r".to_owned()]]);
    s.feed(answer_all(&walk[0], |p| present(p, 150, &[])));
    let pending = s.take();
    let seen = settle(&mut s, pending);
    let claimed: Vec<i64> = claims(&seen).into_iter().filter(|(e, _)| *e == 1).filter_map(|(_, z)| z).collect();
    assert_eq!(claimed, vec![150], "history 1's watermark: only what this history's reads earned");
}

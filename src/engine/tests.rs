//! The core driven by scripted inputs: no servers, no clock but the one the test moves.

use super::*;
use crate::status::Counters;
use crate::znode::{Znode, ZnodeStat};

#[test]
fn anti_entropy_runs_on_a_quiet_or_moderately_busy_tree() {
    assert!(!anti_entropy_postponed(0.0, 0));
    assert!(!anti_entropy_postponed(ANTI_ENTROPY_BUSY_RATE, 0));
}

#[test]
fn anti_entropy_waits_while_changes_pour_in_but_not_forever() {
    assert!(anti_entropy_postponed(5_000.0, 0));
    assert!(anti_entropy_postponed(5_000.0, ANTI_ENTROPY_MAX_POSTPONED - 1));
    assert!(!anti_entropy_postponed(5_000.0, ANTI_ENTROPY_MAX_POSTPONED));
}

/// A pipeline's paths and the watermark it carries.
type WriteSummary = (Vec<String>, Option<i64>);

/// A core with a test clock, and what it asked for so far (shared with `review_tests.rs`).
pub(super) struct Script {
    pub(super) core: Core,
    pub(super) now: Instant,
    counters: Arc<Counters>,
    effects: Vec<Effect>,
    /// Whether the test answers the sync before each walk itself; otherwise it is answered at once
    /// with a failure, and the walk reads unjudged, as it did before syncs existed.
    pub(super) manual_sync: bool,
}

impl Script {
    pub(super) fn new(configure: impl FnOnce(&mut MirrorConfig)) -> Script {
        let mut config = MirrorConfig::new("127.0.0.1:1", "redis://127.0.0.1:1/", "/r");
        configure(&mut config);
        let counters = Arc::new(Counters::default());
        let now = Instant::now();
        let core = Core::new(&config, Recorder::new(counters.clone(), "default", "zk", "/r"), now);
        let mut s = Script { core, now, counters, effects: Vec::new(), manual_sync: false };
        s.drain();
        s
    }

    /// Started, scripts loaded, session open, watch added.
    pub(super) fn live(configure: impl FnOnce(&mut MirrorConfig)) -> Script {
        let mut s = Script::new(configure);
        s.feed(Input::ScriptsLoaded(Ok(0)));
        s.feed(Input::Connected);
        s.feed(Input::WatchAdded);
        s
    }

    pub(super) fn drain(&mut self) {
        while let Some(e) = self.core.poll_effect() {
            if let (Effect::SyncRoot { generation }, false) = (&e, self.manual_sync) {
                let generation = *generation;
                self.effects.push(e);
                self.core.handle(Input::Synced { generation, result: Err("not synced (test)".into()) }, self.now);
                continue;
            }
            self.effects.push(e);
        }
    }

    pub(super) fn feed(&mut self, input: Input) {
        self.core.handle(input, self.now);
        self.drain();
    }

    pub(super) fn wait(&mut self, d: Duration) {
        self.now += d;
        self.core.handle_timeout(self.now);
        self.drain();
    }

    /// Effects asked for since the last call.
    pub(super) fn take(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    pub(super) fn reads(&mut self) -> Vec<Vec<String>> {
        self.take()
            .into_iter()
            .filter_map(|e| match e {
                Effect::Read(paths) => Some(paths),
                _ => None,
            })
            .collect()
    }

    /// Reads and writes asked for since the last call.
    pub(super) fn split(&mut self) -> (Vec<Vec<String>>, Vec<WriteSummary>) {
        let effects = self.take();
        let writes = writes_of(&effects);
        let reads = effects
            .into_iter()
            .filter_map(|e| match e {
                Effect::Read(paths) => Some(paths),
                _ => None,
            })
            .collect();
        (reads, writes)
    }

    /// Answers the pipeline in flight with these outcomes, in order.
    pub(super) fn answer_batch(&mut self, outcome: impl Fn(&Write) -> WriteOutcome) {
        let outcomes = self.core.writes_in_flight().into_iter().map(outcome).collect();
        self.feed(Input::WriteDone(Ok(Applied { outcomes, zxid_failure: None, status_missing: false })));
    }

    /// Redis answers the pipeline in flight: every write written.
    pub(super) fn ack(&mut self) {
        self.answer_batch(|_| WriteOutcome::Written);
    }

    /// The status write in flight is answered: the hash existed before (`existed`) or not.
    pub(super) fn status_answered(&mut self, existed: bool) {
        self.feed(Input::StatusWritten(Ok(existed)));
    }

    /// Acknowledges every pipeline until none is asked for; returns the reads asked meanwhile.
    pub(super) fn ack_writes(&mut self) -> Vec<Vec<String>> {
        let mut all = Vec::new();
        loop {
            let (reads, writes) = self.split();
            all.extend(reads);
            if writes.is_empty() {
                return all;
            }
            self.ack();
        }
    }

    pub(super) fn phase(&self) -> Phase {
        self.counters.snapshot().phase
    }
}

fn znode(path: &str, mzxid: i64, children: &[&str]) -> Fetched {
    Fetched::Present(Znode {
        path: path.to_owned(),
        data: b"v".to_vec(),
        stat: ZnodeStat { czxid: 2, mzxid, pzxid: 2, ..ZnodeStat::default() },
        children: children.iter().map(|c| (*c).to_owned()).collect(),
    })
}

fn answer(paths: &[String], fetched: impl Fn(&str) -> Fetched) -> Input {
    Input::read_done(paths.iter().map(|p| (p.clone(), Ok(fetched(p)))).collect())
}

fn writes_of(effects: &[Effect]) -> Vec<WriteSummary> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Write { writes, zxid, .. } => Some((writes.iter().map(|w| w.path().to_owned()).collect(), *zxid)),
            _ => None,
        })
        .collect()
}

#[test]
fn nothing_is_read_before_the_watch_is_in_place() {
    let mut s = Script::new(|_| {});
    assert!(matches!(s.take()[..], [Effect::LoadScripts, Effect::Connect]));
    s.feed(Input::ScriptsLoaded(Ok(0)));
    s.feed(Input::Connected);
    s.feed(Input::Changed { path: "/r/a".into(), kind: Change::Data });
    let effects = s.take();
    assert!(effects.iter().any(|e| matches!(e, Effect::AddWatch)));
    assert!(!effects.iter().any(|e| matches!(e, Effect::Read(_))), "read before the watch: {effects:?}");
    s.feed(Input::WatchAdded);
    let reads = s.reads();
    assert_eq!(reads.concat(), ["/r/a", "/r"], "the change first, then the walk from the root");
}

#[test]
fn a_reconnect_mid_walk_waits_for_the_watch_then_walks_again() {
    let mut s = Script::live(|_| {});
    s.feed(Input::SubtreeChecked { generation: 1, result: Ok(true) });
    let first = s.reads();
    s.feed(answer(&first[0], |p| znode(p, 5, &["a", "b"])));
    s.take();
    s.feed(Input::Disconnected);
    assert_eq!(s.phase(), Phase::Degraded);
    s.feed(Input::Reconnected);
    let effects = s.take();
    assert!(effects.iter().any(|e| matches!(e, Effect::AddWatch)));
    assert!(!effects.iter().any(|e| matches!(e, Effect::Read(_))));
    s.feed(Input::WatchAdded);
    assert_eq!(s.phase(), Phase::Syncing, "the first walk never finished");
    let reads = s.reads().concat();
    assert!(reads.contains(&"/r".to_owned()), "a new walk starts at the root: {reads:?}");
}

#[test]
fn a_watch_that_cannot_be_added_again_is_not_live_and_is_retried() {
    let mut s = Script::live(|_| {});
    s.feed(Input::SubtreeChecked { generation: 1, result: Ok(false) });
    let first = s.reads();
    s.feed(answer(&first[0], |p| znode(p, 5, &[])));
    s.ack();
    assert_eq!(s.phase(), Phase::Live);
    s.feed(Input::Reconnected);
    s.feed(Input::WatchFailed(ZkError::Watch { path: "/r".into(), source: zookeeper_client::Error::ConnectionLoss }));
    assert_eq!(s.phase(), Phase::Degraded, "no watch, not live");
    s.take();
    s.wait(Duration::from_secs(1));
    assert!(s.take().iter().any(|e| matches!(e, Effect::AddWatch)), "the watch is retried");
    s.feed(Input::WatchAdded);
    assert_eq!(s.phase(), Phase::Reconciling, "and what it missed is reconciled");
}

#[test]
fn redis_down_mid_batch_drops_the_work_and_reconciles_when_it_returns() {
    let mut s = Script::live(|_| {});
    s.feed(Input::SubtreeChecked { generation: 1, result: Ok(false) });
    let first = s.reads();
    s.feed(answer(&first[0], |p| znode(p, 5, &["a", "b"])));
    assert_eq!(writes_of(&s.take()).len(), 1);
    let error = StoreError::Unexpected { server: "redis".into(), what: "test", detail: "down".into() };
    s.feed(Input::WriteDone(Err(error)));
    assert_eq!(s.phase(), Phase::Degraded);
    assert!(s.reads().is_empty(), "no reads while Redis is down");
    s.wait(Duration::from_millis(301)); // the first backoff is 100–300 ms
    assert!(s.take().iter().any(|e| matches!(e, Effect::LoadScripts)), "Redis is probed after the backoff");
    s.feed(Input::ScriptsLoaded(Ok(0)));
    assert_eq!(s.phase(), Phase::Syncing);
    assert!(s.reads().concat().contains(&"/r".to_owned()), "the walk starts again from the root");
}

#[test]
fn writes_refused_by_redis_acls_publish_degraded_until_a_batch_lands() {
    let mut s = Script::live(|_| {});
    s.feed(Input::SubtreeChecked { generation: 1, result: Ok(false) });
    let first = s.reads();
    s.feed(answer(&first[0], |p| znode(p, 5, &[])));
    assert_eq!(writes_of(&s.take()).len(), 1);
    let denied = StoreError::Denied {
        server: "redis".into(),
        user: "zkmirror".into(),
        action: "the command XADD in put.lua".into(),
        reply: "NOPERM".into(),
    };
    s.feed(Input::WriteDone(Err(denied)));
    // The status write still in flight (the first sync's) is answered; then the next is sent.
    s.feed(Input::StatusWritten(Ok(true)));
    let published = |effects: &[Effect]| {
        effects.iter().find_map(|e| match e {
            Effect::WriteStatus { fields } => fields.iter().find(|(n, _)| *n == "state").map(|(_, v)| v.clone()),
            _ => None,
        })
    };
    assert_eq!(published(&s.take()).as_deref(), Some("degraded"), "Redis answers: the status can say it");
    s.feed(Input::StatusWritten(Ok(true)));
    s.wait(Duration::from_millis(301));
    assert!(s.take().iter().any(|e| matches!(e, Effect::LoadScripts)), "retried after the backoff");
    s.feed(Input::ScriptsLoaded(Ok(0)));
    assert_eq!(s.phase(), Phase::Degraded, "still refused as far as the mirror knows: not syncing");
    let again = s.reads();
    s.feed(answer(&again[0], |p| znode(p, 5, &[])));
    s.ack();
    assert_ne!(s.phase(), Phase::Degraded, "a batch landed: the rights are back");
}

#[test]
fn a_burst_of_ten_thousand_changes_is_read_in_few_large_requests() {
    let mut s = Script::live(|_| {});
    s.feed(Input::SubtreeChecked { generation: 1, result: Ok(false) });
    let first = s.reads();
    s.feed(answer(&first[0], |p| znode(p, 5, &[])));
    assert!(s.ack_writes().is_empty());
    for i in 0..10_000 {
        s.feed(Input::Changed { path: format!("/r/n{i}"), kind: Change::Data });
    }
    // However the 10,000 are spread, at most 4 requests are in flight, each of at most 256
    // paths, and the whole burst takes few requests (not one per change).
    let (first, _) = s.split();
    let mut in_flight: VecDeque<Vec<String>> = first.into();
    let (mut requests, mut paths) = (in_flight.len(), 0);
    let mut sizes = Vec::new();
    while let Some(request) = in_flight.pop_front() {
        assert!(in_flight.len() < reads::LIVE_READ_REQUESTS);
        assert!(request.len() <= reads::MAX_READ_BATCH_BACKLOG);
        paths += request.len();
        sizes.push(request.len());
        s.feed(answer(&request, |p| znode(p, 6, &[])));
        loop {
            let (more, writes) = s.split();
            requests += more.len();
            in_flight.extend(more);
            if writes.is_empty() {
                break;
            }
            s.ack();
        }
    }
    assert_eq!(
        paths,
        10_000,
        "every change read once (dirty left {}, ready {}, in flight {} paths, retry {:?}, redis {:?}, zk {:?})",
        s.core.dirty.len(),
        s.core.writes.ready_len(),
        s.core.paths_in_flight,
        s.core.read_retry_at,
        s.core.redis,
        s.core.zk
    );
    // The 64 MiB budget allows 48 paths of up to 1 MiB in flight, 8 per request (a reply is
    // at most an eighth of the budget): full requests, never slivers.
    assert!(requests <= 10_000 / 7, "{requests} requests, sizes {sizes:?}");
    assert!(sizes.iter().filter(|s| **s < 4).count() <= 3, "sizes {sizes:?}");
}

#[test]
fn reads_in_flight_stay_within_the_memory_budget() {
    // 16 MiB, 1 MiB znodes: whatever the tree, never more than the budget's worth in flight.
    let mut s = Script::live(|c| c.memory_budget = 16 << 20);
    s.feed(Input::SubtreeChecked { generation: 1, result: Ok(false) });
    let root = s.reads();
    let children: Vec<String> = (0..400).map(|i| format!("c{i}")).collect();
    let names: Vec<&str> = children.iter().map(String::as_str).collect();
    s.feed(answer(&root[0], |p| znode(p, 5, &names)));
    let requests = s.reads();
    let in_flight: usize = requests.iter().map(Vec::len).sum();
    assert!(in_flight >= 1);
    // Each path once, plus two more copies of the largest request's reply.
    let largest = requests.iter().map(Vec::len).max().unwrap_or(0);
    let worst = (in_flight + 2 * largest) * ((1 << 20) + READ_OVERHEAD_BYTES);
    assert!(worst + s.core.held_bytes() <= 16 << 20, "{in_flight} paths of 1 MiB in flight, {largest} per request");
    assert!(largest <= 2, "a request's reply is at most an eighth of the budget: {largest} paths");
}

#[test]
fn a_znode_larger_than_reads_are_charged_raises_the_charge_of_later_reads() {
    // A 16 MiB budget and reads charged as 16 KiB znodes (a setting below what the ensemble
    // holds): the walk keeps hundreds of paths in flight.
    let budget = 16 << 20;
    let mut s = Script::live(|c| {
        c.memory_budget = budget;
        c.max_znode_bytes = 16 << 10;
    });
    s.feed(Input::SubtreeChecked { generation: 1, result: Ok(false) });
    let root = s.reads();
    let parents: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    let names: Vec<&str> = parents.iter().map(String::as_str).collect();
    s.feed(answer(&root[0], |p| znode(p, 5, &names)));
    let parent_reads = s.reads();
    assert_eq!(parent_reads.iter().map(Vec::len).sum::<usize>(), 10, "every parent in flight at once");
    // Each parent holds 300 KB and has 40 children: the first answer tells the charge was wrong.
    let children: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
    let child_names: Vec<&str> = children.iter().map(String::as_str).collect();
    let large = |p: &str| {
        Fetched::Present(Znode {
            path: p.to_owned(),
            data: vec![b'v'; 300_000],
            stat: ZnodeStat { czxid: 2, mzxid: 5, pzxid: 2, ..ZnodeStat::default() },
            children: child_names.iter().map(|c| (*c).to_owned()).collect(),
        })
    };
    for request in &parent_reads {
        s.feed(answer(request, large));
    }
    s.ack();
    let requests = s.reads();
    let in_flight: usize = requests.iter().map(Vec::len).sum();
    assert!(in_flight >= 1, "the 400 children are read");
    // The children may be as large as their parents: as many in flight as the budget holds
    // at 512 KiB each (the next power of two), not the 400 that 16 KiB each would allow.
    assert!(
        in_flight * (512 << 10) <= budget,
        "{in_flight} paths in flight after a 300 KB znode, with reads charged {} bytes",
        s.core.max_znode_bytes
    );
    assert_eq!(s.core.max_znode_bytes, 512 << 10);
    assert!(s.core.max_request_paths * (512 << 10) <= budget / 8, "a request's reply stays an eighth of the budget");
}

#[test]
fn a_failed_multi_read_is_logged_once_and_retried_after_a_pause() {
    let mut s = Script::live(|_| {});
    s.feed(Input::SubtreeChecked { generation: 1, result: Ok(false) });
    let root = s.reads();
    s.feed(answer(&root[0], |p| znode(p, 5, &[])));
    s.ack();
    s.take();
    s.feed(Input::Changed { path: "/r/a".into(), kind: Change::Data });
    let sent = s.reads();
    let error = ZkError::Read { path: "/r/a".into(), source: zookeeper_client::Error::UnexpectedError("boom".into()) };
    s.feed(Input::read_done(sent[0].iter().map(|p| (p.clone(), Err(error.clone()))).collect()));
    assert!(s.reads().is_empty(), "not re-read at once");
    s.wait(Duration::from_millis(301)); // the first backoff is 100–300 ms
    assert_eq!(s.reads().concat(), ["/r/a"], "re-read after the backoff");
}

#[test]
fn session_expiry_drops_reads_held_and_writes_waiting() {
    let mut s = Script::live(|_| {});
    s.feed(Input::SubtreeChecked { generation: 1, result: Ok(true) });
    let root = s.reads();
    s.feed(answer(&root[0], |p| znode(p, 5, &["a"])));
    let first = writes_of(&s.take());
    assert_eq!(first.len(), 1, "the root's write is in flight");
    // /r/a is read while the pipeline is in flight: its write waits.
    s.feed(Input::read_done(vec![("/r/a".into(), Ok(znode("/r/a", 6, &[])))]));
    s.feed(Input::SessionEnded);
    assert!(s.take().iter().any(|e| matches!(e, Effect::DropSession)));
    s.ack();
    assert!(writes_of(&s.take()).is_empty(), "a read from the old session is never written");
}

#[test]
fn the_watermark_never_claims_a_change_not_yet_written() {
    let mut s = Script::live(|_| {});
    s.feed(Input::SubtreeChecked { generation: 1, result: Ok(false) });
    let root = s.reads();
    s.feed(answer(&root[0], |p| znode(p, 100, &[])));
    let w = writes_of(&s.take());
    assert_eq!(w[0].1, None, "nothing is claimed during the cold sync");
    s.ack();
    // The walk is done: the watermark is published with the next pipeline.
    assert_eq!(writes_of(&s.take()), [(vec![], Some(100))]);
    s.ack();
    // a changes at 101, b at 102; a's read is in flight when b's event arrives.
    s.feed(Input::Changed { path: "/r/a".into(), kind: Change::Data });
    let a = s.reads();
    s.feed(Input::Changed { path: "/r/b".into(), kind: Change::Data });
    s.feed(answer(&a[0], |p| znode(p, 101, &[])));
    let (b, w) = s.split();
    assert_eq!(b.concat(), ["/r/b"]);
    assert_eq!(w, [(vec!["/r/a".to_owned()], None)]);
    s.ack();
    assert!(writes_of(&s.take()).is_empty(), "101 is not claimed while b's event (earlier than a's reply) is open");
    assert_eq!(s.core.watermark.open_marks(), 1);
    s.feed(answer(&b[0], |p| znode(p, 102, &[])));
    assert_eq!(writes_of(&s.take()), [(vec!["/r/b".to_owned()], None)], "b's write carries no claim");
    s.ack();
    assert_eq!(writes_of(&s.take()), [(vec![], Some(102))], "once written, 102 is claimed");
}

#[test]
fn a_deleted_subtree_found_by_the_sweep_is_confirmed_and_the_walk_ends() {
    let mut s = Script::live(|_| {});
    s.feed(Input::SubtreeChecked { generation: 1, result: Ok(true) });
    let root = s.reads();
    s.feed(answer(&root[0], |p| znode(p, 5, &[])));
    s.ack();
    let effects = s.take();
    assert!(effects.iter().any(|e| matches!(e, Effect::Sweep { generation: 1, cursor: 0 })), "{effects:?}");
    s.feed(Input::SweepDone { generation: 1, result: Ok((0, vec!["/r/gone".into(), "/r/gone/deep".into()])) });
    let confirm = s.reads();
    assert_eq!(confirm.concat().len(), 2);
    s.feed(Input::read_done(
        confirm[0].iter().map(|p| (p.clone(), Ok(Fetched::Absent { path: p.clone(), tomb_zxid: Some(9) }))).collect(),
    ));
    assert_eq!(writes_of(&s.take())[0].0.len(), 2);
    s.ack();
    assert_eq!(s.phase(), Phase::Live);
}

#[test]
fn nothing_below_an_unreadable_znode_is_mirrored_even_if_readable() {
    let mut s = Script::live(|_| {});
    s.feed(Input::SubtreeChecked { generation: 1, result: Ok(true) });
    let root = s.reads();
    s.feed(answer(&root[0], |p| znode(p, 5, &["x"])));
    let x = s.ack_writes();
    assert_eq!(x.concat(), ["/r/x"]);
    s.feed(Input::read_done(vec![(
        "/r/x".into(),
        Ok(Fetched::Unreadable { path: "/r/x".into(), stat: ZnodeStat::default() }),
    )]));
    s.ack_writes();
    // The sweep finds /r/x/c (its parent's children set is gone) and it reads fine: hidden.
    s.feed(Input::SweepDone { generation: 1, result: Ok((0, vec!["/r/x/c".into()])) });
    let confirm = s.reads();
    s.feed(answer(&confirm[0], |p| znode(p, 6, &[])));
    let (_, writes) = s.split();
    assert_eq!(writes.len(), 1);
    assert!(matches!(s.core.writes_in_flight()[0], Write::Exclude { path } if path == "/r/x/c"), "removed, not put");
    // A change below it, reported by the watch, is not mirrored either.
    s.ack();
    s.feed(Input::Changed { path: "/r/x/c".into(), kind: Change::Data });
    let again = s.reads();
    s.feed(answer(&again[0], |p| znode(p, 7, &[])));
    for _ in 0..3 {
        if let Some(write) = s.core.writes_in_flight().into_iter().find(|w| w.path() == "/r/x/c") {
            assert!(matches!(write, Write::Exclude { .. }), "{write:?}");
            return;
        }
        s.ack();
    }
    panic!("the change below the unreadable znode was never written");
}

#[test]
fn a_fenced_write_deposes_the_leader_and_nothing_more_is_asked() {
    let mut s = Script::live(|c| {
        c.leadership = Some(Leadership { instance: "a".into(), since_ms: 1, fence: 10 });
    });
    s.feed(Input::SubtreeChecked { generation: 1, result: Ok(false) });
    let first = s.reads();
    s.feed(answer(&first[0], |p| znode(p, 5, &["a", "b"])));
    assert_eq!(writes_of(&s.take()).len(), 1);
    s.answer_batch(|_| WriteOutcome::Refused(Refusal::Fenced { seen: 20 }));
    match s.core.take_fatal() {
        Some(MirrorError::Deposed { fence: 10, seen: 20, root }) => assert_eq!(root, "/r"),
        other => panic!("not deposed: {other:?}"),
    }
    assert!(s.take().is_empty(), "a deposed leader asked for more work");
    s.feed(Input::Changed { path: "/r/a".into(), kind: Change::Data });
    s.wait(Duration::from_secs(5));
    assert!(s.take().is_empty(), "a deposed leader reads, writes or heartbeats");
}

#[test]
fn a_leader_names_itself_and_its_token_in_the_status() {
    let mut s = Script::new(|c| {
        c.leadership = Some(Leadership { instance: "host:1".into(), since_ms: 42, fence: 77 });
    });
    s.feed(Input::ScriptsLoaded(Ok(0)));
    let fields = s
        .take()
        .into_iter()
        .find_map(|e| match e {
            Effect::WriteStatus { fields } => Some(fields),
            _ => None,
        })
        .expect("a status write");
    for (name, value) in [("leader", "host:1"), ("leader_since", "42"), ("fence", "77")] {
        assert!(fields.iter().any(|(n, v)| *n == name && v == value), "{name} missing from {fields:?}");
    }
}

#[test]
fn a_fence_refused_at_publish_deposes_before_any_write() {
    let mut s = Script::new(|c| {
        c.leadership = Some(Leadership { instance: "a".into(), since_ms: 1, fence: 10 });
    });
    let refused = StoreError::Fenced { server: "redis".into(), key: "zk:fence:{0}".into(), fence: 10, seen: 11 };
    s.feed(Input::ScriptsLoaded(Err(refused)));
    assert!(matches!(s.core.take_fatal(), Some(MirrorError::Deposed { seen: 11, .. })));
}

// ZooKeeper's history going back (defect 13 of issue 10): judged only on synced walks.

/// A live core whose test answers each walk's sync itself; the cold sync (walk 1) waits for it.
fn synced_script() -> Script {
    let mut s = Script::new(|_| {});
    s.manual_sync = true;
    s.feed(Input::ScriptsLoaded(Ok(0)));
    s.feed(Input::Connected);
    s.feed(Input::WatchAdded);
    s
}

/// `P:mirror` held `zxid` (history `epoch`) when the sync was sent.
fn sync_point(zxid: i64, epoch: u64) -> Result<SyncPoint, String> {
    Ok(SyncPoint { stored: crate::store::StoredMark { zxid: Some(zxid), epoch }, above_root: 0 })
}

/// The syncs asked for since the last call, and the history and claim of each pipeline.
fn syncs_and_claims(effects: &[Effect]) -> (Vec<u64>, Vec<(u64, Option<i64>)>) {
    let syncs = effects
        .iter()
        .filter_map(|e| match e {
            Effect::SyncRoot { generation } => Some(*generation),
            _ => None,
        })
        .collect();
    let claims = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Write { epoch, zxid, .. } => Some((*epoch, *zxid)),
            _ => None,
        })
        .collect();
    (syncs, claims)
}

/// Walk `generation` of the lone root reads it as `root`, Redis answers `outcome`, and the
/// sweep (if the walk has one) finds nothing. Answers the histories its writes carried; what
/// the core asked for after that is left for the test.
fn walk_root(
    s: &mut Script,
    generation: u64,
    sync: Result<SyncPoint, String>,
    root: Fetched,
    outcome: WriteOutcome,
) -> Vec<u64> {
    assert!(s.reads().is_empty(), "walk {generation} read before its sync was answered");
    s.feed(Input::Synced { generation, result: sync });
    let reads = s.reads();
    assert_eq!(reads, vec![vec!["/r".to_owned()]]);
    s.feed(Input::read_done(vec![("/r".to_owned(), Ok(root))]));
    let (_, claims) = syncs_and_claims(&s.take());
    s.answer_batch(|_| outcome.clone());
    let mut after = s.take();
    if after.iter().any(|e| matches!(e, Effect::Sweep { generation: g, .. } if *g == generation)) {
        after.retain(|e| !matches!(e, Effect::Sweep { .. }));
        s.feed(Input::SweepDone { generation, result: Ok((0, Vec::new())) });
    }
    after.append(&mut s.effects);
    s.effects = after;
    claims.into_iter().map(|(epoch, _)| epoch).collect()
}

#[test]
fn a_synced_walk_that_finds_less_than_redis_claims_starts_a_new_history() {
    let mut s = synced_script();
    s.feed(Input::SubtreeChecked { generation: 1, result: Ok(false) });
    // Redis claims 500; the synced ZooKeeper holds at most 30: it went back.
    walk_root(&mut s, 1, sync_point(500, 0), znode("/r", 30, &[]), WriteOutcome::Refused(Refusal::Older));
    let (syncs, claims) = syncs_and_claims(&s.take());
    assert_eq!(syncs, vec![2], "the rebuild walk (2) starts, synced");
    assert_eq!(claims, vec![(1, Some(0))], "history 1 is claimed at once, its watermark starting at 0");
    assert_eq!(s.phase(), Phase::Reconciling);
    s.ack();
    // The rebuild rewrites the root under history 1; its own claim is now of history 1.
    let epochs = walk_root(&mut s, 2, sync_point(0, 1), znode("/r", 30, &[]), WriteOutcome::Written);
    assert_eq!(epochs, vec![1], "the rebuild writes under history 1");
    let (syncs, claims) = syncs_and_claims(&s.take());
    assert!(syncs.is_empty(), "the rebuild judged its history the same: no third walk");
    assert!(claims.iter().all(|(epoch, _)| *epoch == 1), "{claims:?}");
    assert_eq!(s.phase(), Phase::Live);
}

#[test]
fn a_briefly_behind_server_is_not_taken_for_a_restore() {
    let mut s = synced_script();
    s.feed(Input::SubtreeChecked { generation: 1, result: Ok(false) });
    // The sync failed (the server could not reach the leader): the walk reads what a lagging
    // server shows, below Redis's claim, and Redis refuses it. Not judged.
    walk_root(&mut s, 1, Err("sync timed out".into()), znode("/r", 30, &[]), WriteOutcome::Refused(Refusal::Older));
    let (syncs, claims) = syncs_and_claims(&s.take());
    assert!(syncs.is_empty(), "an unsynced walk starts no second walk");
    assert!(claims.iter().all(|(epoch, _)| *epoch == 0), "{claims:?}");
    // An event read from the still-lagging server is refused too: no walk judges it.
    s.feed(Input::Changed { path: "/r".into(), kind: Change::Data });
    let reads = s.reads();
    s.feed(answer(&reads[0], |p| znode(p, 31, &[])));
    s.answer_batch(|_| WriteOutcome::Refused(Refusal::Older));
    // The next walk's sync makes the server catch up: it reads what Redis claims, and more.
    s.wait(Duration::from_secs(3600));
    let (syncs, _) = syncs_and_claims(&s.take());
    assert_eq!(syncs, vec![2], "the anti-entropy walk is synced");
    walk_root(&mut s, 2, sync_point(500, 0), znode("/r", 510, &[]), WriteOutcome::Written);
    let (syncs, claims) = syncs_and_claims(&s.take());
    assert!(syncs.is_empty() && claims.iter().all(|(epoch, _)| *epoch == 0), "{syncs:?} {claims:?}");
    assert_eq!(s.phase(), Phase::Live);
}

/// The confirmations asked for in `effects`: the walk generation and the paths.
fn confirmations(effects: &[Effect]) -> Vec<(u64, Vec<String>)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::ConfirmHistory { generation, paths } => Some((*generation, paths.clone())),
            _ => None,
        })
        .collect()
}

/// Redis held `/r` at `stored_mzxid` of history 0 when the confirmation read it; after the sync
/// ZooKeeper holds it at `current_mzxid`.
fn recheck_root(stored_mzxid: i64, current_mzxid: i64) -> Vec<history::Recheck> {
    let meta = crate::store::StoredMeta { czxid: 2, mzxid: stored_mzxid, pzxid: 2, aversion: 0, epoch: 0 };
    let stored = crate::store::StoredVersion { meta: Some(meta), tomb: None };
    vec![history::Recheck { path: "/r".into(), stored, current: Ok(znode("/r", current_mzxid, &[])) }]
}

/// Whether a status write asked for in `effects` names a history reset.
fn names_a_reset(effects: &[Effect]) -> bool {
    effects.iter().any(|e| {
        matches!(e, Effect::WriteStatus { fields }
            if fields.iter().any(|(f, _)| *f == crate::schema::status_field::HISTORY_RESET_AT))
    })
}

/// Two mirrors of one root: the other one writes newer reads of `/r` between this one's reads
/// and writes, so two synced walks in a row have their puts refused. That is a race, not a
/// restore: the confirmation finds ZooKeeper, synced, holding what Redis holds or newer. Before
/// the fix a second refused walk "confirmed" a restore: history 1 was started, and across the
/// false epoch change this mirror's lagging read replaced the other's newer version.
#[test]
fn refused_walks_whose_paths_zookeeper_holds_newer_start_no_history() {
    let mut s = synced_script();
    s.feed(Input::SubtreeChecked { generation: 1, result: Ok(false) });
    let mut seen = Vec::new();
    for (generation, (stored, current)) in [(1, (40, 45)), (2, (60, 61))] {
        // The walk reads /r at 30; the other mirror has written a newer read meanwhile.
        walk_root(&mut s, generation, sync_point(20, 0), znode("/r", 30, &[]), WriteOutcome::Refused(Refusal::Older));
        let effects = s.take();
        assert_eq!(confirmations(&effects), vec![(generation, vec!["/r".to_owned()])], "{effects:?}");
        let (syncs, _) = syncs_and_claims(&effects);
        assert!(syncs.is_empty(), "walk {generation}: a walk was started instead of a confirmation");
        seen.extend(effects);
        s.feed(Input::HistoryConfirmed { generation, result: Ok(recheck_root(stored, current)) });
        // The watermark claim that follows lands; the status writes too.
        loop {
            let effects = s.take();
            let wrote = !syncs_and_claims(&effects).1.is_empty();
            seen.extend(effects);
            if !wrote {
                break;
            }
            s.ack();
        }
        s.status_answered(true);
        // The next anti-entropy pass (the heartbeat writes the status meanwhile).
        s.wait(Duration::from_secs(3600));
    }
    seen.extend(s.take());
    let (_, claims) = syncs_and_claims(&seen);
    assert!(claims.iter().all(|(epoch, _)| *epoch == 0), "a new history was started: {claims:?}");
    assert!(!names_a_reset(&seen), "P:mirror names a history reset");
    assert_eq!(s.phase(), Phase::Live);
}

/// A restore seen late: ZooKeeper has passed Redis's claim (20) again, but Redis holds `/r` at
/// 40 of history 0 and a synced ZooKeeper at 30. One confirmation proves it: history 1.
#[test]
fn a_refused_path_redis_holds_newer_than_a_synced_zookeeper_starts_a_new_history() {
    let mut s = synced_script();
    s.feed(Input::SubtreeChecked { generation: 1, result: Ok(false) });
    walk_root(&mut s, 1, sync_point(20, 0), znode("/r", 30, &[]), WriteOutcome::Refused(Refusal::Older));
    let effects = s.take();
    assert_eq!(confirmations(&effects), vec![(1, vec!["/r".to_owned()])]);
    assert!(syncs_and_claims(&effects).1.iter().all(|(epoch, _)| *epoch == 0));
    s.feed(Input::HistoryConfirmed { generation: 1, result: Ok(recheck_root(40, 30)) });
    let (syncs, claims) = syncs_and_claims(&s.take());
    assert_eq!(syncs, vec![2], "the rebuild walk starts");
    assert_eq!(claims, vec![(1, Some(0))], "history 1 is claimed from 0");
    s.ack();
    s.status_answered(true);
    s.wait(Duration::from_secs(2));
    assert!(names_a_reset(&s.take()), "P:mirror names no history reset");
    // An answer that comes late (for an older walk, or after the reset) changes nothing more.
    s.feed(Input::HistoryConfirmed { generation: 1, result: Ok(recheck_root(40, 30)) });
    let (syncs, claims) = syncs_and_claims(&s.take());
    assert!(syncs.is_empty() && claims.iter().all(|(epoch, _)| *epoch == 1), "{syncs:?} {claims:?}");
}

/// A reconcile walk whose puts were refused keeps the watermark unclaimed until the refusals
/// are known to be a race: were they a restore, its claim would count writes Redis refused.
#[test]
fn a_covering_walk_under_confirmation_claims_nothing_until_the_answer() {
    let mut s = synced_script();
    s.feed(Input::SubtreeChecked { generation: 1, result: Ok(false) });
    walk_root(&mut s, 1, sync_point(20, 0), znode("/r", 30, &[]), WriteOutcome::Refused(Refusal::Older));
    assert_eq!(confirmations(&s.take()).len(), 1);
    // A live change is read and written meanwhile: its pipeline claims nothing.
    s.feed(Input::Changed { path: "/r".into(), kind: Change::Data });
    let reads = s.reads();
    s.feed(answer(&reads[0], |p| znode(p, 50, &[])));
    s.ack();
    let (_, claims) = syncs_and_claims(&s.take());
    assert!(claims.iter().all(|(_, zxid)| zxid.is_none()), "claimed before the confirmation: {claims:?}");
    s.feed(Input::HistoryConfirmed { generation: 1, result: Ok(recheck_root(40, 50)) });
    let (_, claims) = syncs_and_claims(&s.take());
    assert!(claims.iter().any(|(epoch, zxid)| *epoch == 0 && zxid.is_some()), "nothing claimed after: {claims:?}");
}

#[test]
fn a_newer_history_in_redis_is_adopted_when_the_scripts_load_and_on_refusal() {
    let mut s = Script::new(|_| {});
    s.feed(Input::ScriptsLoaded(Ok(3)));
    s.feed(Input::Connected);
    s.feed(Input::WatchAdded);
    s.feed(Input::SubtreeChecked { generation: 1, result: Ok(false) });
    let reads = s.reads();
    s.feed(answer(&reads[0], |p| znode(p, 30, &[])));
    let (_, claims) = syncs_and_claims(&s.take());
    assert_eq!(claims, vec![(3, None)], "writes carry the history P:mirror names");
    // Another mirror moved Redis past history 3: follow it with a rebuild under 4.
    s.answer_batch(|_| WriteOutcome::Refused(Refusal::NewerHistory));
    let (syncs, claims) = syncs_and_claims(&s.take());
    assert_eq!((syncs, claims), (vec![2], vec![(4, Some(0))]));
}

/// Review 4: a Redis that stays unreachable (refused, or a certificate that no longer
/// validates) is logged once, then at most every 30 s (`redis_failed`'s "Redis unreachable;
/// retrying" branch), not once per retry. Each retry's probe puts the link in `Loading`, so
/// the failed probe is taken for a fresh failure and logs "Redis write failed" again: a
/// warning per retry (measured: 43 in 40 s with a rotated server certificate).
#[test]
fn review4_a_redis_that_stays_down_is_not_logged_at_every_retry() {
    #[derive(Clone, Default)]
    struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    tracing::subscriber::with_default(subscriber, || {
        let mut s = Script::live(|_| {});
        s.feed(Input::SubtreeChecked { generation: 1, result: Ok(false) });
        let first = s.reads();
        s.feed(answer(&first[0], |p| znode(p, 5, &[])));
        s.take();
        let down = || StoreError::Unexpected { server: "redis".into(), what: "test", detail: "review4 down".into() };
        s.feed(Input::WriteDone(Err(down())));
        for _ in 0..10 {
            s.wait(Duration::from_secs(6)); // past the longest backoff (5 s)
            assert!(s.take().iter().any(|e| matches!(e, Effect::LoadScripts)), "probed after the backoff");
            s.feed(Input::ScriptsLoaded(Err(down())));
        }
    });
    let text = String::from_utf8_lossy(&lines.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)).into_owned();
    let warnings = text.lines().filter(|l| l.contains("review4 down")).count();
    // 66 s of an unreachable Redis: the first failure, then at most one line per 30 s.
    assert!(warnings <= 3, "{warnings} warnings in 66 s of retries:\n{text}");
}

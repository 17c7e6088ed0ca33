//! Several Redis targets from one process (`[[targets]]`, `--redis NAME=URL`), against real
//! servers: each target is mirrored on its own, so one that hangs holds back nothing of the
//! others, and reconciles (a deleted subtree included) when it answers again; `status` and
//! `verify` report each target; a target dropped from the settings keeps its copy, and one
//! added is cold-synced, without a restart.

mod common;

use std::path::Path;

use common::binary::{self, Daemon};
use common::chaos::{finish, Load, Reader};
use common::world::{assert_converges, create_tree, delete_tree, redis_conn, wait_for_data};
use common::{create_all, unique_root, zk_client, RedisServer, ZkServer};

fn binary_path() -> &'static str {
    env!("CARGO_BIN_EXE_zkmirror")
}

/// A settings file mirroring `root` into each `(name, url)` target.
fn write_settings(file: &Path, zk: &str, root: &str, targets: &[(&str, String)]) {
    write_settings_with(file, zk, root, targets, "");
}

/// The same, with more lines in `[mirror]`.
fn write_settings_with(file: &Path, zk: &str, root: &str, targets: &[(&str, String)], mirror: &str) {
    let mut text = format!("[zookeeper]\nservers = {zk:?}\n\n[mirror]\nanti_entropy_interval = \"1h\"\n{mirror}\n");
    for (name, url) in targets {
        text.push_str(&format!("[[targets]]\nname = {name:?}\nurl = {url:?}\n\n"));
    }
    text.push_str(&format!("[[roots]]\npath = {root:?}\n"));
    // Written whole then renamed: the daemon's file watcher never reads half a file.
    let partial = file.with_extension("partial");
    std::fs::write(&partial, text).expect("writing the settings file");
    std::fs::rename(&partial, file).expect("renaming the settings file");
}

/// `zkmirror run --config FILE` with a settings file mirroring `root` into `targets`; the
/// folder holds the file and the log.
fn run_into(zk: &str, root: &str, targets: &[(&str, String)]) -> (tempfile::TempDir, std::path::PathBuf, Daemon) {
    run_into_with(zk, root, targets, "")
}

fn run_into_with(
    zk: &str,
    root: &str,
    targets: &[(&str, String)],
    mirror: &str,
) -> (tempfile::TempDir, std::path::PathBuf, Daemon) {
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = dir.path().join("zkmirror.toml");
    write_settings_with(&settings, zk, root, targets, mirror);
    let arg = settings.display().to_string();
    let daemon = Daemon::start(binary_path(), &["--config", &arg], "zkmirror=info", &dir.path().join("run.log"));
    (dir, settings, daemon)
}

/// Sends SIGSTOP or SIGCONT to a server: a paused Redis keeps its connections open and
/// answers nothing, like a hung or partitioned one.
fn pause(server: &RedisServer, paused: bool) {
    let pid = server.pid().expect("the Redis server runs");
    let signal = if paused { libc::SIGSTOP } else { libc::SIGCONT };
    // SAFETY: a plain syscall on a child this process spawned and has not reaped.
    let rc = unsafe { libc::kill(pid as i32, signal) };
    assert_eq!(rc, 0, "signalling redis-server pid {pid}: {}", std::io::Error::last_os_error());
}

/// The hardest case for independence: target `b` hangs (SIGSTOP: its connections stay open
/// and every command waits for its timeout) under a steady load, past its write timeout, and a
/// whole subtree is deleted meanwhile. Target `a` keeps up (a change made during the hang reaches it, and a
/// reader polling it never sees a version go backwards); `status` says `b` is not fine and `a`
/// is; once `b` answers again it reconciles, the deleted subtree included, and `verify`
/// reports both exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_target_holds_back_nothing_and_reconciles_when_it_answers_again() {
    let zk_connect = ZkServer::shared().connect_string();
    let zk = zk_client(&zk_connect).await;
    let root = unique_root("targets-hung");
    create_all(&zk, &root, b"root").await;
    create_all(&zk, &format!("{root}/deep"), b"deep").await;
    create_tree(&zk, &format!("{root}/deep"), 3, 3, 32).await;
    let (a, b) = (RedisServer::start(), RedisServer::start());
    let (_dir, settings, mut daemon) = run_into(&zk_connect, &root, &[("a", a.url()), ("b", b.url())]);
    let settings_arg = settings.display().to_string();
    assert_converges(&zk, &a.url(), "zk", &root).await;
    assert_converges(&zk, &b.url(), "zk", &root).await;

    let load = Load::start(&zk_connect, &root, 14);
    let reader = Reader::start(&a.url(), "zk", &root);
    pause(&b, true);
    // While b hangs: a change reaches a, and a deep subtree goes away.
    zk.set_data(&root, b"changed while b hangs", None).await.expect("set");
    delete_tree(&zk, &format!("{root}/deep")).await;
    wait_for_data(&a.url(), &root, b"changed while b hangs").await;
    let status = binary::run(binary_path(), &["status", "--config", &settings_arg]).await;
    assert_eq!(status.code, 1, "status with b hung: {status:?}");
    let (a_part, b_part) = status.stdout.split_once("target b").unwrap_or_else(|| panic!("no target b: {status:?}"));
    assert!(a_part.starts_with("target a") && a_part.contains("live"), "target a's status: {status:?}");
    assert!(b_part.contains("NOT OK"), "target b's status: {status:?}");

    // Long enough for b's writes to time out: its mirror takes the outage path, and must
    // reconcile when b answers again (the watch told it of the delete, but not b).
    daemon.wait_for_lines(&["name=b", "Redis write failed"], 1).await;
    pause(&b, false);
    daemon.wait_for_lines(&["name=b", "Redis is reachable again: reconciling"], 1).await;
    finish(load, reader, &zk, &a.url(), &root, 50).await;
    assert_converges(&zk, &b.url(), "zk", &root).await;
    let mut b_conn = redis_conn(&b.url()).await;
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("zk:{{{root}/deep*")).query_async(&mut b_conn).await.expect("KEYS on b");
    // Tombstones stay for their ttl: they are what refuses a late write of a deleted version.
    let leftover: Vec<&String> = keys.iter().filter(|k| !k.ends_with(":tomb")).collect();
    assert!(leftover.is_empty(), "b kept keys of the deleted subtree: {leftover:?}");
    assert!(!keys.is_empty(), "b recorded no delete of the subtree");
    let verify = binary::run(binary_path(), &["verify", "--config", &settings_arg, "--json"]).await.expect(0);
    let report: serde_json::Value = serde_json::from_str(&verify.stdout).expect("verify --json");
    let targets: Vec<&str> =
        report["roots"].as_array().into_iter().flatten().filter_map(|r| r["target"].as_str()).collect();
    assert_eq!(targets, ["a", "b"], "{report}");
    assert_eq!(report["exact"], true, "{report}");
    let status = binary::run(binary_path(), &["status", "--config", &settings_arg, "--json"]).await.expect(0);
    let value: serde_json::Value = serde_json::from_str(&status.stdout).expect("status --json");
    assert_eq!(value["targets"].as_array().map(Vec::len), Some(2), "{value}");
    daemon.stop();
}

/// The settings change under a running process: target `b` is dropped (its mirror stops and its
/// copy stays readable there: nothing asked for it to be deleted) and target `c` is added (it
/// is cold-synced while `a` keeps running).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_target_keeps_its_copy_and_an_added_one_is_synced() {
    let zk_connect = ZkServer::shared().connect_string();
    let zk = zk_client(&zk_connect).await;
    let root = unique_root("targets-reload");
    create_all(&zk, &root, b"root").await;
    create_tree(&zk, &root, 3, 2, 16).await;
    let (a, b, c) = (RedisServer::start(), RedisServer::start(), RedisServer::start());
    let (_dir, settings, mut daemon) = run_into(&zk_connect, &root, &[("a", a.url()), ("b", b.url())]);
    assert_converges(&zk, &a.url(), "zk", &root).await;
    assert_converges(&zk, &b.url(), "zk", &root).await;

    write_settings(&settings, &zk_connect, &root, &[("a", a.url()), ("c", c.url())]);
    daemon.wait_for_log("reload applied").await;
    assert_converges(&zk, &c.url(), "zk", &root).await;
    zk.set_data(&root, b"after the reload", None).await.expect("set");
    wait_for_data(&a.url(), &root, b"after the reload").await;
    wait_for_data(&c.url(), &root, b"after the reload").await;
    // b's copy is the one it had, whole: not purged, and no longer written.
    let mut b_conn = redis_conn(&b.url()).await;
    let data: Option<Vec<u8>> =
        redis::cmd("GET").arg(format!("zk:{{{root}}}")).query_async(&mut b_conn).await.expect("GET on b");
    assert_eq!(data.as_deref(), Some(&b"root"[..]), "b's copy after it was dropped");
    let znodes: Vec<String> =
        redis::cmd("KEYS").arg(format!("zk:{{{root}*}}:meta")).query_async(&mut b_conn).await.expect("KEYS on b");
    assert_eq!(znodes.len(), 1 + 3 + 9, "b's copy lost znodes: {znodes:?}");
    daemon.stop();
}

/// ZooKeeper's own count of the packets it received (`mntr`): reads, syncs, pings, the lot.
fn packets_received(server: &ZkServer) -> u64 {
    let mntr = server.four_letter_word("mntr").expect("mntr");
    mntr.lines()
        .find_map(|line| line.strip_prefix("zk_packets_received").map(|v| v.trim().parse::<u64>()))
        .unwrap_or_else(|| panic!("no zk_packets_received in mntr: {mntr}"))
        .expect("zk_packets_received is a number")
}

/// Runs the daemon into `targets` until every one has finished its cold sync, stops it, and
/// answers how many packets ZooKeeper received meanwhile (nothing else uses this server then).
async fn packets_of_cold_sync(server: &ZkServer, root: &str, targets: &[(&str, String)]) -> u64 {
    let before = packets_received(server);
    let (_dir, _settings, mut daemon) = run_into(&server.connect_string(), root, targets);
    for (name, _) in targets {
        daemon.wait_for_lines(&[&format!("name={name}"), "cold sync done"], 1).await;
    }
    daemon.stop();
    packets_received(server) - before
}

/// One ZooKeeper read feeds every target: three targets' cold syncs of a 1,555-znode tree cost
/// ZooKeeper well under twice what one target's costs (each target reading for itself costs
/// three times as much), and every copy is exact. The server is this test's own, so that its
/// packet count is the mirror's alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_zookeeper_read_feeds_every_target() {
    let server = ZkServer::start();
    let zk = zk_client(&server.connect_string()).await;
    let root = unique_root("targets-shared");
    create_all(&zk, &root, b"root").await;
    create_tree(&zk, &root, 6, 4, 16).await;
    let redis: Vec<RedisServer> = (0..4).map(|_| RedisServer::start()).collect();

    let one = packets_of_cold_sync(&server, &root, &[("a", redis[0].url())]).await;
    let three =
        packets_of_cold_sync(&server, &root, &[("b", redis[1].url()), ("c", redis[2].url()), ("d", redis[3].url())])
            .await;
    for r in &redis {
        assert_converges(&zk, &r.url(), "zk", &root).await;
    }
    eprintln!("ZooKeeper packets per cold sync: one target {one}, three targets {three}");
    assert!(
        three * 2 < one * 3,
        "three targets cost ZooKeeper {three} packets, one target {one}: they did not share their reads"
    );
}

/// A target whose queue from the shared ZooKeeper hub overflows (a queue of 64 deliveries, from
/// a 256 KiB memory budget, against bursts of a thousand creates in one multi each) loses its
/// events, starts over once it drains, and ends exact, the burst's deletes included; a reader
/// polling it meanwhile never sees a version go backwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_whose_shared_queue_overflows_starts_over_and_ends_exact() {
    let zk_connect = ZkServer::shared().connect_string();
    let zk = zk_client(&zk_connect).await;
    let root = unique_root("targets-overflow");
    create_all(&zk, &root, b"root").await;
    create_tree(&zk, &root, 3, 2, 16).await;
    let (a, b) = (RedisServer::start(), RedisServer::start());
    let small = "memory_budget = \"256KiB\"\nmax_znode_size = \"4KiB\"\n";
    let (_dir, _settings, mut daemon) = run_into_with(&zk_connect, &root, &[("a", a.url()), ("b", b.url())], small);
    assert_converges(&zk, &a.url(), "zk", &root).await;
    assert_converges(&zk, &b.url(), "zk", &root).await;

    let load = Load::start(&zk_connect, &root, 23);
    let reader = Reader::start(&a.url(), "zk", &root);
    let options = zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
    for burst in 0..3 {
        let parent = format!("{root}/burst{burst}");
        zk.create(&parent, b"burst", &options).await.expect("creating a burst's parent");
        let mut multi = zk.new_multi_writer();
        for i in 0..1000 {
            multi.add_create(&format!("{parent}/n{i}"), b"x", &options).expect("adding a create");
        }
        multi.commit().await.expect("a burst of creates");
    }
    // One burst goes away again, whole: what a target that lost its events must still remove.
    delete_tree(&zk, &format!("{root}/burst1")).await;
    daemon.wait_for_log("fell behind this root's ZooKeeper").await;
    daemon.wait_for_log("caught up: it starts over with a reconcile").await;
    finish(load, reader, &zk, &a.url(), &root, 20).await;
    assert_converges(&zk, &b.url(), "zk", &root).await;
    daemon.stop();
}

/// Two targets sharing one ZooKeeper session through the hub, behind a proxy that is cut:
/// first briefly (the session survives: the hub re-adds the one watch, and a change made after
/// the reconnect, which only a re-added watch can deliver, reaches both), then past the session
/// timeout (the session expires: both targets reconcile in the new one, a deleted subtree and
/// a changed and a created znode included). A reader polls target `a` throughout and never
/// sees a version go backwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_sharing_a_session_come_through_a_reconnect_and_an_expiry() {
    let zk_connect = ZkServer::shared().connect_string();
    let zk = zk_client(&zk_connect).await;
    let proxy = common::TcpProxy::start(ZkServer::shared().addr());
    let root = unique_root("targets-session");
    create_all(&zk, &root, b"root").await;
    create_all(&zk, &format!("{root}/gone"), b"gone").await;
    create_tree(&zk, &format!("{root}/gone"), 3, 2, 16).await;
    create_tree(&zk, &root, 3, 2, 16).await;
    let (a, b) = (RedisServer::start(), RedisServer::start());
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = dir.path().join("zkmirror.toml");
    let text = format!(
        "[zookeeper]\nservers = {:?}\nsession_timeout = \"800ms\"\n\n[mirror]\nanti_entropy_interval = \"1h\"\n\n\
         [[targets]]\nname = \"a\"\nurl = {:?}\n\n[[targets]]\nname = \"b\"\nurl = {:?}\n\n[[roots]]\npath = {root:?}\n",
        proxy.connect_string(),
        a.url(),
        b.url()
    );
    std::fs::write(&settings, text).expect("writing the settings file");
    let arg = settings.display().to_string();
    let mut daemon = Daemon::start(binary_path(), &["--config", &arg], "zkmirror=info", &dir.path().join("run.log"));
    assert_converges(&zk, &a.url(), "zk", &root).await;
    assert_converges(&zk, &b.url(), "zk", &root).await;
    let reader = Reader::start(&a.url(), "zk", &root);

    proxy.cut();
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    proxy.restore();
    // After each target's reconcile walk: from then on only the watch brings changes.
    daemon.wait_for_lines(&["name=a", "reconcile after reconnect done"], 1).await;
    daemon.wait_for_lines(&["name=b", "reconcile after reconnect done"], 1).await;
    zk.set_data(&root, b"after the reconnect", None).await.expect("set");
    wait_for_data(&a.url(), &root, b"after the reconnect").await;
    wait_for_data(&b.url(), &root, b"after the reconnect").await;

    proxy.cut();
    zk.set_data(&format!("{root}/n0"), b"changed while expired", None).await.expect("set");
    delete_tree(&zk, &format!("{root}/gone")).await;
    create_all(&zk, &format!("{root}/new"), b"created while expired").await;
    // Several session timeouts: the server expires the shared session.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    proxy.restore();
    daemon.wait_for_lines(&["name=a", "session expired"], 1).await;
    daemon.wait_for_lines(&["name=b", "session expired"], 1).await;
    assert_converges(&zk, &a.url(), "zk", &root).await;
    assert_converges(&zk, &b.url(), "zk", &root).await;
    zk.set_data(&format!("{root}/new"), b"live again", None).await.expect("set");
    wait_for_data(&a.url(), &format!("{root}/new"), b"live again").await;
    wait_for_data(&b.url(), &format!("{root}/new"), b"live again").await;
    let seen = reader.stop().await;
    assert!(seen.backwards.is_empty(), "a version went backwards on a: {:?}", seen.backwards);
    assert!(seen.torn.is_empty(), "a torn pair on a: {:?}", seen.torn);
    daemon.stop();
}

/// A cold sync that starts while the tree is being written: events mark paths dirty that the
/// walk is about to read, so one request may name a path twice, or a later request join the
/// target's own read in flight; each use gets the answer (a lone target once saw a false
/// connection loss for the second, retried for ever, and never finished its cold sync).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_sync_under_load_finishes_and_ends_exact() {
    let zk_connect = ZkServer::shared().connect_string();
    let zk = zk_client(&zk_connect).await;
    let root = unique_root("targets-busy");
    create_all(&zk, &root, b"root").await;
    create_tree(&zk, &root, 4, 2, 16).await;
    let a = RedisServer::start();
    let load = Load::start(&zk_connect, &root, 31);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (_dir, _settings, mut daemon) = run_into(&zk_connect, &root, &[("a", a.url())]);
    let reader = Reader::start(&a.url(), "zk", &root);
    daemon.wait_for_lines(&["name=a", "cold sync done"], 1).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    finish(load, reader, &zk, &a.url(), &root, 20).await;
    assert!(!daemon.log_text().contains("connection to server has lost"), "a false connection loss was answered");
    daemon.stop();
}

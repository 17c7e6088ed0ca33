//! The operator commands, run as the real `zkmirror` binary against real ZooKeeper and Redis:
//! load `fixtures/` with `import`, mirror it, then `verify`, `status`, `get`, `ls`, `export`
//! as an operator would, judging their exit codes and output.
//!
//! Each test works below its own root on the shared ZooKeeper and starts its own Redis.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::world::{assert_converges, redis_conn, test_config, RunningMirror};
use common::{unique_root, wait_until, zk_client, RedisServer, ZkServer};
use zkmirror::Phase;

const FIXTURE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/app");
const FIXTURE_TREE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/app.json");
/// Znodes in `fixtures/app` (its folders and files, the top included).
const FIXTURE_ZNODES: usize = 19;

/// What one run of the binary did.
struct Outcome {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Outcome {
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.out()))
    }

    /// Panics with the whole output unless the exit code is `code`.
    #[track_caller]
    fn expect(self, code: i32) -> Outcome {
        assert_eq!(self.code, code, "exit code; stdout:\n{}\nstderr:\n{}", self.out(), self.stderr);
        self
    }
}

fn command(args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_zkmirror"));
    command.args(args).env("RUST_LOG", "warn").stdin(Stdio::null()).kill_on_drop(true);
    for var in ["ZKMIRROR_ZK", "ZKMIRROR_REDIS", "ZKMIRROR_ROOT", "ZKMIRROR_PREFIX", "ZKMIRROR_ZK_AUTH"] {
        command.env_remove(var);
    }
    command
}

/// Runs `zkmirror BASE... EXTRA...` to completion.
async fn zkmirror_with(base: &[&str], extra: &[&str]) -> Outcome {
    let args: Vec<&str> = base.iter().chain(extra).copied().collect();
    zkmirror(&args).await
}

/// Runs `zkmirror ARGS...` to completion.
async fn zkmirror(args: &[&str]) -> Outcome {
    finish(start(args)).await
}

/// Starts `zkmirror ARGS...`; [`finish`] waits for it.
fn start(args: &[&str]) -> tokio::process::Child {
    command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starting the zkmirror binary")
}

async fn finish(child: tokio::process::Child) -> Outcome {
    let output = child.wait_with_output().await.expect("running the zkmirror binary");
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn import(zk: &str, source: &str, root: &str) -> Outcome {
    zkmirror(&["import", source, "--zk", zk, "--root", root]).await.expect(0)
}

/// The subtree as a tree file (relative paths: equal text means equal trees).
async fn export_text(zk: &str, path: &str) -> String {
    zkmirror(&["export", path, "--zk", zk]).await.expect(0).out()
}

fn fixture(relative: &str) -> Vec<u8> {
    let file = Path::new(FIXTURE_DIR).join(relative);
    std::fs::read(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_loads_the_fixtures_and_a_second_import_changes_nothing() {
    let zk = ZkServer::shared().connect_string();
    let client = zk_client(&zk).await;
    let root = unique_root("import");

    let dry = zkmirror(&["import", FIXTURE_DIR, "--zk", &zk, "--root", &root, "--dry-run"]).await.expect(0);
    assert!(
        dry.out().contains(&format!("would create {root}/services/checkout/db/pool size (2 bytes)")),
        "{}",
        dry.out()
    );
    assert!(dry.out().contains("nothing written"), "{}", dry.out());
    assert_eq!(client.check_stat(&root).await.expect("stat root"), None, "a dry run wrote");

    let first = import(&zk, FIXTURE_DIR, &root).await;
    assert!(first.out().contains(&format!("{FIXTURE_ZNODES} created")), "{}", first.out());
    // Files are znodes holding their bytes; a folder's `.data` is the folder znode's data.
    let data = |path: String| {
        let client = client.clone();
        async move { client.get_data(&path).await.unwrap_or_else(|e| panic!("{path}: {e}")) }
    };
    assert_eq!(data(root.clone()).await.0, fixture(".data"));
    assert_eq!(data(format!("{root}/services/checkout")).await.0, b"team=payments");
    assert_eq!(data(format!("{root}/services/checkout/db/pool size")).await.0, b"20");
    assert_eq!(data(format!("{root}/certs/ca-fingerprint.sha256")).await.0, fixture("certs/ca-fingerprint.sha256"));
    assert_eq!(data(format!("{root}/services/search/maintenance-mode")).await.0, b"");
    let (mut children, _) = client.get_children(&format!("{root}/services/checkout")).await.expect("children");
    children.sort();
    assert_eq!(children, ["db", "feature-flags", "replicas"]);

    // Idempotent: the same tree again makes no write at all (no zxid moves).
    let before = (data(root.clone()).await.1, data(format!("{root}/services/checkout/replicas")).await.1);
    let second = import(&zk, FIXTURE_DIR, &root).await;
    assert!(second.out().starts_with("import: no changes"), "{}", second.out());
    let after = (data(root.clone()).await.1, data(format!("{root}/services/checkout/replicas")).await.1);
    assert_eq!(before, after);

    // A changed tree: the dry run lists exactly the writes, the import makes them, and a
    // file removed from the source stays in ZooKeeper (import never deletes).
    let scratch = tempfile::tempdir().expect("tempdir");
    let changed = scratch.path().join("app");
    common::copy_dir(Path::new(FIXTURE_DIR), &changed);
    std::fs::write(changed.join("services/checkout/replicas"), b"5").expect("edit");
    std::fs::write(changed.join("services/checkout/feature-flags/dark-mode"), b"true").expect("add");
    std::fs::remove_file(changed.join("services/search/endpoint")).expect("remove");
    let changed = changed.to_str().expect("utf-8 temp path");
    let dry = zkmirror(&["import", changed, "--zk", &zk, "--root", &root, "--dry-run"]).await.expect(0);
    let lines: Vec<&str> = dry.stdout.split(|b| *b == b'\n').map(|l| std::str::from_utf8(l).unwrap_or("")).collect();
    let update = format!("would update {root}/services/checkout/replicas (1 -> 1 bytes)");
    let create = format!("would create {root}/services/checkout/feature-flags/dark-mode (4 bytes)");
    assert_eq!(lines[..2], [create.as_str(), update.as_str()], "{}", dry.out());
    assert_eq!(data(format!("{root}/services/checkout/replicas")).await.0, b"3", "a dry run wrote");
    import(&zk, changed, &root).await;
    assert_eq!(data(format!("{root}/services/checkout/replicas")).await.0, b"5");
    assert_eq!(data(format!("{root}/services/checkout/feature-flags/dark-mode")).await.0, b"true");
    assert_eq!(data(format!("{root}/services/search/endpoint")).await.0, fixture("services/search/endpoint"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tree_file_fixture_is_the_directory_fixture() {
    let zk = ZkServer::shared().connect_string();
    let from_dir = unique_root("from-dir");
    let from_file = unique_root("from-file");
    import(&zk, FIXTURE_DIR, &from_dir).await;
    import(&zk, FIXTURE_TREE, &from_file).await;
    let exported = export_text(&zk, &from_dir).await;
    assert_eq!(exported, export_text(&zk, &from_file).await);
    // The committed tree file is exactly what export writes for the directory.
    let committed = std::fs::read_to_string(FIXTURE_TREE).expect("read fixtures/app.json");
    assert_eq!(exported, committed, "fixtures/app.json is out of date with fixtures/app/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_elsewhere_gives_an_identical_tree() {
    let zk = ZkServer::shared().connect_string();
    let original = unique_root("export-src");
    import(&zk, FIXTURE_DIR, &original).await;
    let scratch = tempfile::tempdir().expect("tempdir");

    for (form, out) in [("dir", scratch.path().join("dump")), ("tree", scratch.path().join("dump.json"))] {
        let out = out.to_str().expect("utf-8 temp path").to_owned();
        let first = zkmirror(&["export", &original, "--zk", &zk, "--out", &out]).await.expect(0);
        assert!(first.out().contains(&format!("({FIXTURE_ZNODES} znodes)")), "{form}: {}", first.out());
        // Idempotent: the same subtree again rewrites no file.
        let again = zkmirror(&["export", &original, "--zk", &zk, "--out", &out]).await.expect(0);
        assert!(again.out().contains("no changes"), "{form}: {}", again.out());

        let copy = unique_root(&format!("export-dst-{form}"));
        import(&zk, &out, &copy).await;
        assert_eq!(export_text(&zk, &copy).await, export_text(&zk, &original).await, "{form} round trip");
    }

    // Export never deletes: a directory holding something else is refused, naming it.
    let dump = scratch.path().join("dump");
    std::fs::write(dump.join("stale"), b"x").expect("stale file");
    let refused = zkmirror(&["export", &original, "--zk", &zk, "--out", dump.to_str().expect("utf-8")]).await.expect(2);
    assert!(refused.stderr.contains("stale"), "{}", refused.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_on_the_copy_and_names_a_tampered_key() {
    let zk = ZkServer::shared().connect_string();
    let client = zk_client(&zk).await;
    let redis = RedisServer::start();
    let root = unique_root("verify");
    import(&zk, FIXTURE_DIR, &root).await;
    let mirror = RunningMirror::start(test_config(&zk, &redis.url(), &root));
    mirror.wait_for_phase(Phase::Live).await;
    assert_converges(&client, &redis.url(), "zk", &root).await;
    let url = redis.url();
    let verify = ["verify", "--zk", &zk, "--redis", &url, "--root", &root];

    let exact = zkmirror(&verify).await.expect(0);
    assert!(exact.out().starts_with(&format!("exact: {FIXTURE_ZNODES} znodes under {root}")), "{}", exact.out());

    // Tamper with one value and add a key no znode explains: both are named.
    let mut conn = redis_conn(&url).await;
    let tampered = format!("zk:{{{root}/services/checkout/replicas}}");
    let extra = format!("zk:{{{root}/ghost}}");
    let _: () = redis::cmd("SET").arg(&tampered).arg("30").query_async(&mut conn).await.expect("SET");
    let _: () = redis::cmd("SET").arg(&extra).arg("boo").query_async(&mut conn).await.expect("SET");
    let different = zkmirror_with(&verify, &["--grace", "200ms"]).await.expect(1);
    assert!(different.out().starts_with("DIFFERENT: 2 keys differ"), "{}", different.out());
    assert!(different.out().contains(&format!("{tampered}: data differs")), "{}", different.out());
    assert!(different.out().contains(&format!("{extra}: extra key")), "{}", different.out());

    let report = zkmirror_with(&verify, &["--grace", "0", "--json"]).await.expect(1).json();
    assert_eq!(report["exact"], false);
    assert_eq!(report["znodes"], FIXTURE_ZNODES);
    let keys: Vec<&str> =
        report["differences"].as_array().expect("array").iter().filter_map(|d| d["key"].as_str()).collect();
    assert_eq!(keys, [extra.as_str(), tampered.as_str()]);
    assert_eq!(report["differences"][1]["kind"], "data");
    assert_eq!(report["differences"][1]["path"], format!("{root}/services/checkout/replicas"));

    // A difference that goes away within the grace period is not reported. With the mirror
    // stopped, only verify scans Redis: once it has (its first comparison is done), repair.
    let _: () = redis::cmd("DEL").arg(&extra).query_async(&mut conn).await.expect("DEL");
    mirror.stop().await;
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut conn).await.expect("RESETSTAT");
    let args: Vec<&str> = verify.iter().chain(&["--grace", "120s", "--json"]).copied().collect();
    let pending = start(&args);
    wait_until(Duration::from_secs(60), "verify has scanned Redis once", || {
        let mut conn = conn.clone();
        async move {
            let stats: String =
                redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.map_err(|e| e.to_string())?;
            if stats.contains("cmdstat_scan:") {
                Ok(())
            } else {
                Err("no SCAN yet".to_owned())
            }
        }
    })
    .await;
    let _: () = redis::cmd("SET").arg(&tampered).arg("3").query_async(&mut conn).await.expect("SET");
    let settled = finish(pending).await.expect(0).json();
    assert_eq!(settled["exact"], true);
    assert_eq!(settled["settled"], 1);

    // An unreachable server is an error (2), not a difference, and is named.
    let mut gone = RedisServer::start();
    let gone_url = gone.url();
    gone.stop();
    let error = zkmirror(&["verify", "--zk", &zk, "--redis", &gone_url, "--root", &root]).await.expect(2);
    assert!(error.stderr.contains(&format!("127.0.0.1:{}", gone.port())), "{}", error.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_exit_codes_follow_the_mirror() {
    let zk = ZkServer::shared().connect_string();
    let client = zk_client(&zk).await;
    let redis = RedisServer::start();
    let url = redis.url();
    let root = unique_root("status");
    import(&zk, FIXTURE_DIR, &root).await;
    let status = ["status", "--redis", &url];

    let none = zkmirror(&status).await.expect(1);
    assert!(none.out().contains("no mirror status"), "{}", none.out());

    let mirror = RunningMirror::start(test_config(&zk, &url, &root));
    mirror.wait_for_phase(Phase::Live).await;
    assert_converges(&client, &url, "zk", &root).await;
    let live = zkmirror(&status).await.expect(0);
    assert!(live.out().starts_with("OK: live"), "{}", live.out());
    let report = zkmirror_with(&status, &["--json"]).await.expect(0).json();
    assert_eq!(report["state"], "live");
    assert_eq!(report["roots"], serde_json::json!([root]));
    // Caught up: ZooKeeper's latest change under the root is in the copy.
    let status = &status;
    let with_zk = ["--json", "--zk", zk.as_str()];
    let with_zk = &with_zk;
    wait_until(Duration::from_secs(60), "status --zk reports 0 zxids behind", || async move {
        let report = zkmirror_with(status, with_zk).await.json();
        if report["behind"]["zxids"] == 0 && report["ok"] == true {
            Ok(report)
        } else {
            Err(report.to_string())
        }
    })
    .await;

    // A crashed mirror leaves `live` behind, but its heartbeat ages: stale.
    mirror.kill().await;
    let stale = wait_until(Duration::from_secs(60), "status calls the dead mirror stale", || async move {
        let outcome = zkmirror_with(status, &["--max-heartbeat-age", "1s"]).await;
        if outcome.code == 1 {
            Ok(outcome)
        } else {
            Err(format!("exit {}: {}", outcome.code, outcome.out()))
        }
    })
    .await;
    assert!(stale.out().starts_with("NOT OK: stale: heartbeat"), "{}", stale.out());
    // What changed since is lag, in zxids and in time.
    client.set_data(&format!("{root}/services/checkout/replicas"), b"4", None).await.expect("set_data");
    let behind = zkmirror_with(status, &["--json", "--zk", &zk, "--max-heartbeat-age", "1h"]).await.expect(0).json();
    assert!(behind["behind"]["zxids"].as_i64().is_some_and(|z| z > 0), "{behind}");
    assert_eq!(behind["behind"]["pending_znodes"], 1, "{behind}");
    assert!(behind["behind"]["ms"].is_i64(), "{behind}");

    // A cleanly stopped mirror says so: not live, exit 1 whatever its heartbeat.
    let mirror = RunningMirror::start(test_config(&zk, &url, &root));
    mirror.wait_for_phase(Phase::Live).await;
    mirror.stop().await;
    let stopped = zkmirror_with(status, &["--max-heartbeat-age", "1h"]).await.expect(1);
    assert!(stopped.out().starts_with("NOT OK: state is stopped"), "{}", stopped.out());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_ls_read_the_copy_like_an_application() {
    let zk = ZkServer::shared().connect_string();
    let client = zk_client(&zk).await;
    let redis = RedisServer::start();
    let url = redis.url();
    let root = unique_root("read");
    import(&zk, FIXTURE_DIR, &root).await;
    let mirror = RunningMirror::start(test_config(&zk, &url, &root));
    mirror.wait_for_phase(Phase::Live).await;
    assert_converges(&client, &url, "zk", &root).await;

    let get = zkmirror(&["get", &format!("{root}/services/checkout/db/pool size"), "--redis", &url]).await.expect(0);
    assert_eq!(get.stdout, b"20");
    let binary = zkmirror(&["get", &format!("{root}/certs/ca-fingerprint.sha256"), "--redis", &url]).await.expect(0);
    assert_eq!(binary.stdout, fixture("certs/ca-fingerprint.sha256"));

    let checkout = format!("{root}/services/checkout");
    let meta = zkmirror(&["get", "--meta", &checkout, "--redis", &url]).await.expect(0).out();
    let (_, stat) = client.get_data(&checkout).await.expect("get_data");
    assert!(meta.starts_with(&format!("czxid: {}\nmzxid: {}\n", stat.czxid, stat.mzxid)), "{meta}");
    assert!(meta.contains("num_children: 3\n") && meta.contains("mirrored_at: "), "{meta}");

    let ls = zkmirror(&["ls", &checkout, "--redis", &url]).await.expect(0);
    assert_eq!(ls.out(), "db\nfeature-flags\nreplicas\n");
    let leaf = zkmirror(&["ls", &format!("{checkout}/replicas"), "--redis", &url]).await.expect(0);
    assert_eq!(leaf.out(), "");

    let missing = format!("{root}/no/such");
    let not_found = zkmirror(&["get", &missing, "--redis", &url]).await.expect(1);
    assert!(not_found.stderr.contains(&format!("no znode {missing}")), "{}", not_found.stderr);
    zkmirror(&["ls", &missing, "--redis", &url]).await.expect(1);
    let relative = zkmirror(&["get", "app/db", "--redis", &url]).await.expect(2);
    assert!(relative.stderr.contains("\"app/db\""), "{}", relative.stderr);
    mirror.stop().await;
}

#[tokio::test]
async fn run_rejects_bad_arguments_naming_them() {
    let cases: [(&[&str], &str); 4] = [
        (&["--root", "app"], "\"app\""),
        // `SET ... PX 0` would fail every delete: refused at start, naming the flag.
        (&["--root", "/app", "--tombstone-ttl", "0ms"], "--tombstone-ttl: bad setting tombstone_ttl"),
        (&["--root", "/app", "--redis", "redis//nohost:6379"], "redis//nohost:6379"),
        (&["--root", "/app", "--prefix", "z{k}"], "\"z{k}\""),
    ];
    for (bad, named) in cases {
        let mut args = vec!["run", "--zk", "127.0.0.1:1"];
        if !bad.contains(&"--redis") {
            args.extend(["--redis", "redis://127.0.0.1:1/"]);
        }
        args.extend_from_slice(bad);
        let outcome = zkmirror(&args).await;
        assert_ne!(outcome.code, 0, "{args:?} was accepted");
        assert!(outcome.stderr.contains(named), "{args:?}: the message does not name {named}: {}", outcome.stderr);
    }
}

#[tokio::test]
async fn import_names_the_file_it_cannot_use() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let broken: PathBuf = scratch.path().join("broken.json");
    std::fs::write(&broken, "{\"zkmirror-tree\": 1,\n \"znodes\": {\"/a\": 3}}\n").expect("write");
    let broken = broken.to_str().expect("utf-8 temp path");
    // The source is read before anything connects: no server is needed to find it bad.
    let outcome = zkmirror(&["import", broken, "--zk", "127.0.0.1:1", "--root", "/x"]).await.expect(2);
    assert!(outcome.stderr.contains(broken) && outcome.stderr.contains("line 2"), "{}", outcome.stderr);

    let dir = scratch.path().join("tree");
    std::fs::create_dir_all(dir.join("svc/.data")).expect("mkdir");
    let outcome =
        zkmirror(&["import", dir.to_str().expect("utf-8"), "--zk", "127.0.0.1:1", "--root", "/x"]).await.expect(2);
    assert!(outcome.stderr.contains("svc/.data"), "{}", outcome.stderr);
}

#[tokio::test]
async fn a_redis_address_without_a_scheme_is_answered_with_what_a_redis_url_looks_like() {
    for given in ["127.0.0.1:6379", "localhost:6379"] {
        for args in [vec!["get", "/app", "--redis", given], vec!["run", "--root", "/app", "--redis", given]] {
            let outcome = zkmirror(&args).await.expect(2);
            let said = &outcome.stderr;
            assert!(said.contains(given), "{args:?}: the value is not named: {said}");
            assert!(said.contains(&format!("redis://{given}/")), "{args:?}: no URL to write instead: {said}");
            assert!(said.contains("redis://HOST:PORT/") && said.contains("rediss://"), "{args:?}: {said}");
            // `run` logs at info by default: the error still comes once, not as a log line too.
            assert_eq!(said.matches("bad Redis URL").count(), 1, "{args:?}: said more than once: {said}");
        }
    }
}

#[tokio::test]
async fn run_says_a_bad_argument_once() {
    let mut command = command(&["run", "--root", "app"]);
    command.env("RUST_LOG", "info");
    let outcome = finish(command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn")).await.expect(2);
    assert_eq!(outcome.stderr.matches("\"app\"").count(), 1, "{}", outcome.stderr);
}

#[tokio::test]
async fn a_dead_redis_is_named_with_its_os_error_once() {
    let mut gone = RedisServer::start();
    let url = gone.url();
    gone.stop();
    let outcome = zkmirror(&["get", "/app", "--redis", &url]).await.expect(2);
    assert!(outcome.stderr.contains(&url), "{}", outcome.stderr);
    assert_eq!(outcome.stderr.matches("Connection refused").count(), 1, "{}", outcome.stderr);
}

/// `zkmirror run` against a port where nothing listens, logging to a file as a service would.
fn run_against_a_closed_port(log: &Path) -> tokio::process::Child {
    let closed = format!("127.0.0.1:{}", common::servers::free_port());
    let file = std::fs::File::create(log).expect("log file");
    let mut command = command(&["run", "--zk", &closed, "--redis", "redis://127.0.0.1:1/", "--root", "/app"]);
    command.env("RUST_LOG", "info").env_remove("NO_COLOR");
    command.stdout(Stdio::null()).stderr(file).spawn().expect("starting zkmirror run")
}

async fn first_line_containing(log: &Path, needle: &str) -> String {
    wait_until(Duration::from_secs(60), &format!("the log has a line with {needle:?}"), || async {
        let text = std::fs::read_to_string(log).map_err(|e| e.to_string())?;
        text.lines().find(|l| l.contains(needle)).map(str::to_owned).ok_or(text)
    })
    .await
}

#[tokio::test]
async fn an_unreachable_zookeeper_is_logged_with_the_real_cause_and_logs_to_a_file_have_no_colour() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let log = scratch.path().join("mirror.log");
    let mut mirror = run_against_a_closed_port(&log);
    // The first failure is logged as soon as it happens, naming the cause (not `timeout`).
    let first = first_line_containing(&log, "ZooKeeper unreachable").await;
    assert!(first.contains("refused"), "the first failure does not name its cause: {first}");
    mirror.start_kill().expect("kill");
    let _ = mirror.wait().await;
    let text = std::fs::read(&log).expect("read log");
    assert!(!text.contains(&0x1b), "escape codes in a log file: {}", String::from_utf8_lossy(&text));
}

/// On a terminal (a pty, through util-linux `script`) logs are coloured unless `NO_COLOR` is set.
#[tokio::test]
async fn no_color_turns_colour_off_on_a_terminal() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let run_on_a_pty = |no_color: bool| {
        let transcript = scratch.path().join(format!("pty-{no_color}.log"));
        let inner = format!(
            "timeout 2 {} run --zk 127.0.0.1:{} --redis redis://127.0.0.1:1/ --root /app",
            env!("CARGO_BIN_EXE_zkmirror"),
            common::servers::free_port()
        );
        let mut command = tokio::process::Command::new("script");
        command.args(["-qec", &inner]).arg(&transcript).env("RUST_LOG", "info").stdin(Stdio::null());
        command.stdout(Stdio::null()).stderr(Stdio::null());
        if no_color {
            command.env("NO_COLOR", "1");
        } else {
            command.env_remove("NO_COLOR");
        }
        async move {
            command.status().await.expect("running script(1)");
            std::fs::read(&transcript).expect("transcript")
        }
    };
    // `run` logs its start-up line and the first failure at once; `timeout` then stops it.
    let coloured = run_on_a_pty(false).await;
    assert!(coloured.contains(&0x1b), "no colour on a terminal: the check below could not fail");
    let plain = run_on_a_pty(true).await;
    assert!(!plain.contains(&0x1b), "colour despite NO_COLOR: {}", String::from_utf8_lossy(&plain));
}

#[tokio::test]
async fn every_command_defaults_to_the_standard_local_ports_and_says_so() {
    let zk_default = "[default: 127.0.0.1:2181]";
    let redis_default = "[default: redis://127.0.0.1:6379/]";
    for (command, defaults) in [
        ("run", &[zk_default, redis_default][..]),
        ("check-config", &[zk_default, redis_default]),
        ("verify", &[zk_default, redis_default]),
        ("status", &[zk_default, redis_default]),
        ("get", &[redis_default]),
        ("ls", &[redis_default]),
        ("import", &[zk_default]),
        ("export", &[zk_default]),
    ] {
        let help = zkmirror(&[command, "--help"]).await.expect(0).out();
        for default in defaults {
            assert!(help.contains(default), "`zkmirror {command} --help` does not show {default}:\n{help}");
        }
    }
    // Nothing given: the default is used (Redis at 6379 answers, or its absence is named).
    let outcome = zkmirror(&["ls", "/no/such/znode"]).await;
    assert!(
        outcome.code == 1 || outcome.stderr.contains("redis://127.0.0.1:6379/"),
        "exit {}: {}",
        outcome.code,
        outcome.stderr
    );
}

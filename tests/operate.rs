//! Operating the daemon: `zkmirror run --config FILE` as a real process against real servers,
//! as an operator runs it. Several roots with shared and own prefixes and filters, hot reload
//! (valid, invalid, SIGHUP), metrics and health endpoints, `check-config`, JSON logs.
//!
//! Every daemon is a [`Daemon`], killed by its pid when dropped, also when a test panics. Its
//! stderr goes to a log file the test reads. Nothing here asserts a wall-clock time: each wait
//! is for a condition, with a generous deadline.

mod common;

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use common::servers::free_port;
use common::world::{hget, redis_conn, wait_for_field, CONVERGE};
use common::{create_all, http_get, unique_root, wait_until, zk_client, RedisServer, ZkServer};
use redis::aio::MultiplexedConnection;
use tempfile::TempDir;
use zkmirror::filter::Filter;
use zkmirror::testing::Keys;
use zkmirror::verify::{compare_with_filter, Report};
use zookeeper_client::Client;

// ---------------------------------------------------------------------------------------------
// The daemon and its settings file
// ---------------------------------------------------------------------------------------------

/// A `zkmirror run` process. Dropping it kills it by pid (`Child::kill`), so no test leaves one
/// behind, whether it ends or panics; [`Daemon::stop`] stops it the way systemd does (SIGTERM).
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts `zkmirror [--log-format F] run --config CONFIG EXTRA...`, stderr and stdout into `log`.
    fn start(config: &Path, log: &Path, log_format: &str, extra: &[&str]) -> Daemon {
        let out = File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let err = out.try_clone().expect("cloning the log file handle");
        let mut command = Command::new(env!("CARGO_BIN_EXE_zkmirror"));
        command
            .args(["--log-format", log_format, "run", "--config"])
            .arg(config)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for var in [
            "ZKMIRROR_ZK",
            "ZKMIRROR_REDIS",
            "ZKMIRROR_ROOT",
            "ZKMIRROR_PREFIX",
            "ZKMIRROR_ZK_AUTH",
            "ZKMIRROR_CONFIG",
            "ZKMIRROR_METRICS_ADDR",
            "ZKMIRROR_LOG_FORMAT",
        ] {
            command.env_remove(var);
        }
        let child = command.spawn().expect("starting zkmirror run");
        Daemon { child, log: log.to_owned() }
    }

    fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: a plain kill(2) on our own child, which has not been reaped (we hold `child`
        // and only `stop`/`Drop` wait for it), so the pid cannot belong to anyone else.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}): {}", self.pid(), std::io::Error::last_os_error());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the log unless the process is still running.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("zkmirror exited with {status}; log:\n{}", self.log_text());
        }
    }

    /// Waits until the log holds at least `count` lines containing every one of `parts`.
    async fn wait_for_log(&self, parts: &[&str], count: usize) -> String {
        let what = format!("the log has {count} line(s) with {parts:?}");
        wait_until(CONVERGE, &what, || async {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().filter(|l| parts.iter().all(|p| l.contains(p))).collect();
            if lines.len() >= count {
                Ok(lines[count - 1].to_owned())
            } else {
                Err(format!("{} such lines; log:\n{text}", lines.len()))
            }
        })
        .await
    }

    /// SIGTERM, then waits for the exit (killing it after 30 s).
    fn stop(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                _ => panic!("zkmirror did not stop on SIGTERM; log:\n{}", self.log_text()),
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("[operate] zkmirror (pid {}) log:\n{}", self.pid(), self.log_text());
        }
        // Does not signal a child already reaped (`stop`), so no stranger is hit.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `[[roots]]` entry.
struct Root<'a> {
    path: &'a str,
    prefix: Option<&'a str>,
    exclude: &'a [&'a str],
    max_depth: Option<usize>,
}

impl<'a> Root<'a> {
    fn plain(path: &'a str) -> Root<'a> {
        Root { path, prefix: None, exclude: &[], max_depth: None }
    }

    fn toml(&self) -> String {
        let mut text = format!("[[roots]]\npath = {:?}\n", self.path);
        if let Some(prefix) = self.prefix {
            text.push_str(&format!("prefix = {prefix:?}\n"));
        }
        if !self.exclude.is_empty() {
            text.push_str(&format!("exclude = {:?}\n", self.exclude));
        }
        if let Some(depth) = self.max_depth {
            text.push_str(&format!("max_depth = {depth}\n"));
        }
        text
    }

    /// The filter the daemon builds from this entry.
    fn filter(&self) -> Filter {
        let exclude: Vec<String> = self.exclude.iter().map(|s| s.to_string()).collect();
        Filter::new(&[], &exclude, self.max_depth).expect("valid test filter")
    }
}

/// A settings file: the servers, `[mirror]` lines (`extra`), an optional metrics address and
/// the roots. Anti-entropy is rare, so only the watch and reloads explain what a test sees.
fn settings(zk: &str, redis: &str, extra: &str, metrics: Option<&str>, roots: &[Root<'_>]) -> String {
    let mut text = format!(
        "[zookeeper]\nservers = {zk:?}\nsession_timeout = \"4s\"\n\n[redis]\nurl = {redis:?}\n\n\
         [mirror]\nanti_entropy_interval = \"1h\"\n{extra}\n"
    );
    if let Some(addr) = metrics {
        text.push_str(&format!("[metrics]\naddr = {addr:?}\n\n"));
    }
    for root in roots {
        text.push_str(&root.toml());
        text.push('\n');
    }
    text
}

/// A folder for the settings file and the daemon's log.
struct Scratch {
    dir: TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch { dir: tempfile::tempdir().expect("tempdir") }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("zkmirror.toml")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("zkmirror.log")
    }

    /// Replaces the file as editors and config managers do: a temp file renamed over it.
    fn write_atomically(&self, text: &str) {
        let temp = self.dir.path().join(".zkmirror.toml.tmp");
        std::fs::write(&temp, text).expect("writing the temp settings file");
        std::fs::rename(&temp, self.config()).expect("renaming the settings file into place");
    }

    /// Rewrites the file in place (truncate, write), as `echo > file` does.
    fn write_in_place(&self, text: &str) {
        let mut file = OpenOptions::new().write(true).truncate(true).create(true).open(self.config()).expect("open");
        file.write_all(text.as_bytes()).expect("writing the settings file in place");
    }
}

// ---------------------------------------------------------------------------------------------
// Looking at Redis and at the endpoints
// ---------------------------------------------------------------------------------------------

/// Waits until Redis holds exactly what a mirror of `root` with `filter` copies.
async fn converges(zk: &Client, conn: &MultiplexedConnection, prefix: &str, root: &str, filter: &Filter) -> Report {
    let what = format!("Redis under prefix {prefix} is the exact copy of {root} ({})", filter.describe());
    wait_until(CONVERGE, &what, || async {
        let mut conn = conn.clone();
        let report = compare_with_filter(zk, &mut conn, prefix, root, filter).await.map_err(|e| e.to_string())?;
        if report.is_exact() {
            Ok(report)
        } else {
            Err(report.to_string())
        }
    })
    .await
}

/// The keys under `prefix` of the znodes at or below `root`.
async fn keys_of(conn: &MultiplexedConnection, prefix: &str, root: &str) -> BTreeSet<String> {
    let keys = Keys::new(prefix);
    let mut conn = conn.clone();
    let found: Vec<String> =
        redis::cmd("KEYS").arg(keys.scan_pattern(root)).query_async(&mut conn).await.expect("KEYS");
    found.into_iter().filter(|k| keys.parse(k).is_some_and(|(_, p)| zkmirror::testing::is_within(p, root))).collect()
}

async fn exists(conn: &MultiplexedConnection, key: &str) -> bool {
    let mut conn = conn.clone();
    redis::cmd("EXISTS").arg(key).query_async(&mut conn).await.expect("EXISTS")
}

/// Waits until `GET path` answers `code`.
async fn wait_for_http(addr: &str, path: &str, code: u16) -> String {
    wait_until(CONVERGE, &format!("GET {path} answers {code}"), || async {
        match http_get(addr, path) {
            Ok((have, body)) if have == code => Ok(body),
            Ok((have, body)) => Err(format!("{have}: {body}")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

/// Runs a one-shot `zkmirror ARGS...` to completion: exit code, stdout, stderr.
fn zkmirror(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_zkmirror"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("ZKMIRROR_ZK")
        .env_remove("ZKMIRROR_REDIS")
        .env_remove("ZKMIRROR_ROOT")
        .env_remove("ZKMIRROR_PREFIX")
        .env_remove("ZKMIRROR_ZK_AUTH")
        .stdin(Stdio::null())
        .output()
        .expect("running zkmirror");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (output.status.code().unwrap_or(-1), text(output.stdout), text(output.stderr))
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle:?} not in:\n{text}")) + 1
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_file_mirrors_every_root_with_its_own_prefix_and_filter() {
    let zk = ZkServer::shared().connect_string();
    let client = zk_client(&zk).await;
    let redis = RedisServer::start();
    let url = redis.url();
    let conn = redis_conn(&url).await;
    let (a, b, c) = (unique_root("shared-a"), unique_root("shared-b"), unique_root("own-c"));
    create_all(&client, &format!("{a}/x"), b"1").await;
    create_all(&client, &format!("{a}/y/z"), b"2").await;
    create_all(&client, &format!("{b}/q"), b"3").await;
    for (path, data) in [("keep", "k"), ("locks/l1", ""), ("locks/l2", ""), ("deep/d1/d2/d3", "deepest")] {
        create_all(&client, &format!("{c}/{path}"), data.as_bytes()).await;
    }
    let locks = format!("{c}/locks/**");
    let roots = [
        Root::plain(&a),
        Root::plain(&b),
        Root { path: &c, prefix: Some("own"), exclude: &[&locks], max_depth: Some(2) },
    ];
    let scratch = Scratch::new();
    scratch.write_atomically(&settings(&zk, &url, "prefix = \"shared\"", None, &roots));
    let config = scratch.config();
    let config = config.to_str().expect("utf-8 temp path");
    let mut daemon = Daemon::start(scratch.config().as_path(), &scratch.log(), "text", &[]);

    for root in &roots {
        converges(&client, &conn, root.prefix.unwrap_or("shared"), root.path, &root.filter()).await;
    }
    // Excluded and too deep: no keys. Copied znodes keep ZooKeeper's children and Stat.
    for left_out in ["locks/l1", "locks/l2", "deep/d1/d2", "deep/d1/d2/d3"] {
        for key in [format!("own:{{{c}/{left_out}}}"), format!("own:{{{c}/{left_out}}}:meta")] {
            assert!(!exists(&conn, &key).await, "{key} exists");
        }
    }
    let mut reader = conn.clone();
    let lock_names: BTreeSet<String> = redis::cmd("SMEMBERS")
        .arg(format!("own:{{{c}/locks}}:children"))
        .query_async(&mut reader)
        .await
        .expect("SMEMBERS");
    assert_eq!(lock_names, BTreeSet::from(["l1".to_owned(), "l2".to_owned()]));
    assert_eq!(hget(&conn, &format!("own:{{{c}/deep/d1}}:meta"), "num_children").await.as_deref(), Some("1"));

    // The shared prefix: an aggregate listing both roots, and each root's own status.
    wait_for_field(&conn, "shared:mirror", "state", "live").await;
    let listed = hget(&conn, "shared:mirror", "roots").await.expect("shared:mirror has roots");
    let listed: BTreeSet<String> = zkmirror::reader::split_roots(&listed).into_iter().collect();
    assert_eq!(listed, BTreeSet::from([a.clone(), b.clone()]));
    for root in [&a, &b] {
        wait_for_field(&conn, &format!("shared:mirror:{{{root}}}"), "state", "live").await;
        assert_eq!(hget(&conn, &format!("shared:mirror:{{{root}}}"), "root").await.as_ref(), Some(root));
    }
    wait_for_field(&conn, "own:mirror", "state", "live").await;
    assert_eq!(hget(&conn, "own:mirror", "root").await.as_ref(), Some(&c));
    assert_eq!(hget(&conn, "own:mirror", "roots").await, None);

    // verify --config checks every root with its prefix and filter.
    let (code, out, err) = zkmirror(&["verify", "--config", config]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().filter(|l| l.starts_with("exact: ")).count(), 3, "{out}");
    assert!(out.contains(&format!("under {c} (Redis {url}, prefix own; filter: ")), "{out}");
    // The same root from flags: with its filter exact, without it the excluded znodes are missing.
    let one = ["verify", "--zk", &zk, "--redis", &url, "--root", &c, "--prefix", "own", "--grace", "0"];
    let filtered: Vec<&str> = one.iter().copied().chain(["--exclude", &locks, "--max-depth", "2"]).collect();
    let (code, out, err) = zkmirror(&filtered);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = zkmirror(&one);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("own:{{{c}/locks/l1}}: missing")), "{out}");
    // A key for a path the filter leaves out is an extra key.
    let stray = format!("own:{{{c}/locks/l1}}");
    let _: () = redis::cmd("SET").arg(&stray).arg("x").query_async(&mut reader).await.expect("SET");
    let (code, out, _) = zkmirror(&["verify", "--config", config, "--grace", "0", "--json"]);
    assert_eq!(code, 1, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("verify --json is JSON");
    assert_eq!(report["exact"], false);
    let roots_json = report["roots"].as_array().expect("roots array");
    let own = roots_json.iter().find(|r| r["root"] == c.as_str()).expect("root c reported");
    assert_eq!(own["differences"][0]["key"], stray.as_str(), "{own}");
    assert!(own["differences"][0]["what"].as_str().is_some_and(|w| w.contains("the filter leaves")), "{own}");
    let _: () = redis::cmd("DEL").arg(&stray).query_async(&mut reader).await.expect("DEL");

    // status understands the shared prefix: the aggregate, then each root with its own lag.
    let status = ["status", "--redis", &url, "--prefix", "shared"];
    let (code, out, err) = zkmirror(&status);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("OK: live (aggregate of 2 roots sharing prefix shared)"), "{out}");
    assert!(out.contains(&format!("root {a}: OK: live")) && out.contains(&format!("root {b}: OK: live")), "{out}");
    let with_zk: Vec<&str> = status.iter().copied().chain(["--zk", &zk, "--json"]).collect();
    let with_zk = &with_zk;
    wait_until(CONVERGE, "status --zk reports each shared root caught up", || async move {
        let (code, out, err) = zkmirror(with_zk);
        let report: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}{err}"))?;
        let each = report["per_root"].as_array().cloned().unwrap_or_default();
        let caught_up = each.len() == 2 && each.iter().all(|r| r["behind"]["zxids"] == 0 && r["ok"] == true);
        if code == 0 && caught_up {
            Ok(())
        } else {
            Err(format!("exit {code}: {report}"))
        }
    })
    .await;
    let (code, out, _) = zkmirror(&["status", "--redis", &url, "--prefix", "own"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("OK: live\n") && out.contains(&format!("  roots       {c}\n")), "{out}");

    // Live changes still flow, in every root.
    client.set_data(&format!("{a}/x"), b"10", None).await.expect("set_data");
    create_all(&client, &format!("{c}/locks/l3"), b"").await;
    create_all(&client, &format!("{c}/keep2"), b"k2").await;
    for root in &roots {
        converges(&client, &conn, root.prefix.unwrap_or("shared"), root.path, &root.filter()).await;
    }
    daemon.assert_running();

    let exit = daemon.stop();
    assert!(exit.success(), "zkmirror exited with {exit}");
    let (code, out, _) = zkmirror(&status);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("NOT OK: state is stopped"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_edits_apply_without_a_restart() {
    let zk = ZkServer::shared().connect_string();
    let client = zk_client(&zk).await;
    let redis = RedisServer::start();
    let url = redis.url();
    let conn = redis_conn(&url).await;
    let (one, two) = (unique_root("reload-one"), unique_root("reload-two"));
    for path in ["keep", "locks/l1", "locks/l2"] {
        create_all(&client, &format!("{one}/{path}"), b"1").await;
    }
    create_all(&client, &format!("{two}/a/b"), b"2").await;
    let all = Filter::all();
    let scratch = Scratch::new();
    scratch.write_atomically(&settings(&zk, &url, "", None, &[Root::plain(&one)]));
    let daemon = Daemon::start(&scratch.config(), &scratch.log(), "text", &[]);
    converges(&client, &conn, "zk", &one, &all).await;

    // A new root (written atomically): cold-synced. The prefix is now shared.
    scratch.write_atomically(&settings(&zk, &url, "", None, &[Root::plain(&one), Root::plain(&two)]));
    converges(&client, &conn, "zk", &two, &all).await;
    daemon.wait_for_log(&["reload applied", &two], 1).await;
    wait_for_field(&conn, &format!("zk:mirror:{{{two}}}"), "state", "live").await;

    // A changed filter (written in place): what it now excludes loses its keys.
    let locks = format!("{one}/locks/**");
    let filtered = Root { path: &one, prefix: None, exclude: &[&locks], max_depth: None };
    scratch.write_in_place(&settings(&zk, &url, "", None, &[filtered, Root::plain(&two)]));
    let filtered = Root { path: &one, prefix: None, exclude: &[&locks], max_depth: None };
    converges(&client, &conn, "zk", &one, &filtered.filter()).await;
    assert!(!exists(&conn, &format!("zk:{{{one}/locks/l1}}")).await);
    assert!(exists(&conn, &format!("zk:{{{one}/locks}}")).await);

    // A removed root (atomically): its keys go. The prefix is no longer shared, and its
    // status is the remaining root's own again.
    scratch.write_atomically(&settings(&zk, &url, "", None, &[Root::plain(&one)]));
    wait_until(CONVERGE, &format!("no keys of {two} are left"), || async {
        let left = keys_of(&conn, "zk", &two).await;
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    })
    .await;
    converges(&client, &conn, "zk", &one, &all).await;
    let url_ref = &url;
    wait_until(CONVERGE, "status of prefix zk is one live root again", || async move {
        let (code, out, err) = zkmirror(&["status", "--redis", url_ref]);
        if code == 0 && out.starts_with("OK: live\n") {
            Ok(())
        } else {
            Err(format!("exit {code}: {out}{err}"))
        }
    })
    .await;
    assert_eq!(hget(&conn, "zk:mirror", "roots").await, None, "the aggregate's roots field stayed");
    assert!(!exists(&conn, &format!("zk:mirror:{{{one}}}")).await, "the shared-prefix status of {one} stayed");

    // With keep_keys_on_remove, a removed root's keys stay.
    scratch.write_atomically(&settings(&zk, &url, "", None, &[Root::plain(&one), Root::plain(&two)]));
    converges(&client, &conn, "zk", &two, &all).await;
    wait_for_field(&conn, &format!("zk:mirror:{{{two}}}"), "state", "live").await;
    scratch.write_atomically(&settings(&zk, &url, "keep_keys_on_remove = true", None, &[Root::plain(&one)]));
    wait_for_field(&conn, &format!("zk:mirror:{{{two}}}"), "state", "stopped").await;
    let report = converges(&client, &conn, "zk", &two, &all).await;
    assert_eq!(report.znodes, 3, "{report}");
    let exit = daemon.stop();
    assert!(exit.success(), "zkmirror exited with {exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_edits_are_rejected_and_the_mirror_keeps_running() {
    let zk = ZkServer::shared().connect_string();
    let client = zk_client(&zk).await;
    let redis = RedisServer::start();
    let url = redis.url();
    let conn = redis_conn(&url).await;
    let (root, later) = (unique_root("invalid"), unique_root("invalid-later"));
    create_all(&client, &format!("{root}/x"), b"1").await;
    create_all(&client, &format!("{later}/y"), b"2").await;
    let all = Filter::all();
    let scratch = Scratch::new();
    let file = scratch.config().display().to_string();
    let good = settings(&zk, &url, "", None, &[Root::plain(&root)]);
    scratch.write_atomically(&good);
    let mut daemon = Daemon::start(&scratch.config(), &scratch.log(), "text", &[]);
    converges(&client, &conn, "zk", &root, &all).await;
    let rejected = "reload rejected, the running configuration stays: ";

    // A syntax error: an unterminated string.
    let broken = good.replace(&format!("path = \"{root}\""), &format!("path = \"{root}"));
    scratch.write_in_place(&broken);
    let line = line_of(&broken, &format!("path = \"{root}"));
    daemon.wait_for_log(&[rejected, &format!("{file}:{line}: roots[0].path: ")], 1).await;
    daemon.assert_running();
    client.set_data(&format!("{root}/x"), b"still mirrored", None).await.expect("set_data");
    converges(&client, &conn, "zk", &root, &all).await;

    // A valid file with a bad value: a relative root.
    let relative = format!("{good}[[roots]]\npath = \"relative/path\"\n");
    scratch.write_atomically(&relative);
    let line = line_of(&relative, "relative/path");
    daemon.wait_for_log(&[rejected, &format!("{file}:{line}: roots[1].path: bad root \"relative/path\"")], 1).await;
    daemon.assert_running();
    create_all(&client, &format!("{root}/new"), b"created after the rejection").await;
    converges(&client, &conn, "zk", &root, &all).await;

    // Fixed: applied.
    scratch.write_atomically(&settings(
        &zk,
        &url,
        "",
        None,
        &[Root::plain(&root), Root { path: &later, prefix: Some("later"), exclude: &[], max_depth: None }],
    ));
    converges(&client, &conn, "later", &later, &all).await;
    daemon.wait_for_log(&["reload applied", &later], 1).await;
    converges(&client, &conn, "zk", &root, &all).await;
    let exit = daemon.stop();
    assert!(exit.success(), "zkmirror exited with {exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_json_logs_are_one_object_per_line() {
    let zk = ZkServer::shared().connect_string();
    let client = zk_client(&zk).await;
    let redis = RedisServer::start();
    let url = redis.url();
    let conn = redis_conn(&url).await;
    let root = unique_root("sighup");
    create_all(&client, &format!("{root}/x"), b"1").await;
    let scratch = Scratch::new();
    scratch.write_atomically(&settings(&zk, &url, "", None, &[Root::plain(&root)]));
    let daemon = Daemon::start(&scratch.config(), &scratch.log(), "json", &[]);
    converges(&client, &conn, "zk", &root, &Filter::all()).await;
    daemon.wait_for_log(&["cold sync done"], 1).await;

    daemon.signal(libc::SIGHUP);
    daemon.wait_for_log(&["\"reloading settings\"", "\"trigger\":\"SIGHUP\""], 1).await;
    daemon.wait_for_log(&["reload: nothing changed"], 1).await;
    client.set_data(&format!("{root}/x"), b"2", None).await.expect("set_data");
    converges(&client, &conn, "zk", &root, &Filter::all()).await;

    let exit = daemon.stop();
    assert!(exit.success(), "zkmirror exited with {exit}");
    let log = std::fs::read_to_string(scratch.log()).expect("read log");
    assert!(log.lines().count() >= 4, "{log}");
    for line in log.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(value.is_object() && value["level"].is_string() && value["fields"]["message"].is_string(), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_follow_the_mirror() {
    let zk = ZkServer::shared().connect_string();
    let client = zk_client(&zk).await;
    let mut redis = RedisServer::start();
    let url = redis.url();
    let root = unique_root("metrics");
    create_all(&client, &format!("{root}/x"), b"1").await;
    let addr = format!("127.0.0.1:{}", free_port());
    let scratch = Scratch::new();
    scratch.write_atomically(&settings(&zk, &url, "", Some(&addr), &[Root::plain(&root)]));
    let mut daemon = Daemon::start(&scratch.config(), &scratch.log(), "text", &[]);

    wait_for_http(&addr, "/healthz", 200).await;
    wait_for_http(&addr, "/readyz", 200).await;
    {
        let conn = redis_conn(&url).await;
        converges(&client, &conn, "zk", &root, &Filter::all()).await;
        // A live change, so that there is an event, a write and a propagation delay to count.
        client.set_data(&format!("{root}/x"), b"2", None).await.expect("set_data");
        converges(&client, &conn, "zk", &root, &Filter::all()).await;
    }
    let label = format!("root=\"{root}\",prefix=\"zk\",target=\"default\"");
    let names = [
        "zkmirror_events_received_total",
        "zkmirror_znode_writes_total",
        "zkmirror_propagation_delay_seconds",
        "zkmirror_zookeeper_read_seconds",
        "zkmirror_redis_write_seconds",
        "zkmirror_walks_total",
        "zkmirror_zookeeper_connected",
        "zkmirror_redis_connected",
    ];
    let addr_ref = &addr;
    let label_ref = &label;
    let metrics = wait_until(CONVERGE, "/metrics has every metric with the root label", || async move {
        let (code, body) = http_get(addr_ref, "/metrics").map_err(|e| e.to_string())?;
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|name| !body.lines().any(|l| l.starts_with(name) && l.contains(label_ref.as_str())))
            .collect();
        if code == 200 && missing.is_empty() {
            Ok(body)
        } else {
            Err(format!("{code}, missing {missing:?}:\n{body}"))
        }
    })
    .await;
    assert!(metrics.contains(&format!("zkmirror_redis_connected{{{label}}} 1")), "{metrics}");
    // The round-trip histograms have their fine sub-millisecond buckets.
    assert!(
        metrics.contains(&format!("zkmirror_zookeeper_read_seconds_bucket{{{label},le=\"0.00015\"}}")),
        "{metrics}"
    );
    assert!(metrics.contains(&format!("zkmirror_redis_write_seconds_bucket{{{label},le=\"0.00015\"}}")), "{metrics}");
    assert!(metrics.contains(&format!("zkmirror_zookeeper_connected{{{label}}} 1")), "{metrics}");

    // Redis gone: not ready (but healthy); back: ready again, and refilled.
    redis.stop();
    let why = wait_for_http(&addr, "/readyz", 503).await;
    assert!(why.contains("Redis not connected"), "{why}");
    assert_eq!(http_get(&addr, "/healthz").expect("GET /healthz").0, 200);
    redis.restart();
    wait_for_http(&addr, "/readyz", 200).await;
    let conn = redis_conn(&url).await;
    converges(&client, &conn, "zk", &root, &Filter::all()).await;
    daemon.assert_running();
    let exit = daemon.stop();
    assert!(exit.success(), "zkmirror exited with {exit}");
}

/// What the README says to do when verify keeps failing: a stray key and a value changed behind
/// the mirror's back (its `Stat` untouched) are both repaired by the next walk; a restart runs
/// one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_changed_behind_the_mirrors_back_is_repaired_as_documented() {
    let zk = ZkServer::shared().connect_string();
    let client = zk_client(&zk).await;
    let redis = RedisServer::start();
    let url = redis.url();
    let conn = redis_conn(&url).await;
    let root = unique_root("repair");
    create_all(&client, &format!("{root}/x"), b"1").await;
    let scratch = Scratch::new();
    scratch.write_atomically(&settings(&zk, &url, "", None, &[Root::plain(&root)]));
    let config = scratch.config().display().to_string();
    let daemon = Daemon::start(&scratch.config(), &scratch.log(), "text", &[]);
    converges(&client, &conn, "zk", &root, &Filter::all()).await;

    let (value, stray) = (format!("zk:{{{root}/x}}"), format!("zk:{{{root}/stray}}"));
    let mut writer = conn.clone();
    let _: () =
        redis::cmd("SET").arg(&value).arg("changed by someone else").query_async(&mut writer).await.expect("SET");
    let _: () = redis::cmd("SET").arg(&stray).arg("boo").query_async(&mut writer).await.expect("SET");
    let (code, out, _) = zkmirror(&["verify", "--config", &config, "--grace", "0"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("{value}: data differs")) && out.contains(&format!("{stray}: extra key")), "{out}");

    let exit = daemon.stop();
    assert!(exit.success(), "zkmirror exited with {exit}");
    let daemon = Daemon::start(&scratch.config(), &scratch.log(), "text", &[]);
    converges(&client, &conn, "zk", &root, &Filter::all()).await;
    let (code, out, err) = zkmirror(&["verify", "--config", &config]);
    assert_eq!(code, 0, "{out}{err}");
    let exit = daemon.stop();
    assert!(exit.success(), "zkmirror exited with {exit}");
}

#[tokio::test]
async fn check_config_masks_secrets_and_names_bad_lines() {
    let scratch = Scratch::new();
    let good = "[zookeeper]\nservers = \"127.0.0.1:2181\"\nauth = \"mirror:zk-s3cret\"\n\n\
                [redis]\nurl = \"redis://app:redis-s3cret@127.0.0.1:6379/\"\n\n\
                [[roots]]\npath = \"/app\"\nexclude = [\"/app/locks/**\"]\n\n\
                [[roots]]\npath = \"/services\"\nprefix = \"svc\"\nmax_depth = 3\n";
    scratch.write_atomically(good);
    let file = scratch.config().display().to_string();
    let (code, out, err) = zkmirror(&["check-config", &file]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("path = \"/app\"") && out.contains("prefix = \"svc\""), "{out}");
    assert!(out.contains("mirror:***") && out.contains("app:***@"), "{out}");
    assert!(!format!("{out}{err}").contains("s3cret"), "a secret was shown:\n{out}{err}");

    for (bad, needle, key) in [
        (good.replace("path = \"/services\"", "path = \"services\""), "path = \"services\"", "roots[1].path"),
        (good.replace("max_depth = 3", "max_depth = \"three\""), "max_depth", "roots[1].max_depth"),
        (good.replace("[redis]", "[redis"), "[redis", "redis"),
    ] {
        scratch.write_atomically(&bad);
        let (code, out, err) = zkmirror(&["check-config", &file]);
        assert_eq!(code, 2, "{bad}\n{out}{err}");
        let at = format!("{file}:{}: {key}", line_of(&bad, needle));
        assert!(err.contains(&at), "stderr does not name {at}:\n{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// The service: mirrors keyed by (prefix, root), the shared-prefix aggregate, Redis's promises
// ---------------------------------------------------------------------------------------------

/// The text of `GET /metrics` once it has a line starting with `name` and containing every
/// one of `labels`.
async fn metrics_with(addr: &str, name: &str, labels: &[String]) -> String {
    wait_until(CONVERGE, &format!("/metrics has {name} with {labels:?}"), || async move {
        let (code, body) = http_get(addr, "/metrics").map_err(|e| e.to_string())?;
        let found = body.lines().any(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label.as_str())));
        if code == 200 && found {
            Ok(body)
        } else {
            Err(format!("{code}:\n{body}"))
        }
    })
    .await
}

/// Defect 3: two `[[roots]]` with one path and two prefixes are two mirrors, each with its own
/// copy and its own metric series. Keyed by root, the service ran only one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_root_under_two_prefixes_is_mirrored_twice() {
    let zk = ZkServer::shared().connect_string();
    let client = zk_client(&zk).await;
    let redis = RedisServer::start();
    let url = redis.url();
    let conn = redis_conn(&url).await;
    let root = unique_root("two-prefixes");
    create_all(&client, &format!("{root}/a/b"), b"1").await;
    let addr = format!("127.0.0.1:{}", free_port());
    let roots = [
        Root { path: &root, prefix: Some("first"), exclude: &[], max_depth: None },
        Root { path: &root, prefix: Some("second"), exclude: &[], max_depth: None },
    ];
    let scratch = Scratch::new();
    scratch.write_atomically(&settings(&zk, &url, "", Some(&addr), &roots));
    let mut daemon = Daemon::start(&scratch.config(), &scratch.log(), "text", &[]);

    for prefix in ["first", "second"] {
        converges(&client, &conn, prefix, &root, &Filter::all()).await;
        wait_for_field(&conn, &format!("{prefix}:mirror"), "state", "live").await;
    }
    client.set_data(&format!("{root}/a"), b"2", None).await.expect("set_data");
    for prefix in ["first", "second"] {
        converges(&client, &conn, prefix, &root, &Filter::all()).await;
    }
    // One series per mirror: the same root, told apart by the prefix label.
    let root_label = format!("root=\"{root}\"");
    for prefix in ["first", "second"] {
        let labels = [root_label.clone(), format!("prefix=\"{prefix}\"")];
        metrics_with(&addr, "zkmirror_redis_connected", &labels).await;
        metrics_with(&addr, "zkmirror_walks_total", &labels).await;
    }
    daemon.assert_running();
    let exit = daemon.stop();
    assert!(exit.success(), "zkmirror exited with {exit}");
    for prefix in ["first", "second"] {
        assert_eq!(hget(&conn, &format!("{prefix}:mirror"), "state").await.as_deref(), Some("stopped"));
    }
}

/// Defect 17: the aggregate of a shared prefix claims no more than every root: its `zxid` is
/// the lowest of the roots' own `zxid` in Redis (not in-process counters, which start at 0 on
/// every restart), its heartbeat the oldest of theirs (a wedged root does not hide behind a
/// fresh aggregate), and a stale root makes it `degraded`.
///
/// The roots' statuses are left by an earlier run; ZooKeeper is unreachable, so the roots
/// write nothing new to their zxid. Before the fix the aggregate wrote `zxid` 0 and a fresh
/// heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_prefix_aggregate_never_claims_more_than_its_roots() {
    let nobody = format!("127.0.0.1:{}", free_port());
    let redis = RedisServer::start();
    let url = redis.url();
    let conn = redis_conn(&url).await;
    let (a, b) = (unique_root("agg-a"), unique_root("agg-b"));
    let an_hour_ago =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_millis()
            as u64
            - 3_600_000;
    let mut writer = conn.clone();
    for (root, zxid) in [(&a, 500), (&b, 400)] {
        let _: () = redis::cmd("HSET")
            .arg(format!("zk:mirror:{{{root}}}"))
            .arg(&[("state", "live".to_owned()), ("zxid", zxid.to_string()), ("heartbeat", an_hour_ago.to_string())])
            .query_async(&mut writer)
            .await
            .expect("HSET");
    }
    let scratch = Scratch::new();
    scratch.write_atomically(&settings(&nobody, &url, "", None, &[Root::plain(&a), Root::plain(&b)]));
    let mut daemon = Daemon::start(&scratch.config(), &scratch.log(), "text", &[]);

    // Each write of the aggregate sets every field at once: the first one is enough to judge.
    wait_until(CONVERGE, "zk:mirror is the aggregate of both roots", || async {
        match hget(&conn, "zk:mirror", "roots").await {
            Some(roots) if roots.contains(&a) && roots.contains(&b) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let zxid = hget(&conn, "zk:mirror", "zxid").await;
    assert_eq!(zxid.as_deref(), Some("400"), "the aggregate's zxid is the lowest of its roots'");
    let aggregate: u64 = hget(&conn, "zk:mirror", "heartbeat").await.and_then(|h| h.parse().ok()).unwrap_or(0);
    let mut oldest = u64::MAX;
    for root in [&a, &b] {
        let beat = hget(&conn, &format!("zk:mirror:{{{root}}}"), "heartbeat").await;
        oldest = oldest.min(beat.and_then(|h| h.parse().ok()).unwrap_or(0));
    }
    assert!(aggregate <= oldest, "aggregate heartbeat {aggregate} is fresher than its oldest root's {oldest}");
    assert_eq!(hget(&conn, "zk:mirror", "state").await.as_deref(), Some("degraded"));
    daemon.assert_running();
    let exit = daemon.stop();
    assert!(exit.success(), "zkmirror exited with {exit}");
}

/// Defect 18: a Redis that may evict keys is named at start, with the reason; `noeviction`
/// is not warned about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicting_redis_is_warned_about_at_start() {
    let zk = ZkServer::shared().connect_string();
    for (policy, warned) in [("allkeys-lru", true), ("volatile-ttl", true), ("noeviction", false)] {
        let redis = RedisServer::start();
        let url = redis.url();
        let mut conn = redis_conn(&url).await;
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg(policy)
            .query_async(&mut conn)
            .await
            .expect("CONFIG SET");
        let root = unique_root("policy");
        let scratch = Scratch::new();
        scratch.write_atomically(&settings(&zk, &url, "", None, &[Root::plain(&root)]));
        let mut daemon = Daemon::start(&scratch.config(), &scratch.log(), "text", &[]);
        let line = daemon.wait_for_log(&[&format!("maxmemory-policy is {policy}")], 1).await;
        if warned {
            assert!(line.contains("WARN") && line.contains("noeviction"), "{line}");
            assert!(line.contains("schema/layout.md"), "{line}");
        } else {
            assert!(!line.contains("WARN"), "{line}");
        }
        daemon.wait_for_log(&["cold sync done"], 1).await;
        let log = daemon.log_text();
        let warnings = log.lines().filter(|l| l.contains("WARN") && l.contains("maxmemory-policy")).count();
        assert_eq!(warnings, usize::from(warned), "{policy}:\n{log}");
        daemon.assert_running();
        let exit = daemon.stop();
        assert!(exit.success(), "zkmirror exited with {exit}");
    }
}

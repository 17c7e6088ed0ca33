//! Least-privilege Redis ACL users, against a real redis-server whose users come from the
//! committed `schema/redis-acl.conf` (test passwords substituted, loaded as its `aclfile`, the
//! `default` user off), so the documented lines and the tested ones cannot drift apart.
//!
//! - the mirror, as the `zkmirror` user, does everything it does (cold sync, live changes, a
//!   subtree delete and its tombstones, the anti-entropy sweep, shared-prefix status, the purge
//!   of a removed root, the eviction-policy check, and with `--ha` the fence) and ends exact,
//!   while Redis's `ACL LOG` records no refusal at all;
//! - the `zkmirror` user can touch nothing outside `zk:*` and run nothing else;
//! - the `zkmirror-reader` user reads everything a reader needs (and `zkmirror status`,
//!   `verify`, `get`, `ls` work as it) and can write nothing;
//! - a mirror user given too few rights gets a log line naming the refused command, and
//!   recovers once the right is granted.
//!
//! One ZooKeeper per test binary; each test has its own Redis and root. Every process is
//! stopped by pid.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::binary::{self, Daemon};
use common::world::{
    assert_converges, create_tree, hget, redis_conn, test_config, wait_for_field, RunningMirror, CONVERGE,
};
use common::{create_all, unique_root, wait_until, zk_client, RedisServer, ZkServer};
use redis::aio::MultiplexedConnection;

/// The committed file: one `user` line per role, passwords to be replaced.
const ACL_FILE: &str = include_str!("../schema/redis-acl.conf");
const MIRROR_PLACEHOLDER: &str = ">REPLACE-WITH-MIRROR-PASSWORD";
const READER_PLACEHOLDER: &str = ">REPLACE-WITH-READER-PASSWORD";

const ADMIN: (&str, &str) = ("admin", "admin-test-password");
const MIRROR: (&str, &str) = ("zkmirror", "mirror-test-password");
const READER: (&str, &str) = ("zkmirror-reader", "reader-test-password");

/// `schema/redis-acl.conf` with the test passwords, exactly as committed otherwise.
fn acl_lines() -> String {
    assert!(ACL_FILE.contains(MIRROR_PLACEHOLDER) && ACL_FILE.contains(READER_PLACEHOLDER), "{ACL_FILE}");
    ACL_FILE
        .replace(MIRROR_PLACEHOLDER, &format!(">{}", MIRROR.1))
        .replace(READER_PLACEHOLDER, &format!(">{}", READER.1))
}

/// A redis-server whose only users are the committed ones and the test's admin.
fn acl_redis() -> RedisServer {
    RedisServer::start_with_aclfile(ADMIN.0, ADMIN.1, &acl_lines())
}

fn url(redis: &RedisServer, (user, password): (&str, &str)) -> String {
    format!("redis://{user}:{password}@{}/", redis.addr())
}

/// Redis's `ACL LOG`: every refusal since the start (or the last reset), as
/// `reason object context username` lines.
async fn acl_log(admin: &mut MultiplexedConnection) -> Vec<String> {
    let entries: Vec<HashMap<String, redis::Value>> =
        redis::cmd("ACL").arg("LOG").query_async(admin).await.expect("ACL LOG as admin");
    let text = |entry: &HashMap<String, redis::Value>, field: &str| -> String {
        entry.get(field).and_then(|v| redis::from_redis_value_ref::<String>(v).ok()).unwrap_or_default()
    };
    entries
        .iter()
        .map(|e| format!("{} {} {} {}", text(e, "reason"), text(e, "object"), text(e, "context"), text(e, "username")))
        .collect()
}

/// The error code of a refused command (`NOPERM`, `ERR`, ...); panics if it succeeded.
async fn refused(conn: &mut MultiplexedConnection, cmd: &redis::Cmd) -> (String, String) {
    match cmd.query_async::<redis::Value>(conn).await {
        Ok(value) => panic!("{:?} succeeded: {value:?}", String::from_utf8_lossy(&cmd.get_packed_command())),
        Err(e) => (e.code().unwrap_or("").to_owned(), e.to_string()),
    }
}

#[track_caller]
fn assert_noperm((code, text): (String, String), what: &str) {
    assert_eq!(code, "NOPERM", "{what}: {text}");
}

/// Deletes `path` and everything below it, children first.
async fn delete_tree(zk: &zookeeper_client::Client, path: &str) {
    let children = zk.list_children(path).await.unwrap_or_else(|e| panic!("listing {path}: {e}"));
    for child in children {
        Box::pin(delete_tree(zk, &format!("{path}/{child}"))).await;
    }
    zk.delete(path, None).await.unwrap_or_else(|e| panic!("deleting {path}: {e}"));
}

const BINARY: &str = env!("CARGO_BIN_EXE_zkmirror");

/// `zkmirror run ARGS...` with its output in `log`, stopped by pid (SIGTERM) when dropped.
fn daemon(args: &[&str], log: &Path) -> Daemon {
    Daemon::start(BINARY, args, "zkmirror=info,zkmirror::engine=debug", log)
}

fn read(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Redis refused the mirror user nothing: its `ACL LOG` is empty and the mirror's log has no
/// refusal in it.
async fn assert_refused_nothing(admin: &mut MultiplexedConnection, log: &Path) {
    assert_eq!(acl_log(admin).await, Vec::<String>::new(), "Redis refused the mirror user something");
    let text = read(log);
    assert!(!text.contains("NOPERM") && !text.contains("refused user"), "{text}");
}

/// The keys matching `pattern`, by `SCAN` (as whoever `conn` is).
async fn scan(conn: &mut MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut cursor: u64 = 0;
    let mut keys = Vec::new();
    loop {
        let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .expect("SCAN");
        keys.extend(page);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

fn settings(zk: &str, redis: &str, roots: &[&str]) -> String {
    let mut text = format!(
        "[zookeeper]\nservers = \"{zk}\"\nsession_timeout = \"2s\"\n\n[redis]\nurl = \"{redis}\"\n\n\
         [mirror]\nanti_entropy_interval = \"1s\"\n"
    );
    for root in roots {
        text.push_str(&format!("\n[[roots]]\npath = \"{root}\"\n"));
    }
    text
}

/// (a) The mirror as the `zkmirror` user, without `--ha`: two roots sharing the prefix (their
/// own status hashes and the aggregate), the eviction check, cold sync, live changes, a subtree
/// delete with its tombstones, the anti-entropy sweep removing a stray key and restoring one
/// deleted behind the mirror's back, the purge of a root removed by a reload, a clean stop.
/// Exact at each step (judged as the reader, which also proves `verify`'s reads suffice), and
/// Redis refused it nothing: the `ACL LOG` is empty.
#[tokio::test]
async fn the_mirror_user_does_everything_the_mirror_does_and_is_refused_nothing() {
    let zk_server = ZkServer::shared();
    let zk = zk_client(&zk_server.connect_string()).await;
    let redis = acl_redis();
    let mut admin = redis_conn(&url(&redis, ADMIN)).await;
    let reader_url = url(&redis, READER);
    let mut reader = redis_conn(&reader_url).await;
    // A policy that may evict: the check must still be able to tell, as the mirror user.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query_async(&mut admin)
        .await
        .expect("CONFIG SET");

    let a = unique_root("acl-a");
    let b = unique_root("acl-b");
    create_all(&zk, &a, b"a").await;
    create_all(&zk, &b, b"b").await;
    create_tree(&zk, &a, 3, 3, 16).await;
    create_tree(&zk, &b, 2, 2, 16).await;

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("zkmirror.toml");
    let log = dir.path().join("zkmirror.log");
    let mirror_url = url(&redis, MIRROR);
    std::fs::write(&config, settings(&zk_server.connect_string(), &mirror_url, &[&a, &b])).expect("settings");
    let mut process = daemon(&["--config", config.to_str().expect("utf-8 path")], &log);

    let warning = process.wait_for_log("maxmemory-policy is allkeys-lru").await;
    assert!(warning.contains("WARN"), "{warning}");
    assert_converges(&zk, &reader_url, "zk", &a).await;
    assert_converges(&zk, &reader_url, "zk", &b).await;
    wait_for_field(&reader, "zk:mirror", "state", "live").await;
    assert_eq!(hget(&reader, "zk:mirror", "roots").await, Some(format!("{a},{b}")));
    assert_eq!(hget(&reader, &format!("zk:mirror:{{{a}}}"), "state").await.as_deref(), Some("live"));

    // Live changes and a subtree delete (tombstones).
    zk.set_data(&format!("{a}/n1"), b"changed", None).await.expect("set_data");
    create_all(&zk, &format!("{a}/n2/new"), b"new").await;
    delete_tree(&zk, &format!("{a}/n0")).await;
    assert_converges(&zk, &reader_url, "zk", &a).await;
    let tomb: Option<String> =
        redis::cmd("GET").arg(format!("zk:{{{a}/n0/n0}}:tomb")).query_async(&mut reader).await.expect("GET tomb");
    assert!(tomb.is_some(), "the deleted znode left a tombstone");

    // Behind the mirror's back: a stray znode key and a deleted data key; only the
    // anti-entropy pass (walk and sweep) repairs both.
    let _: () = redis::cmd("SET").arg(format!("zk:{{{a}/ghost}}")).arg("x").query_async(&mut admin).await.expect("SET");
    let _: () = redis::cmd("DEL").arg(format!("zk:{{{a}/n1}}")).query_async(&mut admin).await.expect("DEL");
    assert_converges(&zk, &reader_url, "zk", &a).await;

    // A reload that drops root b purges its keys; a alone writes zk:mirror itself again.
    std::fs::write(&config, settings(&zk_server.connect_string(), &mirror_url, &[&a])).expect("settings");
    wait_until(CONVERGE, &format!("the keys of {b} are purged"), || {
        let mut reader = reader.clone();
        let b = b.clone();
        async move {
            let left = scan(&mut reader, &format!("zk:{{{b}*")).await;
            let status: bool =
                redis::cmd("EXISTS").arg(format!("zk:mirror:{{{b}}}")).query_async(&mut reader).await.expect("EXISTS");
            if left.is_empty() && !status {
                Ok(())
            } else {
                Err(format!("{left:?}, status {status}"))
            }
        }
    })
    .await;
    assert_converges(&zk, &reader_url, "zk", &a).await;

    process.stop();
    assert_eq!(hget(&reader, "zk:mirror", "state").await.as_deref(), Some("stopped"));
    assert_refused_nothing(&mut admin, &log).await;
}

/// (a) With `--ha`: the election, the fence on every hash slot (`fence.lua`, 16,384 keys),
/// fenced writes and status, as the `zkmirror` user; exact, and no refusal in the `ACL LOG`.
#[tokio::test]
async fn the_mirror_user_leads_and_fences_with_ha() {
    let zk_server = ZkServer::shared();
    let zk = zk_client(&zk_server.connect_string()).await;
    let redis = acl_redis();
    let mut admin = redis_conn(&url(&redis, ADMIN)).await;
    let reader_url = url(&redis, READER);
    let mut reader = redis_conn(&reader_url).await;
    let root = unique_root("acl-ha");
    let ha = unique_root("acl-election");
    create_all(&zk, &root, b"r").await;
    create_tree(&zk, &root, 3, 2, 16).await;

    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("zkmirror.log");
    let mirror_url = url(&redis, MIRROR);
    let zk_connect = zk_server.connect_string();
    let args = ["--zk", &zk_connect, "--redis", &mirror_url, "--root", &root, "--ha", &ha, "--instance", "acl-1"];
    let process = daemon(&[&args[..], &["--session-timeout", "2s", "--anti-entropy-interval", "1s"]].concat(), &log);

    assert_converges(&zk, &reader_url, "zk", &root).await;
    wait_for_field(&reader, "zk:mirror", "leader", "acl-1").await;
    let fence = hget(&reader, "zk:mirror", "fence").await.expect("the leader's fence in the status");
    let fences = scan(&mut reader, "zk:fence:*").await;
    assert_eq!(fences.len(), 16_384, "one fence key per hash slot");
    let one: Option<String> = redis::cmd("GET").arg(&fences[0]).query_async(&mut reader).await.expect("GET fence");
    assert_eq!(one.as_deref(), Some(fence.as_str()));

    zk.set_data(&format!("{root}/n1"), b"changed", None).await.expect("set_data");
    delete_tree(&zk, &format!("{root}/n0")).await;
    assert_converges(&zk, &reader_url, "zk", &root).await;

    process.stop();
    assert_refused_nothing(&mut admin, &log).await;
}

/// (b) The `zkmirror` user reaches nothing outside `zk:*` (not even a key that merely starts
/// with `zk`), runs nothing the mirror does not, and a script cannot lift that: Redis checks
/// each `redis.call` of a script against the caller's rights.
#[tokio::test]
async fn the_mirror_user_cannot_touch_other_keys_or_run_other_commands() {
    let redis = acl_redis();
    let mut admin = redis_conn(&url(&redis, ADMIN)).await;
    let _: () = redis::cmd("SET").arg("other:key").arg("theirs").query_async(&mut admin).await.expect("SET");
    let mut mirror = redis_conn(&url(&redis, MIRROR)).await;

    assert_noperm(refused(&mut mirror, redis::cmd("SET").arg("other:key").arg("x")).await, "SET other:key");
    assert_noperm(refused(&mut mirror, redis::cmd("GET").arg("other:key")).await, "GET other:key");
    assert_noperm(refused(&mut mirror, redis::cmd("DEL").arg("other:key")).await, "DEL other:key");
    assert_noperm(refused(&mut mirror, redis::cmd("SET").arg("zkother:key").arg("x")).await, "SET zkother:key");
    for cmd in [
        redis::cmd("FLUSHALL"),
        redis::cmd("FLUSHDB"),
        redis::cmd("CONFIG").arg("SET").arg("maxmemory-policy").arg("allkeys-lru").clone(),
        redis::cmd("CONFIG").arg("GET").arg("requirepass").clone(),
        redis::cmd("KEYS").arg("*").clone(),
        redis::cmd("EVAL").arg("return 1").arg(0).clone(),
        redis::cmd("SCRIPT").arg("FLUSH").clone(),
        redis::cmd("FUNCTION").arg("FLUSH").clone(),
        redis::cmd("ACL").arg("SETUSER").arg("zkmirror").arg("+@all").clone(),
        redis::cmd("PUBLISH").arg("zk:channel").arg("x").clone(),
        redis::cmd("SHUTDOWN").clone(),
    ] {
        let what = String::from_utf8_lossy(&cmd.get_packed_command()).replace("\r\n", " ");
        assert_noperm(refused(&mut mirror, &cmd).await, &what);
    }
    // SCRIPT LOAD and EVALSHA it has, but the loaded script runs with its rights.
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return redis.call('SET', 'other:key', 'mine')")
        .query_async(&mut mirror)
        .await
        .expect("SCRIPT LOAD as the mirror");
    let (code, text) = refused(&mut mirror, redis::cmd("EVALSHA").arg(&sha).arg(0)).await;
    assert!(matches!(code.as_str(), "ERR" | "NOPERM") && text.contains("can't access"), "{code}: {text}");
    assert_noperm(refused(&mut mirror, redis::cmd("EVALSHA").arg(&sha).arg(1).arg("other:key")).await, "EVALSHA");
    let theirs: String = redis::cmd("GET").arg("other:key").query_async(&mut admin).await.expect("GET");
    assert_eq!(theirs, "theirs");
}

/// The binary `zkmirror ARGS...` to completion: (exit code, stdout, stderr).
async fn zkmirror(args: &[&str]) -> (i32, String, String) {
    let outcome = binary::run(BINARY, args).await;
    (outcome.code, outcome.stdout, outcome.stderr)
}

/// (c) and (d): the `zkmirror-reader` user reads everything the layout promises a reader
/// (data and meta in one MULTI, children, the status hash, the change stream) and the operator
/// commands `status`, `verify`, `get`, `ls` work as it; it can write nothing, by any command
/// or script, and what it tried left the keys as they were.
#[tokio::test]
async fn the_reader_user_reads_everything_and_writes_nothing() {
    let zk_server = ZkServer::shared();
    let zk = zk_client(&zk_server.connect_string()).await;
    let redis = acl_redis();
    let root = unique_root("acl-reader");
    create_all(&zk, &format!("{root}/db/url"), b"postgres://db").await;
    let mirror = RunningMirror::start(test_config(&zk_server.connect_string(), &url(&redis, MIRROR), &root));
    let reader_url = url(&redis, READER);
    assert_converges(&zk, &reader_url, "zk", &root).await;
    mirror.wait_for_phase(zkmirror::Phase::Live).await;
    let mut reader = redis_conn(&reader_url).await;
    let data_key = format!("zk:{{{root}/db/url}}");

    let (data, mzxid): (Option<String>, Option<String>) = redis::pipe()
        .atomic()
        .cmd("GET")
        .arg(&data_key)
        .cmd("HGET")
        .arg(format!("{data_key}:meta"))
        .arg("mzxid")
        .query_async(&mut reader)
        .await
        .expect("MULTI GET HGET EXEC as the reader");
    assert_eq!(data.as_deref(), Some("postgres://db"));
    assert!(mzxid.is_some());
    let meta: HashMap<String, String> =
        redis::cmd("HGETALL").arg(format!("{data_key}:meta")).query_async(&mut reader).await.expect("HGETALL meta");
    assert!(meta.contains_key("czxid"), "{meta:?}");
    let children: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("zk:{{{root}/db}}:children"))
        .query_async(&mut reader)
        .await
        .expect("SMEMBERS");
    assert_eq!(children, ["url"]);
    let status: HashMap<String, String> =
        redis::cmd("HGETALL").arg("zk:mirror").query_async(&mut reader).await.expect("HGETALL zk:mirror");
    assert_eq!(status.get("state").map(String::as_str), Some("live"), "{status:?}");
    let range: redis::Value =
        redis::cmd("XRANGE").arg("zk:changes").arg("-").arg("+").query_async(&mut reader).await.expect("XRANGE");
    assert!(matches!(&range, redis::Value::Array(entries) if !entries.is_empty()), "{range:?}");
    let _: redis::Value = redis::cmd("XREVRANGE")
        .arg("zk:changes")
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut reader)
        .await
        .expect("XREVRANGE");
    let read: redis::Value = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg("zk:changes")
        .arg("0")
        .query_async(&mut reader)
        .await
        .expect("XREAD");
    assert!(!matches!(read, redis::Value::Nil), "{read:?}");

    let zk_connect = zk_server.connect_string();
    let redis_args = ["--redis", &reader_url];
    let (code, out, err) = zkmirror(&[&["status"][..], &redis_args].concat()).await;
    assert_eq!(code, 0, "status as the reader: {out}{err}");
    let (code, out, err) = zkmirror(&[&["status", "--zk", &zk_connect][..], &redis_args].concat()).await;
    assert_eq!(code, 0, "status --zk as the reader: {out}{err}");
    let (code, out, err) =
        zkmirror(&[&["verify", "--zk", &zk_connect, "--root", &root][..], &redis_args].concat()).await;
    assert_eq!(code, 0, "verify as the reader: {out}{err}");
    let (code, out, err) = zkmirror(&[&["get", &format!("{root}/db/url")][..], &redis_args].concat()).await;
    assert_eq!((code, out.as_str()), (0, "postgres://db"), "get as the reader: {err}");
    let (code, out, err) = zkmirror(&[&["get", "--meta", &format!("{root}/db/url")][..], &redis_args].concat()).await;
    assert_eq!(code, 0, "get --meta as the reader: {out}{err}");
    let (code, out, err) = zkmirror(&[&["ls", &format!("{root}/db")][..], &redis_args].concat()).await;
    assert_eq!((code, out.as_str()), (0, "url\n"), "ls as the reader: {err}");

    let sha = redis::Script::new("return 1").get_hash().to_owned();
    for cmd in [
        redis::cmd("SET").arg(&data_key).arg("x").clone(),
        redis::cmd("DEL").arg(&data_key).clone(),
        redis::cmd("HSET").arg("zk:mirror").arg("state").arg("live").clone(),
        redis::cmd("SADD").arg(format!("zk:{{{root}/db}}:children")).arg("x").clone(),
        redis::cmd("XADD").arg("zk:changes").arg("*").arg("op").arg("put").clone(),
        redis::cmd("EXPIRE").arg(&data_key).arg(1).clone(),
        redis::cmd("EVAL").arg("return redis.call('DEL', KEYS[1])").arg(1).arg(&data_key).clone(),
        redis::cmd("EVAL_RO").arg("return 1").arg(0).clone(),
        redis::cmd("EVALSHA").arg(&sha).arg(0).clone(),
        redis::cmd("SCRIPT").arg("LOAD").arg("return 1").clone(),
        redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("#!lua name=x\nredis.register_function('f', function() return 1 end)")
            .clone(),
        redis::cmd("FUNCTION").arg("FLUSH").clone(),
        redis::cmd("FLUSHALL").clone(),
        redis::cmd("CONFIG").arg("GET").arg("*").clone(),
    ] {
        let what = String::from_utf8_lossy(&cmd.get_packed_command()).replace("\r\n", " ");
        assert_noperm(refused(&mut reader, &cmd).await, &what);
    }
    // Not even inside MULTI: the write is refused as it is queued, and EXEC aborts.
    let aborted =
        redis::pipe().atomic().cmd("SET").arg(&data_key).arg("x").query_async::<redis::Value>(&mut reader).await;
    assert!(aborted.is_err(), "{aborted:?}");
    let (code, out, _) = zkmirror(&[&["get", &format!("{root}/db/url")][..], &redis_args].concat()).await;
    assert_eq!((code, out.as_str()), (0, "postgres://db"), "the reader changed nothing");
    assert_converges(&zk, &reader_url, "zk", &root).await;
    mirror.stop().await;
}

/// A mirror user given too few rights (an operator's ACL without `XADD`): the mirror names the
/// refused command, the script and its line, and the user, says what to grant, and once the
/// right is granted (Redis applies `ACL SETUSER` at once) it recovers and ends exact.
#[tokio::test]
async fn a_mirror_user_short_of_a_right_is_told_which_and_recovers_once_granted() {
    let zk_server = ZkServer::shared();
    let zk = zk_client(&zk_server.connect_string()).await;
    let redis = acl_redis();
    let mut admin = redis_conn(&url(&redis, ADMIN)).await;
    let _: () =
        redis::cmd("ACL").arg("SETUSER").arg(MIRROR.0).arg("-xadd").query_async(&mut admin).await.expect("ACL SETUSER");
    let root = unique_root("acl-short");
    create_all(&zk, &format!("{root}/a"), b"a").await;

    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("zkmirror.log");
    let mirror_url = url(&redis, MIRROR);
    let zk_connect = zk_server.connect_string();
    let mut process = daemon(&["--zk", &zk_connect, "--redis", &mirror_url, "--root", &root], &log);
    let line = process.wait_for_log("refused user zkmirror").await;
    assert!(line.contains("the command XADD in put_batch.lua, line "), "{line}");
    assert!(line.contains("redis.call('XADD'") && line.contains("schema/redis-acl.conf"), "{line}");
    assert!(!line.contains(MIRROR.1), "the password stays out of the log: {line}");
    // Redis answers but refuses the writes: the status says so (it needs no refused command).
    let reader = redis_conn(&url(&redis, READER)).await;
    wait_for_field(&reader, "zk:mirror", "state", "degraded").await;
    // A refused XADD aborts the script before any write: no znode is in the keys without its
    // change-stream entry (Redis undoes nothing a script wrote before a command failed).
    let written: i64 = redis::cmd("EXISTS")
        .arg(format!("zk:{{{root}}}"))
        .arg(format!("zk:{{{root}/a}}"))
        .query_async(&mut admin)
        .await
        .expect("EXISTS");
    assert_eq!(written, 0, "znodes written without their stream entries");

    let _: () =
        redis::cmd("ACL").arg("SETUSER").arg(MIRROR.0).arg("+xadd").query_async(&mut admin).await.expect("ACL SETUSER");
    assert_converges(&zk, &url(&redis, READER), "zk", &root).await;
    wait_for_field(&reader, "zk:mirror", "state", "live").await;
    // Every znode has its entry once the right is there.
    type Entries = Vec<(String, std::collections::HashMap<String, String>)>;
    let entries: Entries =
        redis::cmd("XRANGE").arg("zk:changes").arg("-").arg("+").query_async(&mut admin).await.expect("XRANGE");
    for path in [root.clone(), format!("{root}/a")] {
        let put =
            entries.iter().any(|(_, f)| f.get("path") == Some(&path) && f.get("op").map(String::as_str) == Some("put"));
        assert!(put, "no put entry for {path}: {entries:?}");
    }
    process.stop();
}

//! TLS to Redis against a real redis-server speaking TLS only (Debian's build, linked with
//! OpenSSL), with a throwaway CA generated at test time (`testkit::tls::Pki`): the mirror over
//! mutual TLS (cold sync, live changes, a restarted Redis), the CLI over `rediss://`, a
//! password from a file, and each kind of bad input: a wrong CA, an expired, not-yet-valid or
//! other host's certificate, plain TCP where TLS was asked and the reverse, a key not matching
//! its certificate, an unreadable file. ZooKeeper is the plain shared server.

mod common;

use std::path::Path;

use common::binary::{self, Outcome};
use common::tls::{CertSpec, Pki};
use common::world::{
    assert_converges_on, init_logging_captured, logged, redis_conn_for, test_config, RunningMirror, CONVERGE,
};
use common::{create_all, unique_root, wait_until, zk_client, RedisServer, RedisTls, ZkServer};
use zkmirror::redis_conn::RedisFiles;
use zkmirror::{MirrorConfig, Phase};

/// The mirror's config for `redis` with the files given (loaded as the settings load them).
fn tls_config(redis_url: &str, root: &str, files: RedisFiles<'_>) -> MirrorConfig {
    let mut config = test_config(&ZkServer::shared().connect_string(), redis_url, root);
    let (tls, password) = files.load(redis_url).expect("the test's TLS files load");
    config.redis_tls = tls;
    config.redis_password = password;
    config
}

/// The CA and the client identity of `pki`: mutual TLS.
fn mutual(pki: &Pki) -> RedisFiles<'_> {
    RedisFiles {
        tls_ca: Some(&pki.ca),
        tls_cert: Some(&pki.client.cert),
        tls_key: Some(&pki.client.key),
        password_file: None,
    }
}

/// The flags for the same files.
fn mutual_flags(pki: &Pki) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    vec![
        "--redis-tls-ca".into(),
        path(&pki.ca),
        "--redis-tls-cert".into(),
        path(&pki.client.cert),
        "--redis-tls-key".into(),
        path(&pki.client.key),
    ]
}

/// Runs the real `zkmirror` binary to completion, with no zkmirror variable from the
/// environment (bounded: a `run` that should refuse its files must not hang the test).
async fn zkmirror(args: &[String]) -> Outcome {
    binary::run(env!("CARGO_BIN_EXE_zkmirror"), args).await
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Mutual TLS end to end in-process: the cold sync, live changes, and a redis-server restarted
/// empty (the same port, the same certificates): the mirror reconnects over TLS and copies
/// everything again. The server speaks TLS only and demands a client certificate, so every
/// write went through the mirror's TLS identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_cold_sync_live_changes_and_a_restarted_redis() {
    init_logging_captured();
    let pki = Pki::generate();
    let mut redis = RedisServer::start_tls(RedisTls::mutual(&pki));
    let client = zk_client(&ZkServer::shared().connect_string()).await;
    let root = unique_root("tls-mutual");
    create_all(&client, &root, b"root").await;
    for i in 0..20 {
        create_all(&client, &format!("{root}/app/n{i}"), format!("v{i}").as_bytes()).await;
    }
    let config = tls_config(&redis.url(), &root, mutual(&pki));
    let mirror = RunningMirror::start(config.clone());
    mirror.wait_for_phase(Phase::Live).await;
    let conn = redis_conn_for(&config).await;
    assert_converges_on(&client, &conn, "zk", &root).await;

    client.set_data(&format!("{root}/app/n3"), b"changed", None).await.expect("set");
    client.delete(&format!("{root}/app/n7"), None).await.expect("delete");
    create_all(&client, &format!("{root}/app/new"), b"fresh").await;
    assert_converges_on(&client, &conn, "zk", &root).await;

    redis.restart();
    // A new connection: the old one died with the server.
    let conn = redis_conn_for(&config).await;
    assert_converges_on(&client, &conn, "zk", &root).await;
    let data: Vec<u8> =
        redis::cmd("GET").arg(format!("zk:{{{root}/app/n3}}")).query_async(&mut conn.clone()).await.expect("GET");
    assert_eq!(data, b"changed");
    mirror.stop().await;
}

/// The one-shot commands over `rediss://` with mutual TLS, through the real binary: `status`,
/// `verify` and `get` answer as they do in plain TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_verify_and_get_work_over_mutual_tls() {
    init_logging_captured();
    let pki = Pki::generate();
    let redis = RedisServer::start_tls(RedisTls::mutual(&pki));
    let zk = ZkServer::shared().connect_string();
    let client = zk_client(&zk).await;
    let root = unique_root("tls-cli");
    create_all(&client, &format!("{root}/db/url"), b"postgres://db").await;
    let config = tls_config(&redis.url(), &root, mutual(&pki));
    let mirror = RunningMirror::start(config.clone());
    mirror.wait_for_phase(Phase::Live).await;
    assert_converges_on(&client, &redis_conn_for(&config).await, "zk", &root).await;
    let url = redis.url();

    let mut status = args(&["status", "--redis", &url]);
    status.extend(mutual_flags(&pki));
    let out = zkmirror(&status).await;
    assert_eq!(out.code, 0, "status: {}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("live"), "{}", out.stdout);

    let mut verify = args(&["verify", "--zk", &zk, "--redis", &url, "--root", &root]);
    verify.extend(mutual_flags(&pki));
    let out = zkmirror(&verify).await;
    assert_eq!(out.code, 0, "verify: {}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("exact"), "{}", out.stdout);

    let mut get = args(&["get", &format!("{root}/db/url"), "--redis", &url]);
    get.extend(mutual_flags(&pki));
    let out = zkmirror(&get).await;
    assert_eq!(out.code, 0, "get: {}\n{}", out.stdout, out.stderr);
    assert_eq!(out.stdout, "postgres://db");

    // Without the client identity the server refuses the handshake: exit 2, naming TLS.
    let out = zkmirror(&args(&[
        "get",
        &format!("{root}/db/url"),
        "--redis",
        &url,
        "--redis-tls-ca",
        &pki.ca.display().to_string(),
    ]))
    .await;
    out.refused(&[&url, "TLS failure"]);
    mirror.stop().await;
}

/// The Redis password from a file (with its trailing newline), over TLS, for the mirror and for
/// the CLI; the password never appears in what the CLI prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_file_authenticates_over_tls() {
    init_logging_captured();
    let pki = Pki::generate();
    let password = "pw-from-a-file-71d3";
    let redis = RedisServer::start_tls_with_password("mirror", password, RedisTls::server_only(&pki));
    let password_file = pki.dir().join("redis-password");
    std::fs::write(&password_file, format!("{password}\n")).expect("write the password file");
    let zk = ZkServer::shared().connect_string();
    let client = zk_client(&zk).await;
    let root = unique_root("tls-password");
    create_all(&client, &format!("{root}/a"), b"1").await;
    let url = format!("rediss://mirror@{}/", redis.addr());
    let files = RedisFiles { tls_ca: Some(&pki.ca), password_file: Some(&password_file), ..RedisFiles::default() };
    let config = tls_config(&url, &root, files);
    let mirror = RunningMirror::start(config.clone());
    mirror.wait_for_phase(Phase::Live).await;
    assert_converges_on(&client, &redis_conn_for(&config).await, "zk", &root).await;

    let ca = pki.ca.display().to_string();
    let file = password_file.display().to_string();
    let out = zkmirror(&args(&[
        "verify",
        "--zk",
        &zk,
        "--root",
        &root,
        "--redis",
        &url,
        "--redis-tls-ca",
        &ca,
        "--redis-password-file",
        &file,
    ]))
    .await;
    assert_eq!(out.code, 0, "verify: {}\n{}", out.stdout, out.stderr);
    assert!(!out.stdout.contains(password) && !out.stderr.contains(password));

    // Without the file: refused by Redis (exit 2). With a password in the URL too: refused
    // before connecting, naming the file.
    let out = zkmirror(&args(&["status", "--redis", &url, "--redis-tls-ca", &ca])).await;
    assert_eq!(out.code, 2, "{}\n{}", out.stdout, out.stderr);
    let both = format!("rediss://mirror:{password}@{}/", redis.addr());
    let out =
        zkmirror(&args(&["status", "--redis", &both, "--redis-tls-ca", &ca, "--redis-password-file", &file])).await;
    let message = out.refused(&["--redis-password-file", &file, "one place only"]);
    assert!(!message.contains(password), "{message}");
    let empty = pki.dir().join("empty-password");
    std::fs::write(&empty, "\n").expect("write");
    let out =
        zkmirror(&args(&["status", "--redis", &url, "--redis-password-file", &empty.display().to_string()])).await;
    out.refused(&["--redis-password-file", &empty.display().to_string(), "is empty"]);
    mirror.stop().await;
}

/// Each bad server certificate, through the binary's one-shot commands: exit 2 and one message
/// naming the server, that it is TLS, and which check failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_server_certificates_are_refused_naming_the_server_and_the_check() {
    let pki = Pki::generate();
    let other_ca = Pki::generate_named("another CA");
    let expired = pki.issue("expired", &CertSpec { not_after_year: Some(2001), ..CertSpec::loopback("localhost") });
    let not_yet = pki.issue("not-yet", &CertSpec { not_before_year: Some(2099), ..CertSpec::loopback("localhost") });
    let other_host =
        pki.issue("other-host", &CertSpec { names: vec!["other.example".into()], ..CertSpec::loopback("other") });
    let cases: Vec<(&str, RedisTls, &str)> = vec![
        ("wrong CA", RedisTls::server_only(&other_ca), "not signed by a CA zkmirror trusts"),
        ("expired", RedisTls { server: expired, ..RedisTls::server_only(&pki) }, "has expired"),
        ("not yet valid", RedisTls { server: not_yet, ..RedisTls::server_only(&pki) }, "not valid yet"),
        ("hostname mismatch", RedisTls { server: other_host, ..RedisTls::server_only(&pki) }, "hostname mismatch"),
    ];
    let ca = pki.ca.display().to_string();
    let ca_named = format!("the CA file: {ca}");
    for (case, tls, why) in cases {
        let redis = RedisServer::start_tls(tls);
        let url = redis.url();
        for command in [
            args(&["status", "--redis", &url, "--redis-tls-ca", &ca]),
            args(&["get", "/app", "--redis", &url, "--redis-tls-ca", &ca]),
        ] {
            let out = zkmirror(&command).await;
            let message = out.refused(&[&url, "TLS failure", why, &ca_named]);
            assert_eq!(message.trim().lines().count(), 1, "{case}: one line: {message}");
        }
    }
    // `verify` too (its Redis connection is the same one).
    let redis = RedisServer::start_tls(RedisTls::server_only(&other_ca));
    let url = redis.url();
    let zk = ZkServer::shared().connect_string();
    let out = zkmirror(&args(&["verify", "--zk", &zk, "--root", "/app", "--redis", &url, "--redis-tls-ca", &ca])).await;
    out.refused(&[&url, "TLS failure", "not signed by a CA zkmirror trusts"]);
}

/// TLS asked of a plain server, and plain TCP of a TLS-only one: each fails within the
/// connection timeout (never hangs) with a message saying which, and TLS is never dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_scheme_fails_in_bounded_time_saying_why() {
    let pki = Pki::generate();
    let plain = RedisServer::start();
    let rediss = format!("rediss://{}/", plain.addr());
    let ca = pki.ca.display().to_string();
    let out = zkmirror(&args(&["status", "--redis", &rediss, "--redis-tls-ca", &ca])).await;
    out.refused(&[&rediss, "plain"]);

    let tls = RedisServer::start_tls(RedisTls::server_only(&pki));
    let out = zkmirror(&args(&["status", "--redis", &tls.plain_url()])).await;
    out.refused(&[&tls.plain_url(), "rediss://"]);
    // TLS files with a redis:// URL: refused before connecting, never sent in plain TCP.
    let out = zkmirror(&args(&["status", "--redis", &tls.plain_url(), "--redis-tls-ca", &ca])).await;
    out.refused(&["--redis-tls-ca", "rediss://", &tls.plain_url()]);
}

/// Bad files are settings errors (exit 2 before anything connects) naming the flag or the
/// file's key, and the file: for `run`, `check-config` and the one-shot commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_files_are_refused_at_load_naming_the_file() {
    let pki = Pki::generate();
    let stray = pki.stray_key("stray");
    let cert = pki.client.cert.display().to_string();
    let stray_text = stray.display().to_string();
    let url = "rediss://127.0.0.1:1/";
    let missing = pki.dir().join("missing-ca.pem").display().to_string();
    let not_pem = pki.dir().join("not-pem.pem");
    std::fs::write(&not_pem, "hello\n").expect("write");
    let not_pem = not_pem.display().to_string();
    let mismatch = ["--redis-tls-cert", &cert, "--redis-tls-key", &stray_text];
    for base in [
        args(&["run", "--root", "/app", "--redis", url]),
        args(&["status", "--redis", url]),
        args(&["get", "/app", "--redis", url]),
        args(&["verify", "--root", "/app", "--redis", url]),
    ] {
        let with =
            |extra: &[&str]| base.iter().cloned().chain(extra.iter().map(|s| (*s).to_owned())).collect::<Vec<_>>();
        let out = zkmirror(&with(&mismatch)).await;
        out.refused(&["--redis-tls-key", &stray_text, &cert, "does not belong to"]);
        let out = zkmirror(&with(&["--redis-tls-ca", &missing])).await;
        out.refused(&["--redis-tls-ca", &missing, "cannot read"]);
        let out = zkmirror(&with(&["--redis-tls-ca", &not_pem])).await;
        out.refused(&["--redis-tls-ca", &not_pem, "no certificate"]);
        let out = zkmirror(&with(&["--redis-tls-cert", &cert])).await;
        out.refused(&["--redis-tls-cert", &cert, "--redis-tls-key"]);
    }
    // The settings file's keys: named with file, line and key.
    let file = pki.dir().join("zkmirror.toml");
    let settings = |redis: &str| format!("[redis]\nurl = \"{url}\"\n{redis}\n[[roots]]\npath = \"/app\"\n");
    std::fs::write(&file, settings(&format!("tls_cert = {cert:?}\ntls_key = {stray_text:?}"))).expect("write");
    let toml = file.display().to_string();
    let out = zkmirror(&args(&["check-config", &toml])).await;
    out.refused(&[&format!("{toml}:4: redis.tls_key"), &stray_text, "does not belong to"]);
    std::fs::write(&file, settings(&format!("tls_ca = {missing:?}"))).expect("write");
    let out = zkmirror(&args(&["check-config", &toml])).await;
    out.refused(&[&format!("{toml}:3: redis.tls_ca"), &missing, "cannot read"]);
    // A good file: check-config shows the paths, never a key's content.
    std::fs::write(
        &file,
        settings(&format!("tls_ca = {:?}\ntls_cert = {cert:?}\ntls_key = {:?}", pki.ca, pki.client.key)),
    )
    .expect("write");
    let out = zkmirror(&args(&["check-config", &toml])).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains(&format!("tls_key = {:?}", pki.client.key.display().to_string())), "{}", out.stdout);
    assert!(!out.stdout.contains("PRIVATE KEY"), "{}", out.stdout);
}

/// While running, a server whose certificate stops validating (restarted with another CA's
/// certificate) is an unreachable Redis: the mirror goes degraded, logs a TLS failure saying
/// why, and keeps retrying; restarted with the right certificate, it recovers and the copy is
/// exact again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_stops_validating_degrades_the_mirror_until_it_is_fixed() {
    init_logging_captured();
    let pki = Pki::generate();
    let other_ca = Pki::generate_named("rogue CA");
    let mut redis = RedisServer::start_tls(RedisTls::mutual(&pki));
    let client = zk_client(&ZkServer::shared().connect_string()).await;
    let root = unique_root("tls-runtime");
    create_all(&client, &format!("{root}/a"), b"1").await;
    let config = tls_config(&redis.url(), &root, mutual(&pki));
    let mirror = RunningMirror::start(config.clone());
    mirror.wait_for_phase(Phase::Live).await;

    redis.set_tls(RedisTls { server: other_ca.server.clone(), ..RedisTls::mutual(&pki) });
    redis.restart();
    mirror.wait_for_phase(Phase::Degraded).await;
    let server = redis.url();
    wait_until(CONVERGE, "a log line names the TLS failure", || async {
        let lines = logged(&[&server, "TLS failure", "not signed by a CA zkmirror trusts"]);
        if lines.is_empty() {
            Err("none yet".to_owned())
        } else {
            Ok(())
        }
    })
    .await;
    // It says it retries (an outage is logged again at most every 30 s, not at each retry);
    // that it did retry shows below, when the right certificate brings it back by itself.
    let lines = logged(&[&server, "TLS failure"]);
    assert!(lines.iter().any(|l| l.contains("retry")), "{lines:?}");
    create_all(&client, &format!("{root}/b"), b"while degraded").await;

    redis.set_tls(RedisTls::mutual(&pki));
    redis.restart();
    mirror.wait_for_phase(Phase::Live).await;
    assert_converges_on(&client, &redis_conn_for(&config).await, "zk", &root).await;
    mirror.stop().await;
}

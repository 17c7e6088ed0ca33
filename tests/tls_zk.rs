//! TLS to ZooKeeper against real ZooKeeper servers serving a TLS client port
//! (`secureClientPort`, Netty, PEM key stores) with certificates from a throwaway CA made at
//! test time: mutual TLS cold sync, live changes and a reconnect; the `x509` scheme; each bad
//! input through the real binary (exit 2 and a message naming the server and the file); a
//! server certificate that stops validating while running, and the CA file reloaded.
//!
//! Every test that restarts a server or needs its own certificates starts its own ZooKeeper.

mod common;

use std::path::Path;
use std::time::Duration;

use common::binary::{self, Daemon, Outcome};
use common::servers::ClientAuth;
use common::tls::{CertSpec, Pki};
use common::world::{assert_converges, hget, redis_conn, test_config, wait_for_field, RunningMirror};
use common::{create_all, unique_root, zk_client, RedisServer, ZkServer};
use zkmirror::testing::Keys;
use zkmirror::{Phase, TlsFiles, ZkConnect};
use zookeeper_client::{Acl, Acls, AuthId, Client, Permission};

/// The client material: the CA, and with `identity` the client certificate (CN=zkmirror).
fn tls_files(pki: &Pki, identity: bool) -> TlsFiles {
    let pair = identity.then_some((pki.client.cert.as_path(), pki.client.key.as_path()));
    TlsFiles::load(&pki.ca, pair).expect("the test PKI's files load")
}

/// A ZooKeeper client over TLS (with the client certificate when `identity`).
async fn tls_client(server: &ZkServer, pki: &Pki, identity: bool) -> Client {
    let mut connect = ZkConnect::new(server.tls_connect_string());
    connect.tls = Some(tls_files(pki, identity));
    connect.connect(true).await.unwrap_or_else(|e| panic!("TLS client to {}: {e}", server.tls_connect_string()))
}

/// Cold sync, live changes and a ZooKeeper restart (the session reconnects over TLS), with
/// mutual TLS required by the server: the mirror presents its client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_cold_sync_live_changes_and_a_restart() {
    let pki = Pki::generate();
    let mut zk = ZkServer::start_tls(&pki.server, &pki.ca, ClientAuth::Need);
    let redis = RedisServer::start();
    let root = unique_root("mtls");
    let plain = zk_client(&zk.connect_string()).await;
    for i in 0..20 {
        create_all(&plain, &format!("{root}/app/k{i}"), format!("v{i}").as_bytes()).await;
    }
    let mut config = test_config(&zk.tls_connect_string(), &redis.url(), &root);
    config.session_timeout = Duration::from_secs(4);
    config.zk_tls = Some(tls_files(&pki, true));
    let mirror = RunningMirror::start(config);
    mirror.wait_for_phase(Phase::Live).await;
    assert_converges(&plain, &redis.url(), "zk", &root).await;

    create_all(&plain, &format!("{root}/app/live"), b"after the cold sync").await;
    plain.delete(&format!("{root}/app/k0"), None).await.expect("delete k0");
    assert_converges(&plain, &redis.url(), "zk", &root).await;

    // A restart within the session: the client reconnects (over TLS) and the mirror
    // reconciles what changed while it was away.
    drop(plain);
    zk.restart();
    let plain = zk_client(&zk.connect_string()).await;
    create_all(&plain, &format!("{root}/app/after-restart"), b"seen through the new connection").await;
    assert_converges(&plain, &redis.url(), "zk", &root).await;
    let mut conn = redis_conn(&redis.url()).await;
    let data: Option<Vec<u8>> = redis::cmd("GET")
        .arg(Keys::new("zk").data(&format!("{root}/app/after-restart")))
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(data.as_deref(), Some(&b"seen through the new connection"[..]));
    mirror.stop().await;
}

/// ZooKeeper's x509 scheme: with `authProvider.x509` and a client certificate, the session's
/// id is the certificate's subject DN as Java prints it (RFC 2253), `CN=zkmirror`. A subtree
/// whose ACL grants READ to that id only is mirrored completely by a mirror presenting the
/// certificate, and not at all by one without it (same TLS, no identity).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_x509_acl_admits_the_mirror_by_its_client_certificate() {
    let pki = Pki::generate();
    let zk = ZkServer::start_tls(&pki.server, &pki.ca, ClientAuth::Want);
    let redis = RedisServer::start();
    let root = unique_root("x509");

    let with_cert = tls_client(&zk, &pki, true).await;
    let ids = with_cert.list_auth_users().await.expect("whoAmI");
    let id = ids.iter().find(|u| u.scheme() == "x509").map(|u| u.user().to_owned());
    assert_eq!(id.as_deref(), Some("CN=zkmirror"), "the x509 id as ZooKeeper reports it: {ids:?}");

    let plain = zk_client(&zk.connect_string()).await;
    create_all(&plain, &format!("{root}/public"), b"anyone").await;
    let secret = format!("{root}/secret");
    create_all(&plain, &format!("{secret}/db-url"), b"postgres://db/prod").await;
    let read_by_cert = [Acl::new(Permission::READ, AuthId::new("x509", "CN=zkmirror"))];
    for path in [format!("{secret}/db-url"), secret.clone()] {
        plain.set_acl(&path, &Acls::new(&read_by_cert), None).await.expect("setACL x509 READ");
    }
    assert!(matches!(plain.get_data(&secret).await, Err(zookeeper_client::Error::NoAuth)));

    let mirror_for = |prefix: &str, identity: bool| {
        let mut config = test_config(&zk.tls_connect_string(), &redis.url(), &root);
        config.prefix = prefix.to_owned();
        config.zk_tls = Some(tls_files(&pki, identity));
        RunningMirror::start(config)
    };
    let trusted = mirror_for("cert", true);
    let anonymous = mirror_for("nocert", false);
    trusted.wait_for_phase(Phase::Live).await;
    anonymous.wait_for_phase(Phase::Live).await;
    // Each copy is exact against what its identity may read.
    assert_converges(&with_cert, &redis.url(), "cert", &root).await;
    let without_cert = tls_client(&zk, &pki, false).await;
    assert_converges(&without_cert, &redis.url(), "nocert", &root).await;

    let mut conn = redis_conn(&redis.url()).await;
    let data = |prefix: &'static str, path: String| {
        let mut conn = conn.clone();
        async move {
            let value: Option<Vec<u8>> =
                redis::cmd("GET").arg(Keys::new(prefix).data(&path)).query_async(&mut conn).await.expect("GET");
            value
        }
    };
    let db_url = format!("{secret}/db-url");
    assert_eq!(data("cert", db_url.clone()).await.as_deref(), Some(&b"postgres://db/prod"[..]));
    assert_eq!(data("nocert", db_url.clone()).await, None, "the mirror without the certificate cannot read it");
    assert_eq!(data("nocert", format!("{root}/public")).await.as_deref(), Some(&b"anyone"[..]));
    let _: () = redis::cmd("PING").query_async(&mut conn).await.expect("PING");
    trusted.stop().await;
    anonymous.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Bad input through the binary
// ---------------------------------------------------------------------------------------------

const BINARY: &str = env!("CARGO_BIN_EXE_zkmirror");

/// Runs `zkmirror ARGS...` to completion, with the binary's own log filter (no RUST_LOG), as an
/// operator runs it.
async fn zkmirror(args: &[&str]) -> Outcome {
    binary::run_logging(BINARY, args, None).await
}

/// Asserts exit code 2 and a stderr holding every one of `parts`.
#[track_caller]
fn assert_refused(outcome: &Outcome, case: &str, parts: &[&str]) {
    eprintln!("[tls_zk] {case}: {}", outcome.stderr.trim());
    assert_eq!(outcome.code, 2, "{case}: exit code; stderr:\n{}", outcome.stderr);
    for part in parts {
        assert!(outcome.stderr.contains(part), "{case}: stderr lacks {part:?}:\n{}", outcome.stderr);
    }
    assert_eq!(outcome.stderr.trim().lines().count(), 1, "{case}: one message:\n{}", outcome.stderr);
}

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// What the server's certificate can be wrong about, and the client's files: each is one
/// message naming the server (and the file), exit code 2, from a one-shot command (`export`);
/// `run` and `check-config` refuse the bad files the same way before connecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_and_files_are_one_clear_message_and_exit_2() {
    let pki = Pki::generate();
    let other_ca = Pki::generate_named("another CA");
    let mut zk = ZkServer::start_tls(&pki.server, &pki.ca, ClientAuth::Want);
    let tls_server = zk.tls_connect_string();
    let plain_server = zk.connect_string();
    let export = |server: &str, extra: &[&str]| {
        let mut args = vec!["export", "/", "--zk", server];
        args.extend_from_slice(extra);
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| async move { zkmirror(&args.iter().map(String::as_str).collect::<Vec<_>>()).await };
    let ca = s(&pki.ca);

    // The baseline: the right CA and identity work.
    let ok = run(export(
        &tls_server,
        &["--zk-tls-ca", ca, "--zk-tls-cert", s(&pki.client.cert), "--zk-tls-key", s(&pki.client.key)],
    ))
    .await;
    assert_eq!(ok.code, 0, "export over mutual TLS: {}", ok.stderr);

    let wrong_ca = run(export(&tls_server, &["--zk-tls-ca", s(&other_ca.ca)])).await;
    assert_refused(&wrong_ca, "wrong CA", &[&tls_server, "TLS", "not signed by the CA in", s(&other_ca.ca)]);

    let plain_where_tls = run(export(&plain_server, &["--zk-tls-ca", ca])).await;
    assert_refused(&plain_where_tls, "plain server, TLS asked", &[&plain_server, "TLS", "plain clientPort", ca]);

    let tls_where_plain = run(export(&tls_server, &[])).await;
    assert_refused(&tls_where_plain, "TLS server, plain asked", &[&tls_server, "answers with TLS", "--zk-tls-ca"]);

    let stray = pki.stray_key("stray");
    let mismatch =
        run(export(&tls_server, &["--zk-tls-ca", ca, "--zk-tls-cert", s(&pki.client.cert), "--zk-tls-key", s(&stray)]))
            .await;
    assert_refused(&mismatch, "key not matching", &["--zk-tls-key", s(&stray), s(&pki.client.cert), "does not belong"]);

    let unreadable = pki.dir().join("unreadable.pem");
    std::fs::write(&unreadable, "").expect("write");
    std::fs::set_permissions(&unreadable, std::os::unix::fs::PermissionsExt::from_mode(0o000)).expect("chmod");
    // Root reads anything: then an absent file stands in for an unreadable one.
    let unreadable = if std::fs::read(&unreadable).is_ok() { pki.dir().join("absent.pem") } else { unreadable };
    let no_file = run(export(&tls_server, &["--zk-tls-ca", s(&unreadable)])).await;
    assert_refused(&no_file, "unreadable CA file", &["--zk-tls-ca", "cannot read", s(&unreadable)]);
    let cert_only = run(export(&tls_server, &["--zk-tls-ca", ca, "--zk-tls-cert", s(&pki.client.cert)])).await;
    assert_refused(&cert_only, "certificate without key", &["--zk-tls-cert", "needs its key"]);
    let auth_file = pki.dir().join("zk-auth");
    std::fs::write(&auth_file, "mirror:pw\n").expect("write");
    let both = run(export(&plain_server, &["--zk-auth", "a:b", "--zk-auth-file", s(&auth_file)])).await;
    assert_refused(&both, "both credentials", &["--zk-auth and --zk-auth-file"]);
    let empty = pki.dir().join("empty-auth");
    std::fs::write(&empty, "\n").expect("write");
    let empty_auth = run(export(&plain_server, &["--zk-auth-file", s(&empty)])).await;
    assert_refused(&empty_auth, "empty credentials file", &["--zk-auth-file", s(&empty), "is empty"]);

    // `run` and `check-config` refuse bad files before connecting.
    let redis = "redis://127.0.0.1:1/";
    for command in ["run", "check-config"] {
        let config = pki.dir().join("zkmirror.toml");
        std::fs::write(&config, format!("[zookeeper]\nservers = \"{tls_server}\"\ntls_ca = \"ca.pem\"\ntls_cert = \"client.pem\"\ntls_key = \"stray.key\"\n\n[redis]\nurl = \"{redis}\"\n\n[[roots]]\npath = \"/x\"\n")).expect("write");
        let mut args = vec![command.to_owned()];
        if command == "run" {
            args.push("--config".to_owned());
        }
        args.push(s(&config).to_owned());
        let outcome = run(args).await;
        assert_refused(&outcome, command, &["zkmirror.toml:5: zookeeper.tls_key", "stray.key", "does not belong"]);
    }

    // The server's own certificate, wrong three ways: the server restarted with each.
    let cases = [
        (
            "expired",
            CertSpec { not_after_year: Some(2001), not_before_year: Some(2000), ..CertSpec::loopback("localhost") },
            "has expired",
        ),
        (
            "not yet valid",
            CertSpec { not_before_year: Some(2200), not_after_year: Some(2201), ..CertSpec::loopback("localhost") },
            "not valid yet",
        ),
        (
            "hostname mismatch",
            CertSpec { names: vec!["zk.elsewhere.example".to_owned()], ..CertSpec::loopback("zk.elsewhere.example") },
            "hostname mismatch",
        ),
    ];
    for (case, spec, why) in cases {
        let cert = pki.issue(&case.replace(' ', "-"), &spec);
        zk.set_certificate(&cert);
        zk.restart();
        let outcome = run(export(&tls_server, &["--zk-tls-ca", ca])).await;
        assert_refused(&outcome, case, &[&tls_server, "TLS", why, ca]);
    }
}

// ---------------------------------------------------------------------------------------------
// While running: a certificate that stops validating, and reloads
// ---------------------------------------------------------------------------------------------

/// `zkmirror run`'s arguments for a mirror of `root` over mutual TLS to `zk`'s TLS port, its CA
/// from `ca_file` (which the rotation tests rewrite), a 2 s session.
fn mutual_tls_run_args(zk: &ZkServer, redis_url: &str, root: &str, ca_file: &Path, pki: &Pki) -> Vec<String> {
    [
        "--zk",
        &zk.tls_connect_string(),
        "--redis",
        redis_url,
        "--root",
        root,
        "--session-timeout",
        "2s",
        "--zk-tls-ca",
        s(ca_file),
        "--zk-tls-cert",
        s(&pki.client.cert),
        "--zk-tls-key",
        s(&pki.client.key),
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect()
}

/// The server's certificate is rotated to one signed by a second CA: the running mirror cannot
/// validate it, goes `degraded` and says why (TLS, the CA file), retrying. Writing the new CA
/// into the `--zk-tls-ca` file reloads the settings: the mirror restarts with it (its copy
/// kept) and is live again, without a restart of the process. A CA file broken on reload is
/// rejected, naming the file, and mirroring goes on with the running material.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_server_certificate_degrades_the_mirror_until_the_ca_file_is_updated() {
    let pki = Pki::generate();
    let second = Pki::generate_named("the next CA");
    let mut zk = ZkServer::start_tls(&pki.server, &pki.ca, ClientAuth::Need);
    let redis = RedisServer::start();
    let root = unique_root("rotate");
    let plain = zk_client(&zk.connect_string()).await;
    create_all(&plain, &format!("{root}/a"), b"1").await;

    let dir = tempfile::tempdir().expect("temp dir");
    let ca_file = dir.path().join("zk-ca.pem");
    std::fs::copy(&pki.ca, &ca_file).expect("copy the CA");
    let log = dir.path().join("zkmirror.log");
    let url = redis.url();
    let args = mutual_tls_run_args(&zk, &url, &root, &ca_file, &pki);
    let mut daemon = Daemon::start(BINARY, &args, "info", &log);
    let conn = redis_conn(&url).await;
    wait_for_field(&conn, "zk:mirror", "state", "live").await;
    assert_converges(&plain, &url, "zk", &root).await;

    // The server now presents a certificate of the next CA, which the mirror does not trust.
    zk.set_certificate(&second.server);
    drop(plain);
    zk.restart();
    let plain = zk_client(&zk.connect_string()).await;
    create_all(&plain, &format!("{root}/b"), b"while degraded").await;
    wait_for_field(&conn, "zk:mirror", "state", "degraded").await;
    daemon.wait_for_lines(&["ZooKeeper unreachable", "TLS", "not signed by the CA in", s(&ca_file)], 1).await;
    daemon.process.assert_running();

    // The operator installs the next CA (beside the old: the client certificate is the old
    // CA's, which the server still trusts); the file watch reloads.
    let both = format!(
        "{}{}",
        std::fs::read_to_string(&pki.ca).expect("read"),
        std::fs::read_to_string(&second.ca).expect("read")
    );
    std::fs::write(&ca_file, both).expect("write the new CA file");
    daemon.wait_for_lines(&["reload applied", &format!("restarted={root} ")], 1).await;
    wait_for_field(&conn, "zk:mirror", "state", "live").await;
    assert_converges(&plain, &url, "zk", &root).await;

    // A broken CA file is rejected; the running material stays and mirroring goes on.
    std::fs::write(&ca_file, "not a certificate\n").expect("break the CA file");
    daemon.wait_for_lines(&["reload rejected", "--zk-tls-ca", s(&ca_file)], 1).await;
    create_all(&plain, &format!("{root}/c"), b"after the rejected reload").await;
    assert_converges(&plain, &url, "zk", &root).await;
    daemon.process.assert_running();
    assert_eq!(hget(&conn, "zk:mirror", "state").await.as_deref(), Some("live"));
}

/// With `--ha`, the election's session is what a rotation must reach too: once the server
/// presents a certificate of a CA the instance does not trust, the election's session cannot
/// reconnect, and the instance steps down. The new CA written into the `--zk-tls-ca` file, the
/// election's next session takes it (with the files it started with it would stand by for
/// ever), the instance leads again and its mirror copies what changed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ha_the_election_takes_a_rotated_ca_at_its_next_session() {
    let pki = Pki::generate();
    let second = Pki::generate_named("the next CA");
    let mut zk = ZkServer::start_tls(&pki.server, &pki.ca, ClientAuth::Need);
    let redis = RedisServer::start();
    let root = unique_root("rotate-ha");
    let election = unique_root("rotate-ha-election");
    let plain = zk_client(&zk.connect_string()).await;
    create_all(&plain, &format!("{root}/a"), b"1").await;

    let dir = tempfile::tempdir().expect("temp dir");
    let ca_file = dir.path().join("zk-ca.pem");
    std::fs::copy(&pki.ca, &ca_file).expect("copy the CA");
    let url = redis.url();
    let mut args = mutual_tls_run_args(&zk, &url, &root, &ca_file, &pki);
    args.extend(["--ha".to_owned(), election.clone(), "--instance".into(), "rotating-1".into()]);
    let mut daemon = Daemon::start(BINARY, &args, "info", &dir.path().join("zkmirror.log"));
    let conn = redis_conn(&url).await;
    wait_for_field(&conn, "zk:mirror", "leader", "rotating-1").await;
    wait_for_field(&conn, "zk:mirror", "state", "live").await;

    zk.set_certificate(&second.server);
    drop(plain);
    zk.restart();
    let plain = zk_client(&zk.connect_string()).await;
    daemon.wait_for_lines(&["no longer the leader"], 1).await;
    create_all(&plain, &format!("{root}/b"), b"while no instance led").await;

    let both = format!(
        "{}{}",
        std::fs::read_to_string(&pki.ca).expect("read"),
        std::fs::read_to_string(&second.ca).expect("read")
    );
    std::fs::write(&ca_file, both).expect("write the new CA file");
    daemon.wait_for_lines(&["elected leader"], 2).await;
    wait_for_field(&conn, "zk:mirror", "state", "live").await;
    assert_converges(&plain, &url, "zk", &root).await;
    daemon.process.assert_running();
}

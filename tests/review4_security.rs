//! Review 4 (issue 13, security): defects found by an adversarial review, each a test that
//! fails against the code as reviewed (4cd7890). Real servers where a server is involved.

mod common;

use std::path::Path;
use std::time::Duration;

use common::binary::{self, Daemon};
use common::servers::ClientAuth;
use common::tls::Pki;
use common::world::CONVERGE;
use common::{create_all, unique_root, wait_until, zk_client, RedisServer, ZkServer};
use zkmirror::{MirrorConfig, TlsFiles};

const BIN: &str = env!("CARGO_BIN_EXE_zkmirror");

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// redis-rs takes a unix socket's password from the URL's query (`?pass=`); `mask_url` masks
/// only the userinfo's password, so the password is printed in every message and log line that
/// names the server (`cannot connect to Redis at unix:///...?pass=...`, the mirror's
/// `zkmirror starting ... redis=...`, each `Redis write failed` warning).
#[tokio::test]
async fn a_unix_socket_urls_password_is_never_printed() {
    let secret = "Review4-S3cret-in-query";
    for url in [
        format!("unix:///nonexistent/review4.sock?pass={secret}"),
        format!("redis+unix:///nonexistent/review4.sock?user=u&pass={secret}"),
    ] {
        let outcome = binary::run(BIN, &["get", "/x", "--redis", &url]).await;
        assert_eq!(outcome.code, 2, "{outcome:?}");
        assert!(!outcome.stderr.contains(secret), "the password is printed: {}", outcome.stderr);
    }
}

/// With TLS configured, a server written `tcp://` is plain TCP to zookeeper-client even under
/// `secure_connect` (its connect string names the protocol per server). The settings refuse
/// it at load (`check_schemes`), but `MirrorConfig::validate` (what `Mirror::start` checks for
/// an embedding application) and `ZkConnect::connect` do not: the probe succeeds on the first
/// (TLS) server and the session may then be opened in plain TCP to the second.
#[test]
fn a_plain_tcp_server_beside_tls_is_refused_by_validate() {
    let pki = Pki::generate();
    let mut config = MirrorConfig::new("127.0.0.1:2281,tcp://127.0.0.1:2181", "redis://127.0.0.1:6379/", "/app");
    config.zk_tls = Some(TlsFiles::load(&pki.ca, None).expect("the test CA loads"));
    let verdict = config.validate();
    assert!(verdict.is_err(), "TLS asked for, and a tcp:// server is accepted: {verdict:?}");
}

/// Issue 13, "What bad input gets": a wrong CA "fails with one clear message naming the server
/// and the file, exit code 2 at start". One-shot commands do; `zkmirror run` instead retries for
/// ever (a `ZooKeeper unreachable; retrying` warning per retry), although waiting cannot make
/// a certificate of another CA validate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_a_wrong_zookeeper_ca_exits_2_at_start() {
    let pki = Pki::generate();
    let other = Pki::generate_named("review4 other CA");
    let zk = ZkServer::start_tls(&pki.server, &pki.ca, ClientAuth::Want);
    let redis = RedisServer::start();
    let tls = zk.tls_connect_string();
    let url = redis.url();
    let args = ["run", "--zk", &tls, "--redis", &url, "--root", "/review4", "--zk-tls-ca", s(&other.ca)];
    let outcome = tokio::time::timeout(Duration::from_secs(40), binary::run(BIN, &args)).await;
    let outcome = outcome.expect("zkmirror run with a wrong CA did not exit within 40 s: it retries for ever");
    outcome.refused(&[&tls, "not signed by the CA", s(&other.ca)]);
}

/// With `--ha`, the election's ZooKeeper session is set up once, from the settings at start
/// (`ElectionConfig { zk: first.zk_connect() }` in `service::run`); a reload never reaches it.
/// So when ZooKeeper's certificate is rotated to a new CA and the operator updates the CA file,
/// the mirrors would take the new CA, but the election keeps reconnecting with the old one,
/// never leads again, and the process mirrors nothing until restarted, while its log says
/// "reload: standing by; the new settings apply once this instance leads" and "nothing changed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ha_a_rotated_zookeeper_ca_file_lets_the_election_lead_again() {
    let pki = Pki::generate();
    let next = Pki::generate_named("review4 next CA");
    let mut zk = ZkServer::start_tls(&pki.server, &pki.ca, ClientAuth::Want);
    let redis = RedisServer::start();
    let root = unique_root("r4-ha-rotate");
    let election = unique_root("r4-election");
    let plain = zk_client(&zk.connect_string()).await;
    create_all(&plain, &format!("{root}/a"), b"1").await;
    drop(plain);

    let dir = tempfile::tempdir().expect("temp dir");
    let ca_file = dir.path().join("zk-ca.pem");
    std::fs::copy(&pki.ca, &ca_file).expect("copy the CA");
    let log = dir.path().join("zkmirror.log");
    let (server, url) = (zk.tls_connect_string(), redis.url());
    let args = [
        "--zk",
        &server,
        "--redis",
        &url,
        "--root",
        &root,
        "--session-timeout",
        "2s",
        "--zk-tls-ca",
        s(&ca_file),
        "--ha",
        &election,
        "--instance",
        "r4",
    ];
    let mut daemon = Daemon::start(BIN, &args, "info", &log);
    daemon.wait_for_log("elected leader").await;

    // ZooKeeper now presents a certificate of the next CA: the leader loses its session.
    zk.set_certificate(&next.server);
    zk.restart();
    daemon.wait_for_log("no longer the leader").await;

    // The operator installs the new CA (beside the old), replacing the file atomically.
    let both = format!(
        "{}{}",
        std::fs::read_to_string(&pki.ca).expect("read"),
        std::fs::read_to_string(&next.ca).expect("read")
    );
    let tmp = dir.path().join("zk-ca.pem.tmp");
    std::fs::write(&tmp, both).expect("write the new CA");
    std::fs::rename(&tmp, &ca_file).expect("rename");
    daemon.wait_for_log("reloading settings").await;

    let log_path = daemon.log.clone();
    wait_until(CONVERGE, "the instance leads again with the new CA", || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let leads = text.matches("elected leader").count();
        async move {
            if leads >= 2 {
                Ok(())
            } else {
                Err(text.lines().rev().take(6).collect::<Vec<_>>().join("\n"))
            }
        }
    })
    .await;
    daemon.stop();
}

/// A malformed `--zk-auth` (or `ZKMIRROR_ZK_AUTH`), say the password alone without `user:`, is
/// echoed by clap's error (`invalid value '<the password>' for '--zk-auth <ZK_AUTH>'`):
/// `hide_env_values` hides it from `--help` only.
#[tokio::test]
async fn a_malformed_zk_auth_is_not_echoed() {
    let secret = "Review4-OnlyThePassword";
    let outcome = binary::run(BIN, &["export", "/x", "--zk", "127.0.0.1:1", "--zk-auth", secret]).await;
    assert_eq!(outcome.code, 2, "{outcome:?}");
    assert!(!outcome.stderr.contains(secret), "the password is printed: {}", outcome.stderr);
}

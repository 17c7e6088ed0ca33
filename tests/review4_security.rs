//! Review 4 (issue 13, security): defects found by an adversarial review, each a test that
//! fails against the code as reviewed (4cd7890). Real servers where a server is involved.

mod common;

use std::path::Path;
use std::time::Duration;

use common::binary::{self, Daemon};
use common::servers::ClientAuth;
use common::tls::Pki;
use common::RedisTls;
use common::{RedisServer, ZkServer};
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

/// The same at start for Redis: a certificate of a CA the files do not name, a plain client on
/// a TLS port, a refused password: `zkmirror run` stops at once, exit 2, naming the server. A
/// Redis that is merely down is not such a case: the daemon starts and retries it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_stops_at_start_on_what_waiting_cannot_fix_on_the_redis_side() {
    let pki = Pki::generate();
    let other = Pki::generate_named("review4 other CA");
    let zk = ZkServer::shared().connect_string();
    let redis = RedisServer::start_tls_with_password("mirror", "right-pw", RedisTls::server_only(&pki));
    let dir = tempfile::tempdir().expect("temp dir");
    let (right, wrong) = (dir.path().join("right"), dir.path().join("wrong"));
    std::fs::write(&right, "right-pw\n").expect("write");
    std::fs::write(&wrong, "wrong-pw\n").expect("write");
    let tls_url = format!("rediss://mirror@{}/", redis.addr());
    let run = |redis_url: String, extra: Vec<String>| {
        let zk = zk.clone();
        async move {
            let mut args = vec!["run".to_owned(), "--zk".into(), zk, "--root".into(), "/review4-redis".into()];
            args.extend(["--redis".to_owned(), redis_url]);
            args.extend(extra);
            binary::run(BIN, &args).await
        }
    };
    let files = |ca: &Path, password: &Path| {
        vec!["--redis-tls-ca".to_owned(), s(ca).to_owned(), "--redis-password-file".into(), s(password).to_owned()]
    };
    run(tls_url.clone(), files(&other.ca, &right)).await.refused(&[&tls_url, "TLS failure", s(&other.ca)]);
    let plain_url = format!("redis://mirror@{}/", redis.addr());
    let plain = run(plain_url.clone(), vec!["--redis-password-file".into(), s(&right).to_owned()]).await;
    plain.refused(&[&plain_url, "rediss://"]);
    let refused = run(tls_url.clone(), files(&pki.ca, &wrong)).await;
    let message = refused.refused(&[&tls_url]);
    assert!(!message.contains("wrong-pw"), "{message}");

    // Down is not wrong: the daemon starts and waits for it.
    let down = format!("redis://127.0.0.1:{}/", common::servers::free_port());
    let log = dir.path().join("down.log");
    let args = ["--zk", &zk, "--root", "/review4-redis", "--redis", &down];
    let mut daemon = Daemon::start(BIN, &args, "info", &log);
    daemon.wait_for_lines(&["Redis", "retry"], 1).await;
    daemon.process.assert_running();
}

//! The security issue end to end, through the real binary: TLS on both sides with mutual TLS
//! on both, every secret from a file (the ZooKeeper digest, the Redis password, the TLS keys),
//! a cold sync, live changes, a restart of each server; then every output an operator or a
//! scraper sees (the daemon's log at `trace`, `/metrics`, `/readyz`, `check-config`, `status`,
//! `status --zk`, `verify`, `get`, `ls`, a refused password) is searched for each secret.
//!
//! Servers: a ZooKeeper of its own serving a TLS port that demands client certificates (and its
//! plain port, which the test's own clients use), and a redis-server speaking TLS only that
//! demands them too and a password.

mod common;

use std::path::Path;

use common::binary::{self, Daemon, Outcome};
use common::servers::{free_port, ClientAuth};
use common::tls::Pki;
use common::world::{assert_converges_on, redis_conn_for, wait_for_field};
use common::{create_all, http_get, unique_root, RedisServer, RedisTls, ZkServer};
use zkmirror::testing::{Overrides, Settings};
use zookeeper_client::{Acls, Client};

const BINARY: &str = env!("CARGO_BIN_EXE_zkmirror");
const ZK_PASSWORD: &str = "zk-digest-pw-5c1f9e";
const REDIS_PASSWORD: &str = "redis-pw-0a7d33";
/// A password that is refused: it must not be printed either.
const WRONG_PASSWORD: &str = "wrong-redis-pw-91b2";

/// A ZooKeeper client with the mirror's digest credentials, on the plain port: it creates
/// znodes only that identity may read, so a complete copy proves the mirror used the file.
async fn digest_client(zk: &ZkServer) -> Client {
    Client::connector()
        .with_auth("digest", format!("mirror:{ZK_PASSWORD}").as_bytes())
        .connect(&zk.connect_string())
        .await
        .expect("ZooKeeper client with digest credentials")
}

async fn create_private(client: &Client, path: &str, data: &[u8]) {
    create_all(client, path, data).await;
    client.set_acl(path, &Acls::creator_all(), None).await.unwrap_or_else(|e| panic!("setACL {path}: {e}"));
}

/// Every line of base64 inside a PEM file (the key material itself).
fn pem_body(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).expect("read PEM");
    text.lines().filter(|l| !l.starts_with("-----") && l.len() >= 16).map(str::to_owned).collect()
}

fn all_output(outcome: &Outcome) -> String {
    format!("{}\n{}", outcome.stdout, outcome.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_both_sides_with_secrets_from_files_syncs_reconnects_and_leaks_no_secret() {
    let pki = Pki::generate();
    let mut zk = ZkServer::start_tls(&pki.server, &pki.ca, ClientAuth::Need);
    let mut redis = RedisServer::start_tls_with_password("mirror", REDIS_PASSWORD, RedisTls::mutual(&pki));
    let client = digest_client(&zk).await;
    let root = unique_root("security");
    create_private(&client, &root, b"root").await;
    for i in 0..10 {
        create_private(&client, &format!("{root}/k{i}"), format!("secret value {i}").as_bytes()).await;
    }

    // The secrets, one per file, as systemd credentials would hand them over.
    let dir = pki.dir();
    std::fs::write(dir.join("zk-auth"), format!("mirror:{ZK_PASSWORD}\n")).expect("write zk-auth");
    std::fs::write(dir.join("redis-password"), format!("{REDIS_PASSWORD}\n")).expect("write redis-password");
    std::fs::write(dir.join("wrong-password"), format!("{WRONG_PASSWORD}\n")).expect("write wrong-password");
    let metrics = format!("127.0.0.1:{}", free_port());
    let redis_url = format!("rediss://mirror@{}/", redis.addr());
    // Relative paths: the settings file's folder.
    let settings = format!(
        "[zookeeper]\nservers = \"{zk}\"\nauth_file = \"zk-auth\"\ntls_ca = \"ca.pem\"\ntls_cert = \"client.pem\"\ntls_key = \"client.key\"\nsession_timeout = \"4s\"\n\n\
         [redis]\nurl = \"{redis_url}\"\ntls_ca = \"ca.pem\"\ntls_cert = \"client.pem\"\ntls_key = \"client.key\"\npassword_file = \"redis-password\"\n\n\
         [metrics]\naddr = \"{metrics}\"\n\n[[roots]]\npath = \"{root}\"\n",
        zk = zk.tls_connect_string(),
    );
    let settings_file = dir.join("zkmirror.toml");
    std::fs::write(&settings_file, settings).expect("write the settings file");
    let loaded = Settings::load(Some(&settings_file), &Overrides::default()).expect("the settings load");
    let config = loaded.mirrors[0].clone();
    let conn = redis_conn_for(&config).await;

    let log = dir.join("zkmirror.log");
    let file_arg = settings_file.display().to_string();
    let daemon = Daemon::start(BINARY, &["--config", &file_arg], "trace", &log);
    wait_for_field(&conn, "zk:mirror", "state", "live").await;
    assert_converges_on(&client, &conn, "zk", &root).await;

    create_private(&client, &format!("{root}/live"), b"after the cold sync").await;
    client.delete(&format!("{root}/k0"), None).await.expect("delete k0");
    assert_converges_on(&client, &conn, "zk", &root).await;

    // Each server restarted: the mirror reconnects over mutual TLS with the same files.
    drop(client);
    zk.restart();
    let client = digest_client(&zk).await;
    create_private(&client, &format!("{root}/after-zk-restart"), b"1").await;
    assert_converges_on(&client, &conn, "zk", &root).await;
    redis.restart();
    let conn = redis_conn_for(&config).await;
    create_private(&client, &format!("{root}/after-redis-restart"), b"2").await;
    assert_converges_on(&client, &conn, "zk", &root).await;
    // The copy is exact before the reconcile walk after the restart has finished its sweep.
    wait_for_field(&conn, "zk:mirror", "state", "live").await;

    // What a scraper and an operator see.
    let mut outputs: Vec<(String, String)> = Vec::new();
    for path in ["/metrics", "/readyz", "/healthz"] {
        let (code, body) = http_get(&metrics, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(code, 200, "GET {path}: {body}");
        outputs.push((format!("GET {path}"), body));
    }
    let redis_flags = |password_file: &str| {
        vec![
            "--redis".to_owned(),
            redis_url.clone(),
            "--redis-tls-ca".into(),
            pki.ca.display().to_string(),
            "--redis-tls-cert".into(),
            pki.client.cert.display().to_string(),
            "--redis-tls-key".into(),
            pki.client.key.display().to_string(),
            "--redis-password-file".into(),
            dir.join(password_file).display().to_string(),
        ]
    };
    let zk_flags = vec![
        "--zk".to_owned(),
        zk.tls_connect_string(),
        "--zk-auth-file".into(),
        dir.join("zk-auth").display().to_string(),
        "--zk-tls-ca".into(),
        pki.ca.display().to_string(),
        "--zk-tls-cert".into(),
        pki.client.cert.display().to_string(),
        "--zk-tls-key".into(),
        pki.client.key.display().to_string(),
    ];
    let command = |head: &[&str], parts: &[&Vec<String>]| {
        let mut args: Vec<String> = head.iter().map(|s| (*s).to_owned()).collect();
        for part in parts {
            args.extend(part.iter().cloned());
        }
        args
    };
    let redis_good = redis_flags("redis-password");
    let runs = [
        (command(&["check-config", &file_arg], &[]), 0),
        (command(&["status"], &[&redis_good]), 0),
        (command(&["status", "--lag"], &[&redis_good, &zk_flags]), 0),
        (command(&["verify", "--config", &file_arg], &[]), 0),
        (command(&["verify", "--root", &root], &[&redis_good, &zk_flags]), 0),
        (command(&["get", &format!("{root}/k1"), "--meta"], &[&redis_good]), 0),
        (command(&["ls", &root], &[&redis_good]), 0),
        (command(&["export", &root], &[&zk_flags]), 0),
        (command(&["status"], &[&redis_flags("wrong-password")]), 2),
    ];
    for (args, code) in runs {
        let outcome = binary::run_logging(BINARY, &args, Some("trace")).await.expect(code);
        outputs.push((format!("zkmirror {}", args.join(" ")), all_output(&outcome)));
    }
    outputs.push(("Debug of the settings".into(), format!("{loaded:?}\n{loaded:#?}\n{config:?}")));
    outputs.push(("check-config's rendering".into(), loaded.render_masked()));
    let log_text = daemon.stop();
    // Not an empty haystack: the daemon logged at trace through both reconnects.
    assert!(log_text.lines().count() > 100, "the daemon's log is short:\n{log_text}");
    assert!(log_text.contains("TRACE") || log_text.contains("trace"), "no trace lines in the log");
    outputs.push(("the daemon's log".into(), log_text));

    let mut secrets = vec![ZK_PASSWORD.to_owned(), REDIS_PASSWORD.to_owned(), WRONG_PASSWORD.to_owned()];
    secrets.extend(pem_body(&pki.client.key));
    assert!(secrets.len() > 3, "the key's PEM body is among the secrets");
    for (what, text) in &outputs {
        for secret in &secrets {
            if let Some(at) = text.find(secret.as_str()) {
                let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
                panic!("{what} shows a secret ({secret:?}) in:\n{}", &text[start..end]);
            }
        }
    }
}

//! Redis targets registered in ZooKeeper (`targets_from`), against real servers: a sidecar
//! registers its Redis with an ephemeral znode and the mirror cold-syncs it; its secret comes
//! from the mirror's own settings by the target's name; a registration carrying a password
//! is left out (the secret never logged) while the others run; a changed registration
//! restarts its target on the new URL; a vanished one stops its mirror and keeps its copy.

mod common;

use common::binary::{self, Daemon};
use common::world::{assert_converges, create_tree, redis_conn, stored_data, wait_for_data, CONVERGE};
use common::{create_all, unique_root, wait_until, zk_client, RedisServer, ZkServer};
use zookeeper_client::{Acls, Client, CreateMode};

fn binary_path() -> &'static str {
    env!("CARGO_BIN_EXE_zkmirror")
}

async fn register(sidecar: &Client, path: &str, data: &str) {
    let ephemeral = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
    sidecar.create(path, data.as_bytes(), &ephemeral).await.unwrap_or_else(|e| panic!("registering {path}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_targets_come_change_and_go_with_their_znodes() {
    let zk_connect = ZkServer::shared().connect_string();
    let zk = zk_client(&zk_connect).await;
    let root = unique_root("registry-root");
    let registry = unique_root("registry");
    create_all(&zk, &root, b"root").await;
    create_tree(&zk, &root, 3, 2, 16).await;
    create_all(&zk, &registry, b"").await;
    let (a, east, east2) = (RedisServer::start(), RedisServer::start(), RedisServer::start());
    let west = RedisServer::start_with_password("mirror", "s3cret-west");
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("west.pw"), "s3cret-west\n").expect("password file");
    let settings = dir.path().join("zkmirror.toml");
    std::fs::write(
        &settings,
        format!(
            "targets_from = {registry:?}\n\n[zookeeper]\nservers = {zk_connect:?}\n\n\
             [[targets]]\nname = \"a\"\nurl = {:?}\n\n\
             [target_secrets.west]\nhosts = [\"127.0.0.1:{}\"]\npassword_file = \"west.pw\"\n\n\
             [[roots]]\npath = {root:?}\n",
            a.url(),
            west.port()
        ),
    )
    .expect("settings file");
    let log = dir.path().join("run.log");
    let mut daemon =
        Daemon::start(binary_path(), &["--config", &settings.display().to_string()], "zkmirror=info", &log);
    daemon.wait_for_log("registered targets").await;

    // A registration the mirror may not read (its sidecar's digest only) is left out alone:
    // the registrations after it still count.
    let private = zk_client(&zk_connect).await;
    private.auth("digest", b"sidecar:secret").await.expect("digest auth");
    let owner_only = CreateMode::Ephemeral.with_acls(Acls::creator_all());
    private
        .create(&format!("{registry}/aaa-private"), br#"{"url": "redis://127.0.0.1:1/"}"#, &owner_only)
        .await
        .expect("a private registration");
    // The sidecars' own session: their registrations live as long as it does.
    let sidecar = zk_client(&zk_connect).await;
    register(&sidecar, &format!("{registry}/east"), &format!("{{\"url\": \"{}\"}}", east.url())).await;
    let west_url = format!("redis://mirror@127.0.0.1:{}/", west.port());
    register(&sidecar, &format!("{registry}/west"), &format!("{{\"url\": \"{west_url}\"}}")).await;
    let leaked = format!("redis://mirror:leaked-pw@127.0.0.1:{}/", east2.port());
    register(&sidecar, &format!("{registry}/bad"), &format!("{{\"url\": \"{leaked}\"}}")).await;
    assert_converges(&zk, &a.url(), "zk", &root).await;
    assert_converges(&zk, &east.url(), "zk", &root).await;
    assert_converges(&zk, &west.url_with_credentials(), "zk", &root).await;
    daemon.wait_for_lines(&["registration left out", &format!("{registry}/aaa-private"), "cannot read it"], 1).await;
    let refused = daemon.wait_for_lines(&["registration left out", &format!("{registry}/bad")], 1).await;
    assert!(refused.contains("carries a password"), "{refused}");
    assert!(!daemon.log_text().contains("leaked-pw"), "the registration's password was logged");
    assert_eq!(stored_data(&east2.url(), &root).await, None, "the refused registration was mirrored");
    // `status --config` reports the registered targets beside the file's, and says which
    // registration the mirror left out and why.
    let settings_arg = settings.display().to_string();
    let status = binary::run(binary_path(), &["status", "--config", &settings_arg, "--json"]).await.expect(0);
    let value: serde_json::Value = serde_json::from_str(&status.stdout).expect("status --json");
    assert_eq!(sorted_targets(&value["targets"]), ["a", "east", "west"], "{value}");
    let left_out = value["registry"]["left_out"].to_string();
    assert!(left_out.contains("bad") && left_out.contains("carries a password"), "{value}");
    assert!(
        !status.stdout.contains("s3cret-west") && !status.stdout.contains("leaked-pw"),
        "a secret in status: {value}"
    );
    // So does `verify --config`: every copy, the registered ones included, is exact.
    let verify = binary::run(binary_path(), &["verify", "--config", &settings_arg, "--json"]).await.expect(0);
    let report: serde_json::Value = serde_json::from_str(&verify.stdout).expect("verify --json");
    assert_eq!(sorted_targets(&report["roots"]), ["a", "east", "west"], "{report}");
    assert_eq!(report["exact"], true, "{report}");

    // A changed registration: east moves to another Redis, cold-synced there.
    sidecar
        .set_data(&format!("{registry}/east"), format!("{{\"url\": \"{}\"}}", east2.url()).as_bytes(), None)
        .await
        .expect("changing a registration");
    assert_converges(&zk, &east2.url(), "zk", &root).await;

    // The sidecar's session ends: its registrations vanish, their mirrors stop (the second
    // applied reload naming west: its start was the first), and their copies stay whole.
    drop(sidecar);
    let stopped = daemon.wait_for_lines(&["reload applied", "target west"], 2).await;
    assert!(stopped.contains("target east"), "east did not stop with west: {stopped}");
    zk.set_data(&root, b"after the sidecars left", None).await.expect("set");
    wait_for_data(&a.url(), &root, b"after the sidecars left").await;
    assert_eq!(stored_data(&west.url_with_credentials(), &root).await.as_deref(), Some(&b"root"[..]));
    assert_eq!(stored_data(&east2.url(), &root).await.as_deref(), Some(&b"root"[..]));
    assert_converges(&zk, &a.url(), "zk", &root).await;
    let mut east2_conn = redis_conn(&east2.url()).await;
    let znodes: Vec<String> =
        redis::cmd("KEYS").arg(format!("zk:{{{root}*}}:meta")).query_async(&mut east2_conn).await.expect("KEYS");
    assert_eq!(znodes.len(), 1 + 3 + 9, "east's copy lost znodes when it stopped: {znodes:?}");
    // A registration naming a server its secrets are not for is left out, the secret unsent.
    let sidecar = zk_client(&zk_connect).await;
    let stranger = format!("redis://mirror@127.0.0.1:{}/", east.port());
    register(&sidecar, &format!("{registry}/west"), &format!("{{\"url\": \"{stranger}\"}}")).await;
    let line = daemon.wait_for_lines(&["registration left out", &format!("{registry}/west")], 1).await;
    assert!(line.contains("hosts does not list"), "{line}");
    drop(private);
    daemon.process.assert_running();
    daemon.stop();
}

/// The `target` of each entry of a JSON list (`status --json` targets, `verify --json` roots),
/// sorted.
fn sorted_targets(list: &serde_json::Value) -> Vec<&str> {
    let mut targets: Vec<&str> = list.as_array().into_iter().flatten().filter_map(|t| t["target"].as_str()).collect();
    targets.sort();
    targets
}

/// Settings with only registered targets under `registry`, mirroring `root`.
fn registry_settings(dir: &std::path::Path, zk: &str, registry: &str, root: &str) -> String {
    let settings = dir.join("zkmirror.toml");
    std::fs::write(
        &settings,
        format!("targets_from = {registry:?}\n\n[zookeeper]\nservers = {zk:?}\n\n[[roots]]\npath = {root:?}\n"),
    )
    .expect("settings file");
    settings.display().to_string()
}

/// While the registry cannot be read (its ACL changed to one the mirror lacks), the targets
/// stay as they were and go on being written; once it is readable again, what changed under
/// it meanwhile applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_registry_keeps_the_targets_running_and_is_read_again_later() {
    let zk_connect = ZkServer::shared().connect_string();
    let zk = zk_client(&zk_connect).await;
    let (root, registry) = (unique_root("registry-acl-root"), unique_root("registry-acl"));
    create_all(&zk, &root, b"root").await;
    create_tree(&zk, &root, 2, 2, 8).await;
    create_all(&zk, &registry, b"").await;
    let (east, west) = (RedisServer::start(), RedisServer::start());
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = registry_settings(dir.path(), &zk_connect, &registry, &root);
    let mut daemon =
        Daemon::start(binary_path(), &["--config", &settings], "zkmirror=info", &dir.path().join("run.log"));
    let owner = zk_client(&zk_connect).await;
    owner.auth("digest", b"owner:secret").await.expect("digest auth");
    register(&owner, &format!("{registry}/east"), &format!("{{\"url\": \"{}\"}}", east.url())).await;
    assert_converges(&zk, &east.url(), "zk", &root).await;

    owner.set_acl(&registry, &Acls::creator_all(), None).await.expect("closing the registry");
    // A change under it makes the mirror read it again, and fail.
    register(&owner, &format!("{registry}/west"), &format!("{{\"url\": \"{}\"}}", west.url())).await;
    daemon.wait_for_log("cannot read the target registry").await;
    zk.set_data(&root, b"while the registry is closed", None).await.expect("set");
    wait_for_data(&east.url(), &root, b"while the registry is closed").await;
    assert_eq!(stored_data(&west.url(), &root).await, None, "west was read through a closed registry");
    // `status --config` cannot list the registered targets now, and says so: NOT OK, exit 1.
    let status = binary::run(binary_path(), &["status", "--config", &settings]).await;
    assert_eq!(status.code, 1, "status with the registry closed: {status:?}");
    assert!(status.stdout.contains(&format!("under {registry}): NOT OK: cannot read them")), "{status:?}");

    owner.set_acl(&registry, &Acls::anyone_all(), None).await.expect("opening the registry");
    // No watch fires for an ACL change: the retry after the failure reads it.
    daemon.wait_for_log("the target registry is readable again").await;
    assert_converges(&zk, &west.url(), "zk", &root).await;
    assert_converges(&zk, &east.url(), "zk", &root).await;
    daemon.stop();
}

/// With `--ha`, the standby reads the registry too and keeps what it read: once it leads, it
/// mirrors the registered targets (the leader that resigned wrote them until then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_mirrors_the_registered_targets_once_it_leads() {
    let zk_connect = ZkServer::shared().connect_string();
    let zk = zk_client(&zk_connect).await;
    let (root, registry, election) =
        (unique_root("registry-ha-root"), unique_root("registry-ha"), unique_root("registry-ha-election"));
    create_all(&zk, &root, b"root").await;
    create_tree(&zk, &root, 2, 2, 8).await;
    let east = RedisServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = registry_settings(dir.path(), &zk_connect, &registry, &root);
    let start = |name: &str| {
        let args = ["--config", settings.as_str(), "--ha", election.as_str(), "--instance", name];
        Daemon::start(binary_path(), &args, "zkmirror=info", &dir.path().join(format!("{name}.log")))
    };
    let (mut first, mut second) = (start("first"), start("second"));
    let sidecar = zk_client(&zk_connect).await;
    create_all(&zk, &registry, b"").await;
    register(&sidecar, &format!("{registry}/east"), &format!("{{\"url\": \"{}\"}}", east.url())).await;
    assert_converges(&zk, &east.url(), "zk", &root).await;
    let leader = wait_until(CONVERGE, "an instance leads", || {
        let (a, b) = (first.log_text(), second.log_text());
        async move {
            match (a.contains("elected leader"), b.contains("elected leader")) {
                (true, false) => Ok(true),
                (false, true) => Ok(false),
                seen => Err(format!("elected: {seen:?}")),
            }
        }
    })
    .await;
    let (leading, standing) = if leader { (first, &mut second) } else { (second, &mut first) };
    leading.stop();
    standing.wait_for_log("elected leader").await;
    zk.set_data(&root, b"written by the new leader", None).await.expect("set");
    wait_for_data(&east.url(), &root, b"written by the new leader").await;
    assert_converges(&zk, &east.url(), "zk", &root).await;
}

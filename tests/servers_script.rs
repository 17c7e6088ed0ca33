//! `scripts/servers`, the ZooKeeper and Redis a person keeps running to try zkmirror by hand:
//! started on given (non-standard) ports with its data in one folder, reported, and stopped by
//! the pids it recorded.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::servers::free_port;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/servers");

fn servers(dir: &Path, args: &[&str]) -> Output {
    Command::new(SCRIPT)
        .args(args)
        .env("ZKMIRROR_SERVERS_DIR", dir)
        .output()
        .unwrap_or_else(|e| panic!("running scripts/servers {args:?}: {e}"))
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Stops whatever the script started, also when an assertion fails.
struct Stop(PathBuf);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = servers(&self.0, &["stop"]);
    }
}

fn pid(dir: &Path, name: &str) -> u32 {
    let file = dir.join(format!("{name}.pid"));
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    text.trim().parse().unwrap_or_else(|e| panic!("{}: {text:?}: {e}", file.display()))
}

#[tokio::test]
async fn servers_start_on_given_ports_report_and_stop_by_pid() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path().join("servers");
    let _stop = Stop(dir.clone());
    let (zk_port, redis_port) = (free_port(), free_port());
    let (zk, redis) = (zk_port.to_string(), redis_port.to_string());

    let started = servers(&dir, &["start", "--zk-port", &zk, "--redis-port", &redis]);
    assert!(started.status.success(), "start failed: {}", text(&started));
    let status = servers(&dir, &["status"]);
    assert!(status.status.success(), "status: {}", text(&status));
    assert!(text(&status).contains(&format!("127.0.0.1:{zk_port}")), "{}", text(&status));
    assert!(text(&status).contains(&format!("127.0.0.1:{redis_port}")), "{}", text(&status));

    // They are the real servers, on those ports.
    let client = common::zk_client(&format!("127.0.0.1:{zk_port}")).await;
    client.list_children("/").await.expect("ZooKeeper answers");
    let mut conn = common::world::redis_conn(&format!("redis://127.0.0.1:{redis_port}/")).await;
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.expect("Redis answers");
    assert_eq!(pong, "PONG");
    drop(client);
    drop(conn);

    // A second start keeps the running servers.
    let (zk_pid, redis_pid) = (pid(&dir, "zookeeper"), pid(&dir, "redis"));
    let again = servers(&dir, &["start", "--zk-port", &zk, "--redis-port", &redis]);
    assert!(again.status.success() && text(&again).contains("already running"), "{}", text(&again));
    assert_eq!((pid(&dir, "zookeeper"), pid(&dir, "redis")), (zk_pid, redis_pid));

    let stopped = servers(&dir, &["stop"]);
    assert!(stopped.status.success(), "stop: {}", text(&stopped));
    for pid in [zk_pid, redis_pid] {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} still runs after stop");
    }
    let status = servers(&dir, &["status"]);
    assert_eq!(status.status.code(), Some(1), "status after stop: {}", text(&status));
}

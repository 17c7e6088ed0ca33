//! Smoke tests of the integration-test harness itself (`testkit/`, re-exported as
//! `tests/common`): if these fail, every other integration test's failure is suspect.

mod common;

use std::time::Duration;

use common::{create_all, unique_root, wait_until, zk_client, Guarded, RedisServer, TcpProxy, ZkServer};
use zookeeper_client::{Client, SessionState};

/// Generous deadline for conditions that normally hold within milliseconds.
const WAIT: Duration = Duration::from_secs(15);

/// Whether a process with this pid still exists (zombies count as existing).
fn process_exists(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// Reads `path`, describing a failure so that `wait_until` can report it.
async fn read(client: &Client, path: &str) -> Result<Vec<u8>, String> {
    client.get_data(path).await.map(|(data, _)| data).map_err(|err| format!("get_data({path}): {err}"))
}

async fn redis_connection(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    redis::Client::open(url)?.get_multiplexed_async_connection().await
}

#[tokio::test]
async fn shared_zookeeper_creates_and_reads_nested_nodes() {
    let server = ZkServer::shared();
    assert_eq!(server.port(), ZkServer::shared().port(), "shared() must return one server");
    assert_eq!(server.connect_string(), format!("127.0.0.1:{}", server.port()));
    assert_eq!(server.four_letter_word("ruok").expect("ruok"), "imok");

    let client = zk_client(&server.connect_string()).await;
    let root = unique_root("create/read");
    assert!(!root[1..].contains('/'), "unique_root must be a single path component: {root}");
    let leaf = format!("{root}/a/b/leaf");

    let stat = create_all(&client, &leaf, b"hello").await;
    assert_eq!(stat.version, 0);
    assert_eq!(read(&client, &leaf).await.expect("reading the new node"), b"hello");
    assert_eq!(read(&client, &format!("{root}/a")).await.expect("reading a parent"), b"");
    assert_eq!(client.list_children(&format!("{root}/a/b")).await.expect("listing"), vec!["leaf".to_owned()]);

    // create_all on an existing node overwrites its data.
    let stat = create_all(&client, &leaf, b"again").await;
    assert_eq!(stat.version, 1);
    assert_eq!(read(&client, &leaf).await.expect("reading the overwritten node"), b"again");

    assert_ne!(unique_root("create/read"), root, "unique_root must not repeat");
}

#[tokio::test]
async fn proxy_cut_disconnects_and_restore_reconnects_the_same_session() {
    let server = ZkServer::shared();
    let proxy = TcpProxy::start(server.addr());
    assert_eq!(proxy.target(), server.addr());
    let direct = zk_client(&server.connect_string()).await;
    let proxied = zk_client(&proxy.connect_string()).await;
    let session = proxied.session_id();
    let path = format!("{}/node", unique_root("proxy"));
    create_all(&direct, &path, b"before").await;
    assert_eq!(read(&proxied, &path).await.expect("reading through the proxy"), b"before");
    let forwarded_before_cut = proxy.connections_forwarded();
    assert_eq!(forwarded_before_cut, 1);

    proxy.cut();
    wait_until(WAIT, "the proxied client notices the cut", || async {
        match proxied.state() {
            SessionState::Disconnected => Ok(()),
            state => Err(format!("state {state:?}")),
        }
    })
    .await;
    // zookeeper-client queues requests while disconnected (they complete after a reconnect or
    // fail once the session is given up), so "fails" here means "does not succeed while cut".
    tokio::select! {
        result = proxied.get_data(&path) => {
            assert!(result.is_err(), "a request through a cut proxy must not succeed, got {result:?}");
        },
        _ = tokio::time::sleep(Duration::from_millis(500)) => {},
    }

    // A change made while the proxied client is cut off must be visible after reconnecting.
    direct.set_data(&path, b"during cut", None).await.expect("writing directly during the cut");
    assert_eq!(proxy.connections_forwarded(), forwarded_before_cut, "no connection may get through a cut proxy");

    proxy.restore();
    let data = wait_until(WAIT, "the proxied client reconnects and reads", || async {
        match proxied.state() {
            SessionState::SyncConnected => read(&proxied, &path).await,
            state => Err(format!("state {state:?}")),
        }
    })
    .await;
    assert_eq!(data, b"during cut");
    assert_eq!(proxied.session_id(), session, "the session must survive a short cut");
    assert!(proxy.connections_forwarded() > forwarded_before_cut, "the client must have reconnected through the proxy");
}

#[tokio::test]
async fn redis_set_get_and_restart_comes_back_empty() {
    let mut server = RedisServer::start();
    let port = server.port();
    assert_eq!(server.url(), format!("redis://127.0.0.1:{port}/"));
    let mut con = redis_connection(&server.url()).await.expect("connecting to redis");
    let () = redis::cmd("SET").arg("k").arg("v").query_async(&mut con).await.expect("SET");
    let value: Option<String> = redis::cmd("GET").arg("k").query_async(&mut con).await.expect("GET");
    assert_eq!(value.as_deref(), Some("v"));

    let old_pid = server.pid().expect("running server has a pid");
    server.restart();
    assert_eq!(server.port(), port, "restart keeps the port");
    assert_ne!(server.pid(), Some(old_pid), "restart runs a new process");
    assert!(!process_exists(old_pid), "the old redis-server must be gone");

    let mut con = redis_connection(&server.url()).await.expect("reconnecting to redis");
    let value: Option<String> = redis::cmd("GET").arg("k").query_async(&mut con).await.expect("GET after restart");
    assert_eq!(value, None, "a restarted redis must come back empty");
    let keys: u64 = redis::cmd("DBSIZE").query_async(&mut con).await.expect("DBSIZE");
    assert_eq!(keys, 0);

    let pid = server.pid().expect("running server has a pid");
    drop(server);
    assert!(!process_exists(pid), "dropping RedisServer must kill redis-server");
}

#[tokio::test]
async fn redis_with_password_rejects_anonymous_clients() {
    let server = RedisServer::start_with_password("mirror", "s3cret p@ss:/\"");
    assert_eq!(server.credentials(), Some(("mirror", "s3cret p@ss:/\"")));

    let anonymous = async {
        let mut con = redis_connection(&server.url()).await?;
        redis::cmd("SET").arg("k").arg("v").query_async::<()>(&mut con).await
    }
    .await;
    let err = anonymous.expect_err("an unauthenticated SET must fail");
    assert!(err.to_string().contains("NOAUTH"), "unexpected error: {err}");

    let mut con = redis_connection(&server.url_with_credentials()).await.expect("connecting with credentials");
    let () = redis::cmd("SET").arg("k").arg("v").query_async(&mut con).await.expect("authenticated SET");
    let user: String = redis::cmd("ACL").arg("WHOAMI").query_async(&mut con).await.expect("ACL WHOAMI");
    assert_eq!(user, "mirror");
}

#[tokio::test]
async fn zookeeper_restart_keeps_data_and_port() {
    let mut server = ZkServer::start();
    let port = server.port();
    let path = format!("{}/persisted", unique_root("restart"));
    {
        let client = zk_client(&server.connect_string()).await;
        create_all(&client, &path, b"durable").await;
    }

    let old_pid = server.pid().expect("running server has a pid");
    server.stop();
    assert_eq!(server.pid(), None);
    assert!(!process_exists(old_pid), "stop must kill the JVM");
    assert!(server.four_letter_word("ruok").is_err(), "a stopped server must not answer");
    server.stop(); // stopping twice is a no-op

    server.restart();
    assert_eq!(server.port(), port, "restart keeps the port");
    assert_eq!(server.four_letter_word("ruok").expect("ruok after restart"), "imok");
    let client = zk_client(&server.connect_string()).await;
    assert_eq!(read(&client, &path).await.expect("reading after restart"), b"durable");

    let pid = server.pid().expect("running server has a pid");
    drop(client);
    drop(server);
    assert!(!process_exists(pid), "dropping ZkServer must kill the JVM");
}

#[tokio::test]
#[should_panic(expected = "waiting until the impossible happens; last observed: attempt ")]
async fn wait_until_reports_what_it_last_saw() {
    let mut attempts = 0;
    wait_until(Duration::from_millis(120), "the impossible happens", || {
        attempts += 1;
        let observed = format!("attempt {attempts}");
        async move { Err::<(), _>(observed) }
    })
    .await;
}

#[test]
fn a_guarded_process_is_stopped_by_pid_when_dropped() {
    let mut command = std::process::Command::new("sleep");
    command.arg("60");
    let mut sleeper = Guarded::spawn("sleep 60", command);
    let pid = sleeper.pid();
    sleeper.assert_running();
    drop(sleeper);
    assert!(!process_exists(pid), "sleep (pid {pid}) outlived its guard");
}

#[test]
#[should_panic(expected = "true exited unexpectedly")]
fn a_guarded_process_that_exited_is_reported() {
    let mut done = Guarded::spawn("true", std::process::Command::new("true"));
    done.wait_exited_unreaped();
    done.assert_running();
}

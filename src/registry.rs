//! Redis targets registered in ZooKeeper (`--targets-from PATH`): each child znode of `PATH`
//! names one target, its data a small JSON object (`schema/targets.md`). A Redis sidecar that
//! registers itself with an ephemeral znode appears as a target while its session lives, and
//! goes when it ends; an operator adds a regional Redis without touching the mirror's settings.
//!
//! One task owns the session, the watch and the reads, as the mirrors do: every (re)connect
//! adds the persistent watch on `PATH` first and reads the registrations after, so a change
//! made while it reads is reported by the watch. Only what a read showed changes the set: a
//! ZooKeeper outage keeps the targets running as they are (losing the registry must not stop
//! the copies it named), and a registration that cannot be used (bad JSON, a secret in the
//! URL) is logged and left out, naming the znode, while the others stay.
//!
//! Read-only towards ZooKeeper: nothing here writes.

use std::time::Duration;

use serde::Deserialize;
use tracing::{info, warn};
use zookeeper_client::{AddWatchMode, Client, Error as ZkClientError, EventType, SessionState};

use crate::backoff::Backoff;
use crate::config::{mask_url, validate_redis_url, validate_target_name};

use crate::shutdown::Shutdown;
use crate::zk::ZkConnect;

/// Most registrations used at once: each is a mirror per root (a ZooKeeper session, a Redis
/// connection, its memory budget), so the count is bounded like every other input.
pub const MAX_REGISTRATIONS: usize = 64;
/// The largest registration read: a URL and a few settings fit in far less.
pub const MAX_REGISTRATION_BYTES: usize = 4096;
/// How long events are gathered before the registrations are read again: a sidecar fleet
/// restarting together is one re-read, not one per znode.
const SETTLE: Duration = Duration::from_millis(100);

/// One registered target, as its znode names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The child znode's name: the target's name (metrics, logs, `[target_secrets.NAME]`).
    pub name: String,
    /// A Redis URL without a password: secrets come from the mirror's own settings.
    pub url: String,
    /// The target's own cap of the change stream, if it differs from the mirror's.
    pub changes_maxlen: Option<u64>,
    /// The znode's data version: a changed registration restarts its target's mirrors.
    pub version: i32,
}

/// The data of a registration znode (`schema/targets.md`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistrationData {
    url: String,
    changes_maxlen: Option<u64>,
}

/// Why a registration znode cannot be used; names the znode.
#[derive(Debug, thiserror::Error)]
#[error("registration {path}: {why}")]
pub struct RegistrationError {
    pub path: String,
    pub why: String,
}

/// Parses the registration at `path` (child `name`), data `data`.
pub fn parse(path: &str, name: &str, data: &[u8], version: i32) -> Result<Registration, RegistrationError> {
    let bad = |why: String| RegistrationError { path: path.to_owned(), why };
    validate_target_name(name).map_err(|e| bad(e.to_string()))?;
    if data.len() > MAX_REGISTRATION_BYTES {
        return Err(bad(format!("{} bytes of data, more than {MAX_REGISTRATION_BYTES}", data.len())));
    }
    let parsed: RegistrationData = serde_json::from_slice(data).map_err(|e| {
        bad(format!("its data is not a registration ({e}); expected {{\"url\": \"redis://HOST:PORT/\"}}"))
    })?;
    validate_redis_url(&parsed.url).map_err(|e| bad(e.to_string()))?;
    // A secret must not be in ZooKeeper, readable by whoever may read the registry.
    if url_parts(&parsed.url).password {
        return Err(bad(format!(
            "its URL {} carries a password: registrations hold no secrets; give it as \
             [target_secrets.{name}] password_file in the mirror's settings",
            mask_url(&parsed.url)
        )));
    }
    if parsed.changes_maxlen == Some(0) {
        return Err(bad("changes_maxlen must be at least 1".into()));
    }
    Ok(Registration { name: name.to_owned(), url: parsed.url, changes_maxlen: parsed.changes_maxlen, version })
}

/// What a Redis URL names, as far as a registration is concerned.
#[derive(Debug, PartialEq, Eq)]
pub struct UrlParts {
    /// The URL carries a password (in its userinfo, or a `pass=`/`password=` parameter).
    pub password: bool,
    /// Every server it names, `host:port` with the host lowercased and the port 6379 when
    /// none is given (a Sentinel or Cluster URL names several).
    pub hosts: Vec<String>,
}

/// The servers and whether there is a password, for any URL form zkmirror takes (one server,
/// `redis+sentinel://a,b/SERVICE`, a cluster's `a,b`): read from the authority directly, so
/// that no rewriting of the URL (a trailing `/`, a space after a comma) is taken for a secret.
pub fn url_parts(url: &str) -> UrlParts {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let query = url.split_once('?').map_or("", |(_, q)| q.split('#').next().unwrap_or(""));
    let password = userinfo.is_some_and(|u| u.contains(':'))
        || query.split('&').any(|kv| {
            let key = kv.split('=').next().unwrap_or("").to_ascii_lowercase();
            key == "pass" || key == "password"
        });
    let hosts = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| {
            let h = h.to_ascii_lowercase();
            // `[::1]:6379`, `[::1]`, `host:6379`, `host`.
            let has_port = match h.rfind(']') {
                Some(end) => h[end..].contains(':'),
                None => h.contains(':'),
            };
            if has_port {
                h
            } else {
                format!("{h}:6379")
            }
        })
        .collect();
    UrlParts { password, hosts }
}

/// Watches `path` until `shutdown` fires, sending every new set of registrations (sorted by
/// name) with `send`. The first set goes as soon as it is read, also when it is empty.
///
/// `zk` is read at every new session: a reload's new credentials or TLS files reach the next.
pub async fn watch<F, Fut>(zk: tokio::sync::watch::Receiver<ZkConnect>, path: String, send: F, mut shutdown: Shutdown)
where
    F: Fn(Vec<Registration>) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut backoff = Backoff::between(Duration::from_millis(200), Duration::from_secs(5));
    let mut last: Option<Vec<Registration>> = None;
    let mut warned = Warned::default();
    // Whether the last session failed: logged once per outage, and cleared by the next read.
    let mut failing = false;
    loop {
        let connect = zk.borrow().clone();
        let mut state = Follow { last: &mut last, backoff: &mut backoff, warned: &mut warned, failing: &mut failing };
        let session = tokio::select! {
            _ = shutdown.fired() => return,
            session = follow(&connect, &path, &send, &mut state) => session,
        };
        match session {
            Ok(Ended::ReceiverGone) => return,
            Ok(Ended::SessionLost) => {}
            Err(e) if !failing => {
                failing = true;
                warn!(registry = %path, error = %e, "cannot read the target registry; the targets stay as they are");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = shutdown.fired() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// What outlives one session of the registry's task.
struct Follow<'a> {
    last: &'a mut Option<Vec<Registration>>,
    backoff: &'a mut Backoff,
    warned: &'a mut Warned,
    failing: &'a mut bool,
}

enum Ended {
    /// The session's connection dropped or ended: a new session rebuilds watch and reads.
    SessionLost,
    /// Nobody takes the registrations any more.
    ReceiverGone,
}

/// One session: the watch, then a read, then a read after every change, until the session is
/// lost. Errors are the session's (connect, watch, read).
async fn follow<F, Fut>(
    zk: &ZkConnect,
    path: &str,
    send: &F,
    state: &mut Follow<'_>,
) -> Result<Ended, crate::error::ZkError>
where
    F: Fn(Vec<Registration>) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let client = zk.connect(false).await?;
    // The watch before the read: a registration made while it reads is reported.
    let mut watcher = client
        .watch(path, AddWatchMode::PersistentRecursive)
        .await
        .map_err(|source| crate::error::ZkError::Watch { path: path.to_owned(), source })?;
    loop {
        let read = read_all(&client, path, state.warned)
            .await
            .map_err(|source| crate::error::ZkError::Read { path: path.to_owned(), source })?;
        state.warned.end_read();
        state.backoff.reset();
        if std::mem::take(state.failing) {
            info!(registry = %path, "the target registry is readable again");
        }
        if state.last.as_ref() != Some(&read) {
            let names: Vec<&str> = read.iter().map(|r| r.name.as_str()).collect();
            info!(registry = %path, targets = ?names, "registered targets");
            *state.last = Some(read.clone());
            if !send(read).await {
                return Ok(Ended::ReceiverGone);
            }
        }
        // Wait for a change of PATH or a child (deeper znodes register nothing), then let a
        // burst settle into one re-read.
        loop {
            let event = watcher.changed().await;
            if event.event_type == EventType::Session {
                if event.session_state != SessionState::SyncConnected {
                    return Ok(Ended::SessionLost);
                }
                continue;
            }
            if event.path == path || crate::path::parent(&event.path) == Some(path) {
                break;
            }
        }
        let settle = tokio::time::sleep(SETTLE);
        tokio::pin!(settle);
        loop {
            tokio::select! {
                _ = &mut settle => break,
                event = watcher.changed() => {
                    if event.event_type == EventType::Session && event.session_state != SessionState::SyncConnected {
                        return Ok(Ended::SessionLost);
                    }
                }
            }
        }
    }
}

/// The usable registrations under `path` as the mirror would take them now (for `status
/// --config`), and the unusable ones (each znode's path, and why), which the mirror leaves out.
pub(crate) async fn read_registrations(
    client: &Client,
    path: &str,
) -> Result<(Vec<Registration>, Vec<(String, String)>), ZkClientError> {
    let mut warned = Warned { collect: Some(Vec::new()), ..Warned::default() };
    let found = read_all(client, path, &mut warned).await?;
    Ok((found, warned.collect.unwrap_or_default()))
}

/// Every usable registration under `path`, sorted by name. `path` absent: none. A child gone
/// between the listing and its read is left out (its deletion was reported by the watch).
async fn read_all(client: &Client, path: &str, warned: &mut Warned) -> Result<Vec<Registration>, ZkClientError> {
    let mut children = match client.get_children(path).await {
        Ok((children, _)) => children,
        Err(ZkClientError::NoNode) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    children.sort();
    // Read a few more than are used: unusable ones must not push usable ones out.
    children.truncate(4 * MAX_REGISTRATIONS);
    let mut found = Vec::with_capacity(MAX_REGISTRATIONS);
    let mut unused = 0;
    for name in children {
        let child = format!("{}/{name}", path.trim_end_matches('/'));
        let (data, stat) = match client.get_data(&child).await {
            Ok(answer) => answer,
            Err(ZkClientError::NoNode) => continue,
            // The session's trouble (a lost connection, an expiry): the read fails whole.
            Err(e) if is_session_error(&e) => return Err(e),
            // This znode's trouble (NoAuth: the mirror may not read it): left out alone.
            Err(e) => {
                warned.warn_once(&child, -1, || format!("registration {child}: cannot read it: {e}"));
                continue;
            }
        };
        match parse(&child, &name, &data, stat.version) {
            Ok(_) if found.len() == MAX_REGISTRATIONS => unused += 1,
            Ok(registration) => found.push((registration, stat.czxid)),
            Err(e) => warned.warn_once(&child, i64::from(stat.version), || e.to_string()),
        }
    }
    if unused > 0 {
        warn!(registry = %path, used = MAX_REGISTRATIONS, unused,
              "more registrations than zkmirror takes: the first by name are used");
    }
    // Oldest first (by creation): of two registrations naming one Redis the one that was
    // there first is kept (see `Settings::registered`).
    found.sort_by_key(|(_, czxid)| *czxid);
    Ok(found.into_iter().map(|(registration, _)| registration).collect())
}

/// Errors that concern the session, not one znode: the read is retried on a new session.
fn is_session_error(e: &ZkClientError) -> bool {
    matches!(
        e,
        ZkClientError::ConnectionLoss
            | ZkClientError::SessionExpired
            | ZkClientError::SessionMoved
            | ZkClientError::ClientClosed
            | ZkClientError::Timeout
    )
}

/// Which unusable registrations were logged, and at which data version: each is logged once
/// per version, not at every re-read. Bounded: it holds only znodes read last time.
#[derive(Default)]
struct Warned {
    logged: std::collections::HashMap<String, i64>,
    seen: std::collections::HashSet<String>,
    /// `Some`: collect each problem (znode path, why) instead of logging it.
    collect: Option<Vec<(String, String)>>,
}

impl Warned {
    /// Logs `why` unless `child` was logged at this `version` (its data version; -1 for a
    /// znode that could not be read at all, whose version is unknown).
    fn warn_once(&mut self, child: &str, version: i64, why: impl FnOnce() -> String) {
        self.seen.insert(child.to_owned());
        if let Some(collected) = self.collect.as_mut() {
            collected.push((child.to_owned(), why()));
            return;
        }
        if self.logged.get(child) != Some(&version) {
            warn!(error = %why(), "registration left out");
            self.logged.insert(child.to_owned(), version);
        }
    }

    /// Forgets znodes not met in the last read: they are gone (or usable now).
    fn end_read(&mut self) {
        let seen = std::mem::take(&mut self.seen);
        self.logged.retain(|child, _| seen.contains(child));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_names_a_url_without_secrets() {
        let ok = parse("/reg/eu", "eu", br#"{"url": "redis://10.0.0.5:6379/0"}"#, 3).expect("valid");
        assert_eq!(
            ok,
            Registration { name: "eu".into(), url: "redis://10.0.0.5:6379/0".into(), changes_maxlen: None, version: 3 }
        );
        let with_user = parse("/reg/eu", "eu", br#"{"url": "rediss://mirror@h:6380/", "changes_maxlen": 500}"#, 0);
        assert_eq!(with_user.expect("a user is no secret").changes_maxlen, Some(500));
        let err = |name: &str, data: &[u8]| parse(&format!("/reg/{name}"), name, data, 0).err().map(|e| e.to_string());
        let secret = err("eu", br#"{"url": "redis://mirror:hunter2@h:6379/"}"#).unwrap_or_default();
        assert!(secret.starts_with("registration /reg/eu: ") && secret.contains("[target_secrets.eu]"), "{secret}");
        assert!(!secret.contains("hunter2"), "the error repeats the secret: {secret}");
        let query = err("eu", br#"{"url": "redis://h:6379/?password=hunter2"}"#).unwrap_or_default();
        assert!(query.contains("carries a password"), "{query}");
        assert!(!query.contains("hunter2"), "{query}");
        // URLs without a secret are not refused for one, however they are written.
        for url in [
            "redis+sentinel://s1:26379,s2:26379/mymaster/",
            "redis+sentinel://s1:26379, s2:26379/mymaster",
            "REDIS://h:6379/",
            "redis://[0:0::1]:6379/",
            "redis+sentinel://mirror%40x@s1:26379/svc",
        ] {
            assert!(!url_parts(url).password, "{url}");
        }
        assert_eq!(url_parts("redis://u:p@H:1/").hosts, ["h:1"]);
        assert_eq!(url_parts("redis+sentinel://a:1, B/svc").hosts, ["a:1", "b:6379"]);
        assert_eq!(url_parts("redis://[::1]/").hosts, ["[::1]:6379"]);
        assert!(err("eu", b"not json").unwrap_or_default().contains("expected {\"url\""));
        assert!(err("eu", br#"{"url": "redis://h:1/", "password": "x"}"#)
            .unwrap_or_default()
            .contains("unknown field"));
        assert!(err("e u", br#"{"url": "redis://h:1/"}"#).unwrap_or_default().contains("not allowed"));
        assert!(err("eu", br#"{"url": "h:6379"}"#).unwrap_or_default().contains("HOST:PORT"));
        assert!(err("eu", br#"{"url": "redis://h:1/", "changes_maxlen": 0}"#).is_some());
        let big = format!(r#"{{"url": "redis://h:1/", "x": "{}"}}"#, "a".repeat(MAX_REGISTRATION_BYTES));
        assert!(err("eu", big.as_bytes()).unwrap_or_default().contains("bytes of data"));
    }
}

//! What a mirror needs to know: where the servers are, which subtree, which prefix, and the
//! few timings an operator may want to change. Validated once, before anything connects.

use std::time::Duration;

use crate::error::ConfigError;

/// Where ZooKeeper is when nothing says otherwise: what `zkCli.sh` connects to by itself.
pub const DEFAULT_ZK_SERVERS: &str = "127.0.0.1:2181";
/// Where Redis is when nothing says otherwise: what `redis-cli` connects to by itself.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// The name of the one Redis target of a process that names none (`--redis URL`, `[redis]`).
pub const DEFAULT_TARGET: &str = "default";

/// One mirror: a ZooKeeper subtree copied into Redis under one prefix.
#[derive(Clone, PartialEq)]
pub struct MirrorConfig {
    /// The name of the Redis target this mirror writes to (`default` when the process has
    /// one): with several targets (`--redis NAME=URL`, `[[targets]]`), one mirror runs per
    /// target and root, each with its own progress, status hash and metrics.
    pub target: String,
    /// ZooKeeper connect string: `host:port[,host:port...]`.
    pub zk_servers: String,
    /// Optional ZooKeeper digest credentials (`user:password`), added to the session.
    pub zk_auth: Option<ZkDigest>,
    /// TLS to every ZooKeeper server (`--zk-tls-ca`, with `--zk-tls-cert`/`--zk-tls-key` for
    /// mutual TLS), the files' contents as loaded: a changed file is a changed config.
    pub zk_tls: Option<crate::tls::TlsFiles>,
    /// Where `zk_auth` was read from (`--zk-auth-file`), if from a file: watched for reloads.
    pub zk_auth_file: Option<std::path::PathBuf>,
    /// Redis URL, `redis://[user:password@]host:port[/db]` (or `rediss://`).
    pub redis_url: String,
    /// TLS to Redis beyond the URL's `rediss://`: a private CA, a client identity. Loaded and
    /// checked with the settings; its content takes part in `==`, so a reload that changes a
    /// file restarts the mirror with it.
    pub redis_tls: crate::redis_conn::RedisTls,
    /// The Redis password read from `--redis-password-file`, if given.
    pub redis_password: Option<crate::redis_conn::PasswordFile>,
    /// The mirrored subtree's absolute path.
    pub root: String,
    /// Key prefix, `zk` by default.
    pub prefix: String,
    /// Session timeout asked of ZooKeeper (the server clamps it).
    pub session_timeout: Duration,
    /// How often the whole subtree is compared again, to catch what no watch reports
    /// (ACL changes, znodes that become readable). A pass that falls due while changes arrive
    /// faster than 1,000/s (over the last interval) waits another interval, at most 4 in a row.
    pub anti_entropy_interval: Duration,
    /// How long a tombstone outlives the delete it records.
    pub tombstone_ttl: Duration,
    /// Approximate cap of the change stream (`XADD MAXLEN ~`).
    pub changes_maxlen: u64,
    /// How often `P:mirror` `heartbeat` is refreshed and Redis is checked for loss.
    pub heartbeat_interval: Duration,
    /// How many ZooKeeper reads may be in flight at once.
    pub read_window: usize,
    /// Bytes the mirror may hold at once: reads in flight, writes waiting for Redis, the
    /// pipeline in flight, changed paths not yet read (64 MiB by default).
    pub memory_budget: usize,
    /// The largest znode ZooKeeper can return (its `jute.maxbuffer`, 1 MiB by default): each
    /// read in flight is charged this much against the budget, since its size is unknown
    /// until it arrives. A larger znode, once read, raises the charge of later reads (logged).
    pub max_znode_bytes: usize,
    /// Which znodes below the root are copied (default: all).
    pub filter: crate::filter::Filter,
    /// Whether other roots share this prefix: then this root's status lives in
    /// `P:mirror:{ROOT}` and `P:mirror` holds the aggregate (see `schema/layout.md`).
    pub shared_prefix: bool,
    /// Set when this mirror runs as the elected leader of several instances (`--ha`): its
    /// fencing token goes with every write, and a write Redis refuses for a newer leader's
    /// token ends the mirror with [`crate::MirrorError::Deposed`]. `None`: a lone mirror.
    pub leadership: Option<Leadership>,
}

/// What a mirror knows of its own leadership (see "Running two or more mirrors" in the README).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leadership {
    /// This instance's name (`--instance`).
    pub instance: String,
    /// Unix ms at which it became leader.
    pub since_ms: u64,
    /// The fencing token: the `czxid` of its lock znode, higher for every later leader.
    pub fence: i64,
}

/// ZooKeeper digest credentials. `Debug` never prints the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ZkDigest {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for ZkDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:***", self.user)
    }
}

impl std::str::FromStr for ZkDigest {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once(':') {
            Some((user, password)) if !user.is_empty() => {
                Ok(ZkDigest { user: user.to_owned(), password: password.to_owned() })
            }
            _ => Err(ConfigError::BadZkAuth { why: "missing user or ':'".to_owned() }),
        }
    }
}

impl std::fmt::Debug for MirrorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorConfig")
            .field("target", &self.target)
            .field("zk_servers", &self.zk_servers)
            .field("zk_auth", &self.zk_auth)
            .field("zk_tls", &self.zk_tls)
            .field("redis_url", &mask_url(&self.redis_url))
            .field("redis_tls", &self.redis_tls)
            .field("redis_password", &self.redis_password)
            .field("root", &self.root)
            .field("prefix", &self.prefix)
            .field("filter", &self.filter.describe())
            .field("leadership", &self.leadership)
            .finish_non_exhaustive()
    }
}

impl MirrorConfig {
    /// A config with the documented defaults.
    pub fn new(zk_servers: impl Into<String>, redis_url: impl Into<String>, root: impl Into<String>) -> Self {
        MirrorConfig {
            target: DEFAULT_TARGET.to_owned(),
            zk_servers: zk_servers.into(),
            zk_auth: None,
            zk_tls: None,
            zk_auth_file: None,
            redis_url: redis_url.into(),
            redis_tls: crate::redis_conn::RedisTls::default(),
            redis_password: None,
            root: root.into(),
            prefix: "zk".to_owned(),
            session_timeout: Duration::from_secs(10),
            anti_entropy_interval: Duration::from_secs(30),
            tombstone_ttl: Duration::from_secs(60),
            changes_maxlen: 10_000,
            heartbeat_interval: Duration::from_secs(1),
            read_window: 1024,
            memory_budget: 64 << 20,
            max_znode_bytes: 1 << 20,
            filter: crate::filter::Filter::all(),
            shared_prefix: false,
            leadership: None,
        }
    }

    /// The files the Redis connection was loaded from (CA, client certificate and key, password
    /// file): what a reload watcher watches. Their content is in the config already.
    pub fn redis_files(&self) -> Vec<&std::path::Path> {
        let password = self.redis_password.iter().map(|p| p.path.as_path());
        self.redis_tls.files().chain(password).collect()
    }

    /// A client for this mirror's Redis: the URL, its TLS material and password (see
    /// [`crate::redis_conn::client`], the one place clients are built).
    ///
    /// A Sentinel URL has no one server to build a client for: use
    /// [`MirrorConfig::redis_connect`] (or the store's link), which resolves the primary.
    pub fn redis_client(&self) -> redis::RedisResult<redis::Client> {
        if crate::sentinel::is_sentinel_url(&self.redis_url) || crate::cluster::is_cluster_url(&self.redis_url) {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a Sentinel or Cluster URL names no single server",
                mask_url(&self.redis_url),
            )));
        }
        crate::redis_conn::client(&self.redis_url, &self.redis_tls, self.redis_password.as_ref())
    }

    /// A connection to this mirror's Redis (for a Sentinel URL, to the primary its sentinels
    /// name now), made with `config`.
    pub async fn redis_connect(
        &self,
        config: &redis::AsyncConnectionConfig,
    ) -> redis::RedisResult<crate::redis_conn::RedisConn> {
        crate::redis_conn::connect_any(&self.redis_url, &self.redis_tls, self.redis_password.as_ref(), config).await
    }

    /// How to reach ZooKeeper: the one connect path (see [`crate::zk::ZkConnect`]).
    pub fn zk_connect(&self) -> crate::zk::ZkConnect {
        crate::zk::ZkConnect {
            servers: self.zk_servers.clone(),
            auth: self.zk_auth.clone(),
            tls: self.zk_tls.clone(),
            session_timeout: self.session_timeout,
        }
    }

    /// What identifies this mirror in a process: two mirrors with the same key would write the
    /// same keys, so a process runs at most one per key.
    pub fn key(&self) -> MirrorKey {
        MirrorKey { target: self.target.clone(), prefix: self.prefix.clone(), root: self.root.clone() }
    }

    /// Checks every field; the first problem found is returned, naming the field and value.
    ///
    /// A value is refused here when something downstream would choke on it on every write
    /// (a script error repeats for ever) or panic (timer arithmetic), so that it is an error at
    /// load, naming the setting, and never a mirror wedged at run time.
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::path::validate(&self.root)?;
        validate_prefix(&self.prefix)?;
        validate_zk_servers(&self.zk_servers)?;
        // With TLS asked for, no server may be written `tcp://`: zookeeper-client would speak
        // plain TCP to it (the settings refuse it too; this covers a config built in code).
        for server in self.zk_servers.split(',').map(str::trim) {
            crate::zk::split_server(server, self.zk_tls.is_some())
                .map_err(|why| ConfigError::BadZkAddress { zk: self.zk_servers.clone(), why })?;
        }
        validate_redis_url(&self.redis_url)?;
        // TLS material needs a TLS URL: set directly (not through the settings), it must not be
        // dropped silently either.
        if !self.redis_tls.is_empty() && !crate::redis_conn::is_tls_url(&self.redis_url) {
            return Err(ConfigError::BadRedisUrl {
                url: mask_url(&self.redis_url),
                why: "TLS files are given: the URL must be rediss:// (zkmirror never falls back to plain TCP)".into(),
            });
        }
        if self.read_window == 0 {
            return Err(ConfigError::BadSetting { name: "read_window", why: "0: must be at least 1".into() });
        }
        if self.max_znode_bytes == 0 || self.memory_budget < 6 * self.max_znode_bytes {
            return Err(ConfigError::BadSetting {
                name: "memory_budget",
                why: format!(
                    "{} bytes: must be at least 6 × the largest znode ({} bytes): a read in flight is \
                     held three times while it is decoded, and its write three times while it is sent",
                    self.memory_budget, self.max_znode_bytes
                ),
            });
        }
        // `SET ... PX n` takes whole milliseconds above zero: `PX 0` is an error, and 0.5 ms
        // rounds to it.
        if self.tombstone_ttl < Duration::from_millis(1) {
            return Err(ConfigError::BadSetting {
                name: "tombstone_ttl",
                why: format!(
                    "{:?}: must be at least 1ms (Redis expires keys in whole milliseconds)",
                    self.tombstone_ttl
                ),
            });
        }
        // The connect request carries the timeout as a 32-bit count of milliseconds; zero would
        // silently mean the client's default.
        if self.session_timeout.is_zero() || self.session_timeout.as_millis() > i32::MAX as u128 {
            return Err(ConfigError::BadSetting {
                name: "session_timeout",
                why: format!("{:?}: must be above zero and at most {}ms", self.session_timeout, i32::MAX),
            });
        }
        for (name, value) in [
            ("heartbeat_interval", self.heartbeat_interval),
            ("anti_entropy_interval", self.anti_entropy_interval),
            ("tombstone_ttl", self.tombstone_ttl),
        ] {
            if value.is_zero() || value > MAX_DURATION {
                return Err(ConfigError::BadSetting {
                    name,
                    why: format!("{value:?}: must be above zero and at most {} days", MAX_DURATION.as_secs() / 86_400),
                });
            }
        }
        // `XADD ... MAXLEN ~ n` parses n as a signed 64-bit integer.
        if self.changes_maxlen > i64::MAX as u64 {
            return Err(ConfigError::BadSetting {
                name: "changes_maxlen",
                why: format!("{}: must be at most {}", self.changes_maxlen, i64::MAX),
            });
        }
        Ok(())
    }
}

/// The longest interval or TTL accepted. Longer would mean "never" anyway, and timers built on
/// such a period overflow (`Instant + period` panics).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// A mirror's identity within a process: its prefix and its root. Two `[[roots]]` with the same
/// path and different prefixes are two mirrors (each has its own copy); the same pair twice is
/// refused at load.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MirrorKey {
    /// The Redis target's name: the same root and prefix in two targets are two mirrors.
    pub target: String,
    pub prefix: String,
    pub root: String,
}

impl std::fmt::Display for MirrorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.target == DEFAULT_TARGET {
            write!(f, "{} (prefix {})", self.root, self.prefix)
        } else {
            write!(f, "{} (prefix {}, target {})", self.root, self.prefix, self.target)
        }
    }
}

/// A target's name is one or more of `A-Z a-z 0-9 _ . -`: it labels metrics and log lines and
/// names a znode under `--targets-from`.
pub fn validate_target_name(name: &str) -> Result<(), ConfigError> {
    let bad = |why: String| ConfigError::BadSetting { name: "target name", why: format!("{name:?}: {why}") };
    if name.is_empty() {
        return Err(bad("it must not be empty".into()));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "_.-".contains(*c))) {
        return Err(bad(format!("{c:?} is not allowed; use letters, digits, '_', '.' or '-'")));
    }
    Ok(())
}

/// A prefix is one or more of `A-Z a-z 0-9 _ . : -`. Braces would break the hash-tag layout.
pub fn validate_prefix(prefix: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| ConfigError::BadPrefix { prefix: prefix.to_owned(), why: why.to_owned() };
    if prefix.is_empty() {
        return Err(bad("it must not be empty"));
    }
    if let Some(c) = prefix.chars().find(|c| !(c.is_ascii_alphanumeric() || "_.:-".contains(*c))) {
        return Err(bad(&format!("{c:?} is not allowed; use letters, digits, '_', '.', ':' or '-'")));
    }
    if prefix.ends_with(':') {
        return Err(bad("it must not end with ':' (the layout adds one)"));
    }
    Ok(())
}

pub fn validate_zk_servers(servers: &str) -> Result<(), ConfigError> {
    let bad = |why: String| ConfigError::BadZkAddress { zk: servers.to_owned(), why };
    if servers.trim().is_empty() {
        return Err(bad("it is empty".into()));
    }
    for server in servers.split(',') {
        let server = server.trim();
        let host_port = server.split_once("://").map_or(server, |(_, rest)| rest);
        let host_port = host_port.split('/').next().unwrap_or(host_port);
        match host_port.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => return Err(bad(format!("{server:?} is not host:port"))),
        }
    }
    Ok(())
}

/// What a Redis URL looks like, for messages about one that is not.
const REDIS_URL_FORM: &str =
    "a Redis URL is redis://HOST:PORT/, rediss://HOST:PORT/ for TLS, redis://USER:PASSWORD@HOST:PORT/DB in full";

pub fn validate_redis_url(url: &str) -> Result<(), ConfigError> {
    let bad = |why: String| ConfigError::BadRedisUrl { url: mask_url(url), why };
    // `redis+sentinel://a:1,b:2/SERVICE` is no URL the url crate or redis-rs's client parse.
    if let Some(sentinel) = crate::sentinel::SentinelUrl::parse(url) {
        return sentinel.map(drop).map_err(bad);
    }
    if let Some(cluster) = crate::cluster::ClusterUrl::parse(url) {
        return cluster.map(drop).map_err(bad);
    }
    // `HOST:PORT` is what redis-cli users type first; the url crate then reports "relative URL
    // without a base" or takes the host for a scheme, neither of which says what to write.
    let host_port = !url.contains("://")
        && !url.contains('@')
        && url.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if host_port {
        return Err(bad(format!("it is HOST:PORT, not a URL: write redis://{url}/ ({REDIS_URL_FORM})")));
    }
    let parsed = url::Url::parse(url).map_err(|e| bad(format!("{e}; {REDIS_URL_FORM}")))?;
    if !matches!(parsed.scheme(), "redis" | "rediss" | "redis+unix" | "unix") {
        return Err(bad(format!(
            "the scheme {:?} is not redis://, rediss://, redis+sentinel:// or redis+cluster://; {REDIS_URL_FORM}",
            parsed.scheme()
        )));
    }
    // `#insecure` would turn certificate checks off (it needs a redis-rs feature not built in,
    // and would fail at the first connection): refused here, by name.
    if let Some(fragment) = parsed.fragment() {
        return Err(bad(format!(
            "the fragment #{fragment} is not accepted: zkmirror always verifies the server's certificate \
             (give a private CA with --redis-tls-ca)"
        )));
    }
    redis::Client::open(url).map_err(|e| bad(e.to_string()))?;
    Ok(())
}

/// The URL with any password replaced by `***`, for logs and errors.
pub fn mask_url(url: &str) -> String {
    match crate::cluster::ClusterUrl::parse(url) {
        Some(Ok(cluster)) => return cluster.masked(),
        Some(Err(_)) => {
            let (scheme, rest) = url.split_once("://").unwrap_or(("redis+cluster", url));
            let rest = rest.split_once('?').map_or(rest, |(before, _)| before);
            return match rest.rsplit_once('@') {
                Some((_, after)) => format!("{scheme}://***@{after}"),
                None => format!("{scheme}://{rest}"),
            };
        }
        None => {}
    }
    match crate::sentinel::SentinelUrl::parse(url) {
        Some(Ok(sentinel)) => return sentinel.masked(),
        // Unparsable: the scheme, and nothing of the userinfo (it may hold a password).
        Some(Err(_)) => {
            let (scheme, rest) = url.split_once("://").unwrap_or(("redis+sentinel", url));
            let rest = rest.split_once('?').map_or(rest, |(before, _)| before);
            return match rest.rsplit_once('@') {
                Some((_, after)) => format!("{scheme}://***@{after}"),
                None => format!("{scheme}://{rest}"),
            };
        }
        None => {
            if let Ok(parsed) = url::Url::parse(url) {
                return mask_parsed(parsed);
            }
        }
    }
    // Still name what was given, less anything before an '@' (it may hold a password)
    // and any query (it may too).
    let url = url.split_once('?').map_or(url, |(before, _)| before);
    match url.rsplit_once('@') {
        Some((_, host)) => format!("{:?}", format!("***@{host}")),
        None => format!("{url:?}"),
    }
}

/// A parsed URL with its password (userinfo, or a unix socket's `?pass=`) masked.
fn mask_parsed(mut parsed: url::Url) -> String {
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    // redis-rs takes a unix socket's password from the query (`?pass=`).
    if parsed.query_pairs().any(|(name, _)| is_password_param(&name)) {
        let masked: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(name, value)| {
                let value = if is_password_param(&name) { "***".to_owned() } else { value.into_owned() };
                (name.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(masked);
    }
    parsed.to_string()
}

/// A URL query parameter that carries a password (`pass`, `password`, any case).
fn is_password_param(name: &str) -> bool {
    name.eq_ignore_ascii_case("pass") || name.eq_ignore_ascii_case("password")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> MirrorConfig {
        MirrorConfig::new("127.0.0.1:2181", "redis://127.0.0.1:6379/", "/app")
    }

    #[test]
    fn a_password_in_a_unix_socket_query_is_masked_too() {
        let masked = mask_url("redis+unix:///run/redis.sock?user=u&pass=s3cret&db=2");
        assert!(!masked.contains("s3cret") && masked.contains("pass=***") && masked.contains("db=2"), "{masked}");
        assert!(!mask_url("unix:///s?password=s3cret").contains("s3cret"));
        assert!(!mask_url("not a url?pass=s3cret").contains("s3cret"));
    }

    #[test]
    fn defaults_are_valid() {
        config().validate().expect("defaults validate");
    }

    #[test]
    fn rejects_bad_values_naming_them() {
        let mut c = config();
        c.root = "app".into();
        assert!(c.validate().unwrap_err().to_string().contains("\"app\""));
        let mut c = config();
        c.prefix = "z{k}".into();
        assert!(c.validate().unwrap_err().to_string().contains("prefix"));
        let mut c = config();
        c.redis_url = "http://x".into();
        assert!(c.validate().unwrap_err().to_string().contains("Redis URL"));
        let mut c = config();
        c.zk_servers = "localhost".into();
        assert!(c.validate().unwrap_err().to_string().contains("host:port"));
        for given in ["127.0.0.1:6379", "localhost:6379"] {
            let why = validate_redis_url(given).unwrap_err().to_string();
            assert!(why.contains(given) && why.contains(&format!("write redis://{given}/")), "{why}");
            assert!(why.contains("rediss://"), "{why}");
        }
        let why = validate_redis_url("http://x/").unwrap_err().to_string();
        assert!(why.contains("redis://HOST:PORT/"), "{why}");
        let mut c = config();
        c.zk_servers = "localhost".into();
        assert!(c.validate().unwrap_err().to_string().contains("host:port"));
    }

    /// `SET ... PX 0` is an error inside delete.lua: before this check, a `tombstone_ttl` of
    /// 0 (or 0.5 ms) failed every delete, for ever.
    #[test]
    fn settings_a_script_or_timer_would_choke_on_are_refused_naming_them() {
        let bad = |change: &dyn Fn(&mut MirrorConfig)| {
            let mut c = config();
            change(&mut c);
            c.validate().expect_err("refused").to_string()
        };
        let err = bad(&|c| c.tombstone_ttl = Duration::ZERO);
        assert!(err.contains("tombstone_ttl") && err.contains("0ns") && err.contains("1ms"), "{err}");
        let err = bad(&|c| c.tombstone_ttl = Duration::from_micros(500));
        assert!(err.contains("tombstone_ttl") && err.contains("500"), "{err}");
        let err = bad(&|c| c.tombstone_ttl = Duration::from_secs(400 * 86_400));
        assert!(err.contains("tombstone_ttl") && err.contains("365 days"), "{err}");
        let err = bad(&|c| c.anti_entropy_interval = Duration::from_secs(u64::MAX / 2));
        assert!(err.contains("anti_entropy_interval"), "{err}");
        let err = bad(&|c| c.anti_entropy_interval = Duration::ZERO);
        assert!(err.contains("anti_entropy_interval") && err.contains("0ns"), "{err}");
        let err = bad(&|c| c.heartbeat_interval = Duration::ZERO);
        assert!(err.contains("heartbeat_interval"), "{err}");
        let err = bad(&|c| c.session_timeout = Duration::ZERO);
        assert!(err.contains("session_timeout"), "{err}");
        let err = bad(&|c| c.session_timeout = Duration::from_secs(30 * 86_400));
        assert!(err.contains("session_timeout") && err.contains("2147483647ms"), "{err}");
        let err = bad(&|c| c.changes_maxlen = u64::MAX);
        assert!(err.contains("changes_maxlen") && err.contains(&u64::MAX.to_string()), "{err}");
        let err = bad(&|c| c.read_window = 0);
        assert!(err.contains("read_window"), "{err}");
        let mut edge = config();
        edge.tombstone_ttl = Duration::from_millis(1);
        edge.changes_maxlen = 0;
        edge.validate().expect("1 ms and an empty stream are accepted");
    }

    #[test]
    fn a_mirror_is_known_by_its_prefix_and_root() {
        let mut a = config();
        let mut b = config();
        b.prefix = "other".into();
        assert_ne!(a.key(), b.key());
        a.filter = crate::filter::Filter::new(&[], &[], Some(1)).expect("valid filter");
        assert_eq!(a.key(), config().key(), "the filter is not part of the identity");
        assert_eq!(b.key().to_string(), "/app (prefix other)");
    }

    #[test]
    fn secrets_are_masked() {
        assert_eq!(mask_url("redis://u:secret@h:1/"), "redis://u:***@h:1/");
        assert_eq!(mask_url("redis//h:1"), "\"redis//h:1\"");
        assert_eq!(mask_url("redis//u:secret@h:1"), "\"***@h:1\"");
        let digest: ZkDigest = "alice:pw".parse().expect("valid digest");
        assert_eq!(format!("{digest:?}"), "alice:***");
        let mut c = config();
        c.redis_url = "redis://u:secret@h:1/".into();
        assert!(!format!("{c:?}").contains("secret"));
    }
}

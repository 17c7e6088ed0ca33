//! Redis behind Sentinel: `redis+sentinel://[user:password@]HOST:PORT[,HOST:PORT...]/SERVICE`
//! (`rediss+sentinel://` for TLS). The URL names the sentinels and the service they monitor; the
//! primary is asked of them, and asked again whenever the connection to it fails.
//!
//! Why not redis-rs's `SentinelClient` alone: it resolves the primary once, when a connection
//! is made, and a connection it made keeps talking to that server. After a failover the old
//! primary is gone (or, back, a replica answering `READONLY`), and the mirror must write to the
//! new one. [`SentinelLink`] keeps one connection to the resolved primary, drops it on any error
//! that says the server is gone or no longer the primary (a broken connection, a timeout,
//! `READONLY`, `MASTERDOWN`), and resolves again through the sentinels on the next command.
//!
//! A failover may lose writes: replication is asynchronous, and the replica promoted may not
//! have received the last writes the old primary acknowledged. What was received is a prefix of
//! what the old primary wrote (one ordered replication stream), so the new primary's `P:mirror`
//! `zxid` still holds for what it has; but the mirror's own watermark, earned from the old
//! primary's acknowledgements, no longer does. So every connection records which server it
//! reached (its address and its `run_id`, which a restart changes too), and a connection to
//! another server than the last one is reported as a [`Switch`]: the store fails the next write
//! with it, which the engine treats as an outage, and the outage ends in a reconcile.
//!
//! TLS: `rediss+sentinel://` speaks TLS to the sentinels and to the data nodes alike, with the
//! same `--redis-tls-*` files. The data nodes are reached at the address the sentinels report
//! (an IP address, as a rule), so their certificates must carry it (an IP SAN). Credentials
//! (the URL's `user:password`, or `--redis-password-file`) are for the data nodes; the sentinels
//! are asked without any (a Sentinel with its own `requirepass` is not supported).

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, RedisError, RedisResult, TlsMode};

use crate::redis_conn::{PasswordFile, RedisTls};

/// How long asking the sentinels for the primary may take (each sentinel, and the primary it
/// names, is given redis-rs's own 1 s connection and 500 ms response timeouts).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The schemes of a Sentinel URL.
const SCHEMES: [(&str, bool); 2] = [("redis+sentinel://", false), ("rediss+sentinel://", true)];

/// What a Sentinel URL looks like, for messages about one that is not.
const FORM: &str = "a Sentinel URL is redis+sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE \
                    (rediss+sentinel:// for TLS)";

/// A parsed `redis+sentinel://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    /// `rediss+sentinel://`: TLS to the sentinels and the data nodes.
    pub tls: bool,
    /// The data nodes' ACL user, if the URL names one.
    pub user: Option<String>,
    /// The data nodes' password, if the URL carries one.
    pub password: Option<String>,
    /// The sentinels, in the order given (asked in that order).
    pub sentinels: Vec<(String, u16)>,
    /// The name the sentinels monitor the primary under (`sentinel monitor NAME ...`).
    pub service: String,
}

impl std::fmt::Debug for SentinelUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.masked())
    }
}

/// Whether `url` is a Sentinel URL (whatever else is wrong with it).
pub fn is_sentinel_url(url: &str) -> bool {
    has_scheme(url, &SCHEMES)
}

/// Whether `url` starts with one of `schemes` (case-insensitively).
pub(crate) fn has_scheme(url: &str, schemes: &[(&str, bool)]) -> bool {
    schemes.iter().any(|(scheme, _)| url.get(..scheme.len()).is_some_and(|s| s.eq_ignore_ascii_case(scheme)))
}

/// What a URL naming several servers holds (`redis+sentinel://` and `redis+cluster://`, which
/// neither the url crate nor redis-rs parse): TLS or not, the user and password decoded, the
/// servers, and the path after the first `/` past the last `@`, as given.
pub(crate) struct MultiHostUrl {
    pub tls: bool,
    pub user: Option<String>,
    pub password: Option<String>,
    pub hosts: Vec<(String, u16)>,
    pub path: String,
}

impl MultiHostUrl {
    /// Parses `url` if it starts with one of `schemes` (`None` otherwise). `server` names one
    /// host in errors ("sentinel", "node"), `form` says what the URL should look like. Errors
    /// never hold the password.
    pub(crate) fn parse(
        url: &str,
        schemes: &[(&str, bool)],
        server: &str,
        form: &str,
    ) -> Option<Result<MultiHostUrl, String>> {
        let (scheme, tls) = schemes
            .iter()
            .find(|(scheme, _)| url.get(..scheme.len()).is_some_and(|s| s.eq_ignore_ascii_case(scheme)))?;
        Some(Self::parse_rest(&url[scheme.len()..], *tls, server, form))
    }

    fn parse_rest(rest: &str, tls: bool, server: &str, form: &str) -> Result<MultiHostUrl, String> {
        if rest.contains('?') || rest.contains('#') {
            return Err(format!("a query (?...) or fragment (#...) is not accepted; {form}"));
        }
        // The userinfo may hold '/' (percent-encoded or not): the authority ends at the first
        // '/' after the last '@'.
        let (userinfo, after) = match rest.rsplit_once('@') {
            Some((userinfo, after)) => (Some(userinfo), after),
            None => (None, rest),
        };
        let (hosts, path) = after.split_once('/').unwrap_or((after, ""));
        let (user, password) = match userinfo {
            None => (None, None),
            Some(userinfo) => {
                let (user, password) = match userinfo.split_once(':') {
                    Some((user, password)) => (user, Some(password)),
                    None => (userinfo, None),
                };
                let user = decode(user).map_err(|why| format!("the user: {why}"))?;
                let password = password.map(decode).transpose().map_err(|why| format!("the password: {why}"))?;
                ((!user.is_empty()).then_some(user), password.filter(|p| !p.is_empty()))
            }
        };
        let mut parsed = Vec::new();
        for host_port in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            let bad = || format!("the {server} {host_port:?} is not HOST:PORT; {form}");
            let (host, port) = host_port.rsplit_once(':').ok_or_else(bad)?;
            let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
            let port: u16 = port.parse().map_err(|_| bad())?;
            if host.is_empty() || port == 0 {
                return Err(bad());
            }
            parsed.push((host.to_owned(), port));
        }
        if parsed.is_empty() {
            return Err(format!("it names no {server}; {form}"));
        }
        Ok(MultiHostUrl { tls, user, password, hosts: parsed, path: path.to_owned() })
    }
}

/// `scheme://[user[:***]@]host:port,...` for logs and errors: the URL less its password.
pub(crate) fn masked_multi_host(
    scheme: &str,
    user: Option<&str>,
    password: Option<&str>,
    hosts: &[(String, u16)],
) -> String {
    let userinfo = match (user, password) {
        (Some(user), Some(_)) => format!("{user}:***@"),
        (None, Some(_)) => ":***@".to_owned(),
        (Some(user), None) => format!("{user}@"),
        (None, None) => String::new(),
    };
    let hosts: Vec<String> = hosts.iter().map(|(host, port)| join_host(host, *port)).collect();
    format!("{scheme}://{userinfo}{}", hosts.join(","))
}

/// `host:port`, an IPv6 host in brackets.
pub(crate) fn join_host(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl SentinelUrl {
    /// Parses `url`; `None` when it is not a Sentinel URL at all, `Some(Err(why))` when it is
    /// one that cannot work (no sentinel, a sentinel that is not HOST:PORT, no service name).
    /// `why` never holds the password.
    pub fn parse(url: &str) -> Option<Result<SentinelUrl, String>> {
        Some(MultiHostUrl::parse(url, &SCHEMES, "sentinel", FORM)?.and_then(Self::from_parts))
    }

    fn from_parts(parts: MultiHostUrl) -> Result<SentinelUrl, String> {
        let MultiHostUrl { tls, user, password, hosts: sentinels, path } = parts;
        let service = decode(path.trim_end_matches('/')).map_err(|why| format!("the service name: {why}"))?;
        if service.is_empty() {
            return Err(format!(
                "it names no service: end it with /SERVICE, the name the sentinels monitor the primary under \
                 (`sentinel monitor SERVICE ...`); {FORM}"
            ));
        }
        if service.contains('/') {
            return Err(format!(
                "the service name {service:?} holds a '/' (a database number is not accepted); {FORM}"
            ));
        }
        Ok(SentinelUrl { tls, user, password, sentinels, service })
    }

    /// The URL as given less the password: for logs and errors.
    pub fn masked(&self) -> String {
        let scheme = if self.tls { "rediss+sentinel" } else { "redis+sentinel" };
        let hosts = masked_multi_host(scheme, self.user.as_deref(), self.password.as_deref(), &self.sentinels);
        format!("{hosts}/{}", self.service)
    }
}

/// Percent-decodes a URL component.
pub(crate) fn decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).ok_or("a '%' not followed by two hex digits")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "a '%' not followed by two hex digits")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 once percent-decoded".to_owned())
}

/// Which server a connection reached: where the sentinels said the primary was, and the
/// server's `run_id` (new at every start of redis-server).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrimaryId {
    pub addr: String,
    pub run_id: String,
}

impl std::fmt::Display for PrimaryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (run_id {})", self.addr, self.run_id)
    }
}

/// The primary changed between two connections: `from` is the server written to before,
/// `to` the one reached now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Switch {
    pub from: PrimaryId,
    pub to: PrimaryId,
}

impl Switch {
    /// The error a command fails with once the primary changed: an I/O error, as a lost
    /// connection is (the engine treats Redis as down, then reconciles when it answers).
    pub fn error(&self, service: &str) -> RedisError {
        RedisError::from(std::io::Error::other(format!(
            "the primary of Sentinel service {service} changed from {} to {} (a failover, or a restart): writes \
             the old one acknowledged may be lost; reconciling",
            self.from, self.to
        )))
    }
}

/// An error that means the connection cannot be used any more, or that the server is not (or
/// no longer) the primary: resolve again.
pub fn needs_resolving(error: &RedisError) -> bool {
    use redis::ServerErrorKind as K;
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_unrecoverable_error()
        || matches!(error.kind(), redis::ErrorKind::Server(K::ReadOnly | K::MasterDown | K::BusyLoading))
        || matches!(error.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
}

/// The client that asks the sentinels: one per [`SentinelLink`] (it caches its connections to
/// the sentinels), or one per one-shot command.
fn resolver(url: &SentinelUrl, tls: &RedisTls, password: Option<&PasswordFile>) -> RedisResult<SentinelClient> {
    let sentinels = url.sentinels.iter().map(|(host, port)| match url.tls {
        true => ConnectionAddr::TcpTls { host: host.clone(), port: *port, insecure: false, tls_params: None },
        false => ConnectionAddr::Tcp(host.clone(), *port),
    });
    let nodelay = redis::io::tcp::TcpSettings::default().set_nodelay(true);
    let mut builder = SentinelClientBuilder::new(sentinels, &url.service, SentinelServerType::Master)?
        .set_client_to_redis_tcp_settings(nodelay.clone())
        .set_client_to_sentinel_tcp_settings(nodelay);
    if url.tls {
        builder = builder.set_client_to_redis_tls_mode(TlsMode::Secure);
        if !tls.is_empty() {
            let certificates = crate::redis_conn::certificates(tls);
            builder = builder
                .set_client_to_redis_certificates(certificates.clone())
                .set_client_to_sentinel_certificates(certificates);
        }
    }
    if let Some(user) = &url.user {
        builder = builder.set_client_to_redis_username(user);
    }
    match (password, &url.password) {
        (Some(file), _) => builder = builder.set_client_to_redis_password(file.password()),
        (None, Some(password)) => builder = builder.set_client_to_redis_password(password),
        (None, None) => {}
    }
    builder.build()
}

/// Asks the sentinels for the primary, connects to it with `config`, and checks that it is a
/// primary (the sentinels' view may be a moment old) and which server it is.
async fn connect(
    resolver: &mut SentinelClient,
    url: &SentinelUrl,
    config: &redis::AsyncConnectionConfig,
) -> RedisResult<(MultiplexedConnection, PrimaryId)> {
    let asked = tokio::time::timeout(RESOLVE_TIMEOUT, resolver.async_get_client()).await;
    let client = match asked {
        Ok(result) => result.map_err(|e| {
            let why = format!("cannot resolve the primary of {} through its sentinels: {e}", url.masked());
            match e.kind() {
                // Not misconfiguration: the sentinels may be starting, or a failover under way.
                redis::ErrorKind::AuthenticationFailed => e,
                _ => RedisError::from(std::io::Error::other(why)),
            }
        })?,
        Err(_) => {
            return Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no sentinel of {} named a primary within {RESOLVE_TIMEOUT:?}", url.masked()),
            )))
        }
    };
    let addr = match &client.get_connection_info().addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port}"),
        other => format!("{other}"),
    };
    let mut conn = client.get_multiplexed_async_connection_with_config(config).await?;
    let role: redis::Role = redis::cmd("ROLE").query_async(&mut conn).await?;
    if !matches!(role, redis::Role::Primary { .. }) {
        return Err(RedisError::from(std::io::Error::other(format!(
            "{addr}, named the primary of {} by a sentinel, is not a primary (a failover under way?)",
            url.masked()
        ))));
    }
    let info: String = redis::cmd("INFO").arg("server").query_async(&mut conn).await?;
    let run_id = info.lines().find_map(|line| line.trim_end().strip_prefix("run_id:")).unwrap_or("unknown").to_owned();
    Ok((conn, PrimaryId { addr, run_id }))
}

/// A one-shot connection to the current primary (`status`, `verify`, `get`, `ls`, the start
/// check of `run`).
pub async fn connect_primary(
    url: &SentinelUrl,
    tls: &RedisTls,
    password: Option<&PasswordFile>,
    config: &redis::AsyncConnectionConfig,
) -> RedisResult<(MultiplexedConnection, PrimaryId)> {
    let mut resolver = resolver(url, tls, password)?;
    connect(&mut resolver, url, config).await
}

/// The running mirror's connection to the primary of a Sentinel service: re-resolved after any
/// error that [`needs_resolving`], and reporting a [`Switch`] when it reached another server.
pub struct SentinelLink {
    url: SentinelUrl,
    config: redis::AsyncConnectionConfig,
    /// Held while resolving: one resolution at a time (the others wait for its connection).
    resolver: tokio::sync::Mutex<SentinelClient>,
    state: std::sync::Mutex<LinkState>,
}

#[derive(Default)]
struct LinkState {
    /// The connection in use.
    conn: Option<MultiplexedConnection>,
    /// The server the last connection reached.
    last: Option<PrimaryId>,
    /// A change of server not yet acknowledged ([`SentinelLink::take_switch`]).
    switch: Option<Switch>,
}

impl SentinelLink {
    pub fn new(
        url: SentinelUrl,
        tls: &RedisTls,
        password: Option<&PasswordFile>,
        config: redis::AsyncConnectionConfig,
    ) -> RedisResult<SentinelLink> {
        let resolver = resolver(&url, tls, password)?;
        Ok(SentinelLink {
            url,
            config,
            resolver: tokio::sync::Mutex::new(resolver),
            state: std::sync::Mutex::new(LinkState::default()),
        })
    }

    pub fn url(&self) -> &SentinelUrl {
        &self.url
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The connection to the primary, resolving it first if there is none.
    pub async fn connection(&self) -> RedisResult<MultiplexedConnection> {
        if let Some(current) = self.state().conn.clone() {
            return Ok(current);
        }
        let mut resolver = self.resolver.lock().await;
        // Another command may have connected while this one waited.
        if let Some(current) = self.state().conn.clone() {
            return Ok(current);
        }
        let (conn, reached) = connect(&mut resolver, &self.url, &self.config).await?;
        let mut state = self.state();
        match state.last.take() {
            Some(before) if before != reached => {
                tracing::warn!(service = %self.url.service, from = %before, to = %reached,
                               "the Redis primary changed (Sentinel failover or restart)");
                // Several changes before one is acknowledged: the first server still counts.
                let from = state.switch.take().map_or(before, |s| s.from);
                state.switch = Some(Switch { from, to: reached.clone() });
            }
            Some(_) | None => tracing::info!(service = %self.url.service, primary = %reached,
                                             "connected to the Redis primary named by the sentinels"),
        }
        state.last = Some(reached);
        state.conn = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets the connection (an error said it cannot be used): the next command resolves the
    /// primary again. An error that arrives late may forget a connection made since; that costs
    /// one more resolution, which reaches the same server (no [`Switch`]).
    pub fn invalidate(&self) {
        self.state().conn = None;
    }

    /// The change of primary not yet acknowledged, if any.
    pub fn pending_switch(&self) -> Option<Switch> {
        self.state().switch.clone()
    }

    /// Acknowledges the change of primary: the caller reconciles.
    pub fn take_switch(&self) -> Option<Switch> {
        self.state().switch.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<SentinelUrl, String> {
        SentinelUrl::parse(url).expect("a sentinel URL")
    }

    #[test]
    fn a_full_url_parses_and_masks_its_password() {
        let url = parse("redis+sentinel://app:s%40cret@10.0.0.1:26379,[::1]:26380, s3:26381/mymaster").unwrap();
        assert!(!url.tls);
        assert_eq!(url.user.as_deref(), Some("app"));
        assert_eq!(url.password.as_deref(), Some("s@cret"));
        assert_eq!(
            url.sentinels,
            [("10.0.0.1".to_owned(), 26379), ("::1".to_owned(), 26380), ("s3".to_owned(), 26381)]
        );
        assert_eq!(url.service, "mymaster");
        let masked = url.masked();
        assert_eq!(masked, "redis+sentinel://app:***@10.0.0.1:26379,[::1]:26380,s3:26381/mymaster");
        assert!(!format!("{url:?}").contains("cret"));
        let tls = parse("rediss+sentinel://h:1/svc/").unwrap();
        assert!(tls.tls && tls.user.is_none() && tls.password.is_none());
        assert_eq!(tls.service, "svc");
    }

    /// What `--redis` and `[redis] url` go through: the load-time check and the masking.
    #[test]
    fn the_settings_check_and_mask_sentinel_urls() {
        crate::config::validate_redis_url("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster").unwrap();
        let err = crate::config::validate_redis_url("redis+sentinel://u:hunter2@127.0.0.1:26379/").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("no service")
                && text.contains("redis+sentinel://***@127.0.0.1:26379/")
                && !text.contains("hunter2"),
            "{text}"
        );
        let masked = crate::config::mask_url("rediss+sentinel://u:hunter2@h:1/svc");
        assert_eq!(masked, "rediss+sentinel://u:***@h:1/svc");
        // Unparsable: nothing before the '@' is shown.
        assert!(!crate::config::mask_url("redis+sentinel://u:hunter2@/").contains("hunter2"));
    }

    #[test]
    fn other_schemes_are_not_sentinel_urls() {
        assert!(SentinelUrl::parse("redis://h:1/").is_none());
        assert!(SentinelUrl::parse("rediss://h:1/").is_none());
        assert!(is_sentinel_url("REDIS+SENTINEL://h:1/s"));
        assert!(!is_sentinel_url("redis+unix:///s"));
    }

    #[test]
    fn bad_urls_say_what_is_missing() {
        let why = parse("redis+sentinel:///svc").unwrap_err();
        assert!(why.contains("no sentinel"), "{why}");
        let why = parse("redis+sentinel://u:hunter2@h1:26379").unwrap_err();
        assert!(why.contains("no service") && !why.contains("hunter2"), "{why}");
        let why = parse("redis+sentinel://h1:26379,h2/svc").unwrap_err();
        assert!(why.contains("\"h2\" is not HOST:PORT"), "{why}");
        let why = parse("redis+sentinel://h1:0/svc").unwrap_err();
        assert!(why.contains("not HOST:PORT"), "{why}");
        let why = parse("redis+sentinel://h1:1/svc/2").unwrap_err();
        assert!(why.contains("database"), "{why}");
        let why = parse("redis+sentinel://h1:1/svc?db=2").unwrap_err();
        assert!(why.contains("query"), "{why}");
    }

    #[test]
    fn errors_that_mean_the_primary_is_gone_or_demoted_resolve_again() {
        let readonly = RedisError::from((redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly), "read only"));
        assert!(needs_resolving(&readonly), "{readonly:?}");
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(needs_resolving(&io));
        let wrongtype =
            RedisError::from((redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError), "WRONGTYPE"));
        assert!(!needs_resolving(&wrongtype));
    }
}

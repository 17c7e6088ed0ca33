//! The one way to reach Redis: a URL, optional TLS material (a private CA, a client identity for
//! mutual TLS) and an optional password read from a file. Every command builds its
//! `redis::Client` through [`client`], so `run`, `status`, `verify`, `get` and `ls` trust the
//! same CA, present the same identity and never differ in how they fall back: they never do.
//!
//! The files are read and checked when the settings load ([`RedisFiles::load`]): a missing
//! file, a PEM without a certificate, a key that does not belong to its certificate is an error
//! naming the file and the setting before anything connects, and a reload with a bad file is
//! refused like any bad setting. The loaded bytes live in the [`crate::MirrorConfig`], so a
//! reload that changes a file's content is a changed config (the mirror restarts with it).
//!
//! TLS is asked for by the URL alone (`rediss://`): the files only refine it, and giving them
//! with a `redis://` URL is an error rather than a silent plain connection. Without
//! `--redis-tls-ca` the system's roots are trusted (rustls-native-certs); the server's name is
//! always verified against the URL's host (an IP address against the certificate's IP SANs).

use std::path::{Path, PathBuf};
use std::sync::Arc;

// The files as read, the same types as ZooKeeper's side: `Debug` shows paths only.
pub use crate::tls::{PemFile, TlsIdentity};

/// What TLS to Redis trusts and presents beyond the defaults. Empty (the default): with a
/// `rediss://` URL the system roots are trusted and no client certificate is sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// `--redis-tls-ca`: the only CA trusted for the server's certificate.
    pub ca: Option<PemFile>,
    /// `--redis-tls-cert` and `--redis-tls-key`.
    pub identity: Option<TlsIdentity>,
}

impl RedisTls {
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.identity.is_none()
    }

    /// The files this material was read from (for a reload watcher).
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        let identity = self.identity.iter().flat_map(|i| [i.cert.path(), i.key.path()]);
        self.ca.iter().map(PemFile::path).chain(identity)
    }
}

/// A Redis password read from a file (`--redis-password-file`), its trailing newline trimmed.
/// `Debug` shows the path only.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordFile {
    pub path: PathBuf,
    password: String,
}

impl PasswordFile {
    /// The password itself: for building a connection, never for a message.
    pub(crate) fn password(&self) -> &str {
        &self.password
    }
}

impl std::fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (password ***)", self.path.display())
    }
}

/// Which Redis setting a problem is about, so that the caller can name where it came from (the
/// flag, or the settings file's line and key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisSetting {
    Url,
    TlsCa,
    TlsCert,
    TlsKey,
    PasswordFile,
}

impl RedisSetting {
    pub fn flag(self) -> &'static str {
        match self {
            RedisSetting::Url => "--redis",
            RedisSetting::TlsCa => "--redis-tls-ca",
            RedisSetting::TlsCert => "--redis-tls-cert",
            RedisSetting::TlsKey => "--redis-tls-key",
            RedisSetting::PasswordFile => "--redis-password-file",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            RedisSetting::Url => "redis.url",
            RedisSetting::TlsCa => "redis.tls_ca",
            RedisSetting::TlsCert => "redis.tls_cert",
            RedisSetting::TlsKey => "redis.tls_key",
            RedisSetting::PasswordFile => "redis.password_file",
        }
    }
}

/// A Redis setting that cannot work; `why` names the file concerned.
#[derive(Debug, thiserror::Error)]
#[error("{why}")]
pub struct RedisSettingError {
    pub setting: RedisSetting,
    pub why: String,
}

/// The Redis files given, before they are read.
#[derive(Clone, Copy, Debug, Default)]
pub struct RedisFiles<'a> {
    pub tls_ca: Option<&'a Path>,
    pub tls_cert: Option<&'a Path>,
    pub tls_key: Option<&'a Path>,
    pub password_file: Option<&'a Path>,
}

impl RedisFiles<'_> {
    /// Reads and checks the files for a connection to `url` (already a valid Redis URL).
    pub fn load(&self, url: &str) -> Result<(RedisTls, Option<PasswordFile>), RedisSettingError> {
        let parsed = url::Url::parse(url).ok();
        // A Sentinel URL (`a,b` hosts) is no `url::Url`: its own parser says what it holds.
        let sentinel = crate::sentinel::SentinelUrl::parse(url).and_then(Result::ok);
        let cluster = crate::cluster::ClusterUrl::parse(url).and_then(Result::ok);
        let tls_url = parsed.as_ref().is_some_and(|u| matches!(u.scheme(), "rediss" | "valkeys"))
            || sentinel.as_ref().is_some_and(|s| s.tls)
            || cluster.as_ref().is_some_and(|c| c.tls);
        let url_password = match (&sentinel, &cluster) {
            (Some(s), _) => s.password.is_some(),
            (_, Some(c)) => c.password.is_some(),
            (None, None) => parsed.as_ref().is_some_and(|u| u.password().is_some()),
        };
        let given = [
            (self.tls_ca, RedisSetting::TlsCa),
            (self.tls_cert, RedisSetting::TlsCert),
            (self.tls_key, RedisSetting::TlsKey),
        ];
        if let (false, Some((_, setting))) = (tls_url, given.iter().find(|(path, _)| path.is_some())) {
            return Err(RedisSettingError {
                setting: *setting,
                why: format!(
                    "TLS files need a rediss:// (or rediss+sentinel://, rediss+cluster://) URL, and the Redis URL is {}: write \
                     rediss:// (zkmirror never connects in plain TCP when TLS files are given)",
                    crate::config::mask_url(url)
                ),
            });
        }
        let ca = self.tls_ca.map(load_ca).transpose()?;
        let identity = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(load_identity(cert, key)?),
            (None, None) => None,
            (Some(cert), None) => {
                return Err(RedisSettingError {
                    setting: RedisSetting::TlsCert,
                    why: format!(
                        "the client certificate {} needs its private key: give --redis-tls-key (redis.tls_key) too",
                        cert.display()
                    ),
                })
            }
            (None, Some(key)) => {
                return Err(RedisSettingError {
                    setting: RedisSetting::TlsKey,
                    why: format!(
                        "the private key {} needs its certificate: give --redis-tls-cert (redis.tls_cert) too",
                        key.display()
                    ),
                })
            }
        };
        let password = match self.password_file {
            None => None,
            Some(path) => {
                if url_password {
                    return Err(RedisSettingError {
                        setting: RedisSetting::PasswordFile,
                        why: format!(
                            "the Redis URL {} carries a password, and {} gives one too: give it in one place only",
                            crate::config::mask_url(url),
                            path.display()
                        ),
                    });
                }
                Some(load_password(path)?)
            }
        };
        Ok((RedisTls { ca, identity }, password))
    }
}

fn read(path: &Path, setting: RedisSetting) -> Result<Vec<u8>, RedisSettingError> {
    std::fs::read(path).map_err(|e| RedisSettingError { setting, why: format!("cannot read {}: {e}", path.display()) })
}

fn load_ca(path: &Path) -> Result<PemFile, RedisSettingError> {
    use crate::tls::CaProblem;
    let setting = RedisSetting::TlsCa;
    let bad = |why: String| RedisSettingError { setting, why: format!("bad CA file {}: {why}", path.display()) };
    let file = PemFile::read(path).map_err(|e| RedisSettingError { setting, why: e.to_string() })?;
    crate::tls::ca_roots(file.text().as_bytes()).map_err(|problem| match problem {
        CaProblem::NotPem(e) => bad(format!("not PEM: {e}")),
        CaProblem::Unusable(e) => bad(format!("not a usable CA certificate: {e}")),
        CaProblem::Empty => bad("no certificate in it (expected -----BEGIN CERTIFICATE-----)".to_owned()),
    })?;
    Ok(file)
}

fn load_identity(cert_path: &Path, key_path: &Path) -> Result<TlsIdentity, RedisSettingError> {
    use crate::tls::IdentityProblem;
    let unreadable = |setting| move |e: crate::tls::TlsFileError| RedisSettingError { setting, why: e.to_string() };
    let cert = PemFile::read(cert_path).map_err(unreadable(RedisSetting::TlsCert))?;
    let key = PemFile::read(key_path).map_err(unreadable(RedisSetting::TlsKey))?;
    let bad_cert = |why: String| RedisSettingError {
        setting: RedisSetting::TlsCert,
        why: format!("bad client certificate {}: {why}", cert_path.display()),
    };
    // Never the key's text or bytes in a message: only its path and what is wrong.
    let bad_key = |why: String| RedisSettingError {
        setting: RedisSetting::TlsKey,
        why: format!("bad private key {}: {why}", key_path.display()),
    };
    crate::tls::client_identity(cert.text().as_bytes(), key.text().as_bytes()).map_err(|problem| match problem {
        IdentityProblem::CertNotPem(e) => bad_cert(format!("not PEM: {e}")),
        IdentityProblem::NoCertificate => {
            bad_cert("no certificate in it (expected -----BEGIN CERTIFICATE-----)".to_owned())
        }
        IdentityProblem::Key(why) => bad_key(why),
        IdentityProblem::Unusable(why) => bad_key(format!("{why} (with the certificate {})", cert_path.display())),
        IdentityProblem::Mismatch(_) => RedisSettingError {
            setting: RedisSetting::TlsKey,
            why: format!(
                "the private key {} does not belong to the client certificate {} (their public keys differ)",
                key_path.display(),
                cert_path.display()
            ),
        },
    })?;
    Ok(TlsIdentity { cert, key })
}

fn load_password(path: &Path) -> Result<PasswordFile, RedisSettingError> {
    let setting = RedisSetting::PasswordFile;
    let bytes = read(path, setting)?;
    let text = String::from_utf8(bytes).map_err(|_| RedisSettingError {
        setting,
        why: format!("the password file {} is not UTF-8", path.display()),
    })?;
    // `echo secret > file` and editors add a newline; a password never ends with one.
    let password = text.trim_end_matches(['\n', '\r']);
    if password.contains(['\n', '\r']) {
        // As the ZooKeeper credentials file: one line; a second is a mistake (two secrets in
        // one file, a password and a note) that would otherwise be sent as the password.
        return Err(RedisSettingError {
            setting,
            why: format!("the password file {} holds more than one line: give the password alone", path.display()),
        });
    }
    if password.is_empty() {
        return Err(RedisSettingError { setting, why: format!("the password file {} is empty", path.display()) });
    }
    Ok(PasswordFile { path: path.to_owned(), password: password.to_owned() })
}

/// The `redis::Client` for `url` with the TLS material and password given: the one place a
/// client is built. Nagle's algorithm is off (it would hold a small write behind an
/// unacknowledged one for up to a delayed-ACK period, 40 ms on Linux).
pub fn client(url: &str, tls: &RedisTls, password: Option<&PasswordFile>) -> redis::RedisResult<redis::Client> {
    let mut info = redis::IntoConnectionInfo::into_connection_info(url)?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    if let Some(password) = password {
        // With the URL's user, or none: then `AUTH password` authenticates `default`.
        let settings = info.redis_settings().clone().set_password(&password.password);
        info = info.set_redis_settings(settings);
    }
    if tls.is_empty() {
        return redis::Client::open(info);
    }
    redis::Client::build_with_tls(info, certificates(tls))
}

/// The TLS material as redis-rs takes it (for a client, and for the sentinels and the nodes
/// they name).
pub(crate) fn certificates(tls: &RedisTls) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: tls.identity.as_ref().map(|identity| redis::ClientTlsConfig {
            client_cert: identity.cert.text().as_bytes().to_vec(),
            client_key: identity.key.text().as_bytes().to_vec(),
        }),
        root_cert: tls.ca.as_ref().map(|ca| ca.text().as_bytes().to_vec()),
    }
}

/// A connection to the Redis `url` names, made with `config`: to the server itself, or for a
/// Sentinel URL (`redis+sentinel://`) to the primary its sentinels name now. The one-shot
/// commands (`status`, `verify`, `get`, `ls`) and the start check of `run` connect through it.
pub async fn connect(
    url: &str,
    tls: &RedisTls,
    password: Option<&PasswordFile>,
    config: &redis::AsyncConnectionConfig,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    match crate::sentinel::SentinelUrl::parse(url) {
        Some(parsed) => {
            let parsed = parsed.map_err(|why| {
                redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "bad Sentinel URL", why))
            })?;
            Ok(crate::sentinel::connect_primary(&parsed, tls, password, config).await?.0)
        }
        None => client(url, tls, password)?.get_multiplexed_async_connection_with_config(config).await,
    }
}

/// A connection to any kind of Redis target: one server (or the primary a Sentinel names), or a
/// Redis Cluster, whose commands go to the node of their slot ([`crate::cluster`]). What the
/// one-shot commands (`status`, `verify`, `get`, `ls`) read through.
#[derive(Clone)]
pub enum RedisConn {
    Node(redis::aio::MultiplexedConnection),
    Cluster(crate::cluster::ClusterConn),
}

impl redis::aio::ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            RedisConn::Node(conn) => conn.req_packed_command(cmd),
            RedisConn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            RedisConn::Node(conn) => conn.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Node(conn) => conn.get_db(),
            RedisConn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// [`connect`] for any URL, a Cluster URL (`redis+cluster://`) included: for a cluster, the slot
/// map is asked for now (so that an unreachable cluster fails here, as a server does).
pub async fn connect_any(
    url: &str,
    tls: &RedisTls,
    password: Option<&PasswordFile>,
    config: &redis::AsyncConnectionConfig,
) -> redis::RedisResult<RedisConn> {
    match crate::cluster::ClusterUrl::parse(url) {
        Some(parsed) => {
            let parsed = parsed.map_err(|why| {
                redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "bad Cluster URL", why))
            })?;
            let link = std::sync::Arc::new(crate::cluster::ClusterLink::new(parsed, tls, password, config.clone()));
            link.primaries().await?;
            Ok(RedisConn::Cluster(crate::cluster::ClusterConn(link)))
        }
        None => connect(url, tls, password, config).await.map(RedisConn::Node),
    }
}

/// What went wrong reaching `server` (a masked URL), for people: a TLS failure says it is one
/// and why (which check the server's certificate failed, or that the other side does not speak
/// TLS); a connection that gets no answer says what that usually means for its scheme.
pub fn describe(error: &redis::RedisError, server: &str) -> String {
    let tls_url = is_tls_url(server);
    if let Some(tls) = tls_failure(error) {
        return format!("TLS failure: {}", explain_tls(tls));
    }
    if error.is_timeout() {
        return if tls_url {
            format!(
                "{error}: no TLS handshake within the connection timeout (is the server's port plain TCP? then its \
                 URL is redis://, and zkmirror does not fall back to it)"
            )
        } else {
            format!("{error}: no answer within the connection timeout (is the port a TLS port? then use rediss://)")
        };
    }
    let text = error.to_string();
    // A plain client's first bytes are not a TLS ClientHello: redis-server's TLS port drops
    // the connection at once.
    let dropped = error.is_io_error()
        && ["reset by peer", "broken pipe", "unexpected end of file", "connection closed"]
            .iter()
            .any(|needle| text.to_lowercase().contains(needle));
    if dropped && !tls_url {
        return format!(
            "{text} (the server closed the connection at once: is the port a TLS port? then use rediss://)"
        );
    }
    text
}

/// Whether waiting cannot fix `error`: the TLS handshake failed (a certificate the files do
/// not accept, a client certificate the server refuses), the credentials were refused, or a
/// plain client reached a TLS port (the server drops it at once). `zkmirror run` stops at start
/// on these; anything else (refused, unreachable, slow) it retries.
pub fn is_misconfiguration(error: &redis::RedisError, server: &str) -> bool {
    let tls_url = is_tls_url(server);
    let text = error.to_string().to_lowercase();
    let dropped = error.is_io_error() && ["reset by peer", "unexpected end of file"].iter().any(|n| text.contains(n));
    // Behind Sentinel the text may quote a sentinel's or a node's dropped connection: the
    // heuristic is for a plain client at a TLS port, which a Sentinel URL never names.
    let sentinel = crate::sentinel::is_sentinel_url(server) || crate::cluster::is_cluster_url(server);
    tls_failure(error).is_some()
        || error.kind() == redis::ErrorKind::AuthenticationFailed
        || text.contains("wrongpass")
        || (dropped && !tls_url && !sentinel)
}

/// Whether `url` asks for TLS: `rediss://`, `valkeys://`, `rediss+sentinel://`, `rediss+cluster://`.
pub fn is_tls_url(url: &str) -> bool {
    ["rediss://", "valkeys://", "rediss+sentinel://", "rediss+cluster://"].iter().any(|scheme| url.starts_with(scheme))
}

/// [`describe`], naming the files concerned when the failure was TLS's: the CA file when the
/// server's certificate was refused, the client identity when the server refused it. (The
/// running mirror's log lines name the flags instead: its errors do not carry the files.)
pub fn describe_with_files(error: &redis::RedisError, server: &str, tls: &RedisTls) -> String {
    let text = describe(error, server);
    let files = match tls_failure(error) {
        Some(rustls::Error::InvalidCertificate(_)) => tls.ca.as_ref().map(|ca| format!("the CA file: {ca:?}")),
        Some(rustls::Error::AlertReceived(_)) => tls
            .identity
            .as_ref()
            .map(|i| format!("the client certificate: {:?}, its key: {:?}", i.cert, i.key))
            .or_else(|| Some("no client certificate given".to_owned())),
        _ => None,
    };
    match files {
        Some(files) => format!("{text} ({files})"),
        None => text,
    }
}

/// The rustls error inside a redis-rs error, if the failure was TLS's: redis-rs keeps the io
/// error (tokio-rustls wraps rustls's error in one) behind an `Arc`.
fn tls_failure(error: &redis::RedisError) -> Option<&rustls::Error> {
    let source = std::error::Error::source(error)?;
    let inner: &(dyn std::error::Error + 'static) =
        match source.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>() {
            Some(arc) => arc.as_ref(),
            None => source,
        };
    if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    inner.downcast_ref::<std::io::Error>()?.get_ref()?.downcast_ref::<rustls::Error>()
}

fn explain_tls(error: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    let why = match error {
        rustls::Error::InvalidCertificate(cert) => match cert {
            C::UnknownIssuer => {
                "the server's certificate is not signed by a CA zkmirror trusts (--redis-tls-ca; without it, the \
                 system roots)"
            }
            C::Expired | C::ExpiredContext { .. } => "the server's certificate has expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "the server's certificate is not valid yet",
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "the server's certificate is not valid for the host in the Redis URL (hostname mismatch)"
            }
            C::BadSignature | C::BadEncoding => "the server's certificate is malformed or its signature is bad",
            C::Revoked => "the server's certificate is revoked",
            _ => "the server's certificate was refused",
        },
        rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. } => {
            "the server does not speak TLS on this port (a plain redis:// port?)"
        }
        rustls::Error::AlertReceived(_) => {
            "the server refused the handshake (a server that requires a client certificate refuses one that is \
             missing or not signed by its CA: check --redis-tls-cert and --redis-tls-key)"
        }
        rustls::Error::NoCertificatesPresented => "the server presented no certificate",
        _ => "the handshake failed",
    };
    format!("{why}: {error}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, content: &[u8]) -> PathBuf {
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("zkmirror-redis-conn-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(name);
        std::fs::write(&path, content).expect("write");
        path
    }

    #[test]
    fn tls_files_with_a_plain_url_are_refused_naming_the_url() {
        let ca = temp("ca.pem", b"");
        let files = RedisFiles { tls_ca: Some(&ca), ..RedisFiles::default() };
        let err = files.load("redis://u:hunter2@127.0.0.1:6379/").unwrap_err();
        assert_eq!(err.setting, RedisSetting::TlsCa);
        assert!(err.why.contains("rediss://") && err.why.contains("redis://u:***@127.0.0.1:6379/"), "{}", err.why);
        assert!(!err.why.contains("hunter2"), "{}", err.why);
    }

    #[test]
    fn a_certificate_without_its_key_and_the_reverse_are_refused() {
        let cert = temp("c.pem", b"");
        let files = RedisFiles { tls_cert: Some(&cert), ..RedisFiles::default() };
        let err = files.load("rediss://127.0.0.1:6379/").unwrap_err();
        assert_eq!(err.setting, RedisSetting::TlsCert);
        assert!(err.why.contains("--redis-tls-key") && err.why.contains("c.pem"), "{}", err.why);
        let files = RedisFiles { tls_key: Some(&cert), ..RedisFiles::default() };
        let err = files.load("rediss://127.0.0.1:6379/").unwrap_err();
        assert_eq!(err.setting, RedisSetting::TlsKey);
        assert!(err.why.contains("--redis-tls-cert"), "{}", err.why);
    }

    #[test]
    fn unreadable_and_non_pem_files_are_named() {
        let missing = Path::new("/nonexistent/zkmirror/ca.pem");
        let files = RedisFiles { tls_ca: Some(missing), ..RedisFiles::default() };
        let err = files.load("rediss://127.0.0.1:6379/").unwrap_err();
        assert!(err.why.contains("cannot read /nonexistent/zkmirror/ca.pem"), "{}", err.why);
        let junk = temp("junk.pem", b"not a certificate\n");
        let files = RedisFiles { tls_ca: Some(&junk), ..RedisFiles::default() };
        let err = files.load("rediss://127.0.0.1:6379/").unwrap_err();
        assert!(err.why.contains("junk.pem") && err.why.contains("no certificate"), "{}", err.why);
    }

    #[test]
    fn the_password_file_is_trimmed_and_never_shown() {
        let file = temp("pw", b"s3cret\n");
        let files = RedisFiles { password_file: Some(&file), ..RedisFiles::default() };
        let (_, password) = files.load("redis://127.0.0.1:6379/").expect("valid");
        let password = password.expect("given");
        assert_eq!(password.password, "s3cret");
        assert!(!format!("{password:?}").contains("s3cret"));
        let err = files.load("redis://u:other@127.0.0.1:6379/").unwrap_err();
        assert!(err.why.contains("one place only") && !err.why.contains("other@"), "{}", err.why);
        let empty = temp("empty", b"\n");
        let files = RedisFiles { password_file: Some(&empty), ..RedisFiles::default() };
        let err = files.load("redis://127.0.0.1:6379/").unwrap_err();
        assert!(err.why.contains("is empty") && err.why.contains("empty"), "{}", err.why);
        let two = temp("two-lines", b"s3cret\nnote\n");
        let files = RedisFiles { password_file: Some(&two), ..RedisFiles::default() };
        let err = files.load("redis://127.0.0.1:6379/").unwrap_err();
        assert!(err.why.contains("more than one line") && !err.why.contains("s3cret"), "{}", err.why);
    }
}

//! The process's settings: a TOML file, then environment variables, then flags, each layer
//! overriding the one before. The result is one [`MirrorConfig`] per root plus the few
//! process-wide options. Every error names where the bad value came from: the file, its line
//! and the key, or the flag.
//!
//! The file format is documented in `deploy/zkmirror.example.toml` and the README.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::config::{mask_url, MirrorConfig, ZkDigest, DEFAULT_REDIS_URL, DEFAULT_ZK_SERVERS};
use crate::error::ConfigError;
use crate::filter::Filter;
use crate::path;
use crate::redis_conn::{PasswordFile, RedisFiles, RedisSetting, RedisTls};
use crate::tls::{TlsFileError, TlsFiles};
use crate::zk::ZkConnect;

/// Where a bad setting came from and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read config file {file}: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{file}:{line}: {key}: {why}")]
    InFile { file: PathBuf, line: usize, key: String, why: String },
    #[error("{origin}: {why}")]
    Other { origin: String, why: String },
}

/// Values given on the command line or in the environment (clap merges those two, flags first).
/// `None` means "not given": the file's value, then the default, applies.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub zk: Option<String>,
    pub zk_auth: Option<ZkDigest>,
    /// A file holding the digest credentials (`--zk-auth-file`).
    pub zk_auth_file: Option<PathBuf>,
    /// TLS to ZooKeeper: the CA (`--zk-tls-ca`), and a client identity for mutual TLS.
    pub zk_tls_ca: Option<PathBuf>,
    pub zk_tls_cert: Option<PathBuf>,
    pub zk_tls_key: Option<PathBuf>,
    /// `--redis [NAME=]URL`, once per target (none: the file's, then the default).
    pub redis: Vec<String>,
    /// `--redis-tls-ca`, `--redis-tls-cert`, `--redis-tls-key`: PEM files for `rediss://`.
    pub redis_tls_ca: Option<PathBuf>,
    pub redis_tls_cert: Option<PathBuf>,
    pub redis_tls_key: Option<PathBuf>,
    /// `--redis-password-file`: the Redis password, from a file.
    pub redis_password_file: Option<PathBuf>,
    pub root: Option<String>,
    pub prefix: Option<String>,
    pub session_timeout: Option<Duration>,
    pub anti_entropy_interval: Option<Duration>,
    pub tombstone_ttl: Option<Duration>,
    pub changes_maxlen: Option<u64>,
    pub read_window: Option<usize>,
    /// Bytes the mirror may hold at once (`--memory-budget`).
    pub memory_budget: Option<u64>,
    /// The largest znode the ZooKeeper servers accept, their `jute.maxbuffer`
    /// (`--max-znode-size`).
    pub max_znode_size: Option<u64>,
    pub metrics_addr: Option<SocketAddr>,
    /// The election path (`--ha`): compete for leadership with every process given the same.
    pub ha: Option<String>,
    /// This process's name among the competitors (`--instance`).
    pub instance: Option<String>,
    /// Where Redis targets register in ZooKeeper (`--targets-from`).
    pub targets_from: Option<String>,
}

/// What `--ha` asks for: several processes for the same roots, one of them writing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaSettings {
    /// The election path: each competitor's lock znode is an ephemeral sequential child of it.
    pub path: String,
    /// This process's name, written into its lock znode (`HOSTNAME:PID` unless given).
    pub instance: String,
}

/// Everything `zkmirror run` needs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub mirrors: Vec<MirrorConfig>,
    /// When a root is removed from the file: keep its keys in Redis (true) or delete them.
    pub keep_keys_on_remove: bool,
    pub metrics_addr: Option<SocketAddr>,
    /// `None`: a lone mirror, exactly as without high availability.
    pub ha: Option<HaSettings>,
    /// `--targets-from PATH`: each child znode of PATH registers a Redis target (see
    /// `registry.rs`), mirrored beside the targets the settings name.
    pub targets_from: Option<String>,
    /// The mirrors of one registered target, as the roots make them, under a placeholder
    /// target: [`Settings::registered`] fills in each registration.
    templates: Vec<MirrorConfig>,
    /// `[target_secrets.NAME]`: the TLS material and password of registered target NAME
    /// (a registration in ZooKeeper holds no secret).
    target_secrets: std::collections::BTreeMap<String, TargetSecrets>,
}

/// What `[target_secrets.NAME]` holds: a registered target's connection files, and the servers
/// they may be sent to. A registration names its URL; who may write the registry must not be
/// able to send the password or the client key to a server of their choice.
#[derive(Clone, Debug, PartialEq)]
struct TargetSecrets {
    tls: RedisTls,
    password: Option<PasswordFile>,
    /// `host:port`, lowercased (see [`crate::registry::url_parts`]).
    hosts: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    #[serde(default)]
    zookeeper: ZkSection,
    #[serde(default)]
    redis: RedisSection,
    /// Several Redis targets, each a `[redis]`-like table with a `name`; not beside `[redis]`.
    #[serde(default)]
    targets: Vec<RedisSection>,
    #[serde(default)]
    mirror: MirrorSection,
    #[serde(default)]
    roots: Vec<RootSection>,
    #[serde(default)]
    metrics: MetricsSection,
    #[serde(default)]
    ha: HaSection,
    targets_from: Option<Spanned<String>>,
    #[serde(default)]
    target_secrets: std::collections::BTreeMap<String, Spanned<RedisSection>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HaSection {
    path: Option<Spanned<String>>,
    instance: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ZkSection {
    servers: Option<Spanned<String>>,
    auth: Option<Spanned<String>>,
    auth_file: Option<Spanned<String>>,
    tls_ca: Option<Spanned<String>>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    session_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RedisSection {
    /// The target's name (`default` for a lone `[redis]` that gives none).
    name: Option<Spanned<String>>,
    /// `[target_secrets.NAME]` only: the servers (`host:port`) its secrets may be sent to.
    hosts: Option<Spanned<Vec<String>>>,
    url: Option<Spanned<String>>,
    tls_ca: Option<Spanned<PathBuf>>,
    tls_cert: Option<Spanned<PathBuf>>,
    tls_key: Option<Spanned<PathBuf>>,
    password_file: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MirrorSection {
    prefix: Option<Spanned<String>>,
    anti_entropy_interval: Option<Spanned<String>>,
    tombstone_ttl: Option<Spanned<String>>,
    changes_maxlen: Option<Spanned<u64>>,
    read_window: Option<Spanned<usize>>,
    /// A size: bytes, or a number with a unit (`64MiB`, `512 KB`).
    memory_budget: Option<Spanned<String>>,
    max_znode_size: Option<Spanned<String>>,
    keep_keys_on_remove: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RootSection {
    path: Spanned<String>,
    prefix: Option<Spanned<String>>,
    include: Option<Spanned<Vec<String>>>,
    exclude: Option<Spanned<Vec<String>>>,
    max_depth: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MetricsSection {
    addr: Option<Spanned<String>>,
}

/// Locates errors in the file's text.
struct Source<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn error(&self, offset: usize, key: &str, why: impl Into<String>) -> SettingsError {
        let line = self.text.get(..offset).unwrap_or(self.text).matches('\n').count() + 1;
        SettingsError::InFile { file: self.file.to_owned(), line, key: key.to_owned(), why: why.into() }
    }
}

/// Which layer a value came from, for error messages.
enum Origin<'a> {
    File(&'a Source<'a>, usize, String),
    Flag(&'static str),
    Default,
}

impl Origin<'_> {
    /// Where the value came from, for a message about another entry: `zkmirror.toml:14
    /// (roots[0].path)`, `--root`.
    fn describe(&self) -> String {
        match self {
            Origin::File(source, offset, key) => {
                let line = source.text.get(..*offset).unwrap_or(source.text).matches('\n').count() + 1;
                format!("{}:{line} ({key})", source.file.display())
            }
            Origin::Flag(flag) => (*flag).to_owned(),
            Origin::Default => "the default".to_owned(),
        }
    }

    fn error(&self, why: impl Into<String>) -> SettingsError {
        match self {
            Origin::File(source, offset, key) => source.error(*offset, key, why),
            Origin::Flag(flag) => SettingsError::Other { origin: (*flag).to_owned(), why: why.into() },
            Origin::Default => SettingsError::Other { origin: "default".to_owned(), why: why.into() },
        }
    }
}

/// Picks the flag's value over the file's; remembers where the winner came from.
fn layer<'a, T: Clone>(
    flag: Option<&T>,
    flag_name: &'static str,
    file: Option<&Spanned<T>>,
    source: Option<&'a Source<'a>>,
    key: &str,
) -> Option<(T, Origin<'a>)> {
    if let Some(value) = flag {
        return Some((value.clone(), Origin::Flag(flag_name)));
    }
    match (file, source) {
        (Some(spanned), Some(source)) => {
            Some((spanned.get_ref().clone(), Origin::File(source, spanned.span().start, key.to_owned())))
        }
        _ => None,
    }
}

fn parse_duration(text: &str, origin: &Origin<'_>) -> Result<Duration, SettingsError> {
    parse_duration_text(text).map_err(|why| origin.error(why))
}

/// Parses `250ms`, `10s`, `5m`, `1h` or a plain number of seconds.
pub fn parse_duration_text(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 250ms, 10s or 5m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

impl Settings {
    /// Builds the settings from an optional file and the overrides.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Settings, SettingsError> {
        let text = match file {
            Some(file) => Some(
                std::fs::read_to_string(file)
                    .map_err(|source| SettingsError::Read { file: file.to_owned(), source })?,
            ),
            None => None,
        };
        let source = match (file, text.as_deref()) {
            (Some(file), Some(text)) => Some(Source { file, text }),
            _ => None,
        };
        let parsed: FileSettings = match &source {
            Some(source) => toml::from_str(source.text).map_err(|e| {
                let offset = e.span().map_or(0, |s| s.start);
                source.error(offset, &describe_toml_key(source.text, offset), e.message().to_owned())
            })?,
            None => FileSettings::default(),
        };
        build(parsed, source.as_ref(), overrides)
    }

    /// Every file besides the settings file whose content is part of the settings (TLS
    /// certificates and keys, credentials files): the daemon watches them, and a change
    /// reloads the settings like an edit of the file.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for m in &self.mirrors {
            if let Some(tls) = &m.zk_tls {
                files.extend(tls.paths());
            }
            files.extend(m.zk_auth_file.clone());
            files.extend(m.redis_files().into_iter().map(Path::to_path_buf));
        }
        for secrets in self.target_secrets.values() {
            files.extend(secrets.tls.files().map(Path::to_path_buf));
            files.extend(secrets.password.iter().map(|p| p.path.clone()));
        }
        files.sort();
        files.dedup();
        files
    }

    /// Settings of these mirrors alone: no registry, no election, no metrics.
    pub fn of_mirrors(mirrors: Vec<MirrorConfig>) -> Settings {
        Settings {
            mirrors,
            keep_keys_on_remove: false,
            metrics_addr: None,
            ha: None,
            targets_from: None,
            templates: Vec::new(),
            target_secrets: std::collections::BTreeMap::new(),
        }
    }

    /// How the process reaches ZooKeeper (the same for every mirror, the election and the
    /// registry); `None` only for settings with no root, which do not load.
    pub fn zk_connect(&self) -> Option<crate::zk::ZkConnect> {
        self.mirrors.first().or(self.templates.first()).map(MirrorConfig::zk_connect)
    }

    /// The mirrors of the registered targets: for each registration, every root as the
    /// settings make it, into that target, with its secrets from `[target_secrets.NAME]`.
    /// A registration that cannot be used (its name taken by a target of the settings, a URL
    /// its secrets do not fit) is left out, with the reason, naming it.
    pub fn registered(
        &self,
        registrations: &[crate::registry::Registration],
    ) -> (Vec<MirrorConfig>, Vec<(String, String)>) {
        let mut mirrors = Vec::new();
        let mut refused = Vec::new();
        for r in registrations {
            if self.mirrors.iter().any(|m| m.target == r.name) {
                refused.push((r.name.clone(), "a target of the settings has this name; the settings win".to_owned()));
                continue;
            }
            // Two targets on one Redis would write the same keys, and one's purge would delete
            // what the other mirrors. The registrations come oldest first: the one that was
            // there first stays.
            if let Some(m) = self.mirrors.iter().chain(&mirrors).find(|m| same_redis(&m.redis_url, &r.url)) {
                let why = format!("{} is already target {:?}", mask_url(&r.url), m.target);
                refused.push((r.name.clone(), why));
                continue;
            }
            let secrets = self.target_secrets.get(&r.name);
            if let Some(secrets) = secrets.filter(|s| !s.hosts.is_empty()) {
                let named = crate::registry::url_parts(&r.url).hosts;
                if let Some(stranger) = named.iter().find(|h| !secrets.hosts.contains(h)) {
                    let why = format!(
                        "its URL names {stranger}, which [target_secrets.{}] hosts does not list: its secrets are \
                         not sent there",
                        r.name
                    );
                    refused.push((r.name.clone(), why));
                    continue;
                }
            }
            let built: Result<Vec<MirrorConfig>, String> = self
                .templates
                .iter()
                .map(|template| {
                    let mut m = template.clone();
                    m.target = r.name.clone();
                    m.redis_url = r.url.clone();
                    if let Some(secrets) = secrets {
                        m.redis_tls = secrets.tls.clone();
                        m.redis_password = secrets.password.clone();
                    } else {
                        m.redis_tls = RedisTls::default();
                        m.redis_password = None;
                    }
                    if let Some(n) = r.changes_maxlen {
                        m.changes_maxlen = n;
                    }
                    m.validate().map_err(|e| e.to_string())?;
                    Ok(m)
                })
                .collect();
            match built {
                Ok(built) => mirrors.extend(built),
                Err(why) => refused.push((r.name.clone(), why)),
            }
        }
        (mirrors, refused)
    }

    /// One mirror of each Redis target, in the order the targets were given: what says where
    /// each target is (every root of a target has the same URL and files).
    pub fn targets(&self) -> Vec<&MirrorConfig> {
        let mut seen: Vec<&MirrorConfig> = Vec::new();
        for m in &self.mirrors {
            if !seen.iter().any(|s| s.target == m.target) {
                seen.push(m);
            }
        }
        seen
    }

    /// The effective settings as TOML, with secrets masked: what `check-config` prints.
    pub fn render_masked(&self) -> String {
        let mut out = String::new();
        // With only registered targets, the roots are the templates'.
        let first = self.mirrors.first().or(self.templates.first());
        if let Some(m) = first {
            // Paths only: never a file's content.
            let mut zk_files = String::new();
            if let Some(file) = &m.zk_auth_file {
                zk_files.push_str(&format!("auth_file = {:?}\n", file.display().to_string()));
            }
            if let Some(tls) = &m.zk_tls {
                zk_files.push_str(&format!("tls_ca = {:?}\n", tls.ca.path().display().to_string()));
                if let Some(identity) = &tls.identity {
                    zk_files.push_str(&format!(
                        "tls_cert = {:?}\ntls_key = {:?}\n",
                        identity.cert.path().display().to_string(),
                        identity.key.path().display().to_string()
                    ));
                }
            }
            let auth = match (&m.zk_auth, &m.zk_auth_file) {
                (_, Some(_)) => None,
                (Some(d), None) => Some(format!("\"{}:***\"", d.user)),
                (None, None) => Some("\"\" # none".to_owned()),
            };
            out.push_str(&format!(
                "[zookeeper]\nservers = {:?}\n{}{zk_files}session_timeout = \"{}ms\"\n\n",
                m.zk_servers,
                auth.map(|a| format!("auth = {a}\n")).unwrap_or_default(),
                m.session_timeout.as_millis(),
            ));
            let targets = self.targets();
            let lone = targets.len() == 1 && targets[0].target == crate::config::DEFAULT_TARGET;
            for t in targets {
                if lone {
                    out.push_str(&format!("[redis]\nurl = {:?}\n", mask_url(&t.redis_url)));
                } else {
                    out.push_str(&format!("[[targets]]\nname = {:?}\nurl = {:?}\n", t.target, mask_url(&t.redis_url)));
                }
                // The files' paths, never their content.
                let tls = &t.redis_tls;
                let identity = tls.identity.as_ref();
                for (key, path) in [
                    ("tls_ca", tls.ca.as_ref().map(crate::tls::PemFile::path)),
                    ("tls_cert", identity.map(|i| i.cert.path())),
                    ("tls_key", identity.map(|i| i.key.path())),
                    ("password_file", t.redis_password.as_ref().map(|p| p.path.as_path())),
                ] {
                    if let Some(path) = path {
                        out.push_str(&format!("{key} = {:?}\n", path.display().to_string()));
                    }
                }
                out.push('\n');
            }
            out.push_str(&format!(
                "[mirror]\nanti_entropy_interval = \"{}ms\"\ntombstone_ttl = \"{}ms\"\nchanges_maxlen = {}\nread_window = {}\nmemory_budget = \"{}\"\nmax_znode_size = \"{}\"\nkeep_keys_on_remove = {}\n\n",
                m.anti_entropy_interval.as_millis(),
                m.tombstone_ttl.as_millis(),
                m.changes_maxlen,
                m.read_window,
                m.memory_budget,
                m.max_znode_bytes,
                self.keep_keys_on_remove,
            ));
        }
        if let Some(addr) = self.metrics_addr {
            out.push_str(&format!("[metrics]\naddr = \"{addr}\"\n\n"));
        }
        if let Some(ha) = &self.ha {
            out.push_str(&format!("[ha]\npath = {:?}\ninstance = {:?}\n\n", ha.path, ha.instance));
        }
        if let Some(path) = &self.targets_from {
            // A top-level key: TOML puts those before the first table.
            out.insert_str(0, &format!("targets_from = {path:?}\n\n"));
        }
        for (name, secrets) in &self.target_secrets {
            let (tls, password) = (&secrets.tls, &secrets.password);
            out.push_str(&format!("[target_secrets.{name}]\nhosts = {:?}\n", secrets.hosts));
            let identity = tls.identity.as_ref();
            for (key, path) in [
                ("tls_ca", tls.ca.as_ref().map(crate::tls::PemFile::path)),
                ("tls_cert", identity.map(|i| i.cert.path())),
                ("tls_key", identity.map(|i| i.key.path())),
                ("password_file", password.as_ref().map(|p| p.path.as_path())),
            ] {
                if let Some(path) = path {
                    out.push_str(&format!("{key} = {:?}\n", path.display().to_string()));
                }
            }
            out.push('\n');
        }
        let first_target = first.map(|m| m.target.as_str());
        for m in self.mirrors.iter().chain(&self.templates).filter(|m| Some(m.target.as_str()) == first_target) {
            out.push_str(&format!(
                "[[roots]]\npath = {:?}\nprefix = {:?}\n# {}{}\n\n",
                m.root,
                m.prefix,
                m.filter.describe(),
                if m.shared_prefix { "; prefix shared with other roots" } else { "" }
            ));
        }
        out
    }
}

/// The dotted key around `offset`, best effort, for parse errors ("roots[1].path").
fn describe_toml_key(text: &str, offset: usize) -> String {
    let before = text.get(..offset).unwrap_or(text);
    // The table the offset is in: the last header before it, `[[name]]` counted as `name[i]`.
    let mut table = String::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for line in before.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("[[") {
            let name = rest.split("]]").next().unwrap_or(rest).trim();
            let index = seen.entry(name).or_insert(0);
            table = format!("{name}[{index}]");
            *index += 1;
        } else if let Some(rest) = line.strip_prefix('[') {
            table = rest.split(']').next().unwrap_or(rest).trim().to_owned();
        }
    }
    let line = before.rsplit('\n').next().unwrap_or("").trim();
    if line.starts_with('[') {
        return table;
    }
    let key = line.split('=').next().unwrap_or("").trim();
    match (table.is_empty(), key.is_empty()) {
        (true, _) => key.to_owned(),
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

fn build(file: FileSettings, source: Option<&Source<'_>>, o: &Overrides) -> Result<Settings, SettingsError> {
    let missing = |what: &str, flag: &str, key: &str| SettingsError::Other {
        origin: "settings".into(),
        why: format!(
            "no {what}: give {flag} (or ZKMIRROR_{}) or `{key}` in the config file",
            flag.trim_start_matches("--").to_uppercase().replace('-', "_")
        ),
    };
    // Like zkCli.sh and redis-cli, the servers default to the standard local ports. The
    // defaults sit here, below the file, rather than in clap: a clap default would count as a
    // flag and always win over the file.
    let (zk, zk_origin) = layer(o.zk.as_ref(), "--zk", file.zookeeper.servers.as_ref(), source, "zookeeper.servers")
        .unwrap_or_else(|| (DEFAULT_ZK_SERVERS.to_owned(), Origin::Default));
    let registry = layer(o.targets_from.as_ref(), "--targets-from", file.targets_from.as_ref(), source, "targets_from");
    let targets = targets(&file, source, o, registry.is_some())?;
    let zk_security = zk_security(&file.zookeeper, source, o)?;
    check_schemes(&zk, &zk_origin, zk_security.tls.is_some())?;
    // Each value with where it came from: `validate` may refuse it, and the error must name
    // the file's line or the flag.
    let duration = |flag: Option<&Duration>,
                    flag_name: &'static str,
                    spanned: Option<&Spanned<String>>,
                    key: &str,
                    default: Duration|
     -> Result<(Duration, Origin<'_>), SettingsError> {
        if let Some(d) = flag {
            return Ok((*d, Origin::Flag(flag_name)));
        }
        match (spanned, source) {
            (Some(s), Some(source)) => {
                let origin = Origin::File(source, s.span().start, key.to_owned());
                Ok((parse_duration(s.get_ref(), &origin)?, origin))
            }
            _ => Ok((default, Origin::Default)),
        }
    };
    let number = |flag: Option<u64>, flag_name: &'static str, spanned: Option<&Spanned<u64>>, key: &str| match (
        flag, spanned, source,
    ) {
        (Some(n), _, _) => Some((n, Origin::Flag(flag_name))),
        (None, Some(s), Some(source)) => Some((*s.get_ref(), Origin::File(source, s.span().start, key.to_owned()))),
        _ => None,
    };
    let defaults = MirrorConfig::new("", "", "/");
    let (session_timeout, session_timeout_origin) = duration(
        o.session_timeout.as_ref(),
        "--session-timeout",
        file.zookeeper.session_timeout.as_ref(),
        "zookeeper.session_timeout",
        defaults.session_timeout,
    )?;
    let (anti_entropy, anti_entropy_origin) = duration(
        o.anti_entropy_interval.as_ref(),
        "--anti-entropy-interval",
        file.mirror.anti_entropy_interval.as_ref(),
        "mirror.anti_entropy_interval",
        defaults.anti_entropy_interval,
    )?;
    let (tombstone_ttl, tombstone_ttl_origin) = duration(
        o.tombstone_ttl.as_ref(),
        "--tombstone-ttl",
        file.mirror.tombstone_ttl.as_ref(),
        "mirror.tombstone_ttl",
        defaults.tombstone_ttl,
    )?;
    let changes_maxlen =
        number(o.changes_maxlen, "--changes-maxlen", file.mirror.changes_maxlen.as_ref(), "mirror.changes_maxlen");
    let read_window_file = file.mirror.read_window.as_ref().map(|s| Spanned::new(s.span(), *s.get_ref() as u64));
    let read_window =
        number(o.read_window.map(|n| n as u64), "--read-window", read_window_file.as_ref(), "mirror.read_window");
    let size = |flag: Option<u64>, flag_name: &'static str, spanned: Option<&Spanned<String>>, key: &str| match (
        flag, spanned, source,
    ) {
        (Some(n), _, _) => Ok(Some((n, Origin::Flag(flag_name)))),
        (None, Some(s), Some(source)) => {
            let origin = Origin::File(source, s.span().start, key.to_owned());
            match parse_size(s.get_ref()) {
                Ok(n) => Ok(Some((n, origin))),
                Err(why) => Err(origin.error(why)),
            }
        }
        _ => Ok(None),
    };
    let memory_budget =
        size(o.memory_budget, "--memory-budget", file.mirror.memory_budget.as_ref(), "mirror.memory_budget")?;
    let max_znode_size =
        size(o.max_znode_size, "--max-znode-size", file.mirror.max_znode_size.as_ref(), "mirror.max_znode_size")?;
    let default_prefix = layer(o.prefix.as_ref(), "--prefix", file.mirror.prefix.as_ref(), source, "mirror.prefix");

    // Roots: `--root` replaces the file's list (flags win); otherwise the file's `[[roots]]`.
    struct RootSpec<'a> {
        path: (String, Origin<'a>),
        prefix: Option<(String, Origin<'a>)>,
        filter: Filter,
    }
    let mut specs: Vec<RootSpec<'_>> = Vec::new();
    if let Some(root) = &o.root {
        specs.push(RootSpec { path: (root.clone(), Origin::Flag("--root")), prefix: None, filter: Filter::all() });
    } else if let Some(source) = source {
        for (i, r) in file.roots.iter().enumerate() {
            let patterns =
                |list: &Option<Spanned<Vec<String>>>| list.as_ref().map(|l| l.get_ref().clone()).unwrap_or_default();
            let filter = Filter::new(&patterns(&r.include), &patterns(&r.exclude), r.max_depth).map_err(|e| {
                let (key, list) = if matches!(&e, ConfigError::BadSetting { name: "include", .. }) {
                    ("include", &r.include)
                } else {
                    ("exclude", &r.exclude)
                };
                let offset = list.as_ref().map_or(r.path.span().start, |l| l.span().start);
                source.error(offset, &format!("roots[{i}].{key}"), e.to_string())
            })?;
            specs.push(RootSpec {
                path: (r.path.get_ref().clone(), Origin::File(source, r.path.span().start, format!("roots[{i}].path"))),
                prefix: r
                    .prefix
                    .as_ref()
                    .map(|p| (p.get_ref().clone(), Origin::File(source, p.span().start, format!("roots[{i}].prefix")))),
                filter,
            });
        }
    }
    if specs.is_empty() {
        return Err(missing("root", "--root", "[[roots]] path"));
    }

    // With a registry: the roots once more, for a placeholder target, as the template each
    // registration fills in. Built and checked like the others, so a registration can only
    // bring a bad URL, never a bad root.
    let placeholder = registry.as_ref().map(|_| TargetSpec {
        name: REGISTERED_TEMPLATE.to_owned(),
        url: DEFAULT_REDIS_URL.to_owned(),
        url_origin: Origin::Default,
        tls: RedisTls::default(),
        password: None,
    });
    let mut mirrors = Vec::new();
    let mut prefix_users: HashMap<(String, String), usize> = HashMap::new();
    let mut owners: Vec<&Origin<'_>> = Vec::new();
    for target in targets.iter().chain(placeholder.as_ref()) {
        for spec in &specs {
            let redis_origin = &target.url_origin;
            let mut config = MirrorConfig::new(zk.clone(), target.url.clone(), spec.path.0.clone());
            config.target = target.name.clone();
            let (prefix, prefix_origin) = match (&spec.prefix, &default_prefix) {
                (Some((p, origin)), _) => (p.clone(), origin),
                (None, Some((p, origin))) => (p.clone(), origin),
                (None, None) => (config.prefix.clone(), &Origin::Default),
            };
            config.prefix = prefix;
            config.redis_tls = target.tls.clone();
            config.redis_password = target.password.clone();
            config.zk_auth = zk_security.auth.clone();
            config.zk_auth_file = zk_security.auth_file.clone();
            config.zk_tls = zk_security.tls.clone();
            config.session_timeout = session_timeout;
            config.anti_entropy_interval = anti_entropy;
            config.tombstone_ttl = tombstone_ttl;
            if let Some((n, _)) = &changes_maxlen {
                config.changes_maxlen = *n;
            }
            if let Some((n, _)) = &read_window {
                config.read_window = usize::try_from(*n).unwrap_or(usize::MAX);
            }
            if let Some((n, _)) = &memory_budget {
                config.memory_budget = usize::try_from(*n).unwrap_or(usize::MAX);
            }
            if let Some((n, _)) = &max_znode_size {
                config.max_znode_bytes = usize::try_from(*n).unwrap_or(usize::MAX);
            }
            config.filter = spec.filter.clone();
            config.validate().map_err(|e| match e {
                ConfigError::BadRoot { .. } => spec.path.1.error(e.to_string()),
                ConfigError::BadPrefix { .. } => prefix_origin.error(e.to_string()),
                ConfigError::BadRedisUrl { .. } => redis_origin.error(e.to_string()),
                ConfigError::BadZkAddress { .. } => zk_origin.error(e.to_string()),
                ConfigError::BadSetting { name, .. } => {
                    let origin = match name {
                        "tombstone_ttl" => Some(&tombstone_ttl_origin),
                        "session_timeout" => Some(&session_timeout_origin),
                        "anti_entropy_interval" => Some(&anti_entropy_origin),
                        "changes_maxlen" => changes_maxlen.as_ref().map(|(_, o)| o),
                        "read_window" => read_window.as_ref().map(|(_, o)| o),
                        "memory_budget" => memory_budget.as_ref().or(max_znode_size.as_ref()).map(|(_, o)| o),
                        _ => None,
                    };
                    match origin {
                        Some(origin) => origin.error(e.to_string()),
                        None => SettingsError::Other { origin: "settings".into(), why: e.to_string() },
                    }
                }
                other => SettingsError::Other { origin: "settings".into(), why: other.to_string() },
            })?;
            *prefix_users.entry((config.target.clone(), config.prefix.clone())).or_default() += 1;
            mirrors.push(config);
            owners.push(&spec.path.1);
        }
    }
    // One mirror per (prefix, root): a second would write the same keys, and the service keys
    // its mirrors by that pair.
    for (i, a) in mirrors.iter().enumerate() {
        for (j, b) in mirrors.iter().enumerate().skip(i + 1) {
            if a.key() == b.key() {
                return Err(owners[j].error(format!(
                    "root {} with prefix {:?} is already mirrored by {}: remove one, or give one another prefix",
                    b.root,
                    b.prefix,
                    owners[i].describe()
                )));
            }
        }
    }
    // Roots that share a prefix must not overlap: their keys would collide.
    for (i, a) in mirrors.iter().enumerate() {
        for (j, b) in mirrors.iter().enumerate().skip(i + 1) {
            let same_keys = a.target == b.target && a.prefix == b.prefix;
            if same_keys && (path::is_within(&a.root, &b.root) || path::is_within(&b.root, &a.root)) {
                return Err(owners[j].error(format!(
                    "root {} overlaps root {} and both use prefix {:?}: give one of them its own prefix",
                    b.root, a.root, a.prefix
                )));
            }
        }
    }
    for m in &mut mirrors {
        m.shared_prefix = prefix_users.get(&(m.target.clone(), m.prefix.clone())).copied().unwrap_or(0) > 1;
    }
    let metrics_addr = match (&o.metrics_addr, &file.metrics.addr, source) {
        (Some(addr), _, _) => Some(*addr),
        (None, Some(addr), Some(source)) => Some(addr.get_ref().parse().map_err(|e| {
            source.error(addr.span().start, "metrics.addr", format!("{:?} is not host:port: {e}", addr.get_ref()))
        })?),
        _ => None,
    };
    let ha = ha_settings(&file.ha, source, o, &mirrors, &owners)?;
    let targets_from = match registry {
        Some((path, origin)) => {
            validate_outside_roots("registry path", &path, mirrors.iter().map(|m| m.root.as_str())).map_err(
                |(root, why)| match root.and_then(|i| owners.get(i)) {
                    Some(root_origin) => {
                        origin.error(format!("{why} (the root comes from {})", root_origin.describe()))
                    }
                    None => origin.error(why),
                },
            )?;
            if ha.as_ref().is_some_and(|ha| path::is_within(&path, &ha.path) || path::is_within(&ha.path, &path)) {
                return Err(origin.error("the registry path and the election path must not overlap"));
            }
            Some(path)
        }
        None => None,
    };
    let mut target_secrets = std::collections::BTreeMap::new();
    for (name, section) in &file.target_secrets {
        let table = format!("target_secrets.{name}");
        let at = |why: String| match source {
            Some(source) => source.error(section.span().start, &table, why),
            None => SettingsError::Other { origin: table.clone(), why },
        };
        crate::config::validate_target_name(name).map_err(|e| at(e.to_string()))?;
        let section = section.get_ref();
        if section.url.is_some() || section.name.is_some() {
            return Err(at(
                "a target's secrets take no url or name: its registration in ZooKeeper gives the URL".into()
            ));
        }
        let secret = section.password_file.is_some() || section.tls_cert.is_some() || section.tls_key.is_some();
        let hosts: Vec<String> = section
            .hosts
            .as_ref()
            .map(|h| h.get_ref().iter().flat_map(|host| crate::registry::url_parts(host).hosts).collect())
            .unwrap_or_default();
        if secret && hosts.is_empty() {
            return Err(at(format!(
                "give hosts = [\"HOST:PORT\", ...]: the servers {name}'s password or client key may be sent to \
                 (a registration names its own URL; whoever writes the registry must not choose where secrets go)"
            )));
        }
        // The files are read now (their content is part of the settings); the URL they go
        // with is known only when the target registers, which checks the scheme then.
        let tls_given = section.tls_ca.is_some() || section.tls_cert.is_some() || section.tls_key.is_some();
        let url = if tls_given { "rediss://registered/" } else { "redis://registered/" };
        let (tls, password) = redis_files(section, &table, source, &Overrides::default(), url, &Origin::Default)?;
        target_secrets.insert(name.clone(), TargetSecrets { tls, password, hosts });
    }
    let (templates, mirrors): (Vec<MirrorConfig>, Vec<MirrorConfig>) =
        mirrors.into_iter().partition(|m| m.target == REGISTERED_TEMPLATE);
    Ok(Settings {
        mirrors,
        keep_keys_on_remove: file.mirror.keep_keys_on_remove.unwrap_or(false),
        metrics_addr,
        ha,
        targets_from,
        templates,
        target_secrets,
    })
}

/// The target name of the registry's templates: not a valid name, so no target has it.
const REGISTERED_TEMPLATE: &str = "(registered)";

/// `--redis-tls-*`, `--redis-password-file` and their `[redis]` keys: each file read and checked
/// now (a bad one is an error naming the file and where it was given), so that a reload with a
/// bad file is refused and the running config stays.
fn redis_files(
    section: &RedisSection,
    table: &str,
    source: Option<&Source<'_>>,
    o: &Overrides,
    url: &str,
    url_origin: &Origin<'_>,
) -> Result<(RedisTls, Option<PasswordFile>), SettingsError> {
    let pick = |flag: Option<&PathBuf>, setting: RedisSetting, file: Option<&Spanned<PathBuf>>| {
        let key = format!("{table}.{}", setting.key().trim_start_matches("redis."));
        layer(flag, setting.flag(), file, source, &key)
            .map(|(path, origin)| (file_path(&path.to_string_lossy(), &origin), origin))
    };
    let ca = pick(o.redis_tls_ca.as_ref(), RedisSetting::TlsCa, section.tls_ca.as_ref());
    let cert = pick(o.redis_tls_cert.as_ref(), RedisSetting::TlsCert, section.tls_cert.as_ref());
    let key = pick(o.redis_tls_key.as_ref(), RedisSetting::TlsKey, section.tls_key.as_ref());
    let password = pick(o.redis_password_file.as_ref(), RedisSetting::PasswordFile, section.password_file.as_ref());
    let files = RedisFiles {
        tls_ca: ca.as_ref().map(|(p, _)| p.as_path()),
        tls_cert: cert.as_ref().map(|(p, _)| p.as_path()),
        tls_key: key.as_ref().map(|(p, _)| p.as_path()),
        password_file: password.as_ref().map(|(p, _)| p.as_path()),
    };
    files.load(url).map_err(|e| {
        let origin = match e.setting {
            RedisSetting::Url => Some(url_origin),
            RedisSetting::TlsCa => ca.as_ref().map(|(_, o)| o),
            RedisSetting::TlsCert => cert.as_ref().map(|(_, o)| o),
            RedisSetting::TlsKey => key.as_ref().map(|(_, o)| o),
            RedisSetting::PasswordFile => password.as_ref().map(|(_, o)| o),
        };
        match origin {
            Some(origin) => origin.error(e.why),
            None => SettingsError::Other { origin: e.setting.flag().to_owned(), why: e.why },
        }
    })
}

/// One Redis target as the settings name it: its URL and connection files, read and checked.
struct TargetSpec<'a> {
    name: String,
    url: String,
    url_origin: Origin<'a>,
    tls: RedisTls,
    password: Option<PasswordFile>,
}

/// The Redis targets: `--redis` (once per target, `NAME=URL` when more than one) replaces the
/// file's; the file has either one `[redis]` or several `[[targets]]`; the default is one
/// Redis at the standard local port. The `--redis-tls-*` and `--redis-password-file` flags
/// apply to every target, over each one's file keys.
fn targets<'a>(
    file: &'a FileSettings,
    source: Option<&'a Source<'a>>,
    o: &Overrides,
    registry: bool,
) -> Result<Vec<TargetSpec<'a>>, SettingsError> {
    // Each target as given, with where its name and URL came from, its table in the file
    // (for its file keys) and the table's name (`redis`, `targets[1]`) for error messages.
    struct Given<'a> {
        name: (String, Origin<'a>),
        url: (String, Origin<'a>),
        section: &'a RedisSection,
        table: String,
    }
    let mut found: Vec<Given<'a>> = Vec::new();
    let file_name = |section: &'a RedisSection, key: &str| layer(None, "", section.name.as_ref(), source, key);
    if !o.redis.is_empty() {
        let several = o.redis.len() > 1;
        for given in &o.redis {
            let (name, url) = split_target(given);
            let origin = Origin::Flag("--redis");
            let name = match name {
                Some(name) => name.to_owned(),
                None if several => {
                    return Err(origin.error(format!(
                        "{} is one of several targets: name each as NAME=URL (e.g. --redis eu={})",
                        mask_url(url),
                        mask_url(url)
                    )))
                }
                None => file_name(&file.redis, "redis.name")
                    .map_or_else(|| crate::config::DEFAULT_TARGET.to_owned(), |(name, _)| name),
            };
            let url = (url.to_owned(), origin);
            found.push(Given {
                name: (name, Origin::Flag("--redis")),
                url,
                section: &file.redis,
                table: "redis".into(),
            });
        }
    } else if !file.targets.is_empty() {
        if let (Some(url), Some(source)) = (&file.redis.url, source) {
            return Err(source.error(
                url.span().start,
                "redis.url",
                "both [redis] and [[targets]] are given: put this Redis into [[targets]] with a name",
            ));
        }
        for (i, section) in file.targets.iter().enumerate() {
            let table = format!("targets[{i}]");
            let (Some(source), Some(url)) = (source, &section.url) else {
                let at = section.name.as_ref().map_or(0, |n| n.span().start);
                let why = "a target needs a url";
                return Err(source.map_or_else(
                    || SettingsError::Other { origin: table.clone(), why: why.into() },
                    |source| source.error(at, &format!("{table}.url"), why),
                ));
            };
            let url_origin = Origin::File(source, url.span().start, format!("{table}.url"));
            let Some((name, name_origin)) = file_name(section, &format!("{table}.name")) else {
                return Err(url_origin.error(format!("{table} has no name: every [[targets]] entry needs one")));
            };
            found.push(Given { name: (name, name_origin), url: (url.get_ref().clone(), url_origin), section, table });
        }
    } else if registry && file.redis.url.is_none() {
        // With a registry, the targets may all be registered ones: no default Redis is
        // implied, only one the settings name.
    } else {
        let (url, origin) = layer(None, "--redis", file.redis.url.as_ref(), source, "redis.url")
            .unwrap_or_else(|| (DEFAULT_REDIS_URL.to_owned(), Origin::Default));
        let (name, name_origin) = file_name(&file.redis, "redis.name")
            .unwrap_or_else(|| (crate::config::DEFAULT_TARGET.to_owned(), Origin::Default));
        found.push(Given {
            name: (name, name_origin),
            url: (url, origin),
            section: &file.redis,
            table: "redis".into(),
        });
    }
    let mut specs: Vec<TargetSpec<'a>> = Vec::with_capacity(found.len());
    for Given { name: (name, name_origin), url: (url, url_origin), section, table } in found {
        if let (Some(hosts), Some(source)) = (&section.hosts, source) {
            return Err(source.error(
                hosts.span().start,
                &format!("{table}.hosts"),
                "hosts belongs in [target_secrets.NAME] (a target of the settings is sent its secrets at its url)",
            ));
        }
        crate::config::validate_target_name(&name).map_err(|e| name_origin.error(e.to_string()))?;
        crate::config::validate_redis_url(&url).map_err(|e| url_origin.error(e.to_string()))?;
        if let Some(other) = specs.iter().find(|t| t.name == name) {
            return Err(name_origin.error(format!(
                "the target name {name:?} is already given to {} ({}): give each target its own name",
                mask_url(&other.url),
                other.url_origin.describe()
            )));
        }
        if let Some(other) = specs.iter().find(|t| same_redis(&t.url, &url)) {
            return Err(url_origin.error(format!(
                "{} is already target {:?}: two targets on one Redis would write the same keys",
                mask_url(&url),
                other.name
            )));
        }
        let (tls, password) = redis_files(section, &table, source, o, &url, &url_origin)?;
        specs.push(TargetSpec { name, url, url_origin, tls, password });
    }
    Ok(specs)
}

/// Whether two URLs name the same Redis: the same servers (hosts lowercased, the default port
/// filled in) and the same database (`/0` and none are the same). Not a DNS lookup: two names
/// of one host still pass as two targets.
fn same_redis(a: &str, b: &str) -> bool {
    let db = |url: &str| -> String {
        let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
        let path = rest.split_once('/').map_or("", |(_, path)| path);
        let db = path.split(['?', '#']).next().unwrap_or("").trim_matches('/');
        if db.is_empty() {
            "0".to_owned()
        } else {
            db.to_owned()
        }
    };
    let (pa, pb) = (crate::registry::url_parts(a), crate::registry::url_parts(b));
    let (mut ha, mut hb) = (pa.hosts, pb.hosts);
    ha.sort();
    hb.sort();
    ha == hb && db(a) == db(b)
}

/// `NAME=URL` into its parts; a URL alone has no name. Only what comes before the scheme's
/// `://` can be a name, so a `=` inside a URL (a password, a query) is never taken for one.
fn split_target(given: &str) -> (Option<&str>, &str) {
    let scheme_end = given.find("://").unwrap_or(given.len());
    match given[..scheme_end].split_once('=') {
        Some((name, _)) => (Some(name), &given[name.len() + 1..]),
        None => (None, given),
    }
}

/// The ZooKeeper credentials and TLS material, read and checked.
struct ZkSecurity {
    auth: Option<ZkDigest>,
    auth_file: Option<PathBuf>,
    tls: Option<TlsFiles>,
}

/// A path given in the settings file is relative to the file's folder (a daemon's working
/// directory is rarely the file's); a flag's is relative to the working directory.
fn file_path(value: &str, origin: &Origin<'_>) -> PathBuf {
    let path = PathBuf::from(value);
    match origin {
        Origin::File(source, ..) if path.is_relative() => {
            source.file.parent().map_or(path.clone(), |folder| folder.join(&path))
        }
        _ => path,
    }
}

/// A path setting, flag over file, resolved (see [`file_path`]).
fn path_setting<'a>(
    flag: Option<&PathBuf>,
    flag_name: &'static str,
    spanned: Option<&Spanned<String>>,
    source: Option<&'a Source<'a>>,
    key: &str,
) -> Option<(PathBuf, Origin<'a>)> {
    if let Some(path) = flag {
        return Some((path.clone(), Origin::Flag(flag_name)));
    }
    let (value, origin) = layer(None, flag_name, spanned, source, key)?;
    Some((file_path(&value, &origin), origin))
}

/// `--zk-auth`/`--zk-auth-file` (or `auth`/`auth_file`) and `--zk-tls-*` (or `tls_*`): each
/// file read now, so that a bad one is an error at load naming it and the setting.
fn zk_security(section: &ZkSection, source: Option<&Source<'_>>, o: &Overrides) -> Result<ZkSecurity, SettingsError> {
    // The digest: from the flags (both given is an error), else from the file (likewise).
    let (auth, auth_file) = match (&o.zk_auth, &o.zk_auth_file) {
        (Some(_), Some(_)) => {
            return Err(Origin::Flag("--zk-auth-file").error(
                "--zk-auth and --zk-auth-file both given (or ZKMIRROR_ZK_AUTH and ZKMIRROR_ZK_AUTH_FILE): give one",
            ))
        }
        (Some(digest), None) => (Some(digest.clone()), None),
        (None, Some(path)) => (Some(read_auth_file(path, &Origin::Flag("--zk-auth-file"))?), Some(path.clone())),
        (None, None) => match (&section.auth, &section.auth_file, source) {
            (Some(_), Some(file), Some(source)) => {
                return Err(source.error(
                    file.span().start,
                    "zookeeper.auth_file",
                    "zookeeper.auth and zookeeper.auth_file both given: give one",
                ))
            }
            (Some(auth), None, Some(source)) => (
                Some(
                    auth.get_ref()
                        .parse::<ZkDigest>()
                        .map_err(|e| source.error(auth.span().start, "zookeeper.auth", e.to_string()))?,
                ),
                None,
            ),
            (None, Some(_), Some(_)) => {
                let (path, origin) =
                    path_setting(None, "--zk-auth-file", section.auth_file.as_ref(), source, "zookeeper.auth_file")
                        .ok_or_else(|| Origin::Default.error("no auth file"))?;
                (Some(read_auth_file(&path, &origin)?), Some(path))
            }
            _ => (None, None),
        },
    };
    let ca = path_setting(o.zk_tls_ca.as_ref(), "--zk-tls-ca", section.tls_ca.as_ref(), source, "zookeeper.tls_ca");
    let cert =
        path_setting(o.zk_tls_cert.as_ref(), "--zk-tls-cert", section.tls_cert.as_ref(), source, "zookeeper.tls_cert");
    let key =
        path_setting(o.zk_tls_key.as_ref(), "--zk-tls-key", section.tls_key.as_ref(), source, "zookeeper.tls_key");
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (Some((_, origin)), None) => {
            return Err(origin.error("a client certificate needs its key: give --zk-tls-key (zookeeper.tls_key) too"))
        }
        (None, Some((_, origin))) => {
            return Err(origin.error("a client key needs its certificate: give --zk-tls-cert (zookeeper.tls_cert) too"))
        }
        (None, None) => None,
    };
    let tls = match (ca, identity) {
        (None, None) => None,
        (None, Some(((_, origin), _))) => {
            return Err(origin.error(
                "a client certificate means TLS, and TLS needs the CA that signed the servers' certificates: give \
                 --zk-tls-ca (zookeeper.tls_ca) too",
            ))
        }
        (Some((ca, ca_origin)), identity) => {
            let pair = identity.as_ref().map(|((cert, _), (key, _))| (cert.as_path(), key.as_path()));
            let loaded = TlsFiles::load(&ca, pair).map_err(|e| {
                // Name the setting whose file failed.
                let origin = match (&e, &identity) {
                    (TlsFileError::Read { path, .. } | TlsFileError::Bad { path, .. }, Some(((cert, o), _)))
                        if path == cert =>
                    {
                        o
                    }
                    (TlsFileError::Read { path, .. } | TlsFileError::Bad { path, .. }, Some((_, (key, o))))
                        if path == key =>
                    {
                        o
                    }
                    (TlsFileError::Mismatch { .. }, Some((_, (_, o)))) => o,
                    _ => &ca_origin,
                };
                origin.error(e.to_string())
            })?;
            Some(loaded)
        }
    };
    Ok(ZkSecurity { auth, auth_file, tls })
}

/// Reads `user:password` from a file (systemd credentials, Kubernetes secrets). A trailing
/// newline is not part of the password. The error names the file, never its content.
fn read_auth_file(path: &Path, origin: &Origin<'_>) -> Result<ZkDigest, SettingsError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| origin.error(format!("cannot read the ZooKeeper credentials file {}: {e}", path.display())))?;
    let line = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
    if line.is_empty() {
        return Err(origin
            .error(format!("the ZooKeeper credentials file {} is empty: it must hold user:password", path.display())));
    }
    if line.contains('\n') {
        return Err(origin.error(format!(
            "the ZooKeeper credentials file {} holds more than one line: it must hold user:password",
            path.display()
        )));
    }
    line.parse::<ZkDigest>().map_err(|_| {
        origin.error(format!(
            "the ZooKeeper credentials file {} does not hold user:password (a user name, ':', the password)",
            path.display()
        ))
    })
}

/// With TLS every server is reached over TLS: a server written `tcp://` would be plain TCP,
/// and `tcp+tls://` without a CA cannot be; both are refused at load.
fn check_schemes(servers: &str, origin: &Origin<'_>, tls: bool) -> Result<(), SettingsError> {
    for server in servers.split(',').map(str::trim) {
        crate::zk::split_server(server, tls).map_err(|why| origin.error(why))?;
    }
    Ok(())
}

/// The ZooKeeper settings alone, from flags and the environment, for the commands that take no
/// settings file (`status`, `import`, `export`): the same layering and checks as `run`'s.
pub fn zk_connect(o: &Overrides) -> Result<ZkConnect, SettingsError> {
    let section = ZkSection::default();
    let (servers, origin) = match &o.zk {
        Some(servers) => (servers.clone(), Origin::Flag("--zk")),
        None => (DEFAULT_ZK_SERVERS.to_owned(), Origin::Default),
    };
    crate::config::validate_zk_servers(&servers).map_err(|e| origin.error(e.to_string()))?;
    let security = zk_security(&section, None, o)?;
    check_schemes(&servers, &origin, security.tls.is_some())?;
    let mut connect = ZkConnect::new(servers);
    connect.auth = security.auth;
    connect.tls = security.tls;
    if let Some(timeout) = o.session_timeout {
        connect.session_timeout = timeout;
    }
    Ok(connect)
}

/// `[ha]` and `--ha`/`--instance`. The election path is refused when it lies inside a mirrored
/// root or a root lies inside it: the mirror would copy the election's ephemeral znodes into
/// Redis (and flap with every takeover), and an election path under a root would make the one
/// thing zkmirror writes to ZooKeeper part of what it is supposed to only read.
fn ha_settings(
    section: &HaSection,
    source: Option<&Source<'_>>,
    o: &Overrides,
    mirrors: &[MirrorConfig],
    root_origins: &[&Origin<'_>],
) -> Result<Option<HaSettings>, SettingsError> {
    // `root_origins[i]` is where `mirrors[i]`'s root was given.
    let Some((path, origin)) = layer(o.ha.as_ref(), "--ha", section.path.as_ref(), source, "ha.path") else {
        if let Some((_, origin)) =
            layer(o.instance.as_ref(), "--instance", section.instance.as_ref(), source, "ha.instance")
        {
            return Err(origin.error("an instance name means nothing without an election path: give --ha PATH too"));
        }
        return Ok(None);
    };
    validate_ha_path(&path, mirrors.iter().map(|m| m.root.as_str())).map_err(|(root, why)| {
        match root.and_then(|i| root_origins.get(i)) {
            Some(root_origin) => origin.error(format!("{why} (the root comes from {})", root_origin.describe())),
            None => origin.error(why),
        }
    })?;
    let instance = match layer(o.instance.as_ref(), "--instance", section.instance.as_ref(), source, "ha.instance") {
        Some((name, origin)) => {
            validate_instance(&name).map_err(|why| origin.error(why))?;
            name
        }
        None => default_instance(),
    };
    Ok(Some(HaSettings { path, instance }))
}

/// Checks an election path against the mirrored roots. `Err` carries the index of the root
/// concerned (if any) and why, naming both paths.
pub fn validate_ha_path<'a>(
    path: &str,
    roots: impl IntoIterator<Item = &'a str>,
) -> Result<(), (Option<usize>, String)> {
    validate_outside_roots("election path", path, roots)
}

/// Checks a path the process reads or writes besides the mirrors (the election's, the target
/// registry's) against the mirrored roots: no mirror may copy or watch it, nor it hold one.
fn validate_outside_roots<'a>(
    what: &str,
    path: &str,
    roots: impl IntoIterator<Item = &'a str>,
) -> Result<(), (Option<usize>, String)> {
    path::validate(path).map_err(|e| {
        let why = match e {
            ConfigError::BadRoot { why, .. } => why,
            other => other.to_string(),
        };
        (None, format!("bad {what} {path:?}: {why}"))
    })?;
    if path == "/" {
        return Err((None, format!("the {what} must not be / (every root lies under it)")));
    }
    for (i, root) in roots.into_iter().enumerate() {
        if path::is_within(path, root) {
            return Err((
                Some(i),
                format!("the {what} {path} lies inside the mirrored root {root}: choose a path outside every root"),
            ));
        }
        if path::is_within(root, path) {
            return Err((
                Some(i),
                format!("the mirrored root {root} lies inside the {what} {path}: choose a path outside every root"),
            ));
        }
    }
    Ok(())
}

/// An instance name is written into a znode and shown by `zkmirror status --instances`: any
/// printable text up to 256 bytes.
fn validate_instance(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        return Err(format!("instance name {name:?}: must be 1 to 256 bytes of printable text"));
    }
    Ok(())
}

/// `HOSTNAME:PID`: unique on one machine, and says where to look on several.
fn default_instance() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    let host = if rc == 0 {
        let end = buffer.iter().position(|b| *b == 0).unwrap_or(buffer.len());
        String::from_utf8_lossy(&buffer[..end]).into_owned()
    } else {
        String::new()
    };
    let host = if host.is_empty() { std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".to_owned()) } else { host };
    format!("{host}:{}", std::process::id())
}

/// A size: a count of bytes, or a number with a unit (`64MiB`, `512 KB`, `1.5GiB`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|why| format!("{text:?} is not a size (write bytes, or e.g. 64MiB): {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_TARGETS: &str = r#"
[[targets]]
name = "eu"
url = "redis://127.0.0.1:6380/"

[[targets]]
name = "us"
url = "redis://127.0.0.1:6381/"

[[roots]]
path = "/a"

[[roots]]
path = "/b"
"#;

    #[test]
    fn several_targets_run_every_root_once_per_target() {
        let s = load_text(TWO_TARGETS, &Overrides::default()).expect("valid");
        let keys: Vec<(String, String, String)> =
            s.mirrors.iter().map(|m| (m.target.clone(), m.root.clone(), m.redis_url.clone())).collect();
        assert_eq!(
            keys,
            [
                ("eu".into(), "/a".into(), "redis://127.0.0.1:6380/".into()),
                ("eu".into(), "/b".into(), "redis://127.0.0.1:6380/".into()),
                ("us".into(), "/a".into(), "redis://127.0.0.1:6381/".into()),
                ("us".into(), "/b".into(), "redis://127.0.0.1:6381/".into()),
            ]
        );
        // Two roots share the prefix in each target's Redis: each target has its aggregate.
        assert!(s.mirrors.iter().all(|m| m.shared_prefix));
        assert_eq!(s.targets().len(), 2);
        let rendered = s.render_masked();
        assert!(rendered.contains("[[targets]]\nname = \"us\""), "{rendered}");
        assert_eq!(rendered.matches("[[roots]]").count(), 2, "{rendered}");
    }

    #[test]
    fn named_flag_targets_replace_the_files() {
        let o = Overrides {
            redis: vec!["a=redis://127.0.0.1:7000/".into(), "b=redis://u:p=w@127.0.0.1:7001/".into()],
            ..Overrides::default()
        };
        let s = load_text(TWO_TARGETS, &o).expect("valid");
        let names: Vec<&str> = s.targets().iter().map(|m| m.target.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(s.mirrors[2].redis_url, "redis://u:p=w@127.0.0.1:7001/", "a '=' in the password is no name");
        // One unnamed --redis is the default target (or the file's [redis] name).
        let one = Overrides { redis: vec!["redis://127.0.0.1:7000/".into()], ..Overrides::default() };
        let s = load_text("[[roots]]\npath = \"/a\"\n", &one).expect("valid");
        assert_eq!(s.mirrors[0].target, crate::config::DEFAULT_TARGET);
        let named = "[redis]\nname = \"eu\"\n\n[[roots]]\npath = \"/a\"\n";
        assert_eq!(load_text(named, &one).expect("valid").mirrors[0].target, "eu");
    }

    #[test]
    fn bad_target_lists_are_refused_naming_the_entry() {
        let err = |text: &str, o: &Overrides| load_text(text, o).err().map(|e| e.to_string()).unwrap_or_default();
        let unnamed = Overrides {
            redis: vec!["redis://127.0.0.1:7000/".into(), "redis://127.0.0.1:7001/".into()],
            ..Overrides::default()
        };
        let e = err(TWO_TARGETS, &unnamed);
        assert!(e.starts_with("--redis: ") && e.contains("NAME=URL"), "{e}");
        let both = format!("[redis]\nurl = \"redis://127.0.0.1:1/\"\n{TWO_TARGETS}");
        let e = err(&both, &Overrides::default());
        assert!(e.contains(":2: redis.url: both [redis] and [[targets]]"), "{e}");
        let e = err(&TWO_TARGETS.replace("\"us\"", "\"eu\""), &Overrides::default());
        assert!(e.contains("targets[1].name: the target name \"eu\" is already given"), "{e}");
        let e = err(&TWO_TARGETS.replace("6381", "6380"), &Overrides::default());
        assert!(e.contains("targets[1].url") && e.contains("is already target \"eu\""), "{e}");
        let e = err(&TWO_TARGETS.replace("name = \"us\"\n", ""), &Overrides::default());
        assert!(e.contains("targets[1].url: targets[1] has no name"), "{e}");
        let e = err(&TWO_TARGETS.replace("\"us\"", "\"u s\""), &Overrides::default());
        assert!(e.contains("targets[1].name") && e.contains("' ' is not allowed"), "{e}");
        let e = err(&TWO_TARGETS.replace("redis://127.0.0.1:6381/", "127.0.0.1:6381"), &Overrides::default());
        assert!(e.contains("targets[1].url") && e.contains("HOST:PORT"), "{e}");
    }

    #[test]
    fn registered_targets_take_the_roots_and_their_secrets_from_the_settings() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("pw"), "secret\n").expect("password file");
        let text = format!(
            "targets_from = \"/registry\"\n\n[target_secrets.eu]\nhosts = [\"H:1\"]\npassword_file = {:?}\n\n\
             [[roots]]\npath = \"/a\"\n\n[[roots]]\npath = \"/b\"\nprefix = \"b\"\n",
            dir.path().join("pw").display().to_string()
        );
        let s = load_text(&text, &Overrides::default()).expect("valid");
        assert!(s.mirrors.is_empty(), "no target but the registered ones: {:?}", s.mirrors);
        assert_eq!(s.targets_from.as_deref(), Some("/registry"));
        let reg = |name: &str, url: &str| crate::registry::Registration {
            name: name.into(),
            url: url.into(),
            changes_maxlen: Some(7),
            version: 0,
        };
        let (mirrors, refused) =
            s.registered(&[reg("eu", "redis://mirror@h:1/"), reg("us", "redis://h:2/"), reg("tls", "redis://h:3/")]);
        assert!(refused.is_empty(), "{refused:?}");
        let got: Vec<(&str, &str, &str, bool, u64)> = mirrors
            .iter()
            .map(|m| {
                (m.target.as_str(), m.root.as_str(), m.prefix.as_str(), m.redis_password.is_some(), m.changes_maxlen)
            })
            .collect();
        assert_eq!(
            got,
            [
                ("eu", "/a", "zk", true, 7),
                ("eu", "/b", "b", true, 7),
                ("us", "/a", "zk", false, 7),
                ("us", "/b", "b", false, 7),
                ("tls", "/a", "zk", false, 7),
                ("tls", "/b", "b", false, 7),
            ]
        );
        assert!(s.watched_files().contains(&dir.path().join("pw")), "{:?}", s.watched_files());
        // Its secrets go only to the servers its section lists.
        let (_, refused) = s.registered(&[reg("eu", "redis://mirror@elsewhere:1/")]);
        assert!(
            refused[0].1.contains("names elsewhere:1, which [target_secrets.eu] hosts does not list"),
            "{refused:?}"
        );
        let unbound = text.replace("hosts = [\"H:1\"]\n", "");
        let e = load_text(&unbound, &Overrides::default()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("target_secrets.eu: give hosts = ["), "{e}");
        let misplaced = "[redis]\nurl = \"redis://h:1/\"\nhosts = [\"h:1\"]\n\n[[roots]]\npath = \"/a\"\n";
        let e = load_text(misplaced, &Overrides::default()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("redis.hosts: hosts belongs in [target_secrets.NAME]"), "{e}");
        assert!(s.render_masked().contains("targets_from = \"/registry\""), "{}", s.render_masked());
        // A static target's name wins over a registration; the registry stays outside the roots.
        let with_static =
            text.replacen("[target_secrets", "[redis]\nname = \"eu\"\nurl = \"redis://h:9/\"\n\n[target_secrets", 1);
        let s = load_text(&with_static, &Overrides::default()).expect("valid");
        let (_, refused) = s.registered(&[reg("eu", "redis://h:1/")]);
        assert_eq!(refused.len(), 1, "{refused:?}");
        // Nor may a registration name the Redis of another target.
        let (mirrors, refused) =
            s.registered(&[reg("x", "redis://H:9"), reg("y", "redis://h:2/"), reg("z", "redis://h:2/0")]);
        let names: Vec<&str> = refused.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x", "z"], "{refused:?}");
        assert!(mirrors.iter().all(|m| m.target == "y"));
        let inside = text.replace("/registry", "/a/registry");
        let e = load_text(&inside, &Overrides::default()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("targets_from: the registry path /a/registry lies inside the mirrored root /a"), "{e}");
        let bad = text.replace("password_file", "url = \"redis://h:1/\"\npassword_file");
        let e = load_text(&bad, &Overrides::default()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("target_secrets.eu: a target's secrets take no url"), "{e}");
    }

    fn load_text(text: &str, overrides: &Overrides) -> Result<Settings, SettingsError> {
        // Tests run in parallel: each call gets its own folder.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("zkmirror-settings-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("zkmirror.toml");
        std::fs::write(&file, text).expect("write");
        let result = Settings::load(Some(&file), overrides);
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    const GOOD: &str = r#"
[zookeeper]
servers = "127.0.0.1:2181"
auth = "mirror:s3cret"

[redis]
url = "redis://user:pw@127.0.0.1:6379/"

[mirror]
prefix = "cfg"
anti_entropy_interval = "10s"

[[roots]]
path = "/app"
exclude = ["/app/locks/**"]

[[roots]]
path = "/other"
max_depth = 2
"#;

    #[test]
    fn reads_a_file_with_several_roots() {
        let s = load_text(GOOD, &Overrides::default()).expect("valid");
        assert_eq!(s.mirrors.len(), 2);
        assert!(s.mirrors.iter().all(|m| m.prefix == "cfg" && m.shared_prefix));
        assert_eq!(s.mirrors[0].anti_entropy_interval, Duration::from_secs(10));
        assert!(!s.mirrors[0].filter.admits("/app", "/app/locks/x"));
        let shown = s.render_masked();
        assert!(!shown.contains("s3cret") && !shown.contains(":pw@"), "{shown}");
    }

    #[test]
    fn flags_win_over_the_file() {
        let o = Overrides { root: Some("/flag".into()), prefix: Some("p".into()), ..Overrides::default() };
        let s = load_text(GOOD, &o).expect("valid");
        assert_eq!(s.mirrors.len(), 1);
        assert_eq!((s.mirrors[0].root.as_str(), s.mirrors[0].prefix.as_str()), ("/flag", "p"));
        assert!(!s.mirrors[0].shared_prefix);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let bad = GOOD.replace("path = \"/other\"", "path = \"other\"");
        let err = load_text(&bad, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("zkmirror.toml:18: roots[1].path"), "{err}");
        let bad = GOOD.replace("anti_entropy_interval = \"10s\"", "anti_entropy_interval = \"soon\"");
        let err = load_text(&bad, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains(":11: mirror.anti_entropy_interval"), "{err}");
        let bad = GOOD.replace("[mirror]", "[mirror]\ncolour = 1");
        let err = load_text(&bad, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("colour") && err.contains(":10:"), "{err}");
    }

    #[test]
    fn syntax_errors_name_the_table_and_key() {
        let bad = GOOD.replace("path = \"/other\"", "path = \"/other");
        let err = load_text(&bad, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("zkmirror.toml:18: roots[1].path"), "{err}");
        let bad = GOOD.replace("[redis]", "[redis");
        let err = load_text(&bad, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("zkmirror.toml:6: redis:"), "{err}");
    }

    #[test]
    fn overlapping_roots_sharing_a_prefix_are_rejected() {
        let bad = GOOD.replace("path = \"/other\"", "path = \"/app/sub\"");
        let err = load_text(&bad, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("overlaps root /app"), "{err}");
        let ok = bad.replace("path = \"/app/sub\"", "path = \"/app/sub\"\nprefix = \"sub\"");
        load_text(&ok, &Overrides::default()).expect("different prefixes may overlap");
    }

    /// Two entries for one root with different prefixes are two mirrors, each its own copy.
    #[test]
    fn one_root_under_two_prefixes_is_two_mirrors() {
        let text = GOOD.replace("path = \"/other\"", "path = \"/app\"\nprefix = \"second\"");
        let s = load_text(&text, &Overrides::default()).expect("valid");
        let keys: Vec<_> = s.mirrors.iter().map(|m| m.key().to_string()).collect();
        assert_eq!(keys, ["/app (prefix cfg)", "/app (prefix second)"]);
        assert!(s.mirrors.iter().all(|m| !m.shared_prefix));
    }

    #[test]
    fn the_same_root_and_prefix_twice_is_rejected_naming_both_entries() {
        let text = GOOD.replace("path = \"/other\"", "path = \"/app\"");
        let err = load_text(&text, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("zkmirror.toml:18: roots[1].path"), "{err}");
        assert!(err.contains("already mirrored by") && err.contains("zkmirror.toml:14 (roots[0].path)"), "{err}");
        assert!(err.contains("/app") && err.contains("\"cfg\""), "{err}");
    }

    /// Values a script would fail on at every write are refused at load, naming where the value
    /// came from (before: `tombstone_ttl = "0ms"` loaded, and every delete failed `SET PX 0`).
    #[test]
    fn settings_a_script_would_choke_on_are_rejected_at_load() {
        let with = |line: &str| GOOD.replace("anti_entropy_interval = \"10s\"", line);
        let err = load_text(&with("tombstone_ttl = \"0ms\""), &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains(":11: mirror.tombstone_ttl: bad setting tombstone_ttl: 0ns"), "{err}");
        let err = load_text(&with("tombstone_ttl = \"0.2ms\""), &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("mirror.tombstone_ttl") && err.contains("200µs") && err.contains("1ms"), "{err}");
        let err =
            load_text(&with("changes_maxlen = 18446744073709551615"), &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains(":11: mirror.changes_maxlen") && err.contains("18446744073709551615"), "{err}");
        let err = load_text(&with("read_window = 0"), &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains(":11: mirror.read_window"), "{err}");
        let err = load_text(&with("anti_entropy_interval = \"9000h\""), &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains(":11: mirror.anti_entropy_interval") && err.contains("365 days"), "{err}");
        let session = GOOD.replace("auth = ", "session_timeout = \"0s\"\nauth = ");
        let err = load_text(&session, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains(":4: zookeeper.session_timeout"), "{err}");
        let flag = Overrides { tombstone_ttl: Some(Duration::ZERO), ..Overrides::default() };
        let err = load_text(GOOD, &flag).unwrap_err().to_string();
        assert!(err.starts_with("--tombstone-ttl: bad setting tombstone_ttl: 0ns"), "{err}");
        load_text(&with("tombstone_ttl = \"1ms\""), &Overrides::default()).expect("1 ms is enough");
    }

    #[test]
    fn servers_default_to_the_standard_local_ports_below_file_and_flags() {
        let o = Overrides { root: Some("/app".into()), ..Overrides::default() };
        let s = Settings::load(None, &o).expect("defaults suffice");
        assert_eq!(s.mirrors[0].zk_servers, DEFAULT_ZK_SERVERS);
        assert_eq!(s.mirrors[0].redis_url, DEFAULT_REDIS_URL);
        let s = load_text(GOOD, &Overrides::default()).expect("valid");
        assert_eq!(s.mirrors[0].redis_url, "redis://user:pw@127.0.0.1:6379/", "the file lost to the default");
        let o = Overrides { zk: Some("zk1:2181".into()), ..o };
        assert_eq!(Settings::load(None, &o).expect("valid").mirrors[0].zk_servers, "zk1:2181");
    }

    #[test]
    fn a_missing_root_is_explained() {
        let err = Settings::load(None, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("--root") && err.contains("ZKMIRROR_ROOT"), "{err}");
    }

    #[test]
    fn ha_comes_from_the_file_or_the_flags_and_defaults_the_instance_to_host_and_pid() {
        let text = format!("{GOOD}\n[ha]\npath = \"/zkmirror/election\"\n");
        let s = load_text(&text, &Overrides::default()).expect("valid");
        let ha = s.ha.expect("[ha] given");
        assert_eq!(ha.path, "/zkmirror/election");
        assert!(ha.instance.ends_with(&format!(":{}", std::process::id())), "{}", ha.instance);
        let o = Overrides { ha: Some("/elsewhere".into()), instance: Some("blue".into()), ..Overrides::default() };
        let s = load_text(&text, &o).expect("valid");
        assert_eq!(s.ha, Some(HaSettings { path: "/elsewhere".into(), instance: "blue".into() }));
        assert_eq!(load_text(GOOD, &Overrides::default()).expect("valid").ha, None, "no [ha]: a lone mirror");
        assert!(s.render_masked().contains("[ha]\npath = \"/elsewhere\""));
    }

    /// The election path must lie outside every root, and no root inside it; the error names
    /// both paths and where each came from.
    #[test]
    fn an_election_path_overlapping_a_root_is_refused_naming_both() {
        let inside = format!("{GOOD}\n[ha]\npath = \"/app/election\"\n");
        let err = load_text(&inside, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("ha.path") && err.contains("/app/election") && err.contains("root /app"), "{err}");
        assert!(err.contains("roots[0].path"), "{err}");
        let o = Overrides { ha: Some("/".into()), ..Overrides::default() };
        let err = load_text(GOOD, &o).unwrap_err().to_string();
        assert!(err.starts_with("--ha:"), "{err}");
        let o = Overrides { root: Some("/cfg/app".into()), ha: Some("/cfg".into()), ..Overrides::default() };
        let err = load_text(GOOD, &o).unwrap_err().to_string();
        assert!(err.contains("root /cfg/app lies inside the election path /cfg") && err.contains("--root"), "{err}");
        for bad in ["election", "/a/", "/a//b"] {
            let o = Overrides { ha: Some(bad.into()), ..Overrides::default() };
            let err = load_text(GOOD, &o).unwrap_err().to_string();
            assert!(err.contains("bad election path") && err.contains(bad), "{err}");
        }
        let o = Overrides { ha: Some("/appendix".into()), ..Overrides::default() };
        load_text(GOOD, &o).expect("a sibling whose name starts like a root is outside it");
    }

    #[test]
    fn an_instance_name_needs_an_election_path_and_printable_text() {
        let o = Overrides { instance: Some("blue".into()), ..Overrides::default() };
        let err = load_text(GOOD, &o).unwrap_err().to_string();
        assert!(err.contains("--instance") && err.contains("--ha"), "{err}");
        let o = Overrides { ha: Some("/e".into()), instance: Some("a\nb".into()), ..Overrides::default() };
        let err = load_text(GOOD, &o).unwrap_err().to_string();
        assert!(err.contains("--instance") && err.contains("printable"), "{err}");
    }

    fn root_only() -> Overrides {
        Overrides { root: Some("/app".into()), ..Overrides::default() }
    }

    /// `--zk-auth-file`: the trailing newline is not part of the password; an empty or
    /// malformed file is an error naming the file (never its content); both sources is an error.
    #[test]
    fn zk_credentials_come_from_a_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("zk-auth");
        std::fs::write(&file, "mirror:pa:ss\n").expect("write");
        let o = Overrides { zk_auth_file: Some(file.clone()), ..root_only() };
        let s = Settings::load(None, &o).expect("valid");
        let digest = s.mirrors[0].zk_auth.clone().expect("read");
        assert_eq!((digest.user.as_str(), digest.password.as_str()), ("mirror", "pa:ss"));
        assert_eq!(s.watched_files(), vec![file.clone()]);
        assert!(!s.render_masked().contains("pa:ss"), "{}", s.render_masked());
        for (text, why) in [("", "is empty"), ("\n", "is empty"), ("nocolon-s3cret\n", "does not hold user:password")] {
            std::fs::write(&file, text).expect("write");
            let err = Settings::load(None, &o).unwrap_err().to_string();
            assert!(err.starts_with("--zk-auth-file:") && err.contains(&file.display().to_string()), "{err}");
            assert!(err.contains(why) && !err.contains("s3cret"), "{err}");
        }
        let both = Overrides { zk_auth: Some("a:b".parse().expect("digest")), ..o.clone() };
        let err = Settings::load(None, &both).unwrap_err().to_string();
        assert!(err.contains("--zk-auth and --zk-auth-file both given"), "{err}");
        let missing = Overrides { zk_auth_file: Some(dir.path().join("absent")), ..root_only() };
        let err = Settings::load(None, &missing).unwrap_err().to_string();
        assert!(err.contains("cannot read the ZooKeeper credentials file") && err.contains("absent"), "{err}");
    }

    /// The TLS files are read at load; a relative path in the settings file is relative to
    /// the file's folder; a certificate without its key (or the reverse), a key that is not
    /// the certificate's, an unreadable file, a CA that is no certificate are refused naming
    /// the setting and the file.
    #[test]
    fn zk_tls_files_are_read_and_checked_at_load() {
        let pki = zkmirror_testkit::tls::Pki::generate();
        let text = "[zookeeper]\nservers = \"127.0.0.1:2281\"\ntls_ca = \"ca.pem\"\ntls_cert = \"client.pem\"\ntls_key = \"client.key\"\n\n[[roots]]\npath = \"/app\"\n".to_owned();
        // The Redis side's files are relative to the settings file the same way.
        let with_redis = format!("[redis]\nurl = \"rediss://127.0.0.1:6380/\"\ntls_ca = \"ca.pem\"\n\n{text}");
        let file = pki.dir().join("with-redis.toml");
        std::fs::write(&file, &with_redis).expect("write");
        let s = Settings::load(Some(&file), &Overrides::default()).expect("valid");
        assert_eq!(s.mirrors[0].redis_files(), vec![pki.ca.as_path()]);
        assert_eq!(s.watched_files().len(), 3, "the CA once, though both sides name it");
        let file = pki.dir().join("zkmirror.toml");
        std::fs::write(&file, &text).expect("write");
        let s = Settings::load(Some(&file), &Overrides::default()).expect("valid");
        let tls = s.mirrors[0].zk_tls.clone().expect("TLS on");
        assert_eq!(tls.ca.path(), pki.ca);
        assert_eq!(s.watched_files().len(), 3);
        let shown = s.render_masked();
        assert!(shown.contains("tls_key = ") && !shown.contains("PRIVATE KEY"), "{shown}");
        assert!(!format!("{:?}", s.mirrors[0]).contains("PRIVATE KEY"));

        let flags = |ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>| Overrides {
            zk_tls_ca: ca.map(Path::to_owned),
            zk_tls_cert: cert.map(Path::to_owned),
            zk_tls_key: key.map(Path::to_owned),
            ..root_only()
        };
        let err = |o: Overrides| Settings::load(None, &o).unwrap_err().to_string();
        let e = err(flags(Some(&pki.ca), Some(&pki.client.cert), None));
        assert!(e.starts_with("--zk-tls-cert:") && e.contains("needs its key"), "{e}");
        let e = err(flags(Some(&pki.ca), None, Some(&pki.client.key)));
        assert!(e.starts_with("--zk-tls-key:") && e.contains("needs its certificate"), "{e}");
        let e = err(flags(None, Some(&pki.client.cert), Some(&pki.client.key)));
        assert!(e.contains("--zk-tls-ca"), "{e}");
        let stray = pki.stray_key("stray");
        let e = err(flags(Some(&pki.ca), Some(&pki.client.cert), Some(&stray)));
        assert!(e.starts_with("--zk-tls-key:") && e.contains("does not belong to the certificate"), "{e}");
        assert!(e.contains("stray.key") && e.contains("client.pem"), "{e}");
        let absent = pki.dir().join("absent.pem");
        let e = err(flags(Some(&absent), None, None));
        assert!(e.starts_with("--zk-tls-ca:") && e.contains("cannot read") && e.contains("absent.pem"), "{e}");
        let e = err(flags(Some(&pki.client.key), None, None));
        assert!(e.starts_with("--zk-tls-ca:") && e.contains("client.key") && e.contains("no CERTIFICATE"), "{e}");
        let e = err(flags(Some(&pki.ca), Some(&pki.client.key), Some(&pki.client.key)));
        assert!(e.starts_with("--zk-tls-cert:") && e.contains("client.key"), "{e}");
        let e = err(Overrides { zk: Some("tcp://127.0.0.1:2281".into()), ..flags(Some(&pki.ca), None, None) });
        assert!(e.starts_with("--zk:") && e.contains("plain TCP"), "{e}");
        let e = err(Overrides { zk: Some("tcp+tls://127.0.0.1:2281".into()), ..root_only() });
        assert!(e.starts_with("--zk:") && e.contains("--zk-tls-ca"), "{e}");
        let bad_key = text.replace("client.key", "missing.key");
        std::fs::write(&file, bad_key).expect("write");
        let e = Settings::load(Some(&file), &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("zkmirror.toml:5: zookeeper.tls_key") && e.contains("missing.key"), "{e}");
    }
}

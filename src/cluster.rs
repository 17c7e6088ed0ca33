//! Redis Cluster: `redis+cluster://[user:password@]HOST:PORT[,HOST:PORT...]` (`rediss+cluster://`
//! for TLS). The URL names some nodes of the cluster (any, primary or replica); the slot map is
//! asked of them (`CLUSTER SLOTS`), and asked again after a `MOVED`, a failed connection, or a
//! refused primary (`READONLY`, `CLUSTERDOWN`).
//!
//! Why not redis-rs's `cluster_async::ClusterConnection` (read in redis-rs 1.8.1,
//! `cluster_handling/async_connection`): it sends a whole pipeline to the node of its first key
//! (a pipeline with keys of two slots is refused client-side, "crossed slots"), and when any
//! answer of a pipeline is `MOVED`, `ASK` or `TRYAGAIN` it sends the WHOLE pipeline again to the
//! node that answer names (`request.rs`, `choose_response`): the commands that had already run
//! would run twice (a script that wrote answers "unchanged" the second time, so its change-stream
//! entry would be lost), and commands of other slots would go to a node that does not own them.
//! Scripts in a pipeline are not loaded on `NOSCRIPT` either. So [`ClusterLink`] keeps its own slot
//! map and one multiplexed connection per node (redis-rs's, TLS and credentials as every other
//! connection), and sends a pipeline as one sub-pipeline per node, each in the caller's order,
//! all at once. An answer `MOVED` or `ASK` means that command did not run: only those commands go
//! again, in their original order, to the node named (`ASKING` first for `ASK`), after a refresh
//! of the slot map for `MOVED`; `TRYAGAIN` (a multi-key command during a migration) after a short
//! pause. Every other answer stands. A connection that fails fails the call, with every answer the
//! other nodes gave kept (the store appends the change-stream entries of what did run).
//!
//! `SCAN` is per node: a `SCAN` through the link walks every primary in turn, its cursor the node's
//! cursor times [`MAX_NODES`] plus the node's index in the address-sorted primaries. A topology
//! change during a scan can skip or repeat keys (as `SCAN` itself may repeat): the sweep and
//! `verify` are repeated passes, and a changed topology is an outage for the mirror anyway.
//! `SCRIPT ...` goes to every primary.
//!
//! A failover may lose writes: a promoted replica may lack the last writes its primary
//! acknowledged. Every refresh of the slot map compares the primaries' node ids with those seen
//! before; a new one (a promoted replica, a replaced node) is reported as a switch: the store
//! fails commands with it until [`ClusterLink::take_switch`] (from `Store::load_scripts`), so the
//! engine goes through its outage path and reconciles the whole subtree, as behind Sentinel. Slots
//! moved between known primaries (a resharding moves keys with `MIGRATE`, nothing is lost) are no
//! switch.

use crate::sentinel::join_host;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, ConnectionAddr, Pipeline, RedisError, RedisResult, Value};

use crate::redis_conn::{PasswordFile, RedisTls};

/// The schemes of a Cluster URL.
const SCHEMES: [(&str, bool); 2] = [("redis+cluster://", false), ("rediss+cluster://", true)];

/// What a Cluster URL looks like, for messages about one that is not.
const FORM: &str = "a Cluster URL is redis+cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...] \
                    (rediss+cluster:// for TLS)";

/// The most primaries a scan cursor can address (the cursor is `node cursor * MAX_NODES + index`).
pub const MAX_NODES: u64 = 1024;

/// The pause before the `tries`-th `TRYAGAIN` round (0 first): doubling, capped.
fn try_again_pause(tries: u32) -> Duration {
    TRY_AGAIN_PAUSE.saturating_mul(1 << tries.min(8)).min(TRY_AGAIN_MAX_PAUSE)
}

/// How many times a command answered `MOVED`, `ASK` or `TRYAGAIN` is sent again before its
/// answer is given to the caller as it is (the store then takes Redis for unavailable).
const MAX_REDIRECTS: usize = 64;

/// How old the slot map may get before the next command asks for it again: a failover of a
/// primary the mirror has nothing to write to (ZooKeeper quiet, the status hash elsewhere) shows
/// no error, only a new primary in the slot map; the heartbeat's status write finds it.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// The pause before a command answered `TRYAGAIN` is sent again, doubled each time up to
/// [`TRY_AGAIN_MAX_PAUSE`]: a slot stays in migration as long as its keys take to move (seconds
/// for a large slot, or a slow `redis-cli --cluster reshard`), and giving up sooner makes the
/// engine take a resharding for an outage and walk the whole subtree again.
const TRY_AGAIN_PAUSE: Duration = Duration::from_millis(20);
/// The longest pause between two `TRYAGAIN` rounds: with [`MAX_REDIRECTS`] rounds, a command
/// waits about 12 s for its slot's migration before its answer is given up.
const TRY_AGAIN_MAX_PAUSE: Duration = Duration::from_millis(200);

/// A parsed `redis+cluster://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterUrl {
    /// `rediss+cluster://`: TLS to every node.
    pub tls: bool,
    pub user: Option<String>,
    pub password: Option<String>,
    /// The seed nodes, in the order given.
    pub nodes: Vec<(String, u16)>,
}

impl std::fmt::Debug for ClusterUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.masked())
    }
}

/// Whether `url` is a Cluster URL (whatever else is wrong with it).
pub fn is_cluster_url(url: &str) -> bool {
    crate::sentinel::has_scheme(url, &SCHEMES)
}

impl ClusterUrl {
    /// Parses `url`; `None` when it is not a Cluster URL at all, `Some(Err(why))` when it is one
    /// that cannot work. `why` never holds the password.
    pub fn parse(url: &str) -> Option<Result<ClusterUrl, String>> {
        let parts = crate::sentinel::MultiHostUrl::parse(url, &SCHEMES, "node", FORM)?;
        Some(parts.and_then(|parts| {
            if !parts.path.is_empty() && parts.path != "0" {
                return Err(format!(
                    "the path /{} is not accepted: a cluster has database 0 only, and the URL names no service; \
                     {FORM}",
                    parts.path
                ));
            }
            Ok(ClusterUrl { tls: parts.tls, user: parts.user, password: parts.password, nodes: parts.hosts })
        }))
    }

    /// The URL as given less the password: for logs and errors.
    pub fn masked(&self) -> String {
        let scheme = if self.tls { "rediss+cluster" } else { "redis+cluster" };
        crate::sentinel::masked_multi_host(scheme, self.user.as_deref(), self.password.as_deref(), &self.nodes)
    }
}

/// The slot map: for every slot the primary serving it, as `CLUSTER SLOTS` answered.
#[derive(Debug)]
struct Topology {
    /// `slots[s]` is an index into `primaries`; `None` for an unserved slot.
    slots: Vec<Option<usize>>,
    /// `host:port` of each primary, sorted (so a scan cursor's node index is stable).
    primaries: Vec<String>,
    /// The primaries' node ids, for telling a failover from a resharding.
    ids: BTreeSet<String>,
    /// When it was asked for.
    fetched: std::time::Instant,
}

impl Topology {
    /// Parses a `CLUSTER SLOTS` answer: `[[start, end, [host, port, id, ...], replicas...], ...]`.
    fn parse(answer: &Value, asked: &str) -> Result<Topology, String> {
        let Value::Array(ranges) = answer else { return Err(format!("{asked} answered CLUSTER SLOTS {answer:?}")) };
        let mut owners: Vec<(usize, usize, String, String)> = Vec::new();
        for range in ranges {
            let bad = || format!("{asked} answered a CLUSTER SLOTS range {range:?}");
            let Value::Array(items) = range else { return Err(bad()) };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(node))) =
                (items.first(), items.get(1), items.get(2))
            else {
                return Err(bad());
            };
            let text = |v: Option<&Value>| -> Option<String> { redis::from_redis_value_ref::<String>(v?).ok() };
            let mut host = text(node.first()).ok_or_else(bad)?;
            let Some(Value::Int(port)) = node.get(1) else { return Err(bad()) };
            let id = text(node.get(2)).unwrap_or_default();
            if host.is_empty() {
                // An empty host: the node answering is the one to use (Redis's own rule).
                host = asked.rsplit_once(':').map_or(asked, |(h, _)| h).to_owned();
            }
            let (start, end) = (usize::try_from(*start).map_err(|_| bad())?, usize::try_from(*end).map_err(|_| bad())?);
            if start > end || end >= crate::fence::SLOTS {
                return Err(bad());
            }
            let port = u16::try_from(*port).map_err(|_| bad())?;
            owners.push((start, end, join_host(&host, port), id));
        }
        let primaries: Vec<String> =
            owners.iter().map(|(_, _, addr, _)| addr.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        if primaries.len() as u64 > MAX_NODES {
            return Err(format!("the cluster has {} primaries, more than {MAX_NODES}", primaries.len()));
        }
        let mut slots = vec![None; crate::fence::SLOTS];
        for (start, end, addr, _) in &owners {
            let index = primaries.iter().position(|p| p == addr);
            for slot in slots.iter_mut().take(end + 1).skip(*start) {
                *slot = index;
            }
        }
        let ids = owners.into_iter().map(|(_, _, addr, id)| if id.is_empty() { addr } else { id }).collect();
        Ok(Topology { slots, primaries, ids, fetched: std::time::Instant::now() })
    }
}

/// The primaries changed (a failover, a replaced node): the ids before and now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Switch {
    pub from: BTreeSet<String>,
    pub to: BTreeSet<String>,
}

impl Switch {
    /// The error a command fails with once the primaries changed: an I/O error, as a lost
    /// connection is (the engine treats Redis as down, then reconciles when it answers).
    pub fn error(&self) -> RedisError {
        let gone: Vec<&String> = self.from.difference(&self.to).collect();
        let new: Vec<&String> = self.to.difference(&self.from).collect();
        RedisError::from(std::io::Error::other(format!(
            "the primaries of the Redis Cluster changed (gone: {gone:?}, new: {new:?}; a failover, or a replaced \
             node): writes the old ones acknowledged may be lost; reconciling"
        )))
    }
}

#[derive(Default)]
struct LinkState {
    topology: Option<Arc<Topology>>,
    conns: HashMap<String, MultiplexedConnection>,
    /// The primaries' ids at the last refresh.
    last_ids: Option<BTreeSet<String>>,
    /// A change of primaries not yet acknowledged.
    switch: Option<Switch>,
}

/// The mirror's (or a command's) way into a Redis Cluster: the slot map, one connection per
/// node, pipelines split per node and redirects followed per command (see the module docs).
pub struct ClusterLink {
    url: ClusterUrl,
    tls: RedisTls,
    password: Option<PasswordFile>,
    config: redis::AsyncConnectionConfig,
    state: std::sync::Mutex<LinkState>,
    /// Held while the slot map is asked for: one refresh at a time.
    refreshing: tokio::sync::Mutex<()>,
}

/// Where one command of a pipeline goes next.
#[derive(Clone, Debug)]
enum Target {
    /// The primary of the command's slot (or, keyless, the first primary).
    Slot(Option<usize>),
    /// The node an `ASK` named: `ASKING` first.
    Asking(String),
}

impl ClusterLink {
    pub fn new(
        url: ClusterUrl,
        tls: &RedisTls,
        password: Option<&PasswordFile>,
        config: redis::AsyncConnectionConfig,
    ) -> ClusterLink {
        ClusterLink {
            url,
            tls: tls.clone(),
            password: password.cloned(),
            config,
            state: std::sync::Mutex::new(LinkState::default()),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn url(&self) -> &ClusterUrl {
        &self.url
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The client for the node at `addr` (`host:port`): the URL's scheme, credentials and the
    /// TLS material, as every other connection (Nagle off).
    fn node_client(&self, addr: &str) -> RedisResult<redis::Client> {
        let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "6379"));
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port: u16 = port.parse().map_err(|_| {
            RedisError::from((redis::ErrorKind::InvalidClientConfig, "a cluster node address", addr.to_owned()))
        })?;
        let address = match self.url.tls {
            true => ConnectionAddr::TcpTls { host, port, insecure: false, tls_params: None },
            false => ConnectionAddr::Tcp(host, port),
        };
        let mut settings = redis::RedisConnectionInfo::default();
        if let Some(user) = &self.url.user {
            settings = settings.set_username(user);
        }
        match (&self.password, &self.url.password) {
            (Some(file), _) => settings = settings.set_password(file.password()),
            (None, Some(password)) => settings = settings.set_password(password),
            (None, None) => {}
        }
        let info = redis::IntoConnectionInfo::into_connection_info(address)?
            .set_redis_settings(settings)
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        if self.url.tls && !self.tls.is_empty() {
            return redis::Client::build_with_tls(info, crate::redis_conn::certificates(&self.tls));
        }
        redis::Client::open(info)
    }

    /// The connection to the node at `addr`, made if there is none.
    async fn node(&self, addr: &str) -> RedisResult<MultiplexedConnection> {
        if let Some(conn) = self.state().conns.get(addr).cloned() {
            return Ok(conn);
        }
        let conn = self.node_client(addr)?.get_multiplexed_async_connection_with_config(&self.config).await?;
        self.state().conns.insert(addr.to_owned(), conn.clone());
        Ok(conn)
    }

    /// Forgets the connection to `addr` and the slot map (a node failed): the next command asks
    /// the cluster again.
    fn forget(&self, addr: &str) {
        let mut state = self.state();
        state.conns.remove(addr);
        state.topology = None;
    }

    /// The slot map, asked for if there is none.
    async fn topology(&self) -> RedisResult<Arc<Topology>> {
        let fresh = |t: &Arc<Topology>| t.fetched.elapsed() < REFRESH_EVERY;
        if let Some(topology) = self.state().topology.clone().filter(fresh) {
            return Ok(topology);
        }
        let _one = self.refreshing.lock().await;
        if let Some(topology) = self.state().topology.clone().filter(fresh) {
            return Ok(topology);
        }
        self.refresh_locked().await
    }

    /// Asks for the slot map again (after a `MOVED`).
    async fn refresh(&self) -> RedisResult<Arc<Topology>> {
        let _one = self.refreshing.lock().await;
        self.refresh_locked().await
    }

    async fn refresh_locked(&self) -> RedisResult<Arc<Topology>> {
        // The primaries known first (they are the cluster now), then the URL's seeds.
        let known: Vec<String> = self.state().topology.as_ref().map(|t| t.primaries.clone()).unwrap_or_default();
        let seeds = self.url.nodes.iter().map(|(h, p)| join_host(h, *p));
        let mut last_error = None;
        for addr in known.into_iter().chain(seeds) {
            let answer = async {
                let mut conn = self.node(&addr).await?;
                let answer: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut conn).await?;
                Topology::parse(&answer, &addr)
                    .map_err(|why| RedisError::from((redis::ErrorKind::Parse, "an unusable CLUSTER SLOTS answer", why)))
            }
            .await;
            let topology = match answer {
                Ok(topology) if topology.slots.iter().all(Option::is_some) => topology,
                Ok(_) => {
                    last_error = Some(RedisError::from(std::io::Error::other(format!(
                        "{addr} reports slots no primary serves (the cluster is failing over?)"
                    ))));
                    continue;
                }
                Err(e) => {
                    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                        self.state().conns.remove(&addr);
                    }
                    last_error = Some(e);
                    continue;
                }
            };
            let topology = Arc::new(topology);
            let mut state = self.state();
            match state.last_ids.take() {
                Some(before) if !topology.ids.is_subset(&before) => {
                    tracing::warn!(cluster = %self.url.masked(), from = ?before, to = ?topology.ids,
                                   "the Redis Cluster's primaries changed (a failover, or a replaced node)");
                    let from = state.switch.take().map_or(before, |s| s.from);
                    state.switch = Some(Switch { from, to: topology.ids.clone() });
                }
                Some(_) => {}
                None => tracing::info!(cluster = %self.url.masked(), primaries = ?topology.primaries,
                                       "connected to the Redis Cluster"),
            }
            state.last_ids = Some(topology.ids.clone());
            state.topology = Some(topology.clone());
            return Ok(topology);
        }
        Err(last_error.unwrap_or_else(|| {
            RedisError::from(std::io::Error::other(format!("no node of {} answered", self.url.masked())))
        }))
    }

    /// The change of primaries not yet acknowledged, if any.
    pub fn pending_switch(&self) -> Option<Switch> {
        self.state().switch.clone()
    }

    /// Acknowledges the change of primaries: the caller reconciles.
    pub fn take_switch(&self) -> Option<Switch> {
        self.state().switch.take()
    }

    /// Connections to every primary, in the address order of the slot map.
    pub async fn primaries(&self) -> RedisResult<Vec<(String, MultiplexedConnection)>> {
        let topology = self.topology().await?;
        let mut conns = Vec::new();
        for addr in &topology.primaries {
            match self.node(addr).await {
                Ok(conn) => conns.push((addr.clone(), conn)),
                Err(e) => {
                    self.forget(addr);
                    return Err(e);
                }
            }
        }
        Ok(conns)
    }

    /// Sends `cmd` to every primary of the slot map, each on its own: an answer per node, a
    /// node that cannot be reached answered by its error (the others are still asked). `Err`
    /// only when no slot map can be had.
    pub async fn each_primary(&self, cmd: &Cmd) -> RedisResult<Vec<(String, RedisResult<Value>)>> {
        let topology = self.topology().await?;
        let mut answers = Vec::new();
        for addr in &topology.primaries {
            let answer = match self.node(addr).await {
                Ok(mut conn) => conn.req_packed_command(cmd).await,
                Err(e) => Err(e),
            };
            if answer.as_ref().is_err_and(|e| e.is_io_error() || e.is_connection_dropped() || e.is_timeout()) {
                self.forget(addr);
            }
            answers.push((addr.clone(), answer));
        }
        Ok(answers)
    }

    /// Sends `cmds` (not a transaction) and answers one value per command, in order: each
    /// command to the primary of its slot, one pipeline per node, all nodes at once, redirects
    /// followed per command (see the module docs). When a node's connection fails, the error is
    /// returned beside the answers: `None` for the commands whose fate is unknown (they may or
    /// may not have run), `Some` for every answer received.
    pub async fn run(&self, cmds: &[&Cmd]) -> (Vec<Option<Value>>, Option<RedisError>) {
        let mut answers: Vec<Option<Value>> = vec![None; cmds.len()];
        let mut pending: Vec<(usize, Target)> =
            cmds.iter().enumerate().map(|(i, cmd)| (i, Target::Slot(slot_of_cmd(cmd)))).collect();
        let mut tries = 0;
        for round in 0..=MAX_REDIRECTS {
            if pending.is_empty() {
                break;
            }
            let topology = match self.topology().await {
                Ok(topology) => topology,
                Err(e) => return (answers, Some(e)),
            };
            // One group per node, each in the caller's order.
            let mut groups: BTreeMap<String, Vec<(usize, bool)>> = BTreeMap::new();
            for (i, target) in &pending {
                let (addr, asking) = match target {
                    Target::Asking(addr) => (addr.clone(), true),
                    Target::Slot(slot) => {
                        let index = slot.and_then(|s| topology.slots[s]).unwrap_or(0);
                        (topology.primaries.get(index).cloned().unwrap_or_default(), false)
                    }
                };
                groups.entry(addr).or_default().push((*i, asking));
            }
            let sent = groups.into_iter().map(|(addr, group)| async move {
                let result = async {
                    let mut conn = self.node(&addr).await?;
                    let mut pipe = redis::pipe();
                    pipe.ignore_errors();
                    for (i, asking) in &group {
                        if *asking {
                            pipe.cmd("ASKING");
                        }
                        pipe.add_command(cmds[*i].clone());
                    }
                    let values: Vec<Value> = pipe.query_async(&mut conn).await?;
                    Ok::<_, RedisError>(values)
                }
                .await;
                (addr, group, result)
            });
            let results = futures::future::join_all(sent).await;
            let mut next = Vec::new();
            let mut failure = None;
            let mut moved = false;
            let mut pause = false;
            for (addr, group, result) in results {
                let values = match result {
                    Ok(values) => values,
                    Err(e) => {
                        self.forget(&addr);
                        failure = Some(e);
                        continue;
                    }
                };
                let mut values = values.into_iter();
                for (i, asking) in group {
                    if asking {
                        values.next(); // ASKING's +OK
                    }
                    let value = values.next().unwrap_or(Value::Nil);
                    let redirect = match &value {
                        Value::ServerError(e) if round < MAX_REDIRECTS => redirect(e),
                        _ => None,
                    };
                    match redirect {
                        Some(Redirect::Moved) => {
                            moved = true;
                            next.push((i, Target::Slot(slot_of_cmd(cmds[i]))));
                        }
                        Some(Redirect::Ask(to)) => next.push((i, Target::Asking(to))),
                        Some(Redirect::TryAgain) => {
                            pause = true;
                            next.push((i, Target::Slot(slot_of_cmd(cmds[i]))));
                        }
                        None => answers[i] = Some(value),
                    }
                }
            }
            if let Some(e) = failure {
                return (answers, Some(e));
            }
            if !next.is_empty() {
                // Rare outside a resharding or a failover; an operator sees the cluster moving.
                tracing::info!(cluster = %self.url.masked(), commands = next.len(), moved, try_again = pause,
                               "commands redirected by the cluster (MOVED, ASK or TRYAGAIN): sent again");
            }
            next.sort_by_key(|(i, _)| *i);
            pending = next;
            if moved {
                if let Err(e) = self.refresh().await {
                    return (answers, Some(e));
                }
            }
            if pause {
                tokio::time::sleep(try_again_pause(tries)).await;
                tries += 1;
            }
        }
        (answers, None)
    }

    /// One command: `SCAN` walks every primary (see the module docs), `SCRIPT` goes to every
    /// primary (the first one's answer is returned), anything else to its slot's primary.
    pub async fn command(&self, cmd: &Cmd) -> RedisResult<Value> {
        match command_name(cmd).as_deref() {
            Some("SCAN") => self.scan(cmd).await,
            Some("SCRIPT") => {
                let mut first = None;
                for (addr, mut conn) in self.primaries().await? {
                    match conn.req_packed_command(cmd).await {
                        Ok(value) => {
                            first.get_or_insert(value);
                        }
                        Err(e) => {
                            self.forget(&addr);
                            return Err(e);
                        }
                    }
                }
                Ok(first.unwrap_or(Value::Nil))
            }
            _ => {
                let (mut answers, error) = self.run(&[cmd]).await;
                match (error, answers.pop().flatten()) {
                    (Some(e), _) => Err(e),
                    (None, Some(Value::ServerError(e))) => Err(e.into()),
                    (None, Some(value)) => Ok(value),
                    (None, None) => Err(RedisError::from(std::io::Error::other("no answer"))),
                }
            }
        }
    }

    /// A transaction (`MULTI` ... `EXEC`) goes whole to the primary of its first key's slot (its
    /// keys must share a slot, as on any cluster). Answered `MOVED`, `ASK`, `TRYAGAIN` or
    /// `EXECABORT` (a redirect while queued: nothing ran), the slot map is asked again and the
    /// transaction sent once more after a short pause (during a migration, until its slot has
    /// moved).
    pub async fn transaction(&self, pipeline: &Pipeline, offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        let slot = pipeline.cmd_iter().find_map(slot_of_cmd);
        let mut last = None;
        for tries in 0..MAX_REDIRECTS as u32 {
            let topology = self.topology().await?;
            let index = slot.and_then(|s| topology.slots[s]).unwrap_or(0);
            let addr = topology.primaries.get(index).cloned().unwrap_or_default();
            let mut conn = self.node(&addr).await.inspect_err(|_| self.forget(&addr))?;
            match conn.req_packed_commands(pipeline, offset, count).await {
                Err(e) if matches!(e.code(), Some("MOVED" | "ASK" | "TRYAGAIN" | "EXECABORT")) => last = Some(e),
                Err(e) => {
                    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                        self.forget(&addr);
                    }
                    return Err(e);
                }
                Ok(values) if values.iter().any(|v| matches!(v, Value::ServerError(e) if redirect(e).is_some())) => {
                    last = Some(RedisError::from(std::io::Error::other("a transaction was redirected")));
                }
                Ok(values) => return Ok(values),
            }
            self.refresh().await?;
            tokio::time::sleep(try_again_pause(tries)).await;
        }
        Err(last.unwrap_or_else(|| RedisError::from(std::io::Error::other("a transaction kept being redirected"))))
    }

    /// `SCAN cursor ...` over every primary in turn.
    async fn scan(&self, cmd: &Cmd) -> RedisResult<Value> {
        let args: Vec<Vec<u8>> = cmd
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(bytes) => bytes.to_vec(),
                _ => b"0".to_vec(),
            })
            .collect();
        let cursor: u64 = args.get(1).and_then(|c| std::str::from_utf8(c).ok()?.parse().ok()).unwrap_or(0);
        let topology = self.topology().await?;
        let (mut index, mut node_cursor) = ((cursor % MAX_NODES) as usize, cursor / MAX_NODES);
        let Some(addr) = topology.primaries.get(index).cloned() else {
            return Ok(Value::Array(vec![Value::BulkString(b"0".to_vec()), Value::Array(Vec::new())]));
        };
        let mut conn = self.node(&addr).await.inspect_err(|_| self.forget(&addr))?;
        let mut scan = redis::cmd("SCAN");
        scan.arg(node_cursor);
        for arg in args.iter().skip(2) {
            scan.arg(arg.as_slice());
        }
        let (next, keys): (u64, Vec<Value>) = scan.query_async(&mut conn).await.inspect_err(|e| {
            if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                self.forget(&addr)
            }
        })?;
        node_cursor = next;
        if node_cursor == 0 {
            index += 1;
        }
        let composite = if node_cursor == 0 && index >= topology.primaries.len() {
            0
        } else {
            node_cursor.checked_mul(MAX_NODES).map(|c| c + index as u64).ok_or_else(|| {
                RedisError::from((redis::ErrorKind::Parse, "a SCAN cursor too large to combine", next.to_string()))
            })?
        };
        Ok(Value::Array(vec![Value::BulkString(composite.to_string().into_bytes()), Value::Array(keys)]))
    }
}

/// A handle on a [`ClusterLink`] that is a redis-rs connection (`query_async` works on it):
/// what the store and the one-shot commands send through.
#[derive(Clone)]
pub struct ClusterConn(pub Arc<ClusterLink>);

impl ConnectionLike for ClusterConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> redis::RedisFuture<'a, Value> {
        Box::pin(async move { self.0.command(cmd).await })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            if pipeline.is_transaction() {
                return self.0.transaction(pipeline, offset, count).await;
            }
            let cmds: Vec<&Cmd> = pipeline.cmd_iter().collect();
            let (answers, error) = self.0.run(&cmds).await;
            if let Some(e) = error {
                return Err(e);
            }
            Ok(answers.into_iter().skip(offset).take(count).map(|a| a.unwrap_or(Value::Nil)).collect())
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

enum Redirect {
    Moved,
    Ask(String),
    TryAgain,
}

/// What a redirect answer asks for: `MOVED slot addr` (the slot map is stale), `ASK slot addr`
/// (this once, at that node), `TRYAGAIN` (a multi-key command while its slot migrates).
fn redirect(error: &redis::ServerError) -> Option<Redirect> {
    match error.code() {
        "MOVED" => Some(Redirect::Moved),
        "ASK" => error.details()?.split_whitespace().nth(1).map(|addr| Redirect::Ask(addr.to_owned())),
        "TRYAGAIN" => Some(Redirect::TryAgain),
        _ => None,
    }
}

/// The upper-case name of a command.
fn command_name(cmd: &Cmd) -> Option<String> {
    match cmd.args_iter().next()? {
        redis::Arg::Simple(name) => Some(String::from_utf8_lossy(name).to_uppercase()),
        _ => None,
    }
}

/// The hash slot a command's first key is in; `None` for a command without keys.
fn slot_of_cmd(cmd: &Cmd) -> Option<usize> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .map(|a| match a {
            redis::Arg::Simple(bytes) => bytes,
            _ => b"0".as_slice(),
        })
        .collect();
    let name = String::from_utf8_lossy(args.first()?).to_uppercase();
    let key = match name.as_str() {
        "EVALSHA" | "EVAL" | "EVALSHA_RO" | "EVAL_RO" | "FCALL" | "FCALL_RO" => {
            let keys: usize = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
            if keys == 0 {
                return None;
            }
            args.get(3)?
        }
        "XREAD" | "XREADGROUP" => {
            let streams = args.iter().position(|a| a.eq_ignore_ascii_case(b"STREAMS"))?;
            args.get(streams + 1)?
        }
        "PING" | "INFO" | "TIME" | "SCRIPT" | "CLUSTER" | "ROLE" | "CLIENT" | "CONFIG" | "DBSIZE" | "ECHO"
        | "HELLO" | "AUTH" | "SELECT" | "ACL" | "COMMAND" | "READONLY" | "READWRITE" | "MULTI" | "EXEC" | "DISCARD"
        | "WAIT" | "SCAN" | "ASKING" | "FLUSHALL" | "FLUSHDB" | "SLOWLOG" | "MEMORY" => return None,
        _ => args.get(1)?,
    };
    Some(crate::fence::slot_of_bytes(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tryagain_waits_longer_each_round_up_to_a_cap() {
        let pauses: Vec<u128> = (0..7).map(|n| try_again_pause(n).as_millis()).collect();
        assert_eq!(pauses, [20, 40, 80, 160, 200, 200, 200]);
        let budget: Duration = (0..MAX_REDIRECTS as u32).map(try_again_pause).sum();
        assert!(budget > Duration::from_secs(10), "a migration of a few seconds must fit: {budget:?}");
        assert_eq!(try_again_pause(u32::MAX), TRY_AGAIN_MAX_PAUSE);
    }

    fn parse(url: &str) -> Result<ClusterUrl, String> {
        ClusterUrl::parse(url).expect("a cluster URL")
    }

    #[test]
    fn a_full_url_parses_and_masks_its_password() {
        let url = parse("redis+cluster://u:p%40ss@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002").expect("valid");
        assert_eq!(url.user.as_deref(), Some("u"));
        assert_eq!(url.password.as_deref(), Some("p@ss"));
        assert_eq!(url.nodes.len(), 3);
        assert_eq!(url.nodes[2], ("::1".to_owned(), 7002));
        assert!(!url.tls);
        assert_eq!(url.masked(), "redis+cluster://u:***@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002");
        assert!(parse("rediss+cluster://h:1").expect("valid").tls);
        assert!(ClusterUrl::parse("redis://h:1/").is_none());
    }

    #[test]
    fn bad_urls_say_what_is_wrong_without_the_password() {
        let why = parse("redis+cluster://u:hunter2@").unwrap_err();
        assert!(why.contains("names no node") && !why.contains("hunter2"), "{why}");
        let why = parse("redis+cluster://u:hunter2@h").unwrap_err();
        assert!(why.contains("\"h\" is not HOST:PORT") && !why.contains("hunter2"), "{why}");
        let why = parse("redis+cluster://h:1/3").unwrap_err();
        assert!(why.contains("database 0 only"), "{why}");
        let why = parse("redis+cluster://h:x").unwrap_err();
        assert!(why.contains("not HOST:PORT"), "{why}");
        let why = parse("redis+cluster://h:1?x=1").unwrap_err();
        assert!(why.contains("query"), "{why}");
    }

    #[test]
    fn the_config_takes_a_cluster_url_and_never_shows_its_password() {
        crate::config::validate_redis_url("redis+cluster://127.0.0.1:7000,127.0.0.1:7001").expect("valid");
        let err = crate::config::validate_redis_url("redis+cluster://u:hunter2@127.0.0.1").unwrap_err().to_string();
        assert!(err.contains("is not HOST:PORT") && !err.contains("hunter2"), "{err}");
        assert_eq!(crate::config::mask_url("rediss+cluster://u:hunter2@h:1,h:2"), "rediss+cluster://u:***@h:1,h:2");
        assert!(!crate::config::mask_url("redis+cluster://u:hunter2@h").contains("hunter2"));
        assert!(crate::redis_conn::is_tls_url("rediss+cluster://h:1"));
        // TLS files with a plain cluster URL: refused, never a silent plain connection.
        let ca = std::path::Path::new("/nonexistent/ca.pem");
        let files = crate::redis_conn::RedisFiles { tls_ca: Some(ca), ..Default::default() };
        let err = files.load("redis+cluster://u:hunter2@h:1").unwrap_err().why;
        assert!(err.contains("rediss+cluster://") && !err.contains("hunter2"), "{err}");
    }

    #[test]
    fn commands_are_routed_by_their_first_key() {
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha.arg("abc").arg(2).arg("zk:{/a}").arg("zk:{/a}:meta");
        assert_eq!(slot_of_cmd(&evalsha), Some(crate::fence::slot_of("/a")));
        let mut keyless = redis::cmd("EVALSHA");
        keyless.arg("abc").arg(0);
        assert_eq!(slot_of_cmd(&keyless), None);
        let mut get = redis::cmd("HGET");
        get.arg("zk:mirror").arg("zxid");
        assert_eq!(slot_of_cmd(&get), Some(crate::fence::slot_of("zk:mirror")));
        assert_eq!(slot_of_cmd(&redis::cmd("INFO")), None);
        let mut xread = redis::cmd("XREAD");
        xread.arg("BLOCK").arg(0).arg("STREAMS").arg("zk:changes").arg("$");
        assert_eq!(slot_of_cmd(&xread), Some(crate::fence::slot_of("zk:changes")));
    }

    #[test]
    fn a_slot_map_is_read_from_cluster_slots() {
        let node = |port: i64, id: &str| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(port),
                Value::BulkString(id.as_bytes().to_vec()),
            ])
        };
        let answer = Value::Array(vec![
            Value::Array(vec![Value::Int(8192), Value::Int(16383), node(7002, "b"), node(7003, "c")]),
            Value::Array(vec![Value::Int(0), Value::Int(8191), node(7001, "a")]),
        ]);
        let topology = Topology::parse(&answer, "127.0.0.1:7001").expect("valid");
        assert_eq!(topology.primaries, ["127.0.0.1:7001", "127.0.0.1:7002"]);
        assert_eq!(topology.slots[0], Some(0));
        assert_eq!(topology.slots[16383], Some(1));
        assert_eq!(topology.ids, ["a".to_owned(), "b".to_owned()].into_iter().collect());
        assert!(Topology::parse(&Value::Int(1), "x").is_err());
    }
}

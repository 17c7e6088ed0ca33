//! Leadership among several `zkmirror run --ha PATH` processes for the same roots: exactly one
//! (the leader) runs the mirrors, the others stand by.
//!
//! The recipe is ZooKeeper's lock: each competitor creates an ephemeral sequential znode
//! `PATH/lock-NNNNNNNNNN` (its data: the instance name), the lowest sequence leads, and every
//! other one watches only its predecessor (no herd when the leader goes). The leader's fencing
//! token is its lock znode's `czxid`: zxids grow across the whole ensemble, so every later
//! leader's token is higher (the sequence suffix is a per-parent counter that restarts when
//! the parent is re-created, so it is not one).
//!
//! Why not zookeeper-client's own recipe (`Client::lock`): it hides the lock znode's `Stat`
//! (the token and the `ephemeralOwner` must be read anyway), its retries on `ConnectionLoss`
//! run inside the call and would blind the simulated expiry below, and its `LockClient`
//! deletes the znode in a detached background task when dropped, where a resign must be
//! awaited (a SIGTERM hands over at once, and the test proves it on ZooKeeper).
//!
//! Leadership is lost when the lock znode goes (deleted, or the session expired), when the
//! session has been disconnected for [`GIVE_UP_FRACTION`] of the negotiated timeout (Curator's
//! "simulated session expiration": the server may expire the session any moment now and a
//! standby take over, so the mirrors stop first), when a reconnect finds the lock znode gone or
//! owned by another session (Curator's CURATOR-696), and when Redis refuses a write for a newer
//! token (the service asks to step down). The decisions are [`Machine`]'s, a pure state machine
//! the unit tests drive; [`Election::run`] is the thin I/O loop around it.
//!
//! The election session is the process's only other ZooKeeper session besides the mirrors': a
//! standby holds it and nothing else (no watch below any root, no copy of the tree).

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};
use zookeeper_client::{Acls, Client, CreateMode, Error as ZkClientError, EventType, SessionState};

use crate::backoff::Backoff;
use crate::config::Leadership;
use crate::shutdown::Shutdown;

/// The name every lock znode starts with; the sequence follows.
pub const LOCK_PREFIX: &str = "lock-";

/// The share of the negotiated session timeout a leader may stay disconnected before it stops
/// its mirrors by itself: the server expires the session after the whole timeout, and the
/// mirrors need the rest to stop.
pub const GIVE_UP_FRACTION: (u32, u32) = (2, 3);

/// How long one ZooKeeper request of the election may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a disconnected leader checks whether it must give up.
const TICK: Duration = Duration::from_millis(100);

/// How long the election waits for the service to confirm its mirrors stopped (the service
/// aborts them well before: its own grace is 10 s).
const STOP_WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// The state machine
// ---------------------------------------------------------------------------------------------

/// This instance's role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Competing, not leading: no mirror runs.
    Standby,
    /// Leading: the mirrors run with this token.
    Leader { fence: i64, since_ms: u64 },
    /// Leadership just ended; the mirrors are being stopped, then the instance competes again.
    Lost,
}

/// Why leadership ended (logged once, counted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LossReason {
    /// The lock znode is gone (deleted by someone, or the server expired the session).
    LockGone,
    /// The lock znode exists but belongs to another session.
    NotOwner,
    SessionExpired,
    /// Disconnected for this long, past the share of the session timeout allowed.
    DisconnectedTooLong(Duration),
    /// Redis refused a write for a newer leader's token.
    Deposed(String),
}

impl std::fmt::Display for LossReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LossReason::LockGone => f.write_str("the lock znode is gone"),
            LossReason::NotOwner => f.write_str("the lock znode belongs to another session"),
            LossReason::SessionExpired => f.write_str("the election session expired"),
            LossReason::DisconnectedTooLong(d) => write!(
                f,
                "disconnected from ZooKeeper for {d:?}, most of the session timeout: stepping down before the \
                 server expires the session"
            ),
            LossReason::Deposed(why) => write!(f, "{why}"),
        }
    }
}

/// What a step of the machine asks the I/O loop to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    Stay,
    /// Start the mirrors with this token.
    Lead {
        fence: i64,
        since_ms: u64,
    },
    /// Stop the mirrors.
    Lose(LossReason),
}

/// The election's decisions, without I/O: what each observation of the session and the lock
/// znode means for the role.
#[derive(Debug)]
pub struct Machine {
    role: Role,
    /// Since when the session is disconnected, if it is.
    disconnected_since: Option<Instant>,
    /// A leader whose session reconnected and whose lock znode is not confirmed ours yet.
    unconfirmed: bool,
    give_up_after: Duration,
}

impl Machine {
    /// `give_up_after`: how long a leader may stay disconnected (see [`give_up_after`]).
    pub fn new(give_up_after: Duration) -> Machine {
        Machine { role: Role::Standby, disconnected_since: None, unconfirmed: false, give_up_after }
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    /// A new session negotiated another timeout.
    pub fn set_give_up_after(&mut self, give_up_after: Duration) {
        self.give_up_after = give_up_after;
    }

    /// Whether the mirrors may write: leader, connected, the lock znode confirmed since the
    /// last reconnect.
    #[cfg(test)]
    pub fn acting(&self) -> bool {
        matches!(self.role, Role::Leader { .. }) && !self.unconfirmed && self.disconnected_since.is_none()
    }

    /// This instance's lock znode is the lowest; `owner` is its `ephemeralOwner`, `czxid` its
    /// creation zxid. Leads only if the znode is this session's.
    pub fn first_in_line(&mut self, owner: i64, session: i64, czxid: i64, now_ms: u64) -> Transition {
        if self.role != Role::Standby {
            return Transition::Stay;
        }
        if owner != session {
            self.role = Role::Lost;
            return Transition::Lose(LossReason::NotOwner);
        }
        self.role = Role::Leader { fence: czxid, since_ms: now_ms };
        self.unconfirmed = false;
        self.disconnected_since = None;
        Transition::Lead { fence: czxid, since_ms: now_ms }
    }

    pub fn disconnected(&mut self, at: Instant) {
        self.disconnected_since.get_or_insert(at);
    }

    /// The session is connected again. Returns whether the lock znode must be confirmed
    /// ([`Machine::confirmed`]) before the leader acts again.
    pub fn reconnected(&mut self) -> bool {
        self.disconnected_since = None;
        if matches!(self.role, Role::Leader { .. }) {
            self.unconfirmed = true;
        }
        self.unconfirmed
    }

    /// The lock znode's `ephemeralOwner` as read after a reconnect (`None`: it is gone).
    pub fn confirmed(&mut self, owner: Option<i64>, session: i64) -> Transition {
        if !matches!(self.role, Role::Leader { .. }) {
            return Transition::Stay;
        }
        self.unconfirmed = false;
        match owner {
            Some(owner) if owner == session => Transition::Stay,
            Some(_) => self.lose(LossReason::NotOwner),
            None => self.lose(LossReason::LockGone),
        }
    }

    /// Time passes: a leader disconnected for too long gives up.
    pub fn tick(&mut self, now: Instant) -> Transition {
        match self.disconnected_since {
            Some(since) if matches!(self.role, Role::Leader { .. }) => {
                let away = now.saturating_duration_since(since);
                if away >= self.give_up_after {
                    return self.lose(LossReason::DisconnectedTooLong(away));
                }
                Transition::Stay
            }
            _ => Transition::Stay,
        }
    }

    /// Leadership ends for `reason` (if held; a standby only notes that it must start over).
    pub fn lose(&mut self, reason: LossReason) -> Transition {
        let was_leader = matches!(self.role, Role::Leader { .. });
        self.role = Role::Lost;
        self.unconfirmed = false;
        if was_leader {
            Transition::Lose(reason)
        } else {
            Transition::Stay
        }
    }

    /// The mirrors stopped and the old lock znode is dealt with: compete again.
    pub fn rejoin(&mut self) {
        self.role = Role::Standby;
        self.unconfirmed = false;
        self.disconnected_since = None;
    }
}

/// How long a leader may stay disconnected: [`GIVE_UP_FRACTION`] of the negotiated timeout.
pub fn give_up_after(session_timeout: Duration) -> Duration {
    session_timeout * GIVE_UP_FRACTION.0 / GIVE_UP_FRACTION.1
}

// ---------------------------------------------------------------------------------------------
// The competitors, as listed under the election path
// ---------------------------------------------------------------------------------------------

/// The sequence of a lock znode's name, `None` for a child that is not one.
pub fn sequence_of(name: &str) -> Option<i64> {
    let digits = name.strip_prefix(LOCK_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The lock znodes among `children`, lowest sequence (the leader) first.
pub fn in_line(children: &[String]) -> Vec<(i64, String)> {
    let mut line: Vec<(i64, String)> =
        children.iter().filter_map(|c| sequence_of(c).map(|seq| (seq, c.clone()))).collect();
    line.sort();
    line
}

/// Whether this session may create a lock znode now, or must first look for one an earlier
/// create may have made. A sequential create whose answer was lost (`ConnectionLoss`, or a
/// request timed out here while the client still holds it to send on reconnect) may have
/// happened or may still happen; creating again before a lookup has answered would leave two
/// lock znodes of one session, the older one unknown to it: it would wait behind its own
/// orphan, and every instance behind that one with it, for as long as the process lives (the
/// "lost response of a sequential create" that Curator's protected mode solves; here the
/// `ephemeralOwner` is the mark, the session being the same). The lookup's list request
/// follows the create on the same session, so its answer includes the create if it happened.
#[derive(Debug, Default)]
pub struct LockCreation {
    unsure: bool,
}

impl LockCreation {
    /// Whether a create may be sent (else: look for an own lock znode first).
    pub fn may_create(&self) -> bool {
        !self.unsure
    }

    /// A create failed with `error`: after an ambiguous one, look before creating again.
    pub fn create_failed(&mut self, error: &ZkClientError) {
        if matches!(error, ZkClientError::ConnectionLoss | ZkClientError::Timeout) {
            self.unsure = true;
        }
    }

    /// A lookup answered (whatever it found): the earlier create is settled. A lookup that
    /// failed settles nothing and must not call this.
    pub fn looked(&mut self) {
        self.unsure = false;
    }
}

/// Among the lock znodes ahead of this instance's own (`(name, ephemeralOwner)`), those of
/// this very session: strays of a create whose answer was lost or of a resign whose delete
/// failed. Each blocks this instance (and everyone between) until the session ends, so they
/// are deleted.
pub fn own_strays(ahead: &[(String, i64)], session: i64) -> Vec<String> {
    ahead.iter().filter(|(_, owner)| *owner == session).map(|(name, _)| name.clone()).collect()
}

// ---------------------------------------------------------------------------------------------
// The I/O loop
// ---------------------------------------------------------------------------------------------

/// Where and as whom to compete.
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    /// The mirrors' ZooKeeper settings (servers, credentials, TLS, session timeout), as the
    /// last reload left them: each new session takes the latest, so that a rotated CA,
    /// certificate or credential reaches the election too (a session already open keeps what it
    /// was opened with; once it cannot reconnect with that, it is lost and the next one uses the
    /// new files).
    pub zk: tokio::sync::watch::Receiver<crate::zk::ZkConnect>,
    /// The election path (`--ha`).
    pub path: String,
    /// This instance's name (`--instance`).
    pub instance: String,
}

/// What the election tells the service.
#[derive(Debug)]
pub enum Notice {
    /// Start the mirrors with this leadership.
    Leading(Leadership),
    /// Stop every mirror now, then send on `stopped`; only then is the lock given up.
    NotLeading { why: LossReason, stopped: oneshot::Sender<()> },
}

/// Why the election cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("ZooKeeper at {servers} rejected the credentials of the election session (AuthFailed): check --zk-auth")]
    AuthFailed { servers: String },
    #[error("cannot compete under the election path {path}: {why}")]
    Path { path: String, why: String },
}

/// One instance's part in the election; see the module docs.
pub struct Election {
    config: ElectionConfig,
    notices: mpsc::Sender<Notice>,
    step_down: mpsc::Receiver<String>,
    role: watch::Sender<Role>,
    shutdown: Shutdown,
    machine: Machine,
}

/// How one session ended.
enum SessionEnd {
    /// Shut down: the lock znode is deleted, the session may close.
    Resigned,
    /// The session is gone or given up: open a new one.
    Renew,
    /// Cannot go on at all.
    Fatal(ElectionError),
}

/// What waiting for the turn came to.
enum Turn {
    First,
    Shutdown,
    /// The own lock znode disappeared: create a new one.
    LockGone,
    Expired,
    Retry(String),
}

impl Election {
    /// `notices`: to the service; `step_down`: from it (a mirror was deposed); `role`: for
    /// observers (`/readyz`, metrics); `shutdown`: fired by the service once the mirrors have
    /// stopped, so that resigning never lets a standby start while this leader still writes.
    pub fn new(
        config: ElectionConfig,
        notices: mpsc::Sender<Notice>,
        step_down: mpsc::Receiver<String>,
        role: watch::Sender<Role>,
        shutdown: Shutdown,
    ) -> Election {
        let machine = Machine::new(give_up_after(config.zk.borrow().session_timeout));
        Election { config, notices, step_down, role, shutdown, machine }
    }

    /// Competes until shut down (then resigns: deletes the lock znode) or until the election
    /// cannot go on (rejected credentials, an election path it may not create under).
    pub async fn run(mut self) -> Result<(), ElectionError> {
        let mut backoff = Backoff::between(Duration::from_millis(100), Duration::from_secs(5));
        let mut failing = false;
        loop {
            let connected = tokio::select! {
                _ = self.shutdown.fired() => return Ok(()),
                connected = connect(&self.config) => connected,
            };
            let client = match connected {
                Ok(client) => client,
                Err(crate::ZkError::AuthFailed) => {
                    return Err(ElectionError::AuthFailed { servers: self.config.zk.borrow().servers.clone() })
                }
                Err(e) => {
                    if !failing {
                        warn!(servers = %self.config.zk.borrow().servers, error = %e, "election: cannot connect to ZooKeeper; retrying");
                        failing = true;
                    }
                    if self.pause(backoff.next_delay()).await {
                        return Ok(());
                    }
                    continue;
                }
            };
            failing = false;
            backoff.reset();
            match self.serve_session(&client).await {
                SessionEnd::Resigned => return Ok(()),
                SessionEnd::Fatal(e) => return Err(e),
                SessionEnd::Renew => {
                    drop(client);
                    if self.pause(backoff.next_delay()).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Sleeps, unless shut down first (then `true`).
    async fn pause(&mut self, delay: Duration) -> bool {
        tokio::select! {
            _ = self.shutdown.fired() => true,
            _ = tokio::time::sleep(delay) => false,
        }
    }

    /// One session's life: create the lock znode, wait for the turn, lead, and after a loss
    /// start over on the same session while it lives.
    async fn serve_session(&mut self, client: &Client) -> SessionEnd {
        let session = client.session_id().0;
        self.machine.set_give_up_after(give_up_after(client.session_timeout()));
        let mut states = client.state_watcher();
        let mut lock: Option<String> = None;
        let mut creation = LockCreation::default();
        let mut backoff = Backoff::between(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            if let Ok(why) = self.step_down.try_recv() {
                debug!(%why, "election: a step-down request arrived while not leading; ignored");
            }
            let path = match &lock {
                Some(path) => path.clone(),
                None => match self.create_lock(client, session, &mut creation).await {
                    Ok(path) => {
                        info!(election = %self.config.path, lock = %path, instance = %self.config.instance,
                              "election: competing for leadership");
                        lock = Some(path.clone());
                        path
                    }
                    Err(ZkClientError::SessionExpired) => return SessionEnd::Renew,
                    Err(ZkClientError::AuthFailed) => {
                        return SessionEnd::Fatal(ElectionError::AuthFailed {
                            servers: self.config.zk.borrow().servers.clone(),
                        })
                    }
                    Err(
                        e
                        @ (ZkClientError::NoAuth | ZkClientError::InvalidAcl | ZkClientError::NoChildrenForEphemerals),
                    ) => {
                        return SessionEnd::Fatal(ElectionError::Path {
                            path: self.config.path.clone(),
                            why: e.to_string(),
                        })
                    }
                    Err(e) => {
                        debug!(election = %self.config.path, error = %e, "election: cannot create the lock znode; retrying");
                        if self.pause(backoff.next_delay()).await {
                            return SessionEnd::Resigned;
                        }
                        continue;
                    }
                },
            };
            let turn = self.await_turn(client, &path, session, &mut states).await;
            match turn {
                Turn::First => {}
                Turn::Shutdown => {
                    resign(client, &path).await;
                    return SessionEnd::Resigned;
                }
                Turn::Expired => return SessionEnd::Renew,
                Turn::LockGone => {
                    lock = None;
                    continue;
                }
                Turn::Retry(why) => {
                    debug!(election = %self.config.path, %why, "election: waiting for the turn failed; retrying");
                    if self.pause(backoff.next_delay()).await {
                        resign(client, &path).await;
                        return SessionEnd::Resigned;
                    }
                    continue;
                }
            }
            // First in line: lead only on a Stat that says the znode is this session's.
            let stat = match request(client.check_stat(&path)).await {
                Ok(Some(stat)) => stat,
                Ok(None) => {
                    lock = None;
                    continue;
                }
                Err(ZkClientError::SessionExpired) => return SessionEnd::Renew,
                Err(e) => {
                    debug!(lock = %path, error = %e, "election: cannot read the lock znode; retrying");
                    if self.pause(backoff.next_delay()).await {
                        resign(client, &path).await;
                        return SessionEnd::Resigned;
                    }
                    continue;
                }
            };
            backoff.reset();
            let transition = self.machine.first_in_line(stat.ephemeral_owner, session, stat.czxid, now_ms());
            let reason = match transition {
                Transition::Lead { fence, since_ms } => {
                    info!(election = %self.config.path, lock = %path, instance = %self.config.instance, fence,
                          "election: leading; starting the mirrors");
                    self.role.send_replace(self.machine.role().clone());
                    let leadership = Leadership { instance: self.config.instance.clone(), since_ms, fence };
                    if self.notices.send(Notice::Leading(leadership)).await.is_err() {
                        resign(client, &path).await;
                        return SessionEnd::Resigned;
                    }
                    match self.hold(client, &path, session, &mut states).await {
                        Some(reason) => reason,
                        None => {
                            // Shut down: the service stopped the mirrors before firing it.
                            resign(client, &path).await;
                            return SessionEnd::Resigned;
                        }
                    }
                }
                Transition::Lose(reason) => reason,
                Transition::Stay => LossReason::LockGone,
            };
            // Leadership ended: stop the mirrors first, then give up the lock.
            error!(election = %self.config.path, instance = %self.config.instance, reason = %reason,
                   "election: leadership lost; stopping every mirror and standing by");
            self.role.send_replace(Role::Lost);
            let (stopped_tx, stopped_rx) = oneshot::channel();
            let renew = matches!(reason, LossReason::SessionExpired | LossReason::DisconnectedTooLong(_));
            if self.notices.send(Notice::NotLeading { why: reason, stopped: stopped_tx }).await.is_ok() {
                let _ = tokio::time::timeout(STOP_WAIT, stopped_rx).await;
            }
            self.machine.rejoin();
            self.role.send_replace(Role::Standby);
            if renew {
                // A given-up session may still hold the lock znode: dropping it lets the server
                // expire it, and a new session competes from scratch.
                return SessionEnd::Renew;
            }
            resign(client, &path).await;
            lock = None;
        }
    }

    /// Creates this instance's lock znode (and the election path if missing). After an
    /// ambiguous failure (see [`LockCreation`]) it creates again only once a lookup has found
    /// no child owned by this session; a failed lookup is returned and, `creation` still
    /// unsure, the next call looks again first.
    async fn create_lock(
        &self,
        client: &Client,
        session: i64,
        creation: &mut LockCreation,
    ) -> Result<String, ZkClientError> {
        let acls = if self.config.zk.borrow().auth.is_some() { Acls::creator_all() } else { Acls::anyone_all() };
        let prefix = crate::path::child(&self.config.path, LOCK_PREFIX);
        let ephemeral = CreateMode::EphemeralSequential.with_acls(acls);
        loop {
            if !creation.may_create() {
                let found = self.find_own_lock(client, session).await?;
                creation.looked();
                if let Some(path) = found {
                    return Ok(path);
                }
            }
            match request(client.create(&prefix, self.config.instance.as_bytes(), &ephemeral)).await {
                Ok((_, sequence)) => return Ok(format!("{prefix}{sequence}")),
                Err(ZkClientError::NoNode) => {
                    request(client.mkdir(&self.config.path, &CreateMode::Persistent.with_acls(acls))).await?;
                }
                Err(e) => {
                    creation.create_failed(&e);
                    if creation.may_create() {
                        return Err(e);
                    }
                }
            }
        }
    }

    async fn find_own_lock(&self, client: &Client, session: i64) -> Result<Option<String>, ZkClientError> {
        let children = request(client.list_children(&self.config.path)).await?;
        for (_, name) in in_line(&children) {
            let path = crate::path::child(&self.config.path, &name);
            if let Some(stat) = request(client.check_stat(&path)).await? {
                if stat.ephemeral_owner == session {
                    return Ok(Some(path));
                }
            }
        }
        Ok(None)
    }

    /// Waits until `lock` is the lowest lock znode, watching only its predecessor. Lock
    /// znodes of this same session ahead of it ([`own_strays`]) are deleted first: nobody else
    /// would ever remove them while the session lives.
    async fn await_turn(
        &mut self,
        client: &Client,
        lock: &str,
        session: i64,
        states: &mut zookeeper_client::StateWatcher,
    ) -> Turn {
        let own = crate::path::name(lock).to_owned();
        loop {
            let children = match request(client.list_children(&self.config.path)).await {
                Ok(children) => children,
                Err(ZkClientError::SessionExpired) => return Turn::Expired,
                Err(e) => return Turn::Retry(format!("listing {}: {e}", self.config.path)),
            };
            let line = in_line(&children);
            let Some(position) = line.iter().position(|(_, name)| *name == own) else {
                return Turn::LockGone;
            };
            let mut ahead = Vec::with_capacity(position);
            for (_, name) in &line[..position] {
                match request(client.check_stat(&crate::path::child(&self.config.path, name))).await {
                    Ok(Some(stat)) => ahead.push((name.clone(), stat.ephemeral_owner)),
                    Ok(None) => {}
                    Err(ZkClientError::SessionExpired) => return Turn::Expired,
                    Err(e) => return Turn::Retry(format!("reading {}/{name}: {e}", self.config.path)),
                }
            }
            let strays = own_strays(&ahead, session);
            if !strays.is_empty() {
                for name in strays {
                    let stray = crate::path::child(&self.config.path, &name);
                    warn!(lock, %stray, "election: an older lock znode of this session stands ahead; deleting it");
                    match request(client.delete(&stray, None)).await {
                        Ok(()) | Err(ZkClientError::NoNode) => {}
                        Err(ZkClientError::SessionExpired) => return Turn::Expired,
                        Err(e) => return Turn::Retry(format!("deleting {stray}: {e}")),
                    }
                }
                continue;
            }
            let Some((_, predecessor)) = position.checked_sub(1).and_then(|i| line.get(i)) else {
                return Turn::First;
            };
            let predecessor = crate::path::child(&self.config.path, predecessor);
            let watcher = match request(client.check_and_watch_stat(&predecessor)).await {
                Ok((None, _)) => continue,
                Ok((Some(_), watcher)) => watcher,
                Err(ZkClientError::SessionExpired) => return Turn::Expired,
                Err(e) => return Turn::Retry(format!("watching {predecessor}: {e}")),
            };
            debug!(lock, %predecessor, "election: standing by, watching the predecessor");
            let changed = watcher.changed();
            tokio::pin!(changed);
            loop {
                tokio::select! {
                    _ = self.shutdown.fired() => return Turn::Shutdown,
                    _ = &mut changed => break,
                    state = states.changed() => match state {
                        SessionState::Expired | SessionState::Closed => return Turn::Expired,
                        SessionState::AuthFailed => return Turn::Expired,
                        _ => {}
                    },
                    Some(why) = self.step_down.recv() => {
                        debug!(%why, "election: a step-down request arrived while standing by; ignored");
                    }
                }
            }
        }
    }

    /// Holds leadership until it is lost (`Some(reason)`) or shutdown fires (`None`).
    async fn hold(
        &mut self,
        client: &Client,
        lock: &str,
        session: i64,
        states: &mut zookeeper_client::StateWatcher,
    ) -> Option<LossReason> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // The watch on the own lock znode: its deletion is the plainest "lost".
            // Keep ticking while the request waits: a disconnected leader must give up in time
            // even while a request hangs.
            let watch_request = request(client.check_and_watch_stat(lock));
            tokio::pin!(watch_request);
            let watched = loop {
                tokio::select! {
                    _ = self.shutdown.fired() => return None,
                    watched = &mut watch_request => break watched,
                    _ = tick.tick() => {
                        if let Transition::Lose(reason) = self.tick(client) {
                            return Some(reason);
                        }
                    }
                }
            };
            let watcher = match watched {
                Ok((Some(stat), watcher)) if stat.ephemeral_owner == session => Some(watcher),
                Ok((Some(_), _)) => return Some(self.lost(LossReason::NotOwner)),
                Ok((None, _)) => return Some(self.lost(LossReason::LockGone)),
                Err(ZkClientError::SessionExpired) => return Some(self.lost(LossReason::SessionExpired)),
                // Disconnected: the state watcher says when to look again.
                Err(_) => None,
            };
            let changed = async move {
                match watcher {
                    Some(watcher) => watcher.changed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(changed);
            loop {
                tokio::select! {
                    _ = self.shutdown.fired() => return None,
                    event = &mut changed => {
                        if event.event_type == EventType::NodeDeleted {
                            return Some(self.lost(LossReason::LockGone));
                        }
                        break; // look again (a session event, a data change)
                    }
                    state = states.changed() => match state {
                        SessionState::Disconnected => {
                            warn!(lock, "election: disconnected from ZooKeeper while leading");
                            self.machine.disconnected(Instant::now());
                        }
                        SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                            if self.machine.reconnected() {
                                // CURATOR-696: the znode must still be there and still ours.
                                let owner = match request(client.check_stat(lock)).await {
                                    Ok(stat) => stat.map(|s| s.ephemeral_owner),
                                    Err(ZkClientError::SessionExpired) => {
                                        return Some(self.lost(LossReason::SessionExpired))
                                    }
                                    Err(e) => {
                                        debug!(lock, error = %e, "election: cannot confirm the lock after a reconnect");
                                        self.machine.disconnected(Instant::now());
                                        continue;
                                    }
                                };
                                if let Transition::Lose(reason) = self.machine.confirmed(owner, session) {
                                    return Some(reason);
                                }
                                info!(lock, "election: reconnected; the lock znode is still ours");
                                break; // watch again
                            }
                        }
                        SessionState::Expired | SessionState::Closed | SessionState::AuthFailed => {
                            return Some(self.lost(LossReason::SessionExpired));
                        }
                    },
                    _ = tick.tick() => {
                        if let Transition::Lose(reason) = self.tick(client) {
                            return Some(reason);
                        }
                    }
                    Some(why) = self.step_down.recv() => return Some(self.lost(LossReason::Deposed(why))),
                }
            }
        }
    }

    /// One tick of a leader: notes a disconnect the state watcher has not been polled for yet
    /// (a request may be pending), then asks the machine whether it has been away too long.
    fn tick(&mut self, client: &Client) -> Transition {
        let now = Instant::now();
        if client.state() == SessionState::Disconnected {
            self.machine.disconnected(now);
        }
        self.machine.tick(now)
    }

    fn lost(&mut self, reason: LossReason) -> LossReason {
        self.machine.lose(reason.clone());
        reason
    }
}

/// Connects the election session (with the mirrors' credentials and TLS, if any).
async fn connect(config: &ElectionConfig) -> Result<Client, crate::ZkError> {
    let zk = config.zk.borrow().clone();
    zk.connect(false).await
}

/// Deletes the own lock znode, so that the next in line leads at once. Best effort: when it
/// fails, the znode goes with the session (closed when the client is dropped, or expired).
async fn resign(client: &Client, lock: &str) {
    match request(client.delete(lock, None)).await {
        Ok(()) | Err(ZkClientError::NoNode) => info!(lock, "election: resigned; the lock znode is deleted"),
        Err(e) => warn!(lock, error = %e, "election: cannot delete the lock znode; it goes with the session"),
    }
}

/// One request, bounded in time (a request against a disconnected session may wait long).
async fn request<T>(future: impl std::future::Future<Output = Result<T, ZkClientError>>) -> Result<T, ZkClientError> {
    tokio::time::timeout(REQUEST_TIMEOUT, future).await.unwrap_or(Err(ZkClientError::Timeout))
}

use crate::clock::unix_ms as now_ms;

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: i64 = 0x100;
    const OTHER: i64 = 0x200;

    fn leader() -> Machine {
        let mut m = Machine::new(Duration::from_secs(2));
        assert_eq!(m.first_in_line(SESSION, SESSION, 77, 1_000), Transition::Lead { fence: 77, since_ms: 1_000 });
        m
    }

    #[test]
    fn the_first_in_line_leads_with_its_czxid_as_token() {
        let m = leader();
        assert_eq!(m.role(), &Role::Leader { fence: 77, since_ms: 1_000 });
        assert!(m.acting());
    }

    #[test]
    fn a_lock_znode_of_another_session_is_never_led_on() {
        let mut m = Machine::new(Duration::from_secs(2));
        assert_eq!(m.first_in_line(OTHER, SESSION, 77, 1), Transition::Lose(LossReason::NotOwner));
        assert!(!m.acting());
    }

    /// CURATOR-696: after a reconnect the leader acts again only once its znode is confirmed.
    #[test]
    fn after_a_reconnect_the_leader_waits_for_its_lock_to_be_confirmed() {
        let mut m = leader();
        m.disconnected(Instant::now());
        assert!(!m.acting());
        assert!(m.reconnected(), "a leader must confirm its lock after a reconnect");
        assert!(!m.acting(), "unconfirmed");
        assert_eq!(m.confirmed(Some(SESSION), SESSION), Transition::Stay);
        assert!(m.acting());

        let mut m = leader();
        m.reconnected();
        assert_eq!(m.confirmed(None, SESSION), Transition::Lose(LossReason::LockGone));
        assert_eq!(m.role(), &Role::Lost);
        let mut m = leader();
        m.reconnected();
        assert_eq!(m.confirmed(Some(OTHER), SESSION), Transition::Lose(LossReason::NotOwner));
        assert!(!m.acting());
    }

    #[test]
    fn a_standby_has_nothing_to_confirm() {
        let mut m = Machine::new(Duration::from_secs(2));
        m.disconnected(Instant::now());
        assert!(!m.reconnected());
        assert_eq!(m.confirmed(None, SESSION), Transition::Stay);
        assert_eq!(m.tick(Instant::now() + Duration::from_secs(60)), Transition::Stay);
    }

    /// Simulated session expiry: disconnected for the allowed share of the timeout, the
    /// leader gives up by itself; shorter, it keeps leading.
    #[test]
    fn a_leader_disconnected_too_long_gives_up_before_the_server_expires_it() {
        let mut m = leader();
        let start = Instant::now();
        m.disconnected(start);
        assert_eq!(m.tick(start + Duration::from_millis(1_999)), Transition::Stay);
        // A second Disconnected does not restart the clock.
        m.disconnected(start + Duration::from_millis(1_500));
        match m.tick(start + Duration::from_secs(2)) {
            Transition::Lose(LossReason::DisconnectedTooLong(d)) => assert_eq!(d, Duration::from_secs(2)),
            other => panic!("{other:?}"),
        }
        assert_eq!(m.role(), &Role::Lost);
        // A reconnect in time resets the clock.
        let mut m = leader();
        m.disconnected(start);
        m.reconnected();
        m.confirmed(Some(SESSION), SESSION);
        assert_eq!(m.tick(start + Duration::from_secs(60)), Transition::Stay);
    }

    #[test]
    fn the_allowance_is_two_thirds_of_the_negotiated_timeout() {
        assert_eq!(give_up_after(Duration::from_secs(3)), Duration::from_secs(2));
        assert_eq!(give_up_after(Duration::from_millis(900)), Duration::from_millis(600));
    }

    #[test]
    fn after_a_loss_the_instance_competes_again_and_can_lead_with_a_new_token() {
        let mut m = leader();
        assert_eq!(m.lose(LossReason::Deposed("newer".into())), Transition::Lose(LossReason::Deposed("newer".into())));
        assert_eq!(m.first_in_line(SESSION, SESSION, 99, 2), Transition::Stay, "not before rejoining");
        m.rejoin();
        assert_eq!(m.role(), &Role::Standby);
        assert_eq!(m.first_in_line(SESSION, SESSION, 99, 2), Transition::Lead { fence: 99, since_ms: 2 });
        // A loss while standing by stops nothing.
        let mut m = Machine::new(Duration::from_secs(1));
        assert_eq!(m.lose(LossReason::SessionExpired), Transition::Stay);
    }

    #[test]
    fn the_line_is_ordered_by_sequence_and_ignores_strangers() {
        let children: Vec<String> =
            ["lock-0000000010", "other", "lock-0000000002", "lock-", "lock-x1", "lock-0000000007"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let line = in_line(&children);
        let names: Vec<&str> = line.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["lock-0000000002", "lock-0000000007", "lock-0000000010"]);
        assert_eq!(sequence_of("lock-0000000010"), Some(10));
        assert_eq!(sequence_of("latch-0000000010"), None);
    }
    /// The lost answer of a sequential create: after `ConnectionLoss` or a timed-out request
    /// the create may have happened (or still be sent on reconnect); a lookup that fails too
    /// must not let the next attempt create a second lock znode for this session.
    #[test]
    fn a_create_whose_answer_was_lost_is_looked_for_before_creating_again() {
        for lost in [ZkClientError::ConnectionLoss, ZkClientError::Timeout] {
            let mut creation = LockCreation::default();
            assert!(creation.may_create());
            creation.create_failed(&lost);
            assert!(!creation.may_create(), "after {lost:?} the create may have happened");
            // The lookup fails too (the link is still down): nothing settles; still unsure.
            assert!(!creation.may_create(), "a failed lookup must not allow another create");
            creation.looked();
            assert!(creation.may_create(), "a lookup that answered settles it");
        }
        // A definite refusal created nothing.
        let mut creation = LockCreation::default();
        creation.create_failed(&ZkClientError::NoAuth);
        assert!(creation.may_create());
    }

    /// Own lock znodes ahead of the current one (a lost create's, a failed resign's) would
    /// block this instance and everyone behind them; they are picked out to be deleted.
    #[test]
    fn lock_znodes_of_the_own_session_ahead_are_strays() {
        let ahead = vec![("lock-0000000001".to_owned(), SESSION), ("lock-0000000002".to_owned(), OTHER)];
        assert_eq!(own_strays(&ahead, SESSION), ["lock-0000000001"]);
        assert!(own_strays(&ahead[1..], SESSION).is_empty());
    }
}

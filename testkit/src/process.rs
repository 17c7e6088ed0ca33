//! Child processes other than the servers: the real `zkmirror` binary, a benchmark's helper
//! roles. They get the servers' guarantees (see the crate docs): spawned by the one spawner
//! thread with `PR_SET_PDEATHSIG(SIGKILL)`, their pid registered for the `atexit` handler, and
//! stopped by pid when dropped.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::servers::{spawn_guarded, unregister_pid};

/// How long [`Guarded::stop`] waits after SIGTERM before it sends SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A child process that is stopped when dropped (SIGTERM, then SIGKILL after 5 s).
pub struct Guarded {
    pub child: Child,
    pub name: String,
}

impl Guarded {
    /// Starts `command`; `name` says what it is in every panic message.
    pub fn spawn(name: &str, command: Command) -> Guarded {
        let child = spawn_guarded(command).unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Guarded { child, name: name.to_owned() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics (naming the process) if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_wait() {
            panic!("{} exited unexpectedly: {status}", self.name);
        }
    }

    /// SIGTERM, then wait (SIGKILL after 5 s).
    pub fn stop(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        // SAFETY: a plain signal to our own, not yet reaped child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if self.try_wait().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        self.reap();
    }

    /// Blocks until the process has exited, without reaping it: its /proc entry (and CPU
    /// times) stay readable until [`Guarded::wait_success`].
    pub fn wait_exited_unreaped(&self) {
        // SAFETY: waitid with WNOWAIT on our own child only observes its state.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(libc::P_PID, self.child.id(), &mut info, libc::WEXITED | libc::WNOWAIT);
        }
    }

    /// Waits for a process that ends by itself; panics if it fails.
    pub fn wait_success(&mut self) {
        unregister_pid(self.pid() as i32);
        let status = self.child.wait().unwrap_or_else(|e| panic!("waiting for {}: {e}", self.name));
        assert!(status.success(), "{} failed: {status}", self.name);
    }

    /// The exit status if the process has exited (then unregistered and reaped, in that order).
    fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        // SAFETY: waitid with WNOWAIT on our own child only observes its state; WNOHANG: now.
        let (rc, exited_pid) = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
            let rc = libc::waitid(libc::P_PID, self.child.id(), &mut info, flags);
            (rc, info.si_pid())
        };
        match (rc, exited_pid) {
            // Reaped already: `Child` remembers the status.
            (rc, _) if rc != 0 => self.child.try_wait().ok().flatten(),
            (_, 0) => None,
            _ => {
                unregister_pid(self.pid() as i32);
                self.child.wait().ok()
            }
        }
    }

    /// Unregisters the pid, then reaps: until `wait` the pid is a zombie and cannot be reused,
    /// so the `atexit` handler never signals a stranger.
    fn reap(&mut self) {
        unregister_pid(self.pid() as i32);
        let _ = self.child.wait();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop();
    }
}

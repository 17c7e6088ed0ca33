//! The real `zkmirror` binary, as an operator runs it: one-shot commands run to completion
//! ([`run`]) and the daemon with its log in a file ([`Daemon`]).
//!
//! The binary's path comes from the test (`env!("CARGO_BIN_EXE_zkmirror")` exists only in the
//! zkmirror package's own tests), and no `ZKMIRROR_*` variable of the test's environment
//! reaches it: a test says every setting it means.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::process::Guarded;
use crate::wait_until;
use crate::world::CONVERGE;

/// What one run of a command did.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// Panics with the whole output unless the exit code is `code`.
    #[track_caller]
    pub fn expect(self, code: i32) -> Outcome {
        assert_eq!(self.code, code, "exit code; stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    /// Asserts exit code 2 (no answer) and a message on stderr holding each of `needles`;
    /// returns the message.
    #[track_caller]
    pub fn refused(&self, needles: &[&str]) -> String {
        assert_eq!(self.code, 2, "exit code; stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        for needle in needles {
            assert!(self.stderr.contains(needle), "{needle:?} not in the message:\n{}", self.stderr);
        }
        self.stderr.clone()
    }
}

fn without_settings_from_env(command: &mut Command) {
    for (var, _) in std::env::vars().filter(|(var, _)| var.starts_with("ZKMIRROR_")) {
        command.env_remove(var);
    }
}

/// Runs `BINARY ARGS...` to completion with `RUST_LOG=warn`. A command that has not exited
/// after [`CONVERGE`] fails the test (a `run` that should have refused its settings would
/// otherwise retry for ever).
pub async fn run<S: AsRef<str>>(binary: &str, args: &[S]) -> Outcome {
    run_logging(binary, args, Some("warn")).await
}

/// [`run`] with the given `RUST_LOG`; `None`: the binary's own default, as an operator runs it.
pub async fn run_logging<S: AsRef<str>>(binary: &str, args: &[S], rust_log: Option<&str>) -> Outcome {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let mut command = Command::new(binary);
    without_settings_from_env(&mut command);
    command.args(&args).stdin(Stdio::null());
    match rust_log {
        Some(filter) => command.env("RUST_LOG", filter),
        None => command.env_remove("RUST_LOG"),
    };
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true);
    let output = tokio::time::timeout(CONVERGE, command.output())
        .await
        .unwrap_or_else(|_| panic!("zkmirror {args:?} did not exit within {CONVERGE:?}"))
        .unwrap_or_else(|e| panic!("running {binary}: {e}"));
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `zkmirror run ARGS...` in the background, stdout and stderr in a log file, stopped by pid
/// (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    pub process: Guarded,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `BINARY run ARGS...` with `RUST_LOG=rust_log`, logging to `log`.
    pub fn start<S: AsRef<str>>(binary: &str, args: &[S], rust_log: &str, log: &Path) -> Daemon {
        let out = std::fs::File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let err = out.try_clone().expect("cloning the log file handle");
        let mut command = Command::new(binary);
        without_settings_from_env(&mut command);
        command.arg("run").args(args.iter().map(AsRef::as_ref)).env("RUST_LOG", rust_log);
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        Daemon { process: Guarded::spawn("zkmirror run", command), log: log.to_owned() }
    }

    /// Everything logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds a line with `needle` and returns that line; panics if the
    /// process exits first.
    pub async fn wait_for_log(&mut self, needle: &str) -> String {
        self.wait_for_lines(&[needle], 1).await
    }

    /// Waits until the log holds `count` lines that each contain every one of `parts`; returns
    /// the `count`-th.
    pub async fn wait_for_lines(&mut self, parts: &[&str], count: usize) -> String {
        let log = self.log.clone();
        let process = &mut self.process;
        wait_until(CONVERGE, &format!("{count} log line(s) with {parts:?}"), || {
            process.assert_running();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().filter(|l| parts.iter().all(|p| l.contains(p))).collect();
            let found = lines.get(count.saturating_sub(1)).map(|l| (*l).to_owned());
            let have = lines.len();
            async move { found.ok_or_else(|| format!("{have} such lines; log:\n{text}")) }
        })
        .await
    }

    /// SIGTERM, waits for the exit (SIGKILL after a grace period), and returns the log.
    pub fn stop(mut self) -> String {
        self.process.stop();
        self.log_text()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("[zkmirror run] log {}:\n{}", self.log.display(), self.log_text());
        }
    }
}

/// Each of `status`, `verify` and `run` with `--redis url` is refused before it connects: exit
/// 2 and a message holding `needle`, never `secret` (the URL's password).
pub async fn assert_url_refused_everywhere(binary: &str, zk: &str, url: &str, needle: &str, secret: &str) {
    for args in [
        vec!["status", "--redis", url],
        vec!["verify", "--zk", zk, "--redis", url, "--root", "/x"],
        vec!["run", "--zk", zk, "--redis", url, "--root", "/x"],
    ] {
        let out = run(binary, &args).await;
        let message = out.refused(&[needle]);
        assert!(!message.contains(secret), "{args:?} showed the secret: {message}");
    }
}

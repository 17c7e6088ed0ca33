//! The `zkmirror` command line: `run` mirrors, `check-config` validates settings, and the
//! operator commands (`verify`, `status`, `get`, `ls`, `import`, `export`) read and load; each
//! lives in [`cli`]. Errors become messages
//! and exit codes here, at the edge; the library below uses typed errors.

use zkmirror::cli;

use clap::{Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::process::ExitCode;
use tracing::error;

#[derive(Parser)]
#[command(name = "zkmirror", version, about = "Mirror a ZooKeeper subtree into Redis, exactly and monotonically")]
struct Cli {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, global = true, env = "ZKMIRROR_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Mirror the subtree until stopped (SIGINT or SIGTERM).
    Run(cli::run::RunArgs),
    /// Compare Redis with the subtree once; exit 0 only when they match exactly.
    Verify(cli::verify::VerifyArgs),
    /// Report the mirror's state, heartbeat and lag; exit 1 when it is stale or not live.
    Status(cli::status::StatusArgs),
    /// Print a znode's data (or, with --meta, its Stat) from Redis, as an application reads it.
    Get(cli::read::GetArgs),
    /// List a znode's children from Redis, sorted, one per line.
    Ls(cli::read::LsArgs),
    /// Load a tree into ZooKeeper from a directory or a tree file. Never deletes.
    Import(cli::transfer::ImportArgs),
    /// Dump a ZooKeeper subtree to a tree file (default, on stdout) or a directory.
    Export(cli::transfer::ExportArgs),
    /// Validate a settings file and print the effective settings, secrets masked.
    CheckConfig(cli::run::CheckConfigArgs),
}

fn init_logging(format: LogFormat, default_level: &str) {
    // zookeeper-client warns about every failed connection attempt, including those it retries
    // and then succeeds with (a one-shot command's first attempt while the server is still
    // opening sessions), and the mirror logs each failure itself with its cause. So its target
    // is at `error` unless RUST_LOG says otherwise.
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default_level},zookeeper_client=error")));
    // The file watcher's own crate logs every inotify event at trace: with `RUST_LOG=trace` and
    // the log file in a watched folder, each line it writes is an event that logs a line (two
    // million lines in 15 s, seen). It stays at `warn` unless RUST_LOG names it.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("notify")) {
        if let Ok(directive) = "notify=warn".parse() {
            filter = filter.add_directive(directive);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(use_colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR")));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Colours only for a terminal (a journal or a log file would keep the escape codes), and
/// never when `NO_COLOR` is set to anything but the empty string (https://no-color.org).
fn use_colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|value| value.is_empty())
}

/// Large buffers (a 1 MB znode, a pipeline of them) are given back to the system when freed.
///
/// glibc serves allocations above its mmap threshold with `mmap` and returns them on free, but
/// it raises that threshold each time such a block is freed (up to 32 MiB), after which 1 MB
/// buffers come from the heap and stay resident when freed. A tree of large values then grows
/// the process well past what the mirror holds by its memory budget. A fixed threshold turns
/// that adjustment off.
///
/// Fixing the mmap threshold also fixes the trim threshold at its 128 KiB default, and the heap
/// top is then given back and taken again with every pipeline (a cold sync's profile: a quarter
/// of the mirror's CPU in the allocator and page faults). A trim threshold of 8 MiB and a top pad
/// of 1 MiB keep that churn away, at the price of at most that much freed heap kept resident
/// (measured, `cargo bench --bench mirror -- --only cold-sync`: mirror CPU for 200,000 znodes
/// 1.26 s against 1.56 s with 16 MiB; the 1 MB-values peak unchanged).
fn keep_large_buffers_returnable() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_TOP_PAD, 1 << 20);
    }
}

fn main() -> ExitCode {
    keep_large_buffers_returnable();
    let cli = Cli::parse();
    // The one-shot operator commands answer on stdout; their logs would only be noise.
    let is_run = matches!(cli.command, Command::Run(_));
    let json_logs = matches!(cli.log_format, LogFormat::Json);
    init_logging(cli.log_format, if is_run { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("zkmirror: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run(args) => runtime.block_on(cli::run::run(args)),
        Command::CheckConfig(args) => runtime.block_on(cli::run::check_config(args)),
        Command::Verify(args) => runtime.block_on(cli::verify::verify(args)),
        Command::Status(args) => runtime.block_on(cli::status::status(args)),
        Command::Get(args) => runtime.block_on(cli::read::get(args)),
        Command::Ls(args) => runtime.block_on(cli::read::ls(args)),
        Command::Import(args) => runtime.block_on(cli::transfer::import(args)),
        Command::Export(args) => runtime.block_on(cli::transfer::export(args)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // Said once: with JSON logs stderr carries only JSON lines (a journal's reader
            // expects them), otherwise one plain line as every other command prints.
            if is_run && json_logs {
                error!("{e:#}");
            } else {
                eprintln!("zkmirror: {e:#}");
            }
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::use_colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some("".into())), "an empty NO_COLOR does not count");
        assert!(!use_colour(true, Some("1".into())));
        assert!(!use_colour(false, None));
    }
}

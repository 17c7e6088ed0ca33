//! Every `zkmirror ...` command line of README.md's examples, run as written against real
//! servers, so the examples cannot drift from the binary.
//!
//! The commands come from README.md itself: lines `zkmirror ...` in ```sh blocks and
//! `$ zkmirror ...` in output blocks, in the order the README shows them (the quick start
//! first: it loads `fixtures/app` at `/app` and starts the mirror). They run in a scratch
//! folder holding a copy of `fixtures/`, against a ZooKeeper and a Redis of the harness, with
//! the defaults (`127.0.0.1:2181`, `redis://127.0.0.1:6379/`) overridden only through the
//! environment, as a person would with `export ZKMIRROR_ZK=...`. Each must exit 0, or the code
//! the README documents for it ([`EXPECTED_CODES`]); a line ending in `&` runs in the
//! background until the end (a mirror: the test waits for its `cold sync done`, and stops it
//! with SIGTERM, expecting exit 0). Lines that cannot run here are listed in [`NOT_RUN`] with
//! the reason; both lists must name lines the README still has.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{wait_until, RedisServer, ZkServer};

const README: &str = include_str!("../README.md");

/// Example lines that name a deployment's servers or files, with why they are not run.
const NOT_RUN: &[(&str, &str)] = &[
    (
        "zkmirror run --zk 10.0.0.1:2181,10.0.0.2:2181 --redis redis://user:pass@127.0.0.1:6379/ --root /app",
        "names the servers of a deployment",
    ),
    ("zkmirror check-config /etc/zkmirror/zkmirror.toml", "the installed settings file of the deploy section"),
    ("zkmirror verify --config /etc/zkmirror/zkmirror.toml", "the installed settings file of the deploy section"),
];

/// Example lines whose documented answer is not 0.
const EXPECTED_CODES: &[(&str, i32)] = &[
    // The shared-prefix example: no mirror has written `cfg:mirror`, so NOT OK.
    ("zkmirror status --prefix cfg", 1),
];

/// One example line, split as a shell would (quotes, a trailing comment, `> FILE`, `&`).
#[derive(Debug)]
struct Example {
    /// The words, `zkmirror` first; joined by spaces, the line's key in the tables above.
    words: Vec<String>,
    stdout_to: Option<String>,
    background: bool,
}

impl Example {
    fn key(&self) -> String {
        self.words.join(" ")
    }
}

/// Shell words of `line` up to an unquoted `#` that starts a word.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            (None, '#') if word.is_none() => break,
            (None, c) if c.is_whitespace() => words.extend(word.take()),
            (None, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

fn parse(line: &str) -> Example {
    let mut words = shell_words(line);
    let background = words.last().is_some_and(|w| w == "&");
    if background {
        words.pop();
    }
    let mut stdout_to = None;
    if let Some(at) = words.iter().position(|w| w == ">") {
        stdout_to = words.get(at + 1).cloned();
        words.truncate(at);
    }
    Example { words, stdout_to, background }
}

/// The README's example lines, in order.
fn examples(readme: &str) -> Vec<Example> {
    let mut found = Vec::new();
    let mut fence: Option<String> = None;
    for line in readme.lines() {
        if let Some(tag) = line.strip_prefix("```") {
            fence = match fence {
                None => Some(tag.trim().to_owned()),
                Some(_) => None,
            };
            continue;
        }
        let Some(tag) = &fence else { continue };
        let command = match line.strip_prefix("$ ") {
            Some(rest) if rest.starts_with("zkmirror ") => rest,
            _ if tag == "sh" && line.starts_with("zkmirror ") => line,
            _ => continue,
        };
        found.push(parse(command));
    }
    found
}

#[test]
fn example_lines_are_split_as_a_shell_would() {
    let e = parse("zkmirror get /app/certs/ca-fingerprint.sha256 > fingerprint.bin   # bytes as they are");
    assert_eq!(e.key(), "zkmirror get /app/certs/ca-fingerprint.sha256");
    assert_eq!(e.stdout_to.as_deref(), Some("fingerprint.bin"));
    let e = parse("zkmirror run --root '/a b' &    # the mirror");
    assert_eq!((e.words[3].as_str(), e.background), ("/a b", true));
    let readme = "```sh\nzkmirror ls /x   # c\nscripts/servers start\n```\n```\n$ zkmirror get /y\nout\n```\n\
                  ```\nzkmirror verify  --zk .. (a synopsis)\n```\n";
    let keys: Vec<String> = examples(readme).iter().map(Example::key).collect();
    assert_eq!(keys, ["zkmirror ls /x", "zkmirror get /y"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_readme_example_runs_as_written() {
    let all = examples(README);
    let keys: Vec<String> = all.iter().map(Example::key).collect();
    for (line, _) in NOT_RUN {
        assert!(keys.iter().any(|k| k == line), "NOT_RUN names a line the README no longer has: {line}");
    }
    for (line, _) in EXPECTED_CODES {
        assert!(keys.iter().any(|k| k == line), "EXPECTED_CODES names a line the README no longer has: {line}");
    }

    // A ZooKeeper of its own: the examples work at /app, not below a test root.
    let zk = ZkServer::start();
    let redis = RedisServer::start();
    let scratch = tempfile::tempdir().expect("tempdir");
    common::copy_dir(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures")), &scratch.path().join("fixtures"));

    let mut seen = std::collections::HashSet::new();
    let mut background = Vec::new();
    let mut ran = 0;
    for example in &all {
        let key = example.key();
        if NOT_RUN.iter().any(|(line, _)| *line == key) || !seen.insert(key.clone()) {
            continue;
        }
        eprintln!("[readme] {key}{}", if example.background { " &" } else { "" });
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_zkmirror"));
        command.args(&example.words[1..]).current_dir(scratch.path()).stdin(Stdio::null()).kill_on_drop(true);
        for var in ["ZKMIRROR_ROOT", "ZKMIRROR_PREFIX", "ZKMIRROR_ZK_AUTH", "ZKMIRROR_CONFIG", "RUST_LOG", "NO_COLOR"] {
            command.env_remove(var);
        }
        command.env("ZKMIRROR_ZK", zk.connect_string()).env("ZKMIRROR_REDIS", redis.url());
        if example.background {
            let log = scratch.path().join(format!("background-{}.log", background.len()));
            let file = std::fs::File::create(&log).expect("log file");
            let child = command.stdout(Stdio::null()).stderr(file).spawn().expect("starting zkmirror");
            wait_until(Duration::from_secs(120), &format!("`{key}` logs cold sync done"), || async {
                let text = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
                if text.contains("cold sync done") {
                    Ok(())
                } else {
                    Err(text)
                }
            })
            .await;
            background.push((key, child, log));
            ran += 1;
            continue;
        }
        let stdout = match &example.stdout_to {
            Some(file) => Stdio::from(std::fs::File::create(scratch.path().join(file)).expect("redirect target")),
            None => Stdio::piped(),
        };
        let output = command.stdout(stdout).stderr(Stdio::piped()).output().await.expect("running zkmirror");
        let want = EXPECTED_CODES.iter().find(|(line, _)| *line == key).map_or(0, |(_, code)| *code);
        assert_eq!(
            output.status.code(),
            Some(want),
            "README example `{key}`\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        ran += 1;
    }
    assert!(background.iter().any(|(key, ..)| key.starts_with("zkmirror run ")), "no example starts the mirror");
    for (key, mut child, log) in background {
        let pid = child.id().expect("background example still running") as i32;
        // SAFETY: a plain kill(2) of a child this test spawned and has not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await.expect("stops").expect("wait");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(status.code(), Some(0), "`{key}` after SIGTERM; its log:\n{text}");
    }
    assert!(ran >= 10, "only {ran} README examples ran: is the extraction still finding them?");
}

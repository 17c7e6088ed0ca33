//! The Redis contract: every key name and every Lua script the mirror uses.
//!
//! This module mirrors `schema/layout.md` and is the only place in `src/` that spells a key or a
//! field of the status hash ([`status_field`]).
//! For a znode at absolute path `PATH` and prefix `P`:
//!
//! | key                   | type   | holds                                   |
//! |-----------------------|--------|-----------------------------------------|
//! | `P:{PATH}`            | STRING | the data bytes                          |
//! | `P:{PATH}:meta`       | HASH   | the whole `Stat` plus `mirrored_at`     |
//! | `P:{PATH}:children`   | SET    | child names (absent when none)          |
//! | `P:{PATH}:tomb`       | STRING | tombstone zxid (`T@E` from history 1)   |
//! | `P:mirror`            | HASH   | the mirror's status                     |
//! | `P:fence:{T}`         | STRING | the newest leader's token, per hash slot |
//! | `P:changes`           | STREAM | one entry per applied change            |
//!
//! Why the layout is unambiguous although a path may contain `:`, `{`, `}`: every znode key
//! starts with `P:{` and ends with exactly one of `}`, `}:meta`, `}:children`, `}:tomb`. None of
//! the suffixes ends in `}`, so the end of a key alone says its kind, and the path is what lies
//! between the fixed start and that suffix. `P:mirror` and `P:changes` never start with `P:{`
//! (and the prefix itself may not contain braces).

use redis::Script;

/// The Lua scripts, loaded from `schema/` so that the documented text is the running text.
pub struct Scripts {
    /// Writes one znode (data, meta, children) unless the stored copy is newer or tombstoned.
    pub put: Script,
    /// `put` for several znodes in one call, each judged as `put` would: one Redis (or a
    /// Sentinel primary) only, since the znodes' keys lie in different cluster slots.
    pub put_batch: Script,
    /// Removes one znode's keys and leaves a tombstone (or hides it, without one).
    pub delete: Script,
    /// Raises `P:mirror` `zxid`, never lowers it.
    pub advance_zxid: Script,
    /// Writes status fields and says whether the status hash existed before: Redis loss.
    pub status: Script,
    /// Raises one slot's fence to a new leader's token.
    pub fence: Script,
    /// One change-stream entry, fenced in the stream's slot: behind a cluster, where the znode
    /// scripts cannot reach the stream.
    pub append: Script,
    /// Each script's file name, hash and text as loaded, in [`Scripts::all`]'s order: Redis names
    /// a script in an error only by hash and line (`script: SHA, on @user_script:LINE`), and an
    /// operator needs the command on that line (an ACL that refuses it, say).
    sources: [(&'static str, String, String); 7],
}

/// What every script shares (`cmp`, the fence check), prepended to each.
const COMMON: &str = include_str!("../schema/common.lua");

fn with_common(body: &str) -> String {
    format!("{COMMON}\n{body}")
}

impl Scripts {
    pub fn load() -> Scripts {
        let texts = [
            ("put.lua", with_common(include_str!("../schema/put.lua"))),
            ("put_batch.lua", with_common(include_str!("../schema/put_batch.lua"))),
            ("delete.lua", with_common(include_str!("../schema/delete.lua"))),
            ("advance_zxid.lua", with_common(include_str!("../schema/advance_zxid.lua"))),
            ("status.lua", with_common(include_str!("../schema/status.lua"))),
            ("fence.lua", with_common(include_str!("../schema/fence.lua"))),
            ("append.lua", with_common(include_str!("../schema/append.lua"))),
        ];
        let [put, put_batch, delete, advance_zxid, status, fence, append] =
            texts.each_ref().map(|(_, text)| Script::new(text));
        let sources = texts.map(|(name, text)| {
            let hash = Script::new(&text).get_hash().to_owned();
            (name, hash, text)
        });
        Scripts { put, put_batch, delete, advance_zxid, status, fence, append, sources }
    }

    pub fn all(&self) -> [&Script; 7] {
        [&self.put, &self.put_batch, &self.delete, &self.advance_zxid, &self.status, &self.fence, &self.append]
    }

    /// The script with hash `sha` and line `line` (1-based) of its text as loaded (the shared
    /// `common.lua` first): `("put.lua", "redis.call('XADD', ...")`, trimmed.
    pub fn line(&self, sha: &str, line: usize) -> Option<(&'static str, &str)> {
        let (name, _, text) = self.sources.iter().find(|(_, hash, _)| hash.eq_ignore_ascii_case(sha))?;
        Some((name, text.lines().nth(line.checked_sub(1)?)?.trim()))
    }
}

/// What a znode key holds, told by its suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Data,
    Meta,
    Children,
    Tomb,
}

impl KeyKind {
    const SUFFIXES: [(KeyKind, &'static str); 4] =
        [(KeyKind::Meta, "}:meta"), (KeyKind::Children, "}:children"), (KeyKind::Tomb, "}:tomb"), (KeyKind::Data, "}")];

    fn suffix(self) -> &'static str {
        match self {
            KeyKind::Data => "}",
            KeyKind::Meta => "}:meta",
            KeyKind::Children => "}:children",
            KeyKind::Tomb => "}:tomb",
        }
    }
}

/// The field names of `P:{PATH}:meta`, in the order of ZooKeeper's `Stat`.
pub const STAT_FIELDS: [&str; 11] = [
    "czxid",
    "mzxid",
    "pzxid",
    "ctime",
    "mtime",
    "version",
    "cversion",
    "aversion",
    "ephemeral_owner",
    "data_length",
    "num_children",
];

/// The fields of the status hash (`P:mirror`, and `P:mirror:{ROOT}` when roots share a prefix),
/// as the `P:mirror` section of `schema/layout.md` names them.
///
/// Why one place: the engine writes them, the service writes the aggregate and reads each
/// root's, the reader and `zkmirror status` read them; a field renamed in one of those and not
/// the others would be a silent break of the public contract. The Lua scripts cannot import
/// these: `advance_zxid.lua` spells [`ZXID`](status_field::ZXID) itself.
pub mod status_field {
    /// The phase: `syncing`, `live`, `reconciling`, `degraded`, `stopped`.
    pub const STATE: &str = "state";
    /// The watermark: every change under the root with a zxid at or below it is in the keys.
    pub const ZXID: &str = "zxid";
    /// Unix ms of the last status write.
    pub const HEARTBEAT: &str = "heartbeat";
    /// The mirrored root (the aggregate: the roots joined with `,`).
    pub const ROOT: &str = "root";
    /// The aggregate only: the roots sharing the prefix, joined with `,`.
    pub const ROOTS: &str = "roots";
    /// Unix ms the mirror process started.
    pub const STARTED_AT: &str = "started_at";
    /// zkmirror's version.
    pub const VERSION: &str = "version";
    /// With `--ha`: the leading instance's name.
    pub const LEADER: &str = "leader";
    /// With `--ha`: unix ms at which it became leader.
    pub const LEADER_SINCE: &str = "leader_since";
    /// With `--ha`: its fencing token.
    pub const FENCE: &str = "fence";
    /// The history `zxid` belongs to (absent = 0); raised when ZooKeeper went back.
    pub const EPOCH: &str = "epoch";
    /// The last history reset: unix ms, the claim Redis held, the highest zxid ZooKeeper had.
    pub const HISTORY_RESET_AT: &str = "history_reset_at";
    pub const HISTORY_RESET_REDIS_ZXID: &str = "history_reset_redis_zxid";
    pub const HISTORY_RESET_ZOOKEEPER_ZXID: &str = "history_reset_zookeeper_zxid";

    /// Every field, for the check against `schema/layout.md`.
    #[cfg(test)]
    pub const ALL: [&str; 14] = [
        STATE,
        ZXID,
        HEARTBEAT,
        ROOT,
        ROOTS,
        STARTED_AT,
        VERSION,
        LEADER,
        LEADER_SINCE,
        FENCE,
        EPOCH,
        HISTORY_RESET_AT,
        HISTORY_RESET_REDIS_ZXID,
        HISTORY_RESET_ZOOKEEPER_ZXID,
    ];
}

/// Builds (and parses) the key names of one prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// `prefix` must already be validated (see [`crate::config::validate_prefix`]).
    pub fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.to_owned() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn znode(&self, kind: KeyKind, path: &str) -> String {
        let suffix = kind.suffix();
        let mut key = String::with_capacity(self.prefix.len() + 2 + path.len() + suffix.len());
        key.push_str(&self.prefix);
        key.push_str(":{");
        key.push_str(path);
        key.push_str(suffix);
        key
    }

    pub fn data(&self, path: &str) -> String {
        self.znode(KeyKind::Data, path)
    }

    pub fn meta(&self, path: &str) -> String {
        self.znode(KeyKind::Meta, path)
    }

    pub fn children(&self, path: &str) -> String {
        self.znode(KeyKind::Children, path)
    }

    pub fn tomb(&self, path: &str) -> String {
        self.znode(KeyKind::Tomb, path)
    }

    /// `P:mirror`, the status hash.
    pub fn status(&self) -> String {
        format!("{}:mirror", self.prefix)
    }

    /// `P:mirror:{ROOT}`: one root's status when several roots share the prefix.
    pub fn root_status(&self, root: &str) -> String {
        format!("{}:mirror:{{{}}}", self.prefix, root)
    }

    /// `P:fence:{T}`, the fence key in the hash slot of `key` (see [`crate::fence`]).
    pub fn fence_for(&self, key: &str) -> String {
        crate::fence::fence_key_for(&self.prefix, key)
    }

    /// The fence key of hash slot `slot`.
    pub fn fence(&self, slot: usize) -> String {
        crate::fence::fence_key(&self.prefix, slot)
    }

    /// `P:changes`, the change stream.
    pub fn changes(&self) -> String {
        format!("{}:changes", self.prefix)
    }

    /// A `SCAN MATCH` pattern for every key under this prefix, inside the layout or not.
    pub fn prefix_pattern(&self) -> String {
        format!("{}:*", glob_escape(&self.prefix))
    }

    /// A `SCAN MATCH` pattern for every znode key at or below `root` (and, since a glob cannot
    /// say "a slash or the end", also of siblings sharing its spelling: callers filter with
    /// [`crate::path::is_within`]).
    pub fn scan_pattern(&self, root: &str) -> String {
        let mut pattern = glob_escape(&self.prefix);
        pattern.push_str(":\\{");
        pattern.push_str(&glob_escape(root));
        pattern.push('*');
        pattern
    }

    /// Which znode and which kind a key names; `None` for keys outside the znode layout.
    pub fn parse<'k>(&self, key: &'k str) -> Option<(KeyKind, &'k str)> {
        let rest = key.strip_prefix(self.prefix.as_str())?.strip_prefix(":{")?;
        KeyKind::SUFFIXES.iter().find_map(|(kind, suffix)| {
            let path = rest.strip_suffix(suffix)?;
            path.starts_with('/').then_some((*kind, path))
        })
    }
}

/// Escapes the characters that `SCAN MATCH` treats as glob syntax.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '{' | '}' | '^' | '-') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        let keys = Keys::new("zk");
        assert_eq!(keys.data("/app/db/url"), "zk:{/app/db/url}");
        assert_eq!(keys.meta("/app"), "zk:{/app}:meta");
        assert_eq!(keys.children("/app"), "zk:{/app}:children");
        assert_eq!(keys.tomb("/app"), "zk:{/app}:tomb");
        assert_eq!(keys.status(), "zk:mirror");
        assert_eq!(keys.root_status("/app"), "zk:mirror:{/app}");
        assert_eq!(keys.parse("zk:mirror:{/app}"), None);
        assert_eq!(keys.changes(), "zk:changes");
    }

    #[test]
    fn parsing_is_unambiguous_for_awkward_names() {
        let keys = Keys::new("zk");
        let awkward = ["/a}:meta", "/a}", "/{x}", "/a:b c/ü}:children", "/a}:tomb}", "/"];
        for path in awkward {
            for kind in [KeyKind::Data, KeyKind::Meta, KeyKind::Children, KeyKind::Tomb] {
                let key = keys.znode(kind, path);
                assert_eq!(keys.parse(&key), Some((kind, path)), "key {key:?}");
            }
        }
        assert_eq!(keys.parse("zk:mirror"), None);
        assert_eq!(keys.parse("zk:changes"), None);
        assert_eq!(keys.parse("other:{/a}"), None);
    }

    /// The one spelling of each status field is the documented one: a rename here that the
    /// layout (the public contract) does not share fails.
    #[test]
    fn status_fields_are_the_documented_ones() {
        let layout = include_str!("../schema/layout.md");
        let section = layout.split("## `P:mirror`").nth(1).and_then(|s| s.split("\n## ").next()).unwrap_or("");
        for field in status_field::ALL {
            assert!(section.contains(&format!("`{field}`")), "{field} is not in layout.md's P:mirror section");
        }
    }

    #[test]
    fn a_script_error_line_names_the_script_and_its_command() {
        let scripts = Scripts::load();
        let sha = scripts.put.get_hash().to_owned();
        let common = COMMON.lines().count();
        let (name, first) = scripts.line(&sha, common + 2).expect("a line of put.lua");
        assert_eq!(name, "put.lua");
        assert_eq!(first, include_str!("../schema/put.lua").lines().next().unwrap_or_default().trim());
        assert_eq!(scripts.line(&sha.to_uppercase(), 1).map(|(n, _)| n), Some("put.lua"));
        assert_eq!(scripts.line("0000", 1), None);
        assert_eq!(scripts.line(&sha, 0), None);
        assert_eq!(scripts.line(&sha, 100_000), None);
    }

    #[test]
    fn scan_pattern_escapes_glob_syntax() {
        let keys = Keys::new("zk");
        assert_eq!(keys.scan_pattern("/a*b"), "zk:\\{/a\\*b*");
    }
}

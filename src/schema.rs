//! The Redis contract: every key name and every Lua script the mirror uses.
//!
//! This module mirrors `schema/layout.md` and is the only place in `src/` that spells a key.
//! For a znode at absolute path `PATH` and prefix `P`:
//!
//! | key                   | type   | holds                                   |
//! |-----------------------|--------|-----------------------------------------|
//! | `P:{PATH}`            | STRING | the data bytes                          |
//! | `P:{PATH}:meta`       | HASH   | the whole `Stat` plus `mirrored_at`     |
//! | `P:{PATH}:children`   | SET    | child names (absent when none)          |
//! | `P:{PATH}:tomb`       | STRING | tombstone zxid (`T@E` from history 1)   |
//! | `P:mirror`            | HASH   | the mirror's status                     |
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
    /// Removes one znode's keys and leaves a tombstone (or hides it, without one).
    pub delete: Script,
    /// Raises `P:mirror` `zxid`, never lowers it.
    pub advance_zxid: Script,
    /// Writes status fields and says whether the status hash existed before: Redis loss.
    pub status: Script,
}

impl Scripts {
    pub fn load() -> Scripts {
        Scripts {
            put: Script::new(include_str!("../schema/put.lua")),
            delete: Script::new(include_str!("../schema/delete.lua")),
            advance_zxid: Script::new(include_str!("../schema/advance_zxid.lua")),
            status: Script::new(include_str!("../schema/status.lua")),
        }
    }

    pub fn all(&self) -> [&Script; 4] {
        [&self.put, &self.delete, &self.advance_zxid, &self.status]
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

    #[test]
    fn scan_pattern_escapes_glob_syntax() {
        let keys = Keys::new("zk");
        assert_eq!(keys.scan_pattern("/a*b"), "zk:\\{/a\\*b*");
    }
}

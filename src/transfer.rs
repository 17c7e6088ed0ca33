//! Moving whole trees in and out of ZooKeeper: `import` writes a tree under a root, `export`
//! dumps a subtree. A tree lives on disk in one of two forms:
//!
//! - a **directory**: a file is a znode whose data is the file's bytes; a folder is a znode
//!   whose children are its entries. A folder's own data, when it has any, is the file
//!   `.data` inside it (so `.data` cannot be a znode name in this form).
//! - a **tree file**: one JSON file holding the whole subtree, one line per znode
//!   (`schema/tree-format.md`).
//!
//! Both forms hold data and shape only: no ACLs, versions or timestamps. Ephemeral znodes are
//! left out of an export (they belong to a live session, not to configuration).
//!
//! Architecture invariants: import never deletes a znode and never writes outside its root
//! (except creating the root's missing ancestors, empty, as `mkdir -p` would); an import of a
//! tree ZooKeeper already holds writes nothing; export never deletes a file. Every write to
//! ZooKeeper is conditional (create fails if the znode appeared, update names the version it
//! read), so a concurrent change makes the import stop with an error instead of overwriting it.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use std::future::Future;
use std::pin::Pin;

use futures::stream::{FuturesOrdered, StreamExt};
use futures::TryFutureExt;
use serde::Deserialize;
use zookeeper_client::{Acls, Client, CreateMode, Error as ZkClientError};

use crate::error::ZkError;
use crate::path;
use crate::zkwalk;
use crate::znode::Fetched;

/// The file inside a folder that holds the folder znode's own data.
pub const DATA_FILE: &str = ".data";
/// The tree file's format marker: the key and the version it carries.
pub const TREE_FORMAT_KEY: &str = "zkmirror-tree";
pub const TREE_FORMAT_VERSION: u64 = 1;

/// ZooKeeper's own subtree (config, quotas): never exported as part of `/`.
const ZOOKEEPER_SYSTEM: &str = "/zookeeper";

/// ZooKeeper requests kept in flight at once (one session answers in order).
const WINDOW: usize = 256;

/// What stops an import or an export. Each names the file or znode it concerns.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("cannot read {}: {source}", file.display())]
    ReadFile { file: PathBuf, source: io::Error },
    #[error("cannot write {}: {source}", file.display())]
    WriteFile { file: PathBuf, source: io::Error },
    #[error("{}: {why}", file.display())]
    BadSource { file: PathBuf, why: String },
    #[error("{}: not valid tree-file JSON: {source} (see schema/tree-format.md)", file.display())]
    BadTreeFile { file: PathBuf, source: serde_json::Error },
    #[error("bad path {path:?}: {why}")]
    BadPath { path: String, why: String },
    #[error("{path}: cannot be written as a directory: {why}; export to a tree file instead (--out FILE.json)")]
    NotRepresentable { path: String, why: String },
    #[error("{} already holds {what}, which the export would not write: {}; export into an empty directory or one that holds an earlier export of the same subtree", dir.display(), .entries.join(", "))]
    DirNotOurs { dir: PathBuf, what: &'static str, entries: Vec<String> },
    #[error("no znode {path} in ZooKeeper")]
    NoSuchZnode { path: String },
    #[error("cannot read {path} from ZooKeeper: {source}")]
    ZkRead { path: String, source: ZkClientError },
    /// A read of the export's walk failed (it names the path).
    #[error(transparent)]
    Zk(#[from] ZkError),
    #[error("cannot {action} {path} in ZooKeeper: {source}{hint}")]
    ZkWrite { action: &'static str, path: String, source: ZkClientError, hint: &'static str },
}

/// A tree of znodes: data by path relative to the tree's top. The top itself is `/`, its
/// children `/name`, and so on. Every ancestor of a path in the tree is in the tree too.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    nodes: BTreeMap<String, Vec<u8>>,
}

impl Tree {
    /// A tree holding only its (empty) top.
    pub fn new() -> Tree {
        let mut nodes = BTreeMap::new();
        nodes.insert("/".to_owned(), Vec::new());
        Tree { nodes }
    }

    /// Sets the data of `relative` (a valid path, `/` being the top), adding its missing
    /// ancestors with empty data.
    pub fn insert(&mut self, relative: &str, data: Vec<u8>) {
        let mut ancestor = path::parent(relative);
        while let Some(a) = ancestor {
            self.nodes.entry(a.to_owned()).or_default();
            ancestor = path::parent(a);
        }
        self.nodes.insert(relative.to_owned(), data);
    }

    /// Every znode, parents before their children.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.nodes.iter().map(|(p, d)| (p.as_str(), d.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether `relative` has children in the tree.
    pub fn has_children(&self, relative: &str) -> bool {
        if relative == "/" {
            return self.nodes.len() > 1;
        }
        let below = format!("{relative}/");
        self.nodes.range(below.clone()..).next().is_some_and(|(p, _)| p.starts_with(&below))
    }
}

/// The absolute ZooKeeper path of `relative` when the tree's top is placed at `root`.
pub fn absolute(root: &str, relative: &str) -> String {
    match (root, relative) {
        (_, "/") => root.to_owned(),
        ("/", _) => relative.to_owned(),
        _ => format!("{root}{relative}"),
    }
}

/// Checks one znode name the way the ZooKeeper server does (plus: not empty, no `/`).
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a znode name must not be empty".into());
    }
    if name == "." || name == ".." {
        return Err("'.' and '..' are not znode names".into());
    }
    if name.contains('/') {
        return Err("a znode name must not contain '/'".into());
    }
    let refused = |c: char| matches!(c, '\0'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{e000}'..='\u{f8ff}' | '\u{fff0}'..='\u{ffff}');
    if let Some(c) = name.chars().find(|c| refused(*c)) {
        return Err(format!("ZooKeeper refuses the character {c:?} in names"));
    }
    Ok(())
}

fn validate_relative(relative: &str) -> Result<(), String> {
    if relative == "/" {
        return Ok(());
    }
    let Some(rest) = relative.strip_prefix('/') else {
        return Err("it must start with '/' (the tree's top is \"/\")".into());
    };
    rest.split('/').try_for_each(validate_name)
}

// ---------------------------------------------------------------------------------------------
// Reading and writing the two file forms
// ---------------------------------------------------------------------------------------------

/// Reads a tree from `source`: a directory, or else a tree file.
pub fn read_source(source: &Path) -> Result<Tree, TransferError> {
    let meta = fs::metadata(source).map_err(|e| TransferError::ReadFile { file: source.to_owned(), source: e })?;
    if meta.is_dir() {
        read_dir(source)
    } else {
        let text =
            fs::read_to_string(source).map_err(|e| TransferError::ReadFile { file: source.to_owned(), source: e })?;
        parse_tree_file(&text, source)
    }
}

/// Reads the directory form. The directory itself is the tree's top.
pub fn read_dir(dir: &Path) -> Result<Tree, TransferError> {
    let mut tree = Tree::new();
    read_folder(dir, "/", &mut tree)?;
    Ok(tree)
}

fn read_folder(folder: &Path, relative: &str, tree: &mut Tree) -> Result<(), TransferError> {
    let read_error = |file: &Path, e: io::Error| TransferError::ReadFile { file: file.to_owned(), source: e };
    let mut entries: Vec<fs::DirEntry> = fs::read_dir(folder)
        .map_err(|e| read_error(folder, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| read_error(folder, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let file = entry.path();
        let bad = |why: String| TransferError::BadSource { file: file.clone(), why };
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            return Err(bad("the file name is not UTF-8, so it cannot be a znode name".into()));
        };
        let file_type = entry.file_type().map_err(|e| read_error(&file, e))?;
        // Symbolic links to files are followed; links to folders are not (they could loop).
        let is_link = file_type.is_symlink();
        let meta = fs::metadata(&file).map_err(|e| read_error(&file, e))?;
        if name == DATA_FILE {
            if !meta.is_file() {
                return Err(bad(format!("{DATA_FILE} holds its folder's data and must be a file")));
            }
            let data = fs::read(&file).map_err(|e| read_error(&file, e))?;
            tree.insert(relative, data);
            continue;
        }
        validate_name(&name).map_err(bad)?;
        let child = path::child(relative, &name);
        if meta.is_file() {
            let data = fs::read(&file).map_err(|e| read_error(&file, e))?;
            tree.insert(&child, data);
        } else if meta.is_dir() && !is_link {
            tree.nodes.entry(child.clone()).or_default();
            read_folder(&file, &child, tree)?;
        } else if meta.is_dir() {
            return Err(bad("a symbolic link to a folder is not followed; copy the folder instead".into()));
        } else {
            return Err(bad("neither a file nor a folder".into()));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TreeFile {
    #[serde(rename = "zkmirror-tree")]
    format: u64,
    znodes: BTreeMap<String, TreeFileData>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TreeFileData {
    Text(String),
    Encoded { base64: String },
}

/// Parses the tree-file form; `file` only names the source in errors.
pub fn parse_tree_file(text: &str, file: &Path) -> Result<Tree, TransferError> {
    let bad = |why: String| TransferError::BadSource { file: file.to_owned(), why };
    let parsed: TreeFile =
        serde_json::from_str(text).map_err(|source| TransferError::BadTreeFile { file: file.to_owned(), source })?;
    if parsed.format != TREE_FORMAT_VERSION {
        return Err(bad(format!(
            "\"{TREE_FORMAT_KEY}\": {} is not a format this zkmirror reads (it reads {TREE_FORMAT_VERSION})",
            parsed.format
        )));
    }
    let mut tree = Tree::new();
    for (relative, data) in parsed.znodes {
        validate_relative(&relative).map_err(|why| bad(format!("znode {relative:?}: {why}")))?;
        let data = match data {
            TreeFileData::Text(text) => text.into_bytes(),
            TreeFileData::Encoded { base64 } => base64::engine::general_purpose::STANDARD
                .decode(base64.as_bytes())
                .map_err(|e| bad(format!("znode {relative:?}: bad base64: {e}")))?,
        };
        tree.insert(&relative, data);
    }
    Ok(tree)
}

/// Renders the tree-file form: sorted, one znode per line, data as a JSON string when it is
/// UTF-8 and as `{"base64": ...}` otherwise. The same tree always renders to the same text.
pub fn render_tree_file(tree: &Tree) -> String {
    let mut out = format!("{{\n  \"{TREE_FORMAT_KEY}\": {TREE_FORMAT_VERSION},\n  \"znodes\": {{\n");
    let last = tree.len().saturating_sub(1);
    for (i, (relative, data)) in tree.iter().enumerate() {
        let key = serde_json::Value::String(relative.to_owned());
        let value = match std::str::from_utf8(data) {
            Ok(text) => serde_json::Value::String(text.to_owned()).to_string(),
            Err(_) => format!(
                "{{\"base64\": {}}}",
                serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(data))
            ),
        };
        let comma = if i == last { "" } else { "," };
        out.push_str(&format!("    {key}: {value}{comma}\n"));
    }
    out.push_str("  }\n}\n");
    out
}

/// What writing a tree to disk did (or, in a dry run, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskOutcome {
    /// Files written (or that would be) because they were absent or differed.
    pub written: Vec<PathBuf>,
    /// Files already identical.
    pub unchanged: u64,
}

/// Writes the tree file to `file` unless it already holds exactly that text.
pub fn write_tree_file(tree: &Tree, file: &Path, dry_run: bool) -> Result<DiskOutcome, TransferError> {
    let text = render_tree_file(tree);
    write_if_different(file, text.as_bytes(), dry_run)
}

fn write_if_different(file: &Path, bytes: &[u8], dry_run: bool) -> Result<DiskOutcome, TransferError> {
    match fs::read(file) {
        Ok(existing) if existing == bytes => return Ok(DiskOutcome { written: Vec::new(), unchanged: 1 }),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(TransferError::ReadFile { file: file.to_owned(), source: e }),
    }
    if !dry_run {
        // Write beside the target, then rename: a reader never sees half a file.
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let temp = file.with_file_name(format!(".{name}.zkmirror-tmp"));
        let write_error = |e: io::Error| TransferError::WriteFile { file: file.to_owned(), source: e };
        fs::write(&temp, bytes).map_err(write_error)?;
        fs::rename(&temp, file).map_err(write_error)?;
    }
    Ok(DiskOutcome { written: vec![file.to_owned()], unchanged: 0 })
}

/// Writes the directory form into `dir` (created if missing), which becomes the tree's top.
///
/// Export never deletes a file: when `dir` already holds something the tree would not write
/// (a stale file, a file where a folder belongs), nothing is written and the error lists it.
/// Files already identical are not rewritten.
pub fn write_dir(tree: &Tree, dir: &Path, dry_run: bool) -> Result<DiskOutcome, TransferError> {
    // The plan: every folder and every file, by path relative to `dir`.
    let mut folders: Vec<PathBuf> = vec![PathBuf::new()];
    let mut files: Vec<(PathBuf, &[u8])> = Vec::new();
    for (relative, data) in tree.iter() {
        let on_disk: PathBuf = relative.split('/').filter(|s| !s.is_empty()).collect();
        if path::name(relative) == DATA_FILE {
            return Err(TransferError::NotRepresentable {
                path: relative.to_owned(),
                why: format!("{DATA_FILE} is the name that holds a folder's own data"),
            });
        }
        if relative == "/" || tree.has_children(relative) {
            if relative != "/" {
                folders.push(on_disk.clone());
            }
            if !data.is_empty() {
                files.push((on_disk.join(DATA_FILE), data));
            }
        } else {
            files.push((on_disk, data));
        }
    }
    check_dir_is_ours(dir, &folders, &files)?;
    let mut outcome = DiskOutcome::default();
    for folder in &folders {
        let full = dir.join(folder);
        if !dry_run && !full.is_dir() {
            fs::create_dir_all(&full).map_err(|e| TransferError::WriteFile { file: full.clone(), source: e })?;
        }
    }
    for (file, data) in files {
        let one = write_if_different(&dir.join(file), data, dry_run)?;
        outcome.written.extend(one.written);
        outcome.unchanged += one.unchanged;
    }
    Ok(outcome)
}

/// Refuses a `dir` holding entries the plan would not write, or of the wrong kind.
fn check_dir_is_ours(dir: &Path, folders: &[PathBuf], files: &[(PathBuf, &[u8])]) -> Result<(), TransferError> {
    use std::collections::HashSet;
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(TransferError::DirNotOurs { dir: dir.to_owned(), what: "a file", entries: vec![".".into()] })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(TransferError::ReadFile { file: dir.to_owned(), source: e }),
    }
    let folder_set: HashSet<&Path> = folders.iter().map(PathBuf::as_path).collect();
    let file_set: HashSet<&Path> = files.iter().map(|(f, _)| f.as_path()).collect();
    let mut foreign: Vec<String> = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(folder) = pending.pop() {
        let full = dir.join(&folder);
        let entries = fs::read_dir(&full).map_err(|e| TransferError::ReadFile { file: full.clone(), source: e })?;
        for entry in entries {
            let entry = entry.map_err(|e| TransferError::ReadFile { file: full.clone(), source: e })?;
            let relative = folder.join(entry.file_name());
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && folder_set.contains(relative.as_path()) {
                pending.push(relative);
            } else if !is_dir && file_set.contains(relative.as_path()) {
            } else {
                foreign.push(relative.display().to_string());
            }
        }
    }
    if foreign.is_empty() {
        return Ok(());
    }
    foreign.sort();
    let more = foreign.len().saturating_sub(5);
    foreign.truncate(5);
    if more > 0 {
        foreign.push(format!("and {more} more"));
    }
    Err(TransferError::DirNotOurs { dir: dir.to_owned(), what: "entries", entries: foreign })
}

// ---------------------------------------------------------------------------------------------
// ZooKeeper: export (read a subtree) and import (plan, then apply)
// ---------------------------------------------------------------------------------------------

/// A subtree as read from ZooKeeper.
#[derive(Clone, Debug, Default)]
pub struct Exported {
    pub tree: Tree,
    /// Ephemeral znodes found and left out.
    pub ephemeral_skipped: Vec<String>,
}

/// Reads the subtree at `top` (data and shape). Fails on a znode the session may not read:
/// an export that silently missed part of the tree would look complete.
pub async fn export(zk: &Client, top: &str) -> Result<Exported, TransferError> {
    path::validate(top).map_err(|e| TransferError::BadPath { path: top.to_owned(), why: e.to_string() })?;
    let mut exported = Exported { tree: Tree::new(), ephemeral_skipped: Vec::new() };
    let mut walk = zkwalk::snapshots(zk, top);
    let mut found_top = false;
    while let Some((path, read)) = walk.next().await {
        match read? {
            Fetched::Present(znode) => {
                found_top |= path == top;
                if znode.stat.ephemeral_owner != 0 && path != top {
                    exported.ephemeral_skipped.push(path);
                    continue;
                }
                // ZooKeeper's own subtree is not configuration (it is exported only when asked
                // for by name, as the top).
                let children = znode.children.iter().filter(|c| path != "/" || path::child("/", c) != ZOOKEEPER_SYSTEM);
                walk.descend(&path, children);
                exported.tree.insert(&relative_to(top, &path), znode.data);
            }
            // Deleted while we walked: not part of the tree any more.
            Fetched::Absent { .. } if path != top => {}
            Fetched::Absent { .. } => return Err(TransferError::NoSuchZnode { path }),
            // An export that silently missed part of the tree would look complete.
            Fetched::Unreadable { .. } => {
                return Err(TransferError::ZkRead { path, source: ZkClientError::NoAuth });
            }
        }
    }
    if !found_top {
        return Err(TransferError::NoSuchZnode { path: top.to_owned() });
    }
    exported.ephemeral_skipped.sort();
    Ok(exported)
}

fn relative_to(top: &str, path: &str) -> String {
    if path == top {
        return "/".to_owned();
    }
    if top == "/" {
        return path.to_owned();
    }
    path[top.len()..].to_owned()
}

/// One write an import makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The znode is absent: create it (persistent, open ACL).
    Create { path: String, data: Vec<u8> },
    /// The znode holds other data: set it, if it is still at `version`.
    Update { path: String, data: Vec<u8>, old_len: usize, version: i32 },
}

impl Change {
    pub fn path(&self) -> &str {
        match self {
            Change::Create { path, .. } | Change::Update { path, .. } => path,
        }
    }
}

/// What an import would do, parents before children.
#[derive(Clone, Debug, Default)]
pub struct ImportPlan {
    pub root: String,
    pub changes: Vec<Change>,
    /// Znodes already holding exactly the tree's data.
    pub unchanged: u64,
}

impl ImportPlan {
    pub fn creates(&self) -> usize {
        self.changes.iter().filter(|c| matches!(c, Change::Create { .. })).count()
    }

    pub fn updates(&self) -> usize {
        self.changes.len() - self.creates()
    }
}

/// Compares `tree`, placed at `root`, with ZooKeeper and lists the writes that would make
/// ZooKeeper hold it. Reads only the tree's own paths (and the root's ancestors): znodes under
/// `root` that the tree does not name are not looked at, since import never deletes.
pub async fn plan_import(zk: &Client, root: &str, tree: &Tree) -> Result<ImportPlan, TransferError> {
    path::validate(root).map_err(|e| TransferError::BadPath { path: root.to_owned(), why: e.to_string() })?;
    let mut plan = ImportPlan { root: root.to_owned(), ..ImportPlan::default() };
    // The root's missing ancestors, top-down, created empty.
    let mut ancestors: Vec<&str> = std::iter::successors(path::parent(root), |p| path::parent(p)).collect();
    ancestors.reverse();
    for ancestor in ancestors.into_iter().filter(|a| *a != "/") {
        match zk.check_stat(ancestor).await {
            Ok(Some(_)) => {}
            Ok(None) => plan.changes.push(Change::Create { path: ancestor.to_owned(), data: Vec::new() }),
            Err(source) => return Err(TransferError::ZkRead { path: ancestor.to_owned(), source }),
        }
    }
    let targets: Vec<(String, &[u8])> = tree.iter().map(|(rel, data)| (absolute(root, rel), data)).collect();
    let mut reads = FuturesOrdered::new();
    let mut next = targets.iter();
    loop {
        while reads.len() < WINDOW {
            let Some((path, data)) = next.next() else { break };
            reads.push_back(async move { (path, *data, zk.get_data(path).await) });
        }
        let Some((path, data, read)) = reads.next().await else { break };
        match read {
            Ok((existing, _)) if existing == data => plan.unchanged += 1,
            Ok((existing, stat)) => plan.changes.push(Change::Update {
                path: path.clone(),
                data: data.to_vec(),
                old_len: existing.len(),
                version: stat.version,
            }),
            Err(ZkClientError::NoNode) => plan.changes.push(Change::Create { path: path.clone(), data: data.to_vec() }),
            Err(source) => return Err(TransferError::ZkRead { path: path.clone(), source }),
        }
    }
    Ok(plan)
}

/// Makes the plan's writes, in order, several in flight (one session applies them in the
/// order sent, so a parent is created before its children). Stops at the first failure,
/// after the writes already sent have answered; `applied` counts the ones that succeeded.
pub async fn apply_import(zk: &Client, plan: &ImportPlan) -> Result<u64, (u64, TransferError)> {
    let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
    let mut writes = FuturesOrdered::new();
    let mut next = plan.changes.iter();
    let mut applied = 0u64;
    let mut failure: Option<TransferError> = None;
    loop {
        while failure.is_none() && writes.len() < WINDOW {
            let Some(change) = next.next() else { break };
            // The request is sent by this call, not when the future is first polled: that is
            // what keeps the session's order equal to the plan's.
            let sent: Pin<Box<dyn Future<Output = Result<(), ZkClientError>> + Send + '_>> = match change {
                Change::Create { path, data } => Box::pin(zk.create(path, data, &options).map_ok(drop)),
                Change::Update { path, data, version, .. } => {
                    Box::pin(zk.set_data(path, data, Some(*version)).map_ok(drop))
                }
            };
            writes.push_back(async move { (change, sent.await) });
        }
        let Some((change, result)) = writes.next().await else { break };
        match result {
            Ok(()) => applied += 1,
            Err(source) if failure.is_none() => {
                let (action, hint) = match (change, &source) {
                    (Change::Create { .. }, ZkClientError::NodeExists) => {
                        ("create", ": someone created it meanwhile; run the import again")
                    }
                    (Change::Update { .. }, ZkClientError::BadVersion) => {
                        ("update", ": someone changed it meanwhile; run the import again")
                    }
                    (Change::Create { .. }, _) => ("create", ""),
                    (Change::Update { .. }, _) => ("update", ""),
                };
                failure = Some(TransferError::ZkWrite { action, path: change.path().to_owned(), source, hint });
            }
            Err(_) => {}
        }
    }
    match failure {
        None => Ok(applied),
        Some(error) => Err((applied, error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Tree {
        let mut tree = Tree::new();
        tree.insert("/", b"top".to_vec());
        tree.insert("/db/url", b"postgres://x".to_vec());
        tree.insert("/bin", vec![0, 159, 255, 10]);
        tree.insert("/with space/leaf", Vec::new());
        tree
    }

    #[test]
    fn insert_adds_ancestors_and_orders_parents_first() {
        let tree = sample();
        let paths: Vec<&str> = tree.iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["/", "/bin", "/db", "/db/url", "/with space", "/with space/leaf"]);
        assert!(tree.has_children("/db"));
        assert!(!tree.has_children("/db/url"));
        assert!(tree.has_children("/"));
    }

    #[test]
    fn tree_file_round_trips_text_and_binary() {
        let tree = sample();
        let text = render_tree_file(&tree);
        assert!(text.contains("    \"/db/url\": \"postgres://x\",\n"), "{text}");
        assert!(text.contains("\"/bin\": {\"base64\": \"AJ//Cg==\"}"), "{text}");
        let parsed = parse_tree_file(&text, Path::new("t.json")).expect("parses");
        assert_eq!(parsed, tree);
        assert_eq!(render_tree_file(&parsed), text);
    }

    #[test]
    fn tree_file_errors_name_the_file_and_entry() {
        let file = Path::new("conf/app.json");
        let bad_path = r#"{"zkmirror-tree": 1, "znodes": {"db/url": "x"}}"#;
        let e = parse_tree_file(bad_path, file).unwrap_err().to_string();
        assert!(e.contains("conf/app.json") && e.contains("\"db/url\""), "{e}");
        let bad_json = "{\"zkmirror-tree\": 1, \"znodes\": {\"/a\": 3}}";
        let e = parse_tree_file(bad_json, file).unwrap_err().to_string();
        assert!(e.contains("conf/app.json") && e.contains("line 1"), "{e}");
        let bad_version = r#"{"zkmirror-tree": 7, "znodes": {}}"#;
        assert!(parse_tree_file(bad_version, file).unwrap_err().to_string().contains("7"));
        let bad_b64 = r#"{"zkmirror-tree": 1, "znodes": {"/a": {"base64": "!!"}}}"#;
        assert!(parse_tree_file(bad_b64, file).unwrap_err().to_string().contains("base64"));
    }

    #[test]
    fn directory_form_round_trips_and_is_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("export");
        let tree = sample();
        let first = write_dir(&tree, &out, false).expect("writes");
        assert_eq!(first.unchanged, 0);
        assert_eq!(fs::read(out.join(DATA_FILE)).expect("top data"), b"top");
        assert_eq!(fs::read(out.join("db/url")).expect("leaf"), b"postgres://x");
        assert_eq!(read_dir(&out).expect("reads"), tree);
        let second = write_dir(&tree, &out, false).expect("writes again");
        assert!(second.written.is_empty(), "{second:?}");
        fs::write(out.join("stale"), b"x").expect("stale file");
        let e = write_dir(&tree, &out, false).unwrap_err().to_string();
        assert!(e.contains("stale"), "{e}");
    }

    #[test]
    fn names_zookeeper_refuses_are_refused() {
        for good in ["a", "with space", "ü:{x}", ".hidden"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "tab\there", "\u{7f}"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn absolute_places_the_top_at_the_root() {
        assert_eq!(absolute("/app", "/"), "/app");
        assert_eq!(absolute("/app", "/db"), "/app/db");
        assert_eq!(absolute("/", "/db"), "/db");
        assert_eq!(absolute("/", "/"), "/");
    }
}

//! `zkmirror import` and `zkmirror export`: a tree from a directory or a tree file into
//! ZooKeeper, and a subtree out to either form (`crate::transfer`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::transfer::{self, Change, DiskOutcome, ImportPlan};
use clap::{Args, ValueEnum};

use super::{connect_zk, write_stdout, ZkArgs};

#[derive(Args)]
pub struct ImportArgs {
    /// A directory (a file becomes a znode holding its bytes, a folder a znode whose children
    /// are its entries, a folder's own data is its `.data` file) or a tree file
    /// (schema/tree-format.md).
    source: PathBuf,
    #[command(flatten)]
    zk: ZkArgs,
    /// Where the tree's top goes: an absolute ZooKeeper path. Nothing outside it is written,
    /// except its missing ancestors, created empty.
    #[arg(long, env = "ZKMIRROR_ROOT")]
    root: String,
    /// Print the creates and updates the import would make, and make none.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
pub struct ExportArgs {
    /// The subtree to dump, an absolute ZooKeeper path.
    path: String,
    #[command(flatten)]
    zk: ZkArgs,
    /// Where to write it: a tree file or a directory. Default: the tree file, on stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Which form to write. Default: `tree` on stdout or for an --out ending in `.json`,
    /// `dir` otherwise.
    #[arg(long, value_enum)]
    format: Option<Form>,
    /// Print the files the export would write, and write none.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Form {
    /// One JSON file holding the whole subtree (schema/tree-format.md).
    Tree,
    /// A directory: files are znodes, folders are parents.
    Dir,
}

pub async fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    crate::path::validate(&args.root)?;
    let tree = transfer::read_source(&args.source)?;
    let zk = connect_zk(&args.zk.resolve()?).await?;
    let plan = transfer::plan_import(&zk, &args.root, &tree).await?;
    let source = args.source.display();
    if plan.changes.is_empty() {
        let line =
            format!("import: no changes ({} znodes under {} already as in {source})\n", plan.unchanged, plan.root);
        write_stdout(line.as_bytes())?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.dry_run {
        let mut out = change_lines(&plan, "would ");
        out.push_str(&format!(
            "dry run: would create {}, update {}; {} unchanged; nothing written\n",
            plan.creates(),
            plan.updates(),
            plan.unchanged
        ));
        write_stdout(out.as_bytes())?;
        return Ok(ExitCode::SUCCESS);
    }
    match transfer::apply_import(&zk, &plan).await {
        Ok(_) => {
            let mut out = change_lines(&plan, "");
            out.push_str(&format!(
                "import: {} created, {} updated, {} unchanged under {} from {source} (import never deletes)\n",
                plan.creates(),
                plan.updates(),
                plan.unchanged,
                plan.root
            ));
            write_stdout(out.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Err((applied, error)) => Err(anyhow::anyhow!(
            "import stopped after {applied} of {} writes: {error}; running it again completes it",
            plan.changes.len()
        )),
    }
}

fn change_lines(plan: &ImportPlan, mood: &str) -> String {
    plan.changes
        .iter()
        .map(|change| match change {
            Change::Create { path, data } => format!("{mood}create {path} ({} bytes)\n", data.len()),
            Change::Update { path, data, old_len, .. } => {
                format!("{mood}update {path} ({old_len} -> {} bytes)\n", data.len())
            }
        })
        .collect()
}

pub async fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    crate::path::validate(&args.path).map_err(|e| match e {
        crate::ConfigError::BadRoot { root, why } => anyhow::anyhow!("bad znode path {root:?}: {why}"),
        other => other.into(),
    })?;
    let form = args.format.unwrap_or(match &args.out {
        Some(out) if out.extension().is_none_or(|e| e != "json") => Form::Dir,
        _ => Form::Tree,
    });
    let Some(out) = args.out.as_deref() else {
        if form == Form::Dir {
            anyhow::bail!("--format dir needs --out DIR");
        }
        let exported = read(&args).await?;
        return write_stdout(transfer::render_tree_file(&exported.tree).as_bytes()).map(|()| ExitCode::SUCCESS);
    };
    let exported = read(&args).await?;
    let outcome = match form {
        Form::Tree => transfer::write_tree_file(&exported.tree, out, args.dry_run)?,
        Form::Dir => transfer::write_dir(&exported.tree, out, args.dry_run)?,
    };
    write_stdout(summary(&args.path, exported.tree.len(), out, &outcome, args.dry_run).as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

async fn read(args: &ExportArgs) -> anyhow::Result<transfer::Exported> {
    let zk = connect_zk(&args.zk.resolve()?).await?;
    let exported = transfer::export(&zk, &args.path).await?;
    if !exported.ephemeral_skipped.is_empty() {
        eprintln!(
            "zkmirror: left out {} ephemeral znodes (they belong to live sessions): {}",
            exported.ephemeral_skipped.len(),
            exported.ephemeral_skipped.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(exported)
}

fn summary(path: &str, znodes: usize, out: &Path, outcome: &DiskOutcome, dry_run: bool) -> String {
    let mood = if dry_run { "would write" } else { "wrote" };
    let mut text: String = outcome.written.iter().map(|f| format!("{mood} {}\n", f.display())).collect();
    let what = match (outcome.written.len(), dry_run) {
        (0, _) => "no changes".to_owned(),
        (1, false) => "1 file written".to_owned(),
        (n, false) => format!("{n} files written"),
        (n, true) => format!("dry run: {n} file(s) would be written, nothing written"),
    };
    text.push_str(&format!(
        "export: {path} ({znodes} znodes) to {}: {what}, {} unchanged\n",
        out.display(),
        outcome.unchanged
    ));
    text
}

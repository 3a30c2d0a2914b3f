//! Collects an action's outputs into the CAS after it ran: files, directories
//! (as Tree protos) and symlinks. Nothing outside the action directory is
//! ever read: a symlink output that points out fails the action.
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use re_cas::BlobStore;
use re_proto::reapi::{
    ActionResult, Directory, DirectoryNode, FileNode, OutputDirectory, OutputFile, OutputSymlink, SymlinkNode, Tree,
};
use re_proto::{DigestInfo, Error, Result};

use crate::action::{OutputKind, OutputPath};
use crate::paths;

/// The result of a finished process: its `outputs` under `exec_root` (only
/// if it ran to the end: `ran_to_end`), and its stdout and stderr files,
/// stored in the CAS.
pub async fn action_result(
    cas: &Arc<dyn BlobStore>,
    exec_root: &Path,
    outputs: &[OutputPath],
    (stdout, stderr): (&Path, &Path),
    exit_code: i32,
    ran_to_end: bool,
) -> Result<ActionResult> {
    let mut result = ActionResult { exit_code, ..Default::default() };
    if ran_to_end {
        collect(cas, exec_root, outputs, &mut result).await?;
    }
    result.stdout_digest = Some(upload_file(cas, stdout).await?.into());
    result.stderr_digest = Some(upload_file(cas, stderr).await?.into());
    Ok(result)
}

/// Stores an output file in the CAS (read once: hashed while it is stored).
pub async fn upload_file(cas: &Arc<dyn BlobStore>, path: &Path) -> Result<DigestInfo> {
    cas.put_file(path).await
}

pub async fn put_message(cas: &Arc<dyn BlobStore>, msg: &impl Message) -> Result<DigestInfo> {
    let data: Bytes = msg.encode_to_vec().into();
    let d = DigestInfo::of_bytes(&data);
    cas.put(d, data).await?;
    Ok(d)
}

fn is_executable(meta: &std::fs::Metadata) -> bool {
    meta.permissions().mode() & 0o111 != 0
}

/// Checks that `path` (already under `root`) resolves inside `root`.
fn inside(root: &Path, path: &Path, shown: &str) -> Result<PathBuf> {
    let real = std::fs::canonicalize(path).map_err(|e| Error::io(format!("resolving output {shown}"), e))?;
    if !real.starts_with(root) {
        return Err(Error::InvalidArgument(format!(
            "output '{shown}' is a symlink pointing outside the action directory"
        )));
    }
    Ok(real)
}

/// Builds the Directory protos below `dir`, uploading files as it goes.
/// Returns the root Directory and every child Directory by digest.
fn walk_dir<'a>(
    cas: &'a Arc<dyn BlobStore>,
    root: &'a Path,
    dir: PathBuf,
    children: &'a mut HashMap<DigestInfo, Directory>,
) -> futures::future::BoxFuture<'a, Result<Directory>> {
    Box::pin(async move {
        let mut out = Directory::default();
        let mut entries =
            tokio::fs::read_dir(&dir).await.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        while let Some(entry) = entries.next_entry().await.map_err(|e| Error::io("listing output directory", e))? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let meta = tokio::fs::symlink_metadata(&path).await.map_err(|e| Error::io("stat output", e))?;
            if meta.file_type().is_symlink() {
                let target = tokio::fs::read_link(&path).await.map_err(|e| Error::io("reading symlink", e))?;
                let target = target.to_string_lossy().into_owned();
                let rel = path.strip_prefix(root).unwrap_or(&path);
                paths::symlink_target(rel, &target)?;
                out.symlinks.push(SymlinkNode { name, target, node_properties: None });
            } else if meta.is_dir() {
                let sub = walk_dir(cas, root, path.clone(), children).await?;
                let d = put_message(cas, &sub).await?;
                children.insert(d, sub);
                out.directories.push(DirectoryNode { name, digest: Some(d.into()) });
            } else if meta.is_file() {
                let d = upload_file(cas, &path).await?;
                out.files.push(FileNode {
                    name,
                    digest: Some(d.into()),
                    is_executable: is_executable(&meta),
                    node_properties: None,
                });
            }
        }
        out.files.sort_by(|a, b| a.name.cmp(&b.name));
        out.directories.sort_by(|a, b| a.name.cmp(&b.name));
        out.symlinks.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    })
}

async fn output_directory(
    cas: &Arc<dyn BlobStore>,
    exec_root: &Path,
    path: &Path,
    shown: &str,
) -> Result<OutputDirectory> {
    let mut children = HashMap::new();
    let root = walk_dir(cas, exec_root, path.to_path_buf(), &mut children).await?;
    let root_digest = put_message(cas, &root).await?;
    let tree = Tree { root: Some(root), children: children.into_values().collect() };
    let tree_digest = put_message(cas, &tree).await?;
    Ok(OutputDirectory {
        path: shown.to_string(),
        tree_digest: Some(tree_digest.into()),
        is_topologically_sorted: false,
        root_directory_digest: Some(root_digest.into()),
    })
}

/// What an output path turned out to be.
enum Found {
    Nothing,
    File(PathBuf, bool),
    Dir(PathBuf),
    Symlink(String),
}

async fn probe(exec_root: &Path, full: &Path, shown: &str, keep_symlinks: bool) -> Result<Found> {
    let Ok(meta) = tokio::fs::symlink_metadata(full).await else { return Ok(Found::Nothing) };
    if meta.file_type().is_symlink() {
        let target = tokio::fs::read_link(full).await.map_err(|e| Error::io("reading symlink", e))?;
        let target = target.to_string_lossy().into_owned();
        if keep_symlinks && paths::symlink_target(full.strip_prefix(exec_root).unwrap_or(full), &target).is_ok() {
            return Ok(Found::Symlink(target));
        }
        // Follow it, but only within the action directory.
        let real = inside(exec_root, full, shown)?;
        let meta = tokio::fs::metadata(&real).await.map_err(|e| Error::io("stat output", e))?;
        return Ok(if meta.is_dir() { Found::Dir(real) } else { Found::File(real, is_executable(&meta)) });
    }
    Ok(if meta.is_dir() {
        Found::Dir(full.to_path_buf())
    } else {
        Found::File(full.to_path_buf(), is_executable(&meta))
    })
}

/// Fills the output fields of `result` from what the action left in `exec_root`.
pub async fn collect(
    cas: &Arc<dyn BlobStore>,
    exec_root: &Path,
    outputs: &[OutputPath],
    result: &mut ActionResult,
) -> Result<()> {
    let exec_root = std::fs::canonicalize(exec_root).map_err(|e| Error::io("resolving action directory", e))?;
    for out in outputs {
        let full = exec_root.join(&out.relative);
        let p = &out.path;
        let found = probe(&exec_root, &full, p, out.kind == OutputKind::Any).await?;
        match (found, out.kind) {
            (Found::Nothing, _) => {}
            (Found::File(real, exec), OutputKind::Any | OutputKind::File) => {
                result.output_files.push(output_file(cas, &real, p, exec).await?)
            }
            (Found::Dir(real), OutputKind::Any | OutputKind::Directory) => {
                result.output_directories.push(output_directory(cas, &exec_root, &real, p).await?)
            }
            (Found::Symlink(target), _) => {
                result.output_symlinks.push(OutputSymlink { path: p.clone(), target, node_properties: None })
            }
            (Found::Dir(_), _) => return Err(Error::InvalidArgument(format!("output file '{p}' is a directory"))),
            (Found::File(..), _) => return Err(Error::InvalidArgument(format!("output directory '{p}' is a file"))),
        }
    }
    Ok(())
}

async fn output_file(cas: &Arc<dyn BlobStore>, real: &Path, shown: &str, executable: bool) -> Result<OutputFile> {
    let d = upload_file(cas, real).await?;
    Ok(OutputFile {
        path: shown.to_string(),
        digest: Some(d.into()),
        is_executable: executable,
        contents: Bytes::new(),
        node_properties: None,
    })
}

/// Creates the working directory and the parent directories of every
/// declared output (the spec makes this the server's job).
pub fn create_output_parents(exec_root: &Path, working_directory: &Path, outputs: &[OutputPath]) -> Result<()> {
    let wd = exec_root.join(working_directory);
    std::fs::create_dir_all(&wd).map_err(|e| Error::io("creating working directory", e))?;
    for out in outputs {
        if let Some(parent) = exec_root.join(&out.relative).parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating parent of output {}", out.path), e))?;
        }
    }
    Ok(())
}

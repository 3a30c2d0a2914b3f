//! An action's input root: resolved from the CAS into a flat list (checking
//! names and finding missing blobs), then materialised into a directory.
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use re_cas::BlobStore;
use re_proto::reapi::Directory;
use re_proto::{DigestInfo, Error, Result};

use crate::paths;

#[derive(Debug, Clone)]
pub struct InputFile {
    pub path: PathBuf,
    pub digest: DigestInfo,
    pub executable: bool,
}

/// Everything under an input root, paths relative to it, parents before children.
#[derive(Debug, Clone, Default)]
pub struct InputTree {
    pub dirs: Vec<PathBuf>,
    pub files: Vec<InputFile>,
    pub symlinks: Vec<(PathBuf, String)>,
    pub directory_digests: Vec<DigestInfo>,
}

impl InputTree {
    /// Every blob the tree needs: Directory protos and file contents.
    pub fn blobs(&self) -> Vec<DigestInfo> {
        let mut v: Vec<DigestInfo> =
            self.directory_digests.iter().copied().chain(self.files.iter().map(|f| f.digest)).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Walks the tree rooted at `root`, expanding at most `max_entries` files,
/// directories and symlinks. Missing Directory blobs are reported together
/// as one MissingBlobs error; a malformed tree as InvalidArgument naming the
/// directory and entry; too many entries as ResourceExhausted.
pub async fn resolve(cas: &dyn BlobStore, root: DigestInfo, max_entries: usize) -> Result<InputTree> {
    let mut tree = InputTree::default();
    let mut cache: HashMap<DigestInfo, Arc<Directory>> = HashMap::new();
    let mut missing = Vec::new();
    let mut entries = 0usize;
    let mut stack = vec![(PathBuf::new(), root)];
    while let Some((path, digest)) = stack.pop() {
        let dir = match cache.get(&digest) {
            Some(d) => d.clone(),
            None => match cas.get(digest).await? {
                Some(raw) => {
                    let d = Directory::decode(raw).map_err(|e| {
                        Error::InvalidArgument(format!("input directory {digest} is not a Directory proto: {e}"))
                    })?;
                    check_directory(&d)
                        .map_err(|e| e.in_field(format!("input directory '{}' ({digest})", shown(&path))))?;
                    let d = Arc::new(d);
                    cache.insert(digest, d.clone());
                    tree.directory_digests.push(digest);
                    d
                }
                None => {
                    missing.push(digest);
                    continue;
                }
            },
        };
        entries += dir.files.len() + dir.directories.len() + dir.symlinks.len();
        if entries > max_entries {
            return Err(Error::ResourceExhausted(format!(
                "the input tree has more than {max_entries} entries, the most this server expands per action"
            )));
        }
        if !path.as_os_str().is_empty() {
            tree.dirs.push(path.clone());
        }
        let field = |kind: &str, name: &str| format!("input directory '{}' ({digest}): {kind}['{name}']", shown(&path));
        for f in &dir.files {
            let d = DigestInfo::try_from(f.digest.as_ref()).map_err(|e| e.in_field(field("files", &f.name)))?;
            tree.files.push(InputFile { path: path.join(&f.name), digest: d, executable: f.is_executable });
        }
        for s in &dir.symlinks {
            let link = path.join(&s.name);
            paths::symlink_target(&link, &s.target).map_err(|e| e.in_field(field("symlinks", &s.name)))?;
            tree.symlinks.push((link, s.target.clone()));
        }
        for d in &dir.directories {
            let child =
                DigestInfo::try_from(d.digest.as_ref()).map_err(|e| e.in_field(field("directories", &d.name)))?;
            stack.push((path.join(&d.name), child));
        }
    }
    if !missing.is_empty() {
        return Err(Error::MissingBlobs {
            message: format!("{} input directories are missing", missing.len()),
            blobs: missing,
        });
    }
    tree.dirs.sort_by_key(|p| p.components().count());
    Ok(tree)
}

/// `path` as messages show it (the root is "").
fn shown(path: &Path) -> String {
    path.display().to_string()
}

/// What the spec requires of one Directory: plain names, each list sorted by
/// name, and no name twice (in one list or across files, directories and
/// symlinks). A duplicate would make two inputs share one path.
pub fn check_directory(d: &Directory) -> Result<()> {
    let lists: [(&str, Vec<&str>); 3] = [
        ("files", d.files.iter().map(|f| f.name.as_str()).collect()),
        ("directories", d.directories.iter().map(|x| x.name.as_str()).collect()),
        ("symlinks", d.symlinks.iter().map(|s| s.name.as_str()).collect()),
    ];
    let mut all: Vec<&str> = Vec::with_capacity(lists.iter().map(|(_, l)| l.len()).sum());
    for (kind, names) in &lists {
        for pair in names.windows(2) {
            if pair[0] >= pair[1] {
                let why = if pair[0] == pair[1] { "appears twice" } else { "is not sorted by name" };
                return Err(Error::InvalidArgument(format!("{kind}: '{}' {why}", pair[1])));
            }
        }
        for name in names {
            paths::entry_name(name).map_err(|e| e.in_field(format!("{kind}['{name}']")))?;
        }
        all.extend(names);
    }
    all.sort_unstable();
    if let Some(pair) = all.windows(2).find(|p| p[0] == p[1]) {
        return Err(Error::InvalidArgument(format!(
            "'{}' is named twice among files, directories and symlinks",
            pair[0]
        )));
    }
    Ok(())
}

/// How input files get into the action directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    /// Hard-link the CAS's read-only files, for actions that cannot change
    /// them (`user::may_share_cas_files`); falls back to copying.
    HardLink,
    /// Copy (the kernel copies in place, and shares extents where the
    /// filesystem can: XFS, btrfs).
    Copy,
}

/// Where each input file's bytes come from, found before anything is made.
pub struct LocatedInputs {
    dirs: Vec<PathBuf>,
    /// Files the CAS keeps as files: linked or copied from there.
    local: Vec<(PathBuf, InputFile)>,
    /// Files of a CAS without files (memory): their bytes.
    fetched: Vec<(bytes::Bytes, InputFile)>,
    symlinks: Vec<(PathBuf, String)>,
}

/// A new read-only input file (writable through the returned handle only).
fn new_input_file(path: &Path, executable: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mode = if executable { 0o555 } else { 0o444 };
    std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path)
}

/// Finds every input file's bytes. Blobs gone from the CAS are reported as
/// MissingBlobs so the client re-uploads them.
pub async fn locate(cas: &Arc<dyn BlobStore>, tree: &InputTree) -> Result<LocatedInputs> {
    let mut local = Vec::new();
    let mut fetched = Vec::new();
    let mut missing = Vec::new();
    for f in &tree.files {
        match cas.file_path(f.digest) {
            Some(src) => local.push((src, f.clone())),
            None if f.digest.is_empty_blob() => fetched.push((bytes::Bytes::new(), f.clone())),
            None => match cas.get(f.digest).await? {
                Some(data) => fetched.push((data, f.clone())),
                None => missing.push(f.digest),
            },
        }
    }
    if !missing.is_empty() {
        missing.sort_unstable();
        missing.dedup();
        return Err(Error::MissingBlobs {
            message: "input files were evicted before the action ran".into(),
            blobs: missing,
        });
    }
    Ok(LocatedInputs { dirs: tree.dirs.clone(), local, fetched, symlinks: tree.symlinks.clone() })
}

impl LocatedInputs {
    /// Creates the tree under `dest` (which must exist); blocking. Every file
    /// is new (`O_EXCL`): nothing is ever written through a path that exists,
    /// so not even a tree that escaped validation can write into the CAS.
    pub fn place(&self, dest: &Path, mode: LinkMode) -> Result<()> {
        let io = |what: &Path, e: std::io::Error| Error::io(format!("materialising input {}", what.display()), e);
        for d in &self.dirs {
            std::fs::create_dir_all(dest.join(d)).map_err(|e| io(d, e))?;
        }
        for (src, f) in &self.local {
            let target = dest.join(&f.path);
            if mode == LinkMode::HardLink && !f.executable {
                match std::fs::hard_link(src, &target) {
                    Ok(()) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(io(&f.path, e)),
                    Err(_) => {} // another filesystem, or too many links: copy
                }
            }
            let mut from = std::fs::File::open(src).map_err(|e| io(&f.path, e))?;
            let mut to = new_input_file(&target, f.executable).map_err(|e| io(&f.path, e))?;
            std::io::copy(&mut from, &mut to).map_err(|e| io(&f.path, e))?;
        }
        for (data, f) in &self.fetched {
            let mut to = new_input_file(&dest.join(&f.path), f.executable).map_err(|e| io(&f.path, e))?;
            to.write_all(data).map_err(|e| io(&f.path, e))?;
        }
        for (link, target) in &self.symlinks {
            std::os::unix::fs::symlink(target, dest.join(link)).map_err(|e| io(link, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use re_proto::reapi::{DirectoryNode, FileNode, SymlinkNode};

    fn file(name: &str) -> FileNode {
        FileNode { name: name.into(), digest: Some(DigestInfo::EMPTY.into()), ..Default::default() }
    }

    #[test]
    fn directories_must_be_sorted_unique_and_plain() {
        let ok = Directory { files: vec![file("a"), file("b")], ..Default::default() };
        assert!(check_directory(&ok).is_ok());
        let twice = Directory { files: vec![file("a"), file("a")], ..Default::default() };
        assert!(check_directory(&twice).unwrap_err().to_string().contains("'a' appears twice"));
        let unsorted = Directory { files: vec![file("b"), file("a")], ..Default::default() };
        assert!(check_directory(&unsorted).unwrap_err().to_string().contains("not sorted"));
        let across = Directory {
            files: vec![file("x")],
            directories: vec![DirectoryNode { name: "x".into(), digest: Some(DigestInfo::EMPTY.into()) }],
            ..Default::default()
        };
        assert!(check_directory(&across).unwrap_err().to_string().contains("named twice"));
        let dotdot = Directory { files: vec![file("..")], ..Default::default() };
        assert!(check_directory(&dotdot).unwrap_err().to_string().contains("files['..']"));
        let link = Directory {
            symlinks: vec![SymlinkNode { name: "a/b".into(), target: "x".into(), node_properties: None }],
            ..Default::default()
        };
        assert_eq!(check_directory(&link).unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}

//! An action's input root: resolved from the CAS into a flat list (checking
//! names and finding missing blobs), then materialised into a directory.
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
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

/// Walks the tree rooted at `root`. Missing Directory blobs are reported
/// together as one MissingBlobs error; bad names as InvalidArgument.
pub async fn resolve(cas: &dyn BlobStore, root: DigestInfo) -> Result<InputTree> {
    let mut tree = InputTree::default();
    let mut cache: HashMap<DigestInfo, Arc<Directory>> = HashMap::new();
    let mut missing = Vec::new();
    let mut stack = vec![(PathBuf::new(), root)];
    while let Some((path, digest)) = stack.pop() {
        let dir = match cache.get(&digest) {
            Some(d) => d.clone(),
            None => match cas.get(digest).await? {
                Some(raw) => {
                    let d = Arc::new(Directory::decode(raw).map_err(|e| {
                        Error::InvalidArgument(format!("input directory {digest} is not a Directory proto: {e}"))
                    })?);
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
        if !path.as_os_str().is_empty() {
            tree.dirs.push(path.clone());
        }
        for f in &dir.files {
            paths::entry_name(&f.name)?;
            tree.files.push(InputFile {
                path: path.join(&f.name),
                digest: DigestInfo::try_from(f.digest.as_ref())?,
                executable: f.is_executable,
            });
        }
        for s in &dir.symlinks {
            paths::entry_name(&s.name)?;
            let link = path.join(&s.name);
            paths::symlink_target(&link, &s.target)?;
            tree.symlinks.push((link, s.target.clone()));
        }
        for d in &dir.directories {
            paths::entry_name(&d.name)?;
            stack.push((path.join(&d.name), DigestInfo::try_from(d.digest.as_ref())?));
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

/// How input files get into the action directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    /// Hard-link read-only files from a filesystem CAS (falls back to copying).
    HardLink,
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
    /// Creates the tree under `dest` (which must exist); blocking.
    pub fn place(&self, dest: &Path, mode: LinkMode) -> Result<()> {
        let io = |what: &Path, e: std::io::Error| Error::io(format!("materialising input {}", what.display()), e);
        for d in &self.dirs {
            std::fs::create_dir_all(dest.join(d)).map_err(|e| io(d, e))?;
        }
        for (src, f) in &self.local {
            let target = dest.join(&f.path);
            let linked = mode == LinkMode::HardLink && !f.executable && std::fs::hard_link(src, &target).is_ok();
            if !linked {
                std::fs::copy(src, &target).map_err(|e| io(&f.path, e))?;
                let perm = if f.executable { 0o555 } else { 0o444 };
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(perm)).map_err(|e| io(&f.path, e))?;
            }
        }
        for (data, f) in &self.fetched {
            let target = dest.join(&f.path);
            std::fs::write(&target, data).map_err(|e| io(&f.path, e))?;
            let perm = if f.executable { 0o555 } else { 0o444 };
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(perm)).map_err(|e| io(&f.path, e))?;
        }
        for (link, target) in &self.symlinks {
            std::os::unix::fs::symlink(target, dest.join(link)).map_err(|e| io(link, e))?;
        }
        Ok(())
    }
}

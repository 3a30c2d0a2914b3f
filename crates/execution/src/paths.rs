//! Client-supplied paths must stay inside the action's directory.
use std::path::{Component, Path, PathBuf};

use re_proto::{Error, Result};

fn escape(what: &str, path: &str, why: &str) -> Error {
    Error::InvalidArgument(format!("{what} '{path}' {why}"))
}

/// A relative path with no `..`, no root, no empty or `.` segments after
/// normalisation. `""` is allowed only when `allow_empty` (the directory itself).
pub fn relative_path(path: &str, what: &str, allow_empty: bool) -> Result<PathBuf> {
    if path.is_empty() {
        return if allow_empty { Ok(PathBuf::new()) } else { Err(escape(what, path, "is empty")) };
    }
    if path.contains('\0') {
        return Err(escape(what, path, "contains a NUL byte"));
    }
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            Component::ParentDir => return Err(escape(what, path, "must not contain '..'")),
            Component::RootDir | Component::Prefix(_) => return Err(escape(what, path, "must be relative")),
        }
    }
    if out.as_os_str().is_empty() && !allow_empty {
        return Err(escape(what, path, "names no file"));
    }
    Ok(out)
}

/// One Directory entry name: non-empty, no '/', not '.' or '..'.
pub fn entry_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "input tree entry name '{name}' is not a plain file name (no '/', '.', '..' or empty names)"
        )));
    }
    Ok(())
}

/// A symlink at `link` (relative to the root) pointing at `target` must be
/// relative and resolve inside the root.
pub fn symlink_target(link: &Path, target: &str) -> Result<()> {
    let what = || link.display().to_string();
    if target.is_empty() || target.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "symlink '{}' -> '{target}' must have a relative target (absolute symlinks are disallowed)",
            what()
        )));
    }
    let mut depth: i64 = link.parent().map(|p| p.components().count() as i64).unwrap_or(0);
    for c in Path::new(target).components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => depth -= 1,
            Component::CurDir => {}
            _ => depth = -1,
        }
        if depth < 0 {
            return Err(Error::InvalidArgument(format!(
                "symlink '{}' -> '{target}' points outside the action directory",
                what()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(relative_path("a/./b", "x", false).unwrap(), PathBuf::from("a/b"));
        assert!(relative_path("../a", "x", false).is_err());
        assert!(relative_path("a/../../b", "x", false).is_err());
        assert!(relative_path("/etc/passwd", "x", false).is_err());
        assert!(relative_path("", "x", false).is_err());
        assert!(relative_path("", "x", true).is_ok());
        assert!(relative_path(".", "x", false).is_err());
    }

    #[test]
    fn entry_names() {
        assert!(entry_name("ok.txt").is_ok());
        for bad in ["", ".", "..", "a/b"] {
            assert!(entry_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn symlink_targets() {
        assert!(symlink_target(Path::new("a/link"), "../b").is_ok());
        assert!(symlink_target(Path::new("a/link"), "../../b").is_err());
        assert!(symlink_target(Path::new("link"), "/etc/passwd").is_err());
        assert!(symlink_target(Path::new("a/b/link"), "../../c/./d").is_ok());
        assert!(symlink_target(Path::new("link"), "a/../../x").is_err());
    }
}

//! run_as_user / run_as_group: resolved once when the config is loaded, so a
//! typo or an unreachable work_dir stops the server instead of failing every
//! action; and the directory access an action's user needs.
use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use re_proto::{ConfigError, Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
}

/// Looks up a user (name or numeric id) and an optional group.
pub fn resolve(user: &str, group: Option<&str>) -> std::result::Result<UserIds, ConfigError> {
    let (uid, primary_gid) = lookup_user(user)?;
    let gid = match group {
        Some(g) => lookup_group(g)?,
        None => primary_gid,
    };
    Ok(UserIds { uid, gid })
}

fn lookup_user(user: &str) -> std::result::Result<(u32, u32), ConfigError> {
    let name = CString::new(user).map_err(|_| ConfigError::new("run_as_user", format!("bad user name '{user}'")))?;
    // SAFETY: getpwnam/getpwuid return static storage; read at once at start-up.
    unsafe {
        let mut pw = libc::getpwnam(name.as_ptr());
        if pw.is_null() {
            if let Ok(id) = user.parse::<u32>() {
                pw = libc::getpwuid(id);
            }
        }
        if pw.is_null() {
            return Err(ConfigError::new("run_as_user", format!("'{user}' does not exist on this machine")));
        }
        Ok(((*pw).pw_uid, (*pw).pw_gid))
    }
}

fn lookup_group(group: &str) -> std::result::Result<u32, ConfigError> {
    let name =
        CString::new(group).map_err(|_| ConfigError::new("run_as_group", format!("bad group name '{group}'")))?;
    // SAFETY: as above.
    unsafe {
        let mut gr = libc::getgrnam(name.as_ptr());
        if gr.is_null() {
            if let Ok(id) = group.parse::<u32>() {
                gr = libc::getgrgid(id);
            }
        }
        if gr.is_null() {
            return Err(ConfigError::new("run_as_group", format!("'{group}' does not exist on this machine")));
        }
        Ok((*gr).gr_gid)
    }
}

/// Whether an action running as `uid` may be handed the CAS's own files
/// as hard links. Only a user that can neither write nor chmod them: not
/// root, and not the server's user, who owns them. Anyone else gets copies,
/// so no action can change what the CAS serves (the rule for every worker).
pub fn may_share_cas_files(uid: Option<u32>) -> bool {
    // SAFETY: geteuid has no preconditions.
    let server = unsafe { libc::geteuid() };
    uid.is_some_and(|uid| uid != 0 && uid != server)
}

/// The first existing directory on the way to `path` that `ids` may not
/// enter (no search permission), or `None` if the whole way is open.
pub fn unreachable_dir(path: &Path, ids: UserIds) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    if ids.uid == 0 {
        return None;
    }
    let groups = groups_of(ids);
    let mut ancestors: Vec<&Path> = path.ancestors().collect();
    ancestors.reverse();
    for dir in ancestors {
        let Ok(meta) = std::fs::metadata(dir) else { break };
        let mode = meta.mode();
        let bit = if meta.uid() == ids.uid {
            0o100
        } else if groups.contains(&meta.gid()) {
            0o010
        } else {
            0o001
        };
        if mode & bit == 0 {
            return Some(dir.to_path_buf());
        }
    }
    None
}

/// The user's primary and supplementary groups.
fn groups_of(ids: UserIds) -> Vec<u32> {
    let mut groups = vec![ids.gid];
    // SAFETY: getpwuid returns static storage, read at once; getgrouplist
    // writes at most `n` entries into the buffer it is given.
    unsafe {
        let pw = libc::getpwuid(ids.uid);
        if pw.is_null() {
            return groups;
        }
        let mut buf = vec![0 as libc::gid_t; 256];
        let mut n = buf.len() as libc::c_int;
        if libc::getgrouplist((*pw).pw_name, ids.gid, buf.as_mut_ptr(), &mut n) >= 0 {
            groups.extend(buf[..n.max(0) as usize].iter().copied());
        }
    }
    groups
}

/// Gives the action's user every directory under `root` so it can write outputs.
pub fn chown_dirs(root: &Path, ids: UserIds) -> Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        std::os::unix::fs::chown(&dir, Some(ids.uid), Some(ids.gid))
            .map_err(|e| Error::io(format!("chown {}", dir.display()), e))?;
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io("listing action directory", e))?.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    Ok(())
}

/// Lets any user create outputs in the action's directories (a container
/// user the server cannot name).
pub fn open_dirs(root: &Path) -> Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| Error::io(format!("chmod {}", dir.display()), e))?;
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io("listing action directory", e))?.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_directory_on_the_way_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let closed = dir.path().join("closed");
        std::fs::create_dir_all(closed.join("work")).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        // A uid that owns nothing here and is in no group of these directories.
        let stranger = UserIds { uid: 54_321, gid: 54_321 };
        assert_eq!(unreachable_dir(&closed.join("work/not-yet"), stranger), Some(closed.clone()));
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o711)).unwrap();
        assert_eq!(unreachable_dir(&closed.join("work/not-yet"), stranger), None);
        assert_eq!(unreachable_dir(&closed, UserIds { uid: 0, gid: 0 }), None);
    }
}

//! run_as_user / run_as_group: resolved once at start, so a typo stops the
//! server instead of failing every action.
use std::ffi::{CStr, CString};
use std::path::Path;

use re_proto::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
}

/// Looks up a user (name or numeric id) and an optional group.
pub fn resolve(user: &str, group: Option<&str>) -> Result<UserIds> {
    let (uid, primary_gid) = lookup_user(user)?;
    let gid = match group {
        Some(g) => lookup_group(g)?,
        None => primary_gid,
    };
    Ok(UserIds { uid, gid })
}

fn lookup_user(user: &str) -> Result<(u32, u32)> {
    let name = CString::new(user).map_err(|_| Error::InvalidArgument(format!("bad user name '{user}'")))?;
    // SAFETY: getpwnam/getpwuid return static storage; read at once at start-up.
    unsafe {
        let mut pw = libc::getpwnam(name.as_ptr());
        if pw.is_null() {
            if let Ok(id) = user.parse::<u32>() {
                pw = libc::getpwuid(id);
            }
        }
        if pw.is_null() {
            return Err(Error::InvalidArgument(format!("run_as_user '{user}' does not exist on this machine")));
        }
        Ok(((*pw).pw_uid, (*pw).pw_gid))
    }
}

fn lookup_group(group: &str) -> Result<u32> {
    let name = CString::new(group).map_err(|_| Error::InvalidArgument(format!("bad group name '{group}'")))?;
    // SAFETY: as above.
    unsafe {
        let mut gr = libc::getgrnam(name.as_ptr());
        if gr.is_null() {
            if let Ok(id) = group.parse::<u32>() {
                gr = libc::getgrgid(id);
            }
        }
        if gr.is_null() {
            return Err(Error::InvalidArgument(format!("run_as_group '{group}' does not exist on this machine")));
        }
        let _ = CStr::from_ptr((*gr).gr_name);
        Ok((*gr).gr_gid)
    }
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

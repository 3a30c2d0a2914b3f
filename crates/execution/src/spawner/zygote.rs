//! The spawner process: forked from the server at start, while the server
//! is still small and has one thread; starts each host action's process
//! (fork, its own process group, output files, working directory, user,
//! exec) and reaps it with `wait4`.
//!
//! Why a process of its own: a process forked from the server starts as a
//! copy of it, and the kernel keeps that copy's resident size as the
//! process's peak (`ru_maxrss`) through `exec`. Forked from this small
//! process, an action's reported peak is its own.
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::{ForkResult, Pid};

use super::protocol::{Command, Reply, SpawnRequest, Step};

/// Where a program without a `/` is looked up when the action sets no PATH
/// (glibc's `execvp` default).
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// Serves spawn requests on `sock` until the server closes it, then exits.
pub(super) fn serve(sock: UnixStream) -> ! {
    // SAFETY: prctl(PR_SET_NAME) only renames this thread.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"re-spawner".as_ptr()) };
    close_other_fds(sock.as_raw_fd());
    // The server decides when actions stop; a terminal's ^C is not for us.
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGPIPE] {
        // SAFETY: setting a disposition to SIG_IGN installs no handler code.
        let _ = unsafe { signal(s, SigHandler::SigIgn) };
    }
    let mut children = SigSet::empty();
    children.add(Signal::SIGCHLD);
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&children), None);
    let exits = match SignalFd::with_flags(&children, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("re-spawner: signalfd: {e}");
            std::process::exit(1);
        }
    };
    let mut input = Vec::new();
    let mut writer = &sock;
    // Process groups started and not yet reaped.
    let mut live = std::collections::HashSet::new();
    loop {
        let (requests_ready, exits_ready) = {
            let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN), PollFd::new(exits.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(_) => std::process::exit(1),
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        if requests_ready {
            let mut chunk = [0u8; 64 << 10];
            match (&sock).read(&mut chunk) {
                // The server is gone (it may have been killed): its actions
                // have no one to report to, so they end with it.
                Ok(0) | Err(_) => {
                    for pid in &live {
                        let _ = nix::sys::signal::killpg(Pid::from_raw(*pid), Signal::SIGKILL);
                    }
                    std::process::exit(0)
                }
                Ok(n) => input.extend_from_slice(&chunk[..n]),
            }
            while let Some(end) = input.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = input.drain(..=end).collect();
                match serde_json::from_slice::<SpawnRequest>(&line) {
                    Ok(req) => {
                        let reply = spawn(&req);
                        if let Reply::Started { pid, .. } = reply {
                            live.insert(pid);
                        }
                        send(&mut writer, &reply)
                    }
                    Err(e) => eprintln!("re-spawner: unreadable request: {e}"),
                }
            }
        }
        if exits_ready {
            // Non-blocking: drains the pending signals, then reaps whatever ended.
            while let Ok(Some(_)) = exits.read_signal() {}
            reap(&mut writer, &mut live);
        }
    }
}

fn send(writer: &mut &UnixStream, reply: &Reply) {
    let mut line = serde_json::to_vec(reply).expect("replies serialize");
    line.push(b'\n');
    if writer.write_all(&line).is_err() {
        std::process::exit(0);
    }
}

/// Reports every child that has ended.
fn reap(writer: &mut &UnixStream, live: &mut std::collections::HashSet<i32>) {
    loop {
        let mut status = 0;
        // SAFETY: rusage is plain data that wait4 fills in.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 writes into the two locals only.
        let pid = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut ru) };
        if pid <= 0 {
            return;
        }
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else if libc::WIFSIGNALED(status) {
            128 + libc::WTERMSIG(status)
        } else {
            -1
        };
        let us = |t: libc::timeval| t.tv_sec.max(0) as u64 * 1_000_000 + t.tv_usec.max(0) as u64;
        let max_rss_kib = ru.ru_maxrss.max(0) as u64;
        live.remove(&pid);
        send(writer, &Reply::Exited { pid, code, user_us: us(ru.ru_utime), system_us: us(ru.ru_stime), max_rss_kib });
    }
}

/// Closes every inherited descriptor but stdin, stdout, stderr and `keep`.
fn close_other_fds(keep: i32) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return };
    let fds: Vec<i32> = dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    for fd in fds.into_iter().filter(|fd| *fd > 2 && *fd != keep) {
        // SAFETY: closing descriptors this process inherited and no code here uses.
        unsafe { libc::close(fd) };
    }
}

fn cstring(bytes: &[u8]) -> Option<CString> {
    CString::new(bytes).ok()
}

/// Everything the child needs, built before the fork.
struct Prepared {
    candidates: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
    stdout: CString,
    stderr: CString,
}

fn prepare(req: &Command) -> Option<Prepared> {
    let path_var = req.env.iter().rev().find(|(k, _)| k == "PATH").map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    let candidates = if req.program.contains('/') {
        vec![cstring(req.program.as_bytes())?]
    } else {
        path_var
            .split(':')
            .map(|d| if d.is_empty() { "." } else { d })
            .map(|d| cstring(format!("{d}/{}", req.program).as_bytes()))
            .collect::<Option<Vec<_>>>()?
    };
    let argv =
        std::iter::once(&req.program).chain(&req.args).map(|a| cstring(a.as_bytes())).collect::<Option<Vec<_>>>()?;
    let envp = req.env.iter().map(|(k, v)| cstring(format!("{k}={v}").as_bytes())).collect::<Option<Vec<_>>>()?;
    Some(Prepared {
        candidates,
        argv,
        envp,
        cwd: cstring(req.cwd.as_os_str().as_bytes())?,
        stdout: cstring(req.stdout.as_os_str().as_bytes())?,
        stderr: cstring(req.stderr.as_os_str().as_bytes())?,
    })
}

fn spawn(req: &SpawnRequest) -> Reply {
    let failed = |step: Step, errno: Errno| Reply::Failed { id: req.id, step, errno: errno as i32 };
    let Some(p) = prepare(&req.command) else { return failed(Step::Exec, Errno::EINVAL) };
    // Reports why the child could not exec; closed by a successful exec.
    let (report_r, report_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return failed(Step::Fork, e),
    };
    // SAFETY: this process has one thread, so the child may run any code.
    match unsafe { nix::unistd::fork() } {
        Err(e) => failed(Step::Fork, e),
        Ok(ForkResult::Child) => {
            drop(report_r);
            let (step, errno) = become_action(&p, req.command.user);
            let mut msg = [0u8; 5];
            msg[0] = step.code();
            msg[1..].copy_from_slice(&(errno as i32).to_le_bytes());
            let _ = nix::unistd::write(&report_w, &msg);
            // SAFETY: leaving the child without running the spawner's exit code.
            unsafe { libc::_exit(127) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(report_w);
            let mut msg = Vec::new();
            let _ = std::fs::File::from(report_r).read_to_end(&mut msg);
            if msg.len() < 5 {
                return Reply::Started { id: req.id, pid: child.as_raw() };
            }
            // It never ran: reap it now, so no exit is reported for it.
            let _ = nix::sys::wait::waitpid(child, None);
            let errno = i32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]]);
            Reply::Failed { id: req.id, step: Step::from_code(msg[0]), errno }
        }
    }
}

/// In the child: everything between fork and exec. Returns only on failure.
fn become_action(p: &Prepared, user: Option<(u32, u32)>) -> (Step, Errno) {
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGPIPE] {
        // SAFETY: restoring the default disposition installs no handler code.
        let _ = unsafe { signal(s, SigHandler::SigDfl) };
    }
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    if let Err(e) = redirect(p) {
        return (Step::Output, e);
    }
    if let Err(e) = nix::unistd::chdir(p.cwd.as_c_str()) {
        return (Step::Chdir, e);
    }
    if let Some((uid, gid)) = user {
        if let Err(e) = nix::unistd::setgid(gid.into()) {
            return (Step::User, e);
        }
        // Dropping root's groups needs CAP_SETGID; without it there are none to drop.
        match nix::unistd::setgroups(&[]) {
            Ok(()) | Err(Errno::EPERM) => {}
            Err(e) => return (Step::User, e),
        }
        if let Err(e) = nix::unistd::setuid(uid.into()) {
            return (Step::User, e);
        }
    }
    let mut error = Errno::ENOENT;
    let mut denied = false;
    for path in &p.candidates {
        let Err(e) = nix::unistd::execve(path, &p.argv, &p.envp);
        match e {
            // Not in this PATH entry: try the next, as execvp does.
            Errno::ENOENT | Errno::ENOTDIR => error = e,
            Errno::EACCES => denied = true,
            other => return (Step::Exec, other),
        }
    }
    (Step::Exec, if denied { Errno::EACCES } else { error })
}

/// stdin from /dev/null, stdout and stderr into the action's files.
fn redirect(p: &Prepared) -> Result<(), Errno> {
    use nix::fcntl::{open, OFlag};
    use nix::sys::stat::Mode;
    let null = open(c"/dev/null", OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())?;
    let out_flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_CLOEXEC;
    let mode = Mode::from_bits_truncate(0o644);
    let out = open(p.stdout.as_c_str(), out_flags, mode)?;
    let err = open(p.stderr.as_c_str(), out_flags, mode)?;
    for (fd, target) in [(null, 0), (out, 1), (err, 2)] {
        nix::unistd::dup2(fd, target)?;
    }
    Ok(())
}

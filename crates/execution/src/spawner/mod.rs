//! Host actions' processes are started by a small helper process, the
//! spawner (`zygote.rs`), which the server forks before it starts any
//! thread. The server sends it a request a process and gets back the pid,
//! then, once the process ended, its exit code and usage (`protocol.rs`).
//! This side: `Spawner` (shared by every host worker) and the handle of one
//! running process, `SpawnedProcess`.
mod protocol;
mod zygote;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use re_proto::{Error, Result};
use tokio::sync::oneshot;

pub use protocol::{Command, Step};
use protocol::{Reply, SpawnRequest};

use crate::usage::ResourceUsage;

/// How a process ended: its exit code (128 + signal when killed) and what it
/// and the children it waited for used.
#[derive(Debug, Clone, Copy)]
pub struct Reaped {
    pub code: i32,
    pub usage: ResourceUsage,
}

type Started = std::result::Result<(i32, oneshot::Receiver<Reaped>), (Step, i32)>;

#[derive(Default)]
struct Waiting {
    starts: HashMap<u64, oneshot::Sender<Started>>,
    exits: HashMap<i32, oneshot::Sender<Reaped>>,
    /// The spawner is gone: nothing more will start or be reported.
    closed: bool,
}

/// The server's end of the spawner.
#[derive(Clone)]
pub struct Spawner {
    shared: Arc<Shared>,
}

struct Shared {
    requests: Mutex<UnixStream>,
    next_id: AtomicU64,
    waiting: Mutex<Waiting>,
}

impl Spawner {
    /// Forks the spawner.
    ///
    /// # Safety
    /// The process must have one thread: the child keeps running Rust code
    /// after the fork.
    pub unsafe fn start() -> std::io::Result<Self> {
        let (ours, theirs) = UnixStream::pair()?;
        // SAFETY: the caller guarantees a single thread.
        match unsafe { nix::unistd::fork() }? {
            nix::unistd::ForkResult::Child => {
                drop(ours);
                zygote::serve(theirs)
            }
            nix::unistd::ForkResult::Parent { .. } => {
                drop(theirs);
                let shared = Arc::new(Shared {
                    requests: Mutex::new(ours.try_clone()?),
                    next_id: AtomicU64::new(1),
                    waiting: Mutex::default(),
                });
                let reader = shared.clone();
                std::thread::Builder::new().name("spawner replies".into()).spawn(move || reader.read_replies(ours))?;
                Ok(Self { shared })
            }
        }
    }

    /// Starts `cmd` in a process group of its own.
    pub async fn spawn(&self, cmd: Command) -> Result<SpawnedProcess> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let program = cmd.program.clone();
        let req = SpawnRequest { id, command: cmd };
        let mut line =
            serde_json::to_vec(&req).map_err(|e| Error::InvalidArgument(format!("cannot start '{program}': {e}")))?;
        line.push(b'\n');
        let (tx, rx) = oneshot::channel();
        {
            let mut waiting = self.shared.waiting.lock();
            if waiting.closed {
                return Err(spawner_gone());
            }
            waiting.starts.insert(id, tx);
        }
        if self.shared.requests.lock().write_all(&line).is_err() {
            self.shared.waiting.lock().starts.remove(&id);
            return Err(spawner_gone());
        }
        match rx.await.map_err(|_| spawner_gone())? {
            Ok((pid, exit)) => Ok(SpawnedProcess { pid, exit, reaped: false }),
            Err((step, errno)) => Err(start_error(&program, step, errno)),
        }
    }
}

fn spawner_gone() -> Error {
    Error::WorkerLost("the process spawner of the host workers exited".into())
}

/// Why `program` did not start, as the action's author needs to read it.
fn start_error(program: &str, step: Step, errno: i32) -> Error {
    let cause = std::io::Error::from_raw_os_error(errno);
    match step {
        Step::Exec => Error::InvalidArgument(format!("cannot start '{program}': {cause}")),
        Step::Chdir => Error::InvalidArgument(format!("cannot start '{program}': its working directory: {cause}")),
        Step::Output => Error::io(format!("creating the output files of '{program}'"), cause),
        Step::User => Error::Internal(format!("cannot switch to the worker's run_as_user for '{program}': {cause}")),
        Step::Fork => Error::Internal(format!("cannot fork to start '{program}': {cause}")),
    }
}

impl Shared {
    fn read_replies(&self, replies: UnixStream) {
        for line in BufReader::new(replies).lines() {
            let Ok(line) = line else { break };
            let reply = match serde_json::from_str::<Reply>(&line) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable reply from the process spawner");
                    continue;
                }
            };
            let mut waiting = self.waiting.lock();
            match reply {
                Reply::Started { id, pid } => {
                    // Registered before the next line is read: its exit always comes later.
                    let (tx, rx) = oneshot::channel();
                    waiting.exits.insert(pid, tx);
                    if let Some(start) = waiting.starts.remove(&id) {
                        let _ = start.send(Ok((pid, rx)));
                    }
                }
                Reply::Failed { id, step, errno } => {
                    if let Some(start) = waiting.starts.remove(&id) {
                        let _ = start.send(Err((step, errno)));
                    }
                }
                Reply::Exited { pid, code, user_us, system_us, max_rss_kib } => {
                    if let Some(exit) = waiting.exits.remove(&pid) {
                        let usage = ResourceUsage {
                            user_cpu: Duration::from_micros(user_us),
                            system_cpu: Duration::from_micros(system_us),
                            // Linux reports ru_maxrss in KiB.
                            peak_memory_bytes: max_rss_kib * 1024,
                            source: "wait4",
                        };
                        let _ = exit.send(Reaped { code, usage });
                    }
                }
            }
        }
        tracing::error!("the process spawner exited; host workers cannot start actions");
        let mut waiting = self.waiting.lock();
        waiting.closed = true;
        waiting.starts.clear();
        waiting.exits.clear();
    }
}

/// A running action process, leader of its own process group. Dropped
/// before it was reaped, its group is killed.
pub struct SpawnedProcess {
    pid: i32,
    exit: oneshot::Receiver<Reaped>,
    reaped: bool,
}

impl SpawnedProcess {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits until it has exited and was reaped (may be called again after
    /// a wait was abandoned).
    pub async fn wait(&mut self) -> Result<Reaped> {
        let r = (&mut self.exit).await.map_err(|_| spawner_gone())?;
        self.reaped = true;
        Ok(r)
    }

    /// SIGKILLs its process group: everything it started with it.
    pub fn kill_group(&self) {
        // SAFETY: plain syscall on the process group the spawner made for it.
        unsafe { libc::killpg(self.pid, libc::SIGKILL) };
    }
}

impl Drop for SpawnedProcess {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill_group();
        }
    }
}

//! Where blocking file work runs. Each worker runs its actions on a thread of
//! its own (see the scheduler), which has nothing else to do while its action
//! is prepared, run and collected: there, file work runs inline. Anywhere
//! else (the request path) it goes to tokio's blocking pool. On a machine
//! whose vCPUs are woken by the hypervisor, every hand-off between threads
//! costs tens of microseconds, more than the file work itself.
use std::cell::Cell;

use crate::Result;

thread_local! {
    static DEDICATED: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as serving one worker alone: it may block.
pub fn mark_dedicated() {
    DEDICATED.with(|d| d.set(true));
}

/// Whether the current thread may block (a worker's own thread).
pub fn may_block() -> bool {
    DEDICATED.with(|d| d.get())
}

/// Files at most this big are read where they are needed, on any thread.
pub const SMALL_READ_BYTES: u64 = 64 * 1024;

/// Reads a file known to be small (an Action, Command or Directory proto, an
/// action result: typically a few hundred bytes). From the page cache that
/// takes a few microseconds, less than handing it to another thread.
pub async fn read_small(path: std::path::PathBuf) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
}

/// Runs `f` here if this thread may block, else on tokio's blocking pool.
pub async fn run<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if may_block() {
        Ok(f())
    } else {
        Ok(tokio::task::spawn_blocking(f).await?)
    }
}

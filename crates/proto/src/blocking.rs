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

/// Runs `f`, file work on about `bytes` bytes: in place when they are few
/// (an Action, Command or Directory proto, an action result: typically a
/// few hundred bytes, a few microseconds from the page cache, less than a
/// hand-off to another thread), else as [`run`] does.
pub async fn run_small<T, F>(bytes: u64, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if bytes <= SMALL_READ_BYTES {
        Ok(f())
    } else {
        run(f).await
    }
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

//! Copies a container's multiplexed output into the action's stdout and
//! stderr files until it ends, the action's timeout passes or it is
//! cancelled. A warm exec ends its stderr with a marker line carrying the
//! OOM-kill count (see `warm.rs`); it is cut off here, never stored.
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use bollard::container::LogOutput;
use futures::{Stream, StreamExt};
use re_proto::{Error, Result};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

pub type LogStream = Pin<Box<dyn Stream<Item = std::result::Result<LogOutput, bollard::errors::Error>> + Send>>;

/// The marker's first byte (ASCII record separator), then the nonce.
pub const MARK: u8 = 0x1e;
/// The marker line is at most this long; so much of stderr is held back.
const MARK_MAX: usize = 128;

/// How the output stream ended.
pub enum Pumped {
    /// The process exited; `marker` is what followed the marker, if it came.
    Ended { marker: Option<String> },
    /// Timeout or cancellation: the error to report.
    Stopped(Error),
}

/// Copies `output` into the files at `stdout` / `stderr`. With `nonce`, a
/// trailing stderr line `\x1e{nonce} {value}` is removed and returned.
pub async fn pump(
    mut output: LogStream,
    (stdout, stderr): (&Path, &Path),
    nonce: Option<&str>,
    timeout: Duration,
    cancel: &CancellationToken,
    engine_error: impl Fn(bollard::errors::Error) -> Error,
) -> Result<Pumped> {
    let create = |p: &Path| {
        std::fs::File::create(p).map(tokio::fs::File::from_std).map_err(|e| Error::io("creating output file", e))
    };
    let (mut out, mut err) = (create(stdout)?, create(stderr)?);
    let mut held = Vec::new();
    let copy = async {
        while let Some(item) = output.next().await {
            let w = match item.map_err(&engine_error)? {
                LogOutput::StdErr { message } if nonce.is_some() => {
                    held.extend_from_slice(&message);
                    let keep = held.len().saturating_sub(MARK_MAX);
                    let w = err.write_all(&held[..keep]).await;
                    held.drain(..keep);
                    w
                }
                LogOutput::StdErr { message } => err.write_all(&message).await,
                LogOutput::StdOut { message } | LogOutput::Console { message } => out.write_all(&message).await,
                LogOutput::StdIn { .. } => Ok(()),
            };
            w.map_err(|e| Error::io("writing the action's output", e))?;
        }
        Ok::<_, Error>(())
    };
    let stopped = tokio::select! {
        r = copy => { r?; None }
        _ = tokio::time::sleep(timeout) => Some(Error::DeadlineExceeded(format!(
            "action timed out after {}s and was killed", timeout.as_secs()))),
        _ = cancel.cancelled() => Some(Error::Cancelled("action was cancelled".into())),
    };
    let marker = nonce.and_then(|n| cut_marker(&mut held, n));
    err.write_all(&held).await.map_err(|e| Error::io("writing stderr", e))?;
    out.flush().await.map_err(|e| Error::io("writing stdout", e))?;
    err.flush().await.map_err(|e| Error::io("writing stderr", e))?;
    Ok(match stopped {
        Some(e) => Pumped::Stopped(e),
        None => Pumped::Ended { marker },
    })
}

/// Removes a trailing `\x1e{nonce} {value}\n` from `tail`; returns `value`.
fn cut_marker(tail: &mut Vec<u8>, nonce: &str) -> Option<String> {
    let mut head = vec![MARK];
    head.extend_from_slice(nonce.as_bytes());
    head.push(b' ');
    let at = tail.windows(head.len()).rposition(|w| w == head.as_slice())?;
    let line = &tail[at + head.len()..];
    let value = String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(line)).trim().to_string();
    tail.truncate(at);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_cut_and_the_rest_kept() {
        let mut tail = b"warning: x\n\x1eabc 3\n".to_vec();
        assert_eq!(cut_marker(&mut tail, "abc").as_deref(), Some("3"));
        assert_eq!(tail, b"warning: x\n");
        // Output without a newline before it, and an empty value.
        let mut tail = b"partial\x1eabc \n".to_vec();
        assert_eq!(cut_marker(&mut tail, "abc").as_deref(), Some(""));
        assert_eq!(tail, b"partial");
        // Another nonce (an action printing a forged marker) is left alone.
        let mut tail = b"\x1exyz 9\n".to_vec();
        assert_eq!(cut_marker(&mut tail, "abc"), None);
        assert_eq!(tail, b"\x1exyz 9\n");
    }
}

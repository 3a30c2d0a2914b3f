//! Moves an action's files into and out of a container through the engine's
//! archive API (tar over the Docker connection), for engines that cannot see
//! the server's filesystem, such as another machine's engine over TCP.
//! Archives are streamed in both directions; nothing is held whole in memory.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bollard::query_parameters::{DownloadFromContainerOptionsBuilder, UploadToContainerOptionsBuilder};
use bollard::Docker;
use bytes::{Buf, Bytes};
use futures::StreamExt;
use re_proto::{Error, Result};
use tokio::sync::mpsc;

use super::spec::EXEC_ROOT;
use crate::action::OutputPath;

/// Bytes per message between the tar thread and the connection.
const CHUNK: usize = 256 * 1024;

/// Feeds what a tar builder writes on a blocking thread into a channel.
struct ChannelWriter {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
            self.tx
                .blocking_send(Ok(chunk))
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the engine stopped reading"))?;
        }
        Ok(())
    }
}

/// Lets a tar reader on a blocking thread consume an async byte stream.
struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len());
        out[..n].copy_from_slice(&self.cur[..n]);
        self.cur.advance(n);
        Ok(n)
    }
}

fn tar_dir_header(mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(mode);
    h.set_size(0);
    h.set_mtime(0);
    h
}

/// Extracts `local_dir` in the container as `/<top>/<sub>` (e.g.
/// `re-server/exec`), creating `/<top>` world-writable like the bind mount
/// it stands in for. Symlinks are sent as symlinks, modes are kept.
pub async fn upload_dir(docker: &Docker, container: &str, local_dir: PathBuf, top: &str, sub: &str) -> Result<()> {
    let (tx, rx) = mpsc::channel(4);
    let (top, inner) = (top.to_string(), format!("{top}/{sub}"));
    let builder = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut tar = tar::Builder::new(ChannelWriter { tx, buf: Vec::with_capacity(CHUNK) });
        tar.follow_symlinks(false);
        tar.append_data(&mut tar_dir_header(0o777), format!("{top}/"), std::io::empty())?;
        tar.append_dir_all(&inner, &local_dir)?;
        tar.into_inner()?.flush()
    });
    let body = bollard::body_try_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let opts = UploadToContainerOptionsBuilder::default().path("/").build();
    let sent = docker.upload_to_container(container, Some(opts), body).await;
    let built = builder.await?;
    sent.map_err(|e| Error::Unavailable(format!("uploading the action's inputs to the container: {e}")))?;
    built.map_err(|e| Error::io("packing the action's inputs", e))
}

/// Copies the declared outputs back under `local_root`, where `outputs.rs`
/// finds them as it would in mount mode.
pub async fn download_outputs(
    docker: &Docker,
    container: &str,
    local_root: &Path,
    outputs: &[OutputPath],
) -> Result<()> {
    for out in outputs {
        let local = local_root.join(&out.relative);
        let Some(parent) = local.parent() else { continue };
        let remote = Path::new(EXEC_ROOT).join(&out.relative);
        download(docker, container, &remote.display().to_string(), parent).await?;
    }
    Ok(())
}

/// Writes one small file `/<path>` in the container.
pub async fn upload_file(docker: &Docker, container: &str, path: &str, data: &[u8]) -> Result<()> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_mtime(0);
    tar.append_data(&mut h, path.trim_start_matches('/'), data).map_err(|e| Error::io("packing a file", e))?;
    let bytes = tar.into_inner().map_err(|e| Error::io("packing a file", e))?;
    let opts = UploadToContainerOptionsBuilder::default().path("/").build();
    docker
        .upload_to_container(container, Some(opts), bollard::body_full(bytes.into()))
        .await
        .map_err(|e| Error::Unavailable(format!("writing {path} in the container: {e}")))
}

/// Copies `container_path` (a file, directory or symlink) out of the
/// container into `local_parent`, under its own name. Returns false if the
/// container has nothing there (an output the action did not produce).
pub async fn download(docker: &Docker, container: &str, container_path: &str, local_parent: &Path) -> Result<bool> {
    let opts = DownloadFromContainerOptionsBuilder::default().path(container_path).build();
    let mut stream = docker.download_from_container(container, Some(opts)).boxed();
    let first = match stream.next().await {
        None => return Ok(false),
        Some(Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })) => return Ok(false),
        Some(Err(e)) => {
            return Err(Error::Unavailable(format!("reading output {container_path} from the container: {e}")))
        }
        Some(Ok(b)) => b,
    };
    let (tx, rx) = mpsc::channel(4);
    let parent = local_parent.to_path_buf();
    // tar's unpack refuses entries that would land outside `parent`.
    let unpack = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut archive = tar::Archive::new(ChannelReader { rx, cur: Bytes::new() });
        archive.set_preserve_permissions(true);
        archive.set_overwrite(true);
        archive.unpack(&parent)
    });
    if tx.send(Ok(first)).await.is_ok() {
        while let Some(item) = stream.next().await {
            let item = item.map_err(std::io::Error::other);
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    }
    drop(tx);
    unpack.await?.map_err(|e| Error::io(format!("unpacking output {container_path}"), e))?;
    Ok(true)
}

//! One log file per worker, `<data_dir>/logs/worker_<id>.log`: every event
//! logged inside a worker's span (what it ran, its state changes, errors),
//! one line each, rotated at 10 MB keeping 3 older files (`.1` newest).
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

const ROTATE_BYTES: u64 = 10 << 20;
const KEEP: usize = 3;

/// The worker a span belongs to (a `worker` span's `worker` field).
struct WorkerId(String);

pub struct WorkerLogs {
    dir: PathBuf,
    files: Mutex<HashMap<String, (std::fs::File, u64)>>,
}

impl WorkerLogs {
    pub fn new(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir, files: Mutex::new(HashMap::new()) })
    }

    fn append(&self, worker: &str, line: &str) {
        if worker.is_empty() || worker.contains('/') || worker.starts_with('.') {
            return;
        }
        let mut files = self.files.lock();
        let path = self.dir.join(format!("worker_{worker}.log"));
        if !files.contains_key(worker) {
            let Ok(f) = std::fs::OpenOptions::new().create(true).append(true).open(&path) else { return };
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            files.insert(worker.to_string(), (f, len));
        }
        let (file, len) = files.get_mut(worker).expect("inserted above");
        if *len + line.len() as u64 > ROTATE_BYTES {
            for n in (1..KEEP).rev() {
                let _ = std::fs::rename(
                    path.with_extension(format!("log.{n}")),
                    path.with_extension(format!("log.{}", n + 1)),
                );
            }
            let _ = std::fs::rename(&path, path.with_extension("log.1"));
            match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
                Ok(f) => (*file, *len) = (f, 0),
                Err(_) => return,
            }
        }
        if file.write_all(line.as_bytes()).is_ok() {
            *len += line.len() as u64;
        }
    }
}

/// Collects an event's message and fields as `message k=v ...`.
#[derive(Default)]
struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

/// Finds the `worker` field of a span.
struct FindWorker(Option<String>);

impl Visit for FindWorker {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "worker" {
            self.0 = Some(format!("{value:?}").trim_matches('"').to_string());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "worker" {
            self.0 = Some(value.to_string());
        }
    }
}

impl<S> Layer<S> for WorkerLogs
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "worker" {
            return;
        }
        let mut found = FindWorker(None);
        attrs.record(&mut found);
        if let (Some(worker), Some(span)) = (found.0, ctx.span(id)) {
            span.extensions_mut().insert(WorkerId(worker));
        }
    }

    /// Events inside a worker's span go to its file, and so do events about
    /// a worker logged elsewhere (a drain requested over HTTP), which carry
    /// a `worker` field.
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let in_span = ctx
            .event_scope(event)
            .and_then(|scope| scope.from_root().find_map(|s| s.extensions().get::<WorkerId>().map(|w| w.0.clone())));
        let worker = in_span.or_else(|| {
            let mut found = FindWorker(None);
            event.record(&mut found);
            found.0
        });
        let Some(worker) = worker else { return };
        let mut line = Line::default();
        event.record(&mut line);
        let now = now_rfc3339();
        let text = format!("{now} {} {}: {}\n", event.metadata().level(), event.metadata().target(), line.0);
        self.append(&worker, &text);
    }
}

/// The current time as RFC 3339 (`2026-12-02T10:00:00.123456Z`).
fn now_rfc3339() -> String {
    let mut now = String::new();
    let _ = SystemTime.format_time(&mut Writer::new(&mut now));
    now
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_rotate_keeping_three() {
        let dir = tempfile::tempdir().unwrap();
        let logs = WorkerLogs::new(dir.path().to_path_buf()).unwrap();
        let line = "x".repeat(1 << 20) + "\n";
        for _ in 0..45 {
            logs.append("host-worker-1", &line);
        }
        let names: Vec<String> = {
            let mut v: Vec<String> =
                std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            v.sort();
            v
        };
        assert_eq!(
            names,
            [
                "worker_host-worker-1.log",
                "worker_host-worker-1.log.1",
                "worker_host-worker-1.log.2",
                "worker_host-worker-1.log.3"
            ]
        );
        for n in &names {
            assert!(std::fs::metadata(dir.path().join(n)).unwrap().len() <= ROTATE_BYTES);
        }
    }

    #[test]
    fn lines_are_stamped_in_rfc3339() {
        let now = now_rfc3339();
        assert!(now.starts_with("20") && now.ends_with('Z') && now.contains('T'), "{now}");
    }
}

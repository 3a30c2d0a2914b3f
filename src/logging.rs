//! The server's logs: stderr as text or JSON (`--log-format json`, for log
//! shippers), and one file per worker (`worker_logs.rs`). `--verbose` turns
//! on debug logs of re-server's own crates only; `RUST_LOG` overrides.
use std::path::PathBuf;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::worker_logs::WorkerLogs;

/// re-server's own crates: their debug logs are what `--verbose` shows (the
/// dependencies' debug output, bollard's and h2's above all, drowns them).
const OWN_CRATES: [&str; 7] =
    ["re_server", "re_proto", "re_cas", "re_action_cache", "re_execution", "re_metrics", "re_status"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init(verbose: bool, format: LogFormat, worker_logs: Option<PathBuf>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let mut directives = vec!["info".to_string()];
        if verbose {
            directives.extend(OWN_CRATES.iter().map(|c| format!("{c}=debug")));
        }
        tracing_subscriber::EnvFilter::new(directives.join(","))
    });
    let stderr = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    let files = worker_logs.and_then(|dir| match WorkerLogs::new(dir.clone()) {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("re-server: cannot write worker logs under {}: {e}", dir.display());
            None
        }
    });
    tracing_subscriber::registry().with(filter).with(stderr).with(files).init();
}

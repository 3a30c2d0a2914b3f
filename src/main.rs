//! re-server: reads the config, opens the stores and serves every gRPC
//! service on one address. Each crate owns its section and its service;
//! this file only wires them together.
mod capabilities;
mod config;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use re_action_cache::ActionCacheService;
use re_cas::{ByteStreamService, CasService};
use re_execution::{ExecutionService, OperationsService};
use tracing::{error, info};

use crate::capabilities::CapabilitiesService;
use crate::config::{Config, DEFAULT_CONFIG};

#[derive(Parser, Debug)]
#[command(
    name = "re-server",
    version,
    about = "Remote Execution API v2 server (cache and execution) for Bazel and Buck2"
)]
struct Args {
    /// TOML configuration file; without it an embedded default is used.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Debug-level logs (RUST_LOG overrides).
    #[arg(long, short)]
    verbose: bool,
    /// Listen address, overriding [server] address (port 0 picks a free port).
    #[arg(long)]
    address: Option<String>,
    /// Base directory for storage paths the config leaves unset.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// ByteStream transfers allocate and free buffers of a few hundred KiB (HTTP/2
/// read buffers, held while their frames are written to disk). glibc maps
/// those with mmap and returns them at once, so each one comes back as fresh
/// pages the kernel must fault in and zero: 5 % of upload throughput on the
/// 2-core benchmark machine. Serve them from the heap, and keep up to 64 MiB
/// of freed heap before trimming.
fn keep_transfer_buffers() {
    // SAFETY: mallopt only sets allocator parameters; it runs first in main,
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

fn main() -> ExitCode {
    keep_transfer_buffers();
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if args.verbose { "debug,h2=info,hyper=info,tower=info" } else { "info" })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();

    let loaded = match &args.config {
        Some(path) => Config::load(path),
        None => Config::parse(DEFAULT_CONFIG, "<embedded default config>"),
    };
    let mut config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("re-server: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(a) = args.address {
        config.server.address = a;
    }
    if let Some(d) = args.data_dir {
        config.server.data_dir = Some(d);
    }

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("re-server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let instance = config.server.instance_name.clone();
    let data_dir = config.data_dir();
    let caps = &config.capabilities;

    info!("Initializing storage...");
    let mut cas_config = config.storage.cas.clone();
    cas_config.root_dir.get_or_insert_with(|| data_dir.join("cas"));
    let cas = re_cas::open_store(&cas_config).await?;
    info!(backend = ?cas_config.backend, max_size_bytes = cas_config.max_size_bytes, "CAS ready");
    let ac = re_action_cache::open_store(&config.storage.action_cache, data_dir.join("cache")).await?;
    info!(backend = ?config.storage.action_cache.backend, "Action cache ready");

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(re_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(re_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let compressors = caps.compressors();
    let cas_service =
        CasService::new(cas.clone(), instance.clone(), caps.max_batch_total_size_bytes, compressors.clone());
    let bytestream = ByteStreamService::new(cas.clone(), instance.clone(), compressors);
    let action_cache = ActionCacheService::new(
        ac.clone(),
        cas.clone(),
        instance.clone(),
        caps.action_cache_update_enabled,
        caps.max_batch_total_size_bytes,
    );

    let scheduler = if caps.exec_enabled {
        info!("Initializing execution...");
        re_execution::start_pool(&config.execution, cas.clone(), ac.clone(), &data_dir).await?
    } else {
        None
    };
    let capabilities = CapabilitiesService::new(instance.clone(), caps, scheduler.is_some());

    let services = [
        "build.bazel.remote.execution.v2.ContentAddressableStorage",
        "build.bazel.remote.execution.v2.ActionCache",
        "build.bazel.remote.execution.v2.Capabilities",
        "google.bytestream.ByteStream",
    ];
    for s in services {
        health_reporter.set_service_status(s, tonic_health::ServingStatus::Serving).await;
    }
    if scheduler.is_some() {
        for s in ["build.bazel.remote.execution.v2.Execution", "google.longrunning.Operations"] {
            health_reporter.set_service_status(s, tonic_health::ServingStatus::Serving).await;
        }
    }
    health_reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;

    let listener = tokio::net::TcpListener::bind(&config.server.address)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.server.address))?;
    let local = listener.local_addr()?;
    info!(instance_name = %instance, "Starting server on {local}");

    let execution = scheduler.as_ref().map(|s| ExecutionService::new(s.clone(), instance.clone()).into_server());
    let operations = scheduler.as_ref().map(|s| OperationsService::new(s.clone()).into_server());

    // A custom incoming stream ignores Server::tcp_nodelay, so set it here:
    // without it Nagle + delayed ACK add ~40 ms to small RPCs.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    // hyper's 1 MiB default windows stall a client on every 1 MiB ByteStream
    // message; 16 MiB is only committed while a client has that much in flight.
    tonic::transport::Server::builder()
        .initial_stream_window_size(Some(16 << 20))
        .initial_connection_window_size(Some(16 << 20))
        // Lets clients send uploads in 256 KiB HTTP/2 frames instead of 16 KiB
        // ones: 16x fewer frames to parse per ByteStream message.
        .max_frame_size(Some(256 << 10))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(cas_service.into_server())
        .add_service(bytestream.into_server())
        .add_service(action_cache.into_server())
        .add_service(capabilities.into_server())
        .add_optional_service(execution)
        .add_optional_service(operations)
        .serve_with_incoming_shutdown(incoming, shutdown_signal())
        .await?;
    info!("Server stopped");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    info!("Shutting down");
}

//! re-server: reads the config, opens the stores and serves every gRPC
//! service on one address. Each crate owns its section and its service;
//! this file only wires them together.
mod capabilities;
mod config;
mod listener;
mod logging;
mod tls;
mod worker_logs;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use re_action_cache::{ActionCacheService, CompletenessCheckingStore};
use re_cas::{ByteStreamService, CasService};
use re_execution::{ExecutionService, OperationsService};
use re_proto::google::longrunning::operations_server::OperationsServer;
use re_proto::reapi::action_cache_server::ActionCacheServer;
use re_proto::reapi::capabilities_server::CapabilitiesServer;
use re_proto::reapi::execution_server::ExecutionServer;
use tracing::{error, info, warn};

use crate::capabilities::CapabilitiesService;
use crate::config::{Config, Overrides, DEFAULT_CONFIG};
use crate::logging::LogFormat;

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
    #[arg(long, short, global = true)]
    verbose: bool,
    /// Listen address, overriding [server] address (port 0 picks a free port).
    #[arg(long)]
    address: Option<String>,
    /// Base directory for storage paths the config leaves unset.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address of the status page, its API and /metrics, overriding
    /// [server] http_address ("" turns them off).
    #[arg(long)]
    http_address: Option<String>,
    /// Server log on stderr as text or as one JSON object a line.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Serve a re-server's pool from this machine (a worker agent).
    Worker {
        /// The server, grpc://HOST:PORT or grpcs://HOST:PORT.
        #[arg(long)]
        server: String,
        /// The agent's worker.toml: [worker] and [[execution.pool.workers]].
        #[arg(long, short)]
        config: PathBuf,
    },
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
    if let Some(Command::Worker { server, config }) = &args.command {
        return run_worker(server, config, args.verbose, args.log_format);
    }
    let overrides = Overrides { address: args.address, data_dir: args.data_dir, http_address: args.http_address };
    let loaded = match &args.config {
        Some(path) => Config::load(path, &overrides),
        None => Config::parse(DEFAULT_CONFIG, "<embedded default config>", &overrides),
    };
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("re-server: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let executes =
        config.capabilities.exec_enabled && config.execution.backend != re_execution::config::ExecutionBackend::None;
    let worker_logs = executes.then(|| config.server.data_dir.join("logs"));
    logging::init(args.verbose, args.log_format, worker_logs);
    // Forked now, while the server is small and has one thread (see re_execution::spawner).
    let spawner = if executes {
        // SAFETY: no thread has been started yet (the runtime comes next).
        match unsafe { re_execution::spawner::Spawner::start() } {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("re-server: cannot start the process spawner: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let served = runtime.block_on(serve(config, spawner));
    // Blocking tasks still running (a read for a client already gone) are not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("re-server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `re-server worker`: a worker agent.
fn run_worker(server: &str, path: &std::path::Path, verbose: bool, format: LogFormat) -> ExitCode {
    let file = match config::WorkerFile::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("re-server worker: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(verbose, format, None);
    // SAFETY: no thread has been started yet (the runtime comes next).
    let spawner = match unsafe { re_execution::spawner::Spawner::start() } {
        Ok(s) => s,
        Err(e) => {
            eprintln!("re-server worker: cannot start the process spawner: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let served = runtime.block_on(re_agent::run(file.worker, file.execution, server, Some(spawner)));
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("re-server worker: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    config: Config,
    spawner: Option<re_execution::spawner::Spawner>,
) -> Result<(), Box<dyn std::error::Error>> {
    let instance = config.server.instance_name.clone();
    let caps = &config.capabilities;

    let metrics = config.server.metrics.then(|| Arc::new(re_metrics::Metrics::new()));
    // Read before anything starts: a token file that went away is an error now.
    let tokens = load_tokens(&config.server)?;
    let admin = re_status::AdminToken::load(config.server.admin_token_file.as_deref())
        .map_err(|e| format!("server.admin_token_file: {e}"))?
        .with_roles(tokens.clone());

    info!("Initializing storage...");
    let cas_config = &config.storage.cas;
    let mut cas = re_cas::open_store(cas_config).await?;
    if let Some(m) = &metrics {
        cas = Arc::new(re_cas::metered::MeteredStore::new(cas, m.clone()));
    }
    info!(backend = ?cas_config.backend, max_size_bytes = cas_config.max_size_bytes, "CAS ready");
    let ac = re_action_cache::open_store(&config.storage.action_cache).await?;
    // Results are served only while their outputs are all in the CAS.
    let mut ac: Arc<dyn re_action_cache::ActionCacheStore> = Arc::new(CompletenessCheckingStore::new(ac, cas.clone()));
    if let Some(m) = &metrics {
        ac = Arc::new(re_action_cache::metered::MeteredActionCache::new(ac, m.clone()));
    }
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
    let resume_window = std::time::Duration::from_secs(cas_config.upload_resume_seconds);
    let bytestream = ByteStreamService::new(cas.clone(), instance.clone(), compressors, resume_window);
    let action_cache = ActionCacheService::new(
        ac.clone(),
        cas.clone(),
        instance.clone(),
        caps.action_cache_update_enabled,
        caps.max_batch_total_size_bytes,
    );

    let scheduler = if caps.exec_enabled {
        info!("Initializing execution...");
        re_execution::start_pool(&config.execution, cas.clone(), ac.clone(), metrics.clone(), spawner).await?
    } else {
        None
    };
    let capabilities = CapabilitiesService::new(instance.clone(), caps, scheduler.is_some());

    let cas_service = re_cas::find_missing_http::server(cas_service);
    let bytestream = re_cas::bytestream_http::server(bytestream);
    let action_cache = action_cache.into_server();
    let capabilities = capabilities.into_server();
    let execution = scheduler.as_ref().map(|s| ExecutionService::new(s.clone(), instance.clone()).into_server());
    let operations = scheduler.as_ref().map(|s| OperationsService::new(s.clone()).into_server());
    let bots = scheduler.as_ref().map(|s| re_execution::agents::BotsService::new(s.clone()).into_server());

    health_reporter.set_serving::<re_cas::find_missing_http::FastFindMissingCas>().await;
    health_reporter.set_serving::<re_cas::bytestream_http::CopyFreeByteStream>().await;
    health_reporter.set_serving::<ActionCacheServer<ActionCacheService>>().await;
    health_reporter.set_serving::<CapabilitiesServer<CapabilitiesService>>().await;
    if scheduler.is_some() {
        health_reporter.set_serving::<ExecutionServer<ExecutionService>>().await;
        health_reporter.set_serving::<OperationsServer<OperationsService>>().await;
    }
    health_reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;

    let listener = tokio::net::TcpListener::bind(&config.server.address)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.server.address))?;
    let local = listener.local_addr()?;

    // SIGTERM or ^C flips `stop`: the listeners stop accepting, then the pool drains.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut accepting = stopping.clone();
    let mut stopping = stopping;
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let http = if config.server.http_address.is_empty() {
        None
    } else {
        let listener = tokio::net::TcpListener::bind(&config.server.http_address)
            .await
            .map_err(|e| format!("cannot listen on {} (server.http_address): {e}", config.server.http_address))?;
        let state = re_status::StatusState {
            scheduler: scheduler.clone(),
            metrics: metrics.clone(),
            cas: cas.clone(),
            admin,
            open_reads: false,
        };
        info!("Status page and API on http://{}/", listener.local_addr()?);
        let mut stopped = stopping.clone();
        Some(tokio::spawn(re_status::serve(listener, state, async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        })))
    };
    info!(instance_name = %instance, "Starting server on {local}");
    let tls = load_tls(&config.server)?;
    let incoming = listener::incoming(listener, config.server.max_connections, tls);
    let grpc_metrics = metrics.clone().map(re_metrics::grpc_layer::GrpcMetricsLayer::new);
    let auth = client_auth(tokens.clone(), local);
    let grace = std::time::Duration::from_secs(config.server.shutdown_grace_seconds);
    let serve = tonic::transport::Server::builder()
        // hyper's 1 MiB default windows stall a client on every 1 MiB ByteStream
        // message; 16 MiB is only committed while a client has that much in flight.
        .initial_stream_window_size(Some(16 << 20))
        .initial_connection_window_size(Some(16 << 20))
        // Lets clients send uploads in 256 KiB HTTP/2 frames instead of 16 KiB
        // ones: 16x fewer frames to parse per ByteStream message.
        .max_frame_size(Some(256 << 10))
        // Bounds what one connection can hold open (each stream holds at most
        // one request, whose size the services bound).
        .max_concurrent_streams(Some(config.server.max_streams_per_connection))
        // A peer that stops answering pings is gone: its streams are dropped
        // and what they held (uploads, waiters) released.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        // Metrics outside, so refused calls are counted too.
        .layer(tower::util::option_layer(grpc_metrics))
        .layer(tower::util::option_layer(auth))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(cas_service)
        .add_service(bytestream)
        .add_service(action_cache)
        .add_service(capabilities)
        .add_optional_service(execution)
        .add_optional_service(operations)
        .add_optional_service(bots)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = accepting.wait_for(|stop| *stop).await;
        });
    tokio::pin!(serve);
    let ended_by_itself = tokio::select! {
        r = &mut serve => Some(r),
        _ = stopping.wait_for(|stop| *stop) => None,
    };
    if let Some(Err(e)) = &ended_by_itself {
        return Err(format!("serving failed: {e}").into());
    }
    // No new connection or stream is accepted from here on. Running actions
    // may finish within the grace period and their clients get the answers.
    if let Some(s) = &scheduler {
        s.shutdown(grace).await;
    }
    if ended_by_itself.is_none() && tokio::time::timeout(CONNECTION_DRAIN, &mut serve).await.is_err() {
        warn!("closing the connections still open {}s after the last answer", CONNECTION_DRAIN.as_secs());
    }
    if let Some(http) = http {
        // Its requests are short; it stops with the gRPC side.
        let _ = tokio::time::timeout(CONNECTION_DRAIN, http).await;
    }
    info!("Server stopped");
    Ok(())
}

/// `[server.auth] tokens_file`, re-read on SIGHUP.
fn load_tokens(server: &config::ServerConfig) -> Result<Option<Arc<re_auth::TokensFile>>, Box<dyn std::error::Error>> {
    let Some(path) = &server.auth.tokens_file else { return Ok(None) };
    let tokens = Arc::new(re_auth::TokensFile::load(path).map_err(|e| format!("server.auth.tokens_file: {e}"))?);
    info!(tokens = tokens.current().len(), "clients need a token (server.auth.tokens_file)");
    let reloaded = tokens.clone();
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
        while hup.recv().await.is_some() {
            reloaded.reload();
        }
    });
    Ok(Some(tokens))
}

/// `[server.tls]` when set, re-read on SIGHUP.
fn load_tls(server: &config::ServerConfig) -> Result<Option<Arc<tls::ReloadableTls>>, Box<dyn std::error::Error>> {
    let Some(files) = &server.tls else { return Ok(None) };
    let tls = Arc::new(tls::ReloadableTls::load(files).map_err(|e| format!("server.tls.{e}"))?);
    info!(mutual = files.client_ca_file.is_some(), "TLS on the gRPC port");
    let reloaded = tls.clone();
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
        while hup.recv().await.is_some() {
            reloaded.reload();
        }
    });
    Ok(Some(tls))
}

/// The tokens layer when there are tokens; without them, a loud warning
/// when the port is not loopback.
fn client_auth(tokens: Option<Arc<re_auth::TokensFile>>, local: std::net::SocketAddr) -> Option<re_auth::AuthLayer> {
    if tokens.is_none() && !local.ip().is_loopback() {
        warn!(
            "NO AUTHENTICATION: {local} is reachable from the network and [server.auth] tokens_file is unset: \
             anyone who can connect can read and write every blob and run any command"
        );
    }
    tokens.map(re_auth::AuthLayer::new)
}

/// After the pool stopped, connections get this long to take their answers;
/// idle streams are not waited for beyond it.
const CONNECTION_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    info!("Shutting down");
}

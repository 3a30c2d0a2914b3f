//! The worker agent (`re-server worker`): serves a re-server's pool from
//! another machine. Each local worker (the same `[[execution.pool.workers]]`
//! tables as the server's) holds a bot session with the server over the
//! Remote Workers API (`bot.rs`); a lease's action is prepared and its
//! inputs fetched into a local, bounded, hard-linkable cache
//! (`read_through.rs`, `inputs.rs`), run through the action frame, and its
//! outputs uploaded (`lease.rs`, `server_cas.rs`).
pub mod bot;
pub mod config;
pub mod connection;
pub mod inputs;
pub mod lease;
pub mod read_through;
pub mod server_cas;

use std::sync::Arc;

use re_cas::BlobStore;
use re_execution::spawner::Spawner;
use re_execution::ExecutionConfig;
use re_proto::rwapi::bots_client::BotsClient;
use re_proto::{Error, Result};
use tonic::service::interceptor::InterceptedService;
use tracing::info;

pub use config::AgentConfig;

use crate::bot::Bot;
use crate::lease::LeaseContext;
use crate::read_through::ReadThroughStore;
use crate::server_cas::ServerCas;

/// Runs the agent until SIGTERM / ^C (running actions finish and are
/// reported first) or until the server refuses its token.
pub async fn run(agent: AgentConfig, execution: ExecutionConfig, server: &str, spawner: Option<Spawner>) -> Result<()> {
    let token = connection::bearer_token(agent.token_file.as_deref())?;
    let channel = InterceptedService::new(connection::channel(server, &agent)?, token);
    let cache_root = agent.cache_dir.join("cas");
    let local = re_cas::filesystem_store::FilesystemStore::open(cache_root, agent.cache_max_bytes, false, 0).await?;
    info!(blobs = local.len(), dir = %agent.cache_dir.display(), max_bytes = agent.cache_max_bytes, "input cache ready");
    let local: Arc<dyn BlobStore> = Arc::new(local);
    let server_cas = ServerCas::new(channel.clone(), agent.instance_name.clone());
    let store: Arc<dyn BlobStore> = Arc::new(ReadThroughStore::new(local, server_cas.clone()));
    let groups = re_execution::pool::build_groups(&execution, store.clone(), spawner)?;
    let ctx = LeaseContext { store, server: server_cas, limits: execution.pool.action_limits() };
    let bots = BotsClient::new(channel);

    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for (_, workers) in groups {
        for worker in workers {
            let bot_id = format!("{}/{}", agent.name, worker.id());
            info!(bot = %bot_id, server, "serving");
            let bot = Bot {
                worker,
                bot_id,
                host: re_execution::worker_status::hostname(),
                parent: agent.instance_name.clone(),
                client: bots.clone(),
                ctx: ctx.clone(),
            };
            tasks.spawn(bot.serve(stopping.clone()));
        }
    }
    if tasks.is_empty() {
        return Err(Error::InvalidArgument("worker.toml configures no worker (every table has count = 0)".into()));
    }
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("stopping: running actions finish and are reported first");
        let _ = stop.send(true);
    });
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(Error::Internal(format!("a bot task failed: {e}"))),
        }
    }
    info!("agent stopped");
    Ok(())
}

async fn shutdown_signal() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else { return };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

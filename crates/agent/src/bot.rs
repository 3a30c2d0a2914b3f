//! One bot session per local worker: open a session offering the worker's
//! platform, then call UpdateBotSession again and again (the heartbeat),
//! reporting the lease and taking the next. A session the server no longer
//! knows is opened again; a refused token stops the agent.
use std::sync::Arc;
use std::time::Duration;

use re_execution::agents::agent_worker::lease_action_digest;
use re_execution::worker::Worker;
use re_proto::rwapi::bots_client::BotsClient;
use re_proto::rwapi::{
    worker, BotSession, BotStatus, CreateBotSessionRequest, Device, Lease, LeaseState, UpdateBotSessionRequest,
};
use re_proto::{Error, Result};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::connection::ServerChannel;
use crate::lease::{run_lease, LeaseContext};

/// A call longer than this is abandoned and made again.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Bot {
    pub worker: Arc<dyn Worker>,
    pub bot_id: String,
    pub host: String,
    pub parent: String,
    pub client: BotsClient<ServerChannel>,
    pub ctx: LeaseContext,
}

/// The lease this bot holds.
struct Running {
    id: String,
    cancel: CancellationToken,
    task: JoinHandle<Lease>,
}

fn fatal(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied)
}

fn refused(bot: &str, status: &tonic::Status) -> Error {
    Error::PermissionDenied(format!(
        "the server refused bot {bot}: {} (the agent's token_file must hold a token with the 'worker' role)",
        status.message()
    ))
}

impl Bot {
    fn offer(&self, status: BotStatus, leases: Vec<Lease>) -> BotSession {
        let properties =
            self.worker.properties().iter().map(|(k, v)| worker::Property { key: k.clone(), value: v.clone() });
        BotSession {
            bot_id: self.bot_id.clone(),
            status: status as i32,
            worker: Some(re_proto::rwapi::Worker {
                devices: vec![Device { handle: self.host.clone(), properties: vec![] }],
                properties: properties.collect(),
                configs: vec![],
            }),
            leases,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        }
    }

    /// Serves until `stop` is set and no lease runs; Err when the server
    /// refuses the agent's token.
    pub async fn serve(mut self, mut stop: watch::Receiver<bool>) -> Result<()> {
        let mut running: Option<Running> = None;
        let mut completed: Option<Lease> = None;
        let mut pause = Duration::from_millis(500);
        loop {
            if *stop.borrow() && running.is_none() && completed.is_none() {
                return Ok(());
            }
            let req = CreateBotSessionRequest {
                parent: self.parent.clone(),
                bot_session: Some(self.offer(BotStatus::Ok, vec![])),
            };
            let session = match tokio::time::timeout(CALL_TIMEOUT, self.client.create_bot_session(req)).await {
                Ok(Ok(s)) => s.into_inner(),
                Ok(Err(s)) if fatal(&s) => return Err(refused(&self.bot_id, &s)),
                Ok(Err(s)) => {
                    warn!(bot = %self.bot_id, error = %s.message(), "cannot open a session; retrying in {}s", pause.as_secs_f32());
                    tokio::select! { _ = tokio::time::sleep(pause) => {}, _ = stop.changed() => {} }
                    pause = (pause * 2).min(Duration::from_secs(10));
                    continue;
                }
                Err(_) => continue,
            };
            pause = Duration::from_millis(500);
            info!(bot = %self.bot_id, session = %session.name, "session open");
            // A lease of an earlier session is the server's no more.
            if let Some(r) = running.take() {
                r.cancel.cancel();
            }
            completed = None;
            match self.session_loop(&session.name, &mut running, &mut completed, &mut stop).await {
                Ok(()) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Updates the session until it ends (Ok) or the token is refused.
    async fn session_loop(
        &mut self,
        name: &str,
        running: &mut Option<Running>,
        completed: &mut Option<Lease>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<()> {
        let mut failures = 0u32;
        loop {
            let stopping = *stop.borrow();
            if stopping && running.is_none() && completed.is_none() {
                return Ok(());
            }
            let mut leases = Vec::new();
            if let Some(l) = completed.clone() {
                leases.push(l);
            } else if let Some(r) = running.as_ref() {
                leases.push(Lease { id: r.id.clone(), state: LeaseState::Active as i32, ..Default::default() });
            }
            let status = match (stopping, self.worker.is_healthy().await) {
                (true, _) => BotStatus::BotTerminating,
                (false, true) => BotStatus::Ok,
                (false, false) => BotStatus::Unhealthy,
            };
            let mut session = self.offer(status, leases);
            session.name = name.to_string();
            let req = UpdateBotSessionRequest { name: name.to_string(), bot_session: Some(session), update_mask: None };
            let mut client = self.client.clone();
            let call = tokio::time::timeout(CALL_TIMEOUT, client.update_bot_session(req));
            tokio::pin!(call);
            // A lease that finishes while the call waits is reported at once.
            let answer = tokio::select! {
                a = &mut call => Some(a),
                lease = finished(running), if completed.is_none() => {
                    *completed = Some(lease);
                    None
                }
                _ = stop.changed(), if !stopping => None,
            };
            let Some(answer) = answer else { continue };
            let session = match answer {
                Ok(Ok(s)) => s.into_inner(),
                Ok(Err(s)) if fatal(&s) => return Err(refused(&self.bot_id, &s)),
                Ok(Err(s)) if s.code() == tonic::Code::NotFound => {
                    warn!(bot = %self.bot_id, "the server ended the session: {}", s.message());
                    return Ok(());
                }
                Ok(Err(s)) => {
                    failures += 1;
                    warn!(bot = %self.bot_id, error = %s.message(), "UpdateBotSession failed");
                    if failures > 20 {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(_) => continue,
            };
            failures = 0;
            // The server has the completed lease now.
            let reported = completed.take();
            for lease in session.leases {
                let state = LeaseState::try_from(lease.state).unwrap_or(LeaseState::Unspecified);
                match state {
                    LeaseState::Pending if running.is_none() && !stopping => {
                        if reported.as_ref().is_some_and(|r| r.id == lease.id) {
                            continue;
                        }
                        *running = Some(self.start(lease));
                    }
                    LeaseState::Cancelled => {
                        if let Some(r) = running.as_ref().filter(|r| r.id == lease.id) {
                            info!(bot = %self.bot_id, lease = %lease.id, "the server cancelled the lease");
                            r.cancel.cancel();
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn start(&self, lease: Lease) -> Running {
        let cancel = CancellationToken::new();
        let id = lease.id.clone();
        let (ctx, worker, token) = (self.ctx.clone(), self.worker.clone(), cancel.clone());
        let task = tokio::spawn(async move {
            match lease_action_digest(&lease) {
                Ok(digest) => {
                    info!(lease = %lease.id, action = %digest, "lease taken");
                    run_lease(ctx, worker, lease.id, digest, token).await
                }
                Err(e) => Lease {
                    id: lease.id,
                    state: LeaseState::Completed as i32,
                    status: Some(e.to_rpc_status()),
                    ..Default::default()
                },
            }
        });
        Running { id, cancel, task }
    }
}

/// Waits for the running lease to finish (forever when there is none).
async fn finished(running: &mut Option<Running>) -> Lease {
    let Some(r) = running.as_mut() else { return std::future::pending().await };
    let lease = match (&mut r.task).await {
        Ok(lease) => lease,
        Err(e) => Lease {
            id: r.id.clone(),
            state: LeaseState::Completed as i32,
            status: Some(Error::WorkerLost(format!("the agent's lease task failed: {e}")).to_rpc_status()),
            ..Default::default()
        },
    };
    *running = None;
    lease
}

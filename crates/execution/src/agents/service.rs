//! The Bots service: agents open a session (CreateBotSession), then call
//! UpdateBotSession in a loop. Each call reports the bot's lease and is held
//! until there is news for it (a lease, a cancellation) or a quarter of the
//! session's lifetime has passed, so idle agents cost one call per few
//! seconds and a queued action reaches a free agent at once.
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use re_proto::rwapi::bots_server::{Bots, BotsServer};
use re_proto::rwapi::{BotSession, BotStatus, CreateBotSessionRequest, UpdateBotSessionRequest};
use re_proto::Error;
use tonic::{Request, Response, Status};
use tracing::info;

use super::AgentWorker;
use crate::scheduler::Scheduler;
use crate::worker::Worker;
use crate::worker_status::WorkerStatus;

pub struct BotsService {
    sched: Arc<Scheduler>,
}

impl BotsService {
    pub fn new(sched: Arc<Scheduler>) -> Self {
        Self { sched }
    }

    pub fn into_server(self) -> BotsServer<Self> {
        BotsServer::new(self)
    }

    fn answer(&self, worker: &AgentWorker, mut session: BotSession) -> BotSession {
        let expires = SystemTime::now() + self.sched.agents.timeout;
        session.name = worker.session().to_string();
        session.leases = worker.leases();
        session.expire_time = Some(expires.into());
        session
    }
}

/// What a bot offers: its worker's properties and its primary device's.
fn offered(session: &BotSession) -> (Vec<(String, String)>, String) {
    let worker = session.worker.clone().unwrap_or_default();
    let mut props: Vec<(String, String)> = worker.properties.iter().map(|p| (p.key.clone(), p.value.clone())).collect();
    let primary = worker.devices.first();
    if let Some(d) = primary {
        props.extend(d.properties.iter().map(|p| (p.key.clone(), p.value.clone())));
    }
    props.sort();
    props.dedup();
    let host = primary.map(|d| d.handle.clone()).filter(|h| !h.is_empty()).unwrap_or_else(|| session.bot_id.clone());
    (props, host)
}

#[tonic::async_trait]
impl Bots for BotsService {
    async fn create_bot_session(&self, req: Request<CreateBotSessionRequest>) -> Result<Response<BotSession>, Status> {
        let req = req.into_inner();
        let session = req.bot_session.ok_or_else(|| Error::InvalidArgument("bot_session is required".into()))?;
        if session.bot_id.is_empty() || session.bot_id.len() > 200 {
            return Err(Error::InvalidArgument("bot_session.bot_id must name the bot (1 to 200 bytes)".into()).into());
        }
        if self.sched.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::Unavailable("the server is shutting down; connect again later".into()).into());
        }
        let (properties, host) = offered(&session);
        let parent = req.parent.trim_matches('/');
        let name = match parent.is_empty() {
            true => format!("botSessions/{}", uuid::Uuid::new_v4()),
            false => format!("{parent}/botSessions/{}", uuid::Uuid::new_v4()),
        };
        let group = &self.sched.agents.group;
        let status = Arc::new(WorkerStatus::new(&session.bot_id, &group.name, "agent").on_host(host.clone()));
        let worker = Arc::new(AgentWorker::new(
            session.bot_id.clone(),
            name.clone(),
            properties.clone(),
            status,
            self.sched.agents.timeout,
        ));
        for old in self.sched.agents.add(worker.clone()) {
            info!(bot = old.id(), session = old.session(), "an earlier session of the bot ended");
        }
        self.sched.forget_gone_workers(worker.id());
        let props: Vec<String> = properties.iter().map(|(k, v)| format!("{k}={v}")).collect();
        info!(bot = %session.bot_id, %host, session = %name, properties = %props.join(","), "agent connected");
        self.sched.spawn_worker(worker.clone(), group.clone());
        Ok(Response::new(self.answer(&worker, session)))
    }

    async fn update_bot_session(&self, req: Request<UpdateBotSessionRequest>) -> Result<Response<BotSession>, Status> {
        let req = req.into_inner();
        let session = req.bot_session.unwrap_or_default();
        if !session.name.is_empty() && session.name != req.name {
            return Err(Error::InvalidArgument("name and bot_session.name differ".into()).into());
        }
        let worker = self.sched.agents.get(&req.name).filter(|w| !w.is_gone()).ok_or_else(|| {
            Error::NotFound(format!(
                "bot session {} is not open (it lapsed, or the bot opened a newer one); create a new session",
                req.name
            ))
        })?;
        worker.touch();
        worker.report(&session.leases);
        let status = BotStatus::try_from(session.status).unwrap_or(BotStatus::Unspecified);
        worker.set_refusing(!matches!(status, BotStatus::Ok | BotStatus::Unspecified));
        // Held open for news, well inside the session's lifetime.
        let hold = (self.sched.agents.timeout / 4).min(Duration::from_secs(20));
        worker.wait_for_change(hold, &session.leases).await;
        worker.touch();
        Ok(Response::new(self.answer(&worker, session)))
    }
}

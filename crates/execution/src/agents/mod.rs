//! Worker agents on other machines, connected over the Remote Workers API
//! (`google.devtools.remoteworkers.v1test2.Bots`). Each bot session becomes
//! one worker of the pool ([`AgentWorker`]) that the scheduler feeds like a
//! local one; the agent side is the `re-agent` crate.
pub mod agent_worker;
pub mod input_fetch;
pub mod service;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::RwLock;
use re_proto::Error;

pub use agent_worker::AgentWorker;
pub use service::BotsService;

use crate::platform::Properties;
use crate::workers::WorkerGroup;

/// The sessions of the agents connected now, and what agents have offered.
pub struct AgentRegistry {
    /// By session name.
    sessions: DashMap<String, Arc<AgentWorker>>,
    /// Every platform an agent has offered since the server started: an
    /// action for one of them is queued while no such agent is connected.
    shapes: RwLock<Vec<Properties>>,
    /// The group every agent worker belongs to (it cannot make workers:
    /// agents join by connecting).
    pub(crate) group: Arc<WorkerGroup>,
    pub(crate) timeout: Duration,
}

impl AgentRegistry {
    pub fn new(timeout: Duration) -> Self {
        let make = Box::new(|_: String| -> re_proto::Result<Arc<dyn crate::worker::Worker>> {
            Err(Error::FailedPrecondition(
                "agent workers join by connecting: run `re-server worker --server URL --config worker.toml` \
                 on the machine that should serve"
                    .into(),
            ))
        });
        let group = WorkerGroup::new("agents".into(), "agent", 0, Vec::new(), Arc::new(AtomicUsize::new(0)), make);
        Self { sessions: DashMap::new(), shapes: RwLock::new(Vec::new()), group: Arc::new(group), timeout }
    }

    pub fn get(&self, session: &str) -> Option<Arc<AgentWorker>> {
        self.sessions.get(session).map(|s| s.clone())
    }

    /// Registers a new session; earlier sessions of the same bot end.
    pub(crate) fn add(&self, worker: Arc<AgentWorker>) -> Vec<Arc<AgentWorker>> {
        use crate::worker::Worker;
        let mut ended = Vec::new();
        self.sessions.retain(|_, s| {
            let keep = s.id() != worker.id() && !s.is_gone();
            if !keep {
                s.end();
                ended.push(s.clone());
            }
            keep
        });
        {
            let mut shapes = self.shapes.write();
            if !shapes.contains(worker.properties()) {
                shapes.push(worker.properties().clone());
            }
        }
        self.sessions.insert(worker.session().to_string(), worker);
        ended
    }

    pub fn shapes(&self) -> Vec<Properties> {
        self.shapes.read().clone()
    }
}

//! One long-running Execute operation: its stage, who waits on it, and its
//! google.longrunning form.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use prost::Message;
use re_proto::google::longrunning::{operation, Operation as OperationProto};
use re_proto::reapi::execution_stage::Value as StageValue;
use re_proto::reapi::{ExecuteOperationMetadata, ExecuteResponse};
use re_proto::DigestInfo;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub enum Stage {
    Queued,
    Executing,
    Completed(Arc<ExecuteResponse>),
}

pub struct Operation {
    pub name: String,
    pub action_digest: DigestInfo,
    stage: watch::Sender<Stage>,
    /// Fired to stop the running process (CancelOperation, abandonment).
    pub cancel: CancellationToken,
    waiters: AtomicUsize,
    completed_at: Mutex<Option<Instant>>,
    /// Set when an operator stopped it (its client gets ABORTED).
    aborted: AtomicBool,
}

impl Operation {
    pub fn new(action_digest: DigestInfo) -> Arc<Self> {
        Arc::new(Self {
            name: uuid::Uuid::new_v4().to_string(),
            action_digest,
            stage: watch::Sender::new(Stage::Queued),
            cancel: CancellationToken::new(),
            waiters: AtomicUsize::new(0),
            completed_at: Mutex::new(None),
            aborted: AtomicBool::new(false),
        })
    }

    pub fn stage(&self) -> Stage {
        self.stage.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Stage> {
        self.stage.subscribe()
    }

    pub fn is_done(&self) -> bool {
        matches!(*self.stage.borrow(), Stage::Completed(_))
    }

    pub fn set_executing(&self) {
        self.stage.send_if_modified(|s| {
            if matches!(s, Stage::Queued) {
                *s = Stage::Executing;
                true
            } else {
                false
            }
        });
    }

    /// Back to QUEUED: its worker was lost and it waits for another.
    pub fn requeue(&self) {
        self.stage.send_if_modified(|s| {
            if matches!(s, Stage::Executing) {
                *s = Stage::Queued;
                true
            } else {
                false
            }
        });
    }

    /// An operator stops it.
    pub fn abort(&self) {
        self.aborted.store(true, Ordering::SeqCst);
        self.cancel.cancel();
    }

    pub fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::SeqCst)
    }

    /// Records the final response; only the first completion counts.
    pub fn complete(&self, response: ExecuteResponse) -> bool {
        let done = self.stage.send_if_modified(|s| {
            if matches!(s, Stage::Completed(_)) {
                false
            } else {
                *s = Stage::Completed(Arc::new(response));
                true
            }
        });
        if done {
            *self.completed_at.lock() = Some(Instant::now());
        }
        done
    }

    pub fn completed_at(&self) -> Option<Instant> {
        *self.completed_at.lock()
    }

    pub fn waiters(&self) -> usize {
        self.waiters.load(Ordering::SeqCst)
    }

    pub(crate) fn add_waiter(&self) {
        self.waiters.fetch_add(1, Ordering::SeqCst);
    }

    /// Returns the number of waiters left.
    pub(crate) fn remove_waiter(&self) -> usize {
        self.waiters.fetch_sub(1, Ordering::SeqCst) - 1
    }

    pub fn to_proto(&self) -> OperationProto {
        operation_proto(&self.name, self.action_digest, &self.stage())
    }
}

pub fn operation_proto(name: &str, action_digest: DigestInfo, stage: &Stage) -> OperationProto {
    let value = match stage {
        Stage::Queued => StageValue::Queued,
        Stage::Executing => StageValue::Executing,
        Stage::Completed(_) => StageValue::Completed,
    };
    let metadata = ExecuteOperationMetadata {
        stage: value as i32,
        action_digest: Some(action_digest.into()),
        ..Default::default()
    };
    let result = match stage {
        Stage::Completed(resp) => Some(operation::Result::Response(prost_types::Any {
            type_url: "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse".into(),
            value: resp.encode_to_vec(),
        })),
        _ => None,
    };
    OperationProto {
        name: name.to_string(),
        metadata: Some(prost_types::Any {
            type_url: "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteOperationMetadata".into(),
            value: metadata.encode_to_vec(),
        }),
        done: result.is_some(),
        result,
    }
}

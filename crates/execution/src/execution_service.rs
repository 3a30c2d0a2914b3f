//! build.bazel.remote.execution.v2.Execution: Execute and WaitExecution
//! stream the operation's stages until it completes.
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use re_proto::google::longrunning::Operation as OperationProto;
use re_proto::reapi::execution_server::{Execution, ExecutionServer};
use re_proto::reapi::{ExecuteRequest, WaitExecutionRequest};
use re_proto::{check_digest_function, check_instance, Error};
use tonic::{Request, Response, Status};

use crate::queue::RequestInfo;
use crate::scheduler::{Scheduler, WaiterGuard};

/// An unchanged operation is re-sent this often so proxies and clients
/// see the stream is alive.
const KEEPALIVE: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct ExecutionService {
    scheduler: Arc<Scheduler>,
    instance_name: String,
}

impl ExecutionService {
    pub fn new(scheduler: Arc<Scheduler>, instance_name: String) -> Self {
        Self { scheduler, instance_name }
    }

    pub fn into_server(self) -> ExecutionServer<Self> {
        ExecutionServer::new(self)
    }
}

/// Streams the operation: its current state at once, then every change,
/// ending after the completed one. Dropping the stream drops the guard.
pub fn operation_stream(guard: WaiterGuard) -> BoxStream<'static, Result<OperationProto, Status>> {
    let rx = guard.op.subscribe();
    futures::stream::unfold(Some((guard, rx, true)), |state| async move {
        let (guard, mut rx, first) = state?;
        if !first {
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep(KEEPALIVE) => {}
            }
        }
        let stage = rx.borrow_and_update().clone();
        let proto = crate::operation::operation_proto(&guard.op.name, guard.op.action_digest, &stage);
        let next = if proto.done { None } else { Some((guard, rx, false)) };
        Some((Ok(proto), next))
    })
    .boxed()
}

#[tonic::async_trait]
impl Execution for ExecutionService {
    type ExecuteStream = BoxStream<'static, Result<OperationProto, Status>>;
    type WaitExecutionStream = BoxStream<'static, Result<OperationProto, Status>>;

    async fn execute(&self, request: Request<ExecuteRequest>) -> Result<Response<Self::ExecuteStream>, Status> {
        let meta = re_proto::request_metadata(request.metadata()).unwrap_or_default();
        let info =
            RequestInfo { invocation: meta.tool_invocation_id, mnemonic: meta.action_mnemonic, target: meta.target_id };
        let req = request.into_inner();
        check_instance(&self.instance_name, &req.instance_name)?;
        check_digest_function(req.digest_function)?;
        let op = self.scheduler.execute(&req, info).await?;
        Ok(Response::new(operation_stream(self.scheduler.watch(op))))
    }

    async fn wait_execution(
        &self,
        request: Request<WaitExecutionRequest>,
    ) -> Result<Response<Self::WaitExecutionStream>, Status> {
        let name = request.into_inner().name;
        let op = self.scheduler.get(&name).ok_or_else(|| {
            Error::NotFound(format!(
                "operation {name} is unknown: it finished more than result_ttl_seconds ago or never existed; call Execute again"
            ))
        })?;
        Ok(Response::new(operation_stream(self.scheduler.watch(op))))
    }
}

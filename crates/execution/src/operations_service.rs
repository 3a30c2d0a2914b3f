//! google.longrunning.Operations over the scheduler's operations.
use std::sync::Arc;
use std::time::Duration;

use re_proto::google::longrunning::operations_server::{Operations, OperationsServer};
use re_proto::google::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest, ListOperationsResponse,
    Operation as OperationProto, WaitOperationRequest,
};
use re_proto::Error;
use tonic::{Request, Response, Status};

use crate::scheduler::Scheduler;

const DEFAULT_PAGE: usize = 100;

#[derive(Clone)]
pub struct OperationsService {
    scheduler: Arc<Scheduler>,
}

impl OperationsService {
    pub fn new(scheduler: Arc<Scheduler>) -> Self {
        Self { scheduler }
    }

    pub fn into_server(self) -> OperationsServer<Self> {
        OperationsServer::new(self)
    }

    fn find(&self, name: &str) -> Result<Arc<crate::operation::Operation>, Status> {
        self.scheduler.get(name).ok_or_else(|| Error::NotFound(format!("operation {name} not found")).into())
    }
}

#[tonic::async_trait]
impl Operations for OperationsService {
    async fn list_operations(
        &self,
        request: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        let req = request.into_inner();
        let page = if req.page_size > 0 { req.page_size as usize } else { DEFAULT_PAGE };
        let ops = self.scheduler.list();
        let start = if req.page_token.is_empty() {
            0
        } else {
            // Names sort stably; the token is the last name of the previous page.
            ops.iter().position(|o| o.name > req.page_token).unwrap_or(ops.len())
        };
        let slice: Vec<_> = ops.iter().skip(start).take(page).collect();
        let next_page_token = if start + slice.len() < ops.len() {
            slice.last().map(|o| o.name.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListOperationsResponse {
            operations: slice.iter().map(|o| o.to_proto()).collect(),
            next_page_token,
            unreachable: vec![],
        }))
    }

    async fn get_operation(&self, request: Request<GetOperationRequest>) -> Result<Response<OperationProto>, Status> {
        Ok(Response::new(self.find(&request.into_inner().name)?.to_proto()))
    }

    async fn delete_operation(&self, request: Request<DeleteOperationRequest>) -> Result<Response<()>, Status> {
        let name = request.into_inner().name;
        let op = self.find(&name)?;
        if !op.is_done() {
            return Err(Error::FailedPrecondition(format!("operation {name} is still running; cancel it first")).into());
        }
        Ok(Response::new(()))
    }

    async fn cancel_operation(&self, request: Request<CancelOperationRequest>) -> Result<Response<()>, Status> {
        self.scheduler.cancel(&request.into_inner().name).await?;
        Ok(Response::new(()))
    }

    async fn wait_operation(&self, request: Request<WaitOperationRequest>) -> Result<Response<OperationProto>, Status> {
        let req = request.into_inner();
        let op = self.find(&req.name)?;
        let timeout = req
            .timeout
            .map(|t| Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32))
            .unwrap_or(Duration::from_secs(60));
        let mut rx = op.subscribe();
        let _ =
            tokio::time::timeout(timeout, rx.wait_for(|s| matches!(s, crate::operation::Stage::Completed(_)))).await;
        Ok(Response::new(op.to_proto()))
    }
}

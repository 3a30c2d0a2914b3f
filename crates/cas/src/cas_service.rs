//! build.bazel.remote.execution.v2.ContentAddressableStorage.
use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use prost::Message;
use re_proto::error::ok_status;
use re_proto::reapi::content_addressable_storage_server::ContentAddressableStorage;
use re_proto::reapi::{
    batch_read_blobs_response, batch_update_blobs_response, BatchReadBlobsRequest, BatchReadBlobsResponse,
    BatchUpdateBlobsRequest, BatchUpdateBlobsResponse, Directory, FindMissingBlobsRequest, FindMissingBlobsResponse,
    GetTreeRequest, GetTreeResponse, SpliceBlobRequest, SpliceBlobResponse, SplitBlobRequest, SplitBlobResponse,
};
use re_proto::{check_digest_function, check_instance, DigestInfo, Error, Result};
use tonic::{Request, Response, Status};

use crate::compression::{compress_all, decompress_all, Compressor};
use crate::store::BlobStore;

/// Directories returned per GetTree page when the client sets no page_size.
const DEFAULT_TREE_PAGE: usize = 1000;

#[derive(Clone)]
pub struct CasService {
    store: Arc<dyn BlobStore>,
    instance_name: String,
    max_batch_total_size_bytes: u64,
    compressors: Vec<Compressor>,
}

impl CasService {
    pub fn new(
        store: Arc<dyn BlobStore>,
        instance_name: String,
        max_batch_total_size_bytes: u64,
        compressors: Vec<Compressor>,
    ) -> Self {
        Self { store, instance_name, max_batch_total_size_bytes, compressors }
    }

    pub(crate) fn max_batch_bytes(&self) -> u64 {
        self.max_batch_total_size_bytes
    }

    /// FindMissingBlobs, whichever way the request was decoded: the digests
    /// not stored, in request order (present ones are refreshed).
    pub(crate) async fn find_missing(&self, instance_name: &str, digests: &[DigestInfo]) -> Result<Vec<DigestInfo>> {
        check_instance(&self.instance_name, instance_name)?;
        self.store.find_missing(digests).await
    }

    async fn update_one(&self, req: re_proto::reapi::batch_update_blobs_request::Request) -> Result<DigestInfo> {
        let digest = DigestInfo::try_from(req.digest.as_ref()).map_err(|e| e.in_field("digest"))?;
        let data = match Compressor::from_proto(req.compressor) {
            Some(Compressor::Identity) => req.data,
            Some(c) if self.compressors.contains(&c) => decompress_all(c, &req.data, digest.size)?,
            _ => return Err(Error::InvalidArgument(format!("compressor {} is not supported", req.compressor))),
        };
        if data.len() as u64 != digest.size {
            return Err(Error::InvalidArgument(format!(
                "blob {digest}: {} bytes received, the digest says {}",
                data.len(),
                digest.size
            )));
        }
        self.store.put(digest, data).await?;
        Ok(digest)
    }

    async fn tree_pages(
        &self,
        root: DigestInfo,
        page_size: usize,
        offset: usize,
    ) -> Result<(Vec<Directory>, usize, bool)> {
        // Breadth-first; the page token is the index of the next directory.
        let mut queue = vec![root];
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut i = 0;
        while i < queue.len() {
            let digest = queue[i];
            i += 1;
            let Some(raw) = self.store.get(digest).await? else {
                if digest == root {
                    return Err(Error::NotFound(format!("root directory {root} not found")));
                }
                continue; // The spec lets GetTree omit missing parts.
            };
            let dir = Directory::decode(raw)
                .map_err(|e| Error::InvalidArgument(format!("blob {digest} is not a Directory: {e}")))?;
            for child in &dir.directories {
                let d = DigestInfo::try_from(child.digest.as_ref())
                    .map_err(|e| e.in_field(format!("directory {digest}: directories['{}'].digest", child.name)))?;
                if seen.insert(d) {
                    queue.push(d);
                }
            }
            if i > offset {
                out.push(dir);
                if out.len() == page_size {
                    return Ok((out, offset + page_size, i < queue.len()));
                }
            }
        }
        Ok((out, 0, false))
    }
}

fn status(e: Error) -> Status {
    e.into()
}

#[tonic::async_trait]
impl ContentAddressableStorage for CasService {
    /// The running server answers this in `crate::find_missing_http`.
    async fn find_missing_blobs(
        &self,
        request: Request<FindMissingBlobsRequest>,
    ) -> Result<Response<FindMissingBlobsResponse>, Status> {
        let req = request.into_inner();
        check_digest_function(req.digest_function)?;
        let digests = req
            .blob_digests
            .iter()
            .enumerate()
            .map(|(i, d)| DigestInfo::try_from(d).map_err(|e| e.in_field(format!("blob_digests[{i}]"))))
            .collect::<Result<Vec<_>>>()
            .map_err(status)?;
        let missing = self.find_missing(&req.instance_name, &digests).await?;
        Ok(Response::new(FindMissingBlobsResponse {
            missing_blob_digests: missing.iter().map(|d| d.to_proto()).collect(),
        }))
    }

    async fn batch_update_blobs(
        &self,
        request: Request<BatchUpdateBlobsRequest>,
    ) -> Result<Response<BatchUpdateBlobsResponse>, Status> {
        let req = request.into_inner();
        check_instance(&self.instance_name, &req.instance_name)?;
        check_digest_function(req.digest_function)?;
        let total: u64 = req.requests.iter().map(|r| r.data.len() as u64).sum();
        if total > self.max_batch_total_size_bytes {
            return Err(Error::InvalidArgument(format!(
                "batch of {total} bytes is over max_batch_total_size_bytes ({}); upload large blobs with ByteStream.Write",
                self.max_batch_total_size_bytes
            ))
            .into());
        }
        let results = futures::future::join_all(req.requests.into_iter().map(|r| {
            let digest = r.digest.clone();
            async move {
                let status = match self.update_one(r).await {
                    Ok(_) => ok_status(),
                    Err(e) => e.to_rpc_status(),
                };
                batch_update_blobs_response::Response { digest, status: Some(status) }
            }
        }))
        .await;
        Ok(Response::new(BatchUpdateBlobsResponse { responses: results }))
    }

    async fn batch_read_blobs(
        &self,
        request: Request<BatchReadBlobsRequest>,
    ) -> Result<Response<BatchReadBlobsResponse>, Status> {
        let req = request.into_inner();
        check_instance(&self.instance_name, &req.instance_name)?;
        check_digest_function(req.digest_function)?;
        let mut digests = Vec::with_capacity(req.digests.len());
        let mut total = 0u64;
        for (i, d) in req.digests.iter().enumerate() {
            let d = DigestInfo::try_from(d).map_err(|e| status(e.in_field(format!("digests[{i}]"))))?;
            total += d.size;
            digests.push(d);
        }
        if total > self.max_batch_total_size_bytes {
            return Err(Error::InvalidArgument(format!(
                "batch read of {total} bytes is over max_batch_total_size_bytes ({}); read large blobs with ByteStream.Read",
                self.max_batch_total_size_bytes
            ))
            .into());
        }
        let use_zstd = self.compressors.contains(&Compressor::Zstd)
            && req.acceptable_compressors.contains(&(Compressor::Zstd.to_proto() as i32));
        let responses = futures::future::join_all(digests.into_iter().map(|d| async move {
            let (data, status, compressor) = match self.store.get(d).await {
                Ok(Some(data)) if use_zstd => match compress_all(Compressor::Zstd, &data) {
                    Ok(c) => (c, ok_status(), Compressor::Zstd),
                    Err(e) => (Bytes::new(), e.to_rpc_status(), Compressor::Identity),
                },
                Ok(Some(data)) => (data, ok_status(), Compressor::Identity),
                Ok(None) => {
                    (Bytes::new(), Error::NotFound(format!("blob {d} not found")).to_rpc_status(), Compressor::Identity)
                }
                Err(e) => (Bytes::new(), e.to_rpc_status(), Compressor::Identity),
            };
            batch_read_blobs_response::Response {
                digest: Some(d.into()),
                data,
                compressor: compressor.to_proto() as i32,
                status: Some(status),
            }
        }))
        .await;
        Ok(Response::new(BatchReadBlobsResponse { responses }))
    }

    type GetTreeStream = BoxStream<'static, Result<GetTreeResponse, Status>>;

    async fn get_tree(&self, request: Request<GetTreeRequest>) -> Result<Response<Self::GetTreeStream>, Status> {
        let req = request.into_inner();
        check_instance(&self.instance_name, &req.instance_name)?;
        check_digest_function(req.digest_function)?;
        let root = DigestInfo::try_from(req.root_digest.as_ref()).map_err(|e| e.in_field("root_digest"))?;
        let page_size = if req.page_size > 0 { req.page_size as usize } else { DEFAULT_TREE_PAGE };
        let mut offset: usize = if req.page_token.is_empty() {
            0
        } else {
            req.page_token
                .parse()
                .map_err(|_| Error::InvalidArgument(format!("bad page_token '{}'", req.page_token)))?
        };
        // Pages are computed here so errors surface as the call's status.
        let mut pages = Vec::new();
        loop {
            let (directories, next, more) = self.tree_pages(root, page_size, offset).await?;
            let next_page_token = if more { next.to_string() } else { String::new() };
            pages.push(Ok(GetTreeResponse { directories, next_page_token }));
            // One page per call when the client pages itself; otherwise all.
            if !more || req.page_size > 0 {
                break;
            }
            offset = next;
        }
        Ok(Response::new(Box::pin(futures::stream::iter(pages))))
    }

    async fn split_blob(&self, _: Request<SplitBlobRequest>) -> Result<Response<SplitBlobResponse>, Status> {
        Err(Status::unimplemented("SplitBlob is not supported (split_blob_support is not advertised)"))
    }

    async fn splice_blob(&self, _: Request<SpliceBlobRequest>) -> Result<Response<SpliceBlobResponse>, Status> {
        Err(Status::unimplemented("SpliceBlob is not supported (splice_blob_support is not advertised)"))
    }
}

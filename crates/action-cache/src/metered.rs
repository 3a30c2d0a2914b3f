//! `MeteredActionCache`: an action-cache layer that counts lookups (hit or
//! miss) into re-server's metrics. Put outside the completeness check, so a
//! result whose outputs were evicted counts as the miss it is.
use std::sync::Arc;

use async_trait::async_trait;
use re_metrics::Metrics;
use re_proto::reapi::ActionResult;
use re_proto::{DigestInfo, Result};

use crate::store::ActionCacheStore;

pub struct MeteredActionCache {
    inner: Arc<dyn ActionCacheStore>,
    metrics: Arc<Metrics>,
}

impl MeteredActionCache {
    pub fn new(inner: Arc<dyn ActionCacheStore>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

#[async_trait]
impl ActionCacheStore for MeteredActionCache {
    async fn get(&self, action: DigestInfo) -> Result<Option<ActionResult>> {
        let r = self.inner.get(action).await?;
        self.metrics.action_cache_lookup(r.is_some());
        Ok(r)
    }

    async fn put(&self, action: DigestInfo, result: &ActionResult) -> Result<()> {
        self.inner.put(action, result).await
    }
}

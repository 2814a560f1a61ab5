//! Collectors over gRPC.

use cco_contracts::gateway::v1 as pb;
use cco_contracts::time::to_timestamp as ts;
use cco_platform::auth::Principal;
use tonic::{Request, Response, Status};

use super::{done, tenant_of};
use crate::domain::collector::Collector;
use crate::domain::{CollectorId, GwError};
use crate::service::Collectors;

/// Serves Collectors.
#[derive(Clone, Debug)]
pub struct CollectorsGrpc {
    collectors: Collectors,
}

impl CollectorsGrpc {
    /// Serves `collectors`.
    pub fn new(collectors: Collectors) -> Self {
        Self { collectors }
    }
}

fn collector_to_pb(c: &Collector) -> pb::Collector {
    pb::Collector {
        tenant_id: c.tenant_id.as_str().to_owned(),
        collector_id: c.collector_id.as_str().to_owned(),
        callback_number: c
            .callback_number
            .as_ref()
            .map(|p| p.e164().to_owned())
            .unwrap_or_default(),
        display_name: c.display_name.clone(),
        active: c.active,
        last_extension_number: c.last_extension_number.clone().unwrap_or_default(),
        created_at: Some(ts(c.created_at)),
        updated_at: Some(ts(c.updated_at)),
    }
}

fn page_token_decode(token: &str) -> Result<Option<String>, GwError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || GwError::invalid("page_token", "is not a token returned by ListCollectors");
    let s = String::from_utf8(hex::decode(token).map_err(|_| bad())?).map_err(|_| bad())?;
    CollectorId::parse("page_token", &s).map_err(|_| bad())?;
    Ok(Some(s))
}

#[tonic::async_trait]
impl pb::collectors_server::Collectors for CollectorsGrpc {
    async fn upsert_collector(
        &self,
        req: Request<pb::UpsertCollectorRequest>,
    ) -> Result<Response<pb::Collector>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                let collector = CollectorId::parse("collector_id", &r.collector_id)?;
                let c = self
                    .collectors
                    .upsert(
                        &tenant,
                        &collector,
                        &r.callback_number,
                        &r.display_name,
                        r.active.unwrap_or(true),
                    )
                    .await?;
                Ok(collector_to_pb(&c))
            }
            .await,
        )
    }

    async fn get_collector(
        &self,
        req: Request<pb::GetCollectorRequest>,
    ) -> Result<Response<pb::Collector>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                let collector = CollectorId::parse("collector_id", &r.collector_id)?;
                super::own(&p, "collector_id", collector.as_str())?;
                Ok(collector_to_pb(
                    &self.collectors.get(&tenant, &collector).await?,
                ))
            }
            .await,
        )
    }

    async fn list_collectors(
        &self,
        req: Request<pb::ListCollectorsRequest>,
    ) -> Result<Response<pb::ListCollectorsResponse>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                let after = page_token_decode(&r.page_token)?;
                let (list, next) = self
                    .collectors
                    .list(&tenant, after, r.active, r.page_size)
                    .await?;
                Ok(pb::ListCollectorsResponse {
                    collectors: list.iter().map(collector_to_pb).collect(),
                    next_page_token: next.map(hex::encode).unwrap_or_default(),
                })
            }
            .await,
        )
    }

    async fn delete_collector(
        &self,
        req: Request<pb::DeleteCollectorRequest>,
    ) -> Result<Response<pb::DeleteCollectorResponse>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        done(
            async {
                let tenant = tenant_of(&p, &r.tenant_id)?;
                let collector = CollectorId::parse("collector_id", &r.collector_id)?;
                self.collectors.delete(&tenant, &collector).await?;
                Ok(pb::DeleteCollectorResponse { deleted: true })
            }
            .await,
        )
    }
}

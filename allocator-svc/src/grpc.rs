//! The gRPC transport: protobuf <-> domain conversions, tenant-scope checks, metrics, and the
//! one mapping from [`AllocError`] to `tonic::Status`.

use std::time::Instant;

use cco_contracts::allocator::v1 as pb;
use cco_contracts::time::to_timestamp as ts;
use cco_platform::auth::{Principal, RATE_LIMITED, RateLimit, Role};
use cco_platform::grpc::{INTERNAL_MESSAGE, status};
use cco_platform::metrics::RpcMetrics;
use cco_platform::validate::quote;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use crate::domain::{
    AllocError, CollectorId, ConfigId, ExtStatus, Extension, ExtensionNumber, Lease, ReleaseReason,
    RequestId, Strategy, TenantId, parse_uuid,
};
use crate::metrics::Metrics;
use crate::service::{AcquireInput, Allocator, ImportLine, parse_ttl};
use crate::store::{DeleteOutcome, ExtUpdate, LeaseChange, ListFilter};

impl From<AllocError> for Status {
    fn from(e: AllocError) -> Self {
        match e {
            AllocError::InvalidArgument { .. } => status(Code::InvalidArgument, &e.to_string()),
            AllocError::NotFound(m) => status(Code::NotFound, &m),
            AllocError::FailedPrecondition(m) => status(Code::FailedPrecondition, &m),
            AllocError::ResourceExhausted(m) => status(Code::ResourceExhausted, &m),
            AllocError::Unavailable(m) => status(Code::Unavailable, &m),
            AllocError::Contention(m) => status(Code::Aborted, &m),
            AllocError::PermissionDenied(m) => status(Code::PermissionDenied, &m),
            AllocError::Internal(cause) => {
                tracing::error!(error = ?cause, "internal error");
                Status::internal(INTERNAL_MESSAGE)
            }
        }
    }
}

/// Which roles may call each method; pool administration is admin-only. People (JWTs):
/// admin administers their tenants' pools; supervisor reads them and force-releases
/// (Release of any lease, ReleaseExtension, ForceReleaseCollector); collectors never call the
/// allocator (the gateway leases for them).
pub fn roles(path: &str) -> Option<&'static [Role]> {
    use Role::{Admin, Caller, Peer, Supervisor};
    const SERVICES: &[Role] = &[Admin, Caller, Peer];
    const RELEASE: &[Role] = &[Admin, Caller, Peer, Supervisor];
    const ADMIN: &[Role] = &[Admin];
    const FORCE: &[Role] = &[Admin, Supervisor];
    // The gateway (peer) reads the pool for TestConnection and takes extensions offline when
    // Infinity reports them broken (codes 1010-1014); it never imports or deletes.
    const ADMIN_OR_PEER: &[Role] = &[Admin, Peer];
    const READ_POOL: &[Role] = &[Admin, Peer, Supervisor];
    if let Some(method) = path.strip_prefix("/cco.infinity.allocator.v1.ExtensionAllocator/") {
        match method {
            "Release" | "Stats" => Some(RELEASE),
            _ => Some(SERVICES),
        }
    } else if let Some(method) = path.strip_prefix("/cco.infinity.allocator.v1.ExtensionPool/") {
        match method {
            "ListExtensions" | "GetExtension" => Some(READ_POOL),
            // DeleteConfigPool: the gateway removes a deleted config's pool.
            "UpdateExtension" | "DeleteConfigPool" => Some(ADMIN_OR_PEER),
            "ReleaseExtension" | "ForceReleaseCollector" => Some(FORCE),
            _ => Some(ADMIN),
        }
    } else {
        None
    }
}

fn from_ts(
    field: &'static str,
    t: Option<cco_contracts::pbjson_types::Timestamp>,
) -> Result<Option<DateTime<Utc>>, AllocError> {
    t.map(|t| {
        cco_contracts::time::from_timestamp(&t)
            .ok_or_else(|| AllocError::invalid(field, "is not a valid timestamp"))
    })
    .transpose()
}

fn strategy_to_pb(s: Strategy) -> pb::Strategy {
    match s {
        Strategy::Lru => pb::Strategy::Lru,
        Strategy::RoundRobin => pb::Strategy::RoundRobin,
        Strategy::CollectorAffinity => pb::Strategy::CollectorAffinity,
    }
}

fn strategy_from_pb(v: i32) -> Result<Option<Strategy>, AllocError> {
    match pb::Strategy::try_from(v) {
        Ok(pb::Strategy::Unspecified) => Ok(None),
        Ok(pb::Strategy::Lru) => Ok(Some(Strategy::Lru)),
        Ok(pb::Strategy::RoundRobin) => Ok(Some(Strategy::RoundRobin)),
        Ok(pb::Strategy::CollectorAffinity) => Ok(Some(Strategy::CollectorAffinity)),
        Err(_) => Err(AllocError::invalid(
            "strategy",
            format!("unknown strategy {v}"),
        )),
    }
}

fn reason_to_pb(r: ReleaseReason) -> pb::ReleaseReason {
    match r {
        ReleaseReason::CallEnded => pb::ReleaseReason::CallEnded,
        ReleaseReason::DialFailed => pb::ReleaseReason::DialFailed,
        ReleaseReason::Manual => pb::ReleaseReason::Manual,
        ReleaseReason::CollectorForced => pb::ReleaseReason::CollectorForced,
        ReleaseReason::Expired => pb::ReleaseReason::Expired,
        ReleaseReason::ExtensionOffline => pb::ReleaseReason::ExtensionOffline,
        ReleaseReason::ExtensionDeleted => pb::ReleaseReason::ExtensionDeleted,
        ReleaseReason::Cancelled => pb::ReleaseReason::Cancelled,
        ReleaseReason::Reconciled => pb::ReleaseReason::Reconciled,
    }
}

fn reason_from_pb(v: i32) -> Result<ReleaseReason, AllocError> {
    Ok(match pb::ReleaseReason::try_from(v) {
        Ok(pb::ReleaseReason::Unspecified | pb::ReleaseReason::CallEnded) => {
            ReleaseReason::CallEnded
        }
        Ok(pb::ReleaseReason::DialFailed) => ReleaseReason::DialFailed,
        Ok(pb::ReleaseReason::Manual) => ReleaseReason::Manual,
        Ok(pb::ReleaseReason::CollectorForced) => ReleaseReason::CollectorForced,
        Ok(pb::ReleaseReason::Cancelled) => ReleaseReason::Cancelled,
        Ok(pb::ReleaseReason::Reconciled) => ReleaseReason::Reconciled,
        Ok(
            pb::ReleaseReason::Expired
            | pb::ReleaseReason::ExtensionOffline
            | pb::ReleaseReason::ExtensionDeleted,
        ) => {
            return Err(AllocError::invalid(
                "reason",
                "expired, extension_offline and extension_deleted are set by the allocator itself",
            ));
        }
        Err(_) => {
            return Err(AllocError::invalid(
                "reason",
                format!("unknown release reason {v}"),
            ));
        }
    })
}

fn status_to_pb(s: ExtStatus) -> pb::ExtensionStatus {
    match s {
        ExtStatus::Available => pb::ExtensionStatus::Available,
        ExtStatus::InUse => pb::ExtensionStatus::InUse,
        ExtStatus::Offline => pb::ExtensionStatus::Offline,
    }
}

fn status_from_pb(v: i32) -> Result<Option<ExtStatus>, AllocError> {
    match pb::ExtensionStatus::try_from(v) {
        Ok(pb::ExtensionStatus::Unspecified) => Ok(None),
        Ok(pb::ExtensionStatus::Available) => Ok(Some(ExtStatus::Available)),
        Ok(pb::ExtensionStatus::InUse) => Ok(Some(ExtStatus::InUse)),
        Ok(pb::ExtensionStatus::Offline) => Ok(Some(ExtStatus::Offline)),
        Err(_) => Err(AllocError::invalid(
            "status",
            format!("unknown extension status {v}"),
        )),
    }
}

fn token_from_pb(v: u64) -> Result<i64, AllocError> {
    if v == 0 {
        return Err(AllocError::invalid(
            "fencing_token",
            "is required (the token returned with the lease)",
        ));
    }
    i64::try_from(v).map_err(|_| AllocError::invalid("fencing_token", "is out of range"))
}

/// Converts a domain lease to its message.
pub fn lease_to_pb(l: &Lease) -> pb::Lease {
    pb::Lease {
        lease_id: l.lease_id.to_string(),
        extension_id: l.extension_id.to_string(),
        extension_number: l.extension_number.clone(),
        tenant_id: l.tenant_id.clone(),
        collector_id: l.collector_id.clone(),
        fencing_token: u64::try_from(l.fencing_token).unwrap_or(0),
        acquired_at: Some(ts(l.acquired_at)),
        expires_at: Some(ts(l.expires_at)),
        request_id: l.request_id.clone(),
        strategy: strategy_to_pb(l.strategy).into(),
        released_at: l.released_at.map(ts),
        release_reason: l
            .release_reason
            .map_or(pb::ReleaseReason::Unspecified, reason_to_pb)
            .into(),
    }
}

fn ext_to_pb(e: &Extension) -> pb::Extension {
    pb::Extension {
        extension_id: e.id.to_string(),
        tenant_id: e.tenant_id.clone(),
        config_id: e.config_id.clone(),
        number: e.number.clone(),
        status: status_to_pb(e.status).into(),
        current_collector_id: e.current_collector_id.clone().unwrap_or_default(),
        current_lease_id: e
            .current_lease_id
            .map(|l| l.to_string())
            .unwrap_or_default(),
        lease_expires_at: e.lease_expires_at.map(ts),
        fencing_token: u64::try_from(e.fencing_token).unwrap_or(0),
        last_collector_id: e.last_collector_id.clone().unwrap_or_default(),
        last_used_at: e.last_used_at.map(ts),
        last_released_at: e.last_released_at.map(ts),
        use_count: u64::try_from(e.use_count).unwrap_or(0),
        created_at: Some(ts(e.created_at)),
        updated_at: Some(ts(e.updated_at)),
        available_at: e.available_at.filter(|t| *t > Utc::now()).map(ts),
    }
}

fn release_to_pb(c: LeaseChange) -> pb::ReleaseResponse {
    match c {
        LeaseChange::Changed(l) => pb::ReleaseResponse {
            released: true,
            reason: String::new(),
            lease: Some(lease_to_pb(&l)),
        },
        LeaseChange::Unchanged { lease, reason } => pb::ReleaseResponse {
            released: false,
            reason,
            lease: Some(lease_to_pb(&lease)),
        },
        LeaseChange::NotFound => pb::ReleaseResponse {
            released: false,
            reason: "extension is not in use".into(),
            lease: None,
        },
    }
}

fn page_token_encode(number: &str) -> String {
    hex::encode(number)
}

fn page_token_decode(token: &str) -> Result<Option<String>, AllocError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || AllocError::invalid("page_token", "is not a token returned by ListExtensions");
    let bytes = hex::decode(token).map_err(|_| bad())?;
    let s = String::from_utf8(bytes).map_err(|_| bad())?;
    ExtensionNumber::parse_reason(&s).map_err(|_| bad())?;
    Ok(Some(s))
}

fn tenant_of(p: &Principal, raw: &str) -> Result<TenantId, AllocError> {
    let t = TenantId::parse("tenant_id", raw)?;
    if p.may_access(t.as_str()) {
        Ok(t)
    } else {
        Err(AllocError::PermissionDenied(format!(
            "tenant_id: this API key is not allowed to access tenant {}",
            quote(raw)
        )))
    }
}

/// Commands of one lease channel running at once; the channel reads no further command
/// until one of them finishes (so a fast caller cannot queue unbounded work).
pub const LEASE_CHANNEL_IN_FLIGHT: usize = 32;

/// Serves both allocator services over one [`Allocator`].
#[derive(Clone, Debug)]
pub struct AllocatorGrpc {
    svc: Allocator,
    metrics: Metrics,
    /// Lease channels count their commands here (unary calls are counted by the server).
    rpc_metrics: Option<RpcMetrics>,
    /// Lease channels stop reading commands when it is cancelled.
    shutdown: CancellationToken,
    /// The port's request deadline, applied to each command of a lease channel.
    request_timeout: Option<std::time::Duration>,
}

impl AllocatorGrpc {
    /// Wraps the service.
    pub fn new(svc: Allocator, metrics: Metrics) -> Self {
        Self {
            svc,
            metrics,
            rpc_metrics: None,
            shutdown: CancellationToken::new(),
            request_timeout: None,
        }
    }

    /// What the lease channel needs from the server it runs in: the RPC metrics to count its
    /// commands, the shutdown token, and the port's request deadline (`None`: none).
    pub fn with_server(
        mut self,
        rpc_metrics: RpcMetrics,
        shutdown: CancellationToken,
        request_timeout: Option<std::time::Duration>,
    ) -> Self {
        self.rpc_metrics = Some(rpc_metrics);
        self.shutdown = shutdown;
        self.request_timeout = request_timeout;
        self
    }

    /// Converts the result (outcomes are counted by the server's RPC layer).
    fn done<T>(r: Result<T, AllocError>) -> Result<Response<T>, Status> {
        r.map(Response::new).map_err(Status::from)
    }

    /// Reads a lease channel's commands and runs each in a task of its own (up to
    /// [`LEASE_CHANNEL_IN_FLIGHT`] at once), so a command runs to its end whether or not the
    /// client reads the replies (a command never stops halfway with its locks held). Stops
    /// reading on shutdown, when the client closes its side or goes away, or at an unreadable
    /// message; then waits for the commands in flight and ends the reply stream (with
    /// `INVALID_ARGUMENT` after an unreadable message).
    async fn serve_channel(
        self,
        p: Principal,
        limit: Option<RateLimit>,
        mut commands: tonic::Streaming<pb::LeaseCommand>,
        tx: tokio::sync::mpsc::Sender<Result<pb::LeaseReply, Status>>,
    ) {
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(LEASE_CHANNEL_IN_FLIGHT));
        let end = loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break None;
            };
            let next = tokio::select! {
                () = self.shutdown.cancelled() => break None,
                () = tx.closed() => break None,
                m = commands.message() => m,
            };
            let command = match next {
                Ok(Some(c)) => c,
                Ok(None) => break None,
                Err(e) => {
                    break Some(Status::invalid_argument(format!(
                        "lease channel: unreadable command: {}",
                        e.message()
                    )));
                }
            };
            let (grpc, p, limit, tx) = (self.clone(), p.clone(), limit.clone(), tx.clone());
            tokio::spawn(async move {
                let reply = grpc.run_command(&p, limit.as_ref(), command).await;
                let _ = tx.send(Ok(reply)).await;
                drop(slot);
            });
        };
        let all = u32::try_from(LEASE_CHANNEL_IN_FLIGHT).unwrap_or(u32::MAX);
        let _ = slots.acquire_many(all).await;
        if let Some(status) = end {
            let _ = tx.send(Err(status)).await;
        }
    }

    /// One command of a lease channel: charged to the key's rate limit, under the server's
    /// request deadline, counted in the RPC metrics as `acquire` or `release`.
    async fn run_command(
        &self,
        p: &Principal,
        limit: Option<&RateLimit>,
        command: pb::LeaseCommand,
    ) -> pb::LeaseReply {
        use pb::lease_command::Command;
        use pb::lease_reply::Reply;
        let started = Instant::now();
        let (op, reply) = if limit.is_some_and(|l| !l.allow(&p.key_id)) {
            (
                "lease_channel",
                Err(Status::resource_exhausted(RATE_LIMITED)),
            )
        } else {
            match command.command {
                Some(Command::Acquire(r)) => (
                    "acquire",
                    self.deadline(self.acquire_one(p, r))
                        .await
                        .map(Reply::Acquire),
                ),
                Some(Command::Release(r)) => (
                    "release",
                    self.deadline(self.release_one(p, r))
                        .await
                        .map(Reply::Release),
                ),
                None => (
                    "lease_channel",
                    Err(Status::from(AllocError::invalid(
                        "command",
                        "must be acquire or release",
                    ))),
                ),
            }
        };
        let code = reply.as_ref().map_or_else(Status::code, |_| Code::Ok);
        if let Some(m) = &self.rpc_metrics {
            m.record(op, code, started.elapsed().as_secs_f64());
        }
        let reply = reply.unwrap_or_else(|s| {
            Reply::Error(pb::LeaseError {
                code: s.code().into(),
                message: s.message().to_owned(),
            })
        });
        pb::LeaseReply {
            id: command.id,
            reply: Some(reply),
        }
    }

    /// `work` under the server's request deadline, as a unary call would be.
    async fn deadline<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, AllocError>>,
    ) -> Result<T, Status> {
        match self.request_timeout {
            None => work.await.map_err(Status::from),
            Some(t) => match tokio::time::timeout(t, work).await {
                Ok(r) => r.map_err(Status::from),
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "the request did not finish within the server's {} s limit",
                    t.as_secs()
                ))),
            },
        }
    }

    /// Acquire, for the unary call and the lease channel.
    async fn acquire_one(
        &self,
        p: &Principal,
        r: pb::AcquireRequest,
    ) -> Result<pb::AcquireResponse, AllocError> {
        let started = Instant::now();
        let result = async {
            let input = AcquireInput {
                tenant_id: tenant_of(p, &r.tenant_id)?,
                collector_id: CollectorId::parse("collector_id", &r.collector_id)?,
                request_id: RequestId::parse("request_id", &r.request_id)?,
                strategy: strategy_from_pb(r.strategy)?,
                ttl_seconds: parse_ttl("ttl_seconds", r.ttl_seconds)?,
            };
            let (lease, replayed) = self.svc.acquire(input).await?;
            Ok(pb::AcquireResponse {
                lease: Some(lease_to_pb(&lease)),
                replayed,
            })
        }
        .await;
        self.metrics
            .acquire_seconds
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Release, for the unary call and the lease channel.
    async fn release_one(
        &self,
        p: &Principal,
        r: pb::ReleaseRequest,
    ) -> Result<pb::ReleaseResponse, AllocError> {
        let lease_id = parse_uuid("lease_id", &r.lease_id)?;
        let token = token_from_pb(r.fencing_token)?;
        let reason = reason_from_pb(r.reason)?;
        self.scoped_lease(p, lease_id, &r.tenant_id).await?;
        Ok(release_to_pb(
            self.svc.release(lease_id, token, reason).await?,
        ))
    }

    /// Reads a lease the caller names and checks the caller may touch its tenant.
    async fn scoped_lease(
        &self,
        p: &Principal,
        lease_id: Uuid,
        tenant: &str,
    ) -> Result<Option<Lease>, AllocError> {
        if tenant.is_empty() && p.tenants.is_none() {
            return Ok(None);
        }
        let lease = self.svc.lease(lease_id).await?;
        if !tenant.is_empty() && lease.tenant_id != tenant {
            return Err(AllocError::NotFound(format!(
                "lease_id: no lease {lease_id} in tenant {}",
                quote(tenant)
            )));
        }
        tenant_of(p, &lease.tenant_id)?;
        Ok(Some(lease))
    }
}

#[tonic::async_trait]
impl pb::extension_allocator_server::ExtensionAllocator for AllocatorGrpc {
    async fn acquire(
        &self,
        req: Request<pb::AcquireRequest>,
    ) -> Result<Response<pb::AcquireResponse>, Status> {
        let p = Principal::from_request(&req)?;
        Self::done(self.acquire_one(&p, req.into_inner()).await)
    }

    async fn release(
        &self,
        req: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let p = Principal::from_request(&req)?;
        Self::done(self.release_one(&p, req.into_inner()).await)
    }

    type LeaseChannelStream = futures::stream::BoxStream<'static, Result<pb::LeaseReply, Status>>;

    async fn lease_channel(
        &self,
        req: Request<tonic::Streaming<pb::LeaseCommand>>,
    ) -> Result<Response<Self::LeaseChannelStream>, Status> {
        use futures::StreamExt as _;
        let p = Principal::from_request(&req)?;
        // A person's token is checked when the channel opens and could expire while it stays
        // open: people use the unary calls.
        if p.is_person() {
            return Err(Status::permission_denied(
                "the lease channel is for service keys; people use Acquire and Release",
            ));
        }
        let limit = req.extensions().get::<RateLimit>().cloned();
        let commands = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(LEASE_CHANNEL_IN_FLIGHT);
        tokio::spawn(self.clone().serve_channel(p, limit, commands, tx));
        Ok(Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx).boxed(),
        ))
    }

    async fn renew(
        &self,
        req: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        let result = async {
            let lease_id = parse_uuid("lease_id", &r.lease_id)?;
            let token = token_from_pb(r.fencing_token)?;
            let ttl = parse_ttl("ttl_seconds", r.ttl_seconds)?;
            let lease = match self.scoped_lease(&p, lease_id, &r.tenant_id).await? {
                Some(l) => l,
                None => self.svc.lease(lease_id).await?,
            };
            let lease = self.svc.renew(&lease, token, ttl).await?;
            Ok(pb::RenewResponse {
                lease: Some(lease_to_pb(&lease)),
            })
        }
        .await;
        Self::done(result)
    }

    async fn stats(
        &self,
        req: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::PoolStats>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        let result = async {
            let tenant = tenant_of(&p, &r.tenant_id)?;
            let window = if r.include_usage {
                let since = from_ts("usage_since", r.usage_since)?;
                let until = from_ts("usage_until", r.usage_until)?;
                Some(Allocator::usage_window(since, until))
            } else {
                None
            };
            let (c, usage) = self.svc.stats(&tenant, window).await?;
            Ok(pb::PoolStats {
                tenant_id: tenant.as_str().to_owned(),
                total: c.total,
                available: c.available,
                in_use: c.in_use,
                offline: c.offline,
                utilization: c.utilization(),
                cooling_down: c.cooling_down,
                usage: usage
                    .into_iter()
                    .map(|u| pb::ExtensionUsage {
                        extension_id: u.extension_id.to_string(),
                        extension_number: u.extension_number,
                        lease_count: u.lease_count,
                        busy_seconds: u.busy_seconds,
                    })
                    .collect(),
            })
        }
        .await;
        Self::done(result)
    }
}

#[tonic::async_trait]
impl pb::extension_pool_server::ExtensionPool for AllocatorGrpc {
    async fn batch_import(
        &self,
        req: Request<pb::BatchImportRequest>,
    ) -> Result<Response<pb::BatchImportResponse>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        let result = async {
            let tenant = tenant_of(&p, &r.tenant_id)?;
            let config_id = ConfigId::parse_optional("config_id", &r.config_id)?;
            let report = self.svc.import(&tenant, config_id, &r.numbers).await?;
            let mut resp = pb::BatchImportResponse::default();
            for (line, input, outcome) in report {
                let (o, reason, id) = match outcome {
                    ImportLine::Imported(id) => {
                        resp.imported += 1;
                        (pb::ImportOutcome::Imported, String::new(), id.to_string())
                    }
                    ImportLine::Duplicate(why) => {
                        resp.duplicates += 1;
                        (pb::ImportOutcome::Duplicate, why, String::new())
                    }
                    ImportLine::Invalid(why) => {
                        resp.invalid += 1;
                        (pb::ImportOutcome::Invalid, why, String::new())
                    }
                };
                resp.results.push(pb::ImportLineResult {
                    line,
                    input,
                    outcome: o.into(),
                    reason,
                    extension_id: id,
                });
            }
            Ok(resp)
        }
        .await;
        Self::done(result)
    }

    async fn list_extensions(
        &self,
        req: Request<pb::ListExtensionsRequest>,
    ) -> Result<Response<pb::ListExtensionsResponse>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        let result = async {
            let filter = ListFilter {
                tenant_id: tenant_of(&p, &r.tenant_id)?,
                config_id: ConfigId::parse_optional("config_id", &r.config_id)?,
                status: status_from_pb(r.status)?,
                collector_id: if r.collector_id.is_empty() {
                    None
                } else {
                    Some(CollectorId::parse("collector_id", &r.collector_id)?)
                },
                after_number: page_token_decode(&r.page_token)?,
                limit: r.page_size,
            };
            let (rows, next) = self.svc.list(filter).await?;
            Ok(pb::ListExtensionsResponse {
                extensions: rows.iter().map(ext_to_pb).collect(),
                next_page_token: next.map(|n| page_token_encode(&n)).unwrap_or_default(),
            })
        }
        .await;
        Self::done(result)
    }

    async fn get_extension(
        &self,
        req: Request<pb::GetExtensionRequest>,
    ) -> Result<Response<pb::Extension>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        let result = async {
            let tenant = tenant_of(&p, &r.tenant_id)?;
            let id = parse_uuid("extension_id", &r.extension_id)?;
            Ok(ext_to_pb(&self.svc.get_extension(&tenant, id).await?))
        }
        .await;
        Self::done(result)
    }

    async fn update_extension(
        &self,
        req: Request<pb::UpdateExtensionRequest>,
    ) -> Result<Response<pb::Extension>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        let result = async {
            let tenant = tenant_of(&p, &r.tenant_id)?;
            let id = parse_uuid("extension_id", &r.extension_id)?;
            let status =
                match r.status {
                    None => None,
                    Some(v) => Some(status_from_pb(v)?.ok_or_else(|| {
                        AllocError::invalid("status", "give available or offline")
                    })?),
                };
            let number = r
                .number
                .as_deref()
                .map(|n| ExtensionNumber::parse("number", n))
                .transpose()?;
            let update = ExtUpdate {
                status,
                number,
                force: r.force,
            };
            Ok(ext_to_pb(
                &self.svc.update_extension(&tenant, id, update).await?,
            ))
        }
        .await;
        Self::done(result)
    }

    async fn release_extension(
        &self,
        req: Request<pb::ReleaseExtensionRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        let result = async {
            let tenant = tenant_of(&p, &r.tenant_id)?;
            let id = parse_uuid("extension_id", &r.extension_id)?;
            Ok(release_to_pb(
                self.svc.release_extension(&tenant, id).await?,
            ))
        }
        .await;
        Self::done(result)
    }

    async fn delete_extension(
        &self,
        req: Request<pb::DeleteExtensionRequest>,
    ) -> Result<Response<pb::DeleteExtensionResponse>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        let result = async {
            let tenant = tenant_of(&p, &r.tenant_id)?;
            let id = parse_uuid("extension_id", &r.extension_id)?;
            let out = self.svc.delete_extensions(&tenant, &[id], r.force).await?;
            match out.into_iter().next() {
                Some(DeleteOutcome::Deleted(lease)) => Ok(pb::DeleteExtensionResponse {
                    deleted: true,
                    ended_lease_id: lease.map(|l| l.to_string()).unwrap_or_default(),
                }),
                Some(DeleteOutcome::InUse) => Err(AllocError::FailedPrecondition(format!(
                    "extension {id} is in use: set force to end its lease and delete it"
                ))),
                _ => Err(AllocError::NotFound(format!(
                    "extension_id: no extension {id} in this tenant"
                ))),
            }
        }
        .await;
        Self::done(result)
    }

    async fn batch_delete_extensions(
        &self,
        req: Request<pb::BatchDeleteExtensionsRequest>,
    ) -> Result<Response<pb::BatchDeleteExtensionsResponse>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        let result = async {
            let tenant = tenant_of(&p, &r.tenant_id)?;
            let ids = r
                .extension_ids
                .iter()
                .map(|s| parse_uuid("extension_ids", s))
                .collect::<Result<Vec<_>, _>>()?;
            let out = self.svc.delete_extensions(&tenant, &ids, r.force).await?;
            let mut resp = pb::BatchDeleteExtensionsResponse::default();
            for (raw, o) in r.extension_ids.iter().zip(out) {
                let (deleted, reason) = match o {
                    DeleteOutcome::Deleted(_) => (true, ""),
                    DeleteOutcome::InUse => (false, "in use"),
                    DeleteOutcome::NotFound => (false, "not found"),
                };
                resp.deleted += u32::from(deleted);
                resp.results.push(pb::DeleteResult {
                    extension_id: raw.clone(),
                    deleted,
                    reason: reason.into(),
                });
            }
            Ok(resp)
        }
        .await;
        Self::done(result)
    }

    async fn force_release_collector(
        &self,
        req: Request<pb::ForceReleaseCollectorRequest>,
    ) -> Result<Response<pb::ForceReleaseCollectorResponse>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        let result = async {
            let tenant = tenant_of(&p, &r.tenant_id)?;
            let collector = CollectorId::parse("collector_id", &r.collector_id)?;
            let ids = self
                .svc
                .force_release_collector(&tenant, &collector)
                .await?;
            Ok(pb::ForceReleaseCollectorResponse {
                released_count: u32::try_from(ids.len()).unwrap_or(u32::MAX),
                lease_ids: ids.iter().map(Uuid::to_string).collect(),
            })
        }
        .await;
        Self::done(result)
    }

    async fn delete_config_pool(
        &self,
        req: Request<pb::DeleteConfigPoolRequest>,
    ) -> Result<Response<pb::DeleteConfigPoolResponse>, Status> {
        let p = Principal::from_request(&req)?;
        let r = req.into_inner();
        let result = async {
            let tenant = tenant_of(&p, &r.tenant_id)?;
            let config = ConfigId::parse("config_id", &r.config_id)?;
            let (deleted, leases_ended) = self.svc.delete_config_pool(&tenant, &config).await?;
            Ok(pb::DeleteConfigPoolResponse {
                deleted,
                leases_ended,
            })
        }
        .await;
        Self::done(result)
    }
}

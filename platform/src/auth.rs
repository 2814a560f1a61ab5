//! API-key authentication and role authorisation for every gRPC call.
//!
//! Keys come from configuration as `role:key[:tenant,tenant...]` entries separated by `;`
//! (for example `admin:k1;caller:k2:tenant-a,tenant-b`); a key may be given as
//! `sha256:<64 hex digits>` so that the configuration holds only its digest (`cco hash-key`
//! prints it). Only SHA-256 digests are kept in memory, and a presented key is compared
//! against every digest in constant time.
//!
//! People sign in with JWTs instead (see [`crate::jwt`]): a bearer token shaped like a JWT is
//! verified as one and gives a person's role (`admin`, `supervisor`, `collector`), tenants and
//! collector id.
//!
//! [`AuthLayer`] runs before any handler: it rejects a call without a valid
//! `authorization: Bearer <key or token>` (`UNAUTHENTICATED`, with the reason) or whose key's role may not call the
//! method (`PERMISSION_DENIED`), and puts the [`Principal`] into the request extensions, where
//! handlers read it to enforce tenant scopes. Health and reflection stay open.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The development keys; documented in the README, never for production.
pub const DEV_API_KEYS: &str = "admin:dev-admin-key;caller:dev-caller-key;peer:dev-peer-key";

/// The API keys and the per-key rate limit of a service (`*__AUTH__*`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// `role:key[:tenant,tenant]` entries separated by `;` (roles: admin, caller, peer); a key
    /// may be written `sha256:<hex digest>`.
    pub api_keys: secrecy::SecretString,
    /// Requests per second one key may make on average; 0 turns the limit off.
    pub rate_limit_per_second: u32,
    /// Requests one key may make in a burst.
    pub rate_limit_burst: u32,
    /// People's JWTs (`*__AUTH__JWT__*`).
    pub jwt: crate::jwt::JwtSettings,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            api_keys: secrecy::SecretString::from(DEV_API_KEYS),
            rate_limit_per_second: 2_000,
            rate_limit_burst: 4_000,
            jwt: crate::jwt::JwtSettings::default(),
        }
    }
}

impl AuthSettings {
    /// The parsed keys.
    ///
    /// # Errors
    /// Names the malformed entry (never its key).
    pub fn keys(&self) -> anyhow::Result<KeyStore> {
        use secrecy::ExposeSecret;
        KeyStore::parse(self.api_keys.expose_secret()).map_err(|e| anyhow::anyhow!(e))
    }

    /// The auth layer for a service whose methods `roles` describes.
    ///
    /// # Errors
    /// As [`AuthSettings::keys`].
    pub fn layer(&self, roles: RoleTable) -> anyhow::Result<AuthLayer> {
        Ok(AuthLayer::new(self.keys()?, roles)
            .with_rate_limit(self.rate_limit_per_second, self.rate_limit_burst)
            .with_jwt(self.jwt.verifier()?))
    }
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Everything, including pool and tenant administration.
    Admin,
    /// Place and query calls; lease and free extensions.
    Caller,
    /// Service-to-service calls (the allocator and the gateway talking to each other).
    Peer,
    /// A person (JWT only) who reads everything of their tenants, force-releases extensions
    /// and hangs up calls.
    Supervisor,
    /// A person (JWT only) who places calls as themselves and reads and watches their own calls.
    Collector,
}

impl Role {
    /// Parses an API key's role: `admin`, `caller` or `peer` (people's roles come from tokens).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Self::Admin),
            "caller" => Some(Self::Caller),
            "peer" => Some(Self::Peer),
            _ => None,
        }
    }

    /// The role's name in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Caller => "caller",
            Self::Peer => "peer",
            Self::Supervisor => "supervisor",
            Self::Collector => "collector",
        }
    }
}

/// The authenticated caller of one request.
#[derive(Clone)]
pub struct Principal {
    /// The key's role.
    pub role: Role,
    /// The tenants the key is limited to; `None` means every tenant.
    pub tenants: Option<Arc<BTreeSet<String>>>,
    /// A short, non-secret id of the key for logs (first 8 hex characters of its digest), or
    /// `jwt:<sub>` for a person.
    pub key_id: String,
    /// A collector's own id (collector tokens only): they act as this collector and no other.
    pub collector_id: Option<Arc<str>>,
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("role", &self.role)
            .field("tenants", &self.tenants)
            .field("key_id", &self.key_id)
            .field("collector_id", &self.collector_id)
            .finish()
    }
}

impl Principal {
    /// Returns whether the key may touch `tenant_id`.
    pub fn may_access(&self, tenant_id: &str) -> bool {
        self.tenants.as_ref().is_none_or(|t| t.contains(tenant_id))
    }

    /// Whether the principal may act as (or read the calls of) `collector_id`: every
    /// principal except a collector, who is only themselves.
    pub fn may_act_as(&self, collector_id: &str) -> bool {
        self.collector_id
            .as_deref()
            .is_none_or(|own| own == collector_id)
    }

    /// Fails with `PERMISSION_DENIED` unless the key may touch `tenant_id`.
    pub fn check_tenant(&self, tenant_id: &str) -> Result<(), tonic::Status> {
        if self.may_access(tenant_id) {
            Ok(())
        } else {
            Err(tonic::Status::permission_denied(format!(
                "tenant_id: this API key is not allowed to access tenant {}",
                crate::validate::quote(tenant_id)
            )))
        }
    }

    /// A person signed in with a JWT (checked when the call starts), not a service key.
    pub fn is_person(&self) -> bool {
        self.key_id.starts_with("jwt:")
    }

    /// Reads the principal the auth layer attached to a request.
    pub fn from_request<T>(req: &tonic::Request<T>) -> Result<Self, tonic::Status> {
        req.extensions()
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| tonic::Status::unauthenticated("missing API key"))
    }
}

struct KeyEntry {
    digest: [u8; 32],
    principal: Principal,
}

/// The configured API keys, held as digests.
#[derive(Clone)]
pub struct KeyStore {
    keys: Arc<Vec<KeyEntry>>,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyStore({} keys)", self.keys.len())
    }
}

/// The SHA-256 digest of a key, as stored with `sha256:` (hex).
pub fn key_digest_hex(key: &str) -> String {
    hex::encode(digest(key))
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl KeyStore {
    /// Parses `role:key[:tenant,tenant...]` entries separated by `;`.
    ///
    /// # Errors
    /// Names the entry (by position, never by its key) and what is wrong with it.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (i, raw) in spec.split(';').enumerate() {
            let entry = raw.trim();
            if entry.is_empty() {
                continue;
            }
            let (role_s, rest) = entry.split_once(':').unwrap_or((entry, ""));
            let role_s = role_s.trim();
            // A digest entry carries one more ':' (sha256:<hex>); split the tenants off after it.
            let (key, tenant_list) = match rest.strip_prefix("sha256:") {
                Some(r) => {
                    let (hexd, t) = r.split_once(':').map_or((r, None), |(h, t)| (h, Some(t)));
                    (format!("sha256:{hexd}"), t)
                }
                None => {
                    let (k, t) = rest
                        .split_once(':')
                        .map_or((rest, None), |(k, t)| (k, Some(t)));
                    (k.to_owned(), t)
                }
            };
            let role = Role::parse(role_s).ok_or_else(|| {
                format!(
                    "auth.api_keys: entry {}: role must be admin, caller or peer, got {role_s:?}",
                    i + 1
                )
            })?;
            let key = key.trim();
            // `sha256:<64 hex>` stores only the digest of the key in the configuration.
            let d = match key.strip_prefix("sha256:") {
                Some(hexd) => {
                    let bytes = hex::decode(hexd).ok().filter(|b| b.len() == 32).ok_or_else(|| {
                        format!("auth.api_keys: entry {}: sha256: must be followed by 64 hex digits", i + 1)
                    })?;
                    let mut d = [0u8; 32];
                    d.copy_from_slice(&bytes);
                    d
                }
                None if key.len() < 8 => {
                    return Err(format!(
                        "auth.api_keys: entry {}: the key must be at least 8 characters",
                        i + 1
                    ));
                }
                None => digest(key),
            };
            let tenants = match tenant_list.map(str::trim) {
                None | Some("") | Some("*") => None,
                Some(list) => Some(Arc::new(
                    list.split(',')
                        .map(|t| t.trim().to_owned())
                        .filter(|t| !t.is_empty())
                        .collect::<BTreeSet<_>>(),
                )),
            };
            keys.push(KeyEntry {
                digest: d,
                principal: Principal {
                    role,
                    tenants,
                    key_id: hex::encode(&d[..4]),
                    collector_id: None,
                },
            });
        }
        if keys.is_empty() {
            return Err("auth.api_keys: at least one key is required".into());
        }
        Ok(Self {
            keys: Arc::new(keys),
        })
    }

    /// Returns the principal of `key`, comparing against every configured key in constant time.
    pub fn authenticate(&self, key: &str) -> Option<Principal> {
        let d = digest(key);
        let mut found = None;
        for entry in self.keys.iter() {
            if bool::from(entry.digest.ct_eq(&d)) {
                found = Some(entry.principal.clone());
            }
        }
        found
    }
}

/// Says which roles may call a gRPC path such as `/pkg.Service/Method`; `None` = no such method.
pub type RoleTable = fn(&str) -> Option<&'static [Role]>;

/// Paths that never need a key: health checks and reflection.
pub fn is_open_path(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
}

/// Buckets kept before the idle, full ones are forgotten.
const MAX_BUCKETS: usize = 10_000;

/// What a key over its rate limit is told (`RESOURCE_EXHAUSTED`).
pub const RATE_LIMITED: &str =
    "rate limit: this API key is sending requests faster than allowed; slow down and retry";

/// A token bucket per API key: `per_second` requests on average, bursts up to `burst`. The auth
/// layer charges one token per call and leaves the limit in the request's extensions, so a
/// handler whose call carries many requests charges each one.
#[derive(Clone, Debug)]
pub struct RateLimit {
    per_second: f64,
    burst: f64,
    buckets: Arc<std::sync::Mutex<std::collections::HashMap<String, (f64, std::time::Instant)>>>,
}

impl RateLimit {
    /// A limit; `per_second == 0` disables it.
    pub fn new(per_second: u32, burst: u32) -> Option<Self> {
        (per_second > 0).then(|| Self {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            buckets: Arc::default(),
        })
    }

    /// Takes one token for `key_id`; false when its bucket is empty.
    pub fn allow(&self, key_id: &str) -> bool {
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        let now = std::time::Instant::now();
        // People bring a bucket each: forget the full ones that have been idle, so the map
        // stays as large as the set of recent callers.
        if buckets.len() > MAX_BUCKETS {
            let (per_second, burst) = (self.per_second, self.burst);
            buckets.retain(|_, (t, last)| {
                *t + now.duration_since(*last).as_secs_f64() * per_second < burst
            });
        }
        let (tokens, last) = buckets
            .entry(key_id.to_owned())
            .or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Tower layer enforcing API keys, roles and the per-key rate limit.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    keys: KeyStore,
    roles: RoleTable,
    limit: Option<RateLimit>,
    jwt: Option<crate::jwt::JwtVerifier>,
}

impl AuthLayer {
    /// Builds the layer from the key store and the service's role table.
    pub fn new(keys: KeyStore, roles: RoleTable) -> Self {
        Self {
            keys,
            roles,
            limit: None,
            jwt: None,
        }
    }

    /// Accepts people's JWTs too, verified by `jwt` (`None`: API keys only).
    pub fn with_jwt(mut self, jwt: Option<crate::jwt::JwtVerifier>) -> Self {
        self.jwt = jwt;
        self
    }

    /// Limits every key to `per_second` requests (bursts up to `burst`); 0 means no limit. A
    /// client over its limit gets `RESOURCE_EXHAUSTED` before any handler or database work.
    pub fn with_rate_limit(mut self, per_second: u32, burst: u32) -> Self {
        self.limit = RateLimit::new(per_second, burst);
        self
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            keys: self.keys.clone(),
            roles: self.roles,
            limit: self.limit.clone(),
            jwt: self.jwt.clone(),
        }
    }
}

/// The service built by [`AuthLayer`].
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    keys: KeyStore,
    roles: RoleTable,
    limit: Option<RateLimit>,
    jwt: Option<crate::jwt::JwtVerifier>,
}

fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl<S> AuthService<S> {
    fn check<B>(&self, req: &mut http::Request<B>) -> Result<(), tonic::Status> {
        let path = req.uri().path();
        if is_open_path(path) {
            return Ok(());
        }
        let Some(allowed) = (self.roles)(path) else {
            return Err(tonic::Status::unimplemented(format!(
                "unknown method {}",
                crate::validate::quote(path)
            )));
        };
        let token = bearer(req.headers()).ok_or_else(|| {
            tonic::Status::unauthenticated("missing API key: send `authorization: Bearer <key>`")
        })?;
        let principal = match (&self.jwt, crate::jwt::looks_like_jwt(token)) {
            (Some(jwt), true) => jwt.verify(token).map_err(tonic::Status::unauthenticated)?,
            (None, true) => self.keys.authenticate(token).ok_or_else(|| {
                tonic::Status::unauthenticated(
                    "invalid token: this service accepts no JWTs (auth.jwt is not configured)",
                )
            })?,
            (_, false) => self
                .keys
                .authenticate(token)
                .ok_or_else(|| tonic::Status::unauthenticated("invalid API key"))?,
        };
        if !allowed.contains(&principal.role) {
            return Err(tonic::Status::permission_denied(format!(
                "role {} may not call {path}",
                principal.role.as_str()
            )));
        }
        if let Some(limit) = &self.limit {
            if !limit.allow(&principal.key_id) {
                return Err(tonic::Status::resource_exhausted(RATE_LIMITED));
            }
            // A call that carries many requests (a stream of commands) charges each of them.
            req.extensions_mut().insert(limit.clone());
        }
        req.extensions_mut().insert(principal);
        Ok(())
    }
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>> + Send,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.check(&mut req) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(status) => {
                let resp = status.into_http::<ResBody>();
                Box::pin(async move { Ok(resp) })
            }
        }
    }
}

/// Adds `authorization: Bearer <key>` to every outgoing request of a tonic client.
#[derive(Clone)]
pub struct BearerInterceptor {
    value: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl fmt::Debug for BearerInterceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerInterceptor")
    }
}

impl BearerInterceptor {
    /// Builds the interceptor (it also carries the trace context, see
    /// [`crate::telemetry::inject`]); an empty or non-ASCII key sends no header.
    pub fn new(key: &str) -> Self {
        let value = if key.is_empty() {
            None
        } else {
            format!("Bearer {key}").parse().ok()
        };
        Self { value }
    }
}

impl tonic::service::Interceptor for BearerInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.value {
            req.metadata_mut().insert("authorization", v.clone());
        }
        crate::telemetry::inject(req.metadata_mut());
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_roles_keys_and_scopes() {
        let ks = KeyStore::parse("admin:adminkey1; caller:callerkey1:t1,t2").expect("valid spec");
        let a = ks.authenticate("adminkey1").expect("admin key");
        assert_eq!(a.role, Role::Admin);
        assert!(a.may_access("anything"));
        let c = ks.authenticate("callerkey1").expect("caller key");
        assert_eq!(c.role, Role::Caller);
        assert!(c.may_access("t2"));
        assert!(!c.may_access("t3"));
        assert!(ks.authenticate("nope-nope").is_none());
    }

    #[test]
    fn rate_limit_is_per_key() {
        let l = RateLimit::new(1, 3).expect("enabled");
        assert_eq!((0..5).filter(|_| l.allow("a")).count(), 3, "burst of 3");
        assert!(l.allow("b"), "another key has its own bucket");
        assert!(RateLimit::new(0, 10).is_none(), "0 disables");
    }

    #[test]
    fn accepts_stored_digests() {
        let d = hex::encode(digest("caller-secret-key"));
        let ks = KeyStore::parse(&format!("caller:sha256:{d}:t1")).expect("digest entry");
        let p = ks
            .authenticate("caller-secret-key")
            .expect("the key behind the digest");
        assert_eq!(p.role, Role::Caller);
        assert!(
            ks.authenticate(&format!("sha256:{d}")).is_none(),
            "the digest is not the key"
        );
        assert!(KeyStore::parse("caller:sha256:abcd").is_err());
    }

    #[test]
    fn rejects_bad_entries_without_echoing_keys() {
        let err = KeyStore::parse("boss:secretkey9").expect_err("bad role");
        assert!(
            err.contains("entry 1") && !err.contains("secretkey9"),
            "{err}"
        );
        assert!(KeyStore::parse("admin:short").is_err());
        assert!(KeyStore::parse(" ; ").is_err());
    }
}

//! People's identities: JWT bearer tokens issued by the CCO platform's login.
//!
//! Two kinds of signature are accepted, each only with its own kind of key:
//! - `HS256` with the shared secret `auth.jwt.secret`;
//! - `RS256` and `ES256` (P-256) with the public keys of the JWKS file `auth.jwt.jwks_path`,
//!   chosen by the token's `kid`. The file is checked for changes (its modification time and
//!   size) at most once a second, and at once when a token names an unknown `kid`, so keys are
//!   rotated by rewriting the file (write a new file and rename it over the old one).
//!
//! Everything else is refused before any signature check, with a reason: `alg: none`, an
//! algorithm other than these three, an `HS256` token naming a JWKS key or an asymmetric token
//! whose key is of another type (algorithm confusion: a public key is never used as an HMAC
//! secret), an unknown `kid`. Then the signature, `exp` (required), `nbf`, `iss` and `aud` (when
//! configured) are checked with `auth.jwt.clock_skew_seconds` of leeway, and the claims named
//! by the settings give the person's role (`admin`, `supervisor`, `collector`), tenants (an
//! array or a comma- or space-separated string; at least one) and collector id (collectors).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::ExposeSecret;

use crate::auth::{Principal, Role};

/// The JWT settings of a service (`*__AUTH__JWT__*`); with neither a secret nor a JWKS path,
/// tokens are refused and only API keys work.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtSettings {
    /// The HS256 shared secret (at least 32 bytes); empty turns HS256 off.
    pub secret: secrecy::SecretString,
    /// A JWKS file (`{"keys": [...]}`) with the RS256/ES256 public keys; empty turns them off.
    pub jwks_path: String,
    /// The required `iss`; empty accepts any issuer.
    pub issuer: String,
    /// The required `aud` (one of the token's audiences); empty does not check it.
    pub audience: String,
    /// Leeway for `exp` and `nbf`, in seconds (0-600).
    pub clock_skew_seconds: u64,
    /// The claim holding the person's tenants.
    pub tenants_claim: String,
    /// The claim holding the person's role.
    pub role_claim: String,
    /// The claim holding a collector's id.
    pub collector_claim: String,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            secret: secrecy::SecretString::from(""),
            jwks_path: String::new(),
            issuer: String::new(),
            audience: String::new(),
            clock_skew_seconds: 60,
            tenants_claim: "tenants".into(),
            role_claim: "role".into(),
            collector_claim: "collector_id".into(),
        }
    }
}

impl JwtSettings {
    /// The verifier, or `None` when JWTs are off.
    ///
    /// # Errors
    /// Names the setting that is wrong (a short secret, an unreadable JWKS file, ...).
    pub fn verifier(&self) -> anyhow::Result<Option<JwtVerifier>> {
        let secret = self.secret.expose_secret();
        if secret.is_empty() && self.jwks_path.is_empty() {
            return Ok(None);
        }
        if !secret.is_empty() && secret.len() < 32 {
            anyhow::bail!("auth.jwt.secret: must be at least 32 bytes");
        }
        if self.clock_skew_seconds > 600 {
            anyhow::bail!("auth.jwt.clock_skew_seconds: must be 0-600");
        }
        for (field, v) in [
            ("auth.jwt.tenants_claim", &self.tenants_claim),
            ("auth.jwt.role_claim", &self.role_claim),
            ("auth.jwt.collector_claim", &self.collector_claim),
        ] {
            if v.trim().is_empty() {
                anyhow::bail!("{field}: must name a claim");
            }
        }
        let jwks = if self.jwks_path.is_empty() {
            None
        } else {
            let j = Jwks::open(&self.jwks_path)
                .map_err(|e| anyhow::anyhow!("auth.jwt.jwks_path: {e}"))?;
            Some(Arc::new(j))
        };
        Ok(Some(JwtVerifier {
            secret: (!secret.is_empty())
                .then(|| DecodingKey::from_secret(secret.as_bytes()))
                .transpose()
                .map_err(|e| anyhow::anyhow!("auth.jwt.secret: {e}"))?,
            jwks,
            settings: Arc::new(self.clone()),
        }))
    }
}

/// Whether a bearer token has the shape of a JWT (three base64url parts).
pub fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
}

/// Verifies tokens as described in the module docs.
#[derive(Clone)]
pub struct JwtVerifier {
    secret: Option<DecodingKey>,
    jwks: Option<Arc<Jwks>>,
    settings: Arc<JwtSettings>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("hs256", &self.secret.is_some())
            .field("jwks", &self.jwks.as_ref().map(|j| j.path.clone()))
            .finish()
    }
}

#[derive(serde::Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
}

impl JwtVerifier {
    /// The person behind `token`, or why it is refused (the `UNAUTHENTICATED` message).
    pub fn verify(&self, token: &str) -> Result<Principal, String> {
        let header = token.split('.').next().unwrap_or_default();
        let header: RawHeader = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header.trim_end_matches('='))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("invalid token: the header is not base64url JSON")?;
        let alg = header.alg.unwrap_or_default();
        let (key, alg) = match alg.as_str() {
            "" => return Err("invalid token: the header has no alg".into()),
            a if a.eq_ignore_ascii_case("none") => {
                return Err("invalid token: alg none is refused (tokens must be signed)".into());
            }
            "HS256" => {
                if let (Some(kid), Some(jwks)) = (&header.kid, &self.jwks)
                    && let Some((_, key_alg)) = jwks.key(kid)
                {
                    return Err(format!(
                        "invalid token: algorithm confusion: kid {kid:?} is a {key_alg:?} public key, the token says HS256"
                    ));
                }
                let key = self
                    .secret
                    .clone()
                    .ok_or("invalid token: HS256 tokens are not accepted here")?;
                (key, Algorithm::HS256)
            }
            "RS256" | "ES256" => {
                let alg = if alg == "RS256" {
                    Algorithm::RS256
                } else {
                    Algorithm::ES256
                };
                let jwks = self.jwks.as_ref().ok_or(
                    "invalid token: RS256/ES256 tokens are not accepted here (no JWKS configured)",
                )?;
                let kid = header
                    .kid
                    .ok_or("invalid token: the header has no kid (required for RS256/ES256)")?;
                let (key, key_alg) = jwks
                    .key(&kid)
                    .ok_or_else(|| format!("invalid token: unknown kid {:?}", clip(&kid)))?;
                if key_alg != alg {
                    return Err(format!(
                        "invalid token: algorithm confusion: kid {:?} is a {key_alg:?} key, the token says {alg:?}",
                        clip(&kid)
                    ));
                }
                (key, alg)
            }
            other => {
                return Err(format!(
                    "invalid token: algorithm {:?} is not accepted (HS256, RS256, ES256 are)",
                    clip(other)
                ));
            }
        };
        let s = &self.settings;
        let mut v = Validation::new(alg);
        v.leeway = s.clock_skew_seconds;
        v.validate_nbf = true;
        let mut required = vec!["exp"];
        if s.issuer.is_empty() {
            v.iss = None;
        } else {
            v.set_issuer(&[&s.issuer]);
            required.push("iss");
        }
        if s.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&[&s.audience]);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => "token expired".to_owned(),
                K::ImmatureSignature => "token not yet valid (nbf is in the future)".to_owned(),
                K::InvalidIssuer => "token has the wrong issuer (iss)".to_owned(),
                K::InvalidAudience => "token has the wrong audience (aud)".to_owned(),
                K::InvalidSignature => "invalid token: bad signature".to_owned(),
                K::MissingRequiredClaim(c) => format!("invalid token: the {c} claim is missing"),
                K::InvalidClaimFormat(c) => format!("invalid token: the {c} claim is malformed"),
                _ => "invalid token: malformed".to_owned(),
            }
        })?;
        self.principal(&data.claims)
    }

    fn principal(&self, claims: &serde_json::Value) -> Result<Principal, String> {
        let s = &self.settings;
        let role_s = claims
            .get(&s.role_claim)
            .and_then(|r| r.as_str())
            .ok_or_else(|| format!("token has no {} claim", s.role_claim))?;
        let role = match role_s {
            "admin" => Role::Admin,
            "supervisor" => Role::Supervisor,
            "collector" => Role::Collector,
            other => {
                return Err(format!(
                    "token claim {}: unknown role {:?} (admin, supervisor, collector)",
                    s.role_claim,
                    clip(other)
                ));
            }
        };
        let tenants: BTreeSet<String> = match claims.get(&s.tenants_claim) {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|t| t.as_str())
                .map(str::to_owned)
                .collect(),
            Some(serde_json::Value::String(t)) => t
                .split([',', ' '])
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect(),
            _ => BTreeSet::new(),
        };
        if tenants.is_empty() || tenants.iter().any(|t| t == "*") {
            return Err(format!(
                "token claim {}: must name at least one tenant (and no wildcard)",
                s.tenants_claim
            ));
        }
        // The same rule as every tenant id in a request: nothing a request could not name.
        if let Some((t, why)) = tenants
            .iter()
            .find_map(|t| crate::validate::id(t, 64).err().map(|e| (t, e)))
        {
            return Err(format!(
                "token claim {}: tenant {} {why}",
                s.tenants_claim,
                crate::validate::quote(t)
            ));
        }
        // A collector id means one person in one tenant: a collector's token names exactly one.
        if role == Role::Collector && tenants.len() != 1 {
            return Err(format!(
                "token claim {}: a collector's token must name exactly one tenant",
                s.tenants_claim
            ));
        }
        let collector_id = match role {
            Role::Collector => Some(
                claims
                    .get(&s.collector_claim)
                    .and_then(|c| c.as_str())
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| {
                        format!("a collector's token needs the {} claim", s.collector_claim)
                    })
                    .and_then(|c| {
                        // As a collector id in a request: 1-64 of [A-Za-z0-9_.:-].
                        crate::validate::id(c, 64)
                            .map(|()| c)
                            .map_err(|why| format!("token claim {}: {why}", s.collector_claim))
                    })?
                    .into(),
            ),
            _ => None,
        };
        // A token issued in the future (beyond the allowed skew) is refused like one not yet
        // valid: the issuer's clock or the token is wrong.
        if let Some(iat) = claims.get("iat").and_then(serde_json::Value::as_i64) {
            let now = i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap_or(i64::MAX);
            let skew = i64::try_from(s.clock_skew_seconds).unwrap_or(0);
            if iat > now.saturating_add(skew) {
                return Err("token not yet valid (iat is in the future)".into());
            }
        }
        // The subject names the person for logs and their own rate-limit bucket.
        let sub = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
            .ok_or("invalid token: the sub claim is missing")?;
        Ok(Principal {
            role,
            tenants: Some(Arc::new(tenants)),
            key_id: format!("jwt:{}", clip(sub)),
            collector_id,
        })
    }
}

/// At most 64 characters of untrusted text, for messages and logs.
fn clip(s: &str) -> String {
    s.chars()
        .take(64)
        .filter(|c| !c.is_control())
        .collect::<String>()
}

type KeyMap = HashMap<String, (DecodingKey, Algorithm)>;

/// A JWKS file and the keys last read from it.
struct Jwks {
    path: String,
    state: RwLock<JwksState>,
}

struct JwksState {
    keys: Arc<KeyMap>,
    stamp: Option<Stamp>,
    checked: Instant,
}

/// What tells a changed JWKS file: modification time, size, inode.
type Stamp = (SystemTime, u64, u64);

/// How often the file is looked at for a change.
const JWKS_CHECK: Duration = Duration::from_secs(1);

impl Jwks {
    fn open(path: &str) -> Result<Self, String> {
        let (keys, stamp) = read_jwks(path)?;
        Ok(Self {
            path: path.to_owned(),
            state: RwLock::new(JwksState {
                keys: Arc::new(keys),
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    fn key(&self, kid: &str) -> Option<(DecodingKey, Algorithm)> {
        let (keys, since) = {
            let st = self.state.read().ok()?;
            (st.keys.clone(), st.checked.elapsed())
        };
        let found = keys.get(kid).cloned();
        // An unknown kid looks at the file at once (a stat; it is read only if it changed).
        let due = since >= JWKS_CHECK || found.is_none();
        if !due {
            return found;
        }
        self.refresh();
        let st = self.state.read().ok()?;
        st.keys.get(kid).cloned()
    }

    /// Re-reads the file when its modification time, size or inode changed; a file that no
    /// longer parses keeps the keys read before (and is logged). The stat happens outside the
    /// lock, and the write lock is taken only for a changed file, so a flood of unknown kids
    /// costs a stat each and never serialises verification.
    fn refresh(&self) {
        let stamp = file_stamp(&self.path);
        let unchanged = self.state.read().is_ok_and(|st| st.stamp == stamp);
        if unchanged {
            if let Ok(mut st) = self.state.try_write() {
                st.checked = Instant::now();
            }
            return;
        }
        let Ok(mut st) = self.state.write() else {
            return;
        };
        st.checked = Instant::now();
        if stamp == st.stamp {
            return;
        }
        match read_jwks(&self.path) {
            Ok((keys, stamp)) => {
                tracing::info!(path = %self.path, keys = keys.len(), "JWKS reloaded");
                st.keys = Arc::new(keys);
                st.stamp = stamp;
            }
            Err(e) => {
                tracing::warn!(path = %self.path, error = %e, "JWKS not reloaded; keeping the keys read before")
            }
        }
    }
}

fn file_stamp(path: &str) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some((m.modified().ok()?, m.len(), ino))
}

fn read_jwks(path: &str) -> Result<(KeyMap, Option<Stamp>), String> {
    let stamp = file_stamp(path);
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(&text).map_err(|e| format!("{path} is not a JWKS: {e}"))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
        let Some(kid) = jwk.common.key_id.clone() else {
            tracing::warn!(path, "JWKS key without kid ignored");
            continue;
        };
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            _ => {
                tracing::warn!(
                    path,
                    kid,
                    "JWKS key of an unsupported type ignored (RSA and EC P-256 are used)"
                );
                continue;
            }
        };
        if let Some(declared) = jwk.common.key_algorithm
            && format!("{declared:?}") != format!("{alg:?}")
        {
            tracing::warn!(
                path,
                kid,
                "JWKS key whose alg is neither RS256 nor ES256 ignored"
            );
            continue;
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("{path}: key {kid:?}: {e}"))?;
        keys.insert(kid, (key, alg));
    }
    Ok((keys, stamp))
}

/// The HS256 secret of `cco stack` and the development defaults; never for production.
pub const DEV_JWT_SECRET: &str = "cco-dev-jwt-secret-not-for-production";

/// A person to mint a token for (`cco token mint`), with the default claim names.
#[derive(Debug, Clone)]
pub struct Person {
    pub tenants: Vec<String>,
    pub role: String,
    pub collector_id: Option<String>,
    pub sub: Option<String>,
    pub issuer: String,
    pub audience: String,
    pub ttl_seconds: u64,
}

/// Parses a lifetime such as `90s`, `30m`, `1h`, `7d` (a bare number is seconds), at most
/// 30 days.
///
/// # Errors
/// Names `ttl` and what is wrong.
pub fn ttl_seconds(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().map_err(|_| {
        anyhow::anyhow!("ttl: expected a number and a unit (90s, 30m, 1h, 7d), got {s:?}")
    })?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => anyhow::bail!("ttl: unknown unit {unit:?} (s, m, h, d)"),
    };
    let secs = n
        .checked_mul(mult)
        .filter(|v| (1..=30 * 86_400).contains(v))
        .ok_or_else(|| anyhow::anyhow!("ttl: must be 1 s to 30 days"))?;
    Ok(secs)
}

/// Mints an HS256 token for `person`.
///
/// # Errors
/// A role other than admin, supervisor or collector; a collector without an id; a short secret.
pub fn mint_person(secret: &str, person: &Person) -> anyhow::Result<String> {
    if !matches!(person.role.as_str(), "admin" | "supervisor" | "collector") {
        anyhow::bail!("role: must be admin, supervisor or collector");
    }
    if person.role == "collector" && person.collector_id.is_none() {
        anyhow::bail!("collector: a collector's token needs --collector");
    }
    if secret.len() < 32 {
        anyhow::bail!("secret: must be at least 32 bytes");
    }
    let now = jsonwebtoken::get_current_timestamp();
    let sub = person.sub.clone().unwrap_or_else(|| {
        person
            .collector_id
            .clone()
            .unwrap_or_else(|| format!("dev-{}", person.role))
    });
    let mut claims = serde_json::json!({
        "sub": sub,
        "iat": now,
        "exp": now.saturating_add(person.ttl_seconds),
        "role": person.role,
        "tenants": person.tenants,
    });
    if let Some(obj) = claims.as_object_mut() {
        if let Some(c) = &person.collector_id {
            obj.insert("collector_id".into(), c.clone().into());
        }
        if !person.issuer.is_empty() {
            obj.insert("iss".into(), person.issuer.clone().into());
        }
        if !person.audience.is_empty() {
            obj.insert("aud".into(), person.audience.clone().into());
        }
    }
    mint_hs256(secret, &claims)
}

/// Signs an HS256 token, for `cco token mint` and tests.
///
/// # Errors
/// A secret the library refuses.
pub fn mint_hs256(secret: &str, claims: &serde_json::Value) -> anyhow::Result<String> {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())?;
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        claims,
        &key,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier() -> JwtVerifier {
        JwtSettings {
            secret: SECRET.into(),
            issuer: "cco".into(),
            ..JwtSettings::default()
        }
        .verifier()
        .expect("valid")
        .expect("on")
    }

    fn now() -> i64 {
        i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap_or(i64::MAX)
    }

    #[test]
    fn reads_role_tenants_and_collector() {
        let t = mint_hs256(
            SECRET,
            &serde_json::json!({"iss": "cco", "exp": now() + 60, "sub": "u1", "role": "collector",
                "tenants": "t1", "collector_id": "alice"}),
        )
        .expect("signed");
        let p = verifier().verify(&t).expect("valid token");
        assert_eq!(p.role, Role::Collector);
        assert_eq!(p.collector_id.as_deref(), Some("alice"));
        assert!(p.may_access("t1") && !p.may_access("t3"));
    }

    #[test]
    fn refuses_bad_tokens_with_a_reason() {
        let v = verifier();
        let claims = |extra: serde_json::Value| {
            let mut c = serde_json::json!({"iss": "cco", "exp": now() + 60, "sub": "u1", "role": "admin", "tenants": ["t1"]});
            if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
                c.extend(e.clone());
            }
            c
        };
        let cases = [
            (claims(serde_json::json!({"exp": now() - 3600})), "expired"),
            (
                claims(serde_json::json!({"nbf": now() + 3600})),
                "not yet valid",
            ),
            (claims(serde_json::json!({"iss": "other"})), "issuer"),
            (claims(serde_json::json!({"role": "root"})), "unknown role"),
            (claims(serde_json::json!({"tenants": []})), "tenant"),
            (
                claims(serde_json::json!({"role": "collector"})),
                "collector_id",
            ),
            (claims(serde_json::json!({"sub": ""})), "sub"),
            (claims(serde_json::json!({"iat": now() + 3600})), "iat"),
            (
                claims(serde_json::json!({"tenants": ["t 1"]})),
                "may contain only",
            ),
            (
                claims(serde_json::json!({"role": "collector", "collector_id": "bob\n"})),
                "may contain only",
            ),
            (
                claims(
                    serde_json::json!({"role": "collector", "collector_id": "a", "tenants": ["t1", "t2"]}),
                ),
                "exactly one tenant",
            ),
        ];
        for (c, reason) in cases {
            let t = mint_hs256(SECRET, &c).expect("signed");
            let err = v.verify(&t).expect_err(reason);
            assert!(err.contains(reason), "{err} should say {reason}");
        }
        let forged = mint_hs256(
            "another-secret-another-secret-000",
            &claims(serde_json::json!({})),
        )
        .expect("signed");
        assert!(v.verify(&forged).expect_err("forged").contains("signature"));
        let none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.";
        assert!(v.verify(none).expect_err("none").contains("alg none"));
    }
}

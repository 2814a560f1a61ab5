//! The signed-in person's session, kept in one cookie: the credential they signed in with, what
//! the console shows them, and the form token (CSRF), sealed with AES-256-GCM under a key
//! derived from `session.secret` (so it is both secret and tamper-proof, and any replica with
//! the same secret can open it). Nothing is kept on the server.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "cco_session";
/// The cookie holding the sign-in form's token before anyone is signed in.
pub const PRE_COOKIE: &str = "cco_pre";

/// What a person is in the console (the services decide what they may do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything of their tenants.
    Admin,
    /// Reads everything of their tenants, frees extensions, hangs up.
    Supervisor,
    /// Their own calls.
    Collector,
}

/// How the person signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A JWT issued by the CCO platform.
    Jwt,
    /// An administrator's API key.
    Key,
}

/// A signed-in person.
#[derive(Clone, Serialize, Deserialize)]
pub struct Session {
    /// The token or key sent to the services as `authorization: Bearer`.
    pub credential: String,
    /// JWT or API key.
    pub kind: Kind,
    /// The role.
    pub role: Role,
    /// The tenants they may work on.
    pub tenants: Vec<String>,
    /// The tenant shown now.
    pub tenant: String,
    /// A collector's own id.
    pub collector: Option<String>,
    /// A name to show.
    pub name: String,
    /// Unix seconds after which the session is over.
    pub expires: i64,
    /// The token every form of this session carries.
    pub csrf: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("kind", &self.kind)
            .field("role", &self.role)
            .field("tenant", &self.tenant)
            .field("collector", &self.collector)
            .field("name", &self.name)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// Seals and opens session cookies.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer")
    }
}

const NONCE_LEN: usize = 12;

impl Sealer {
    /// A sealer keyed by `secret` (at least 32 bytes, checked by the settings).
    pub fn new(secret: &str) -> Self {
        let key = Sha256::new()
            .chain_update(b"cco-console session v1\0")
            .chain_update(secret.as_bytes())
            .finalize();
        Self {
            cipher: Aes256Gcm::new(&key),
        }
    }

    /// The cookie value for `session`.
    pub fn seal(&self, session: &Session) -> String {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let plain = serde_json::to_vec(session).unwrap_or_default();
        match self.cipher.encrypt(&Nonce::from(nonce), plain.as_slice()) {
            Ok(sealed) => {
                let mut out = nonce.to_vec();
                out.extend_from_slice(&sealed);
                B64.encode(out)
            }
            // Encryption fails only for inputs over 64 GiB.
            Err(_) => String::new(),
        }
    }

    /// The session in a cookie value, if it is ours, intact and not expired at `now`.
    pub fn open(&self, value: &str, now: i64) -> Option<Session> {
        let raw = B64.decode(value).ok()?;
        if raw.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        let plain = self.cipher.decrypt(&Nonce::from(nonce), sealed).ok()?;
        let s: Session = serde_json::from_slice(&plain).ok()?;
        (s.expires > now).then_some(s)
    }
}

/// A fresh random token (form tokens, idempotency keys): 32 hex characters.
pub fn token() -> String {
    let b: [u8; 16] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether a submitted form token matches, in constant time.
pub fn same_token(expected: &str, given: &str) -> bool {
    use subtle::ConstantTimeEq;
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// What a JWT says about its holder (read without verifying: the services verify every call,
/// and the console checks the token with one of them before it opens a session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The role claim.
    pub role: String,
    /// The tenants claim.
    pub tenants: Vec<String>,
    /// The collector id claim.
    pub collector: Option<String>,
    /// `name`, else `sub`.
    pub name: String,
    /// `exp`.
    pub expires: Option<i64>,
}

/// Reads the claims of a JWT under the deployment's claim names (the tenants claim may be a
/// list, or a string separated by commas or spaces, as the services read it).
pub fn read_claims(token: &str, names: &crate::settings::ClaimNames) -> Option<Claims> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
    let text = |k: &str| json.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let tenants = match json.get(&names.tenants) {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(serde_json::Value::String(s)) => s
            .split([',', ' '])
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect(),
        _ => Vec::new(),
    };
    Some(Claims {
        role: text(&names.role).unwrap_or_default(),
        tenants,
        collector: text(&names.collector),
        name: text("name").or_else(|| text("sub")).unwrap_or_default(),
        expires: json.get("exp").and_then(serde_json::Value::as_i64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(expires: i64) -> Session {
        Session {
            credential: "secret-token".into(),
            kind: Kind::Jwt,
            role: Role::Collector,
            tenants: vec!["demo".into()],
            tenant: "demo".into(),
            collector: Some("alice".into()),
            name: "alice".into(),
            expires,
            csrf: token(),
        }
    }

    #[test]
    fn sealed_sessions_open_only_with_the_same_secret_and_before_expiry() {
        let a = Sealer::new("0123456789abcdef0123456789abcdef");
        let b = Sealer::new("0123456789abcdef0123456789abcdeX");
        let cookie = a.seal(&session(1_000));
        assert!(
            !cookie.contains("secret-token"),
            "the credential is encrypted"
        );
        let opened = a.open(&cookie, 999).expect("opens");
        assert_eq!(opened.credential, "secret-token");
        assert!(a.open(&cookie, 1_000).is_none(), "expired");
        assert!(b.open(&cookie, 0).is_none(), "another secret");
        // Any changed byte is refused.
        let mut raw = B64.decode(&cookie).expect("b64");
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert!(a.open(&B64.encode(raw), 0).is_none());
        assert!(a.open("", 0).is_none() && a.open("!!", 0).is_none());
    }

    #[test]
    fn form_tokens_compare_exactly() {
        let t = token();
        assert_eq!(t.len(), 32);
        assert!(same_token(&t, &t));
        assert!(!same_token(&t, &t[..31]));
        assert!(!same_token("", ""));
    }

    #[test]
    fn claims_are_read_from_the_payload() {
        let payload = B64.encode(
            br#"{"sub":"u1","role":"collector","tenants":["demo","x"],"collector_id":"alice","exp":99}"#,
        );
        let names = crate::settings::ClaimNames::default();
        let c = read_claims(&format!("h.{payload}.s"), &names).expect("claims");
        assert_eq!(c.role, "collector");
        assert_eq!(c.tenants, vec!["demo", "x"]);
        assert_eq!(c.collector.as_deref(), Some("alice"));
        assert_eq!(c.name, "u1");
        assert_eq!(c.expires, Some(99));
        assert!(read_claims("not-a-jwt", &names).is_none());
        assert!(read_claims("a.b.c.d", &names).is_none());
        // A deployment that names its claims otherwise (as the services' *_CLAIM settings).
        let payload =
            B64.encode(br#"{"sub":"u2","cco_role":"supervisor","orgs":"a b","agent":"x"}"#);
        let custom = crate::settings::ClaimNames {
            tenants: "orgs".into(),
            role: "cco_role".into(),
            collector: "agent".into(),
        };
        let c = read_claims(&format!("h.{payload}.s"), &custom).expect("claims");
        assert_eq!((c.role.as_str(), c.tenants.len()), ("supervisor", 2));
        assert_eq!(c.collector.as_deref(), Some("x"));
    }
}

//! People's JWTs over real gRPC: RS256/ES256 keys from a JWKS file (rotated without a
//! restart), HS256 with the shared secret, every refusal with its reason; and what each
//! person role may do with calls (a collector only as themselves).

use std::path::Path;

use crate::common::*;
use cco_contracts::gateway::v1 as pb;
use cco_platform::auth::BearerInterceptor;
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::json;
use tonic::Code;

const ISSUER: &str = "https://login.cco.example";
const AUDIENCE: &str = "cco-infinity";

fn now() -> i64 {
    i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap()
}

/// Valid admin claims for tenant t-a, with `extra` merged in.
fn claims(extra: serde_json::Value) -> serde_json::Value {
    let mut c = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "u-1", "exp": now() + 600,
        "role": "admin", "tenants": ["t-a"]});
    c.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    c
}

struct Signer {
    kid: &'static str,
    alg: Algorithm,
    key: EncodingKey,
}

impl Signer {
    fn rsa(kid: &'static str) -> Self {
        let pem = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt-test-rsa.pem"),
        )
        .unwrap();
        Self {
            kid,
            alg: Algorithm::RS256,
            key: EncodingKey::from_rsa_pem(&pem).unwrap(),
        }
    }

    fn ec(kid: &'static str) -> Self {
        let pair = rcgen::KeyPair::generate().unwrap();
        Self {
            kid,
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
        }
    }

    fn jwk(&self) -> Jwk {
        let mut j = Jwk::from_encoding_key(&self.key, self.alg).unwrap();
        j.common.key_id = Some(self.kid.to_owned());
        j
    }

    fn sign(&self, claims: &serde_json::Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.to_owned());
        jsonwebtoken::encode(&h, claims, &self.key).unwrap()
    }
}

fn write_jwks(path: &Path, signers: &[&Signer]) {
    let set = json!({"keys": signers.iter().map(|s| s.jwk()).collect::<Vec<_>>()});
    // Written aside and renamed: the services never read a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&set).unwrap()).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

fn b64(v: &serde_json::Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// The code and message of ListCollectors on t-a with `token`.
async fn try_token(stack: &Stack, token: &str) -> (Code, String) {
    let mut c = stack.collectors(token).await;
    match c
        .list_collectors(pb::ListCollectorsRequest {
            tenant_id: "t-a".into(),
            ..Default::default()
        })
        .await
    {
        Ok(_) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_verified_and_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let rsa = Signer::rsa("rsa-1");
    let ec = Signer::ec("ec-1");
    write_jwks(&jwks, &[&rsa, &ec]);
    let jwks_path = jwks.to_str().unwrap().to_owned();
    let stack = Stack::start(Backend::Sqlite, false, |s| {
        s.auth.jwt.jwks_path = jwks_path;
        s.auth.jwt.issuer = ISSUER.into();
        s.auth.jwt.audience = AUDIENCE.into();
        s.auth.jwt.clock_skew_seconds = 30;
    })
    .await;

    let hs = cco_platform::jwt::mint_hs256(JWT_SECRET, &claims(json!({}))).unwrap();
    for (what, token) in [
        ("RS256", rsa.sign(&claims(json!({})))),
        ("ES256", ec.sign(&claims(json!({})))),
        ("HS256", hs),
        // Within the allowed clock skew.
        (
            "exp 10 s ago",
            rsa.sign(&claims(json!({"exp": now() - 10}))),
        ),
    ] {
        assert_eq!(try_token(&stack, &token).await.0, Code::Ok, "{what}");
    }

    // The RSA public key as an HMAC secret: the classic algorithm-confusion forgery.
    let public_pem = {
        let j = rsa.jwk();
        serde_json::to_vec(&j).unwrap()
    };
    let mut confused = Header::new(Algorithm::HS256);
    confused.kid = Some("rsa-1".into());
    let confusion = jsonwebtoken::encode(
        &confused,
        &claims(json!({})),
        &EncodingKey::from_secret(&public_pem).unwrap(),
    )
    .unwrap();
    let mut ec_as_rsa = Header::new(Algorithm::RS256);
    ec_as_rsa.kid = Some("ec-1".into());
    let ec_as_rsa = jsonwebtoken::encode(&ec_as_rsa, &claims(json!({})), &rsa.key).unwrap();
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none"})),
        b64(&claims(json!({})))
    );
    let none_upper = format!(
        "{}.{}.",
        b64(&json!({"alg": "NONE", "kid": "rsa-1"})),
        b64(&claims(json!({})))
    );
    let hs512 = {
        let h = Header::new(Algorithm::HS512);
        jsonwebtoken::encode(
            &h,
            &claims(json!({})),
            &EncodingKey::from_secret(JWT_SECRET.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let unknown_kid = Signer {
        kid: "rsa-9",
        ..Signer::rsa("x")
    }
    .sign(&claims(json!({})));
    let forged =
        cco_platform::jwt::mint_hs256("not-the-secret-not-the-secret-000", &claims(json!({})))
            .unwrap();
    let cases = [
        (
            "expired",
            rsa.sign(&claims(json!({"exp": now() - 3_600}))),
            "expired",
        ),
        (
            "not yet valid",
            rsa.sign(&claims(json!({"nbf": now() + 3_600}))),
            "not yet valid",
        ),
        (
            "wrong issuer",
            rsa.sign(&claims(json!({"iss": "https://evil.example"}))),
            "issuer",
        ),
        (
            "wrong audience",
            ec.sign(&claims(json!({"aud": "another-service"}))),
            "audience",
        ),
        (
            "no exp",
            rsa.sign(&{
                let mut c = claims(json!({}));
                c.as_object_mut().unwrap().remove("exp");
                c
            }),
            "exp",
        ),
        ("unknown kid", unknown_kid, "unknown kid"),
        ("alg none", none, "alg none"),
        ("alg NONE", none_upper, "alg none"),
        (
            "HS256 with the RSA public key",
            confusion,
            "algorithm confusion",
        ),
        ("RS256 naming the EC key", ec_as_rsa, "algorithm confusion"),
        ("HS512", hs512, "not accepted"),
        ("forged HS256", forged, "bad signature"),
        (
            "unknown role",
            rsa.sign(&claims(json!({"role": "root"}))),
            "unknown role",
        ),
        (
            "no tenants",
            rsa.sign(&claims(json!({"tenants": []}))),
            "tenant",
        ),
        (
            "collector without id",
            rsa.sign(&claims(json!({"role": "collector"}))),
            "collector_id",
        ),
        ("garbage", "eyJ.not.json".to_owned(), "invalid token"),
    ];
    for (what, token, reason) in cases {
        let (code, message) = try_token(&stack, &token).await;
        assert_eq!(code, Code::Unauthenticated, "{what}: {message}");
        assert!(
            message.contains(reason),
            "{what}: {message:?} should say {reason:?}"
        );
    }

    // Rotation without a restart: a new key works at its first use; a withdrawn one stops.
    let ec2 = Signer::ec("ec-2");
    write_jwks(&jwks, &[&ec2, &rsa]);
    assert_eq!(
        try_token(&stack, &ec2.sign(&claims(json!({})))).await.0,
        Code::Ok,
        "new key"
    );
    let old = ec.sign(&claims(json!({})));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (code, message) = try_token(&stack, &old).await;
        if code == Code::Unauthenticated {
            assert!(message.contains("unknown kid"), "{message}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the withdrawn key still works"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // A broken file keeps the keys read before.
    std::fs::write(&jwks, b"{not json").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    assert_eq!(
        try_token(&stack, &rsa.sign(&claims(json!({})))).await.0,
        Code::Ok,
        "kept keys"
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_places_reads_and_watches_only_their_own_calls() {
    let ctx = setup(
        Backend::Sqlite,
        pb::CallMode::DoubleCall,
        &["8001", "8002"],
        |_| {},
    )
    .await;
    let client = |token: String| {
        let stack = &ctx.stack;
        async move {
            pb::calls_client::CallsClient::with_interceptor(
                stack.gateway.channel().await,
                BearerInterceptor::new(&token),
            )
        }
    };
    let mut alice = client(person("collector", "t1", Some("alice"))).await;
    let mut supervisor = client(person("supervisor", "t1", None)).await;
    let make = |collector: &str, case: &str| pb::MakeCallRequest {
        tenant_id: "t1".into(),
        collector_id: collector.into(),
        case_id: case.into(),
        destination_number: "13900139000".into(),
        ..Default::default()
    };
    let own = alice
        .make_call(make("alice", "case-a"))
        .await
        .unwrap()
        .into_inner();
    let err = alice.make_call(make("bob", "case-b")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    let err = supervisor
        .make_call(make("bob", "case-b"))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "supervisors do not place calls"
    );
    let bobs = ctx
        .calls
        .clone()
        .make_call(make("bob", "case-b"))
        .await
        .unwrap()
        .into_inner();

    let get = |id: &str| pb::GetCallRequest {
        tenant_id: "t1".into(),
        call_id: id.into(),
    };
    assert_eq!(
        alice
            .get_call(get(&own.call_id))
            .await
            .unwrap()
            .into_inner()
            .collector_id,
        "alice"
    );
    assert_eq!(
        alice.get_call(get(&bobs.call_id)).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(
        alice
            .get_recording(pb::GetRecordingRequest {
                tenant_id: "t1".into(),
                call_id: bobs.call_id.clone()
            })
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(
        supervisor
            .get_call(get(&bobs.call_id))
            .await
            .unwrap()
            .into_inner()
            .collector_id,
        "bob"
    );
    let listed = alice
        .list_calls(pb::ListCallsRequest {
            tenant_id: "t1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .calls
            .iter()
            .map(|c| c.collector_id.as_str())
            .collect::<Vec<_>>(),
        ["alice"],
        "a collector's listing holds their calls only"
    );
    let all = supervisor
        .list_calls(pb::ListCallsRequest {
            tenant_id: "t1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.calls.len(), 2);

    // Watching everything of the tenant, alice sees her own call's events only.
    let mut stream = alice
        .watch_calls(pb::WatchCallsRequest {
            tenant_id: "t1".into(),
            from_start: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(e) = tokio::time::timeout(std::time::Duration::from_secs(30), stream.message())
        .await
        .expect("events within 30 s")
        .unwrap()
    {
        assert_eq!(e.collector_id, "alice");
        seen.push(e.r#type);
        if e.r#type == pb::CallEventType::Completed as i32 {
            break;
        }
    }
    assert_eq!(seen.first(), Some(&(pb::CallEventType::Created as i32)));
    let err = alice
        .watch_calls(pb::WatchCallsRequest {
            tenant_id: "t1".into(),
            collector_id: "bob".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    ctx.stack.shutdown().await;
    ctx.sim.stop().await;
}

//! gRPC-Web and CORS on both services' gRPC ports, from a plain HTTP/1.1 client (the Node test
//! client in clients/web covers a whole call through the gateway; this covers the allocator and
//! the settings).

use crate::common::*;
use base64::Engine as _;

const ORIGIN: &str = "https://console.cco.example";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ports_speak_grpc_web_with_cors_for_listed_origins_only() {
    let stack = Stack::start_tuned(
        Backend::Sqlite,
        true,
        |s| s.grpc.web.allowed_origins = format!("{ORIGIN}, http://localhost:5173"),
        |s| s.grpc.web.allowed_origins = ORIGIN.into(),
    )
    .await;
    let http = reqwest::Client::builder().http1_only().build().unwrap();
    let ports = [
        (
            stack.allocator.as_ref().unwrap().addr,
            "/cco.infinity.allocator.v1.ExtensionAllocator/Stats",
            "/cco.infinity.allocator.v1.ExtensionPool/ListExtensions",
        ),
        (
            stack.gateway.addr,
            "/cco.infinity.gateway.v1.Calls/ListCalls",
            "/cco.infinity.gateway.v1.Collectors/ListCollectors",
        ),
    ];
    for (addr, path, listing) in ports {
        let url = format!("http://{addr}{path}");
        let pre = http
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", ORIGIN)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,x-grpc-web,x-user-agent,grpc-timeout",
            )
            .send()
            .await
            .unwrap();
        assert!(
            pre.status().is_success(),
            "{path}: preflight {}",
            pre.status()
        );
        let h = pre.headers();
        assert_eq!(h["access-control-allow-origin"], ORIGIN, "{path}");
        let allowed = h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_lowercase();
        for name in [
            "authorization",
            "content-type",
            "x-grpc-web",
            "x-user-agent",
            "grpc-timeout",
        ] {
            assert!(allowed.contains(name), "{path}: {allowed} lacks {name}");
        }
        assert!(
            h.get("access-control-allow-credentials").is_none(),
            "no credentials mode"
        );
        let foreign = http
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", "https://evil.example")
            .header("access-control-request-method", "POST")
            .send()
            .await
            .unwrap();
        assert!(
            foreign
                .headers()
                .get("access-control-allow-origin")
                .is_none(),
            "{path}: a foreign origin is not allowed"
        );

        // grpc-web-text: base64 bodies. A refusal comes as headers only (grpc-status 3, the
        // service's own INVALID_ARGUMENT for the missing tenant)...
        let refused = web_text(&http, &url, &[]).await;
        assert_eq!(
            refused.0.get("grpc-status").map(|v| v.to_str().unwrap()),
            Some("3"),
            "{path}: {:?}",
            refused.0
        );
        // ...and an answer as a base64 body: the message frame, then the trailer frame with the
        // status.
        let (h, body) = web_text(&http, &format!("http://{addr}{listing}"), b"\x0a\x03t-x").await;
        assert!(
            h["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/grpc-web-text"),
            "{listing}: {h:?}"
        );
        assert_eq!(h["access-control-allow-origin"], ORIGIN);
        let exposed = h["access-control-expose-headers"].to_str().unwrap();
        assert!(
            exposed.contains("grpc-status") && exposed.contains("grpc-message"),
            "{exposed}"
        );
        // Each base64 chunk decodes on its own; the trailer frame starts with 0x80.
        let bytes: Vec<u8> = body
            .split_inclusive('=')
            .flat_map(|chunk| {
                base64::engine::general_purpose::STANDARD
                    .decode(chunk.trim())
                    .unwrap()
            })
            .collect();
        let trailer = bytes
            .iter()
            .position(|b| *b == 0x80)
            .expect("a trailer frame");
        let trailer = String::from_utf8_lossy(&bytes[trailer + 5..]).to_lowercase();
        assert!(trailer.contains("grpc-status:0"), "{listing}: {trailer:?}");
    }
    stack.shutdown().await;
}

/// One grpc-web-text call from the allowed origin with the admin key: `message` framed and
/// base64-encoded; the response headers and (base64) body.
async fn web_text(
    http: &reqwest::Client,
    url: &str,
    message: &[u8],
) -> (reqwest::header::HeaderMap, String) {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(message);
    let resp = http
        .post(url)
        .header("origin", ORIGIN)
        .header("content-type", "application/grpc-web-text")
        // The answer's encoding follows `accept`, as grpc-web's text mode sends it.
        .header("accept", "application/grpc-web-text")
        .header("x-grpc-web", "1")
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(base64::engine::general_purpose::STANDARD.encode(frame))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    let headers = resp.headers().clone();
    (headers, resp.text().await.unwrap())
}

#[test]
fn a_wildcard_or_a_path_is_not_an_origin() {
    for (value, ok) in [
        ("*", false),
        ("https://a.example/path", false),
        ("https://a.example/", false),
        ("ftp://a.example", false),
        ("https://user@a.example", false),
        ("https://a.example, http://localhost:5173", true),
        ("", true),
    ] {
        let mut s = allocator_svc::settings::Settings::default();
        s.grpc.web.allowed_origins = value.into();
        let r = s.validate();
        assert_eq!(r.is_ok(), ok, "{value:?}: {r:?}");
        if let Err(e) = r {
            assert!(e.to_string().contains("grpc.web.allowed_origins"), "{e}");
        }
    }
}

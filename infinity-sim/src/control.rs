//! `/control/*`: scripting and inspecting the simulator over HTTP (for the demo and manual tests).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::record::Script;
use crate::state::SimState;

#[derive(Deserialize)]
struct ScriptBody {
    destination: Option<String>,
    #[serde(default)]
    script: Script,
}

#[derive(Deserialize)]
struct ExtBody {
    numbers: Vec<String>,
    #[serde(default = "yes")]
    registered: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct UrlBody {
    url: Option<String>,
}

#[derive(Deserialize)]
struct ReqQuery {
    service: Option<String>,
}

pub(crate) fn routes() -> Router<Arc<SimState>> {
    Router::new()
        .route(
            "/control/scripts",
            post(
                |State(s): State<Arc<SimState>>, Json(b): Json<ScriptBody>| async move {
                    s.set_script(b.destination.as_deref(), b.script);
                    Json(json!({"ok": true}))
                },
            ),
        )
        .route(
            "/control/extensions",
            post(
                |State(s): State<Arc<SimState>>, Json(b): Json<ExtBody>| async move {
                    let refs: Vec<&str> = b.numbers.iter().map(String::as_str).collect();
                    s.set_extensions(&refs, b.registered);
                    Json(json!({"ok": true}))
                },
            ),
        )
        .route(
            "/control/expire-tokens",
            post(|State(s): State<Arc<SimState>>| async move {
                s.expire_tokens();
                Json(json!({"ok": true}))
            }),
        )
        .route(
            "/control/callback-url",
            post(
                |State(s): State<Arc<SimState>>, Json(b): Json<UrlBody>| async move {
                    s.set_callback_url(b.url);
                    Json(json!({"ok": true}))
                },
            ),
        )
        .route(
            "/control/requests",
            get(
                |State(s): State<Arc<SimState>>, Query(q): Query<ReqQuery>| async move {
                    Json(json!(s.requests(q.service.as_deref())))
                },
            ),
        )
        .route(
            "/control/bills",
            get(|State(s): State<Arc<SimState>>| async move {
                Json(Value::Array(
                    s.bills().into_iter().map(Value::Object).collect(),
                ))
            }),
        )
        .route(
            "/control/reset",
            post(|State(s): State<Arc<SimState>>| async move {
                s.reset();
                Json(json!({"ok": true}))
            }),
        )
}

//! The simulator over plain HTTP: the vendor envelope on the API URL and the /control endpoints.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use infinity_sim::{SimConfig, Simulator};
use serde_json::{Value, json};

#[tokio::test]
async fn control_endpoints_script_and_inspect() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let base = format!("http://{}", sim.addr());
    let post = |path: &str, body: Value| http.post(format!("{base}{path}")).json(&body).send();
    post(
        "/control/extensions",
        json!({"numbers": ["8001"], "registered": true}),
    )
    .await
    .unwrap();
    post(
        "/control/scripts",
        json!({"destination": "1380", "script": {"outcome": "busy"}}),
    )
    .await
    .unwrap();
    let form = [
        ("service", "App.Sip_Call.MakeCall"),
        ("token", "0123456789abcdef0123456789abcdef"),
        ("extnumber", "8001"),
        ("destnumber", "13800001380"),
        ("customuuid", "c1"),
    ];
    let resp: Value = http
        .post(sim.api_url())
        .form(&form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (resp["ret"].clone(), resp["data"]["status"].clone()),
        (json!(200), json!(0)),
        "{resp}"
    );
    let bills: Value = http
        .get(format!("{base}/control/bills"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bills[0]["hangupcause"], 10006, "busy by suffix script");
    let reqs: Value = http
        .get(format!(
            "{base}/control/requests?service=App.Sip_Call.MakeCall"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reqs.as_array().unwrap().len(), 1);
    post("/control/expire-tokens", json!({})).await.unwrap();
    let resp: Value = http
        .post(sim.api_url())
        .form(&form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (resp["ret"].clone(), resp["data"].clone()),
        (json!(600), json!([]))
    );
    let garbage = http
        .post(sim.api_url())
        .body("%%%")
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    let v: Value = garbage.json().await.unwrap();
    assert_eq!(
        v["ret"], 400,
        "a request without a service is refused in the envelope"
    );
    post("/control/reset", json!({})).await.unwrap();
    assert!(sim.state().bills().is_empty());
    sim.stop().await;
}

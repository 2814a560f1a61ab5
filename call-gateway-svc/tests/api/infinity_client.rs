//! The Infinity client against the simulator, for every envelope and outcome class, both token
//! modes, token expiry and re-login, both encodings, and the read operations. The simulator's
//! callbacks are captured by a small HTTP server started here.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::routing::post;
use call_gateway_svc::domain::config::{ApiEncoding, Credentials};
use call_gateway_svc::infinity::{
    BillQuery, DialParams, Endpoint, InfinityClient, PbxError as InfinityError,
};
use infinity_sim::{CallbackMode, Outcome, Recording, Script, SimConfig, Simulator};
use secrecy::SecretString;
use serde_json::Value;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

async fn sim() -> Simulator {
    Simulator::start(SimConfig {
        extensions: vec![("8001".into(), true), ("8002".into(), false)],
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

fn static_ep(sim: &Simulator) -> Endpoint {
    Endpoint {
        api_url: sim.api_url(),
        credentials: Credentials::AccessToken(SecretString::from(TOKEN)),
        timeout: Duration::from_secs(2),
        encoding: ApiEncoding::FormUrlencoded,
    }
}

fn app_ep(sim: &Simulator) -> Endpoint {
    Endpoint {
        credentials: Credentials::App {
            app_id: "sim-app".into(),
            access_key: SecretString::from("sim-access-key"),
        },
        ..static_ep(sim)
    }
}

fn dial(dest: &str, uuid: &str) -> DialParams {
    DialParams {
        extnumber: "8001".into(),
        destnumber: dest.into(),
        anumber: "13800138000".into(),
        bnumber: dest.into(),
        disnumber: "02566823420".into(),
        userid: "collector-1".into(),
        memberid: "case-9".into(),
        customuuid: uuid.into(),
        chengshudu: "t1".into(),
    }
}

/// Captures callback bodies posted by the simulator.
async fn capture() -> (String, Arc<Mutex<Vec<Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let app = axum::Router::new().route(
        "/cb",
        post(move |Json(v): Json<Value>| {
            let s2 = s2.clone();
            async move {
                s2.lock().unwrap().push(v);
                "1"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/cb", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, seen)
}

async fn wait_for(seen: &Arc<Mutex<Vec<Value>>>, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = seen.lock().unwrap().clone();
        if v.len() >= n {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} callbacks arrived",
            v.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// MakeCall and DoubleCall with a static token send the documented fields, are acknowledged
/// without a call id, and produce exactly one placed call and one callback in vendor format.
#[tokio::test]
async fn dials_with_documented_fields_and_gets_callback() {
    let sim = sim().await;
    let (url, seen) = capture().await;
    sim.state().set_callback_url(Some(url));
    let client = InfinityClient::new().unwrap();
    let ack = client
        .make_call(&static_ep(&sim), &dial("13900139000", "aaaa"))
        .await
        .unwrap();
    assert_eq!(ack, "Call command sent successfully");
    let ack = client
        .double_call(&static_ep(&sim), &dial("13900139001", "bbbb"))
        .await
        .unwrap();
    assert_eq!(ack, "The double call command is sent successfully");
    let reqs = sim.state().requests(Some("App.Sip_Call.DoubleCall"));
    assert_eq!(reqs.len(), 1);
    let p = &reqs[0].params;
    for (k, v) in [
        ("token", TOKEN),
        ("extnumber", "8001"),
        ("anumber", "13800138000"),
        ("bnumber", "13900139001"),
        ("disnumber", "02566823420"),
        ("userid", "collector-1"),
        ("memberid", "case-9"),
        ("customuuid", "bbbb"),
    ] {
        assert_eq!(p.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert!(
        !p.contains_key("destnumber"),
        "DoubleCall sends anumber/bnumber"
    );
    assert_eq!(sim.state().dials_for("aaaa"), 1);
    assert_eq!(sim.state().dials_for("bbbb"), 1);
    let cbs = wait_for(&seen, 2).await;
    let b = cbs.iter().find(|v| v["customuuid"] == "bbbb").unwrap();
    assert_eq!(b["callmethod"], 4);
    assert_eq!(b["billsec"], 30);
    assert_eq!(b["extnumber"], "8001");
    assert!(b["recordurl"].as_str().unwrap().contains("/recordings/"));
    sim.stop().await;
}

/// Each refusal and failure class comes back typed.
#[tokio::test]
async fn every_outcome_class_is_typed() {
    let sim = sim().await;
    let client = InfinityClient::new().unwrap();
    let ep = static_ep(&sim);
    let script = |outcome| Script {
        outcome,
        slow_ms: 3_000,
        ..Script::default()
    };
    sim.state().set_script(
        Some("1001"),
        Script {
            refuse_code: "1003".into(),
            refuse_message: "busy line".into(),
            ..script(Outcome::Refused)
        },
    );
    sim.state()
        .set_script(Some("1002"), script(Outcome::ExtNotRegistered));
    sim.state()
        .set_script(Some("1003"), script(Outcome::Http500));
    sim.state()
        .set_script(Some("1004"), script(Outcome::Garbage));
    sim.state().set_script(Some("1005"), script(Outcome::Slow));
    sim.state()
        .set_script(Some("1006"), script(Outcome::TokenExpired));

    let e = client
        .make_call(&ep, &dial("1001", "u1"))
        .await
        .unwrap_err();
    assert_eq!(
        e,
        InfinityError::Refused {
            code: "1003".into(),
            message: "busy line".into()
        }
    );
    let e = client
        .make_call(&ep, &dial("1002", "u2"))
        .await
        .unwrap_err();
    assert!(e.is_extension_error(), "{e:?}");
    let mut unregistered = dial("1000", "u2b");
    unregistered.extnumber = "8002".into();
    assert_eq!(
        client
            .make_call(&ep, &unregistered)
            .await
            .unwrap_err()
            .code(),
        Some("1014")
    );
    let mut unknown = dial("1000", "u2c");
    unknown.extnumber = "9999".into();
    assert_eq!(
        client.make_call(&ep, &unknown).await.unwrap_err().code(),
        Some("1012")
    );
    assert!(matches!(
        client.make_call(&ep, &dial("1003", "u3")).await,
        Err(InfinityError::Upstream(_))
    ));
    assert!(matches!(
        client.make_call(&ep, &dial("1004", "u4")).await,
        Err(InfinityError::Upstream(_))
    ));
    let mut short = ep.clone();
    short.timeout = Duration::from_millis(300);
    let e = client
        .make_call(&short, &dial("1005", "u5"))
        .await
        .unwrap_err();
    assert!(matches!(e, InfinityError::Ambiguous(_)), "{e:?}");
    assert_eq!(
        sim.state().dials_for("u5"),
        1,
        "the slow call was still placed"
    );
    let e = client
        .make_call(&ep, &dial("1006", "u6"))
        .await
        .unwrap_err();
    assert!(matches!(e, InfinityError::Auth { ret: 600, .. }), "{e:?}");
    let mut missing = dial("", "u7");
    missing.destnumber.clear();
    let e = client.make_call(&ep, &missing).await.unwrap_err();
    assert_eq!(e.code(), Some("400"));
    // Nothing listens on a closed port: the request was never sent.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut down = ep.clone();
    down.api_url = format!("http://{closed}/");
    let e = client
        .make_call(&down, &dial("1000", "u8"))
        .await
        .unwrap_err();
    assert!(matches!(e, InfinityError::NotSent(_)), "{e:?}");
    let mut bad = ep.clone();
    bad.api_url = "http://exa mple/".into();
    assert!(matches!(
        client.make_call(&bad, &dial("1000", "u9")).await,
        Err(InfinityError::NotSent(_))
    ));
    for u in ["u1", "u2", "u2b", "u2c", "u3", "u4", "u6", "u7"] {
        assert_eq!(sim.state().dials_for(u), 0, "{u} must not have been placed");
    }
    sim.stop().await;
}

/// App credentials: one Login, the token reused; after the tokens expire the next request gets
/// ret 600, logs in again and retries once, succeeding. A static token gets no retry.
#[tokio::test]
async fn login_caches_token_and_relogs_once_on_600() {
    let sim = sim().await;
    let client = InfinityClient::new().unwrap();
    let ep = app_ep(&sim);
    client.make_call(&ep, &dial("1000", "a1")).await.unwrap();
    client.make_call(&ep, &dial("1000", "a2")).await.unwrap();
    assert_eq!(
        sim.state().requests(Some("App.Sip_Auth.Login")).len(),
        1,
        "token reused"
    );
    sim.state().expire_tokens();
    client.make_call(&ep, &dial("1000", "a3")).await.unwrap();
    assert_eq!(
        sim.state().requests(Some("App.Sip_Auth.Login")).len(),
        2,
        "one new login"
    );
    assert_eq!(sim.state().dials_for("a3"), 1);
    let reqs = sim.state().requests(Some("App.Sip_Call.MakeCall"));
    assert_eq!(reqs.len(), 4, "a1, a2, a3 rejected with 600, a3 retried");
    // Always 600: one retry only, then the auth error.
    sim.state().set_script(
        Some("1006"),
        Script {
            outcome: Outcome::TokenExpired,
            ..Script::default()
        },
    );
    let e = client
        .make_call(&ep, &dial("1006", "a4"))
        .await
        .unwrap_err();
    assert!(matches!(e, InfinityError::Auth { ret: 600, .. }));
    assert_eq!(sim.state().requests(Some("App.Sip_Auth.Login")).len(), 3);
    // Static token: no login at all.
    sim.state().expire_tokens();
    let e = client
        .make_call(&static_ep(&sim), &dial("1000", "a5"))
        .await
        .unwrap_err();
    assert!(matches!(e, InfinityError::Auth { ret: 600, .. }));
    assert_eq!(sim.state().requests(Some("App.Sip_Auth.Login")).len(), 3);
    // Wrong key and unknown app id.
    let mut wrong = app_ep(&sim);
    wrong.credentials = Credentials::App {
        app_id: "sim-app".into(),
        access_key: SecretString::from("nope"),
    };
    assert_eq!(client.login(&wrong).await.unwrap_err().code(), Some("1003"));
    wrong.credentials = Credentials::App {
        app_id: "other".into(),
        access_key: SecretString::from("nope"),
    };
    assert!(matches!(
        client.login(&wrong).await,
        Err(InfinityError::Auth { ret: 601, .. })
    ));
    sim.stop().await;
}

/// A cached token past its life is replaced by a new Login without a 600 round trip.
#[tokio::test]
async fn token_life_is_respected() {
    let sim = sim().await;
    let client = InfinityClient::with_token_life(Duration::from_millis(1)).unwrap();
    let ep = app_ep(&sim);
    client.make_call(&ep, &dial("1000", "l1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    client.make_call(&ep, &dial("1000", "l2")).await.unwrap();
    assert_eq!(sim.state().requests(Some("App.Sip_Auth.Login")).len(), 2);
    assert_eq!(
        sim.state().requests(Some("App.Sip_Call.MakeCall")).len(),
        2,
        "no request was refused"
    );
    client.logout(&ep).await.unwrap();
    sim.stop().await;
}

/// multipart/form-data works as well as urlencoded.
#[tokio::test]
async fn multipart_encoding() {
    let sim = sim().await;
    let client = InfinityClient::new().unwrap();
    let mut ep = static_ep(&sim);
    ep.encoding = ApiEncoding::Multipart;
    client
        .make_call(&ep, &dial("13900139000", "m1"))
        .await
        .unwrap();
    let r = &sim.state().requests(Some("App.Sip_Call.MakeCall"))[0];
    assert_eq!(r.params.get("customuuid").map(String::as_str), Some("m1"));
    sim.stop().await;
}

/// GetSipnumberInfo, GetSipCallStatus, GetBill, GetRecodeFile and HangupCall.
#[tokio::test]
async fn read_operations() {
    let sim = sim().await;
    let client = InfinityClient::new().unwrap();
    let ep = static_ep(&sim);
    let exts = client.sip_numbers(&ep).await.unwrap();
    assert_eq!(exts.len(), 2);
    assert!(exts.iter().any(|e| e.extnumber == "8001" && e.registered));
    assert!(exts.iter().any(|e| e.extnumber == "8002" && !e.registered));
    let st = client
        .call_status(&ep, &["8001".into(), "8002".into()])
        .await
        .unwrap();
    assert_eq!(
        st.iter().map(|s| s.status).collect::<Vec<_>>(),
        [1201, 1014]
    );
    sim.state().set_script(
        Some("1500"),
        Script {
            recording: Recording::Filename,
            ..Script::default()
        },
    );
    client
        .make_call(&ep, &dial("1500", "bill-1"))
        .await
        .unwrap();
    client
        .make_call(&ep, &dial("1501", "bill-2"))
        .await
        .unwrap();
    let page = client
        .get_bill(
            &ep,
            &BillQuery {
                starttime: "2000-01-01 00:00:00".into(),
                endtime: "2999-01-01 00:00:00".into(),
                customuuid: Some("bill-1".into()),
                currentpage: 1,
                itemsperpage: 50,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.total, 1);
    let bill = &page.bills[0];
    assert_eq!(bill["customuuid"], "bill-1");
    let file = bill["recordfilename"].as_str().unwrap().to_owned();
    assert!(bill["recordurl"].as_str().unwrap().is_empty());
    let link = client.recording_link(&ep, &file).await.unwrap();
    assert!(
        link.url.contains(&file) && link.expires.starts_with("Expiration time:"),
        "{link:?}"
    );
    assert_eq!(
        client
            .recording_link(&ep, "nope.mp3")
            .await
            .unwrap_err()
            .code(),
        Some("1029")
    );
    assert_eq!(
        client.hangup(&ep, "8001").await.unwrap_err().code(),
        Some("1015")
    );
    sim.stop().await;
}

/// The callback quirks the gateway must survive: numbers as strings, camelCase keys,
/// duplicates, and lost callbacks (still in GetBill).
#[tokio::test]
async fn callback_variants() {
    let sim = sim().await;
    let (url, seen) = capture().await;
    sim.state().set_callback_url(Some(url));
    let client = InfinityClient::new().unwrap();
    let ep = static_ep(&sim);
    sim.state().set_script(
        Some("2001"),
        Script {
            numbers_as_strings: true,
            ..Script::default()
        },
    );
    sim.state().set_script(
        Some("2002"),
        Script {
            callback: CallbackMode::CamelCase,
            ..Script::default()
        },
    );
    sim.state().set_script(
        Some("2003"),
        Script {
            callback: CallbackMode::Duplicated,
            ..Script::default()
        },
    );
    sim.state().set_script(
        Some("2004"),
        Script {
            callback: CallbackMode::Lost,
            outcome: Outcome::NoAnswer,
            ..Script::default()
        },
    );
    for (d, u) in [("2001", "s"), ("2002", "c"), ("2003", "d"), ("2004", "l")] {
        client.make_call(&ep, &dial(d, u)).await.unwrap();
    }
    let cbs = wait_for(&seen, 4).await;
    let s = cbs.iter().find(|v| v["customuuid"] == "s").unwrap();
    assert_eq!(s["billsec"], "30");
    assert!(
        cbs.iter()
            .any(|v| v["customUuid"] == "c" && v.get("hangupCause").is_some())
    );
    assert_eq!(cbs.iter().filter(|v| v["customuuid"] == "d").count(), 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        seen.lock().unwrap().iter().all(|v| v["customuuid"] != "l"),
        "lost callback never posted"
    );
    let lost = sim
        .state()
        .bills()
        .into_iter()
        .find(|b| b["customuuid"] == "l")
        .unwrap();
    assert_eq!(
        (lost["billsec"].clone(), lost["hangupcause"].clone()),
        (Value::from(0), Value::from(10016))
    );
    sim.stop().await;
}

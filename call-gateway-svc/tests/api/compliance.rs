//! The compliance gate: rules at their boundaries on a clock the test controls (every
//! backend), the refusal details a client gets over gRPC, do-not-call lists and imports,
//! overrides, the audit, and exact caps under racing MakeCalls on two replicas.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use call_gateway_svc::app::MIGRATIONS;
use call_gateway_svc::domain::call::{Call, CallId, CallResult, CallStatus};
use call_gateway_svc::domain::compliance::{Cap, Outcome, Policy, Reason};
use call_gateway_svc::domain::config::CallMode;
use call_gateway_svc::domain::phone::{Phone, parse_region};
use call_gateway_svc::domain::{CaseId, CollectorId, GwError, TenantId};
use call_gateway_svc::metrics::GatewayMetrics;
use call_gateway_svc::service::{Admission, Clock, Compliance, ComplianceSettings, GateInput};
use call_gateway_svc::store::GatewayStore;
use call_gateway_svc::store::calls::CallStore;
use call_gateway_svc::store::compliance::{ComplianceStore, DecisionFilter};
use cco_contracts::gateway::v1 as pb;
use cco_platform::auth::BearerInterceptor;
use chrono::{DateTime, Duration, Utc};
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::*;

/// A clock the test moves.
#[derive(Clone)]
struct TestClock(Arc<Mutex<DateTime<Utc>>>);

impl TestClock {
    fn at(t: &str) -> Self {
        Self(Arc::new(Mutex::new(
            DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc),
        )))
    }
    fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().unwrap() = t;
    }
    fn get(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        self.get()
    }
}

/// The gate over a fresh database of `b`, on `clock`.
async fn gate(b: Backend, clock: &TestClock) -> (TestDb, Compliance, Arc<GatewayStore>) {
    let db = TestDb::new(b).await;
    let mut s = cco_platform::db::DatabaseSettings::sqlite_default("x");
    s.url = db.url.clone();
    let pool = cco_platform::db::DbPool::connect(&s).await.unwrap();
    pool.migrate(MIGRATIONS).await.unwrap();
    let store = Arc::new(GatewayStore::new(pool));
    let mut registry = prometheus_client::registry::Registry::default();
    let c = Compliance::new(
        store.clone(),
        store.clone(),
        std::time::Duration::from_secs(60),
        GatewayMetrics::register(&mut registry),
        Arc::new(clock.clone()),
        ComplianceSettings::default(),
    );
    (db, c, store)
}

fn cn(raw: &str) -> Phone {
    Phone::parse(raw, parse_region("CN").unwrap()).unwrap()
}

fn us(raw: &str) -> Phone {
    Phone::parse(raw, parse_region("US").unwrap()).unwrap()
}

struct Dial {
    tenant: TenantId,
    number: Phone,
    case: String,
    collector: String,
    zone: Option<chrono_tz::Tz>,
}

impl Dial {
    fn new(number: Phone) -> Self {
        Self {
            tenant: TenantId::parse("tenant_id", "t1").unwrap(),
            number,
            case: "case-1".into(),
            collector: "alice".into(),
            zone: None,
        }
    }

    /// Puts this dial to the gate under a fresh call id; the call id, or the refusal.
    async fn admit(
        &self,
        c: &Compliance,
    ) -> Result<String, call_gateway_svc::domain::compliance::Refusal> {
        let call_id = CallId::random();
        self.admit_as(c, call_id.as_str())
            .await
            .map(|_| call_id.as_str().to_owned())
    }

    /// Puts this dial to the gate under `call_id`.
    async fn admit_as(
        &self,
        c: &Compliance,
        call_id: &str,
    ) -> Result<Admission, call_gateway_svc::domain::compliance::Refusal> {
        let g = GateInput {
            tenant: &self.tenant,
            collector: &self.collector,
            case_id: &self.case,
            number: &self.number,
            case_zone: self.zone,
            call_id,
            override_id: None,
        };
        match c.admit(&g).await {
            Ok(a) => Ok(a),
            Err(GwError::Refused(r)) => Err(*r),
            Err(e) => panic!("gate failed: {e}"),
        }
    }
}

async fn set(c: &Compliance, mut p: Policy) {
    let t = TenantId::parse("tenant_id", "t1").unwrap();
    let v = c.policy(&t).await.unwrap().map_or(0, |s| s.version);
    p.validate().unwrap();
    c.set_policy(&t, p, v).await.unwrap();
}

/// The seventh attempt about a case passes, the eighth is refused until the oldest leaves the
/// rolling window (to the second); a withdrawn attempt does not count; caps per number count
/// across cases.
async fn caps_count_exactly_at_their_boundaries(b: Backend) {
    let clock = TestClock::at("2026-12-02T06:00:00Z");
    let (_db, c, _) = gate(b, &clock).await;
    set(
        &c,
        Policy {
            case_cap: Some(Cap {
                max_attempts: 7,
                window_seconds: 7 * 86_400,
            }),
            number_cap: Some(Cap {
                max_attempts: 9,
                window_seconds: 86_400,
            }),
            ..Policy::default()
        },
    )
    .await;
    let t0 = clock.get();
    let d = Dial::new(cn("13900139000"));
    for i in 0..7 {
        clock.set(t0 + Duration::hours(i));
        d.admit(&c)
            .await
            .unwrap_or_else(|r| panic!("attempt {}: {r:?}", i + 1));
    }
    let r = d.admit(&c).await.expect_err("the 8th");
    assert_eq!(r.reason, Reason::FrequencyCap);
    assert_eq!(r.metadata["rule"], "case_cap");
    assert_eq!(r.metadata["count"], "7");
    assert_eq!(r.retry_at, Some(t0 + Duration::days(7)));
    clock.set(t0 + Duration::days(7) - Duration::seconds(1));
    assert!(
        d.admit(&c).await.is_err(),
        "one second before the oldest leaves"
    );
    clock.set(t0 + Duration::days(7));
    let id = d.admit(&c).await.expect("the oldest has left");
    // Withdrawn (never sent to Infinity): no longer counted.
    c.withdraw(&d.tenant, &id, "no extension: test").await;
    d.admit(&c)
        .await
        .expect("the withdrawn attempt freed its place");
    assert!(d.admit(&c).await.is_err());

    // The number cap counts across cases: 9 a day.
    clock.set(t0 + Duration::days(20));
    for i in 0..9 {
        let mut other = Dial::new(cn("13700137000"));
        other.case = format!("case-n{i}");
        other.admit(&c).await.unwrap();
    }
    let mut tenth = Dial::new(cn("13700137000"));
    tenth.case = "case-n9".into();
    let r = tenth.admit(&c).await.expect_err("10th to the number");
    assert_eq!(r.metadata["rule"], "number_cap");

    // A retry under the same call id (same idempotency key) is the same attempt: not counted
    // against itself, not refused, and nothing of it to withdraw.
    clock.set(t0 + Duration::days(40));
    let mut once = Dial::new(cn("13600136000"));
    once.case = "case-once".into();
    let id = CallId::random();
    assert!(matches!(
        once.admit_as(&c, id.as_str()).await,
        Ok(Admission::Counted)
    ));
    for _ in 0..6 {
        once.admit(&c).await.unwrap();
    }
    assert!(matches!(
        once.admit_as(&c, id.as_str()).await,
        Ok(Admission::Duplicate)
    ));
    assert!(once.admit(&c).await.is_err(), "the 8th other call");

    // The audit: every decision, newest first, with its counts.
    let all = c
        .decisions(&DecisionFilter {
            tenant_id: "t1".into(),
            case_id: Some("case-1".into()),
            limit: 100,
            ..DecisionFilter::default()
        })
        .await
        .unwrap();
    let allowed = all.iter().filter(|x| x.outcome == Outcome::Allowed).count();
    let refused = all.iter().filter(|x| x.outcome == Outcome::Refused).count();
    assert_eq!((allowed, refused), (9, 3), "{all:#?}");
    let withdrawn = all.iter().filter(|x| x.not_dialled.is_some()).count();
    assert_eq!(withdrawn, 1);
    assert!(all.windows(2).all(|w| w[0].decided_at >= w[1].decided_at));
    assert!(
        all.iter()
            .all(|x| x.number_masked.ends_with("9000") && !x.number_masked.contains("139001"))
    );
}

/// A completed call as the store keeps it.
fn finished_call(case: &str, result: CallResult, ended: DateTime<Utc>) -> Call {
    Call {
        id: CallId::random(),
        tenant_id: TenantId::parse("tenant_id", "t1").unwrap(),
        config_id: uuid::Uuid::new_v4().to_string(),
        supplier_id: String::new(),
        case_id: CaseId::parse("case_id", case).unwrap(),
        collector_id: CollectorId::parse("collector_id", "alice").unwrap(),
        destination_number: "+8613900139000".into(),
        dialled_number: "13900139000".into(),
        caller_number: "+8602566823420".into(),
        lease: None,
        lease_released: true,
        call_mode: CallMode::DoubleCall,
        call_timeout_seconds: 60,
        status: CallStatus::Completed,
        result: Some(result),
        start_time: Some(ended - Duration::minutes(3)),
        answer_time: Some(ended - Duration::minutes(2)),
        end_time: Some(ended),
        talk_seconds: Some(120),
        total_seconds: Some(180),
        hangup_cause: None,
        hangup_side: None,
        record_url: None,
        record_filename: None,
        custom_params: BTreeMap::new(),
        infinity_uuid: None,
        infinity_cdr_id: None,
        error_code: None,
        error_message: None,
        idempotency_key: None,
        attempts: 1,
        raw_callback: None,
        reconcile_after: ended,
        created_at: ended - Duration::minutes(3),
        updated_at: ended,
    }
}

/// Reg F's cool-down: a connected call about the case refuses the next call until 7 days
/// after it ended (day 7 refused, day 8 allowed); a call that did not connect starts none.
async fn the_cooldown_follows_a_conversation(b: Backend) {
    let clock = TestClock::at("2026-12-02T15:00:00Z");
    let (db, c, store) = gate(b, &clock).await;
    let mut p = Policy::preset("us_reg_f").unwrap();
    p.windows = None; // hours are tested elsewhere
    p.case_cap = None;
    set(&c, p).await;
    let talked = clock.get() - Duration::hours(1);
    store
        .insert_call(&finished_call("case-1", CallResult::NoAnswer, talked), None)
        .await
        .unwrap();
    let d = Dial::new(us("2125550123"));
    // An attempt with no record yet is a call in progress (a racing MakeCall): each admitted
    // one here is withdrawn, as a dial that never happened.
    let passes = |what: &'static str| {
        let (c, d) = (&c, &d);
        async move {
            let id = d.admit(c).await.expect(what);
            c.withdraw(&d.tenant, &id, "test").await;
        }
    };
    passes("an unanswered call starts no cool-down").await;
    // A call of the case still ringing may be a conversation Infinity has not reported yet.
    let mut ringing = finished_call("case-1", CallResult::NoAnswer, talked);
    ringing.status = CallStatus::Ringing;
    ringing.result = None;
    store.insert_call(&ringing, None).await.unwrap();
    let r = d.admit(&c).await.expect_err("a call in progress");
    assert_eq!(r.reason, Reason::CaseCooldown);
    assert_eq!(r.metadata["open_calls"], "1");
    assert_eq!(r.retry_at, None);
    exec_sql(
        &db.url,
        &format!(
            "update communication_records set status = 'completed', result = 'no_answer' where call_id = '{}'",
            ringing.id.as_str()
        ),
    )
    .await;
    store
        .insert_call(
            &finished_call("case-1", CallResult::Connected, talked),
            None,
        )
        .await
        .unwrap();
    let r = d.admit(&c).await.expect_err("after a conversation");
    assert_eq!(r.reason, Reason::CaseCooldown);
    assert_eq!(r.retry_at, Some(talked + Duration::days(7)));
    clock.set(talked + Duration::days(6) + Duration::hours(23));
    assert!(d.admit(&c).await.is_err(), "day 7");
    clock.set(talked + Duration::days(7));
    passes("day 8").await;
    let _held = d.admit(&c).await.expect("again");
    assert!(
        d.admit(&c).await.is_err(),
        "an attempt counted moments ago, its record not written yet, is a call in progress"
    );
    clock.set(talked + Duration::days(7) + Duration::minutes(11));
    passes("ten minutes without a record: a gateway died between gate and dial").await;
    // Another case of the same debtor is not cooling down.
    let mut other = Dial::new(us("2125550123"));
    other.case = "case-2".into();
    clock.set(talked + Duration::hours(2));
    other.admit(&c).await.expect("another case");
}

/// Windows in the debtor's zone at the second, from the number's country before the case's
/// zone before the tenant's; holidays; every refusal audited with the inputs.
async fn hours_follow_the_debtors_zone(b: Backend) {
    // Wednesday 2026-12-02 12:59:59 UTC = 20:59:59 in Shanghai.
    let clock = TestClock::at("2026-12-02T12:59:59Z");
    let (_db, c, _) = gate(b, &clock).await;
    let mut p = Policy::preset("us_reg_f").unwrap();
    p.case_cap = None;
    p.case_cooldown_seconds = None;
    p.default_zone = Some("America/Los_Angeles".into());
    set(&c, p).await;
    let china = Dial::new(cn("13900139000"));
    china.admit(&c).await.expect("20:59:59 in Shanghai");
    clock.set(clock.get() + Duration::seconds(1));
    let r = china.admit(&c).await.expect_err("21:00:00 in Shanghai");
    assert_eq!(r.reason, Reason::OutsideCallingHours);
    assert_eq!(r.metadata["time_zone"], "Asia/Shanghai");
    assert_eq!(r.metadata["debtor_local_time"], "2026-12-02T21:00:00");
    // A US number: the case's zone (Chicago, 07:00 there) refuses; without it the tenant's
    // default (Los Angeles, 05:00) refuses too, and says which zone it used.
    let mut us_case = Dial::new(us("2125550123"));
    us_case.zone = Some("America/Chicago".parse().unwrap());
    clock.set(
        DateTime::parse_from_rfc3339("2026-12-02T13:59:59Z")
            .unwrap()
            .with_timezone(&Utc),
    );
    let r = us_case.admit(&c).await.expect_err("07:59:59 in Chicago");
    assert_eq!(r.metadata["time_zone"], "America/Chicago");
    clock.set(clock.get() + Duration::seconds(1));
    us_case.admit(&c).await.expect("08:00:00 in Chicago");
    let r = Dial::new(us("2125550123"))
        .admit(&c)
        .await
        .expect_err("06:00 in LA");
    assert_eq!(r.metadata["time_zone"], "America/Los_Angeles");
    let rows = c
        .decisions(&DecisionFilter {
            tenant_id: "t1".into(),
            reason: Some(Reason::OutsideCallingHours),
            limit: 10,
            ..DecisionFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    let la = &rows[0];
    assert_eq!(la.details["zone_source"], "tenant_default");
    assert_eq!(la.details["debtor_local_time"], "2026-12-02T06:00:00");
    assert_eq!(la.call_id, None);
}

/// Do-not-call lists: exact and prefix entries, tenant and global, expiry; refusals are never
/// overridden.
async fn do_not_call_entries_refuse_and_expire(b: Backend) {
    use call_gateway_svc::domain::compliance::{DncEntry, DncReason};
    let clock = TestClock::at("2026-12-02T06:00:00Z");
    let (_db, c, store) = gate(b, &clock).await;
    let now = clock.get();
    let entry =
        |scope: &str, digits: &str, prefix: bool, expires: Option<DateTime<Utc>>| DncEntry {
            scope: scope.into(),
            digits: digits.into(),
            prefix,
            reason: DncReason::CeaseContact,
            note: String::new(),
            expires_at: expires,
            created_at: now,
        };
    store
        .put_dnc(&[
            entry("t1", "8613900139000", false, None),
            entry("*", "86137", true, None),
            entry("t1", "8613600136000", false, Some(now + Duration::hours(1))),
            entry("t2", "8613500135000", false, None),
        ])
        .await
        .unwrap();
    let r = Dial::new(cn("13900139000"))
        .admit(&c)
        .await
        .expect_err("exact");
    assert_eq!(r.reason, Reason::DoNotCall);
    assert_eq!(
        (r.metadata["list"].as_str(), r.metadata["match"].as_str()),
        ("tenant", "exact")
    );
    let r = Dial::new(cn("13700137123"))
        .admit(&c)
        .await
        .expect_err("global prefix");
    assert_eq!(
        (r.metadata["list"].as_str(), r.metadata["match"].as_str()),
        ("global", "prefix")
    );
    assert!(Dial::new(cn("13600136000")).admit(&c).await.is_err());
    Dial::new(cn("13500135000"))
        .admit(&c)
        .await
        .expect("another tenant's list");
    Dial::new(cn("13900139001"))
        .admit(&c)
        .await
        .expect("a neighbour");
    clock.set(now + Duration::hours(1));
    Dial::new(cn("13600136000"))
        .admit(&c)
        .await
        .expect("expired");
    assert!(
        store
            .remove_dnc("t1", "8613900139000", false)
            .await
            .unwrap()
    );
    Dial::new(cn("13900139000"))
        .admit(&c)
        .await
        .expect("removed");
}

type CompliancePolicies = pb::compliance_policies_client::CompliancePoliciesClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerInterceptor>,
>;

async fn compliance_client(ctx: &Ctx, key: &str) -> CompliancePolicies {
    pb::compliance_policies_client::CompliancePoliciesClient::with_interceptor(
        ctx.stack.gateway.channel().await,
        BearerInterceptor::new(key),
    )
}

/// A window an hour long, two hours from now in Shanghai: every call now is outside it.
fn closed_now() -> pb::CompliancePolicy {
    use chrono::Timelike;
    let h = Utc::now().with_timezone(&chrono_tz::Asia::Shanghai).hour();
    let start = (h + 2) % 24;
    pb::CompliancePolicy {
        tenant_id: "t1".into(),
        restrict_hours: true,
        days: (1..=7)
            .map(|d| pb::DayWindows {
                day: d,
                windows: vec![pb::TimeWindow {
                    start: format!("{start:02}:00"),
                    end: format!("{start:02}:59"),
                }],
            })
            .collect(),
        default_time_zone: "Asia/Shanghai".into(),
        allow_overrides: true,
        ..Default::default()
    }
}

/// Over gRPC: a refused MakeCall is FAILED_PRECONDITION with ErrorInfo and RetryInfo, leases
/// nothing and dials nothing; CheckCall says the same without counting; a supervisor's
/// override lets one call through; emergency and premium numbers are refused by the same
/// gate; the audit lists it all.
async fn refusals_reach_the_client_with_their_details(b: Backend) {
    let mut ctx = setup(b, pb::CallMode::DoubleCall, &["8001", "8002"], |_| {}).await;
    let mut admin = compliance_client(&ctx, ADMIN).await;
    let set = admin
        .set_policy(pb::SetCompliancePolicyRequest {
            policy: Some(closed_now()),
            expected_version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.version, 1);
    // A stale version loses.
    let stale = admin
        .set_policy(pb::SetCompliancePolicyRequest {
            policy: Some(closed_now()),
            expected_version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
    // Bad input names its field and changes nothing.
    let mut bad = closed_now();
    bad.days[0].windows[0].start = "8:00".into();
    let e = admin
        .set_policy(pb::SetCompliancePolicyRequest {
            policy: Some(bad),
            expected_version: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("days:"), "{}", e.message());
    let mut bad = closed_now();
    bad.case_cap = Some(pb::FrequencyCap {
        max_attempts: 7,
        window_seconds: 40 * 86_400,
    });
    let e = admin
        .set_policy(pb::SetCompliancePolicyRequest {
            policy: Some(bad),
            expected_version: 1,
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("case_cap:"), "{}", e.message());
    let current = admin
        .get_policy(pb::GetCompliancePolicyRequest {
            tenant_id: "t1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((current.version, current.case_cap), (1, None));

    let e = ctx
        .calls
        .make_call(req("alice", "13900139000"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let info = e.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "OUTSIDE_CALLING_HOURS");
    assert_eq!(info.domain, "cco.infinity");
    assert_eq!(info.metadata["time_zone"], "Asia/Shanghai");
    assert_eq!(info.metadata["zone_source"], "number");
    let delay = e
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(
        delay > std::time::Duration::from_secs(3_600)
            && delay <= std::time::Duration::from_secs(3 * 3_600),
        "{delay:?}"
    );
    assert!(
        ctx.sim
            .state()
            .requests(Some("App.Sip_Call.DoubleCall"))
            .is_empty()
    );
    assert_eq!(ctx.stats().await.in_use, 0, "nothing leased");

    // CheckCall: the same answer, nothing counted.
    let check = ctx
        .calls
        .check_call(pb::CheckCallRequest {
            tenant_id: "t1".into(),
            collector_id: "alice".into(),
            case_id: "case-42".into(),
            destination_number: "13900139000".into(),
            debtor_time_zone: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!check.allowed);
    assert_eq!(check.reason, "OUTSIDE_CALLING_HOURS");
    assert!(check.next_allowed_at.is_some());

    // A supervisor grants one call; it is used once.
    let mut supervisor = compliance_client(&ctx, &person("supervisor", "t1", None)).await;
    let grant = supervisor
        .grant_override(pb::GrantOverrideRequest {
            tenant_id: "t1".into(),
            case_id: "case-42".into(),
            destination_number: "13900139000".into(),
            reason: "debtor asked for a call back at this hour".into(),
            valid_seconds: 600,
        })
        .await
        .unwrap()
        .into_inner();
    let mut with_override = req("alice", "13900139000");
    with_override.compliance_override_id = grant.override_id.clone();
    let placed = ctx
        .calls
        .make_call(with_override.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ctx.sim
            .state()
            .requests(Some("App.Sip_Call.DoubleCall"))
            .len(),
        1
    );
    let again = ctx.calls.make_call(with_override).await.unwrap_err();
    let info = again.get_details_error_info().unwrap();
    assert_eq!(info.metadata["override"], "unusable", "{again:?}");

    // Emergency and premium numbers: the same gate, the same audit.
    let e = ctx.calls.make_call(req("alice", "110")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        e.get_details_error_info().unwrap().reason,
        "NUMBER_TYPE_BLOCKED"
    );

    // The audit, newest first, paged.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = supervisor
            .list_compliance_decisions(pb::ListComplianceDecisionsRequest {
                tenant_id: "t1".into(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.decisions);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let outcomes: Vec<(&str, &str)> = seen
        .iter()
        .map(|d| (d.outcome.as_str(), d.reason.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("refused", "NUMBER_TYPE_BLOCKED"),
            ("refused", "OUTSIDE_CALLING_HOURS"),
            ("overridden", "OUTSIDE_CALLING_HOURS"),
            ("refused", "OUTSIDE_CALLING_HOURS"),
        ]
    );
    let overridden = &seen[2];
    assert_eq!(overridden.call_id, placed.call_id);
    assert_eq!(overridden.override_id, grant.override_id);
    assert!(!seen.iter().any(|d| d.number_masked.contains("1390013")));

    // A collector's own token may not choose the debtor's zone (it decides when to call).
    let mut as_alice = pb::calls_client::CallsClient::with_interceptor(
        ctx.stack.gateway.channel().await,
        BearerInterceptor::new(&person("collector", "t1", Some("alice"))),
    );
    let mut zoned = req("alice", "13900139000");
    zoned.debtor_time_zone = "Pacific/Kiritimati".into();
    let e = as_alice.make_call(zoned).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().starts_with("debtor_time_zone"),
        "{}",
        e.message()
    );

    // A collector may not read the audit or change the policy.
    let mut collector = compliance_client(&ctx, &person("collector", "t1", Some("alice"))).await;
    let denied = collector
        .get_policy(pb::GetCompliancePolicyRequest {
            tenant_id: "t1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    ctx.shutdown().await;
}

/// Do-not-call over gRPC: add, check, import with a per-line report (chunks of a stream),
/// the global list by unrestricted admins only, remove.
async fn do_not_call_lists_over_grpc(b: Backend) {
    let mut ctx = setup(b, pb::CallMode::DoubleCall, &["8001"], |_| {}).await;
    let mut admin = compliance_client(&ctx, ADMIN).await;
    let added = admin
        .add_do_not_call(pb::AddDoNotCallRequest {
            entry: Some(pb::DoNotCallEntry {
                tenant_id: "t1".into(),
                number: "139 0013 9000".into(),
                reason: pb::DoNotCallReason::AttorneyRepresented.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added.number, "+8613900139000");
    let e = ctx
        .calls
        .make_call(req("alice", "13900139000"))
        .await
        .unwrap_err();
    let info = e.get_details_error_info().unwrap();
    assert_eq!(info.reason, "DO_NOT_CALL");
    assert_eq!(info.metadata["entry_reason"], "attorney_represented");
    assert!(
        e.get_details_retry_info().is_none(),
        "waiting does not help"
    );

    let bad = admin
        .add_do_not_call(pb::AddDoNotCallRequest {
            entry: Some(pb::DoNotCallEntry {
                tenant_id: "t1".into(),
                number: "13900139001".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("reason"), "{}", bad.message());

    // Import in two chunks: line numbers count across them.
    let chunks = vec![
        pb::ImportDoNotCallRequest {
            tenant_id: "t1".into(),
            lines: vec![
                "# exported 2026-12-01".into(),
                "13800138001".into(),
                "13800138002,wrong_number,2027-01-01T00:00:00Z,moved".into(),
                "not-a-number".into(),
            ],
            default_reason: pb::DoNotCallReason::CeaseContact.into(),
        },
        pb::ImportDoNotCallRequest {
            tenant_id: String::new(),
            lines: vec![
                "+1900*,complaint".into(),
                "13800138003,angry".into(),
                String::new(),
                "13800138004,complaint".into(),
                "0086 138 0013 8004,wrong_number".into(),
                "13800138005,complaint,2020-01-01T00:00:00Z".into(),
            ],
            default_reason: 0,
        },
    ];
    let report = admin
        .import_do_not_call(tokio_stream::iter(chunks))
        .await
        .unwrap()
        .into_inner();
    // The same number twice (written two ways): both lines accepted, the last one wins.
    assert_eq!((report.accepted, report.rejected), (5, 3), "{report:?}");
    let lines: Vec<u64> = report.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, [4, 6, 10]);
    let twice = admin
        .check_do_not_call(pb::CheckDoNotCallRequest {
            tenant_id: "t1".into(),
            number: "13800138004".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(twice.entries.len(), 1);
    assert_eq!(
        twice.entries[0].reason,
        pb::DoNotCallReason::WrongNumber as i32
    );
    let check = admin
        .check_do_not_call(pb::CheckDoNotCallRequest {
            tenant_id: "t1".into(),
            number: "+1 900 555 0100".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(check.listed);
    assert!(check.entries[0].prefix);

    // The global list: unrestricted admin keys only.
    let mut scoped = compliance_client(&ctx, SCOPED_ADMIN).await;
    let global = pb::AddDoNotCallRequest {
        entry: Some(pb::DoNotCallEntry {
            tenant_id: "*".into(),
            number: "+8613700137000".into(),
            reason: pb::DoNotCallReason::Complaint.into(),
            ..Default::default()
        }),
    };
    assert_eq!(
        scoped
            .add_do_not_call(global.clone())
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    admin.add_do_not_call(global).await.unwrap();
    let listed = admin
        .check_do_not_call(pb::CheckDoNotCallRequest {
            tenant_id: "t1".into(),
            number: "13700137000".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.listed, "{listed:?}");
    let e = ctx
        .calls
        .make_call(req("alice", "13700137000"))
        .await
        .unwrap_err();
    assert_eq!(
        e.get_details_error_info().unwrap().metadata["list"],
        "global"
    );

    let removed = admin
        .remove_do_not_call(pb::RemoveDoNotCallRequest {
            tenant_id: "t1".into(),
            number: "13900139000".into(),
            prefix: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(removed.removed);
    ctx.calls
        .make_call(req("alice", "13900139000"))
        .await
        .unwrap();
    ctx.shutdown().await;
}

/// Twenty MakeCalls for one case race over two gateway replicas on one database with a cap
/// of 7: exactly 7 reach Infinity, 13 are refused with FREQUENCY_CAP, and the attempts and the
/// audit say the same.
async fn racing_calls_for_one_case_dial_exactly_the_cap(b: Backend) {
    let exts: Vec<String> = (8001..=8012).map(|n| n.to_string()).collect();
    let ext_refs: Vec<&str> = exts.iter().map(String::as_str).collect();
    let ctx = setup(b, pb::CallMode::DoubleCall, &ext_refs, |_| {}).await;
    ctx.sim.state().set_extensions(&ext_refs, true);
    let (second, calls_b, _) = second_replica(&ctx.stack, |_| {}).await;
    let mut admin = compliance_client(&ctx, ADMIN).await;
    admin
        .set_policy(pb::SetCompliancePolicyRequest {
            policy: Some(pb::CompliancePolicy {
                tenant_id: "t1".into(),
                case_cap: Some(pb::FrequencyCap {
                    max_attempts: 7,
                    window_seconds: 7 * 86_400,
                }),
                ..Default::default()
            }),
            expected_version: 0,
        })
        .await
        .unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut client = if i % 2 == 0 {
            ctx.calls.clone()
        } else {
            calls_b.clone()
        };
        let barrier = barrier.clone();
        let collector = if i % 2 == 0 { "alice" } else { "bob" };
        tasks.push(tokio::spawn(async move {
            let mut r = req(collector, &format!("1390013{:04}", 9000 + i));
            r.case_id = "case-race".into();
            barrier.wait().await;
            client.make_call(r).await
        }));
    }
    let mut placed = 0;
    let mut capped = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => placed += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
                assert_eq!(e.get_details_error_info().unwrap().reason, "FREQUENCY_CAP");
                capped += 1;
            }
        }
    }
    assert_eq!((placed, capped), (7, 13));
    let dials = ctx
        .sim
        .state()
        .requests(Some("App.Sip_Call.DoubleCall"))
        .into_iter()
        .filter(|r| r.params.get("memberid").map(String::as_str) == Some("case-race"))
        .count();
    assert_eq!(dials, 7, "dials that reached Infinity");
    let attempts = exec_count(
        &ctx.stack.gateway_db.url,
        "select count(*) from dial_attempts where case_id = 'case-race'",
    )
    .await;
    assert_eq!(attempts, 7);
    let refused = exec_count(
        &ctx.stack.gateway_db.url,
        "select count(*) from compliance_decisions where case_id = 'case-race' and outcome = 'refused' and reason = 'FREQUENCY_CAP'",
    )
    .await;
    assert_eq!(refused, 13);

    // The cool-down holds racing calls too: while one call about a case is open, no other.
    admin
        .set_policy(pb::SetCompliancePolicyRequest {
            policy: Some(pb::CompliancePolicy {
                tenant_id: "t1".into(),
                case_cooldown_seconds: 7 * 86_400,
                ..Default::default()
            }),
            expected_version: 1,
        })
        .await
        .unwrap();
    // Each replica uses the new policy once its cache has heard of the change (PostgreSQL
    // notifies at commit): wait until both answer by it (case-race holds connected calls).
    for client in [ctx.calls.clone(), calls_b.clone()] {
        let mut client = client;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let v = client
                .check_call(pb::CheckCallRequest {
                    tenant_id: "t1".into(),
                    collector_id: "alice".into(),
                    case_id: "case-race".into(),
                    destination_number: "13900139000".into(),
                    debtor_time_zone: String::new(),
                })
                .await
                .unwrap()
                .into_inner();
            if v.reason == "CASE_COOLDOWN" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "policy not seen: {v:?}"
            );
            tokio::task::yield_now().await;
        }
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut client = if i % 2 == 0 {
            ctx.calls.clone()
        } else {
            calls_b.clone()
        };
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = req(if i % 2 == 0 { "alice" } else { "bob" }, "13900139555");
            r.case_id = "case-cool".into();
            barrier.wait().await;
            client.make_call(r).await
        }));
    }
    // A call Infinity refused (the collector's phone busy with an earlier call) holds nothing:
    // the next one may go. At most one call of the case is ever live.
    let (mut live, mut refused_by_infinity) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) if r.get_ref().status == pb::CallStatus::Failed as i32 => {
                refused_by_infinity += 1;
            }
            Ok(_) => live += 1,
            Err(e) => assert_eq!(
                e.get_details_error_info().map(|i| i.reason),
                Some("CASE_COOLDOWN".to_owned()),
                "{e:?}"
            ),
        }
    }
    assert_eq!(live, 1, "{refused_by_infinity} refused by Infinity");
    second.shutdown().await;
    ctx.shutdown().await;
}

cco_platform::on_every_backend!(
    caps_count_exactly_at_their_boundaries,
    the_cooldown_follows_a_conversation,
    hours_follow_the_debtors_zone,
    do_not_call_entries_refuse_and_expire,
    refusals_reach_the_client_with_their_details,
    do_not_call_lists_over_grpc,
    racing_calls_for_one_case_dial_exactly_the_cap,
);

//! `cco stack`: the whole stack in one process, on the embedded default (SQLite files under
//! `./data`): the Infinity simulator, the allocator, the gateway, and a demo tenant (a config
//! pointing at the simulator, 5 extensions, 2 collectors with callback numbers), and the web
//! console (http://127.0.0.1:8081) with a development sign-in for the demo people. Settings
//! come from the usual `ALLOCATOR__*` / `GATEWAY__*` / `CONSOLE__*` variables; the services
//! are wired to each other's bound ports. Ctrl-C (or SIGTERM) stops everything; running it
//! again reuses the data.

use std::time::Duration;

use cco_contracts::allocator::v1 as apb;
use cco_contracts::gateway::v1 as gpb;
use cco_platform::auth::BearerInterceptor;
use clap::Args;
use infinity_sim::{SimConfig, Simulator};
use tokio_util::sync::CancellationToken;
use tonic::Code;

/// The demo tenant's id.
pub const DEMO_TENANT: &str = "demo";
/// A second tenant of the demo administrator, left without a config (to set one up in the
/// console).
pub const TRIAL_TENANT: &str = "trial";
const DEMO_SECRET: &str = "demo-callback-secret-0001";

/// Options of `cco stack`.
#[derive(Debug, Args)]
pub struct StackArgs {
    /// Port of the Infinity simulator.
    #[arg(long, env = "CCO_SIM_PORT", default_value_t = 8090)]
    sim_port: u16,
    /// Do not create the demo tenant.
    #[arg(long)]
    no_demo: bool,
}

async fn bind(host: &str, port: u16) -> anyhow::Result<tokio::net::TcpListener> {
    cco_platform::grpc::bind(host, port).await
}

/// A service `cco serve` can run.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ServiceName {
    /// allocator-svc.
    Allocator,
    /// call-gateway-svc.
    Gateway,
}

/// Runs one service until Ctrl-C or SIGTERM (used by the fault-injection tests, which need a
/// process per replica to kill).
pub async fn serve(service: ServiceName) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    tokio::spawn(cco_platform::grpc::shutdown_signal(stop.clone()));
    let served = match service {
        ServiceName::Allocator => {
            let s = allocator_svc::settings::Settings::load()?;
            cco_platform::telemetry::init(&s.log, "allocator-svc");
            allocator_svc::app::Application::build(s)
                .await?
                .run_until_stopped(stop)
                .await
        }
        ServiceName::Gateway => {
            let s = call_gateway_svc::settings::Settings::load()?;
            cco_platform::telemetry::init(&s.log, "call-gateway-svc");
            call_gateway_svc::app::Application::build(s)
                .await?
                .run_until_stopped(stop)
                .await
        }
    };
    cco_platform::telemetry::shutdown().await;
    served
}

/// Runs the stack until Ctrl-C or SIGTERM.
pub async fn run(args: StackArgs) -> anyhow::Result<()> {
    let mut alloc = allocator_svc::settings::Settings::load()?;
    let mut gw = call_gateway_svc::settings::Settings::load()?;
    cco_platform::telemetry::init(&gw.log, "cco-stack");

    let sim = Simulator::start(SimConfig {
        host: "127.0.0.1".into(),
        port: args.sim_port,
        extensions: (1..=5).map(|i| (format!("800{i}"), true)).collect(),
        ..SimConfig::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("cannot start the simulator on port {}: {e}", args.sim_port))?;

    let alloc_grpc = bind(&alloc.grpc.host, alloc.grpc.port).await?;
    let alloc_metrics = if alloc.metrics.enabled {
        Some(bind(&alloc.metrics.host, alloc.metrics.port).await?)
    } else {
        None
    };
    let gw_grpc = bind(&gw.grpc.host, gw.grpc.port).await?;
    let gw_http = bind(&gw.http.host, gw.http.port).await?;
    let mut console: cco_console::settings::Settings = cco_platform::config::load("CONSOLE")?;
    let console_listener = bind(&console.http.host, console.http.port).await?;
    let console_port = console_listener.local_addr()?.port();
    let alloc_port = alloc_grpc.local_addr()?.port();
    let gw_port = gw_grpc.local_addr()?.port();
    let gw_http_port = gw_http.local_addr()?.port();
    let metrics_port = alloc_metrics
        .as_ref()
        .map(|l| l.local_addr().map(|a| a.port()))
        .transpose()?;
    // People's tokens: the development secret unless one is configured.
    use secrecy::ExposeSecret;
    for jwt in [&mut gw.auth.jwt, &mut alloc.auth.jwt] {
        if jwt.secret.expose_secret().is_empty() && jwt.jwks_path.is_empty() {
            jwt.secret = cco_platform::jwt::DEV_JWT_SECRET.into();
        }
    }
    let jwt_secret = gw.auth.jwt.secret.expose_secret().to_owned();
    let jwt_issuer = gw.auth.jwt.issuer.clone();
    let jwt_audience = gw.auth.jwt.audience.clone();
    // Wire the two services to each other's bound ports, and the console to both.
    alloc.policy.gateway_url = format!("http://127.0.0.1:{gw_port}");
    gw.allocator.url = format!("http://127.0.0.1:{alloc_port}");
    console.gateway.url = format!("http://127.0.0.1:{gw_port}");
    console.allocator.url = format!("http://127.0.0.1:{alloc_port}");
    if console.public_url == cco_console::settings::Settings::default().public_url {
        console.public_url = format!("http://127.0.0.1:{console_port}");
    }
    if console.callback_base_url.is_empty() {
        console.callback_base_url = format!("http://127.0.0.1:{gw_http_port}");
    }
    if console.session.secret.expose_secret().is_empty() {
        // A fresh secret per run: signing in again after a restart is fine for a local stack.
        console.session.secret = cco_console::session::token().repeat(2).into();
    }

    let stop = CancellationToken::new();
    let alloc_app =
        allocator_svc::app::Application::build_with(alloc, Some((alloc_grpc, alloc_metrics)))
            .await?;
    let gw_app =
        call_gateway_svc::app::Application::build_with(gw, Some((gw_grpc, gw_http))).await?;
    let mint_as = |sub: Option<&str>, tenants: &[&str], role: &str, collector: Option<&str>| {
        cco_platform::jwt::mint_person(
            &jwt_secret,
            &cco_platform::jwt::Person {
                tenants: tenants.iter().map(|t| (*t).to_owned()).collect(),
                role: role.into(),
                collector_id: collector.map(str::to_owned),
                sub: sub.map(str::to_owned),
                issuer: jwt_issuer.clone(),
                audience: jwt_audience.clone(),
                ttl_seconds: 12 * 3_600,
            },
        )
    };
    let mint = |tenants: &[&str], role: &str, collector: Option<&str>| {
        mint_as(None, tenants, role, collector)
    };
    // The console's development sign-in: the demo people, with tokens minted here (valid 12 h:
    // restart the stack after that). Only a local stack on a loopback address offers it; the
    // console binary never does.
    let loopback = console.http.host == "localhost"
        || console
            .http
            .host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let dev_people = if jwt_secret.is_empty() || args.no_demo || !loopback {
        Vec::new()
    } else {
        let person = |label: &str, token: String| cco_console::app::DevPerson {
            label: label.into(),
            token,
        };
        vec![
            person(
                "admin (demo, trial)",
                mint_as(Some("admin"), &[DEMO_TENANT, TRIAL_TENANT], "admin", None)?,
            ),
            person(
                "sam (supervisor)",
                mint_as(Some("sam"), &[DEMO_TENANT], "supervisor", None)?,
            ),
            person(
                "alice (collector)",
                mint(&[DEMO_TENANT], "collector", Some("alice"))?,
            ),
            person(
                "bob (collector)",
                mint(&[DEMO_TENANT], "collector", Some("bob"))?,
            ),
        ]
    };
    let console_app =
        cco_console::app::Console::build(console, Some(console_listener), dev_people).await?;
    let alloc_task = tokio::spawn(alloc_app.run_until_stopped(stop.clone()));
    let gw_task = tokio::spawn(gw_app.run_until_stopped(stop.clone()));
    let console_task = tokio::spawn(console_app.run_until_stopped(stop.clone()));
    tokio::spawn(cco_platform::grpc::shutdown_signal(stop.clone()));

    if !args.no_demo {
        let callback = format!(
            "http://127.0.0.1:{gw_http_port}/api/v1/infinity/callback/{DEMO_TENANT}/{DEMO_SECRET}"
        );
        if let Err(e) = seed(gw_port, alloc_port, &sim.api_url()).await {
            stop.cancel();
            let _ = alloc_task.await;
            let _ = gw_task.await;
            return Err(e.context("creating the demo tenant"));
        }
        sim.state().set_callback_url(Some(callback));
    }

    println!();
    println!(
        "  stack ready (data under ./data unless ALLOCATOR__/GATEWAY__DATABASE__URL say otherwise)"
    );
    println!(
        "  allocator gRPC   127.0.0.1:{alloc_port}{}",
        metrics_port
            .map(|p| format!("   metrics http://127.0.0.1:{p}/metrics"))
            .unwrap_or_default()
    );
    println!(
        "  gateway gRPC     127.0.0.1:{gw_port}   HTTP (callback, metrics) http://127.0.0.1:{gw_http_port}"
    );
    println!(
        "  Infinity sim     {}   (control: http://{}/control/...)",
        sim.api_url(),
        sim.addr()
    );
    println!("  console          http://127.0.0.1:{console_port}");
    println!(
        "  dev API keys     admin: dev-admin-key   caller: dev-caller-key   peer: dev-peer-key"
    );
    if !args.no_demo {
        println!(
            "  demo tenant      {DEMO_TENANT}: extensions 8001-8005, collectors alice and bob"
        );
        println!();
        println!("  place a demo call (another terminal):");
        println!(
            "    cargo run -q -p cco-cli -- call make --tenant {DEMO_TENANT} --collector alice --case case-1 --to 13900139000"
        );
        println!("    cargo run -q -p cco-cli -- call watch --tenant {DEMO_TENANT} --id <call_id>");
        if !jwt_secret.is_empty() {
            println!();
            println!("  people's tokens (12 h; `cco token mint` makes more; pass with --api-key):");
            println!(
                "    demo admin       {}",
                mint(&[DEMO_TENANT], "admin", None)?
            );
            println!(
                "    alice            {}",
                mint(&[DEMO_TENANT], "collector", Some("alice"))?
            );
        }
    }
    println!("  Ctrl-C stops everything.");
    println!();

    let a = alloc_task.await;
    let g = gw_task.await;
    let c = console_task.await;
    sim.stop().await;
    cco_platform::telemetry::shutdown().await;
    for r in [a, g, c] {
        r.map_err(|e| anyhow::anyhow!("service task failed: {e}"))??;
    }
    println!("stack stopped");
    Ok(())
}

/// Creates (or refreshes) the demo tenant; safe to run on every start.
async fn seed(gw_port: u16, alloc_port: u16, api_url: &str) -> anyhow::Result<()> {
    let ch = |port: u16| {
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .map(|e| e.timeout(Duration::from_secs(10)).connect_lazy())
    };
    let auth = BearerInterceptor::new("dev-admin-key");
    let mut configs = gpb::tenant_configs_client::TenantConfigsClient::with_interceptor(
        ch(gw_port)?,
        auth.clone(),
    );
    let mut collectors =
        gpb::collectors_client::CollectorsClient::with_interceptor(ch(gw_port)?, auth.clone());
    let mut pool =
        apb::extension_pool_client::ExtensionPoolClient::with_interceptor(ch(alloc_port)?, auth);
    let input = gpb::ConfigInput {
        tenant_id: DEMO_TENANT.into(),
        supplier_id: "demo-supplier".into(),
        api_url: api_url.into(),
        credentials: Some(gpb::Credentials {
            kind: Some(gpb::credentials::Kind::App(gpb::AppCredentials {
                app_id: "sim-app".into(),
                access_key: "sim-access-key".into(),
            })),
        }),
        caller_number_pool: vec!["02566823420".into(), "02566823421".into()],
        callback_secret: DEMO_SECRET.into(),
        max_concurrent_calls: Some(5),
        api_timeout_ms: Some(5_000),
        ..Default::default()
    };
    match configs
        .create_config(gpb::CreateConfigRequest {
            config: Some(input),
        })
        .await
    {
        Ok(_) => {}
        Err(s) if s.code() == Code::AlreadyExists => {
            // An earlier run: point the config at this run's simulator.
            let cfg = configs
                .get_config(gpb::GetConfigRequest {
                    tenant_id: DEMO_TENANT.into(),
                })
                .await?
                .into_inner();
            if cfg.api_url != api_url {
                configs
                    .update_config(gpb::UpdateConfigRequest {
                        tenant_id: DEMO_TENANT.into(),
                        version: cfg.version,
                        api_url: Some(api_url.into()),
                        ..Default::default()
                    })
                    .await?;
            }
        }
        Err(s) => return Err(s.into()),
    }
    pool.batch_import(apb::BatchImportRequest {
        tenant_id: DEMO_TENANT.into(),
        config_id: String::new(),
        numbers: (1..=5).map(|i| format!("800{i}")).collect(),
    })
    .await?;
    for (id, name, number) in [
        ("alice", "Alice", "13800138001"),
        ("bob", "Bob", "13800138002"),
    ] {
        collectors
            .upsert_collector(gpb::UpsertCollectorRequest {
                tenant_id: DEMO_TENANT.into(),
                collector_id: id.into(),
                callback_number: number.into(),
                display_name: name.into(),
                active: Some(true),
            })
            .await?;
    }
    Ok(())
}

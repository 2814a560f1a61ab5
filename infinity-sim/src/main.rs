//! `infinity-sim`: the Infinity API simulator as a standalone server.

use std::time::Duration;

use clap::Parser;
use infinity_sim::{SimConfig, Simulator};

/// A simulator of the Infinity call-centre API (for tests and the demo; never production).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Interface to bind.
    #[arg(long, env = "INFINITY_SIM_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to bind.
    #[arg(long, env = "INFINITY_SIM_PORT", default_value_t = 8090)]
    port: u16,
    /// App id accepted by App.Sip_Auth.Login.
    #[arg(long, env = "INFINITY_SIM_APP_ID", default_value = "sim-app")]
    app_id: String,
    /// Access key accepted by App.Sip_Auth.Login.
    #[arg(
        long,
        env = "INFINITY_SIM_ACCESS_KEY",
        default_value = "sim-access-key"
    )]
    access_key: String,
    /// A static token that is always valid.
    #[arg(
        long,
        env = "INFINITY_SIM_STATIC_TOKEN",
        default_value = "0123456789abcdef0123456789abcdef"
    )]
    static_token: String,
    /// Where call-record callbacks are posted.
    #[arg(long, env = "INFINITY_SIM_CALLBACK_URL")]
    callback_url: Option<String>,
    /// Registered extensions, comma-separated (e.g. 8001,8002).
    #[arg(long, env = "INFINITY_SIM_EXTENSIONS", default_value = "")]
    extensions: String,
    /// Life of a Login token, in seconds.
    #[arg(long, env = "INFINITY_SIM_TOKEN_TTL_SECS", default_value_t = 43_200)]
    token_ttl_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let cli = Cli::parse();
    let config = SimConfig {
        host: cli.host,
        port: cli.port,
        app_id: cli.app_id,
        access_key: cli.access_key,
        static_tokens: vec![cli.static_token],
        token_ttl: Duration::from_secs(cli.token_ttl_secs),
        callback_url: cli.callback_url,
        extensions: cli
            .extensions
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| (s.to_owned(), true))
            .collect(),
        ..SimConfig::default()
    };
    let sim = Simulator::start(config).await?;
    println!(
        "infinity-sim: API at {}  (control: http://{}/control/...)",
        sim.api_url(),
        sim.addr()
    );
    let _ = tokio::signal::ctrl_c().await;
    sim.stop().await;
    Ok(())
}

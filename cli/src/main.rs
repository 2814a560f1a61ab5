//! `cco`: the operator CLI of the CCO Infinity services, and `cco stack` to run the whole stack
//! locally. Exit code 0 on success; on a gRPC error the server's code and message go to stderr
//! and the exit code is the gRPC code number (e.g. 5 NOT_FOUND, 8 RESOURCE_EXHAUSTED); other
//! failures exit 1.

mod client;
mod commands;
mod compliance;
mod output;
mod stack;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::client::Target;
use crate::output::Out;

/// Operator CLI for the CCO Infinity outbound-call services.
#[derive(Debug, Parser)]
#[command(name = "cco", version, about)]
struct Cli {
    /// The allocator's gRPC endpoint.
    #[arg(
        long,
        global = true,
        env = "CCO_ALLOCATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    allocator: String,
    /// The gateway's gRPC endpoint.
    #[arg(
        long,
        global = true,
        env = "CCO_GATEWAY",
        default_value = "http://127.0.0.1:50052"
    )]
    gateway: String,
    /// The API key, or a person's JWT (the development admin key by default).
    #[arg(
        long,
        global = true,
        env = "CCO_API_KEY",
        default_value = "dev-admin-key",
        hide_default_value = true
    )]
    api_key: String,
    /// Print JSON (the proto3 JSON mapping) instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Deadline of one call, in seconds.
    #[arg(long, global = true, default_value_t = 30)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the whole stack in this process: simulator, allocator, gateway and a demo tenant.
    Stack(stack::StackArgs),
    /// Runs one service from its ALLOCATOR__* / GATEWAY__* settings (as its own binary would).
    Serve {
        #[arg(value_enum)]
        service: stack::ServiceName,
    },
    /// Tenant Infinity configs.
    #[command(subcommand)]
    Config(commands::ConfigCmd),
    /// The extension pool.
    #[command(subcommand)]
    Ext(commands::ExtCmd),
    /// Collectors.
    #[command(subcommand)]
    Collector(commands::CollectorCmd),
    /// Calls.
    #[command(subcommand)]
    Call(commands::CallCmd),
    /// Compliance: policies, presets, do-not-call lists, overrides, the decisions' audit.
    #[command(subcommand)]
    Compliance(compliance::ComplianceCmd),
    /// Prints the `sha256:<digest>` form of an API key, for `*__AUTH__API_KEYS` (the
    /// configuration then never holds the key itself).
    HashKey {
        /// The key.
        key: String,
    },
    /// People's JWTs.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Checks a service's gRPC health (exit 0 when SERVING): for container health checks.
    Health {
        /// The endpoint, e.g. http://127.0.0.1:50051.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        endpoint: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// Mints an HS256 token for development and tests, signed with the services' configured
    /// secret (`GATEWAY__AUTH__JWT__SECRET`; `cco stack` uses the development secret).
    Mint {
        /// A tenant the person works for (repeat for several).
        #[arg(long = "tenant", required = true)]
        tenants: Vec<String>,
        /// admin, supervisor or collector.
        #[arg(long)]
        role: String,
        /// The collector's own id (collectors).
        #[arg(long)]
        collector: Option<String>,
        /// Lifetime: 90s, 30m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// The subject (the person's id); the collector id or `dev-<role>` by default.
        #[arg(long)]
        sub: Option<String>,
        /// `iss`, when the services check it.
        #[arg(long, env = "GATEWAY__AUTH__JWT__ISSUER", default_value = "")]
        issuer: String,
        /// `aud`, when the services check it.
        #[arg(long, env = "GATEWAY__AUTH__JWT__AUDIENCE", default_value = "")]
        audience: String,
        /// The HS256 secret.
        #[arg(
            long,
            env = "GATEWAY__AUTH__JWT__SECRET",
            default_value = cco_platform::jwt::DEV_JWT_SECRET,
            hide_default_value = true,
            hide_env_values = true
        )]
        secret: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Out { json: cli.json };
    let target = Target {
        allocator: cli.allocator,
        gateway: cli.gateway,
        api_key: cli.api_key,
        timeout: Duration::from_secs(cli.timeout.max(1)),
    };
    let result = match cli.command {
        Command::Stack(a) => stack::run(a).await,
        Command::Serve { service } => stack::serve(service).await,
        Command::Config(c) => commands::config(c, &target, out).await,
        Command::Ext(c) => commands::ext(c, &target, out).await,
        Command::Collector(c) => commands::collector(c, &target, out).await,
        Command::Call(c) => commands::call(c, &target, out).await,
        Command::Compliance(c) => compliance::compliance(c, &target, out).await,
        Command::HashKey { key } => output::line(&format!(
            "sha256:{}",
            cco_platform::auth::key_digest_hex(&key)
        )),
        Command::Token(TokenCmd::Mint {
            tenants,
            role,
            collector,
            ttl,
            sub,
            issuer,
            audience,
            secret,
        }) => cco_platform::jwt::ttl_seconds(&ttl)
            .and_then(|ttl| {
                cco_platform::jwt::mint_person(
                    &secret,
                    &cco_platform::jwt::Person {
                        tenants,
                        role,
                        collector_id: collector,
                        sub,
                        issuer,
                        audience,
                        ttl_seconds: ttl,
                    },
                )
            })
            .and_then(|t| output::line(&t)),
        Command::Health { endpoint } => commands::health(&endpoint, target.timeout).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                // The reader went away (`cco ... | head`): not our failure.
                return ExitCode::SUCCESS;
            }
            if let Some(s) = e.downcast_ref::<tonic::Status>() {
                eprintln!(
                    "error: {:?} ({}): {}",
                    s.code(),
                    s.code() as i32,
                    s.message()
                );
                if let Some(words) = output::refusal(s, chrono::Utc::now()) {
                    eprint!("{words}");
                }
                if let Some(id) = s.metadata().get("x-call-id").and_then(|v| v.to_str().ok()) {
                    eprintln!("call_id: {id}");
                }
                ExitCode::from(u8::try_from(s.code() as i32).unwrap_or(1).max(1))
            } else {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        }
    }
}

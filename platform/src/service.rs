//! The command line every service binary shares: `serve` (the default), `migrate` and
//! `check-config`, with the same error reporting and exit codes.

use std::future::Future;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::db::{DatabaseSettings, DbPool, Migrations};
use crate::telemetry::LogSettings;

#[derive(Debug, Parser)]
struct ServiceCli {
    #[command(subcommand)]
    command: Option<ServiceCommand>,
}

#[derive(Debug, Subcommand)]
enum ServiceCommand {
    /// Serve (the default).
    Serve,
    /// Run database migrations and exit.
    Migrate,
    /// Load and validate the settings (file and environment), print "configuration ok", exit.
    CheckConfig,
}

/// What a service binary plugs into [`main`].
#[derive(Debug)]
pub struct ServiceSpec<S> {
    /// The binary's name, for `--help` and error messages.
    pub name: &'static str,
    /// One line for `--help`.
    pub about: &'static str,
    /// Loads and validates the settings.
    pub load: fn() -> anyhow::Result<S>,
    /// The settings' log section.
    pub log: fn(&S) -> &LogSettings,
    /// The settings' database section.
    pub database: fn(&S) -> &DatabaseSettings,
    /// The service's migrations.
    pub migrations: Migrations,
}

async fn run<S, F, Fut>(
    spec: &ServiceSpec<S>,
    command: ServiceCommand,
    serve: F,
) -> anyhow::Result<()>
where
    F: FnOnce(S, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let settings = (spec.load)()?;
    crate::telemetry::init((spec.log)(&settings), spec.name);
    match command {
        ServiceCommand::CheckConfig => {
            println!("configuration ok");
            Ok(())
        }
        ServiceCommand::Migrate => {
            let db = DbPool::connect((spec.database)(&settings)).await?;
            db.migrate(spec.migrations).await?;
            db.close().await;
            tracing::info!(backend = db.backend(), "migrations applied");
            Ok(())
        }
        ServiceCommand::Serve => {
            let token = CancellationToken::new();
            tokio::spawn(crate::grpc::shutdown_signal(token.clone()));
            let served = serve(settings, token).await;
            crate::telemetry::shutdown().await;
            served
        }
    }
}

/// Parses the command line and runs the service; `serve` builds and runs the application until
/// SIGTERM or Ctrl-C cancels the token. Errors are printed with the binary's name; exit code 1.
pub async fn main<S, F, Fut>(spec: ServiceSpec<S>, serve: F) -> ExitCode
where
    F: FnOnce(S, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let matches = ServiceCli::command()
        .name(spec.name)
        .about(spec.about)
        .version(env!("CARGO_PKG_VERSION"))
        .get_matches();
    let command = match ServiceCli::from_arg_matches(&matches) {
        Ok(cli) => cli.command.unwrap_or(ServiceCommand::Serve),
        Err(e) => e.exit(),
    };
    match run(&spec, command, serve).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: {e:#}", spec.name);
            ExitCode::FAILURE
        }
    }
}

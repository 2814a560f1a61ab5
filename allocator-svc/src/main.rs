//! The allocator binary: `allocator-svc [serve]` or `allocator-svc migrate`.

use std::process::ExitCode;

use allocator_svc::app::{Application, MIGRATIONS};
use allocator_svc::settings::Settings;
use cco_platform::db::DbPool;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// The Infinity extension allocator.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve gRPC (the default).
    Serve,
    /// Run database migrations and exit.
    Migrate,
    /// Load and validate the settings (file and environment), print "configuration ok", exit.
    CheckConfig,
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load()?;
    cco_platform::telemetry::init(&settings.log);
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            println!("configuration ok");
            Ok(())
        }
        Command::Migrate => {
            let db = DbPool::connect(&settings.database).await?;
            db.migrate(MIGRATIONS).await?;
            db.close().await;
            tracing::info!(backend = db.backend(), "migrations applied");
            Ok(())
        }
        Command::Serve => {
            let app = Application::build(settings).await?;
            let token = CancellationToken::new();
            tokio::spawn(cco_platform::grpc::shutdown_signal(token.clone()));
            app.run_until_stopped(token).await
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("allocator-svc: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! The console binary: `cco-console [serve|check-config]`.

use std::process::ExitCode;

use cco_console::app::Console;
use cco_console::settings::Settings;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "cco-console", about = "The CCO web console", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the console (the default).
    Serve,
    /// Load and check the settings, then exit (non-zero naming the bad setting).
    CheckConfig,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cco-console: {e:#}");
            return ExitCode::from(2);
        }
    };
    if matches!(cli.command, Some(Command::CheckConfig)) {
        println!("cco-console: configuration ok");
        return ExitCode::SUCCESS;
    }
    cco_platform::telemetry::init(&settings.log, "cco-console");
    let stop = CancellationToken::new();
    tokio::spawn(cco_platform::grpc::shutdown_signal(stop.clone()));
    let served = async {
        Console::build(settings, None, Vec::new())
            .await?
            .run_until_stopped(stop)
            .await
    }
    .await;
    cco_platform::telemetry::shutdown().await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cco-console failed");
            eprintln!("cco-console: {e:#}");
            ExitCode::FAILURE
        }
    }
}

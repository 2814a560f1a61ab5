//! The gateway binary: `call-gateway-svc [serve|migrate|check-config]`.

use std::process::ExitCode;

use call_gateway_svc::app::{Application, MIGRATIONS};
use call_gateway_svc::settings::Settings;
use cco_platform::service::ServiceSpec;

#[tokio::main]
async fn main() -> ExitCode {
    let spec = ServiceSpec {
        name: "call-gateway-svc",
        about: "The Infinity call gateway",
        load: Settings::load,
        log: |s: &Settings| &s.log,
        database: |s: &Settings| &s.database,
        migrations: MIGRATIONS,
    };
    cco_platform::service::main(spec, |settings, stop| async move {
        Application::build(settings)
            .await?
            .run_until_stopped(stop)
            .await
    })
    .await
}

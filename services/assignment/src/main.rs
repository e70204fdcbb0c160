use std::process::ExitCode;

use hitl_assignment::AssignmentSettings;
use hitl_runtime::{config::Settings, shutdown, telemetry};

/// mimalloc: every assignment builds several records of strings and maps.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let settings: Settings<AssignmentSettings> = match hitl_runtime::cli::load_from_process() {
        Ok(settings) => settings,
        Err(error) => return hitl_runtime::cli::refuse_to_start(&error),
    };
    let problems = hitl_assignment::service::trust_problems(&settings);
    if !problems.is_empty() {
        return hitl_runtime::cli::refuse_to_start(&hitl_runtime::ConfigError::Invalid(problems));
    }
    hitl_runtime::cli::finish(serve(settings).map(|()| ExitCode::SUCCESS))
}

/// Runs the service until a shutdown signal.
#[tokio::main]
async fn serve(settings: Settings<AssignmentSettings>) -> anyhow::Result<()> {
    telemetry::init(&settings.telemetry);
    let shutdown = shutdown::cancel_on(shutdown::shutdown_signal());
    hitl_assignment::run(settings, shutdown).await
}

use std::process::ExitCode;

use hitl_router::RouterSettings;
use hitl_runtime::{config::Settings, shutdown, telemetry};

/// mimalloc: the routing path is allocation-heavy (maps and strings of every record).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let settings: Settings<RouterSettings> = match hitl_runtime::cli::load_from_process() {
        Ok(settings) => settings,
        Err(error) => return hitl_runtime::cli::refuse_to_start(&error),
    };
    let mut problems = hitl_router::service::trust_problems(&settings);
    problems.extend(hitl_router::service::dedup_problems(&settings));
    if !problems.is_empty() {
        return hitl_runtime::cli::refuse_to_start(&hitl_runtime::ConfigError::Invalid(problems));
    }
    hitl_runtime::cli::finish(serve(settings).map(|()| ExitCode::SUCCESS))
}

/// Runs the service until a shutdown signal.
#[tokio::main]
async fn serve(settings: Settings<RouterSettings>) -> anyhow::Result<()> {
    telemetry::init(&settings.telemetry);
    let shutdown = shutdown::cancel_on(shutdown::shutdown_signal());
    hitl_router::run(settings, shutdown).await
}

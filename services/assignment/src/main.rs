use hitl_assignment::AssignmentSettings;
use hitl_runtime::{config::Settings, shutdown, telemetry};

/// mimalloc: every assignment builds several records of strings and maps.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings<AssignmentSettings> = hitl_runtime::cli::load_or_exit();
    telemetry::init(&settings.telemetry);
    let shutdown = shutdown::cancel_on(shutdown::shutdown_signal());
    hitl_assignment::run(settings, shutdown).await
}

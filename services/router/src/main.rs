use hitl_router::RouterSettings;
use hitl_runtime::{config::Settings, shutdown, telemetry};

/// mimalloc: the routing path is allocation-heavy (maps and strings of every record).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings<RouterSettings> = hitl_runtime::cli::load_or_exit();
    telemetry::init(&settings.telemetry);
    let shutdown = shutdown::cancel_on(shutdown::shutdown_signal());
    hitl_router::run(settings, shutdown).await
}

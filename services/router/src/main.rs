use hitl_router::RouterSettings;
use hitl_runtime::{config::Settings, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings<RouterSettings> = hitl_runtime::cli::load_or_exit();
    telemetry::init(&settings.telemetry);
    let shutdown = shutdown::cancel_on(shutdown::shutdown_signal());
    hitl_router::run(settings, shutdown).await
}

use std::process::ExitCode;

use dockyard_runtime::{
    command::{Kind, run_service},
    shutdown,
};
use gateway::{SERVICE, config::Settings, startup::Application};

/// mimalloc instead of the system allocator: a proxy allocates and frees many small buffers
/// per request, and glibc's malloc showed up at about 10% of the gateway's CPU in `perf`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const COMMANDS: &[Kind] = &[Kind::Serve, Kind::Healthcheck];

#[tokio::main]
async fn main() -> ExitCode {
    run_service(
        SERVICE,
        COMMANDS,
        |_| Settings::from_env(),
        |_, settings| async move {
            let result = match Application::build(&settings).await {
                Ok(app) => app.run_until_stopped(shutdown::signal()).await,
                Err(error) => Err(error),
            };
            result.map_err(Into::into)
        },
    )
    .await
}

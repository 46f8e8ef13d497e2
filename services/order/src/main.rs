use std::process::ExitCode;

use dockyard_runtime::{
    command::{Kind, run_service},
    shutdown,
};
use order::{SERVICE, config::Loaded, startup::Application, store};

/// mimalloc instead of the system allocator: a service allocates and frees many small buffers
/// per request and per event, and glibc's malloc and free took about 5% of the catalog's CPU
/// under `cargo xtask catalog-bench` (`perf`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const COMMANDS: &[Kind] = &[Kind::Serve, Kind::Migrate, Kind::Healthcheck, Kind::Dlq];

#[tokio::main]
async fn main() -> ExitCode {
    run_service(
        SERVICE,
        COMMANDS,
        Loaded::from_env,
        |_, loaded| async move {
            let result = match loaded {
                Loaded::Migrate(database) => store::migrate(&database).await,
                Loaded::Dlq(broker, command) => dockyard_messaging::dlq::run(
                    &broker,
                    &dockyard_contracts::topology(),
                    SERVICE,
                    command,
                    &mut std::io::stdout(),
                )
                .await
                .map_err(Into::into),
                Loaded::Serve(settings) => match Application::build(&settings) {
                    Ok(app) => app.run_until_stopped(shutdown::signal()).await,
                    Err(error) => Err(error),
                },
            };
            result.map_err(Into::into)
        },
    )
    .await
}

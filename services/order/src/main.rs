use std::process::ExitCode;

use dockyard_runtime::{
    command::{Command, run_service},
    shutdown,
};
use order::{SERVICE, config::Loaded, startup::Application, store};

const COMMANDS: &[Command] = &[Command::Serve, Command::Migrate, Command::Healthcheck];

#[tokio::main]
async fn main() -> ExitCode {
    run_service(
        SERVICE,
        COMMANDS,
        Loaded::from_env,
        |_, loaded| async move {
            let result = match loaded {
                Loaded::Migrate(database) => store::migrate(&database).await,
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

use std::process::ExitCode;

use dockyard_runtime::{
    command::{Command, run_service},
    shutdown,
};
use order::{SERVICE, config::Settings, startup::Application, store};

const COMMANDS: &[Command] = &[Command::Serve, Command::Migrate, Command::Healthcheck];

#[tokio::main]
async fn main() -> ExitCode {
    run_service(
        SERVICE,
        COMMANDS,
        Settings::from_env,
        |command, settings| async move {
            let result = match command {
                Command::Migrate => store::migrate(&settings.database).await,
                _ => match Application::build(&settings) {
                    Ok(app) => app.run_until_stopped(shutdown::signal()).await,
                    Err(error) => Err(error),
                },
            };
            result.map_err(Into::into)
        },
    )
    .await
}

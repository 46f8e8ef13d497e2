use std::process::ExitCode;

use catalog::{SERVICE, config::Settings, seed, startup::Application, store};
use dockyard_runtime::{
    command::{Command, run_service},
    shutdown,
};

const COMMANDS: &[Command] = &[
    Command::Serve,
    Command::Migrate,
    Command::Seed,
    Command::Healthcheck,
];

#[tokio::main]
async fn main() -> ExitCode {
    run_service(
        SERVICE,
        COMMANDS,
        Settings::from_env,
        |command, settings| async move {
            let result = match command {
                Command::Migrate => store::migrate(&settings.database).await,
                Command::Seed => seed::run(&settings.database).await,
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

use std::process::ExitCode;

use catalog::{SERVICE, config::Settings, seed, startup::Application};
use dockyard_runtime::{
    command::Command, config, exit, healthcheck, server::HttpConfig, shutdown, telemetry,
};

const COMMANDS: &[Command] = &[
    Command::Serve,
    Command::Migrate,
    Command::Seed,
    Command::Healthcheck,
];

#[tokio::main]
async fn main() -> ExitCode {
    let command = match Command::from_args(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(message) => return exit::usage(SERVICE, &message, &Command::usage(SERVICE, COMMANDS)),
    };
    if command == Command::Healthcheck {
        // Needs only the port; must not fail for want of other settings.
        return match config::from_env::<HttpConfig>() {
            Ok(http) => exit::from_result(
                SERVICE,
                healthcheck::probe(http.port).await.map_err(Into::into),
            ),
            Err(error) => exit::config_error(SERVICE, &error),
        };
    }
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(error) => return exit::config_error(SERVICE, &error),
    };
    telemetry::init(settings.telemetry.log_format);
    let result = match command {
        Command::Migrate => catalog::store::migrate(&settings.database).await,
        Command::Seed => seed::run(&settings.database).await,
        _ => match Application::build(&settings) {
            Ok(app) => app.run_until_stopped(shutdown::signal()).await,
            Err(error) => Err(error),
        },
    };
    exit::from_result(SERVICE, result.map_err(Into::into))
}

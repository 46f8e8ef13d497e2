use std::process::ExitCode;

use console::{SERVICE, config::Settings, startup::Application};
use dockyard_runtime::{
    command::{Kind, run_service},
    shutdown,
};

const COMMANDS: &[Kind] = &[Kind::Serve, Kind::Healthcheck];

#[tokio::main]
async fn main() -> ExitCode {
    run_service(
        SERVICE,
        COMMANDS,
        |_| Settings::from_env(),
        |_, settings| async move {
            let app = Application::build(&settings)?;
            app.run_until_stopped(shutdown::signal()).await?;
            Ok(())
        },
    )
    .await
}

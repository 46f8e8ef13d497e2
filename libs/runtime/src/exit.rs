//! How a service process ends: exit codes and the one line that explains them.

use std::process::ExitCode;

use crate::config::ConfigError;

/// Bad usage or configuration: the conventional usage exit code.
pub const USAGE: u8 = 2;

/// Prints one line naming the variable at fault to stderr and returns exit code 2. Logging may
/// not be set up yet (its own configuration may be what failed), hence plain stderr.
pub fn config_error(service: &str, error: &ConfigError) -> ExitCode {
    eprintln!("{service}: configuration error: {error}");
    ExitCode::from(USAGE)
}

/// Prints a usage error and returns exit code 2.
pub fn usage(service: &str, message: &str, usage: &str) -> ExitCode {
    eprintln!("{service}: {message}\n{usage}");
    ExitCode::from(USAGE)
}

/// Exit code for a finished command: 0, or 1 after logging the error's whole cause chain.
pub fn from_result(service: &str, result: CommandResult) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let chain = error_chain(error.as_ref());
            tracing::error!(service, error = %chain, "command failed");
            eprintln!("{service}: {chain}");
            ExitCode::FAILURE
        }
    }
}

/// `error: cause: cause`, the way operators want to read it on one line.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Many errors already include their source in their own message.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The outcome of a service command. Binaries use `anyhow`; its errors convert into this.
pub type CommandResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

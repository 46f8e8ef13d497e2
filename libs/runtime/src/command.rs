//! The commands of a service binary (factor 12: admin tasks are one-off processes of the same
//! build, with the same configuration).

use std::fmt;

use uuid::Uuid;

/// What the binary was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Serve HTTP until SIGTERM/SIGINT (the default).
    Serve,
    /// Apply the embedded database migrations, then exit.
    Migrate,
    /// Insert demo data (idempotent), then exit.
    Seed,
    /// Ask the local server's `/health/ready`; exit 0 when ready. For container `HEALTHCHECK`s.
    Healthcheck,
    /// Look at or replay the service's dead-lettered events, then exit.
    Dlq(DlqCommand),
}

/// `dlq list | dlq show <message-id> | dlq replay <message-id> | dlq replay --all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DlqCommand {
    /// One line per dead letter: id, type, correlation id, when and why it failed.
    List,
    /// One dead letter in full: its headers and its envelope.
    Show(Uuid),
    /// Sends dead letters back to the service's queue; the others stay.
    Replay(Selection),
}

/// Which dead letters a replay takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    One(Uuid),
    All,
}

/// The commands a binary offers, for its usage line and for refusing the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Serve,
    Migrate,
    Seed,
    Healthcheck,
    Dlq,
}

impl Command {
    /// Reads the command from the arguments after the program name.
    pub fn from_args(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let command = match args.next().as_deref() {
            None | Some("serve") => Self::Serve,
            Some("migrate") => Self::Migrate,
            Some("seed") => Self::Seed,
            Some("healthcheck") => Self::Healthcheck,
            Some("dlq") => Self::Dlq(DlqCommand::from_args(&mut args)?),
            Some(other) => return Err(format!("unknown command `{other}`")),
        };
        match args.next() {
            None => Ok(command),
            Some(extra) => Err(format!("unexpected argument `{extra}`")),
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            Self::Serve => Kind::Serve,
            Self::Migrate => Kind::Migrate,
            Self::Seed => Kind::Seed,
            Self::Healthcheck => Kind::Healthcheck,
            Self::Dlq(_) => Kind::Dlq,
        }
    }

    /// The usage line for a service offering `commands`.
    pub fn usage(service: &str, commands: &[Kind]) -> String {
        let names: Vec<String> = commands.iter().map(ToString::to_string).collect();
        format!(
            "usage: {service} [{}]  (default: serve; configuration from environment variables)",
            names.join(" | ")
        )
    }
}

impl DlqCommand {
    fn from_args(args: &mut impl Iterator<Item = String>) -> Result<Self, String> {
        let id = |raw: Option<String>| -> Result<Uuid, String> {
            let raw = raw.ok_or("give a message id (see `dlq list`)")?;
            Uuid::parse_str(&raw).map_err(|_| format!("`{raw}` is not a message id (a UUID)"))
        };
        match args.next().as_deref() {
            Some("list") => Ok(Self::List),
            Some("show") => Ok(Self::Show(id(args.next())?)),
            Some("replay") => match args.next() {
                Some(all) if all == "--all" => Ok(Self::Replay(Selection::All)),
                other => Ok(Self::Replay(Selection::One(id(other)?))),
            },
            Some(other) => Err(format!("unknown dlq command `{other}`")),
            None => Err("dlq needs a command: list, show or replay".to_owned()),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Serve => "serve",
            Self::Migrate => "migrate",
            Self::Seed => "seed",
            Self::Healthcheck => "healthcheck",
            Self::Dlq => "dlq list|show <id>|replay <id>|replay --all",
        })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dlq(_) => f.write_str("dlq"),
            other => other.kind().fmt(f),
        }
    }
}

/// The whole `main` of a service binary: parses the command, answers `healthcheck` (which
/// needs only `PORT`), loads what the command needs with `load` (exit 2 naming the variable on
/// error; one-off commands should not demand settings only serving uses), sets up logging,
/// then runs the command with `run` (exit 0, or 1 with the cause logged).
pub async fn run_service<S, Fut>(
    service: &'static str,
    commands: &[Kind],
    load: impl FnOnce(Command) -> Result<S, crate::config::ConfigError>,
    run: impl FnOnce(Command, S) -> Fut,
) -> std::process::ExitCode
where
    Fut: std::future::Future<Output = crate::exit::CommandResult>,
{
    use crate::{config, exit, healthcheck, server::HttpConfig, telemetry};

    let command = match Command::from_args(std::env::args().skip(1)) {
        Ok(command) if commands.contains(&command.kind()) => command,
        Ok(command) => {
            let message = format!("`{command}` is not a command of {service}");
            return exit::usage(service, &message, &Command::usage(service, commands));
        }
        Err(message) => return exit::usage(service, &message, &Command::usage(service, commands)),
    };
    if command == Command::Healthcheck {
        return match config::from_env::<HttpConfig>() {
            Ok(http) => exit::from_result(
                service,
                healthcheck::probe(http.port).await.map_err(Into::into),
            ),
            Err(error) => exit::config_error(service, &error),
        };
    }
    let loaded = load(command).and_then(|settings| {
        let logging = config::from_env::<telemetry::TelemetryConfig>()?;
        let tracing = config::from_env::<crate::trace::TracingConfig>()?;
        tracing.check()?;
        Ok((settings, logging, tracing))
    });
    let (settings, logging, tracing) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => return exit::config_error(service, &error),
    };
    // Only a serving process exports its spans; one-off commands keep trace context only.
    let tracing = if command == Command::Serve {
        telemetry::init_service(logging.log_format, &tracing, service)
    } else {
        telemetry::init_service(
            logging.log_format,
            &crate::trace::TracingConfig::default(),
            service,
        )
    };
    if tracing.exporting() {
        tracing::info!("exporting traces over OTLP/HTTP");
    }
    let code = exit::from_result(service, run(command, settings).await);
    tracing.shutdown();
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        Command::from_args(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn serve_is_the_default() {
        assert_eq!(parse(&[]), Ok(Command::Serve));
        assert_eq!(parse(&["migrate"]), Ok(Command::Migrate));
    }

    #[test]
    fn dlq_commands_parse_their_message_ids() {
        let id = Uuid::now_v7();
        assert_eq!(parse(&["dlq", "list"]), Ok(Command::Dlq(DlqCommand::List)));
        assert_eq!(
            parse(&["dlq", "show", &id.to_string()]),
            Ok(Command::Dlq(DlqCommand::Show(id)))
        );
        assert_eq!(
            parse(&["dlq", "replay", "--all"]),
            Ok(Command::Dlq(DlqCommand::Replay(Selection::All)))
        );
        assert_eq!(
            parse(&["dlq", "replay", &id.to_string()]),
            Ok(Command::Dlq(DlqCommand::Replay(Selection::One(id))))
        );
        assert!(parse(&["dlq"]).is_err());
        assert!(
            parse(&["dlq", "replay"])
                .unwrap_err()
                .contains("message id")
        );
        assert!(parse(&["dlq", "show", "42"]).unwrap_err().contains("`42`"));
    }

    #[test]
    fn unknown_or_extra_arguments_are_refused() {
        assert!(parse(&["migrat"]).unwrap_err().contains("migrat"));
        assert!(parse(&["seed", "now"]).is_err());
    }
}

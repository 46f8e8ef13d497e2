//! The commands of a service binary (factor 12: admin tasks are one-off processes of the same
//! build, with the same configuration).

use std::fmt;

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
}

impl Command {
    /// Reads the command from the arguments after the program name.
    pub fn from_args(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let command = match args.next().as_deref() {
            None | Some("serve") => Self::Serve,
            Some("migrate") => Self::Migrate,
            Some("seed") => Self::Seed,
            Some("healthcheck") => Self::Healthcheck,
            Some(other) => return Err(format!("unknown command `{other}`")),
        };
        match args.next() {
            None => Ok(command),
            Some(extra) => Err(format!("unexpected argument `{extra}`")),
        }
    }

    /// The usage line for a service offering `commands`.
    pub fn usage(service: &str, commands: &[Command]) -> String {
        let names: Vec<String> = commands.iter().map(ToString::to_string).collect();
        format!(
            "usage: {service} [{}]  (default: serve; configuration from environment variables)",
            names.join(" | ")
        )
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Serve => "serve",
            Self::Migrate => "migrate",
            Self::Seed => "seed",
            Self::Healthcheck => "healthcheck",
        })
    }
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
    fn unknown_or_extra_arguments_are_refused() {
        assert!(parse(&["migrat"]).unwrap_err().contains("migrat"));
        assert!(parse(&["seed", "now"]).is_err());
    }
}

//! Catalog settings: every one from an environment variable, each with a default in code
//! except `DATABASE_URL` and `AMQP_URL`.

use dockyard_messaging::BrokerConfig;
use dockyard_runtime::{
    command::DlqCommand,
    config::{ConfigError, from_env},
    database::DatabaseConfig,
    identity::IdentityConfig,
    server::HttpConfig,
};

/// What a command of the `catalog` binary needs: serving needs everything, the one-off
/// `migrate` and `seed` only the database, `dlq` only the broker.
#[derive(Debug, Clone)]
pub enum Loaded {
    Serve(Box<Settings>),
    Migrate(DatabaseConfig),
    Seed(DatabaseConfig),
    /// `dlq …` needs only the broker.
    Dlq(BrokerConfig, DlqCommand),
}

impl Loaded {
    pub fn from_env(command: dockyard_runtime::command::Command) -> Result<Self, ConfigError> {
        use dockyard_runtime::command::Command;
        let database = || -> Result<DatabaseConfig, ConfigError> {
            let database: DatabaseConfig = from_env()?;
            database.connect_options()?;
            Ok(database)
        };
        match command {
            Command::Migrate => Ok(Self::Migrate(database()?)),
            Command::Seed => Ok(Self::Seed(database()?)),
            Command::Dlq(command) => {
                let broker: BrokerConfig = from_env()?;
                broker.validate()?;
                Ok(Self::Dlq(broker, command))
            }
            _ => Ok(Self::Serve(Box::new(Settings::from_env()?))),
        }
    }
}

/// Everything `catalog serve` needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub http: HttpConfig,
    pub database: DatabaseConfig,
    pub broker: BrokerConfig,
    /// `REQUIRE_IDENTITY`: writes need the gateway's identity headers.
    pub identity: IdentityConfig,
}

impl Settings {
    /// Reads and validates the environment; the error names the variable at fault.
    pub fn from_env() -> Result<Self, ConfigError> {
        let settings = Self {
            http: from_env()?,
            database: from_env()?,
            broker: from_env()?,
            identity: from_env()?,
        };
        settings.database.connect_options()?;
        settings.broker.validate()?;
        Ok(settings)
    }
}

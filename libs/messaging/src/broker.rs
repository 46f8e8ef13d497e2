//! The supervised broker connection.
//!
//! lapin gives a connection; keeping one is this module's job. A task connects (with
//! exponential back-off, so a service starts and waits while RabbitMQ is not up yet), declares
//! the topology, publishes the live [`Session`] to everyone waiting for one, and watches it;
//! when it drops, the session is withdrawn (readiness turns false) and the cycle starts again.
//! Consumers and the outbox relay simply wait for the next session.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use lapin::{Channel, Connection, ConnectionProperties};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use dockyard_runtime::health::Verdict;

use crate::{
    config::BrokerConfig,
    topology::{self, Topology},
};

const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
const LIVENESS_POLL: Duration = Duration::from_millis(200);

/// One live connection.
#[derive(Clone)]
pub struct Session {
    connection: Arc<Connection>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Session {
    pub async fn channel(&self) -> lapin::Result<Channel> {
        self.connection.create_channel().await
    }

    pub fn is_alive(&self) -> bool {
        self.connection.status().connected()
    }
}

/// A handle on the supervised connection; cheap to clone.
#[derive(Debug, Clone)]
pub struct Broker {
    config: Arc<BrokerConfig>,
    topology: Arc<Topology>,
    session: watch::Receiver<Option<Session>>,
    stop: CancellationToken,
    supervisor: Arc<tokio::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl Broker {
    /// Starts supervising the connection in the background and returns at once; `topology` is
    /// declared at each connection.
    pub fn start(config: BrokerConfig, topology: Topology) -> Self {
        let (sender, session) = watch::channel(None);
        let stop = CancellationToken::new();
        let (config, topology) = (Arc::new(config), Arc::new(topology));
        let supervisor = tokio::spawn(supervise(
            Arc::clone(&config),
            Arc::clone(&topology),
            sender,
            stop.clone(),
        ));
        Self {
            config,
            topology,
            session,
            stop,
            supervisor: Arc::new(tokio::sync::Mutex::new(Some(supervisor))),
        }
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn is_connected(&self) -> bool {
        self.session
            .borrow()
            .as_ref()
            .is_some_and(Session::is_alive)
    }

    /// The live session, waiting for one if need be; `None` once `shutdown` is cancelled.
    pub async fn session(&self, shutdown: &CancellationToken) -> Option<Session> {
        let mut receiver = self.session.clone();
        tokio::select! {
            () = shutdown.cancelled() => None,
            session = receiver.wait_for(|s| s.as_ref().is_some_and(Session::is_alive)) => {
                session.ok().and_then(|s| s.clone())
            }
        }
    }

    /// Closes the connection and stops reconnecting. Stop consumers and the relay first.
    pub async fn close(&self) {
        self.stop.cancel();
        if let Some(supervisor) = self.supervisor.lock().await.take() {
            let _ = supervisor.await;
        }
    }
}

async fn connect(config: &BrokerConfig, topology: &Topology) -> lapin::Result<Connection> {
    let connection =
        Connection::connect(config.amqp_url.expose(), ConnectionProperties::default()).await?;
    topology::declare(
        &connection,
        topology,
        &config.amqp_exchange,
        topology::Queues::of(config),
    )
    .await?;
    Ok(connection)
}

async fn supervise(
    config: Arc<BrokerConfig>,
    topology: Arc<Topology>,
    sessions: watch::Sender<Option<Session>>,
    stop: CancellationToken,
) {
    let mut delay = RECONNECT_MIN;
    loop {
        let attempt = tokio::select! {
            () = stop.cancelled() => return,
            attempt = connect(&config, &topology) => attempt,
        };
        match attempt {
            Ok(connection) => {
                tracing::info!(broker = %config.amqp_url, "connected to the broker");
                delay = RECONNECT_MIN;
                let connection = Arc::new(connection);
                sessions.send_replace(Some(Session {
                    connection: Arc::clone(&connection),
                }));
                let stopped = tokio::select! {
                    () = stop.cancelled() => true,
                    () = until_dropped(&connection) => false,
                };
                sessions.send_replace(None);
                if stopped {
                    let _ = connection.close(200, "shutting down".into()).await;
                    tracing::info!("broker connection closed");
                    return;
                }
                tracing::warn!(broker = %config.amqp_url, "lost the broker connection; reconnecting");
            }
            Err(error) => {
                tracing::warn!(broker = %config.amqp_url, %error, retry_in_ms = delay.as_millis(), "broker unreachable");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RECONNECT_MAX);
    }
}

async fn until_dropped(connection: &Connection) {
    while connection.status().connected() {
        tokio::time::sleep(LIVENESS_POLL).await;
    }
}

/// Readiness of the broker connection: `degraded` while it is away, never `down`.
///
/// Every replica shares the broker, so an instance that cannot reach it is no worse than any
/// other: taking it out of rotation would take them all out (a Kubernetes Service would have
/// no endpoint left) while the work can wait. HTTP keeps being served, events wait in the
/// outbox and are published when the connection is back; the report says so, and
/// `dockyard_outbox_backlog` counts what waits.
#[derive(Debug, Clone)]
pub struct BrokerCheck(pub Broker);

impl dockyard_runtime::health::ReadinessCheck for BrokerCheck {
    fn name(&self) -> &'static str {
        "broker"
    }

    fn check(&self) -> Pin<Box<dyn Future<Output = Verdict> + Send + '_>> {
        Box::pin(async move {
            if self.0.is_connected() {
                Verdict::Up
            } else {
                Verdict::Degraded(
                    "not connected to the broker; reconnecting (events wait in the outbox)"
                        .to_owned(),
                )
            }
        })
    }
}

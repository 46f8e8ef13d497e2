//! Assembles the console: the observer (on the main runtime), the trace store, the page and
//! its API on `HOST:PORT`; stops the observer after HTTP has drained.

use std::{future::Future, sync::Arc};

use dockyard_runtime::{health::Health, metrics::Metrics, server};
use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;

use crate::{
    SERVICE,
    config::Settings,
    observer::Observer,
    routes::{self, Console},
    traces::TraceStore,
};

/// A bound, ready-to-run console.
pub struct Application {
    server: server::Server,
    observer: Observer,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port())
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Binds the listener; call from the main runtime. The gateway is reached in the
    /// background (the console is ready without it, and says so on the page).
    pub fn build(settings: &Settings) -> anyhow::Result<Self> {
        let observer = Observer::new(settings.console.clone());
        let mut metrics = Metrics::new();
        let spans_received = Counter::default();
        metrics.register(
            "console_spans_received",
            "Spans received over OTLP/HTTP",
            spans_received.clone(),
        );
        let console = Console {
            observer: observer.clone(),
            traces: Arc::new(TraceStore::new(settings.console.trace_limit)),
            spans_received,
        };
        let server = server::bind(
            &settings.http,
            Health::new(SERVICE),
            metrics,
            move |config| {
                routes::configure(config, console.clone());
            },
        )?;
        Ok(Self { server, observer })
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Serves and observes until `shutdown`; then HTTP drains and the observer stops.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let observing = tokio::spawn(self.observer.run(stop.clone()));
        let served = self.server.run_until_stopped(shutdown).await;
        stop.cancel();
        let _ = observing.await;
        tracing::info!("stopped; bye");
        Ok(served?)
    }
}

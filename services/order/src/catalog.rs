//! Pricing lines through the catalog (`GET /products?ids=`), with connect and request timeouts
//! and a circuit breaker. When the catalog cannot answer, callers take the alternate path:
//! accept the order as pending and let the saga price it.
//!
//! Prices are kept for `CATALOG_PRICE_TTL_MS`: the price shown at placement is a quote, the
//! saga confirms the order at the catalog's price of that moment, so a quote a few seconds old
//! is what a shop would show anyway, and most placements need no call to the catalog at all.
//! Products the catalog does not know are never kept: they are asked for every time.

use std::{collections::HashMap, sync::Arc, time::Duration};

use dockyard_resilience::{BreakerConfig, CircuitBreaker, State};
use dockyard_runtime::metrics::Metrics;
use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder},
    metrics::{MetricType, TypedMetric},
};
use serde::Deserialize;
use tokio::time::Instant;
use tracing::Instrument;
use url::Url;
use uuid::Uuid;

use crate::config::CatalogConfig;

/// The catalog's current price of a product.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Price {
    pub amount_minor: i64,
    pub currency: String,
}

#[derive(Debug, Deserialize)]
struct Product {
    id: Uuid,
    price: Price,
}

#[derive(Debug, Deserialize)]
struct Page {
    items: Vec<Product>,
}

/// Why the catalog gave no prices.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("the catalog circuit is open (retry in {0:?})")]
    CircuitOpen(Duration),
    #[error("the catalog did not answer: {0}")]
    Failed(String),
}

/// A client of the catalog; cheap to clone.
#[derive(Clone)]
pub struct CatalogClient {
    http: reqwest::Client,
    base: Url,
    breaker: Arc<CircuitBreaker>,
    /// Requests run on the main runtime, whose connection pool outlives actix's workers.
    runtime: tokio::runtime::Handle,
    /// Prices recently read, by product.
    quotes: moka::sync::Cache<Uuid, Price>,
}

/// The breaker's state as a gauge, read when scraped (an open breaker turns half-open with
/// time, not with a call).
#[derive(Debug)]
struct BreakerGauge(Arc<CircuitBreaker>);

impl TypedMetric for BreakerGauge {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for BreakerGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let value: i64 = match self.0.state(std::time::Instant::now()) {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        };
        encoder.encode_gauge(&value)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

impl std::fmt::Debug for CatalogClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogClient")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

impl CatalogClient {
    pub fn new(config: &CatalogConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.catalog_connect_timeout_ms))
            .timeout(Duration::from_millis(config.catalog_timeout_ms))
            .build()?;
        Ok(Self {
            http,
            base: config.base_url()?,
            breaker: Arc::new(CircuitBreaker::new(BreakerConfig::default())?),
            runtime: tokio::runtime::Handle::current(),
            quotes: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_millis(config.catalog_price_ttl_ms))
                .build(),
        })
    }

    /// Adds `dockyard_order_pricing_breaker_state` (0 closed, 1 half-open, 2 open; read at
    /// each scrape) to the process's metrics.
    pub fn register(&self, metrics: &mut Metrics) {
        metrics.register(
            "order_pricing_breaker_state",
            "The pricing circuit breaker to the catalog: 0 closed, 1 half-open, 2 open",
            BreakerGauge(Arc::clone(&self.breaker)),
        );
    }

    /// Prices of `ids`, from recent quotes or from the catalog; a product the catalog does not
    /// know is absent from the map.
    pub async fn prices(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, Price>, Unavailable> {
        let mut prices = HashMap::with_capacity(ids.len());
        let mut unknown = Vec::new();
        for id in ids {
            match self.quotes.get(id) {
                Some(price) => {
                    prices.insert(*id, price);
                }
                None => unknown.push(*id),
            }
        }
        if unknown.is_empty() {
            return Ok(prices);
        }
        for (id, price) in self.fetch(&unknown).await? {
            self.quotes.insert(id, price.clone());
            prices.insert(id, price);
        }
        Ok(prices)
    }

    /// Current prices of `ids`, from the catalog.
    async fn fetch(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, Price>, Unavailable> {
        let permit = self
            .breaker
            .try_acquire(Instant::now().into_std())
            .map_err(|rejected| Unavailable::CircuitOpen(rejected.retry_after))?;
        let mut url = self
            .base
            .join("products")
            .expect("`products` is a valid relative URL");
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        url.query_pairs_mut().append_pair("ids", &ids.join(","));
        let http = self.http.clone();
        // The pricing call's client span; the catalog continues it (`traceparent`).
        let span = tracing::info_span!(
            "pricing",
            otel.name = "GET /products",
            otel.kind = "client",
            server.address = self.base.host_str().unwrap_or_default(),
        );
        let mut headers = reqwest::header::HeaderMap::new();
        dockyard_runtime::trace::inject_http(&span, &mut headers);
        let outcome = self
            .runtime
            .spawn(
                async move {
                    let response = http
                        .get(url)
                        .headers(headers)
                        .send()
                        .await?
                        .error_for_status()?;
                    response.json::<Page>().await
                }
                .instrument(span.clone()),
            )
            .await
            .map_err(|e| Unavailable::Failed(e.to_string()))
            .and_then(|result| result.map_err(|e| Unavailable::Failed(e.to_string())));
        let now = Instant::now().into_std();
        match outcome {
            Ok(page) => {
                permit.success(now);
                Ok(page.items.into_iter().map(|p| (p.id, p.price)).collect())
            }
            Err(error) => {
                permit.failure(now);
                dockyard_runtime::trace::failed(&span);
                Err(error)
            }
        }
    }
}

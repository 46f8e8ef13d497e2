//! Pricing lines through the catalog (`GET /products?ids=`), with connect and request timeouts
//! and a circuit breaker. When the catalog cannot answer, callers take the alternate path:
//! accept the order as pending and let the saga price it.

use std::{collections::HashMap, sync::Arc, time::Duration};

use dockyard_resilience::{BreakerConfig, CircuitBreaker};
use serde::Deserialize;
use tokio::time::Instant;
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
#[derive(Debug, Clone)]
pub struct CatalogClient {
    http: reqwest::Client,
    base: Url,
    breaker: Arc<CircuitBreaker>,
    /// Requests run on the main runtime, whose connection pool outlives actix's workers.
    runtime: tokio::runtime::Handle,
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
        })
    }

    /// Current prices of `ids`; a product the catalog does not know is absent from the map.
    pub async fn prices(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, Price>, Unavailable> {
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
        let outcome = self
            .runtime
            .spawn(async move {
                let response = http.get(url).send().await?.error_for_status()?;
                response.json::<Page>().await
            })
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
                Err(error)
            }
        }
    }
}

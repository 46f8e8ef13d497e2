//! Product persistence in PostgreSQL. Plain sqlx queries; optimistic concurrency by `version`.
//! [`saga`] holds the stock side of the order saga.

mod reads;
pub mod saga;

use anyhow::Context;
use dockyard_runtime::database::{self, Database, DatabaseConfig};
use serde::Serialize;
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    domain::{NewProduct, ProductChanges, ProductName, Stock},
    migrators,
};

/// A stored product, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Product {
    pub id: Uuid,
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    pub sku: String,
    pub name: String,
    pub description: String,
    #[sqlx(flatten)]
    pub price: Price,
    #[schema(minimum = 0)]
    pub stock: i32,
    /// Incremented by every change; the product's ETag is `"v<version>"`.
    #[schema(minimum = 1)]
    pub version: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A stored price, in minor units of `currency`: `{"amount_minor": 1299, "currency": "EUR"}`
/// is €12.99.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Price {
    #[sqlx(rename = "price_minor")]
    #[schema(minimum = 0)]
    pub amount_minor: i64,
    /// ISO 4217 code.
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
}

/// Which versions a conditional change accepts (`If-Match`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// `If-Match: *`, or no condition: any current version.
    Any,
    /// Only these versions; an empty list matches nothing.
    Versions(Vec<i64>),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a product with sku `{0}` already exists")]
    DuplicateSku(String),
    #[error("product {0} does not exist")]
    NotFound(Uuid),
    #[error("product {id} is at version {current}")]
    VersionMismatch { id: Uuid, current: i64 },
    #[error("database failure")]
    Database(#[from] sqlx::Error),
    /// A failure shared by the reads one query answered together.
    #[error("database failure")]
    SharedDatabase(std::sync::Arc<sqlx::Error>),
}

/// Products in the database; cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct ProductStore {
    database: Database,
    reads: reads::Reads,
}

/// Queries of coalesced single-product reads running at once per reader ([`reads`]): one
/// gives the largest batches, and measured no slower than two or four (`cargo xtask
/// catalog-bench`, 2026-12-04, one reader on the main runtime: 24-26k req/s with one, 18-24k
/// with two, 23-25k with four). A worker's reader needs as many connections.
const READS_IN_FLIGHT: u32 = 1;

impl ProductStore {
    /// Call from the main runtime: this store's reader of single products runs there, on
    /// the shared pool (one-off commands and tests use it; HTTP workers use
    /// [`for_worker`](Self::for_worker) instead, and the served process's own reader idles).
    pub fn new(database: Database) -> Self {
        Self {
            reads: reads::Reads::start(database.pool().clone(), READS_IN_FLIGHT as usize),
            database,
        }
    }

    /// This store with a reader of single products of its own, on the current runtime and with
    /// connections opened there: call it on each HTTP worker. A read then never leaves the
    /// worker's thread (no wake-up of another thread per request), and the worker's connections
    /// live exactly as long as the worker, which ends only once its requests are answered, so
    /// the drain guarantee holds without the hop to the main runtime.
    #[must_use]
    pub fn for_worker(&self) -> Self {
        let shared = self.database.pool();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(READS_IN_FLIGHT)
            .acquire_timeout(shared.options().get_acquire_timeout())
            .connect_lazy_with((*shared.connect_options()).clone());
        Self {
            reads: reads::Reads::start(pool, READS_IN_FLIGHT as usize),
            database: self.database.clone(),
        }
    }

    #[tracing::instrument(skip_all, fields(sku = product.sku.as_str()))]
    pub async fn insert(&self, product: &NewProduct) -> Result<Product, StoreError> {
        match self.insert_row(product, false).await {
            Ok(inserted) => Ok(inserted.expect("an insert without ON CONFLICT returns its row")),
            Err(error) => Err(match error.as_database_error() {
                Some(db) if db.is_unique_violation() => {
                    StoreError::DuplicateSku(product.sku.as_str().to_owned())
                }
                _ => StoreError::Database(error),
            }),
        }
    }

    /// Inserts unless the SKU exists; `true` when inserted. For seeding.
    pub async fn insert_if_absent(&self, product: &NewProduct) -> Result<bool, StoreError> {
        Ok(self.insert_row(product, true).await?.is_some())
    }

    /// `None` when `skip_existing` and the SKU was taken.
    async fn insert_row(
        &self,
        product: &NewProduct,
        skip_existing: bool,
    ) -> Result<Option<Product>, sqlx::Error> {
        let new = product.clone();
        let conflict = if skip_existing {
            "ON CONFLICT (sku) DO NOTHING"
        } else {
            ""
        };
        let sql = format!(
            "INSERT INTO products (id, sku, name, description, price_minor, currency, stock)
             VALUES ($1, $2, $3, $4, $5, $6, $7) {conflict} RETURNING *"
        );
        self.database
            .run("INSERT products", move |pool| async move {
                sqlx::query_as::<_, Product>(&sql)
                    .bind(Uuid::now_v7())
                    .bind(new.sku.as_str())
                    .bind(new.name.as_str())
                    .bind(&new.description)
                    .bind(new.price.amount_minor)
                    .bind(new.price.currency.code())
                    .bind(new.stock.value())
                    .fetch_optional(&pool)
                    .await
            })
            .await
    }

    /// The product `id`, read together with the other products asked for at the same time
    /// ([`reads`]).
    pub async fn get(&self, id: Uuid) -> Result<Product, StoreError> {
        let span = tracing::info_span!(
            "query",
            otel.name = "SELECT products",
            otel.kind = "client",
            db.system.name = "postgresql",
        );
        self.reads
            .get(id)
            .instrument(span)
            .await
            .map_err(StoreError::SharedDatabase)?
            .ok_or(StoreError::NotFound(id))
    }

    /// Up to `limit` products after `after` (exclusive), in id (= creation) order; only those
    /// among `ids` when given.
    pub async fn page(
        &self,
        ids: Option<Vec<Uuid>>,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<Product>, StoreError> {
        Ok(self
            .database
            .run("SELECT products", move |pool| async move {
                sqlx::query_as::<_, Product>(
                    "SELECT * FROM products
                     WHERE ($1::uuid[] IS NULL OR id = ANY($1))
                       AND ($2::uuid IS NULL OR id > $2)
                     ORDER BY id
                     LIMIT $3",
                )
                .bind(ids)
                .bind(after)
                .bind(limit)
                .fetch_all(&pool)
                .await
            })
            .await?)
    }

    /// Applies `changes` if the product is at an `expected` version; bumps the version.
    /// Atomic: of concurrent updates expecting the same version, exactly one succeeds.
    #[tracing::instrument(skip(self, changes))]
    pub async fn update(
        &self,
        id: Uuid,
        expected: &Expected,
        changes: &ProductChanges,
    ) -> Result<Product, StoreError> {
        let (versions, changes) = (expected_versions(expected), changes.clone());
        let updated = self
            .database
            .run("UPDATE products", move |pool| async move {
                sqlx::query_as::<_, Product>(
                    "UPDATE products SET
                         name        = COALESCE($3, name),
                         description = COALESCE($4, description),
                         price_minor = COALESCE($5, price_minor),
                         currency    = COALESCE($6, currency),
                         stock       = COALESCE($7, stock),
                         version     = version + 1,
                         updated_at  = now()
                     WHERE id = $1 AND ($2::bigint[] IS NULL OR version = ANY($2))
                     RETURNING *",
                )
                .bind(id)
                .bind(versions)
                .bind(changes.name.as_ref().map(ProductName::as_str))
                .bind(changes.description.as_deref())
                .bind(changes.price.map(|p| p.amount_minor))
                .bind(changes.price.map(|p| p.currency.code()))
                .bind(changes.stock.map(Stock::value))
                .fetch_optional(&pool)
                .await
            })
            .await?;
        match updated {
            Some(product) => Ok(product),
            None => Err(self.why_unchanged(id).await),
        }
    }

    /// Deletes the product if it is at an `expected` version.
    #[tracing::instrument(skip(self))]
    pub async fn delete(&self, id: Uuid, expected: &Expected) -> Result<(), StoreError> {
        let versions = expected_versions(expected);
        let deleted = self
            .database
            .run("DELETE products", move |pool| async move {
                sqlx::query(
                    "DELETE FROM products
                     WHERE id = $1 AND ($2::bigint[] IS NULL OR version = ANY($2))",
                )
                .bind(id)
                .bind(versions)
                .execute(&pool)
                .await
            })
            .await?;
        if deleted.rows_affected() == 1 {
            Ok(())
        } else {
            Err(self.why_unchanged(id).await)
        }
    }

    /// After a conditional write matched no row: the product is gone, or at another version.
    async fn why_unchanged(&self, id: Uuid) -> StoreError {
        let current = self
            .database
            .run("SELECT products", move |pool| async move {
                sqlx::query_scalar::<_, i64>("SELECT version FROM products WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&pool)
                    .await
            })
            .await;
        match current {
            Ok(Some(current)) => StoreError::VersionMismatch { id, current },
            Ok(None) => StoreError::NotFound(id),
            Err(error) => StoreError::Database(error),
        }
    }
}

fn expected_versions(expected: &Expected) -> Option<Vec<i64>> {
    match expected {
        Expected::Any => None,
        Expected::Versions(versions) => Some(versions.clone()),
    }
}

/// `catalog migrate`: applies the embedded migrations.
pub async fn migrate(config: &DatabaseConfig) -> anyhow::Result<()> {
    let pool = database::connect(config)
        .await
        .with_context(|| format!("connecting to {}", config.database_url))?;
    database::migrate(&pool, &migrators()).await?;
    pool.close().await;
    Ok(())
}

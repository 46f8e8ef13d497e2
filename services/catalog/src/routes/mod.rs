//! The catalog's HTTP resources.

mod conditional;
mod products;

use actix_web::{http::StatusCode, web};
use dockyard_runtime::{exit::error_chain, problem::Problem};

use crate::store::{ProductStore, StoreError};

/// Mounts every catalog route.
pub fn configure(config: &mut web::ServiceConfig, store: ProductStore) {
    config.app_data(web::Data::new(store));
    products::configure(config);
}

impl From<StoreError> for Problem {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::DuplicateSku(_) => Problem::conflict(error.to_string()),
            StoreError::NotFound(_) => Problem::not_found(error.to_string()),
            StoreError::VersionMismatch { current, .. } => Problem::of_kind(
                StatusCode::PRECONDITION_FAILED,
                "stale-version",
                "The product has changed",
            )
            .detail(format!(
                "{error}; fetch it again and retry with its current ETag"
            ))
            .extension("current_etag", conditional::etag(current).to_string()),
            StoreError::Database(
                ref cause @ (sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::Tls(_)),
            ) => {
                tracing::error!(error = %error_chain(cause), "database unavailable");
                Problem::new(StatusCode::SERVICE_UNAVAILABLE)
                    .detail("the database is unavailable; retry shortly")
                    .retry_after(1)
            }
            StoreError::Database(ref cause) => {
                tracing::error!(error = %error_chain(cause), "database query failed");
                Problem::internal()
            }
        }
    }
}

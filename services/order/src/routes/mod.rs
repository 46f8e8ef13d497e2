//! The order service's HTTP resources.

mod orders;

use actix_web::{http::StatusCode, web};
use dockyard_runtime::{exit::error_chain, problem::Problem};

use crate::{
    catalog::CatalogClient,
    store::{OrderStore, StoreError},
};

pub fn configure(config: &mut web::ServiceConfig, store: OrderStore, catalog: CatalogClient) {
    config
        .app_data(web::Data::new(store))
        .app_data(web::Data::new(catalog));
    orders::configure(config);
}

impl From<StoreError> for Problem {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(_) => Problem::not_found(error.to_string()),
            StoreError::IllegalTransition(_) => Problem::of_kind(
                StatusCode::CONFLICT,
                "illegal-transition",
                "The order cannot make this transition",
            )
            .detail(error.to_string()),
            StoreError::Database(ref cause) if dockyard_runtime::database::is_transient(cause) => {
                tracing::error!(error = %error_chain(cause), "database unavailable");
                Problem::new(StatusCode::SERVICE_UNAVAILABLE)
                    .detail(
                        "the database is unavailable; retry shortly with the same Idempotency-Key",
                    )
                    .retry_after(1)
            }
            StoreError::Database(ref cause) => dockyard_runtime::database::problem(cause),
        }
    }
}

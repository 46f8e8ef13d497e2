//! The order service's HTTP resources.

mod orders;

use actix_web::{http::StatusCode, web};
use dockyard_runtime::{exit::error_chain, identity::IdentityConfig, problem::Problem};

use std::sync::Arc;

use crate::{
    admission::Admission,
    catalog::CatalogClient,
    store::{OrderStore, StoreError},
};

pub use orders::ApiDoc;

/// Mounts every order route, and `GET /openapi.json`.
pub fn configure(
    config: &mut web::ServiceConfig,
    store: OrderStore,
    catalog: CatalogClient,
    admission: Arc<Admission>,
    identity: IdentityConfig,
) {
    use utoipa::OpenApi;
    config
        .app_data(web::Data::new(identity))
        .app_data(web::Data::new(store))
        .app_data(web::Data::new(catalog))
        .app_data(web::Data::from(admission));
    orders::configure(config);
    dockyard_runtime::openapi::serve(config, &ApiDoc::openapi());
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

#[cfg(test)]
mod openapi_tests {
    use utoipa::OpenApi;

    #[test]
    fn the_committed_openapi_document_is_the_generated_one() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/order.openapi.json");
        dockyard_runtime::openapi::assert_committed(&super::ApiDoc::openapi(), &path);
    }
}

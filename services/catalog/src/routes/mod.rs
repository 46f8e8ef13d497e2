//! The catalog's HTTP resources.

mod conditional;
mod products;

use actix_web::{http::StatusCode, web};
use dockyard_runtime::{identity::IdentityConfig, problem::Problem};

use crate::store::{ProductStore, StoreError};

pub use products::ApiDoc;

/// Mounts every catalog route, and `GET /openapi.json`.
pub fn configure(config: &mut web::ServiceConfig, store: ProductStore, identity: IdentityConfig) {
    use utoipa::OpenApi;
    config
        .app_data(web::Data::new(store))
        .app_data(web::Data::new(identity));
    products::configure(config);
    dockyard_runtime::openapi::serve(config, &ApiDoc::openapi());
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
            StoreError::Database(ref cause) => dockyard_runtime::database::problem(cause),
            StoreError::SharedDatabase(ref cause) => dockyard_runtime::database::problem(cause),
        }
    }
}

#[cfg(test)]
mod openapi_tests {
    use utoipa::OpenApi;

    #[test]
    fn the_committed_openapi_document_is_the_generated_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs/catalog.openapi.json");
        dockyard_runtime::openapi::assert_committed(&super::ApiDoc::openapi(), &path);
    }
}

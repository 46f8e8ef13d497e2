//! The OpenAPI side of a service: the schemas every API shares (problem details, field
//! errors, ids), `GET /openapi.json`, and `405` answers that name the allowed methods.
//!
//! Each service describes its operations with `utoipa` next to its handlers, so the document
//! is generated from the code; a test in each service keeps the copy in `docs/` equal to it.

use actix_web::{
    HttpResponse,
    http::{StatusCode, header},
    web,
};
use utoipa::ToSchema;

use crate::problem::Problem;

/// RFC 9457 problem details: every error answers `application/problem+json` with this body.
#[derive(Debug, ToSchema)]
#[schema(as = Problem)]
#[allow(dead_code)] // documentation only: `problem::Problem` is what is sent
pub struct ProblemSchema {
    /// A URI naming the kind of problem: `about:blank`, or `urn:dockyard:problem:<kind>`.
    #[schema(rename = "type")]
    kind: String,
    /// A short summary of the kind of problem.
    title: String,
    /// The HTTP status code.
    #[schema(minimum = 400, maximum = 599)]
    status: u16,
    /// What went wrong this time, and what to do about it.
    detail: Option<String>,
    /// Validation problems (`422`): one entry per invalid field.
    errors: Option<Vec<crate::problem::FieldError>>,
    /// A stale `If-Match` (`412`): the product's current ETag.
    current_etag: Option<String>,
}

/// The media type of every error body.
pub const PROBLEM_JSON: &str = crate::problem::CONTENT_TYPE;

/// Mounts `GET /openapi.json`, answering `document` (rendered once, here).
pub fn serve(config: &mut web::ServiceConfig, document: &utoipa::openapi::OpenApi) {
    let json = document
        .to_pretty_json()
        .expect("an OpenAPI document serialises");
    config.route(
        "/openapi.json",
        web::get().to(move || {
            let json = json.clone();
            async move {
                HttpResponse::Ok()
                    .content_type("application/json")
                    .body(json)
            }
        }),
    );
}

/// The answer to a method a resource does not have: `405` with `Allow` (RFC 9110 §15.5.6).
pub fn method_not_allowed(
    allow: &'static str,
) -> impl Fn() -> std::future::Ready<HttpResponse> + Clone {
    move || {
        let problem = Problem::new(StatusCode::METHOD_NOT_ALLOWED)
            .detail(format!("this resource allows {allow}"));
        let mut response = actix_web::ResponseError::error_response(&problem);
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static(allow));
        std::future::ready(response)
    }
}

/// For a test in each service: `document` must equal the committed copy at `path`, so the
/// OpenAPI documents in `docs/` never drift from the code. With `UPDATE_OPENAPI=1` it writes
/// the copy, and still fails when it changed it (the change is there to review and commit),
/// and always under CI (`CI` set): a golden test that rewrites its file would pass whatever
/// the code does.
pub fn assert_committed(document: &utoipa::openapi::OpenApi, path: &std::path::Path) {
    let generated = document
        .to_pretty_json()
        .expect("an OpenAPI document serialises")
        + "\n";
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let update = std::env::var_os("UPDATE_OPENAPI").is_some();
    assert!(
        !(update && std::env::var_os("CI").is_some()),
        "UPDATE_OPENAPI is refused under CI: the committed document is what is checked"
    );
    if update && committed != generated {
        std::fs::write(path, &generated).expect("writing the OpenAPI document");
        panic!(
            "{} rewritten from the code: review and commit it, then run the test again",
            path.display()
        );
    }
    assert!(
        committed == generated,
        "{} is not the document the code generates: run `UPDATE_OPENAPI=1 cargo test openapi` and commit it",
        path.display()
    );
}

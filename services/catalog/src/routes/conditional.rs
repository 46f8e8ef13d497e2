//! Conditional requests (RFC 9110 §13): the product ETag is its version, `"v{version}"`.

use actix_web::{
    HttpRequest,
    http::header::{self, EntityTag, Header, IfMatch, IfNoneMatch},
};
use dockyard_runtime::problem::Problem;

use crate::store::Expected;

pub fn etag(version: i64) -> EntityTag {
    EntityTag::new_strong(format!("v{version}"))
}

fn version_of(tag: &EntityTag) -> Option<i64> {
    if tag.weak {
        return None; // If-Match uses the strong comparison: a weak tag never matches
    }
    tag.tag().strip_prefix('v')?.parse().ok()
}

/// `If-None-Match` matches the current version (weak comparison): answer 304.
pub fn not_modified(request: &HttpRequest, version: i64) -> bool {
    match IfNoneMatch::parse(request) {
        Ok(IfNoneMatch::Any) => true,
        Ok(IfNoneMatch::Items(tags)) => tags.iter().any(|tag| tag.weak_eq(&etag(version))),
        Err(_) => false,
    }
}

/// The versions `If-Match` accepts. `required`: a missing header is 428 rather than "any".
pub fn expected_versions(request: &HttpRequest, required: bool) -> Result<Expected, Problem> {
    if !request.headers().contains_key(header::IF_MATCH) {
        return if required {
            Err(Problem::new(actix_web::http::StatusCode::PRECONDITION_REQUIRED).detail(
                "send If-Match with the product's ETag (from GET) so concurrent changes are not lost",
            ))
        } else {
            Ok(Expected::Any)
        };
    }
    match IfMatch::parse(request) {
        Ok(IfMatch::Any) => Ok(Expected::Any),
        Ok(IfMatch::Items(tags)) => Ok(Expected::Versions(
            tags.iter().filter_map(version_of).collect(),
        )),
        Err(_) => Err(Problem::bad_request(
            "If-Match must be `*` or a list of quoted ETags such as \"v3\"",
        )),
    }
}

//! Conditional requests (RFC 9110 §13): the product ETag is its version, `"v{version}"`.

use actix_web::{
    HttpRequest,
    http::header::{self, EntityTag, Header, IfNoneMatch},
};
use dockyard_runtime::problem::Problem;

use crate::store::Expected;

pub fn etag(version: i64) -> EntityTag {
    EntityTag::new_strong(format!("v{version}"))
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
///
/// `*` matches any version; a list of strong product ETags (`"v3", "v4"`) matches those
/// versions; anything else names no ETag this API hands out, so it matches nothing (`412`,
/// with the current ETag in the answer).
pub fn expected_versions(request: &HttpRequest, required: bool) -> Result<Expected, Problem> {
    let Some(value) = request.headers().get(header::IF_MATCH) else {
        return if required {
            Err(Problem::new(actix_web::http::StatusCode::PRECONDITION_REQUIRED).detail(
                "send If-Match with the product's ETag (from GET) so concurrent changes are not lost",
            ))
        } else {
            Ok(Expected::Any)
        };
    };
    Ok(value
        .to_str()
        .ok()
        .and_then(parse_if_match)
        .unwrap_or(Expected::Versions(Vec::new())))
}

fn parse_if_match(value: &str) -> Option<Expected> {
    if value == "*" {
        return Some(Expected::Any);
    }
    value
        .split(',')
        .enumerate()
        .map(|(index, tag)| {
            // `"v1", "v2"` or `"v1","v2"`: one optional space after each comma.
            let tag = if index > 0 {
                tag.strip_prefix(' ').unwrap_or(tag)
            } else {
                tag
            };
            let digits = tag.strip_prefix("\"v")?.strip_suffix('"')?;
            if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            digits.parse().ok()
        })
        .collect::<Option<Vec<i64>>>()
        .map(Expected::Versions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_takes_only_what_the_api_hands_out() {
        assert_eq!(parse_if_match("*"), Some(Expected::Any));
        assert_eq!(
            parse_if_match("\"v3\", \"v12\",\"v4\""),
            Some(Expected::Versions(vec![3, 12, 4]))
        );
        for bad in [
            "W/\"v3\"",
            "\"3\"",
            "\"v\"",
            "v3",
            "\"v3\",",
            "\"v1234567890123456789\"",
            "",
            "\"v1\" , \"v2\"",
            "\"v1\",  \"v2\"",
        ] {
            assert_eq!(parse_if_match(bad), None, "{bad}");
        }
    }
}

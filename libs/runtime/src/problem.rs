//! Errors as RFC 9457 `application/problem+json`.
//!
//! Handlers return [`Problem`] (or an error that converts into it). Extractor failures (bad
//! JSON, a malformed path or query) are mapped here too, so a client mistake is always a 4xx
//! with a `detail` that says what to fix, never a bare 400 or a 500.

use std::{borrow::Cow, fmt};

use actix_web::{
    HttpRequest, HttpResponse, ResponseError,
    body::BoxBody,
    dev::ServiceResponse,
    error::{JsonPayloadError, PathError, QueryPayloadError},
    http::{StatusCode, header},
    middleware::ErrorHandlerResponse,
    web,
};
use serde::Serialize;
use serde_json::{Map, Value};

pub const CONTENT_TYPE: &str = "application/problem+json";

/// The response header that marks a refusal as deliberate load shedding ([`Problem::shed`]):
/// the instance is healthy and chose not to take the request now. A proxy must not count such
/// an answer against the instance (breakers, outlier detection) nor retry it elsewhere (the
/// whole service is at its limit); the client retries after `Retry-After`.
pub const SHED_HEADER: &str = "dockyard-shed";

/// One RFC 9457 problem detail.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// A URI naming the kind of problem; `about:blank` when the status says it all.
    #[serde(rename = "type")]
    pub kind: Cow<'static, str>,
    pub title: Cow<'static, str>,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Problem-specific members, such as `errors` for field validation.
    #[serde(flatten)]
    pub extensions: Map<String, Value>,
    /// Seconds a client should wait before retrying (sent as `Retry-After`).
    #[serde(skip)]
    pub retry_after: Option<u32>,
    /// The challenge of a `401` (sent as `WWW-Authenticate`, RFC 9110 §11.6.1). Boxed, like
    /// `retry_after` kept to 32 bits, so a `Problem` stays small enough to return by value.
    #[serde(skip)]
    pub www_authenticate: Option<Box<Cow<'static, str>>>,
    /// A deliberate refusal by a healthy instance (sent as [`SHED_HEADER`]).
    #[serde(skip)]
    pub shed: bool,
}

impl Problem {
    /// A problem with `type: about:blank` and the status's reason as title.
    pub fn new(status: StatusCode) -> Self {
        Self {
            kind: Cow::Borrowed("about:blank"),
            title: Cow::Borrowed(status.canonical_reason().unwrap_or("Error")),
            status: status.as_u16(),
            detail: None,
            extensions: Map::new(),
            retry_after: None,
            www_authenticate: None,
            shed: false,
        }
    }

    /// A problem of a named kind: `type` becomes `urn:dockyard:problem:{kind}`.
    pub fn of_kind(status: StatusCode, kind: &str, title: &'static str) -> Self {
        Self {
            kind: Cow::Owned(format!("urn:dockyard:problem:{kind}")),
            title: Cow::Borrowed(title),
            ..Self::new(status)
        }
    }

    #[must_use]
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    #[must_use]
    pub fn extension(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extensions.insert(key.to_owned(), value.into());
        self
    }

    #[must_use]
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(u32::try_from(seconds).unwrap_or(u32::MAX));
        self
    }

    /// `503` by choice: the instance is healthy and sheds load ([`SHED_HEADER`]); the client
    /// retries after `retry_after_secs`.
    pub fn shed(kind: &str, title: &'static str, retry_after_secs: u64) -> Self {
        Self {
            shed: true,
            ..Self::of_kind(StatusCode::SERVICE_UNAVAILABLE, kind, title)
                .retry_after(retry_after_secs)
        }
    }

    /// `401` with the `WWW-Authenticate` challenge a client must answer.
    pub fn unauthorized(
        challenge: impl Into<Cow<'static, str>>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            www_authenticate: Some(Box::new(challenge.into())),
            ..Self::new(StatusCode::UNAUTHORIZED).detail(detail)
        }
    }

    /// `403`: the caller is known and not allowed.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN).detail(detail)
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST).detail(detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND).detail(detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT).detail(detail)
    }

    /// The request was well-formed but its content is invalid; `errors` lists each field.
    pub fn validation(errors: &[FieldError]) -> Self {
        let detail = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        Self::of_kind(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "Invalid request content",
        )
        .detail(detail)
        .extension(
            "errors",
            serde_json::to_value(errors).expect("field errors serialise"),
        )
    }

    /// A server-side failure. The cause is logged by whoever creates it, not shown.
    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR)
            .detail("the server failed to handle this request; it has been logged")
    }

    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The headers of a problem's response (lower-case names): its content type, and
    /// `Retry-After` and `WWW-Authenticate` when it has them. One list for every HTTP stack
    /// that answers with a problem (actix here, the gateway's hyper data plane).
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, Cow<'_, str>)> {
        [
            Some(("content-type", Cow::Borrowed(CONTENT_TYPE))),
            self.retry_after
                .map(|seconds| ("retry-after", Cow::Owned(seconds.to_string()))),
            self.www_authenticate
                .as_deref()
                .map(|challenge| ("www-authenticate", Cow::Borrowed(challenge.as_ref()))),
            self.shed
                .then_some((SHED_HEADER, Cow::Borrowed("overloaded"))),
        ]
        .into_iter()
        .flatten()
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.title)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problem {}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        Problem::status_code(self)
    }

    fn error_response(&self) -> HttpResponse<BoxBody> {
        let mut response = HttpResponse::build(self.status_code());
        for (name, value) in self.headers() {
            response.insert_header((name, value.as_ref()));
        }
        response.body(serde_json::to_vec(self).expect("a problem always serialises"))
    }
}

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// The JSON member at fault, e.g. `price.currency`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// JSON body extraction: size limit and errors as problems.
pub fn json_config(limit_bytes: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit_bytes)
        .error_handler(move |error, _| json_problem(&error, limit_bytes).into())
}

fn json_problem(error: &JsonPayloadError, limit: usize) -> Problem {
    match error {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            Problem::new(StatusCode::PAYLOAD_TOO_LARGE)
                .detail(format!("the JSON body is larger than {limit} bytes"))
        }
        JsonPayloadError::ContentType => Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE)
            .detail("expected a JSON body with Content-Type: application/json"),
        JsonPayloadError::Deserialize(e) if e.is_data() => {
            Problem::validation(&[FieldError::new("body", e.to_string())])
        }
        JsonPayloadError::Deserialize(e) => {
            Problem::bad_request(format!("the body is not valid JSON: {e}"))
        }
        other => Problem::bad_request(format!("could not read the body: {other}")),
    }
}

/// Path parameters: a malformed value (e.g. an id that is not a UUID) is a 400 naming it.
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|error: PathError, request: &HttpRequest| {
        Problem::bad_request(format!("invalid path `{}`: {error}", request.path())).into()
    })
}

/// Query strings: a malformed parameter is a 400 naming it.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|error: QueryPayloadError, _| {
        Problem::bad_request(format!("invalid query string: {error}")).into()
    })
}

/// For [`actix_web::middleware::ErrorHandlers`]: gives any bodiless error response (actix's own
/// 404, 405, …) a problem+json body. Responses that already carry a content type are left alone.
pub fn fill_bare_error<B>(
    response: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    if response.headers().contains_key(header::CONTENT_TYPE) {
        return Ok(ErrorHandlerResponse::Response(
            response.map_into_left_body(),
        ));
    }
    let problem = Problem::new(response.status()).detail(match response.status() {
        StatusCode::NOT_FOUND => format!("no route for {}", response.request().path()),
        StatusCode::METHOD_NOT_ALLOWED => format!(
            "{} is not allowed on {}",
            response.request().method(),
            response.request().path()
        ),
        status => status.to_string(),
    });
    let (request, _) = response.into_parts();
    let body = problem.error_response();
    let response = ServiceResponse::new(request, body).map_into_right_body();
    Ok(ErrorHandlerResponse::Response(response))
}

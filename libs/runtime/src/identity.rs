//! Who is calling, as the gateway vouches for it.
//!
//! The gateway validates the client's bearer token and passes the verified identity downstream
//! in two headers, which it always strips from what clients send: [`SUBJECT_HEADER`] (the
//! token's `sub`) and [`SCOPES_HEADER`] (its scopes, space-separated). A service never sees
//! the token; it reads these headers into an [`Identity`] through the [`Caller`] extractor.
//!
//! With `REQUIRE_IDENTITY=true` ([`IdentityConfig`]) a handler that asks for the caller gets
//! `401` when the headers are missing, so a request that did not come through the gateway (or
//! came through a route without authentication) cannot write. Without it (local runs of one
//! service, its tests) a missing identity is allowed and the service decides what that means.

use std::future::{Ready, ready};

use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use serde::Deserialize;
use uuid::Uuid;

use crate::problem::Problem;

/// The verified subject (`sub`) of the caller's token.
pub const SUBJECT_HEADER: &str = "x-identity-subject";
/// The verified scopes of the caller's token, space-separated.
pub const SCOPES_HEADER: &str = "x-identity-scopes";
/// Every header starting with this belongs to the gateway: it drops them from client requests.
pub const HEADER_PREFIX: &str = "x-identity-";

/// From `REQUIRE_IDENTITY`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct IdentityConfig {
    /// Requests that need a caller are refused (`401`) without the gateway's identity headers.
    #[serde(default)]
    pub require_identity: bool,
}

/// A caller the gateway authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub scopes: Vec<String>,
}

impl Identity {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// The subject as a customer id, or `403`: a customer's subject is a UUID.
    pub fn customer_id(&self) -> Result<Uuid, Problem> {
        Uuid::parse_str(&self.subject)
            .map_err(|_| Problem::forbidden("the caller's subject is not a customer id (a UUID)"))
    }

    /// Reads the identity headers; `None` without a subject.
    fn from_request(request: &HttpRequest) -> Result<Option<Self>, Problem> {
        let headers = request.headers();
        let Some(subject) = headers.get(SUBJECT_HEADER) else {
            return Ok(None);
        };
        let subject = subject
            .to_str()
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Problem::bad_request("malformed identity header"))?;
        let scopes = headers
            .get(SCOPES_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split_ascii_whitespace()
            .map(str::to_owned)
            .collect();
        Ok(Some(Self {
            subject: subject.to_owned(),
            scopes,
        }))
    }
}

/// The challenge of every `401` for a missing identity.
pub const CHALLENGE: &str = "Bearer realm=\"dockyard\"";

/// The caller of a request: `Some` identity when the gateway vouched for one. Extracting it
/// fails with `401` when `REQUIRE_IDENTITY` is on and there is none.
#[derive(Debug, Clone)]
pub struct Caller(pub Option<Identity>);

impl Caller {
    /// The caller must hold `scope`: `403` when known without it (and `401` when unknown,
    /// already refused at extraction when identities are required).
    pub fn require_scope(&self, scope: &str) -> Result<(), Problem> {
        match &self.0 {
            Some(identity) if !identity.has_scope(scope) => Err(Problem::forbidden(format!(
                "this needs the scope `{scope}`"
            ))),
            _ => Ok(()),
        }
    }
}

impl FromRequest for Caller {
    type Error = Problem;
    type Future = Ready<Result<Self, Problem>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let required = request
            .app_data::<web::Data<IdentityConfig>>()
            .is_some_and(|config| config.require_identity);
        ready(Identity::from_request(request).and_then(|identity| {
            if identity.is_none() && required {
                return Err(Problem::unauthorized(
                    CHALLENGE,
                    "this needs an authenticated caller: send a bearer token through the gateway",
                ));
            }
            Ok(Self(identity))
        }))
    }
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn caller(required: bool, headers: &[(&str, &str)]) -> Result<Caller, Problem> {
        let mut request = TestRequest::default().app_data(web::Data::new(IdentityConfig {
            require_identity: required,
        }));
        for &(name, value) in headers {
            request = request.insert_header((name, value));
        }
        let request = request.to_http_request();
        Caller::extract(&request).into_inner()
    }

    #[test]
    fn a_missing_identity_is_refused_only_when_required() {
        assert!(caller(false, &[]).unwrap().0.is_none());
        let refused = caller(true, &[]).unwrap_err();
        assert_eq!(refused.status, 401);
        assert_eq!(
            refused.www_authenticate.as_deref().map(AsRef::as_ref),
            Some(CHALLENGE)
        );
    }

    #[test]
    fn scopes_are_read_and_checked() {
        let headers = [
            (SUBJECT_HEADER, "0196b3a0-0000-7000-8000-000000000001"),
            (SCOPES_HEADER, "orders:read catalog:write"),
        ];
        let known = caller(true, &headers).unwrap();
        assert!(known.require_scope("catalog:write").is_ok());
        assert_eq!(known.require_scope("admin").unwrap_err().status, 403);
        let identity = known.0.unwrap();
        assert_eq!(
            identity.customer_id().unwrap().to_string(),
            "0196b3a0-0000-7000-8000-000000000001"
        );

        let not_a_customer = caller(true, &[(SUBJECT_HEADER, "service-account")]).unwrap();
        assert_eq!(
            not_a_customer.0.unwrap().customer_id().unwrap_err().status,
            403
        );
    }
}

//! Authentication at the edge, authorization by route and method.
//!
//! A client presents a bearer JWT. The gateway verifies it against public keys (RS256, PS256,
//! ES256, `EdDSA`… from a JWKS file or URL; HS256 with a shared secret only for local
//! development), checks `exp`, `nbf`, `iss` and `aud` (with a small leeway for clock skew), and
//! applies the first policy rule of `AUTH_POLICIES` that matches the route and method:
//!
//! - `public`: no token needed (a token that is sent must still be valid);
//! - `authenticated`: any valid token;
//! - `customer`: a valid token whose `sub` is a customer id (a UUID);
//! - `scope:<name>`: a valid token granting that scope (`scope`, space-separated, or `scp`).
//!
//! A request no rule matches needs `authenticated`. A missing or invalid token is `401` with a
//! `WWW-Authenticate: Bearer …` challenge (RFC 6750), a missing scope `403`; both
//! problem+json. The verified identity goes upstream as `X-Identity-Subject` and
//! `X-Identity-Scopes` ([`dockyard_runtime::identity`]); whatever a client sends in
//! `X-Identity-*` headers, and its `Authorization`, never do.
//!
//! A token's header picks its key by `kid`, and the key alone decides the algorithm: a token
//! signed with another algorithm than its key's (`alg: none`, HS256 with an RSA key's public
//! bytes as the secret) is refused before any signature is checked.

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use http::{HeaderMap, HeaderValue, Method, header};
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse},
};
use serde::Deserialize;
use url::Url;

use dockyard_runtime::{identity, problem::Problem};

/// Where the verifying keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A JWKS document on disk (a mounted Secret), read at start.
    JwksFile(PathBuf),
    /// A JWKS document served by the identity provider, fetched at start and then every
    /// `refresh` (the last good set is kept while it cannot be fetched).
    JwksUrl { url: Url, refresh: Duration },
    /// A shared secret (HS256): local development only.
    Hs256(Vec<u8>),
}

/// What a rule asks of the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Public,
    Authenticated,
    Customer,
    Scope(String),
}

/// One rule of `AUTH_POLICIES`: `route METHODS requirement`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRule {
    pub route: String,
    /// `None`: every method (`*`).
    pub methods: Option<Vec<Method>>,
    pub requirement: Requirement,
}

impl PolicyRule {
    /// Parses `AUTH_POLICIES`: rules separated by `;`, each `route METHODS requirement`, e.g.
    /// `catalog GET,HEAD public; catalog * scope:catalog:write; orders * customer`.
    pub fn parse_all(spec: &str) -> Result<Vec<Self>, String> {
        spec.split(';')
            .map(str::trim)
            .filter(|rule| !rule.is_empty())
            .map(|rule| {
                let words: Vec<&str> = rule.split_whitespace().collect();
                let [route, methods, requirement] = words[..] else {
                    return Err(format!("`{rule}` is not `route METHODS requirement`"));
                };
                let methods = if methods == "*" {
                    None
                } else {
                    Some(
                        methods
                            .split(',')
                            .map(|m| {
                                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                                    .map_err(|_| format!("`{m}` is not a method"))
                            })
                            .collect::<Result<Vec<_>, _>>()?,
                    )
                };
                let requirement = match requirement {
                    "public" => Requirement::Public,
                    "authenticated" => Requirement::Authenticated,
                    "customer" => Requirement::Customer,
                    other => match other.strip_prefix("scope:") {
                        Some(scope) if !scope.is_empty() => Requirement::Scope(scope.to_owned()),
                        _ => {
                            return Err(format!(
                                "`{other}` is not public, authenticated, customer or scope:<name>"
                            ));
                        }
                    },
                };
                Ok(Self {
                    route: route.to_owned(),
                    methods,
                    requirement,
                })
            })
            .collect()
    }

    fn matches(&self, route: &str, method: &Method) -> bool {
        self.route == route
            && self
                .methods
                .as_ref()
                .is_none_or(|methods| methods.contains(method))
    }
}

/// Authentication settings, parsed (see [`crate::config`]).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub keys: KeySource,
    pub issuer: String,
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    pub policies: Vec<PolicyRule>,
}

/// One key that may verify tokens, with the only algorithm it verifies.
struct VerifyingKey {
    kid: Option<String>,
    key: DecodingKey,
    validation: Validation,
}

/// The verified caller, as the headers that tell the upstream.
#[derive(Debug, Clone)]
pub struct Identity {
    pub subject: HeaderValue,
    pub scopes: HeaderValue,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<Scopes>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Scopes {
    List(Vec<String>),
    Spaced(String),
}

impl Claims {
    fn scopes(&self) -> Vec<&str> {
        let mut scopes: Vec<&str> = self
            .scope
            .as_deref()
            .unwrap_or_default()
            .split_ascii_whitespace()
            .collect();
        match &self.scp {
            Some(Scopes::List(list)) => scopes.extend(list.iter().map(String::as_str)),
            Some(Scopes::Spaced(spaced)) => scopes.extend(spaced.split_ascii_whitespace()),
            None => {}
        }
        scopes
    }
}

/// Verifies tokens and applies the policies; `None` in [`crate::state::Gateway`] when
/// authentication is off.
pub struct Authenticator {
    config: AuthConfig,
    keys: RwLock<Arc<Vec<VerifyingKey>>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuer", &self.config.issuer)
            .field("audience", &self.config.audience)
            .field("policies", &self.config.policies)
            .finish_non_exhaustive()
    }
}

const CHALLENGE: &str = identity::CHALLENGE;

impl Authenticator {
    /// Loads the keys (reads the file, fetches the URL); an error stops the start.
    pub async fn load(config: AuthConfig) -> anyhow::Result<Self> {
        let keys = match &config.keys {
            KeySource::Hs256(secret) => {
                tracing::warn!(
                    "AUTH_HS256_SECRET: tokens are verified with a shared secret, for local development only; use AUTH_JWKS_FILE or AUTH_JWKS_URL elsewhere"
                );
                vec![VerifyingKey {
                    kid: None,
                    key: DecodingKey::from_secret(secret),
                    validation: validation(Algorithm::HS256, &config),
                }]
            }
            KeySource::JwksFile(path) => {
                let document = std::fs::read(path).map_err(|error| {
                    anyhow::anyhow!("AUTH_JWKS_FILE: cannot read {}: {error}", path.display())
                })?;
                keys_of(&document, &config).map_err(|e| anyhow::anyhow!("AUTH_JWKS_FILE: {e}"))?
            }
            KeySource::JwksUrl { url, .. } => fetch(url, &config)
                .await
                .map_err(|e| anyhow::anyhow!("AUTH_JWKS_URL: {e}"))?,
        };
        tracing::info!(keys = keys.len(), issuer = %config.issuer, audience = %config.audience, "token verification on");
        Ok(Self {
            config,
            keys: RwLock::new(Arc::new(keys)),
        })
    }

    /// How often the keys are fetched again (only for `AUTH_JWKS_URL`).
    pub fn refresh_interval(&self) -> Option<Duration> {
        match &self.config.keys {
            KeySource::JwksUrl { refresh, .. } => Some(*refresh),
            _ => None,
        }
    }

    /// Fetches the JWKS again; on failure keeps the keys it has (and logs why).
    pub async fn refresh(&self) {
        let KeySource::JwksUrl { url, .. } = &self.config.keys else {
            return;
        };
        match fetch(url, &self.config).await {
            Ok(keys) => {
                *self.keys.write().expect("never poisoned") = Arc::new(keys);
            }
            Err(error) => {
                tracing::warn!(%error, "the JWKS could not be fetched again; keeping the last keys");
            }
        }
    }

    /// Applies the policy for `route` and `method` to the request's token: the identity to
    /// pass upstream (none for a public request without a token), or the problem to answer.
    pub fn authorize(
        &self,
        route: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<Option<Identity>, Problem> {
        let requirement = self
            .config
            .policies
            .iter()
            .find(|rule| rule.matches(route, method))
            .map_or(&Requirement::Authenticated, |rule| &rule.requirement);
        let Some(token) = bearer(headers)? else {
            if *requirement == Requirement::Public {
                return Ok(None);
            }
            return Err(Problem::unauthorized(
                CHALLENGE,
                "this needs a bearer token: `Authorization: Bearer <token>`",
            ));
        };
        let claims = self.verify(token)?;
        let scopes = claims.scopes();
        match requirement {
            Requirement::Customer if uuid::Uuid::parse_str(&claims.sub).is_err() => {
                return Err(Problem::forbidden(
                    "this is for customers: the token's subject is not a customer id",
                ));
            }
            Requirement::Scope(scope) if !scopes.contains(&scope.as_str()) => {
                let mut problem =
                    Problem::forbidden(format!("the token does not grant the scope `{scope}`"));
                problem.www_authenticate = Some(Box::new(
                    format!(
                        "Bearer realm=\"dockyard\", error=\"insufficient_scope\", scope=\"{scope}\""
                    )
                    .into(),
                ));
                return Err(problem);
            }
            _ => {}
        }
        let invalid = || invalid_token("the token's subject or scopes are not printable ASCII");
        Ok(Some(Identity {
            subject: HeaderValue::from_str(&claims.sub).map_err(|_| invalid())?,
            scopes: HeaderValue::from_str(&scopes.join(" ")).map_err(|_| invalid())?,
        }))
    }

    fn verify(&self, token: &str) -> Result<Claims, Problem> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| invalid_token(&format!("the token is malformed ({e})")))?;
        let keys = Arc::clone(&self.keys.read().expect("never poisoned"));
        let key = match &header.kid {
            Some(kid) => keys.iter().find(|k| k.kid.as_deref() == Some(kid.as_str())),
            None if keys.len() == 1 => keys.first(),
            None => None,
        }
        .ok_or_else(|| invalid_token("the token names no key this gateway knows (`kid`)"))?;
        jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation)
            .map(|data| data.claims)
            .map_err(|error| {
                use jsonwebtoken::errors::ErrorKind;
                let reason = match error.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::ImmatureSignature => "the token is not valid yet (`nbf`)",
                    ErrorKind::InvalidAudience => "the token is for another audience",
                    ErrorKind::InvalidIssuer => "the token is from another issuer",
                    ErrorKind::InvalidAlgorithm => "the token's algorithm is not its key's",
                    ErrorKind::InvalidSignature => "the token's signature does not verify",
                    ErrorKind::MissingRequiredClaim(_) => {
                        "the token lacks a required claim (exp, iss, aud, sub)"
                    }
                    _ => "the token is invalid",
                };
                invalid_token(reason)
            })
    }
}

fn invalid_token(reason: &str) -> Problem {
    Problem::unauthorized(
        format!(
            "Bearer realm=\"dockyard\", error=\"invalid_token\", error_description=\"{reason}\""
        ),
        reason.to_owned(),
    )
}

/// The bearer token of `Authorization`, if any; `401` for another scheme or several headers.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, Problem> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid_token("send one Authorization header"));
    }
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty())
        .ok_or_else(|| invalid_token("expected `Authorization: Bearer <token>`"))?;
    Ok(Some(token))
}

fn validation(algorithm: Algorithm, config: &AuthConfig) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = config.leeway.as_secs();
    validation.validate_nbf = true;
    validation.set_issuer(&[&config.issuer]);
    validation.set_audience(&[&config.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation
}

async fn fetch(url: &Url, config: &AuthConfig) -> anyhow::Result<Vec<VerifyingKey>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let document = client
        .get(url.clone())
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    keys_of(&document, config)
}

/// The signing keys of a JWKS document. Symmetric keys are refused (a JWKS is public);
/// encryption keys are left out.
fn keys_of(document: &[u8], config: &AuthConfig) -> anyhow::Result<Vec<VerifyingKey>> {
    let set: JwkSet = serde_json::from_slice(document)
        .map_err(|e| anyhow::anyhow!("not a JWKS document ({e})"))?;
    let mut kids = HashSet::new();
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            anyhow::bail!("a symmetric (`oct`) key has no place in a JWKS of public keys");
        }
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            continue;
        }
        let Some(algorithm) = algorithm_of(jwk) else {
            continue;
        };
        if let Some(kid) = &jwk.common.key_id
            && !kids.insert(kid.clone())
        {
            anyhow::bail!("two keys have the kid `{kid}`");
        }
        keys.push(VerifyingKey {
            kid: jwk.common.key_id.clone(),
            key: DecodingKey::from_jwk(jwk)?,
            validation: validation(algorithm, config),
        });
    }
    if keys.is_empty() {
        tracing::warn!("the JWKS has no signing key: every token will be refused");
    }
    Ok(keys)
}

/// The one algorithm a key verifies: its `alg`, else the usual one for its type.
fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    use KeyAlgorithm as K;
    match (jwk.common.key_algorithm, &jwk.algorithm) {
        (Some(K::RS256) | None, AlgorithmParameters::RSA(_)) => Some(Algorithm::RS256),
        (Some(K::RS384), AlgorithmParameters::RSA(_)) => Some(Algorithm::RS384),
        (Some(K::RS512), AlgorithmParameters::RSA(_)) => Some(Algorithm::RS512),
        (Some(K::PS256), AlgorithmParameters::RSA(_)) => Some(Algorithm::PS256),
        (Some(K::PS384), AlgorithmParameters::RSA(_)) => Some(Algorithm::PS384),
        (Some(K::PS512), AlgorithmParameters::RSA(_)) => Some(Algorithm::PS512),
        (Some(K::ES256) | None, AlgorithmParameters::EllipticCurve(ec))
            if ec.curve == EllipticCurve::P256 =>
        {
            Some(Algorithm::ES256)
        }
        (Some(K::ES384) | None, AlgorithmParameters::EllipticCurve(ec))
            if ec.curve == EllipticCurve::P384 =>
        {
            Some(Algorithm::ES384)
        }
        (Some(K::EdDSA) | None, AlgorithmParameters::OctetKeyPair(okp))
            if okp.curve == EllipticCurve::Ed25519 =>
        {
            Some(Algorithm::EdDSA)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_name_what_is_wrong() {
        let rules = PolicyRule::parse_all(
            "catalog GET,head public; catalog * scope:catalog:write;orders * customer",
        )
        .unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[0].methods, Some(vec![Method::GET, Method::HEAD]));
        assert_eq!(
            rules[1].requirement,
            Requirement::Scope("catalog:write".into())
        );
        assert!(rules[2].matches("orders", &Method::DELETE));
        assert!(!rules[0].matches("catalog", &Method::POST));
        for bad in [
            "catalog GET",
            "catalog GET public extra",
            "catalog G(ET public",
            "catalog * scope:",
            "catalog * admin",
        ] {
            assert!(PolicyRule::parse_all(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bearer_tokens_are_read_strictly() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers).unwrap(), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc"),
        );
        assert_eq!(bearer(&headers).unwrap(), Some("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers).unwrap_err().status, 401);
        headers.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(bearer(&headers).unwrap_err().status, 401);
    }
}

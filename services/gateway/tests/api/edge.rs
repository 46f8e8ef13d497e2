//! Security at the edge, through the real gateway: bearer tokens and per-route policies,
//! identity headers only from the gateway, path normalisation before routing, upstreams'
//! internal paths off the public port, and the gateway's metrics on the admin listener only.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dockyard_testkit::{Grant, TokenIssuer};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{TestGateway, Upstream, gateway, gateway_with, upstream};

const ISSUER: &str = "https://id.test";
const AUDIENCE: &str = "dockyard";
const CUSTOMER: &str = "0196b3a0-0000-7000-8000-000000000001";
const RSA_KEY: &[u8] = include_bytes!("fixtures/test-only-rsa-key.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("fixtures/test-only-rsa-public.pem");
const RSA_JWKS: &str = include_str!("fixtures/test-only-rsa.jwks.json");

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A JWKS file with the issuer's ES256 key and the test RSA key; removed on drop.
struct JwksFile(std::path::PathBuf);

impl JwksFile {
    fn new(issuer: &TokenIssuer) -> Self {
        let mut keys = issuer.jwks()["keys"].as_array().unwrap().clone();
        let rsa: Value = serde_json::from_str(RSA_JWKS).unwrap();
        keys.extend(rsa["keys"].as_array().unwrap().iter().cloned());
        let path = std::env::temp_dir().join(format!("jwks-{}.json", uuid::Uuid::new_v4()));
        std::fs::write(&path, json!({ "keys": keys }).to_string()).unwrap();
        Self(path)
    }
}

impl Drop for JwksFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn grant<'a>(subject: &'a str, scopes: &'a [&'a str]) -> Grant<'a> {
    Grant {
        issuer: ISSUER,
        audience: AUDIENCE,
        subject,
        scopes,
        ttl: Duration::from_secs(300),
    }
}

fn claims(overrides: &[(&str, Value)]) -> Value {
    let mut claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": CUSTOMER, "scope": "catalog:write",
        "iat": now(), "nbf": now(), "exp": now() + 300,
    });
    for (name, value) in overrides {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(*name);
        } else {
            claims[*name] = value.clone();
        }
    }
    claims
}

fn rs256(claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("test-rsa".into());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(RSA_KEY).unwrap(),
    )
    .unwrap()
}

/// A gateway verifying the tokens of a fresh issuer (and of the test RSA key), with
/// `policies`, in front of two echoing upstreams, routes `catalog` and `orders`.
struct Secured {
    issuer: TokenIssuer,
    catalog: Upstream,
    gateway: TestGateway,
    _orders: Upstream,
    _jwks: JwksFile,
}

async fn secured(policies: &str) -> Secured {
    let issuer = TokenIssuer::generate();
    let jwks = JwksFile::new(&issuer);
    let (catalog, orders) = (
        upstream("catalog", "127.0.0.2", false),
        upstream("orders", "127.0.0.3", false),
    );
    let gateway = gateway_with(
        &format!("/api/catalog={};/api/orders={}", catalog.url, orders.url),
        &[
            ("AUTH_JWKS_FILE", jwks.0.to_str().unwrap()),
            ("AUTH_ISSUER", ISSUER),
            ("AUTH_AUDIENCE", AUDIENCE),
            ("AUTH_POLICIES", policies),
        ],
    )
    .await;
    Secured {
        issuer,
        catalog,
        gateway,
        _orders: orders,
        _jwks: jwks,
    }
}

const POLICIES: &str = "catalog GET,HEAD public; catalog * scope:catalog:write; orders * customer";

async fn post(url: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().post(url).json(&json!({"x": 1}));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn writes_need_a_token_granting_the_scope_and_the_identity_comes_only_from_the_gateway() {
    // Every part bound: the upstreams and the JWKS file live as long as the test.
    let Secured {
        issuer,
        catalog,
        gateway,
        _orders,
        _jwks,
    } = secured(POLICIES).await;
    let products = format!("{}/api/catalog/products", gateway.url);

    // A public read, with identity headers forged by the client: they never arrive.
    let read: Value = reqwest::Client::new()
        .get(&products)
        .header("x-identity-subject", "admin")
        .header("X-Identity-Scopes", "catalog:write")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let headers = read["headers"].as_object().unwrap();
    assert!(
        !headers.keys().any(|name| name.starts_with("x-identity-")),
        "{headers:?}"
    );

    // No token: 401 with a challenge, problem+json, and the catalog never sees the write.
    let hits = catalog.hits();
    let anonymous = post(&products, None).await;
    assert_eq!(anonymous.status(), 401);
    assert!(
        anonymous.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"),
    );
    assert_eq!(
        anonymous.headers()["content-type"],
        "application/problem+json"
    );
    // A valid token without the scope: 403.
    let reader = issuer.token(&grant(CUSTOMER, &["orders:read"]));
    assert_eq!(post(&products, Some(&reader)).await.status(), 403);
    assert_eq!(catalog.hits(), hits, "no refused write reached the catalog");

    // With the scope (ES256 and RS256 keys alike): through, as the gateway's identity.
    let writer = issuer.token(&grant("editor-7", &["catalog:write", "orders:read"]));
    for token in [writer, rs256(&claims(&[("sub", json!("editor-7"))]))] {
        let response = post(&products, Some(&token)).await;
        assert_eq!(response.status(), 200);
        let seen: Value = response.json().await.unwrap();
        assert_eq!(seen["headers"]["x-identity-subject"], "editor-7");
        assert!(
            seen["headers"]["x-identity-scopes"]
                .as_str()
                .unwrap()
                .split(' ')
                .any(|s| s == "catalog:write")
        );
        assert!(
            seen["headers"].get("authorization").is_none(),
            "the token stays at the gateway"
        );
    }
}

#[tokio::test]
async fn expired_foreign_tampered_and_confused_tokens_are_refused() {
    // Every part bound: the upstreams and the JWKS file live as long as the test.
    let Secured {
        issuer,
        catalog,
        gateway,
        _orders,
        _jwks,
    } = secured(POLICIES).await;
    let products = format!("{}/api/catalog/products", gateway.url);

    let good = issuer.sign(&claims(&[]));
    let tampered = {
        let parts: Vec<&str> = good.split('.').collect();
        let payload = base64_url(&claims(&[("sub", json!("someone-else"))]).to_string());
        format!("{}.{payload}.{}", parts[0], parts[2])
    };
    let unsigned = format!(
        "{}.{}.",
        base64_url(r#"{"alg":"none","typ":"JWT"}"#),
        base64_url(&claims(&[]).to_string())
    );
    // HS/RS confusion: HS256 "signed" with the RSA key's public PEM, naming the RSA key.
    let confused = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("test-rsa".into());
        jsonwebtoken::encode(&header, &claims(&[]), &EncodingKey::from_secret(RSA_PUBLIC)).unwrap()
    };
    let cases = [
        (
            "expired",
            issuer.sign(&claims(&[("exp", json!(now() - 120))])),
        ),
        (
            "not yet valid",
            issuer.sign(&claims(&[("nbf", json!(now() + 600))])),
        ),
        (
            "wrong audience",
            issuer.sign(&claims(&[("aud", json!("billing"))])),
        ),
        (
            "wrong issuer",
            issuer.sign(&claims(&[("iss", json!("https://evil.test"))])),
        ),
        ("no subject", issuer.sign(&claims(&[("sub", Value::Null)]))),
        ("no expiry", issuer.sign(&claims(&[("exp", Value::Null)]))),
        ("unknown key", TokenIssuer::generate().sign(&claims(&[]))),
        ("tampered", tampered),
        ("alg none", unsigned),
        ("HS256 with the RSA public key", confused),
        ("garbage", "not.a.token".to_owned()),
    ];
    let hits = catalog.hits();
    for (case, token) in cases {
        let response = post(&products, Some(&token)).await;
        assert_eq!(response.status(), 401, "{case}");
        let challenge = response.headers()["www-authenticate"].to_str().unwrap();
        assert!(challenge.contains("invalid_token"), "{case}: {challenge}");
    }
    // A presented token must be valid on a public route too; another scheme is not a token.
    let expired = issuer.sign(&claims(&[("exp", json!(now() - 120))]));
    let read = reqwest::Client::new()
        .get(&products)
        .bearer_auth(expired)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 401);
    let basic = reqwest::Client::new()
        .post(&products)
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
    assert_eq!(catalog.hits(), hits, "nothing refused reached the catalog");
    // Within the leeway (30 s by default) a just-expired token still passes.
    let just_expired = issuer.sign(&claims(&[("exp", json!(now() - 5))]));
    assert_eq!(post(&products, Some(&just_expired)).await.status(), 200);
}

fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

#[tokio::test]
async fn orders_need_a_customer_and_unmatched_routes_need_a_token() {
    // No rule for the catalog: any valid token, and only a valid token, passes.
    let Secured {
        issuer,
        gateway,
        catalog: _catalog,
        _orders,
        _jwks,
    } = secured("orders * customer").await;
    let client = reqwest::Client::new();
    let order = format!("{}/api/orders/orders", gateway.url);

    let service = issuer.token(&grant("billing-service", &[]));
    assert_eq!(post(&order, Some(&service)).await.status(), 403);
    let customer = issuer.token(&grant(CUSTOMER, &[]));
    let placed: Value = post(&order, Some(&customer)).await.json().await.unwrap();
    assert_eq!(placed["headers"]["x-identity-subject"], CUSTOMER);
    assert_eq!(placed["headers"]["x-identity-scopes"], "");

    let catalog_url = format!("{}/api/catalog/products", gateway.url);
    let anonymous = client.get(&catalog_url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let known = client.get(&catalog_url).bearer_auth(&service).send().await;
    assert_eq!(known.unwrap().status(), 200);
}

#[tokio::test]
async fn a_shared_secret_verifies_hs256_tokens_for_local_development() {
    let (catalog, orders) = (
        upstream("catalog", "127.0.0.2", false),
        upstream("orders", "127.0.0.3", false),
    );
    let secret = "a-local-development-secret-of-32+bytes";
    let gateway = gateway_with(
        &format!("/api/catalog={};/api/orders={}", catalog.url, orders.url),
        &[
            ("AUTH_HS256_SECRET", secret),
            ("AUTH_ISSUER", ISSUER),
            ("AUTH_AUDIENCE", AUDIENCE),
            ("AUTH_POLICIES", POLICIES),
        ],
    )
    .await;
    let products = format!("{}/api/catalog/products", gateway.url);
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(&[]),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    assert_eq!(post(&products, Some(&hs256)).await.status(), 200);
    let other_secret = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(&[]),
        &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
    )
    .unwrap();
    assert_eq!(post(&products, Some(&other_secret)).await.status(), 401);
    // An asymmetric token against the shared secret: its algorithm is not the key's.
    assert_eq!(
        post(&products, Some(&rs256(&claims(&[])))).await.status(),
        401
    );
}

/// Sends `GET {path}` as written (no client-side normalisation) and returns the status.
async fn raw_get(gateway: &str, path: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(gateway.trim_start_matches("http://"))
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("{path}: not an HTTP answer: {answer}"))
}

#[tokio::test]
async fn upstream_internals_are_not_routed_under_any_spelling() {
    let catalog = upstream("catalog", "127.0.0.2", false);
    let (url, gateway) = gateway(&format!("/api/catalog={}", catalog.url), &[]).await;

    for path in [
        "/api/catalog/metrics",
        "/api/catalog/metrics/",
        "/api/catalog/health/ready",
        "/api/catalog/health/live",
        "/api/catalog/openapi.json",
        "/api/catalog//metrics",
        "/api/catalog/./metrics",
        "/api/catalog/x/../metrics",
        "/api/catalog/%2e%2e/catalog/metrics",
        "/api/catalog/%6detrics",
        "/api/catalog/x\\..\\metrics",
        "/api/catalog\\metrics",
        "/metrics",
    ] {
        assert_eq!(raw_get(&url, path).await, 404, "{path}");
    }
    for path in [
        "/api/catalog/%2fmetrics",
        "/api/catalog/%5Cmetrics",
        "/api/../../metrics",
    ] {
        assert_eq!(raw_get(&url, path).await, 400, "{path}");
    }
    assert_eq!(catalog.hits(), 0, "none of them reached the catalog");

    // What is routed is the normalised path, and that is what the upstream gets.
    let mut stream = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    stream
        .write_all(b"GET /api/x/../catalog//products/./%31 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""path":"/products/1""#), "{answer}");

    // The gateway's own metrics: on the admin listener, never on the public port.
    assert!(gateway.metrics().await.contains("dockyard_gateway_"));
}

#[tokio::test]
async fn internal_paths_are_configurable_and_metrics_need_no_admin_token() {
    let catalog = upstream("catalog", "127.0.0.2", false);
    let gateway = gateway_with(
        &format!("/api/catalog={}", catalog.url),
        &[("INTERNAL_PATHS", "/private"), ("ADMIN_TOKEN", "")],
    )
    .await;
    assert_eq!(raw_get(&gateway.url, "/api/catalog/metrics").await, 200);
    assert_eq!(raw_get(&gateway.url, "/api/catalog/private/x").await, 404);
    assert!(gateway.metrics().await.contains("dockyard_gateway_"));
    // Without ADMIN_TOKEN the admin API is off; the metrics are still served.
    let upstreams = reqwest::get(format!("{}/upstreams", gateway.admin))
        .await
        .unwrap();
    assert_eq!(upstreams.status(), 404);
}

/// A JWKS served over HTTP whose keys the test can replace; while they are `null` it answers
/// 503, as an identity provider that is down does. Counts the fetches it answers.
fn jwks_server(
    keys: std::sync::Arc<std::sync::Mutex<Value>>,
) -> (
    String,
    actix_web::dev::ServerHandle,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use actix_web::{App, HttpResponse, HttpServer, web};
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&fetches);
    let server = HttpServer::new(move || {
        let (keys, counted) = (
            std::sync::Arc::clone(&keys),
            std::sync::Arc::clone(&counted),
        );
        App::new().route(
            "/jwks.json",
            web::get().to(move || {
                let body = keys.lock().unwrap().clone();
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    if body.is_null() {
                        HttpResponse::ServiceUnavailable().finish()
                    } else {
                        HttpResponse::Ok().json(body)
                    }
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.4", 0))
    .unwrap();
    let url = format!("http://127.0.0.4:{}/jwks.json", server.addrs()[0].port());
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (url, handle, fetches)
}

#[tokio::test]
async fn keys_from_a_jwks_url_are_fetched_again_so_a_rotated_key_is_accepted() {
    let (old, new) = (TokenIssuer::generate(), TokenIssuer::generate());
    let published = std::sync::Arc::new(std::sync::Mutex::new(old.jwks()));
    let (jwks_url, idp, fetches) = jwks_server(std::sync::Arc::clone(&published));
    let (catalog, orders) = (
        upstream("catalog", "127.0.0.2", false),
        upstream("orders", "127.0.0.3", false),
    );
    let gateway = gateway_with(
        &format!("/api/catalog={};/api/orders={}", catalog.url, orders.url),
        &[
            ("AUTH_JWKS_URL", jwks_url.as_str()),
            ("AUTH_JWKS_REFRESH_SECS", "1"),
            ("AUTH_ISSUER", ISSUER),
            ("AUTH_AUDIENCE", AUDIENCE),
            ("AUTH_POLICIES", POLICIES),
        ],
    )
    .await;
    let products = format!("{}/api/catalog/products", gateway.url);
    let old_token = old.token(&grant(CUSTOMER, &["catalog:write"]));
    let new_token = new.token(&grant(CUSTOMER, &["catalog:write"]));
    assert_eq!(post(&products, Some(&old_token)).await.status(), 200);
    assert_eq!(post(&products, Some(&new_token)).await.status(), 401);

    *published.lock().unwrap() = new.jwks();
    crate::helpers::eventually(5, "the rotated key is fetched", || async {
        post(&products, Some(&new_token)).await.status() == 200
    })
    .await;
    assert_eq!(post(&products, Some(&old_token)).await.status(), 401);

    // While the JWKS cannot be fetched, the last good keys stay. The gateway fetches once a
    // second, one fetch at a time: when the third fetch from here arrives, the second (begun
    // after the keys went away, so answered 503) has been handled.
    let before_failure = fetches.load(std::sync::atomic::Ordering::SeqCst);
    *published.lock().unwrap() = Value::Null;
    crate::helpers::eventually(10, "the failing JWKS is fetched again", || async {
        fetches.load(std::sync::atomic::Ordering::SeqCst) >= before_failure + 3
    })
    .await;
    assert_eq!(post(&products, Some(&new_token)).await.status(), 200);
    idp.stop(false).await;
}

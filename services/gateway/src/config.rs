//! Gateway settings, from the environment only: [`GatewayEnv`] is what the environment says
//! (read by serde), [`GatewayConfig`] the same parsed once into typed values — routes,
//! durations, pool kinds, networks, policies — so that nothing after start-up parses a string,
//! and a bad value stops the process at start with the variable's name.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use dockyard_resilience::{BreakerConfig, BudgetConfig};
use dockyard_runtime::{
    config::{ConfigError, from_env},
    server::HttpConfig,
};
use ipnet::IpNet;
use serde::Deserialize;
use url::Url;

use crate::{
    auth::{AuthConfig, KeySource, PolicyRule},
    connections::{self, Limits},
    paths::InternalPaths,
    pool::{HealthPolicy, PoolKind},
    routes::RouteSpec,
    service::CanaryKeys,
};

/// From `ROUTES`, `GREEN_ROUTES`, `CANARY_*`, `DISCOVERY_*`, `HEALTH_CHECK_*`, `UPSTREAM_*`,
/// `EJECT_*`, `BREAKER_*`, `RETRY_*`, `RATE_LIMIT_*`, `TRUSTED_PROXIES`, `MAX_BODY_BYTES`,
/// `HEADER_TIMEOUT`, `KEEPALIVE_IDLE_TIMEOUT`, `BODY_TIMEOUT`, `MAX_CONNECTIONS`, `AUTH_*`,
/// `INTERNAL_PATHS`, `ADMIN_*`.
#[derive(Debug, Clone, Deserialize)]
pub struct GatewayEnv {
    /// The stable (blue) pool of every route: `prefix=url[,url…][;prefix=url…]`, e.g.
    /// `/api/catalog=http://127.0.0.1:8081,http://127.0.0.1:8083;/api/orders=http://127.0.0.1:8082`.
    pub routes: String,
    /// Optional green pools, same syntax, for routes of `ROUTES`.
    #[serde(default)]
    pub green_routes: String,
    /// Which of blue and green takes the traffic at start.
    #[serde(default = "default_active_pool")]
    pub active_pool: String,
    /// Optional canary pools, same syntax, for routes of `ROUTES`.
    #[serde(default)]
    pub canary_routes: String,
    /// Percentage (0–100) of clients sent to a route's canary pool.
    #[serde(default)]
    pub canary_weight: u8,
    /// `always` / `never` in this header forces the canary choice.
    #[serde(default = "default_canary_header")]
    pub canary_header: String,
    /// The client key that keeps a client on one side of the split: this header…
    #[serde(default = "default_canary_key_header")]
    pub canary_key_header: String,
    /// …or else this cookie. Without either, each request is split at random.
    #[serde(default = "default_canary_key_cookie")]
    pub canary_key_cookie: String,
    /// Hostnames in upstream URLs are resolved again this often; every address is an instance.
    #[serde(default = "default_discovery_interval_ms")]
    pub discovery_interval_ms: u64,
    /// A DNS server (`ip:port`) to ask instead of the system resolver (e.g. Consul's DNS).
    #[serde(default)]
    pub discovery_nameserver: Option<SocketAddr>,
    /// Active health checks: this path on every instance…
    #[serde(default = "default_health_check_path")]
    pub health_check_path: String,
    /// …this often (`0` turns active checks off: instances take traffic at once)…
    #[serde(default = "default_health_check_interval_ms")]
    pub health_check_interval_ms: u64,
    /// …each within this time.
    #[serde(default = "default_health_check_timeout_ms")]
    pub health_check_timeout_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    pub upstream_connect_timeout_ms: u64,
    /// One attempt, from sending the request to receiving the response head.
    #[serde(default = "default_try_timeout_ms")]
    pub upstream_try_timeout_ms: u64,
    /// All attempts together, back-off included.
    #[serde(default = "default_timeout_ms")]
    pub upstream_timeout_ms: u64,
    /// Attempts per request, each on a different instance (retries only for idempotent
    /// requests and POSTs with an `Idempotency-Key`).
    #[serde(default = "default_attempts")]
    pub upstream_attempts: usize,
    /// While no instance of a pool accepts connections (a restart, a deploy), a request that
    /// may be retried waits up to this long for one to, trying again with back-off, before
    /// the gateway answers 502. A refused connection never reached the service, so these
    /// tries cost no attempt and no retry budget.
    #[serde(default = "default_wait_for_instance_ms")]
    pub upstream_wait_for_instance_ms: u64,
    /// Base of the jittered back-off between attempts.
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// Retries allowed per request, as a percentage (the retry budget)…
    #[serde(default = "default_retry_budget_percent")]
    pub retry_budget_percent: u8,
    /// …plus this many retries per second whatever the traffic.
    #[serde(default = "default_retry_min_per_sec")]
    pub retry_min_per_sec: u32,
    /// Consecutive failures (connect errors, time-outs, 5xx) that eject an instance.
    #[serde(default = "default_eject_after")]
    pub eject_after_failures: u32,
    /// First ejection time; doubled on each repeat, up to 16 times as long.
    #[serde(default = "default_eject_for_ms")]
    pub eject_for_ms: u64,
    /// The circuit breaker of each pool opens when, over the last `BREAKER_WINDOW` requests
    /// (at least `BREAKER_MIN_CALLS`), `BREAKER_FAILURE_PERCENT` failed…
    #[serde(default = "default_breaker_window")]
    pub breaker_window: usize,
    #[serde(default = "default_breaker_min_calls")]
    pub breaker_min_calls: usize,
    #[serde(default = "default_breaker_failure_percent")]
    pub breaker_failure_percent: u8,
    /// …and stays open this long (doubling on repeated trips, up to 12 times as long).
    #[serde(default = "default_breaker_open_ms")]
    pub breaker_open_ms: u64,
    /// Requests per second per client (`0`: no limit)…
    #[serde(default)]
    pub rate_limit_per_sec: u32,
    /// …with bursts up to this many (default: one second's worth).
    #[serde(default)]
    pub rate_limit_burst: Option<u32>,
    /// Comma-separated CIDRs of proxies in front of the gateway; from them, and only them,
    /// the client address is taken from `X-Forwarded-For`.
    #[serde(default)]
    pub trusted_proxies: String,
    /// Largest request body accepted (413 above).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// A request head must arrive whole within this of its first byte (of the connection's
    /// start, for its first request): `408` and close past it (`10s`, `500ms`).
    #[serde(with = "humantime_serde", default = "default_header_timeout")]
    pub header_timeout: Duration,
    /// A kept-alive connection with no request is closed after this.
    #[serde(with = "humantime_serde", default = "default_keepalive_idle_timeout")]
    pub keepalive_idle_timeout: Duration,
    /// A request body that stalls (no byte while the gateway waits for one) is cut after this.
    #[serde(with = "humantime_serde", default = "default_body_timeout")]
    pub body_timeout: Duration,
    /// Open client connections at most; by default derived from the process's descriptor
    /// limit ([`crate::connections::budget`]).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Bearer tokens are verified with the keys of this JWKS file…
    #[serde(default)]
    pub auth_jwks_file: Option<PathBuf>,
    /// …or of this JWKS URL (fetched at start, then every `AUTH_JWKS_REFRESH_SECS`)…
    #[serde(default)]
    pub auth_jwks_url: Option<String>,
    #[serde(default = "default_jwks_refresh_secs")]
    pub auth_jwks_refresh_secs: u64,
    /// …or, for local development only, with this HS256 secret (at least 32 bytes).
    #[serde(default)]
    pub auth_hs256_secret: Option<String>,
    /// The `iss` and `aud` every token must carry (required with verification on).
    #[serde(default)]
    pub auth_issuer: Option<String>,
    #[serde(default)]
    pub auth_audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway_secs")]
    pub auth_leeway_secs: u64,
    /// Per-route rules, `route METHODS requirement; …` (see [`crate::auth`]).
    #[serde(default)]
    pub auth_policies: String,
    /// Upstream paths never reachable through a route (comma-separated; empty: none).
    #[serde(default = "default_internal_paths")]
    pub internal_paths: String,
    /// The admin API and the gateway's metrics listen here (loopback by default)…
    #[serde(default = "default_admin_host")]
    pub admin_host: String,
    #[serde(default = "default_admin_port")]
    pub admin_port: u16,
    /// A non-loopback `ADMIN_HOST` is refused unless this is `true`.
    #[serde(default)]
    pub admin_allow_remote: bool,
    /// The admin API (`/upstreams`) answers only when a bearer token is set.
    #[serde(default)]
    pub admin_token: Option<String>,
}

fn default_jwks_refresh_secs() -> u64 {
    300
}
fn default_leeway_secs() -> u64 {
    30
}
fn default_internal_paths() -> String {
    "/metrics,/health,/openapi.json".to_owned()
}

fn default_active_pool() -> String {
    "blue".to_owned()
}
fn default_canary_header() -> String {
    "x-canary".to_owned()
}
fn default_canary_key_header() -> String {
    "x-client-id".to_owned()
}
fn default_canary_key_cookie() -> String {
    "dockyard_client".to_owned()
}
fn default_discovery_interval_ms() -> u64 {
    5_000
}
fn default_health_check_path() -> String {
    "/health/ready".to_owned()
}
fn default_health_check_interval_ms() -> u64 {
    2_000
}
fn default_health_check_timeout_ms() -> u64 {
    1_000
}
fn default_connect_timeout_ms() -> u64 {
    500
}
fn default_try_timeout_ms() -> u64 {
    10_000
}
fn default_timeout_ms() -> u64 {
    15_000
}
fn default_attempts() -> usize {
    3
}
fn default_wait_for_instance_ms() -> u64 {
    3_000
}
fn default_retry_backoff_ms() -> u64 {
    5
}
fn default_retry_budget_percent() -> u8 {
    20
}
fn default_retry_min_per_sec() -> u32 {
    10
}
fn default_eject_after() -> u32 {
    3
}
fn default_eject_for_ms() -> u64 {
    5_000
}
fn default_breaker_window() -> usize {
    20
}
fn default_breaker_min_calls() -> usize {
    10
}
fn default_breaker_failure_percent() -> u8 {
    50
}
fn default_breaker_open_ms() -> u64 {
    5_000
}
fn default_max_body_bytes() -> usize {
    1024 * 1024
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_keepalive_idle_timeout() -> Duration {
    Duration::from_secs(15)
}

fn default_body_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_admin_host() -> String {
    "127.0.0.1".to_owned()
}
fn default_admin_port() -> u16 {
    9901
}

/// Active health checks: what to ask every instance, how often, within what time.
#[derive(Debug, Clone)]
pub struct HealthChecks {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

/// The admin listener's address and the admin API's bearer token (`/upstreams` is off
/// without one; `/metrics` is served either way).
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub host: String,
    pub port: u16,
    pub token: Option<String>,
    /// `ADMIN_HOST` is not a loopback address (allowed by `ADMIN_ALLOW_REMOTE`).
    pub remote: bool,
}

/// The gateway's settings as typed values (see the module documentation).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Every route with its pools; a green or canary route is always a route of `ROUTES`.
    pub routes: Vec<RouteSpec>,
    /// The stable pool taking traffic at start (blue or green).
    pub active_pool: PoolKind,
    pub canary_weight: u8,
    pub canary_keys: CanaryKeys,
    pub discovery_interval: Duration,
    pub discovery_nameserver: Option<SocketAddr>,
    /// `None`: active checks off, instances take traffic at once.
    pub health_checks: Option<HealthChecks>,
    pub connect_timeout: Duration,
    pub try_timeout: Duration,
    pub timeout: Duration,
    pub wait_for_instance: Duration,
    pub retry_backoff: Duration,
    pub attempts: usize,
    pub retry_budget: BudgetConfig,
    pub health_policy: HealthPolicy,
    pub breaker: BreakerConfig,
    pub rate_limit_per_sec: u32,
    pub rate_limit_burst: Option<u32>,
    pub trusted_proxies: Vec<IpNet>,
    pub max_body_bytes: usize,
    /// The client connections' time limits and budget.
    pub connections: Limits,
    /// `None`: no token is verified and every route is public.
    pub auth: Option<AuthConfig>,
    pub internal_paths: InternalPaths,
    pub admin: AdminConfig,
}

impl GatewayEnv {
    /// Parses every value into its type; errors name the variable.
    pub fn parse(mut self) -> Result<GatewayConfig, ConfigError> {
        // An empty variable is an unset one (`ADMIN_TOKEN=${ADMIN_TOKEN:-}` in Compose).
        self.admin_token = self.admin_token.filter(|token| !token.is_empty());
        if self.upstream_attempts == 0 {
            return Err(ConfigError::new("UPSTREAM_ATTEMPTS", "must be at least 1"));
        }
        if self.canary_weight > 100 {
            return Err(ConfigError::new("CANARY_WEIGHT", "must be 0 to 100"));
        }
        if self.retry_budget_percent > 100 {
            return Err(ConfigError::new("RETRY_BUDGET_PERCENT", "must be 0 to 100"));
        }
        if self.discovery_interval_ms == 0 {
            return Err(ConfigError::new(
                "DISCOVERY_INTERVAL_MS",
                "must be at least 1",
            ));
        }
        if !self.health_check_path.starts_with('/') {
            return Err(ConfigError::new("HEALTH_CHECK_PATH", "must start with /"));
        }
        if self.admin_token.as_deref().is_some_and(|t| t.len() < 16) {
            return Err(ConfigError::new(
                "ADMIN_TOKEN",
                "must be at least 16 characters",
            ));
        }
        let routes = RouteSpec::parse_all(&[
            (PoolKind::Blue, "ROUTES", &self.routes),
            (PoolKind::Green, "GREEN_ROUTES", &self.green_routes),
            (PoolKind::Canary, "CANARY_ROUTES", &self.canary_routes),
        ])
        .map_err(|(variable, reason)| ConfigError::new(variable, reason))?;
        let active_pool = match self.active_pool.as_str() {
            "blue" => PoolKind::Blue,
            "green" => PoolKind::Green,
            other => {
                return Err(ConfigError::new(
                    "ACTIVE_POOL",
                    format!("`{other}` is neither `blue` nor `green`"),
                ));
            }
        };
        let breaker = self.breaker()?;
        let trusted_proxies = parse_networks(&self.trusted_proxies)?;
        let auth = self.auth(&routes)?;
        let internal_paths = InternalPaths::parse(&self.internal_paths)
            .map_err(|reason| ConfigError::new("INTERNAL_PATHS", reason))?;
        let admin = self.admin()?;
        let connections = self.connection_limits()?;
        let ms = Duration::from_millis;
        Ok(GatewayConfig {
            routes,
            active_pool,
            canary_weight: self.canary_weight,
            canary_keys: CanaryKeys {
                force_header: self.canary_header.to_ascii_lowercase(),
                key_header: self.canary_key_header.to_ascii_lowercase(),
                key_cookie: self.canary_key_cookie,
            },
            discovery_interval: ms(self.discovery_interval_ms),
            discovery_nameserver: self.discovery_nameserver,
            health_checks: (self.health_check_interval_ms > 0).then(|| HealthChecks {
                path: self.health_check_path,
                interval: ms(self.health_check_interval_ms),
                timeout: ms(self.health_check_timeout_ms),
            }),
            connect_timeout: ms(self.upstream_connect_timeout_ms),
            try_timeout: ms(self.upstream_try_timeout_ms),
            timeout: ms(self.upstream_timeout_ms),
            wait_for_instance: ms(self.upstream_wait_for_instance_ms),
            retry_backoff: ms(self.retry_backoff_ms),
            attempts: self.upstream_attempts,
            retry_budget: BudgetConfig {
                ratio: f64::from(self.retry_budget_percent) / 100.0,
                min_per_second: f64::from(self.retry_min_per_sec),
                cap: 1000.0,
            },
            health_policy: HealthPolicy {
                eject_after_failures: self.eject_after_failures.max(1),
                eject_for: ms(self.eject_for_ms),
            },
            breaker,
            rate_limit_per_sec: self.rate_limit_per_sec,
            rate_limit_burst: self.rate_limit_burst,
            trusted_proxies,
            max_body_bytes: self.max_body_bytes,
            connections,
            auth,
            internal_paths,
            admin,
        })
    }

    /// The time limits (none under 100 ms) and the connection budget: `MAX_CONNECTIONS`, or
    /// derived from the descriptors this process may open (its soft limit raised to the hard
    /// one first).
    fn connection_limits(&self) -> Result<Limits, ConfigError> {
        for (variable, value) in [
            ("HEADER_TIMEOUT", self.header_timeout),
            ("KEEPALIVE_IDLE_TIMEOUT", self.keepalive_idle_timeout),
            ("BODY_TIMEOUT", self.body_timeout),
        ] {
            if value < Duration::from_millis(100) {
                return Err(ConfigError::new(variable, "must be at least 100ms"));
            }
        }
        let max_connections = match self.max_connections {
            Some(0) => return Err(ConfigError::new("MAX_CONNECTIONS", "must be at least 1")),
            Some(max) => max,
            None => connections::budget(connections::descriptor_limit()),
        };
        Ok(Limits {
            header: self.header_timeout,
            idle: self.keepalive_idle_timeout,
            body: self.body_timeout,
            max_connections,
        })
    }

    /// The admin listener: on loopback unless `ADMIN_ALLOW_REMOTE` says otherwise.
    fn admin(&self) -> Result<AdminConfig, ConfigError> {
        let remote = !is_loopback(&self.admin_host);
        if remote && !self.admin_allow_remote {
            return Err(ConfigError::new(
                "ADMIN_HOST",
                format!(
                    "`{}` is not a loopback address: the admin API and metrics would be reachable from other hosts; set ADMIN_ALLOW_REMOTE=true if that is intended",
                    self.admin_host
                ),
            ));
        }
        Ok(AdminConfig {
            host: self.admin_host.clone(),
            port: self.admin_port,
            token: self.admin_token.clone(),
            remote,
        })
    }

    /// Token verification: one key source, issuer, audience and policies naming routes.
    fn auth(&self, routes: &[RouteSpec]) -> Result<Option<AuthConfig>, ConfigError> {
        let sources = [
            self.auth_jwks_file.is_some(),
            self.auth_jwks_url.is_some(),
            self.auth_hs256_secret.is_some(),
        ];
        let keys = match sources {
            [false, false, false] => {
                if !self.auth_policies.trim().is_empty() {
                    return Err(ConfigError::new(
                        "AUTH_POLICIES",
                        "needs AUTH_JWKS_FILE, AUTH_JWKS_URL or AUTH_HS256_SECRET to verify tokens with",
                    ));
                }
                return Ok(None);
            }
            [true, false, false] => {
                KeySource::JwksFile(self.auth_jwks_file.clone().expect("checked just above"))
            }
            [false, true, false] => {
                let raw = self.auth_jwks_url.as_deref().expect("checked just above");
                let url = Url::parse(raw)
                    .ok()
                    .filter(|url| matches!(url.scheme(), "http" | "https"))
                    .ok_or_else(|| {
                        ConfigError::new("AUTH_JWKS_URL", format!("`{raw}` is not an http(s) URL"))
                    })?;
                KeySource::JwksUrl {
                    url,
                    refresh: Duration::from_secs(self.auth_jwks_refresh_secs.max(1)),
                }
            }
            [false, false, true] => {
                let secret = self
                    .auth_hs256_secret
                    .as_deref()
                    .expect("checked just above");
                if secret.len() < 32 {
                    return Err(ConfigError::new(
                        "AUTH_HS256_SECRET",
                        "must be at least 32 bytes",
                    ));
                }
                KeySource::Hs256(secret.as_bytes().to_vec())
            }
            _ => {
                return Err(ConfigError::new(
                    "AUTH_JWKS_FILE",
                    "set only one of AUTH_JWKS_FILE, AUTH_JWKS_URL and AUTH_HS256_SECRET",
                ));
            }
        };
        let required = |variable: &'static str, value: &Option<String>| {
            value
                .clone()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| ConfigError::new(variable, "is required to verify tokens"))
        };
        let policies = PolicyRule::parse_all(&self.auth_policies)
            .map_err(|reason| ConfigError::new("AUTH_POLICIES", reason))?;
        if let Some(rule) = policies
            .iter()
            .find(|rule| routes.iter().all(|route| route.name != rule.route))
        {
            return Err(ConfigError::new(
                "AUTH_POLICIES",
                format!("`{}` is not the name of a route", rule.route),
            ));
        }
        Ok(Some(AuthConfig {
            keys,
            issuer: required("AUTH_ISSUER", &self.auth_issuer)?,
            audience: required("AUTH_AUDIENCE", &self.auth_audience)?,
            leeway: Duration::from_secs(self.auth_leeway_secs),
            policies,
        }))
    }

    fn breaker(&self) -> Result<BreakerConfig, ConfigError> {
        let open_for = Duration::from_millis(self.breaker_open_ms);
        let config = BreakerConfig {
            window: self.breaker_window,
            minimum_calls: self.breaker_min_calls,
            failure_rate: f64::from(self.breaker_failure_percent) / 100.0,
            open_for,
            max_open_for: open_for * 12,
            half_open_probes: 1,
        };
        config
            .validate()
            .map_err(|e| ConfigError::new("BREAKER_WINDOW", e.to_string()))?;
        Ok(config)
    }
}

/// `localhost`, or an address in 127.0.0.0/8 or `::1`.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `TRUSTED_PROXIES`: comma-separated CIDRs or single addresses.
fn parse_networks(list: &str) -> Result<Vec<IpNet>, ConfigError> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|cidr| {
            cidr.parse::<IpNet>()
                .or_else(|_| cidr.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    ConfigError::new(
                        "TRUSTED_PROXIES",
                        format!("`{cidr}` is not an address or CIDR"),
                    )
                })
        })
        .collect()
}

/// Everything `gateway serve` needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub http: HttpConfig,
    pub gateway: GatewayConfig,
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            http: from_env()?,
            gateway: from_env::<GatewayEnv>()?.parse()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use dockyard_runtime::config::from_vars;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> GatewayEnv {
        from_vars(vars.iter().copied()).unwrap()
    }

    #[test]
    fn a_missing_or_malformed_route_table_names_routes() {
        let missing = from_vars::<GatewayEnv, &str, &str>([]).unwrap_err();
        assert_eq!(missing.variable, "ROUTES");

        let malformed = config(&[("ROUTES", "/api=ftp://nowhere")])
            .parse()
            .unwrap_err();
        assert_eq!(malformed.variable, "ROUTES");
        assert!(malformed.reason.contains("ftp://nowhere"), "{malformed}");
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        let routes = ("ROUTES", "/api/a=http://127.0.0.1:1");
        for (variable, value) in [
            ("GREEN_ROUTES", "/api/other=http://127.0.0.1:2"),
            ("CANARY_ROUTES", "/api/a=nonsense"),
            ("ACTIVE_POOL", "purple"),
            ("TRUSTED_PROXIES", "10.0.0.0/8, not-a-net"),
            ("UPSTREAM_ATTEMPTS", "0"),
            ("CANARY_WEIGHT", "101"),
            ("ADMIN_TOKEN", "short"),
            ("HEALTH_CHECK_PATH", "health"),
            ("INTERNAL_PATHS", "metrics"),
            ("ADMIN_HOST", "0.0.0.0"),
            ("AUTH_POLICIES", "catalog * public"),
            ("AUTH_HS256_SECRET", "too-short"),
        ] {
            let error = config(&[routes, (variable, value)]).parse().unwrap_err();
            assert_eq!(error.variable, variable, "{error}");
        }
        let typo = from_vars::<GatewayEnv, _, _>([routes, ("CANARY_WEIGHT", "ten")]);
        assert_eq!(typo.unwrap_err().variable, "CANARY_WEIGHT");
    }

    #[test]
    fn token_verification_needs_one_key_source_an_issuer_an_audience_and_known_routes() {
        let routes = ("ROUTES", "/api/a=http://127.0.0.1:1");
        let secret = ("AUTH_HS256_SECRET", "0123456789abcdef0123456789abcdef");
        let issuer = ("AUTH_ISSUER", "dockyard-dev");
        let audience = ("AUTH_AUDIENCE", "dockyard");
        for (vars, variable) in [
            (vec![secret, audience], "AUTH_ISSUER"),
            (vec![secret, issuer], "AUTH_AUDIENCE"),
            (
                vec![secret, issuer, audience, ("AUTH_JWKS_FILE", "/x.json")],
                "AUTH_JWKS_FILE",
            ),
            (
                vec![secret, issuer, audience, ("AUTH_POLICIES", "b * public")],
                "AUTH_POLICIES",
            ),
            (
                vec![("AUTH_JWKS_URL", "ftp://idp/jwks"), issuer, audience],
                "AUTH_JWKS_URL",
            ),
        ] {
            let mut vars = vars;
            vars.push(routes);
            let error = config(&vars).parse().unwrap_err();
            assert_eq!(error.variable, variable, "{error}");
        }
        let on = config(&[
            routes,
            secret,
            issuer,
            audience,
            ("AUTH_POLICIES", "a GET public"),
        ])
        .parse()
        .unwrap();
        assert_eq!(on.auth.unwrap().policies.len(), 1);
        assert!(config(&[routes]).parse().unwrap().auth.is_none());
    }

    #[test]
    fn a_remote_admin_listener_must_be_asked_for() {
        let routes = ("ROUTES", "/api/a=http://127.0.0.1:1");
        for host in ["127.0.0.1", "127.0.0.9", "localhost", "::1"] {
            let admin = config(&[routes, ("ADMIN_HOST", host)])
                .parse()
                .unwrap()
                .admin;
            assert!(!admin.remote, "{host}");
        }
        let allowed = config(&[
            routes,
            ("ADMIN_HOST", "0.0.0.0"),
            ("ADMIN_ALLOW_REMOTE", "true"),
        ]);
        assert!(allowed.parse().unwrap().admin.remote);
    }

    #[test]
    fn trusted_proxies_take_addresses_and_networks() {
        let config = config(&[
            ("ROUTES", "/api/a=http://127.0.0.1:1"),
            ("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1"),
        ]);
        let nets = config.parse().unwrap().trusted_proxies;
        assert!(nets[0].contains(&"10.1.2.3".parse::<std::net::IpAddr>().unwrap()));
        assert!(nets[1].contains(&"127.0.0.1".parse::<std::net::IpAddr>().unwrap()));
    }
}

//! The gateway admin API's resources, as the gateway serves them (`GET /upstreams`, and the
//! route both `PUT`s answer) and as its clients read them: the console deserialises the same
//! types, so a state, a pool or a breaker is an enum at both ends and never a string compared
//! by hand.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every route of the gateway.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Upstreams {
    pub routes: Vec<RouteView>,
}

/// A route: its prefix, its pools and the traffic split between them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RouteView {
    /// The route's name: the last segment of its prefix.
    pub route: String,
    pub prefix: String,
    /// The stable pool taking traffic.
    pub active: PoolKind,
    /// The canary's share in percent; `null` without a canary pool.
    #[schema(minimum = 0, maximum = 100)]
    pub canary_weight: Option<u8>,
    pub pools: Vec<PoolView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PoolView {
    pub pool: PoolKind,
    pub active: bool,
    /// The configured URLs; a hostname stands for every address it resolves to.
    pub targets: Vec<String>,
    pub breaker: BreakerState,
    pub endpoints: Vec<EndpointView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EndpointView {
    pub url: String,
    pub state: EndpointState,
    pub in_flight: usize,
}

/// Which pool of a route a list of URLs describes. The admin API shows it by name
/// (`blue`, `green`, `canary`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = PoolName)]
pub enum PoolKind {
    /// The stable pool (`ROUTES`), active unless green is.
    Blue,
    /// The other stable pool for blue-green releases (`GREEN_ROUTES`).
    Green,
    /// A new version taking a share of the traffic (`CANARY_ROUTES`).
    Canary,
}

impl PoolKind {
    /// The name the API and the metrics' `pool` label use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Blue => "blue",
            Self::Green => "green",
            Self::Canary => "canary",
        }
    }
}

/// A stable pool: the two a route's traffic can be switched between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StablePool {
    Blue,
    Green,
}

impl From<StablePool> for PoolKind {
    fn from(pool: StablePool) -> Self {
        match pool {
            StablePool::Blue => Self::Blue,
            StablePool::Green => Self::Green,
        }
    }
}

/// The body of `PUT /upstreams/{route}/active`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivePool {
    pub pool: StablePool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    Closed,
    HalfOpen,
    Open,
}

/// `pending` (not checked yet), `healthy`, `unhealthy` (failed its check) or `ejected`
/// (passive health).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EndpointState {
    Pending,
    Healthy,
    Unhealthy,
    Ejected,
}

impl EndpointState {
    /// Every state, in the order the metrics list them.
    pub const ALL: [Self; 4] = [Self::Healthy, Self::Pending, Self::Unhealthy, Self::Ejected];

    /// The name the API and the metrics' `state` label use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
            Self::Ejected => "ejected",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_on_the_wire_are_the_ones_as_str_gives() {
        for state in EndpointState::ALL {
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::json!(state.as_str())
            );
        }
        for pool in [PoolKind::Blue, PoolKind::Green, PoolKind::Canary] {
            assert_eq!(
                serde_json::to_value(pool).unwrap(),
                serde_json::json!(pool.as_str())
            );
        }
        assert_eq!(
            serde_json::to_value(BreakerState::HalfOpen).unwrap(),
            "half-open"
        );
    }

    #[test]
    fn a_route_reads_back_as_it_was_written() {
        let text = r#"{"routes":[{"route":"catalog","prefix":"/api/catalog","active":"blue","canary_weight":10,
          "pools":[{"pool":"canary","active":false,"targets":["http://c/"],"breaker":"half-open",
            "endpoints":[{"url":"http://10.0.0.1:8080","state":"ejected","in_flight":2}]}]}]}"#;
        let upstreams: Upstreams = serde_json::from_str(text).unwrap();
        let pool = &upstreams.routes[0].pools[0];
        assert_eq!(pool.pool, PoolKind::Canary);
        assert_eq!(pool.breaker, BreakerState::HalfOpen);
        assert_eq!(pool.endpoints[0].state, EndpointState::Ejected);
        assert!(serde_json::from_str::<EndpointState>(r#""sleeping""#).is_err());
    }
}

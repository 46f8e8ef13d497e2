//! The route table: request path prefix → upstream. The longest matching prefix wins and is
//! stripped: with `/api/catalog=…`, `/api/catalog/products?limit=2` reaches the catalog as
//! `/products?limit=2`.

use std::sync::Arc;

use url::Url;

use crate::upstream::{HealthPolicy, Upstream};

#[derive(Debug)]
pub struct Route {
    pub prefix: String,
    pub upstream: Arc<Upstream>,
}

#[derive(Debug)]
pub struct RouteTable {
    /// Longest prefix first.
    routes: Vec<Route>,
}

impl RouteTable {
    /// Parses `prefix=url[,url…][;prefix=url…]`.
    pub fn parse(spec: &str, policy: &HealthPolicy) -> Result<Self, String> {
        let mut routes = Vec::new();
        for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (prefix, urls) = entry
                .split_once('=')
                .ok_or_else(|| format!("`{entry}` is not `prefix=url[,url…]`"))?;
            let prefix = prefix.trim().trim_end_matches('/');
            if !prefix.starts_with('/') || prefix.len() < 2 {
                return Err(format!(
                    "route prefix `{prefix}` must start with / and name a path"
                ));
            }
            let endpoints = urls
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(|raw| {
                    let url = Url::parse(raw).map_err(|e| format!("`{raw}` is not a URL ({e})"))?;
                    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                        return Err(format!("`{raw}` must be an http(s) URL with a host"));
                    }
                    Ok(url)
                })
                .collect::<Result<Vec<_>, String>>()?;
            if endpoints.is_empty() {
                return Err(format!("route `{prefix}` has no upstream URL"));
            }
            routes.push(Route {
                prefix: prefix.to_owned(),
                upstream: Arc::new(Upstream::new(prefix, endpoints, policy.clone())),
            });
        }
        if routes.is_empty() {
            return Err("no routes: expected `prefix=url[,url…][;…]`".to_owned());
        }
        routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
        Ok(Self { routes })
    }

    /// The route for `path` and the path to forward (prefix stripped, at least `/`).
    pub fn find<'a>(&self, path: &'a str) -> Option<(&Route, &'a str)> {
        self.routes.iter().find_map(|route| {
            let rest = path.strip_prefix(route.prefix.as_str())?;
            if rest.is_empty() {
                Some((route, "/"))
            } else if rest.starts_with('/') {
                Some((route, rest))
            } else {
                None // `/api/catalogue` is not under `/api/catalog`
            }
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn table(spec: &str) -> Result<RouteTable, String> {
        RouteTable::parse(
            spec,
            &HealthPolicy {
                eject_after_failures: 3,
                eject_for: Duration::from_secs(1),
            },
        )
    }

    #[test]
    fn the_longest_prefix_wins_and_is_stripped() {
        let table = table("/api=http://a:1;/api/orders=http://b:2,http://c:3").unwrap();

        let (route, rest) = table.find("/api/orders/42/cancel").unwrap();
        assert_eq!((route.prefix.as_str(), rest), ("/api/orders", "/42/cancel"));
        assert_eq!(route.upstream.endpoints().len(), 2);
        assert_eq!(table.find("/api/orders").unwrap().1, "/");
        assert_eq!(table.find("/api/ordersx").unwrap().0.prefix, "/api");
        assert!(table.find("/other").is_none());
    }

    #[test]
    fn malformed_tables_are_refused_with_a_reason() {
        for spec in [
            "",
            "api=http://a:1",
            "/api",
            "/api=",
            "/api=ftp://a",
            "/api=not a url",
        ] {
            assert!(table(spec).is_err(), "{spec:?}");
        }
    }
}

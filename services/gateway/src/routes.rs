//! The route table: request path prefix → service. The longest matching prefix wins and is
//! stripped: with `/api/catalog=…`, `/api/catalog/products?limit=2` reaches the catalog as
//! `/products?limit=2`. A route is named after its prefix's last segment (`catalog`), which is
//! how the admin API and the metrics refer to it.

use std::sync::Arc;

use url::Url;

use crate::{pool::PoolKind, service::Service};

/// One route as configured: its prefix and the upstream URLs of each pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub prefix: String,
    pub name: String,
    pub blue: Vec<Url>,
    pub green: Vec<Url>,
    pub canary: Vec<Url>,
}

/// Parses `prefix=url[,url…][;prefix=url…]`.
fn parse_entries(spec: &str) -> Result<Vec<(String, Vec<Url>)>, String> {
    let mut entries = Vec::new();
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
        let urls = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|raw| {
                let url = Url::parse(raw).map_err(|e| format!("`{raw}` is not a URL ({e})"))?;
                if url.scheme() != "http" || url.host().is_none() {
                    return Err(format!("`{raw}` must be an http URL with a host"));
                }
                Ok(url)
            })
            .collect::<Result<Vec<_>, String>>()?;
        if urls.is_empty() {
            return Err(format!("route `{prefix}` has no upstream URL"));
        }
        entries.push((prefix.to_owned(), urls));
    }
    Ok(entries)
}

impl RouteSpec {
    /// Parses each variable of `(pool, variable name, value)`; the first must be the blue
    /// pools and define the routes, the others may only add pools to those routes. Errors name
    /// the variable.
    pub fn parse_all(
        sources: &[(PoolKind, &'static str, &str)],
    ) -> Result<Vec<Self>, (&'static str, String)> {
        let mut routes: Vec<Self> = Vec::new();
        for &(kind, variable, spec) in sources {
            let entries = parse_entries(spec).map_err(|reason| (variable, reason))?;
            for (prefix, urls) in entries {
                if kind == PoolKind::Blue {
                    if routes.iter().any(|r| r.prefix == prefix) {
                        return Err((variable, format!("route `{prefix}` is listed twice")));
                    }
                    let name = prefix.rsplit('/').next().unwrap_or_default().to_owned();
                    if routes.iter().any(|r| r.name == name) {
                        return Err((variable, format!("two routes are named `{name}`")));
                    }
                    routes.push(Self {
                        prefix,
                        name,
                        blue: urls,
                        green: Vec::new(),
                        canary: Vec::new(),
                    });
                    continue;
                }
                let Some(route) = routes.iter_mut().find(|r| r.prefix == prefix) else {
                    return Err((variable, format!("`{prefix}` is not a route of ROUTES")));
                };
                if kind == PoolKind::Green {
                    route.green = urls;
                } else {
                    route.canary = urls;
                }
            }
        }
        if routes.is_empty() {
            return Err((
                sources[0].1,
                "no routes: expected `prefix=url[,url…][;…]`".to_owned(),
            ));
        }
        Ok(routes)
    }
}

#[derive(Debug)]
pub struct Route {
    pub prefix: String,
    pub service: Arc<Service>,
}

#[derive(Debug)]
pub struct RouteTable {
    /// Longest prefix first.
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
        Self { routes }
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

    /// The route named `name` (the admin API's handle on it).
    pub fn named(&self, name: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|route| route.service.name() == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(blue: &str, green: &str, canary: &str) -> Result<Vec<RouteSpec>, String> {
        RouteSpec::parse_all(&[
            (PoolKind::Blue, "ROUTES", blue),
            (PoolKind::Green, "GREEN_ROUTES", green),
            (PoolKind::Canary, "CANARY_ROUTES", canary),
        ])
        .map_err(|(variable, reason)| format!("{variable}: {reason}"))
    }

    #[test]
    fn pools_are_gathered_per_route_and_named_after_the_prefix() {
        let routes = specs(
            "/api/catalog=http://a:1,http://b:2;/api/orders/=http://c:3",
            "/api/catalog=http://g:1",
            "/api/orders=http://k:1",
        )
        .unwrap();
        assert_eq!(routes.len(), 2);
        assert_eq!(
            (routes[0].name.as_str(), routes[0].blue.len()),
            ("catalog", 2)
        );
        assert_eq!(routes[0].green[0].as_str(), "http://g:1/");
        assert_eq!(routes[1].prefix, "/api/orders", "trailing slash dropped");
        assert_eq!(routes[1].canary[0].as_str(), "http://k:1/");
    }

    #[test]
    fn malformed_tables_are_refused_naming_the_variable() {
        for (blue, green, canary, variable) in [
            ("", "", "", "ROUTES"),
            ("api=http://a:1", "", "", "ROUTES"),
            ("/api", "", "", "ROUTES"),
            ("/api=", "", "", "ROUTES"),
            ("/api=ftp://a:1", "", "", "ROUTES"),
            ("/api=https://a", "", "", "ROUTES"),
            ("/api=not a url", "", "", "ROUTES"),
            ("/a/x=http://a:1;/b/x=http://b:1", "", "", "ROUTES"),
            ("/api=http://a:1", "/other=http://b:1", "", "GREEN_ROUTES"),
            ("/api=http://a:1", "", "/api=", "CANARY_ROUTES"),
        ] {
            let error = specs(blue, green, canary).unwrap_err();
            assert!(error.starts_with(variable), "{blue:?}/{green:?}: {error}");
        }
    }
}

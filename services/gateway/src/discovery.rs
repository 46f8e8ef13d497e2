//! Discovery: every upstream URL whose host is a name is resolved again every
//! `DISCOVERY_INTERVAL_MS`, and every address it resolves to is an endpoint. This is how
//! Compose (`--scale catalog=4`: one name, four addresses) and Kubernetes headless Services
//! expose the instances of a service.
//!
//! Names go to the system resolver (`/etc/hosts`, then DNS, as every other program on the
//! host sees them), or to one DNS server given by `DISCOVERY_NAMESERVER` (e.g. Consul's).
//! A failed lookup keeps the addresses last seen: a DNS hiccup must not empty a pool.

use std::{net::SocketAddr, sync::Arc};

use hickory_resolver::{
    Resolver as DnsResolver,
    config::{ConnectionConfig, NameServerConfig, ResolverConfig},
    net::runtime::TokioRuntimeProvider,
};
use url::{Host, Url};

use crate::pool::{Changes, Pool};

#[derive(Debug)]
pub enum Resolver {
    System,
    Server(Box<DnsResolver<TokioRuntimeProvider>>),
}

impl Resolver {
    pub fn new(nameserver: Option<SocketAddr>) -> anyhow::Result<Self> {
        let Some(server) = nameserver else {
            return Ok(Self::System);
        };
        let mut udp = ConnectionConfig::udp();
        udp.port = server.port();
        let config = ResolverConfig::from_name_servers(vec![NameServerConfig::new(
            server.ip(),
            true,
            vec![udp],
        )]);
        let mut builder = DnsResolver::builder_with_config(config, TokioRuntimeProvider::default());
        // Every round must see the current answer: no caching between rounds.
        builder.options_mut().cache_size = 0;
        Ok(Self::Server(Box::new(builder.build()?)))
    }

    /// The endpoint URLs of `target`: itself if its host is an address, else one per address
    /// its name resolves to.
    pub async fn resolve(&self, target: &Url) -> anyhow::Result<Vec<Url>> {
        let host = match target.host() {
            Some(Host::Domain(name)) => name.to_owned(),
            Some(Host::Ipv4(_) | Host::Ipv6(_)) => return Ok(vec![target.clone()]),
            None => anyhow::bail!("{target} has no host"),
        };
        let port = target.port_or_known_default().unwrap_or(80);
        let addresses: Vec<std::net::IpAddr> = match self {
            Self::System => tokio::net::lookup_host((host.as_str(), port))
                .await?
                .map(|address| address.ip())
                .collect(),
            Self::Server(resolver) => resolver.lookup_ip(host.as_str()).await?.iter().collect(),
        };
        let mut urls: Vec<Url> = addresses
            .into_iter()
            .filter_map(|ip| {
                let mut url = target.clone();
                url.set_ip_host(ip).ok()?;
                Some(url)
            })
            .collect();
        urls.sort();
        urls.dedup();
        Ok(urls)
    }

    /// Resolves every target of `pool` and replaces its endpoints; a target whose lookup
    /// fails keeps its current endpoints.
    pub async fn refresh(&self, pool: &Arc<Pool>) -> Changes {
        let mut addresses = Vec::new();
        for (index, target) in pool.targets().iter().enumerate() {
            match self.resolve(target).await {
                Ok(urls) => addresses.extend(urls.into_iter().map(|url| (url, index))),
                Err(error) => {
                    tracing::warn!(route = pool.route(), %target, %error, "lookup failed; keeping the last addresses");
                    addresses.extend(pool.endpoints_of(index).into_iter().map(|url| (url, index)));
                }
            }
        }
        let changes = pool.replace(&addresses);
        for endpoint in &changes.added {
            tracing::info!(
                route = pool.route(),
                pool = pool.kind().as_str(),
                endpoint = endpoint.base(),
                "endpoint discovered"
            );
        }
        for endpoint in &changes.removed {
            tracing::info!(
                route = pool.route(),
                pool = pool.kind().as_str(),
                endpoint = endpoint.base(),
                in_flight = endpoint.in_flight(),
                "endpoint gone; finishing its requests in flight"
            );
        }
        changes
    }
}

//! Per-client rate limiting: a token bucket per client address (GCRA, from `governor`).
//!
//! The client is the TCP peer, unless the peer is a trusted proxy (`TRUSTED_PROXIES`): then
//! it is the last address in `X-Forwarded-For` that is not itself a trusted proxy. Taking the
//! header from anyone else would let every client pick its own bucket.

use std::{net::IpAddr, num::NonZeroU32, time::Duration};

use governor::{
    DefaultKeyedRateLimiter, Quota,
    clock::{Clock, DefaultClock},
};
use ipnet::IpNet;

#[derive(Debug)]
pub struct ClientLimiter {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    clock: DefaultClock,
    trusted: Vec<IpNet>,
}

impl ClientLimiter {
    /// `per_second == 0` turns limiting off; `burst` defaults to one second's worth.
    pub fn new(per_second: u32, burst: Option<u32>, trusted: Vec<IpNet>) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = burst.and_then(NonZeroU32::new).unwrap_or(rate);
            DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            limiter,
            clock: DefaultClock::default(),
            trusted,
        }
    }

    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&peer))
    }

    /// The client's address, as far as it can be trusted.
    pub fn client_ip(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|hop| hop.trim().parse().ok())
            .collect();
        forwarded
            .iter()
            .rev()
            .find(|ip| !self.is_trusted(**ip))
            .or(forwarded.first())
            .copied()
            .unwrap_or(peer)
    }

    /// `Err(wait)` when `client` is over its rate.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(&client)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets clients whose buckets are full again (bounded memory under many clients).
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(trusted: &[&str]) -> ClientLimiter {
        ClientLimiter::new(
            2,
            Some(3),
            trusted.iter().map(|t| t.parse().unwrap()).collect(),
        )
    }

    fn request(peer: &str, forwarded: Option<&str>) -> (IpAddr, http::HeaderMap) {
        let mut headers = http::HeaderMap::new();
        if let Some(chain) = forwarded {
            headers.insert("x-forwarded-for", chain.parse().unwrap());
        }
        (peer.parse().unwrap(), headers)
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let limiter = limiter(&["10.0.0.0/8"]);
        let (peer, headers) = request("203.0.113.9", Some("198.51.100.1"));
        assert_eq!(
            limiter.client_ip(peer, &headers),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );

        let (peer, headers) = request("10.0.0.2", Some("198.51.100.1, 203.0.113.5, 10.0.0.7"));
        assert_eq!(
            limiter.client_ip(peer, &headers),
            "203.0.113.5".parse::<IpAddr>().unwrap(),
            "the last hop that is not a trusted proxy"
        );
    }

    #[test]
    fn a_client_gets_its_burst_then_waits() {
        let limiter = limiter(&[]);
        let (a, b) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        for _ in 0..3 {
            assert!(limiter.check(a).is_ok());
        }
        let wait = limiter.check(a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(
            limiter.check(b).is_ok(),
            "another client has its own bucket"
        );
        assert!(
            ClientLimiter::new(0, None, Vec::new()).check(a).is_ok(),
            "0 = off"
        );
    }
}

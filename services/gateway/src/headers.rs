//! Header hygiene for a proxy (RFC 9110 §7.6): hop-by-hop headers stay on their hop, and the
//! upstream learns who the client was through `X-Forwarded-*`.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, never forwarded; parsed once (a name given as text
/// is parsed and hashed again at every lookup).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The `X-Forwarded-*` headers: believed only from a trusted proxy, else a client could
/// claim any address.
const FORWARDED: [HeaderName; 3] = [X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST];

/// Whether `name` must not cross this hop: a fixed hop-by-hop header, or one the `Connection`
/// header names.
fn is_hop_by_hop(name: &HeaderName, connection: &[HeaderName]) -> bool {
    HOP_BY_HOP.contains(name) || connection.contains(name)
}

/// The header names a `Connection` header lists (none, usually).
fn connection_tokens(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect()
}

/// What the client sent, minus hop-by-hop headers, `Host` and `Content-Length` (the client
/// library sets both for the new hop), minus `X-Forwarded-*` unless the peer is a trusted
/// proxy, minus every `X-Identity-*` header (only the gateway says who the caller is), and
/// minus `Authorization` when the gateway consumed the token (`strip_authorization`).
pub fn request_headers(
    incoming: &HeaderMap,
    trusted_peer: bool,
    strip_authorization: bool,
) -> HeaderMap {
    let connection = connection_tokens(incoming);
    let mut headers = HeaderMap::with_capacity(incoming.len() + 3);
    for (name, value) in incoming {
        if is_hop_by_hop(name, &connection)
            || name == header::HOST
            || name == header::CONTENT_LENGTH
            || (!trusted_peer && FORWARDED.contains(name))
            || name
                .as_str()
                .starts_with(dockyard_runtime::identity::HEADER_PREFIX)
            || (strip_authorization && name == header::AUTHORIZATION)
        {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    headers
}

/// Appends the client to `X-Forwarded-For` and sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host` (the host the client asked for) and `X-Request-Id`.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client_ip: Option<&HeaderValue>,
    proto: HeaderValue,
    host: Option<&HeaderValue>,
    request_id: Option<&str>,
) {
    if let Some(ip) = client_ip {
        let chain = match headers.get(&X_FORWARDED_FOR) {
            Some(earlier) => {
                let mut chain = Vec::with_capacity(earlier.len() + 2 + ip.len());
                chain.extend_from_slice(earlier.as_bytes());
                chain.extend_from_slice(b", ");
                chain.extend_from_slice(ip.as_bytes());
                HeaderValue::from_bytes(&chain).ok()
            }
            None => Some(ip.clone()),
        };
        if let Some(chain) = chain {
            headers.insert(X_FORWARDED_FOR, chain);
        }
    }
    headers.insert(X_FORWARDED_PROTO, proto);
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    if let Some(value) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
        headers.insert(X_REQUEST_ID, value);
    }
}

/// Removes an upstream response's hop-by-hop headers (and those its `Connection` names).
/// Most responses have none: one pass over their few headers finds that, instead of a lookup
/// per hop-by-hop name.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return; // no Connection header either, so nothing it could list
    }
    let connection = connection_tokens(headers);
    for name in HOP_BY_HOP.iter().chain(&connection) {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use http::header::HeaderName;

    use super::*;

    /// A map of `pairs`, in order, repeated names kept.
    fn header_map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_dropped() {
        let incoming = header_map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("host", "gateway"),
            ("accept", "application/json"),
            ("traceparent", "00-abc-def-01"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-identity-subject", "someone-else"),
            ("x-identity-scopes", "catalog:write"),
            ("authorization", "Bearer t"),
        ]);

        let forwarded = request_headers(&incoming, false, true);

        let mut names: Vec<_> = forwarded.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["accept", "traceparent"],
            "x-forwarded-for from an untrusted peer, identity claims and the token dropped"
        );
        let trusted = request_headers(&incoming, true, false);
        assert!(trusted.contains_key("x-forwarded-for"));
        assert!(trusted.contains_key("authorization"));
        assert!(
            !trusted.contains_key("x-identity-subject"),
            "never from a client"
        );
    }

    #[test]
    fn a_response_loses_its_hop_by_hop_headers_and_those_its_connection_lists() {
        let mut response = header_map(&[
            ("content-type", "application/json"),
            ("connection", "Keep-Alive, X-Upstream-Hop"),
            ("keep-alive", "timeout=5"),
            ("x-upstream-hop", "1"),
            ("x-kept", "2"),
        ]);
        strip_hop_by_hop(&mut response);
        let mut names: Vec<_> = response.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "x-kept"]);

        let mut plain = HeaderMap::new();
        plain.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        plain.insert("x-upstream-hop", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut plain);
        assert_eq!(
            plain.len(),
            2,
            "nothing to strip without a Connection header"
        );
    }

    #[test]
    fn the_client_is_appended_to_x_forwarded_for() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));

        add_forwarded(
            &mut headers,
            Some(&HeaderValue::from_static("127.0.0.1")),
            HeaderValue::from_static("http"),
            Some(&HeaderValue::from_static("shop.example")),
            Some("req-1"),
        );

        assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "shop.example");
        assert_eq!(headers["x-request-id"], "req-1");
    }
}

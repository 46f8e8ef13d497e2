//! Header hygiene for a proxy (RFC 9110 §7.6): hop-by-hop headers stay on their hop, and the
//! upstream learns who the client was through `X-Forwarded-*`.

use actix_web::http::header::{self as actix_header, HeaderMap as ActixHeaders};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Whether `name` must not cross this hop: a fixed hop-by-hop header, or one the `Connection`
/// header names.
fn is_hop_by_hop(name: &str, connection: &[String]) -> bool {
    HOP_BY_HOP.contains(&name) || connection.iter().any(|listed| listed == name)
}

fn connection_tokens(headers: &ActixHeaders) -> Vec<String> {
    headers
        .get_all(actix_header::CONNECTION)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .collect()
}

/// The `X-Forwarded-*` headers: believed only from a trusted proxy, else a client could
/// claim any address.
const FORWARDED: &[&str] = &["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"];

/// What the client sent, minus hop-by-hop headers, `Host` and `Content-Length` (the client
/// library sets both for the new hop), and minus `X-Forwarded-*` unless the peer is a
/// trusted proxy.
pub fn request_headers(incoming: &ActixHeaders, trusted_peer: bool) -> HeaderMap {
    let connection = connection_tokens(incoming);
    let mut headers = HeaderMap::with_capacity(incoming.len() + 3);
    for (name, value) in incoming {
        let lower = name.as_str();
        if is_hop_by_hop(lower, &connection)
            || lower == "host"
            || lower == "content-length"
            || (!trusted_peer && FORWARDED.contains(&lower))
        {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.append(name, value);
        }
    }
    headers
}

/// Appends the client to `X-Forwarded-For` and sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host` (the host the client asked for) and `X-Request-Id`.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client_ip: Option<String>,
    proto: &str,
    host: Option<&str>,
    request_id: Option<&str>,
) {
    if let Some(ip) = client_ip {
        let chain = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(earlier) => format!("{earlier}, {ip}"),
            None => ip,
        };
        if let Ok(value) = HeaderValue::from_str(&chain) {
            headers.insert("x-forwarded-for", value);
        }
    }
    if let Ok(value) = HeaderValue::from_str(proto) {
        headers.insert("x-forwarded-proto", value);
    }
    if let Some(value) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
        headers.insert("x-forwarded-host", value);
    }
    if let Some(value) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
        headers.insert("x-request-id", value);
    }
}

/// Whether a response header from the upstream goes back to the client.
pub fn forward_response_header(name: &str, connection: &[String]) -> bool {
    !is_hop_by_hop(name, connection) && name != "content-length"
}

/// The `Connection` tokens of an upstream response.
pub fn response_connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(reqwest::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{HeaderName as AName, HeaderValue as AValue};

    use super::*;

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_dropped() {
        let mut incoming = ActixHeaders::new();
        for (name, value) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("host", "gateway"),
            ("accept", "application/json"),
            ("traceparent", "00-abc-def-01"),
            ("x-forwarded-for", "203.0.113.7"),
        ] {
            incoming.append(AName::from_static(name), AValue::from_static(value));
        }

        let forwarded = request_headers(&incoming, false);

        let mut names: Vec<_> = forwarded.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["accept", "traceparent"],
            "x-forwarded-for from an untrusted peer dropped"
        );
        assert!(request_headers(&incoming, true).contains_key("x-forwarded-for"));
    }

    #[test]
    fn the_client_is_appended_to_x_forwarded_for() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));

        add_forwarded(
            &mut headers,
            Some("127.0.0.1".to_owned()),
            "http",
            Some("shop.example"),
            Some("req-1"),
        );

        assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "shop.example");
        assert_eq!(headers["x-request-id"], "req-1");
    }
}

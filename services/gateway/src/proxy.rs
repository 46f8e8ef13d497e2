//! The forwarding handler: the path normalised ([`crate::paths`]: `400` for an ambiguous one),
//! route (`404`, longest prefix; also for an upstream's internal paths), admission
//! ([`crate::admission`]: `429`, `413`), the caller ([`crate::auth`]: `401`, `403`), the body ([`crate::body`]: buffered when the request may be retried, else
//! streamed), the pool ([`crate::choice`]), the attempts ([`crate::attempts`]), and the
//! upstream's answer relayed without its hop-by-hop headers. Ambiguous framing was refused with
//! `400` before the request was parsed ([`crate::framing`]).

use std::sync::Arc;

use dockyard_runtime::problem::Problem;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, request::Parts};
use http_body_util::Either;
use hyper::body::Incoming;

use crate::{
    admission,
    attempts::{self, Call, Payload},
    auth::Identity,
    body::{self, ClientFault},
    choice, headers, paths,
    server::{self, Peer, Worker},
    state::Gateway,
};

use dockyard_runtime::trace::Traced;

const SUBJECT: HeaderName = HeaderName::from_static(dockyard_runtime::identity::SUBJECT_HEADER);
const SCOPES: HeaderName = HeaderName::from_static(dockyard_runtime::identity::SCOPES_HEADER);

/// Forwards any request that matches a route.
pub async fn forward(
    worker: &Worker,
    request: Request<Incoming>,
    peer: &Peer,
    request_id: &str,
    traced: &Traced,
) -> Result<Response<server::Body>, Problem> {
    let gateway: &Gateway = &worker.shared.gateway;
    let (parts, body) = request.into_parts();
    let path = paths::normalise(parts.uri.path())?;
    let no_route = || Problem::not_found(format!("no route for {}", parts.uri.path()));
    let Some((route, rest)) = gateway.routes.find(&path) else {
        return Err(no_route());
    };
    traced.rename(format!("{} {}", parts.method, route.prefix));
    if gateway.internal_paths.contains(rest) {
        return Err(no_route());
    }
    let body = admission::admit(gateway, peer.address.ip(), &parts.headers, body).await?;
    let identity = match &gateway.auth {
        Some(auth) => match auth.authorize(route.service.name(), &parts.method, &parts.headers) {
            Ok(identity) => identity,
            Err(problem) => {
                body::drain(body).await;
                return Err(problem);
            }
        },
        None => None,
    };

    let service = &route.service;
    let retryable = attempts::may_retry(&parts.method, &parts.headers);
    let fault = Arc::new(ClientFault::default());
    // Buffered before a breaker permit is taken: a slow or oversized client body never holds
    // a half-open breaker's probe, and a 413 here never reaches the breaker.
    let body = if retryable {
        Payload::Buffered(body::buffer(body, gateway.max_body_bytes).await?)
    } else {
        Payload::Streamed(Some(body::stream(
            body,
            gateway.max_body_bytes,
            Arc::clone(&fault),
        )))
    };
    let (pool, permit) = choice::choose_pool(gateway, service, &parts.headers)?;
    let trusted_peer = gateway.limiter.is_trusted(peer.address.ip());
    let call = Call {
        gateway,
        client: &worker.client,
        service,
        pool,
        method: parts.method.clone(),
        headers: outgoing_headers(
            &parts,
            peer,
            trusted_peer,
            request_id,
            identity.as_ref(),
            gateway.auth.is_some(),
            traced,
        ),
        path: rest,
        query: parts.uri.query().unwrap_or(""),
        attempts: if retryable { gateway.attempts } else { 1 },
        fault: &fault,
    };
    let response = call.run(body, permit).await?;
    Ok(relay(response))
}

/// The client's headers for the upstream: hop-by-hop removed, `X-Forwarded-*` and
/// `X-Request-Id` set. The scheme is `http` (this listener speaks plain HTTP) unless a trusted
/// proxy in front says otherwise. The caller's identity, when verified, replaces the token.
fn outgoing_headers(
    parts: &Parts,
    peer: &Peer,
    trusted_peer: bool,
    request_id: &str,
    identity: Option<&Identity>,
    token_consumed: bool,
    traced: &Traced,
) -> HeaderMap {
    let mut outgoing = headers::request_headers(&parts.headers, trusted_peer, token_consumed);
    if let Some(identity) = identity {
        outgoing.insert(SUBJECT, identity.subject.clone());
        outgoing.insert(SCOPES, identity.scopes.clone());
    }
    let proto = trusted_peer
        .then(|| parts.headers.get("x-forwarded-proto").cloned())
        .flatten()
        .unwrap_or(HeaderValue::from_static("http"));
    headers::add_forwarded(
        &mut outgoing,
        Some(&peer.ip_header),
        proto,
        parts.headers.get("host"),
        Some(request_id),
    );
    // The upstream continues this request's span (the client's trace context, if any, is its
    // parent); without a span (spans filtered out) the client's context passes as it came.
    traced.inject_http(&mut outgoing);
    outgoing
}

/// The upstream's response, streamed back without its hop-by-hop headers. Its
/// `Content-Length`, when it had one, frames the relayed body the same way.
fn relay(response: Response<Incoming>) -> Response<server::Body> {
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Either::Right(body))
}

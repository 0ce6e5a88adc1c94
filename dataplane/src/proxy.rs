//! The request path: hygiene, routing, endpoint choice, forwarding, errors.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use portcullis_crds::config::{AffinityMode, UpstreamProtocol};
use tokio_util::task::TaskTracker;

use crate::balance::FarmRt;
use crate::bind::ConnInfo;
use crate::body::{BodyProgress, BoxError, Counted, EndHook, HOP_BY_HOP, OnEnd, RespBody, full};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::metrics::{FarmLabel, FarmStatus};
use crate::pool::{Endpoint, InFlight, ReqBody, Reuse, Sender};
use crate::session::SessionManager;
use crate::snapshot::Snapshot;
use crate::trace::{Finisher, Span, Tracer};
use crate::{filters, hygiene};

/// What the proxy needs from the member that runs it, shared by every request. The
/// runtime builds it; the proxy knows nothing above it.
pub(crate) struct Context {
    /// The config being served; empty until the first load.
    pub(crate) snapshot: ArcSwapOption<Snapshot>,
    pub(crate) metrics: Arc<Metrics>,
    /// Set when the member drains: answers then ask clients to close.
    pub(crate) draining: AtomicBool,
    /// Tasks that must finish before the member stops (an upgraded tunnel).
    pub(crate) tracker: TaskTracker,
    pub(crate) session: Arc<SessionManager>,
    /// Opens request spans and exports them, when tracing is configured.
    pub(crate) tracer: Option<Arc<Tracer>>,
}

/// A redirect the proxy answers itself, with an empty body.
fn redirect_response(r: filters::Redirect) -> Response<RespBody> {
    let mut resp = Response::new(full(""));
    *resp.status_mut() = r.status;
    let h = resp.headers_mut();
    h.insert(header::LOCATION, r.location);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

/// What the dataplane adds to `Via` (the protocol version it received is 1.1 or 2; the
/// name is a pseudonym, never a host name).
const VIA: &str = "1.1 portcullis";

/// Whether a `TE` field says its sender takes trailers (RFC 9110 section 10.1.4).
fn takes_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("trailers"))
        })
}

/// Removes hop-by-hop headers, including those `Connection` names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in listed {
        h.remove(n);
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_has(req.headers(), "upgrade")
}

/// Whether a `Connection` header names `option` (as hyper reads it: values that are not
/// visible ASCII name nothing).
pub(crate) fn connection_has(headers: &HeaderMap, option: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(option))
}

/// Whether the client's `Upgrade` value names a protocol the farm allows (its first
/// token, without a version: `websocket`, `WebSocket/13`).
fn upgrade_allowed(value: &HeaderValue, allowed: &[String]) -> bool {
    let Some(first) = value.to_str().ok().and_then(|v| v.split(',').next()) else {
        return false;
    };
    let name = first
        .trim()
        .split('/')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    name != "h2c" && allowed.contains(&name)
}

/// Whether a backend's `101` switches to what the client asked for.
fn switch_matches(asked: Option<&HeaderValue>, response: &HeaderMap) -> bool {
    let Some(asked) = asked.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(got) = response.get(header::UPGRADE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let name = |s: &str| {
        s.split(',')
            .next()
            .unwrap_or("")
            .trim()
            .split('/')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    name(asked) == name(got)
}

/// Relays a switched connection both ways until either side closes or nothing moves
/// for `idle`.
async fn tunnel<A, B>(client: A, upstream: B, idle: Duration)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (cr, cw) = tokio::io::split(client);
    let (ur, uw) = tokio::io::split(upstream);
    let start = tokio::time::Instant::now();
    let last = std::sync::atomic::AtomicU64::new(0);
    let watch = async {
        let check = (idle / 4).max(Duration::from_millis(50));
        loop {
            tokio::time::sleep(check).await;
            let quiet = start
                .elapsed()
                .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
            if quiet >= idle {
                return;
            }
        }
    };
    tokio::select! {
        _ = async { tokio::join!(pump(cr, uw, start, &last), pump(ur, cw, start, &last)) } => {}
        _ = watch => {}
    }
}

/// Copies one direction of a tunnel, noting the time of every read in `last`
/// (milliseconds after `start`).
async fn pump<R, W>(
    mut r: R,
    mut w: W,
    start: tokio::time::Instant,
    last: &std::sync::atomic::AtomicU64,
) where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
                last.store(ms, Ordering::Relaxed);
                if w.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = w.shutdown().await;
}

/// The host the request names: an absolute-form target's authority (which replaces
/// Host, RFC 9112 section 3.2.2), else Host, else HTTP/2's `:authority`.
fn named_host(req: &Request<Incoming>) -> Option<HeaderValue> {
    let authority = || {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    };
    if req.version() <= Version::HTTP_11 && req.uri().authority().is_some() {
        return authority();
    }
    req.headers().get(header::HOST).cloned().or_else(authority)
}

fn request_host(req: &Request<Incoming>) -> Option<String> {
    let raw = named_host(req)?.to_str().ok()?.to_owned();
    let host = match raw.rsplit_once(':') {
        Some((h, port)) if !h.ends_with(']') || raw.starts_with('[') => {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h.to_owned()
            } else {
                raw.clone()
            }
        }
        _ => raw.clone(),
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

/// Serves one request.
pub(crate) async fn handle(
    shared: Arc<Context>,
    conn: ConnInfo,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let start = Instant::now();
    // For the error log line: clones that share the request's buffers, no allocation.
    let method = req.method().clone();
    let uri = req.uri().clone();
    let mut req = req;
    // The span's guard exists before the request is served: a request abandoned while
    // it waits (the client went away) still ends its span, as incomplete.
    let mut finisher = shared.tracer.as_ref().and_then(|t| {
        t.on_request(&mut req, conn.client, conn.tls)
            .map(|span| Finisher {
                tracer: t.clone(),
                span: Some(span),
                complete: false,
            })
    });
    let span = finisher.as_mut().and_then(|f| f.span.as_mut());
    let mut resp = serve(&shared, conn, req, start, span).await;
    if shared.draining.load(Ordering::Relaxed) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let error = ProxyError::of(&resp);
    if let Some(mut finisher) = finisher {
        if let Some(span) = finisher.span.as_mut() {
            span.respond(resp.status(), error.map(ProxyError::label));
        }
        resp = resp.map(|inner| {
            OnEnd {
                inner,
                hook: finisher,
            }
            .boxed_unsync()
        });
    }
    if let Some(error) = error {
        tracing::info!(
            target: "access",
            farm = "",
            endpoint = "",
            status = resp.status().as_u16(),
            error = error.label(),
            fault = error.fault().as_str(),
            total_ms = start.elapsed().as_secs_f64() * 1000.0,
            method = %method,
            path = uri.path(),
            client = %conn.client,
        );
    }
    Ok(resp)
}

async fn serve(
    shared: &Arc<Context>,
    conn: ConnInfo,
    mut req: Request<Incoming>,
    start: Instant,
    mut span: Option<&mut Span>,
) -> Response<RespBody> {
    let upgrade = is_upgrade(&req);
    if let Err(error) = hygiene::check(&req, upgrade) {
        return unrouted(shared, error);
    }
    let Some(snapshot) = shared.snapshot.load_full() else {
        return unrouted(shared, ProxyError::NotReady);
    };
    let Some(host) = request_host(&req) else {
        return unrouted(shared, ProxyError::MissingHost);
    };
    if let Some(answer) = max_forwards(&mut req) {
        count_own_answer(shared, answer.status());
        return answer;
    }
    // `OPTIONS *` asks about the server as a whole: the farm at the host's root answers.
    let path = match req.uri().path() {
        "*" => "/",
        p => p,
    };
    let Some(route) = snapshot.routes.find(&host, path) else {
        return unrouted(shared, ProxyError::NoRoute);
    };
    let route_prefix = route.cookie_path();
    let Some(farm) = snapshot.farms.get(route.farm_for(req.headers())).cloned() else {
        return unrouted(shared, ProxyError::NoRoute);
    };
    if let Some(s) = span.as_deref_mut() {
        s.farm = Some(farm.cfg.id.clone());
    }
    let declared = req.body().size_hint().lower();
    match filters::admit(&farm.cfg.filters, conn.tls, &host, req.uri(), declared) {
        filters::Admission::Pass => {}
        filters::Admission::Redirect(r) => {
            count_request(shared, &farm, r.status);
            return redirect_response(r);
        }
        filters::Admission::TooLarge => {
            // Refused before any server sees it.
            return finish_error(shared, &farm, ProxyError::BodyTooLarge);
        }
    }
    let body_limit = farm.cfg.filters.max_request_body_size.unwrap_or(u64::MAX);
    let rewritten = farm
        .cfg
        .filters
        .rewrite
        .as_ref()
        .and_then(|rw| filters::rewrite(rw, route, req.uri()));
    let admitted = match crate::access::admit(
        &shared.metrics,
        snapshot.access.get(&farm.cfg.id).map(|a| &**a),
        &snapshot.config.limits.trusted_proxies,
        &farm.cfg.id,
        conn,
        &mut req,
    )
    .await
    {
        Ok(a) => a,
        Err(refusal) => {
            count_request(shared, &farm, refusal.status());
            return refusal;
        }
    };
    let routed = Routed {
        snapshot: &snapshot,
        farm,
        prefix: route_prefix,
        upgrade,
        body_limit,
        rewritten,
    };
    admitted.respond(forward(shared, conn, req, start, span, routed).await)
}

/// Where an admitted request goes.
struct Routed<'a> {
    snapshot: &'a Snapshot,
    farm: Arc<FarmRt>,
    /// The path prefix of the route it took.
    prefix: &'a str,
    /// Whether the client asked for an upgrade.
    upgrade: bool,
    /// The farm's request body limit in bytes (`u64::MAX` for none).
    body_limit: u64,
    /// The path and query the farm's rewrite made, if any.
    rewritten: Option<String>,
}

/// Rewrites an admitted request for the upstream, picks a server and forwards it.
async fn forward(
    shared: &Arc<Context>,
    conn: ConnInfo,
    mut req: Request<Incoming>,
    start: Instant,
    mut span: Option<&mut Span>,
    routed: Routed<'_>,
) -> Response<RespBody> {
    let Routed {
        snapshot,
        farm,
        prefix: route_prefix,
        upgrade,
        body_limit,
        rewritten,
    } = routed;
    let farm_label = FarmLabel {
        farm: farm.cfg.id.clone(),
    };

    // Rewrite the head for the upstream.
    let original_host = named_host(&req);
    // Only protocols the farm allows are tunnelled (WebSocket by default, never h2c);
    // any other Upgrade is dropped with the hop-by-hop headers and the request is
    // served plainly, as a server may (RFC 9110 section 7.8).
    let upgrade_value = req
        .headers()
        .get(header::UPGRADE)
        .filter(|_| upgrade)
        .filter(|v| upgrade_allowed(v, &farm.cfg.allowed_upgrades))
        .cloned();
    let upgrade = upgrade_value.is_some();
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let http10 = req.version() == Version::HTTP_10;
    let headers = req.headers_mut();
    let trailers = takes_trailers(headers);
    strip_hop_by_hop(headers);
    if trailers {
        // The proxy relays trailers, so it may tell the backend the client takes them
        // (gRPC servers ask for this).
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if http10 {
        // RFC 9110 section 10.1.1: Expect from an HTTP/1.0 client is ignored.
        headers.remove(header::EXPECT);
    }
    // RFC 9113 section 8.2.3: HTTP/2 splits cookies into fields; an HTTP/1.1 backend
    // gets them as one, joined with "; ".
    if headers.get_all(header::COOKIE).iter().nth(1).is_some() {
        let joined = headers
            .get_all(header::COOKIE)
            .iter()
            .map(|v| v.as_bytes())
            .collect::<Vec<_>>()
            .join(&b"; "[..]);
        if let Ok(v) = HeaderValue::from_bytes(&joined) {
            headers.insert(header::COOKIE, v);
        }
    }
    // Forwarding headers are the edge's to write: a client's own are believed only from
    // a configured trusted proxy (issue 12, finding 3).
    let trusted = snapshot
        .config
        .limits
        .trusted_proxies
        .iter()
        .any(|r| r.contains(conn.client.ip()));
    let ip = conn.client.ip().to_string();
    let prev: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let xff = if trusted && !prev.is_empty() {
        format!("{}, {ip}", prev.join(", "))
    } else {
        ip
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    if !trusted {
        for name in ["forwarded", "x-real-ip", "x-forwarded-port"] {
            headers.remove(name);
        }
    }
    if !trusted || !headers.contains_key("x-forwarded-proto") {
        headers.insert(
            "x-forwarded-proto",
            HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
        );
    }
    if let Some(h) = &original_host
        && (!trusted || !headers.contains_key("x-forwarded-host"))
    {
        headers.insert("x-forwarded-host", h.clone());
    }
    // RFC 9110 section 7.6.3: a proxy adds itself to Via.
    let via = match headers.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {VIA}")).ok(),
        None => Some(HeaderValue::from_static(VIA)),
    };
    if let Some(v) = via {
        headers.insert(header::VIA, v);
    }
    let upstream_host = match &farm.cfg.backend_host {
        Some(b) => HeaderValue::from_str(b).ok(),
        None => original_host.clone(),
    };
    if let Some(v) = &upstream_host {
        headers.insert(header::HOST, v.clone());
    }
    if farm.cfg.filters.request_headers.is_some()
        && let Some(ops) = snapshot.header_ops.get(&farm.cfg.id)
    {
        ops.apply(headers);
    }
    if let Some(u) = upgrade_value.clone() {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let h2_upstream = farm.cfg.upstream.protocol == UpstreamProtocol::Http2;
    if trailers && !h2_upstream {
        // RFC 9110 section 10.1.4: TE is listed in Connection by whoever sends it.
        let connection = if upgrade { "upgrade, te" } else { "te" };
        headers.insert(header::CONNECTION, HeaderValue::from_static(connection));
    }
    let pq = rewritten.unwrap_or_else(|| {
        req.uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into())
    });
    *req.uri_mut() = if h2_upstream {
        let scheme = if farm.cfg.upstream.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let auth = upstream_host
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("localhost")
            .to_owned();
        req.headers_mut().remove(header::HOST);
        // From parts, not a formatted string: `OPTIONS *` would make `host*` an authority.
        Uri::builder()
            .scheme(scheme)
            .authority(auth)
            .path_and_query(pq)
            .build()
            .unwrap_or_default()
    } else {
        Uri::try_from(pq).unwrap_or_default()
    };
    *req.version_mut() = if h2_upstream {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };

    // Affinity cookies and protected cookie names; a sticky endpoint is used only while
    // it is in service for this farm.
    let session = shared
        .session
        .on_request(&farm.cfg, req.headers_mut(), SystemTime::now());
    let sticky: Option<usize> = session.sticky.as_deref().and_then(|k| farm.find_usable(k));
    let hash_key: Option<Vec<u8>> = match farm.cfg.affinity.mode {
        AffinityMode::SourceIp => Some(conn.client.ip().to_string().into_bytes()),
        _ if farm.cfg.load_balancing == portcullis_crds::config::LoadBalancing::ConsistentHash => {
            match &farm.cfg.hash_header {
                Some(h) => req
                    .headers()
                    .get(h.as_str())
                    .map(|v| v.as_bytes().to_vec())
                    .or_else(|| Some(conn.client.ip().to_string().into_bytes())),
                None => Some(conn.client.ip().to_string().into_bytes()),
            }
        }
        _ => None,
    };

    let bytes_in = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let method = req.method().clone();
    let uri = req.uri().clone();
    let mut attempts = 1 + farm.cfg.upstream.retries.min(3);
    let mut tried: Option<usize> = None;
    // The endpoint to send to again on a fresh connection, when a pooled one turned out
    // closed before the request was written (once per request, outside the retries).
    let mut fresh_on: Option<usize> = None;
    let mut stale_replayed = false;
    let mut last_error = ProxyError::NoHealthyEndpoint;
    // A bodiless idempotent request can be sent again even after it reached a server
    // (a keep-alive connection the server closed as we wrote is the usual case).
    let replay = (matches!(
        method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    ) && req.body().is_end_stream()
        && !upgrade)
        .then(|| {
            let mut r = Request::new(());
            *r.method_mut() = req.method().clone();
            *r.uri_mut() = req.uri().clone();
            *r.version_mut() = req.version();
            *r.headers_mut() = req.headers().clone();
            r
        });
    let body_idle = farm.cfg.upstream.idle_timeout.get();
    let progress = BodyProgress::new(req.body().is_end_stream());
    let mut req: Option<Request<ReqBody>> = Some(req.map(|inner| {
        http_body_util::Either::Left(Counted {
            inner,
            count: bytes_in.clone(),
            progress: progress.clone(),
            // Only a body still to come can stall; a bodiless request allocates nothing.
            idle: (!progress.is_sent()).then(|| Box::pin(tokio::time::sleep(body_idle))),
            idle_timeout: body_idle,
            limit: body_limit,
        })
    }));
    let mut attempt = 0;
    while attempt < attempts {
        let first = attempt == 0;
        attempt += 1;
        if req.is_none() {
            match &replay {
                Some(r) => {
                    let mut again =
                        Request::new(http_body_util::Either::Right(http_body_util::Empty::new()));
                    *again.method_mut() = r.method().clone();
                    *again.uri_mut() = r.uri().clone();
                    *again.version_mut() = r.version();
                    *again.headers_mut() = r.headers().clone();
                    req = Some(again);
                    progress.finish();
                }
                None => break,
            }
        }
        let reuse = if fresh_on.is_some() {
            Reuse::Never
        } else {
            Reuse::Idle
        };
        let pick = match fresh_on.take() {
            Some(i) => Some(i),
            None if first => sticky.or_else(|| farm.pick(hash_key.as_deref(), None)),
            None => farm.pick(hash_key.as_deref(), tried),
        };
        let Some(i) = pick else { break };
        tried = Some(i);
        let endpoint = farm.endpoints[i].endpoint.clone();
        if let Some(s) = span.as_deref_mut() {
            s.endpoint = Some(endpoint.key.clone());
        }
        let checkout = match endpoint
            .checkout(
                farm.tls.clone(),
                farm.cfg.upstream.connect_timeout.get(),
                reuse,
            )
            .await
        {
            Ok(c) => c,
            Err(e) => {
                last_error = ProxyError::from(&e);
                if last_error.counts_against_server() {
                    farm.record(i, true);
                }
                continue;
            }
        };
        let upstream_start = Instant::now();
        let guard = endpoint.enter();
        let r = req.take().expect("request present until sent");
        let (result, h1_sender) = send(
            checkout.sender,
            r,
            &progress,
            farm.cfg.upstream.first_byte_timeout.get(),
        )
        .await;
        match result {
            SendResult::NotSent(back) => {
                // Nothing reached the server: always safe to retry.
                req = Some(back);
                last_error = ProxyError::UpstreamClosed;
                drop(guard);
                if checkout.reused && !stale_replayed {
                    // The server closed the pooled connection while it sat idle (the
                    // keep-alive race), and hyper gave the request back unwritten. Not
                    // the server failing, and not the request's retry budget: one more
                    // try, same server, new connection.
                    stale_replayed = true;
                    fresh_on = Some(i);
                    attempts += 1;
                }
                continue;
            }
            SendResult::Failed if progress.client_failed() => {
                // The client's body was malformed, stalled, abandoned or too large: its
                // fault, not the server's, so passive health is not told (issue 12,
                // finding 3).
                let error = if progress.too_large() {
                    ProxyError::BodyTooLarge
                } else if progress.stalled() {
                    ProxyError::RequestBodyStalled
                } else {
                    ProxyError::BadRequestBody
                };
                return finish_error(shared, &farm, error);
            }
            SendResult::Failed => {
                last_error = ProxyError::UpstreamReset;
                farm.record(i, last_error.counts_against_server());
                // The request may have been acted on: only one safe to send twice goes
                // to another server.
                if replay.is_some() || last_error.retryable() {
                    continue;
                }
                return finish_error(shared, &farm, last_error);
            }
            SendResult::Timeout => {
                farm.record(i, ProxyError::FirstByteTimeout.counts_against_server());
                return finish_error(shared, &farm, ProxyError::FirstByteTimeout);
            }
            SendResult::Ok(mut resp) => {
                let first_byte = upstream_start.elapsed();
                endpoint.observe_latency(first_byte);
                shared
                    .metrics
                    .upstream_latency
                    .get_or_create(&farm_label)
                    .observe(first_byte.as_secs_f64());
                let status = resp.status();
                if status == StatusCode::SWITCHING_PROTOCOLS
                    && !switch_matches(upgrade_value.as_ref(), resp.headers())
                {
                    // A 101 the client did not ask for, or to another protocol, would
                    // open an unchecked tunnel. One failure, one request answered 502.
                    farm.record(i, ProxyError::Unexpected101.counts_against_server());
                    return finish_error(shared, &farm, ProxyError::Unexpected101);
                }
                farm.record(i, status.is_server_error() && farm.cfg.passive.count_5xx);
                count_request(shared, &farm, status);
                if status == StatusCode::SWITCHING_PROTOCOLS
                    && let Some(client_up) = client_upgrade
                {
                    {
                        let upstream_up = hyper::upgrade::on(&mut resp);
                        // Tracked, so a drain gives open tunnels until its timeout.
                        let idle = farm.cfg.upstream.idle_timeout.get();
                        shared.tracker.spawn(async move {
                            let _guard = guard;
                            if let (Ok(c), Ok(u)) = (client_up.await, upstream_up.await) {
                                tunnel(TokioIo::new(c), TokioIo::new(u), idle).await;
                            }
                        });
                        let (parts, _) = resp.into_parts();
                        return Response::from_parts(
                            parts,
                            http_body_util::Empty::new()
                                .map_err(|n| match n {})
                                .boxed_unsync(),
                        );
                    }
                }
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                // The client talks to the proxy, not to the backend: an HTTP/1.0
                // backend's version is not the answer's (RFC 9110 section 6.2).
                parts.version = Version::HTTP_11;
                if status == StatusCode::NO_CONTENT {
                    // RFC 9110 section 8.6: a 204 has no Content-Length.
                    parts.headers.remove(header::CONTENT_LENGTH);
                }
                shared.session.on_response(
                    &farm.cfg,
                    &session,
                    &endpoint.identity,
                    conn.tls,
                    route_prefix,
                    &mut parts.headers,
                    SystemTime::now(),
                );
                let tracked = Tracked {
                    inner: body,
                    idle: tokio::time::sleep(farm.cfg.upstream.idle_timeout.get()),
                    idle_timeout: farm.cfg.upstream.idle_timeout.get(),
                    done: Some(Done {
                        endpoint,
                        sender: h1_sender,
                        _guard: guard,
                        farm: farm.clone(),
                        status: status.as_u16(),
                        method: method.clone(),
                        uri: uri.clone(),
                        client: conn.client,
                        start,
                        first_byte,
                        bytes_in: bytes_in.clone(),
                        bytes_out: 0,
                        clean: false,
                    }),
                };
                return Response::from_parts(parts, tracked.boxed_unsync());
            }
        }
    }
    finish_error(shared, &farm, last_error)
}

/// Answers a request of `farm` with `error`, counted under the farm.
fn finish_error(shared: &Context, farm: &FarmRt, error: ProxyError) -> Response<RespBody> {
    count_request(shared, farm, error.status());
    error.response()
}

/// Answers a request that reached no farm, counted under `farm=""`.
fn unrouted(shared: &Context, error: ProxyError) -> Response<RespBody> {
    count_own_answer(shared, error.status());
    error.response()
}

/// Counts an answer of the proxy's own, before any farm, as `farm=""`.
fn count_own_answer(shared: &Context, status: StatusCode) {
    shared
        .metrics
        .requests
        .get_or_create(&FarmStatus {
            farm: String::new(),
            status: status.as_u16(),
        })
        .inc();
}

/// `Max-Forwards` on OPTIONS and TRACE (RFC 9110 section 7.6.2): 0 makes the proxy the
/// final recipient, which answers OPTIONS itself and refuses TRACE (405; it does not
/// reflect requests, which would echo their cookies back); a larger value is decremented.
fn max_forwards<B>(req: &mut Request<B>) -> Option<Response<RespBody>> {
    if !matches!(*req.method(), http::Method::OPTIONS | http::Method::TRACE) {
        return None;
    }
    let value = req.headers().get(header::MAX_FORWARDS)?.as_bytes();
    // `1*DIGIT` only; an unparsable value is left for the next hop to judge.
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = value.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    });
    if n > 0 {
        req.headers_mut()
            .insert(header::MAX_FORWARDS, HeaderValue::from(n - 1));
        return None;
    }
    let mut r = Response::new(full(""));
    r.headers_mut().insert(
        header::ALLOW,
        HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"),
    );
    if req.method() == http::Method::TRACE {
        *r.status_mut() = ProxyError::MaxForwardsTrace.status();
        ProxyError::MaxForwardsTrace.mark(&mut r);
    }
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    Some(r)
}

/// Counts a response of `farm` in `portcullis_requests_total{farm,status}`.
fn count_request(shared: &Context, farm: &FarmRt, status: StatusCode) {
    shared
        .metrics
        .requests
        .get_or_create(&FarmStatus {
            farm: farm.cfg.id.clone(),
            status: status.as_u16(),
        })
        .inc();
}

enum SendResult {
    Ok(Response<Incoming>),
    NotSent(Request<ReqBody>),
    Failed,
    Timeout,
}

/// Waits for the response head. The first-byte timeout starts once the request body is
/// sent: a client uploading slowly is not a server failing to answer.
async fn send(
    sender: Sender,
    req: Request<ReqBody>,
    progress: &BodyProgress,
    first_byte: Duration,
) -> (SendResult, Option<http1::SendRequest<ReqBody>>) {
    let deadline = async {
        progress.sent().await;
        tokio::time::sleep(first_byte).await;
    };
    match sender {
        Sender::H1(mut s) => {
            let r = exchange(s.try_send_request(req), deadline).await;
            let keep = matches!(r, SendResult::Ok(_)).then_some(s);
            (r, keep)
        }
        Sender::H2(mut s) => (exchange(s.try_send_request(req), deadline).await, None),
    }
}

async fn exchange(
    response: impl Future<
        Output = Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<ReqBody>>>,
    >,
    deadline: impl Future<Output = ()>,
) -> SendResult {
    tokio::select! {
        r = response => match r {
            Ok(resp) => SendResult::Ok(resp),
            Err(mut e) => match e.take_message() {
                Some(back) => SendResult::NotSent(back),
                None => SendResult::Failed,
            },
        },
        _ = deadline => SendResult::Timeout,
    }
}

struct Done {
    endpoint: Arc<Endpoint>,
    sender: Option<http1::SendRequest<ReqBody>>,
    _guard: InFlight,
    farm: Arc<FarmRt>,
    status: u16,
    method: http::Method,
    uri: http::Uri,
    client: SocketAddr,
    start: Instant,
    first_byte: Duration,
    bytes_in: Arc<std::sync::atomic::AtomicU64>,
    bytes_out: u64,
    clean: bool,
}

impl Drop for Done {
    fn drop(&mut self) {
        if self.clean
            && let Some(s) = self.sender.take()
        {
            self.endpoint.give_back(s);
        }
        tracing::info!(
            target: "access",
            farm = %self.farm.cfg.id,
            endpoint = %self.endpoint.key,
            status = self.status,
            total_ms = self.start.elapsed().as_secs_f64() * 1000.0,
            upstream_first_byte_ms = self.first_byte.as_secs_f64() * 1000.0,
            bytes_in = self.bytes_in.load(Ordering::Relaxed),
            bytes_out = self.bytes_out,
            complete = self.clean,
            method = %self.method,
            path = self.uri.path(),
            client = %self.client,
        );
    }
}

pin_project_lite::pin_project! {
    /// An upstream response body: idle timeout, byte count, connection return, access log.
    struct Tracked {
        #[pin]
        inner: Incoming,
        #[pin]
        idle: tokio::time::Sleep,
        idle_timeout: Duration,
        done: Option<Done>,
    }
    impl PinnedDrop for Tracked {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if this.inner.is_end_stream()
                && let Some(d) = this.done.as_mut()
            {
                d.clean = true;
            }
        }
    }
}

/// The upstream body stalled longer than the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("failed to read the upstream body: idle timeout")]
struct IdleTimeout;

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(d), Some(data)) = (this.done.as_mut(), frame.data_ref()) {
                    d.bytes_out += data.len() as u64;
                }
                let deadline = tokio::time::Instant::now() + *this.idle_timeout;
                this.idle.as_mut().reset(deadline);
                if this.inner.is_end_stream()
                    && let Some(mut d) = this.done.take()
                {
                    d.clean = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done.take();
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                if let Some(mut d) = this.done.take() {
                    d.clean = true;
                }
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.idle.poll(cx).is_ready() {
                    this.done.take();
                    return Poll::Ready(Some(Err(Box::new(IdleTimeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A traced response's span ends with its body: complete, or abandoned when the body
/// broke off or was dropped early.
impl EndHook for Finisher {
    fn ended(&mut self, complete: bool) {
        self.complete = complete;
    }
}

//! The access phase: what a request must pass before the proxy picks a server, in this
//! order: source ranges, rate limits, CORS preflight, basic auth, external auth.
//!
//! A refused request is answered by the proxy itself (403 for a source range, the
//! farm's status for a rate limit, 401 for basic authentication, what the auth service
//! decided for external authentication), so it never reaches a server and never counts in
//! passive health; it is counted in `portcullis_access_refused_total{farm,reason}`
//! (and, by the caller, in `portcullis_requests_total`). A CORS preflight from an allowed
//! origin is answered here too (204, counted in `portcullis_requests_total` only). The
//! state of each farm's checks lives in the snapshot ([`AccessMap`]), built on every
//! config load from the previous one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use portcullis_crds::config::{
    AccessConfig, BasicAuthConfig, CorsConfig, DataplaneConfig, UpstreamTrust,
};
use sha2::{Digest, Sha256};

use crate::bind::ConnInfo;
use crate::body::{EndHook, OnEnd, RespBody};
use crate::error::ProxyError;
use crate::extauth::{ExternalAuth, Verdict};
use crate::htpasswd::Htpasswd;
use crate::metrics::{FarmReason, Metrics};
use crate::ratelimit::{InFlightGuard, Limited, RateLimiter};
use crate::source::SourceError;

/// The access state of every farm that checks something, by farm id.
pub(crate) type AccessMap = HashMap<String, Arc<FarmAccess>>;

/// One farm's access checks and their state.
#[derive(Debug)]
pub(crate) struct FarmAccess {
    cfg: AccessConfig,
    limiter: Option<Arc<RateLimiter>>,
    basic_auth: Option<BasicAuth>,
    external_auth: Option<ExternalAuth>,
}

/// Distinct `Authorization` values whose bcrypt verdict is kept, per farm and snapshot.
const VERDICTS: usize = 1024;

/// A farm's htpasswd users and the verdicts on slow (bcrypt) credentials.
///
/// bcrypt is slow by design, so each distinct `Authorization` value is checked at most
/// once per snapshot: its verdict (right or wrong) is kept under the SHA-256 of the
/// value, and requests that repeat it, even at the same time, wait for that one check,
/// which runs off the request threads. The cache holds [`VERDICTS`] values and starts
/// empty again when full; a new snapshot (any reload) starts it empty too, so a changed
/// htpasswd file is never judged by old verdicts.
#[derive(Debug)]
struct BasicAuth {
    users: Arc<Htpasswd>,
    challenge: HeaderValue,
    verdicts: Mutex<HashMap<[u8; 32], Arc<tokio::sync::OnceCell<bool>>>>,
}

impl BasicAuth {
    fn load(dir: &Path, farm: &str, cfg: &BasicAuthConfig) -> Result<Self, SourceError> {
        let path = dir.join(&cfg.secret).join("auth");
        let text = std::fs::read_to_string(&path).map_err(|e| SourceError::Htpasswd {
            secret: cfg.secret.clone(),
            message: format!("failed to read {}: {e}", path.display()),
        })?;
        let (users, skipped) = Htpasswd::parse(&text);
        if !skipped.is_empty() {
            tracing::warn!(farm, secret = %cfg.secret, lines = ?skipped, "htpasswd lines without a supported hash (bcrypt, apr1, MD5-crypt, SHA-1) are ignored");
        }
        let challenge = HeaderValue::from_str(&format!("Basic realm=\"{}\"", cfg.realm))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic realm=\"Restricted\""));
        Ok(BasicAuth {
            users: Arc::new(users),
            challenge,
            verdicts: Mutex::new(HashMap::new()),
        })
    }

    /// Whether the request carries the credentials of a user.
    async fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return false;
        };
        let Some((user, password)) = basic_credentials(value) else {
            return false;
        };
        if !self.users.is_slow(&user) {
            return self.users.check(&user, &password);
        }
        let key: [u8; 32] = Sha256::digest(value.as_bytes()).into();
        let verdict = {
            let mut verdicts = self.verdicts.lock();
            if verdicts.len() >= VERDICTS && !verdicts.contains_key(&key) {
                verdicts.clear();
            }
            verdicts.entry(key).or_default().clone()
        };
        let users = self.users.clone();
        *verdict
            .get_or_init(|| async move {
                tokio::task::spawn_blocking(move || users.check(&user, &password))
                    .await
                    .unwrap_or(false)
            })
            .await
    }
}

/// The user and password of a `Basic` `Authorization` value.
fn basic_credentials(value: &HeaderValue) -> Option<(String, String)> {
    let value = value.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Builds the access state of `config`'s farms. Farms that check nothing get no entry.
pub(crate) fn build(
    config: &DataplaneConfig,
    certs_dir: &Path,
    previous: Option<&AccessMap>,
) -> Result<AccessMap, SourceError> {
    let mut out = AccessMap::new();
    let mut system_roots = None;
    for (id, farm) in &config.farms {
        if farm.access.is_empty() {
            continue;
        }
        let before = previous.and_then(|p| p.get(id));
        // Counts carry over while the farm's limits stay the same.
        let limiter = farm.access.rate_limit.as_ref().map(|r| {
            before
                .filter(|b| b.cfg.rate_limit.as_ref() == Some(r))
                .and_then(|b| b.limiter.clone())
                .unwrap_or_else(|| Arc::new(RateLimiter::new(r)))
        });
        let basic_auth = match &farm.access.basic_auth {
            Some(b) => Some(BasicAuth::load(certs_dir, id, b)?),
            None => None,
        };
        let external_auth = match &farm.access.external_auth {
            Some(e) => Some(ExternalAuth::new(e, || {
                if let Some(c) = &system_roots {
                    return Ok(Arc::clone(c));
                }
                let c = crate::tls::client_config(certs_dir, &UpstreamTrust::System, false)?;
                system_roots = Some(c.clone());
                Ok(c)
            })?),
            None => None,
        };
        out.insert(
            id.clone(),
            Arc::new(FarmAccess {
                cfg: farm.access.clone(),
                limiter,
                basic_auth,
                external_auth,
            }),
        );
    }
    Ok(out)
}

/// A request let through: what must live as long as its response, and what its
/// response gets.
#[derive(Debug, Default)]
pub(crate) struct Admitted {
    in_flight: Option<InFlightGuard>,
    /// CORS headers for an allowed origin.
    cors: Vec<(HeaderName, HeaderValue)>,
}

impl Admitted {
    /// The response to send, with whatever the access phase adds to it.
    pub(crate) fn respond(self, mut resp: Response<RespBody>) -> Response<RespBody> {
        for (name, value) in self.cors {
            if name == header::VARY {
                resp.headers_mut().append(name, value);
            } else {
                resp.headers_mut().insert(name, value);
            }
        }
        match self.in_flight {
            // The request stays in flight until its response body ends.
            Some(guard) => resp.map(|inner| {
                OnEnd {
                    inner,
                    hook: Some(guard),
                }
                .boxed_unsync()
            }),
            None => resp,
        }
    }
}

/// A response body holds its request's place among the client's requests in flight
/// until it ends (its last frame is read, before it is written) or is dropped.
impl EndHook for Option<InFlightGuard> {
    fn ended(&mut self, _complete: bool) {
        self.take();
    }
}

/// The access phase of farm `farm` for `req`: `Ok` lets it through, `Err` is the
/// proxy's answer (counted here by reason, not yet in `requests_total`).
pub(crate) async fn admit<B>(
    metrics: &Metrics,
    access: Option<&FarmAccess>,
    trusted: &[portcullis_crds::config::IpRange],
    farm: &str,
    conn: ConnInfo,
    req: &mut Request<B>,
) -> Result<Admitted, Response<RespBody>> {
    let Some(access) = access else {
        return Ok(Admitted::default());
    };
    let refused = |error: ProxyError, resp: Response<RespBody>| {
        metrics
            .access_refused
            .get_or_create(&FarmReason {
                farm: farm.to_owned(),
                reason: error.label(),
            })
            .inc();
        resp
    };
    let client = client_ip(conn.client.ip(), req.headers(), trusted);
    if let Some(ranges) = &access.cfg.source_ranges
        && !ranges.admits(client)
    {
        let error = ProxyError::SourceRange;
        return Err(refused(error, error.response()));
    }
    let mut admitted = Admitted::default();
    if let (Some(limiter), Some(cfg)) = (&access.limiter, &access.cfg.rate_limit) {
        match limiter.take(client, Instant::now()) {
            Ok(guard) => admitted.in_flight = Some(guard),
            Err(limited) => {
                let error = limited.error();
                let status = StatusCode::from_u16(cfg.status_code).unwrap_or(error.status());
                let mut resp = error.response_with(status);
                let retry = match limited {
                    Limited::Rate(wait) => wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                    Limited::Connections | Limited::Full => 1,
                };
                resp.headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from(retry.max(1)));
                return Err(refused(error, resp));
            }
        }
    }
    // Preflights come without credentials: they are answered before authentication.
    if let Some(cors) = &access.cfg.cors
        && let Some(origin) = req
            .headers()
            .get(header::ORIGIN)
            .filter(|o| o.to_str().is_ok_and(|o| cors.allows(o)))
    {
        let preflight = req.method() == Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if preflight {
            return Err(preflight_answer(cors, origin));
        }
        admitted.cors = cors_headers(cors, origin);
    }
    // After the rate limits, so they bound the bcrypt checks a client can ask for.
    if let Some(basic) = &access.basic_auth
        && !basic.admits(req.headers()).await
    {
        let error = ProxyError::BasicAuth;
        let mut resp = error.response();
        resp.headers_mut()
            .insert(http::header::WWW_AUTHENTICATE, basic.challenge.clone());
        return Err(refused(error, resp));
    }
    if let Some(external) = &access.external_auth {
        match external.check(req, client, conn.tls).await {
            Verdict::Allow(set) => {
                let headers = req.headers_mut();
                for (name, value) in set {
                    headers.remove(&name);
                    if let Some(v) = value {
                        headers.insert(name, v);
                    }
                }
            }
            Verdict::Refuse(resp, reason) => return Err(refused(reason, resp)),
        }
    }
    Ok(admitted)
}

/// The CORS headers of every answer to an allowed `origin`.
fn cors_headers(cors: &CorsConfig, origin: &HeaderValue) -> Vec<(HeaderName, HeaderValue)> {
    // Browsers refuse `*` with credentials: then the origin itself is allowed.
    let any = cors.allow_origins.iter().any(|o| o == "*") && !cors.allow_credentials;
    let mut out = Vec::new();
    if any {
        out.push((
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        ));
    } else {
        out.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()));
        out.push((header::VARY, HeaderValue::from_static("Origin")));
    }
    if cors.allow_credentials {
        out.push((
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        ));
    }
    if let Ok(v) = HeaderValue::from_str(&cors.expose_headers.join(", "))
        && !cors.expose_headers.is_empty()
    {
        out.push((header::ACCESS_CONTROL_EXPOSE_HEADERS, v));
    }
    out
}

/// The proxy's `204` to a preflight from an allowed `origin`.
fn preflight_answer(cors: &CorsConfig, origin: &HeaderValue) -> Response<RespBody> {
    let mut resp = Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    for (name, value) in cors_headers(cors, origin) {
        h.append(name, value);
    }
    for (name, list) in [
        (header::ACCESS_CONTROL_ALLOW_METHODS, &cors.allow_methods),
        (header::ACCESS_CONTROL_ALLOW_HEADERS, &cors.allow_headers),
    ] {
        if let Ok(v) = HeaderValue::from_str(&list.join(", ")) {
            h.insert(name, v);
        }
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(cors.max_age),
    );
    resp
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, the last
/// address of `X-Forwarded-For` that is not one (the first that a trusted proxy did not
/// write). IPv4-mapped IPv6 addresses are IPv4.
pub(crate) fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[portcullis_crds::config::IpRange],
) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|r| r.contains(ip));
    let mut client = peer.to_canonical();
    if !is_trusted(client) {
        return client;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.into_iter().rev() {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            // Whatever wrote this is not trusted: the last good address stands.
            return client;
        };
        client = ip.to_canonical();
        if !is_trusted(client) {
            return client;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_crds::config::IpRange;

    #[test]
    fn basic_credentials_are_decoded_whatever_the_scheme_case() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        // "alice:open:sesame" — the password may hold colons.
        assert_eq!(
            basic_credentials(&v("basic YWxpY2U6b3BlbjpzZXNhbWU=")),
            Some(("alice".into(), "open:sesame".into()))
        );
        assert_eq!(basic_credentials(&v("Bearer YWxpY2U6eA==")), None);
        assert_eq!(basic_credentials(&v("Basic !!!")), None);
        assert_eq!(basic_credentials(&v("Basic YWxpY2U=")), None);
    }

    #[test]
    fn the_client_is_the_peer_unless_a_trusted_proxy_forwarded_it() {
        let trusted: Vec<IpRange> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.1.1.1".parse().unwrap());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // An untrusted peer's header is not believed.
        assert_eq!(client_ip(ip("192.0.2.1"), &h, &trusted), ip("192.0.2.1"));
        // A trusted peer's is, skipping the trusted hops.
        assert_eq!(client_ip(ip("10.2.2.2"), &h, &trusted), ip("203.0.113.9"));
        assert_eq!(
            client_ip(ip("::ffff:10.2.2.2"), &h, &trusted),
            ip("203.0.113.9")
        );
        h.insert("x-forwarded-for", "junk, 10.1.1.1".parse().unwrap());
        assert_eq!(client_ip(ip("10.2.2.2"), &h, &trusted), ip("10.1.1.1"));
        assert_eq!(
            client_ip(ip("10.2.2.2"), &HeaderMap::new(), &trusted),
            ip("10.2.2.2")
        );
    }
}

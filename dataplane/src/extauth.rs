//! External authentication (ingress-nginx's `auth-url`): a subrequest to an auth service
//! decides whether a request goes on.
//!
//! The subrequest carries the original request's headers (not its body) and the
//! `X-Original-*`/forwarding headers ingress-nginx sends. It goes over the dataplane's
//! own upstream connections ([`connect_io`], HTTP/1.1, rustls with the system roots for
//! `https://`), a few kept alive per farm. The whole exchange has [`TIMEOUT`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use portcullis_crds::config::{
    EndpointIdentity, ExternalAuthConfig, UpstreamProtocol, UpstreamTlsIdentity, UpstreamTrust,
};
use rustls::ClientConfig;

use crate::body::{HOP_BY_HOP, RespBody};
use crate::error::ProxyError;
use crate::pool::connect_io;
use crate::source::SourceError;

/// The longest a subrequest may take, connect to end of answer; beyond it the client
/// gets 500.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept to the auth service, per farm.
const MAX_IDLE: usize = 8;
/// The most of an auth answer's body read (to keep its connection); a longer body closes
/// the connection instead.
const MAX_BODY: usize = 64 * 1024;

/// Headers of the original request that are not passed to the auth service besides the
/// hop-by-hop ones: the body's framing, and the ones the proxy writes itself.
const NOT_PASSED: [HeaderName; 4] = [
    header::CONTENT_LENGTH,
    header::EXPECT,
    header::HOST,
    header::TRAILER,
];

/// One farm's auth service.
pub(crate) struct ExternalAuth {
    cfg: ExternalAuthConfig,
    method: Method,
    /// Host and port to connect to.
    host: String,
    port: u16,
    /// `Host` of the subrequest.
    authority: HeaderValue,
    path: String,
    tls: Option<Arc<ClientConfig>>,
    idle: Mutex<Vec<http1::SendRequest<Empty<Bytes>>>>,
}

impl std::fmt::Debug for ExternalAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalAuth")
            .field("url", &self.cfg.url)
            .finish()
    }
}

/// What the auth service decided.
pub(crate) enum Verdict {
    /// Go on, with these headers set on the request.
    Allow(Vec<(HeaderName, Option<HeaderValue>)>),
    /// The proxy's answer to the client, and the reason for the metric.
    Refuse(Response<RespBody>, ProxyError),
}

impl Verdict {
    /// The proxy's own answer for `error`.
    fn refuse(error: ProxyError) -> Verdict {
        Verdict::Refuse(error.response(), error)
    }
}

impl ExternalAuth {
    /// `system` is the TLS client for `https://` services.
    pub(crate) fn new(
        cfg: &ExternalAuthConfig,
        system: impl FnOnce() -> Result<Arc<ClientConfig>, SourceError>,
    ) -> Result<Self, SourceError> {
        let bad = |message: String| SourceError::Translate(format!("externalAuth: {message}"));
        let uri: Uri = cfg
            .url
            .parse()
            .map_err(|e| bad(format!("url {:?}: {e}", cfg.url)))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad(format!("url {:?} is not http or https", cfg.url))),
        };
        let auth = uri
            .authority()
            .ok_or_else(|| bad(format!("url {:?} has no host", cfg.url)))?;
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        let method = Method::from_bytes(cfg.method.as_bytes())
            .map_err(|_| bad(format!("method {:?}", cfg.method)))?;
        Ok(ExternalAuth {
            cfg: cfg.clone(),
            method,
            host: host.to_owned(),
            port: auth.port_u16().unwrap_or(if https { 443 } else { 80 }),
            authority: HeaderValue::from_str(auth.as_str())
                .map_err(|_| bad(format!("url {:?} has an invalid host", cfg.url)))?,
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            tls: if https { Some(system()?) } else { None },
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Asks the auth service about `req` from `client`, received over TLS when `tls`.
    pub(crate) async fn check<B>(&self, req: &Request<B>, client: IpAddr, tls: bool) -> Verdict {
        let original = original_url(req, tls);
        let sub = self.subrequest(req, client, tls, &original);
        let answer = match tokio::time::timeout(TIMEOUT, self.exchange(sub)).await {
            Ok(Ok(a)) => a,
            Ok(Err(why)) => {
                tracing::warn!(url = %self.cfg.url, error = why, "external auth failed");
                return Verdict::refuse(ProxyError::ExternalAuthError);
            }
            Err(_) => {
                tracing::warn!(url = %self.cfg.url, "external auth timed out");
                return Verdict::refuse(ProxyError::ExternalAuthTimeout);
            }
        };
        let (status, headers) = answer;
        if status.is_success() {
            let set = self
                .cfg
                .response_headers
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .map(|name| {
                    let value = headers.get(&name).cloned();
                    (name, value)
                })
                .collect();
            return Verdict::Allow(set);
        }
        match status {
            StatusCode::UNAUTHORIZED => match &self.cfg.signin {
                Some(signin) => {
                    let sep = if signin.contains('?') { '&' } else { '?' };
                    let location = format!("{signin}{sep}rd={}", percent_encode(&original));
                    let mut resp = ProxyError::ExternalAuthSignin.response();
                    if let Ok(v) = HeaderValue::from_str(&location) {
                        resp.headers_mut().insert(header::LOCATION, v);
                    }
                    // Counted as a refusal, whatever the client is told to do next.
                    Verdict::Refuse(resp, ProxyError::ExternalAuth)
                }
                None => {
                    let mut resp = ProxyError::ExternalAuth.response_with(status);
                    for v in headers.get_all(header::WWW_AUTHENTICATE) {
                        resp.headers_mut()
                            .append(header::WWW_AUTHENTICATE, v.clone());
                    }
                    Verdict::Refuse(resp, ProxyError::ExternalAuth)
                }
            },
            StatusCode::FORBIDDEN => Verdict::Refuse(
                ProxyError::ExternalAuth.response(),
                ProxyError::ExternalAuth,
            ),
            other => {
                tracing::warn!(url = %self.cfg.url, status = other.as_u16(), "external auth answered neither 2xx, 401 nor 403");
                Verdict::refuse(ProxyError::ExternalAuthError)
            }
        }
    }

    fn subrequest<B>(
        &self,
        req: &Request<B>,
        client: IpAddr,
        tls: bool,
        original: &str,
    ) -> Request<Empty<Bytes>> {
        let mut sub = Request::new(Empty::new());
        *sub.method_mut() = self.method.clone();
        *sub.uri_mut() = Uri::try_from(self.path.as_str()).unwrap_or_default();
        let h = sub.headers_mut();
        for (name, value) in req.headers() {
            if !NOT_PASSED.contains(name) && !HOP_BY_HOP.contains(name) {
                h.append(name, value.clone());
            }
        }
        h.insert(header::HOST, self.authority.clone());
        let uri = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let set = |h: &mut HeaderMap, name: &'static str, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                h.insert(name, v);
            }
        };
        set(h, "x-original-url", original);
        set(h, "x-original-method", req.method().as_str());
        set(h, "x-original-uri", &uri);
        set(h, "x-auth-request-redirect", &uri);
        set(h, "x-real-ip", &client.to_string());
        set(h, "x-forwarded-for", &client.to_string());
        set(h, "x-forwarded-proto", if tls { "https" } else { "http" });
        if let Some(host) = request_authority(req) {
            set(h, "x-forwarded-host", &host);
        }
        sub
    }

    /// Sends `sub` on an idle connection or a new one; the status and headers of the
    /// answer.
    async fn exchange(
        &self,
        sub: Request<Empty<Bytes>>,
    ) -> Result<(StatusCode, HeaderMap), &'static str> {
        let idle = {
            let mut idle = self.idle.lock();
            std::iter::from_fn(|| idle.pop()).find(|s| !s.is_closed())
        };
        let mut sender = match idle {
            Some(s) => s,
            None => self.connect().await?,
        };
        sender.ready().await.map_err(|_| "connection closed")?;
        let resp = sender
            .send_request(sub)
            .await
            .map_err(|_| "request failed")?;
        let (parts, body) = resp.into_parts();
        // Read the body so the connection can be used again; a long one closes it.
        if Limited::new(body, MAX_BODY).collect().await.is_ok() {
            let mut idle = self.idle.lock();
            if idle.len() < MAX_IDLE {
                idle.push(sender);
            }
        }
        Ok((parts.status, parts.headers))
    }

    async fn connect(&self) -> Result<http1::SendRequest<Empty<Bytes>>, &'static str> {
        let addr = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|_| "failed to resolve")?
            .next()
            .ok_or("failed to resolve")?;
        let tls = self.tls.as_ref().map(|_| UpstreamTlsIdentity {
            sni: self.host.clone(),
            trust: UpstreamTrust::System,
        });
        let identity = EndpointIdentity::new(addr, tls, UpstreamProtocol::Http1);
        let io = connect_io(&identity, self.tls.clone())
            .await
            .map_err(|e| ProxyError::from(&e).label())?;
        let (sender, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|_| "handshake failed")?;
        tokio::spawn(conn);
        Ok(sender)
    }
}

/// The host the client named: the target's authority, else `Host`.
fn request_authority<B>(req: &Request<B>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
}

/// `scheme://host/path?query` as the client asked for it.
fn original_url<B>(req: &Request<B>, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let host = request_authority(req).unwrap_or_default();
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    format!("{scheme}://{host}{pq}")
}

/// Percent-encodes all but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_original_url_is_encoded_whole_for_rd() {
        let req = Request::get("/a/b?x=1&y=2")
            .header("host", "shop.example")
            .body(())
            .unwrap();
        let url = original_url(&req, true);
        assert_eq!(url, "https://shop.example/a/b?x=1&y=2");
        assert_eq!(
            percent_encode(&url),
            "https%3A%2F%2Fshop.example%2Fa%2Fb%3Fx%3D1%26y%3D2"
        );
    }
}

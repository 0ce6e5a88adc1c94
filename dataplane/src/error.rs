//! Why the proxy answered a request itself.
//!
//! One value says what failed, the status the client gets, whose fault it was, whether
//! passive health should hear of it and whether another server may be tried. The
//! response carries it as an extension, so logging, tracing and metrics read the value
//! itself rather than parsing a header back; the `x-portcullis-error` header carries
//! its [`label`](ProxyError::label) for the client and for tests.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::BodyExt;

use crate::body::RespBody;

/// Whose fault an error was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// A malformed, ambiguous or oversized request, or a client that stalled.
    Client,
    /// The farm's access policy said no (source ranges, rate limits, authentication).
    Policy,
    /// Nothing routes the request, or the dataplane has no configuration yet.
    Routing,
    /// A server, or the way to it, failed.
    Upstream,
}

impl Fault {
    /// The log field value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Policy => "policy",
            Fault::Routing => "routing",
            Fault::Upstream => "upstream",
        }
    }
}

/// Why the proxy answered a request itself; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ProxyError {
    // The request head (RFC 9110, 9112, 9113).
    /// A target that is not origin, absolute (http/https) or `OPTIONS *` form, or a
    /// `CONNECT` that asks for no tunnel.
    BadRequestTarget,
    /// More than one `Host`.
    DuplicateHost,
    /// A `Host` that is no host.
    BadHost,
    /// A request without any host.
    MissingHost,
    /// A header value with a byte no field value may hold.
    BadHeaderValue,
    /// HTTP/2 `:authority` and `host` disagree.
    AuthorityHostMismatch,
    /// More than one `Content-Length`.
    DuplicateContentLength,
    /// A `Content-Length` that is no length.
    BadContentLength,
    /// Both `Content-Length` and `Transfer-Encoding`.
    ContentLengthAndTransferEncoding,
    /// A transfer coding other than a final `chunked`, or one on HTTP/1.0.
    BadTransferEncoding,
    /// A path that normalizes differently in different servers.
    BadPath,
    /// A request target longer than the listener serves.
    UriTooLong,
    /// An HTTP/1 request line of a major version other than 1.
    HttpVersionNotSupported,
    /// A request the framer did not see as hyper did.
    UnframedRequest,
    /// More header fields than the listener allows.
    TooManyHeaders,
    /// The request body broke off or was malformed.
    BadRequestBody,
    /// The request body stopped arriving for the farm's idle timeout.
    RequestBodyStalled,
    /// The request body is over the farm's limit.
    BodyTooLarge,
    /// `TRACE` with `Max-Forwards: 0`, which the proxy does not reflect.
    MaxForwardsTrace,

    // Routing.
    /// No configuration has been loaded yet.
    NotReady,
    /// No farm publishes the host and path.
    NoRoute,

    // The farm's access policy.
    /// The client is outside the farm's source ranges.
    SourceRange,
    /// Over the farm's request rate.
    RateLimit,
    /// Too many of the client's requests in flight.
    ConnectionLimit,
    /// The rate limiter's client table is full.
    RateLimitFull,
    /// No or wrong basic credentials.
    BasicAuth,
    /// The external auth service refused the request.
    ExternalAuth,
    /// The external auth service refused; the client is sent to sign in.
    ExternalAuthSignin,
    /// The external auth service failed or answered neither 2xx, 401 nor 403.
    ExternalAuthError,
    /// The external auth service did not answer in time.
    ExternalAuthTimeout,

    // The servers.
    /// No server of the farm is in service.
    NoHealthyEndpoint,
    /// The server refused the connection.
    ConnectRefused,
    /// Connecting failed otherwise.
    ConnectFailed,
    /// Connecting took longer than the farm's connect timeout.
    ConnectTimeout,
    /// The upstream TLS handshake failed.
    UpstreamTlsFailed,
    /// The upstream HTTP handshake failed.
    UpstreamHandshakeFailed,
    /// The endpoint is at its connection limit.
    PoolSaturated,
    /// The pooled connection was closed before the request was written.
    UpstreamClosed,
    /// The exchange broke off after the request reached the server.
    UpstreamReset,
    /// No response head within the farm's first-byte timeout.
    FirstByteTimeout,
    /// A `101` the client did not ask for, or to another protocol.
    Unexpected101,
}

impl ProxyError {
    /// The `x-portcullis-error` value, log field and metric label. Stable: operators'
    /// alerts and the tests match on it.
    pub(crate) fn label(self) -> &'static str {
        use ProxyError as E;
        match self {
            E::BadRequestTarget => "bad-request-target",
            E::DuplicateHost => "duplicate-host",
            E::BadHost => "bad-host",
            E::MissingHost => "missing-host",
            E::BadHeaderValue => "bad-header-value",
            E::AuthorityHostMismatch => "authority-host-mismatch",
            E::DuplicateContentLength => "duplicate-content-length",
            E::BadContentLength => "bad-content-length",
            E::ContentLengthAndTransferEncoding => "content-length-and-transfer-encoding",
            E::BadTransferEncoding => "bad-transfer-encoding",
            E::BadPath => "bad-path",
            E::UriTooLong => "uri-too-long",
            E::HttpVersionNotSupported => "http-version-not-supported",
            E::UnframedRequest => "unframed-request",
            E::TooManyHeaders => "too-many-headers",
            // One label for both: a body that stalls is a bad body; the status tells
            // them apart.
            E::BadRequestBody | E::RequestBodyStalled => "bad-request-body",
            E::BodyTooLarge => "body-too-large",
            E::MaxForwardsTrace => "max-forwards-trace",
            E::NotReady => "not-ready",
            E::NoRoute => "no-route",
            E::SourceRange => "source-range",
            E::RateLimit => "rate-limit",
            E::ConnectionLimit => "connection-limit",
            E::RateLimitFull => "rate-limit-full",
            E::BasicAuth => "basic-auth",
            E::ExternalAuth => "external-auth",
            E::ExternalAuthSignin => "external-auth-signin",
            E::ExternalAuthError => "external-auth-error",
            E::ExternalAuthTimeout => "external-auth-timeout",
            E::NoHealthyEndpoint => "no-healthy-endpoint",
            E::ConnectRefused => "connect-refused",
            E::ConnectFailed => "connect-failed",
            E::ConnectTimeout => "connect-timeout",
            E::UpstreamTlsFailed => "upstream-tls-failed",
            E::UpstreamHandshakeFailed => "upstream-handshake-failed",
            E::PoolSaturated => "pool-saturated",
            E::UpstreamClosed => "upstream-closed",
            E::UpstreamReset => "upstream-reset",
            E::FirstByteTimeout => "first-byte-timeout",
            E::Unexpected101 => "unexpected-101",
        }
    }

    /// The status the client gets, unless the farm configures another (a rate limit's
    /// `statusCode`, the auth service's own 401 or 403).
    pub(crate) fn status(self) -> StatusCode {
        use ProxyError as E;
        match self {
            E::BadRequestTarget
            | E::DuplicateHost
            | E::BadHost
            | E::MissingHost
            | E::BadHeaderValue
            | E::AuthorityHostMismatch
            | E::DuplicateContentLength
            | E::BadContentLength
            | E::ContentLengthAndTransferEncoding
            | E::BadTransferEncoding
            | E::BadPath
            | E::UnframedRequest
            | E::BadRequestBody => StatusCode::BAD_REQUEST,
            E::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            E::UriTooLong => StatusCode::URI_TOO_LONG,
            E::HttpVersionNotSupported => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            E::RequestBodyStalled => StatusCode::REQUEST_TIMEOUT,
            E::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            E::MaxForwardsTrace => StatusCode::METHOD_NOT_ALLOWED,
            E::NotReady | E::NoHealthyEndpoint | E::PoolSaturated => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            E::NoRoute => StatusCode::NOT_FOUND,
            E::SourceRange | E::ExternalAuth => StatusCode::FORBIDDEN,
            E::RateLimit | E::ConnectionLimit | E::RateLimitFull => StatusCode::TOO_MANY_REQUESTS,
            E::BasicAuth => StatusCode::UNAUTHORIZED,
            E::ExternalAuthSignin => StatusCode::FOUND,
            E::ExternalAuthError | E::ExternalAuthTimeout => StatusCode::INTERNAL_SERVER_ERROR,
            E::ConnectRefused
            | E::ConnectFailed
            | E::UpstreamTlsFailed
            | E::UpstreamHandshakeFailed
            | E::UpstreamClosed
            | E::UpstreamReset
            | E::Unexpected101 => StatusCode::BAD_GATEWAY,
            E::ConnectTimeout | E::FirstByteTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Whose fault it was.
    pub(crate) fn fault(self) -> Fault {
        use ProxyError as E;
        match self {
            E::NotReady | E::NoRoute => Fault::Routing,
            E::SourceRange
            | E::RateLimit
            | E::ConnectionLimit
            | E::RateLimitFull
            | E::BasicAuth
            | E::ExternalAuth
            | E::ExternalAuthSignin
            | E::ExternalAuthError
            | E::ExternalAuthTimeout => Fault::Policy,
            E::NoHealthyEndpoint
            | E::ConnectRefused
            | E::ConnectFailed
            | E::ConnectTimeout
            | E::UpstreamTlsFailed
            | E::UpstreamHandshakeFailed
            | E::PoolSaturated
            | E::UpstreamClosed
            | E::UpstreamReset
            | E::FirstByteTimeout
            | E::Unexpected101 => Fault::Upstream,
            _ => Fault::Client,
        }
    }

    /// The server could not be reached: connecting or a handshake failed.
    fn unreachable(self) -> bool {
        use ProxyError as E;
        matches!(
            self,
            E::ConnectRefused
                | E::ConnectFailed
                | E::ConnectTimeout
                | E::UpstreamTlsFailed
                | E::UpstreamHandshakeFailed
        )
    }

    /// Whether passive health counts it against the server tried: only what the server
    /// did (not a full pool of ours, not a connection it closed while idle before the
    /// request was written, never a client's fault).
    pub(crate) fn counts_against_server(self) -> bool {
        use ProxyError as E;
        self.unreachable()
            || matches!(
                self,
                E::UpstreamReset | E::FirstByteTimeout | E::Unexpected101
            )
    }

    /// Whether another server may be tried whatever the request: nothing reached a
    /// server. (After [`UpstreamReset`](Self::UpstreamReset) only a request that is
    /// safe to send twice may be.)
    pub(crate) fn retryable(self) -> bool {
        use ProxyError as E;
        self.unreachable() || matches!(self, E::PoolSaturated | E::UpstreamClosed)
    }

    /// Whether the connection is closed after the answer: one that sent an ambiguous
    /// request is not trusted with another, one whose body was refused unread cannot
    /// carry another, and after a 414 or a 505 the framer stopped reading (it found no
    /// end to the head, or a version it does not speak).
    fn closes_connection(status: StatusCode) -> bool {
        matches!(
            status,
            StatusCode::BAD_REQUEST
                | StatusCode::PAYLOAD_TOO_LARGE
                | StatusCode::URI_TOO_LONG
                | StatusCode::HTTP_VERSION_NOT_SUPPORTED
        )
    }

    /// The proxy's answer: a short plain-text body naming the status's class, never an
    /// address.
    pub(crate) fn response(self) -> Response<RespBody> {
        self.response_with(self.status())
    }

    /// [`response`](Self::response) with a status the farm configured.
    pub(crate) fn response_with(self, status: StatusCode) -> Response<RespBody> {
        let body: &'static str = match status {
            StatusCode::BAD_REQUEST => "bad request\n",
            StatusCode::NOT_FOUND => "no route\n",
            StatusCode::BAD_GATEWAY => "bad gateway\n",
            StatusCode::SERVICE_UNAVAILABLE => "service unavailable\n",
            StatusCode::GATEWAY_TIMEOUT => "gateway timeout\n",
            StatusCode::PAYLOAD_TOO_LARGE => "request body too large\n",
            StatusCode::URI_TOO_LONG => "request target too long\n",
            StatusCode::HTTP_VERSION_NOT_SUPPORTED => "http version not supported\n",
            _ => "error\n",
        };
        let mut r = Response::new(
            http_body_util::Full::new(Bytes::from_static(body.as_bytes()))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if Self::closes_connection(status) {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        self.mark(&mut r);
        r
    }

    /// Marks an answer of the proxy's own as this error: the header for the client,
    /// the value for logging and metrics.
    pub(crate) fn mark<B>(self, resp: &mut Response<B>) {
        resp.headers_mut()
            .insert("x-portcullis-error", HeaderValue::from_static(self.label()));
        resp.extensions_mut().insert(self);
    }

    /// The error an answer was marked with, if any.
    pub(crate) fn of<B>(resp: &Response<B>) -> Option<ProxyError> {
        resp.extensions().get::<ProxyError>().copied()
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ProxyError; 41] = {
        use ProxyError as E;
        [
            E::BadRequestTarget,
            E::DuplicateHost,
            E::BadHost,
            E::MissingHost,
            E::BadHeaderValue,
            E::AuthorityHostMismatch,
            E::DuplicateContentLength,
            E::BadContentLength,
            E::ContentLengthAndTransferEncoding,
            E::BadTransferEncoding,
            E::BadPath,
            E::UriTooLong,
            E::HttpVersionNotSupported,
            E::UnframedRequest,
            E::TooManyHeaders,
            E::BadRequestBody,
            E::RequestBodyStalled,
            E::BodyTooLarge,
            E::MaxForwardsTrace,
            E::NotReady,
            E::NoRoute,
            E::SourceRange,
            E::RateLimit,
            E::ConnectionLimit,
            E::RateLimitFull,
            E::BasicAuth,
            E::ExternalAuth,
            E::ExternalAuthSignin,
            E::ExternalAuthError,
            E::ExternalAuthTimeout,
            E::NoHealthyEndpoint,
            E::ConnectRefused,
            E::ConnectFailed,
            E::ConnectTimeout,
            E::UpstreamTlsFailed,
            E::UpstreamHandshakeFailed,
            E::PoolSaturated,
            E::UpstreamClosed,
            E::UpstreamReset,
            E::FirstByteTimeout,
            E::Unexpected101,
        ]
    };

    #[test]
    fn client_faults_are_4xx_and_upstream_faults_5xx() {
        for e in ALL {
            let status = e.status();
            match e.fault() {
                // RFC 9110 section 15.6.6: a version the client chose that the server
                // does not speak is answered with a 5xx.
                Fault::Client if e == ProxyError::HttpVersionNotSupported => {
                    assert_eq!(status, StatusCode::HTTP_VERSION_NOT_SUPPORTED)
                }
                Fault::Client => assert!(status.is_client_error(), "{e}: {status}"),
                Fault::Upstream => assert!(status.is_server_error(), "{e}: {status}"),
                Fault::Routing | Fault::Policy => {}
            }
        }
    }

    #[test]
    fn only_upstream_faults_reach_passive_health_or_retries() {
        for e in ALL {
            if e.counts_against_server() || e.retryable() {
                assert_eq!(e.fault(), Fault::Upstream, "{e}");
            }
        }
        // A full pool of ours is not the server's doing, and a connection the server
        // closed while idle says nothing about its health; both leave room to retry.
        for e in [ProxyError::PoolSaturated, ProxyError::UpstreamClosed] {
            assert!(!e.counts_against_server() && e.retryable(), "{e}");
        }
        // After a reset the request may have been acted on.
        assert!(!ProxyError::UpstreamReset.retryable());
    }

    #[test]
    fn labels_are_distinct_but_for_the_stalled_body() {
        let mut seen = std::collections::HashMap::new();
        for e in ALL {
            if let Some(other) = seen.insert(e.label(), e)
                && other != e
            {
                let pair = [other, e];
                assert!(
                    pair.contains(&ProxyError::BadRequestBody)
                        && pair.contains(&ProxyError::RequestBodyStalled),
                    "{other:?} and {e:?} share {}",
                    e.label()
                );
            }
        }
    }

    #[test]
    fn the_answer_carries_the_error_for_the_client_and_for_the_log() {
        let r = ProxyError::BodyTooLarge.response();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(r.headers()["x-portcullis-error"], "body-too-large");
        assert_eq!(r.headers()[header::CONNECTION], "close");
        assert_eq!(ProxyError::of(&r), Some(ProxyError::BodyTooLarge));
        let r = ProxyError::RateLimit.response_with(StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!r.headers().contains_key(header::CONNECTION));
        assert_eq!(ProxyError::of(&r), Some(ProxyError::RateLimit));
    }
}

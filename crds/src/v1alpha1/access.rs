//! `ServerFarm` access control: who may reach a farm's servers, and how often.
//!
//! Each of these is a route feature of the dataplane, checked by the proxy before it
//! picks a server: a refused request never reaches a server and never counts in passive
//! health. Ingress annotations of ingress-nginx translate to the same fields.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Who may use a farm: client address ranges, rate limits and authentication, checked in
/// that order.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Access {
    /// Client address ranges allowed or denied. A refused client is answered `403` by the
    /// proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ranges: Option<SourceRanges>,

    /// Limits per client address, counted by each array member on its own (a client
    /// spread over `n` members gets up to `n` times the rate). A request over a limit is
    /// answered `statusCode` by the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,

    /// HTTP Basic authentication against an htpasswd file. A request without valid
    /// credentials is answered `401` with `WWW-Authenticate` by the proxy. The
    /// `Authorization` header is forwarded to the servers, as ingress-nginx does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,

    /// Authentication by another service (ingress-nginx's `auth-url`): before a request
    /// is proxied, the proxy asks `url` with the request's headers; the request goes on
    /// only when it answers 2xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_auth: Option<ExternalAuth>,
}

/// Client address ranges, as IPv4 or IPv6 CIDRs (`10.0.0.0/8`, `2001:db8::/32`) or
/// single addresses.
///
/// The client address is the TCP peer; when the peer is one of the array's
/// `trustedProxies`, it is the last address of `X-Forwarded-For` that is not a trusted
/// proxy. A client in `deny`, or not in a non-empty `allow`, is answered `403`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SourceRanges {
    /// Only clients in these ranges are served. Empty (the default) allows every
    /// client not in `deny`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(r, isCIDR(r) || isIP(r))").message("sourceRanges.allow entries must be IP addresses or CIDR ranges"))]
    pub allow: Vec<String>,

    /// Clients in these ranges are refused, even when `allow` covers them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(r, isCIDR(r) || isIP(r))").message("sourceRanges.deny entries must be IP addresses or CIDR ranges"))]
    pub deny: Vec<String>,
}

/// Request rates and concurrency allowed to one client address, per array member.
///
/// Rates are token buckets (GCRA): a client may send `rate × burstMultiplier` requests at
/// once, then `rate` per second (or minute); both rates apply when both are set. A
/// refused request gets `statusCode` with `Retry-After`. Each member tracks at most
/// 100000 client addresses per farm; addresses whose bucket has refilled and that have
/// no request in flight are forgotten, and when the table is full of active clients a
/// new address is refused until one is forgotten. Counts start again when a member
/// restarts or the farm's `rateLimit` changes; other changes keep them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.requestsPerSecond) || has(self.requestsPerMinute) || has(self.connections)").message("rateLimit needs at least one of requestsPerSecond, requestsPerMinute or connections"))]
pub struct RateLimit {
    /// Requests per second one client address may send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub requests_per_second: Option<u32>,

    /// Requests per minute one client address may send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 60000000))]
    pub requests_per_minute: Option<u32>,

    /// The burst allowed on top of each rate, as a multiple of it (as ingress-nginx's
    /// `limit-burst-multiplier`). Defaults to 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub burst_multiplier: Option<u32>,

    /// Requests one client address may have in flight at once: HTTP/1 requests and
    /// HTTP/2 streams alike (one HTTP/2 connection carries many), counted from admission
    /// until the response body ends, as nginx's `limit_conn` counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub connections: Option<u32>,

    /// The status answered to a request over a limit, 400 to 599. Defaults to 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 400, max = 599))]
    pub status_code: Option<u16>,
}

/// HTTP Basic authentication (ingress-nginx's `auth-type: basic` with `auth-secret-type:
/// auth-file`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    /// A Secret in the farm's namespace whose key `auth` holds an htpasswd file: one
    /// `user:hash` per line, with bcrypt (`$2y$`, `$2b$`, `$2a$`), apr1-MD5 (`$apr1$`),
    /// MD5-crypt (`$1$`) or SHA-1 (`{SHA}`) hashes; other lines are ignored. In local
    /// mode, the file `certs/<secretName>/auth` under the manifests directory.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        length(max = 253)
    )]
    pub secret_name: String,

    /// The realm named in the `WWW-Authenticate` challenge, without double quotes,
    /// backslashes or control characters. Defaults to `Restricted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r#"^[^"\\\x00-\x1f\x7f]*$"#), length(max = 128))]
    pub realm: Option<String>,
}

/// Authentication by another service, with ingress-nginx's `auth-url` semantics.
///
/// Before proxying, the proxy sends `method` to `url` with the original request's headers
/// (not its body; `Host` is the auth service's) plus `X-Original-URL`,
/// `X-Original-Method`, `X-Original-URI`, `X-Auth-Request-Redirect`, `X-Real-IP`,
/// `X-Forwarded-For`, `X-Forwarded-Host` and `X-Forwarded-Proto`. A 2xx answer lets the
/// request through, with the `responseHeaders` of the answer set on it; 401 and 403 are
/// answered to the client (401 with the service's `WWW-Authenticate`, or a redirect to
/// `signin` when set); any other answer, or none within 5 seconds, is answered 500.
/// `https://` URLs are verified against the system roots.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalAuth {
    /// The auth service's URL, `http://` or `https://`.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^https?://[^/?#]+')").message("externalAuth.url must be an http:// or https:// URL"))]
    pub url: String,

    /// The method of the request to the auth service. Defaults to `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Z]+$"), length(max = 16))]
    pub method: Option<String>,

    /// Where a client the auth service answered 401 is sent instead: a 302 to this URL,
    /// with the original URL in its `rd` query parameter (as ingress-nginx's
    /// `auth-signin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^https?://[^/?#]+')").message("externalAuth.signin must be an http:// or https:// URL"))]
    pub signin: Option<String>,

    /// Headers of the auth service's 2xx answer set on the request to the servers (a
    /// header the answer lacks is removed from the request, so a client cannot supply it
    /// itself).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(regex(pattern = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"), length(max = 128))
    )]
    pub response_headers: Vec<String>,
}

/// Cross-origin resource sharing, answered by the proxy (ingress-nginx's `enable-cors`).
///
/// A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an
/// allowed origin is answered `204` by the proxy with the `Access-Control-Allow-*`
/// headers, after source ranges and rate limits but before authentication (browsers send
/// preflights without credentials). Other requests from an allowed origin get
/// `Access-Control-Allow-Origin` (and `-Allow-Credentials`, `-Expose-Headers`) added to
/// their response. A request from another origin gets no CORS header and its preflight
/// goes to the servers like any request.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Cors {
    /// Allowed origins: `*` (any), an exact origin (`https://app.example.com`, with
    /// `:port` when not the scheme's default) or one with a wildcard first label
    /// (`https://*.example.com`, matching `https://a.example.com` but not
    /// `https://example.com` or `https://a.b.example.com`, as ingress-nginx). With
    /// `allowCredentials`, `*` answers the request's own origin, since browsers refuse `*`
    /// with credentials. Defaults to `["*"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(max = 253)))]
    pub allow_origins: Option<Vec<String>>,

    /// Methods a preflight allows. Defaults to GET, PUT, POST, DELETE, PATCH and OPTIONS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 32),
        inner(regex(pattern = r"^[A-Z]+$"), length(max = 16))
    )]
    pub allow_methods: Option<Vec<String>>,

    /// Request headers a preflight allows. Defaults to ingress-nginx's list: DNT,
    /// Keep-Alive, User-Agent, X-Requested-With, If-Modified-Since, Cache-Control,
    /// Content-Type, Range and Authorization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"), length(max = 128))
    )]
    pub allow_headers: Option<Vec<String>>,

    /// Response headers scripts may read (`Access-Control-Expose-Headers`). None by
    /// default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"), length(max = 128))
    )]
    pub expose_headers: Vec<String>,

    /// Whether requests with credentials (cookies, `Authorization`) are allowed
    /// (`Access-Control-Allow-Credentials: true`). Defaults to true, as ingress-nginx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,

    /// How long, in seconds, browsers may cache a preflight's answer. Defaults to 1728000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 31536000))]
    pub max_age: Option<u32>,
}

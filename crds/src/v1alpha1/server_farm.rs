//! `ServerFarm`: one published site and the servers behind it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Duration;

/// One published site (host names, path prefixes, TLS) and the servers behind it.
///
/// A ServerFarm is published by exactly one GatewayArray (`arrayRef`). Servers are
/// pooled by endpoint identity (resolved address + upstream TLS + protocol), so two farms
/// that reach the same server through different names share one connection pool.
// Each `printcolumn(...)` repeats `type_`; clippy mistakes that for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "portcullis.io",
    version = "v1alpha1",
    kind = "ServerFarm",
    plural = "serverfarms",
    shortname = "farm",
    category = "portcullis",
    namespaced,
    status = "ServerFarmStatus",
    derive = "PartialEq",
    cel,
    printcolumn(name = "Array", type_ = "string", json_path = ".spec.arrayRef.name"),
    printcolumn(name = "Hosts", type_ = "string", json_path = ".spec.publish.hosts"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.hashHeader) || (has(self.loadBalancing) && self.loadBalancing == 'ConsistentHash')").message("hashHeader is only used with loadBalancing: ConsistentHash").field_path(".hashHeader"))]
pub struct ServerFarmSpec {
    /// The GatewayArray that publishes this farm (in the farm's namespace unless
    /// `arrayRef.namespace` says otherwise).
    pub array_ref: ArrayRef,

    /// What this farm publishes: host names, paths (prefixes, exact paths, regexes) and
    /// the TLS certificate for those hosts.
    pub publish: Publish,

    /// The servers behind the site. Each names exactly one of `host` (a DNS name,
    /// re-resolved while running), `address` (an IP address) or `service` (a Service
    /// port, resolved through its EndpointSlices).
    #[x_kube(validation = Rule::new("self.size() > 0").message("a farm needs at least one server"))]
    #[schemars(length(max = 256))]
    pub servers: Vec<Server>,

    /// The Host header sent to the servers. When unset, the client's Host header is sent
    /// unchanged. Set it when a server hosts several sites and selects one by Host
    /// (for example `prod.admin.web1`) while the farm lists the server by its own name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_host: Option<String>,

    /// How a request picks a server among the healthy ones: `RoundRobin` (weighted),
    /// `LeastRequests` (fewest in flight), `PowerOfTwoEwma` (the faster of two random
    /// servers by recent latency) or `ConsistentHash` (by client address, or by
    /// `hashHeader` when set). Defaults to `RoundRobin`.
    #[serde(default)]
    pub load_balancing: LoadBalancing,

    /// For `ConsistentHash`: the request header whose value is hashed. The client
    /// address is hashed when unset or when the request lacks the header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_header: Option<String>,

    /// Session affinity: keep a client on the server that served it first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// An active health check of every server: an HTTP GET with a chosen path and Host
    /// header. Servers that fail it receive no traffic until they pass again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connectivity_verifier: Option<ConnectivityVerifier>,

    /// `Encrypt` seals the names and values of cookies set by this farm's servers with
    /// the array keyring, so applications published on the same host name never see
    /// each other's cookies and clients cannot forge or change them. The servers then
    /// receive only cookies they set: any unsealed cookie (a forgery, or one a page
    /// script wrote) is dropped. `Off` (the default) passes cookies unchanged; write it
    /// quoted (`"Off"`), since kubectl reads YAML 1.1, where a bare `Off` is the boolean
    /// false.
    #[serde(default)]
    pub cookie_protection: CookieProtection,

    /// Protocols a client may switch to through this farm (`Upgrade` tokens, matched
    /// case-insensitively). Any other `Upgrade` request is served as a plain request, and
    /// a `101` the client did not ask for is refused with 502. Defaults to
    /// `[websocket]`; `[]` allows none. `h2c` is never tunnelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub allowed_upgrades: Option<Vec<String>>,

    /// How the dataplane talks to the servers: TLS, keep-alive, timeouts and retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Upstream>,

    /// Route features: path rewrites, redirects, request header changes and a body
    /// size limit, applied to every request of the farm before a server is picked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<super::Filters>,

    /// Makes this farm a canary of the farm that publishes the same hosts and paths on
    /// the same array, taking a share of its requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<super::Canary>,
    /// Who may use the farm: client address ranges, rate limits and authentication,
    /// checked by the proxy before a server is picked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<super::Access>,

    /// Cross-origin resource sharing: preflights answered by the proxy and CORS headers
    /// added to responses for allowed origins. Off when unset; `{}` turns it on with
    /// ingress-nginx's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<super::Cors>,
}

/// A reference to the GatewayArray that publishes a farm.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ArrayRef {
    /// Name of the GatewayArray.
    #[x_kube(validation = Rule::new("self.size() > 0").message("arrayRef.name must not be empty"))]
    #[schemars(regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))]
    pub name: String,

    /// Namespace of the GatewayArray. Defaults to the farm's namespace. A farm in another
    /// namespace than its array is published only when an Ingress generated it (the farm
    /// is controlled by that Ingress) and a Portcullis IngressClass names the array:
    /// the cluster administrator who writes IngressClasses decides which arrays take
    /// Ingresses from every namespace. Any other cross-namespace farm is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))]
    pub namespace: Option<String>,
}

/// The host names and paths a farm answers, and its certificate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Publish {
    /// Host names this farm answers: exact (`shop.example.com`) or one-level-or-more
    /// wildcards (`*.example.com`, which does not match `example.com` itself). An exact
    /// match always wins over a wildcard. `*` alone catches any host that no farm of the
    /// array names (what an Ingress rule without a host means).
    #[x_kube(validation = Rule::new("self.size() > 0").message("publish.hosts needs at least one host name"))]
    #[schemars(length(max = 64), inner(length(max = 253)))]
    pub hosts: Vec<String>,

    /// Path prefixes this farm answers, each starting with `/` and matching whole path
    /// elements (`/api` matches `/api` and `/api/x`, not `/apix`). Across all farms of a
    /// host, an `exactPaths` match wins first; then prefixes and `regexPaths` are tried
    /// together, the longer pattern text first. Defaults to `["/"]` (every path) when
    /// none of `paths`, `exactPaths` and `regexPaths` is given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(regex(pattern = r"^/"), length(max = 1024)))]
    pub paths: Vec<String>,

    /// Paths this farm answers only when the request path is exactly one of them, byte
    /// for byte and case-sensitively (`/foo` does not match `/foo/` or `/Foo`). Each
    /// starts with `/`. An exact match wins over any prefix or regex of the same host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(regex(pattern = r"^/"), length(max = 1024)))]
    pub exact_paths: Vec<String>,

    /// Regular expressions (Rust `regex` syntax, no look-around or back-references)
    /// matched against the request path from its start, as if they began with `^`, and
    /// case-insensitively, like an nginx `location ~*`. For example `/api/v[0-9]+/`
    /// or `/api(/|$)(.*)`, whose capture groups `filters.rewrite.pathTemplate` can use.
    /// They take their turn with `paths` by length: the longer pattern text first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 1024)))]
    pub regex_paths: Vec<String>,

    /// The TLS certificate for these hosts on HTTPS listeners, chosen by SNI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsCertificateRef>,
}

/// A reference to a `kubernetes.io/tls` Secret (keys `tls.crt` and `tls.key`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TlsCertificateRef {
    /// Name of a Secret of type `kubernetes.io/tls` in the same namespace. In local mode,
    /// the PEM files `certs/<secretName>/tls.crt` and `tls.key` under the manifests
    /// directory.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        length(max = 253)
    )]
    pub secret_name: String,
}

/// One server behind a farm.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.host), has(self.address), has(self.service)].filter(x, x).size() == 1").message("a server sets exactly one of host, address or service"))]
#[x_kube(validation = Rule::new("has(self.service) || has(self.port)").message("port is required for host and address servers").field_path(".port"))]
#[x_kube(validation = Rule::new("!has(self.service) || !has(self.port)").message("a service server takes its port from service.port; remove port").field_path(".port"))]
pub struct Server {
    /// A DNS name, resolved by the dataplane and re-resolved while running. Every
    /// address it resolves to is one endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,

    /// An IPv4 or IPv6 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("isIP(self)").message("address must be an IPv4 or IPv6 address"))]
    pub address: Option<String>,

    /// A Service in the farm's namespace; its ready endpoints (from EndpointSlices) are
    /// the servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,

    /// The server's TCP port (for `host` and `address`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,

    /// Relative share of new requests and sessions, 0 to 1000. 0 drains the server: it
    /// keeps existing sessions but receives no new ones. Defaults to 1.
    #[serde(default = "default_weight")]
    #[schemars(range(max = 1000))]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// A Service port whose endpoints are the servers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRef {
    /// Name of the Service, in the farm's namespace.
    #[schemars(regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))]
    pub name: String,
    /// The Service port (its `port`, not the target port).
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
}

/// A load-balancing algorithm.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LoadBalancing {
    /// Weighted round robin.
    #[default]
    RoundRobin,
    /// The server with the fewest requests in flight, weighted.
    LeastRequests,
    /// Of two servers picked at random, the one with the lower recent latency.
    PowerOfTwoEwma,
    /// A hash of the client address (or of `hashHeader`) on a ring of servers.
    ConsistentHash,
}

/// Session affinity settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Affinity {
    /// `None`, `Cookie` (an encrypted cookie names the server; any array member can read
    /// it) or `SourceIP` (consistent hashing of the client address). Defaults to `None`.
    #[serde(default)]
    pub mode: AffinityMode,

    /// Name of the affinity cookie. Defaults to `portcullis-affinity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"))]
    pub cookie_name: Option<String>,

    /// The longest a session may last, checked by the dataplane whatever the browser
    /// does. Defaults to the array's `maxSessionTime`, and may not exceed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_session_time: Option<Duration>,

    /// A session idle longer than this starts again on a freshly picked server.
    /// Defaults to `30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,

    /// The cookie's SameSite attribute: `Lax` (default), `Strict` or `None`.
    #[serde(default)]
    pub same_site: SameSite,
}

/// How a client is kept on its server.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AffinityMode {
    /// No affinity.
    #[default]
    None,
    /// An encrypted cookie.
    Cookie,
    /// Consistent hashing of the client address.
    #[serde(rename = "SourceIP")]
    SourceIp,
}

/// The SameSite attribute of the affinity cookie.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SameSite {
    /// Sent on top-level navigations.
    #[default]
    Lax,
    /// Never sent cross-site.
    Strict,
    /// Always sent (requires HTTPS).
    None,
}

/// Whether cookies set by a farm's servers are sealed per farm.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CookieProtection {
    /// Cookies pass unchanged.
    #[default]
    Off,
    /// Cookie names and values are sealed per farm with the array keyring; unsealed
    /// cookies are dropped.
    Encrypt,
}

/// An active health check, run by every array member against every server of the farm.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(has(self.timeout) ? self.timeout : '2s') <= duration(has(self.interval) ? self.interval : '10s')").message("timeout must not exceed interval (defaults: timeout 2s, interval 10s)").field_path(".timeout"))]
pub struct ConnectivityVerifier {
    /// The path requested with GET. Defaults to `/`.
    #[serde(default = "default_verifier_path")]
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,

    /// The Host header of the probe, e.g. `prod.admin.web1`. Defaults to the farm's
    /// `backendHost`, else its first published host. This is how a farm that lists a
    /// server by its own name still probes the right site on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,

    /// Status codes that count as healthy: single codes (`204`) or ranges (`200-399`).
    /// Defaults to `["200-399"]`.
    #[serde(default = "default_expected_statuses")]
    pub expected_statuses: Vec<String>,

    /// Time between probes. Defaults to `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,

    /// How long a probe may take. Defaults to `2s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,

    /// Consecutive passes that return a server to service. Defaults to 2.
    #[serde(default = "default_healthy_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub healthy_threshold: u32,

    /// Consecutive failures that take a server out of service. Defaults to 3.
    #[serde(default = "default_unhealthy_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub unhealthy_threshold: u32,

    /// Passive ejection from live traffic: consecutive connect failures, resets or 5xx
    /// answers that take a server out until the verifier passes again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<PassiveEjection>,
}

fn default_verifier_path() -> String {
    "/".to_owned()
}
fn default_expected_statuses() -> Vec<String> {
    vec!["200-399".to_owned()]
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}

/// Passive ejection settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PassiveEjection {
    /// Consecutive failures (connect refused, reset, timeout or a 5xx answer) that eject
    /// a server. 0 turns passive ejection off. Defaults to 5.
    #[serde(default = "default_consecutive_failures")]
    #[schemars(range(max = 1000))]
    pub consecutive_failures: u32,
    /// Whether a 5xx answer counts as a failure. Defaults to true.
    #[serde(default = "default_true")]
    pub count_5xx: bool,
    /// The largest share of the farm's servers, in percent, that passive health may have
    /// out at once; the last server in service is never ejected. Defaults to 50.
    #[serde(default = "default_max_ejected_percent")]
    #[schemars(range(max = 100))]
    pub max_ejected_percent: u32,
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_max_ejected_percent() -> u32 {
    crate::config::DEFAULT_MAX_EJECTED_PERCENT
}
fn default_true() -> bool {
    true
}

/// How the dataplane talks to the servers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Upstream {
    /// TLS to the servers. Plain HTTP when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,

    /// `HTTP1` (default) or `HTTP2` (prior knowledge on plain TCP, ALPN on TLS).
    #[serde(default)]
    pub protocol: UpstreamProtocol,

    /// Keep-alive limits, applied per endpoint identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<KeepAlive>,

    /// How long a TCP (and TLS) connect may take. Defaults to `3s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,

    /// How long to wait for the first byte of the response once the request is sent.
    /// Defaults to `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_byte_timeout: Option<Duration>,

    /// How long a response body may stall between bytes. Defaults to `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,

    /// Retries on another server. A request is retried only when no byte of it reached
    /// a server, or when it is idempotent and failed on connect. Apart from these, a
    /// request given back unsent by a pooled keep-alive connection the server had just
    /// closed is sent once more, on a new connection to the same server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
}

/// TLS to the servers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.caSecretName) && has(self.insecureSkipVerify) && self.insecureSkipVerify)").message("caSecretName and insecureSkipVerify exclude each other"))]
pub struct UpstreamTls {
    /// The server name sent in SNI and verified in the certificate. Defaults to the
    /// server's `host`, else the farm's `backendHost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,

    /// A Secret whose `ca.crt` holds the CA bundle that signs the servers' certificates.
    /// The system roots are used when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        length(max = 253)
    )]
    pub ca_secret_name: Option<String>,

    /// Skip certificate verification. For testing only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

/// The HTTP version spoken to the servers.
#[derive(
    JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
)]
pub enum UpstreamProtocol {
    /// HTTP/1.1.
    #[default]
    #[serde(rename = "HTTP1")]
    Http1,
    /// HTTP/2.
    #[serde(rename = "HTTP2")]
    Http2,
}

/// Keep-alive limits for each endpoint identity.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeepAlive {
    /// Idle connections kept open to one endpoint when the load is light. Under load the
    /// pool keeps as many as the most requests in flight at once over the last
    /// `idleTimeout` (within `maxConnections`), so a steady load never reopens
    /// connections. Farms that share an endpoint add up their values. Defaults to 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 10000))]
    pub max_idle: Option<u32>,
    /// Open connections allowed to one endpoint (idle and busy); requests wait for a free
    /// one beyond that. Unlimited when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_connections: Option<u32>,
    /// An idle connection is closed after this long. Defaults to `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
}

/// Retry policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    /// Retries on another server, 0 to 3. Defaults to 1.
    #[serde(default = "default_retry_attempts")]
    #[schemars(range(max = 3))]
    pub attempts: u32,
}

fn default_retry_attempts() -> u32 {
    1
}

/// The observed state of a ServerFarm.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerFarmStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Accepted` (the spec is valid and published), `ResolvedRefs` (the array, Services
    /// and Secrets it names exist) and `Ready` (members serve it with at least one
    /// healthy endpoint), one per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The endpoints the servers resolved to, by endpoint identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointStatus>,
}

/// One resolved endpoint of a farm.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    /// The endpoint identity: address, upstream TLS and protocol. Farms that show the
    /// same identity share one connection pool.
    pub identity: String,
    /// The servers of this farm that resolved to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    /// `Healthy`, `Unhealthy`, `Draining` or `Unknown`, as last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
}

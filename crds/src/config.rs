//! The dataplane config: a versioned, self-contained document with everything an array
//! member needs to serve, and nothing secret.
//!
//! Certificates and keys are referenced by the name of the Secret that holds them
//! (`CertificateRef`, `SessionConfig::keyring_secret`); the bytes travel in the array's
//! Secret (or local files), never in this document, which lands in a ConfigMap.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Duration;
mod access;
mod filters;
pub use crate::v1alpha1::{
    AffinityMode, CookieProtection, ListenerProtocol, LoadBalancing, SameSite, UpstreamProtocol,
};
pub use access::*;
pub use filters::*;

/// The config schema version this crate writes and reads.
pub const CONFIG_VERSION: u32 = 1;

/// The name of the ConfigMap key (and local file) holding the JSON document.
pub const CONFIG_KEY: &str = "config.json";

/// The name of the ConfigMap key holding the content hash.
pub const CONFIG_HASH_KEY: &str = "config.sha256";

/// Everything an array member needs to serve.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataplaneConfig {
    /// Always [`CONFIG_VERSION`]; a member refuses a version it does not know.
    pub version: u32,
    /// The array this config belongs to.
    pub array: ArrayMeta,
    /// The ports to listen on.
    pub listeners: Vec<ListenerConfig>,
    /// Routes, in precedence order: exact hosts before wildcards (longer suffixes
    /// first); for one host, exact paths first, then prefixes and regexes together, the
    /// longer pattern first. The first match wins.
    pub routes: Vec<RouteConfig>,
    /// Farms by id (`namespace/name`).
    pub farms: BTreeMap<String, FarmConfig>,
    /// Endpoints known when the config was rendered, by identity key. DNS servers add
    /// more at run time.
    pub endpoints: BTreeMap<String, EndpointConfig>,
    /// Session and keyring settings.
    pub session: SessionConfig,
    /// Limits on client connections.
    pub limits: LimitsConfig,
    /// How long a stopping member finishes in-flight requests.
    pub drain_timeout: Duration,
}

/// The array's identity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArrayMeta {
    /// Namespace of the GatewayArray.
    pub namespace: String,
    /// Name of the GatewayArray.
    pub name: String,
}

/// A listening port.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerConfig {
    /// Listener name.
    pub name: String,
    /// TCP port.
    pub port: u16,
    /// HTTP or HTTPS.
    pub protocol: ListenerProtocol,
    /// Default certificate for HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_certificate: Option<CertificateRef>,
    /// SNI host patterns (exact or `*.` wildcard) and their certificates, from the farms.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni: Vec<SniCertificate>,
}

/// A certificate chosen for some SNI host names.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SniCertificate {
    /// Host pattern: exact or `*.suffix`.
    pub host: String,
    /// The certificate.
    pub certificate: CertificateRef,
}

/// A reference to TLS material by the name of the Secret that holds it.
///
/// In cluster mode the controller copies the Secret's `tls.crt`/`tls.key` into the
/// array's Secret under `<secret>.crt`/`<secret>.key`; in local mode the files are
/// `certs/<secret>/tls.crt` and `tls.key`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateRef {
    /// Secret name.
    pub secret: String,
}

/// One route: a host pattern and a path pattern leading to a farm.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfig {
    /// Exact host (`shop.example.com`) or wildcard (`*.example.com`), lower case, no port.
    pub host: String,
    /// The path pattern, read as [`path_match`](Self::path_match) says. For a prefix,
    /// starting with `/` and matching on segment boundaries: `/api` matches `/api` and
    /// `/api/x`, not `/apix`.
    pub path_prefix: String,
    /// How [`path_prefix`](Self::path_prefix) matches. Prefix when absent, so configs
    /// written before path kinds existed still parse.
    #[serde(default, skip_serializing_if = "PathMatch::is_prefix")]
    pub path_match: PathMatch,
    /// The farm id.
    pub farm: String,
    /// A canary farm that takes some of this route's requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryConfig>,
}

/// A canary of a route: which requests go to farm `farm` instead of the route's.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CanaryConfig {
    /// The canary farm's id.
    pub farm: String,
    /// Percent, 0 to 100, of the requests no header or cookie decided.
    pub weight: u32,
    /// Request header (lower case) that decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// The value of `header` that picks the canary; without it `always` and `never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_value: Option<String>,
    /// Cookie whose value `always` or `never` decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

/// How a route's path pattern matches a request path.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub enum PathMatch {
    /// Whole leading path elements.
    #[default]
    Prefix,
    /// The whole path, byte for byte.
    Exact,
    /// A regular expression ([`path_regex`]), from the start of the path,
    /// case-insensitive.
    Regex,
}

impl PathMatch {
    /// Whether this is [`PathMatch::Prefix`].
    pub fn is_prefix(&self) -> bool {
        *self == PathMatch::Prefix
    }
}

/// The largest compiled program a path regex may take, in bytes: a route table is built
/// for every config, and one pathological pattern must not eat a member's memory.
pub const PATH_REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Compiles a route's path regex as the dataplane matches it: anchored at the start of
/// the path (`^` is implied, as ingress-nginx writes its locations), case-insensitive
/// (nginx `location ~*`), and bounded by [`PATH_REGEX_SIZE_LIMIT`].
pub fn path_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})"))
        .case_insensitive(true)
        .size_limit(PATH_REGEX_SIZE_LIMIT)
        .dfa_size_limit(PATH_REGEX_SIZE_LIMIT)
        .build()
}

impl RouteConfig {
    /// Whether the host is a wildcard pattern.
    pub fn is_wildcard(&self) -> bool {
        self.host.starts_with('*')
    }

    /// Whether this route's host pattern covers `host` (lower case, no port, no final
    /// dot). `*.example.com` covers `a.example.com` and `a.b.example.com`, never
    /// `example.com` itself.
    pub fn matches_host(&self, host: &str) -> bool {
        match self.host.strip_prefix('*') {
            Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
            None => self.host == host,
        }
    }

    /// Whether the path pattern covers `path`. A prefix on a segment boundary: `/api`
    /// covers `/api` and `/api/x`, not `/apix`, and `/` covers every path; an exact path
    /// only itself; a regex when it matches from the start of the path (compiled on
    /// every call: this is the reference, the dataplane compiles once per config).
    pub fn matches_path(&self, path: &str) -> bool {
        let pattern = self.path_prefix.as_str();
        match self.path_match {
            PathMatch::Prefix => {
                pattern == "/"
                    || path
                        .strip_prefix(pattern)
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
            PathMatch::Exact => pattern == path,
            PathMatch::Regex => path_regex(pattern).is_ok_and(|r| r.is_match(path)),
        }
    }
}

/// One farm, ready to serve.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FarmConfig {
    /// Farm id, `namespace/name`.
    pub id: String,
    /// The Host header sent upstream; `None` passes the client's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_host: Option<String>,
    /// Load-balancing algorithm.
    pub load_balancing: LoadBalancing,
    /// For consistent hashing: header to hash (client address when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_header: Option<String>,
    /// The farm's members.
    pub members: Vec<MemberConfig>,
    /// Upstream policy (TLS, protocol, keep-alive, timeouts, retries).
    pub upstream: UpstreamConfig,
    /// Session affinity.
    pub affinity: AffinityConfig,
    /// Active health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifier: Option<VerifierConfig>,
    /// Passive ejection.
    pub passive: PassiveConfig,
    /// Cookie name sealing.
    pub cookie_protection: CookieProtection,
    /// `Upgrade` tokens clients may switch to, lower case.
    #[serde(default = "default_allowed_upgrades")]
    pub allowed_upgrades: Vec<String>,
    /// Route features: rewrites, redirects, header changes, body limit.
    #[serde(default, skip_serializing_if = "FiltersConfig::is_empty")]
    pub filters: FiltersConfig,
    /// What the proxy checks before a request may reach a server.
    #[serde(default, skip_serializing_if = "AccessConfig::is_empty")]
    pub access: AccessConfig,
}

fn default_allowed_upgrades() -> Vec<String> {
    vec!["websocket".to_owned()]
}

/// A farm member: one server as the operator wrote it, and where it leads.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemberConfig {
    /// How the operator named it (`host prod.admin.web1:80`, `address 10.0.0.1:80`,
    /// `service web:80`), for logs and status.
    pub server: String,
    /// Relative weight; 0 takes no new requests.
    pub weight: u32,
    /// Where it leads.
    pub target: MemberTarget,
}

/// Where a farm member leads.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", tag = "kind", deny_unknown_fields)]
pub enum MemberTarget {
    /// Endpoints resolved when the config was rendered, by identity key into
    /// [`DataplaneConfig::endpoints`].
    Endpoints {
        /// Identity keys.
        identities: Vec<String>,
    },
    /// A DNS name the dataplane resolves and re-resolves; each address is one endpoint,
    /// with the identity [`EndpointIdentity::new`] gives it and the farm's upstream TLS.
    Dns {
        /// The name to resolve.
        host: String,
        /// The port.
        port: u16,
    },
}

/// Endpoint identity: what makes two upstream connections interchangeable.
///
/// Two farms whose servers resolve to the same address, with the same upstream TLS
/// parameters and protocol, have the same identity and therefore share one connection
/// pool, one connection limit and one set of passive-health facts, whatever names they
/// used. Host names, farm names and Host headers are request attributes, never part of
/// the identity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointIdentity {
    /// The resolved socket address.
    pub address: SocketAddr,
    /// Upstream TLS, when the connection is TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsIdentity>,
    /// The HTTP version spoken.
    pub protocol: UpstreamProtocol,
}

/// The parts of upstream TLS that make two connections different.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamTlsIdentity {
    /// SNI sent and name verified.
    pub sni: String,
    /// Which roots verify the server.
    pub trust: UpstreamTrust,
}

/// Roots that verify an upstream certificate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "camelCase", tag = "kind", deny_unknown_fields)]
pub enum UpstreamTrust {
    /// The platform's roots.
    System,
    /// `ca.crt` from this Secret.
    Ca {
        /// Secret name.
        secret: String,
    },
    /// No verification (testing only).
    Insecure,
}

impl EndpointIdentity {
    /// The identity of a connection to `address` with `tls` and `protocol`.
    pub fn new(
        address: SocketAddr,
        tls: Option<UpstreamTlsIdentity>,
        protocol: UpstreamProtocol,
    ) -> Self {
        // An IPv4-mapped IPv6 address is the same endpoint as the IPv4 one.
        let address = match address {
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(v4.into(), v6.port()),
                None => address,
            },
            SocketAddr::V4(_) => address,
        };
        EndpointIdentity {
            address,
            tls,
            protocol,
        }
    }

    /// The stable string key: `http1://172.16.0.1:80`,
    /// `h2+tls://[2001:db8::1]:443?sni=api.internal&trust=ca:upstream-ca`.
    pub fn key(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for EndpointIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::Http2 => "h2",
        };
        match &self.tls {
            None => write!(f, "{proto}://{}", self.address),
            Some(tls) => {
                let trust = match &tls.trust {
                    UpstreamTrust::System => "system".to_owned(),
                    UpstreamTrust::Ca { secret } => format!("ca:{secret}"),
                    UpstreamTrust::Insecure => "insecure".to_owned(),
                };
                write!(
                    f,
                    "{proto}+tls://{}?sni={}&trust={trust}",
                    self.address, tls.sni
                )
            }
        }
    }
}

/// One endpoint known at render time.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointConfig {
    /// Its identity.
    pub identity: EndpointIdentity,
    /// Terminating (from an EndpointSlice): finishes in-flight work, takes no new
    /// requests.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

/// Upstream policy of a farm.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamConfig {
    /// TLS parameters, when the farm speaks TLS to its servers. For DNS members whose
    /// farm sets no SNI, the member's host name is the SNI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsConfig>,
    /// HTTP version.
    pub protocol: UpstreamProtocol,
    /// Idle connections kept per endpoint identity.
    pub max_idle_per_endpoint: u32,
    /// Open connections allowed per endpoint identity, when limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_endpoint: Option<u32>,
    /// Idle upstream connections close after this.
    pub pool_idle_timeout: Duration,
    /// TCP+TLS connect timeout.
    pub connect_timeout: Duration,
    /// Time to the first response byte.
    pub first_byte_timeout: Duration,
    /// Longest stall inside a response body.
    pub idle_timeout: Duration,
    /// Retries on another endpoint.
    pub retries: u32,
}

/// Farm-level upstream TLS settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// SNI, when fixed by the farm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Trust roots.
    pub trust: UpstreamTrust,
}

/// Session affinity of a farm.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AffinityConfig {
    /// None, Cookie or SourceIP.
    pub mode: AffinityMode,
    /// Cookie name.
    pub cookie_name: String,
    /// Longest session.
    pub max_session_time: Duration,
    /// Longest idle gap in a session.
    pub idle_timeout: Duration,
    /// SameSite attribute.
    pub same_site: SameSite,
}

/// Active health check of a farm.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerifierConfig {
    /// GET path.
    pub path: String,
    /// Host header of the probe.
    pub host: String,
    /// Healthy status ranges, inclusive.
    pub expected_statuses: Vec<StatusRange>,
    /// Between probes.
    pub interval: Duration,
    /// Probe timeout.
    pub timeout: Duration,
    /// Passes to return to service.
    pub healthy_threshold: u32,
    /// Failures to leave service.
    pub unhealthy_threshold: u32,
}

/// An inclusive range of HTTP status codes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusRange {
    /// Lowest accepted code.
    pub from: u16,
    /// Highest accepted code.
    pub to: u16,
}

impl StatusRange {
    /// Whether `code` is inside.
    pub fn contains(&self, code: u16) -> bool {
        (self.from..=self.to).contains(&code)
    }
}

impl std::str::FromStr for StatusRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse = |p: &str| -> Result<u16, String> {
            let code: u16 = p
                .trim()
                .parse()
                .map_err(|_| format!("{s:?} is not a status code or range like 200-399"))?;
            if (100..=599).contains(&code) {
                Ok(code)
            } else {
                Err(format!("{code} is not an HTTP status code (100-599)"))
            }
        };
        let range = match s.split_once('-') {
            Some((a, b)) => StatusRange {
                from: parse(a)?,
                to: parse(b)?,
            },
            None => {
                let c = parse(s)?;
                StatusRange { from: c, to: c }
            }
        };
        if range.from > range.to {
            return Err(format!("{s:?} is an empty range"));
        }
        Ok(range)
    }
}

/// Passive ejection of a farm.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PassiveConfig {
    /// Consecutive failures that eject; 0 disables.
    pub consecutive_failures: u32,
    /// Whether 5xx counts.
    pub count_5xx: bool,
    /// Without a verifier, how long an ejected endpoint stays out before it is tried
    /// again.
    pub base_ejection_time: Duration,
    /// The largest share of the farm's endpoints (percent) passive health may have out
    /// at once; the last one in service is never ejected.
    #[serde(default = "default_max_ejected_percent")]
    pub max_ejected_percent: u32,
}

/// Default of [`PassiveConfig::max_ejected_percent`].
pub const DEFAULT_MAX_EJECTED_PERCENT: u32 = 50;

fn default_max_ejected_percent() -> u32 {
    DEFAULT_MAX_EJECTED_PERCENT
}

/// Session and keyring settings of the array.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionConfig {
    /// The Secret holding the keyring (in local mode: `--keyring FILE`).
    pub keyring_secret: String,
    /// Longest session of any farm.
    pub max_session_time: Duration,
    /// How long retired keys still open cookies.
    pub accept_retired_for: Duration,
    /// How often the controller rotates keys.
    pub rotation_interval: Duration,
}

/// Limits on client connections.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsConfig {
    /// Concurrent client connections per member.
    pub max_connections: u32,
    /// Request header block size (431 beyond).
    pub max_header_bytes: u32,
    /// Request header count (431 beyond).
    pub max_headers: u32,
    /// Time to send the request header (408 beyond).
    pub header_read_timeout: Duration,
    /// Keep-alive idle timeout for client connections.
    pub client_idle_timeout: Duration,
    /// Concurrent client connections per client address.
    #[serde(default = "default_max_connections_per_client")]
    pub max_connections_per_client: u32,
    /// Proxies whose forwarding headers are believed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<IpRange>,
}

// Defaults that translation fills in for unset CRD fields, in one place. Each is quoted
// by its field's doc comment; `crds/tests/defaults.rs` fails when a doc quotes another
// value.

/// GatewayArray `spec.drainTimeout`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// GatewayArray `spec.maxSessionTime`.
pub const DEFAULT_MAX_SESSION_TIME: Duration = Duration::from_secs(24 * 3600);
/// GatewayArray `spec.sessionKeys.rotationInterval`.
pub const DEFAULT_ROTATION_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);
/// GatewayArray `spec.limits.maxHeaderBytes`.
pub const DEFAULT_MAX_HEADER_BYTES: u32 = 32 * 1024;
/// GatewayArray `spec.limits.maxHeaders`.
pub const DEFAULT_MAX_HEADERS: u32 = 100;
/// GatewayArray `spec.limits.headerReadTimeout`.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// GatewayArray `spec.limits.clientIdleTimeout`.
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// ServerFarm `spec.affinity.idleTimeout`.
pub const DEFAULT_AFFINITY_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// ServerFarm `spec.upstream.keepAlive.maxIdle`.
pub const DEFAULT_KEEPALIVE_MAX_IDLE: u32 = 32;
/// ServerFarm `spec.upstream.keepAlive.idleTimeout`.
pub const DEFAULT_KEEPALIVE_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// ServerFarm `spec.upstream.connectTimeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// ServerFarm `spec.upstream.firstByteTimeout`.
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);
/// ServerFarm `spec.upstream.idleTimeout`.
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// ServerFarm `spec.connectivityVerifier.interval`.
pub const DEFAULT_VERIFIER_INTERVAL: Duration = Duration::from_secs(10);
/// ServerFarm `spec.connectivityVerifier.timeout`.
pub const DEFAULT_VERIFIER_TIMEOUT: Duration = Duration::from_secs(2);

/// Default of [`LimitsConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: u32 = 20_000;

/// Default of [`LimitsConfig::max_connections_per_client`]: no cap of its own, only the
/// member's `max_connections`. A per-address cap on by default refuses whole clusters'
/// traffic when a load balancer SNATs clients to a few node addresses.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: u32 = u32::MAX;

fn default_max_connections_per_client() -> u32 {
    DEFAULT_MAX_CONNECTIONS_PER_CLIENT
}

/// An address range in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`; a bare address is
/// the range of that one address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpRange {
    addr: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Whether `ip` is in the range. IPv4-mapped IPv6 addresses count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?} has a prefix length that is not 0-{max}"))?,
        };
        Ok(IpRange { addr, prefix })
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for IpRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a config document was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not JSON of the expected shape; the message starts with the path of the field at
    /// fault (`limits.headerReadTimeout: ...`).
    #[error("failed to parse dataplane config: {0}")]
    Parse(#[from] serde_path_to_error::Error<serde_json::Error>),
    /// A version this build does not know.
    #[error(
        "failed to load dataplane config: version {found} is not supported (this build reads {CONFIG_VERSION})"
    )]
    Version {
        /// The version found.
        found: u32,
    },
    /// Internally inconsistent.
    #[error("failed to load dataplane config: {0}")]
    Invalid(String),
}

impl DataplaneConfig {
    /// The route a request takes: the first of [`routes`](Self::routes) whose host and
    /// path pattern cover it. `host` is lower case, without port or final dot. This is
    /// the reference for the precedence the dataplane implements.
    pub fn route(&self, host: &str, path: &str) -> Option<&RouteConfig> {
        self.routes
            .iter()
            .find(|r| r.matches_host(host) && r.matches_path(path))
    }

    /// The stable content hash: `sha256:` and the hex digest of the canonical JSON.
    ///
    /// Maps are ordered (`BTreeMap`) and the struct has a fixed field order, so equal
    /// configs always hash equal.
    pub fn content_hash(&self) -> String {
        let bytes = serde_json::to_vec(self).expect("a config always serializes");
        format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
    }

    /// The Secrets whose material the config loads: listener certificates (default and
    /// SNI), upstream CAs and basic-auth htpasswd files.
    pub fn certificate_secrets(&self) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        for l in &self.listeners {
            out.extend(l.default_certificate.iter().map(|c| c.secret.clone()));
            out.extend(l.sni.iter().map(|s| s.certificate.secret.clone()));
        }
        for f in self.farms.values() {
            if let Some(UpstreamTrust::Ca { secret }) = f.upstream.tls.as_ref().map(|t| &t.trust) {
                out.insert(secret.clone());
            }
            if let Some(auth) = &f.access.basic_auth {
                out.insert(auth.secret.clone());
            }
        }
        out
    }

    /// The canonical JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a config always serializes")
    }

    /// Parses and checks a document: known version, and every route, member and
    /// endpoint reference resolves. A config that fails is refused whole.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
            let mut de = serde_json::Deserializer::from_str(text);
            let value = serde_path_to_error::deserialize(&mut de)?;
            // Trailing characters are an error too, as with `serde_json::from_str`.
            de.end()
                .map_err(|e| ConfigError::Invalid(format!("after the document: {e}")))?;
            Ok(value)
        }
        let v: Versioned = parse(text)?;
        if v.version != CONFIG_VERSION {
            return Err(ConfigError::Version { found: v.version });
        }
        let config: DataplaneConfig = parse(text)?;
        config.check()?;
        Ok(config)
    }

    /// Checks internal references.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.version != CONFIG_VERSION {
            return Err(ConfigError::Version {
                found: self.version,
            });
        }
        self.check_listeners()
            .and_then(|()| self.check_routes())
            .and_then(|()| self.check_farms())
            .map_err(ConfigError::Invalid)
    }

    /// Listener names and ports are unique; HTTPS listeners have a certificate.
    fn check_listeners(&self) -> Result<(), String> {
        let mut ports = std::collections::BTreeSet::new();
        let mut names = std::collections::BTreeSet::new();
        for l in &self.listeners {
            if !names.insert(&l.name) {
                return Err(format!("listener name {} appears twice", l.name));
            }
            if !ports.insert(l.port) {
                return Err(format!("listener port {} appears twice", l.port));
            }
            if l.protocol == ListenerProtocol::Https && l.default_certificate.is_none() {
                return Err(format!(
                    "HTTPS listener {} has no default certificate",
                    l.name
                ));
            }
        }
        Ok(())
    }

    /// Each route is claimed once, names known farms and has a path its match can use.
    fn check_routes(&self) -> Result<(), String> {
        let mut claims = std::collections::BTreeSet::new();
        for r in &self.routes {
            if !claims.insert((&r.host, r.path_match, &r.path_prefix)) {
                return Err(format!("route {}{} appears twice", r.host, r.path_prefix));
            }
            if !self.farms.contains_key(&r.farm) {
                return Err(format!(
                    "route {}{} names unknown farm {}",
                    r.host, r.path_prefix, r.farm
                ));
            }
            if let Some(c) = &r.canary {
                if !self.farms.contains_key(&c.farm) {
                    return Err(format!(
                        "route {}{} names unknown canary farm {}",
                        r.host, r.path_prefix, c.farm
                    ));
                }
                if c.weight > 100 {
                    return Err(format!(
                        "route {}{} has a canary weight over 100",
                        r.host, r.path_prefix
                    ));
                }
            }
            match r.path_match {
                PathMatch::Prefix | PathMatch::Exact if !r.path_prefix.starts_with('/') => {
                    return Err(format!(
                        "route {}{} has a path without a leading /",
                        r.host, r.path_prefix
                    ));
                }
                PathMatch::Regex => {
                    if let Err(e) = path_regex(&r.path_prefix) {
                        return Err(format!(
                            "route {} has an invalid path regex {:?}: {e}",
                            r.host, r.path_prefix
                        ));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Farms and endpoints sit under their own keys; members name known endpoints.
    fn check_farms(&self) -> Result<(), String> {
        for (id, farm) in &self.farms {
            if id != &farm.id {
                return Err(format!("farm key {id} differs from its id {}", farm.id));
            }
            for m in &farm.members {
                if let MemberTarget::Endpoints { identities } = &m.target {
                    for key in identities {
                        if !self.endpoints.contains_key(key) {
                            return Err(format!(
                                "farm {id} member {} names unknown endpoint {key}",
                                m.server
                            ));
                        }
                    }
                }
            }
            if let Some(v) = &farm.verifier
                && v.expected_statuses.is_empty()
            {
                return Err(format!("farm {id} verifier accepts no status"));
            }
        }
        for (key, ep) in &self.endpoints {
            if key != &ep.identity.key() {
                return Err(format!(
                    "endpoint key {key} differs from its identity {}",
                    ep.identity
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_key_names_address_tls_and_protocol_only() {
        let a = EndpointIdentity::new(
            "172.16.0.1:80".parse().unwrap(),
            None,
            UpstreamProtocol::Http1,
        );
        assert_eq!(a.key(), "http1://172.16.0.1:80");
        let b = EndpointIdentity::new(
            "[::ffff:172.16.0.1]:80".parse().unwrap(),
            None,
            UpstreamProtocol::Http1,
        );
        assert_eq!(a, b, "an IPv4-mapped address is the same endpoint");
        let t = EndpointIdentity::new(
            "[2001:db8::1]:443".parse().unwrap(),
            Some(UpstreamTlsIdentity {
                sni: "api.internal".into(),
                trust: UpstreamTrust::Ca {
                    secret: "upstream-ca".into(),
                },
            }),
            UpstreamProtocol::Http2,
        );
        assert_eq!(
            t.key(),
            "h2+tls://[2001:db8::1]:443?sni=api.internal&trust=ca:upstream-ca"
        );
    }

    #[test]
    fn a_route_without_a_path_kind_is_a_prefix() {
        let old: RouteConfig =
            serde_json::from_str(r#"{"host": "a.io", "pathPrefix": "/api", "farm": "d/a"}"#)
                .unwrap();
        assert_eq!(old.path_match, PathMatch::Prefix);
        assert!(old.matches_path("/api/x") && !old.matches_path("/apix"));
        // A prefix route is written as before, so older members read it.
        assert!(!serde_json::to_string(&old).unwrap().contains("pathMatch"));
        let regex = RouteConfig {
            path_prefix: "/api/v[0-9]+".into(),
            canary: None,
            path_match: PathMatch::Regex,
            ..old
        };
        assert!(regex.matches_path("/API/V2/x") && !regex.matches_path("/x/api/v2"));
    }

    #[test]
    fn status_ranges_parse_and_refuse() {
        assert_eq!(
            "200-399".parse::<StatusRange>().unwrap(),
            StatusRange { from: 200, to: 399 }
        );
        assert_eq!(
            "204".parse::<StatusRange>().unwrap(),
            StatusRange { from: 204, to: 204 }
        );
        assert!("399-200".parse::<StatusRange>().is_err());
        assert!("99".parse::<StatusRange>().is_err());
        assert!("2xx".parse::<StatusRange>().is_err());
    }
}

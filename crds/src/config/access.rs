//! The access phase of a farm: what the proxy checks before it picks a server.

use serde::{Deserialize, Serialize};

use super::IpRange;

/// What the proxy checks before a request of the farm may reach a server. Each part is
/// off when unset; a config without any (every config written before these existed)
/// admits every request.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessConfig {
    /// Client address ranges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ranges: Option<SourceRangesConfig>,
    /// Rate and concurrency limits per client address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    /// HTTP Basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuthConfig>,
    /// Authentication by another service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_auth: Option<ExternalAuthConfig>,
    /// Cross-origin resource sharing (ServerFarm `spec.cors`), answered in the same phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsConfig>,
}

impl AccessConfig {
    /// Whether nothing is checked (the field is then left out of the document).
    pub fn is_empty(&self) -> bool {
        self == &AccessConfig::default()
    }
}

/// Client address ranges: a client in `deny`, or not in a non-empty `allow`, is refused.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceRangesConfig {
    /// When not empty, only these clients are served.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<IpRange>,
    /// These clients are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<IpRange>,
}

impl SourceRangesConfig {
    /// Whether `ip` may be served.
    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        !self.deny.iter().any(|r| r.contains(ip))
            && (self.allow.is_empty() || self.allow.iter().any(|r| r.contains(ip)))
    }
}

/// Limits per client address, per member.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per second, when limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u32>,
    /// Requests per minute, when limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// The burst on top of each rate, as a multiple of it.
    pub burst_multiplier: u32,
    /// Requests in flight at once, when limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u32>,
    /// The status of a refused request.
    pub status_code: u16,
}

/// HTTP Basic authentication against an htpasswd file, referenced by the Secret that
/// holds it (never its content: in cluster mode the controller copies the Secret's
/// `auth` into the array's Secret as `<secret>.auth`; in local mode the file is
/// `certs/<secret>/auth`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BasicAuthConfig {
    /// The Secret holding the htpasswd file.
    pub secret: String,
    /// The realm of the challenge.
    pub realm: String,
}

/// Authentication by another service (ingress-nginx's `auth-url`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalAuthConfig {
    /// The auth service, `http://` or `https://` with an authority.
    pub url: String,
    /// The method of the auth request.
    pub method: String,
    /// Where a 401 redirects to, with `rd=<original URL>`, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signin: Option<String>,
    /// Headers of the auth answer set on the upstream request, lower case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers: Vec<String>,
}

/// Cross-origin resource sharing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsConfig {
    /// `*`, exact origins and `scheme://*.suffix` patterns, lower case.
    pub allow_origins: Vec<String>,
    /// Methods a preflight allows.
    pub allow_methods: Vec<String>,
    /// Request headers a preflight allows.
    pub allow_headers: Vec<String>,
    /// Response headers scripts may read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// Whether credentials are allowed.
    pub allow_credentials: bool,
    /// Seconds a preflight's answer may be cached.
    pub max_age: u32,
}

impl CorsConfig {
    /// Whether `origin` (an `Origin` header value) is allowed.
    pub fn allows(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        self.allow_origins.iter().any(|p| {
            if p == "*" {
                return true;
            }
            let Some((scheme, suffix)) = p.split_once("://*.") else {
                return *p == origin;
            };
            // One label, as ingress-nginx's `[A-Za-z0-9-]+` does.
            origin
                .strip_prefix(scheme)
                .and_then(|o| o.strip_prefix("://"))
                .and_then(|o| o.strip_suffix(suffix))
                .and_then(|o| o.strip_suffix('.'))
                .is_some_and(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        })
    }
}

/// ServerFarm `spec.cors.allowMethods` (as ingress-nginx).
pub const DEFAULT_CORS_METHODS: [&str; 6] = ["GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"];
/// ServerFarm `spec.cors.allowHeaders` (as ingress-nginx).
pub const DEFAULT_CORS_HEADERS: [&str; 9] = [
    "DNT",
    "Keep-Alive",
    "User-Agent",
    "X-Requested-With",
    "If-Modified-Since",
    "Cache-Control",
    "Content-Type",
    "Range",
    "Authorization",
];
/// ServerFarm `spec.cors.maxAge`, in seconds (as ingress-nginx).
pub const DEFAULT_CORS_MAX_AGE: u32 = 1_728_000;

/// ServerFarm `spec.access.externalAuth.method`.
pub const DEFAULT_EXTERNAL_AUTH_METHOD: &str = "GET";

/// ServerFarm `spec.access.basicAuth.realm`.
pub const DEFAULT_BASIC_AUTH_REALM: &str = "Restricted";

/// ServerFarm `spec.access.rateLimit.burstMultiplier` (as ingress-nginx).
pub const DEFAULT_BURST_MULTIPLIER: u32 = 5;
/// ServerFarm `spec.access.rateLimit.statusCode`.
pub const DEFAULT_RATE_LIMIT_STATUS: u16 = 429;

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(allow: &[&str], deny: &[&str]) -> SourceRangesConfig {
        SourceRangesConfig {
            allow: allow.iter().map(|r| r.parse().unwrap()).collect(),
            deny: deny.iter().map(|r| r.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn cors_origins_match_exactly_or_by_one_wildcard_label() {
        let cors = CorsConfig {
            allow_origins: vec![
                "https://app.example.com".into(),
                "https://*.example.org:8443".into(),
            ],
            allow_methods: vec![],
            allow_headers: vec![],
            expose_headers: vec![],
            allow_credentials: true,
            max_age: 0,
        };
        assert!(cors.allows("https://app.example.com"));
        assert!(cors.allows("HTTPS://App.Example.com"));
        assert!(!cors.allows("http://app.example.com"));
        assert!(!cors.allows("https://app.example.com.evil"));
        assert!(cors.allows("https://a-1.example.org:8443"));
        assert!(!cors.allows("https://example.org:8443"));
        assert!(!cors.allows("https://a.b.example.org:8443"));
        assert!(!cors.allows("https://a.example.org"));
        assert!(!cors.allows("https://evilexample.org:8443"));
    }

    #[test]
    fn deny_wins_and_an_empty_allow_allows_everyone_else() {
        let r = ranges(&["10.0.0.0/8", "2001:db8::/32"], &["10.1.0.0/16"]);
        assert!(r.admits("10.2.3.4".parse().unwrap()));
        assert!(r.admits("::ffff:10.2.3.4".parse().unwrap()));
        assert!(r.admits("2001:db8::1".parse().unwrap()));
        assert!(!r.admits("10.1.2.3".parse().unwrap()));
        assert!(!r.admits("192.0.2.1".parse().unwrap()));
        let open = ranges(&[], &["192.0.2.1"]);
        assert!(open.admits("192.0.2.2".parse().unwrap()));
        assert!(!open.admits("192.0.2.1".parse().unwrap()));
    }
}

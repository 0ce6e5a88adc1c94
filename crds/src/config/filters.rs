//! The dataplane config of a farm's route features (`spec.filters`): rewrites,
//! redirects, request header changes and the body size limit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A farm's route features, applied before a server is picked. Empty when the farm
/// sets none, and then not written, so configs without them parse and hash as before.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FiltersConfig {
    /// The path sent to the servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<RewriteConfig>,
    /// Every request answered with this redirect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RedirectConfig>,
    /// Plain-HTTP requests redirected to HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<HttpsRedirectConfig>,
    /// A request for `/` answered `302` to this path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_root: Option<String>,
    /// Changes to the request headers sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderChanges>,
    /// The largest request body, in bytes (never 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body_size: Option<u64>,
}

/// Header changes: names are lower case, valid tokens, never hop-by-hop, `host`,
/// `content-length` or `transfer-encoding`; values are valid header values. Applied as
/// remove, then set, then add.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderChanges {
    /// Replaced or added.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Appended.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// Request headers a farm may not change: the hop-by-hop ones (RFC 9110 section 7.6.1)
/// and those that frame or address the message (`Host` is `backendHost`'s).
pub const PROTECTED_REQUEST_HEADERS: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "trailer",
];

/// ServerFarm `spec.filters.requestRedirect.statusCode`.
pub const DEFAULT_REDIRECT_STATUS: u16 = 302;
/// ServerFarm `spec.filters.httpsRedirect.statusCode`.
pub const DEFAULT_HTTPS_REDIRECT_STATUS: u16 = 308;

/// A redirect to one URL.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedirectConfig {
    /// The `Location`, as the farm gave it (a valid header value).
    pub location: String,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

/// A redirect of plain-HTTP requests to `https://host[:port]/path?query`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpsRedirectConfig {
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
    /// The port written after the host, when not 443.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl FiltersConfig {
    /// Whether the farm has no route feature.
    pub fn is_empty(&self) -> bool {
        self == &FiltersConfig::default()
    }
}

/// How the request path is rewritten.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", tag = "kind", deny_unknown_fields)]
pub enum RewriteConfig {
    /// The text the route matched is replaced by `with`; the rest of the path is kept.
    ReplacePrefixMatch {
        /// The replacement, starting with `/`.
        with: String,
    },
    /// The whole path becomes `template`, with `$0` to `$9` replaced by the route's
    /// regex captures (for other routes `$0` is the matched text, the rest empty).
    PathTemplate {
        /// The template, starting with `/`.
        template: String,
    },
}

impl RewriteConfig {
    /// The new path for `path`, whose route matched `captures` (`captures[0]` is the
    /// whole match; a group that did not take part is `None`). Always a path starting
    /// with `/`.
    pub fn apply(&self, path: &str, captures: &[Option<&str>]) -> String {
        let matched = captures.first().copied().flatten().unwrap_or("");
        let out = match self {
            RewriteConfig::ReplacePrefixMatch { with } => {
                // A match ending in `/` (the prefix `/`, a regex `/api/`) leaves that `/`
                // to the rest, which keeps its segment boundary.
                let cut = match matched.len() {
                    n if n > 0 && matched.ends_with('/') && path.len() > n => n - 1,
                    n => n,
                };
                let rest = path.get(cut..).unwrap_or("");
                // Joined on one `/`: `/api` → `/` makes `/api/x` `/x`, not `//x`.
                if rest.is_empty() || rest.starts_with('/') {
                    format!("{}{rest}", with.trim_end_matches('/'))
                } else {
                    format!("{with}{rest}")
                }
            }
            RewriteConfig::PathTemplate { template } => expand(template, captures),
        };
        if out.starts_with('/') {
            out
        } else {
            format!("/{out}")
        }
    }
}

/// `template` with `$0`..`$9` replaced by `captures` (missing groups are empty); any
/// other `$` is kept.
fn expand(template: &str, captures: &[Option<&str>]) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$'
            && let Some(d) = chars.peek().and_then(|d| d.to_digit(10))
        {
            chars.next();
            out.push_str(captures.get(d as usize).copied().flatten().unwrap_or(""));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_prefix_match_keeps_the_rest_on_one_slash() {
        let to = |with: &str| RewriteConfig::ReplacePrefixMatch { with: with.into() };
        assert_eq!(to("/v2").apply("/api/x", &[Some("/api")]), "/v2/x");
        assert_eq!(to("/v2").apply("/api", &[Some("/api")]), "/v2");
        assert_eq!(to("/").apply("/api/x", &[Some("/api")]), "/x");
        assert_eq!(to("/").apply("/api", &[Some("/api")]), "/");
        assert_eq!(to("/v2/").apply("/api/x", &[Some("/api")]), "/v2/x");
        // The root prefix: everything is the rest.
        assert_eq!(to("/app").apply("/x", &[Some("/")]), "/app/x");
        // A regex match that ends inside a segment keeps the rest as it is.
        assert_eq!(to("/new/").apply("/old-x", &[Some("/old-")]), "/new/x");
        assert_eq!(to("/v2").apply("/api/x", &[Some("/api/")]), "/v2/x");
    }

    #[test]
    fn a_path_template_takes_the_captures() {
        let t = |template: &str| RewriteConfig::PathTemplate {
            template: template.into(),
        };
        let caps = [Some("/api/users"), Some("/"), Some("users")];
        assert_eq!(t("/$2").apply("/api/users", &caps), "/users");
        assert_eq!(t("/v2$1$2").apply("/api/users", &caps), "/v2/users");
        assert_eq!(t("/x$9$0").apply("/api/users", &caps), "/x/api/users");
        assert_eq!(t("/a$b$").apply("/api/users", &caps), "/a$b$");
        // An empty result is the root.
        assert_eq!(
            t("$2").apply("/api/", &[Some("/api/"), Some("/"), Some("")]),
            "/"
        );
        assert_eq!(
            t("$2").apply("/api/u", &[Some("/api/u"), None, Some("u")]),
            "/u"
        );
    }
}

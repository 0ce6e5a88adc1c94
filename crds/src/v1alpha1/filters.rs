//! `ServerFarm` route features: what the dataplane does to a request of the farm, or
//! answers itself, before a server is picked; and canary splits between farms.

use std::collections::BTreeMap;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Changes made to the farm's requests, and answers the dataplane gives itself, before
/// a server is picked. Each applies to every route of the farm.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Filters {
    /// Rewrites the request path sent to the servers. The query string is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,

    /// Answers every request of the farm with a redirect to `url`; no request reaches
    /// a server (ingress-nginx `permanent-redirect` and `temporal-redirect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RequestRedirect>,

    /// Redirects a request that arrived on a plain-HTTP listener to
    /// `https://<host><path>?<query>`; requests on HTTPS pass. The port is left out,
    /// unless the array has exactly one HTTPS listener and it is not on 443: then it is
    /// that listener's port (ingress-nginx `ssl-redirect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<HttpsRedirect>,

    /// A request for exactly `/` is answered `302` with this path as its `Location`,
    /// e.g. `/app1` (ingress-nginx `app-root`). Starts with `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"), length(max = 1024))]
    pub app_root: Option<String>,

    /// Changes to the request headers sent to the servers, made after the proxy's own
    /// (hop-by-hop removal, `X-Forwarded-*`, `Via`). Hop-by-hop headers, `Host` (see
    /// `backendHost`), `Content-Length` and `Transfer-Encoding` cannot be changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<RequestHeaders>,

    /// The largest request body accepted, in bytes (ingress-nginx `proxy-body-size`).
    /// A request declaring a larger `Content-Length` is answered `413` without reaching a
    /// server; a streamed body that grows past it is cut off and answered `413` (or the
    /// connection reset, if the server already answered). Neither counts against the
    /// server's health. 0 or unset means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body_size: Option<u64>,
}

/// Request header changes. Names are matched case-insensitively.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RequestHeaders {
    /// Headers set to these values, replacing any the client sent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub set: BTreeMap<String, String>,

    /// Headers added with these values, after any of the same name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub add: BTreeMap<String, String>,

    /// Headers removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub remove: Vec<String>,
}

/// A redirect of every request to one URL.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RequestRedirect {
    /// The `Location` sent, as given: an absolute URL (`https://www.example.com/new`)
    /// or a path.
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,

    /// `301`, `302`, `303`, `307` or `308`. Defaults to 302.
    #[serde(default = "default_redirect_status")]
    #[x_kube(validation = Rule::new("self in [301, 302, 303, 307, 308]").message("statusCode must be 301, 302, 303, 307 or 308"))]
    pub status_code: u16,
}

/// A redirect of plain-HTTP requests to HTTPS.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HttpsRedirect {
    /// `301`, `302`, `303`, `307` or `308`. Defaults to 308, which keeps the method and
    /// body of the request.
    #[serde(default = "default_https_redirect_status")]
    #[x_kube(validation = Rule::new("self in [301, 302, 303, 307, 308]").message("statusCode must be 301, 302, 303, 307 or 308"))]
    pub status_code: u16,
}

fn default_redirect_status() -> u16 {
    crate::config::DEFAULT_REDIRECT_STATUS
}

fn default_https_redirect_status() -> u16 {
    crate::config::DEFAULT_HTTPS_REDIRECT_STATUS
}

/// A path rewrite: exactly one of `replacePrefixMatch` and `pathTemplate`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.replacePrefixMatch) != has(self.pathTemplate)").message("a rewrite sets exactly one of replacePrefixMatch or pathTemplate"))]
pub struct Rewrite {
    /// Replaces the part of the path the route matched and keeps the rest (Gateway API
    /// `ReplacePrefixMatch`): with path `/api` and `/v2`, `/api/x` becomes `/v2/x` and
    /// `/api` becomes `/v2`. For an exact path the whole path is replaced; for a regex,
    /// the text it matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"), length(max = 1024))]
    pub replace_prefix_match: Option<String>,

    /// The whole new path, in which `$0` to `$9` are replaced by the capture groups of
    /// the route's regex (ingress-nginx `rewrite-target`). With regex path
    /// `/api(/|$)(.*)` and template `/$2`, `/api/users?x=1` becomes `/users?x=1`. For a
    /// prefix or exact path, `$0` is the matched text and the other groups are empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"), length(max = 1024))]
    pub path_template: Option<String>,
}

/// Makes this farm a canary of the farm (or farms) of the same array that publish the
/// same hosts and paths: it claims no route of its own, and a request on one of those
/// routes goes to the canary instead of the primary as these rules say, in order
/// (ingress-nginx canary annotations).
///
/// 1. `header`, when the request has it: with `headerValue`, the canary when the value
///    equals it (another value goes on to the next rules); without, `always` picks the
///    canary and `never` the primary (another value goes on).
/// 2. `cookie`, when the request has it: `always` or `never`, likewise.
/// 3. The canary with probability `weight`/100.
///
/// Every host and path of a canary needs a primary, and a route has at most one
/// canary: the older canary farm keeps it. The canary's own servers, upstream settings
/// and filters serve the requests it takes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.headerValue) || has(self.header)").message("headerValue needs header").field_path(".headerValue"))]
pub struct Canary {
    /// Percent of the remaining requests (those no header or cookie decided) sent to the
    /// canary, 0 to 100. Defaults to 0.
    #[serde(default)]
    #[schemars(range(max = 100))]
    pub weight: u32,

    /// A request header that decides: `always` or `never`, or `headerValue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"), length(max = 256))]
    pub header: Option<String>,

    /// The value of `header` that picks the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub header_value: Option<String>,

    /// A cookie that decides: `always` or `never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"), length(max = 256))]
    pub cookie: Option<String>,
}

//! `ServerFarm` route features: what the dataplane does to a request of the farm, or
//! answers itself, before a server is picked.

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

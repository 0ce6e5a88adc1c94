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

//! Route features of a farm (its `filters`), as phases of the request path before an
//! endpoint is picked: answers the proxy gives itself (redirects, the body limit) and
//! changes to the request (path rewrite, request headers).

use http::Uri;
use portcullis_crds::config::{PathMatch, RewriteConfig};

use crate::routes::Route;

/// The path and query to send upstream when the farm rewrites `uri`, which `route`
/// matched; the query is kept as it came.
pub(crate) fn rewrite(rewrite: &RewriteConfig, route: &Route, uri: &Uri) -> Option<String> {
    let path = uri.path();
    if path == "*" {
        // `OPTIONS *` names the server, not a path.
        return None;
    }
    let mut captures: [Option<&str>; 10] = [None; 10];
    match route.kind {
        PathMatch::Prefix => captures[0] = Some(&route.pattern),
        PathMatch::Exact => captures[0] = Some(path),
        PathMatch::Regex => {
            let found = route.regex.as_ref()?.captures(path)?;
            for (slot, group) in captures.iter_mut().zip(found.iter()) {
                *slot = group.map(|m| m.as_str());
            }
        }
    }
    let mut out = rewrite.apply(path, &captures);
    if let Some(q) = uri.query() {
        out.push('?');
        out.push_str(q);
    }
    Some(out)
}

//! Route features of a farm (its `filters`), as phases of the request path before an
//! endpoint is picked: answers the proxy gives itself (redirects, the body limit) and
//! changes to the request (path rewrite, request headers).

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use portcullis_crds::config::{FiltersConfig, HeaderChanges, PathMatch, RewriteConfig};

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

/// A redirect the proxy answers itself.
#[derive(Debug)]
pub(crate) struct Redirect {
    pub(crate) status: StatusCode,
    pub(crate) location: HeaderValue,
}

/// What the admit phase decided about a request, before any server is picked.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Forward it.
    Pass,
    /// Answer with this redirect.
    Redirect(Redirect),
    /// Its declared body is over the farm's limit: answer 413.
    TooLarge,
}

/// The admit phase: whether the farm answers the request itself (a redirect, or a
/// declared body length over its limit) or forwards it. `host` is the request's host
/// (lower case, no port); `declared` the body length the request announced, at least.
pub(crate) fn admit(
    filters: &FiltersConfig,
    tls: bool,
    host: &str,
    uri: &Uri,
    declared: u64,
) -> Admission {
    if let Some(r) = redirect(filters, tls, host, uri) {
        return Admission::Redirect(r);
    }
    match filters.max_request_body_size {
        Some(limit) if declared > limit => Admission::TooLarge,
        _ => Admission::Pass,
    }
}

/// The redirect the farm answers `uri` with, if any, in the order ingress-nginx
/// applies them: plain HTTP to HTTPS first, then the farm's own redirect, then the
/// application root for `/`.
fn redirect(filters: &FiltersConfig, tls: bool, host: &str, uri: &Uri) -> Option<Redirect> {
    let status = |code: u16| StatusCode::from_u16(code).unwrap_or(StatusCode::FOUND);
    if let Some(https) = filters.https_redirect.as_ref().filter(|_| !tls) {
        let target = match uri.path_and_query().map(|pq| pq.as_str()) {
            Some(pq) if pq.starts_with('/') => pq,
            _ => "/",
        };
        let location = match https.port {
            Some(port) => format!("https://{host}:{port}{target}"),
            None => format!("https://{host}{target}"),
        };
        // The host and target passed the request parser, so this is a valid value.
        return HeaderValue::from_str(&location)
            .ok()
            .map(|location| Redirect {
                status: status(https.status),
                location,
            });
    }
    if let Some(r) = &filters.redirect {
        return HeaderValue::from_str(&r.location)
            .ok()
            .map(|location| Redirect {
                status: status(r.status),
                location,
            });
    }
    if let Some(root) = filters.app_root.as_ref().filter(|_| uri.path() == "/") {
        return HeaderValue::from_str(root).ok().map(|location| Redirect {
            status: StatusCode::FOUND,
            location,
        });
    }
    None
}

/// A farm's request header changes, parsed once per snapshot.
#[derive(Debug, Default)]
pub(crate) struct HeaderOps {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderOps {
    /// Parses checked changes; an entry that does not parse (translation refuses those)
    /// is left out.
    pub(crate) fn new(c: &HeaderChanges) -> Self {
        let pairs = |m: &std::collections::BTreeMap<String, String>| {
            m.iter()
                .filter_map(|(n, v)| {
                    Some((
                        HeaderName::from_bytes(n.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect()
        };
        HeaderOps {
            remove: c
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
            set: pairs(&c.set),
            add: pairs(&c.add),
        }
    }

    /// Removes, then sets, then adds.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }
}

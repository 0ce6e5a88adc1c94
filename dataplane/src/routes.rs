//! The route index: exact host, then `*.` wildcard by longest suffix; within a host an
//! exact path first, then prefixes (on segment boundaries) and regexes together, the
//! longer pattern first.

use std::collections::HashMap;

use portcullis_crds::config::{PathMatch, RouteConfig, path_regex};
use regex::Regex;

use crate::canary::CanaryRule;

/// One route of a host, ready to match.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) kind: PathMatch,
    /// The pattern as configured: prefix, exact path or regex text.
    pub(crate) pattern: String,
    /// For a regex route, compiled once per snapshot.
    pub(crate) regex: Option<Regex>,
    pub(crate) farm: String,
    /// A canary farm that takes some of the route's requests.
    pub(crate) canary: Option<CanaryRule>,
}

impl Route {
    fn matches(&self, path: &str) -> bool {
        match self.kind {
            PathMatch::Prefix => prefix_matches(&self.pattern, path),
            PathMatch::Exact => self.pattern == path,
            PathMatch::Regex => self.regex.as_ref().is_some_and(|r| r.is_match(path)),
        }
    }

    /// The farm that serves a request with `headers`: the route's, or its canary's.
    pub(crate) fn farm_for(&self, headers: &http::HeaderMap) -> &str {
        match &self.canary {
            Some(c) if c.takes(headers) => &c.farm,
            _ => &self.farm,
        }
    }

    /// The path an affinity cookie is scoped to: the prefix, the exact path, or `/` for
    /// a regex (which names no one path).
    pub(crate) fn cookie_path(&self) -> &str {
        match self.kind {
            PathMatch::Prefix | PathMatch::Exact => &self.pattern,
            PathMatch::Regex => "/",
        }
    }
}

/// One host's routes.
#[derive(Debug, Default)]
struct HostRoutes {
    /// Exact paths.
    exact: HashMap<String, Route>,
    /// Prefixes and regexes, longer pattern first.
    ordered: Vec<Route>,
}

impl HostRoutes {
    fn find(&self, path: &str) -> Option<&Route> {
        self.exact
            .get(path)
            .or_else(|| self.ordered.iter().find(|r| r.matches(path)))
    }
}

/// Whether `prefix` matches `path` on a segment boundary.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Lookup structure built once per snapshot.
#[derive(Debug, Default)]
pub(crate) struct RouteIndex {
    exact: HashMap<String, HostRoutes>,
    /// `(".example.com", routes)`, longest suffix first.
    wildcard: Vec<(String, HostRoutes)>,
}

impl RouteIndex {
    /// Indexes `routes` (a checked config's, so every regex compiles; one that does not
    /// is left out rather than matching nothing silently at run time).
    pub(crate) fn new(routes: &[RouteConfig]) -> Self {
        let mut exact: HashMap<String, HostRoutes> = HashMap::new();
        let mut wild: HashMap<String, HostRoutes> = HashMap::new();
        for r in routes {
            let entry = match r.host.strip_prefix('*') {
                Some(suffix) => wild.entry(suffix.to_owned()).or_default(),
                None => exact.entry(r.host.clone()).or_default(),
            };
            let regex = match r.path_match {
                PathMatch::Regex => match path_regex(&r.path_prefix) {
                    Ok(re) => Some(re),
                    Err(e) => {
                        tracing::warn!(host = %r.host, regex = %r.path_prefix, error = %e, "route left out");
                        continue;
                    }
                },
                _ => None,
            };
            let route = Route {
                kind: r.path_match,
                pattern: r.path_prefix.clone(),
                regex,
                farm: r.farm.clone(),
                canary: r.canary.as_ref().map(CanaryRule::new),
            };
            match r.path_match {
                PathMatch::Exact => {
                    entry.exact.insert(route.pattern.clone(), route);
                }
                _ => entry.ordered.push(route),
            }
        }
        // Stable: routes of one length keep the config's order.
        let sort = |h: &mut HostRoutes| {
            h.ordered
                .sort_by_key(|r| std::cmp::Reverse(r.pattern.len()))
        };
        exact.values_mut().for_each(sort);
        wild.values_mut().for_each(sort);
        let mut wildcard: Vec<(String, HostRoutes)> = wild.into_iter().collect();
        wildcard.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        RouteIndex { exact, wildcard }
    }

    /// Finds the route for a (lower-case, port-less) host and a path.
    pub(crate) fn find(&self, host: &str, path: &str) -> Option<&Route> {
        self.exact.get(host).and_then(|h| h.find(path)).or_else(|| {
            self.wildcard
                .iter()
                .filter(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
                .find_map(|(_, h)| h.find(path))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(host: &str, path: &str, farm: &str) -> RouteConfig {
        of(PathMatch::Prefix, host, path, farm)
    }

    fn of(kind: PathMatch, host: &str, path: &str, farm: &str) -> RouteConfig {
        RouteConfig {
            host: host.into(),
            path_prefix: path.into(),
            path_match: kind,
            farm: farm.into(),
            canary: None,
        }
    }

    #[test]
    fn exact_before_wildcard_and_longest_prefix_wins() {
        let idx = RouteIndex::new(&[
            r("*.example.com", "/", "wild"),
            r("*.b.example.com", "/", "wild-long"),
            r("a.example.com", "/", "a-root"),
            r("a.example.com", "/api", "a-api"),
        ]);
        let f = |h, p| idx.find(h, p).map(|m| m.farm.to_owned());
        assert_eq!(f("a.example.com", "/api/x").as_deref(), Some("a-api"));
        assert_eq!(f("a.example.com", "/api").as_deref(), Some("a-api"));
        assert_eq!(f("a.example.com", "/apix").as_deref(), Some("a-root"));
        assert_eq!(f("z.example.com", "/").as_deref(), Some("wild"));
        assert_eq!(f("x.b.example.com", "/").as_deref(), Some("wild-long"));
        assert_eq!(f("example.com", "/"), None);
        assert_eq!(f("other.org", "/"), None);
    }

    #[test]
    fn exact_paths_first_then_prefixes_and_regexes_by_length() {
        let idx = RouteIndex::new(&[
            r("a.io", "/", "root"),
            r("a.io", "/api", "prefix"),
            of(PathMatch::Regex, "a.io", "/api/v[0-9]+", "regex"),
            of(PathMatch::Exact, "a.io", "/api/v1", "exact"),
        ]);
        let f = |p| idx.find("a.io", p).map(|m| m.farm.to_owned());
        assert_eq!(f("/api/v1").as_deref(), Some("exact"));
        assert_eq!(f("/api/v1/").as_deref(), Some("regex"), "exact means exact");
        assert_eq!(
            f("/API/V2/x").as_deref(),
            Some("regex"),
            "regexes ignore case"
        );
        assert_eq!(f("/api/x").as_deref(), Some("prefix"));
        assert_eq!(
            f("/x/api/v2").as_deref(),
            Some("root"),
            "regexes are anchored"
        );
        assert_eq!(idx.find("a.io", "/api/v9").unwrap().cookie_path(), "/");
        assert_eq!(
            idx.find("a.io", "/api/v1").unwrap().cookie_path(),
            "/api/v1"
        );
    }
}

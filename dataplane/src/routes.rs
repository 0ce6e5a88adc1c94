//! The route index: exact host, then `*.` wildcard by longest suffix; within a host the
//! longest path prefix on a segment boundary.

use std::collections::HashMap;

use portcullis_crds::config::RouteConfig;

/// One host's routes, longest prefix first.
#[derive(Debug, Default)]
struct HostRoutes {
    routes: Vec<(String, String)>,
}

impl HostRoutes {
    fn find(&self, path: &str) -> Option<(&str, &str)> {
        self.routes
            .iter()
            .find(|(prefix, _)| prefix_matches(prefix, path))
            .map(|(p, f)| (p.as_str(), f.as_str()))
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

/// A matched route.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RouteMatch<'a> {
    pub(crate) farm: &'a str,
    pub(crate) prefix: &'a str,
}

impl RouteIndex {
    pub(crate) fn new(routes: &[RouteConfig]) -> Self {
        let mut exact: HashMap<String, HostRoutes> = HashMap::new();
        let mut wild: HashMap<String, HostRoutes> = HashMap::new();
        for r in routes {
            let entry = match r.host.strip_prefix('*') {
                Some(suffix) => wild.entry(suffix.to_owned()).or_default(),
                None => exact.entry(r.host.clone()).or_default(),
            };
            entry.routes.push((r.path_prefix.clone(), r.farm.clone()));
        }
        let sort = |h: &mut HostRoutes| h.routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        exact.values_mut().for_each(sort);
        wild.values_mut().for_each(sort);
        let mut wildcard: Vec<(String, HostRoutes)> = wild.into_iter().collect();
        wildcard.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        RouteIndex { exact, wildcard }
    }

    /// Finds the route for a (lower-case, port-less) host and a path.
    pub(crate) fn find(&self, host: &str, path: &str) -> Option<RouteMatch<'_>> {
        let found = self.exact.get(host).and_then(|h| h.find(path)).or_else(|| {
            self.wildcard
                .iter()
                .filter(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
                .find_map(|(_, h)| h.find(path))
        });
        found.map(|(prefix, farm)| RouteMatch { farm, prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(host: &str, path: &str, farm: &str) -> RouteConfig {
        RouteConfig {
            host: host.into(),
            path_prefix: path.into(),
            farm: farm.into(),
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
}

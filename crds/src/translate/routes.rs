//! Routes: the hosts and path prefixes a farm publishes, which farm owns each (host, path)
//! when two ask for it, and the order in which routes match.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::*;
use crate::v1alpha1::{Publish, ServerFarm};

use super::names::normalize_host;
use super::tls::sort_sni;
use super::{FarmErrors, TranslateError, farm_error, normalize_path, secret_id};

/// The farm's published host names, normalized; an empty list, a bad name and a name
/// listed twice are errors.
/// `*` alone is the catch-all: any host that no route names (an Ingress rule without a
/// host, an Ingress's `defaultBackend`), after every exact and `*.` wildcard host.
pub(crate) fn published_hosts(publish: &Publish, errs: &mut FarmErrors<'_>) -> Vec<String> {
    published(
        &publish.hosts,
        "spec.publish.hosts",
        "needs at least one host name",
        |h| {
            if h == "*" {
                Ok(h.to_owned())
            } else {
                normalize_host(h)
            }
        },
        errs,
    )
}

/// Checks one entry of a published list; its normalized form.
type Normalize = fn(&str) -> Result<String, String>;

/// A path pattern a farm publishes, and how it matches.
pub(crate) type RoutePath = (PathMatch, String);

/// The farm's published paths: its prefixes (normalized), exact paths and regexes, or
/// the prefix `/` when it lists none of them. A bad entry and an entry listed twice are
/// errors naming the list and index.
pub(crate) fn published_paths(publish: &Publish, errs: &mut FarmErrors<'_>) -> Vec<RoutePath> {
    if publish.paths.is_empty() && publish.exact_paths.is_empty() && publish.regex_paths.is_empty()
    {
        return vec![(PathMatch::Prefix, "/".to_owned())];
    }
    let mut out = Vec::new();
    let mut add = |list: &[String], field: &str, kind: PathMatch, check: Normalize| {
        let entries = published(list, field, "", check, errs);
        out.extend(entries.into_iter().map(|p| (kind, p)));
    };
    add(
        &publish.paths,
        "spec.publish.paths",
        PathMatch::Prefix,
        normalize_path,
    );
    add(
        &publish.exact_paths,
        "spec.publish.exactPaths",
        PathMatch::Exact,
        exact_path,
    );
    add(
        &publish.regex_paths,
        "spec.publish.regexPaths",
        PathMatch::Regex,
        regex_path,
    );
    out
}

/// An exact path: what [`normalize_path`] accepts, kept byte for byte (a final `/` is
/// part of it).
fn exact_path(path: &str) -> Result<String, String> {
    normalize_path(path).map(|_| path.to_owned())
}

/// A path regex that compiles as the dataplane compiles it.
fn regex_path(pattern: &str) -> Result<String, String> {
    if pattern.is_empty() {
        return Err("a path regex may not be empty".into());
    }
    match path_regex(pattern) {
        Ok(_) => Ok(pattern.to_owned()),
        Err(regex::Error::CompiledTooBig(limit)) => Err(format!(
            "{pattern:?} compiles to more than {limit} bytes; simplify it"
        )),
        Err(e) => Err(format!(
            "{pattern:?} is not a valid regular expression: {e}"
        )),
    }
}

/// The normalized entries of the list at `field`, each once; an empty list is an
/// error `empty` unless that is empty.
fn published(
    list: &[String],
    field: &str,
    empty: &str,
    normalize: Normalize,
    errs: &mut FarmErrors<'_>,
) -> Vec<String> {
    let mut out = Vec::new();
    if list.is_empty() && !empty.is_empty() {
        errs.push(field, empty);
    }
    for (i, entry) in list.iter().enumerate() {
        match normalize(entry) {
            Ok(n) if out.contains(&n) => {
                errs.push(format!("{field}[{i}]"), format!("{n} is listed twice"))
            }
            Ok(n) => out.push(n),
            Err(m) => errs.push(format!("{field}[{i}]"), m),
        }
    }
    out
}

/// Which farm owns each (host, path) and each host's certificate, in the order farms
/// are added (older farms first): a later farm asking for the same is refused.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    /// (host, path kind, path) → farm id.
    routes: BTreeMap<(String, RoutePath), String>,
    /// Host → (certificate Secret, farm id).
    sni: BTreeMap<String, (String, String)>,
}

impl Claims {
    /// Why `farm` cannot publish `hosts` × `paths`: another farm has one of them, or a
    /// host with another certificate.
    pub(crate) fn conflicts(
        &self,
        farm: &ServerFarm,
        hosts: &[String],
        paths: &[RoutePath],
    ) -> Vec<TranslateError> {
        let mut errors = Vec::new();
        for (hi, host) in hosts.iter().enumerate() {
            for path in paths {
                if let Some(owner) = self.routes.get(&(host.clone(), path.clone())) {
                    errors.push(farm_error(
                        farm,
                        format!("spec.publish.hosts[{hi}]"),
                        format!(
                            "{} is already published by ServerFarm {owner}",
                            describe(host, path)
                        ),
                    ));
                }
            }
            if let (Some(tls), Some((secret, owner))) = (&farm.spec.publish.tls, self.sni.get(host))
                && &secret_id(farm, &tls.secret_name) != secret
            {
                errors.push(farm_error(
                    farm,
                    "spec.publish.tls.secretName".into(),
                    format!("host {host} already has certificate {secret} from ServerFarm {owner}"),
                ));
            }
        }
        errors
    }

    /// Gives `hosts` × `paths` (and the hosts' certificate, unless they have one) to
    /// farm `id`; returns its routes.
    pub(crate) fn claim(
        &mut self,
        farm: &ServerFarm,
        id: &str,
        hosts: &[String],
        paths: &[RoutePath],
    ) -> Vec<RouteConfig> {
        let mut routes = Vec::new();
        for host in hosts {
            for path in paths {
                self.routes
                    .insert((host.clone(), path.clone()), id.to_owned());
                routes.push(RouteConfig {
                    host: host.clone(),
                    path_prefix: path.1.clone(),
                    path_match: path.0,
                    farm: id.to_owned(),
                    canary: None,
                });
            }
            // The catch-all host has no name a client could send in SNI.
            if let Some(tls) = farm.spec.publish.tls.as_ref().filter(|_| host != "*") {
                self.sni
                    .entry(host.clone())
                    .or_insert_with(|| (secret_id(farm, &tls.secret_name), id.to_owned()));
            }
        }
        routes
    }

    /// The certificate of every claimed host, exact hosts first.
    pub(crate) fn sni_certificates(self) -> Vec<SniCertificate> {
        let mut sni: Vec<SniCertificate> = self
            .sni
            .into_iter()
            .map(|(host, (secret, _))| SniCertificate {
                host,
                certificate: CertificateRef { secret },
            })
            .collect();
        sort_sni(&mut sni);
        sni
    }
}

/// How a route reads in a message: `host/path`, or `host` and the exact path or regex.
pub(crate) fn describe(host: &str, (kind, path): &RoutePath) -> String {
    match kind {
        PathMatch::Prefix => format!("{host}{path}"),
        PathMatch::Exact => format!("{host} exact path {path}"),
        PathMatch::Regex => format!("{host} path regex {path:?}"),
    }
}

/// Sort key giving route precedence: exact hosts first, then wildcards with longer
/// suffixes; for one host, exact paths first, then prefixes and regexes together by
/// longer pattern text (as ingress-nginx orders its locations).
pub(crate) fn route_precedence(
    r: &RouteConfig,
) -> (
    bool,
    std::cmp::Reverse<usize>,
    String,
    bool,
    std::cmp::Reverse<usize>,
    String,
    PathMatch,
) {
    (
        r.is_wildcard(),
        std::cmp::Reverse(r.host.len()),
        r.host.clone(),
        r.path_match != PathMatch::Exact,
        std::cmp::Reverse(r.path_prefix.len()),
        r.path_prefix.clone(),
        r.path_match,
    )
}

/// Serves farm `id` as `previous` served it, in a config where its new version was
/// refused: the farm, its routes that no farm of `config` claims now, the SNI
/// certificates of those hosts and the endpoints its members name. A site whose edit
/// fails validation keeps its last good version instead of answering 404.
///
/// Returns false (and changes nothing) when `previous` has no such farm.
pub fn keep_last_good(config: &mut DataplaneConfig, previous: &DataplaneConfig, id: &str) -> bool {
    let Some(farm) = previous.farms.get(id) else {
        return false;
    };
    if config.farms.contains_key(id) {
        return false;
    }
    let key = |r: &RouteConfig| (r.host.clone(), r.path_match, r.path_prefix.clone());
    let taken: BTreeSet<(String, PathMatch, String)> = config.routes.iter().map(key).collect();
    // Its routes, each with its canary only while that canary is served.
    let routes: Vec<RouteConfig> = previous
        .routes
        .iter()
        .filter(|r| r.farm == id && !taken.contains(&key(r)))
        .map(|r| {
            let mut r = r.clone();
            r.canary = r.canary.filter(|c| config.farms.contains_key(&c.farm));
            r
        })
        .collect();
    // As a canary: back on the routes it served, unless another canary has them now.
    for old in previous
        .routes
        .iter()
        .filter(|r| r.canary.as_ref().is_some_and(|c| c.farm == id))
    {
        if let Some(r) = config
            .routes
            .iter_mut()
            .find(|r| key(r) == key(old) && r.canary.is_none())
        {
            r.canary = old.canary.clone();
        }
    }
    let hosts: BTreeSet<&str> = routes.iter().map(|r| r.host.as_str()).collect();
    keep_sni(config, previous, &hosts);
    for m in &farm.members {
        if let MemberTarget::Endpoints { identities } = &m.target {
            for key in identities {
                if let Some(ep) = previous.endpoints.get(key) {
                    config
                        .endpoints
                        .entry(key.clone())
                        .or_insert_with(|| ep.clone());
                }
            }
        }
    }
    config.routes.extend(routes);
    config.routes.sort_by_key(route_precedence);
    config.farms.insert(id.to_owned(), farm.clone());
    true
}

/// Adds the SNI certificates `previous` had for `hosts` to the HTTPS listeners of
/// `config` (on the same port) that have none for them.
fn keep_sni(config: &mut DataplaneConfig, previous: &DataplaneConfig, hosts: &BTreeSet<&str>) {
    for l in &mut config.listeners {
        let Some(old) = previous.listeners.iter().find(|o| o.port == l.port) else {
            continue;
        };
        if l.protocol != ListenerProtocol::Https {
            continue;
        }
        for s in &old.sni {
            if hosts.contains(s.host.as_str()) && !l.sni.iter().any(|n| n.host == s.host) {
                l.sni.push(s.clone());
            }
        }
        sort_sni(&mut l.sni);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::testing::{farm, fields};

    #[test]
    fn published_entries_are_normalized_and_unique() {
        let f = farm(
            "a",
            "publish:\n  hosts: [Shop.Example.COM., shop.example.com, '-bad']\n  paths: [/api/, /]\nservers: []\n",
        );
        let mut errs = FarmErrors::new(&f);
        let hosts = published_hosts(&f.spec.publish, &mut errs);
        let paths = published_paths(&f.spec.publish, &mut errs);
        assert_eq!(hosts, ["shop.example.com"]);
        assert_eq!(
            paths,
            [
                (PathMatch::Prefix, "/api".to_owned()),
                (PathMatch::Prefix, "/".to_owned())
            ]
        );
        assert_eq!(
            fields(&errs.errors),
            ["spec.publish.hosts[1]", "spec.publish.hosts[2]"]
        );
        assert_eq!(errs.errors[0].message, "shop.example.com is listed twice");
    }

    #[test]
    fn without_any_path_list_a_farm_publishes_everything() {
        for spec in [
            "publish:\n  hosts: [a.example]\nservers: []\n",
            "publish:\n  hosts: [a.example]\n  paths: []\nservers: []\n",
        ] {
            let f = farm("a", spec);
            let mut errs = FarmErrors::new(&f);
            assert_eq!(
                published_paths(&f.spec.publish, &mut errs),
                [(PathMatch::Prefix, "/".to_owned())]
            );
            assert!(errs.errors.is_empty());
        }
    }

    #[test]
    fn exact_paths_are_kept_byte_for_byte_and_regexes_must_compile() {
        let f = farm(
            "a",
            "publish:\n  hosts: [a.example]\n  exactPaths: [/foo/, /foo, /foo, bar, /a//b]\n  regexPaths: ['/api(/|$)(.*)', '/x(', '']\nservers: []\n",
        );
        let mut errs = FarmErrors::new(&f);
        let paths = published_paths(&f.spec.publish, &mut errs);
        assert_eq!(
            paths,
            [
                (PathMatch::Exact, "/foo/".to_owned()),
                (PathMatch::Exact, "/foo".to_owned()),
                (PathMatch::Regex, "/api(/|$)(.*)".to_owned()),
            ],
            "no default / when another list is given"
        );
        assert_eq!(
            fields(&errs.errors),
            [
                "spec.publish.exactPaths[2]",
                "spec.publish.exactPaths[3]",
                "spec.publish.exactPaths[4]",
                "spec.publish.regexPaths[1]",
                "spec.publish.regexPaths[2]",
            ]
        );
        assert!(
            errs.errors[3]
                .message
                .contains("is not a valid regular expression"),
            "{}",
            errs.errors[3].message
        );
    }

    #[test]
    fn a_regex_too_big_to_compile_is_refused() {
        let f = farm(
            "a",
            "publish:\n  hosts: [a.example]\n  regexPaths: ['/(\\w{100}){100}']\nservers: []\n",
        );
        let mut errs = FarmErrors::new(&f);
        assert!(published_paths(&f.spec.publish, &mut errs).is_empty());
        assert_eq!(fields(&errs.errors), ["spec.publish.regexPaths[0]"]);
        assert!(
            errs.errors[0].message.contains("compiles to more than"),
            "{}",
            errs.errors[0].message
        );
    }

    #[test]
    fn the_same_path_of_another_kind_is_no_conflict() {
        let a = farm("a", "servers: []\n");
        let b = farm("b", "servers: []\n");
        let hosts = ["a.example".to_owned()];
        let prefix = [(PathMatch::Prefix, "/foo".to_owned())];
        let exact = [(PathMatch::Exact, "/foo".to_owned())];
        let mut claims = Claims::default();
        claims.claim(&a, "default/a", &hosts, &prefix);
        assert!(claims.conflicts(&b, &hosts, &exact).is_empty());
        claims.claim(&b, "default/b", &hosts, &exact);
        let errors = claims.conflicts(&b, &hosts, &exact);
        assert_eq!(
            errors[0].message,
            "a.example exact path /foo is already published by ServerFarm default/b"
        );
    }

    #[test]
    fn a_claimed_route_or_certificate_is_refused_to_later_farms() {
        let tls =
            "publish:\n  hosts: [a.example]\n  tls:\n    secretName: cert-OWNER\nservers: []\n";
        let first = farm("first", &tls.replace("OWNER", "one"));
        let second = farm("second", &tls.replace("OWNER", "two"));
        let hosts = ["a.example".to_owned()];
        let paths = [(PathMatch::Prefix, "/".to_owned())];
        let mut claims = Claims::default();
        assert!(claims.conflicts(&first, &hosts, &paths).is_empty());
        let routes = claims.claim(&first, "default/first", &hosts, &paths);
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].farm, "default/first");
        let errors = claims.conflicts(&second, &hosts, &paths);
        let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "a.example/ is already published by ServerFarm default/first",
                "host a.example already has certificate cert-one from ServerFarm default/first",
            ]
        );
        let sni = claims.sni_certificates();
        assert_eq!(sni.len(), 1);
        assert_eq!(sni[0].certificate.secret, "cert-one");
    }

    #[test]
    fn precedence_compares_host_kind_then_suffix_then_prefix() {
        let key = |host: &str, path: &str| {
            route_precedence(&RouteConfig {
                host: host.into(),
                path_prefix: path.into(),
                path_match: PathMatch::Prefix,
                farm: "f".into(),
                canary: None,
            })
        };
        let of = |kind: PathMatch, path: &str| {
            route_precedence(&RouteConfig {
                host: "x.io".into(),
                path_prefix: path.into(),
                path_match: kind,
                farm: "f".into(),
                canary: None,
            })
        };
        // An exact path beats everything of its host, even a longer pattern.
        assert!(of(PathMatch::Exact, "/a") < of(PathMatch::Prefix, "/a/very/long"));
        assert!(of(PathMatch::Exact, "/a") < of(PathMatch::Regex, "/a.*/long"));
        // Prefixes and regexes take turns by length.
        assert!(of(PathMatch::Regex, "/api/.+") < of(PathMatch::Prefix, "/api"));
        assert!(of(PathMatch::Prefix, "/api/v1") < of(PathMatch::Regex, "/ap.*"));
        // An exact host beats any wildcard, even with a shorter name.
        assert!(key("x.io", "/") < key("*.very.long.example.org", "/"));
        // Between wildcards, the longer suffix is more specific.
        assert!(key("*.b.example.org", "/") < key("*.example.org", "/"));
        // For one host, the longer prefix is more specific.
        assert!(key("x.io", "/api/v1") < key("x.io", "/api"));
        assert_eq!(key("x.io", "/"), key("x.io", "/"));
    }
}

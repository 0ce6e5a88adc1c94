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

/// The farm's published path prefixes, normalized; an empty list, a bad prefix and a
/// prefix listed twice are errors.
pub(crate) fn published_paths(publish: &Publish, errs: &mut FarmErrors<'_>) -> Vec<String> {
    published(
        &publish.paths,
        "spec.publish.paths",
        "needs at least one path prefix (use / for everything)",
        normalize_path,
        errs,
    )
}

/// The normalized entries of the list at `field`, each once.
fn published(
    list: &[String],
    field: &str,
    empty: &str,
    normalize: fn(&str) -> Result<String, String>,
    errs: &mut FarmErrors<'_>,
) -> Vec<String> {
    let mut out = Vec::new();
    if list.is_empty() {
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
    /// (host, path) → farm id.
    routes: BTreeMap<(String, String), String>,
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
        paths: &[String],
    ) -> Vec<TranslateError> {
        let mut errors = Vec::new();
        for (hi, host) in hosts.iter().enumerate() {
            for path in paths {
                if let Some(owner) = self.routes.get(&(host.clone(), path.clone())) {
                    errors.push(farm_error(
                        farm,
                        format!("spec.publish.hosts[{hi}]"),
                        format!("{host}{path} is already published by ServerFarm {owner}"),
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
        paths: &[String],
    ) -> Vec<RouteConfig> {
        let mut routes = Vec::new();
        for host in hosts {
            for path in paths {
                self.routes
                    .insert((host.clone(), path.clone()), id.to_owned());
                routes.push(RouteConfig {
                    host: host.clone(),
                    path_prefix: path.clone(),
                    farm: id.to_owned(),
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

/// Sort key giving route precedence: exact hosts first, then wildcards with longer
/// suffixes, then longer path prefixes.
pub(crate) fn route_precedence(
    r: &RouteConfig,
) -> (
    bool,
    std::cmp::Reverse<usize>,
    String,
    std::cmp::Reverse<usize>,
    String,
) {
    (
        r.is_wildcard(),
        std::cmp::Reverse(r.host.len()),
        r.host.clone(),
        std::cmp::Reverse(r.path_prefix.len()),
        r.path_prefix.clone(),
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
    let taken: BTreeSet<(String, String)> = config
        .routes
        .iter()
        .map(|r| (r.host.clone(), r.path_prefix.clone()))
        .collect();
    let routes: Vec<RouteConfig> = previous
        .routes
        .iter()
        .filter(|r| r.farm == id && !taken.contains(&(r.host.clone(), r.path_prefix.clone())))
        .cloned()
        .collect();
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
        assert_eq!(paths, ["/api", "/"]);
        assert_eq!(
            fields(&errs.errors),
            ["spec.publish.hosts[1]", "spec.publish.hosts[2]"]
        );
        assert_eq!(errs.errors[0].message, "shop.example.com is listed twice");
    }

    #[test]
    fn an_empty_path_list_is_an_error() {
        let f = farm(
            "a",
            "publish:\n  hosts: [a.example]\n  paths: []\nservers: []\n",
        );
        let mut errs = FarmErrors::new(&f);
        assert!(published_paths(&f.spec.publish, &mut errs).is_empty());
        assert_eq!(errs.errors.len(), 1);
        assert_eq!(errs.errors[0].field, "spec.publish.paths");
    }

    #[test]
    fn a_claimed_route_or_certificate_is_refused_to_later_farms() {
        let tls =
            "publish:\n  hosts: [a.example]\n  tls:\n    secretName: cert-OWNER\nservers: []\n";
        let first = farm("first", &tls.replace("OWNER", "one"));
        let second = farm("second", &tls.replace("OWNER", "two"));
        let hosts = ["a.example".to_owned()];
        let paths = ["/".to_owned()];
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
                farm: "f".into(),
            })
        };
        // An exact host beats any wildcard, even with a shorter name.
        assert!(key("x.io", "/") < key("*.very.long.example.org", "/"));
        // Between wildcards, the longer suffix is more specific.
        assert!(key("*.b.example.org", "/") < key("*.example.org", "/"));
        // For one host, the longer prefix is more specific.
        assert!(key("x.io", "/api/v1") < key("x.io", "/api"));
        assert_eq!(key("x.io", "/"), key("x.io", "/"));
    }
}

//! The pure translation: one GatewayArray, its ServerFarms and what their names resolve
//! to, into a [`DataplaneConfig`].
//!
//! Validation here mirrors the CEL rules in the CRD schema (so a resource that reached
//! the API server some other way, or a manifest in local mode, gets the same verdict) and
//! adds the checks CEL cannot make: conflicts between farms, addresses that must parse,
//! references between fields. One bad farm never blocks the others: it is reported with
//! the field path and left out.
//!
//! Each concern has its own module, with functions a translation of another resource
//! (an Ingress) can reuse: `names` (object and host names, path prefixes), `array`
//! (listeners, session, client limits), `routes` (published hosts and paths, conflicts
//! between farms, precedence), `servers` (members and endpoints), `tls` (upstream trust
//! and names, SNI order), `upstream` (pool limits, timeouts, retries, upgrades),
//! `affinity` (the session cookie), `verifier` (active and passive health), `filters`
//! (route features: rewrites, redirects, header changes, body limits), `canary`
//! (farms that take a share of another farm's routes) and `access` (source ranges, rate
//! limits, authentication, CORS).

mod access;
mod affinity;
mod array;
mod canary;
mod filters;
mod names;
mod routes;
mod servers;
mod tls;
mod upstream;
mod verifier;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use kube::ResourceExt;

use crate::config::*;
use crate::v1alpha1::{self, GatewayArray, ServerFarm};

pub use names::{
    farm_reference_errors, is_dns_label, is_dns_subdomain, is_namespace, is_port_name,
    normalize_host, normalize_path,
};
pub use routes::keep_last_good;

use access::access;
use affinity::affinity;
use array::{ArrayDefaults, validate_array};
use canary::add_canary;
use filters::filters;
use routes::{Claims, published_hosts, published_paths, route_precedence};
use servers::{ServerContext, servers};
use tls::upstream_tls;
use upstream::{allowed_upgrades, check_backend, upstream_config};
use verifier::{passive, verifier};

/// Default affinity cookie name.
pub const DEFAULT_COOKIE_NAME: &str = "portcullis-affinity";

/// What the names in farms resolved to, gathered by the caller (the controller from
/// EndpointSlices, local mode from DNS, tests from fixtures).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolutions {
    /// DNS name (lower case, without a final dot) → addresses. A host server whose name
    /// is absent here is passed to the dataplane as a DNS member, which resolves it
    /// itself.
    pub hosts: BTreeMap<String, Vec<IpAddr>>,
    /// Service port → its endpoints. A Service absent here has no EndpointSlices.
    pub services: BTreeMap<ServiceKey, Vec<ServiceEndpoint>>,
}

/// A Service port, as farms name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// Namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// Service port (not target port).
    pub port: u16,
}

/// One endpoint of a Service port, from an EndpointSlice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceEndpoint {
    /// Pod address and target port.
    pub address: SocketAddr,
    /// `conditions.ready`.
    pub ready: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
}

/// A problem with one field of one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TranslateError {
    /// `GatewayArray` or `ServerFarm`.
    pub kind: &'static str,
    /// Namespace of the resource.
    pub namespace: String,
    /// Name of the resource.
    pub name: String,
    /// JSON path of the field, e.g. `spec.servers[1].address`.
    pub field: String,
    /// What is wrong, for a person.
    pub message: String,
}

impl fmt::Display for TranslateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{}: {}: {}",
            self.kind, self.namespace, self.name, self.field, self.message
        )
    }
}

impl std::error::Error for TranslateError {}

/// What happened to one farm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FarmOutcome {
    /// Published.
    Accepted {
        /// References that did not resolve (a Service without endpoints yet): the farm is
        /// published, these servers contribute nothing until they resolve.
        unresolved: Vec<String>,
        /// The endpoints its servers resolved to, for status.
        endpoints: Vec<v1alpha1::EndpointStatus>,
    },
    /// Left out; the rest of the array is unaffected.
    Rejected(Vec<TranslateError>),
}

/// The result of translating an array.
#[derive(Clone, Debug, PartialEq)]
pub struct Translation {
    /// The config, with every accepted farm.
    pub config: DataplaneConfig,
    /// The outcome of every farm that names this array, by farm id.
    pub farms: BTreeMap<String, FarmOutcome>,
}

impl Translation {
    /// Every error of every rejected farm.
    pub fn errors(&self) -> impl Iterator<Item = &TranslateError> {
        self.farms.values().flat_map(|o| match o {
            FarmOutcome::Rejected(errors) => errors.as_slice(),
            FarmOutcome::Accepted { .. } => &[],
        })
    }
}

/// The id of a farm: `namespace/name`.
pub fn farm_id(farm: &ServerFarm) -> String {
    format!(
        "{}/{}",
        farm.namespace().unwrap_or_default(),
        farm.name_any()
    )
}

/// The namespace of the array `farm` names: `arrayRef.namespace`, else the farm's own.
pub fn array_namespace(farm: &ServerFarm) -> Option<String> {
    farm.spec
        .array_ref
        .namespace
        .clone()
        .or_else(|| farm.namespace())
}

/// Whether `farm` lives in another namespace than the array it names.
pub fn is_cross_namespace(farm: &ServerFarm) -> bool {
    array_namespace(farm) != farm.namespace()
}

/// Whether `farm` asks to be published by `array`.
pub fn farm_targets_array(farm: &ServerFarm, array: &GatewayArray) -> bool {
    farm.spec.array_ref.name == array.name_any() && array_namespace(farm) == array.namespace()
}

/// The Ingress that controls `farm` (it generated the farm), as `(namespace, name)`.
pub fn controlling_ingress(farm: &ServerFarm) -> Option<(String, String)> {
    farm.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| {
            o.controller == Some(true)
                && o.kind == "Ingress"
                && o.api_version == "networking.k8s.io/v1"
        })
        .map(|o| (farm.namespace().unwrap_or_default(), o.name.clone()))
}

/// The id under which Secret `name`, as `farm` names it, travels in the array's
/// Secret and in the config. Secrets are read from the farm's namespace; for a farm in
/// the array's namespace the id is the name, for one in another namespace it is
/// `<namespace>_<name>` (`_` is in neither a namespace nor a Secret name, so no two
/// Secrets share an id).
pub fn secret_id(farm: &ServerFarm, name: &str) -> String {
    if is_cross_namespace(farm) {
        format!("{}_{name}", farm.namespace().unwrap_or_default())
    } else {
        name.to_owned()
    }
}

/// Translates `array` with the farms that name it. Farms naming another array are
/// ignored. Returns the array's own errors when the array itself is invalid.
pub fn translate(
    array: &GatewayArray,
    farms: &[ServerFarm],
    resolutions: &Resolutions,
) -> Result<Translation, Vec<TranslateError>> {
    let array_defaults = validate_array(array)?;
    let ours = oldest_first(array, farms);
    let mut config = base_config(array, &array_defaults);
    let mut outcomes = BTreeMap::new();
    let mut claims = Claims::default();
    // Two farms with one id cannot both be kept (routes name farms by id), and keeping
    // either would depend on input order: refuse every copy. Only local mode can get here.
    let mut seen = BTreeMap::<String, usize>::new();
    for farm in &ours {
        *seen.entry(farm_id(farm)).or_default() += 1;
    }
    // Canaries attach to the routes their primaries claimed, so they come after every
    // primary, whatever their age.
    let (canaries, primaries): (Vec<&ServerFarm>, Vec<&ServerFarm>) =
        ours.into_iter().partition(|f| f.spec.canary.is_some());
    for farm in primaries.into_iter().chain(canaries) {
        let copies = seen[&farm_id(farm)];
        let outcome = if copies > 1 {
            FarmOutcome::Rejected(vec![farm_error(
                farm,
                "metadata.name".into(),
                format!("ServerFarm {} is defined {copies} times", farm_id(farm)),
            )])
        } else if farm.spec.canary.is_some() {
            add_canary(&mut config, farm, &array_defaults, resolutions)
        } else {
            add_farm(&mut config, &mut claims, farm, &array_defaults, resolutions)
        };
        outcomes.insert(farm_id(farm), outcome);
    }
    config.routes.sort_by_key(route_precedence);
    let sni = claims.sni_certificates();
    for l in &mut config.listeners {
        if l.protocol == ListenerProtocol::Https {
            l.sni = sni.clone();
        }
    }
    debug_assert!(
        config.check().is_ok(),
        "translation built an inconsistent config: {:?}",
        config.check()
    );
    Ok(Translation {
        config,
        farms: outcomes,
    })
}

/// The farms of `array`, older first (older farms win conflicts); ties are broken by
/// name so the result is deterministic.
fn oldest_first<'a>(array: &GatewayArray, farms: &'a [ServerFarm]) -> Vec<&'a ServerFarm> {
    let mut ours: Vec<&ServerFarm> = farms
        .iter()
        .filter(|f| farm_targets_array(f, array))
        .collect();
    ours.sort_by(|a, b| {
        seniority(a)
            .cmp(&seniority(b))
            .then_with(|| farm_id(a).cmp(&farm_id(b)))
    });
    ours
}

/// Annotation on a farm generated from an Ingress: the Ingress's creation time (RFC
/// 3339), so that between Ingresses the older one wins a conflict, as between farms,
/// whenever the farms themselves were (re)created.
pub const SOURCE_CREATED_ANNOTATION: &str = "portcullis.io/source-created";

/// When `farm` counts as created for conflicts: its Ingress's creation time for a farm
/// an Ingress controls, else its own creation time.
fn seniority(farm: &ServerFarm) -> Option<k8s_openapi::jiff::Timestamp> {
    let own = farm.metadata.creation_timestamp.as_ref().map(|t| t.0);
    if controlling_ingress(farm).is_none() {
        return own;
    }
    farm.annotations()
        .get(SOURCE_CREATED_ANNOTATION)
        .and_then(|t| t.parse().ok())
        .or(own)
}

/// The config of `array` before any farm is added: its listeners (without SNI yet)
/// and its defaults.
fn base_config(array: &GatewayArray, defaults: &ArrayDefaults) -> DataplaneConfig {
    DataplaneConfig {
        version: CONFIG_VERSION,
        array: ArrayMeta {
            namespace: array.namespace().unwrap_or_default(),
            name: array.name_any(),
        },
        listeners: array
            .spec
            .listeners
            .iter()
            .map(|l| ListenerConfig {
                name: l.name.clone(),
                port: l.port,
                protocol: l.protocol,
                default_certificate: l.tls.as_ref().map(|t| CertificateRef {
                    secret: t.secret_name.clone(),
                }),
                sni: Vec::new(),
            })
            .collect(),
        routes: Vec::new(),
        farms: BTreeMap::new(),
        endpoints: BTreeMap::new(),
        session: defaults.session.clone(),
        limits: defaults.limits.clone(),
        drain_timeout: defaults.drain_timeout,
    }
}

/// Adds `farm` to `config` unless it is invalid or asks for what an earlier farm has.
fn add_farm(
    config: &mut DataplaneConfig,
    claims: &mut Claims,
    farm: &ServerFarm,
    array: &ArrayDefaults,
    resolutions: &Resolutions,
) -> FarmOutcome {
    let built = match build_farm(farm, array, resolutions) {
        Ok(b) => b,
        Err(errors) => return FarmOutcome::Rejected(errors),
    };
    let errors = claims.conflicts(farm, &built.hosts, &built.paths);
    if !errors.is_empty() {
        return FarmOutcome::Rejected(errors);
    }
    let id = farm_id(farm);
    config
        .routes
        .extend(claims.claim(farm, &id, &built.hosts, &built.paths));
    publish(config, id, built)
}

/// Adds a farm whose routes are settled: its endpoints and the farm itself.
fn publish(config: &mut DataplaneConfig, id: String, built: BuiltFarm) -> FarmOutcome {
    for (key, ep) in built.endpoints {
        config
            .endpoints
            .entry(key)
            .and_modify(|known| known.draining &= ep.draining)
            .or_insert(ep);
    }
    config.farms.insert(id, built.farm);
    FarmOutcome::Accepted {
        unresolved: built.unresolved,
        endpoints: built.statuses,
    }
}

fn farm_error(farm: &ServerFarm, field: String, message: String) -> TranslateError {
    TranslateError {
        kind: "ServerFarm",
        namespace: farm.namespace().unwrap_or_default(),
        name: farm.name_any(),
        field,
        message,
    }
}

/// The errors of one farm, in the order its fields are checked.
#[derive(Debug)]
pub(crate) struct FarmErrors<'a> {
    pub(crate) farm: &'a ServerFarm,
    /// So far.
    pub(crate) errors: Vec<TranslateError>,
}

impl<'a> FarmErrors<'a> {
    /// No errors of `farm` yet.
    pub(crate) fn new(farm: &'a ServerFarm) -> Self {
        FarmErrors {
            farm,
            errors: Vec::new(),
        }
    }

    /// Field `field` of the farm is wrong: `message`.
    pub(crate) fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors
            .push(farm_error(self.farm, field.into(), message.into()));
    }
}

/// One valid farm, translated.
struct BuiltFarm {
    farm: FarmConfig,
    hosts: Vec<String>,
    paths: Vec<routes::RoutePath>,
    endpoints: BTreeMap<String, EndpointConfig>,
    statuses: Vec<v1alpha1::EndpointStatus>,
    unresolved: Vec<String>,
}

/// Translates one farm on its own (conflicts with other farms are checked by the
/// caller); every problem of the farm, in field order, when it is invalid.
fn build_farm(
    farm: &ServerFarm,
    array: &ArrayDefaults,
    resolutions: &Resolutions,
) -> Result<BuiltFarm, Vec<TranslateError>> {
    let spec = &farm.spec;
    let namespace = farm.namespace().unwrap_or_default();
    let mut errs = FarmErrors::new(farm);
    errs.errors.extend(farm_reference_errors(farm));
    let hosts = published_hosts(&spec.publish, &mut errs);
    let paths = published_paths(&spec.publish, &mut errs);
    check_backend(spec, &mut errs);
    let up = spec.upstream.clone().unwrap_or_default();
    let tls = upstream_tls(&up, |name| secret_id(farm, name), &mut errs);
    let upstream = upstream_config(&up, tls, &mut errs);
    let context = ServerContext {
        namespace: &namespace,
        tls: upstream.tls.as_ref(),
        backend_host: spec.backend_host.as_deref(),
        protocol: up.protocol,
        resolutions,
    };
    let servers = servers(&spec.servers, &context, &mut errs);
    let affinity = affinity(
        spec.affinity.as_ref(),
        array.session.max_session_time,
        &mut errs,
    );
    let verifier = verifier(spec, &hosts, &mut errs);
    let passive = passive(spec.connectivity_verifier.as_ref());
    let allowed_upgrades = allowed_upgrades(spec.allowed_upgrades.as_deref(), &mut errs);
    let filters = filters(spec.filters.as_ref(), array.https_redirect_port, &mut errs);
    let access = access(spec.access.as_ref(), spec.cors.as_ref(), &mut errs);
    if !errs.errors.is_empty() {
        return Err(errs.errors);
    }
    Ok(BuiltFarm {
        farm: FarmConfig {
            id: farm_id(farm),
            backend_host: spec
                .backend_host
                .as_ref()
                .map(|h| h.trim_end_matches('.').to_ascii_lowercase()),
            load_balancing: spec.load_balancing,
            hash_header: spec.hash_header.as_ref().map(|h| h.to_ascii_lowercase()),
            members: servers.members.clone(),
            upstream,
            affinity,
            verifier,
            passive,
            cookie_protection: spec.cookie_protection,
            allowed_upgrades,
            filters,
            access,
        },
        hosts,
        paths,
        statuses: servers.statuses(),
        endpoints: servers.endpoints,
        unresolved: servers.unresolved,
    })
}

#[cfg(test)]
pub(crate) mod testing {
    //! Resources for unit tests, from YAML.

    use super::TranslateError;
    use crate::v1alpha1::{GatewayArray, ServerFarm};

    /// The fields of `errors`, in order.
    pub(crate) fn fields(errors: &[TranslateError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    /// The fields and messages of `errors`, in order.
    pub(crate) fn problems(errors: &[TranslateError]) -> Vec<(&str, &str)> {
        errors
            .iter()
            .map(|e| (e.field.as_str(), e.message.as_str()))
            .collect()
    }

    fn indent(s: &str) -> String {
        s.lines().map(|l| format!("  {l}\n")).collect()
    }

    /// Array `name` in namespace `default`; `spec` is its YAML spec.
    pub(crate) fn array(name: &str, spec: &str) -> GatewayArray {
        let yaml = format!(
            "apiVersion: portcullis.io/v1alpha1\nkind: GatewayArray\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n{}",
            indent(spec)
        );
        serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
    }

    /// Farm `name` of array `edge` in namespace `default`; `spec` is YAML, which
    /// publishes `a.example` and has no servers unless it says otherwise.
    pub(crate) fn farm(name: &str, spec: &str) -> ServerFarm {
        let mut spec = spec.to_owned();
        if !spec.contains("publish:") {
            spec.insert_str(0, "publish:\n  hosts: [a.example]\n");
        }
        if !spec.contains("servers:") {
            spec.push_str("servers: []\n");
        }
        let yaml = format!(
            "apiVersion: portcullis.io/v1alpha1\nkind: ServerFarm\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  arrayRef:\n    name: edge\n{}",
            indent(&spec)
        );
        serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{array, farm, fields};
    use super::*;

    const HTTPS: &str = "listeners:\n- name: https\n  port: 8443\n  protocol: HTTPS\n  tls:\n    secretName: default-cert\n";

    fn defaults() -> ArrayDefaults {
        validate_array(&array("edge", HTTPS)).unwrap()
    }

    #[test]
    fn base_config_has_the_listeners_and_no_farm() {
        let config = base_config(&array("edge", HTTPS), &defaults());
        assert_eq!(config.array.name, "edge");
        assert_eq!(config.listeners.len(), 1);
        let l = &config.listeners[0];
        assert_eq!((l.name.as_str(), l.port), ("https", 8443));
        assert_eq!(
            l.default_certificate.as_ref().map(|c| c.secret.as_str()),
            Some("default-cert")
        );
        assert!(config.farms.is_empty() && config.routes.is_empty());
    }

    #[test]
    fn older_farms_come_first_then_by_name() {
        let created = |name: &str, at: &str| {
            let mut f = farm(name, "");
            f.metadata.creation_timestamp = Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at.parse().unwrap()),
            );
            f
        };
        let young = created("a", "2026-01-02T00:00:00Z");
        let old = created("z", "2026-01-01T00:00:00Z");
        let mut other = farm("b", "");
        other.spec.array_ref.name = "other".into();
        let farms = [young, other, old];
        let order: Vec<String> = oldest_first(&array("edge", HTTPS), &farms)
            .into_iter()
            .map(farm_id)
            .collect();
        assert_eq!(order, ["default/z", "default/a"]);
    }

    #[test]
    fn a_farm_an_ingress_controls_is_as_old_as_its_ingress() {
        let generated = |name: &str, farm_at: &str, ingress_at: &str, by_ingress: bool| {
            let mut f = farm(name, "servers:\n- address: 10.0.0.1\n  port: 80\n");
            f.metadata.creation_timestamp = Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(farm_at.parse().unwrap()),
            );
            f.metadata.annotations = Some(BTreeMap::from([(
                SOURCE_CREATED_ANNOTATION.to_owned(),
                ingress_at.to_owned(),
            )]));
            if by_ingress {
                f.metadata.owner_references = Some(vec![
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                        api_version: "networking.k8s.io/v1".into(),
                        kind: "Ingress".into(),
                        name: name.into(),
                        uid: format!("uid-{name}"),
                        controller: Some(true),
                        block_owner_deletion: None,
                    },
                ]);
            }
            f
        };
        // Farm `b` was (re)created last, but its Ingress is the oldest: it wins.
        let a = generated("a", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", true);
        let b = generated("b", "2026-03-01T00:00:00Z", "2025-12-01T00:00:00Z", true);
        // A hand-written farm cannot backdate itself with the annotation.
        let c = generated("c", "2026-02-01T00:00:00Z", "2020-01-01T00:00:00Z", false);
        let farms = [a, b, c];
        let order: Vec<String> = oldest_first(&array("edge", HTTPS), &farms)
            .into_iter()
            .map(farm_id)
            .collect();
        assert_eq!(order, ["default/b", "default/a", "default/c"]);
        let t = translate(&array("edge", HTTPS), &farms, &Resolutions::default()).unwrap();
        assert!(
            matches!(t.farms["default/b"], FarmOutcome::Accepted { .. }),
            "{:?}",
            t.farms["default/b"]
        );
        let FarmOutcome::Rejected(errors) = &t.farms["default/a"] else {
            panic!("{:?}", t.farms["default/a"]);
        };
        assert!(
            errors[0]
                .message
                .contains("already published by ServerFarm default/b"),
            "{errors:?}"
        );
    }

    #[test]
    fn build_farm_reports_every_concern_in_field_order() {
        let f = farm(
            "a",
            "publish:\n  hosts: []\nbackendHost: '*.x.example'\nservers:\n- address: 10.0.0.1\n  port: 80\nupstream:\n  retries:\n    attempts: 9\naffinity:\n  mode: Cookie\n  maxSessionTime: 0s\nallowedUpgrades: [h2c]\n",
        );
        let errors = build_farm(&f, &defaults(), &Resolutions::default())
            .err()
            .unwrap();
        assert_eq!(
            fields(&errors),
            [
                "spec.publish.hosts",
                "spec.backendHost",
                "spec.upstream.retries.attempts",
                "spec.affinity",
                "spec.allowedUpgrades[0]",
            ]
        );
    }

    #[test]
    fn build_farm_translates_a_valid_farm() {
        let f = farm(
            "a",
            "publish:\n  hosts: [Shop.Example]\n  paths: [/, /api/]\nbackendHost: Internal.Example.\nservers:\n- address: 10.0.0.1\n  port: 80\n",
        );
        let built = build_farm(&f, &defaults(), &Resolutions::default())
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(built.hosts, ["shop.example"]);
        let paths: Vec<&str> = built.paths.iter().map(|p| p.1.as_str()).collect();
        assert_eq!(paths, ["/", "/api"]);
        assert_eq!(built.farm.id, "default/a");
        assert_eq!(built.farm.backend_host.as_deref(), Some("internal.example"));
        assert_eq!(built.farm.allowed_upgrades, ["websocket"]);
        assert_eq!(built.endpoints.len(), 1);
        assert_eq!(built.statuses.len(), 1);
    }

    #[test]
    fn add_farm_refuses_what_an_earlier_farm_has() {
        let defaults = defaults();
        let mut config = base_config(&array("edge", HTTPS), &defaults);
        let mut claims = Claims::default();
        let spec = "servers:\n- address: 10.0.0.1\n  port: 80\n";
        let first = add_farm(
            &mut config,
            &mut claims,
            &farm("first", spec),
            &defaults,
            &Resolutions::default(),
        );
        assert!(matches!(first, FarmOutcome::Accepted { .. }), "{first:?}");
        let second = add_farm(
            &mut config,
            &mut claims,
            &farm("second", spec),
            &defaults,
            &Resolutions::default(),
        );
        let FarmOutcome::Rejected(errors) = second else {
            panic!("{second:?}");
        };
        assert_eq!(
            errors[0].message,
            "a.example/ is already published by ServerFarm default/first"
        );
        assert_eq!(config.farms.len(), 1);
        assert_eq!(config.routes.len(), 1);
        assert_eq!(config.endpoints.len(), 1);
    }
}

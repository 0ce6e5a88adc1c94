//! The pure translation: one GatewayArray, its ServerFarms and what their names resolve
//! to, into a [`DataplaneConfig`].
//!
//! Validation here mirrors the CEL rules in the CRD schema (so a resource that reached
//! the API server some other way, or a manifest in local mode, gets the same verdict) and
//! adds the checks CEL cannot make: conflicts between farms, addresses that must parse,
//! references between fields. One bad farm never blocks the others: it is reported with
//! the field path and left out.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use kube::ResourceExt;

use crate::Duration;
use crate::config::*;
use crate::v1alpha1::{self, GatewayArray, ServerFarm};

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

/// Whether `farm` asks to be published by `array`.
pub fn farm_targets_array(farm: &ServerFarm, array: &GatewayArray) -> bool {
    farm.spec.array_ref.name == array.name_any() && farm.namespace() == array.namespace()
}

/// Translates `array` with the farms that name it. Farms naming another array are
/// ignored. Returns the array's own errors when the array itself is invalid.
pub fn translate(
    array: &GatewayArray,
    farms: &[ServerFarm],
    resolutions: &Resolutions,
) -> Result<Translation, Vec<TranslateError>> {
    let array_defaults = validate_array(array)?;
    let mut ours: Vec<&ServerFarm> = farms
        .iter()
        .filter(|f| farm_targets_array(f, array))
        .collect();
    // Older farms win conflicts; ties are broken by name so the result is deterministic.
    ours.sort_by(|a, b| {
        let ta = a.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let tb = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
        ta.cmp(&tb).then_with(|| farm_id(a).cmp(&farm_id(b)))
    });

    let mut config = DataplaneConfig {
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
        session: array_defaults.session.clone(),
        limits: array_defaults.limits.clone(),
        drain_timeout: array_defaults.drain_timeout,
    };

    let mut outcomes = BTreeMap::new();
    // (host, path) → farm id that owns it; host → certificate secret.
    let mut claimed: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut sni: BTreeMap<String, (String, String)> = BTreeMap::new();

    // Two farms with one id cannot both be kept (routes name farms by id), and keeping
    // either would depend on input order: refuse every copy. Only local mode can get here.
    let mut seen = BTreeMap::<String, usize>::new();
    for farm in &ours {
        *seen.entry(farm_id(farm)).or_default() += 1;
    }
    for farm in ours {
        let id = farm_id(farm);
        if seen[&id] > 1 {
            outcomes.insert(
                id.clone(),
                FarmOutcome::Rejected(vec![farm_error(
                    farm,
                    "metadata.name".into(),
                    format!("ServerFarm {id} is defined {} times", seen[&id]),
                )]),
            );
            continue;
        }
        let built = match build_farm(farm, &array_defaults, resolutions) {
            Ok(b) => b,
            Err(errors) => {
                outcomes.insert(id, FarmOutcome::Rejected(errors));
                continue;
            }
        };
        let mut errors = Vec::new();
        for (hi, host) in built.hosts.iter().enumerate() {
            for path in &built.paths {
                if let Some(owner) = claimed.get(&(host.clone(), path.clone())) {
                    errors.push(farm_error(
                        farm,
                        format!("spec.publish.hosts[{hi}]"),
                        format!("{host}{path} is already published by ServerFarm {owner}"),
                    ));
                }
            }
            if let (Some(tls), Some((secret, owner))) = (&farm.spec.publish.tls, sni.get(host))
                && &tls.secret_name != secret
            {
                errors.push(farm_error(
                    farm,
                    "spec.publish.tls.secretName".into(),
                    format!("host {host} already has certificate {secret} from ServerFarm {owner}"),
                ));
            }
        }
        if !errors.is_empty() {
            outcomes.insert(id, FarmOutcome::Rejected(errors));
            continue;
        }
        for host in &built.hosts {
            for path in &built.paths {
                claimed.insert((host.clone(), path.clone()), id.clone());
                config.routes.push(RouteConfig {
                    host: host.clone(),
                    path_prefix: path.clone(),
                    farm: id.clone(),
                });
            }
            if let Some(tls) = &farm.spec.publish.tls {
                sni.entry(host.clone())
                    .or_insert_with(|| (tls.secret_name.clone(), id.clone()));
            }
        }
        for (key, ep) in built.endpoints {
            config
                .endpoints
                .entry(key)
                .and_modify(|known| known.draining &= ep.draining)
                .or_insert(ep);
        }
        outcomes.insert(
            id.clone(),
            FarmOutcome::Accepted {
                unresolved: built.unresolved,
                endpoints: built.statuses,
            },
        );
        config.farms.insert(id, built.farm);
    }

    config.routes.sort_by_key(route_precedence);
    let mut sni: Vec<SniCertificate> = sni
        .into_iter()
        .map(|(host, (secret, _))| SniCertificate {
            host,
            certificate: CertificateRef { secret },
        })
        .collect();
    sni.sort_by(|a, b| {
        (a.host.starts_with("*."), &a.host).cmp(&(b.host.starts_with("*."), &b.host))
    });
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
        l.sni.sort_by(|a, b| {
            (a.host.starts_with("*."), &a.host).cmp(&(b.host.starts_with("*."), &b.host))
        });
    }
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

/// Sort key giving route precedence: exact hosts first, then wildcards with longer
/// suffixes, then longer path prefixes.
fn route_precedence(
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

struct ArrayDefaults {
    session: SessionConfig,
    limits: LimitsConfig,
    drain_timeout: Duration,
}

fn array_error(
    array: &GatewayArray,
    field: impl Into<String>,
    message: impl Into<String>,
) -> TranslateError {
    TranslateError {
        kind: "GatewayArray",
        namespace: array.namespace().unwrap_or_default(),
        name: array.name_any(),
        field: field.into(),
        message: message.into(),
    }
}

/// The farm's `allowedUpgrades`, lower case (WebSocket when unset); `h2c` and anything
/// that is not an `Upgrade` token are errors.
fn allowed_upgrades(farm: &ServerFarm, errors: &mut Vec<TranslateError>) -> Vec<String> {
    let allowed: Vec<String> = match &farm.spec.allowed_upgrades {
        None => vec!["websocket".to_owned()],
        Some(list) => list.iter().map(|u| u.trim().to_ascii_lowercase()).collect(),
    };
    for (i, u) in allowed.iter().enumerate() {
        if u == "h2c" {
            errors.push(farm_error(
                farm,
                format!("spec.allowedUpgrades[{i}]"),
                "h2c is never tunnelled: the client would speak HTTP/2 past the proxy's checks"
                    .into(),
            ));
        } else if u.is_empty() || !u.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
            errors.push(farm_error(
                farm,
                format!("spec.allowedUpgrades[{i}]"),
                format!("{u:?} is not an Upgrade token"),
            ));
        }
    }
    allowed
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

/// A Kubernetes object name (a Secret, a ConfigMap): a DNS-1123 subdomain, at most 253
/// characters.
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A Service name: a DNS-1035 label (at most 63 lower-case letters, digits and '-',
/// starting with a letter, not ending with '-'). The array's name is one too, since it
/// names the array's Service.
pub fn is_dns_label(name: &str) -> bool {
    name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A container port name (an IANA service name): 1-15 lower-case letters, digits and
/// '-', at least one letter, no leading, trailing or double '-'.
pub fn is_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

const SECRET_NAME_RULE: &str =
    "is not a Secret name (a DNS subdomain: lower-case letters, digits, '-' and '.', at most 253)";
const SERVICE_NAME_RULE: &str = "is not a Service name (a DNS-1035 label: at most 63 lower-case letters, digits and '-', starting with a letter)";

/// The names a farm gives other objects (its array, Services, Secrets) that cannot be
/// object names. The controller checks these before it reads anything by those names, so
/// such a farm is refused on its own instead of failing its whole array's reconcile.
pub fn farm_reference_errors(farm: &ServerFarm) -> Vec<TranslateError> {
    let spec = &farm.spec;
    let mut errors = Vec::new();
    if !is_dns_label(&spec.array_ref.name) {
        errors.push(farm_error(
            farm,
            "spec.arrayRef.name".into(),
            format!(
                "{:?} is not a GatewayArray name (a DNS-1035 label: at most 63 lower-case letters, digits and '-', starting with a letter)",
                spec.array_ref.name
            ),
        ));
    }
    let secrets = [
        (
            "spec.publish.tls.secretName",
            spec.publish.tls.as_ref().map(|t| &t.secret_name),
        ),
        (
            "spec.upstream.tls.caSecretName",
            spec.upstream
                .as_ref()
                .and_then(|u| u.tls.as_ref())
                .and_then(|t| t.ca_secret_name.as_ref()),
        ),
    ];
    for (field, name) in secrets {
        if let Some(name) = name.filter(|n| !is_dns_subdomain(n)) {
            errors.push(farm_error(
                farm,
                field.into(),
                format!("{name:?} {SECRET_NAME_RULE}"),
            ));
        }
    }
    for (i, server) in spec.servers.iter().enumerate() {
        if let Some(svc) = server.service.as_ref().filter(|s| !is_dns_label(&s.name)) {
            errors.push(farm_error(
                farm,
                format!("spec.servers[{i}].service.name"),
                format!("{:?} {SERVICE_NAME_RULE}", svc.name),
            ));
        }
    }
    errors
}

fn validate_array(array: &GatewayArray) -> Result<ArrayDefaults, Vec<TranslateError>> {
    let spec = &array.spec;
    let mut errors = Vec::new();
    if spec.listeners.is_empty() {
        errors.push(array_error(
            array,
            "spec.listeners",
            "an array needs at least one listener",
        ));
    }
    if let Some(name) = spec
        .session_keys
        .as_ref()
        .and_then(|k| k.secret_name.as_deref())
        .filter(|n| !is_dns_subdomain(n))
    {
        errors.push(array_error(
            array,
            "spec.sessionKeys.secretName",
            format!("{name:?} {SECRET_NAME_RULE}"),
        ));
    }
    let name = array.name_any();
    if !is_dns_label(&name) {
        errors.push(array_error(
            array,
            "metadata.name",
            format!("{name:?} {SERVICE_NAME_RULE}; the array's Service takes its name"),
        ));
    }
    let mut names = BTreeSet::new();
    let mut ports = BTreeSet::new();
    for (i, l) in spec.listeners.iter().enumerate() {
        if !is_port_name(&l.name) {
            errors.push(array_error(
                array,
                format!("spec.listeners[{i}].name"),
                format!(
                    "{:?} is not a port name (1-15 lower-case letters, digits and '-', with at least one letter and no '--')",
                    l.name
                ),
            ));
        } else if l.name == v1alpha1::MEMBER_ADMIN_PORT_NAME {
            errors.push(array_error(
                array,
                format!("spec.listeners[{i}].name"),
                format!(
                    "{:?} names the members' admin port; choose another listener name",
                    l.name
                ),
            ));
        }
        if l.port == v1alpha1::MEMBER_ADMIN_PORT {
            errors.push(array_error(
                array,
                format!("spec.listeners[{i}].port"),
                format!(
                    "port {} is the members' admin port; choose another listener port",
                    l.port
                ),
            ));
        }
        if let Some(tls) = l.tls.as_ref().filter(|t| !is_dns_subdomain(&t.secret_name)) {
            errors.push(array_error(
                array,
                format!("spec.listeners[{i}].tls.secretName"),
                format!("{:?} {SECRET_NAME_RULE}", tls.secret_name),
            ));
        }
        if !names.insert(&l.name) {
            errors.push(array_error(
                array,
                format!("spec.listeners[{i}].name"),
                format!("listener name {:?} is used twice", l.name),
            ));
        }
        if !ports.insert(l.port) {
            errors.push(array_error(
                array,
                format!("spec.listeners[{i}].port"),
                format!("port {} is used by two listeners", l.port),
            ));
        }
        if l.port == 0 {
            errors.push(array_error(
                array,
                format!("spec.listeners[{i}].port"),
                "port must be 1-65535",
            ));
        }
        match (l.protocol, &l.tls) {
            (v1alpha1::ListenerProtocol::Https, None) => errors.push(array_error(
                array,
                format!("spec.listeners[{i}].tls"),
                "an HTTPS listener needs tls.secretName (the default certificate)",
            )),
            (v1alpha1::ListenerProtocol::Http, Some(_)) => errors.push(array_error(
                array,
                format!("spec.listeners[{i}].tls"),
                "an HTTP listener takes no tls",
            )),
            _ => {}
        }
    }
    if spec.replicas < 0 {
        errors.push(array_error(
            array,
            "spec.replicas",
            "replicas must not be negative",
        ));
    }
    let max_session_time = spec
        .max_session_time
        .unwrap_or(Duration::from_secs(24 * 3600));
    if max_session_time.is_zero() {
        errors.push(array_error(
            array,
            "spec.maxSessionTime",
            "must be longer than 0s",
        ));
    }
    let keys = spec.session_keys.clone().unwrap_or_default();
    let accept_retired_for = keys.accept_retired_for.unwrap_or(max_session_time);
    if accept_retired_for < max_session_time {
        errors.push(array_error(
            array,
            "spec.sessionKeys.acceptRetiredFor",
            format!(
                "{accept_retired_for} is shorter than maxSessionTime {max_session_time}: sessions would outlive their key"
            ),
        ));
    }
    let rotation_interval = keys
        .rotation_interval
        .unwrap_or(Duration::from_secs(7 * 24 * 3600));
    if rotation_interval < Duration::from_secs(60) {
        errors.push(array_error(
            array,
            "spec.sessionKeys.rotationInterval",
            "must be at least 1m",
        ));
    }
    let limits = spec.limits.clone().unwrap_or_default();
    let limits = LimitsConfig {
        max_connections: limits.max_connections.unwrap_or(20_000),
        max_header_bytes: limits.max_header_bytes.unwrap_or(32 * 1024),
        max_headers: limits.max_headers.unwrap_or(100),
        header_read_timeout: limits
            .header_read_timeout
            .unwrap_or(Duration::from_secs(10)),
        client_idle_timeout: limits
            .client_idle_timeout
            .unwrap_or(Duration::from_secs(60)),
        max_connections_per_client: limits
            .max_connections_per_client
            .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_CLIENT),
        trusted_proxies: Vec::new(),
    };
    let mut limits = limits;
    for (i, range) in spec.trusted_proxies.iter().enumerate() {
        match range.parse::<IpRange>() {
            Ok(r) => limits.trusted_proxies.push(r),
            Err(m) => errors.push(array_error(array, format!("spec.trustedProxies[{i}]"), m)),
        }
    }
    if limits.header_read_timeout.is_zero() {
        errors.push(array_error(
            array,
            "spec.limits.headerReadTimeout",
            "must be longer than 0s",
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ArrayDefaults {
        session: SessionConfig {
            keyring_secret: keys
                .secret_name
                .unwrap_or_else(|| format!("{}-keys", array.name_any())),
            max_session_time,
            accept_retired_for,
            rotation_interval,
        },
        limits,
        drain_timeout: spec.drain_timeout.unwrap_or(Duration::from_secs(30)),
    })
}

struct BuiltFarm {
    farm: FarmConfig,
    hosts: Vec<String>,
    paths: Vec<String>,
    endpoints: BTreeMap<String, EndpointConfig>,
    statuses: Vec<v1alpha1::EndpointStatus>,
    unresolved: Vec<String>,
}

/// Checks a published host name and returns it normalized (lower case, no final dot).
pub fn normalize_host(host: &str) -> Result<String, String> {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    let (wild, rest) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, h.as_str()),
    };
    if rest.is_empty() || rest.len() > 253 {
        return Err(format!("{host:?} is not a host name"));
    }
    for label in rest.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{host:?} is not a host name (labels of letters, digits and '-', or a leading '*.' wildcard)"
            ));
        }
    }
    if wild && !rest.contains('.') {
        return Err(format!(
            "{host:?}: a wildcard must cover a domain with at least two labels"
        ));
    }
    Ok(h)
}

/// Checks a published path prefix and returns it normalized (no trailing `/` but on the
/// root). Prefixes that two parsers could read differently are refused.
pub fn normalize_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with /"));
    }
    if path.bytes().any(|b| {
        b.is_ascii_control() || b == b' ' || b == b'%' || b == b'?' || b == b'#' || b == b'\\'
    }) {
        return Err(format!(
            "{path:?} may not contain spaces, control characters, %, ?, # or \\"
        ));
    }
    if path.contains("//") || path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!("{path:?} may not contain empty, . or .. segments"));
    }
    let trimmed = path.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    })
}

fn build_farm(
    farm: &ServerFarm,
    array: &ArrayDefaults,
    resolutions: &Resolutions,
) -> Result<BuiltFarm, Vec<TranslateError>> {
    let spec = &farm.spec;
    let namespace = farm.namespace().unwrap_or_default();
    let mut errors = farm_reference_errors(farm);
    let mut err = |field: String, message: String| errors.push(farm_error(farm, field, message));

    let mut hosts = Vec::new();
    if spec.publish.hosts.is_empty() {
        err(
            "spec.publish.hosts".into(),
            "needs at least one host name".into(),
        );
    }
    for (i, h) in spec.publish.hosts.iter().enumerate() {
        match normalize_host(h) {
            Ok(h) if hosts.contains(&h) => err(
                format!("spec.publish.hosts[{i}]"),
                format!("{h} is listed twice"),
            ),
            Ok(h) => hosts.push(h),
            Err(m) => err(format!("spec.publish.hosts[{i}]"), m),
        }
    }
    let mut paths = Vec::new();
    if spec.publish.paths.is_empty() {
        err(
            "spec.publish.paths".into(),
            "needs at least one path prefix (use / for everything)".into(),
        );
    }
    for (i, p) in spec.publish.paths.iter().enumerate() {
        match normalize_path(p) {
            Ok(p) if paths.contains(&p) => err(
                format!("spec.publish.paths[{i}]"),
                format!("{p} is listed twice"),
            ),
            Ok(p) => paths.push(p),
            Err(m) => err(format!("spec.publish.paths[{i}]"), m),
        }
    }
    if let Some(bh) = &spec.backend_host
        && let Err(m) = normalize_host(bh).and_then(|h| {
            if h.starts_with("*.") {
                Err(format!("{bh:?} is a wildcard"))
            } else {
                Ok(h)
            }
        })
    {
        err("spec.backendHost".into(), m);
    }
    if spec.hash_header.is_some() && spec.load_balancing != v1alpha1::LoadBalancing::ConsistentHash
    {
        err(
            "spec.hashHeader".into(),
            "is only used with loadBalancing: ConsistentHash".into(),
        );
    }
    if let Some(h) = &spec.hash_header
        && http_token(h).is_err()
    {
        err(
            "spec.hashHeader".into(),
            format!("{h:?} is not a header name"),
        );
    }

    // Upstream policy.
    let up = spec.upstream.clone().unwrap_or_default();
    let keep_alive = up.keep_alive.clone();
    let tls = up.tls.as_ref().map(|t| UpstreamTlsConfig {
        sni: t.sni.clone(),
        trust: if t.insecure_skip_verify {
            UpstreamTrust::Insecure
        } else if let Some(secret) = &t.ca_secret_name {
            UpstreamTrust::Ca {
                secret: secret.clone(),
            }
        } else {
            UpstreamTrust::System
        },
    });
    if let Some(t) = &up.tls {
        if t.insecure_skip_verify && t.ca_secret_name.is_some() {
            err(
                "spec.upstream.tls".into(),
                "caSecretName and insecureSkipVerify exclude each other".into(),
            );
        }
        if let Some(sni) = &t.sni
            && let Err(m) = normalize_host(sni)
        {
            err("spec.upstream.tls.sni".into(), m);
        }
    }
    let upstream = UpstreamConfig {
        tls: tls.clone(),
        protocol: up.protocol,
        max_idle_per_endpoint: keep_alive.as_ref().and_then(|k| k.max_idle).unwrap_or(32),
        max_connections_per_endpoint: keep_alive.as_ref().and_then(|k| k.max_connections),
        pool_idle_timeout: keep_alive
            .as_ref()
            .and_then(|k| k.idle_timeout)
            .unwrap_or(Duration::from_secs(60)),
        connect_timeout: up.connect_timeout.unwrap_or(Duration::from_secs(3)),
        first_byte_timeout: up.first_byte_timeout.unwrap_or(Duration::from_secs(60)),
        idle_timeout: up.idle_timeout.unwrap_or(Duration::from_secs(60)),
        retries: up.retries.as_ref().map_or(1, |r| r.attempts),
    };
    if upstream.retries > 3 {
        err("spec.upstream.retries.attempts".into(), "at most 3".into());
    }
    if upstream.max_connections_per_endpoint == Some(0) {
        err(
            "spec.upstream.keepAlive.maxConnections".into(),
            "must be at least 1 (leave unset for no limit)".into(),
        );
    }
    for (field, d) in [
        ("connectTimeout", upstream.connect_timeout),
        ("firstByteTimeout", upstream.first_byte_timeout),
        ("idleTimeout", upstream.idle_timeout),
    ] {
        if d.is_zero() {
            err(
                format!("spec.upstream.{field}"),
                "must be longer than 0s".into(),
            );
        }
    }

    // Servers → members and endpoints.
    let mut members = Vec::new();
    let mut endpoints: BTreeMap<String, EndpointConfig> = BTreeMap::new();
    let mut names_by_identity: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut unresolved = Vec::new();
    if spec.servers.is_empty() {
        err(
            "spec.servers".into(),
            "a farm needs at least one server".into(),
        );
    }
    if !spec.servers.is_empty() && spec.servers.iter().all(|s| s.weight == 0) {
        err(
            "spec.servers".into(),
            "every server has weight 0, so the farm could serve nothing".into(),
        );
    }
    let identity_tls = |sni_fallback: Option<&str>| -> Result<Option<UpstreamTlsIdentity>, String> {
        let Some(t) = &tls else { return Ok(None) };
        let sni = t
            .sni
            .clone()
            .or_else(|| sni_fallback.map(str::to_owned))
            .or_else(|| spec.backend_host.clone())
            .ok_or_else(|| {
                "upstream TLS needs upstream.tls.sni (or backendHost) to verify an address server"
                    .to_owned()
            })?;
        Ok(Some(UpstreamTlsIdentity {
            sni: sni.to_ascii_lowercase(),
            trust: t.trust.clone(),
        }))
    };
    for (i, s) in spec.servers.iter().enumerate() {
        let field = format!("spec.servers[{i}]");
        let set = [s.host.is_some(), s.address.is_some(), s.service.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if set != 1 {
            err(
                field,
                "a server sets exactly one of host, address or service".into(),
            );
            continue;
        }
        if s.weight > 1000 {
            err(format!("{field}.weight"), "must be 0 to 1000".into());
        }
        let mut add = |label: &str,
                       addr: SocketAddr,
                       draining: bool,
                       tls_id: Option<UpstreamTlsIdentity>,
                       keys: &mut Vec<String>| {
            let identity = EndpointIdentity::new(addr, tls_id, up.protocol);
            let key = identity.key();
            endpoints
                .entry(key.clone())
                .and_modify(|e| e.draining &= draining)
                .or_insert(EndpointConfig { identity, draining });
            let names = names_by_identity.entry(key.clone()).or_default();
            if !names.iter().any(|n| n == label) {
                names.push(label.to_owned());
            }
            if !keys.contains(&key) {
                keys.push(key);
            }
        };
        if let Some(address) = &s.address {
            let Some(port) = s.port.filter(|p| *p != 0) else {
                err(
                    format!("{field}.port"),
                    "port is required for host and address servers".into(),
                );
                continue;
            };
            let ip: IpAddr = match address.parse() {
                Ok(ip) => ip,
                Err(_) => {
                    err(
                        format!("{field}.address"),
                        format!("{address:?} is not an IP address"),
                    );
                    continue;
                }
            };
            let tls_id = match identity_tls(None) {
                Ok(t) => t,
                Err(m) => {
                    err(format!("{field}.address"), m);
                    continue;
                }
            };
            let label = format!("address {}", SocketAddr::new(ip, port));
            let mut keys = Vec::new();
            add(&label, SocketAddr::new(ip, port), false, tls_id, &mut keys);
            members.push(MemberConfig {
                server: label,
                weight: s.weight,
                target: MemberTarget::Endpoints { identities: keys },
            });
        } else if let Some(host) = &s.host {
            let Some(port) = s.port.filter(|p| *p != 0) else {
                err(
                    format!("{field}.port"),
                    "port is required for host and address servers".into(),
                );
                continue;
            };
            let host = match normalize_host(host) {
                Ok(h) if !h.starts_with("*.") => h,
                Ok(_) => {
                    err(
                        format!("{field}.host"),
                        format!("{host:?} is a wildcard, not a server name"),
                    );
                    continue;
                }
                Err(m) => {
                    err(format!("{field}.host"), m);
                    continue;
                }
            };
            let label = format!("host {host}:{port}");
            match resolutions.hosts.get(&host) {
                Some(addrs) => {
                    let tls_id = match identity_tls(Some(&host)) {
                        Ok(t) => t,
                        Err(m) => {
                            err(format!("{field}.host"), m);
                            continue;
                        }
                    };
                    let mut keys = Vec::new();
                    for ip in addrs {
                        add(
                            &label,
                            SocketAddr::new(*ip, port),
                            false,
                            tls_id.clone(),
                            &mut keys,
                        );
                    }
                    if keys.is_empty() {
                        unresolved.push(format!("{label} resolved to no address"));
                    }
                    members.push(MemberConfig {
                        server: label,
                        weight: s.weight,
                        target: MemberTarget::Endpoints { identities: keys },
                    });
                }
                None => members.push(MemberConfig {
                    server: label,
                    weight: s.weight,
                    target: MemberTarget::Dns { host, port },
                }),
            }
        } else if let Some(svc) = &s.service {
            if s.port.is_some() {
                err(
                    format!("{field}.port"),
                    "a service server takes its port from service.port; remove port".into(),
                );
                continue;
            }
            if svc.port == 0 {
                err(
                    format!("{field}.service.port"),
                    "port must be 1-65535".into(),
                );
                continue;
            }
            let label = format!("service {}:{}", svc.name, svc.port);
            let fallback_sni = format!("{}.{namespace}.svc", svc.name);
            let tls_id = match identity_tls(Some(&fallback_sni)) {
                Ok(t) => t,
                Err(m) => {
                    err(format!("{field}.service"), m);
                    continue;
                }
            };
            let key = ServiceKey {
                namespace: namespace.clone(),
                name: svc.name.clone(),
                port: svc.port,
            };
            let mut keys = Vec::new();
            match resolutions.services.get(&key) {
                Some(eps) => {
                    for ep in eps {
                        // Not ready and not terminating: starting up, not yet a target.
                        if ep.ready || ep.terminating {
                            add(&label, ep.address, !ep.ready, tls_id.clone(), &mut keys);
                        }
                    }
                    if keys.is_empty() {
                        unresolved.push(format!("{label} has no ready endpoints"));
                    }
                }
                None => unresolved.push(format!(
                    "Service {} port {} has no EndpointSlices",
                    svc.name, svc.port
                )),
            }
            members.push(MemberConfig {
                server: label,
                weight: s.weight,
                target: MemberTarget::Endpoints { identities: keys },
            });
        }
    }

    // Affinity.
    let aff = spec.affinity.clone();
    let affinity = AffinityConfig {
        mode: aff.as_ref().map_or(AffinityMode::None, |a| a.mode),
        cookie_name: aff
            .as_ref()
            .and_then(|a| a.cookie_name.clone())
            .unwrap_or_else(|| DEFAULT_COOKIE_NAME.to_owned()),
        max_session_time: aff
            .as_ref()
            .and_then(|a| a.max_session_time)
            .unwrap_or(array.session.max_session_time),
        idle_timeout: aff
            .as_ref()
            .and_then(|a| a.idle_timeout)
            .unwrap_or(Duration::from_secs(30 * 60)),
        same_site: aff.as_ref().map_or(SameSite::Lax, |a| a.same_site),
    };
    if http_token(&affinity.cookie_name).is_err() {
        err(
            "spec.affinity.cookieName".into(),
            format!("{:?} is not a valid cookie name", affinity.cookie_name),
        );
    }
    if affinity.max_session_time > array.session.max_session_time {
        err(
            "spec.affinity.maxSessionTime".into(),
            format!(
                "{} exceeds the array's maxSessionTime {}",
                affinity.max_session_time, array.session.max_session_time
            ),
        );
    }
    if affinity.max_session_time.is_zero() || affinity.idle_timeout.is_zero() {
        err(
            "spec.affinity".into(),
            "maxSessionTime and idleTimeout must be longer than 0s".into(),
        );
    }

    // Verifier.
    let verifier = match &spec.connectivity_verifier {
        None => None,
        Some(v) => {
            let host = v
                .host
                .as_ref()
                .or(spec.backend_host.as_ref())
                .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
                .or_else(|| hosts.iter().find(|h| !h.starts_with("*.")).cloned());
            let mut statuses = Vec::new();
            for (i, s) in v.expected_statuses.iter().enumerate() {
                match s.parse::<StatusRange>() {
                    Ok(r) => statuses.push(r),
                    Err(m) => err(
                        format!("spec.connectivityVerifier.expectedStatuses[{i}]"),
                        m,
                    ),
                }
            }
            if v.expected_statuses.is_empty() {
                err(
                    "spec.connectivityVerifier.expectedStatuses".into(),
                    "needs at least one status or range".into(),
                );
            }
            // A probe may carry a query (`/health?deep=1`); its path obeys the route rules.
            let probe_path = v.path.split_once('?').map_or(v.path.as_str(), |(p, _)| p);
            if let Err(m) = normalize_path(probe_path) {
                err("spec.connectivityVerifier.path".into(), m);
            }
            if let Some(h) = &v.host {
                match normalize_host(h) {
                    Ok(n) if n.starts_with("*.") => err(
                        "spec.connectivityVerifier.host".into(),
                        format!("{h:?} is a wildcard, not a Host header"),
                    ),
                    Ok(_) => {}
                    Err(m) => err("spec.connectivityVerifier.host".into(), m),
                }
            }
            let interval = v.interval.unwrap_or(Duration::from_secs(10));
            let timeout = v.timeout.unwrap_or(Duration::from_secs(2));
            if timeout > interval {
                err(
                    "spec.connectivityVerifier.timeout".into(),
                    format!("{timeout} exceeds interval {interval}"),
                );
            }
            if interval < Duration::from_millis(100) || timeout.is_zero() {
                err(
                    "spec.connectivityVerifier.interval".into(),
                    "interval must be at least 100ms and timeout longer than 0s".into(),
                );
            }
            for (field, n) in [
                ("healthyThreshold", v.healthy_threshold),
                ("unhealthyThreshold", v.unhealthy_threshold),
            ] {
                if n == 0 {
                    err(
                        format!("spec.connectivityVerifier.{field}"),
                        "must be at least 1".into(),
                    );
                }
            }
            match host {
                None => {
                    err("spec.connectivityVerifier.host".into(), "is required when every published host is a wildcard and backendHost is unset".into());
                    None
                }
                Some(host) => Some(VerifierConfig {
                    path: v.path.clone(),
                    host,
                    expected_statuses: statuses,
                    interval,
                    timeout,
                    healthy_threshold: v.healthy_threshold,
                    unhealthy_threshold: v.unhealthy_threshold,
                }),
            }
        }
    };
    let passive_spec = spec
        .connectivity_verifier
        .as_ref()
        .and_then(|v| v.passive.clone());
    let passive = PassiveConfig {
        consecutive_failures: passive_spec.as_ref().map_or(5, |p| p.consecutive_failures),
        count_5xx: passive_spec.as_ref().is_none_or(|p| p.count_5xx),
        base_ejection_time: Duration::from_secs(30),
        max_ejected_percent: passive_spec
            .as_ref()
            .map_or(DEFAULT_MAX_EJECTED_PERCENT, |p| p.max_ejected_percent),
    };

    let allowed_upgrades = allowed_upgrades(farm, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    let statuses = names_by_identity
        .into_iter()
        .map(|(identity, servers)| v1alpha1::EndpointStatus {
            health: endpoints
                .get(&identity)
                .filter(|e| e.draining)
                .map(|_| "Draining".to_owned()),
            identity,
            servers,
        })
        .collect();
    Ok(BuiltFarm {
        farm: FarmConfig {
            id: farm_id(farm),
            backend_host: spec
                .backend_host
                .as_ref()
                .map(|h| h.trim_end_matches('.').to_ascii_lowercase()),
            load_balancing: spec.load_balancing,
            hash_header: spec.hash_header.as_ref().map(|h| h.to_ascii_lowercase()),
            members,
            upstream,
            affinity,
            verifier,
            passive,
            cookie_protection: spec.cookie_protection,
            allowed_upgrades,
        },
        hosts,
        paths,
        endpoints,
        statuses,
        unresolved,
    })
}

/// Checks an RFC 9110 token (header names, cookie names).
fn http_token(s: &str) -> Result<(), ()> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok { Ok(()) } else { Err(()) }
}

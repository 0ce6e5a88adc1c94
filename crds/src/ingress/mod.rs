//! Standard `networking.k8s.io/v1` Ingress, translated (pure) into ServerFarms.
//!
//! An Ingress becomes one generated ServerFarm per (rule host, backend Service port):
//! the farm lives in the Ingress's namespace, is controlled by the Ingress (so it is
//! garbage-collected with it and `kubectl get serverfarms` shows what each Ingress
//! became), names the array of the Ingress's class through `arrayRef.namespace`, and is
//! then published by exactly the same code path as a farm written by hand. Its
//! ingress-nginx annotations become fields of those farms (see [`annotations`]);
//! annotations that carry raw nginx configuration are never executed, and every
//! annotation that is not served is reported as a [`Finding`].

pub mod annotations;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::networking::v1::{
    Ingress, IngressBackend, IngressClass, IngressServiceBackend, IngressSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::ResourceExt;
use serde_json::{Value, json};
use sha2::Digest;

use crate::translate::SOURCE_CREATED_ANNOTATION;
use crate::v1alpha1::{ServerFarm, ServerFarmSpec};

/// `spec.controller` of an IngressClass whose Ingresses Portcullis serves.
pub const CONTROLLER_NAME: &str = "portcullis.io/ingress-controller";
/// Marks the IngressClass used by Ingresses that name none.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The class annotation that came before `spec.ingressClassName`; still honoured.
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// Label on every generated farm: the name of its Ingress.
pub const INGRESS_LABEL: &str = "portcullis.io/ingress";
/// The field manager of generated farms.
pub const FIELD_MANAGER: &str = "portcullis-ingress";

/// The GatewayArray that publishes a class's Ingresses.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArrayTarget {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// Which classes Portcullis serves besides its own IngressClasses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Migration {
    /// While moving off ingress-nginx: Ingresses of these classes (by
    /// `ingressClassName` or the legacy annotation, typically `nginx`) are served too,
    /// by `array`.
    pub classes: Vec<String>,
    /// The array that publishes them.
    pub array: Option<ArrayTarget>,
}

/// The array an IngressClass names, when it is Portcullis's: `spec.parameters` of kind
/// `GatewayArray` in group `portcullis.io`, with a namespace.
pub fn class_array(class: &IngressClass) -> Option<(String, String)> {
    let spec = class.spec.as_ref()?;
    if spec.controller.as_deref() != Some(CONTROLLER_NAME) {
        return None;
    }
    let p = spec.parameters.as_ref()?;
    if p.api_group.as_deref() != Some("portcullis.io") || p.kind != "GatewayArray" {
        return None;
    }
    Some((p.namespace.clone()?, p.name.clone()))
}

/// Why an IngressClass of Portcullis's cannot be used, for its users to see.
pub fn class_problem(class: &IngressClass) -> Option<String> {
    let spec = class.spec.as_ref()?;
    if spec.controller.as_deref() != Some(CONTROLLER_NAME) || class_array(class).is_some() {
        return None;
    }
    Some(format!(
        "IngressClass {} has controller {CONTROLLER_NAME} but its spec.parameters do not name a GatewayArray (apiGroup portcullis.io, kind GatewayArray, scope Namespace, namespace and name)",
        class.name_any()
    ))
}

/// The class an Ingress asks for: `spec.ingressClassName`, else the legacy annotation.
pub fn requested_class(ing: &Ingress) -> Option<String> {
    ing.spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.clone())
        .or_else(|| ing.annotations().get(LEGACY_CLASS_ANNOTATION).cloned())
}

/// The array that publishes `ing`, with the class that decided it, or `None` when the
/// Ingress is not Portcullis's. An Ingress without a class goes to the default class
/// (`ingressclass.kubernetes.io/is-default-class: "true"`), when one of Portcullis's
/// classes is the default (the oldest such class when several claim it, as the API
/// server's admission picks the newest only for new Ingresses).
pub fn target(
    ing: &Ingress,
    classes: &[IngressClass],
    migration: &Migration,
) -> Option<(String, ArrayTarget)> {
    let ours = |c: &IngressClass| {
        class_array(c).map(|(namespace, name)| (c.name_any(), ArrayTarget { namespace, name }))
    };
    match requested_class(ing) {
        Some(name) => {
            if let Some(t) = classes.iter().find(|c| c.name_any() == name).and_then(ours) {
                return Some(t);
            }
            if migration.classes.contains(&name) {
                return migration.array.clone().map(|a| (name, a));
            }
            None
        }
        None => {
            let mut defaults: Vec<&IngressClass> = classes
                .iter()
                .filter(|c| {
                    c.annotations()
                        .get(DEFAULT_CLASS_ANNOTATION)
                        .map(String::as_str)
                        == Some("true")
                })
                .collect();
            defaults.sort_by_key(|c| {
                (
                    c.metadata.creation_timestamp.clone().map(|t| t.0),
                    c.name_any(),
                )
            });
            defaults.first().and_then(|c| ours(c))
        }
    }
}

/// Something an operator should know about a translation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Finding {
    /// What it is about: an annotation name, or a field path of the Ingress.
    pub subject: String,
    /// Whether it changes what is served.
    pub severity: Severity,
    /// What happens, and why.
    pub message: String,
}

/// How much a [`Finding`] matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Part of the Ingress is not served (an ignored annotation, a broken path): a
    /// Warning event.
    Ignored,
    /// Served, with a difference worth knowing.
    Note,
}

/// The Service ports of the Ingress's namespace, by (Service, port name), for backends
/// that name their port. Services absent here are not resolved.
pub type ServicePorts = BTreeMap<(String, String), u16>;

/// What one Ingress becomes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Translated {
    /// The farms to create or update, in name order.
    pub farms: Vec<ServerFarm>,
    /// What is not served, or served differently.
    pub findings: Vec<Finding>,
}

/// One backend a farm forwards to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Backend {
    service: String,
    port: u16,
}

/// Prefix paths of one farm being built.
#[derive(Default)]
struct FarmPaths {
    prefix: BTreeSet<String>,
    exact: BTreeSet<String>,
    regex: BTreeSet<String>,
}

/// Farms being built: (host, backend) → paths; host `*` for rules without one.
type Groups = BTreeMap<(String, Backend), FarmPaths>;
/// Which field first routed each (host, path kind, path).
type Claimed = BTreeMap<(String, String, String), String>;

/// Translates `ing` for `target`. Pure: `services` resolves named ports.
pub fn translate(ing: &Ingress, target: &ArrayTarget, services: &ServicePorts) -> Translated {
    let mut findings = Vec::new();
    let features = annotations::read(
        ing.annotations(),
        &ing.namespace().unwrap_or_default(),
        &mut findings,
    );
    let Some(spec) = ing.spec.as_ref() else {
        return Translated {
            farms: Vec::new(),
            findings,
        };
    };
    let (mut groups, claimed) = rule_groups(spec, &features, services, &mut findings);
    default_backend(spec, &claimed, services, &mut groups, &mut findings);
    let tls = tls_by_host(ing);
    let mut unserved = BTreeSet::new();
    let mut farms: Vec<ServerFarm> = groups
        .into_iter()
        .map(|((host, backend), paths)| {
            let secret = tls_secret(&tls, &host);
            let out = Built {
                host: &host,
                backend: &backend,
                paths: &paths,
                secret: secret.as_deref(),
            };
            build_farm(ing, target, &features, &out, &mut unserved)
        })
        .collect();
    farms.sort_by_key(ResourceExt::name_any);
    // Protection this build cannot give (a field it lacks) fails closed too.
    let unprotected = unserved.iter().any(|m| m.starts_with("spec.access"));
    if !features.deny.is_empty() || unprotected {
        farms.clear();
    }
    findings.extend(unserved.into_iter().map(|m| Finding {
        subject: "metadata.annotations".into(),
        severity: Severity::Ignored,
        message: m,
    }));
    findings.sort();
    Translated { farms, findings }
}

/// The rules' paths grouped by (host, backend). A (host, path kind, path) routed twice
/// is served by the first and reported for the others.
fn rule_groups(
    spec: &IngressSpec,
    features: &annotations::Features,
    services: &ServicePorts,
    findings: &mut Vec<Finding>,
) -> (Groups, Claimed) {
    let mut groups = Groups::new();
    let mut claimed = Claimed::new();
    for (ri, rule) in spec.rules.iter().flatten().enumerate() {
        let host = rule.host.clone().unwrap_or_else(|| "*".to_owned());
        let Some(http) = &rule.http else { continue };
        for (pi, p) in http.paths.iter().enumerate() {
            let field = format!("spec.rules[{ri}].http.paths[{pi}]");
            let Some(backend) = backend(&p.backend, services, &field, findings) else {
                continue;
            };
            let path = p.path.clone().unwrap_or_else(|| "/".to_owned());
            let kind = features.path_kind(&p.path_type);
            let key = (host.clone(), kind.to_owned(), path.clone());
            if let Some(first) = claimed.get(&key) {
                findings.push(Finding {
                    subject: field,
                    severity: Severity::Ignored,
                    message: format!(
                        "host {host} path {path} ({kind}) is already routed by {first}; this path is not served"
                    ),
                });
                continue;
            }
            claimed.insert(key, field);
            let paths = groups.entry((host.clone(), backend)).or_default();
            match kind {
                "Exact" => paths.exact.insert(path),
                "Regex" => paths.regex.insert(path),
                _ => paths.prefix.insert(path),
            };
        }
    }
    (groups, claimed)
}

/// The default backend answers what the Ingress's rules leave: `/` on each of its
/// hosts that does not route `/` itself (as ingress-nginx does), and every host only
/// for an Ingress without rules.
fn default_backend(
    spec: &IngressSpec,
    claimed: &Claimed,
    services: &ServicePorts,
    groups: &mut Groups,
    findings: &mut Vec<Finding>,
) {
    let Some(default) = &spec.default_backend else {
        return;
    };
    let Some(b) = backend(default, services, "spec.defaultBackend", findings) else {
        return;
    };
    let mut hosts: BTreeSet<String> = spec
        .rules
        .iter()
        .flatten()
        .map(|r| r.host.clone().unwrap_or_else(|| "*".to_owned()))
        .collect();
    if hosts.is_empty() {
        hosts.insert("*".to_owned());
    }
    for host in hosts {
        let root = (host.clone(), "Prefix".to_owned(), "/".to_owned());
        if claimed.contains_key(&root) {
            continue;
        }
        groups
            .entry((host, b.clone()))
            .or_default()
            .prefix
            .insert("/".to_owned());
    }
}

/// One farm to build: its host, backend, paths and TLS Secret.
struct Built<'a> {
    host: &'a str,
    backend: &'a Backend,
    paths: &'a FarmPaths,
    secret: Option<&'a str>,
}

/// The farm for one (host, backend). Annotation fields this build's ServerFarm lacks
/// are left out and reported in `unserved`.
fn build_farm(
    ing: &Ingress,
    target: &ArrayTarget,
    features: &annotations::Features,
    out: &Built<'_>,
    unserved: &mut BTreeSet<String>,
) -> ServerFarm {
    let Built {
        host,
        backend,
        paths,
        secret,
    } = *out;
    let mut spec = json!({
        "arrayRef": {"name": target.name, "namespace": target.namespace},
        "publish": {"hosts": [host]},
        "servers": [{"service": {"name": backend.service, "port": backend.port}}],
    });
    set_paths(&mut spec["publish"], paths);
    if let Some(secret) = secret {
        spec["publish"]["tls"] = json!({"secretName": secret});
    }
    features.apply(&mut spec, has_tls(ing, host) || secret.is_some());
    let typed: ServerFarmSpec = match serde_json::from_value(spec.clone()) {
        Ok(t) => t,
        Err(e) => {
            unserved.insert(format!("annotations: {e}"));
            serde_json::from_value(strip_features(spec.clone()))
                .expect("a farm spec without annotation fields always deserializes")
        }
    };
    let back = serde_json::to_value(&typed).unwrap_or_default();
    dropped_keys(&spec, &back, "spec", unserved);
    ServerFarm {
        metadata: farm_meta(ing, &farm_name(ing, host, backend)),
        spec: typed,
        status: None,
    }
}

/// Fields of `want` (what the annotations asked for) that did not survive a round
/// trip through the typed spec: features this build does not have. Reported, so an
/// annotation is never dropped silently.
fn dropped_keys(want: &Value, got: &Value, at: &str, out: &mut BTreeSet<String>) {
    let Some(w) = want.as_object() else { return };
    for (k, v) in w {
        let path = format!("{at}.{k}");
        match got.get(k) {
            None => {
                out.insert(format!(
                    "{path} is not a field of this version's ServerFarm; the annotations that set it are ignored"
                ));
            }
            Some(g) => dropped_keys(v, g, &path, out),
        }
    }
}

/// The spec without the fields annotations add, for when they do not deserialize.
fn strip_features(mut spec: Value) -> Value {
    if let Some(o) = spec.as_object_mut() {
        o.retain(|k, _| matches!(k.as_str(), "arrayRef" | "publish" | "servers"));
    }
    spec
}

fn set_paths(publish: &mut Value, paths: &FarmPaths) {
    let list = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>();
    if !paths.prefix.is_empty() {
        publish["paths"] = json!(list(&paths.prefix));
    }
    if !paths.exact.is_empty() {
        publish["exactPaths"] = json!(list(&paths.exact));
    }
    if !paths.regex.is_empty() {
        publish["regexPaths"] = json!(list(&paths.regex));
    }
}

/// The Service port a backend names, or a finding saying why it cannot be served.
fn backend(
    b: &IngressBackend,
    services: &ServicePorts,
    field: &str,
    findings: &mut Vec<Finding>,
) -> Option<Backend> {
    let mut ignored = |message: String| {
        findings.push(Finding {
            subject: field.to_owned(),
            severity: Severity::Ignored,
            message,
        });
        None
    };
    let Some(IngressServiceBackend { name, port }) = &b.service else {
        return ignored(
            "a resource backend is not supported (only Service backends); this path is not served"
                .into(),
        );
    };
    let port = port.as_ref();
    match (
        port.and_then(|p| p.number),
        port.and_then(|p| p.name.clone()),
    ) {
        (Some(n), _) if (1..=65535).contains(&n) => Some(Backend {
            service: name.clone(),
            port: n as u16,
        }),
        (_, Some(port_name)) => match services.get(&(name.clone(), port_name.clone())) {
            Some(n) => Some(Backend {
                service: name.clone(),
                port: *n,
            }),
            None => ignored(format!(
                "Service {name} has no port named {port_name:?} (or does not exist yet); this path is served once it does"
            )),
        },
        _ => ignored(format!("backend Service {name} names no valid port")),
    }
}

/// `spec.tls` as host pattern → Secret, first entry first.
fn tls_by_host(ing: &Ingress) -> Vec<(String, Option<String>)> {
    ing.spec
        .as_ref()
        .and_then(|s| s.tls.as_ref())
        .into_iter()
        .flatten()
        .flat_map(|t| {
            t.hosts
                .iter()
                .flatten()
                .map(move |h| (h.to_ascii_lowercase(), t.secret_name.clone()))
        })
        .collect()
}

/// The Secret of the `spec.tls` entry covering `host` (an entry for `*.example.com`
/// covers `a.example.com`). An entry without `secretName` means the array's default
/// certificate.
fn tls_secret(tls: &[(String, Option<String>)], host: &str) -> Option<String> {
    let host = host.to_ascii_lowercase();
    tls.iter()
        .find(|(h, _)| *h == host)
        .or_else(|| {
            tls.iter().find(|(h, _)| {
                h.strip_prefix('*').is_some_and(|suffix| {
                    suffix.starts_with('.') && host.len() > suffix.len() && host.ends_with(suffix)
                })
            })
        })
        .and_then(|(_, s)| s.clone())
}

/// Whether `spec.tls` lists `host` (with or without a Secret of its own).
pub fn has_tls(ing: &Ingress, host: &str) -> bool {
    let tls = tls_by_host(ing);
    tls.iter().any(|(h, _)| *h == host.to_ascii_lowercase())
}

/// `<ingress>-<hash of host and backend>`: stable across reconciles, unique per
/// (host, backend), at most 63 characters.
fn farm_name(ing: &Ingress, host: &str, backend: &Backend) -> String {
    let mut h = sha2::Sha256::new();
    h.update(ing.name_any().as_bytes());
    h.update([0]);
    h.update(host.as_bytes());
    h.update([0]);
    h.update(backend.service.as_bytes());
    h.update(backend.port.to_be_bytes());
    let digest = hex::encode(&h.finalize()[..5]);
    let base: String = ing.name_any().chars().take(52).collect();
    format!("{}-{digest}", base.trim_end_matches(['-', '.']))
}

/// The [`INGRESS_LABEL`] value for Ingress `name`: the name itself, or, for a name
/// longer than a label value may be (63), its first 52 characters and a hash.
pub fn label_value(name: &str) -> String {
    if name.len() <= 63 {
        return name.to_owned();
    }
    let digest = hex::encode(&sha2::Sha256::digest(name.as_bytes())[..5]);
    let base: String = name.chars().take(52).collect();
    format!("{}-{digest}", base.trim_end_matches(['-', '.']))
}

fn farm_meta(ing: &Ingress, name: &str) -> ObjectMeta {
    let mut annotations = BTreeMap::new();
    if let Some(t) = &ing.metadata.creation_timestamp {
        annotations.insert(SOURCE_CREATED_ANNOTATION.to_owned(), t.0.to_string());
    }
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: ing.namespace(),
        labels: Some(BTreeMap::from([(
            INGRESS_LABEL.to_owned(),
            label_value(&ing.name_any()),
        )])),
        annotations: Some(annotations),
        owner_references: Some(vec![OwnerReference {
            api_version: "networking.k8s.io/v1".into(),
            kind: "Ingress".into(),
            name: ing.name_any(),
            uid: ing.uid().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]),
        ..ObjectMeta::default()
    }
}

#[cfg(test)]
mod tests;

//! `portcullis-controller ingress-audit`: what Portcullis will serve for each Ingress,
//! and every annotation it will not, with the reason. Pure: the caller reads the
//! Ingresses, IngressClasses and Services (from YAML files or from the cluster).

use std::fmt::Write as _;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::ResourceExt;
use portcullis_crds::ingress::{self, ArrayTarget, Migration, ServicePorts, Severity};
use portcullis_crds::v1alpha1::ServerFarm;

/// What the audit reads.
#[derive(Clone, Debug, Default)]
pub struct AuditInput {
    /// The Ingresses to audit.
    pub ingresses: Vec<Ingress>,
    /// The cluster's IngressClasses (Portcullis's decide which array publishes what).
    pub classes: Vec<IngressClass>,
    /// Services, to resolve backends that name their port.
    pub services: Vec<Service>,
    /// Classes taken over from ingress-nginx, and the array that publishes them.
    pub migration: Migration,
}

/// What the audit found, in numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuditSummary {
    /// Ingresses Portcullis would serve.
    pub served: usize,
    /// Ingresses of other controllers' classes.
    pub skipped: usize,
    /// Annotations or paths not served, over all served Ingresses.
    pub not_served: usize,
}

/// The report, one block per Ingress, in namespace/name order.
pub fn audit(input: &AuditInput) -> (String, AuditSummary) {
    let mut out = String::new();
    let mut summary = AuditSummary::default();
    let mut ingresses: Vec<&Ingress> = input.ingresses.iter().collect();
    ingresses.sort_by_key(|i| (i.namespace().unwrap_or_default(), i.name_any()));
    for ing in ingresses {
        let id = format!("{}/{}", ing.namespace().unwrap_or_default(), ing.name_any());
        let Some((class, target)) = ingress::target(ing, &input.classes, &input.migration) else {
            let class = ingress::requested_class(ing).unwrap_or_else(|| "<none>".into());
            let _ = writeln!(
                out,
                "Ingress {id}: class {class} is not Portcullis's; not served\n"
            );
            summary.skipped += 1;
            continue;
        };
        summary.served += 1;
        let ports = service_ports(&input.services, &ing.namespace().unwrap_or_default());
        let t = ingress::translate(ing, &target, &ports);
        let _ = writeln!(
            out,
            "Ingress {id}: class {class}, published by GatewayArray {}/{}",
            target.namespace, target.name
        );
        if t.farms.is_empty() {
            let _ = writeln!(out, "  serves nothing");
        }
        for farm in &t.farms {
            let _ = writeln!(out, "  serves {}", describe(farm));
        }
        for f in &t.findings {
            let label = match f.severity {
                Severity::Ignored => {
                    summary.not_served += 1;
                    "not served"
                }
                Severity::Note => "note",
            };
            let _ = writeln!(out, "  {label}: {}: {}", f.subject, f.message);
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "{} Ingress(es) served, {} left to other controllers, {} annotation(s) or path(s) not served",
        summary.served, summary.skipped, summary.not_served
    );
    (out, summary)
}

/// The named ports of the Services in `ns`.
fn service_ports(services: &[Service], ns: &str) -> ServicePorts {
    services
        .iter()
        .filter(|s| s.namespace().as_deref().unwrap_or(ns) == ns)
        .flat_map(|s| {
            let name = s.name_any();
            s.spec
                .iter()
                .flat_map(|spec| spec.ports.iter().flatten())
                .filter_map(move |p| {
                    Some(((name.clone(), p.name.clone()?), u16::try_from(p.port).ok()?))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// One line for a generated farm: hosts, paths by kind, backend, certificate, features.
fn describe(farm: &ServerFarm) -> String {
    let spec = serde_json::to_value(&farm.spec).unwrap_or_default();
    let p = &spec["publish"];
    let list = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect()
    };
    let mut paths = Vec::new();
    for (key, kind) in [
        ("paths", "prefix"),
        ("exactPaths", "exact"),
        ("regexPaths", "regex"),
    ] {
        paths.extend(list(&p[key]).into_iter().map(|x| format!("{x} ({kind})")));
    }
    let backend = farm
        .spec
        .servers
        .iter()
        .filter_map(|s| s.service.as_ref())
        .map(|s| format!("Service {}:{}", s.name, s.port))
        .collect::<Vec<_>>()
        .join(", ");
    let mut line = format!(
        "ServerFarm {}: host {} paths {} -> {backend}",
        farm.name_any(),
        list(&p["hosts"]).join(","),
        paths.join(", ")
    );
    if let Some(tls) = &farm.spec.publish.tls {
        let _ = write!(line, "; TLS from Secret {}", tls.secret_name);
    }
    let features: Vec<String> = spec
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !matches!(k.as_str(), "arrayRef" | "publish" | "servers"))
        .filter(|(_, v)| !is_default(v))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !features.is_empty() {
        let _ = write!(line, "; {}", features.join(" "));
    }
    line
}

/// Fields a farm spec always carries that say nothing about the Ingress.
fn is_default(v: &serde_json::Value) -> bool {
    v.is_null()
        || v.as_str()
            .is_some_and(|s| matches!(s, "RoundRobin" | "Off"))
}

/// Reads Ingresses, IngressClasses and Services from multi-document YAML (also `List`
/// documents, as `kubectl get -o yaml` writes); other kinds are skipped.
pub fn read_yaml(text: &str, into: &mut AuditInput) -> Result<(), serde_yaml::Error> {
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        add_object(value, into);
    }
    Ok(())
}

fn add_object(value: serde_json::Value, into: &mut AuditInput) {
    match value["kind"].as_str() {
        Some("List") => {
            for item in value["items"].as_array().into_iter().flatten() {
                add_object(item.clone(), into);
            }
        }
        Some("Ingress") => into.ingresses.extend(serde_json::from_value(value).ok()),
        Some("IngressClass") => into.classes.extend(serde_json::from_value(value).ok()),
        Some("Service") => into.services.extend(serde_json::from_value(value).ok()),
        _ => {}
    }
}

/// For audits of Ingresses whose class no Portcullis IngressClass names yet: treat
/// `classes` (and Ingresses without a class) as published by `array`.
pub fn assume_array(input: &mut AuditInput, array: ArrayTarget) {
    input.migration.array = Some(array);
}

#[cfg(test)]
mod tests {
    use super::*;

    const INPUT: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: networking.k8s.io/v1
  kind: Ingress
  metadata:
    name: shop
    namespace: web
    annotations:
      kubernetes.io/ingress.class: nginx
      nginx.ingress.kubernetes.io/affinity: cookie
      nginx.ingress.kubernetes.io/server-snippet: "return 418;"
      nginx.ingress.kubernetes.io/enable-opentracing: "true"
  spec:
    rules:
    - host: shop.example.com
      http:
        paths:
        - {path: /, pathType: Prefix, backend: {service: {name: web, port: {name: http}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: other, namespace: web}
spec:
  ingressClassName: traefik
  defaultBackend: {service: {name: web, port: {number: 80}}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: web}
spec:
  ports: [{name: http, port: 8080}]
"#;

    #[test]
    fn the_audit_says_what_is_served_and_what_is_not() {
        let mut input = AuditInput::default();
        read_yaml(INPUT, &mut input).unwrap();
        input.migration.classes = vec!["nginx".into()];
        assume_array(
            &mut input,
            ArrayTarget {
                namespace: "edge".into(),
                name: "public".into(),
            },
        );
        let (report, summary) = audit(&input);
        assert_eq!(
            summary,
            AuditSummary {
                served: 1,
                skipped: 1,
                not_served: 2
            },
            "{report}"
        );
        assert!(
            report.contains("Ingress web/other: class traefik is not Portcullis's"),
            "{report}"
        );
        assert!(
            report.contains("Ingress web/shop: class nginx, published by GatewayArray edge/public")
        );
        assert!(
            report.contains("host shop.example.com paths / (prefix) -> Service web:8080"),
            "{report}"
        );
        assert!(report.contains("affinity="), "{report}");
        assert!(report.contains(
            "not served: nginx.ingress.kubernetes.io/server-snippet: carries raw nginx configuration"
        ));
        assert!(
            report.contains(
                "not served: nginx.ingress.kubernetes.io/enable-opentracing: not supported"
            )
        );
    }
}

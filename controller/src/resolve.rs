//! Endpoint resolution: Services and EndpointSlices into [`Resolutions`], and the refusal
//! of private targets (loopback, link-local, the cloud metadata address) unless allowed.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use portcullis_crds::translate::{ServiceEndpoint, TranslateError};
use portcullis_crds::v1alpha1::ServerFarm;

/// The label EndpointSlices carry naming their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The cloud metadata address.
pub const METADATA_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// The endpoints of port `port` (the Service port, not the target port) of `service`,
/// from its EndpointSlices. `None` when the Service has no such port.
///
/// Ready endpoints serve; terminating ones are kept (marked) so members finish in-flight
/// work on them without sending new requests; endpoints neither ready nor terminating
/// are starting up and are left to the translation to skip.
pub fn service_endpoints(
    service: &Service,
    port: u16,
    slices: &[EndpointSlice],
    allow_private: bool,
) -> Option<Vec<ServiceEndpoint>> {
    let service_port = service
        .spec
        .as_ref()?
        .ports
        .as_ref()?
        .iter()
        .find(|p| p.port == i32::from(port))?;
    let port_name = service_port.name.clone().unwrap_or_default();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut ordered: Vec<&EndpointSlice> = slices
        .iter()
        .filter(|s| s.labels().get(SERVICE_NAME_LABEL) == Some(&service.name_any()))
        .filter(|s| s.address_type == "IPv4" || s.address_type == "IPv6")
        .collect();
    ordered.sort_by_key(|s| s.name_any());
    for slice in ordered {
        let Some(target) = slice.ports.iter().flatten().find(|p| {
            p.name.clone().unwrap_or_default() == port_name
                && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
        }) else {
            continue;
        };
        let Some(target_port) = target.port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            let conditions = ep.conditions.clone().unwrap_or_default();
            // Kubernetes: a nil `ready` is to be read as ready.
            let ready = conditions.ready.unwrap_or(true);
            let terminating = conditions.terminating.unwrap_or(false);
            for addr in &ep.addresses {
                let Ok(ip) = addr.parse::<IpAddr>() else {
                    continue;
                };
                if !allow_private && is_private_target(ip) {
                    continue;
                }
                let address = SocketAddr::new(ip, target_port);
                if seen.insert(address) {
                    out.push(ServiceEndpoint {
                        address,
                        ready,
                        terminating,
                    });
                }
            }
        }
    }
    Some(out)
}

/// Loopback, link-local (which includes the metadata address), unspecified.
pub fn is_private_target(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || v4 == METADATA_ADDRESS
        }
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Host names that always lead to a private target.
fn is_private_host(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost"
        || h.ends_with(".localhost")
        || h == "metadata.google.internal"
        || h == "metadata"
        || h.parse::<IpAddr>().is_ok_and(is_private_target)
}

/// The servers of `farm` that are private targets, as farm errors (field and message).
pub fn private_target_errors(farm: &ServerFarm) -> Vec<TranslateError> {
    let mut errors = Vec::new();
    for (i, s) in farm.spec.servers.iter().enumerate() {
        let (field, bad) = if let Some(a) = &s.address {
            (
                "address",
                a.parse::<IpAddr>()
                    .is_ok_and(is_private_target)
                    .then(|| a.clone()),
            )
        } else if let Some(h) = &s.host {
            ("host", is_private_host(h).then(|| h.clone()))
        } else {
            continue;
        };
        if let Some(bad) = bad {
            errors.push(TranslateError {
                kind: "ServerFarm",
                namespace: farm.namespace().unwrap_or_default(),
                name: farm.name_any(),
                field: format!("spec.servers[{i}].{field}"),
                message: format!(
                    "{bad} is a loopback, link-local or cloud metadata target, refused in-cluster (the chart's allowPrivateTargets permits it)"
                ),
            });
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }))
        .unwrap()
    }

    fn slice(name: &str, eps: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "shop",
                         "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": eps
        }))
        .unwrap()
    }

    #[test]
    fn ready_and_terminating_endpoints_with_target_port() {
        let slices = [
            slice(
                "web-b",
                serde_json::json!([
                    {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "terminating": true}},
                    {"addresses": ["127.0.0.1"], "conditions": {"ready": true}}
                ]),
            ),
            slice(
                "web-a",
                serde_json::json!([{"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                                   {"addresses": ["10.0.0.1"]}]),
            ),
        ];
        let eps = service_endpoints(&service(), 80, &slices, false).unwrap();
        assert_eq!(
            eps,
            vec![
                ServiceEndpoint {
                    address: "10.0.0.1:8080".parse().unwrap(),
                    ready: true,
                    terminating: false
                },
                ServiceEndpoint {
                    address: "10.0.0.2:8080".parse().unwrap(),
                    ready: false,
                    terminating: true
                },
            ]
        );
        assert_eq!(
            service_endpoints(&service(), 80, &slices, true)
                .unwrap()
                .len(),
            3
        );
        assert_eq!(service_endpoints(&service(), 81, &slices, false), None);
    }

    #[test]
    fn private_targets() {
        for bad in [
            "127.0.0.1",
            "169.254.169.254",
            "169.254.1.1",
            "::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
        ] {
            assert!(is_private_target(bad.parse().unwrap()), "{bad}");
        }
        for ok in ["10.0.0.1", "172.16.0.1", "2001:db8::1", "8.8.8.8"] {
            assert!(!is_private_target(ok.parse().unwrap()), "{ok}");
        }
        assert!(is_private_host("LOCALHOST."));
        assert!(is_private_host("metadata.google.internal"));
        assert!(!is_private_host("prod.admin.web1"));
    }
}

//! Which arrays a changed object affects. Pure functions over the object and the known
//! farms and arrays, used as `Controller::watches` mappers.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use portcullis_crds::v1alpha1::{GatewayArray, ServerFarm};

use crate::builders::names;
use crate::resolve::SERVICE_NAME_LABEL;

fn array_ref(namespace: &str, name: &str) -> ObjectRef<GatewayArray> {
    ObjectRef::new(name).within(namespace)
}

fn dedup(refs: impl IntoIterator<Item = (String, String)>) -> Vec<ObjectRef<GatewayArray>> {
    refs.into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|(ns, name)| array_ref(&ns, &name))
        .collect()
}

/// The array a farm names.
pub fn arrays_for_farm(farm: &ServerFarm) -> Vec<ObjectRef<GatewayArray>> {
    match farm.namespace() {
        Some(ns) => vec![array_ref(&ns, &farm.spec.array_ref.name)],
        None => Vec::new(),
    }
}

/// The arrays of farms (in `namespace`) with a server naming Service `service`.
pub fn arrays_for_service_name(
    namespace: &str,
    service: &str,
    farms: &[Arc<ServerFarm>],
) -> Vec<ObjectRef<GatewayArray>> {
    dedup(
        farms
            .iter()
            .filter(|f| f.namespace().as_deref() == Some(namespace))
            .filter(|f| {
                f.spec
                    .servers
                    .iter()
                    .any(|s| s.service.as_ref().is_some_and(|r| r.name == service))
            })
            .map(|f| (namespace.to_owned(), f.spec.array_ref.name.clone())),
    )
}

/// The arrays an EndpointSlice change affects (through its Service).
pub fn arrays_for_endpoint_slice(
    slice: &EndpointSlice,
    farms: &[Arc<ServerFarm>],
) -> Vec<ObjectRef<GatewayArray>> {
    match (slice.namespace(), slice.labels().get(SERVICE_NAME_LABEL)) {
        (Some(ns), Some(service)) => arrays_for_service_name(&ns, service, farms),
        _ => Vec::new(),
    }
}

/// The arrays a Service change affects (its port names map Service ports to slices).
pub fn arrays_for_service(
    service: &Service,
    farms: &[Arc<ServerFarm>],
) -> Vec<ObjectRef<GatewayArray>> {
    match service.namespace() {
        Some(ns) => arrays_for_service_name(&ns, &service.name_any(), farms),
        None => Vec::new(),
    }
}

/// Secret names a farm references: its publish certificate and its upstream CA.
pub fn farm_secrets(farm: &ServerFarm) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(tls) = &farm.spec.publish.tls {
        out.push(tls.secret_name.clone());
    }
    if let Some(ca) = farm
        .spec
        .upstream
        .as_ref()
        .and_then(|u| u.tls.as_ref())
        .and_then(|t| t.ca_secret_name.clone())
    {
        out.push(ca);
    }
    out
}

/// Secret names an array references directly: listener default certificates.
pub fn array_secrets(array: &GatewayArray) -> Vec<String> {
    array
        .spec
        .listeners
        .iter()
        .filter_map(|l| l.tls.as_ref().map(|t| t.secret_name.clone()))
        .collect()
}

/// The arrays a Secret change affects: arrays whose listeners use it, arrays whose farms
/// use it, and the array whose keys Secret it is.
pub fn arrays_for_secret(
    secret: &Secret,
    farms: &[Arc<ServerFarm>],
    arrays: &[Arc<GatewayArray>],
) -> Vec<ObjectRef<GatewayArray>> {
    let Some(ns) = secret.namespace() else {
        return Vec::new();
    };
    let name = secret.name_any();
    let from_arrays = arrays
        .iter()
        .filter(|a| a.namespace().as_deref() == Some(&ns))
        .filter(|a| array_secrets(a).contains(&name) || names::secret(a) == name)
        .map(|a| (ns.clone(), a.name_any()));
    let from_farms = farms
        .iter()
        .filter(|f| f.namespace().as_deref() == Some(&ns))
        .filter(|f| farm_secrets(f).contains(&name))
        .map(|f| (ns.clone(), f.spec.array_ref.name.clone()));
    dedup(from_arrays.chain(from_farms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn farm(ns: &str, name: &str, array: &str, extra: serde_json::Value) -> Arc<ServerFarm> {
        let mut spec = serde_json::json!({
            "arrayRef": {"name": array},
            "publish": {"hosts": ["a.example.com"]},
            "servers": [{"service": {"name": "web", "port": 80}}, {"host": "b.internal", "port": 80}]
        });
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "portcullis.io/v1alpha1", "kind": "ServerFarm",
                "metadata": {"name": name, "namespace": ns}, "spec": spec
            }))
            .unwrap(),
        )
    }

    fn names(refs: Vec<ObjectRef<GatewayArray>>) -> Vec<String> {
        refs.into_iter()
            .map(|r| format!("{}/{}", r.namespace.unwrap(), r.name))
            .collect()
    }

    fn farms() -> Vec<Arc<ServerFarm>> {
        vec![
            farm("shop", "f1", "edge", serde_json::json!({})),
            farm("shop", "f2", "edge", serde_json::json!({})),
            farm(
                "shop",
                "f3",
                "internal",
                serde_json::json!({
                    "servers": [{"service": {"name": "api", "port": 80}}],
                    "publish": {"hosts": ["c.example.com"], "tls": {"secretName": "c-cert"}},
                    "upstream": {"tls": {"caSecretName": "api-ca"}}
                }),
            ),
            farm("other", "f4", "edge", serde_json::json!({})),
        ]
    }

    #[test]
    fn farm_maps_to_its_array() {
        assert_eq!(names(arrays_for_farm(&farms()[2])), ["shop/internal"]);
    }

    #[test]
    fn endpoint_slice_and_service_map_through_farms() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-x1", "namespace": "shop", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4", "endpoints": []
        }))
        .unwrap();
        assert_eq!(
            names(arrays_for_endpoint_slice(&slice, &farms())),
            ["shop/edge"]
        );
        let unlabelled: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "x", "namespace": "shop"}, "addressType": "IPv4", "endpoints": []
        }))
        .unwrap();
        assert!(arrays_for_endpoint_slice(&unlabelled, &farms()).is_empty());
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "api", "namespace": "shop"}
        }))
        .unwrap();
        assert_eq!(names(arrays_for_service(&svc, &farms())), ["shop/internal"]);
        let elsewhere: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "api", "namespace": "other"}
        }))
        .unwrap();
        assert!(arrays_for_service(&elsewhere, &farms()).is_empty());
    }

    #[test]
    fn secret_maps_through_listeners_farms_and_keys() {
        let arrays: Vec<Arc<GatewayArray>> = vec![Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "portcullis.io/v1alpha1", "kind": "GatewayArray",
                "metadata": {"name": "edge", "namespace": "shop"},
                "spec": {"listeners": [{"name": "https", "port": 443, "protocol": "HTTPS",
                                        "tls": {"secretName": "default-cert"}}]}
            }))
            .unwrap(),
        )];
        let secret = |ns: &str, name: &str| -> Secret {
            serde_json::from_value(serde_json::json!({"metadata": {"name": name, "namespace": ns}}))
                .unwrap()
        };
        let f = farms();
        assert_eq!(
            names(arrays_for_secret(
                &secret("shop", "default-cert"),
                &f,
                &arrays
            )),
            ["shop/edge"]
        );
        assert_eq!(
            names(arrays_for_secret(&secret("shop", "edge-keys"), &f, &arrays)),
            ["shop/edge"]
        );
        assert_eq!(
            names(arrays_for_secret(&secret("shop", "c-cert"), &f, &arrays)),
            ["shop/internal"]
        );
        assert_eq!(
            names(arrays_for_secret(&secret("shop", "api-ca"), &f, &arrays)),
            ["shop/internal"]
        );
        assert!(arrays_for_secret(&secret("other", "c-cert"), &f, &arrays).is_empty());
        assert!(arrays_for_secret(&secret("shop", "unrelated"), &f, &arrays).is_empty());
    }
}

//! Which arrays a changed object affects. Pure functions over the object and the known
//! farms and arrays, used as `Controller::watches` mappers.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use portcullis_crds::translate;
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
    match translate::array_namespace(farm) {
        Some(ns) => vec![array_ref(&ns, &farm.spec.array_ref.name)],
        None => Vec::new(),
    }
}

/// The array each farm named when it was last seen, so that a farm moved to another
/// array also reconciles the array it left (which otherwise keeps publishing it until its
/// next periodic pass). Memory is enough: after a restart every array is reconciled.
#[derive(Debug, Default)]
pub struct FarmPlacements(parking_lot::Mutex<HashMap<(String, String), (String, String)>>);

impl FarmPlacements {
    /// The array `farm` names now, and the one it named before when that differs.
    pub fn arrays_for_farm(&self, farm: &ServerFarm) -> Vec<ObjectRef<GatewayArray>> {
        let (Some(ns), Some(array_ns)) = (farm.namespace(), translate::array_namespace(farm))
        else {
            return Vec::new();
        };
        let now = (array_ns, farm.spec.array_ref.name.clone());
        let before = self.0.lock().insert((ns, farm.name_any()), now.clone());
        dedup(std::iter::once(now).chain(before))
    }
}

/// The farms (from the known ones) that name `array`: a deleted or created array
/// changes what their status must say.
pub fn farms_for_array(
    array: &GatewayArray,
    farms: &[Arc<ServerFarm>],
) -> Vec<ObjectRef<ServerFarm>> {
    farms
        .iter()
        .filter(|f| translate::farm_targets_array(f, array))
        .map(|f| ObjectRef::from(f.as_ref()))
        .collect()
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
            .filter_map(|f| {
                Some((
                    translate::array_namespace(f)?,
                    f.spec.array_ref.name.clone(),
                ))
            }),
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

/// What a farm needs from a Secret it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretUse {
    /// `tls.crt` and `tls.key`: the certificate it publishes with.
    Certificate,
    /// `ca.crt`: the CA its upstream TLS trusts.
    Ca,
    /// `auth`: the htpasswd file of its basic authentication.
    BasicAuth,
}

/// The Secrets a farm names, each with the field that names it and what it needs: its
/// publish certificate, its upstream CA and its basic-auth htpasswd file.
pub fn farm_secret_refs(farm: &ServerFarm) -> Vec<(&'static str, &str, SecretUse)> {
    let mut out = Vec::new();
    if let Some(tls) = &farm.spec.publish.tls {
        out.push((
            "spec.publish.tls.secretName",
            tls.secret_name.as_str(),
            SecretUse::Certificate,
        ));
    }
    if let Some(ca) = farm
        .spec
        .upstream
        .as_ref()
        .and_then(|u| u.tls.as_ref())
        .and_then(|t| t.ca_secret_name.as_deref())
    {
        out.push(("spec.upstream.tls.caSecretName", ca, SecretUse::Ca));
    }
    if let Some(auth) = farm
        .spec
        .access
        .as_ref()
        .and_then(|a| a.basic_auth.as_ref())
    {
        out.push((
            "spec.access.basicAuth.secretName",
            auth.secret_name.as_str(),
            SecretUse::BasicAuth,
        ));
    }
    out
}

/// Secret names a farm references: its publish certificate, its upstream CA and its
/// basic-auth htpasswd file.
pub fn farm_secrets(farm: &ServerFarm) -> Vec<String> {
    farm_secret_refs(farm)
        .into_iter()
        .map(|(_, name, _)| name.to_owned())
        .collect()
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
        .filter_map(|f| {
            Some((
                translate::array_namespace(f)?,
                f.spec.array_ref.name.clone(),
            ))
        });
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
    fn a_farm_moved_to_another_array_maps_to_both_once() {
        let placements = FarmPlacements::default();
        assert_eq!(
            names(placements.arrays_for_farm(&farms()[0])),
            ["shop/edge"]
        );
        // Unchanged: only its array.
        assert_eq!(
            names(placements.arrays_for_farm(&farms()[0])),
            ["shop/edge"]
        );
        // Moved: the new array publishes it, the old one must stop.
        let moved = farm("shop", "f1", "internal", serde_json::json!({}));
        assert_eq!(
            names(placements.arrays_for_farm(&moved)),
            ["shop/edge", "shop/internal"]
        );
        assert_eq!(names(placements.arrays_for_farm(&moved)), ["shop/internal"]);
        // A farm of the same name in another namespace is another farm.
        assert_eq!(
            names(placements.arrays_for_farm(&farms()[3])),
            ["other/edge"]
        );
    }

    #[test]
    fn an_array_maps_to_the_farms_that_name_it() {
        let array: GatewayArray = serde_json::from_value(serde_json::json!({
            "apiVersion": "portcullis.io/v1alpha1", "kind": "GatewayArray",
            "metadata": {"name": "edge", "namespace": "shop"},
            "spec": {"listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}
        }))
        .unwrap();
        let got: Vec<String> = farms_for_array(&array, &farms())
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(got, ["f1", "f2"]);
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

//! What a GatewayArray owns, found by owner reference rather than by name, so the
//! suite checks the contract (everything is owned by the array) and not a naming scheme.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::ListParams;
use kube::{Api, Resource, ResourceExt};
use portcullis_crds::v1alpha1::GatewayArray;

use crate::Ctx;

/// Whether `obj` has an owner reference to the object with `uid`.
pub fn is_owned_by<K: Resource>(obj: &K, uid: &str) -> bool {
    obj.owner_references().iter().any(|o| o.uid == uid)
}

/// Lists the objects of kind `K` in the test namespace owned by `uid`.
pub async fn list_owned<K>(ctx: &Ctx, uid: &str) -> anyhow::Result<Vec<K>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
    <K as Resource>::DynamicType: Default,
{
    let api: Api<K> = ctx.api();
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|o| is_owned_by(o, uid))
        .collect())
}

/// `Kind/name` of everything the array with `uid` owns, in a stable order.
pub async fn owned_summary(ctx: &Ctx, uid: &str) -> anyhow::Result<Vec<String>> {
    fn names<K: Resource<DynamicType = ()>>(items: Vec<K>) -> Vec<String> {
        items
            .iter()
            .map(|o| format!("{}/{}", K::kind(&()), o.name_any()))
            .collect()
    }
    let mut all = Vec::new();
    all.extend(names(list_owned::<Deployment>(ctx, uid).await?));
    all.extend(names(list_owned::<Service>(ctx, uid).await?));
    all.extend(names(list_owned::<ConfigMap>(ctx, uid).await?));
    all.extend(names(list_owned::<Secret>(ctx, uid).await?));
    all.extend(names(list_owned::<PodDisruptionBudget>(ctx, uid).await?));
    all.extend(names(list_owned::<ServiceAccount>(ctx, uid).await?));
    all.extend(names(list_owned::<Role>(ctx, uid).await?));
    all.extend(names(list_owned::<RoleBinding>(ctx, uid).await?));
    all.sort();
    Ok(all)
}

/// The array's uid.
pub async fn array_uid(ctx: &Ctx, array: &str) -> anyhow::Result<String> {
    let api: Api<GatewayArray> = ctx.api();
    api.get(array)
        .await?
        .uid()
        .ok_or_else(|| anyhow::anyhow!("GatewayArray {array} has no uid"))
}

/// The array's member Deployment (exactly one must exist).
pub async fn member_deployment(ctx: &Ctx, array: &str) -> anyhow::Result<Deployment> {
    let uid = array_uid(ctx, array).await?;
    let mut deployments = list_owned::<Deployment>(ctx, &uid).await?;
    match deployments.len() {
        1 => Ok(deployments.remove(0)),
        n => anyhow::bail!("GatewayArray {array} owns {n} Deployments, expected 1"),
    }
}

/// The array's Service: the owned Service that exposes `listener_port`.
pub async fn array_service(ctx: &Ctx, array: &str, listener_port: u16) -> anyhow::Result<Service> {
    let uid = array_uid(ctx, array).await?;
    list_owned::<Service>(ctx, &uid)
        .await?
        .into_iter()
        .find(|s| {
            s.spec.as_ref().is_some_and(|spec| {
                spec.ports
                    .iter()
                    .flatten()
                    .any(|p| p.port == i32::from(listener_port))
            })
        })
        .ok_or_else(|| {
            anyhow::anyhow!("GatewayArray {array} owns no Service with port {listener_port}")
        })
}

/// The array's member pods that are Ready, sorted by name.
pub async fn ready_members(ctx: &Ctx, array: &str) -> anyhow::Result<Vec<Pod>> {
    let deployment = member_deployment(ctx, array).await?;
    let selector = deployment
        .spec
        .selector
        .match_labels
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("member Deployment has no matchLabels"))?
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let api: Api<Pod> = ctx.api();
    let mut pods: Vec<Pod> = api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && pod_ready(p))
        .collect();
    pods.sort_by_key(|p| p.name_any());
    Ok(pods)
}

/// Whether a pod's `Ready` condition is true.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The port of a member's admin server (`/metrics`): the container port named `admin`
/// (or `metrics`), else the dataplane's default 9901.
pub fn admin_port(pod: &Pod) -> u16 {
    pod.spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| matches!(p.name.as_deref(), Some("admin" | "metrics")))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(9901)
}

//! Fetch: everything a reconcile reads from the API (and the members' `/status`), before
//! any decision is made.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::ListParams;
use kube::{Client, Resource, ResourceExt};
use portcullis_crds::ingress;
use portcullis_crds::translate::{self, Resolutions, ServiceKey};
use portcullis_crds::v1alpha1::{GatewayArray, ServerFarm};
use serde::de::DeserializeOwned;

use super::keys::owned_by;
use super::{Context, api};
use crate::builders::{self, names};
use crate::keyring::Member;
use crate::mapping::{array_secrets, farm_secrets};
use crate::resolve::{SERVICE_NAME_LABEL, service_endpoints};

/// Reading from the API failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to fetch {what}: {source}")]
pub struct FetchError {
    /// What was read.
    pub what: String,
    /// The API error.
    #[source]
    pub source: kube::Error,
}

/// The error for reading `what`, as a `map_err` argument.
fn fetch_err(what: String) -> impl FnOnce(kube::Error) -> FetchError {
    move |source| FetchError { what, source }
}

/// What was read from the API for one array.
#[derive(Clone, Debug, Default)]
pub struct Fetched {
    /// Farms naming the array, from any namespace watched.
    pub farms: Vec<ServerFarm>,
    /// Referenced Secrets, `None` when absent.
    pub secrets: BTreeMap<String, Option<Secret>>,
    /// The array's keys Secret (`spec.sessionKeys.secretName`, else `<array>-keys`).
    pub keys: Option<Secret>,
    /// The Secret the keyring was kept in before `spec.sessionKeys.secretName` changed
    /// (named by `status.keysSecret`, else the default name), while the move is not
    /// done; only when this array owns it.
    pub previous_keys: Option<Secret>,
    /// Existing objects with the names of the array's objects that the array does not
    /// control: never modified, and reported.
    pub foreign: Vec<ForeignObject>,
    /// Resolutions of Service servers.
    pub resolutions: Resolutions,
    /// Members.
    pub members: Vec<Member>,
}

/// An existing object whose name one of the array's objects would take, and which the
/// array does not control (a user's Service, another array's Deployment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignObject {
    /// Its kind.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// `Kind name` of its controller, when it has one.
    pub controller: Option<String>,
}

/// The GatewayArray `ns/name` as the API server has it now, `None` when it is gone.
pub(super) async fn current_array(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<GatewayArray>, FetchError> {
    api::<GatewayArray>(client, ns)
        .get_opt(name)
        .await
        .map_err(fetch_err(format!("GatewayArray {ns}/{name}")))
}

/// The object `name` of kind `K` when it exists and `array` does not control it.
async fn foreign<K>(
    client: &Client,
    ns: &str,
    name: &str,
    array: &GatewayArray,
) -> Result<Option<ForeignObject>, FetchError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let kind = K::kind(&()).into_owned();
    let Some(found) = api::<K>(client, ns)
        .get_metadata_opt(name)
        .await
        .map_err(fetch_err(format!("{kind} {ns}/{name}")))?
    else {
        return Ok(None);
    };
    let controller = found
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    if controller.is_some_and(|o| Some(o.uid.as_str()) == array.uid().as_deref()) {
        return Ok(None);
    }
    Ok(Some(ForeignObject {
        kind,
        name: name.to_owned(),
        controller: controller.map(|o| format!("{} {}", o.kind, o.name)),
    }))
}

/// The objects the array would write (besides its keys Secret, checked on its own) that
/// exist and are not the array's.
async fn foreign_objects(
    client: &Client,
    ns: &str,
    array: &GatewayArray,
) -> Result<Vec<ForeignObject>, FetchError> {
    let name = array.name_any();
    let dataplane = names::dataplane(&name);
    let found = [
        foreign::<ServiceAccount>(client, ns, &dataplane, array).await?,
        foreign::<Role>(client, ns, &dataplane, array).await?,
        foreign::<RoleBinding>(client, ns, &dataplane, array).await?,
        foreign::<ConfigMap>(client, ns, &names::config_map(&name), array).await?,
        foreign::<Deployment>(client, ns, &name, array).await?,
        foreign::<Service>(client, ns, &name, array).await?,
        foreign::<PodDisruptionBudget>(client, ns, &name, array).await?,
    ];
    Ok(found.into_iter().flatten().collect())
}

/// Reads what one reconcile of `array` needs, in a fixed order.
pub(super) async fn fetch(
    array: &GatewayArray,
    ns: &str,
    ctx: &Context,
) -> Result<Fetched, FetchError> {
    let client = &ctx.client;
    let mut farms = farms(client, ctx.settings.watch_namespace.as_deref(), array).await?;
    verify_ingress_farms(client, ns, array, &ctx.settings.migration, &mut farms).await?;
    let secrets = referenced_secrets(client, ns, array, &farms).await?;
    let (keys, previous_keys) = keys_secrets(client, ns, array).await?;
    // Only an array with a valid name writes anything (validation says why not).
    let foreign = if translate::is_dns_label(&array.name_any()) {
        foreign_objects(client, ns, array).await?
    } else {
        Vec::new()
    };
    let resolutions =
        service_resolutions(client, &farms, ctx.settings.allow_private_targets).await?;
    let members = members(ctx, ns, array).await?;
    Ok(Fetched {
        farms,
        secrets,
        keys,
        previous_keys,
        foreign,
        resolutions,
        members,
    })
}

/// The farms naming `array` (in `scope`, every namespace when `None`), by id.
async fn farms(
    client: &Client,
    scope: Option<&str>,
    array: &GatewayArray,
) -> Result<Vec<ServerFarm>, FetchError> {
    let farms_api = match scope {
        Some(ns) => api::<ServerFarm>(client, ns),
        None => kube::Api::all(client.clone()),
    };
    let mut farms: Vec<ServerFarm> = farms_api
        .list(&ListParams::default())
        .await
        .map_err(fetch_err(format!(
            "ServerFarms in {}",
            scope.unwrap_or("every namespace")
        )))?
        .items
        .into_iter()
        .filter(|f| translate::farm_targets_array(f, array))
        .collect();
    farms.sort_by_key(translate::farm_id);
    Ok(farms)
}

/// Checks every farm that claims an Ingress controls it against that Ingress: it must
/// exist with the uid the farm names, and be published by `array` (its class, or the
/// migration switch, names the array). A farm that passes counts as the Ingress's (it may
/// live in another namespace, and is as old as the Ingress when conflicts are decided);
/// one that does not loses the claim, in this reconcile's copy: a hand-written farm cannot
/// borrow an Ingress's standing with a forged owner reference or annotation.
async fn verify_ingress_farms(
    client: &Client,
    ns: &str,
    array: &GatewayArray,
    migration: &ingress::Migration,
    farms: &mut [ServerFarm],
) -> Result<(), FetchError> {
    if !farms
        .iter()
        .any(|f| translate::controlling_ingress(f).is_some())
    {
        return Ok(());
    }
    let classes = kube::Api::<IngressClass>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(fetch_err("IngressClasses".to_owned()))?
        .items;
    let target = ingress::ArrayTarget {
        namespace: ns.to_owned(),
        name: array.name_any(),
    };
    for farm in farms.iter_mut() {
        let Some((farm_ns, name)) = translate::controlling_ingress(farm) else {
            continue;
        };
        let found = api::<Ingress>(client, &farm_ns)
            .get_opt(&name)
            .await
            .map_err(fetch_err(format!("Ingress {farm_ns}/{name}")))?;
        let owner_uid = farm
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone());
        let verified = found.filter(|ing| {
            ing.uid() == owner_uid
                && ingress::target(ing, &classes, migration).is_some_and(|(_, t)| t == target)
        });
        let annotations = farm
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        match verified.and_then(|ing| ing.metadata.creation_timestamp) {
            Some(created) => {
                annotations.insert(
                    translate::SOURCE_CREATED_ANNOTATION.to_owned(),
                    created.0.to_string(),
                );
            }
            None => {
                annotations.remove(translate::SOURCE_CREATED_ANNOTATION);
                if let Some(refs) = farm.metadata.owner_references.as_mut() {
                    refs.retain(|o| o.controller != Some(true));
                }
            }
        }
    }
    Ok(())
}

/// Whether `farm` can be published at all as far as its namespace goes: nothing is read
/// for a farm from another namespace that no verified Ingress controls (it is refused).
fn may_publish(farm: &ServerFarm) -> bool {
    !translate::is_cross_namespace(farm) || translate::controlling_ingress(farm).is_some()
}

/// The Secrets the array and its farms name, by id, `None` for those that do not exist.
/// A farm's Secrets are read from the farm's namespace.
async fn referenced_secrets(
    client: &Client,
    ns: &str,
    array: &GatewayArray,
    farms: &[ServerFarm],
) -> Result<BTreeMap<String, Option<Secret>>, FetchError> {
    // Only names that can be object names are read: `get("")` would be a list, and one
    // farm's typo must not fail the reconcile of every farm of the array. Validation
    // reports the others on the farm (or the array) that wrote them.
    // id -> (namespace, name)
    let mut wanted: BTreeMap<String, (String, String)> = array_secrets(array)
        .into_iter()
        .filter(|n| translate::is_dns_subdomain(n))
        .map(|n| (n.clone(), (ns.to_owned(), n)))
        .collect();
    for f in farms.iter().filter(|f| may_publish(f)) {
        let farm_ns = f.namespace().unwrap_or_default();
        wanted.extend(
            farm_secrets(f)
                .into_iter()
                .filter(|n| translate::is_dns_subdomain(n))
                .map(|n| (translate::secret_id(f, &n), (farm_ns.clone(), n))),
        );
    }
    let mut secrets = BTreeMap::new();
    for (id, (secret_ns, name)) in wanted {
        let s = api::<Secret>(client, &secret_ns)
            .get_opt(&name)
            .await
            .map_err(fetch_err(format!("Secret {secret_ns}/{name}")))?;
        secrets.insert(id, s);
    }
    Ok(secrets)
}

/// The array's keys Secret, and the one the keyring was kept in before a rename (only
/// when this array owns it).
async fn keys_secrets(
    client: &Client,
    ns: &str,
    array: &GatewayArray,
) -> Result<(Option<Secret>, Option<Secret>), FetchError> {
    let secrets_api = api::<Secret>(client, ns);
    let keys_name = names::secret(array);
    let keys = if translate::is_dns_subdomain(&keys_name) {
        secrets_api
            .get_opt(&keys_name)
            .await
            .map_err(fetch_err(format!("Secret {ns}/{keys_name}")))?
    } else {
        None
    };
    // Where the keyring was before: `status.keysSecret`, or the default name for arrays
    // whose status predates that field. Only a Secret this array owns counts: the
    // controller only ever writes keyrings into Secrets it owns.
    let previous_name = array
        .status
        .as_ref()
        .and_then(|s| s.keys_secret.clone())
        .unwrap_or_else(|| names::default_secret(&array.name_any()));
    let previous_keys =
        if previous_name == keys_name || !translate::is_dns_subdomain(&previous_name) {
            None
        } else {
            secrets_api
                .get_opt(&previous_name)
                .await
                .map_err(fetch_err(format!("Secret {ns}/{previous_name}")))?
                .filter(|s| owned_by(s, array))
        };
    Ok((keys, previous_keys))
}

/// The endpoints of the Service ports the farms name (each Service read once).
/// (Each farm's Services are in the farm's namespace.)
async fn service_resolutions(
    client: &Client,
    farms: &[ServerFarm],
    allow_private_targets: bool,
) -> Result<Resolutions, FetchError> {
    let services: BTreeSet<(String, String, u16)> = farms
        .iter()
        .filter(|f| may_publish(f))
        .flat_map(|f| {
            let ns = f.namespace().unwrap_or_default();
            f.spec.servers.iter().filter_map(move |s| {
                s.service
                    .as_ref()
                    .map(|r| (ns.clone(), r.name.clone(), r.port))
            })
        })
        .filter(|(_, name, _)| translate::is_dns_label(name))
        .collect();
    let mut resolutions = Resolutions::default();
    let mut by_name: BTreeMap<(String, String), Option<ServiceWithSlices>> = BTreeMap::new();
    for (ns, name, port) in services {
        let key = (ns.clone(), name.clone());
        if !by_name.contains_key(&key) {
            let found = service_with_slices(client, &ns, &name).await?;
            by_name.insert(key.clone(), found);
        }
        if let Some(Some((svc, slices))) = by_name.get(&key)
            && let Some(eps) = service_endpoints(svc, port, slices, allow_private_targets)
        {
            resolutions.services.insert(
                ServiceKey {
                    namespace: ns,
                    name,
                    port,
                },
                eps,
            );
        }
    }
    Ok(resolutions)
}

/// A Service and its EndpointSlices.
type ServiceWithSlices = (Service, Vec<EndpointSlice>);

/// Service `name` with its EndpointSlices, `None` when the Service does not exist.
async fn service_with_slices(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<ServiceWithSlices>, FetchError> {
    let Some(svc) = api::<Service>(client, ns)
        .get_opt(name)
        .await
        .map_err(fetch_err(format!("Service {ns}/{name}")))?
    else {
        return Ok(None);
    };
    let slices = api::<EndpointSlice>(client, ns)
        .list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={name}")))
        .await
        .map_err(fetch_err(format!("EndpointSlices of Service {ns}/{name}")))?
        .items;
    Ok(Some((svc, slices)))
}

/// The array's member pods, each with what its `/status` says, by name.
async fn members(ctx: &Context, ns: &str, array: &GatewayArray) -> Result<Vec<Member>, FetchError> {
    let pods = api::<Pod>(&ctx.client, ns)
        .list(&ListParams::default().labels(&builders::selector_query(&array.name_any())))
        .await
        .map_err(fetch_err(format!(
            "member Pods of {ns}/{}",
            array.name_any()
        )))?
        .items;
    let mut members = futures::future::join_all(pods.iter().map(|pod| member(ctx, pod))).await;
    members.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(members)
}

/// One member: whether its pod is ready, and its report when it has an address.
async fn member(ctx: &Context, pod: &Pod) -> Member {
    let name = pod.name_any();
    let status = pod.status.clone().unwrap_or_default();
    let ready = pod.metadata.deletion_timestamp.is_none()
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
    let report = match &status.pod_ip {
        Some(ip) => ctx.members.fetch(&name, ip).await,
        None => None,
    };
    Member {
        name,
        ready,
        report,
    }
}

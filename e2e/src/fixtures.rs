//! The objects the flows create: demo backends (from `e2e/manifests/demo-backend.yaml`),
//! GatewayArrays and ServerFarms (the `portcullis_crds::v1alpha1` types), and the waits
//! that say they are ready.

use std::collections::BTreeMap;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use portcullis_crds::v1alpha1::{
    Affinity, AffinityMode, GatewayArray, GatewayArraySpec, Server, ServerFarm, ServerFarmSpec,
    ServiceOptions, ServiceType,
};
use portcullis_testkit::{ArrayBuilder, FarmBuilder, defaults, duration, service_server};
use serde_json::{Value, json};

use crate::kubectl::PortForward;
use crate::{Ctx, http, owned, wait};

/// The demo backend, exactly as the quick start applies it.
pub const DEMO_BACKEND_YAML: &str = include_str!("../manifests/demo-backend.yaml");

/// The label the demo backend's selector uses.
const DEMO_NAME_LABEL: &str = "app.kubernetes.io/name";

/// The port every test array listens on.
pub const LISTENER_PORT: u16 = 8080;

/// A copy of the demo backend named `name` (Deployment and Service, selecting only its
/// own pods), with `replicas` pods. Its `GET /hostname` answers the serving pod's name,
/// which starts with `name-`.
pub fn demo_backend(name: &str, replicas: i32) -> anyhow::Result<(Deployment, Service)> {
    let mut deployment = None;
    let mut service = None;
    for doc in serde_yaml::Deserializer::from_str(DEMO_BACKEND_YAML) {
        let mut value: Value = serde::Deserialize::deserialize(doc)?;
        value["metadata"]["name"] = json!(name);
        value["metadata"]["labels"][DEMO_NAME_LABEL] = json!(name);
        match value["kind"].as_str() {
            Some("Deployment") => {
                value["spec"]["replicas"] = json!(replicas);
                value["spec"]["selector"]["matchLabels"][DEMO_NAME_LABEL] = json!(name);
                value["spec"]["template"]["metadata"]["labels"][DEMO_NAME_LABEL] = json!(name);
                deployment = Some(serde_json::from_value(value)?);
            }
            Some("Service") => {
                value["spec"]["selector"][DEMO_NAME_LABEL] = json!(name);
                service = Some(serde_json::from_value(value)?);
            }
            other => anyhow::bail!("demo-backend.yaml: unexpected kind {other:?}"),
        }
    }
    Ok((
        deployment.context("demo-backend.yaml has no Deployment")?,
        service.context("demo-backend.yaml has no Service")?,
    ))
}

/// Creates a demo backend in the test namespace and waits until all its pods are ready.
pub async fn create_demo_backend(ctx: &Ctx, name: &str, replicas: i32) -> anyhow::Result<()> {
    let (deployment, service) = demo_backend(name, replicas)?;
    let deployments: Api<Deployment> = ctx.api();
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    ctx.api::<Service>()
        .create(&PostParams::default(), &service)
        .await?;
    wait::until(
        &format!("demo backend {name} ready"),
        ctx.timeout,
        || async {
            let d = deployments.get(name).await?;
            let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
            Ok((ready == replicas).then_some(()))
        },
    )
    .await
}

/// A GatewayArray with one HTTP listener on [`LISTENER_PORT`], a ClusterIP Service and
/// `replicas` members, in the namespace of the client that creates it; `edit` changes
/// the rest of the spec.
pub fn array(name: &str, replicas: i32, edit: impl FnOnce(&mut GatewayArraySpec)) -> GatewayArray {
    ArrayBuilder::new(name)
        .any_namespace()
        .http("http", LISTENER_PORT)
        .with(|spec| {
            spec.replicas = replicas;
            spec.service = Some(ServiceOptions {
                type_: ServiceType::ClusterIp,
                ..Default::default()
            });
            spec.drain_timeout = Some(duration("5s"));
        })
        .with(edit)
        .build()
}

/// A ServerFarm on `array` publishing `host` at `/`, whose servers are the Service
/// `backend` port 80, in the namespace of the client that creates it; `edit` changes the
/// rest of the spec.
pub fn farm(
    name: &str,
    array: &str,
    host: &str,
    backend: &str,
    edit: impl FnOnce(&mut ServerFarmSpec),
) -> ServerFarm {
    FarmBuilder::new(name)
        .any_namespace()
        .array(array)
        .hosts([host])
        .paths(["/"])
        .server(service_server(backend, 80))
        .with(edit)
        .build()
}

/// A server at the cloud metadata address, which the controller refuses in-cluster (the
/// chart leaves allowPrivateTargets off) though the CRD schema accepts it.
pub fn metadata_address() -> Server {
    Server {
        address: Some("169.254.169.254".to_owned()),
        port: Some(80),
        ..defaults()
    }
}

/// Cookie affinity, as the session flows use it.
pub fn cookie_affinity(spec: &mut ServerFarmSpec) {
    spec.affinity = Some(Affinity {
        mode: AffinityMode::Cookie,
        cookie_name: Some(AFFINITY_COOKIE.to_owned()),
        ..defaults()
    });
}

/// The session flows' set-up: the demo backend `demo` with `backends` pods, the array
/// `edge` with `members` members and the farm `shop` (host `shop.e2e.test`, cookie
/// affinity) in front of it; returns once the farm is Ready and every member serves the
/// latest config, with the array as it is then.
pub async fn sticky_shop(ctx: &Ctx, members: i32, backends: i32) -> anyhow::Result<GatewayArray> {
    create_demo_backend(ctx, "demo", backends).await?;
    let array = array("edge", members, |_| {});
    let farm = farm("shop", "edge", "shop.e2e.test", "demo", cookie_affinity);
    apply(ctx, &array, &[farm]).await?;
    wait_farm_condition(ctx, "shop", "Ready", "True").await?;
    wait_array_ready(ctx, "edge", members).await
}

/// The affinity cookie name the session flows configure.
pub const AFFINITY_COOKIE: &str = "portcullis-e2e-session";

/// Creates the array and farms.
pub async fn apply(ctx: &Ctx, array: &GatewayArray, farms: &[ServerFarm]) -> anyhow::Result<()> {
    ctx.api::<GatewayArray>()
        .create(&PostParams::default(), array)
        .await
        .context("create GatewayArray")?;
    for farm in farms {
        ctx.api::<ServerFarm>()
            .create(&PostParams::default(), farm)
            .await
            .with_context(|| format!("create ServerFarm {}", farm.name_any()))?;
    }
    Ok(())
}

/// A condition of a farm's current status, if the controller has written it for the
/// farm's current generation.
pub fn farm_condition(farm: &ServerFarm, type_: &str) -> Option<Condition> {
    let status = farm.status.as_ref()?;
    if status.observed_generation != farm.metadata.generation {
        return None;
    }
    status.conditions.iter().find(|c| c.type_ == type_).cloned()
}

/// Waits until the farm's condition `type_` has `status` ("True"/"False") for its
/// current generation, and returns it.
pub async fn wait_farm_condition(
    ctx: &Ctx,
    farm: &str,
    type_: &str,
    status: &str,
) -> anyhow::Result<Condition> {
    let api: Api<ServerFarm> = ctx.api();
    wait::until(
        &format!("ServerFarm {farm} {type_}={status}"),
        ctx.timeout,
        || async {
            let f = api.get(farm).await?;
            Ok(farm_condition(&f, type_).filter(|c| c.status == status))
        },
    )
    .await
}

/// Waits until the array has `replicas` ready members that all serve the config the
/// controller last wrote, and returns the array.
pub async fn wait_array_ready(
    ctx: &Ctx,
    array: &str,
    replicas: i32,
) -> anyhow::Result<GatewayArray> {
    let api: Api<GatewayArray> = ctx.api();
    wait::until(
        &format!("GatewayArray {array} with {replicas} ready members on the latest config"),
        ctx.timeout,
        || async {
            let a = api.get(array).await?;
            let Some(status) = a.status.as_ref() else {
                return Ok(None);
            };
            let current = status.observed_generation == a.metadata.generation
                && status.ready_members == replicas
                && status.config_hash.is_some()
                && status.loaded_config_hash == status.config_hash;
            let pods = owned::ready_members(ctx, array).await?;
            Ok((current && pods.len() == usize::try_from(replicas)?).then_some(a))
        },
    )
    .await
}

/// Port-forwards to the array's Service on the listener port: the path a person follows
/// in the quick start.
pub async fn forward_array_service(ctx: &Ctx, array: &str) -> anyhow::Result<PortForward> {
    let service = owned::array_service(ctx, array, LISTENER_PORT).await?;
    ctx.kubectl()
        .port_forward(&format!("service/{}", service.name_any()), LISTENER_PORT)
        .await
}

/// One port-forward per ready member, on the listener port, by member pod name. The
/// session flows send each request to a chosen member, so they know which one served it.
pub async fn forward_members(
    ctx: &Ctx,
    array: &str,
) -> anyhow::Result<BTreeMap<String, PortForward>> {
    let mut out = BTreeMap::new();
    for pod in owned::ready_members(ctx, array).await? {
        let name = pod.name_any();
        let pf = ctx
            .kubectl()
            .port_forward(&format!("pod/{name}"), LISTENER_PORT)
            .await?;
        out.insert(name, pf);
    }
    Ok(out)
}

/// Sends `GET /hostname` with `Host: host` through `port` until it answers 200 from a
/// pod whose name starts with `backend-`, and returns that pod name. The array loads new
/// config asynchronously, so the first requests may still see the previous one.
pub async fn wait_routed(
    ctx: &Ctx,
    addr: std::net::SocketAddr,
    host: &str,
    backend: &str,
) -> anyhow::Result<String> {
    wait::until(
        &format!("Host {host} routed to {backend}"),
        ctx.timeout,
        || async {
            let r = http::get(addr, host, "/hostname", None).await?;
            Ok((r.status == 200 && served_by(&r.body, backend)).then(|| r.body.trim().to_owned()))
        },
    )
    .await
}

/// Whether a `/hostname` answer came from a pod of the demo backend `backend`.
pub fn served_by(body: &str, backend: &str) -> bool {
    body.trim().starts_with(&format!("{backend}-"))
}

/// Sum of `portcullis_session_cookie_rejected_total` over every ready member's
/// `/metrics` (each scraped through its own port-forward to the admin port).
pub async fn cookies_rejected(ctx: &Ctx, array: &str) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for pod in owned::ready_members(ctx, array).await? {
        let pf = ctx
            .kubectl()
            .port_forward(&format!("pod/{}", pod.name_any()), owned::admin_port(&pod))
            .await?;
        let metrics = http::get(pf.addr, "localhost", "/metrics", None).await?;
        anyhow::ensure!(
            metrics.status == 200,
            "{} /metrics answered {}",
            pod.name_any(),
            metrics.status
        );
        total += http::counter_total(&metrics.body, "portcullis_session_cookie_rejected_total");
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use portcullis_crds::v1alpha1::SessionKeys;

    use super::*;

    #[test]
    fn demo_backend_copies_select_only_their_own_pods() {
        let (d, s) = demo_backend("demo-a", 3).unwrap();
        assert_eq!(d.name_any(), "demo-a");
        assert_eq!(s.name_any(), "demo-a");
        let spec = d.spec;
        assert_eq!(spec.replicas, Some(3));
        let selector = spec.selector.match_labels.unwrap();
        assert_eq!(selector[DEMO_NAME_LABEL], "demo-a");
        assert_eq!(
            spec.template.metadata.unwrap().labels.unwrap()[DEMO_NAME_LABEL],
            "demo-a"
        );
        assert_eq!(s.spec.unwrap().selector.unwrap()[DEMO_NAME_LABEL], "demo-a");
    }

    #[test]
    fn builders_produce_valid_api_objects() {
        let a = array("edge", 2, |spec| {
            spec.session_keys = Some(SessionKeys {
                rotation_interval: Some(duration("1h")),
                ..Default::default()
            })
        });
        assert_eq!(a.spec.replicas, 2);
        assert_eq!(a.spec.listeners[0].port, LISTENER_PORT);
        assert!(a.spec.session_keys.is_some());
        let f = farm("farm-a", "edge", "a.e2e.test", "demo-a", cookie_affinity);
        assert_eq!(f.spec.array_ref.name, "edge");
        assert_eq!(f.spec.servers[0].service.as_ref().unwrap().name, "demo-a");
        assert_eq!(
            f.spec.affinity.as_ref().unwrap().cookie_name.as_deref(),
            Some(AFFINITY_COOKIE)
        );
    }

    #[test]
    fn served_by_matches_the_pod_name_prefix() {
        assert!(served_by("demo-a-7d9f-xyz\n", "demo-a"));
        assert!(!served_by("demo-ab-7d9f-xyz", "demo-a"));
    }
}

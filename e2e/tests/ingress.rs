//! A standard Ingress with ingress-nginx annotations, applied with kubectl in one
//! namespace and published by a GatewayArray in another through a Portcullis
//! IngressClass: it becomes ServerFarms it controls, traffic follows its rules (a regex
//! rewrite with capture groups, cookie affinity under ingress-nginx's names), raw nginx
//! configuration is reported and never executed, `status.loadBalancer` names the
//! array's Service, and deleting the Ingress takes its farms and routes away.

use std::collections::BTreeSet;

use anyhow::{Context as _, ensure};
use base64::Engine as _;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use portcullis_crds::v1alpha1::{GatewayArray, ServerFarm};
use portcullis_e2e::http::CookieJar;
use portcullis_e2e::{Ctx, E2E_LABEL, fixtures, http, wait, with_temp_ns};

const HOST: &str = "shop.e2e.test";

fn ingress_yaml(class: &str) -> String {
    format!(
        r#"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: shop
  annotations:
    nginx.ingress.kubernetes.io/affinity: cookie
    nginx.ingress.kubernetes.io/session-cookie-name: shop-route
    nginx.ingress.kubernetes.io/rewrite-target: /$2
    nginx.ingress.kubernetes.io/configuration-snippet: |
      more_set_headers "X-Snippet: executed";
spec:
  ingressClassName: {class}
  rules:
  - host: {HOST}
    http:
      paths:
      - path: /app(/|$)(.*)
        pathType: ImplementationSpecific
        backend:
          service:
            name: demo
            port:
              number: 80
"#
    )
}

/// A second Ingress, for the staff site: basic auth from an htpasswd Secret of its own
/// namespace (`alice` / `secret`, a `{SHA}` line).
fn staff_yaml(class: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata:
  name: staff-users
type: Opaque
stringData:
  auth: "alice:{{SHA}}5en6G6MezRroT3XKqkdPOmY/BfQ=\n"
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: staff
  annotations:
    nginx.ingress.kubernetes.io/auth-type: basic
    nginx.ingress.kubernetes.io/auth-secret: staff-users
    nginx.ingress.kubernetes.io/auth-realm: Staff only
spec:
  ingressClassName: {class}
  rules:
  - host: staff.e2e.test
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: demo
            port:
              number: 80
"#
    )
}

fn class_yaml(class: &str, array_ns: &str) -> String {
    format!(
        r#"apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: {class}
  labels:
    {E2E_LABEL}: "true"
spec:
  controller: portcullis.io/ingress-controller
  parameters:
    apiGroup: portcullis.io
    kind: GatewayArray
    scope: Namespace
    namespace: {array_ns}
    name: edge
"#
    )
}

/// `kubectl apply -f` of `yaml`, in `ns` (or cluster-scoped).
async fn kubectl_apply(ctx: &Ctx, ns: &str, yaml: &str) -> anyhow::Result<()> {
    let file =
        std::env::temp_dir().join(format!("portcullis-e2e-{ns}-{}.yaml", std::process::id()));
    std::fs::write(&file, yaml)?;
    let out = ctx
        .kubectl()
        .in_namespace(ns)
        .output(&["apply", "-f", file.to_str().unwrap()])
        .await;
    let _ = std::fs::remove_file(&file);
    out.map(drop)
}

/// The farms Ingress `shop` controls in `apps`.
async fn generated(apps: &Ctx) -> anyhow::Result<Vec<ServerFarm>> {
    Ok(apps
        .api::<ServerFarm>()
        .list(&ListParams::default().labels("portcullis.io/ingress=shop"))
        .await?
        .items)
}

#[tokio::test]
#[ignore = "needs a cluster: run e2e/cluster/e2e.sh or e2e/kind.sh"]
async fn an_ingress_with_nginx_annotations_is_served_from_another_namespace() {
    with_temp_ns("ingress", |ctx: Ctx| async move {
        // The application's namespace, apart from the array's.
        let apps_ns = format!("{}-apps", ctx.ns);
        let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &Namespace {
                    metadata: ObjectMeta {
                        name: Some(apps_ns.clone()),
                        labels: Some([(E2E_LABEL.to_owned(), "true".to_owned())].into()),
                        ..ObjectMeta::default()
                    },
                    ..Namespace::default()
                },
            )
            .await
            .context("create the apps namespace")?;
        let class = ctx.ns.clone();
        let result = flow(&ctx, &apps_ns, &class).await;
        let _ = namespaces
            .delete(&apps_ns, &DeleteParams::background())
            .await;
        let _ = ctx
            .kubectl()
            .output(&["delete", "ingressclass", &class, "--ignore-not-found"])
            .await;
        result
    })
    .await;
}

async fn flow(ctx: &Ctx, apps_ns: &str, class: &str) -> anyhow::Result<()> {
    let apps = Ctx {
        ns: apps_ns.to_owned(),
        ..ctx.clone()
    };
    fixtures::create_demo_backend(&apps, "demo", 2).await?;
    ctx.api::<GatewayArray>()
        .create(&PostParams::default(), &fixtures::array("edge", 1, |_| {}))
        .await?;
    kubectl_apply(ctx, &ctx.ns, &class_yaml(class, &ctx.ns)).await?;
    kubectl_apply(ctx, apps_ns, &ingress_yaml(class)).await?;

    // The Ingress became a farm in its own namespace, controlled by it, published by the
    // array of the other namespace.
    let farm = wait::until("the Ingress's farm to be Ready", ctx.timeout, || async {
        let farms = generated(&apps).await?;
        Ok(farms
            .into_iter()
            .find(|f| fixtures::farm_condition(f, "Ready").is_some_and(|c| c.status == "True")))
    })
    .await?;
    let owner = &farm.owner_references()[0];
    ensure!(owner.kind == "Ingress" && owner.name == "shop", "{owner:?}");
    ensure!(
        farm.spec.array_ref.namespace.as_deref() == Some(ctx.ns.as_str()),
        "{:?}",
        farm.spec.array_ref
    );
    fixtures::wait_array_ready(ctx, "edge", 1).await?;

    // The regex path with capture groups is rewritten: /app/hostname reaches /hostname.
    let pf = fixtures::forward_array_service(ctx, "edge").await?;
    let backend = wait::until("the rewritten route to answer", ctx.timeout, || async {
        let r = http::get(pf.addr, HOST, "/app/hostname", None).await?;
        Ok((r.status == 200 && fixtures::served_by(&r.body, "demo"))
            .then(|| r.body.trim().to_owned()))
    })
    .await?;
    // Paths outside the Ingress's rules are not routed.
    let r = http::get(pf.addr, HOST, "/hostname", None).await?;
    ensure!(r.status == 404, "an unrouted path answered {}", r.status);

    // Cookie affinity under ingress-nginx's annotation names: the cookie is the one
    // named, and the session stays on one backend.
    let mut jar = CookieJar::default();
    let first = jar.fetch(pf.addr, HOST, "/app/hostname").await?;
    ensure!(first.status == 200, "first request: {}", first.status);
    jar.get("shop-route")
        .context("no shop-route affinity cookie was set")?;
    let pinned = first.body.trim().to_owned();
    for _ in 0..10 {
        let r = jar.fetch(pf.addr, HOST, "/app/hostname").await?;
        ensure!(r.body.trim() == pinned, "the session moved to {:?}", r.body);
    }
    ensure!(fixtures::served_by(&backend, "demo"), "{backend}");

    // Basic auth with the htpasswd Secret of the Ingress's namespace (it travels to the
    // array of the other namespace under its own id, never through the ConfigMap).
    kubectl_apply(ctx, apps_ns, &staff_yaml(class)).await?;
    wait::until("basic auth to be asked for", ctx.timeout, || async {
        let r = http::get(pf.addr, "staff.e2e.test", "/hostname", None).await?;
        Ok((r.status == 401).then_some(()))
    })
    .await?;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alice:secret")
    );
    let r = http::get_with(
        pf.addr,
        "staff.e2e.test",
        "/hostname",
        &[("authorization", basic.as_str())],
    )
    .await?;
    ensure!(
        r.status == 200 && fixtures::served_by(&r.body, "demo"),
        "with credentials: {} {:?}",
        r.status,
        r.body
    );
    let wrong = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alice:guess")
    );
    let r = http::get_with(
        pf.addr,
        "staff.e2e.test",
        "/hostname",
        &[("authorization", wrong.as_str())],
    )
    .await?;
    ensure!(r.status == 401, "a wrong password answered {}", r.status);
    let cm = ctx
        .api::<k8s_openapi::api::core::v1::ConfigMap>()
        .get("edge-config")
        .await?;
    ensure!(
        !serde_json::to_string(&cm.data)?.contains("5en6G6Me"),
        "the htpasswd file reached the ConfigMap"
    );

    // A Warning event names the ignored annotation.
    let events: Api<Event> = Api::namespaced(ctx.client.clone(), apps_ns);
    wait::until("a Warning naming the snippet", ctx.timeout, || async {
        let found = events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .any(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("shop")
                    && e.type_.as_deref() == Some("Warning")
                    && e.note.as_deref().is_some_and(|n| {
                        n.contains("configuration-snippet") && n.contains("never executes")
                    })
            });
        Ok(found.then_some(()))
    })
    .await?;

    // status.loadBalancer names the array's Service.
    let svc = ctx.api::<Service>().get("edge").await?;
    let cluster_ip = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .context("no cluster IP")?;
    let ingresses: Api<Ingress> = Api::namespaced(ctx.client.clone(), apps_ns);
    wait::until("status.loadBalancer", ctx.timeout, || async {
        let ing = ingresses.get("shop").await?;
        let ips: BTreeSet<String> = ing
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip)
            .collect();
        Ok(ips.contains(&cluster_ip).then_some(()))
    })
    .await?;

    // Deleting the Ingress takes its farms (garbage collection) and its route away.
    ingresses
        .delete("shop", &DeleteParams::foreground())
        .await?;
    wait::until(
        "the generated farms to be collected",
        ctx.timeout,
        || async { Ok(generated(&apps).await?.is_empty().then_some(())) },
    )
    .await?;
    wait::until("the route to be gone", ctx.timeout, || async {
        let r = http::get(pf.addr, HOST, "/app/hostname", None).await?;
        Ok((r.status == 404).then_some(()))
    })
    .await?;
    Ok(())
}

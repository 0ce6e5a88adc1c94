//! The chart installed what the controller needs: the CRDs are established, the
//! controller is ready and answers on its admin port, and the API server enforces the
//! CRDs' validation rules.

use anyhow::{Context as _, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use portcullis_crds::v1alpha1::GatewayArray;
use portcullis_e2e::{Ctx, fixtures, http, with_temp_ns};

#[tokio::test]
#[ignore = "needs a cluster: run e2e/cluster/e2e.sh or e2e/kind.sh"]
async fn install() {
    with_temp_ns("install", |ctx: Ctx| async move {
        // CRDs established and accepted.
        let crds: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
        for name in ["gatewayarrays.portcullis.io", "serverfarms.portcullis.io"] {
            let crd = crds
                .get(name)
                .await
                .with_context(|| format!("CRD {name}"))?;
            let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
            for wanted in ["Established", "NamesAccepted"] {
                ensure!(
                    conditions
                        .iter()
                        .any(|c| c.type_ == wanted && c.status == "True"),
                    "CRD {name} is not {wanted}: {conditions:?}"
                );
            }
        }

        // The controller Deployment is fully ready.
        let deployments: Api<Deployment> =
            Api::namespaced(ctx.client.clone(), &ctx.release_namespace);
        let selector = format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/component=controller",
            ctx.release
        );
        let list = deployments
            .list(&ListParams::default().labels(&selector))
            .await?;
        ensure!(
            list.items.len() == 1,
            "expected one controller Deployment ({selector}), got {}",
            list.items.len()
        );
        let controller = &list.items[0];
        let wanted = controller.spec.replicas.unwrap_or(1);
        let ready = controller
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        ensure!(
            ready == wanted,
            "controller {} has {ready}/{wanted} ready replicas",
            controller.name_any()
        );

        // Its admin port answers through the metrics Service.
        let pf = ctx
            .kubectl()
            .in_namespace(&ctx.release_namespace)
            .port_forward(&format!("service/{}-metrics", controller.name_any()), 9902)
            .await?;
        for path in ["/healthz", "/readyz"] {
            let r = http::get(pf.addr, "localhost", path, None).await?;
            ensure!(r.status == 200, "controller {path} answered {}", r.status);
        }
        let metrics = http::get(pf.addr, "localhost", "/metrics", None).await?;
        ensure!(
            metrics.status == 200 && metrics.body.contains("# TYPE"),
            "controller /metrics is not Prometheus text"
        );

        // The API server enforces the CRD's CEL rules: an array without listeners is refused.
        let bad = fixtures::array("no-listeners", 1, |spec| spec.listeners.clear());
        let err = ctx
            .api::<GatewayArray>()
            .create(
                &PostParams {
                    dry_run: true,
                    ..PostParams::default()
                },
                &bad,
            )
            .await
            .expect_err("an array without listeners must be rejected by the CRD");
        ensure!(
            err.to_string().contains("at least one listener"),
            "unexpected rejection: {err}"
        );
        Ok(())
    })
    .await;
}

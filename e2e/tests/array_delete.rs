//! Deleting a GatewayArray removes everything it owned: the members, their config,
//! keyring, Service, PodDisruptionBudget and RBAC.

use anyhow::ensure;
use kube::api::DeleteParams;
use portcullis_crds::v1alpha1::GatewayArray;
use portcullis_e2e::{Ctx, fixtures, owned, wait, with_temp_ns};

#[tokio::test]
#[ignore = "needs a cluster: run e2e/cluster/e2e.sh or e2e/kind.sh"]
async fn deleting_the_array_removes_what_it_owned() {
    with_temp_ns("array-delete", |ctx: Ctx| async move {
        fixtures::create_demo_backend(&ctx, "demo", 1).await?;
        let array = fixtures::array("edge", 2, |_| {});
        let farm = fixtures::farm("site", "edge", "site.e2e.test", "demo", |_| {});
        fixtures::apply(&ctx, &array, &[farm]).await?;
        fixtures::wait_array_ready(&ctx, "edge", 2).await?;
        let uid = owned::array_uid(&ctx, "edge").await?;
        let before = owned::owned_summary(&ctx, &uid).await?;
        for kind in [
            "Deployment/",
            "Service/",
            "ConfigMap/",
            "Secret/",
            "ServiceAccount/",
            "Role/",
            "RoleBinding/",
            "PodDisruptionBudget/",
        ] {
            ensure!(
                before.iter().any(|o| o.starts_with(kind)),
                "the array owns no {kind}: {before:?}"
            );
        }

        ctx.api::<GatewayArray>()
            .delete("edge", &DeleteParams::foreground())
            .await?;
        wait::until(
            "everything the array owned to be gone",
            ctx.timeout,
            || async {
                let left = owned::owned_summary(&ctx, &uid).await?;
                let pods = ctx.kubectl().output(&["get", "pods", "-o", "name"]).await?;
                let members_left = pods.lines().filter(|p| !p.contains("pod/demo-")).count();
                Ok((left.is_empty() && members_left == 0).then_some(()))
            },
        )
        .await?;
        ensure!(
            ctx.api::<GatewayArray>().get_opt("edge").await?.is_none(),
            "the array still exists"
        );
        Ok(())
    })
    .await;
}

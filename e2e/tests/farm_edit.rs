//! Editing a farm takes effect without restarting members: the new servers receive the
//! traffic while every member pod keeps its uid and restart count.

use std::collections::BTreeMap;

use anyhow::ensure;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use portcullis_crds::v1alpha1::{GatewayArray, ServerFarm};
use portcullis_e2e::{Ctx, fixtures, owned, wait, with_temp_ns};
use serde_json::json;

async fn member_identity(ctx: &Ctx) -> anyhow::Result<BTreeMap<String, i32>> {
    Ok(owned::ready_members(ctx, "edge")
        .await?
        .iter()
        .map(|p| {
            let restarts = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map(|c| c.iter().map(|c| c.restart_count).sum())
                .unwrap_or(0);
            (p.uid().unwrap_or_default(), restarts)
        })
        .collect())
}

#[tokio::test]
#[ignore = "needs a cluster: run e2e/cluster/e2e.sh or e2e/kind.sh"]
async fn farm_edit_applies_without_restarting_members() {
    with_temp_ns("farm-edit", |ctx: Ctx| async move {
        fixtures::create_demo_backend(&ctx, "demo-a", 2).await?;
        fixtures::create_demo_backend(&ctx, "demo-b", 2).await?;
        let array = fixtures::array("edge", 2, |_| {});
        let farm = fixtures::farm("site", "edge", "site.e2e.test", "demo-a", |_| {});
        fixtures::apply(&ctx, &array, &[farm]).await?;
        fixtures::wait_farm_condition(&ctx, "site", "Ready", "True").await?;
        let before = fixtures::wait_array_ready(&ctx, "edge", 2).await?;
        let members_before = member_identity(&ctx).await?;

        let pf = fixtures::forward_array_service(&ctx, "edge").await?;
        fixtures::wait_routed(&ctx, pf.addr, "site.e2e.test", "demo-a").await?;

        // Point the farm at the other backend.
        let patch = json!({"spec": {"servers": [{"service": {"name": "demo-b", "port": 80}}]}});
        ctx.api::<ServerFarm>()
            .patch("site", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        fixtures::wait_farm_condition(&ctx, "site", "Ready", "True").await?;
        // A farm edit does not change the array's generation: wait for a new config hash
        // that every member has loaded.
        let old_hash = before.status.as_ref().and_then(|s| s.config_hash.clone());
        let api = ctx.api::<GatewayArray>();
        wait::until(
            "a new config loaded by every member",
            ctx.timeout,
            || async {
                let a = api.get("edge").await?;
                let Some(status) = a.status else {
                    return Ok(None);
                };
                let fresh = status.config_hash.is_some()
                    && status.config_hash != old_hash
                    && status.loaded_config_hash == status.config_hash
                    && status.ready_members == 2;
                Ok(fresh.then_some(()))
            },
        )
        .await?;
        // The same port-forward (the same member) now reaches the new servers.
        fixtures::wait_routed(&ctx, pf.addr, "site.e2e.test", "demo-b").await?;
        for _ in 0..20 {
            let r = portcullis_e2e::http::get(pf.addr, "site.e2e.test", "/hostname", None).await?;
            ensure!(
                r.status == 200 && fixtures::served_by(&r.body, "demo-b"),
                "after the edit: {} {:?}",
                r.status,
                r.body
            );
        }
        let members_after = member_identity(&ctx).await?;
        ensure!(
            members_after == members_before,
            "members were restarted or replaced: {members_before:?} -> {members_after:?}"
        );
        Ok(())
    })
    .await;
}

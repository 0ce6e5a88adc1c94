//! Renaming `spec.sessionKeys.secretName` on a live array: the keyring moves to the new
//! Secret, members roll onto it, the old Secret is deleted, and a session cookie issued
//! before the rename still opens on the new members (same backend, nothing rejected).

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use portcullis_crds::v1alpha1::GatewayArray;
use portcullis_e2e::http::CookieJar;
use portcullis_e2e::{Ctx, fixtures, wait, with_temp_ns};
use serde_json::json;

#[tokio::test]
#[ignore = "needs a cluster: run e2e/cluster/e2e.sh or e2e/kind.sh"]
async fn renaming_the_keys_secret_keeps_sessions() {
    with_temp_ns("keys-secret", |ctx: Ctx| async move {
        let before = fixtures::sticky_shop(&ctx, 2, 3).await?;
        let status = before.status.context("no status")?;
        ensure!(
            status.keys_secret.as_deref() == Some("edge-keys"),
            "keysSecret: {:?}",
            status.keys_secret
        );
        let key_ids = status.key_ids;

        // A session, through the array's Service.
        let pf = fixtures::forward_array_service(&ctx, "edge").await?;
        fixtures::wait_routed(&ctx, pf.addr, "shop.e2e.test", "demo").await?;
        let mut jar = CookieJar::default();
        let r = jar.fetch(pf.addr, "shop.e2e.test", "/hostname").await?;
        ensure!(r.status == 200, "first request: {}", r.status);
        let backend = r.body.trim().to_owned();
        jar.get(fixtures::AFFINITY_COOKIE)
            .context("no affinity cookie")?;
        drop(pf);
        let rejected_before = fixtures::cookies_rejected(&ctx, "edge").await?;

        let arrays = ctx.api::<GatewayArray>();
        let patch = json!({"spec": {"sessionKeys": {"secretName": "edge-sessions"}}});
        arrays
            .patch("edge", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let secrets = ctx.api::<Secret>();
        wait::until("the old keys Secret deleted", ctx.timeout, || async {
            Ok(secrets.get_opt("edge-keys").await?.is_none().then_some(()))
        })
        .await?;
        let after = fixtures::wait_array_ready(&ctx, "edge", 2).await?;
        let status = after.status.context("no status")?;
        ensure!(
            status.keys_secret.as_deref() == Some("edge-sessions"),
            "keysSecret: {:?}",
            status.keys_secret
        );
        ensure!(
            status.key_ids == key_ids,
            "the keys changed: {key_ids:?} -> {:?}",
            status.key_ids
        );
        ensure!(
            secrets.get_opt("edge-sessions").await?.is_some(),
            "no new keys Secret"
        );

        // The old cookie opens on the new members and keeps its backend.
        let pf = fixtures::forward_array_service(&ctx, "edge").await?;
        for i in 0..10 {
            let r = jar.fetch(pf.addr, "shop.e2e.test", "/hostname").await?;
            ensure!(r.status == 200, "request {i}: {}", r.status);
            ensure!(
                r.body.trim() == backend,
                "request {i} moved from {backend} to {:?}",
                r.body
            );
        }
        let rejected = fixtures::cookies_rejected(&ctx, "edge").await? - rejected_before;
        ensure!(
            rejected == 0.0,
            "{rejected} cookies were rejected after the rename"
        );
        Ok(())
    })
    .await;
}

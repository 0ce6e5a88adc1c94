//! A session (cookie affinity) stays on its backend when the array member that started
//! it is deleted: any member can open the cookie, because members share the keyring.

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use portcullis_e2e::http::CookieJar;
use portcullis_e2e::{Ctx, fixtures, owned, wait, with_temp_ns};

#[tokio::test]
#[ignore = "needs a cluster: run e2e/cluster/e2e.sh or e2e/kind.sh"]
async fn session_survives_member_deletion() {
    with_temp_ns("session-failover", |ctx: Ctx| async move {
        fixtures::sticky_shop(&ctx, 3, 4).await?;

        let members = fixtures::forward_members(&ctx, "edge").await?;
        let names: Vec<String> = members.keys().cloned().collect();
        ensure!(names.len() == 3, "expected 3 members, got {names:?}");

        // The session starts on the first member.
        let first = &members[&names[0]];
        let mut jar = CookieJar::default();
        fixtures::wait_routed(&ctx, first.addr, "shop.e2e.test", "demo").await?;
        let r = jar.fetch(first.addr, "shop.e2e.test", "/hostname").await?;
        ensure!(r.status == 200, "first request: {}", r.status);
        jar.get(fixtures::AFFINITY_COOKIE)
            .context("no affinity cookie was set")?;
        let backend = r.body.trim().to_owned();

        // Every member continues it on the same backend.
        for name in &names {
            for _ in 0..5 {
                let r = jar
                    .fetch(members[name].addr, "shop.e2e.test", "/hostname")
                    .await?;
                ensure!(
                    r.status == 200 && r.body.trim() == backend,
                    "member {name} moved the session to {:?}",
                    r.body
                );
            }
        }

        // Delete the member that started the session; the survivors keep it at once.
        let mut members = members;
        drop(members.remove(&names[0]));
        ctx.api::<Pod>()
            .delete(&names[0], &DeleteParams::default())
            .await?;
        every_member_serves(&mut jar, &members, &backend, "right after the deletion").await?;
        drop(members);
        // So does the replacement member, once ready.
        let deleted = names[0].clone();
        wait::until("the deleted member to be replaced", ctx.timeout, || async {
            let pods = owned::ready_members(&ctx, "edge").await?;
            let ok = pods.len() == 3
                && pods
                    .iter()
                    .all(|p| kube::ResourceExt::name_any(p) != deleted);
            Ok(ok.then_some(()))
        })
        .await?;
        let members = fixtures::forward_members(&ctx, "edge").await?;
        every_member_serves(&mut jar, &members, &backend, "after failover").await?;
        let rejected = fixtures::cookies_rejected(&ctx, "edge").await?;
        ensure!(rejected == 0.0, "{rejected} cookies were rejected");
        Ok(())
    })
    .await;
}

/// Five requests with the session's cookie through each member all reach `backend`.
async fn every_member_serves(
    jar: &mut CookieJar,
    members: &std::collections::BTreeMap<String, portcullis_e2e::kubectl::PortForward>,
    backend: &str,
    when: &str,
) -> anyhow::Result<()> {
    for (name, pf) in members {
        for _ in 0..5 {
            let r = jar.fetch(pf.addr, "shop.e2e.test", "/hostname").await?;
            ensure!(
                r.status == 200 && r.body.trim() == backend,
                "{when}, {name} served {:?} instead of {backend}",
                r.body
            );
        }
    }
    Ok(())
}

//! A farm the controller cannot accept gets `Accepted=False` with a reason a person can
//! act on, while the other farms of the array keep serving.

use anyhow::ensure;
use portcullis_e2e::{Ctx, fixtures, http, with_temp_ns};

#[tokio::test]
#[ignore = "needs a cluster: run e2e/cluster/e2e.sh or e2e/kind.sh"]
async fn invalid_farm_is_reported_and_isolated() {
    with_temp_ns("invalid-farm", |ctx: Ctx| async move {
        fixtures::create_demo_backend(&ctx, "demo", 2).await?;
        let array = fixtures::array("edge", 2, |_| {});
        let good = fixtures::farm("good", "edge", "good.e2e.test", "demo", |_| {});
        fixtures::apply(&ctx, &array, &[good]).await?;
        fixtures::wait_farm_condition(&ctx, "good", "Ready", "True").await?;
        fixtures::wait_array_ready(&ctx, "edge", 2).await?;
        let pf = fixtures::forward_array_service(&ctx, "edge").await?;
        fixtures::wait_routed(&ctx, pf.addr, "good.e2e.test", "demo").await?;

        // Passes the CRD schema, but targets the cloud metadata address, which the
        // controller refuses in-cluster (the chart leaves allowPrivateTargets off).
        let bad = fixtures::farm("bad", "edge", "bad.e2e.test", "unused", |spec| {
            spec.servers = vec![fixtures::metadata_address()]
        });
        ctx.api().create(&Default::default(), &bad).await?;
        let accepted = fixtures::wait_farm_condition(&ctx, "bad", "Accepted", "False").await?;
        ensure!(
            !accepted.reason.is_empty() && !accepted.message.is_empty(),
            "Accepted=False without a reason: {accepted:?}"
        );

        // The good farm stays accepted and keeps serving; the bad host reaches nothing.
        let good = fixtures::wait_farm_condition(&ctx, "good", "Accepted", "True").await?;
        ensure!(good.status == "True");
        fixtures::wait_array_ready(&ctx, "edge", 2).await?;
        for _ in 0..20 {
            let r = http::get(pf.addr, "good.e2e.test", "/hostname", None).await?;
            ensure!(
                r.status == 200 && fixtures::served_by(&r.body, "demo"),
                "good farm: {} {:?}",
                r.status,
                r.body
            );
        }
        let r = http::get(pf.addr, "bad.e2e.test", "/hostname", None).await?;
        ensure!(
            r.status != 200,
            "the rejected farm served traffic: {:?}",
            r.body
        );

        // A farm naming an array that does not exist says so.
        let lost = fixtures::farm("lost", "edeg", "lost.e2e.test", "demo", |_| {});
        ctx.api().create(&Default::default(), &lost).await?;
        let accepted = fixtures::wait_farm_condition(&ctx, "lost", "Accepted", "False").await?;
        ensure!(
            accepted.reason == "ArrayNotFound",
            "lost farm: {accepted:?}"
        );
        Ok(())
    })
    .await;
}

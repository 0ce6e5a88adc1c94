//! A GatewayArray and two ServerFarms in front of two demo backends: traffic through the
//! array's Service reaches the farm that publishes the request's host, and only it.

use anyhow::ensure;
use portcullis_e2e::{Ctx, fixtures, http, with_temp_ns};

#[tokio::test]
#[ignore = "needs a cluster: run e2e/cluster/e2e.sh or e2e/kind.sh"]
async fn traffic_reaches_the_right_farm() {
    with_temp_ns("routing", |ctx: Ctx| async move {
        fixtures::create_demo_backend(&ctx, "demo-a", 2).await?;
        fixtures::create_demo_backend(&ctx, "demo-b", 2).await?;
        let array = fixtures::array("edge", 2, |_| {});
        let farms = [
            fixtures::farm("farm-a", "edge", "a.e2e.test", "demo-a", |_| {}),
            fixtures::farm("farm-b", "edge", "b.e2e.test", "demo-b", |_| {}),
        ];
        fixtures::apply(&ctx, &array, &farms).await?;
        for farm in ["farm-a", "farm-b"] {
            fixtures::wait_farm_condition(&ctx, farm, "Accepted", "True").await?;
            fixtures::wait_farm_condition(&ctx, farm, "ResolvedRefs", "True").await?;
            fixtures::wait_farm_condition(&ctx, farm, "Ready", "True").await?;
        }
        fixtures::wait_array_ready(&ctx, "edge", 2).await?;

        let pf = fixtures::forward_array_service(&ctx, "edge").await?;
        fixtures::wait_routed(&ctx, pf.addr, "a.e2e.test", "demo-a").await?;
        fixtures::wait_routed(&ctx, pf.addr, "b.e2e.test", "demo-b").await?;
        // Every request lands on its own farm's backend, never the other's.
        for i in 0..40 {
            let (host, backend) = if i % 2 == 0 {
                ("a.e2e.test", "demo-a")
            } else {
                ("b.e2e.test", "demo-b")
            };
            let r = http::get(pf.addr, host, "/hostname", None).await?;
            ensure!(r.status == 200, "{host}: status {}", r.status);
            ensure!(
                fixtures::served_by(&r.body, backend),
                "{host} was served by {:?}",
                r.body
            );
        }
        // A host no farm publishes reaches no backend.
        let r = http::get(pf.addr, "nobody.e2e.test", "/hostname", None).await?;
        ensure!(
            r.status == 404,
            "unpublished host answered {} {:?}",
            r.status,
            r.body
        );
        Ok(())
    })
    .await;
}

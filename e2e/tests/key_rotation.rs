//! Rotating the array keyring (annotation `portcullis.io/rotate-keys`) while clients
//! with live sessions keep sending: no cookie is rejected by any member and no session
//! moves to another backend.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use kube::api::{Patch, PatchParams};
use portcullis_crds::v1alpha1::{GatewayArray, ROTATE_KEYS_ANNOTATION};
use portcullis_e2e::http::CookieJar;
use portcullis_e2e::{Ctx, fixtures, wait, with_temp_ns};
use serde_json::json;

const CLIENTS: usize = 6;

#[tokio::test]
#[ignore = "needs a cluster: run e2e/cluster/e2e.sh or e2e/kind.sh"]
async fn rotation_under_traffic_rejects_no_cookie() {
    with_temp_ns("key-rotation", |ctx: Ctx| async move {
        let before = fixtures::sticky_shop(&ctx, 2, 4).await?;
        let old_key = before.status.as_ref().and_then(|s| s.active_key_id.clone()).context("no active key before rotation")?;
        let rejected_before = fixtures::cookies_rejected(&ctx, "edge").await?;

        let members = fixtures::forward_members(&ctx, "edge").await?;
        let ports: Vec<std::net::SocketAddr> = members.values().map(|pf| pf.addr).collect();
        fixtures::wait_routed(&ctx, ports[0], "shop.e2e.test", "demo").await?;

        // Each client starts a session and remembers its backend.
        let mut sessions = Vec::new();
        for i in 0..CLIENTS {
            let mut jar = CookieJar::default();
            let r = jar.fetch(ports[i % ports.len()], "shop.e2e.test", "/hostname").await?;
            ensure!(r.status == 200, "client {i}: {}", r.status);
            jar.get(fixtures::AFFINITY_COOKIE).context("no affinity cookie")?;
            sessions.push((jar, r.body.trim().to_owned()));
        }

        // Clients keep sending, alternating members, until told to stop.
        let stop = Arc::new(AtomicBool::new(false));
        let mut traffic = tokio::task::JoinSet::new();
        for (i, (mut jar, backend)) in sessions.into_iter().enumerate() {
            let stop = stop.clone();
            let ports = ports.clone();
            traffic.spawn(async move {
                let mut sent = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let port = ports[(i + sent) % ports.len()];
                    let r = jar.fetch(port, "shop.e2e.test", "/hostname").await?;
                    ensure!(r.status == 200, "client {i} request {sent}: status {}", r.status);
                    ensure!(r.body.trim() == backend, "client {i} moved from {backend} to {:?} at request {sent}", r.body);
                    sent += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                anyhow::Ok(sent)
            });
        }

        // Rotate, and wait until the new key is active on every member.
        let api = ctx.api::<GatewayArray>();
        let patch = json!({"metadata": {"annotations": {ROTATE_KEYS_ANNOTATION: format!("e2e-{}", std::process::id())}}});
        api.patch("edge", &PatchParams::default(), &Patch::Merge(&patch)).await?;
        let new_key = wait::until("a new active key loaded by every member", ctx.timeout, || async {
            let a = api.get("edge").await?;
            let Some(status) = a.status else { return Ok(None) };
            let Some(active) = status.active_key_id.clone() else { return Ok(None) };
            let everywhere = status.members.len() == 2
                && status.members.iter().all(|m| m.ready && m.key_ids.contains(&active));
            Ok((active != old_key && everywhere).then_some(active))
        })
        .await?;
        // Keep the traffic going a little under the new key, then stop it.
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        while let Some(result) = traffic.join_next().await {
            total += result.context("client task")??;
        }
        ensure!(total >= CLIENTS * 10, "too little traffic during the rotation: {total} requests");

        // Old cookies still open (the old key is kept as accept), and none were rejected.
        let a = api.get("edge").await?;
        let key_ids = a.status.map(|s| s.key_ids).unwrap_or_default();
        ensure!(key_ids.contains(&old_key) && key_ids.contains(&new_key), "key ids after rotation: {key_ids:?}");
        let rejected = fixtures::cookies_rejected(&ctx, "edge").await? - rejected_before;
        ensure!(rejected == 0.0, "{rejected} cookies were rejected during the rotation ({total} requests)");
        Ok(())
    })
    .await;
}

//! The chart runs two controller replicas: exactly one leads (holds the Lease and is the
//! only one that says it acquired leadership), and a leader that is deleted (SIGTERM)
//! releases the Lease so the other takes over at once, not after the lease runs out.
//! (Issue 11, finding 4: the lease was aborted on SIGTERM, leaving no leader for up to a
//! lease period, and every replica used the same field manager.)

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::ensure;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};
use portcullis_e2e::{Ctx, wait, with_temp_ns};

/// The names of the ready controller pods.
async fn ready_controllers(ctx: &Ctx) -> anyhow::Result<BTreeSet<String>> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.release_namespace);
    let selector = format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/component=controller",
        ctx.release
    );
    Ok(pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .map(|p| p.name_any())
        .collect())
}

#[tokio::test]
#[ignore = "needs a cluster: run e2e/cluster/e2e.sh or e2e/kind.sh"]
async fn one_leader_and_a_prompt_handover_on_sigterm() {
    with_temp_ns("leader_election", |ctx: Ctx| async move {
        let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), &ctx.release_namespace);
        let lease_name = format!("{}-leader", ctx.release);
        let holder = |lease: &Lease| {
            lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.clone())
                .unwrap_or_default()
        };

        // Two ready replicas, one of which holds the Lease.
        let (leader, lease_secs) = wait::until("a ready controller leads", ctx.timeout, || async {
            let ready = ready_controllers(&ctx).await?;
            let Some(lease) = leases.get_opt(&lease_name).await? else {
                return Ok(None);
            };
            let h = holder(&lease);
            let secs = lease
                .spec
                .as_ref()
                .and_then(|s| s.lease_duration_seconds)
                .unwrap_or(15);
            Ok((ready.len() >= 2 && ready.contains(&h)).then_some((h, secs)))
        })
        .await?;

        // Deleting the leader sends it SIGTERM: it must hand the Lease over at once.
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.release_namespace);
        let start = Instant::now();
        pods.delete(&leader, &DeleteParams::default()).await?;
        let lease_period = Duration::from_secs(u64::try_from(lease_secs)?);
        let next = wait::until("another replica leads", lease_period * 4, || async {
            let lease = leases.get(&lease_name).await?;
            let h = holder(&lease);
            Ok((!h.is_empty() && h != leader).then_some(h))
        })
        .await?;
        let took = start.elapsed();
        eprintln!("leadership moved from {leader} to {next} in {took:?} (lease {lease_secs}s)");
        ensure!(
            took < lease_period / 2,
            "leadership moved from {leader} to {next} only after {took:?}: a SIGTERMed leader \
             must release its {lease_secs}s Lease, not leave the array without a leader"
        );
        // The new leader is a controller replica: either the surviving one or the pod the
        // ReplicaSet started in place of the deleted leader. A fresh pod can win the
        // released Lease before its readiness probe has passed (it campaigns at start,
        // the survivor at its next retry), so wait for it to become ready rather than
        // demanding readiness at the instant of the handover.
        wait::until(
            "the new leader is a ready controller pod",
            ctx.timeout,
            || async { Ok(ready_controllers(&ctx).await?.contains(&next).then_some(())) },
        )
        .await?;
        // And it keeps the Lease: no second replica takes it back once both are ready.
        let holder_now = holder(&leases.get(&lease_name).await?);
        ensure!(
            holder_now == next,
            "leadership moved again, from {next} to {holder_now}, with no leader deleted"
        );
        Ok(())
    })
    .await;
}

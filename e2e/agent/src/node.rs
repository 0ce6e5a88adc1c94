//! The Node object: registered at start, its status (Ready, addresses, capacity)
//! heartbeated while the agent runs.

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use tracing::warn;

/// The field manager of everything the agent writes on its Node.
const MANAGER: &str = "portcullis-node-agent";

/// Creates or updates the Node `name` with its pod CIDR.
pub async fn register(client: &Client, name: &str, pod_cidr: &str) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
                "portcullis.io/local-cluster": "true",
            },
        },
        "spec": { "podCIDR": pod_cidr, "podCIDRs": [pod_cidr] },
    });
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&node),
    )
    .await
    .with_context(|| format!("failed to register node {name}"))?;
    heartbeat(&api, name, None).await
}

async fn heartbeat(api: &Api<Node>, name: &str, ip: Option<&str>) -> anyhow::Result<()> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": kind, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        })
    };
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut status = json!({
        "conditions": [
            condition("Ready", "True", "KubeletReady", "portcullis node agent is posting ready status"),
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "no memory pressure"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "no PID pressure"),
        ],
        "capacity": { "cpu": cpus.to_string(), "memory": "16Gi", "pods": "110" },
        "allocatable": { "cpu": cpus.to_string(), "memory": "16Gi", "pods": "110" },
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "",
            "kernelVersion": "", "osImage": "portcullis local cluster",
            "containerRuntimeVersion": "portcullis-node-agent://local-processes",
            "kubeletVersion": "v1.37.2", "kubeProxyVersion": "",
            "operatingSystem": "linux", "architecture": std::env::consts::ARCH,
        },
    });
    if let Some(ip) = ip {
        status["addresses"] = json!([
            { "type": "InternalIP", "address": ip },
            { "type": "Hostname", "address": name },
        ]);
    }
    // Merge patch: the whole conditions list is ours to write.
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": status })),
    )
    .await
    .with_context(|| format!("failed to update the status of node {name}"))?;
    Ok(())
}

/// Posts the Node's status every 10 s, forever.
pub async fn heartbeat_forever(client: Client, name: String, ip: String) {
    let api: Api<Node> = Api::all(client);
    loop {
        if let Err(e) = heartbeat(&api, &name, Some(&ip)).await {
            warn!(error = %format!("{e:#}"), "node heartbeat failed");
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

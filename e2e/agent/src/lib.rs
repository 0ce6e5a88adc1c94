//! A node agent for the local cluster tier: it plays the kubelet (and the scheduler) for
//! one Node of a real kube-apiserver, running each pod's containers as local processes in
//! the pod's own network namespace with its own pod IP.
//!
//! What it does, the kubelet's way: registers and heartbeats the Node; binds pending pods
//! to it; per pod, creates a network namespace on the node's bridge, writes its volumes
//! (including the projected ServiceAccount token, from a real TokenRequest), starts its
//! init containers then its containers (command/args/env as Kubernetes defines them,
//! `runAsUser`, namespaced sysctls), runs readiness/liveness/startup probes for real,
//! restarts containers with back-off, reports the pod status, and on deletion runs
//! `preStop`, SIGTERM, the grace period and SIGKILL before the final delete.
//!
//! What it does not: images are a table of local binaries (see [`images`]); no
//! ClusterIP Services (kube-proxy) and no cluster DNS, so tests reach pods by IP; no
//! streaming API (`kubectl logs`/`exec`/`port-forward`): logs are files under
//! `--log-dir`; no resource limits, no cgroups, no readOnlyRootFilesystem.

pub mod env;
pub mod images;
pub mod net;
pub mod node;
pub mod pod;
pub mod probe;
pub mod process;
pub mod volumes;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// The agent's settings (flags of `portcullis-node-agent`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The Node's name.
    pub node_name: String,
    /// The pod CIDR (a private IPv4 range); its first address is the bridge's.
    pub pod_cidr: String,
    /// The bridge's name.
    pub bridge: String,
    /// The image table (JSON).
    pub images: PathBuf,
    /// Volumes and staged binaries.
    pub state_dir: PathBuf,
    /// Container logs.
    pub log_dir: PathBuf,
    /// Where pods reach the API server.
    pub api: env::ApiEndpoint,
}

/// Runs the agent until the process is stopped.
pub async fn run(client: Client, settings: Settings) -> anyhow::Result<()> {
    net::remove_leftovers().await;
    let network = net::Network::setup(&settings.bridge, &settings.pod_cidr).await?;
    let images = images::Images::load(&settings.images, &settings.state_dir.join("images"))?;
    std::fs::create_dir_all(&settings.log_dir)
        .with_context(|| format!("failed to create {}", settings.log_dir.display()))?;
    node::register(&client, &settings.node_name, &settings.pod_cidr).await?;
    let node_ip = network.gateway().to_string();
    tokio::spawn(node::heartbeat_forever(
        client.clone(),
        settings.node_name.clone(),
        node_ip.clone(),
    ));
    let node = Arc::new(pod::Node {
        client: client.clone(),
        name: settings.node_name.clone(),
        net: network,
        images,
        state_dir: settings.state_dir.clone(),
        log_dir: settings.log_dir.clone(),
        api: settings.api.clone(),
    });
    info!(node = %settings.node_name, %node_ip, "node agent ready");

    let pods: Api<Pod> = Api::all(client.clone());
    let mut events = watcher::watcher(pods, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut workers: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    let mut finished: HashSet<String> = HashSet::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    loop {
        tokio::select! {
            Some(uid) = done_rx.recv() => {
                workers.remove(&uid);
                finished.insert(uid);
            }
            event = events.next() => {
                let Some(event) = event else { anyhow::bail!("the pod watch ended") };
                let event = match event {
                    Ok(e) => e,
                    Err(e) => { warn!(error = %e, "pod watch error"); continue; }
                };
                match event {
                    Event::Apply(pod) | Event::InitApply(pod) => {
                        let uid = pod.metadata.uid.clone().unwrap_or_default();
                        if finished.contains(&uid) {
                            continue;
                        }
                        let spec = pod.spec.as_ref();
                        match spec.and_then(|s| s.node_name.as_deref()) {
                            None => {
                                if pod.metadata.deletion_timestamp.is_none() {
                                    tokio::spawn(bind(client.clone(), pod, settings.node_name.clone()));
                                }
                            }
                            Some(n) if n == settings.node_name => {
                                if let Some(tx) = workers.get(&uid) {
                                    let _ = tx.send(Some(pod));
                                } else if !is_terminal(&pod) {
                                    let (tx, rx) = watch::channel(Some(pod));
                                    workers.insert(uid.clone(), tx);
                                    let node = node.clone();
                                    let done = done_tx.clone();
                                    tokio::spawn(async move {
                                        pod::run(node, rx).await;
                                        let _ = done.send(uid);
                                    });
                                }
                            }
                            Some(_) => {}
                        }
                    }
                    Event::Delete(pod) => {
                        let uid = pod.metadata.uid.clone().unwrap_or_default();
                        if let Some(tx) = workers.get(&uid) {
                            let _ = tx.send(None);
                        }
                    }
                    Event::Init | Event::InitDone => {}
                }
            }
        }
    }
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The scheduler's one job here: bind a pending pod to this node, if it may run here.
async fn bind(client: Client, pod: Pod, node_name: String) {
    let spec = pod.spec.clone().unwrap_or_default();
    if spec
        .scheduler_name
        .as_deref()
        .is_some_and(|s| s != "default-scheduler")
    {
        return;
    }
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client, &ns);
    let node_labels = [
        ("kubernetes.io/hostname", node_name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("portcullis.io/local-cluster", "true"),
    ];
    let fits = spec
        .node_selector
        .unwrap_or_default()
        .iter()
        .all(|(k, v)| node_labels.iter().any(|(nk, nv)| nk == k && nv == v));
    if !fits {
        let patch = json!({"status": {"conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/1 nodes are available: the node's labels do not match the pod's nodeSelector.",
        }]}});
        let _ = api
            .patch_status(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await;
        return;
    }
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": { "name": name, "namespace": ns, "uid": pod.metadata.uid },
        "target": { "apiVersion": "v1", "kind": "Node", "name": node_name },
    });
    match api
        .create_subresource::<_, serde_json::Value>(
            "binding",
            &name,
            &PostParams::default(),
            &binding,
        )
        .await
    {
        Ok(_) => info!(pod = %format!("{ns}/{name}"), node = %node_name, "bound"),
        Err(e) => warn!(pod = %format!("{ns}/{name}"), error = %e, "binding failed"),
    }
}

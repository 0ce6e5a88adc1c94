//! End-to-end tests of Portcullis on a real Kubernetes cluster (kind, via `e2e/kind.sh`).
//!
//! Every test runs inside [`with_temp_ns`]: it gets a fresh namespace labelled
//! `portcullis.io/e2e=true` and a client for the configured context, and when it fails
//! the namespace's pods, logs, events and Portcullis objects are dumped (to stderr and
//! to `PORTCULLIS_E2E_ARTIFACTS`) before the namespace is deleted, unless
//! `PORTCULLIS_E2E_KEEP=1` asks to keep it for a closer look.
//!
//! Environment:
//! - `PORTCULLIS_E2E=1` — required; without it every test returns at once (they are also
//!   `#[ignore]`d, so a plain `cargo test` never reaches them).
//! - `PORTCULLIS_E2E_CONTEXT` — the kubeconfig context (default: the current one).
//! - `PORTCULLIS_E2E_RELEASE_NAMESPACE` / `PORTCULLIS_E2E_RELEASE` — where and under which
//!   name the chart is installed (default `portcullis-system` / `portcullis`).
//! - `PORTCULLIS_E2E_KEEP=1` — keep a failed test's namespace.
//! - `PORTCULLIS_E2E_ARTIFACTS` — directory for failure dumps (default `e2e/artifacts`).
//! - `PORTCULLIS_E2E_TIMEOUT_SECS` — how long to wait for anything to become ready
//!   (default 180).
//! - `PORTCULLIS_E2E_POD_NETWORK=direct` — the test process reaches pod IPs (the local
//!   cluster of `e2e/cluster/up.sh`): "port-forwards" resolve to pod addresses.
//! - `PORTCULLIS_E2E_POD_LOGS` — where container logs are files (the local cluster's node
//!   agent writes them there), read instead of `kubectl logs`.

pub mod fixtures;
pub mod http;
pub mod kubectl;
pub mod owned;
pub mod wait;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::config::KubeConfigOptions;
use kube::{Api, Client, Config};

/// The label every e2e namespace carries, so a crashed run can be cleaned up with
/// `kubectl delete ns -l portcullis.io/e2e=true`.
pub const E2E_LABEL: &str = "portcullis.io/e2e";

/// Everything a test needs to talk to the cluster.
#[derive(Clone)]
pub struct Ctx {
    /// A client for the configured context.
    pub client: Client,
    /// The test's own namespace.
    pub ns: String,
    /// The kubeconfig context (`None`: the current one), for `kubectl` subprocesses.
    pub context: Option<String>,
    /// Where the chart is installed.
    pub release_namespace: String,
    /// The Helm release name.
    pub release: String,
    /// How long to wait for anything to become ready.
    pub timeout: Duration,
}

impl Ctx {
    /// A namespaced API in the test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// A `kubectl` invocation bound to this context (and, by default, the test namespace).
    pub fn kubectl(&self) -> kubectl::Kubectl {
        kubectl::Kubectl::new(self.context.clone(), Some(self.ns.clone()))
    }
}

/// Whether the suite is switched on (`PORTCULLIS_E2E=1`).
pub fn enabled() -> bool {
    std::env::var("PORTCULLIS_E2E").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// The kubeconfig context the suite runs against (`PORTCULLIS_E2E_CONTEXT`).
pub fn context() -> Option<String> {
    std::env::var("PORTCULLIS_E2E_CONTEXT")
        .ok()
        .filter(|v| !v.is_empty())
}

/// A client for [`context`].
pub async fn client() -> anyhow::Result<Client> {
    let options = KubeConfigOptions {
        context: context(),
        ..KubeConfigOptions::default()
    };
    let config = Config::from_kubeconfig(&options).await?;
    Ok(Client::try_from(config)?)
}

/// The context every test starts from, before its namespace exists.
pub async fn base_ctx() -> anyhow::Result<Ctx> {
    let timeout = env_or("PORTCULLIS_E2E_TIMEOUT_SECS", "180")
        .parse()
        .map_err(|e| anyhow::anyhow!("PORTCULLIS_E2E_TIMEOUT_SECS: {e}"))?;
    Ok(Ctx {
        client: client().await?,
        ns: String::new(),
        context: context(),
        release_namespace: env_or("PORTCULLIS_E2E_RELEASE_NAMESPACE", "portcullis-system"),
        release: env_or("PORTCULLIS_E2E_RELEASE", "portcullis"),
        timeout: Duration::from_secs(timeout),
    })
}

fn artifacts_dir() -> PathBuf {
    std::env::var_os("PORTCULLIS_E2E_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("artifacts"))
}

/// Runs `test` in a fresh namespace labelled `portcullis.io/e2e=true`.
///
/// Returns at once (with a note on stderr) unless `PORTCULLIS_E2E=1`. On failure (an
/// error or a panic) it dumps the namespace's state, keeps the namespace when
/// `PORTCULLIS_E2E_KEEP=1`, and fails the test with the original message.
pub async fn with_temp_ns<F, Fut>(name: &str, test: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    if !enabled() {
        eprintln!("skipping {name}: set PORTCULLIS_E2E=1 with a cluster (run e2e/kind.sh)");
        return;
    }
    let mut ctx = base_ctx()
        .await
        .expect("failed to build a Kubernetes client");
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            generate_name: Some(format!("e2e-{}-", name.replace('_', "-"))),
            labels: Some([(E2E_LABEL.to_owned(), "true".to_owned())].into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    let created = namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("failed to create the test namespace");
    ctx.ns = created
        .metadata
        .name
        .expect("the API server names the namespace");
    eprintln!("{name}: namespace {}", ctx.ns);

    // The test runs in its own task so that a panic comes back as a JoinError and the
    // namespace is still dumped and cleaned up.
    let outcome = tokio::spawn(test(ctx.clone())).await;
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panic".to_owned());
            Some(format!("panicked: {msg}"))
        }
        Err(e) => Some(format!("test task failed: {e}")),
    };

    let keep = failure.is_some() && env_or("PORTCULLIS_E2E_KEEP", "0") == "1";
    if let Some(failure) = &failure {
        let dir = artifacts_dir().join(&ctx.ns);
        dump_namespace(&ctx, &dir).await;
        eprintln!(
            "{name} failed: {failure}\nstate dumped to {}",
            dir.display()
        );
    }
    if keep {
        eprintln!(
            "keeping namespace {} (PORTCULLIS_E2E_KEEP=1); delete it with: kubectl delete ns {}",
            ctx.ns, ctx.ns
        );
    } else if let Err(e) = namespaces
        .delete(&ctx.ns, &DeleteParams::background())
        .await
    {
        eprintln!("failed to delete namespace {}: {e}", ctx.ns);
    }
    if let Some(failure) = failure {
        panic!("{name} failed in namespace {}: {failure}", ctx.ns);
    }
}

/// Writes what a person needs to understand a failure: pods (wide, and described),
/// every container's log, events, and the Portcullis objects and what they own, as
/// YAML. Also prints the pod table to stderr. Best effort: a failing command is noted,
/// never fatal.
pub async fn dump_namespace(ctx: &Ctx, dir: &std::path::Path) {
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("failed to create {}: {e}", dir.display());
    }
    let k = ctx.kubectl();
    let steps: [(&str, Vec<&str>); 6] = [
        ("pods.txt", vec!["get", "pods", "-o", "wide"]),
        ("describe-pods.txt", vec!["describe", "pods"]),
        (
            "events.txt",
            vec!["get", "events", "--sort-by=.lastTimestamp"],
        ),
        (
            "portcullis.yaml",
            vec!["get", "gatewayarrays,serverfarms", "-o", "yaml"],
        ),
        (
            "owned.yaml",
            vec![
                "get",
                "deployments,services,configmaps,poddisruptionbudgets,serviceaccounts,roles,rolebindings,endpointslices",
                "-o",
                "yaml",
            ],
        ),
        ("pods.yaml", vec!["get", "pods", "-o", "yaml"]),
    ];
    for (file, args) in steps {
        let text = k.output(&args).await.unwrap_or_else(|e| format!("{e:#}"));
        if file == "pods.txt" {
            eprintln!("--- pods in {}:\n{text}", ctx.ns);
        }
        let _ = std::fs::write(dir.join(file), text);
    }
    // Every container's log, current and previous.
    let pods = k
        .output(&[
            "get",
            "pods",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}",
        ])
        .await
        .unwrap_or_default();
    // On the local cluster there is no `kubectl logs`: the node agent writes each
    // container's output to `<dir>/<namespace>_<pod>_<container>.log`.
    if let Some(logs) = std::env::var_os("PORTCULLIS_E2E_POD_LOGS").map(PathBuf::from) {
        let prefix = format!("{}_", ctx.ns);
        for entry in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                let _ = std::fs::copy(entry.path(), dir.join(&name));
            }
        }
        return;
    }
    for pod in pods.lines().filter(|p| !p.is_empty()) {
        for (suffix, extra) in [("log", None), ("previous.log", Some("--previous"))] {
            let mut args = vec!["logs", pod, "--all-containers", "--timestamps"];
            args.extend(extra);
            if let Ok(text) = k.output(&args).await {
                let _ = std::fs::write(dir.join(format!("{pod}.{suffix}")), text);
            }
        }
    }
}

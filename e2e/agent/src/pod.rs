//! One pod's life on the node: sandbox, volumes, init containers, containers under
//! supervision (restarts with back-off, probes), status, and graceful deletion (`preStop`,
//! SIGTERM, the grace period, SIGKILL, then the final delete the kubelet makes).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client};
use nix::sys::signal::Signal;
use serde_json::json;
use tokio::sync::{Mutex, Notify, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::env::{self, ApiEndpoint};
use crate::images::{ImageSpec, Images};
use crate::net::{Network, Sandbox};
use crate::probe::{self, Target};
use crate::process::{self, Identity, Launch, Mount};

/// What every pod worker shares: the node's parts.
pub struct Node {
    /// The API client.
    pub client: Client,
    /// The Node's name.
    pub name: String,
    /// The pod network.
    pub net: Network,
    /// The image table.
    pub images: Images,
    /// Volumes live under `state_dir/pods/<uid>`.
    pub state_dir: PathBuf,
    /// Container logs: `log_dir/<namespace>_<pod>_<container>.log`.
    pub log_dir: PathBuf,
    /// Where pods reach the API server.
    pub api: ApiEndpoint,
}

/// How a stop was asked for: `Some(deadline)` is graceful (the pod's grace period),
/// `None` is at once (the pod object is already gone).
type StopSignal = Option<Instant>;

/// A pod's mutable view, shared by its container supervisors and its status writer.
#[derive(Debug)]
struct PodState {
    statuses: Mutex<Statuses>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct Statuses {
    init: Vec<ContainerStatus>,
    containers: Vec<ContainerStatus>,
    initialized: bool,
    sandbox_ip: Option<String>,
    transitions: BTreeMap<String, (String, Time)>,
    message: Option<String>,
}

fn now() -> Time {
    Time(Timestamp::now())
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_owned()),
            message,
        }),
        ..ContainerState::default()
    }
}

fn initial_status(c: &Container) -> ContainerStatus {
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        image_id: String::new(),
        ready: false,
        restart_count: 0,
        started: Some(false),
        state: Some(waiting("ContainerCreating", None)),
        ..ContainerStatus::default()
    }
}

/// Runs one pod until it is deleted. `rx` carries the latest pod object (`None` once the
/// object is gone from the API).
pub async fn run(node: Arc<Node>, mut rx: watch::Receiver<Option<Pod>>) {
    let Some(pod) = rx.borrow().clone() else {
        return;
    };
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(node.client.clone(), &ns);
    info!(pod = %format!("{ns}/{name}"), "starting pod");

    let state = Arc::new(PodState {
        statuses: Mutex::new(Statuses {
            init: spec
                .init_containers
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(initial_status)
                .collect(),
            containers: spec.containers.iter().map(initial_status).collect(),
            ..Statuses::default()
        }),
        changed: Notify::new(),
    });

    // The status writer runs for the pod's whole life.
    let writer = tokio::spawn(status_writer(
        api.clone(),
        name.clone(),
        node.net.gateway().to_string(),
        pod.clone(),
        state.clone(),
    ));

    let (stop_tx, stop_rx) = watch::channel::<Option<StopSignal>>(None);
    let pod_dir = node.state_dir.join("pods").join(&uid);

    // Sandbox, sysctls and volumes; retried until they work or the pod goes away.
    let mut sandbox: Option<Sandbox> = None;
    let mut mounts_by_volume: BTreeMap<String, PathBuf> = BTreeMap::new();
    loop {
        if deletion_requested(&rx).is_some() {
            break;
        }
        let attempt = async {
            if sandbox.is_none() {
                let created = node.net.create_sandbox(&uid).await?;
                for sysctl in spec
                    .security_context
                    .as_ref()
                    .and_then(|s| s.sysctls.clone())
                    .unwrap_or_default()
                {
                    node.net
                        .sysctl(&created, &sysctl.name, &sysctl.value)
                        .await?;
                }
                sandbox = Some(created);
            }
            let current = rx.borrow().clone().unwrap_or_else(|| pod.clone());
            mounts_by_volume =
                crate::volumes::materialize(&node.client, &current, &pod_dir.join("volumes"), true)
                    .await?;
            anyhow::Ok(())
        }
        .await;
        match attempt {
            Ok(()) => break,
            Err(e) => {
                warn!(pod = %format!("{ns}/{name}"), error = %format!("{e:#}"), "pod set-up failed; retrying");
                state.statuses.lock().await.message = Some(format!("{e:#}"));
                state.changed.notify_one();
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(3)) => {}
                    _ = rx.changed() => {}
                }
            }
        }
    }
    {
        let mut s = state.statuses.lock().await;
        s.sandbox_ip = sandbox.as_ref().map(|s| s.ip.to_string());
        s.message = None;
    }
    state.changed.notify_one();

    let mut supervisors = Vec::new();
    if let Some(sandbox) = &sandbox {
        let shared = Arc::new(Running {
            node: node.clone(),
            pod: pod.clone(),
            sandbox: sandbox.clone(),
            volumes: mounts_by_volume.clone(),
            state: state.clone(),
        });
        let init_ok = run_init_containers(&shared, stop_rx.clone()).await;
        if init_ok {
            state.statuses.lock().await.initialized = true;
            state.changed.notify_one();
            for (index, _) in spec.containers.iter().enumerate() {
                supervisors.push(tokio::spawn(supervise(
                    shared.clone(),
                    index,
                    stop_rx.clone(),
                )));
            }
        }
    }

    // Wait for deletion, refreshing ConfigMap and Secret volumes every minute and tokens
    // every 40 minutes (80% of the 3607 s the ServiceAccount admission plugin asks for).
    let mut refresh = tokio::time::interval(Duration::from_secs(60));
    refresh.tick().await;
    let mut tokens_renewed = Instant::now();
    let stop = loop {
        if let Some(stop) = deletion_requested(&rx) {
            break stop;
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    break None;
                }
            }
            _ = refresh.tick() => {
                let current = rx.borrow().clone();
                let new_tokens = tokens_renewed.elapsed() > Duration::from_secs(40 * 60);
                if new_tokens {
                    tokens_renewed = Instant::now();
                }
                if let Some(current) = current.filter(|p| p.metadata.deletion_timestamp.is_none())
                    && let Err(e) = crate::volumes::materialize(&node.client, &current, &pod_dir.join("volumes"), new_tokens).await {
                        warn!(pod = %format!("{ns}/{name}"), error = %format!("{e:#}"), "volume refresh failed");
                    }
            }
        }
    };
    info!(pod = %format!("{ns}/{name}"), graceful = stop.is_some(), "stopping pod");
    let _ = stop_tx.send(Some(stop));
    for s in supervisors {
        let _ = s.await;
    }
    writer.abort();
    if let Some(sandbox) = &sandbox {
        node.net.destroy(sandbox).await;
    }
    let _ = std::fs::remove_dir_all(&pod_dir);
    // The kubelet's final delete: grace 0, only this incarnation of the pod.
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    if rx.borrow().is_some()
        && let Err(e) = api.delete(&name, &dp).await
    {
        warn!(pod = %format!("{ns}/{name}"), error = %e, "final delete failed");
    }
    info!(pod = %format!("{ns}/{name}"), "pod stopped");
}

/// `Some(stop)` once the pod is being deleted (or is gone).
fn deletion_requested(rx: &watch::Receiver<Option<Pod>>) -> Option<StopSignal> {
    match &*rx.borrow() {
        None => Some(None),
        Some(pod) if pod.metadata.deletion_timestamp.is_some() => {
            let grace = pod
                .metadata
                .deletion_grace_period_seconds
                .unwrap_or(30)
                .max(0);
            Some(Some(
                Instant::now() + Duration::from_secs(u64::try_from(grace).unwrap_or(30)),
            ))
        }
        Some(_) => None,
    }
}

/// The parts a container supervisor needs.
struct Running {
    node: Arc<Node>,
    pod: Pod,
    sandbox: Sandbox,
    volumes: BTreeMap<String, PathBuf>,
    state: Arc<PodState>,
}

impl Running {
    fn restart_policy(&self) -> &str {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always")
    }

    async fn set(&self, init: bool, index: usize, f: impl FnOnce(&mut ContainerStatus)) {
        {
            let mut s = self.state.statuses.lock().await;
            let list = if init { &mut s.init } else { &mut s.containers };
            if let Some(status) = list.get_mut(index) {
                f(status);
            }
        }
        self.state.changed.notify_one();
    }

    fn identity(&self, container: &Container) -> Identity {
        let pod_sc = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.as_ref());
        let sc = container.security_context.as_ref();
        Identity {
            uid: sc
                .and_then(|s| s.run_as_user)
                .or_else(|| pod_sc.and_then(|s| s.run_as_user)),
            gid: sc
                .and_then(|s| s.run_as_group)
                .or_else(|| pod_sc.and_then(|s| s.run_as_group)),
            no_new_privs: sc.and_then(|s| s.allow_privilege_escalation) == Some(false),
        }
    }

    fn run_as_non_root(&self, container: &Container) -> bool {
        let pod_sc = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.as_ref());
        container
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_non_root)
            .or_else(|| pod_sc.and_then(|s| s.run_as_non_root))
            .unwrap_or(false)
    }

    fn mounts(&self, container: &Container) -> Result<Vec<Mount>, String> {
        container
            .volume_mounts
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|m| {
                let mut source = self
                    .volumes
                    .get(&m.name)
                    .cloned()
                    .ok_or_else(|| format!("volume {:?} not found", m.name))?;
                if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                    if sub.split('/').any(|p| p == "..") {
                        return Err(format!("subPath {sub:?} leaves the volume"));
                    }
                    source = source.join(sub);
                }
                Ok(Mount {
                    source,
                    target: m.mount_path.clone(),
                    read_only: m.read_only.unwrap_or(false),
                })
            })
            .collect()
    }

    fn log_path(&self, container: &str) -> PathBuf {
        let ns = self.pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = self.pod.metadata.name.as_deref().unwrap_or_default();
        self.node
            .log_dir
            .join(format!("{ns}_{name}_{container}.log"))
    }

    /// Everything needed to start `container`, or the waiting reason and message.
    async fn prepare(
        &self,
        container: &Container,
    ) -> Result<(ImageSpec, Vec<String>, Vec<(String, String)>, Vec<Mount>), (String, String)> {
        let image_ref = container.image.clone().unwrap_or_default();
        let image = self
            .node
            .images
            .find(&image_ref)
            .map_err(|m| ("ErrImagePull".to_owned(), m))?
            .clone();
        let env = env::build(&self.node.client, &self.pod, container, &self.node.api)
            .await
            .map_err(|e| ("CreateContainerConfigError".to_owned(), format!("{e:#}")))?;
        let command = env::expand_all(container.command.as_deref().unwrap_or_default(), &env);
        let args = env::expand_all(container.args.as_deref().unwrap_or_default(), &env);
        let argv = image
            .argv(&command, &args)
            .map_err(|m| ("RunContainerError".to_owned(), m))?;
        let identity = self.identity(container);
        if self.run_as_non_root(container) && identity.uid.unwrap_or(image.user.unwrap_or(0)) == 0 {
            return Err((
                "CreateContainerConfigError".to_owned(),
                "container has runAsNonRoot and image will run as root".to_owned(),
            ));
        }
        let mounts = self
            .mounts(container)
            .map_err(|m| ("CreateContainerConfigError".to_owned(), m))?;
        Ok((image, argv, env, mounts))
    }
}

async fn run_init_containers(
    run: &Arc<Running>,
    mut stop: watch::Receiver<Option<StopSignal>>,
) -> bool {
    let inits = run
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.clone())
        .unwrap_or_default();
    for (index, container) in inits.iter().enumerate() {
        loop {
            if stop.borrow().is_some() {
                return false;
            }
            let (image, argv, env, mounts) = match run.prepare(container).await {
                Ok(p) => p,
                Err((reason, message)) => {
                    run.set(true, index, |s| {
                        s.state = Some(waiting(&reason, Some(message)))
                    })
                    .await;
                    let _ = tokio::time::timeout(Duration::from_secs(5), stop.changed()).await;
                    continue;
                }
            };
            let mut identity = run.identity(container);
            identity.uid = identity.uid.or(image.user);
            let name = run.pod.metadata.name.clone().unwrap_or_default();
            let launch = Launch {
                netns: &run.sandbox.netns,
                hostname: &name,
                argv: &argv,
                env: &env,
                mounts: &mounts,
                identity,
                working_dir: container.working_dir.as_deref(),
                log: &run.log_path(&container.name),
            };
            let started_at = now();
            let code = match process::spawn(&launch) {
                Ok(mut child) => {
                    run.set(true, index, |s| {
                        s.state = Some(ContainerState {
                            running: Some(ContainerStateRunning {
                                started_at: Some(started_at.clone()),
                            }),
                            ..ContainerState::default()
                        });
                    })
                    .await;
                    child.wait().await.ok().and_then(|s| s.code()).unwrap_or(-1)
                }
                Err(e) => {
                    run.set(true, index, |s| {
                        s.state = Some(waiting("RunContainerError", Some(format!("{e:#}"))))
                    })
                    .await;
                    -1
                }
            };
            let terminated = terminated_state(code, started_at);
            run.set(true, index, |s| {
                s.ready = code == 0;
                s.state = Some(terminated);
            })
            .await;
            if code == 0 {
                break;
            }
            if run.restart_policy() == "Never" {
                return false;
            }
            run.set(true, index, |s| s.restart_count += 1).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    true
}

fn terminated_state(code: i32, started_at: Time) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: code,
            reason: Some(if code == 0 { "Completed" } else { "Error" }.to_owned()),
            started_at: Some(started_at),
            finished_at: Some(now()),
            ..ContainerStateTerminated::default()
        }),
        ..ContainerState::default()
    }
}

fn probe_period(p: &k8s_openapi::api::core::v1::Probe) -> Duration {
    Duration::from_secs(u64::try_from(p.period_seconds.unwrap_or(10).max(1)).unwrap_or(10))
}

fn probe_delay(p: &k8s_openapi::api::core::v1::Probe) -> Duration {
    Duration::from_secs(u64::try_from(p.initial_delay_seconds.unwrap_or(0).max(0)).unwrap_or(0))
}

enum Outcome {
    Exited(i32),
    Unhealthy(String),
    Stop(StopSignal),
}

/// Runs, probes and restarts one container until the pod stops.
async fn supervise(run: Arc<Running>, index: usize, mut stop: watch::Receiver<Option<StopSignal>>) {
    let container = run
        .pod
        .spec
        .as_ref()
        .map(|s| s.containers[index].clone())
        .unwrap_or_default();
    let pod_name = run.pod.metadata.name.clone().unwrap_or_default();
    let mut backoff = Duration::from_secs(1);
    loop {
        if stop.borrow().is_some() {
            return;
        }
        let (image, argv, env, mounts) = match run.prepare(&container).await {
            Ok(p) => p,
            Err((reason, message)) => {
                run.set(false, index, |s| {
                    s.state = Some(waiting(&reason, Some(message)))
                })
                .await;
                let _ = tokio::time::timeout(Duration::from_secs(10), stop.changed()).await;
                continue;
            }
        };
        let mut identity = run.identity(&container);
        identity.uid = identity.uid.or(image.user);
        let log = run.log_path(&container.name);
        let launch = Launch {
            netns: &run.sandbox.netns,
            hostname: &pod_name,
            argv: &argv,
            env: &env,
            mounts: &mounts,
            identity,
            working_dir: container.working_dir.as_deref(),
            log: &log,
        };
        let mut child = match process::spawn(&launch) {
            Ok(child) => child,
            Err(e) => {
                run.set(false, index, |s| {
                    s.state = Some(waiting("RunContainerError", Some(format!("{e:#}"))))
                })
                .await;
                let _ = tokio::time::timeout(backoff, stop.changed()).await;
                backoff = (backoff * 2).min(Duration::from_secs(20));
                continue;
            }
        };
        let pid = child.id().unwrap_or_default();
        let started_at = now();
        let has_startup = container.startup_probe.is_some();
        run.set(false, index, |s| {
            s.state = Some(ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(started_at.clone()),
                }),
                ..ContainerState::default()
            });
            s.started = Some(!has_startup);
            s.ready = false;
            s.container_id = Some(format!("local://{pid}"));
        })
        .await;
        let target = Target {
            ip: run.sandbox.ip,
            container: &container,
            pid,
            env: &env,
            identity,
            image: &image,
        };

        let begun = Instant::now();
        let mut started = !has_startup;
        let mut ready = false;
        let (mut r_ok, mut r_fail, mut l_fail, mut s_fail) = (0i32, 0i32, 0i32, 0i32);
        let mut next_startup = container
            .startup_probe
            .as_ref()
            .map(|p| begun + probe_delay(p));
        let mut next_ready = container
            .readiness_probe
            .as_ref()
            .map(|p| begun + probe_delay(p));
        let mut next_live = container
            .liveness_probe
            .as_ref()
            .map(|p| begun + probe_delay(p));
        if container.readiness_probe.is_none() && started {
            ready = true;
            run.set(false, index, |s| s.ready = true).await;
        }
        let far = begun + Duration::from_secs(86_400 * 365);
        let outcome = loop {
            let next = if started {
                [next_ready, next_live]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(far)
            } else {
                next_startup.unwrap_or(far)
            };
            tokio::select! {
                status = child.wait() => {
                    break Outcome::Exited(status.ok().and_then(|s| s.code().or_else(|| {
                        use std::os::unix::process::ExitStatusExt as _;
                        s.signal().map(|sig| 128 + sig)
                    })).unwrap_or(-1));
                }
                _ = stop.changed() => {
                    if let Some(signal) = *stop.borrow() {
                        break Outcome::Stop(signal);
                    }
                }
                () = tokio::time::sleep_until(next) => {
                    let at = Instant::now();
                    if !started {
                        let Some(p) = container.startup_probe.as_ref() else { continue };
                        next_startup = Some(at + probe_period(p));
                        match probe::run(p, &target).await {
                            Ok(()) => {
                                started = true;
                                run.set(false, index, |s| s.started = Some(true)).await;
                                if container.readiness_probe.is_none() {
                                    ready = true;
                                    run.set(false, index, |s| s.ready = true).await;
                                }
                            }
                            Err(msg) => {
                                s_fail += 1;
                                if s_fail >= p.failure_threshold.unwrap_or(3) {
                                    break Outcome::Unhealthy(format!("Startup probe failed: {msg}"));
                                }
                            }
                        }
                        continue;
                    }
                    if let Some(p) = container.readiness_probe.as_ref()
                        && next_ready.is_some_and(|n| n <= at)
                    {
                        next_ready = Some(at + probe_period(p));
                        let result = probe::run(p, &target).await;
                        let was = ready;
                        match result {
                            Ok(()) => {
                                r_fail = 0;
                                r_ok += 1;
                                if r_ok >= p.success_threshold.unwrap_or(1) { ready = true; }
                            }
                            Err(_) => {
                                r_ok = 0;
                                r_fail += 1;
                                if r_fail >= p.failure_threshold.unwrap_or(3) || !was { ready = false; }
                            }
                        }
                        if was != ready {
                            run.set(false, index, |s| s.ready = ready).await;
                        }
                    }
                    if let Some(p) = container.liveness_probe.as_ref()
                        && next_live.is_some_and(|n| n <= at)
                    {
                        next_live = Some(at + probe_period(p));
                        match probe::run(p, &target).await {
                            Ok(()) => l_fail = 0,
                            Err(msg) => {
                                l_fail += 1;
                                if l_fail >= p.failure_threshold.unwrap_or(3) {
                                    break Outcome::Unhealthy(format!("Liveness probe failed: {msg}"));
                                }
                            }
                        }
                    }
                }
            }
        };
        run.set(false, index, |s| s.ready = false).await;
        let code = match outcome {
            Outcome::Exited(code) => code,
            Outcome::Unhealthy(why) => {
                warn!(pod = %pod_name, container = %container.name, %why, "restarting container");
                let grace = Instant::now() + pod_grace(&run.pod);
                terminate(&run, &container, &target, &mut child, Some(grace)).await
            }
            Outcome::Stop(signal) => {
                let code = terminate(&run, &container, &target, &mut child, signal).await;
                run.set(false, index, |s| {
                    s.state = Some(terminated_state(code, started_at.clone()))
                })
                .await;
                return;
            }
        };
        let terminated = terminated_state(code, started_at);
        let restart = match run.restart_policy() {
            "Never" => false,
            "OnFailure" => code != 0,
            _ => true,
        };
        if !restart {
            run.set(false, index, |s| s.state = Some(terminated)).await;
            return;
        }
        if begun.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        run.set(false, index, |s| {
            s.last_state = Some(terminated);
            s.restart_count += 1;
            s.state = Some(waiting(
                "CrashLoopBackOff",
                Some(format!(
                    "back-off {backoff:?} restarting failed container={}",
                    container.name
                )),
            ));
        })
        .await;
        let _ = tokio::time::timeout(backoff, stop.changed()).await;
        backoff = (backoff * 2).min(Duration::from_secs(20));
    }
}

fn pod_grace(pod: &Pod) -> Duration {
    let secs = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30)
        .max(0);
    Duration::from_secs(u64::try_from(secs).unwrap_or(30))
}

/// `preStop`, SIGTERM, the rest of the grace period, SIGKILL; returns the exit code.
async fn terminate(
    run: &Running,
    container: &Container,
    target: &Target<'_>,
    child: &mut tokio::process::Child,
    deadline: StopSignal,
) -> i32 {
    let pod_name = run.pod.metadata.name.clone().unwrap_or_default();
    if let Some(deadline) = deadline {
        if let Some(pre_stop) = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
        {
            let budget = deadline.saturating_duration_since(Instant::now());
            let hook = async {
                if let Some(exec) = &pre_stop.exec {
                    probe::exec_action(exec, target, budget).await
                } else if let Some(http) = &pre_stop.http_get {
                    probe::http_get(http, target, budget).await
                } else if let Some(sleep) = &pre_stop.sleep {
                    tokio::time::sleep(Duration::from_secs(
                        u64::try_from(sleep.seconds).unwrap_or(0),
                    ))
                    .await;
                    Ok(())
                } else {
                    Ok(())
                }
            };
            tokio::select! {
                result = hook => if let Err(e) = result {
                    warn!(pod = %pod_name, container = %container.name, error = %e, "preStop hook failed");
                },
                status = child.wait() => {
                    return status.ok().and_then(|s| s.code()).unwrap_or(137);
                }
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
        process::signal(target.pid, Signal::SIGTERM);
        if let Ok(Ok(status)) = tokio::time::timeout_at(deadline, child.wait()).await {
            use std::os::unix::process::ExitStatusExt as _;
            return status
                .code()
                .or_else(|| status.signal().map(|s| 128 + s))
                .unwrap_or(143);
        }
        warn!(pod = %pod_name, container = %container.name, "grace period over; killing");
    }
    process::signal(target.pid, Signal::SIGKILL);
    let _ = child.wait().await;
    137
}

/// Patches the pod's status whenever something changed (and now and then regardless).
async fn status_writer(
    api: Api<Pod>,
    name: String,
    host_ip: String,
    pod: Pod,
    state: Arc<PodState>,
) {
    let mut last = serde_json::Value::Null;
    loop {
        let status = {
            let mut s = state.statuses.lock().await;
            build_status(&pod, &host_ip, &mut s)
        };
        if status != last {
            let patch = json!({ "status": status });
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => last = status,
                Err(e) => warn!(pod = %name, error = %e, "status update failed"),
            }
        }
        tokio::select! {
            () = state.changed.notified() => tokio::time::sleep(Duration::from_millis(50)).await,
            () = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

fn build_status(pod: &Pod, host_ip: &str, s: &mut Statuses) -> serde_json::Value {
    let all_started = s.initialized
        && s.containers.iter().all(|c| {
            c.restart_count > 0 || c.state.as_ref().is_some_and(|st| st.waiting.is_none())
        });
    let all_terminated = s
        .containers
        .iter()
        .all(|c| c.state.as_ref().is_some_and(|st| st.terminated.is_some()));
    let phase = if !all_started {
        "Pending"
    } else if all_terminated {
        if s.containers.iter().all(|c| {
            c.state
                .as_ref()
                .and_then(|st| st.terminated.as_ref())
                .is_some_and(|t| t.exit_code == 0)
        }) {
            "Succeeded"
        } else {
            "Failed"
        }
    } else {
        "Running"
    };
    let containers_ready = s.initialized && s.containers.iter().all(|c| c.ready);
    let conditions = [
        ("PodScheduled", true),
        ("PodReadyToStartContainers", s.sandbox_ip.is_some()),
        ("Initialized", s.initialized),
        ("ContainersReady", containers_ready),
        ("Ready", containers_ready),
    ];
    let mut out = Vec::new();
    for (kind, ok) in conditions {
        let value = if ok { "True" } else { "False" }.to_owned();
        let entry = s
            .transitions
            .entry(kind.to_owned())
            .or_insert_with(|| (value.clone(), now()));
        if entry.0 != value {
            *entry = (value.clone(), now());
        }
        out.push(PodCondition {
            type_: kind.to_owned(),
            status: value,
            last_transition_time: Some(entry.1.clone()),
            ..PodCondition::default()
        });
    }
    let start_time = pod
        .status
        .as_ref()
        .and_then(|st| st.start_time.clone())
        .or_else(|| s.transitions.get("PodScheduled").map(|t| t.1.clone()));
    let mut status = json!({
        "phase": phase,
        "conditions": out,
        "hostIP": host_ip,
        "hostIPs": [HostIP { ip: host_ip.to_owned() }],
        "startTime": start_time,
        "containerStatuses": s.containers,
        "qosClass": pod.status.as_ref().and_then(|st| st.qos_class.clone()).unwrap_or_else(|| "BestEffort".into()),
    });
    if !s.init.is_empty() {
        status["initContainerStatuses"] = json!(s.init);
    }
    if let Some(ip) = &s.sandbox_ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([PodIP { ip: ip.clone() }]);
    }
    if let Some(message) = &s.message {
        status["message"] = json!(message);
    }
    status
}

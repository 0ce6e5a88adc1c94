//! Wiring: the API client, the admin port, leader election, the watches and the
//! controller loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::watcher;
use kube::runtime::{Controller, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use portcullis_crds::ingress::{INGRESS_LABEL, Migration};
use portcullis_crds::v1alpha1::{GatewayArray, ServerFarm};

use crate::admin::{self, Admin};
use crate::builders::FIELD_MANAGER;
use crate::ingress::{IngressContext, ingress_error_policy, reconcile_ingress};
use crate::leader::{self, ElectionConfig, ElectionError, Leadership};
use crate::mapping;
use crate::members::HttpMemberStatus;
use crate::metrics::Metrics;
use crate::reconcile::{self, Context, Settings};

/// Everything `run` needs, from flags.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Admin listen address.
    pub admin: SocketAddr,
    /// Controller settings.
    pub settings: Settings,
    /// Namespace to watch; all when `None`.
    pub watch_namespace: Option<String>,
    /// Lease name and namespace when leader election is on.
    pub leader_election: Option<(String, String)>,
    /// This replica's identity (pod name).
    pub identity: String,
    /// Whether Ingresses are served.
    pub serve_ingress: bool,
    /// Classes served besides Portcullis's own IngressClasses.
    pub migration: Migration,
}

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No Kubernetes client could be built.
    #[error("failed to create a Kubernetes client")]
    Client(#[source] kube::Error),
    /// The admin port could not be bound.
    #[error("failed to bind the admin address {addr}")]
    Admin {
        /// The address.
        addr: SocketAddr,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
    /// Leader election failed.
    #[error("failed to run leader election")]
    Lease(#[source] ElectionError),
    /// Leadership was lost; the process exits so a fresh one can compete again.
    #[error("lost leadership of the lease; exiting")]
    LostLease,
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the controller until SIGTERM/ctrl-c, or until leadership is lost.
pub async fn run(config: RunConfig) -> Result<(), RunError> {
    let client = Client::try_default().await.map_err(RunError::Client)?;
    let metrics = Metrics::default();
    let admin = Arc::new(Admin {
        registry: metrics.registry(),
        ready: AtomicBool::new(false),
    });
    let _admin_task = admin::serve(config.admin, admin.clone())
        .await
        .map_err(|source| RunError::Admin {
            addr: config.admin,
            source,
        })?;
    let mut leadership = match lead(&config, &client, &admin).await? {
        Lead::Stopped => return Ok(()),
        Lead::Alone => None,
        Lead::Elected(leadership) => Some(leadership),
    };
    let lost = Arc::new(AtomicBool::new(false));
    let shutdown = shutdown_signal(leadership.as_mut().map(Leadership::lost), lost.clone());

    let ns = config.watch_namespace.as_deref();
    let farms: Api<ServerFarm> = api(&client, ns);
    // Farms are kept in a store so Service, EndpointSlice and Secret changes can be
    // mapped to the arrays whose farms name them.
    let farm_store = spawn_reflector(farms.clone());
    let controller = array_controller(&client, ns, &config.settings, &farm_store);
    spawn_gauge_pruner(controller.store(), metrics.clone());
    let ctx = context(&client, &config, metrics);
    admin.ready.store(true, Ordering::Relaxed);
    tracing::info!(
        namespace = ns.unwrap_or("<all>"),
        watch_secrets = config.settings.watch_secrets,
        "controller started"
    );
    let farm_controller = farm_controller(&client, ns, farms, &farm_store, shutdown.clone()).run(
        reconcile::reconcile_farm,
        reconcile::farm_error_policy,
        ctx.clone(),
    );
    let ingress_controller = if config.serve_ingress {
        let controller = ingress_controller(&client, ns, shutdown.clone());
        let classes = spawn_reflector(Api::<IngressClass>::all(client.clone()));
        let ictx = Arc::new(
            IngressContext::new(ctx.clone(), config.migration.clone())
                .with_stores(classes, controller.store()),
        );
        let run = controller.run(reconcile_ingress, ingress_error_policy, ictx);
        drive(run, "ingress").boxed()
    } else {
        futures::future::ready(()).boxed()
    };
    let array_controller = controller.graceful_shutdown_on(shutdown).run(
        reconcile::reconcile,
        reconcile::error_policy,
        ctx,
    );
    futures::future::join3(
        drive(array_controller, "array"),
        drive(farm_controller, "farm"),
        ingress_controller,
    )
    .await;
    stop(leadership, lost.load(Ordering::Relaxed)).await
}

/// Runs a controller to its end; reconcile errors are reported by the error policies
/// (events, status, metrics), so here they are only traced.
async fn drive<T, E: std::fmt::Display>(
    run: impl futures::Stream<Item = Result<T, E>>,
    controller: &'static str,
) {
    run.for_each(|result| {
        if let Err(e) = result {
            tracing::debug!(error = %e, controller, "controller event");
        }
        futures::future::ready(())
    })
    .await;
}

/// Keeps what `api` lists in a store, watched for as long as the process runs.
fn spawn_reflector<K>(api: Api<K>) -> reflector::Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let reflector = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    )
    .touched_objects()
    .for_each(|_| futures::future::ready(()));
    tokio::spawn(reflector);
    store
}

/// What every reconcile shares: the client, settings, member probe, event recorder and
/// metrics.
fn context(client: &Client, config: &RunConfig, metrics: Metrics) -> Arc<Context> {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: Some(config.identity.clone()),
        },
    );
    Arc::new(Context::new(
        client.clone(),
        config.settings.clone(),
        Arc::new(HttpMemberStatus::new(Duration::from_secs(2))),
        recorder,
        metrics,
    ))
}

/// How leader election went.
enum Lead {
    /// Leader election is off.
    Alone,
    /// This replica leads.
    Elected(Leadership),
    /// Stopped while standing by.
    Stopped,
}

/// Waits for leadership when leader election is on.
async fn lead(config: &RunConfig, client: &Client, admin: &Admin) -> Result<Lead, RunError> {
    let Some((lease_name, lease_ns)) = &config.leader_election else {
        return Ok(Lead::Alone);
    };
    // Ready as a standby too: readiness says the process works, not that it leads.
    admin.ready.store(true, Ordering::Relaxed);
    tracing::info!(lease = %lease_name, namespace = %lease_ns, identity = %config.identity, "waiting for leadership");
    let election = ElectionConfig::new(lease_name, lease_ns, &config.identity);
    // A standby stops on SIGTERM too, instead of waiting for the kubelet's SIGKILL.
    tokio::select! {
        acquired = leader::acquire(client.clone(), election) => acquired.map(Lead::Elected).map_err(RunError::Lease),
        () = terminate_or(async { let _ = tokio::signal::ctrl_c().await; }) => {
            tracing::info!("stopped while standing by");
            Ok(Lead::Stopped)
        }
    }
}

/// Completes on SIGTERM, ctrl-c, or when leadership is lost (`lost_rx`; then `lost` is
/// set).
fn shutdown_signal(
    lost_rx: Option<impl std::future::Future<Output = ()> + Send + 'static>,
    lost: Arc<AtomicBool>,
) -> impl std::future::Future<Output = ()> + Clone + Send + 'static {
    let shutdown = async move {
        let lost_rx = async move {
            match lost_rx {
                Some(lost) => lost.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("shutting down"),
            () = lost_rx => {
                lost.store(true, Ordering::Relaxed);
                tracing::error!("lost leadership; stopping");
            }
        }
    };
    terminate_or(shutdown).shared()
}

/// The array controller with its watches: the objects arrays own, and the farms,
/// EndpointSlices, Services (and Secrets, when watched) that map to arrays.
fn array_controller(
    client: &Client,
    ns: Option<&str>,
    settings: &Settings,
    farm_store: &reflector::Store<ServerFarm>,
) -> Controller<GatewayArray> {
    let managed =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"));
    let placements = mapping::FarmPlacements::default();
    let mut controller =
        Controller::new(api::<GatewayArray>(client, ns), watcher::Config::default())
            .owns(api::<Deployment>(client, ns), managed.clone())
            .owns(api::<ConfigMap>(client, ns), managed.clone())
            .owns(api::<Service>(client, ns), managed.clone())
            .watches(
                api::<ServerFarm>(client, ns),
                watcher::Config::default(),
                move |farm| placements.arrays_for_farm(&farm),
            );
    let array_store = controller.store();
    // An IngressClass decides which Ingresses' farms (from other namespaces) its array
    // publishes.
    controller = controller.watches(
        Api::<IngressClass>::all(client.clone()),
        watcher::Config::default(),
        |class| {
            portcullis_crds::ingress::class_array(&class)
                .map(|(ns, name)| reflector::ObjectRef::new(&name).within(&ns))
        },
    );
    let fs = farm_store.clone();
    controller = controller.watches(
        api::<EndpointSlice>(client, ns),
        watcher::Config::default(),
        move |slice| mapping::arrays_for_endpoint_slice(&slice, &fs.state()),
    );
    let fs = farm_store.clone();
    controller = controller.watches(
        api::<Service>(client, ns),
        watcher::Config::default(),
        move |svc| mapping::arrays_for_service(&svc, &fs.state()),
    );
    if settings.watch_secrets {
        let fs = farm_store.clone();
        controller = controller.watches(
            api::<Secret>(client, ns),
            watcher::Config::default(),
            move |secret| mapping::arrays_for_secret(&secret, &fs.state(), &array_store.state()),
        );
    }
    controller
}

/// Farms whose array does not exist are invisible to the array controller; this one
/// gives them a status, and hears of arrays coming and going.
fn farm_controller(
    client: &Client,
    ns: Option<&str>,
    farms: Api<ServerFarm>,
    farm_store: &reflector::Store<ServerFarm>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Controller<ServerFarm> {
    let fs = farm_store.clone();
    Controller::new(farms, watcher::Config::default())
        .watches(
            api::<GatewayArray>(client, ns),
            watcher::Config::default(),
            move |array| mapping::farms_for_array(&array, &fs.state()),
        )
        .graceful_shutdown_on(shutdown)
}

/// The Ingress controller: Ingresses, the farms they generated, and IngressClasses
/// (a class change can move every Ingress of the class).
fn ingress_controller(
    client: &Client,
    ns: Option<&str>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Controller<Ingress> {
    let controller = Controller::new(api::<Ingress>(client, ns), watcher::Config::default()).owns(
        api::<ServerFarm>(client, ns),
        watcher::Config::default().labels(INGRESS_LABEL),
    );
    let ingresses = controller.store();
    controller
        .watches(
            Api::<IngressClass>::all(client.clone()),
            watcher::Config::default(),
            move |_class| {
                ingresses
                    .state()
                    .iter()
                    .map(|i| reflector::ObjectRef::from(i.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown)
}

/// Every minute, drops the per-array gauges of deleted arrays (a deleted array is never
/// reconciled again, so nothing else would clear them).
fn spawn_gauge_pruner(live_arrays: reflector::Store<GatewayArray>, metrics: Metrics) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let live: std::collections::BTreeSet<(String, String)> = live_arrays
                .state()
                .iter()
                .map(|a| (a.namespace().unwrap_or_default(), a.name_any()))
                .collect();
            metrics.retain_arrays(|ns, name| live.contains(&(ns.to_owned(), name.to_owned())));
        }
    });
}

/// Once nothing reconciles any more: gives the Lease up so a standby takes over at once
/// rather than after it expires (bounded, so a slow API server cannot hold up exit).
/// Fails when leadership was `lost`.
async fn stop(leadership: Option<Leadership>, lost: bool) -> Result<(), RunError> {
    if let Some(leadership) = leadership
        && !lost
        && tokio::time::timeout(Duration::from_secs(5), leadership.release())
            .await
            .is_err()
    {
        tracing::warn!("timed out releasing the lease; it expires on its own");
    }
    if lost {
        return Err(RunError::LostLease);
    }
    Ok(())
}

/// Completes on SIGTERM or when `other` completes.
async fn terminate_or(other: impl std::future::Future<Output = ()>) {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM; shutting down"),
            () = other => {}
        }
    }
    #[cfg(not(unix))]
    other.await;
}

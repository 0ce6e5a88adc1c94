//! Start-up, reloads, DNS refresh and drain.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use portcullis_crds::config::DataplaneConfig;
use portcullis_crds::translate::keep_last_good;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::balance::FarmRt;
use crate::health::Verifiers;
use crate::listener::{self, Bound};
use crate::metrics::{FarmEndpointCounts, Serving};
use crate::metrics::{Metrics, OutcomeLabel};
use crate::pool::Endpoints;
use crate::proxy;
use crate::session::SessionManager;
use crate::snapshot::{self, DnsResults, Snapshot};
use crate::source::{Loaded, Source, SourceError, fingerprint};

/// How long changed files must hold still before they are loaded.
const SETTLE: Duration = Duration::from_millis(100);

/// What the command line decides.
#[derive(Clone, Debug)]
pub struct Options {
    /// Local mode: a directory of GatewayArray and ServerFarm manifests.
    pub manifests: Option<PathBuf>,
    /// A rendered dataplane config file.
    pub config: Option<PathBuf>,
    /// Address listeners bind to.
    pub bind: IpAddr,
    /// Admin server address.
    pub admin: SocketAddr,
    /// The session keyring file.
    pub keyring: Option<PathBuf>,
    /// Where `<secret>/tls.crt`, `tls.key` and `ca.crt` live.
    pub certs: Option<PathBuf>,
    /// How often DNS members are re-resolved.
    pub dns_refresh: Duration,
    /// How often watched files are checked for changes.
    pub poll_interval: Duration,
    /// Where request spans are exported; `None` traces nothing.
    pub tracing: Option<crate::trace::TraceOptions>,
}

/// Why the dataplane could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Neither or both of manifests and config.
    #[error("failed to start: give exactly one of --manifests DIR or --config FILE")]
    Source,
    /// The admin address could not be bound.
    #[error("failed to bind the admin server on {addr}: {source}")]
    Admin {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The member: what the listeners share (and, inside that, what the proxy shares), and
/// what only the runtime and the admin view use. The runtime is the one place that
/// composes the layers.
pub(crate) struct Shared {
    pub(crate) serve: Arc<listener::State>,
    pub(crate) registry: Registry,
    pub(crate) endpoints: Endpoints,
    pub(crate) verifiers: Verifiers,
    pub(crate) listening: AtomicBool,
    pub(crate) listeners: Mutex<BTreeMap<u16, Bound>>,
    /// What the last config load did, for `/status`.
    pub(crate) last_reload: Mutex<ReloadReport>,
}

/// The outcome of the last config load, as `/status` shows it.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ReloadReport {
    /// `success`, or `failure` when the load was refused or a farm was.
    pub(crate) outcome: &'static str,
    /// Why, one line per refusal; never key material.
    pub(crate) errors: Vec<String>,
    /// Farms whose new version was refused and whose last good version still serves.
    pub(crate) kept_farms: Vec<String>,
}

impl Shared {
    /// What every request shares.
    pub(crate) fn proxy(&self) -> &proxy::Context {
        &self.serve.proxy
    }

    pub(crate) fn is_ready(&self) -> bool {
        !self.proxy().draining.load(Ordering::Relaxed)
            && self.listening.load(Ordering::Relaxed)
            && self.proxy().snapshot.load().is_some()
    }
}

impl crate::admin::View for Shared {
    fn ready(&self) -> bool {
        self.is_ready()
    }

    fn metrics(&self) -> String {
        let metrics = &self.proxy().metrics;
        let _scrape = metrics.scrape.lock();
        metrics.set_serving(&serving(self));
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    fn status(&self) -> serde_json::Value {
        let proxy = self.proxy();
        let hash = proxy
            .snapshot
            .load()
            .as_ref()
            .map(|s| s.hash.clone())
            .unwrap_or_default();
        serde_json::json!({
            "configHash": hash,
            "keyIds": proxy.session.key_ids(),
            "ready": self.is_ready(),
            "connections": self.serve.connections.load(Ordering::Relaxed),
            "connectionsWaiting": proxy.metrics.connections_waiting.get(),
            "workerThreads": tokio::runtime::Handle::try_current()
                .map(|h| h.metrics().num_workers())
                .ok(),
            "lastReload": self.last_reload.lock().clone(),
        })
    }
}

/// What the member serves now: the gauges a scrape sets rather than the request path,
/// which stays free of the bookkeeping.
fn serving(shared: &Shared) -> Serving {
    let proxy = shared.proxy();
    let snapshot = proxy.snapshot.load();
    let active = proxy.session.active_key_id();
    Serving {
        config_hash: snapshot.as_ref().map(|s| s.hash.clone()),
        keys: proxy
            .session
            .key_ids()
            .into_iter()
            .map(|id| {
                let is_active = active.as_deref() == Some(id.as_str());
                (id, is_active)
            })
            .collect(),
        farms: snapshot
            .as_ref()
            .map(|s| {
                s.farms
                    .iter()
                    .map(|(id, farm)| (id.clone(), endpoint_counts(farm)))
                    .collect()
            })
            .unwrap_or_default(),
        in_service: snapshot
            .as_ref()
            .map(|s| {
                s.farms
                    .iter()
                    .flat_map(|(id, farm)| {
                        farm.endpoints
                            .iter()
                            .enumerate()
                            .map(move |(i, e)| (id.clone(), e.endpoint.key.clone(), farm.usable(i)))
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn endpoint_counts(farm: &FarmRt) -> FarmEndpointCounts {
    let total = farm.endpoints.len();
    let ejected = farm
        .endpoints
        .iter()
        .filter(|e| match *e.endpoint.ejected_at.lock() {
            None => false,
            // With a verifier only the verifier lets it back (as `FarmRt::usable`).
            Some(_) if e.probe.is_some() => true,
            Some(at) => at.elapsed() < farm.cfg.passive.base_ejection_time.get(),
        })
        .count();
    FarmEndpointCounts {
        total,
        usable: (0..total).filter(|i| farm.usable(*i)).count(),
        ejected,
    }
}

/// A running dataplane.
pub struct Handle {
    shared: Arc<Shared>,
    admin: SocketAddr,
    control: tokio::task::JoinHandle<()>,
    keyring_watch: Option<tokio::task::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Handle {
    /// A background task stopped with the dataplane.
    pub(crate) fn add_task(&mut self, task: tokio::task::JoinHandle<()>) {
        self.tasks.push(task);
    }

    /// The admin server's bound address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The bound address of the listener configured with `port` (0 in a config file
    /// binds an ephemeral port; this tells which).
    pub fn listener_addr(&self, port: u16) -> Option<SocketAddr> {
        self.shared.listeners.lock().get(&port).map(|b| b.addr)
    }

    /// Whether the dataplane is ready (config loaded, listeners bound, not draining).
    pub fn is_ready(&self) -> bool {
        self.shared.is_ready()
    }

    /// The hash of the config being served.
    pub fn config_hash(&self) -> Option<String> {
        self.shared
            .proxy()
            .snapshot
            .load()
            .as_ref()
            .map(|s| s.hash.clone())
    }

    /// Drains: stops accepting, marks not ready, lets in-flight requests finish within
    /// the config's drain timeout, then stops.
    pub async fn shutdown(self) {
        let timeout = self
            .shared
            .proxy()
            .snapshot
            .load()
            .as_ref()
            .map_or(Duration::from_secs(30), |s| s.config.drain_timeout.get());
        self.shared.proxy().draining.store(true, Ordering::Relaxed);
        self.shared.serve.shutdown.cancel();
        self.shared.proxy().tracker.close();
        if tokio::time::timeout(timeout, self.shared.proxy().tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout reached with requests in flight");
        }
        self.control.abort();
        if let Some(w) = &self.keyring_watch {
            w.abort();
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the dataplane and returns once the admin server is bound and the first config
/// has been tried.
pub async fn start(opts: Options) -> Result<Handle, RunError> {
    let source = match (&opts.manifests, &opts.config) {
        (Some(d), None) => Source::Manifests(d.clone()),
        (None, Some(f)) => Source::Config(f.clone()),
        _ => return Err(RunError::Source),
    };
    let certs_dir = opts.certs.clone().unwrap_or_else(|| match &source {
        Source::Manifests(d) => d.join("certs"),
        Source::Config(f) => f
            .parent()
            .map(|p| p.join("certs"))
            .unwrap_or_else(|| "certs".into()),
    });
    let (registry, metrics, session) = metrics_registry();
    if let Some(path) = &opts.keyring
        && let Err(e) = session.load_keyring_file(path)
    {
        tracing::error!(error = %e, "failed to load the keyring; the watcher retries");
    }
    let tracer = opts
        .tracing
        .clone()
        .map(|t| Arc::new(crate::trace::Tracer::start(t, metrics.clone())));
    let proxy = Arc::new(proxy::Context {
        tracer,
        snapshot: ArcSwapOption::empty(),
        metrics: metrics.clone(),
        session,
        draining: AtomicBool::new(false),
        tracker: TaskTracker::new(),
    });
    let shared = Arc::new(Shared {
        serve: Arc::new(listener::State {
            proxy,
            connections: AtomicUsize::new(0),
            shutdown: CancellationToken::new(),
            per_client: Mutex::new(HashMap::new()),
            reclaim: tokio::sync::Notify::new(),
            last_refusal_log: std::sync::atomic::AtomicU64::new(0),
            started: std::time::Instant::now(),
        }),
        endpoints: Endpoints::new(metrics.clone()),
        verifiers: Verifiers::new(metrics),
        registry,
        listening: AtomicBool::new(false),
        listeners: Mutex::new(BTreeMap::new()),
        last_reload: Mutex::new(ReloadReport::default()),
    });
    let admin_listener =
        crate::admin::bind(opts.admin)
            .await
            .map_err(|source| RunError::Admin {
                addr: opts.admin,
                source,
            })?;
    let admin = admin_listener
        .local_addr()
        .map_err(|source| RunError::Admin {
            addr: opts.admin,
            source,
        })?;
    tokio::spawn(crate::admin::serve(shared.clone(), admin_listener));

    let mut ctl = Control {
        shared: shared.clone(),
        source,
        certs_dir,
        bind: opts.bind,
        dns: BTreeMap::new(),
        config: None,
        seen: Vec::new(),
    };
    ctl.reload().await;
    // Same polling as the manifests; a bad keyring is refused and the last good stays.
    let keyring_watch = opts.keyring.as_ref().map(|path| {
        shared
            .proxy()
            .session
            .watch_keyring_file(path.clone(), opts.poll_interval)
    });
    let control = tokio::spawn(ctl.run(opts.poll_interval, opts.dns_refresh));
    Ok(Handle {
        shared,
        admin,
        control,
        keyring_watch,
        tasks: Vec::new(),
    })
}

/// The registry `/metrics` serves, with every dataplane metric in it.
fn metrics_registry() -> (Registry, Arc<Metrics>, Arc<SessionManager>) {
    let mut registry = Registry::with_prefix("portcullis");
    let metrics = Arc::new(Metrics::register(&mut registry));
    let session = SessionManager::new(&mut registry);
    (registry, metrics, session)
}

/// The text exposition of the registry `/metrics` serves, with one sample of every
/// metric: the names dashboards and alert rules may use. For the monitoring contract
/// test (`e2e/tests/monitoring.rs`).
#[doc(hidden)]
pub fn metrics_sample() -> String {
    let (registry, metrics, session) = metrics_registry();
    metrics.record_one_of_each();
    let _ = session.rejected_total("ns/farm", crate::session::RejectReason::UnknownKey);
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// Runs until SIGTERM or SIGINT, then drains.
pub async fn run(opts: Options) -> Result<(), RunError> {
    let handle = start(opts).await?;
    tracing::info!(admin = %handle.admin_addr(), "dataplane started");
    wait_for_signal().await;
    tracing::info!("draining");
    handle.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

pub(crate) async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The single task that owns reloads.
struct Control {
    shared: Arc<Shared>,
    source: Source,
    certs_dir: PathBuf,
    bind: IpAddr,
    dns: DnsResults,
    config: Option<Arc<DataplaneConfig>>,
    seen: Vec<(PathBuf, u64, Option<std::time::SystemTime>)>,
}

impl Control {
    async fn run(mut self, poll: Duration, dns_refresh: Duration) {
        let mut tick = tokio::time::interval(poll);
        let mut dns_tick = tokio::time::interval(dns_refresh);
        dns_tick.tick().await;
        let mut reaper = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let now = self.fingerprint();
                    if now != self.seen {
                        // Let a writer finish: load only files that held still for a
                        // moment, or a half-written farm file reads as a smaller farm.
                        tokio::time::sleep(SETTLE).await;
                        if self.fingerprint() == now {
                            self.reload().await;
                        }
                    }
                }
                _ = dns_tick.tick() => {
                    if let Some(cfg) = self.config.clone() {
                        let dns = resolve_all(&cfg, &self.dns).await;
                        if dns != self.dns {
                            tracing::info!("DNS results changed; rebuilding");
                            self.dns = dns;
                            if let Err(e) = self.apply(cfg).await {
                                tracing::error!(error = %e, "failed to apply DNS change");
                            }
                        }
                    }
                }
                _ = reaper.tick() => {
                    for ep in self.shared.endpoints.all() {
                        ep.expire_idle();
                    }
                }
            }
        }
    }

    fn fingerprint(&self) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>)> {
        let mut paths = self.source.watched();
        paths.push(self.certs_dir.clone());
        fingerprint(&paths)
    }

    async fn reload(&mut self) {
        self.seen = self.fingerprint();
        let (source, last) = (self.source.clone(), self.config.clone());
        let (loaded, mut report) = off_worker(move || {
            let mut report = ReloadReport::default();
            let loaded = source
                .load()
                .and_then(|loaded| keep_refused_farms(loaded, last.as_deref(), &mut report));
            (loaded, report)
        })
        .await;
        let outcome = match loaded {
            Ok(cfg) => {
                let cfg = Arc::new(cfg);
                self.dns = resolve_all(&cfg, &self.dns).await;
                self.apply(cfg).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "config refused; the last good config keeps serving");
            report.errors.push(e.to_string());
        }
        report.outcome = if report.errors.is_empty() {
            "success"
        } else {
            "failure"
        };
        self.shared
            .proxy()
            .metrics
            .reloads
            .get_or_create(&OutcomeLabel {
                outcome: report.outcome,
            })
            .inc();
        *self.shared.last_reload.lock() = report;
    }

    async fn apply(&mut self, cfg: Arc<DataplaneConfig>) -> Result<(), SourceError> {
        let (certs, clients) = {
            let (cfg, dir) = (cfg.clone(), self.certs_dir.clone());
            off_worker(move || snapshot::load_tls(&cfg, &dir)).await?
        };
        // Bind new listeners first so a port conflict refuses the config whole.
        let mut new_bound = Vec::new();
        {
            let have: Vec<u16> = self.shared.listeners.lock().keys().copied().collect();
            for l in &cfg.listeners {
                let same = self
                    .shared
                    .listeners
                    .lock()
                    .get(&l.port)
                    .is_some_and(|b| b.protocol == l.protocol);
                if have.contains(&l.port) && same {
                    continue;
                }
                match listener::bind(self.shared.serve.clone(), l, self.bind).await {
                    Ok(b) => new_bound.push((l.port, b)),
                    Err(e) => {
                        for (_, b) in new_bound {
                            b.stop.cancel();
                        }
                        return Err(SourceError::Read {
                            path: format!("listener {} port {}", l.name, l.port).into(),
                            source: e,
                        });
                    }
                }
            }
        }
        let snap = {
            let (cfg, dir, dns, shared) = (
                cfg.clone(),
                self.certs_dir.clone(),
                self.dns.clone(),
                self.shared.clone(),
            );
            off_worker(move || -> Result<Snapshot, SourceError> {
                // Access state carries over from the last snapshot for farms whose
                // checks did not change.
                let access = crate::access::build(
                    &cfg,
                    &dir,
                    shared.proxy().snapshot.load().as_deref().map(|s| &s.access),
                )?;
                let mut snap =
                    snapshot::build(cfg, &dns, &clients, &shared.endpoints, &shared.verifiers);
                snap.access = access;
                Ok(snap)
            })
            .await?
        };
        {
            let mut listeners = self.shared.listeners.lock();
            for (port, b) in new_bound {
                if let Some(old) = listeners.insert(port, b) {
                    old.stop.cancel();
                }
            }
            let ports: Vec<u16> = cfg.listeners.iter().map(|l| l.port).collect();
            listeners.retain(|p, b| {
                let keep = ports.contains(p);
                if !keep {
                    b.stop.cancel();
                }
                keep
            });
            for (port, b) in listeners.iter() {
                if let Some(c) = certs.get(port) {
                    b.certs.store(c.clone());
                }
            }
        }
        tracing::info!(hash = %snap.hash, farms = snap.farms.len(), "config loaded");
        self.shared.proxy().snapshot.store(Some(Arc::new(snap)));
        self.shared.listening.store(true, Ordering::Relaxed);
        self.config = Some(cfg);
        Ok(())
    }
}

/// Puts back the last good version of every farm whose new version was refused, so
/// one bad edit never takes its site down; records each refusal in `report`.
fn keep_refused_farms(
    loaded: Loaded,
    last: Option<&DataplaneConfig>,
    report: &mut ReloadReport,
) -> Result<DataplaneConfig, SourceError> {
    let mut cfg = loaded.config;
    for (id, why) in &loaded.refused {
        report.errors.push(why.clone());
        let kept = last.is_some_and(|last| keep_last_good(&mut cfg, last, id));
        if kept {
            tracing::error!(farm = %id, error = %why, "farm refused; its last good version keeps serving");
            report.kept_farms.push(id.clone());
        } else {
            tracing::error!(farm = %id, error = %why, "farm refused; it has no good version to serve");
        }
    }
    cfg.check().map_err(|e| {
        SourceError::Translate(format!(
            "the config with the kept farms is inconsistent: {e}"
        ))
    })?;
    Ok(cfg)
}

/// Runs a reload's CPU-bound work (parsing, certificate loading, the snapshot and its
/// hash rings) on the blocking pool. A large config would otherwise hold a runtime
/// worker for its whole build, and every connection scheduled on that worker with it.
async fn off_worker<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => done,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Cancelled: the runtime is shutting down, and this task goes with it.
            Err(_) => std::future::pending().await,
        },
    }
}

async fn resolve_all(cfg: &DataplaneConfig, previous: &DnsResults) -> DnsResults {
    let mut out: DnsResults = BTreeMap::new();
    let mut seen: HashMap<(String, u16), ()> = HashMap::new();
    for (host, port) in snapshot::dns_names(cfg) {
        if seen.insert((host.clone(), port), ()).is_some() {
            continue;
        }
        let lookup = tokio::net::lookup_host(format!("{host}:{port}"));
        match tokio::time::timeout(Duration::from_secs(5), lookup).await {
            Ok(Ok(addrs)) => {
                let mut v: Vec<SocketAddr> = addrs
                    .map(|a| match a {
                        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
                            None => a,
                        },
                        SocketAddr::V4(_) => a,
                    })
                    .collect();
                v.sort();
                v.dedup();
                out.insert((host, port), v);
            }
            _ => {
                // Keep serving the last addresses rather than emptying the farm.
                tracing::warn!(host = %host, "failed to resolve a DNS member; keeping the last result");
                let last = previous
                    .get(&(host.clone(), port))
                    .cloned()
                    .unwrap_or_default();
                out.insert((host, port), last);
            }
        }
    }
    out
}

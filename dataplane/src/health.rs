//! Connectivity verifiers: active probes on dedicated connections, one per distinct
//! (identity, path, Host, expected statuses), feeding every farm that asks for it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use portcullis_crds::config::{StatusRange, UpstreamProtocol, VerifierConfig};
use rustls::ClientConfig;

use crate::metrics::{FarmEndpointLabel, Metrics};
use crate::pool::{Endpoint, connect_io};

/// What makes two probes the same probe.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ProbeKey {
    pub(crate) endpoint: String,
    pub(crate) path: String,
    pub(crate) host: String,
    pub(crate) statuses: Vec<(u16, u16)>,
}

impl ProbeKey {
    pub(crate) fn new(endpoint: &Endpoint, v: &VerifierConfig) -> Self {
        ProbeKey {
            endpoint: endpoint.key.clone(),
            path: v.path.clone(),
            host: v.host.clone(),
            statuses: v.expected_statuses.iter().map(|r| (r.from, r.to)).collect(),
        }
    }
}

/// The verdict of one probe, shared by the farms that use it.
pub(crate) struct ProbeState {
    healthy: AtomicBool,
    /// Farms fed by this probe, for the metric.
    farms: Mutex<Vec<String>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ProbeState {
    pub(crate) fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

impl Drop for ProbeState {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().take() {
            t.abort();
        }
    }
}

/// All running probes.
pub(crate) struct Verifiers {
    probes: Mutex<HashMap<ProbeKey, Arc<ProbeState>>>,
    metrics: Arc<Metrics>,
}

/// A probe a snapshot wants.
pub(crate) struct ProbeWant {
    pub(crate) key: ProbeKey,
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) verifier: VerifierConfig,
    pub(crate) tls: Option<Arc<ClientConfig>>,
    pub(crate) farm: String,
}

impl Verifiers {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Verifiers {
            probes: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Starts wanted probes that are not running, stops the others; keeps the verdict of
    /// probes that stay.
    pub(crate) fn sync(&self, wants: Vec<ProbeWant>) -> HashMap<ProbeKey, Arc<ProbeState>> {
        let mut probes = self.probes.lock();
        let mut farms: HashMap<ProbeKey, Vec<String>> = HashMap::new();
        for w in &wants {
            farms.entry(w.key.clone()).or_default().push(w.farm.clone());
        }
        probes.retain(|k, _| farms.contains_key(k));
        for w in wants {
            if probes.contains_key(&w.key) {
                continue;
            }
            let state = Arc::new(ProbeState {
                healthy: AtomicBool::new(true),
                farms: Mutex::new(Vec::new()),
                task: Mutex::new(None),
            });
            let task = tokio::spawn(probe_loop(
                Arc::downgrade(&state),
                w.endpoint,
                w.verifier,
                w.tls,
                self.metrics.clone(),
            ));
            *state.task.lock() = Some(task);
            probes.insert(w.key, state);
        }
        for (k, f) in farms {
            if let Some(p) = probes.get(&k) {
                for farm in &f {
                    self.metrics
                        .verifier_healthy
                        .get_or_create(&FarmEndpointLabel {
                            farm: farm.clone(),
                            endpoint: k.endpoint.clone(),
                        })
                        .set(p.healthy() as i64);
                }
                *p.farms.lock() = f;
            }
        }
        probes.clone()
    }
}

async fn probe_loop(
    state: std::sync::Weak<ProbeState>,
    endpoint: Arc<Endpoint>,
    v: VerifierConfig,
    tls: Option<Arc<ClientConfig>>,
    metrics: Arc<Metrics>,
) {
    let mut passes = 0u32;
    let mut fails = 0u32;
    let mut seen_ejection = None;
    loop {
        let ok = probe_once(&endpoint, &v, tls.clone()).await;
        let Some(state) = state.upgrade() else { return };
        let ejected = *endpoint.ejected_at.lock();
        if ejected.is_some() && ejected != seen_ejection {
            seen_ejection = ejected;
            passes = 0;
        }
        if ok {
            passes += 1;
            fails = 0;
        } else {
            fails += 1;
            passes = 0;
        }
        let was = state.healthy();
        let now = if was {
            fails < v.unhealthy_threshold.max(1)
        } else {
            passes >= v.healthy_threshold.max(1)
        };
        if ejected.is_some() && passes >= v.healthy_threshold.max(1) {
            *endpoint.ejected_at.lock() = None;
            endpoint.failures.store(0, Ordering::Relaxed);
            tracing::info!(endpoint = %endpoint.key, "ejected endpoint returns after passing its verifier");
        }
        if now != was {
            state.healthy.store(now, Ordering::Relaxed);
            tracing::warn!(endpoint = %endpoint.key, healthy = now, "verifier state changed");
        }
        for farm in state.farms.lock().iter() {
            metrics
                .verifier_healthy
                .get_or_create(&FarmEndpointLabel {
                    farm: farm.clone(),
                    endpoint: endpoint.key.clone(),
                })
                .set(now as i64);
        }
        drop(state);
        tokio::time::sleep(v.interval.get().max(Duration::from_millis(50))).await;
    }
}

/// One GET on a fresh connection; true when the status is expected.
async fn probe_once(
    endpoint: &Endpoint,
    v: &VerifierConfig,
    tls: Option<Arc<ClientConfig>>,
) -> bool {
    let run = async {
        let io = connect_io(&endpoint.identity, tls).await.ok()?;
        let status = match endpoint.identity.protocol {
            UpstreamProtocol::Http1 => {
                let (mut s, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
                    .await
                    .ok()?;
                tokio::spawn(conn);
                let req = http::Request::get(&v.path)
                    .header(http::header::HOST, &v.host)
                    .header(http::header::CONNECTION, "close")
                    .header(http::header::USER_AGENT, "portcullis-verifier")
                    .body(Empty::new())
                    .ok()?;
                s.send_request(req).await.ok()?.status()
            }
            UpstreamProtocol::Http2 => {
                let (mut s, conn) =
                    http2::handshake::<_, _, Empty<Bytes>>(TokioExecutor::new(), TokioIo::new(io))
                        .await
                        .ok()?;
                tokio::spawn(conn);
                let scheme = if endpoint.identity.tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                let req = http::Request::get(format!("{scheme}://{}{}", v.host, v.path))
                    .header(http::header::USER_AGENT, "portcullis-verifier")
                    .body(Empty::new())
                    .ok()?;
                s.send_request(req).await.ok()?.status()
            }
        };
        Some(status.as_u16())
    };
    match tokio::time::timeout(v.timeout.get(), run).await {
        Ok(Some(code)) => v
            .expected_statuses
            .iter()
            .any(|r: &StatusRange| r.contains(code)),
        _ => false,
    }
}

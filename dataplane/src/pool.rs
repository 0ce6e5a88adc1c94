//! Upstream connection pools, one per endpoint identity, shared by every farm.
//!
//! Pools live in the [`Endpoints`] registry, outside config snapshots, so a reload that
//! keeps an identity keeps its connections and its health facts. Host names never key
//! anything here: two farms that reach the same address with the same TLS parameters and
//! protocol share one pool and one connection limit.
//!
//! Idle connections are not capped below demand. A connection that comes back is kept
//! while fewer are idle than the larger of `maxIdle` and the most requests that were in
//! flight at once over the last idle timeout; the idle timeout (and `maxConnections`)
//! bound the rest. A cap below the load's concurrency closes connections that are
//! wanted again a moment later: the churn the seeds' field report describes.
//!
//! Limits when farms share one identity: their `maxIdle` add up (the identity keeps the
//! room its farms would have had apart), the smallest `maxConnections` wins (never open
//! more than the strictest farm allows to that server), the longest idle timeout wins.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use portcullis_crds::config::{EndpointIdentity, UpstreamProtocol};
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ProxyError;
use crate::metrics::{EndpointLabel, Metrics};

/// The body sent upstream: the client's, or empty when a bodiless request is retried.
pub(crate) type ReqBody =
    http_body_util::Either<crate::body::Counted, http_body_util::Empty<Bytes>>;

/// Any byte stream a connection runs on.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Pool limits of one identity, merged over every farm that uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PoolLimits {
    pub(crate) max_idle: usize,
    pub(crate) max_connections: Option<u32>,
    pub(crate) idle_timeout: Duration,
}

impl PoolLimits {
    /// Merges two farms' limits: sum of idle, min of connection limits.
    pub(crate) fn merge(self, other: PoolLimits) -> PoolLimits {
        PoolLimits {
            max_idle: self.max_idle.saturating_add(other.max_idle),
            max_connections: match (self.max_connections, other.max_connections) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            idle_timeout: self.idle_timeout.max(other.idle_timeout),
        }
    }
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("failed to connect: refused")]
    Refused,
    #[error("failed to connect: {0}")]
    Io(std::io::Error),
    #[error("failed to connect: timed out")]
    Timeout,
    #[error("failed to connect: TLS handshake failed")]
    Tls,
    #[error("failed to connect: HTTP handshake failed")]
    Handshake,
    #[error("failed to connect: the pool is saturated")]
    Saturated,
}

impl From<&ConnectError> for ProxyError {
    fn from(e: &ConnectError) -> ProxyError {
        match e {
            ConnectError::Refused => ProxyError::ConnectRefused,
            ConnectError::Io(_) => ProxyError::ConnectFailed,
            ConnectError::Timeout => ProxyError::ConnectTimeout,
            ConnectError::Tls => ProxyError::UpstreamTlsFailed,
            ConnectError::Handshake => ProxyError::UpstreamHandshakeFailed,
            ConnectError::Saturated => ProxyError::PoolSaturated,
        }
    }
}

enum Permit {
    Open(Option<OwnedSemaphorePermit>),
    Reuse(Sender),
}

/// Whether a checkout may take a pooled connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reuse {
    /// An idle pooled connection if there is one, else a new one.
    Idle,
    /// A new connection: the pooled one just failed before the request was written.
    Never,
}

/// A connection for one request.
pub(crate) struct Checkout {
    pub(crate) sender: Sender,
    /// It came from the pool (it may have been closed by the server while idle).
    pub(crate) reused: bool,
}

/// A request sender on one upstream connection.
pub(crate) enum Sender {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
}

struct Idle {
    sender: http1::SendRequest<ReqBody>,
    since: Instant,
}

/// Connection pool of one identity.
pub(crate) struct Pool {
    limits: Mutex<PoolLimits>,
    idle: Mutex<VecDeque<Idle>>,
    h2: Mutex<Vec<http2::SendRequest<ReqBody>>>,
    limit: Mutex<Option<(u32, Arc<Semaphore>)>>,
    open: Arc<AtomicUsize>,
    /// Signalled when a connection goes back to the idle list.
    returned: tokio::sync::Notify,
    /// HTTP/2: one handshake at a time, so a burst of first requests shares one
    /// connection instead of opening one each.
    h2_connecting: tokio::sync::Mutex<()>,
    /// Demand: the most requests in flight at once in this idle-timeout window and in
    /// the one before; [`Endpoint::expire_idle`] rotates them.
    demand: AtomicUsize,
    demand_before: AtomicUsize,
    window_start: Mutex<Instant>,
}

/// One endpoint identity: its pool and the facts about it that outlive reloads.
pub(crate) struct Endpoint {
    pub(crate) identity: EndpointIdentity,
    pub(crate) key: String,
    pub(crate) label: EndpointLabel,
    pub(crate) pool: Pool,
    pub(crate) in_flight: AtomicUsize,
    /// Exponentially weighted response-head latency, microseconds.
    pub(crate) ewma_us: AtomicU64,
    /// Consecutive passive failures.
    pub(crate) failures: AtomicU32,
    /// When passive health ejected it, if it is out.
    pub(crate) ejected_at: Mutex<Option<Instant>>,
    metrics: Arc<Metrics>,
}

impl Endpoint {
    fn new(identity: EndpointIdentity, limits: PoolLimits, metrics: Arc<Metrics>) -> Self {
        let key = identity.key();
        Endpoint {
            label: EndpointLabel {
                endpoint: key.clone(),
            },
            key,
            identity,
            pool: Pool {
                limits: Mutex::new(limits),
                idle: Mutex::new(VecDeque::new()),
                h2: Mutex::new(Vec::new()),
                limit: Mutex::new(None),
                open: Arc::new(AtomicUsize::new(0)),
                returned: tokio::sync::Notify::new(),
                h2_connecting: tokio::sync::Mutex::new(()),
                demand: AtomicUsize::new(0),
                demand_before: AtomicUsize::new(0),
                window_start: Mutex::new(Instant::now()),
            },
            in_flight: AtomicUsize::new(0),
            ewma_us: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            ejected_at: Mutex::new(None),
            metrics,
        }
    }

    fn set_limits(&self, limits: PoolLimits) {
        *self.pool.limits.lock() = limits;
        let mut l = self.pool.limit.lock();
        match (limits.max_connections, l.as_ref()) {
            (None, _) => *l = None,
            (Some(n), Some((old, _))) if *old == n => {}
            // A changed limit gets a fresh semaphore; connections holding permits of the
            // old one count against nothing until they close.
            (Some(n), _) => *l = Some((n, Arc::new(Semaphore::new(n as usize)))),
        }
    }

    /// Counts a request in flight on this endpoint until the returned guard drops, and
    /// records the concurrency for the pool's demand.
    pub(crate) fn enter(self: &Arc<Self>) -> InFlight {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.pool.demand.fetch_max(now, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// How many idle connections the pool keeps: `maxIdle`, or more when the recent load
    /// had more requests in flight at once.
    fn idle_room(&self) -> usize {
        let max_idle = self.pool.limits.lock().max_idle;
        max_idle
            .max(self.pool.demand.load(Ordering::Relaxed))
            .max(self.pool.demand_before.load(Ordering::Relaxed))
    }

    /// Records a response-head latency sample.
    pub(crate) fn observe_latency(&self, d: Duration) {
        let sample = d.as_micros().min(u64::MAX as u128) as u64;
        let old = self.ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old * 7 + sample) / 8
        };
        self.ewma_us.store(new, Ordering::Relaxed);
    }

    /// Takes an idle connection or opens one; with [`Reuse::Never`], always opens one.
    pub(crate) async fn checkout(
        self: &Arc<Self>,
        tls: Option<Arc<ClientConfig>>,
        connect_timeout: Duration,
        reuse: Reuse,
    ) -> Result<Checkout, ConnectError> {
        let reused = |sender| {
            self.metrics.pool_reused.get_or_create(&self.label).inc();
            Ok(Checkout {
                sender,
                reused: true,
            })
        };
        let may_reuse = reuse == Reuse::Idle;
        if may_reuse && let Some(s) = self.take_idle() {
            return reused(s);
        }
        let _connecting = if self.identity.protocol == UpstreamProtocol::Http2 {
            let guard = tokio::time::timeout(connect_timeout, self.pool.h2_connecting.lock())
                .await
                .map_err(|_| ConnectError::Timeout)?;
            if may_reuse && let Some(s) = self.take_idle() {
                return reused(s);
            }
            Some(guard)
        } else {
            None
        };
        let permit = match self.permit(connect_timeout, may_reuse).await? {
            Permit::Reuse(s) => return reused(s),
            Permit::Open(p) => p,
        };
        let sender = tokio::time::timeout(connect_timeout, self.connect(tls, permit))
            .await
            .map_err(|_| ConnectError::Timeout)??;
        self.metrics.pool_opened.get_or_create(&self.label).inc();
        Ok(Checkout {
            sender,
            reused: false,
        })
    }

    fn take_idle(&self) -> Option<Sender> {
        if self.identity.protocol == UpstreamProtocol::Http2 {
            let mut h2 = self.pool.h2.lock();
            h2.retain(|s| !s.is_closed());
            return h2.first().cloned().map(Sender::H2);
        }
        let timeout = self.pool.limits.lock().idle_timeout;
        let mut idle = self.pool.idle.lock();
        let mut taken = None;
        while let Some(c) = idle.pop_back() {
            if c.since.elapsed() < timeout && c.sender.is_ready() {
                taken = Some(Sender::H1(c.sender));
                break;
            }
        }
        self.metrics
            .pool_idle
            .get_or_create(&self.label)
            .set(idle.len() as i64);
        taken
    }

    /// Waits for the right to open a connection, or (when `may_reuse`) for a connection
    /// to come back.
    async fn permit(&self, wait: Duration, may_reuse: bool) -> Result<Permit, ConnectError> {
        let sem = self.pool.limit.lock().as_ref().map(|(_, s)| s.clone());
        let Some(sem) = sem else {
            return Ok(Permit::Open(None));
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Ok(p) = sem.clone().try_acquire_owned() {
                return Ok(Permit::Open(Some(p)));
            }
            if may_reuse && let Some(s) = self.take_idle() {
                return Ok(Permit::Reuse(s));
            }
            let returned = self.pool.returned.notified();
            tokio::select! {
                _ = returned => {}
                p = sem.clone().acquire_owned() => {
                    if let Ok(p) = p {
                        return Ok(Permit::Open(Some(p)));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return Err(ConnectError::Saturated),
            }
        }
    }

    async fn connect(
        self: &Arc<Self>,
        tls: Option<Arc<ClientConfig>>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Sender, ConnectError> {
        let io = connect_io(&self.identity, tls).await?;
        let open = self.pool.open.clone();
        match self.identity.protocol {
            UpstreamProtocol::Http1 => {
                let (sender, conn) = http1::Builder::new()
                    .handshake::<_, ReqBody>(TokioIo::new(io))
                    .await
                    .map_err(|_| ConnectError::Handshake)?;
                open.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let _ = conn.with_upgrades().await;
                    open.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                });
                Ok(Sender::H1(sender))
            }
            UpstreamProtocol::Http2 => {
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .handshake::<_, ReqBody>(TokioIo::new(io))
                    .await
                    .map_err(|_| ConnectError::Handshake)?;
                open.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let _ = conn.await;
                    open.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                });
                self.pool.h2.lock().push(sender.clone());
                Ok(Sender::H2(sender))
            }
        }
    }

    /// Gives an HTTP/1 connection back once its response is fully read.
    pub(crate) fn give_back(self: &Arc<Self>, mut sender: http1::SendRequest<ReqBody>) {
        let ep = self.clone();
        let put = move |sender: http1::SendRequest<ReqBody>| {
            let room = ep.idle_room();
            let mut idle = ep.pool.idle.lock();
            if idle.len() < room {
                idle.push_back(Idle {
                    sender,
                    since: Instant::now(),
                });
            }
            ep.metrics
                .pool_idle
                .get_or_create(&ep.label)
                .set(idle.len() as i64);
            drop(idle);
            ep.pool.returned.notify_one();
        };
        if sender.is_ready() {
            put(sender);
            return;
        }
        tokio::spawn(async move {
            if tokio::time::timeout(Duration::from_secs(1), sender.ready())
                .await
                .is_ok_and(|r| r.is_ok())
            {
                put(sender);
            }
        });
    }

    /// Drops idle connections past their idle timeout, and starts a new demand window
    /// once per idle timeout.
    pub(crate) fn expire_idle(&self) {
        let timeout = self.pool.limits.lock().idle_timeout;
        {
            let mut start = self.pool.window_start.lock();
            if start.elapsed() >= timeout {
                *start = Instant::now();
                let current = self.in_flight.load(Ordering::Relaxed);
                let last = self.pool.demand.swap(current, Ordering::Relaxed);
                self.pool.demand_before.store(last, Ordering::Relaxed);
            }
        }
        let mut idle = self.pool.idle.lock();
        idle.retain(|c| c.since.elapsed() < timeout && !c.sender.is_closed());
        self.metrics
            .pool_idle
            .get_or_create(&self.label)
            .set(idle.len() as i64);
        drop(idle);
        self.pool.h2.lock().retain(|s| !s.is_closed());
    }
}

/// A request in flight on an endpoint, from [`Endpoint::enter`].
pub(crate) struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Opens TCP (and TLS) to an identity, on a dedicated socket.
pub(crate) async fn connect_io(
    identity: &EndpointIdentity,
    tls: Option<Arc<ClientConfig>>,
) -> Result<Pin<Box<dyn Io>>, ConnectError> {
    let tcp = TcpStream::connect(identity.address)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => ConnectError::Refused,
            _ => ConnectError::Io(e),
        })?;
    let _ = tcp.set_nodelay(true);
    match (&identity.tls, tls) {
        (Some(t), Some(cfg)) => {
            let name = rustls::pki_types::ServerName::try_from(t.sni.clone())
                .map_err(|_| ConnectError::Tls)?;
            let s = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(|_| ConnectError::Tls)?;
            Ok(Box::pin(s))
        }
        (Some(_), None) => Err(ConnectError::Tls),
        (None, _) => Ok(Box::pin(tcp)),
    }
}

/// Every endpoint identity in use, surviving reloads.
pub(crate) struct Endpoints {
    map: Mutex<HashMap<EndpointIdentity, Arc<Endpoint>>>,
    metrics: Arc<Metrics>,
}

impl Endpoints {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Endpoints {
            map: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Makes the registry hold exactly `wanted`, keeping the state of identities that
    /// stay. Removed ones are dropped once in-flight requests and old snapshots let go.
    pub(crate) fn sync(
        &self,
        wanted: &HashMap<EndpointIdentity, PoolLimits>,
    ) -> HashMap<EndpointIdentity, Arc<Endpoint>> {
        let mut map = self.map.lock();
        map.retain(|id, _| wanted.contains_key(id));
        for (id, limits) in wanted {
            let ep = map.entry(id.clone()).or_insert_with(|| {
                Arc::new(Endpoint::new(id.clone(), *limits, self.metrics.clone()))
            });
            ep.set_limits(*limits);
        }
        map.clone()
    }

    pub(crate) fn all(&self) -> Vec<Arc<Endpoint>> {
        self.map.lock().values().cloned().collect()
    }
}

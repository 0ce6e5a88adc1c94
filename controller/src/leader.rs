//! Leader election on a `coordination.k8s.io` Lease, the way client-go's `leaderelection`
//! does it: every write of the Lease is an update carrying the `resourceVersion` that was
//! read, so when two replicas race for it the API server lets exactly one through and
//! answers the other `409 Conflict`. No write depends on field managers, and standbys
//! re-read the Lease every retry period, so a released Lease is taken over at once.
//!
//! A Lease held by another replica counts as expired once it has not changed for
//! `lease_duration`, measured on this replica's own clock from when it saw the change:
//! clocks of different nodes are never compared.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Where the Lease is, who this replica is, and the timing.
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    /// The Lease's name.
    pub lease: String,
    /// Its namespace.
    pub namespace: String,
    /// This replica's identity (its pod name): the Lease's `holderIdentity` while it
    /// leads. Must differ between replicas.
    pub identity: String,
    /// How long a Lease stays held without a renewal. A standby takes over a Lease that
    /// has not changed for this long (a crashed leader).
    pub lease_duration: Duration,
    /// A leader that could not renew for this long stops leading (before its Lease can
    /// expire for the others).
    pub renew_deadline: Duration,
    /// How often the leader renews and a standby re-reads the Lease.
    pub retry_period: Duration,
}

impl ElectionConfig {
    /// client-go's defaults: a 15s lease, renewed every 2s, given up after 10s without a
    /// renewal.
    pub fn new(lease: &str, namespace: &str, identity: &str) -> Self {
        ElectionConfig {
            lease: lease.to_owned(),
            namespace: namespace.to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Why leader election stopped before leading.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// The configuration cannot work: a leader would keep leading after its Lease expired.
    #[error(
        "failed to start leader election: renew deadline {renew:?} must be shorter than the lease duration {lease:?}, and the retry period {retry:?} shorter than the renew deadline"
    )]
    Timing {
        /// Lease duration.
        lease: Duration,
        /// Renew deadline.
        renew: Duration,
        /// Retry period.
        retry: Duration,
    },
}

/// Holding the Lease. Renewed in the background until [`Leadership::release`] (or until
/// it is dropped, which releases too), or until it is lost ([`Leadership::lost`]).
pub struct Leadership {
    stop: Option<oneshot::Sender<()>>,
    lost: Option<oneshot::Receiver<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Completes when leadership is lost (another replica holds the Lease, or renewals
    /// failed for the renew deadline). Can be taken once.
    pub fn lost(&mut self) -> impl Future<Output = ()> + Send + 'static {
        let rx = self.lost.take();
        async move {
            match rx {
                Some(rx) => {
                    let _ = rx.await;
                }
                None => std::future::pending().await,
            }
        }
    }

    /// Stops renewing and gives the Lease up (clears its holder), so a standby takes
    /// over within one retry period instead of waiting for the Lease to expire. Call it
    /// after the work that needs leadership has stopped.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Stops renewing without giving the Lease up, as a crash would: standbys take over
    /// once it expires.
    pub fn abandon(self) {
        self.task.abort();
    }
}

/// What this replica last saw of the Lease, and when it saw it change.
struct Observed {
    resource_version: Option<String>,
    holder: Option<String>,
    duration: Duration,
    at: Instant,
}

struct Elector {
    api: Api<Lease>,
    config: ElectionConfig,
    observed: Option<Observed>,
}

/// Outcome of one attempt to take or renew the Lease.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// This replica holds it now.
    Held,
    /// Another replica holds it, and it has not expired.
    HeldByOther(String),
    /// Another replica wrote it first (a 409): read it again next time.
    Raced,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl Elector {
    fn observe(&mut self, lease: &Lease) {
        let rv = lease.resource_version();
        if self
            .observed
            .as_ref()
            .is_some_and(|o| o.resource_version == rv)
        {
            return;
        }
        let spec = lease.spec.clone().unwrap_or_default();
        self.observed = Some(Observed {
            resource_version: rv,
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            duration: spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.config.lease_duration, Duration::from_secs),
            at: Instant::now(),
        });
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// Takes the Lease when it is free, expired or ours (renewing it), with the read
    /// `resourceVersion` as the precondition.
    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let name = self.config.lease.clone();
        let Some(lease) = self.api.get_opt(&name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(self.duration_seconds()),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(Attempt::Held)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Raced),
                Err(e) => Err(e),
            };
        };
        self.observe(&lease);
        let observed = self.observed.as_ref().expect("observed above");
        let ours = observed.holder.as_deref() == Some(self.config.identity.as_str());
        if let Some(holder) = observed.holder.as_ref().filter(|_| !ours)
            && observed.at.elapsed() < observed.duration
        {
            return Ok(Attempt::HeldByOther(holder.clone()));
        }
        let mut next = lease.clone();
        let mut spec = lease.spec.clone().unwrap_or_default();
        if !ours {
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.config.identity.clone());
        spec.lease_duration_seconds = Some(self.duration_seconds());
        spec.renew_time = Some(now());
        next.spec = Some(spec);
        // `replace` sends metadata.resourceVersion: the API server refuses the update
        // when anyone wrote the Lease since it was read.
        match self
            .api
            .replace(&self.config.lease, &PostParams::default(), &next)
            .await
        {
            Ok(written) => {
                self.observe(&written);
                Ok(Attempt::Held)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Raced),
            Err(e) => Err(e),
        }
    }

    /// Clears the holder when it is this replica, so standbys need not wait for expiry.
    async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(lease) = self.api.get_opt(&self.config.lease).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        let mut next = lease;
        next.spec = Some(spec);
        match self
            .api
            .replace(&self.config.lease, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(()),
            // Someone else wrote it meanwhile: it is not ours to clear any more.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Waits until this replica holds the Lease, then keeps renewing it in the background.
pub async fn acquire(client: Client, config: ElectionConfig) -> Result<Leadership, ElectionError> {
    if config.renew_deadline >= config.lease_duration
        || config.retry_period >= config.renew_deadline
    {
        return Err(ElectionError::Timing {
            lease: config.lease_duration,
            renew: config.renew_deadline,
            retry: config.retry_period,
        });
    }
    let mut elector = Elector {
        api: Api::namespaced(client, &config.namespace),
        config,
        observed: None,
    };
    let retry = elector.config.retry_period;
    let mut last_holder = None;
    loop {
        match elector.try_acquire_or_renew().await {
            Ok(Attempt::Held) => break,
            Ok(Attempt::HeldByOther(holder)) => {
                if last_holder.as_ref() != Some(&holder) {
                    tracing::info!(%holder, "waiting for leadership");
                    last_holder = Some(holder);
                }
            }
            Ok(Attempt::Raced) => {}
            Err(e) => tracing::warn!(error = %e, "failed to read or take the lease; retrying"),
        }
        tokio::time::sleep(jittered(retry)).await;
    }
    tracing::info!(lease = %elector.config.lease, identity = %elector.config.identity, "acquired leadership");
    let (stop_tx, stop_rx) = oneshot::channel();
    let (lost_tx, lost_rx) = oneshot::channel();
    let task = tokio::spawn(lead(elector, stop_rx, lost_tx));
    Ok(Leadership {
        stop: Some(stop_tx),
        lost: Some(lost_rx),
        task,
    })
}

/// Renews every retry period until told to stop (then releases) or until leadership is
/// lost (then says so).
async fn lead(mut elector: Elector, mut stop: oneshot::Receiver<()>, lost: oneshot::Sender<()>) {
    let mut renewed = Instant::now();
    loop {
        tokio::select! {
            _ = &mut stop => {
                if let Err(e) = elector.release().await {
                    tracing::warn!(error = %e, "failed to release the lease; it expires on its own");
                } else {
                    tracing::info!("released the lease");
                }
                return;
            }
            () = tokio::time::sleep(elector.config.retry_period) => {}
        }
        let deadline = renewed + elector.config.renew_deadline;
        let attempt = tokio::time::timeout_at(deadline, elector.try_acquire_or_renew()).await;
        match attempt {
            Ok(Ok(Attempt::Held)) => renewed = Instant::now(),
            Ok(Ok(Attempt::HeldByOther(holder))) => {
                tracing::error!(%holder, "another replica holds the lease");
                break;
            }
            Ok(Ok(Attempt::Raced)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "failed to renew the lease"),
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            tracing::error!(
                deadline = ?elector.config.renew_deadline,
                "could not renew the lease in time"
            );
            break;
        }
    }
    let _ = lost.send(());
}

/// `base` plus up to 20% so standbys do not retry in lockstep.
fn jittered(base: Duration) -> Duration {
    base + base.mul_f64(rand::random::<f64>() * 0.2)
}

/// The defaults are consistent, and a leader always gives up before its Lease expires for
/// the others.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_timing_gives_up_before_the_lease_expires() {
        let c = ElectionConfig::new("l", "ns", "pod-a");
        assert!(c.retry_period < c.renew_deadline && c.renew_deadline < c.lease_duration);
        assert!(jittered(c.retry_period) <= c.retry_period.mul_f64(1.2));
    }
}

//! The reconcile pipeline for one GatewayArray, one module a step: `fetch` → `validate`
//! (pure) → `keys` (pure) → `apply` (build, pure, then server-side apply with owner
//! references) → `status`. Only fetch, apply and status touch the API; each has its
//! own error type, wrapped by [`Error`].

mod apply;
mod fetch;
mod keys;
mod status;
mod validate;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use parking_lot::Mutex;
use portcullis_crds::translate;
use portcullis_crds::v1alpha1::{GatewayArray, ServerFarm};

pub use apply::ApplyError;
pub use fetch::{FetchError, Fetched, ForeignObject};
pub use status::StatusError;
pub use validate::{Validated, validate};

use crate::builders;
use crate::members::MemberStatusSource;
use crate::metrics::Metrics;
use apply::Applied;
use status::apply_status;

/// How the controller runs, from flags.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Image of member pods when `spec.pod.image` is unset.
    pub dataplane_image: String,
    /// Whether Secrets are watched (else re-read every [`SECRET_POLL`]).
    pub watch_secrets: bool,
    /// Whether loopback, link-local and metadata targets are allowed.
    pub allow_private_targets: bool,
    /// The one namespace watched, `None` for all: where farms naming an array are
    /// looked for (a farm may name an array in another namespace).
    pub watch_namespace: Option<String>,
    /// Classes served besides Portcullis's own IngressClasses (the ingress-nginx
    /// migration switch): their Ingresses' farms are published by its array.
    pub migration: portcullis_crds::ingress::Migration,
}

/// How often referenced Secrets are re-read when they are not watched.
pub const SECRET_POLL: Duration = Duration::from_secs(60);
/// The longest wait between two reconciles of an array.
pub const MAX_REQUEUE: Duration = Duration::from_secs(300);
/// Re-check interval while members catch up with the config.
pub const CONVERGE_POLL: Duration = Duration::from_secs(15);
/// The longest event note (events.k8s.io `note`) the API server accepts.
pub const MAX_EVENT_NOTE: usize = 1024;

/// Everything a reconcile needs besides the array.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Flags.
    pub settings: Settings,
    /// Member `/status` reader.
    pub members: Arc<dyn MemberStatusSource>,
    /// Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Metrics,
    /// The clock (fixed in tests).
    pub clock: Arc<dyn Fn() -> Timestamp + Send + Sync>,
    /// Fresh key material (fixed in tests).
    pub random_key: Arc<dyn Fn() -> [u8; 32] + Send + Sync>,
    failures: Mutex<HashMap<ObjectRef<GatewayArray>, u32>>,
}

impl Context {
    /// A context with the real clock and randomness.
    pub fn new(
        client: Client,
        settings: Settings,
        members: Arc<dyn MemberStatusSource>,
        recorder: Recorder,
        metrics: Metrics,
    ) -> Self {
        Context {
            client,
            settings,
            members,
            recorder,
            metrics,
            clock: Arc::new(Timestamp::now),
            random_key: Arc::new(rand::random),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces the clock and the key source (tests).
    pub fn with_determinism(
        mut self,
        clock: Arc<dyn Fn() -> Timestamp + Send + Sync>,
        random_key: Arc<dyn Fn() -> [u8; 32] + Send + Sync>,
    ) -> Self {
        self.clock = clock;
        self.random_key = random_key;
        self
    }
}

/// Why a reconcile failed: the step that failed, with its own error. Messages name
/// resources, never Secret contents.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading from the API failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// A server-side apply failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// A status write failed.
    #[error(transparent)]
    Status(#[from] StatusError),
    /// The objects could not be built.
    #[error(transparent)]
    Build(#[from] builders::BuildError),
    /// The array came without a namespace.
    #[error("failed to reconcile GatewayArray {0}: it has no namespace")]
    NoNamespace(String),
}

impl Error {
    /// A stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Fetch(_) => "fetch",
            Error::Apply(_) => "apply",
            Error::Status(_) => "status",
            Error::Build(_) => "build",
            Error::NoNamespace(_) => "no_namespace",
        }
    }
}

fn api<K>(client: &Client, ns: &str) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    Api::namespaced(client.clone(), ns)
}

impl Context {
    /// Publishes an event about `reference`; a failure is logged, not returned.
    /// Publishes an event about `reference` (a failure is logged, not returned).
    pub(crate) async fn publish(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            // The API server refuses the whole event for a longer note.
            note: Some(crate::status::truncate(note, MAX_EVENT_NOTE)),
            action: action.to_owned(),
            secondary: None,
        };
        // An event that cannot be written is not worth failing the reconcile for.
        if let Err(e) = self.recorder.publish(&event, reference).await {
            tracing::warn!(error = %e, reason, "failed to publish event");
        }
    }
}

/// What every step after fetch works on: the array as the API server has it now.
struct Scope<'a> {
    ctx: &'a Context,
    array: &'a GatewayArray,
    ns: &'a str,
    now: Timestamp,
}

impl Scope<'_> {
    /// Publishes an event about the array.
    async fn event(&self, type_: EventType, reason: &str, action: &str, note: String) {
        let reference = self.array.object_ref(&());
        self.ctx
            .publish(&reference, type_, reason, action, note)
            .await;
    }
}

/// Reconciles one array.
#[tracing::instrument(skip_all, fields(array = %array.name_any(), namespace = array.namespace().unwrap_or_default()))]
pub async fn reconcile(array: Arc<GatewayArray>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_inner(&array, &ctx).await;
    ctx.metrics.observe(started.elapsed());
    if result.is_ok() {
        ctx.failures.lock().remove(&ObjectRef::from(array.as_ref()));
    }
    result
}

async fn reconcile_inner(cached: &GatewayArray, ctx: &Context) -> Result<Action, Error> {
    let name = cached.name_any();
    let ns = cached
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let now = (ctx.clock)();

    // The array as the API server has it now: the cache may not have seen our own last
    // status write yet, and `status.keysSecret` must be current when the keys Secret is
    // being renamed (else a quick rename back and forth could look like "no keyring").
    let Some(array) = fetch::current_array(&ctx.client, &ns, &name).await? else {
        return Ok(Action::await_change());
    };
    // Being deleted (foreground deletion waits for the owned objects to go first): writing
    // anything now would re-create what the garbage collector just removed.
    if array.metadata.deletion_timestamp.is_some() {
        tracing::debug!("being deleted; leaving the owned objects to the garbage collector");
        return Ok(Action::await_change());
    }
    let scope = Scope {
        ctx,
        array: &array,
        ns: &ns,
        now,
    };

    let fetched = fetch::fetch(&array, &ns, ctx).await?;
    let validated = validate(&array, &fetched, &ctx.settings);
    let stored = keys::stored_keys(&fetched, now);
    // Only a valid translation is built and written.
    let applied = match &validated.translation {
        Some(t) => apply::apply(&scope, &fetched, &validated, t, &stored).await?,
        None => Applied::default(),
    };
    let converged = status::report(&scope, &fetched, &validated, &stored, &applied).await?;
    // A refused apply is also a failed reconcile: counted, logged and retried with backoff.
    if let Some(e) = applied.error {
        return Err(e.into());
    }
    let mut requeue = MAX_REQUEUE;
    if !ctx.settings.watch_secrets {
        requeue = requeue.min(SECRET_POLL);
    }
    if let Some(after) = applied.requeue_after {
        requeue = requeue.min(after);
    }
    if !converged && validated.translation.is_some() {
        requeue = requeue.min(CONVERGE_POLL);
    }
    Ok(Action::requeue(requeue))
}

/// Reconciles one ServerFarm, for the one case no array reconcile sees: its `arrayRef`
/// names a GatewayArray that does not exist (never did, was deleted, or the farm moved
/// to a name with a typo). Such a farm says so in its status; a farm whose array exists
/// is left to that array's reconcile.
#[tracing::instrument(skip_all, fields(farm = %farm.name_any(), namespace = farm.namespace().unwrap_or_default()))]
pub async fn reconcile_farm(farm: Arc<ServerFarm>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = farm.name_any();
    let ns = farm
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let array = &farm.spec.array_ref.name;
    let array_ns = translate::array_namespace(&farm).unwrap_or_else(|| ns.clone());
    // A name no array can have is not looked up (`get("")` would be a list).
    let exists = translate::is_dns_label(array)
        && translate::is_namespace(&array_ns)
        && fetch::current_array(&ctx.client, &array_ns, array)
            .await?
            .is_some();
    if exists {
        return Ok(Action::await_change());
    }
    let new = crate::status::orphan_farm_status(&farm, (ctx.clock)());
    if farm.status.as_ref() != Some(&new) {
        apply_status::<ServerFarm>(&ctx.client, &ns, &name, &new).await?;
        let was_orphan = farm.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Accepted" && c.reason == "ArrayNotFound")
        });
        if !was_orphan {
            ctx.publish(
                &farm.object_ref(&()),
                EventType::Warning,
                "ArrayNotFound",
                "Validate",
                format!("not published: GatewayArray {array_ns}/{array} does not exist"),
            )
            .await;
        }
    }
    Ok(Action::await_change())
}

/// The requeue after a failed farm reconcile. Counts the failure by its stable label.
pub fn farm_error_policy(_farm: Arc<ServerFarm>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(error.label());
    tracing::warn!(error = %error, reason = error.label(), "farm reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

/// The requeue after a failed reconcile: 5s doubling per consecutive failure, at most
/// five minutes. Counts the failure by its stable label.
pub fn error_policy(array: Arc<GatewayArray>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(error.label());
    tracing::warn!(error = %error, reason = error.label(), "reconcile failed");
    let mut failures = ctx.failures.lock();
    let n = failures.entry(ObjectRef::from(array.as_ref())).or_insert(0);
    *n = n.saturating_add(1);
    Action::requeue(backoff(*n))
}

/// The backoff after `failures` consecutive failures.
pub fn backoff(failures: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << failures.saturating_sub(1).min(10));
    Duration::from_secs(secs).min(MAX_REQUEUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(4), Duration::from_secs(40));
        assert_eq!(backoff(30), MAX_REQUEUE);
    }
}

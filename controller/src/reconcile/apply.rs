//! Build and apply: the rotation step, the array's objects (built pure by
//! [`builders`]), written by server-side apply, and the events that say what changed.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::EventType;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::keys::{self, StoredKeys, owned_by};
use super::{Fetched, Scope, Validated, api};
use crate::builders::{self, BuildError, BuildInputs, Desired, FIELD_MANAGER, names};
use crate::keyring::{RotationPlan, RotationStep};
use crate::status::Blocked;
use portcullis_crds::translate::Translation;

/// A server-side apply (or a deletion) failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to apply {what}: {source}")]
pub struct ApplyError {
    /// What was applied.
    pub what: String,
    /// The API error.
    #[source]
    pub source: kube::Error,
}

/// What the apply step wrote, and what stopped it.
#[derive(Debug, Default)]
pub(super) struct Applied {
    /// The rotation step, when the keys Secret holding its keyring was written.
    pub plan: Option<RotationPlan>,
    /// Why nothing (or not everything) was written.
    pub blocked: Option<Blocked>,
    /// The refused apply: the reconcile fails with it once status is written.
    pub error: Option<ApplyError>,
    /// Whether the ConfigMap was written.
    pub config_written: bool,
    /// When the rotation wants the next reconcile.
    pub requeue_after: Option<std::time::Duration>,
}

/// Which of the array's objects this reconcile wrote.
#[derive(Debug, Default)]
struct Written {
    secret: bool,
    config: bool,
}

/// Rotates, builds and applies the array's objects for `translation`, and publishes
/// the events for what changed. Only a build error fails it at once; a refused apply is
/// reported in [`Applied`].
pub(super) async fn apply(
    scope: &Scope<'_>,
    fetched: &Fetched,
    validated: &Validated,
    translation: &Translation,
    stored: &StoredKeys,
) -> Result<Applied, BuildError> {
    let (ctx, array) = (scope.ctx, scope.array);
    let config = &translation.config;
    let plan = keys::plan(
        array,
        config,
        stored,
        &fetched.members,
        scope.now,
        (ctx.random_key)(),
    );
    let desired = builders::build(&BuildInputs {
        array,
        config,
        keyring: &plan.keyring,
        tls: &validated.tls,
        rotation_handled: plan.handled.as_deref(),
        default_image: &ctx.settings.dataplane_image,
    })?;
    let mut applied = Applied {
        requeue_after: Some(plan.requeue_after),
        ..Applied::default()
    };
    // An object the API server would refuse for its size is not sent, nor is any
    // other: the last objects written stay consistent with each other.
    let oversized = builders::oversized(&desired);
    let mut written = Written::default();
    if !oversized.is_empty() {
        applied.blocked = Some(Blocked {
            reason: "ObjectTooLarge",
            message: oversized.join("; "),
            spec_problem: true,
        });
    } else if let Err(e) = write(scope, fetched, stored, &desired, &mut written).await {
        applied.blocked = Some(blocked_by(&e));
        applied.error = Some(e);
    }
    announce(scope, translation, stored, &plan, &written).await;
    applied.config_written = written.config;
    applied.plan = written.secret.then_some(plan);
    Ok(applied)
}

/// Apply: identity and permissions first, then data, then the workload. A refusal stops
/// here; what was written before keeps serving, and status says which object and why.
async fn write(
    scope: &Scope<'_>,
    fetched: &Fetched,
    stored: &StoredKeys,
    desired: &Desired,
    written: &mut Written,
) -> Result<(), ApplyError> {
    let (c, ns) = (&scope.ctx.client, scope.ns);
    apply_object::<ServiceAccount>(c, ns, &desired.service_account).await?;
    apply_object::<Role>(c, ns, &desired.role).await?;
    apply_object::<RoleBinding>(c, ns, &desired.role_binding).await?;
    apply_object::<Secret>(c, ns, &desired.secret).await?;
    written.secret = true;
    apply_object::<ConfigMap>(c, ns, &desired.config_map).await?;
    written.config = true;
    apply_object::<Deployment>(c, ns, &desired.deployment).await?;
    apply_object::<Service>(c, ns, &desired.service).await?;
    apply_object::<PodDisruptionBudget>(c, ns, &desired.pdb).await?;
    if let Some(previous) = &fetched.previous_keys {
        retire_previous_keys(scope, previous, stored.carried_over).await?;
    }
    Ok(())
}

/// Server-side apply of `obj`, owned by the controller's field manager.
async fn apply_object<K>(client: &kube::Client, ns: &str, obj: &K) -> Result<(), ApplyError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let name = obj.name_any();
    api::<K>(client, ns)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await
        .map_err(|source| ApplyError {
            what: format!("{} {ns}/{name}", K::kind(&())),
            source,
        })?;
    Ok(())
}

/// After `spec.sessionKeys.secretName` changed and the new Secret was written: deletes
/// the previous keys Secret (owned by this array; it holds copies of private keys nobody
/// updates any more) once its keys live on in the new one, and says so in an event. A
/// previous Secret without a valid keyring had nothing to carry over and is kept.
async fn retire_previous_keys(
    scope: &Scope<'_>,
    previous: &Secret,
    carried_over: bool,
) -> Result<(), ApplyError> {
    let (ctx, array, ns) = (scope.ctx, scope.array, scope.ns);
    let keys_name = names::secret(array);
    let old = previous.name_any();
    let note = if carried_over && owned_by(previous, array) {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: previous.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api::<Secret>(&ctx.client, ns).delete(&old, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(source) => {
                return Err(ApplyError {
                    what: format!("deletion of Secret {ns}/{old}"),
                    source,
                });
            }
        }
        format!(
            "the keyring now lives in Secret {keys_name}; deleted the previous keys Secret {old}"
        )
    } else {
        format!(
            "the keyring now lives in Secret {keys_name}; left the previous keys Secret {old}, which held no usable keyring, in place"
        )
    };
    scope
        .event(EventType::Normal, "KeysSecretMoved", "MoveKeys", note)
        .await;
    Ok(())
}

/// The events for what this reconcile wrote: a new config, a replaced keyring, a
/// rotation step.
async fn announce(
    scope: &Scope<'_>,
    translation: &Translation,
    stored: &StoredKeys,
    plan: &RotationPlan,
    written: &Written,
) {
    let config = &translation.config;
    let hash = config.content_hash();
    let previous_hash = scope
        .array
        .status
        .as_ref()
        .and_then(|s| s.config_hash.as_deref());
    if written.config && previous_hash != Some(hash.as_str()) {
        let note = format!(
            "wrote config {hash} with {} farm(s) and {} endpoint(s)",
            config.farms.len(),
            config.endpoints.len()
        );
        scope
            .event(EventType::Normal, "ConfigApplied", "Apply", note)
            .await;
    }
    if !written.secret {
        return;
    }
    if let (Some(error), RotationStep::Generated { id }) = (&stored.error, &plan.step) {
        let note = format!(
            "the stored keyring was unusable ({error}); generated a new one with key {id}, so existing sessions restart"
        );
        scope
            .event(EventType::Warning, "KeyringReplaced", "RotateKeys", note)
            .await;
    }
    if let Some((reason, label, note)) = keys::step_event(&plan.step) {
        scope.ctx.metrics.key_step(label);
        tracing::info!(step = label, "keyring step");
        scope
            .event(EventType::Normal, reason, "RotateKeys", note)
            .await;
    }
}

/// What status says about a failed apply: the object, and the API server's own words.
fn blocked_by(error: &ApplyError) -> Blocked {
    let ApplyError { what, source } = error;
    match source {
        kube::Error::Api(status) => Blocked {
            reason: "ApplyFailed",
            message: format!(
                "the API server refused {what} ({} {}): {}",
                status.code, status.reason, status.message
            ),
            // Invalid or malformed: only a change of the spec helps.
            spec_problem: matches!(status.code, 400 | 422),
        },
        other => Blocked {
            reason: "ApplyFailed",
            message: format!("failed to apply {what}: {other}"),
            spec_problem: false,
        },
    }
}

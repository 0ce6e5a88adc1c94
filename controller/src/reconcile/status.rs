//! Status: the array's and every farm's status, written when they changed, with the
//! events for new problems.

use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use portcullis_crds::translate;
use portcullis_crds::v1alpha1::{GatewayArray, GatewayArrayStatus, ServerFarm};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::apply::Applied;
use super::keys::StoredKeys;
use super::{Fetched, Scope, Validated, api};
use crate::builders::{FIELD_MANAGER, names};
use crate::status::{self as conditions, ArrayStatusInputs, Blocked};

/// A status write failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to write status of {what}: {source}")]
pub struct StatusError {
    /// Whose status.
    pub what: String,
    /// The API error.
    #[source]
    pub source: kube::Error,
}

/// Server-side apply of the status subresource of `K` `ns/name`.
pub(super) async fn apply_status<K>(
    client: &kube::Client,
    ns: &str,
    name: &str,
    status: &impl Serialize,
) -> Result<(), StatusError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"name": name},
        "status": status,
    });
    api::<K>(client, ns)
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|source| StatusError {
            what: format!("{} {ns}/{name}", K::kind(&())),
            source,
        })?;
    Ok(())
}

/// Writes the status of every farm and of the array. Returns whether the array is
/// `Ready` (its members converged on the config).
pub(super) async fn report(
    scope: &Scope<'_>,
    fetched: &Fetched,
    validated: &Validated,
    stored: &StoredKeys,
    applied: &Applied,
) -> Result<bool, StatusError> {
    let array_status = array_status(scope, fetched, validated, stored, applied);
    scope.ctx.metrics.array_members(
        scope.ns,
        &scope.array.name_any(),
        conditions::convergence(&array_status),
    );
    let converged = array_status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let blocked = applied.blocked.as_ref();
    write_farm_statuses(
        scope,
        fetched,
        validated,
        array_status.ready_members,
        blocked,
    )
    .await?;
    write_array_status(scope, validated, &array_status, blocked).await?;
    Ok(converged)
}

/// The array's status after this reconcile.
fn array_status(
    scope: &Scope<'_>,
    fetched: &Fetched,
    validated: &Validated,
    stored: &StoredKeys,
    applied: &Applied,
) -> GatewayArrayStatus {
    let array = scope.array;
    let plan = applied.plan.as_ref();
    let config_hash = validated
        .translation
        .as_ref()
        .filter(|_| applied.config_written)
        .map(|t| t.config.content_hash())
        .or_else(|| array.status.as_ref().and_then(|s| s.config_hash.clone()));
    let keys_name = names::secret(array);
    conditions::array_status(&ArrayStatusInputs {
        array,
        errors: &validated.array_errors,
        missing_refs: &validated.array_missing,
        config_hash: config_hash.as_deref(),
        keys_secret: if plan.is_some() {
            Some(keys_name.as_str())
        } else {
            array.status.as_ref().and_then(|s| s.keys_secret.as_deref())
        },
        keyring: plan.map(|p| &p.keyring).or(stored.keyring.as_ref()),
        rotation: plan.map(|p| &p.step),
        members: &fetched.members,
        blocked: applied.blocked.as_ref(),
        now: scope.now,
    })
}

/// Writes the status of every farm with a verdict whose status changed; a farm newly
/// refused gets an event.
async fn write_farm_statuses(
    scope: &Scope<'_>,
    fetched: &Fetched,
    validated: &Validated,
    ready: i32,
    blocked: Option<&Blocked>,
) -> Result<(), StatusError> {
    for farm in &fetched.farms {
        let id = translate::farm_id(farm);
        let Some(verdict) = validated.verdicts.get(&id) else {
            continue;
        };
        let new = conditions::farm_status(farm, scope.array, verdict, ready, blocked, scope.now);
        if farm.status.as_ref() == Some(&new) {
            continue;
        }
        let farm_ns = farm.namespace().unwrap_or_default();
        apply_status::<ServerFarm>(&scope.ctx.client, &farm_ns, &farm.name_any(), &new).await?;
        let accepted = new.conditions.iter().find(|c| c.type_ == "Accepted");
        if let Some(c) = accepted.filter(|c| c.status == "False") {
            let was = farm
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Accepted"));
            if was.map(|w| (&w.status, &w.message)) != Some((&c.status, &c.message)) {
                scope
                    .ctx
                    .publish(
                        &farm.object_ref(&()),
                        EventType::Warning,
                        "FarmRejected",
                        "Validate",
                        c.message.clone(),
                    )
                    .await;
            }
        }
    }
    Ok(())
}

/// Writes the array's status when it changed; a newly invalid or blocked array gets an
/// event.
async fn write_array_status(
    scope: &Scope<'_>,
    validated: &Validated,
    array_status: &GatewayArrayStatus,
    blocked: Option<&Blocked>,
) -> Result<(), StatusError> {
    let array = scope.array;
    let previous = array.status.as_ref();
    if previous == Some(array_status) {
        return Ok(());
    }
    let was_invalid = previous.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ != "Ready" && c.type_ != "KeysRotating" && c.status == "False")
    });
    let was_blocked = |b: &Blocked| {
        previous.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.reason == b.reason)
        })
    };
    apply_status::<GatewayArray>(&scope.ctx.client, scope.ns, &array.name_any(), array_status)
        .await?;
    let problems: Vec<String> = conditions::error_message(&validated.array_errors)
        .split("; ")
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .chain(validated.array_missing.iter().cloned())
        .collect();
    if !problems.is_empty() && !was_invalid {
        let note = format!("config not written: {}", problems.join("; "));
        scope
            .event(EventType::Warning, "ArrayNotApplied", "Validate", note)
            .await;
    }
    if let Some(b) = blocked.filter(|b| !was_blocked(b)) {
        let note = format!("{}; the last objects written keep serving", b.message);
        scope
            .event(EventType::Warning, b.reason, "Apply", note)
            .await;
    }
    Ok(())
}

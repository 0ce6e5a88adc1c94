//! Pure status builders: conditions a person can act on, for farms and arrays.
//! `lastTransitionTime` only moves when a condition's status changes, so an unchanged
//! world yields an identical status and no write.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use portcullis_crds::keyring::KeyringDoc;
use portcullis_crds::translate::{FarmOutcome, TranslateError};
use portcullis_crds::v1alpha1::{
    GatewayArray, GatewayArrayStatus, MemberStatus, ServerFarm, ServerFarmStatus,
};

use crate::keyring::{Member, RotationStep};
use crate::metrics::Convergence;

/// What became of one farm in this reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum FarmVerdict {
    /// The translation's outcome.
    Translated(FarmOutcome),
    /// Left out because Secrets it names are missing or incomplete.
    MissingRefs(Vec<String>),
    /// Left out because the array itself is invalid.
    ArrayInvalid(String),
}

/// Why this reconcile wrote fewer objects than it built: the API server refused one
/// (`ApplyFailed`), or one would be too large for it (`ObjectTooLarge`). The objects
/// written before keep serving.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    /// The condition and event reason.
    pub reason: &'static str,
    /// Which object, and what the API server said (or would say).
    pub message: String,
    /// Whether the spec must change (the API server refused the object as invalid, or it
    /// is too large), so `Accepted` is `False` too; else only `Ready` is.
    pub spec_problem: bool,
}

/// The longest condition message the API server accepts.
pub const MAX_CONDITION_MESSAGE: usize = 32 * 1024;

/// `text` cut to at most `max` bytes on a character boundary, saying so at the end. The
/// API server refuses a whole status (or event) for one message over its limit.
pub fn truncate(mut text: String, max: usize) -> String {
    const MARK: &str = " … (truncated)";
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(MARK);
    text
}

/// Builds a condition, keeping the previous transition time when the status is unchanged.
/// Messages are cut to [`MAX_CONDITION_MESSAGE`].
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: truncate(message, MAX_CONDITION_MESSAGE),
        observed_generation: generation,
        last_transition_time,
    }
}

/// Renders farm errors as `field: problem; field: problem`.
pub fn error_message(errors: &[TranslateError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Builds farm conditions that keep `lastTransitionTime` while the status holds.
fn farm_conditions(
    farm: &ServerFarm,
    now: Timestamp,
) -> impl Fn(&str, &str, &str, String) -> Condition + '_ {
    let previous = farm
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let generation = farm.metadata.generation;
    move |t, s, r, m| condition(previous, t, s, r, m, generation, now)
}

/// The status of a farm. `blocked` says why the array's objects were not all written.
pub fn farm_status(
    farm: &ServerFarm,
    array: &GatewayArray,
    verdict: &FarmVerdict,
    ready_members: i32,
    blocked: Option<&Blocked>,
    now: Timestamp,
) -> ServerFarmStatus {
    let generation = farm.metadata.generation;
    let c = farm_conditions(farm, now);
    let array_name = format!(
        "{}/{}",
        array.namespace().unwrap_or_default(),
        array.name_any()
    );
    let (conditions, endpoints) = match verdict {
        FarmVerdict::Translated(FarmOutcome::Accepted {
            unresolved,
            endpoints,
        }) => {
            let published = Published {
                array_name: &array_name,
                ready_members,
                has_targets: !endpoints.is_empty()
                    || farm.spec.servers.iter().any(|s| s.host.is_some()),
                blocked,
            };
            let conditions = published_conditions(&c, unresolved, &published);
            (conditions, endpoints.clone())
        }
        FarmVerdict::Translated(FarmOutcome::Rejected(errors)) => (
            not_published(
                &c,
                ("False", "Invalid", error_message(errors)),
                (
                    "Unknown",
                    "NotAccepted",
                    "not checked while the farm is invalid",
                ),
                "fix the Accepted condition",
            ),
            Vec::new(),
        ),
        FarmVerdict::MissingRefs(problems) => {
            let accepted = "not published until the Secrets it names exist";
            (
                not_published(
                    &c,
                    ("False", "UnresolvedRefs", accepted.to_owned()),
                    ("False", "SecretNotFound", &problems.join("; ")),
                    "fix the ResolvedRefs condition",
                ),
                Vec::new(),
            )
        }
        FarmVerdict::ArrayInvalid(message) => {
            let accepted = format!("GatewayArray {array_name} is invalid: {message}");
            (
                not_published(
                    &c,
                    ("False", "ArrayInvalid", accepted),
                    (
                        "Unknown",
                        "NotAccepted",
                        "not checked while the array is invalid",
                    ),
                    "fix the GatewayArray",
                ),
                Vec::new(),
            )
        }
    };
    ServerFarmStatus {
        observed_generation: generation,
        conditions,
        endpoints,
    }
}

/// The conditions of a farm that is not published: `Accepted` and `ResolvedRefs` as
/// (status, reason, message), and `Ready` `False` saying what to `fix`.
fn not_published(
    c: &impl Fn(&str, &str, &str, String) -> Condition,
    (status, reason, message): (&str, &str, String),
    (refs_status, refs_reason, refs_message): (&str, &str, &str),
    fix: &str,
) -> Vec<Condition> {
    vec![
        c("Accepted", status, reason, message),
        c(
            "ResolvedRefs",
            refs_status,
            refs_reason,
            refs_message.to_owned(),
        ),
        c(
            "Ready",
            "False",
            "NotAccepted",
            format!("not published; {fix}"),
        ),
    ]
}

/// What decides a published farm's `Ready`.
struct Published<'a> {
    /// `namespace/name` of its array.
    array_name: &'a str,
    /// The array's ready members.
    ready_members: i32,
    /// Whether a server resolved to an endpoint (or is left to DNS).
    has_targets: bool,
    /// Why the array's objects were not all written.
    blocked: Option<&'a Blocked>,
}

/// The conditions of a farm its array publishes.
fn published_conditions(
    c: &impl Fn(&str, &str, &str, String) -> Condition,
    unresolved: &[String],
    p: &Published<'_>,
) -> Vec<Condition> {
    let array_name = p.array_name;
    let refs = if unresolved.is_empty() {
        c(
            "ResolvedRefs",
            "True",
            "ResolvedRefs",
            "every Service and Secret it names exists".into(),
        )
    } else {
        c(
            "ResolvedRefs",
            "False",
            "BackendNotFound",
            unresolved.join("; "),
        )
    };
    let ready = if let Some(b) = p.blocked {
        c(
            "Ready",
            "False",
            b.reason,
            format!(
                "GatewayArray {array_name} could not write its objects: {}; members serve the last config written",
                b.message
            ),
        )
    } else if p.ready_members == 0 {
        c(
            "Ready",
            "False",
            "NoReadyMembers",
            format!("GatewayArray {array_name} has no ready members"),
        )
    } else if !p.has_targets {
        c(
            "Ready",
            "False",
            "NoEndpoints",
            "no server resolved to a ready endpoint".into(),
        )
    } else {
        c(
            "Ready",
            "True",
            "Ready",
            format!(
                "served by {} ready member(s) of GatewayArray {array_name}",
                p.ready_members
            ),
        )
    };
    vec![
        c(
            "Accepted",
            "True",
            "Accepted",
            format!("published by GatewayArray {array_name}"),
        ),
        refs,
        ready,
    ]
}

/// The status of a farm whose `arrayRef` names no existing GatewayArray: nothing
/// publishes it, and it says which array it is waiting for.
pub fn orphan_farm_status(farm: &ServerFarm, now: Timestamp) -> ServerFarmStatus {
    let generation = farm.metadata.generation;
    let c = farm_conditions(farm, now);
    let array = format!(
        "{}/{}",
        portcullis_crds::translate::array_namespace(farm).unwrap_or_default(),
        farm.spec.array_ref.name
    );
    let refs = if portcullis_crds::translate::is_dns_label(&farm.spec.array_ref.name) {
        format!(
            "spec.arrayRef.name: GatewayArray {array} does not exist; create it or name an existing array"
        )
    } else {
        format!(
            "spec.arrayRef.name: {:?} cannot be a GatewayArray name (a DNS-1035 label: at most 63 lower-case letters, digits and '-', starting with a letter)",
            farm.spec.array_ref.name
        )
    };
    ServerFarmStatus {
        observed_generation: generation,
        conditions: vec![
            c(
                "Accepted",
                "False",
                "ArrayNotFound",
                format!("not published: GatewayArray {array} does not exist"),
            ),
            c("ResolvedRefs", "False", "ArrayNotFound", refs),
            c(
                "Ready",
                "False",
                "NotAccepted",
                "not published; fix the ResolvedRefs condition".into(),
            ),
        ],
        endpoints: Vec::new(),
    }
}

/// Inputs of the array status.
#[derive(Clone, Debug)]
pub struct ArrayStatusInputs<'a> {
    /// The array.
    pub array: &'a GatewayArray,
    /// The array's own errors, when it is invalid.
    pub errors: &'a [TranslateError],
    /// Problems with Secrets the listeners name.
    pub missing_refs: &'a [String],
    /// The hash of the config in the ConfigMap.
    pub config_hash: Option<&'a str>,
    /// The Secret the keyring was last written to.
    pub keys_secret: Option<&'a str>,
    /// The keyring in the Secret.
    pub keyring: Option<&'a KeyringDoc>,
    /// The rotation step taken.
    pub rotation: Option<&'a RotationStep>,
    /// The members.
    pub members: &'a [Member],
    /// Why the objects were not all written.
    pub blocked: Option<&'a Blocked>,
    /// Now.
    pub now: Timestamp,
}

/// The status of an array.
pub fn array_status(i: &ArrayStatusInputs<'_>) -> GatewayArrayStatus {
    let previous = i
        .array
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let generation = i.array.metadata.generation;
    let c =
        |t: &str, s: &str, r: &str, m: String| condition(previous, t, s, r, m, generation, i.now);
    let ready: Vec<&Member> = i.members.iter().filter(|m| m.ready).collect();
    let ready_members = i32::try_from(ready.len()).unwrap_or(i32::MAX);
    let conditions = vec![
        accepted_condition(&c, i),
        resolved_refs_condition(&c, i.missing_refs),
        ready_condition(&c, i, &ready),
        rotating_condition(&c, i.rotation),
    ];
    GatewayArrayStatus {
        observed_generation: generation,
        ready_members,
        config_hash: i.config_hash.map(str::to_owned),
        loaded_config_hash: loaded_config_hash(&ready),
        // For the scale subresource: what an HorizontalPodAutoscaler measures.
        selector: Some(crate::builders::selector_query(&i.array.name_any())),
        keys_secret: i.keys_secret.map(str::to_owned),
        active_key_id: i.keyring.and_then(|k| k.active_id().map(str::to_owned)),
        key_ids: i.keyring.map(KeyringDoc::ids).unwrap_or_default(),
        members: i.members.iter().map(member_status).collect(),
        conditions,
    }
}

/// The config hash every ready member reports, when they all report the same one.
fn loaded_config_hash(ready: &[&Member]) -> Option<String> {
    let loaded: Vec<Option<&str>> = ready
        .iter()
        .map(|m| m.report.as_ref().and_then(|r| r.config_hash.as_deref()))
        .collect();
    match loaded.first() {
        Some(Some(first)) if loaded.iter().all(|h| h == &Some(*first)) => Some((*first).to_owned()),
        _ => None,
    }
}

/// A member as status shows it.
fn member_status(m: &Member) -> MemberStatus {
    MemberStatus {
        name: m.name.clone(),
        ready: m.ready,
        config_hash: m.report.as_ref().and_then(|r| r.config_hash.clone()),
        key_ids: m
            .report
            .as_ref()
            .map(|r| r.key_ids.clone())
            .unwrap_or_default(),
    }
}

/// `Accepted`: the array's own errors, or an object the API server refused as invalid.
fn accepted_condition(
    c: &impl Fn(&str, &str, &str, String) -> Condition,
    i: &ArrayStatusInputs<'_>,
) -> Condition {
    match i.blocked {
        _ if !i.errors.is_empty() => c("Accepted", "False", "Invalid", error_message(i.errors)),
        Some(b) if b.spec_problem => c(
            "Accepted",
            "False",
            b.reason,
            format!("{}; the last objects written keep serving", b.message),
        ),
        _ => c("Accepted", "True", "Accepted", "the spec is valid".into()),
    }
}

/// `ResolvedRefs`: the listener Secrets.
fn resolved_refs_condition(
    c: &impl Fn(&str, &str, &str, String) -> Condition,
    missing_refs: &[String],
) -> Condition {
    if missing_refs.is_empty() {
        c(
            "ResolvedRefs",
            "True",
            "ResolvedRefs",
            "every listener Secret exists".into(),
        )
    } else {
        c(
            "ResolvedRefs",
            "False",
            "SecretNotFound",
            format!(
                "{}; the last good config keeps serving",
                missing_refs.join("; ")
            ),
        )
    }
}

/// `Ready`: a config was written, enough members are ready, and they all loaded it.
fn ready_condition(
    c: &impl Fn(&str, &str, &str, String) -> Condition,
    i: &ArrayStatusInputs<'_>,
    ready: &[&Member],
) -> Condition {
    let ready_members = i32::try_from(ready.len()).unwrap_or(i32::MAX);
    let desired = i.array.spec.replicas;
    let stale: Vec<&str> = ready
        .iter()
        .filter(|m| m.report.as_ref().and_then(|r| r.config_hash.as_deref()) != i.config_hash)
        .map(|m| m.name.as_str())
        .collect();
    if !i.errors.is_empty() || !i.missing_refs.is_empty() {
        c(
            "Ready",
            "False",
            "NotAccepted",
            "the controller cannot write a config; see Accepted and ResolvedRefs".into(),
        )
    } else if let Some(b) = i.blocked {
        c(
            "Ready",
            "False",
            b.reason,
            format!("{}; the last objects written keep serving", b.message),
        )
    } else if ready_members < desired {
        c(
            "Ready",
            "False",
            "MembersNotReady",
            format!("{ready_members} of {desired} members are ready"),
        )
    } else if !stale.is_empty() {
        c(
            "Ready",
            "False",
            "ConfigNotLoaded",
            format!(
                "members {} have not loaded config {}",
                stale.join(", "),
                i.config_hash.unwrap_or("-")
            ),
        )
    } else {
        c(
            "Ready",
            "True",
            "Ready",
            format!(
                "{ready_members} members serve config {}",
                i.config_hash.unwrap_or("-")
            ),
        )
    }
}

/// `KeysRotating`: whether a new key waits for members to load it.
fn rotating_condition(
    c: &impl Fn(&str, &str, &str, String) -> Condition,
    rotation: Option<&RotationStep>,
) -> Condition {
    let rotating = match rotation {
        Some(RotationStep::Added { id }) => Some(format!(
            "key {id} added; waiting for every member to load it"
        )),
        Some(RotationStep::Waiting { id, missing }) => {
            Some(format!("key {id} not yet loaded by {}", missing.join(", ")))
        }
        _ => None,
    };
    match rotating {
        Some(m) => c("KeysRotating", "True", "WaitingForMembers", m),
        None => c(
            "KeysRotating",
            "False",
            "Idle",
            "no rotation in progress".into(),
        ),
    }
}

/// How many of the array's ready members serve the config and keyring its status names
/// (for the `portcullis_controller_array_members_*` gauges). A member that did not report
/// counts as behind; with no config or keyring written yet nobody is behind it.
pub fn convergence(status: &GatewayArrayStatus) -> Convergence {
    let ready: Vec<&MemberStatus> = status.members.iter().filter(|m| m.ready).collect();
    let sorted = |ids: &[String]| {
        let mut ids = ids.to_vec();
        ids.sort();
        ids
    };
    let keyring = sorted(&status.key_ids);
    Convergence {
        ready: ready.len(),
        behind_config: status.config_hash.as_ref().map_or(0, |hash| {
            ready
                .iter()
                .filter(|m| m.config_hash.as_ref() != Some(hash))
                .count()
        }),
        behind_keyring: if keyring.is_empty() {
            0
        } else {
            ready
                .iter()
                .filter(|m| sorted(&m.key_ids) != keyring)
                .count()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convergence_counts_ready_members_behind_the_config_or_the_keyring() {
        let member = |name: &str, ready: bool, hash: Option<&str>, keys: &[&str]| MemberStatus {
            name: name.into(),
            ready,
            config_hash: hash.map(str::to_owned),
            key_ids: keys.iter().map(|k| (*k).to_owned()).collect(),
        };
        let mut status = GatewayArrayStatus {
            config_hash: Some("sha256:new".into()),
            key_ids: vec!["k2".into(), "k1".into()],
            members: vec![
                member("a", true, Some("sha256:new"), &["k1", "k2"]),
                member("b", true, Some("sha256:old"), &["k2", "k1"]),
                member("c", true, Some("sha256:new"), &["k1"]),
                member("d", true, None, &[]),
                member("e", false, Some("sha256:old"), &[]),
            ],
            ..GatewayArrayStatus::default()
        };
        assert_eq!(
            convergence(&status),
            Convergence {
                ready: 4,
                behind_config: 2,
                behind_keyring: 2
            }
        );
        status.config_hash = None;
        status.key_ids.clear();
        assert_eq!(
            convergence(&status),
            Convergence {
                ready: 4,
                behind_config: 0,
                behind_keyring: 0
            }
        );
    }

    #[test]
    fn truncation_keeps_short_text_and_cuts_long_text_on_a_character_boundary() {
        assert_eq!(truncate("short".into(), 1024), "short");
        let long = "é".repeat(1000); // 2000 bytes
        let cut = truncate(long, 1024);
        assert!(cut.len() <= 1024, "{}", cut.len());
        assert!(cut.ends_with(" … (truncated)"));
        assert!(cut.starts_with("éé"));
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let first = condition(&[], "Ready", "True", "Ready", "a".into(), Some(1), t0);
        let same = condition(
            std::slice::from_ref(&first),
            "Ready",
            "True",
            "Ready",
            "b".into(),
            Some(2),
            t1,
        );
        assert_eq!(same.last_transition_time, Time(t0));
        let flipped = condition(&[first], "Ready", "False", "X", "c".into(), Some(2), t1);
        assert_eq!(flipped.last_transition_time, Time(t1));
    }
}

//! The keyring rotation state machine. Pure: it takes the stored keyring, the time, the
//! rotation request and what members report, and returns the next keyring. Each call
//! advances at most one step of the two-phase protocol:
//!
//! 1. add a new key as `accept` (rotation interval passed, or a new request);
//! 2. promote it to `active` once every ready member lists it, the old active key becoming
//!    `accept` with `retired` = now;
//! 3. remove a retired key once `acceptRetiredFor` has passed since `retired`.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use portcullis_crds::keyring::{KeyState, KeyringDoc};

/// What one member reports on `GET /status`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberReport {
    /// Content hash of the config it serves.
    #[serde(default)]
    pub config_hash: Option<String>,
    /// Ids of its loaded keys.
    #[serde(default)]
    pub key_ids: Vec<String>,
    /// Whether it is ready.
    #[serde(default)]
    pub ready: bool,
}

/// A member as the reconciler sees it: pod name, pod readiness, and its report when it
/// answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Pod name.
    pub name: String,
    /// Pod `Ready` condition.
    pub ready: bool,
    /// Its `/status`, when it answered.
    pub report: Option<MemberReport>,
}

/// Inputs of one step.
#[derive(Clone, Debug)]
pub struct RotationInputs<'a> {
    /// The stored keyring, when there is a valid one.
    pub current: Option<&'a KeyringDoc>,
    /// Now.
    pub now: Timestamp,
    /// `session.rotationInterval`.
    pub rotation_interval: Duration,
    /// `session.acceptRetiredFor`.
    pub accept_retired_for: Duration,
    /// The array's `portcullis.io/rotate-keys` annotation.
    pub requested: Option<&'a str>,
    /// The last request handled (annotation on the keys Secret).
    pub handled: Option<&'a str>,
    /// The members.
    pub members: &'a [Member],
    /// Fresh random bytes for a new key (used only when a key is added).
    pub fresh_secret: [u8; 32],
}

/// What a step did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RotationStep {
    /// No keyring existed; one active key was generated.
    Generated {
        /// Its id.
        id: String,
    },
    /// Step 1: a new key was added as `accept`.
    Added {
        /// Its id.
        id: String,
    },
    /// Step 2 is due but some ready members have not loaded the new key.
    Waiting {
        /// The new key.
        id: String,
        /// Ready members that do not list it (or did not answer).
        missing: Vec<String>,
    },
    /// Step 2: the new key became active.
    Promoted {
        /// The new active key.
        id: String,
        /// The key it replaced, now retired.
        retired: String,
    },
    /// Step 3: retired keys past their acceptance window were removed.
    Removed {
        /// Their ids.
        ids: Vec<String>,
    },
    /// Nothing to do.
    Idle,
}

/// The result of one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationPlan {
    /// The keyring to store.
    pub keyring: KeyringDoc,
    /// What changed.
    pub step: RotationStep,
    /// The rotation request to remember as handled.
    pub handled: Option<String>,
    /// When the next step may be due.
    pub requeue_after: Duration,
}

/// How often a pending promotion is re-checked.
pub const WAITING_RECHECK: Duration = Duration::from_secs(10);

fn parse_time(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

fn rfc3339(t: Timestamp) -> String {
    Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

fn new_id(doc: &KeyringDoc, now: Timestamp) -> String {
    let base = format!("k{}", now.as_second());
    if !doc.keys.iter().any(|k| k.id == base) {
        return base;
    }
    (1..)
        .map(|n| format!("{base}-{n}"))
        .find(|id| !doc.keys.iter().any(|k| &k.id == id))
        .expect("an unused suffix exists")
}

fn since(now: Timestamp, then: Timestamp) -> Duration {
    let d = now.as_second() - then.as_second();
    Duration::from_secs(u64::try_from(d).unwrap_or(0))
}

/// The keyring after the keys Secret moved to one that brought a valid keyring of its
/// own, while the previous keys Secret (which members still use) has one too. Adopting the
/// new keyring's active key at once would let members that loaded it seal cookies the
/// others cannot open, so it goes through the two-phase rotation instead: the previous
/// keyring stays in force, the adopted active key joins as the pending key (promoted by
/// [`step`] once every ready member has loaded it), and the adopted keyring's other keys
/// join as retired accept-only keys. Any pending key the previous keyring had is retired
/// (it never sealed anything). Keys are matched by id; the previous one wins a clash.
pub fn merge_previous(adopted: &KeyringDoc, previous: &KeyringDoc, now: Timestamp) -> KeyringDoc {
    let mut out = previous.clone();
    for key in &mut out.keys {
        if key.state == KeyState::Accept && key.retired.is_none() {
            key.retired = Some(rfc3339(now));
        }
    }
    for key in &adopted.keys {
        if out.keys.iter().any(|k| k.id == key.id) {
            continue;
        }
        let mut key = key.clone();
        if key.state == KeyState::Active {
            key.state = KeyState::Accept;
            key.retired = None;
        } else if key.retired.is_none() {
            key.retired = Some(rfc3339(now));
        }
        out.keys.push(key);
    }
    out
}

/// Runs one step: generate a keyring when there is none, else promote a pending key,
/// else remove expired retired keys, else add a key when rotation is due, else idle.
pub fn step(inputs: &RotationInputs<'_>) -> RotationPlan {
    let handled = inputs.handled.map(str::to_owned);
    let Some(current) = inputs.current.filter(|d| d.validate().is_ok()) else {
        return generate(inputs, handled);
    };
    promote(current, inputs, &handled)
        .or_else(|| remove_expired(current, inputs, &handled))
        .or_else(|| add_key(current, inputs, &handled))
        .unwrap_or_else(|| idle(current, inputs, handled))
}

/// No valid keyring: a new one with one active key.
fn generate(inputs: &RotationInputs<'_>, handled: Option<String>) -> RotationPlan {
    let now = inputs.now;
    let mut doc = KeyringDoc::default();
    let id = new_id(&doc, now);
    doc.keys.push(KeyringDoc::entry(
        &id,
        &inputs.fresh_secret,
        &rfc3339(now),
        KeyState::Active,
    ));
    RotationPlan {
        keyring: doc,
        step: RotationStep::Generated { id },
        // A request made before the keyring existed is satisfied by the new key.
        handled: inputs.requested.map(str::to_owned).or(handled),
        requeue_after: inputs.rotation_interval,
    }
}

/// Step 2: a pending key (accept, never retired) waits for every ready member. With no
/// ready member nobody can meet a cookie it cannot read, and members that start later
/// load the whole ring, so an empty set promotes. `None` without a pending key.
fn promote(
    current: &KeyringDoc,
    inputs: &RotationInputs<'_>,
    handled: &Option<String>,
) -> Option<RotationPlan> {
    let pending = current
        .keys
        .iter()
        .find(|k| k.state == KeyState::Accept && k.retired.is_none())
        .map(|k| k.id.clone())?;
    let missing: Vec<String> = inputs
        .members
        .iter()
        .filter(|m| m.ready)
        .filter(|m| {
            !m.report
                .as_ref()
                .is_some_and(|r| r.key_ids.iter().any(|id| id == &pending))
        })
        .map(|m| m.name.clone())
        .collect();
    let mut doc = current.clone();
    if !missing.is_empty() {
        return Some(RotationPlan {
            keyring: doc,
            step: RotationStep::Waiting {
                id: pending,
                missing,
            },
            handled: handled.clone(),
            requeue_after: WAITING_RECHECK,
        });
    }
    let mut retired = String::new();
    for k in &mut doc.keys {
        if k.state == KeyState::Active {
            k.state = KeyState::Accept;
            k.retired = Some(rfc3339(inputs.now));
            retired = k.id.clone();
        } else if k.id == pending {
            k.state = KeyState::Active;
        }
    }
    Some(RotationPlan {
        keyring: doc,
        step: RotationStep::Promoted {
            id: pending,
            retired,
        },
        handled: handled.clone(),
        requeue_after: WAITING_RECHECK,
    })
}

/// Step 3: retired keys past the acceptance window go. `None` when none has expired.
fn remove_expired(
    current: &KeyringDoc,
    inputs: &RotationInputs<'_>,
    handled: &Option<String>,
) -> Option<RotationPlan> {
    let expired: Vec<String> = current
        .keys
        .iter()
        .filter(|k| k.state == KeyState::Accept)
        .filter(|k| {
            k.retired
                .as_deref()
                .and_then(parse_time)
                .is_some_and(|t| since(inputs.now, t) >= inputs.accept_retired_for)
        })
        .map(|k| k.id.clone())
        .collect();
    if expired.is_empty() {
        return None;
    }
    let mut doc = current.clone();
    doc.keys.retain(|k| !expired.contains(&k.id));
    Some(RotationPlan {
        keyring: doc,
        step: RotationStep::Removed { ids: expired },
        handled: handled.clone(),
        requeue_after: WAITING_RECHECK,
    })
}

/// How long the active key has been active (0 without one).
fn active_age(doc: &KeyringDoc, now: Timestamp) -> Duration {
    let active_created = doc
        .keys
        .iter()
        .find(|k| k.state == KeyState::Active)
        .and_then(|k| parse_time(&k.created))
        .unwrap_or(now);
    since(now, active_created)
}

/// Step 1: a new accept-only key when rotation is due by interval or by request. `None`
/// when it is not.
fn add_key(
    current: &KeyringDoc,
    inputs: &RotationInputs<'_>,
    handled: &Option<String>,
) -> Option<RotationPlan> {
    let now = inputs.now;
    let requested = inputs.requested.filter(|r| Some(*r) != inputs.handled);
    if active_age(current, now) < inputs.rotation_interval && requested.is_none() {
        return None;
    }
    let mut doc = current.clone();
    let id = new_id(&doc, now);
    doc.keys.push(KeyringDoc::entry(
        &id,
        &inputs.fresh_secret,
        &rfc3339(now),
        KeyState::Accept,
    ));
    Some(RotationPlan {
        keyring: doc,
        step: RotationStep::Added { id },
        handled: requested.map(str::to_owned).or_else(|| handled.clone()),
        requeue_after: WAITING_RECHECK,
    })
}

/// Idle: wake for the next rotation or the next expiry, whichever is first.
fn idle(
    current: &KeyringDoc,
    inputs: &RotationInputs<'_>,
    handled: Option<String>,
) -> RotationPlan {
    let now = inputs.now;
    let next_expiry = current
        .keys
        .iter()
        .filter_map(|k| k.retired.as_deref().and_then(parse_time))
        .map(|t| inputs.accept_retired_for.saturating_sub(since(now, t)))
        .min();
    let next_rotation = inputs
        .rotation_interval
        .saturating_sub(active_age(current, now));
    RotationPlan {
        keyring: current.clone(),
        step: RotationStep::Idle,
        handled,
        requeue_after: next_expiry.map_or(next_rotation, |e| e.min(next_rotation)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000;
    const HOUR: Duration = Duration::from_secs(3600);

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn member(name: &str, ready: bool, keys: &[&str]) -> Member {
        Member {
            name: name.into(),
            ready,
            report: Some(MemberReport {
                config_hash: None,
                key_ids: keys.iter().map(|s| s.to_string()).collect(),
                ready,
            }),
        }
    }

    fn inputs<'a>(
        current: Option<&'a KeyringDoc>,
        now: i64,
        members: &'a [Member],
    ) -> RotationInputs<'a> {
        RotationInputs {
            current,
            now: at(now),
            rotation_interval: 24 * HOUR,
            accept_retired_for: 2 * HOUR,
            requested: None,
            handled: None,
            members,
            fresh_secret: [7; 32],
        }
    }

    fn states(doc: &KeyringDoc) -> Vec<(String, KeyState, bool)> {
        doc.keys
            .iter()
            .map(|k| (k.id.clone(), k.state, k.retired.is_some()))
            .collect()
    }

    #[test]
    fn generates_when_absent_or_invalid() {
        let plan = step(&inputs(None, T0, &[]));
        assert_eq!(
            plan.step,
            RotationStep::Generated {
                id: format!("k{T0}")
            }
        );
        assert_eq!(plan.keyring.validate().unwrap().len(), 1);
        assert_eq!(plan.keyring.keys[0].created, "2027-01-15T08:00:00Z");
        let broken = KeyringDoc::default();
        let plan = step(&inputs(Some(&broken), T0, &[]));
        assert!(matches!(plan.step, RotationStep::Generated { .. }));
    }

    #[test]
    fn full_rotation_one_step_at_a_time() {
        let k0 = step(&inputs(None, T0, &[])).keyring;
        // Not yet due.
        let idle = step(&inputs(Some(&k0), T0 + 3600, &[]));
        assert_eq!(idle.step, RotationStep::Idle);
        assert_eq!(idle.requeue_after, 23 * HOUR);

        // Due by interval: add as accept.
        let due = T0 + 24 * 3600;
        let added = step(&inputs(Some(&k0), due, &[]));
        let new_id = format!("k{due}");
        assert_eq!(added.step, RotationStep::Added { id: new_id.clone() });
        assert_eq!(
            states(&added.keyring),
            vec![
                (format!("k{T0}"), KeyState::Active, false),
                (new_id.clone(), KeyState::Accept, false)
            ]
        );

        // One ready member has not loaded it: no promotion. Unready members don't count.
        let members = [
            member("m1", true, &[&format!("k{T0}"), &new_id]),
            member("m2", true, &[&format!("k{T0}")]),
            member("m3", false, &[]),
        ];
        let wait = step(&inputs(Some(&added.keyring), due + 10, &members));
        assert_eq!(
            wait.step,
            RotationStep::Waiting {
                id: new_id.clone(),
                missing: vec!["m2".into()]
            }
        );
        assert_eq!(wait.keyring, added.keyring);
        // A ready member that did not answer blocks too.
        let silent = [Member {
            name: "m4".into(),
            ready: true,
            report: None,
        }];
        assert!(matches!(
            step(&inputs(Some(&added.keyring), due + 10, &silent)).step,
            RotationStep::Waiting { .. }
        ));

        // Every ready member has it: promote.
        let members = [
            member("m1", true, &[&new_id]),
            member("m2", true, &[&new_id]),
        ];
        let promoted = step(&inputs(Some(&added.keyring), due + 20, &members));
        assert_eq!(
            promoted.step,
            RotationStep::Promoted {
                id: new_id.clone(),
                retired: format!("k{T0}")
            }
        );
        assert_eq!(
            states(&promoted.keyring),
            vec![
                (format!("k{T0}"), KeyState::Accept, true),
                (new_id.clone(), KeyState::Active, false)
            ]
        );
        promoted.keyring.validate().unwrap();

        // Retired key kept inside the window, removed after.
        let idle = step(&inputs(Some(&promoted.keyring), due + 20 + 3600, &members));
        assert_eq!(idle.step, RotationStep::Idle);
        assert_eq!(idle.requeue_after, HOUR);
        let removed = step(&inputs(Some(&promoted.keyring), due + 20 + 7200, &members));
        assert_eq!(
            removed.step,
            RotationStep::Removed {
                ids: vec![format!("k{T0}")]
            }
        );
        assert_eq!(removed.keyring.ids(), vec![new_id]);
    }

    #[test]
    fn annotation_requests_rotation_once() {
        let k0 = step(&inputs(None, T0, &[])).keyring;
        let mut i = inputs(Some(&k0), T0 + 5, &[]);
        i.requested = Some("2026-11-21");
        let added = step(&i);
        assert_eq!(added.handled.as_deref(), Some("2026-11-21"));
        assert!(matches!(added.step, RotationStep::Added { .. }));
        // Same value again after the rotation finished: nothing.
        let promoted = step(&inputs(Some(&added.keyring), T0 + 6, &[])).keyring;
        let mut i = inputs(Some(&promoted), T0 + 7, &[]);
        i.requested = Some("2026-11-21");
        i.handled = Some("2026-11-21");
        assert_eq!(step(&i).step, RotationStep::Idle);
    }

    #[test]
    fn ids_stay_unique_within_a_second() {
        let k0 = step(&inputs(None, T0, &[])).keyring;
        let mut i = inputs(Some(&k0), T0, &[]);
        i.requested = Some("now");
        let added = step(&i);
        assert_eq!(
            added.step,
            RotationStep::Added {
                id: format!("k{T0}-1")
            }
        );
        added.keyring.validate().unwrap();
    }
}

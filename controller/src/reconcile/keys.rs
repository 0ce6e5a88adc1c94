//! Keys (pure): the keyring in force, from the keys Secret or the one it was renamed
//! from, and the next rotation step.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use portcullis_crds::config::DataplaneConfig;
use portcullis_crds::keyring::{KEYRING_SECRET_KEY, KeyringDoc, KeyringError};
use portcullis_crds::v1alpha1::{GatewayArray, ROTATE_KEYS_ANNOTATION};

use super::Fetched;
use crate::builders;
use crate::keyring::{self, RotationInputs, RotationPlan, RotationStep};

/// Whether `secret` is controlled by `array`.
pub(super) fn owned_by(secret: &Secret, array: &GatewayArray) -> bool {
    secret
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == array.uid().as_deref())
}

/// The keyring in a keys Secret, when the Secret has one: parsed and validated.
pub(super) fn stored_keyring(secret: &Secret) -> Option<Result<KeyringDoc, KeyringError>> {
    let bytes = secret.data.as_ref()?.get(KEYRING_SECRET_KEY)?;
    Some(match std::str::from_utf8(&bytes.0) {
        Ok(text) => KeyringDoc::parse(text).and_then(|doc| doc.validate().map(|_| doc)),
        Err(_) => Err(KeyringError::Parse("not UTF-8".to_owned())),
    })
}

/// The keyring stored before this reconcile.
#[derive(Clone, Debug, Default)]
pub(super) struct StoredKeys {
    /// The valid keyring in force, if any.
    pub keyring: Option<KeyringDoc>,
    /// Why the stored keyring is unusable (ids and positions, never key material).
    pub error: Option<String>,
    /// The rotation request the Secret holding it remembers as handled.
    pub handled: Option<String>,
    /// Whether the previous keys Secret held a valid keyring (carried over).
    pub carried_over: bool,
}

/// The keyring comes from the keys Secret; while a renamed keys Secret has none yet,
/// from the previous one.
///
/// The keys of a valid keyring in the previous keys Secret are never dropped: carried
/// over as they are when the keys Secret has no valid keyring, else merged with the one
/// it brought, whose active key then rotates in through the two-phase protocol (see
/// `keyring::merge_previous`). Only when neither has a valid keyring is a broken one
/// reported (and replaced) or a new keyring generated.
pub(super) fn stored_keys(fetched: &Fetched, now: Timestamp) -> StoredKeys {
    let target = fetched.keys.as_ref().and_then(stored_keyring);
    let carried = fetched
        .previous_keys
        .as_ref()
        .and_then(stored_keyring)
        .and_then(Result::ok);
    let carried_over = carried.is_some();
    let (stored, source) = match (target, carried) {
        // The previous keyring is the one in force (and remembers handled rotations).
        (Some(Ok(adopted)), Some(previous)) => (
            Some(Ok(keyring::merge_previous(&adopted, &previous, now))),
            fetched.previous_keys.as_ref(),
        ),
        (Some(Ok(adopted)), None) => (Some(Ok(adopted)), fetched.keys.as_ref()),
        (_, Some(previous)) => (Some(Ok(previous)), fetched.previous_keys.as_ref()),
        (target, None) => (target, fetched.keys.as_ref()),
    };
    // Key errors name ids and positions, never key material.
    let error = stored
        .as_ref()
        .and_then(|r| r.as_ref().err())
        .map(ToString::to_string);
    let handled = source.and_then(|s| {
        s.annotations()
            .get(builders::ROTATION_HANDLED_ANNOTATION)
            .cloned()
    });
    StoredKeys {
        keyring: stored.and_then(Result::ok),
        error,
        handled,
        carried_over,
    }
}

/// The next rotation step for `config`, from the stored keyring.
pub(super) fn plan(
    array: &GatewayArray,
    config: &DataplaneConfig,
    stored: &StoredKeys,
    members: &[keyring::Member],
    now: Timestamp,
    fresh_secret: [u8; 32],
) -> RotationPlan {
    keyring::step(&RotationInputs {
        current: stored.keyring.as_ref(),
        now,
        rotation_interval: config.session.rotation_interval.get(),
        accept_retired_for: config.session.accept_retired_for.get(),
        requested: array
            .annotations()
            .get(ROTATE_KEYS_ANNOTATION)
            .map(String::as_str),
        handled: stored.handled.as_deref(),
        members,
        fresh_secret,
    })
}

/// The event (reason, metric label, note) of a rotation step that changed the keyring.
pub(super) fn step_event(step: &RotationStep) -> Option<(&'static str, &'static str, String)> {
    match step {
        RotationStep::Generated { id } => Some((
            "KeyringGenerated",
            "generated",
            format!("generated keyring with active key {id}"),
        )),
        RotationStep::Added { id } => Some((
            "KeyAdded",
            "added",
            format!(
                "added key {id} as accept-only; it becomes active once every ready member has loaded it"
            ),
        )),
        RotationStep::Promoted { id, retired } => Some((
            "KeyPromoted",
            "promoted",
            format!("key {id} is now active; {retired} is retired and still accepted"),
        )),
        RotationStep::Removed { ids } => Some((
            "KeysRemoved",
            "removed",
            format!(
                "removed retired keys {} after their acceptance window",
                ids.join(", ")
            ),
        )),
        RotationStep::Waiting { .. } | RotationStep::Idle => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use portcullis_crds::keyring::KeyState;

    use super::*;

    fn ring(id: &str) -> KeyringDoc {
        let mut doc = KeyringDoc::default();
        doc.keys.push(KeyringDoc::entry(
            id,
            &[7; 32],
            "2026-01-01T00:00:00Z",
            KeyState::Active,
        ));
        doc
    }

    fn keys_secret(keyring: &str, handled: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([(
                    builders::ROTATION_HANDLED_ANNOTATION.to_owned(),
                    handled.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(
                KEYRING_SECRET_KEY.to_owned(),
                ByteString(keyring.as_bytes().to_vec()),
            )])),
            ..Secret::default()
        }
    }

    fn now() -> Timestamp {
        "2026-02-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn without_keys_secrets_there_is_no_keyring() {
        let stored = stored_keys(&Fetched::default(), now());
        assert_eq!(stored.keyring, None);
        assert_eq!(stored.error, None);
        assert_eq!(stored.handled, None);
        assert!(!stored.carried_over);
    }

    #[test]
    fn an_unusable_keyring_is_reported() {
        let fetched = Fetched {
            keys: Some(keys_secret("keys: [", "r1")),
            ..Fetched::default()
        };
        let stored = stored_keys(&fetched, now());
        assert_eq!(stored.keyring, None);
        assert!(stored.error.is_some());
        assert_eq!(stored.handled.as_deref(), Some("r1"));
        assert!(
            stored_keyring(&keys_secret("keys: [", "r1"))
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn the_previous_keyring_is_carried_over_when_the_new_secret_has_none() {
        let fetched = Fetched {
            keys: Some(Secret::default()),
            previous_keys: Some(keys_secret(&ring("k1").to_yaml(), "r2")),
            ..Fetched::default()
        };
        let stored = stored_keys(&fetched, now());
        assert_eq!(stored.keyring.map(|k| k.ids()), Some(vec!["k1".to_owned()]));
        assert_eq!(stored.error, None);
        assert_eq!(stored.handled.as_deref(), Some("r2"));
        assert!(stored.carried_over);
    }

    #[test]
    fn only_a_changed_keyring_makes_an_event() {
        assert_eq!(step_event(&RotationStep::Idle), None);
        let promoted = RotationStep::Promoted {
            id: "k2".into(),
            retired: "k1".into(),
        };
        assert_eq!(
            step_event(&promoted),
            Some((
                "KeyPromoted",
                "promoted",
                "key k2 is now active; k1 is retired and still accepted".to_owned()
            ))
        );
    }
}

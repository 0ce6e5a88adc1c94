//! Validate (pure): the verdict on every farm and on the array, and the translation
//! when there is one to write.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use portcullis_crds::keyring::KEYRING_SECRET_KEY;
use portcullis_crds::translate::{self, FarmOutcome, TranslateError};
use portcullis_crds::v1alpha1::{GatewayArray, ServerFarm};

use super::keys::{owned_by, stored_keyring};
use super::{Fetched, ForeignObject, Settings};
use crate::builders::{TlsMaterial, names};
use crate::mapping::{SecretUse, array_secrets, farm_secret_refs};
use crate::resolve::private_target_errors;
use crate::status::{self, FarmVerdict};

/// TLS material and problems, from the fetched Secrets.
fn tls_material(fetched: &Fetched) -> (BTreeMap<String, TlsMaterial>, BTreeMap<String, String>) {
    let mut material = BTreeMap::new();
    let mut problems = BTreeMap::new();
    for (name, secret) in &fetched.secrets {
        match secret {
            None => {
                problems.insert(name.clone(), format!("Secret {} not found", shown(name)));
            }
            Some(s) => {
                let data = s.data.clone().unwrap_or_default();
                material.insert(
                    name.clone(),
                    TlsMaterial {
                        cert: data.get("tls.crt").cloned(),
                        key: data.get("tls.key").cloned(),
                        ca: data.get("ca.crt").cloned(),
                        auth: data.get("auth").cloned(),
                    },
                );
            }
        }
    }
    (material, problems)
}

/// A Secret id as users know it: `name`, or `namespace/name` for one read from another
/// namespace than the array's (see `translate::secret_id`).
fn shown(id: &str) -> String {
    id.replacen('_', "/", 1)
}

/// The TLS material of the fetched Secrets, and what is missing from them.
struct Material {
    /// By Secret name.
    tls: BTreeMap<String, TlsMaterial>,
    /// Secret name → why it cannot be used.
    missing: BTreeMap<String, String>,
}

impl Material {
    /// What is wrong with Secret `name` for `need`: missing, or without the keys it
    /// needs.
    fn problem(&self, name: &str, need: SecretUse) -> Option<String> {
        if let Some(p) = self.missing.get(name) {
            return Some(p.clone());
        }
        let m = self.tls.get(name)?;
        match need {
            SecretUse::Certificate => (m.cert.is_none() || m.key.is_none())
                .then(|| format!("Secret {} has no tls.crt and tls.key", shown(name))),
            SecretUse::Ca => {
                m.ca.is_none()
                    .then(|| format!("Secret {} has no ca.crt", shown(name)))
            }
            SecretUse::BasicAuth => m
                .auth
                .is_none()
                .then(|| format!("Secret {} has no key auth (an htpasswd file)", shown(name))),
        }
    }
}

/// The result of validation and translation, before anything is built.
#[derive(Clone, Debug)]
pub struct Validated {
    /// The translation, when the array itself is valid and its listener Secrets exist.
    pub translation: Option<translate::Translation>,
    /// The array's own errors.
    pub array_errors: Vec<TranslateError>,
    /// Problems with listener Secrets.
    pub array_missing: Vec<String>,
    /// Verdict per farm id.
    pub verdicts: BTreeMap<String, FarmVerdict>,
    /// The TLS material of Secrets the config uses.
    pub tls: BTreeMap<String, TlsMaterial>,
}

/// Validates and translates (pure).
pub fn validate(array: &GatewayArray, fetched: &Fetched, settings: &Settings) -> Validated {
    let (tls, missing) = tls_material(fetched);
    let material = Material { tls, missing };
    let array_missing: Vec<String> = array_secrets(array)
        .iter()
        .filter_map(|s| material.problem(s, SecretUse::Certificate))
        .collect();
    let keys_name = names::secret(array);
    let mut verdicts = BTreeMap::new();
    let mut eligible = Vec::new();
    for farm in &fetched.farms {
        let refused = cross_namespace_refusal(farm)
            .or_else(|| refusal(farm, &keys_name, settings, &material));
        match refused {
            Some(verdict) => {
                verdicts.insert(translate::farm_id(farm), verdict);
            }
            None => eligible.push(farm.clone()),
        }
    }
    let (mut translation, mut array_errors) =
        match translate::translate(array, &eligible, &fetched.resolutions) {
            Ok(t) => (Some(t), Vec::new()),
            Err(errors) => (None, errors),
        };
    let mut keys_errors = keys_secret_errors(array, &keys_name, fetched.keys.as_ref());
    keys_errors.extend(fetched.foreign.iter().map(|f| foreign_error(array, f)));
    if !keys_errors.is_empty() {
        array_errors.extend(keys_errors);
        translation = None;
    }
    match &translation {
        Some(t) => {
            for (id, outcome) in &t.farms {
                verdicts.insert(id.clone(), FarmVerdict::Translated(outcome.clone()));
            }
        }
        None => invalidate_all(&mut verdicts, fetched, status::error_message(&array_errors)),
    }
    // Only Secrets the config actually names travel into the array's Secret.
    let used = translation
        .as_ref()
        .map(|t| t.config.certificate_secrets())
        .unwrap_or_default();
    let tls = material
        .tls
        .into_iter()
        .filter(|(name, _)| used.contains(name))
        .collect();
    if !array_missing.is_empty() {
        // Nothing is written while a listener certificate is missing, so no farm is
        // published by this reconcile either.
        invalidate_all(&mut verdicts, fetched, array_missing.join("; "));
    }
    Validated {
        translation: translation.filter(|_| array_missing.is_empty()),
        array_errors,
        array_missing,
        verdicts,
        tls,
    }
}

/// Every fetched farm is not published, for the array's `message`.
fn invalidate_all(
    verdicts: &mut BTreeMap<String, FarmVerdict>,
    fetched: &Fetched,
    message: String,
) {
    for farm in &fetched.farms {
        verdicts.insert(
            translate::farm_id(farm),
            FarmVerdict::ArrayInvalid(message.clone()),
        );
    }
}

/// A farm from another namespace than the array is published only when an Ingress the
/// array publishes controls it (fetch verified that, and dropped a claim that failed).
fn cross_namespace_refusal(farm: &ServerFarm) -> Option<FarmVerdict> {
    if !translate::is_cross_namespace(farm) {
        return None;
    }
    if translate::controlling_ingress(farm).is_some() {
        return secret_id_refusal(farm);
    }
    Some(FarmVerdict::Translated(FarmOutcome::Rejected(vec![
        keys_field_error(
            "ServerFarm",
            farm,
            "spec.arrayRef.namespace",
            format!(
                "GatewayArray {}/{} publishes farms from other namespaces only for Ingresses of an IngressClass that names it; create the farm in namespace {} or publish it through an Ingress",
                translate::array_namespace(farm).unwrap_or_default(),
                farm.spec.array_ref.name,
                translate::array_namespace(farm).unwrap_or_default(),
            ),
        ),
    ])))
}

/// The longest Secret data key (`<id>.tls.crt`) is at most 253 characters: a farm whose
/// Secret ids would be longer is refused alone, instead of the array's Secret failing.
fn secret_id_refusal(farm: &ServerFarm) -> Option<FarmVerdict> {
    let errors: Vec<TranslateError> = farm_secret_refs(farm)
        .into_iter()
        .filter(|(_, name, _)| translate::secret_id(farm, name).len() + ".tls.crt".len() > 253)
        .map(|(field, name, _)| {
            keys_field_error(
                "ServerFarm",
                farm,
                field,
                format!(
                    "Secret {name} of namespace {} makes a key longer than 253 characters in the array's Secret; use a shorter Secret name",
                    farm.namespace().unwrap_or_default()
                ),
            )
        })
        .collect();
    (!errors.is_empty()).then_some(FarmVerdict::Translated(FarmOutcome::Rejected(errors)))
}

/// Why `farm` is refused before translation (names that cannot be read, the keys
/// Secret, private targets, missing Secrets), or `None` when it may be translated.
fn refusal(
    farm: &ServerFarm,
    keys_name: &str,
    settings: &Settings,
    material: &Material,
) -> Option<FarmVerdict> {
    let rejected = |errors: Vec<TranslateError>| {
        (!errors.is_empty()).then_some(FarmVerdict::Translated(FarmOutcome::Rejected(errors)))
    };
    // Names that cannot be object names were not read: refuse the farm for them
    // before its Secrets are looked up, so it is not reported as "not found".
    if let Some(v) = rejected(translate::farm_reference_errors(farm)) {
        return Some(v);
    }
    if let Some(v) = rejected(keys_secret_clashes(farm, keys_name)) {
        return Some(v);
    }
    if !settings.allow_private_targets
        && let Some(v) = rejected(private_target_errors(farm))
    {
        return Some(v);
    }
    let problems: Vec<String> = farm_secret_refs(farm)
        .into_iter()
        .filter_map(|(_, name, need)| material.problem(&translate::secret_id(farm, name), need))
        .collect();
    (!problems.is_empty()).then_some(FarmVerdict::MissingRefs(problems))
}

/// The array may not take the name of an object it does not control.
fn foreign_error(array: &GatewayArray, f: &ForeignObject) -> TranslateError {
    let owner = match &f.controller {
        Some(c) => format!("is controlled by {c}"),
        None => "has no controller".to_owned(),
    };
    keys_field_error(
        "GatewayArray",
        array,
        "metadata.name",
        format!(
            "{} {} already exists and {owner}, and an array never modifies an object it does not control: delete or rename that {}, or give the array another name",
            f.kind, f.name, f.kind
        ),
    )
}

fn keys_field_error(
    kind: &'static str,
    obj: &impl ResourceExt,
    field: &str,
    message: String,
) -> TranslateError {
    TranslateError {
        kind,
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
        field: field.to_owned(),
        message,
    }
}

/// A farm may not use the array's keys Secret as a certificate: the controller writes
/// that Secret, so the two would overwrite each other.
fn keys_secret_clashes(farm: &ServerFarm, keys_name: &str) -> Vec<TranslateError> {
    farm_secret_refs(farm)
        .into_iter()
        .filter(|(_, name, _)| translate::secret_id(farm, name) == keys_name)
        .map(|(field, _, _)| {
            keys_field_error(
                "ServerFarm",
                farm,
                field,
                format!(
                    "Secret {keys_name} is the array's keyring Secret (written by the controller); name a certificate Secret of its own"
                ),
            )
        })
        .collect()
}

const KEYS_FIELD: &str = "spec.sessionKeys.secretName";

/// Problems with the array's keys Secret: it is a listener certificate, or another
/// object controls it.
fn keys_secret_errors(
    array: &GatewayArray,
    keys_name: &str,
    keys: Option<&Secret>,
) -> Vec<TranslateError> {
    let mut out = Vec::new();
    if array_secrets(array).iter().any(|s| s == keys_name) {
        out.push(keys_field_error(
            "GatewayArray",
            array,
            KEYS_FIELD,
            format!("Secret {keys_name} is a listener certificate; the keyring needs a Secret of its own"),
        ));
    }
    let foreign = keys.and_then(|s| {
        s.owner_references()
            .iter()
            .find(|o| o.controller == Some(true) && Some(o.uid.as_str()) != array.uid().as_deref())
    });
    if let Some(owner) = foreign {
        out.push(keys_field_error(
            "GatewayArray",
            array,
            KEYS_FIELD,
            format!(
                "Secret {keys_name} is managed by {} {}; name a Secret no other object controls",
                owner.kind, owner.name
            ),
        ));
        return out;
    }
    // An existing Secret this array does not own is only taken over when it holds a
    // keyring (a backup or another installation's keys): anything else (credentials,
    // a certificate, a typo) is not the controller's to rewrite, own or delete.
    // The type is immutable: an apply of an Opaque Secret over another type would fail
    // on every reconcile, owned or not, so it is refused here with a reason instead.
    if let Some(secret) =
        keys.filter(|s| !owned_by(s, array) || s.type_.as_deref().is_some_and(|t| t != "Opaque"))
    {
        out.extend(unadoptable_keys_secret(array, keys_name, secret));
    }
    out
}

/// Why an existing keys Secret the array does not own (or of another type than Opaque)
/// cannot be taken over, or `None` when it holds a valid keyring.
fn unadoptable_keys_secret(
    array: &GatewayArray,
    keys_name: &str,
    secret: &Secret,
) -> Option<TranslateError> {
    let error = |message| Some(keys_field_error("GatewayArray", array, KEYS_FIELD, message));
    if secret.type_.as_deref().is_some_and(|t| t != "Opaque") {
        return error(format!(
            "Secret {keys_name} has type {}; a keys Secret is Opaque. Name a Secret that does not exist yet and the controller creates it",
            secret.type_.as_deref().unwrap_or_default()
        ));
    }
    match stored_keyring(secret) {
        None => error(format!(
            "Secret {keys_name} exists and holds no {KEYRING_SECRET_KEY}; the controller takes over only a Secret holding a keyring. Name a Secret that does not exist yet and the controller creates it"
        )),
        // Its keyring would be replaced, and the Secret owned (and later deleted):
        // refuse instead, so a backup with a typo is fixed, not lost.
        Some(Err(e)) => error(format!(
            "Secret {keys_name} holds an unusable {KEYRING_SECRET_KEY} ({e}); fix it, or name a Secret that does not exist yet"
        )),
        Some(Ok(_)) => None,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;

    use super::*;

    fn array() -> GatewayArray {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "portcullis.io/v1alpha1",
            "kind": "GatewayArray",
            "metadata": {"name": "edge", "namespace": "default", "uid": "u-1"},
            "spec": {"listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]},
        }))
        .unwrap()
    }

    #[test]
    fn a_secret_needs_the_keys_its_use_reads() {
        let some = || Some(ByteString(b"x".to_vec()));
        let material = Material {
            tls: BTreeMap::from([(
                "cert".to_owned(),
                TlsMaterial {
                    cert: some(),
                    key: None,
                    ca: None,
                    auth: None,
                },
            )]),
            missing: BTreeMap::from([("gone".to_owned(), "Secret gone not found".to_owned())]),
        };
        let problem = |name, need| material.problem(name, need);
        assert_eq!(
            problem("gone", SecretUse::Certificate).as_deref(),
            Some("Secret gone not found")
        );
        assert_eq!(
            problem("cert", SecretUse::Certificate).as_deref(),
            Some("Secret cert has no tls.crt and tls.key")
        );
        assert_eq!(
            problem("cert", SecretUse::Ca).as_deref(),
            Some("Secret cert has no ca.crt")
        );
        assert_eq!(
            problem("cert", SecretUse::BasicAuth).as_deref(),
            Some("Secret cert has no key auth (an htpasswd file)")
        );
        assert_eq!(problem("unread", SecretUse::Ca), None);
    }

    #[test]
    fn only_an_opaque_secret_holding_a_keyring_is_taken_over() {
        let array = array();
        let mut tls = Secret {
            type_: Some("kubernetes.io/tls".to_owned()),
            ..Secret::default()
        };
        let error = unadoptable_keys_secret(&array, "edge-keys", &tls).unwrap();
        assert_eq!(error.field, KEYS_FIELD);
        assert!(
            error
                .message
                .starts_with("Secret edge-keys has type kubernetes.io/tls;")
        );
        tls.type_ = Some("Opaque".to_owned());
        let error = unadoptable_keys_secret(&array, "edge-keys", &tls).unwrap();
        assert!(
            error.message.contains("exists and holds no keyring"),
            "{}",
            error.message
        );
    }

    #[test]
    fn the_array_may_not_take_a_foreign_objects_name() {
        let error = foreign_error(
            &array(),
            &ForeignObject {
                kind: "Service".into(),
                name: "edge".into(),
                controller: None,
            },
        );
        assert_eq!(
            (error.kind, error.field.as_str()),
            ("GatewayArray", "metadata.name")
        );
        assert!(
            error
                .message
                .starts_with("Service edge already exists and has no controller,")
        );
    }

    #[test]
    fn a_farm_is_refused_for_the_keys_secret_then_for_missing_secrets() {
        let farm = |secret: &str| -> ServerFarm {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "portcullis.io/v1alpha1",
                "kind": "ServerFarm",
                "metadata": {"name": "shop", "namespace": "default"},
                "spec": {
                    "arrayRef": {"name": "edge"},
                    "publish": {"hosts": ["shop.example"], "tls": {"secretName": secret}},
                    "servers": [{"address": "10.0.0.1", "port": 80}],
                },
            }))
            .unwrap()
        };
        let settings = Settings {
            dataplane_image: String::new(),
            watch_secrets: true,
            allow_private_targets: true,
            watch_namespace: None,
            migration: Default::default(),
        };
        let material = Material {
            tls: BTreeMap::new(),
            missing: BTreeMap::from([("gone".to_owned(), "Secret gone not found".to_owned())]),
        };
        let verdict = refusal(&farm("edge-keys"), "edge-keys", &settings, &material);
        let Some(FarmVerdict::Translated(FarmOutcome::Rejected(errors))) = verdict else {
            panic!("{verdict:?}");
        };
        assert_eq!(errors[0].field, "spec.publish.tls.secretName");
        let verdict = refusal(&farm("gone"), "edge-keys", &settings, &material);
        let Some(FarmVerdict::MissingRefs(problems)) = verdict else {
            panic!("{verdict:?}");
        };
        assert_eq!(problems, ["Secret gone not found"]);
        assert!(refusal(&farm("cert"), "edge-keys", &settings, &material).is_none());
    }
}

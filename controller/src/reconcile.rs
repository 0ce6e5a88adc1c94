//! The reconcile pipeline for one GatewayArray: fetch → validate → build (pure) → apply
//! (server-side apply, owner references) → status. Only [`fetch`] and the apply/status
//! steps touch the API.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use parking_lot::Mutex;
use portcullis_crds::keyring::{KEYRING_SECRET_KEY, KeyringDoc};
use portcullis_crds::translate::{self, FarmOutcome, Resolutions, ServiceKey, TranslateError};
use portcullis_crds::v1alpha1::{GatewayArray, ROTATE_KEYS_ANNOTATION, ServerFarm};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::builders::{self, BuildInputs, FIELD_MANAGER, TlsMaterial, names};
use crate::keyring::{self, Member, RotationInputs, RotationStep};
use crate::mapping::{SecretUse, array_secrets, farm_secret_refs, farm_secrets};
use crate::members::MemberStatusSource;
use crate::metrics::Metrics;
use crate::resolve::{SERVICE_NAME_LABEL, private_target_errors, service_endpoints};
use crate::status::{self, ArrayStatusInputs, Blocked, FarmVerdict};

/// How the controller runs, from flags.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Image of member pods when `spec.pod.image` is unset.
    pub dataplane_image: String,
    /// Whether Secrets are watched (else re-read every [`SECRET_POLL`]).
    pub watch_secrets: bool,
    /// Whether loopback, link-local and metadata targets are allowed.
    pub allow_private_targets: bool,
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

/// Why a reconcile failed. Messages name resources, never Secret contents.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading from the API failed.
    #[error("failed to fetch {what}: {source}")]
    Fetch {
        /// What was read.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A server-side apply failed.
    #[error("failed to apply {what}: {source}")]
    Apply {
        /// What was applied.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A status write failed.
    #[error("failed to write status of {what}: {source}")]
    Status {
        /// Whose status.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
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
            Error::Fetch { .. } => "fetch",
            Error::Apply { .. } => "apply",
            Error::Status { .. } => "status",
            Error::Build(_) => "build",
            Error::NoNamespace(_) => "no_namespace",
        }
    }
}

/// What was read from the API for one array.
#[derive(Clone, Debug, Default)]
pub struct Fetched {
    /// Farms naming the array.
    pub farms: Vec<ServerFarm>,
    /// Referenced Secrets, `None` when absent.
    pub secrets: BTreeMap<String, Option<Secret>>,
    /// The array's keys Secret (`spec.sessionKeys.secretName`, else `<array>-keys`).
    pub keys: Option<Secret>,
    /// The Secret the keyring was kept in before `spec.sessionKeys.secretName` changed
    /// (named by `status.keysSecret`, else the default name), while the move is not
    /// done; only when this array owns it.
    pub previous_keys: Option<Secret>,
    /// Existing objects with the names of the array's objects that the array does not
    /// control: never modified, and reported.
    pub foreign: Vec<ForeignObject>,
    /// Resolutions of Service servers.
    pub resolutions: Resolutions,
    /// Members.
    pub members: Vec<Member>,
}

/// An existing object whose name one of the array's objects would take, and which the
/// array does not control (a user's Service, another array's Deployment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignObject {
    /// Its kind.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// `Kind name` of its controller, when it has one.
    pub controller: Option<String>,
}

/// The object `name` of kind `K` when it exists and `array` does not control it.
async fn foreign<K>(
    client: &Client,
    ns: &str,
    name: &str,
    array: &GatewayArray,
) -> Result<Option<ForeignObject>, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let kind = K::kind(&()).into_owned();
    let Some(found) = api::<K>(client, ns)
        .get_metadata_opt(name)
        .await
        .map_err(|source| Error::Fetch {
            what: format!("{kind} {ns}/{name}"),
            source,
        })?
    else {
        return Ok(None);
    };
    let controller = found
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    if controller.is_some_and(|o| Some(o.uid.as_str()) == array.uid().as_deref()) {
        return Ok(None);
    }
    Ok(Some(ForeignObject {
        kind,
        name: name.to_owned(),
        controller: controller.map(|o| format!("{} {}", o.kind, o.name)),
    }))
}

/// The objects the array would write (besides its keys Secret, checked on its own) that
/// exist and are not the array's.
async fn foreign_objects(
    client: &Client,
    ns: &str,
    array: &GatewayArray,
) -> Result<Vec<ForeignObject>, Error> {
    let name = array.name_any();
    let dataplane = names::dataplane(&name);
    let found = [
        foreign::<ServiceAccount>(client, ns, &dataplane, array).await?,
        foreign::<Role>(client, ns, &dataplane, array).await?,
        foreign::<RoleBinding>(client, ns, &dataplane, array).await?,
        foreign::<ConfigMap>(client, ns, &names::config_map(&name), array).await?,
        foreign::<Deployment>(client, ns, &name, array).await?,
        foreign::<Service>(client, ns, &name, array).await?,
        foreign::<PodDisruptionBudget>(client, ns, &name, array).await?,
    ];
    Ok(found.into_iter().flatten().collect())
}

async fn fetch(array: &GatewayArray, ns: &str, ctx: &Context) -> Result<Fetched, Error> {
    let client = ctx.client.clone();
    let fetch_err = |what: String| move |source| Error::Fetch { what, source };
    let farms: Api<ServerFarm> = Api::namespaced(client.clone(), ns);
    let mut farms: Vec<ServerFarm> = farms
        .list(&ListParams::default())
        .await
        .map_err(fetch_err(format!("ServerFarms in {ns}")))?
        .items
        .into_iter()
        .filter(|f| translate::farm_targets_array(f, array))
        .collect();
    farms.sort_by_key(translate::farm_id);

    let secrets_api: Api<Secret> = Api::namespaced(client.clone(), ns);
    // Only names that can be object names are read: `get("")` would be a list, and one
    // farm's typo must not fail the reconcile of every farm of the array. Validation
    // reports the others on the farm (or the array) that wrote them.
    let mut wanted: BTreeSet<String> = array_secrets(array)
        .into_iter()
        .filter(|n| translate::is_dns_subdomain(n))
        .collect();
    for f in &farms {
        wanted.extend(
            farm_secrets(f)
                .into_iter()
                .filter(|n| translate::is_dns_subdomain(n)),
        );
    }
    let mut secrets = BTreeMap::new();
    for name in wanted {
        let s = secrets_api
            .get_opt(&name)
            .await
            .map_err(fetch_err(format!("Secret {ns}/{name}")))?;
        secrets.insert(name, s);
    }
    let keys_name = names::secret(array);
    let keys = if translate::is_dns_subdomain(&keys_name) {
        secrets_api
            .get_opt(&keys_name)
            .await
            .map_err(fetch_err(format!("Secret {ns}/{keys_name}")))?
    } else {
        None
    };
    // Where the keyring was before: `status.keysSecret`, or the default name for arrays
    // whose status predates that field. Only a Secret this array owns counts: the
    // controller only ever writes keyrings into Secrets it owns.
    let previous_name = array
        .status
        .as_ref()
        .and_then(|s| s.keys_secret.clone())
        .unwrap_or_else(|| names::default_secret(&array.name_any()));
    let previous_keys =
        if previous_name == keys_name || !translate::is_dns_subdomain(&previous_name) {
            None
        } else {
            secrets_api
                .get_opt(&previous_name)
                .await
                .map_err(fetch_err(format!("Secret {ns}/{previous_name}")))?
                .filter(|s| owned_by(s, array))
        };

    // Only an array with a valid name writes anything (validation says why not).
    let foreign = if translate::is_dns_label(&array.name_any()) {
        foreign_objects(&client, ns, array).await?
    } else {
        Vec::new()
    };

    let services: BTreeSet<(String, u16)> = farms
        .iter()
        .flat_map(|f| f.spec.servers.iter())
        .filter_map(|s| s.service.as_ref().map(|r| (r.name.clone(), r.port)))
        .filter(|(name, _)| translate::is_dns_label(name))
        .collect();
    let svc_api: Api<Service> = Api::namespaced(client.clone(), ns);
    let slice_api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let mut resolutions = Resolutions::default();
    let mut by_name: BTreeMap<String, Option<(Service, Vec<EndpointSlice>)>> = BTreeMap::new();
    for (name, port) in services {
        if !by_name.contains_key(&name) {
            let found = match svc_api
                .get_opt(&name)
                .await
                .map_err(fetch_err(format!("Service {ns}/{name}")))?
            {
                None => None,
                Some(svc) => {
                    let slices = slice_api
                        .list(
                            &ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={name}")),
                        )
                        .await
                        .map_err(fetch_err(format!("EndpointSlices of Service {ns}/{name}")))?
                        .items;
                    Some((svc, slices))
                }
            };
            by_name.insert(name.clone(), found);
        }
        if let Some(Some((svc, slices))) = by_name.get(&name)
            && let Some(eps) =
                service_endpoints(svc, port, slices, ctx.settings.allow_private_targets)
        {
            resolutions.services.insert(
                ServiceKey {
                    namespace: ns.to_owned(),
                    name: name.clone(),
                    port,
                },
                eps,
            );
        }
    }

    let pods: Api<Pod> = Api::namespaced(client, ns);
    let pods = pods
        .list(&ListParams::default().labels(&builders::selector_query(&array.name_any())))
        .await
        .map_err(fetch_err(format!(
            "member Pods of {ns}/{}",
            array.name_any()
        )))?
        .items;
    let members = futures::future::join_all(pods.iter().map(|pod| async move {
        let name = pod.name_any();
        let status = pod.status.clone().unwrap_or_default();
        let ready = pod.metadata.deletion_timestamp.is_none()
            && status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
        let report = match &status.pod_ip {
            Some(ip) => ctx.members.fetch(&name, ip).await,
            None => None,
        };
        Member {
            name,
            ready,
            report,
        }
    }))
    .await;
    let mut members = members;
    members.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Fetched {
        farms,
        secrets,
        keys,
        previous_keys,
        foreign,
        resolutions,
        members,
    })
}

/// TLS material and problems, from the fetched Secrets.
fn tls_material(fetched: &Fetched) -> (BTreeMap<String, TlsMaterial>, BTreeMap<String, String>) {
    let mut material = BTreeMap::new();
    let mut problems = BTreeMap::new();
    for (name, secret) in &fetched.secrets {
        match secret {
            None => {
                problems.insert(name.clone(), format!("Secret {name} not found"));
            }
            Some(s) => {
                let data = s.data.clone().unwrap_or_default();
                material.insert(
                    name.clone(),
                    TlsMaterial {
                        cert: data.get("tls.crt").cloned(),
                        key: data.get("tls.key").cloned(),
                        ca: data.get("ca.crt").cloned(),
                    },
                );
            }
        }
    }
    (material, problems)
}

/// What is wrong with Secret `name` for `need`: missing, or without the keys it needs.
fn secret_problem(
    name: &str,
    need: SecretUse,
    material: &BTreeMap<String, TlsMaterial>,
    missing: &BTreeMap<String, String>,
) -> Option<String> {
    if let Some(p) = missing.get(name) {
        return Some(p.clone());
    }
    let m = material.get(name)?;
    match need {
        SecretUse::Certificate => (m.cert.is_none() || m.key.is_none())
            .then(|| format!("Secret {name} has no tls.crt and tls.key")),
        SecretUse::Ca => {
            m.ca.is_none()
                .then(|| format!("Secret {name} has no ca.crt"))
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
    let (material, missing) = tls_material(fetched);
    let array_missing: Vec<String> = array_secrets(array)
        .iter()
        .filter_map(|s| secret_problem(s, SecretUse::Certificate, &material, &missing))
        .collect();
    let keys_name = names::secret(array);
    let mut verdicts = BTreeMap::new();
    let mut eligible = Vec::new();
    for farm in &fetched.farms {
        let id = translate::farm_id(farm);
        // Names that cannot be object names were not read: refuse the farm for them
        // before its Secrets are looked up, so it is not reported as "not found".
        let bad_names = translate::farm_reference_errors(farm);
        if !bad_names.is_empty() {
            verdicts.insert(
                id,
                FarmVerdict::Translated(FarmOutcome::Rejected(bad_names)),
            );
            continue;
        }
        let clashes = keys_secret_clashes(farm, &keys_name);
        if !clashes.is_empty() {
            verdicts.insert(id, FarmVerdict::Translated(FarmOutcome::Rejected(clashes)));
            continue;
        }
        if !settings.allow_private_targets {
            let errors = private_target_errors(farm);
            if !errors.is_empty() {
                verdicts.insert(id, FarmVerdict::Translated(FarmOutcome::Rejected(errors)));
                continue;
            }
        }
        let problems: Vec<String> = farm_secret_refs(farm)
            .into_iter()
            .filter_map(|(_, name, need)| secret_problem(name, need, &material, &missing))
            .collect();
        if !problems.is_empty() {
            verdicts.insert(id, FarmVerdict::MissingRefs(problems));
            continue;
        }
        eligible.push(farm.clone());
    }
    let (mut translation, mut array_errors) =
        match translate::translate(array, &eligible, &fetched.resolutions) {
            Ok(t) => (Some(t), Vec::new()),
            Err(errors) => (None, errors),
        };
    let mut keys_errors = keys_secret_errors(array, &keys_name, fetched.keys.as_ref());
    keys_errors.extend(fetched.foreign.iter().map(|f| {
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
    }));
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
        None => {
            let message = status::error_message(&array_errors);
            for farm in &fetched.farms {
                verdicts.insert(
                    translate::farm_id(farm),
                    FarmVerdict::ArrayInvalid(message.clone()),
                );
            }
        }
    }
    // Only Secrets the config actually names travel into the array's Secret.
    let used = translation
        .as_ref()
        .map(|t| t.config.certificate_secrets())
        .unwrap_or_default();
    let tls = material
        .into_iter()
        .filter(|(name, _)| used.contains(name))
        .collect();
    if !array_missing.is_empty() {
        // Nothing is written while a listener certificate is missing, so no farm is
        // published by this reconcile either.
        let message = array_missing.join("; ");
        for farm in &fetched.farms {
            verdicts.insert(
                translate::farm_id(farm),
                FarmVerdict::ArrayInvalid(message.clone()),
            );
        }
    }
    Validated {
        translation: translation.filter(|_| array_missing.is_empty()),
        array_errors,
        array_missing,
        verdicts,
        tls,
    }
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
        .filter(|(_, name, _)| *name == keys_name)
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

/// Problems with the array's keys Secret: it is a listener certificate, or another
/// object controls it.
fn keys_secret_errors(
    array: &GatewayArray,
    keys_name: &str,
    keys: Option<&Secret>,
) -> Vec<TranslateError> {
    const FIELD: &str = "spec.sessionKeys.secretName";
    let mut out = Vec::new();
    if array_secrets(array).iter().any(|s| s == keys_name) {
        out.push(keys_field_error(
            "GatewayArray",
            array,
            FIELD,
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
            FIELD,
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
        if secret.type_.as_deref().is_some_and(|t| t != "Opaque") {
            out.push(keys_field_error(
                "GatewayArray",
                array,
                FIELD,
                format!(
                    "Secret {keys_name} has type {}; a keys Secret is Opaque. Name a Secret that does not exist yet and the controller creates it",
                    secret.type_.as_deref().unwrap_or_default()
                ),
            ));
        } else {
            match stored_keyring(secret) {
                None => out.push(keys_field_error(
                    "GatewayArray",
                    array,
                    FIELD,
                    format!(
                        "Secret {keys_name} exists and holds no {KEYRING_SECRET_KEY}; the controller takes over only a Secret holding a keyring. Name a Secret that does not exist yet and the controller creates it"
                    ),
                )),
                // Its keyring would be replaced, and the Secret owned (and later deleted):
                // refuse instead, so a backup with a typo is fixed, not lost.
                Some(Err(e)) => out.push(keys_field_error(
                    "GatewayArray",
                    array,
                    FIELD,
                    format!(
                        "Secret {keys_name} holds an unusable {KEYRING_SECRET_KEY} ({e}); fix it, or name a Secret that does not exist yet"
                    ),
                )),
                Some(Ok(_)) => {}
            }
        }
    }
    out
}

/// Whether `secret` is controlled by `array`.
fn owned_by(secret: &Secret, array: &GatewayArray) -> bool {
    secret
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == array.uid().as_deref())
}

/// The keyring in a keys Secret, when the Secret has one: parsed and validated.
fn stored_keyring(
    secret: &Secret,
) -> Option<Result<KeyringDoc, portcullis_crds::keyring::KeyringError>> {
    let bytes = secret.data.as_ref()?.get(KEYRING_SECRET_KEY)?;
    Some(match std::str::from_utf8(&bytes.0) {
        Ok(text) => KeyringDoc::parse(text).and_then(|doc| doc.validate().map(|_| doc)),
        Err(_) => Err(portcullis_crds::keyring::KeyringError::Parse(
            "not UTF-8".to_owned(),
        )),
    })
}

fn api<K>(client: &Client, ns: &str) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    Api::namespaced(client.clone(), ns)
}

async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
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
        .map_err(|source| Error::Apply {
            what: format!("{} {ns}/{name}", K::kind(&())),
            source,
        })?;
    Ok(())
}

async fn apply_status<K>(
    client: &Client,
    ns: &str,
    name: &str,
    status: &impl Serialize,
) -> Result<(), Error>
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
        .map_err(|source| Error::Status {
            what: format!("{} {ns}/{name}", K::kind(&())),
            source,
        })?;
    Ok(())
}

async fn publish(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        // The API server refuses the whole event for a longer note.
        note: Some(status::truncate(note, MAX_EVENT_NOTE)),
        action: action.to_owned(),
        secondary: None,
    };
    // An event that cannot be written is not worth failing the reconcile for.
    if let Err(e) = ctx.recorder.publish(&event, reference).await {
        tracing::warn!(error = %e, reason, "failed to publish event");
    }
}

fn step_event(step: &RotationStep) -> Option<(&'static str, &'static str, String)> {
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

/// After `spec.sessionKeys.secretName` changed and the new Secret was written: deletes
/// the previous keys Secret (owned by this array; it holds copies of private keys nobody
/// updates any more) once its keys live on in the new one, and says so in an event. A
/// previous Secret without a valid keyring had nothing to carry over and is kept.
async fn retire_previous_keys(
    ctx: &Context,
    array: &GatewayArray,
    ns: &str,
    previous: &Secret,
    keys_name: &str,
    carried_over: bool,
    array_ref: &k8s_openapi::api::core::v1::ObjectReference,
) -> Result<(), Error> {
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
                return Err(Error::Apply {
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
    publish(
        ctx,
        array_ref,
        EventType::Normal,
        "KeysSecretMoved",
        "MoveKeys",
        note,
    )
    .await;
    Ok(())
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
    let Some(array) = api::<GatewayArray>(&ctx.client, &ns)
        .get_opt(&name)
        .await
        .map_err(|source| Error::Fetch {
            what: format!("GatewayArray {ns}/{name}"),
            source,
        })?
    else {
        return Ok(Action::await_change());
    };
    let array = &array;
    // Being deleted (foreground deletion waits for the owned objects to go first): writing
    // anything now would re-create what the garbage collector just removed.
    if array.metadata.deletion_timestamp.is_some() {
        tracing::debug!("being deleted; leaving the owned objects to the garbage collector");
        return Ok(Action::await_change());
    }

    // Fetch.
    let fetched = fetch(array, &ns, ctx).await?;

    // Validate.
    let validated = validate(array, &fetched, &ctx.settings);

    // Keyring step (pure), only when a config is going to be written. The keyring comes
    // from the keys Secret; while a renamed keys Secret has none yet, from the previous one.
    let keys_name = names::secret(array);
    // The keys of a valid keyring in the previous keys Secret are never dropped: carried
    // over as they are when the keys Secret has no valid keyring, else merged with the one
    // it brought, whose active key then rotates in through the two-phase protocol (see
    // `keyring::merge_previous`). Only when neither has a valid keyring is a
    // broken one reported (and replaced) or a new keyring generated.
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
    let keyring_error = stored
        .as_ref()
        .and_then(|r| r.as_ref().err())
        .map(ToString::to_string);
    let keys_data = stored.and_then(Result::ok);
    let handled = source.and_then(|s| {
        s.annotations()
            .get(builders::ROTATION_HANDLED_ANNOTATION)
            .cloned()
    });
    let mut requeue = MAX_REQUEUE;
    if !ctx.settings.watch_secrets {
        requeue = requeue.min(SECRET_POLL);
    }
    let array_ref = array.object_ref(&());

    let mut plan = None;
    let mut blocked: Option<Blocked> = None;
    let mut apply_error: Option<Error> = None;
    // What this reconcile wrote: status reports the keyring and config hash in force.
    let mut secret_written = false;
    let mut config_written = false;
    if let Some(t) = &validated.translation {
        let p = keyring::step(&RotationInputs {
            current: keys_data.as_ref(),
            now,
            rotation_interval: t.config.session.rotation_interval.get(),
            accept_retired_for: t.config.session.accept_retired_for.get(),
            requested: array
                .annotations()
                .get(ROTATE_KEYS_ANNOTATION)
                .map(String::as_str),
            handled: handled.as_deref(),
            members: &fetched.members,
            fresh_secret: (ctx.random_key)(),
        });
        requeue = requeue.min(p.requeue_after);

        // Build (pure).
        let desired = builders::build(&BuildInputs {
            array,
            config: &t.config,
            keyring: &p.keyring,
            tls: &validated.tls,
            rotation_handled: p.handled.as_deref(),
            default_image: &ctx.settings.dataplane_image,
        })?;

        // An object the API server would refuse for its size is not sent, nor is any
        // other: the last objects written stay consistent with each other.
        let oversized = builders::oversized(&desired);
        if !oversized.is_empty() {
            blocked = Some(Blocked {
                reason: "ObjectTooLarge",
                message: oversized.join("; "),
                spec_problem: true,
            });
        } else {
            // Apply: identity and permissions first, then data, then the workload. A
            // refusal stops here; what was written before keeps serving, and status says
            // which object and why.
            let c = &ctx.client;
            let applied: Result<(), Error> = async {
                apply::<ServiceAccount>(c, &ns, &desired.service_account).await?;
                apply::<Role>(c, &ns, &desired.role).await?;
                apply::<RoleBinding>(c, &ns, &desired.role_binding).await?;
                apply::<Secret>(c, &ns, &desired.secret).await?;
                secret_written = true;
                apply::<ConfigMap>(c, &ns, &desired.config_map).await?;
                config_written = true;
                apply::<Deployment>(c, &ns, &desired.deployment).await?;
                apply::<Service>(c, &ns, &desired.service).await?;
                apply::<PodDisruptionBudget>(c, &ns, &desired.pdb).await?;
                if let Some(previous) = &fetched.previous_keys {
                    retire_previous_keys(
                        ctx,
                        array,
                        &ns,
                        previous,
                        &keys_name,
                        carried_over,
                        &array_ref,
                    )
                    .await?;
                }
                Ok(())
            }
            .await;
            if let Err(e) = applied {
                blocked = Some(blocked_by(&e));
                apply_error = Some(e);
            }
        }

        let hash = t.config.content_hash();
        let previous_hash = array.status.as_ref().and_then(|s| s.config_hash.as_deref());
        if config_written && previous_hash != Some(hash.as_str()) {
            publish(
                ctx,
                &array_ref,
                EventType::Normal,
                "ConfigApplied",
                "Apply",
                format!(
                    "wrote config {hash} with {} farm(s) and {} endpoint(s)",
                    t.config.farms.len(),
                    t.config.endpoints.len()
                ),
            )
            .await;
        }
        if secret_written {
            if let (Some(error), RotationStep::Generated { id }) = (&keyring_error, &p.step) {
                publish(
                    ctx,
                    &array_ref,
                    EventType::Warning,
                    "KeyringReplaced",
                    "RotateKeys",
                    format!("the stored keyring was unusable ({error}); generated a new one with key {id}, so existing sessions restart"),
                )
                .await;
            }
            if let Some((reason, label, note)) = step_event(&p.step) {
                ctx.metrics.key_step(label);
                tracing::info!(step = label, "keyring step");
                publish(
                    ctx,
                    &array_ref,
                    EventType::Normal,
                    reason,
                    "RotateKeys",
                    note,
                )
                .await;
            }
            plan = Some(p);
        }
    }

    // Status.
    let config_hash = validated
        .translation
        .as_ref()
        .filter(|_| config_written)
        .map(|t| t.config.content_hash())
        .or_else(|| array.status.as_ref().and_then(|s| s.config_hash.clone()));
    let keyring_for_status = plan.as_ref().map(|p| &p.keyring).or(keys_data.as_ref());
    let array_status = status::array_status(&ArrayStatusInputs {
        array,
        errors: &validated.array_errors,
        missing_refs: &validated.array_missing,
        config_hash: config_hash.as_deref(),
        keys_secret: if plan.is_some() {
            Some(keys_name.as_str())
        } else {
            array.status.as_ref().and_then(|s| s.keys_secret.as_deref())
        },
        keyring: keyring_for_status,
        rotation: plan.as_ref().map(|p| &p.step),
        members: &fetched.members,
        blocked: blocked.as_ref(),
        now,
    });
    ctx.metrics
        .array_members(&ns, &name, status::convergence(&array_status));
    let ready = array_status.ready_members;
    let converged = array_status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if !converged && validated.translation.is_some() {
        requeue = requeue.min(CONVERGE_POLL);
    }

    for farm in &fetched.farms {
        let id = translate::farm_id(farm);
        let Some(verdict) = validated.verdicts.get(&id) else {
            continue;
        };
        let new = status::farm_status(farm, array, verdict, ready, blocked.as_ref(), now);
        if farm.status.as_ref() == Some(&new) {
            continue;
        }
        apply_status::<ServerFarm>(&ctx.client, &ns, &farm.name_any(), &new).await?;
        let accepted = new.conditions.iter().find(|c| c.type_ == "Accepted");
        if let Some(c) = accepted.filter(|c| c.status == "False") {
            let was = farm
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Accepted"));
            if was.map(|w| (&w.status, &w.message)) != Some((&c.status, &c.message)) {
                publish(
                    ctx,
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
    if array.status.as_ref() != Some(&array_status) {
        let previous = array.status.as_ref();
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
        apply_status::<GatewayArray>(&ctx.client, &ns, &name, &array_status).await?;
        let problems: Vec<String> = status::error_message(&validated.array_errors)
            .split("; ")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .chain(validated.array_missing.iter().cloned())
            .collect();
        if !problems.is_empty() && !was_invalid {
            publish(
                ctx,
                &array_ref,
                EventType::Warning,
                "ArrayNotApplied",
                "Validate",
                format!("config not written: {}", problems.join("; ")),
            )
            .await;
        }
        if let Some(b) = blocked.as_ref().filter(|b| !was_blocked(b)) {
            publish(
                ctx,
                &array_ref,
                EventType::Warning,
                b.reason,
                "Apply",
                format!("{}; the last objects written keep serving", b.message),
            )
            .await;
        }
    }
    // A refused apply is also a failed reconcile: counted, logged and retried with backoff.
    if let Some(e) = apply_error {
        return Err(e);
    }
    Ok(Action::requeue(requeue))
}

/// What status says about a failed apply: the object, and the API server's own words.
fn blocked_by(error: &Error) -> Blocked {
    let (what, source) = match error {
        Error::Apply { what, source } => (what.as_str(), source),
        other => {
            return Blocked {
                reason: "ApplyFailed",
                message: other.to_string(),
                spec_problem: false,
            };
        }
    };
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
    // A name no array can have is not looked up (`get("")` would be a list).
    let exists = translate::is_dns_label(array)
        && api::<GatewayArray>(&ctx.client, &ns)
            .get_opt(array)
            .await
            .map_err(|source| Error::Fetch {
                what: format!("GatewayArray {ns}/{array}"),
                source,
            })?
            .is_some();
    if exists {
        return Ok(Action::await_change());
    }
    let new = status::orphan_farm_status(&farm, (ctx.clock)());
    if farm.status.as_ref() != Some(&new) {
        apply_status::<ServerFarm>(&ctx.client, &ns, &name, &new).await?;
        let was_orphan = farm.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Accepted" && c.reason == "ArrayNotFound")
        });
        if !was_orphan {
            publish(
                &ctx,
                &farm.object_ref(&()),
                EventType::Warning,
                "ArrayNotFound",
                "Validate",
                format!("not published: GatewayArray {ns}/{array} does not exist"),
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

//! Pure builders: a validated array, its translated config and its keyring into the exact
//! Kubernetes objects the controller applies. No I/O; every object carries the array's
//! labels and a controller owner reference, so deleting the array deletes them all.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, Secret, SecurityContext,
    Service, ServiceAccount, ServicePort, ServiceSpec, Sysctl, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use portcullis_crds::config::{CONFIG_HASH_KEY, CONFIG_KEY, DataplaneConfig};
use portcullis_crds::keyring::{KEYRING_SECRET_KEY, KeyringDoc};
use portcullis_crds::v1alpha1::{GatewayArray, GatewayArraySpec, PodOptions, ServiceType};

/// The field manager of every server-side apply the controller sends.
pub const FIELD_MANAGER: &str = "portcullis-controller";
/// The port members serve `/healthz`, `/readyz` and `/status` on.
pub use portcullis_crds::v1alpha1::MEMBER_ADMIN_PORT;
/// The most data (the bytes of its values) a Secret or a ConfigMap may hold: the API
/// server refuses more.
pub const MAX_DATA_BYTES: usize = 1024 * 1024;
/// Annotation on the keys Secret: the last `portcullis.io/rotate-keys` value handled.
pub const ROTATION_HANDLED_ANNOTATION: &str = "portcullis.io/rotate-keys-handled";
/// Annotation on the Deployment (not the pod template: members hot-reload, a hash in
/// the template would restart them on every config change) with the config hash.
pub const CONFIG_HASH_ANNOTATION: &str = "portcullis.io/config-hash";
/// Label naming the array on everything the controller creates.
pub const ARRAY_LABEL: &str = "portcullis.io/array";
/// Extra seconds of termination grace beyond the drain timeout (covers the preStop
/// sleep and process exit).
pub const GRACE_MARGIN_SECS: i64 = 10;
/// Seconds a stopping member waits before draining, so endpoints controllers and load
/// balancers stop sending it new connections first.
pub const PRE_STOP_SLEEP_SECS: i64 = 5;

/// TLS material copied from one referenced Secret. Debug never shows the bytes.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsMaterial {
    /// `tls.crt`.
    pub cert: Option<ByteString>,
    /// `tls.key`.
    pub key: Option<ByteString>,
    /// `ca.crt`.
    pub ca: Option<ByteString>,
    /// `auth`: an htpasswd file for basic authentication.
    pub auth: Option<ByteString>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("cert", &self.cert.is_some())
            .field("key", &self.key.is_some())
            .field("ca", &self.ca.is_some())
            .field("auth", &self.auth.is_some())
            .finish()
    }
}

/// Everything the builders need, already fetched and validated.
#[derive(Clone, Debug)]
pub struct BuildInputs<'a> {
    /// The array (with namespace and uid).
    pub array: &'a GatewayArray,
    /// The translated config.
    pub config: &'a DataplaneConfig,
    /// The keyring to store.
    pub keyring: &'a KeyringDoc,
    /// The TLS material of referenced Secrets, by Secret name.
    pub tls: &'a BTreeMap<String, TlsMaterial>,
    /// The last handled rotation request, remembered on the keys Secret.
    pub rotation_handled: Option<&'a str>,
    /// The image when `spec.pod.image` is unset.
    pub default_image: &'a str,
}

/// The objects of one array.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// `<name>-config`.
    pub config_map: ConfigMap,
    /// `spec.sessionKeys.secretName`, else `<name>-keys`.
    pub secret: Secret,
    /// `<name>`.
    pub deployment: Deployment,
    /// `<name>`.
    pub service: Service,
    /// `<name>`.
    pub pdb: PodDisruptionBudget,
    /// `<name>-dataplane`.
    pub service_account: ServiceAccount,
    /// `<name>-dataplane`.
    pub role: Role,
    /// `<name>-dataplane`.
    pub role_binding: RoleBinding,
}

/// Why objects could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The array has no namespace or uid (it did not come from the API server).
    #[error("failed to build objects: GatewayArray {0} has no namespace or uid")]
    MissingMetadata(String),
}

/// Names of the objects of array `name`.
pub mod names {
    use portcullis_crds::v1alpha1::GatewayArray;

    /// ConfigMap.
    pub fn config_map(array: &str) -> String {
        format!("{array}-config")
    }
    /// The Secret with the keyring and the TLS copies when `spec.sessionKeys.secretName`
    /// is unset.
    pub fn default_secret(array: &str) -> String {
        format!("{array}-keys")
    }
    /// The Secret with the keyring and the TLS copies: `spec.sessionKeys.secretName`, else
    /// `<array>-keys`.
    pub fn secret(array: &GatewayArray) -> String {
        array
            .spec
            .session_keys
            .as_ref()
            .and_then(|k| k.secret_name.clone())
            .unwrap_or_else(|| default_secret(&kube::ResourceExt::name_any(array)))
    }
    /// ServiceAccount, Role and RoleBinding.
    pub fn dataplane(array: &str) -> String {
        format!("{array}-dataplane")
    }
}

/// The labels on everything of array `name`.
pub fn labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "portcullis-dataplane".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), name.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            FIELD_MANAGER.to_owned(),
        ),
        (ARRAY_LABEL.to_owned(), name.to_owned()),
    ])
}

/// The label selector of member pods.
pub fn selector(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "portcullis-dataplane".to_owned(),
        ),
        (ARRAY_LABEL.to_owned(), name.to_owned()),
    ])
}

/// The `labelSelector` query string for member pods.
pub fn selector_query(name: &str) -> String {
    selector(name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Secret data key names for the TLS material of Secret `secret`: `<secret>.tls.crt`,
/// `<secret>.tls.key`, `<secret>.ca.crt`. No key can be read two ways, even for Secret
/// names with dots (`x.ca`'s certificate is `x.ca.tls.crt`, `x`'s CA is `x.ca.crt`).
pub fn tls_keys(secret: &str) -> [String; 3] {
    [
        format!("{secret}.tls.crt"),
        format!("{secret}.tls.key"),
        format!("{secret}.ca.crt"),
    ]
}

/// Secret data key name for the htpasswd file of Secret `secret`: `<secret>.auth`. It
/// cannot be read as TLS material of another Secret (those end in `.crt` or `.key`).
pub fn auth_key(secret: &str) -> String {
    format!("{secret}.auth")
}

/// The objects the API server would refuse for their size: each says what it would hold
/// and by how much that is too much. Names objects and sizes, never contents.
pub fn oversized(desired: &Desired) -> Vec<String> {
    let secret: usize = desired
        .secret
        .data
        .iter()
        .flatten()
        .map(|(_, v)| v.0.len())
        .sum();
    let config: usize = desired
        .config_map
        .data
        .iter()
        .flatten()
        .map(|(_, v)| v.len())
        .sum();
    let mut out = Vec::new();
    for (kind, object, size, holds) in [
        (
            "Secret",
            &desired.secret.metadata,
            secret,
            "the keyring and a copy of every certificate and CA the config uses",
        ),
        (
            "ConfigMap",
            &desired.config_map.metadata,
            config,
            "the dataplane config of every accepted farm",
        ),
    ] {
        if size > MAX_DATA_BYTES {
            out.push(format!(
                "{kind} {}/{} would hold {size} bytes, {} more than the {MAX_DATA_BYTES} a {kind} may hold; it carries {holds}",
                object.namespace.as_deref().unwrap_or_default(),
                object.name.as_deref().unwrap_or_default(),
                size - MAX_DATA_BYTES
            ));
        }
    }
    out
}

/// Builds every object of the array.
pub fn build(inputs: &BuildInputs<'_>) -> Result<Desired, BuildError> {
    let array = inputs.array;
    let name = array.name_any();
    let namespace = array
        .namespace()
        .ok_or_else(|| BuildError::MissingMetadata(name.clone()))?;
    let owner = owner_reference(array).ok_or_else(|| BuildError::MissingMetadata(name.clone()))?;
    let meta = |object_name: String| ObjectMeta {
        name: Some(object_name),
        namespace: Some(namespace.clone()),
        labels: Some(labels(&name)),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    };
    Ok(Desired {
        config_map: config_map(inputs, meta(names::config_map(&name))),
        secret: secret(inputs, meta(names::secret(array))),
        deployment: deployment(inputs, &name, &namespace, meta(name.clone())),
        service: service(inputs, &name, meta(name.clone())),
        pdb: pdb(&name, meta(name.clone())),
        service_account: ServiceAccount {
            metadata: meta(names::dataplane(&name)),
            automount_service_account_token: Some(true),
            ..ServiceAccount::default()
        },
        role: role(&name, &names::secret(array), meta(names::dataplane(&name))),
        role_binding: role_binding(&name, &namespace, meta(names::dataplane(&name))),
    })
}

fn config_map(inputs: &BuildInputs<'_>, metadata: ObjectMeta) -> ConfigMap {
    ConfigMap {
        metadata,
        data: Some(BTreeMap::from([
            (CONFIG_KEY.to_owned(), inputs.config.to_json()),
            (CONFIG_HASH_KEY.to_owned(), inputs.config.content_hash()),
        ])),
        ..ConfigMap::default()
    }
}

fn secret(inputs: &BuildInputs<'_>, mut metadata: ObjectMeta) -> Secret {
    let mut data = BTreeMap::from([(
        KEYRING_SECRET_KEY.to_owned(),
        ByteString(inputs.keyring.to_yaml().into_bytes()),
    )]);
    for (secret, material) in inputs.tls {
        let [crt, key, ca] = tls_keys(secret);
        for (k, v) in [
            (crt, &material.cert),
            (key, &material.key),
            (ca, &material.ca),
        ] {
            if let Some(v) = v {
                data.insert(k, v.clone());
            }
        }
        if let Some(auth) = &material.auth {
            data.insert(auth_key(secret), auth.clone());
        }
    }
    if let Some(handled) = inputs.rotation_handled {
        metadata.annotations = Some(BTreeMap::from([(
            ROTATION_HANDLED_ANNOTATION.to_owned(),
            handled.to_owned(),
        )]));
    }
    Secret {
        metadata,
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

/// The member's writable state volume and where it is mounted (the dataplane's default
/// `--state-dir`).
const STATE_VOLUME: &str = "state";
const STATE_DIR: &str = "/run/portcullis";

fn deployment(
    inputs: &BuildInputs<'_>,
    name: &str,
    namespace: &str,
    mut metadata: ObjectMeta,
) -> Deployment {
    let spec = &inputs.array.spec;
    let pod = spec.pod.clone().unwrap_or_default();
    metadata.annotations = Some(BTreeMap::from([(
        CONFIG_HASH_ANNOTATION.to_owned(),
        inputs.config.content_hash(),
    )]));
    let container = dataplane_container(inputs, &pod, name, namespace);
    let mut pod_annotations = scrape_annotations();
    pod_annotations.extend(pod.annotations.clone());
    Deployment {
        metadata,
        spec: DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector(name)),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(name)),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(inputs, &pod, name, container)),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// The member's ports: one per listener, and the admin port.
fn container_ports(spec: &GatewayArraySpec) -> Vec<ContainerPort> {
    let mut ports: Vec<ContainerPort> = spec
        .listeners
        .iter()
        .map(|l| ContainerPort {
            name: Some(l.name.clone()),
            container_port: i32::from(l.port),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        })
        .collect();
    ports.push(ContainerPort {
        name: Some("admin".to_owned()),
        container_port: i32::from(MEMBER_ADMIN_PORT),
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    });
    ports
}

/// An HTTP probe of the admin port.
fn admin_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("admin".to_owned()),
            scheme: Some("HTTP".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// The member's command line.
fn dataplane_args(inputs: &BuildInputs<'_>, name: &str, namespace: &str) -> Vec<String> {
    vec![
        "--array".to_owned(),
        name.to_owned(),
        "--namespace".to_owned(),
        namespace.to_owned(),
        "--keys-secret".to_owned(),
        names::secret(inputs.array),
        // The unspecified IPv6 address with IPV6_V6ONLY off takes IPv4 connections
        // too: probes and traffic reach the member on single-stack IPv4, single-stack
        // IPv6 and dual-stack clusters alike.
        "--admin".to_owned(),
        format!("[::]:{MEMBER_ADMIN_PORT}"),
        "--bind".to_owned(),
        "::".to_owned(),
    ]
    .into_iter()
    .chain(
        (inputs.array.spec.access_log == Some(false))
            .then(|| ["--access-log".to_owned(), "off".to_owned()])
            .into_iter()
            .flatten(),
    )
    .chain(inputs.array.spec.tracing.iter().flat_map(|t| {
        [
            "--otlp-endpoint".to_owned(),
            t.otlp_endpoint.clone(),
            "--trace-sample-ratio".to_owned(),
            t.sample_ratio.unwrap_or(1.0).to_string(),
        ]
    }))
    .collect()
}

/// The member container: the dataplane, locked down, with its state in memory.
fn dataplane_container(
    inputs: &BuildInputs<'_>,
    pod: &PodOptions,
    name: &str,
    namespace: &str,
) -> Container {
    Container {
        name: "dataplane".to_owned(),
        image: Some(
            pod.image
                .clone()
                .unwrap_or_else(|| inputs.default_image.to_owned()),
        ),
        command: Some(vec!["portcullis-dataplane".to_owned()]),
        args: Some(dataplane_args(inputs, name, namespace)),
        env: Some(vec![EnvVar {
            name: "POD_NAME".to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".to_owned(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        ports: Some(container_ports(&inputs.array.spec)),
        readiness_probe: Some(admin_probe("/readyz", 5, 2)),
        liveness_probe: Some(admin_probe("/healthz", 10, 3)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec!["sleep".to_owned(), PRE_STOP_SLEEP_SECS.to_string()]),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        resources: pod.resources.clone(),
        // The root filesystem is read-only; the member writes the synced config, keyring
        // and certificates here (memory-backed, so key material never touches a disk).
        volume_mounts: Some(vec![VolumeMount {
            name: STATE_VOLUME.to_owned(),
            mount_path: STATE_DIR.to_owned(),
            ..VolumeMount::default()
        }]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// The member pod: the container, unprivileged, given the drain timeout to stop.
fn pod_spec(
    inputs: &BuildInputs<'_>,
    pod: &PodOptions,
    name: &str,
    container: Container,
) -> PodSpec {
    let spec = &inputs.array.spec;
    let drain = i64::try_from(inputs.config.drain_timeout.as_secs()).unwrap_or(i64::MAX / 2);
    PodSpec {
        service_account_name: Some(names::dataplane(name)),
        termination_grace_period_seconds: Some(drain + GRACE_MARGIN_SECS),
        node_selector: (!pod.node_selector.is_empty()).then(|| pod.node_selector.clone()),
        tolerations: (!pod.tolerations.is_empty()).then(|| pod.tolerations.clone()),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..SeccompProfile::default()
            }),
            sysctls: unprivileged_port_start(spec).map(|port| {
                vec![Sysctl {
                    name: UNPRIVILEGED_PORT_START.to_owned(),
                    value: port.to_string(),
                }]
            }),
            ..PodSecurityContext::default()
        }),
        containers: vec![container],
        volumes: Some(vec![Volume {
            name: STATE_VOLUME.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".to_owned()),
                size_limit: Some(Quantity("16Mi".to_owned())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    }
}

/// The `prometheus.io/*` annotations on member pods: where a Prometheus without the
/// Prometheus Operator (the common `kubernetes-pods` scrape job) finds their metrics. On
/// for every array: they only describe the admin port members already serve; the
/// array's `spec.pod.annotations` override them (`prometheus.io/scrape: "false"` turns
/// the scrape off, for instance where the chart's PodMonitor already collects members).
pub fn scrape_annotations() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
        (
            "prometheus.io/port".to_owned(),
            MEMBER_ADMIN_PORT.to_string(),
        ),
        ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
    ])
}

/// The namespaced sysctl (a "safe" one, allowed by PodSecurity `restricted`) below which
/// binding a port needs `CAP_NET_BIND_SERVICE`. It covers IPv6 too, despite its name.
pub const UNPRIVILEGED_PORT_START: &str = "net.ipv4.ip_unprivileged_port_start";

/// For an array with listeners below 1024: the lowest listener port, so the member (which
/// runs as non-root with every capability dropped) may bind its listeners on runtimes
/// that do not lower the limit themselves, and no port below them.
fn unprivileged_port_start(spec: &portcullis_crds::v1alpha1::GatewayArraySpec) -> Option<u16> {
    spec.listeners
        .iter()
        .map(|l| l.port)
        .min()
        .filter(|p| *p < 1024)
}

fn service(inputs: &BuildInputs<'_>, name: &str, mut metadata: ObjectMeta) -> Service {
    let options = inputs.array.spec.service.clone().unwrap_or_default();
    if !options.annotations.is_empty() {
        metadata.annotations = Some(options.annotations.clone());
    }
    let type_ = match options.type_ {
        ServiceType::ClusterIp => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    };
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(type_.to_owned()),
            selector: Some(selector(name)),
            ports: Some(
                inputs
                    .array
                    .spec
                    .listeners
                    .iter()
                    .map(|l| ServicePort {
                        name: Some(l.name.clone()),
                        port: i32::from(l.port),
                        target_port: Some(IntOrString::String(l.name.clone())),
                        protocol: Some("TCP".to_owned()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn pdb(name: &str, metadata: ObjectMeta) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            // Unready members may always be evicted: they serve nothing.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_owned()),
            selector: Some(LabelSelector {
                match_labels: Some(selector(name)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

fn role(name: &str, keys_secret: &str, metadata: ObjectMeta) -> Role {
    // Members poll their two objects by name with `get`, and need nothing else. (For the
    // Secret, list/watch would also require the controller itself to hold list/watch on
    // Secrets, by the RBAC escalation check: the right to read every Secret it can see.)
    let verbs = vec!["get".to_owned()];
    let secret_verbs = vec!["get".to_owned()];
    Role {
        metadata,
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["configmaps".to_owned()]),
                resource_names: Some(vec![names::config_map(name)]),
                verbs: verbs.clone(),
                ..PolicyRule::default()
            },
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["secrets".to_owned()]),
                resource_names: Some(vec![keys_secret.to_owned()]),
                verbs: secret_verbs,
                ..PolicyRule::default()
            },
        ]),
    }
}

fn role_binding(name: &str, namespace: &str, metadata: ObjectMeta) -> RoleBinding {
    RoleBinding {
        metadata,
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "Role".to_owned(),
            name: names::dataplane(name),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: names::dataplane(name),
            namespace: Some(namespace.to_owned()),
            ..Subject::default()
        }]),
    }
}

/// The owner reference every object carries: the array, as controller, blocking
/// foreground deletion of the array until the object is gone.
pub fn owner_reference(array: &GatewayArray) -> Option<OwnerReference> {
    let mut owner = array.controller_owner_ref(&())?;
    owner.block_owner_deletion = Some(true);
    Some(owner)
}

//! `GatewayArray`: a set of identical dataplane pods that publish farms and share keys.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Duration;

/// The annotation that asks the controller to start a key rotation now. Its value is
/// free text (a timestamp is a good choice); each new value starts one rotation.
pub const ROTATE_KEYS_ANNOTATION: &str = "portcullis.io/rotate-keys";

/// The port array members serve `/healthz`, `/readyz`, `/metrics` and `/status` on (the
/// container port named `admin`). No listener may use it, nor that name.
pub const MEMBER_ADMIN_PORT: u16 = 9901;

/// The container port name of [`MEMBER_ADMIN_PORT`]; listener names may not take it.
pub const MEMBER_ADMIN_PORT_NAME: &str = "admin";

/// A set of identical proxy pods ("array members") that publish ServerFarms, load the
/// same configuration and share a keyring, so that any member can continue a session
/// another member started.
// Each `printcolumn(...)` repeats `type_`; clippy mistakes that for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "portcullis.io",
    version = "v1alpha1",
    kind = "GatewayArray",
    plural = "gatewayarrays",
    shortname = "ga",
    category = "portcullis",
    namespaced,
    status = "GatewayArrayStatus",
    derive = "PartialEq",
    cel,
    scale = r#"{"specReplicasPath":".spec.replicas", "statusReplicasPath":".status.readyMembers", "labelSelectorPath":".status.selector"}"#,
    // The array's name becomes its Service's name (a DNS-1035 label) and label values.
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be a DNS-1035 label (lower-case letters, digits and '-', starting with a letter, no dots): it names the array's Service"),
    validation = Rule::new("size(self.metadata.name) <= 63").message("metadata.name must be at most 63 characters: it names the array's Service and is a label value"),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyMembers"),
    printcolumn(
        name = "Config",
        type_ = "string",
        json_path = ".status.configHash",
        priority = 1
    ),
    printcolumn(
        name = "Active key",
        type_ = "string",
        json_path = ".status.activeKeyId"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.sessionKeys) || !has(self.sessionKeys.acceptRetiredFor) || duration(self.sessionKeys.acceptRetiredFor) >= duration(has(self.maxSessionTime) ? self.maxSessionTime : '24h')").message("sessionKeys.acceptRetiredFor must be at least maxSessionTime, or sessions would outlive their key").field_path(".sessionKeys.acceptRetiredFor"))]
pub struct GatewayArraySpec {
    /// Number of array members (dataplane pods). Defaults to 2.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,

    /// The ports the members listen on.
    #[x_kube(validation = Rule::new("self.size() > 0").message("an array needs at least one listener"))]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(l, self.exists_one(m, m.name == l.name))").message("listener names must be unique"))]
    #[x_kube(validation = Rule::new("self.all(l, self.exists_one(m, m.port == l.port))").message("listener ports must be unique"))]
    pub listeners: Vec<Listener>,

    /// Scheduling and resource knobs for the member pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodOptions>,

    /// The Service in front of the members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceOptions>,

    /// The keyring shared by all members, used for affinity cookies and cookie
    /// protection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_keys: Option<SessionKeys>,

    /// How long a stopping member keeps serving in-flight requests after it stops
    /// accepting new ones. Defaults to `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<Duration>,

    /// The longest a session (an affinity cookie) may live, whatever the farm asks.
    /// Defaults to `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_session_time: Option<Duration>,

    /// Limits that protect members from slow or abusive clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ClientLimits>,

    /// Addresses (CIDRs such as `10.0.0.0/8` or `2001:db8::/32`) of proxies in front of
    /// the array whose forwarding headers are believed. From any other client,
    /// `X-Forwarded-For` is replaced by the client's address and `Forwarded`,
    /// `X-Real-IP` and `X-Forwarded-Port` are removed. Empty by default: nobody is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub trusted_proxies: Vec<String>,

    /// Whether members write one access-log line per request (to stderr, from a
    /// logging thread, dropping lines rather than slowing requests when it falls
    /// behind). Defaults to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<bool>,

    /// OpenTelemetry tracing of requests. When set, members record one server span per
    /// sampled request, export the spans to `otlpEndpoint`, and send backends a W3C
    /// `traceparent` whose parent is that span. Unset: nothing is recorded and a
    /// client's `traceparent` reaches the backend untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
}

/// Where members export request spans, and how many.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Tracing {
    /// The collector's OTLP/HTTP URL, such as `http://otel-collector.observability:4318`
    /// (the path defaults to `/v1/traces`). Spans are sent as OTLP JSON; `http` only,
    /// to a collector or agent inside the cluster.
    #[schemars(regex(pattern = r"^http://[^/?#\s]+(/[^?#\s]*)?$"), length(max = 2048))]
    pub otlp_endpoint: String,
    /// The share of new traces recorded, from 0 to 1 (default 1). A request whose
    /// `traceparent` is sampled is always recorded, one whose `traceparent` is not is
    /// never: the caller decides for its own traces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sample_ratio: Option<f64>,
}

fn default_replicas() -> i32 {
    2
}

/// One listening port of the array.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.protocol != 'HTTPS' || has(self.tls)").message("an HTTPS listener needs tls.secretName (the default certificate)").field_path(".tls"))]
#[x_kube(validation = Rule::new("self.protocol != 'HTTP' || !has(self.tls)").message("an HTTP listener takes no tls").field_path(".tls"))]
pub struct Listener {
    /// A name unique in the array. It names the member container's port and the
    /// Service's target port, so it is an IANA service name: 1-15 lower-case letters,
    /// digits and '-', with at least one letter and no `--`. `admin` is taken by the
    /// members' admin port.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 15))]
    #[x_kube(validation = Rule::new("self.matches('[a-z]')").message("a listener name needs at least one letter: it names a container port"))]
    #[x_kube(validation = Rule::new("!self.contains('--')").message("a listener name may not contain '--': it names a container port"))]
    #[x_kube(validation = Rule::new("self != 'admin'").message("'admin' names the members' admin port; choose another listener name"))]
    pub name: String,
    /// The TCP port. 9901 is the members' admin port. Ports below 1024 work: the member
    /// pods then allow unprivileged processes to bind them (a namespaced sysctl).
    #[schemars(range(min = 1, max = 65535))]
    #[x_kube(validation = Rule::new("self != 9901").message("port 9901 is the members' admin port; choose another listener port"))]
    pub port: u16,
    /// `HTTP` or `HTTPS`.
    pub protocol: ListenerProtocol,
    /// The default certificate of an HTTPS listener, used when no farm's certificate
    /// matches the client's SNI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
}

/// A listener's protocol.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub enum ListenerProtocol {
    /// Plain HTTP/1.1 (and HTTP/2 with prior knowledge).
    #[serde(rename = "HTTP")]
    Http,
    /// TLS 1.2/1.3 with ALPN `h2` and `http/1.1`.
    #[serde(rename = "HTTPS")]
    Https,
}

/// The default certificate of an HTTPS listener.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTls {
    /// A `kubernetes.io/tls` Secret in the array's namespace (in local mode,
    /// `certs/<secretName>/tls.crt` and `tls.key` under the manifests directory).
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        length(max = 253)
    )]
    pub secret_name: String,
}

/// Scheduling and resource knobs for member pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodOptions {
    /// CPU and memory requests and limits of the dataplane container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels a member pod requires.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the member pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Extra annotations on member pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The dataplane image. Defaults to the image the controller was installed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// The Service in front of the members.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceOptions {
    /// `ClusterIP`, `NodePort` or `LoadBalancer` (default).
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Extra annotations on the Service (for example, cloud load-balancer settings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Kubernetes Service types.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    #[serde(rename = "ClusterIP")]
    ClusterIp,
    /// A port on every node.
    NodePort,
    /// A cloud load balancer.
    #[default]
    LoadBalancer,
}

/// The shared keyring's settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SessionKeys {
    /// The Secret the controller keeps the keyring (and the copies of the TLS material
    /// members need) in, in the array's namespace; defaults to `<array>-keys`. Created
    /// and owned by the array when absent. An existing Secret is taken over only when it
    /// is Opaque and holds a keyring (`keyring.yaml`), which is then adopted, so keys can
    /// be carried over from a backup or another installation. Renaming it moves the
    /// keyring to the new Secret and deletes the old one. It must not be a Secret the
    /// array or its farms use for certificates, nor one another object controls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        length(max = 253)
    )]
    pub secret_name: Option<String>,
    /// How often a new key is rotated in. Defaults to `168h` (7 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_interval: Option<Duration>,
    /// How long a retired key still opens cookies. Must be at least `maxSessionTime`.
    /// Defaults to `maxSessionTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_retired_for: Option<Duration>,
}

/// Limits on client connections.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClientLimits {
    /// Concurrent client connections per member. Defaults to 20000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections: Option<u32>,
    /// Total size of a request's header block; larger gets 431. Defaults to 32768.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 1048576))]
    pub max_header_bytes: Option<u32>,
    /// Number of request headers; more gets 431. Defaults to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 8, max = 1000))]
    pub max_headers: Option<u32>,
    /// Time a client has to send the whole request header; slower gets 408. Defaults to
    /// `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_read_timeout: Option<Duration>,
    /// A keep-alive client connection idle this long is closed. Defaults to `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_idle_timeout: Option<Duration>,
    /// Concurrent connections one client address may hold per member; more are refused
    /// (and counted). Unset, there is no cap per address (only `maxConnections`): set it
    /// when members see real client addresses, not when a load balancer SNATs them to a
    /// few node addresses (`externalTrafficPolicy: Cluster` without PROXY protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections_per_client: Option<u32>,
}

/// The observed state of a GatewayArray.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayArrayStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Members that are ready to serve.
    #[serde(default)]
    pub ready_members: i32,
    /// Content hash of the dataplane config the controller last wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// The config hash every ready member has loaded, when they all agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loaded_config_hash: Option<String>,
    /// The Secret the keyring was last written to. When `spec.sessionKeys.secretName`
    /// changes, the keyring is carried over from this Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_secret: Option<String>,
    /// The id of the key members encrypt with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_key_id: Option<String>,
    /// Ids of every key in the ring (active and accepted). Never the keys themselves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_ids: Vec<String>,
    /// What each member reports having loaded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// The label selector of the member pods, for the scale subresource (so a
    /// HorizontalPodAutoscaler can target the array).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// `Accepted`, `ResolvedRefs`, `Ready` and `KeysRotating` conditions, one per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// What one member has loaded.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// The member pod's name.
    pub name: String,
    /// Whether the pod is ready.
    #[serde(default)]
    pub ready: bool,
    /// Hash of the config it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// Ids of the keys in its loaded keyring.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_ids: Vec<String>,
}

//! Reconcile scenarios against a mocked API server (tower-test `mock::pair` behind a kube
//! `Client`). The fake serves GETs and lists from an in-memory object map, stores what is
//! applied, and records every request, so each test checks exactly what the controller
//! sent: server-side apply patches, status patches and events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures::future::BoxFuture;
use http::{Request, Response};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use parking_lot::Mutex;
use portcullis_controller::ingress::{IngressContext, reconcile_ingress};
use portcullis_controller::keyring::MemberReport;
use portcullis_controller::members::MemberStatusSource;
use portcullis_controller::metrics::Metrics;
use portcullis_controller::reconcile::{Context, Settings, reconcile, reconcile_farm};
use portcullis_crds::ingress::Migration;
use portcullis_crds::keyring::{KeyState, KeyringDoc};
use portcullis_crds::v1alpha1::{GatewayArray, ServerFarm};
use serde_json::{Value, json};

const NS: &str = "shop";
const ARRAY: &str = "/apis/portcullis.io/v1alpha1/namespaces/shop/gatewayarrays/edge";
const FARMS: &str = "/apis/portcullis.io/v1alpha1/namespaces/shop/serverfarms";
/// Farms are listed across namespaces: a farm may name an array in another one.
const ALL_FARMS: &str = "/apis/portcullis.io/v1alpha1/serverfarms";
const SECRETS: &str = "/api/v1/namespaces/shop/secrets";
const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices";
const PODS: &str = "/api/v1/namespaces/shop/pods";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";
const T0: i64 = 1_800_000_000;

#[derive(Clone, Debug)]
struct Req {
    method: String,
    path: String,
    query: String,
    body: Value,
}

#[derive(Default)]
struct Fake {
    objects: Mutex<BTreeMap<String, Value>>,
    log: Mutex<Vec<Req>>,
    next_rv: Mutex<u64>,
    /// Requests the controller's RBAC contract does not allow.
    forbidden: Mutex<Vec<String>>,
    /// `METHOD path` -> (code, message): what the API server answers instead.
    refuse: Mutex<BTreeMap<String, (u16, String)>>,
}

/// 1 MiB: the most data a Secret or a ConfigMap may hold.
const MAX_DATA_BYTES: usize = 1024 * 1024;

/// What the API server refuses with 422 whatever the RBAC: the validation rules the
/// controller's writes can run into (events.k8s.io notes, condition messages, Secret and
/// ConfigMap sizes), with the API server's wording.
fn invalid(method: &str, path: &str, body: &Value) -> Option<String> {
    if method == "POST" && path == EVENTS {
        let note = body["note"].as_str().unwrap_or("");
        if note.len() > 1024 {
            return Some(format!(
                "Event.events.k8s.io is invalid: note: Too long: may not be more than 1024 bytes ({} bytes)",
                note.len()
            ));
        }
    }
    if method == "PATCH" && path.ends_with("/status") {
        for c in body["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let len = c["message"].as_str().unwrap_or("").len();
            if len > 32768 {
                return Some(format!(
                    "status.conditions.message: Too long: may not be more than 32768 bytes ({len} bytes)"
                ));
            }
        }
    }
    if method == "PATCH" && (path.contains("/secrets/") || path.contains("/configmaps/")) {
        let b64 = base64::engine::general_purpose::STANDARD;
        let size: usize = body["data"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(_, v)| {
                let v = v.as_str().unwrap_or("");
                if path.contains("/secrets/") {
                    b64.decode(v).map_or(v.len(), |d| d.len())
                } else {
                    v.len()
                }
            })
            .sum();
        if size > MAX_DATA_BYTES {
            return Some(format!(
                "{} is invalid: data: Too long: may not be more than {MAX_DATA_BYTES} bytes",
                path.rsplit('/').next().unwrap()
            ));
        }
    }
    None
}

fn status_error(code: u16, message: &str) -> Value {
    let reason = match code {
        400 => "BadRequest",
        403 => "Forbidden",
        409 => "Conflict",
        422 => "Invalid",
        _ => "InternalError",
    };
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "reason": reason, "code": code, "message": message})
}

/// `controller/rbac-rules.json`, the rules the chart grants the controller (the chart
/// tests check the rendered ClusterRole equals it): (group, resource) -> verbs.
fn rbac_contract() -> &'static BTreeMap<(String, String), Vec<String>> {
    static CONTRACT: std::sync::LazyLock<BTreeMap<(String, String), Vec<String>>> =
        std::sync::LazyLock::new(parse_rbac_contract);
    &CONTRACT
}

fn parse_rbac_contract() -> BTreeMap<(String, String), Vec<String>> {
    let text = include_str!("../rbac-rules.json");
    let doc: Value = serde_json::from_str(text).unwrap();
    doc["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                (
                    r["group"].as_str().unwrap().to_owned(),
                    r["resource"].as_str().unwrap().to_owned(),
                ),
                r["verbs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect()
}

/// The RBAC verbs a request needs: (group, resource[/subresource], verbs).
fn rbac_needs(
    method: &str,
    path: &str,
    query: &str,
    exists: bool,
) -> (String, String, Vec<&'static str>) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => ((*group).to_owned(), rest),
        _ => panic!("unexpected API path {path}"),
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] => rest,
        rest => rest,
    };
    let (resource, named) = match rest {
        [resource] => ((*resource).to_owned(), false),
        [resource, _name] => ((*resource).to_owned(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => panic!("unexpected API path {path}"),
    };
    let verbs = match (method, named) {
        ("GET", true) => vec!["get"],
        ("GET", false) if query.contains("watch=true") => vec!["watch"],
        ("GET", false) => vec!["list"],
        // Server-side apply of an object that does not exist yet creates it.
        ("PATCH", _) if !exists && !resource.contains('/') => vec!["patch", "create"],
        ("PATCH", _) => vec!["patch"],
        ("PUT", _) => vec!["update"],
        ("POST", _) => vec!["create"],
        ("DELETE", _) => vec!["delete"],
        _ => panic!("unexpected method {method}"),
    };
    (group, resource, verbs)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let h = u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap();
            out.push(h);
            i += 3;
        } else {
            out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
}

fn labels_match(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap();
        obj["metadata"]["labels"][k].as_str() == Some(v)
    })
}

/// For a list of a namespaced resource across namespaces (`/apis/g/v/serverfarms`):
/// the group prefix (`/apis/g/v/`) and the resource.
fn cluster_wide_list(path: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["apis", group, version, resource] if *resource == "serverfarms" => {
            Some((format!("/apis/{group}/{version}/"), (*resource).to_owned()))
        }
        _ => None,
    }
}

fn json_response(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

impl Fake {
    fn put(&self, path: &str, mut obj: Value) {
        let mut rv = self.next_rv.lock();
        *rv += 1;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.objects.lock().insert(path.to_owned(), obj);
    }

    fn get(&self, path: &str) -> Option<Value> {
        self.objects.lock().get(path).cloned()
    }

    fn handle(&self, method: &str, path: &str, query: &str, body: Value) -> Response<Body> {
        self.log.lock().push(Req {
            method: method.to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
            body: body.clone(),
        });
        let exists = self.get(path).is_some();
        let (group, resource, verbs) = rbac_needs(method, path, query, exists);
        let granted = rbac_contract()
            .get(&(group.clone(), resource.clone()))
            .cloned()
            .unwrap_or_default();
        for verb in verbs {
            if !granted.iter().any(|g| g == verb) {
                self.forbidden
                    .lock()
                    .push(format!("{verb} {group}/{resource} ({method} {path})"));
            }
        }
        let refused = self.refuse.lock().get(&format!("{method} {path}")).cloned();
        if let Some((code, message)) = refused {
            return json_response(code, &status_error(code, &message));
        }
        if let Some(message) = invalid(method, path, &body) {
            return json_response(422, &status_error(422, &message));
        }
        let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "reason": "NotFound", "code": 404, "message": format!("{path} not found")});
        match method {
            "GET" => {
                if let Some(obj) = self.get(path) {
                    return json_response(200, &obj);
                }
                let prefix = format!("{path}/");
                let selector = query_param(query, "labelSelector").unwrap_or_default();
                // A list across namespaces (`/apis/g/v/serverfarms`) holds the objects
                // of that resource in every namespace.
                let cluster_wide = cluster_wide_list(path);
                let in_collection = |k: &str| match &cluster_wide {
                    Some((group_prefix, resource)) => k
                        .strip_prefix(group_prefix.as_str())
                        .and_then(|rest| rest.strip_prefix("namespaces/"))
                        .and_then(|rest| rest.split_once('/'))
                        .and_then(|(_, rest)| rest.strip_prefix(resource.as_str()))
                        .and_then(|rest| rest.strip_prefix('/'))
                        .is_some_and(|name| !name.contains('/')),
                    None => k.starts_with(&prefix) && !k[prefix.len()..].contains('/'),
                };
                let items: Vec<Value> = self
                    .objects
                    .lock()
                    .iter()
                    .filter(|(k, _)| in_collection(k))
                    .filter(|(_, v)| labels_match(v, &selector))
                    .map(|(_, v)| v.clone())
                    .collect();
                let is_collection = path.rsplit('/').nth(2) == Some("namespaces")
                    || cluster_wide.is_some()
                    || path.ends_with("/ingressclasses");
                if is_collection {
                    json_response(
                        200,
                        &json!({"apiVersion": "v1", "kind": "List",
                                               "metadata": {"resourceVersion": "1"}, "items": items}),
                    )
                } else {
                    json_response(404, &not_found)
                }
            }
            "PATCH" => {
                if let Some(object_path) = path.strip_suffix("/status") {
                    let Some(mut obj) = self.get(object_path) else {
                        return json_response(404, &not_found);
                    };
                    obj["status"] = body["status"].clone();
                    self.put(object_path, obj.clone());
                    json_response(200, &obj)
                } else {
                    let mut obj = body.clone();
                    let uid = match self.get(path) {
                        Some(old) => old["metadata"]["uid"].clone(),
                        None => json!(format!("uid-{}", path.rsplit('/').next().unwrap())),
                    };
                    obj["metadata"]["uid"] = uid;
                    self.put(path, obj.clone());
                    json_response(200, &obj)
                }
            }
            "DELETE" => {
                let Some(obj) = self.get(path) else {
                    return json_response(404, &not_found);
                };
                // Preconditions are honoured like the API server does.
                let want_uid = &body["preconditions"]["uid"];
                if !want_uid.is_null() && *want_uid != obj["metadata"]["uid"] {
                    return json_response(
                        409,
                        &json!({"kind": "Status", "code": 409, "reason": "Conflict"}),
                    );
                }
                self.objects.lock().remove(path);
                json_response(
                    200,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                )
            }
            "POST" => {
                let name = body["metadata"]["name"].as_str().unwrap_or("x").to_owned();
                self.put(&format!("{path}/{name}"), body.clone());
                json_response(201, &body)
            }
            _ => json_response(405, &json!({"kind": "Status", "code": 405})),
        }
    }
}

#[derive(Default)]
struct FixedMembers(Mutex<BTreeMap<String, MemberReport>>);

impl MemberStatusSource for FixedMembers {
    fn fetch<'a>(&'a self, pod: &'a str, _ip: &'a str) -> BoxFuture<'a, Option<MemberReport>> {
        let r = self.0.lock().get(pod).cloned();
        Box::pin(async move { r })
    }
}

struct World {
    fake: Arc<Fake>,
    members: Arc<FixedMembers>,
    clock: Arc<Mutex<i64>>,
    ctx: Arc<Context>,
    _server: tokio::task::JoinHandle<()>,
}

fn world(settings: Settings) -> World {
    let fake = Arc::new(Fake::default());
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let f = fake.clone();
    let server = tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let resp = f.handle(
                parts.method.as_str(),
                parts.uri.path(),
                parts.uri.query().unwrap_or(""),
                body,
            );
            send.send_response(resp);
        }
    });
    let client = Client::new(svc, "default");
    let members = Arc::new(FixedMembers::default());
    let clock = Arc::new(Mutex::new(T0));
    let c = clock.clone();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "portcullis-controller".into(),
            instance: Some("controller-0".into()),
        },
    );
    let counter = Arc::new(Mutex::new(0u8));
    let ctx = Context::new(
        client,
        settings,
        members.clone(),
        recorder,
        Metrics::default(),
    )
    .with_determinism(
        Arc::new(move || Timestamp::from_second(*c.lock()).unwrap()),
        Arc::new(move || {
            let mut n = counter.lock();
            *n += 1;
            [*n; 32]
        }),
    );
    let w = World {
        fake,
        members,
        clock,
        ctx: Arc::new(ctx),
        _server: server,
    };
    w.fake.put(
        ARRAY,
        json!({
            "apiVersion": "portcullis.io/v1alpha1", "kind": "GatewayArray",
            "metadata": {"name": "edge", "namespace": NS, "uid": "uid-edge", "generation": 1},
            "spec": {"replicas": 2, "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}
        }),
    );
    w.fake.put(
        "/api/v1/namespaces/shop/services/web",
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "web", "namespace": NS},
               "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
    );
    w.set_slice(&[("10.1.0.1", true, false)]);
    for (pod, ip) in [("edge-a", "10.9.0.1"), ("edge-b", "10.9.0.2")] {
        w.fake.put(
            &format!("{PODS}/{pod}"),
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": pod, "namespace": NS,
                                "labels": {"app.kubernetes.io/name": "portcullis-dataplane",
                                           "portcullis.io/array": "edge"}},
                   "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}}),
        );
    }
    w.add_farm(
        "web",
        100,
        json!([{"service": {"name": "web", "port": 80}}]),
        json!(null),
    );
    w
}

fn default_settings() -> Settings {
    Settings {
        dataplane_image: "ghcr.io/portcullis-io/dataplane:test".into(),
        watch_secrets: false,
        allow_private_targets: false,
        watch_namespace: None,
        migration: Default::default(),
    }
}

impl World {
    fn add_farm(&self, name: &str, created: i64, servers: Value, tls: Value) {
        let mut publish = json!({"hosts": [format!("{name}.example.com")]});
        if !tls.is_null() {
            publish["tls"] = tls;
        }
        let ts = Timestamp::from_second(T0 + created).unwrap().to_string();
        let mut farm = json!({
            "apiVersion": "portcullis.io/v1alpha1", "kind": "ServerFarm",
            "metadata": {"name": name, "namespace": NS, "generation": 1, "creationTimestamp": ts},
            "spec": {"arrayRef": {"name": "edge"}, "publish": publish, "servers": servers}
        });
        if let Some(old) = self.fake.get(&format!("{FARMS}/{name}")) {
            farm["status"] = old["status"].clone();
            farm["metadata"]["generation"] =
                json!(old["metadata"]["generation"].as_i64().unwrap() + 1);
        }
        self.fake.put(&format!("{FARMS}/{name}"), farm);
    }

    fn set_slice(&self, eps: &[(&str, bool, bool)]) {
        let endpoints: Vec<Value> = eps
            .iter()
            .map(|(ip, ready, term)| json!({"addresses": [ip], "conditions": {"ready": ready, "terminating": term}}))
            .collect();
        self.fake.put(
            &format!("{SLICES}/web-abcde"),
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": "web-abcde", "namespace": NS,
                                "labels": {"kubernetes.io/service-name": "web"}},
                   "addressType": "IPv4",
                   "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                   "endpoints": endpoints}),
        );
    }

    /// Members report `keys` and the current config hash.
    fn members_report(&self, per_pod: &[(&str, &[&str])]) {
        let hash = self
            .fake
            .get("/api/v1/namespaces/shop/configmaps/edge-config")
            .and_then(|cm| cm["data"]["config.sha256"].as_str().map(str::to_owned));
        let mut m = self.members.0.lock();
        for (pod, keys) in per_pod {
            m.insert(
                pod.to_string(),
                MemberReport {
                    config_hash: hash.clone(),
                    key_ids: keys.iter().map(|s| s.to_string()).collect(),
                    ready: true,
                },
            );
        }
    }

    async fn reconcile(&self) -> (Action, Vec<Req>) {
        let (result, reqs) = self.try_reconcile().await;
        (result.unwrap(), reqs)
    }

    async fn try_reconcile(
        &self,
    ) -> (
        Result<Action, portcullis_controller::reconcile::Error>,
        Vec<Req>,
    ) {
        self.fake.log.lock().clear();
        let array: GatewayArray = serde_json::from_value(self.fake.get(ARRAY).unwrap()).unwrap();
        let result = reconcile(Arc::new(array), self.ctx.clone()).await;
        self.assert_within_rbac();
        (result, self.fake.log.lock().clone())
    }

    /// Every request so far is allowed by the RBAC the chart grants the controller.
    fn assert_within_rbac(&self) {
        let forbidden = self.fake.forbidden.lock().clone();
        assert!(
            forbidden.is_empty(),
            "not granted by controller/rbac-rules.json: {forbidden:?}"
        );
    }

    fn keyring(&self) -> KeyringDoc {
        self.keyring_in("edge-keys")
    }

    fn keyring_in(&self, secret: &str) -> KeyringDoc {
        let s = self.fake.get(&format!("{SECRETS}/{secret}")).unwrap();
        let b64 = s["data"]["keyring.yaml"].as_str().unwrap();
        let text = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        KeyringDoc::parse(std::str::from_utf8(&text).unwrap()).unwrap()
    }

    fn config(&self) -> Value {
        let cm = self
            .fake
            .get("/api/v1/namespaces/shop/configmaps/edge-config")
            .unwrap();
        serde_json::from_str(cm["data"]["config.json"].as_str().unwrap()).unwrap()
    }
}

/// No request body carries `needle` (key material).
fn assert_not_sent(reqs: &[Req], needle: &str) {
    for r in reqs {
        assert!(
            !r.body.to_string().contains(needle),
            "{} carries it",
            r.path
        );
    }
}

/// The keys of a JSON object, in order.
fn keys_of(object: &Value) -> Vec<String> {
    object.as_object().unwrap().keys().cloned().collect()
}

/// The reasons of the events sent, in order.
fn event_reasons(reqs: &[Req]) -> Vec<String> {
    events(reqs).into_iter().map(|e| e.1).collect()
}

fn summary(reqs: &[Req]) -> Vec<String> {
    reqs.iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

fn events(reqs: &[Req]) -> Vec<(String, String, String)> {
    reqs.iter()
        // The recorder creates an event, then patches its series when it repeats.
        .filter(|r| {
            (r.path == EVENTS && r.method == "POST")
                || (r.path.starts_with(&format!("{EVENTS}/")) && r.method == "PATCH")
        })
        .map(|r| {
            (
                r.body["type"].as_str().unwrap().to_owned(),
                r.body["reason"].as_str().unwrap().to_owned(),
                r.body["note"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn status_patch<'a>(reqs: &'a [Req], path: &str) -> Option<&'a Value> {
    reqs.iter()
        .find(|r| r.method == "PATCH" && r.path == format!("{path}/status"))
        .map(|r| &r.body["status"])
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap()
}

const APPLIES: [&str; 8] = [
    "PATCH /api/v1/namespaces/shop/serviceaccounts/edge-dataplane",
    "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/shop/roles/edge-dataplane",
    "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/shop/rolebindings/edge-dataplane",
    "PATCH /api/v1/namespaces/shop/secrets/edge-keys",
    "PATCH /api/v1/namespaces/shop/configmaps/edge-config",
    "PATCH /apis/apps/v1/namespaces/shop/deployments/edge",
    "PATCH /api/v1/namespaces/shop/services/edge",
    "PATCH /apis/policy/v1/namespaces/shop/poddisruptionbudgets/edge",
];

/// The objects an array writes besides its keys Secret, in the order their owners are
/// checked.
const OWNED: [&str; 7] = [
    "/api/v1/namespaces/shop/serviceaccounts/edge-dataplane",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/shop/roles/edge-dataplane",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/shop/rolebindings/edge-dataplane",
    "/api/v1/namespaces/shop/configmaps/edge-config",
    DEPLOYMENT,
    SERVICE,
    "/apis/policy/v1/namespaces/shop/poddisruptionbudgets/edge",
];
const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/shop/deployments/edge";
const SERVICE: &str = "/api/v1/namespaces/shop/services/edge";

/// Who controls each existing object the array would write.
fn owner_checks() -> Vec<String> {
    OWNED.iter().map(|p| format!("GET {p}")).collect()
}

fn fetches() -> Vec<String> {
    let mut out = vec![
        format!("GET {ARRAY}"),
        format!("GET {ALL_FARMS}"),
        format!("GET {SECRETS}/edge-keys"),
    ];
    out.extend(owner_checks());
    out.extend([
        "GET /api/v1/namespaces/shop/services/web".into(),
        format!("GET {SLICES}"),
        format!("GET {PODS}"),
    ]);
    out
}

#[tokio::test]
async fn first_install_applies_everything_with_owner_refs_and_reports_status() {
    let w = world(default_settings());
    let (action, reqs) = w.reconcile().await;
    let mut want = fetches();
    want.extend(APPLIES.iter().map(|s| s.to_string()));
    want.extend([
        format!("POST {EVENTS}"),
        format!("POST {EVENTS}"),
        format!("PATCH {FARMS}/web/status"),
        format!("PATCH {ARRAY}/status"),
    ]);
    assert_eq!(summary(&reqs), want);

    // Every apply is server-side apply, forced, by our field manager, and every object is
    // owned by the array (deleting the array garbage-collects them: nothing to delete by
    // hand, which is also why there is no finalizer).
    for r in reqs.iter().filter(|r| r.method == "PATCH") {
        assert_eq!(
            query_param(&r.query, "fieldManager").as_deref(),
            Some("portcullis-controller"),
            "{}",
            r.path
        );
        assert_eq!(
            query_param(&r.query, "force").as_deref(),
            Some("true"),
            "{}",
            r.path
        );
        if r.path.ends_with("/status") {
            continue;
        }
        let owner = &r.body["metadata"]["ownerReferences"][0];
        assert_eq!(owner["uid"], "uid-edge", "{}", r.path);
        assert_eq!(owner["controller"], true, "{}", r.path);
        assert_eq!(owner["blockOwnerDeletion"], true, "{}", r.path);
        assert_eq!(owner["kind"], "GatewayArray", "{}", r.path);
    }
    let role = reqs
        .iter()
        .find(|r| r.method == "PATCH" && r.path == OWNED[1])
        .unwrap();
    assert_eq!(role.body["kind"], "Role");
    assert_eq!(role.body["rules"][1]["resourceNames"], json!(["edge-keys"]));

    // Config, keyring, events.
    let config = w.config();
    assert_eq!(keys_of(&config["endpoints"]), ["http1://10.1.0.1:8080"]);
    let kr = w.keyring();
    assert_eq!(kr.ids(), [format!("k{T0}")]);
    kr.validate().unwrap();
    let ev = events(&reqs);
    assert_eq!(ev[0].1, "ConfigApplied");
    assert_eq!(
        ev[1],
        (
            "Normal".into(),
            "KeyringGenerated".into(),
            format!("generated keyring with active key k{T0}")
        )
    );

    // Status.
    let farm = status_patch(&reqs, &format!("{FARMS}/web")).unwrap();
    assert_eq!(farm["observedGeneration"], 1);
    assert_eq!(condition(farm, "Accepted")["status"], "True");
    assert_eq!(condition(farm, "ResolvedRefs")["status"], "True");
    assert_eq!(condition(farm, "Ready")["status"], "True");
    assert_eq!(farm["endpoints"][0]["identity"], "http1://10.1.0.1:8080");
    assert_eq!(farm["endpoints"][0]["servers"], json!(["service web:80"]));
    let array = status_patch(&reqs, ARRAY).unwrap();
    assert_eq!(array["readyMembers"], 2);
    // The scale subresource's labelSelectorPath: the pods an autoscaler measures.
    assert_eq!(
        array["selector"],
        "app.kubernetes.io/name=portcullis-dataplane,portcullis.io/array=edge"
    );
    assert_eq!(array["activeKeyId"], format!("k{T0}"));
    assert_eq!(array["configHash"], json!(w.config_hash()));
    // Members have not loaded anything yet: not Ready, re-checked soon.
    assert_eq!(condition(array, "Ready")["reason"], "ConfigNotLoaded");
    assert_eq!(action, Action::requeue(Duration::from_secs(15)));

    // Nothing secret outside the Secret: not in events, statuses or the ConfigMap.
    let key_b64 = &kr.keys[0].secret;
    for r in &reqs {
        if r.path.ends_with("/secrets/edge-keys") {
            continue;
        }
        assert!(!r.body.to_string().contains(key_b64.as_str()), "{}", r.path);
    }

    // Members load it: converged, and a second pass writes no status and sends no event.
    w.members_report(&[
        ("edge-a", &[&format!("k{T0}")]),
        ("edge-b", &[&format!("k{T0}")]),
    ]);
    let (_, reqs) = w.reconcile().await;
    let array = status_patch(&reqs, ARRAY).unwrap();
    assert_eq!(condition(array, "Ready")["status"], "True");
    assert_eq!(array["loadedConfigHash"], json!(w.config_hash()));
    let (action, reqs) = w.reconcile().await;
    let mut want = fetches();
    want.extend(APPLIES.iter().map(|s| s.to_string()));
    assert_eq!(
        summary(&reqs),
        want,
        "a converged array writes no status and no event"
    );
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(60)),
        "Secrets are re-read every 60s"
    );
}

impl World {
    fn put_tls_secret(&self, name: &str, body: &str) -> (String, String) {
        let b64 = base64::engine::general_purpose::STANDARD;
        let pem = b64.encode(format!(
            "-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"
        ));
        let key = b64.encode(format!(
            "-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n"
        ));
        self.fake.put(
            &format!("{SECRETS}/{name}"),
            json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                   "metadata": {"name": name, "namespace": NS},
                   "data": {"tls.crt": pem, "tls.key": key}}),
        );
        (pem, key)
    }

    fn config_hash(&self) -> String {
        let cm = self
            .fake
            .get("/api/v1/namespaces/shop/configmaps/edge-config")
            .unwrap();
        cm["data"]["config.sha256"].as_str().unwrap().to_owned()
    }

    async fn install(&self) {
        self.reconcile().await;
        self.members_report(&[
            ("edge-a", &[&format!("k{T0}")]),
            ("edge-b", &[&format!("k{T0}")]),
        ]);
        self.reconcile().await;
    }
}

#[tokio::test]
async fn farm_added_is_published_without_touching_the_other_farm_status() {
    let w = world(default_settings());
    w.install().await;
    w.add_farm(
        "api",
        200,
        json!([{"address": "10.2.0.1", "port": 9000}]),
        json!(null),
    );
    let (_, reqs) = w.reconcile().await;
    let config = w.config();
    assert_eq!(keys_of(&config["farms"]), ["shop/api", "shop/web"]);
    assert!(
        status_patch(&reqs, &format!("{FARMS}/web")).is_none(),
        "unchanged farm status is not rewritten"
    );
    let api = status_patch(&reqs, &format!("{FARMS}/api")).unwrap();
    assert_eq!(condition(api, "Accepted")["status"], "True");
    assert_eq!(event_reasons(&reqs), ["ConfigApplied"]);
    // Members still serve the old hash: the array says so.
    let array = status_patch(&reqs, ARRAY).unwrap();
    assert_eq!(condition(array, "Ready")["reason"], "ConfigNotLoaded");
}

#[tokio::test]
async fn invalid_farm_is_rejected_with_field_and_message_and_the_rest_keeps_working() {
    let w = world(default_settings());
    w.install().await;
    w.add_farm(
        "bad",
        300,
        json!([{"address": "not-an-ip", "port": 80}]),
        json!(null),
    );
    w.add_farm(
        "meta",
        400,
        json!([{"address": "169.254.169.254", "port": 80}]),
        json!(null),
    );
    let (_, reqs) = w.reconcile().await;
    let bad = status_patch(&reqs, &format!("{FARMS}/bad")).unwrap();
    let accepted = condition(bad, "Accepted");
    assert_eq!(accepted["status"], "False");
    assert_eq!(accepted["reason"], "Invalid");
    let msg = accepted["message"].as_str().unwrap();
    assert!(msg.starts_with("spec.servers[0].address: "), "{msg}");
    assert!(msg.contains("not-an-ip"), "{msg}");
    assert_eq!(condition(bad, "Ready")["status"], "False");
    let meta = status_patch(&reqs, &format!("{FARMS}/meta")).unwrap();
    let msg = condition(meta, "Accepted")["message"].as_str().unwrap();
    assert!(
        msg.contains("spec.servers[0].address") && msg.contains("cloud metadata"),
        "{msg}"
    );
    // Only the good farm is in the config, which did not change, so no ConfigMap event.
    assert_eq!(keys_of(&w.config()["farms"]), ["shop/web"]);
    let ev = events(&reqs);
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert!(ev.iter().all(|e| e.0 == "Warning" && e.1 == "FarmRejected"));
    let bad_event = reqs
        .iter()
        .find(|r| r.path == EVENTS && r.body["regarding"]["name"] == "bad")
        .unwrap();
    assert_eq!(bad_event.body["regarding"]["kind"], "ServerFarm");
    // The same verdict again: no status write, no second event.
    let (_, reqs) = w.reconcile().await;
    assert!(status_patch(&reqs, &format!("{FARMS}/bad")).is_none());
    assert!(events(&reqs).is_empty());
    // With private targets allowed, the metadata farm is accepted.
    let w2 = world(Settings {
        allow_private_targets: true,
        watch_namespace: None,
        migration: Default::default(),
        ..default_settings()
    });
    w2.add_farm(
        "meta",
        400,
        json!([{"address": "169.254.169.254", "port": 80}]),
        json!(null),
    );
    let (_, reqs) = w2.reconcile().await;
    assert_eq!(
        condition(
            status_patch(&reqs, &format!("{FARMS}/meta")).unwrap(),
            "Accepted"
        )["status"],
        "True"
    );
}

#[tokio::test]
async fn endpoint_slice_change_rewrites_config_and_farm_endpoints() {
    let w = world(default_settings());
    w.install().await;
    let before = w.config_hash();
    w.set_slice(&[
        ("10.1.0.1", false, true),
        ("10.1.0.2", true, false),
        ("10.1.0.3", false, false),
    ]);
    let (_, reqs) = w.reconcile().await;
    assert_ne!(w.config_hash(), before);
    let config = w.config();
    assert_eq!(
        config["endpoints"]["http1://10.1.0.1:8080"]["draining"],
        true
    );
    assert!(config["endpoints"]["http1://10.1.0.2:8080"]["draining"].is_null());
    assert!(
        config["endpoints"].get("http1://10.1.0.3:8080").is_none(),
        "starting endpoints are not targets"
    );
    let farm = status_patch(&reqs, &format!("{FARMS}/web")).unwrap();
    let eps: Vec<(&str, &str)> = farm["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["identity"].as_str().unwrap(),
                e["health"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        eps,
        [
            ("http1://10.1.0.1:8080", "Draining"),
            ("http1://10.1.0.2:8080", "-")
        ]
    );
    assert_eq!(events(&reqs)[0].1, "ConfigApplied");
    // No ready endpoint left at all: ResolvedRefs says so, the farm stays published.
    w.set_slice(&[("10.1.0.3", false, false)]);
    let (_, reqs) = w.reconcile().await;
    let farm = status_patch(&reqs, &format!("{FARMS}/web")).unwrap();
    assert_eq!(condition(farm, "Accepted")["status"], "True");
    assert_eq!(condition(farm, "ResolvedRefs")["reason"], "BackendNotFound");
    assert_eq!(condition(farm, "Ready")["reason"], "NoEndpoints");
}

#[tokio::test]
async fn referenced_secret_missing_then_created() {
    let w = world(default_settings());
    // An HTTPS listener, so farm certificates are served (SNI) and travel to members.
    let mut array = w.fake.get(ARRAY).unwrap();
    array["spec"]["listeners"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "https", "port": 8443, "protocol": "HTTPS", "tls": {"secretName": "default-cert"}}));
    w.fake.put(ARRAY, array);
    w.put_tls_secret("default-cert", "AAA");
    w.install().await;
    w.add_farm(
        "tls",
        500,
        json!([{"address": "10.3.0.1", "port": 443}]),
        json!({"secretName": "tls-cert"}),
    );
    let (action, reqs) = w.reconcile().await;
    assert!(
        summary(&reqs).contains(&format!("GET {SECRETS}/tls-cert")),
        "read by name, not listed"
    );
    assert!(
        !summary(&reqs)
            .iter()
            .any(|r| r == &format!("GET {SECRETS}")),
        "Secrets are never listed"
    );
    let farm = status_patch(&reqs, &format!("{FARMS}/tls")).unwrap();
    assert_eq!(condition(farm, "Accepted")["reason"], "UnresolvedRefs");
    assert_eq!(condition(farm, "ResolvedRefs")["status"], "False");
    assert_eq!(condition(farm, "ResolvedRefs")["reason"], "SecretNotFound");
    assert_eq!(
        condition(farm, "ResolvedRefs")["message"],
        "Secret tls-cert not found"
    );
    assert!(w.config()["farms"].get("shop/tls").is_none());
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(60)),
        "re-read within a minute"
    );

    let (pem, key) = w.put_tls_secret("tls-cert", "ZZZ");
    let (_, reqs) = w.reconcile().await;
    let farm = status_patch(&reqs, &format!("{FARMS}/tls")).unwrap();
    assert_eq!(condition(farm, "Accepted")["status"], "True");
    assert_eq!(condition(farm, "ResolvedRefs")["status"], "True");
    assert!(w.config()["farms"].get("shop/tls").is_some());
    let secret_patch = reqs
        .iter()
        .find(|r| r.method == "PATCH" && r.path == format!("{SECRETS}/edge-keys"))
        .unwrap();
    assert_eq!(secret_patch.body["data"]["tls-cert.tls.crt"], json!(pem));
    assert_eq!(secret_patch.body["data"]["tls-cert.tls.key"], json!(key));
    for r in &reqs {
        if r.path == format!("{SECRETS}/edge-keys") || r.method == "GET" {
            continue;
        }
        let body = r.body.to_string();
        assert!(
            !body.contains(&key) && !body.contains("PRIVATE KEY"),
            "{} leaks key material",
            r.path
        );
    }
}

#[tokio::test]
async fn rotation_step_by_step() {
    let w = world(default_settings());
    w.install().await;
    let k0 = format!("k{T0}");
    let states = |kr: &KeyringDoc| -> Vec<(String, KeyState, bool)> {
        kr.keys
            .iter()
            .map(|k| (k.id.clone(), k.state, k.retired.is_some()))
            .collect()
    };

    // An operator asks for a rotation.
    *w.clock.lock() = T0 + 100;
    let mut array = w.fake.get(ARRAY).unwrap();
    array["metadata"]["annotations"] = json!({"portcullis.io/rotate-keys": "2027-01-15T08:00"});
    w.fake.put(ARRAY, array);
    let (action, reqs) = w.reconcile().await;
    let k1 = format!("k{}", T0 + 100);
    assert_eq!(
        states(&w.keyring()),
        [
            (k0.clone(), KeyState::Active, false),
            (k1.clone(), KeyState::Accept, false)
        ]
    );
    let secret = w.fake.get(&format!("{SECRETS}/edge-keys")).unwrap();
    assert_eq!(
        secret["metadata"]["annotations"]["portcullis.io/rotate-keys-handled"],
        "2027-01-15T08:00"
    );
    assert_eq!(event_reasons(&reqs), ["KeyAdded"]);
    assert_eq!(action, Action::requeue(Duration::from_secs(10)));
    let status = status_patch(&reqs, ARRAY).unwrap();
    assert_eq!(status["activeKeyId"], k0);
    assert_eq!(status["keyIds"], json!([k0, k1]));

    // edge-b has not loaded the new key yet: no promotion.
    w.members_report(&[("edge-a", &[&k0, &k1]), ("edge-b", &[&k0])]);
    *w.clock.lock() = T0 + 110;
    let (action, reqs) = w.reconcile().await;
    assert_eq!(
        states(&w.keyring())[0],
        (k0.clone(), KeyState::Active, false)
    );
    assert!(events(&reqs).is_empty());
    assert_eq!(action, Action::requeue(Duration::from_secs(10)));
    let status = status_patch(&reqs, ARRAY).unwrap();
    assert_eq!(
        condition(status, "KeysRotating")["message"],
        format!("key {k1} not yet loaded by edge-b")
    );
    assert_eq!(status["members"][1]["keyIds"], json!([k0]));

    // Every ready member has it: promote; the old key is retired and still accepted.
    w.members_report(&[("edge-a", &[&k0, &k1]), ("edge-b", &[&k0, &k1])]);
    *w.clock.lock() = T0 + 120;
    let (_, reqs) = w.reconcile().await;
    assert_eq!(
        states(&w.keyring()),
        [
            (k0.clone(), KeyState::Accept, true),
            (k1.clone(), KeyState::Active, false)
        ]
    );
    assert_eq!(events(&reqs)[0].1, "KeyPromoted");
    assert_eq!(status_patch(&reqs, ARRAY).unwrap()["activeKeyId"], k1);

    // The annotation was handled: nothing more until the acceptance window (24h) ends.
    *w.clock.lock() = T0 + 3600;
    let (_, reqs) = w.reconcile().await;
    assert_eq!(w.keyring().keys.len(), 2);
    assert!(events(&reqs).is_empty());
    *w.clock.lock() = T0 + 120 + 24 * 3600;
    let (_, reqs) = w.reconcile().await;
    assert_eq!(
        states(&w.keyring()),
        [(k1.clone(), KeyState::Active, false)]
    );
    assert_eq!(events(&reqs)[0].1, "KeysRemoved");
}

#[tokio::test]
async fn array_deleted_leaves_cleanup_to_owner_references() {
    let w = world(default_settings());
    w.install().await;
    let (_, all) = w.reconcile().await;
    assert!(
        all.iter().all(|r| r.method != "DELETE"),
        "the controller never deletes by hand"
    );
    // Every object the controller created is owned by the array as its controller, so the
    // garbage collector removes them all when the array is deleted.
    let created: Vec<String> = all
        .iter()
        .filter(|r| r.method == "PATCH" && !r.path.ends_with("/status"))
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(created.len(), 8, "eight objects per array");
    w.fake.objects.lock().remove(ARRAY);
    for path in &created {
        let obj = w.fake.get(path).unwrap();
        let owners = obj["metadata"]["ownerReferences"].as_array().unwrap();
        assert_eq!(owners.len(), 1, "{path}");
        assert_eq!(
            owners[0],
            json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "GatewayArray", "name": "edge",
                   "uid": "uid-edge", "controller": true, "blockOwnerDeletion": true}),
            "{path}"
        );
    }
}

#[tokio::test]
async fn missing_listener_secret_writes_nothing_and_says_why() {
    let w = world(default_settings());
    let mut array = w.fake.get(ARRAY).unwrap();
    array["spec"]["listeners"] = json!([{"name": "https", "port": 8443, "protocol": "HTTPS",
                                         "tls": {"secretName": "default-cert"}}]);
    w.fake.put(ARRAY, array);
    let (action, reqs) = w.reconcile().await;
    let mut want = vec![
        format!("GET {ARRAY}"),
        format!("GET {ALL_FARMS}"),
        format!("GET {SECRETS}/default-cert"),
        format!("GET {SECRETS}/edge-keys"),
    ];
    want.extend(owner_checks());
    want.extend([
        "GET /api/v1/namespaces/shop/services/web".into(),
        format!("GET {SLICES}"),
        format!("GET {PODS}"),
    ]);
    want.extend([
        format!("PATCH {FARMS}/web/status"),
        format!("POST {EVENTS}"),
        format!("PATCH {ARRAY}/status"),
        format!("POST {EVENTS}"),
    ]);
    assert_eq!(
        summary(&reqs),
        want,
        "no object is applied without the listener certificate"
    );
    // The farm is told it is not published, and why.
    let farm = status_patch(&reqs, &format!("{FARMS}/web")).unwrap();
    assert_eq!(condition(farm, "Accepted")["reason"], "ArrayInvalid");
    assert_eq!(
        condition(farm, "Accepted")["message"],
        "GatewayArray shop/edge is invalid: Secret default-cert not found"
    );
    let status = status_patch(&reqs, ARRAY).unwrap();
    let refs = condition(status, "ResolvedRefs");
    assert_eq!(refs["status"], "False");
    assert_eq!(refs["reason"], "SecretNotFound");
    assert!(
        refs["message"]
            .as_str()
            .unwrap()
            .starts_with("Secret default-cert not found")
    );
    assert_eq!(condition(status, "Ready")["reason"], "NotAccepted");
    let ev = events(&reqs);
    assert_eq!(ev[0].1, "FarmRejected");
    assert_eq!(ev[1].0, "Warning");
    assert_eq!(ev[1].1, "ArrayNotApplied");
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    // Once the Secret exists, everything is applied.
    w.put_tls_secret("default-cert", "CCC");
    let (_, reqs) = w.reconcile().await;
    assert!(summary(&reqs).contains(&APPLIES[4].to_string()));
    assert_eq!(
        condition(status_patch(&reqs, ARRAY).unwrap(), "ResolvedRefs")["status"],
        "True"
    );
}

#[tokio::test]
async fn unusable_keyring_is_replaced_with_a_warning_that_quotes_no_secret() {
    let w = world(default_settings());
    let garbage = "keys:\n- id: k1\n  secret: TOPSECRETVALUE\n  created: x\n  state: active\n";
    w.fake.put(
        &format!("{SECRETS}/edge-keys"),
        // The array's own keys Secret, damaged by hand.
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "edge-keys", "namespace": NS, "uid": "uid-edge-keys",
                            "ownerReferences": [{"apiVersion": "portcullis.io/v1alpha1",
                                "kind": "GatewayArray", "name": "edge", "uid": "uid-edge", "controller": true}]},
               "data": {"keyring.yaml": base64::engine::general_purpose::STANDARD.encode(garbage)}}),
    );
    let (_, reqs) = w.reconcile().await;
    let ev = events(&reqs);
    let replaced = ev.iter().find(|e| e.1 == "KeyringReplaced").unwrap();
    assert_eq!(replaced.0, "Warning");
    assert!(replaced.2.contains("k1"), "{}", replaced.2);
    assert_not_sent(&reqs, "TOPSECRETVALUE");
    assert_eq!(w.keyring().ids(), [format!("k{T0}")]);
}

// ---------------------------------------------------------------------------------------
// spec.sessionKeys.secretName

impl World {
    fn set_keys_secret_name(&self, name: &str) {
        let mut array = self.fake.get(ARRAY).unwrap();
        array["spec"]["sessionKeys"] = json!({"secretName": name});
        array["metadata"]["generation"] =
            json!(array["metadata"]["generation"].as_i64().unwrap() + 1);
        self.fake.put(ARRAY, array);
    }
}

/// A keyring with one active key of `byte`s.
fn one_key(id: &str, byte: u8, created: &str) -> KeyringDoc {
    KeyringDoc {
        keys: vec![KeyringDoc::entry(
            id,
            &[byte; 32],
            created,
            KeyState::Active,
        )],
    }
}

fn keyring_secret(name: &str, doc: &KeyringDoc, owner: Value) -> Value {
    let mut s = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}")},
        "data": {"keyring.yaml": base64::engine::general_purpose::STANDARD.encode(doc.to_yaml())}});
    if !owner.is_null() {
        s["metadata"]["ownerReferences"] = json!([owner]);
    }
    s
}

#[tokio::test]
async fn custom_keys_secret_is_the_one_written_granted_and_reported() {
    let w = world(default_settings());
    w.set_keys_secret_name("shop-sessions");
    let (_, reqs) = w.reconcile().await;
    let sum = summary(&reqs);
    assert!(
        sum.contains(&format!("GET {SECRETS}/shop-sessions")),
        "{sum:?}"
    );
    assert!(
        sum.contains(&format!("PATCH {SECRETS}/shop-sessions")),
        "{sum:?}"
    );
    // `<array>-keys` is only looked at (the keyring of arrays from before
    // status.keysSecret would be there), never written.
    assert!(
        !sum.iter()
            .any(|r| !r.starts_with("GET") && r.contains("edge-keys")),
        "{sum:?}"
    );
    let role = reqs.iter().find(|r| r.body["kind"] == "Role").unwrap();
    assert_eq!(
        role.body["rules"][1]["resourceNames"],
        json!(["shop-sessions"])
    );
    let deployment = reqs
        .iter()
        .find(|r| r.body["kind"] == "Deployment")
        .unwrap();
    let args = &deployment.body["spec"]["template"]["spec"]["containers"][0]["args"];
    let args: Vec<&str> = args
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.windows(2)
            .any(|p| p == ["--keys-secret", "shop-sessions"]),
        "{args:?}"
    );
    let array = status_patch(&reqs, ARRAY).unwrap();
    assert_eq!(array["keysSecret"], "shop-sessions");
    assert_eq!(w.keyring_in("shop-sessions").ids(), [format!("k{T0}")]);
}

#[tokio::test]
async fn an_existing_keyring_in_the_named_secret_is_adopted() {
    let w = world(default_settings());
    let imported = one_key("imported", 9, "2026-11-01T00:00:00Z");
    w.fake.put(
        &format!("{SECRETS}/carried"),
        keyring_secret("carried", &imported, Value::Null),
    );
    w.set_keys_secret_name("carried");
    let (_, reqs) = w.reconcile().await;
    assert!(
        !events(&reqs).iter().any(|e| e.1 == "KeyringGenerated"),
        "{:?}",
        events(&reqs)
    );
    let kr = w.keyring_in("carried");
    assert_eq!(kr.active_id(), Some("imported"));
    assert_eq!(kr.keys[0].secret, imported.keys[0].secret);
    // The Secret now belongs to the array, so it goes when the array goes.
    let patch = reqs
        .iter()
        .find(|r| r.method == "PATCH" && r.path == format!("{SECRETS}/carried"))
        .unwrap();
    assert_eq!(
        patch.body["metadata"]["ownerReferences"][0]["uid"],
        "uid-edge"
    );
}

#[tokio::test]
async fn renaming_the_keys_secret_carries_the_keyring_over_and_deletes_the_old_secret() {
    let w = world(default_settings());
    w.reconcile().await;
    let before = w.keyring();
    assert_eq!(
        w.fake.get(ARRAY).unwrap()["status"]["keysSecret"],
        "edge-keys"
    );
    w.set_keys_secret_name("edge-sessions");
    let (_, reqs) = w.reconcile().await;
    let sum = summary(&reqs);
    // The new name is read, then the old one (named by status.keysSecret).
    let new_get = sum
        .iter()
        .position(|r| *r == format!("GET {SECRETS}/edge-sessions"))
        .unwrap();
    let old_get = sum
        .iter()
        .position(|r| *r == format!("GET {SECRETS}/edge-keys"))
        .unwrap();
    assert!(new_get < old_get, "{sum:?}");
    // Same keys: no session is lost by the rename.
    assert_eq!(w.keyring_in("edge-sessions"), before);
    assert!(!events(&reqs).iter().any(|e| e.1 == "KeyringGenerated"));
    // The old Secret (private-key copies nobody updates any more) is deleted, by uid,
    // after the new one is written.
    let delete = reqs.iter().position(|r| r.method == "DELETE").unwrap();
    assert_eq!(reqs[delete].path, format!("{SECRETS}/edge-keys"));
    assert_eq!(reqs[delete].body["preconditions"]["uid"], "uid-edge-keys");
    let write = sum
        .iter()
        .position(|r| *r == format!("PATCH {SECRETS}/edge-sessions"))
        .unwrap();
    assert!(write < delete, "{sum:?}");
    assert!(w.fake.get(&format!("{SECRETS}/edge-keys")).is_none());
    let moved = events(&reqs)
        .into_iter()
        .find(|e| e.1 == "KeysSecretMoved")
        .unwrap();
    assert_eq!(
        moved.2,
        "the keyring now lives in Secret edge-sessions; deleted the previous keys Secret edge-keys"
    );
    assert_eq!(
        status_patch(&reqs, ARRAY).unwrap()["keysSecret"],
        "edge-sessions"
    );
    // Done: the next pass does not look for the old Secret again.
    let (_, reqs) = w.reconcile().await;
    assert!(
        !summary(&reqs).iter().any(|r| r.contains("edge-keys")),
        "{:?}",
        summary(&reqs)
    );
}

#[tokio::test]
async fn a_keys_secret_another_array_controls_is_refused_and_left_alone() {
    let w = world(default_settings());
    let theirs = one_key("theirs", 5, "2026-11-01T00:00:00Z");
    let owner = json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "GatewayArray",
                       "name": "other", "uid": "uid-other", "controller": true});
    w.fake.put(
        &format!("{SECRETS}/other-keys"),
        keyring_secret("other-keys", &theirs, owner),
    );
    w.set_keys_secret_name("other-keys");
    let (_, reqs) = w.reconcile().await;
    let writes: Vec<String> = summary(&reqs)
        .into_iter()
        .filter(|r| r.starts_with("PATCH") && !r.ends_with("/status"))
        .collect();
    assert!(writes.is_empty(), "nothing is applied: {writes:?}");
    let array = status_patch(&reqs, ARRAY).unwrap();
    let accepted = condition(array, "Accepted");
    assert_eq!(accepted["status"], "False");
    assert_eq!(
        accepted["message"],
        "spec.sessionKeys.secretName: Secret other-keys is managed by GatewayArray other; name a Secret no other object controls"
    );
    // The other array's keys are not touched, and not quoted anywhere.
    assert_eq!(w.keyring_in("other-keys"), theirs);
    assert_not_sent(&reqs, theirs.keys[0].secret.as_str());
}

#[tokio::test]
async fn a_farm_may_not_use_the_keys_secret_as_its_certificate() {
    let w = world(default_settings());
    w.reconcile().await;
    let keys_before = w.fake.get(&format!("{SECRETS}/edge-keys")).unwrap();
    w.add_farm(
        "store",
        200,
        json!([{"service": {"name": "web", "port": 80}}]),
        json!({"secretName": "edge-keys"}),
    );
    let (_, reqs) = w.reconcile().await;
    let farm = status_patch(&reqs, &format!("{FARMS}/store")).unwrap();
    let accepted = condition(farm, "Accepted");
    assert_eq!(accepted["status"], "False");
    assert!(
        accepted["message"].as_str().unwrap().contains(
            "spec.publish.tls.secretName: Secret edge-keys is the array's keyring Secret"
        ),
        "{accepted}"
    );
    // The other farm is published as before, and the keys Secret holds no certificate.
    assert_eq!(keys_of(&w.config()["farms"]), ["shop/web"]);
    assert_eq!(
        w.fake.get(&format!("{SECRETS}/edge-keys")).unwrap()["data"],
        keys_before["data"]
    );
}

#[tokio::test]
async fn an_existing_secret_without_a_keyring_is_never_taken_over() {
    let w = world(default_settings());
    // A certificate, and credentials someone else keeps: neither may become the keys
    // Secret (rewritten, owned by the array, deleted with it).
    let (cert, _) = w.put_tls_secret("shop-tls", "c");
    w.fake.put(
        &format!("{SECRETS}/db-credentials"),
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": "db-credentials", "namespace": NS, "uid": "uid-db"},
               "data": {"password": "aHVudGVyMg=="}}),
    );
    for (name, problem) in [
        (
            "shop-tls",
            "has type kubernetes.io/tls; a keys Secret is Opaque",
        ),
        ("db-credentials", "exists and holds no keyring.yaml"),
    ] {
        let before = w.fake.get(&format!("{SECRETS}/{name}")).unwrap();
        w.set_keys_secret_name(name);
        let (_, reqs) = w.reconcile().await;
        let writes: Vec<String> = summary(&reqs)
            .into_iter()
            .filter(|r| !r.starts_with("GET") && !r.ends_with("/status") && !r.contains("/events"))
            .collect();
        assert!(writes.is_empty(), "{name}: nothing is applied: {writes:?}");
        let accepted = condition(status_patch(&reqs, ARRAY).unwrap(), "Accepted");
        assert_eq!(accepted["status"], "False");
        let message = accepted["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("spec.sessionKeys.secretName: Secret {name} ")),
            "{message}"
        );
        assert!(message.contains(problem), "{message}");
        assert_eq!(
            w.fake.get(&format!("{SECRETS}/{name}")).unwrap(),
            before,
            "{name} untouched"
        );
    }
    let secret = w.fake.get(&format!("{SECRETS}/shop-tls")).unwrap();
    assert_eq!(secret["data"]["tls.crt"], json!(cert));
}

#[tokio::test]
async fn renaming_to_a_secret_with_its_own_keyring_rotates_it_in_two_phases() {
    let w = world(default_settings());
    w.reconcile().await;
    let live = w.keyring();
    let live_id = format!("k{T0}");
    w.members_report(&[("edge-a", &[&live_id]), ("edge-b", &[&live_id])]);
    let backup = one_key("backup", 3, "2027-01-15T07:00:00Z");
    w.fake.put(
        &format!("{SECRETS}/restored"),
        keyring_secret("restored", &backup, Value::Null),
    );
    w.set_keys_secret_name("restored");
    let (_, reqs) = w.reconcile().await;
    // The live key stays active (members seal with it until all of them can open the
    // adopted one); the adopted key is pending.
    let kr = w.keyring_in("restored");
    assert_eq!(kr.active_id(), Some(live_id.as_str()));
    assert_eq!(kr.ids(), [live_id.clone(), "backup".to_owned()]);
    assert_eq!(kr.keys[0].secret, live.keys[0].secret);
    let pending = &kr.keys[1];
    assert_eq!(
        (pending.state, pending.retired.as_deref()),
        (KeyState::Accept, None)
    );
    // The live keys now live on in the new Secret, so the previous one is deleted.
    assert!(w.fake.get(&format!("{SECRETS}/edge-keys")).is_none());
    assert!(reqs.iter().any(|r| r.method == "DELETE"));
    assert_eq!(
        condition(status_patch(&reqs, ARRAY).unwrap(), "KeysRotating")["status"],
        "True"
    );
    // Not promoted while a member has not loaded it.
    w.members_report(&[("edge-a", &[&live_id, "backup"]), ("edge-b", &[&live_id])]);
    w.reconcile().await;
    assert_eq!(w.keyring_in("restored").active_id(), Some(live_id.as_str()));
    // Promoted once every ready member has; the live key is retired and still accepted.
    w.members_report(&[
        ("edge-a", &[&live_id, "backup"]),
        ("edge-b", &[&live_id, "backup"]),
    ]);
    let (_, reqs) = w.reconcile().await;
    let kr = w.keyring_in("restored");
    assert_eq!(kr.active_id(), Some("backup"));
    assert_eq!(kr.keys[0].state, KeyState::Accept);
    assert!(kr.keys[0].retired.is_some());
    assert!(events(&reqs).iter().any(|e| e.1 == "KeyPromoted"));
    assert!(!reqs.iter().any(|r| r.method == "DELETE"));
}

#[tokio::test]
async fn a_secret_with_a_broken_keyring_is_refused_not_taken_over() {
    let w = world(default_settings());
    w.reconcile().await;
    let live = w.keyring();
    let broken = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "edge-sessions", "namespace": NS, "uid": "uid-edge-sessions"},
        "data": {"keyring.yaml": base64::engine::general_purpose::STANDARD.encode("keys: [oops")}});
    w.fake
        .put(&format!("{SECRETS}/edge-sessions"), broken.clone());
    let stored_before = w.fake.get(&format!("{SECRETS}/edge-sessions")).unwrap();
    w.set_keys_secret_name("edge-sessions");
    let (_, reqs) = w.reconcile().await;
    let accepted = condition(status_patch(&reqs, ARRAY).unwrap(), "Accepted");
    assert_eq!(accepted["status"], "False");
    assert!(
        accepted["message"].as_str().unwrap().starts_with(
            "spec.sessionKeys.secretName: Secret edge-sessions holds an unusable keyring.yaml (failed to parse keyring"
        ),
        "{accepted}"
    );
    assert!(!reqs.iter().any(|r| r.method == "DELETE"
        || (r.method == "PATCH" && r.path.ends_with("/secrets/edge-sessions"))));
    assert_eq!(w.keyring(), live, "the live keyring is untouched");
    assert_eq!(
        w.fake.get(&format!("{SECRETS}/edge-sessions")).unwrap(),
        stored_before,
        "the backup with a typo is left for a person to fix"
    );
}

#[tokio::test]
async fn an_array_from_before_status_keys_secret_keeps_its_keyring_when_renamed() {
    let w = world(default_settings());
    w.reconcile().await;
    let live = w.keyring();
    // Status written by an older controller: no keysSecret.
    let mut array = w.fake.get(ARRAY).unwrap();
    array["status"]
        .as_object_mut()
        .unwrap()
        .remove("keysSecret");
    w.fake.put(ARRAY, array);
    w.set_keys_secret_name("edge-sessions");
    let (_, reqs) = w.reconcile().await;
    assert_eq!(w.keyring_in("edge-sessions"), live);
    assert!(!events(&reqs).iter().any(|e| e.1 == "KeyringGenerated"));
}

// ---------------------------------------------------------------------------------------
// Farms whose array does not exist

impl World {
    async fn reconcile_farm(&self, name: &str) -> Vec<Req> {
        self.fake.log.lock().clear();
        let farm: ServerFarm =
            serde_json::from_value(self.fake.get(&format!("{FARMS}/{name}")).unwrap()).unwrap();
        let action = reconcile_farm(Arc::new(farm), self.ctx.clone())
            .await
            .unwrap();
        assert_eq!(action, Action::await_change());
        self.assert_within_rbac();
        self.fake.log.lock().clone()
    }

    fn move_farm(&self, name: &str, array: &str) {
        let path = format!("{FARMS}/{name}");
        let mut farm = self.fake.get(&path).unwrap();
        farm["spec"]["arrayRef"]["name"] = json!(array);
        farm["metadata"]["generation"] =
            json!(farm["metadata"]["generation"].as_i64().unwrap() + 1);
        self.fake.put(&path, farm);
    }
}

#[tokio::test]
async fn a_farm_moved_to_a_missing_array_leaves_the_old_one_and_says_why() {
    let w = world(default_settings());
    w.reconcile().await;
    assert!(keys_of(&w.config()["farms"]).contains(&"shop/web".to_owned()));

    // A farm whose array exists is that array's business: one GET, nothing written.
    let reqs = w.reconcile_farm("web").await;
    assert_eq!(summary(&reqs), [format!("GET {ARRAY}")]);

    w.move_farm("web", "edeg");
    let reqs = w.reconcile_farm("web").await;
    assert_eq!(
        summary(&reqs)[..2],
        [
            "GET /apis/portcullis.io/v1alpha1/namespaces/shop/gatewayarrays/edeg".to_owned(),
            format!("PATCH {FARMS}/web/status"),
        ]
    );
    let farm = status_patch(&reqs, &format!("{FARMS}/web")).unwrap();
    assert_eq!(farm["observedGeneration"], 2);
    let accepted = condition(farm, "Accepted");
    assert_eq!(
        (accepted["status"].as_str(), accepted["reason"].as_str()),
        (Some("False"), Some("ArrayNotFound"))
    );
    assert_eq!(
        condition(farm, "ResolvedRefs")["message"],
        "spec.arrayRef.name: GatewayArray shop/edeg does not exist; create it or name an existing array"
    );
    assert_eq!(farm["endpoints"], Value::Null, "no stale endpoints");
    assert_eq!(
        events(&reqs),
        [(
            "Warning".to_owned(),
            "ArrayNotFound".to_owned(),
            "not published: GatewayArray shop/edeg does not exist".to_owned()
        )]
    );
    // Said once: the same state again writes nothing.
    let reqs = w.reconcile_farm("web").await;
    assert_eq!(summary(&reqs).len(), 1, "{:?}", summary(&reqs));

    // The array it left stops publishing it, and does not touch its status.
    let (_, reqs) = w.reconcile().await;
    assert!(keys_of(&w.config()["farms"]).is_empty());
    assert!(status_patch(&reqs, &format!("{FARMS}/web")).is_none());
}

#[test]
fn the_rbac_check_refuses_what_the_contract_does_not_grant() {
    let fake = Fake::default();
    fake.handle("GET", SECRETS, "", Value::Null);
    fake.handle("GET", &format!("{SECRETS}/edge-keys"), "", Value::Null);
    fake.handle(
        "PATCH",
        &format!("{PODS}/edge-a"),
        "",
        json!({"metadata": {}}),
    );
    assert_eq!(
        *fake.forbidden.lock(),
        [
            "list /secrets (GET /api/v1/namespaces/shop/secrets)".to_owned(),
            "patch /pods (PATCH /api/v1/namespaces/shop/pods/edge-a)".to_owned(),
            "create /pods (PATCH /api/v1/namespaces/shop/pods/edge-a)".to_owned(),
        ]
    );
}

#[tokio::test]
async fn renaming_back_with_a_stale_cache_keeps_the_keyring() {
    let w = world(default_settings());
    w.reconcile().await;
    let live = w.keyring();
    // What the informer cache holds while our own status writes are still on their way.
    let stale: GatewayArray = serde_json::from_value(w.fake.get(ARRAY).unwrap()).unwrap();
    w.set_keys_secret_name("edge-sessions");
    w.reconcile().await;
    assert!(w.fake.get(&format!("{SECRETS}/edge-keys")).is_none());
    // Renamed back at once; the reconcile starts from the stale object (spec and status
    // both say edge-keys), but the controller reads the array afresh and carries the
    // keyring over from edge-sessions instead of generating a new one.
    w.set_keys_secret_name("edge-keys");
    w.fake.log.lock().clear();
    reconcile(Arc::new(stale), w.ctx.clone()).await.unwrap();
    w.assert_within_rbac();
    assert_eq!(w.keyring(), live);
    assert!(
        !events(&w.fake.log.lock())
            .iter()
            .any(|e| e.1 == "KeyringGenerated")
    );
}

#[tokio::test]
async fn an_owned_keys_secret_of_another_type_is_reported_not_reapplied_forever() {
    let w = world(default_settings());
    w.fake.put(
        &format!("{SECRETS}/edge-keys"),
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
               "metadata": {"name": "edge-keys", "namespace": NS, "uid": "uid-edge-keys",
                            "ownerReferences": [{"apiVersion": "portcullis.io/v1alpha1",
                                "kind": "GatewayArray", "name": "edge", "uid": "uid-edge", "controller": true}]},
               "data": {"tls.crt": "eA==", "tls.key": "eA=="}}),
    );
    let (_, reqs) = w.reconcile().await;
    assert!(!summary(&reqs).contains(&format!("PATCH {SECRETS}/edge-keys")));
    let accepted = condition(status_patch(&reqs, ARRAY).unwrap(), "Accepted");
    assert_eq!(accepted["status"], "False");
    assert!(
        accepted["message"]
            .as_str()
            .unwrap()
            .contains("Secret edge-keys has type kubernetes.io/tls; a keys Secret is Opaque"),
        "{accepted}"
    );
}

// ---------------------------------------------------------------------------------------
// Names Kubernetes refuses

#[tokio::test]
async fn a_farm_naming_objects_by_non_names_is_refused_alone_and_nothing_is_read_by_them() {
    let w = world(default_settings());
    // `get("")` would be a list of every Secret; a dotted Service name no Service has.
    w.add_farm(
        "blank-cert",
        200,
        json!([{"address": "10.2.0.1", "port": 80}]),
        json!({"secretName": ""}),
    );
    w.add_farm(
        "dotted-svc",
        300,
        json!([{"service": {"name": "web.prod", "port": 80}}]),
        json!(null),
    );
    let (_, reqs) = w.reconcile().await;
    let sum = summary(&reqs);
    assert!(
        !sum.iter()
            .any(|r| r.ends_with("/secrets/") || r.contains("web.prod")),
        "{sum:?}"
    );
    // The good farm is published; each bad one says which field is wrong.
    assert_eq!(keys_of(&w.config()["farms"]), ["shop/web"]);
    for (farm, message) in [
        (
            "blank-cert",
            "spec.publish.tls.secretName: \"\" is not a Secret name",
        ),
        (
            "dotted-svc",
            "spec.servers[0].service.name: \"web.prod\" is not a Service name",
        ),
    ] {
        let status = status_patch(&reqs, &format!("{FARMS}/{farm}")).unwrap();
        let accepted = condition(status, "Accepted");
        assert_eq!(accepted["status"], "False", "{farm}");
        assert_eq!(accepted["reason"], "Invalid", "{farm}");
        assert!(
            accepted["message"].as_str().unwrap().starts_with(message),
            "{accepted}"
        );
    }
    // An arrayRef no array can have is not looked up either.
    w.move_farm("blank-cert", "Edge_1");
    let reqs = w.reconcile_farm("blank-cert").await;
    assert!(
        !summary(&reqs).iter().any(|r| r.starts_with("GET")),
        "{:?}",
        summary(&reqs)
    );
    let status = status_patch(&reqs, &format!("{FARMS}/blank-cert")).unwrap();
    assert!(
        condition(status, "ResolvedRefs")["message"]
            .as_str()
            .unwrap()
            .contains("\"Edge_1\" cannot be a GatewayArray name"),
        "{status}"
    );
}

// ---------------------------------------------------------------------------------------
// What the API server refuses, and objects that are not the array's

impl World {
    fn bump_array(&self, edit: impl FnOnce(&mut Value)) {
        let mut array = self.fake.get(ARRAY).unwrap();
        edit(&mut array);
        array["metadata"]["generation"] =
            json!(array["metadata"]["generation"].as_i64().unwrap() + 1);
        self.fake.put(ARRAY, array);
    }
}

/// The writes of objects (not status, not events) among `reqs`.
fn object_writes(reqs: &[Req]) -> Vec<String> {
    summary(reqs)
        .into_iter()
        .filter(|r| !r.starts_with("GET") && !r.ends_with("/status") && !r.contains("/events"))
        .collect()
}

#[tokio::test]
async fn an_apply_the_api_server_refuses_is_reported_on_the_array_and_its_farms() {
    let w = world(default_settings());
    w.install().await;
    let served = w.config_hash();
    // Something admission refuses in the Deployment (any 422 goes the same way).
    w.bump_array(|a| {
        a["spec"]["pod"] = json!({"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}});
    });
    let refusal = "Deployment.apps \"edge\" is invalid: spec.template.spec.containers[0].resources.requests: Invalid value: \"2\": must be less than or equal to cpu limit of 1";
    w.fake
        .refuse
        .lock()
        .insert(format!("PATCH {DEPLOYMENT}"), (422, refusal.into()));
    let (result, reqs) = w.try_reconcile().await;
    assert!(result.is_err(), "a refused apply is retried with backoff");
    // Nothing after the refused object is sent, and nothing is deleted.
    let writes = object_writes(&reqs);
    assert_eq!(writes.last().unwrap(), &format!("PATCH {DEPLOYMENT}"));
    assert!(
        !writes.iter().any(|r| r.starts_with("DELETE")),
        "{writes:?}"
    );
    assert_eq!(w.config_hash(), served, "the config in force is unchanged");

    let array = status_patch(&reqs, ARRAY).expect("the array's status says what failed");
    for type_ in ["Accepted", "Ready"] {
        let c = condition(array, type_);
        assert_eq!(c["status"], "False", "{type_}");
        assert_eq!(c["reason"], "ApplyFailed", "{type_}");
        let message = c["message"].as_str().unwrap();
        assert!(
            message.contains("Deployment shop/edge") && message.contains(refusal),
            "{message}"
        );
    }
    let farm = status_patch(&reqs, &format!("{FARMS}/web")).expect("the farm says it too");
    assert_eq!(condition(farm, "Accepted")["status"], "True");
    assert_eq!(condition(farm, "Ready")["reason"], "ApplyFailed");
    let warnings: Vec<_> = events(&reqs)
        .into_iter()
        .filter(|e| e.0 == "Warning")
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].1, "ApplyFailed");
    assert!(
        warnings[0].2.contains("Deployment shop/edge"),
        "{warnings:?}"
    );

    // Refused again: the same status, so no write and no second event.
    let (result, reqs) = w.try_reconcile().await;
    assert!(result.is_err());
    assert!(status_patch(&reqs, ARRAY).is_none());
    assert!(events(&reqs).is_empty(), "{:?}", events(&reqs));

    // Fixed: everything is applied, and the conditions clear.
    w.fake.refuse.lock().clear();
    let (_, reqs) = w.reconcile().await;
    let array = status_patch(&reqs, ARRAY).unwrap();
    assert_eq!(condition(array, "Accepted")["status"], "True");
    assert_ne!(condition(array, "Ready")["reason"], "ApplyFailed");
    assert_ne!(
        condition(
            status_patch(&reqs, &format!("{FARMS}/web")).unwrap(),
            "Ready"
        )["reason"],
        "ApplyFailed"
    );
}

#[tokio::test]
async fn a_forbidden_apply_leaves_the_spec_accepted_and_says_why_it_is_not_ready() {
    let w = world(default_settings());
    w.fake.refuse.lock().insert(
        format!("PATCH {}", OWNED[1]),
        (
            403,
            "roles.rbac.authorization.k8s.io \"edge-dataplane\" is forbidden: attempting to grant RBAC permissions not currently held".into(),
        ),
    );
    let (result, reqs) = w.try_reconcile().await;
    assert!(result.is_err());
    let array = status_patch(&reqs, ARRAY).unwrap();
    assert_eq!(condition(array, "Accepted")["status"], "True");
    let ready = condition(array, "Ready");
    assert_eq!(ready["reason"], "ApplyFailed");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("Role shop/edge-dataplane (403 Forbidden)"),
        "{ready}"
    );
    // The keyring was never written: no key id is reported as in force.
    assert!(array.get("activeKeyId").is_none(), "{array}");
}

#[tokio::test]
async fn existing_objects_the_array_does_not_control_are_never_modified() {
    let w = world(default_settings());
    // A user's Service that happens to have the array's name, and a Deployment another
    // controller owns.
    let user_service = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "edge", "namespace": NS, "uid": "uid-user-svc"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}});
    w.fake.put(SERVICE, user_service);
    let theirs = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "edge", "namespace": NS, "uid": "uid-their-deploy",
                     "ownerReferences": [{"apiVersion": "example.com/v1", "kind": "App",
                         "name": "edge", "uid": "uid-app", "controller": true}]},
        "spec": {"replicas": 1}});
    w.fake.put(DEPLOYMENT, theirs);
    let before = (
        w.fake.get(SERVICE).unwrap(),
        w.fake.get(DEPLOYMENT).unwrap(),
    );
    let (_, reqs) = w.reconcile().await;
    assert_eq!(
        object_writes(&reqs),
        Vec::<String>::new(),
        "nothing is applied"
    );
    assert_eq!(
        (
            w.fake.get(SERVICE).unwrap(),
            w.fake.get(DEPLOYMENT).unwrap()
        ),
        before
    );
    let array = status_patch(&reqs, ARRAY).unwrap();
    let accepted = condition(array, "Accepted");
    assert_eq!(accepted["status"], "False");
    let message = accepted["message"].as_str().unwrap();
    assert!(
        message.contains(
            "metadata.name: Deployment edge already exists and is controlled by App edge"
        ),
        "{message}"
    );
    assert!(
        message.contains("metadata.name: Service edge already exists and has no controller"),
        "{message}"
    );
    let farm = status_patch(&reqs, &format!("{FARMS}/web")).unwrap();
    assert_eq!(condition(farm, "Accepted")["reason"], "ArrayInvalid");
    assert!(
        events(&reqs).iter().any(|e| e.1 == "ArrayNotApplied"),
        "{:?}",
        events(&reqs)
    );

    // Once they are gone, the array writes its own.
    w.fake.objects.lock().remove(SERVICE);
    w.fake.objects.lock().remove(DEPLOYMENT);
    let (_, reqs) = w.reconcile().await;
    assert_eq!(object_writes(&reqs).len(), 8);
    let owner = &w.fake.get(SERVICE).unwrap()["metadata"]["ownerReferences"][0];
    assert_eq!(owner["uid"], "uid-edge");
}

#[tokio::test]
async fn an_array_being_deleted_is_left_to_the_garbage_collector() {
    let w = world(default_settings());
    w.install().await;
    // Foreground deletion (Argo CD's default): the array stays, with a deletionTimestamp,
    // until the garbage collector has deleted what it owns, the Deployment first here.
    let mut array = w.fake.get(ARRAY).unwrap();
    array["metadata"]["deletionTimestamp"] = json!("2027-01-15T08:00:00Z");
    array["metadata"]["finalizers"] = json!(["foregroundDeletion"]);
    w.fake.put(ARRAY, array);
    w.fake.objects.lock().remove(DEPLOYMENT);
    let (action, reqs) = w.reconcile().await;
    assert_eq!(summary(&reqs), [format!("GET {ARRAY}")]);
    assert!(w.fake.get(DEPLOYMENT).is_none(), "not re-created");
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn long_problem_lists_fit_the_api_servers_limits_for_events_and_conditions() {
    let w = world(default_settings());
    w.install().await;
    // 64 path prefixes of 1000 bytes that do not start with '/': far over the 1024 bytes
    // of an event note and the 32768 of a condition message.
    let paths: Vec<String> = (0..64)
        .map(|i| format!("{i:02}{}", "x".repeat(998)))
        .collect();
    w.fake.put(
        &format!("{FARMS}/long"),
        json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "ServerFarm",
               "metadata": {"name": "long", "namespace": NS, "generation": 1,
                            "creationTimestamp": Timestamp::from_second(T0 + 900).unwrap().to_string()},
               "spec": {"arrayRef": {"name": "edge"},
                        "publish": {"hosts": ["long.example.com"], "paths": paths},
                        "servers": [{"address": "10.2.0.1", "port": 80}]}}),
    );
    let (_, reqs) = w.reconcile().await;
    let farm = status_patch(&reqs, &format!("{FARMS}/long")).unwrap();
    let message = condition(farm, "Accepted")["message"].as_str().unwrap();
    assert!(message.len() <= 32768, "{}", message.len());
    assert!(
        message.starts_with("spec.publish.paths[0]: "),
        "{message:.80}"
    );
    assert!(
        message.ends_with("(truncated)"),
        "{}",
        &message[message.len() - 40..]
    );
    let rejected: Vec<_> = reqs
        .iter()
        .filter(|r| r.path == EVENTS && r.body["reason"] == "FarmRejected")
        .collect();
    assert_eq!(rejected.len(), 1);
    let note = rejected[0].body["note"].as_str().unwrap();
    assert!(note.len() <= 1024, "{}", note.len());
    assert!(note.starts_with("spec.publish.paths[0]: "), "{note:.80}");
    assert!(
        w.fake
            .objects
            .lock()
            .values()
            .any(|o| o["reason"] == "FarmRejected"),
        "the event was stored"
    );
}

#[tokio::test]
async fn objects_over_the_size_limit_are_not_sent_and_status_says_which_and_by_how_much() {
    let w = world(default_settings());
    w.install().await;
    // A listener certificate chain of 1.1 MiB: the keys Secret carries a copy of it.
    w.bump_array(|a| {
        a["spec"]["listeners"].as_array_mut().unwrap().push(
            json!({"name": "https", "port": 8443, "protocol": "HTTPS", "tls": {"secretName": "big-cert"}}),
        );
    });
    let body = "A".repeat(1_150_000);
    let (_, key) = w.put_tls_secret("big-cert", &body);
    let (_, reqs) = w.reconcile().await;
    assert_eq!(
        object_writes(&reqs),
        Vec::<String>::new(),
        "nothing is sent"
    );
    let array = status_patch(&reqs, ARRAY).unwrap();
    let accepted = condition(array, "Accepted");
    assert_eq!(accepted["status"], "False");
    assert_eq!(accepted["reason"], "ObjectTooLarge");
    let message = accepted["message"].as_str().unwrap();
    assert!(
        message.starts_with("Secret shop/edge-keys would hold ")
            && message.contains("more than the 1048576 a Secret may hold"),
        "{message}"
    );
    assert_eq!(condition(array, "Ready")["reason"], "ObjectTooLarge");
    let ev = events(&reqs);
    assert!(
        ev.iter()
            .any(|e| e.0 == "Warning" && e.1 == "ObjectTooLarge"),
        "{ev:?}"
    );
    // Sizes, never contents.
    assert_not_sent(&reqs, &key[..64]);
    assert_not_sent(&reqs, "AAAAAAAAAAAAAAAA");
}

const WEB_FARMS: &str = "/apis/portcullis.io/v1alpha1/namespaces/web/serverfarms";

/// A farm in namespace `web` naming array `shop/edge`, controlled by an Ingress or not.
fn web_farm(name: &str, by_ingress: bool) -> Value {
    let mut farm = json!({
        "apiVersion": "portcullis.io/v1alpha1", "kind": "ServerFarm",
        "metadata": {"name": name, "namespace": "web", "generation": 1,
                     "creationTimestamp": Timestamp::from_second(T0).unwrap().to_string()},
        "spec": {"arrayRef": {"name": "edge", "namespace": NS},
                 "publish": {"hosts": [format!("{name}.example.com")], "tls": {"secretName": "cert"}},
                 "servers": [{"address": "10.5.0.1", "port": 80}]}
    });
    if by_ingress {
        farm["metadata"]["ownerReferences"] = json!([{"apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress", "name": name, "uid": format!("uid-ing-{name}"), "controller": true}]);
    }
    farm
}

#[tokio::test]
async fn farms_from_other_namespaces_are_published_only_for_ingresses_of_a_class_naming_the_array()
{
    let w = world(default_settings());
    let mut array = w.fake.get(ARRAY).unwrap();
    array["spec"]["listeners"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "https", "port": 8443, "protocol": "HTTPS", "tls": {"secretName": "default-cert"}}));
    w.fake.put(ARRAY, array);
    w.put_tls_secret("default-cert", "AAA");
    // A Secret named like the farms' one, in the array's namespace: never the one used.
    w.put_tls_secret("cert", "WRONG");
    w.install().await;
    let b64 = base64::engine::general_purpose::STANDARD;
    let pem = b64.encode("-----BEGIN CERTIFICATE-----\nWEB\n-----END CERTIFICATE-----\n");
    w.fake.put(
        "/api/v1/namespaces/web/secrets/cert",
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
               "metadata": {"name": "cert", "namespace": "web"},
               "data": {"tls.crt": pem, "tls.key": b64.encode("k")}}),
    );
    w.fake
        .put(&format!("{WEB_FARMS}/gen"), web_farm("gen", true));
    w.fake
        .put(&format!("{WEB_FARMS}/rogue"), web_farm("rogue", false));
    // The Ingress `gen` exists; `forged` claims an Ingress of that name with another uid.
    w.fake.put(
        "/apis/networking.k8s.io/v1/namespaces/web/ingresses/gen",
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"name": "gen", "namespace": "web", "uid": "uid-ing-gen",
                            "creationTimestamp": Timestamp::from_second(T0 - 1000).unwrap().to_string()},
               "spec": {"ingressClassName": "portcullis"}}),
    );
    let mut forged = web_farm("forged", true);
    forged["metadata"]["ownerReferences"][0]["name"] = json!("gen");
    w.fake.put(&format!("{WEB_FARMS}/forged"), forged);

    // No IngressClass names the array yet: none is published.
    let (_, reqs) = w.reconcile().await;
    for name in ["gen", "rogue", "forged"] {
        let st = status_patch(&reqs, &format!("{WEB_FARMS}/{name}")).unwrap();
        assert_eq!(condition(st, "Accepted")["status"], "False", "{name}");
        assert!(
            condition(st, "Accepted")["message"]
                .as_str()
                .unwrap()
                .contains("publishes farms from other namespaces only for Ingresses of an IngressClass that names it"),
            "{st}"
        );
    }
    assert!(w.config()["farms"].get("web/gen").is_none());

    w.fake.put(
        "/apis/networking.k8s.io/v1/ingressclasses/portcullis",
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
               "metadata": {"name": "portcullis"},
               "spec": {"controller": "portcullis.io/ingress-controller",
                        "parameters": {"apiGroup": "portcullis.io", "kind": "GatewayArray",
                                       "scope": "Namespace", "namespace": NS, "name": "edge"}}}),
    );
    let (_, reqs) = w.reconcile().await;
    let st = status_patch(&reqs, &format!("{WEB_FARMS}/gen")).unwrap();
    assert_eq!(condition(st, "Accepted")["status"], "True", "{st}");
    // The rogue and forged farms' status is unchanged (so not rewritten): still refused.
    for name in ["rogue", "forged"] {
        let farm = w.fake.get(&format!("{WEB_FARMS}/{name}")).unwrap();
        assert_eq!(
            condition(&farm["status"], "Accepted")["status"],
            "False",
            "{name}"
        );
    }
    let config = w.config();
    assert_eq!(keys_of(&config["farms"]), ["shop/web", "web/gen"]);
    // The farm's Secret is read from the farm's namespace and travels under its own id.
    assert!(summary(&reqs).contains(&"GET /api/v1/namespaces/web/secrets/cert".to_owned()));
    let secret_patch = reqs
        .iter()
        .find(|r| r.method == "PATCH" && r.path == format!("{SECRETS}/edge-keys"))
        .unwrap();
    assert_eq!(secret_patch.body["data"]["web_cert.tls.crt"], json!(pem));
    assert!(secret_patch.body["data"].get("cert.tls.crt").is_none());
    let sni = &config["listeners"][1]["sni"];
    assert_eq!(
        sni,
        &json!([{"host": "gen.example.com", "certificate": {"secret": "web_cert"}}])
    );
}

/// The events written in namespace `web`.
fn web_events(reqs: &[Req]) -> Vec<(String, String, String)> {
    let web = "/apis/events.k8s.io/v1/namespaces/web/events";
    reqs.iter()
        .filter(|r| {
            (r.path == web && r.method == "POST")
                || (r.path.starts_with(web) && r.method == "PATCH")
        })
        .map(|r| {
            (
                r.body["type"].as_str().unwrap_or("").to_owned(),
                r.body["reason"].as_str().unwrap_or("").to_owned(),
                r.body["note"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

const WEB_INGRESS: &str = "/apis/networking.k8s.io/v1/namespaces/web/ingresses/shop";

fn put_class(w: &World) {
    w.fake.put(
        "/apis/networking.k8s.io/v1/ingressclasses/portcullis",
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
               "metadata": {"name": "portcullis"},
               "spec": {"controller": "portcullis.io/ingress-controller",
                        "parameters": {"apiGroup": "portcullis.io", "kind": "GatewayArray",
                                       "scope": "Namespace", "namespace": NS, "name": "edge"}}}),
    );
}

fn put_ingress(w: &World, class: &str) {
    // An edit keeps the status the controller wrote, as the API server does.
    let status = w.fake.get(WEB_INGRESS).map(|old| old["status"].clone());
    let mut ing = json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"name": "shop", "namespace": "web", "uid": "uid-ing-shop", "generation": 1,
                            "creationTimestamp": Timestamp::from_second(T0).unwrap().to_string(),
                            "annotations": {
                                "nginx.ingress.kubernetes.io/affinity": "cookie",
                                "nginx.ingress.kubernetes.io/server-snippet": "return 418;"}},
               "spec": {"ingressClassName": class,
                        "rules": [{"host": "shop.example.com", "http": {"paths": [
                            {"path": "/", "pathType": "Prefix",
                             "backend": {"service": {"name": "app", "port": {"name": "http"}}}}]}}]}});
    if let Some(status) = status {
        ing["status"] = status;
    }
    w.fake.put(WEB_INGRESS, ing);
}

async fn reconcile_shop(w: &World, ictx: &Arc<IngressContext>) -> Vec<Req> {
    w.fake.log.lock().clear();
    let ing: k8s_openapi::api::networking::v1::Ingress =
        serde_json::from_value(w.fake.get(WEB_INGRESS).unwrap()).unwrap();
    reconcile_ingress(Arc::new(ing), ictx.clone())
        .await
        .unwrap();
    w.assert_within_rbac();
    w.fake.log.lock().clone()
}

#[tokio::test]
async fn an_ingress_becomes_farms_it_controls_with_events_and_status() {
    let w = world(default_settings());
    put_class(&w);
    put_ingress(&w, "portcullis");
    w.fake.put(
        "/api/v1/namespaces/web/services/app",
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app", "namespace": "web"},
               "spec": {"ports": [{"name": "http", "port": 8080}]}}),
    );
    w.fake.put(
        "/api/v1/namespaces/shop/services/edge",
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "edge", "namespace": NS},
               "spec": {"clusterIP": "10.96.0.7", "ports": [{"name": "http", "port": 8080}]}}),
    );
    let ictx = Arc::new(IngressContext::new(w.ctx.clone(), Migration::default()));
    let reqs = reconcile_shop(&w, &ictx).await;

    // One farm, applied in the Ingress's namespace, controlled by it.
    let applies: Vec<&Req> = reqs
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.starts_with(WEB_FARMS))
        .collect();
    assert_eq!(applies.len(), 1, "{:?}", summary(&reqs));
    let farm = &applies[0].body;
    assert_eq!(
        farm["metadata"]["ownerReferences"][0]["uid"],
        "uid-ing-shop"
    );
    assert_eq!(farm["metadata"]["labels"]["portcullis.io/ingress"], "shop");
    assert_eq!(
        farm["spec"]["arrayRef"],
        json!({"name": "edge", "namespace": NS})
    );
    // The named port was read from the Service.
    assert_eq!(
        farm["spec"]["servers"][0]["service"],
        json!({"name": "app", "port": 8080})
    );
    assert_eq!(farm["spec"]["affinity"]["mode"], "Cookie");
    assert!(
        applies[0].query.contains("fieldManager=portcullis-ingress"),
        "{}",
        applies[0].query
    );
    // A Warning names the snippet; status.loadBalancer names the array's Service.
    let ev = web_events(&reqs);
    assert!(
        ev.iter().any(|(t, r, n)| t == "Warning"
            && r == "NotServed"
            && n.contains("server-snippet")
            && n.contains("never executes")),
        "{ev:?}"
    );
    let status = reqs
        .iter()
        .find(|r| r.method == "PATCH" && r.path == format!("{WEB_INGRESS}/status"))
        .expect("status written");
    assert_eq!(
        status.body["status"]["loadBalancer"]["ingress"],
        json!([{"ip": "10.96.0.7"}])
    );

    // Nothing changed: the same farm again, no new events, no status write.
    let reqs = reconcile_shop(&w, &ictx).await;
    assert!(web_events(&reqs).is_empty(), "{:?}", web_events(&reqs));
    assert!(!reqs.iter().any(|r| r.path.ends_with("/status")));

    // Moved to another controller's class: its farms are deleted.
    put_ingress(&w, "traefik");
    let reqs = reconcile_shop(&w, &ictx).await;
    let deletes: Vec<String> = reqs
        .iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(deletes.len(), 1, "{:?}", summary(&reqs));
    assert!(deletes[0].starts_with(&format!("{WEB_FARMS}/shop-")));
    // ... and its status.loadBalancer is cleared (an explicit null, or a merge keeps it).
    let status = reqs
        .iter()
        .find(|r| r.method == "PATCH" && r.path == format!("{WEB_INGRESS}/status"))
        .expect("status cleared");
    assert_eq!(
        status.body,
        json!({"status": {"loadBalancer": {"ingress": null}}})
    );
}

#[tokio::test]
async fn a_farm_the_api_server_refuses_is_reported_and_the_rest_goes_on() {
    let w = world(default_settings());
    put_class(&w);
    put_ingress(&w, "portcullis");
    w.fake.put(
        "/api/v1/namespaces/web/services/app",
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app", "namespace": "web"},
               "spec": {"ports": [{"name": "http", "port": 8080}]}}),
    );
    let ictx = Arc::new(IngressContext::new(w.ctx.clone(), Migration::default()));
    let reqs = reconcile_shop(&w, &ictx).await;
    let path = reqs
        .iter()
        .find(|r| r.method == "PATCH" && r.path.starts_with(WEB_FARMS))
        .map(|r| r.path.clone())
        .unwrap();
    w.fake.refuse.lock().insert(
        format!("PATCH {path}"),
        (
            422,
            "ServerFarm.portcullis.io is invalid: spec.publish.paths: Too many".into(),
        ),
    );
    let ictx = Arc::new(IngressContext::new(w.ctx.clone(), Migration::default()));
    // The reconcile itself succeeds (reconcile_shop unwraps it) and says why.
    let reqs = reconcile_shop(&w, &ictx).await;
    assert!(
        web_events(&reqs).iter().any(|(t, _, n)| t == "Warning"
            && n.contains("refused by the API server")
            && n.contains("Too many")),
        "{:?}",
        web_events(&reqs)
    );
}

#[tokio::test]
async fn a_farm_name_that_belongs_to_someone_else_is_never_taken_over() {
    let w = world(default_settings());
    put_class(&w);
    w.fake.put(
        "/api/v1/namespaces/web/services/app",
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app", "namespace": "web"},
               "spec": {"ports": [{"name": "http", "port": 8080}]}}),
    );
    put_ingress(&w, "portcullis");
    let ictx = Arc::new(IngressContext::new(w.ctx.clone(), Migration::default()));
    // Learn the generated name, then give it to a hand-written farm.
    let reqs = reconcile_shop(&w, &ictx).await;
    let name = reqs
        .iter()
        .find(|r| r.method == "PATCH" && r.path.starts_with(WEB_FARMS))
        .map(|r| r.path.rsplit('/').next().unwrap().to_owned())
        .unwrap_or_else(|| panic!("{:?}", summary(&reqs)));
    let mut mine = web_farm(&name, false);
    mine["metadata"]["name"] = json!(name);
    w.fake.put(&format!("{WEB_FARMS}/{name}"), mine.clone());
    put_ingress(&w, "portcullis");
    let ictx = Arc::new(IngressContext::new(w.ctx.clone(), Migration::default()));
    let reqs = reconcile_shop(&w, &ictx).await;
    assert!(
        !reqs
            .iter()
            .any(|r| r.method != "GET" && r.path.starts_with(WEB_FARMS)),
        "{:?}",
        summary(&reqs)
    );
    assert_eq!(
        w.fake.get(&format!("{WEB_FARMS}/{name}")).unwrap()["spec"],
        mine["spec"]
    );
    assert!(
        web_events(&reqs)
            .iter()
            .any(|(_, _, n)| n.contains("already exists and this Ingress does not control it")),
        "{:?} {:?}",
        web_events(&reqs),
        summary(&reqs)
    );
}

/// Issue: basic auth. The htpasswd file is secret: it travels from the farm's Secret into
/// the array's Secret (`<secret>.auth`) and nowhere else; the config names the Secret.
#[tokio::test]
async fn basic_auth_htpasswd_travels_in_the_array_secret_never_in_the_config() {
    let w = world(default_settings());
    w.install().await;
    w.add_farm(
        "staff",
        300,
        json!([{"address": "10.4.0.1", "port": 80}]),
        json!(null),
    );
    let path = format!("{FARMS}/staff");
    let mut farm = w.fake.get(&path).unwrap();
    farm["spec"]["access"] = json!({"basicAuth": {"secretName": "staff-users"}});
    w.fake.put(&path, farm);
    let b64 = base64::engine::general_purpose::STANDARD;
    let secret = |data: Value| {
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": "staff-users", "namespace": NS}, "data": data})
    };
    // A Secret without the `auth` key: the farm says so and is not published.
    w.fake.put(
        &format!("{SECRETS}/staff-users"),
        secret(json!({"users": b64.encode("x")})),
    );
    let (_, reqs) = w.reconcile().await;
    let status = status_patch(&reqs, &path).unwrap();
    assert_eq!(condition(status, "ResolvedRefs")["status"], "False");
    assert_eq!(
        condition(status, "ResolvedRefs")["message"],
        "Secret staff-users has no key auth (an htpasswd file)"
    );
    assert!(w.config()["farms"].get("shop/staff").is_none());

    let htpasswd = "alice:$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00\n";
    let encoded = b64.encode(htpasswd);
    w.fake.put(
        &format!("{SECRETS}/staff-users"),
        secret(json!({"auth": encoded})),
    );
    let (_, reqs) = w.reconcile().await;
    let status = status_patch(&reqs, &path).unwrap();
    assert_eq!(condition(status, "Accepted")["status"], "True");
    assert_eq!(
        w.config()["farms"]["shop/staff"]["access"]["basicAuth"],
        json!({"secret": "staff-users", "realm": "Restricted"})
    );
    let keys = w.fake.get(&format!("{SECRETS}/edge-keys")).unwrap();
    assert_eq!(keys["data"]["staff-users.auth"], json!(encoded));
    let config_map = w
        .fake
        .get("/api/v1/namespaces/shop/configmaps/edge-config")
        .unwrap()
        .to_string();
    assert!(!config_map.contains("lZL6V") && !config_map.contains(&encoded));
    for r in &reqs {
        if r.path == format!("{SECRETS}/edge-keys") || r.method == "GET" {
            continue;
        }
        let body = r.body.to_string();
        assert!(
            !body.contains("lZL6V") && !body.contains(&encoded),
            "{} {} carries the htpasswd file",
            r.method,
            r.path
        );
    }
}

/// A store holding exactly `objects`, as a reflector leaves it after its first list.
fn store_of<K>(objects: Vec<K>) -> kube::runtime::reflector::Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    use kube::runtime::watcher::Event;
    let (store, mut writer) = kube::runtime::reflector::store::<K>();
    writer.apply_watcher_event(&Event::Init);
    for o in objects {
        writer.apply_watcher_event(&Event::InitApply(o));
    }
    writer.apply_watcher_event(&Event::InitDone);
    store
}

#[tokio::test]
async fn with_stores_classes_are_read_from_the_watch_and_reports_of_deleted_ingresses_are_forgotten()
 {
    use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
    let w = world(default_settings());
    // The class exists only in the store: a list would not find it.
    put_class(&w);
    let class: IngressClass = serde_json::from_value(
        w.fake
            .get("/apis/networking.k8s.io/v1/ingressclasses/portcullis")
            .unwrap(),
    )
    .unwrap();
    w.fake
        .objects
        .lock()
        .remove("/apis/networking.k8s.io/v1/ingressclasses/portcullis");
    put_ingress(&w, "portcullis");
    w.fake.put(
        "/api/v1/namespaces/web/services/app",
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app", "namespace": "web"},
               "spec": {"ports": [{"name": "http", "port": 8080}]}}),
    );
    let shop: Ingress = serde_json::from_value(w.fake.get(WEB_INGRESS).unwrap()).unwrap();
    let ictx = Arc::new(
        IngressContext::new(w.ctx.clone(), Migration::default())
            .with_stores(store_of(vec![class]), store_of(vec![shop.clone()])),
    );
    let reqs = reconcile_shop(&w, &ictx).await;
    assert!(
        !summary(&reqs).iter().any(|r| r.contains("ingressclasses")),
        "{:?}",
        summary(&reqs)
    );
    assert!(
        reqs.iter()
            .any(|r| r.method == "PATCH" && r.path.starts_with(WEB_FARMS)),
        "the class from the store selected this array: {:?}",
        summary(&reqs)
    );
    assert_eq!(ictx.remembered(), 1);

    // Ingresses come and go (new uids); only the live one's report is kept for good.
    for i in 0..100 {
        let mut gone = shop.clone();
        gone.metadata.uid = Some(format!("uid-deleted-{i}"));
        reconcile_ingress(Arc::new(gone), ictx.clone())
            .await
            .unwrap();
        assert!(ictx.remembered() <= 2 + 64 + 1, "{}", ictx.remembered());
    }
}

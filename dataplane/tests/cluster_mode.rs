//! `--array/--namespace` mode against a fake API server on loopback: the member GETs
//! only its ConfigMap and Secret, serves them, follows changes, keeps the last good
//! config on a broken one, and writes key material with mode 0600.

mod common;

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use common::*;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use portcullis_crds::config::{CONFIG_KEY, DataplaneConfig};
use portcullis_crds::keyring::{KEYRING_SECRET_KEY, KeyState, KeyringDoc};
use portcullis_crds::translate::{Resolutions, translate};
use portcullis_crds::v1alpha1::ServerFarm;
use portcullis_dataplane::cluster::{ClusterOptions, start};

const CM_PATH: &str = "/api/v1/namespaces/ns1/configmaps/edge-config";
const SECRET_PATH: &str = "/api/v1/namespaces/ns1/secrets/shared-keys";

#[derive(Default)]
struct Api {
    config_json: String,
    secret: String,
    requests: Vec<(String, String)>,
    /// Answer 404 for the ConfigMap (the controller has not written it yet).
    no_configmap: bool,
    /// Answer 403 for the Secret (the member Role names another keys Secret now).
    secret_forbidden: bool,
}

/// The member of array `edge` in `ns1`, keys Secret `shared-keys`, state under `dir`.
fn cluster_options(dir: &TempDir) -> ClusterOptions {
    ClusterOptions {
        array: "edge".into(),
        namespace: "ns1".into(),
        keys_secret: "shared-keys".into(),
        state_dir: dir.path().join("state"),
        poll: Duration::from_millis(100),
    }
}

/// A keyring with the one active key `k1`.
fn k1_keyring() -> KeyringDoc {
    KeyringDoc {
        keys: vec![KeyringDoc::entry(
            "k1",
            &[7u8; 32],
            "2026-01-01T00:00:00Z",
            KeyState::Active,
        )],
    }
}

fn config(farms: &[FarmBuilder]) -> DataplaneConfig {
    let array = web_array(8080).build();
    let farms: Vec<ServerFarm> = farms.iter().cloned().map(FarmBuilder::build).collect();
    let mut config = translate(&array, &farms, &Resolutions::default())
        .unwrap()
        .config;
    config.listeners[0].port = 0;
    config
}

/// The path of a request URI, without its query.
fn path_of(uri: &str) -> &str {
    uri.split('?').next().unwrap_or(uri)
}

/// The `resourceVersion` query parameter of a request URI.
fn resource_version(uri: &str) -> Option<&str> {
    uri.split_once('?')?
        .1
        .split('&')
        .find_map(|kv| kv.strip_prefix("resourceVersion="))
}

/// The resourceVersions the fake serves its two objects at.
const CM_RV: &str = "7";
const SECRET_RV: &str = "9";

fn configmap_json(config_json: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "edge-config", "namespace": "ns1", "resourceVersion": CM_RV},
        "data": {CONFIG_KEY: config_json},
    })
    .to_string()
}

async fn serve_api(state: Arc<Mutex<Api>>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let state = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let state = state.clone();
                        async move {
                            let mut st = state.lock();
                            st.requests
                                .push((req.method().to_string(), req.uri().to_string()));
                            let get = req.method() == hyper::Method::GET;
                            let (code, body) = match req.uri().path() {
                                CM_PATH if get && !st.no_configmap => {
                                    (200, configmap_json(&st.config_json))
                                }
                                SECRET_PATH if get && st.secret_forbidden => (
                                    403,
                                    serde_json::json!({"kind": "Status", "apiVersion": "v1",
                                    "status": "Failure", "reason": "Forbidden", "code": 403,
                                    "message": "forbidden"})
                                    .to_string(),
                                ),
                                SECRET_PATH if get => {
                                    let mut secret: serde_json::Value =
                                        serde_json::from_str(&st.secret).unwrap();
                                    secret["metadata"]["resourceVersion"] =
                                        serde_json::json!(SECRET_RV);
                                    (200, secret.to_string())
                                }
                                _ => (
                                    404,
                                    serde_json::json!({"kind": "Status", "apiVersion": "v1",
                                    "status": "Failure", "reason": "NotFound", "code": 404,
                                    "message": "not found"})
                                    .to_string(),
                                ),
                            };
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(code)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn syncs_configmap_and_secret_through_gets_only() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let farm_a = plain_farm(&a);
    let farm_b = plain_farm(&b);
    let b64 = base64::engine::general_purpose::STANDARD;
    let keyring = k1_keyring();
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "shared-keys", "namespace": "ns1"},
        "data": {
            KEYRING_SECRET_KEY: b64.encode(keyring.to_yaml()),
            "web-tls.tls.crt": b64.encode("not a real certificate"),
            "web-tls.tls.key": b64.encode("not a real key"),
        },
    })
    .to_string();
    let state = Arc::new(Mutex::new(Api {
        config_json: config(std::slice::from_ref(&farm_a)).to_json(),
        secret,
        ..Api::default()
    }));
    let api = serve_api(state.clone()).await;
    let kube_config = kube::Config::new(format!("http://{api}").parse().unwrap());
    let client = kube::Client::try_from(kube_config).unwrap();
    let dir = TempDir::new("cluster");
    let mut opts = options(dir.path());
    opts.manifests = None;
    let cluster = cluster_options(&dir);
    let h = start(client, cluster, opts).await.unwrap();
    wait_until(Duration::from_secs(10), || h.is_ready()).await;
    let addr = h.listener_addr(0).unwrap();
    let (s, _, body) = get(addr, "a.test", "/").await;
    assert_eq!((s, body.as_str()), (200, "a"));
    let status: serde_json::Value =
        serde_json::from_str(&get(h.admin_addr(), "admin", "/status").await.2).unwrap();
    assert_eq!(status["keyIds"], serde_json::json!(["k1"]));

    // Key material is private to the member.
    let st = dir.path().join("state");
    for f in [
        "keyring.yaml",
        "certs/web-tls/tls.crt",
        "certs/web-tls/tls.key",
    ] {
        let mode = std::fs::metadata(st.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }

    // A second farm in the ConfigMap is served without a restart.
    let two = config(&[farm_a.clone(), farm_b.clone()]);
    state.lock().config_json = two.to_json();
    wait_until(Duration::from_secs(10), || {
        h.config_hash().as_deref() == Some(two.content_hash().as_str())
    })
    .await;
    let (s, _, body) = get(addr, "b.test", "/").await;
    assert_eq!((s, body.as_str()), (200, "b"));

    // Broken JSON is written but refused by the reload; the last good config serves.
    state.lock().config_json = "{ not json".into();
    wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(st.join("config.json")).is_ok_and(|t| t == "{ not json")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        h.config_hash().as_deref(),
        Some(two.content_hash().as_str())
    );
    assert_eq!(get(addr, "b.test", "/").await.0, 200);
    assert_eq!(get(addr, "a.test", "/").await.0, 200);

    // A certificate that leaves the Secret leaves the disk (once the config in force no
    // longer names it; a config that does not parse removes nothing); the keyring stays.
    state.lock().config_json = two.to_json();
    let keyring_only = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "shared-keys", "namespace": "ns1"},
        "data": {KEYRING_SECRET_KEY: b64.encode(keyring.to_yaml())},
    })
    .to_string();
    state.lock().secret = keyring_only;
    wait_until(Duration::from_secs(10), || {
        !st.join("certs/web-tls").exists()
    })
    .await;
    assert!(st.join("keyring.yaml").exists());
    assert_eq!(get(addr, "b.test", "/").await.0, 200);

    // Not allowed to read the keys Secret any more (it was renamed): the member keeps its
    // keyring and goes on following the ConfigMap.
    state.lock().secret_forbidden = true;
    let one = config(std::slice::from_ref(&farm_a));
    state.lock().config_json = one.to_json();
    wait_until(Duration::from_secs(10), || {
        h.config_hash().as_deref() == Some(one.content_hash().as_str())
    })
    .await;
    assert!(st.join("keyring.yaml").exists());
    let status: serde_json::Value =
        serde_json::from_str(&get(h.admin_addr(), "admin", "/status").await.2).unwrap();
    assert_eq!(status["keyIds"], serde_json::json!(["k1"]));

    h.shutdown().await;
    let requests = state.lock().requests.clone();
    assert!(requests.len() >= 4, "{requests:?}");
    // Every GET is served from the API server's watch cache, never a quorum read of
    // etcd: the first at any version (`resourceVersion=0`), the next ones at one no older
    // than the last seen, so a member never steps back to an older config.
    for (path, rv) in [(CM_PATH, CM_RV), (SECRET_PATH, SECRET_RV)] {
        let versions: Vec<Option<&str>> = requests
            .iter()
            .filter(|(_, u)| path_of(u) == path)
            .map(|(_, u)| resource_version(u))
            .collect();
        assert!(versions.len() >= 2, "{requests:?}");
        assert_eq!(versions[0], Some("0"), "{requests:?}");
        for v in &versions[1..] {
            assert_eq!(*v, Some(rv), "{requests:?}");
        }
    }
    for (method, uri) in &requests {
        assert_eq!(method, "GET", "{requests:?}");
        let path = path_of(uri);
        assert!(path == CM_PATH || path == SECRET_PATH, "{requests:?}");
    }
    drop(b);
}

/// A member whose ConfigMap does not exist yet waits for it, and a SIGTERM in that wait
/// ends the process at once with status 0 (not at the kubelet's SIGKILL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_waiting_for_the_first_config_exits_zero() {
    let state = Arc::new(Mutex::new(Api {
        no_configmap: true,
        ..Api::default()
    }));
    let api = serve_api(state.clone()).await;
    let dir = TempDir::new("cluster-wait");
    dir.write(
        "kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters: [{{name: fake, cluster: {{server: 'http://{api}'}}}}]\n\
             users: [{{name: fake, user: {{}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: ns1}}}}]\n"
        ),
    );
    let admin_port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis-dataplane"))
        .args([
            "--array",
            "edge",
            "--namespace",
            "ns1",
            "--keys-secret",
            "shared-keys",
        ])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--bind", "127.0.0.1", "--admin"])
        .arg(format!("127.0.0.1:{admin_port}"))
        .env("KUBECONFIG", dir.path().join("kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // It is waiting: it asked for the ConfigMap at least twice (a retry).
    wait_until(Duration::from_secs(10), || {
        state
            .lock()
            .requests
            .iter()
            .filter(|(_, u)| path_of(u) == CM_PATH)
            .count()
            >= 2
    })
    .await;
    assert!(child.try_wait().unwrap().is_none(), "it exited by itself");
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGTERM did not stop a member waiting for its ConfigMap"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code.code(), Some(0));
}

/// A member that never had a keyring and may not read its keys Secret (RBAC not in
/// effect yet) waits instead of starting with a key of its own, then starts with the
/// array's keyring once it may read it.
#[tokio::test]
async fn a_member_without_a_keyring_waits_for_its_secret() {
    let a = Backend::start("a").await;
    let b64 = base64::engine::general_purpose::STANDARD;
    let keyring = k1_keyring();
    let state = Arc::new(Mutex::new(Api {
        config_json: config(&[plain_farm(&a)]).to_json(),
        secret: serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "shared-keys", "namespace": "ns1"},
            "data": {KEYRING_SECRET_KEY: b64.encode(keyring.to_yaml())},
        })
        .to_string(),
        secret_forbidden: true,
        ..Api::default()
    }));
    let api = serve_api(state.clone()).await;
    let client =
        kube::Client::try_from(kube::Config::new(format!("http://{api}").parse().unwrap()))
            .unwrap();
    let dir = TempDir::new("cluster-forbidden");
    let mut opts = options(dir.path());
    opts.manifests = None;
    let cluster = cluster_options(&dir);
    let starting = tokio::spawn(start(client, cluster, opts));
    wait_until(Duration::from_secs(10), || {
        state
            .lock()
            .requests
            .iter()
            .filter(|(_, u)| path_of(u) == SECRET_PATH)
            .count()
            >= 2
    })
    .await;
    assert!(!starting.is_finished(), "started without a keyring");
    state.lock().secret_forbidden = false;
    let h = tokio::time::timeout(Duration::from_secs(15), starting)
        .await
        .expect("started once the Secret was readable")
        .unwrap()
        .unwrap();
    let status: serde_json::Value =
        serde_json::from_str(&get(h.admin_addr(), "admin", "/status").await.2).unwrap();
    assert_eq!(status["keyIds"], serde_json::json!(["k1"]));
    h.shutdown().await;
}

//! The exact objects the pure builders produce for representative arrays, compared with
//! YAML fixtures in `tests/fixtures/<case>/`. Regenerate with
//! `PORTCULLIS_BLESS=1 cargo test -p portcullis-controller --test builders` and review the
//! diff.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine;
use k8s_openapi::ByteString;
use portcullis_controller::builders::{self, BuildInputs, Desired, TlsMaterial};
use portcullis_crds::config::{CONFIG_HASH_KEY, CONFIG_KEY, DataplaneConfig};
use portcullis_crds::keyring::{KeyState, KeyringDoc};
use portcullis_crds::translate::{self, Resolutions};
use portcullis_crds::v1alpha1::{GatewayArray, ServerFarm};

const CERT_PEM: &str =
    "-----BEGIN CERTIFICATE-----\nMIIBfakecertificatebytes\n-----END CERTIFICATE-----\n";
const KEY_PEM: &str =
    "-----BEGIN PRIVATE KEY-----\nMIIEfakeprivatekeybytes\n-----END PRIVATE KEY-----\n";

fn array(yaml: &str) -> GatewayArray {
    serde_yaml::from_str(yaml).unwrap()
}

fn farm(yaml: &str) -> ServerFarm {
    serde_yaml::from_str(yaml).unwrap()
}

fn keyring() -> KeyringDoc {
    KeyringDoc {
        keys: vec![
            KeyringDoc::entry(
                "k1800000000",
                &[0xA5; 32],
                "2027-01-15T08:00:00Z",
                KeyState::Active,
            ),
            KeyringDoc::entry(
                "k1799000000",
                &[0x5A; 32],
                "2027-01-03T18:13:20Z",
                KeyState::Accept,
            ),
        ],
    }
}

fn objects(d: &Desired) -> Vec<(&'static str, String)> {
    vec![
        ("configmap", serde_yaml::to_string(&d.config_map).unwrap()),
        ("secret", serde_yaml::to_string(&d.secret).unwrap()),
        ("deployment", serde_yaml::to_string(&d.deployment).unwrap()),
        ("service", serde_yaml::to_string(&d.service).unwrap()),
        ("pdb", serde_yaml::to_string(&d.pdb).unwrap()),
        (
            "serviceaccount",
            serde_yaml::to_string(&d.service_account).unwrap(),
        ),
        ("role", serde_yaml::to_string(&d.role).unwrap()),
        (
            "rolebinding",
            serde_yaml::to_string(&d.role_binding).unwrap(),
        ),
    ]
}

/// The config document and its hash come from `portcullis-crds` (tested there); fixtures
/// hold placeholders so translation changes do not churn them, after checking the
/// ConfigMap carries exactly `translate()`'s JSON and `content_hash()`.
fn check_fixtures(case: &str, d: &Desired, config: &DataplaneConfig) {
    let data = d.config_map.data.as_ref().unwrap();
    assert_eq!(data[CONFIG_KEY], config.to_json());
    assert_eq!(data[CONFIG_HASH_KEY], config.content_hash());
    let mut d = d.clone();
    d.config_map.data = Some(BTreeMap::from([
        (CONFIG_KEY.to_owned(), "<translate() JSON>".to_owned()),
        (CONFIG_HASH_KEY.to_owned(), "<content_hash()>".to_owned()),
    ]));
    let hash = config.content_hash();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(case);
    let bless = std::env::var_os("PORTCULLIS_BLESS").is_some();
    for (kind, yaml) in objects(&d) {
        let yaml = yaml.replace(&hash, "<content_hash()>");
        let path = dir.join(format!("{kind}.yaml"));
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &yaml).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("missing fixture {}: {e}", path.display()));
        assert_eq!(
            yaml, want,
            "{case}/{kind}.yaml differs (PORTCULLIS_BLESS=1 to regenerate)"
        );
    }
}

/// Asserts no secret bytes appear anywhere but the Secret.
fn assert_no_secrets_outside_secret(d: &Desired, tls: &BTreeMap<String, TlsMaterial>) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut needles: Vec<String> = keyring().keys.iter().map(|k| k.secret.clone()).collect();
    needles.push(b64.encode(keyring().to_yaml()));
    for m in tls.values() {
        for v in [&m.cert, &m.key, &m.ca].into_iter().flatten() {
            needles.push(b64.encode(&v.0));
        }
    }
    needles.extend(["BEGIN CERTIFICATE", "PRIVATE KEY", "fakeprivatekeybytes"].map(String::from));
    let secret_yaml = serde_yaml::to_string(&d.secret).unwrap();
    // The Secret does hold them (so the search is meaningful).
    assert!(secret_yaml.contains(&b64.encode(keyring().to_yaml())));
    for (kind, yaml) in objects(d) {
        if kind == "secret" {
            continue;
        }
        let json = match kind {
            "configmap" => serde_json::to_string(&d.config_map).unwrap(),
            _ => String::new(),
        };
        for n in &needles {
            assert!(
                !yaml.contains(n.as_str()) && !json.contains(n.as_str()),
                "{kind} contains secret material"
            );
        }
    }
}

fn build(
    array: &GatewayArray,
    farms: &[ServerFarm],
    tls: &BTreeMap<String, TlsMaterial>,
) -> (Desired, DataplaneConfig) {
    let t = translate::translate(array, farms, &Resolutions::default()).unwrap();
    let kr = keyring();
    let d = builders::build(&BuildInputs {
        array,
        config: &t.config,
        keyring: &kr,
        tls,
        rotation_handled: Some("2027-01-15"),
        default_image: "ghcr.io/portcullis-io/dataplane:0.1.0",
    })
    .unwrap();
    (d, t.config)
}

/// An array with one plain HTTP listener and nothing else set.
const MINIMAL_ARRAY: &str = r#"
apiVersion: portcullis.io/v1alpha1
kind: GatewayArray
metadata: {name: edge, namespace: shop, uid: 6f1c0a3e-0000-4000-8000-000000000001}
spec:
  listeners: [{name: http, port: 8080, protocol: HTTP}]
"#;

#[test]
fn minimal_http_array() {
    let a = array(MINIMAL_ARRAY);
    let f = farm(
        r#"
apiVersion: portcullis.io/v1alpha1
kind: ServerFarm
metadata: {name: web, namespace: shop}
spec:
  arrayRef: {name: edge}
  publish: {hosts: [shop.example.com]}
  servers: [{address: 10.0.0.1, port: 80}, {host: prod.admin.web1, port: 80}]
"#,
    );
    let tls = BTreeMap::new();
    let (d, config) = build(&a, &[f], &tls);
    check_fixtures("minimal-http", &d, &config);
    assert_no_secrets_outside_secret(&d, &tls);
}

#[test]
fn https_array_with_pod_knobs_and_farm_certificates() {
    let a = array(
        r#"
apiVersion: portcullis.io/v1alpha1
kind: GatewayArray
metadata:
  name: public
  namespace: web
  uid: 6f1c0a3e-0000-4000-8000-000000000002
spec:
  replicas: 3
  drainTimeout: 45s
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - {name: https, port: 443, protocol: HTTPS, tls: {secretName: default-cert}}
  pod:
    image: registry.example.com/portcullis/dataplane:pinned
    resources: {requests: {cpu: 250m, memory: 128Mi}, limits: {memory: 256Mi}}
    nodeSelector: {node-role.kubernetes.io/edge: "true"}
    tolerations: [{key: edge, operator: Exists, effect: NoSchedule}]
    annotations: {prometheus.io/scrape: "false", example.com/team: edge}
  service:
    type: ClusterIP
    annotations: {service.beta.kubernetes.io/aws-load-balancer-type: nlb}
  sessionKeys: {secretName: public-session-keyring}
"#,
    );
    let f = farm(
        r#"
apiVersion: portcullis.io/v1alpha1
kind: ServerFarm
metadata: {name: cms, namespace: web}
spec:
  arrayRef: {name: public}
  publish: {hosts: [cms.example.com], tls: {secretName: cms-cert}}
  servers: [{address: 10.0.0.7, port: 8443}]
  upstream: {tls: {sni: cms.internal, caSecretName: cms-ca}}
"#,
    );
    let pem = |s: &str| Some(ByteString(s.as_bytes().to_vec()));
    let tls = BTreeMap::from([
        (
            "default-cert".to_owned(),
            TlsMaterial {
                cert: pem(CERT_PEM),
                key: pem(KEY_PEM),
                ca: None,
                auth: None,
            },
        ),
        (
            "cms-cert".to_owned(),
            TlsMaterial {
                cert: pem(CERT_PEM),
                key: pem(KEY_PEM),
                ca: None,
                auth: None,
            },
        ),
        (
            "cms-ca".to_owned(),
            TlsMaterial {
                cert: None,
                key: None,
                ca: pem(CERT_PEM),
                auth: None,
            },
        ),
    ]);
    let (d, config) = build(&a, &[f], &tls);
    check_fixtures("https-pod-knobs", &d, &config);
    // `spec.sessionKeys.secretName` names the Secret, the member Role's only Secret and
    // the Secret members are told to read.
    assert_eq!(
        d.secret.metadata.name.as_deref(),
        Some("public-session-keyring")
    );
    let role_rules = d.role.rules.as_ref().unwrap();
    assert_eq!(
        role_rules[1].resource_names.as_deref(),
        Some(&["public-session-keyring".to_owned()][..])
    );
    let args = d.deployment.spec.template.spec.as_ref().unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert!(
        args.windows(2)
            .any(|w| w == ["--keys-secret", "public-session-keyring"]),
        "{args:?}"
    );
    assert_no_secrets_outside_secret(&d, &tls);
    let data = d.secret.data.as_ref().unwrap();
    for k in [
        "default-cert.tls.crt",
        "default-cert.tls.key",
        "cms-cert.tls.crt",
        "cms-cert.tls.key",
        "cms-ca.ca.crt",
        "keyring.yaml",
    ] {
        assert!(data.contains_key(k), "{k}");
    }
    // Members hot-reload: the config hash is on the Deployment, never in the pod template.
    let hash = d.config_map.data.as_ref().unwrap()["config.sha256"].clone();
    assert_eq!(
        d.deployment.metadata.annotations.as_ref().unwrap()[builders::CONFIG_HASH_ANNOTATION],
        hash
    );
    let template = serde_yaml::to_string(&d.deployment.spec.template).unwrap();
    assert!(!template.contains(&hash));
    // The array's own pod annotations win over the scrape annotations members get.
    let pod_annotations = d.deployment.spec.template.metadata.as_ref().unwrap();
    let pod_annotations = pod_annotations.annotations.as_ref().unwrap();
    assert_eq!(pod_annotations["prometheus.io/scrape"], "false");
    assert_eq!(pod_annotations["prometheus.io/port"], "9901");
    assert_eq!(pod_annotations["example.com/team"], "edge");
    assert_eq!(
        d.deployment
            .spec
            .template
            .spec
            .as_ref()
            .unwrap()
            .termination_grace_period_seconds,
        Some(55)
    );
}

#[test]
fn every_object_is_owned_by_the_array() {
    let a = array(MINIMAL_ARRAY);
    let (d, _) = build(&a, &[], &BTreeMap::new());
    for (kind, yaml) in objects(&d) {
        let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        let owners = &v["metadata"]["ownerReferences"];
        assert_eq!(
            owners[0]["uid"].as_str(),
            Some("6f1c0a3e-0000-4000-8000-000000000001"),
            "{kind}"
        );
        assert_eq!(owners[0]["controller"].as_bool(), Some(true), "{kind}");
        assert_eq!(
            owners[0]["blockOwnerDeletion"].as_bool(),
            Some(true),
            "{kind}"
        );
        assert_eq!(
            v["metadata"]["labels"]["portcullis.io/array"].as_str(),
            Some("edge"),
            "{kind}"
        );
    }
}

#[test]
fn members_listen_on_both_address_families_and_may_bind_low_ports() {
    let args_and_sysctls = |a: &GatewayArray| {
        let (d, _) = build(a, &[], &BTreeMap::new());
        let pod = d.deployment.spec.template.spec.unwrap();
        let args = pod.containers[0].args.clone().unwrap();
        let sysctls: Vec<(String, String)> = pod
            .security_context
            .unwrap()
            .sysctls
            .unwrap_or_default()
            .into_iter()
            .map(|s| (s.name, s.value))
            .collect();
        (args, sysctls)
    };
    // IPv4-only, IPv6-only and dual-stack clusters: the pod IP may be either family.
    let (args, sysctls) = args_and_sysctls(&array(MINIMAL_ARRAY));
    assert!(args.windows(2).any(|w| w == ["--bind", "::"]), "{args:?}");
    assert!(
        args.windows(2).any(|w| w == ["--admin", "[::]:9901"]),
        "{args:?}"
    );
    assert!(sysctls.is_empty(), "8080 needs no sysctl: {sysctls:?}");
    // Ports 80 and 443 as a non-root member with every capability dropped.
    let low = array(&MINIMAL_ARRAY.replace(
        "listeners: [{name: http, port: 8080, protocol: HTTP}]",
        "listeners: [{name: http, port: 443, protocol: HTTP}, {name: alt, port: 80, protocol: HTTP}]",
    ));
    let (_, sysctls) = args_and_sysctls(&low);
    assert_eq!(
        sysctls,
        [(
            "net.ipv4.ip_unprivileged_port_start".to_owned(),
            "80".to_owned()
        )]
    );
}

/// The member container's arguments for `a`.
fn args(a: &GatewayArray) -> Vec<String> {
    let (d, _) = build(a, &[], &BTreeMap::new());
    d.deployment.spec.template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap()
}

/// Issue 12, section 5: the access log is a setting, reachable from the GatewayArray.
#[test]
fn members_drop_the_access_log_when_the_array_says_so() {
    let on = args(&array(MINIMAL_ARRAY));
    assert!(!on.iter().any(|a| a == "--access-log"), "{on:?}");
    let off = args(&array(&format!("{MINIMAL_ARRAY}  accessLog: false\n")));
    assert!(
        off.windows(2).any(|w| w == ["--access-log", "off"]),
        "{off:?}"
    );
}

/// Issue 15: tracing is a setting of the array; members get the collector and the ratio.
#[test]
fn members_export_spans_where_the_array_says() {
    let off = args(&array(MINIMAL_ARRAY));
    assert!(!off.iter().any(|a| a.starts_with("--otlp")), "{off:?}");
    let on = args(&array(&format!(
        "{MINIMAL_ARRAY}  tracing:\n    otlpEndpoint: http://otel-collector.observability:4318\n    sampleRatio: 0.25\n"
    )));
    assert!(
        on.windows(2).any(|w| w
            == [
                "--otlp-endpoint",
                "http://otel-collector.observability:4318"
            ]),
        "{on:?}"
    );
    assert!(
        on.windows(2).any(|w| w == ["--trace-sample-ratio", "0.25"]),
        "{on:?}"
    );
    let all = args(&array(&format!(
        "{MINIMAL_ARRAY}  tracing:\n    otlpEndpoint: http://collector:4318/v1/traces\n"
    )));
    assert!(
        all.windows(2).any(|w| w == ["--trace-sample-ratio", "1"]),
        "{all:?}"
    );
}

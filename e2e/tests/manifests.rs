//! What the cluster flows and the quick start apply, checked offline the way the API
//! server and the controller check it, so a broken manifest fails `cargo test` here
//! rather than a kind run:
//!
//! - the quick-start farm (`e2e/manifests/quickstart-farm.yaml`) and the objects the
//!   fixtures build pass the CRD's openAPIV3Schema (strictly: unknown fields are errors)
//!   and its CEL rules, and the quick start translates with the demo backend resolved;
//! - the objects the flows expect the API server to refuse are refused by CEL;
//! - the demo backend's names do not collide with what the GatewayArray `demo` owns.
//!
//! No cluster needed: these are not ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use kube::ResourceExt;
use portcullis_crds::translate::{
    FarmOutcome, Resolutions, ServiceEndpoint, ServiceKey, farm_targets_array, translate,
};
use portcullis_crds::v1alpha1::{GatewayArray, ServerFarm};
use portcullis_e2e::fixtures;
use portcullis_testkit::api_server;
use serde_json::{Value, json};

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// Every document of a YAML file, as JSON.
fn yaml_docs(relative: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo_path(relative))
        .unwrap_or_else(|e| panic!("failed to read {relative}: {e}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// What the API server would say about `object`: schema errors, then CEL errors.
fn api_server_errors(object: &Value) -> Vec<String> {
    api_server::errors(object)
}

fn assert_accepted(what: &str, object: &Value) {
    let errors = api_server_errors(object);
    assert!(
        errors.is_empty(),
        "{what} would be refused by the API server:\n{}",
        errors.join("\n")
    );
}

/// The quick start's array (examples/) and the farm `web` in front of the demo backend,
/// in the namespace `kubectl apply` puts them in.
fn quick_start() -> (GatewayArray, ServerFarm) {
    let array = yaml_docs("examples/gateway-array.yaml")
        .into_iter()
        .find(|d| d["kind"] == "GatewayArray")
        .expect("examples/gateway-array.yaml has a GatewayArray");
    assert_accepted("examples/gateway-array.yaml", &array);
    let mut docs = yaml_docs("e2e/manifests/quickstart-farm.yaml");
    assert_eq!(docs.len(), 1, "quickstart-farm.yaml holds one ServerFarm");
    let mut farm = docs.remove(0);
    assert_accepted("e2e/manifests/quickstart-farm.yaml", &farm);
    let array: GatewayArray = serde_json::from_value(array).unwrap();
    // No namespace in the file: `kubectl apply` (README) or `-n default` (kind.sh).
    farm["metadata"]["namespace"] = json!(array.namespace().unwrap());
    (array, serde_json::from_value(farm).unwrap())
}

#[test]
fn the_quick_start_farm_passes_the_crd_and_translates_with_the_backend_resolved() {
    let (array, web) = quick_start();
    assert!(
        farm_targets_array(&web, &array),
        "the quick-start farm does not name the examples' GatewayArray {}",
        array.name_any()
    );
    let backend = &web.spec.servers[0];
    let service = backend
        .service
        .as_ref()
        .expect("the quick-start farm reaches the demo backend by Service");
    let (deployment, svc) = demo_backend_objects();
    assert_eq!(
        service.name, svc,
        "the farm names the demo backend's Service"
    );
    assert_eq!(deployment, svc);

    let mut resolutions = Resolutions::default();
    let endpoint: SocketAddr = "10.244.1.7:8080".parse().unwrap();
    resolutions.services.insert(
        ServiceKey {
            namespace: web.namespace().unwrap(),
            name: service.name.clone(),
            port: service.port,
        },
        vec![ServiceEndpoint {
            address: endpoint,
            ready: true,
            terminating: false,
        }],
    );
    let t = translate(&array, std::slice::from_ref(&web), &resolutions)
        .unwrap_or_else(|e| panic!("the quick-start array is refused: {e:?}"));
    assert_eq!(t.farms.len(), 1);
    for (id, outcome) in &t.farms {
        match outcome {
            FarmOutcome::Accepted { unresolved, .. } => {
                assert!(unresolved.is_empty(), "{id}: unresolved {unresolved:?}")
            }
            FarmOutcome::Rejected(errors) => panic!("{id} rejected: {errors:?}"),
        }
    }
    let rendered = serde_json::to_string(&t.config).unwrap();
    assert!(
        rendered.contains("web.example.com") && rendered.contains("10.244.1.7:8080"),
        "the config publishes web.example.com on the backend's endpoint: {rendered}"
    );
}

/// The names of the demo backend's Deployment and Service.
fn demo_backend_objects() -> (String, String) {
    let docs = yaml_docs("e2e/manifests/demo-backend.yaml");
    let name_of = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .and_then(|d| d["metadata"]["name"].as_str())
            .unwrap_or_else(|| panic!("demo-backend.yaml has no named {kind}"))
            .to_owned()
    };
    (name_of("Deployment"), name_of("Service"))
}

#[test]
fn the_demo_backend_does_not_collide_with_what_the_array_owns() {
    // README "What the controller creates": `<name>` (Deployment, Service, PDB),
    // `<name>-config`, `<name>-keys`, `<name>-dataplane`.
    let (array, _) = quick_start();
    let name = array.name_any();
    let owned = [
        name.clone(),
        format!("{name}-config"),
        format!("{name}-keys"),
        format!("{name}-dataplane"),
    ];
    let (deployment, service) = demo_backend_objects();
    for backend in [deployment, service] {
        assert!(
            !owned.contains(&backend),
            "the demo backend {backend} has the name of an object the GatewayArray {name} owns"
        );
    }
}

#[test]
fn the_objects_the_flows_create_pass_the_crd() {
    let objects = [
        (
            "routing/farm-edit array",
            serde_json::to_value(fixtures::array("edge", 2, |_| {})).unwrap(),
        ),
        (
            "session array",
            serde_json::to_value(fixtures::array("edge", 3, |_| {})).unwrap(),
        ),
        (
            "plain farm",
            serde_json::to_value(fixtures::farm(
                "farm-a",
                "edge",
                "a.e2e.test",
                "demo-a",
                |_| {},
            ))
            .unwrap(),
        ),
        (
            "cookie-affinity farm",
            serde_json::to_value(fixtures::farm(
                "shop",
                "edge",
                "shop.e2e.test",
                "demo",
                fixtures::cookie_affinity,
            ))
            .unwrap(),
        ),
        // invalid_farm.rs: the controller refuses it, so the API server must accept it.
        (
            "metadata-address farm",
            serde_json::to_value(fixtures::farm(
                "bad",
                "edge",
                "bad.e2e.test",
                "unused",
                |spec| spec.servers = vec![fixtures::metadata_address()],
            ))
            .unwrap(),
        ),
    ];
    for (what, object) in &objects {
        assert_accepted(what, object);
    }
}

#[test]
fn the_array_without_listeners_of_the_install_flow_is_refused_by_cel() {
    let array = fixtures::array("no-listeners", 1, |spec| spec.listeners.clear());
    let array = serde_json::to_value(array).unwrap();
    let errors = api_server_errors(&array);
    assert!(
        errors.iter().any(|e| e.contains("at least one listener")),
        "install.rs expects the message \"at least one listener\", got {errors:?}"
    );
}

//! Every manifest under `examples/` goes through the checks a real resource meets:
//!
//! 1. `serde`: it parses into the typed resource (what the controller and local mode do);
//! 2. `schema`: it validates against the generated CRD's openAPIV3Schema (what the API
//!    server does first, with strict field validation: unknown fields are errors);
//! 3. `cel`: it passes the CRD's `x-kubernetes-validations` (what the API server does next);
//! 4. `translate`: it translates into a dataplane config (the controller and local mode).
//!
//! The quick-start manifests (`examples/*.yaml`) must pass all four. Each broken manifest
//! (`examples/invalid/*.yaml`) starts with
//!
//! ```yaml
//! # expect: spec.servers[0].port      <- the field an error must name
//! # rejected-by: cel translate        <- exactly the stages that refuse it
//! ```
//!
//! and must be refused by exactly the stages it lists, by an error that names the field,
//! and always by `serde` or `translate`: local mode and the controller never rely on the
//! API server having checked anything.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use kube::ResourceExt;
use portcullis_crds::config::{DataplaneConfig, MemberTarget};
use portcullis_crds::translate::{FarmOutcome, Resolutions, farm_id, translate};
use portcullis_crds::v1alpha1::{GatewayArray, ServerFarm};
use portcullis_testkit::api_server::{self, field_path};
use serde::de::DeserializeOwned;
use serde_json::Value;

const STAGES: [&str; 4] = ["serde", "schema", "cel", "translate"];

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// One YAML document of one file.
struct Doc {
    /// `examples/x.yaml#1`, for messages.
    origin: String,
    /// The document's own text (for serde, whose errors then carry the field path).
    text: String,
    value: Value,
    kind: String,
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    files
}

fn load_docs(path: &Path) -> Vec<Doc> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()));
    let name = path
        .strip_prefix(examples_dir())
        .unwrap_or(path)
        .display()
        .to_string();
    // Split on document markers ourselves so each document can be parsed from its own
    // text: serde_yaml names the field path only when it parses text.
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut flush = |current: &mut String| {
        let doc_text = std::mem::take(current);
        let yaml: serde_yaml::Value =
            serde_yaml::from_str(&doc_text).unwrap_or_else(|e| panic!("{name}: not YAML: {e}"));
        if yaml.is_null() {
            return; // comments only, or an empty document
        }
        let value: Value = serde_json::to_value(&yaml)
            .unwrap_or_else(|e| panic!("{name}: not representable as JSON: {e}"));
        let kind = value["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: document without kind"))
            .to_owned();
        docs.push(Doc {
            origin: format!("examples/{name}#{}", docs.len()),
            text: doc_text,
            value,
            kind,
        });
    };
    for line in text.lines() {
        if line == "---" || line.starts_with("--- ") {
            flush(&mut current);
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    flush(&mut current);
    docs
}

fn schema_errors(doc: &Doc) -> Vec<String> {
    api_server::schema_errors(&doc.kind, &doc.value)
}

fn cel_errors(doc: &Doc) -> Vec<String> {
    api_server::cel_errors(&doc.kind, &doc.value)
}

fn parse<T: DeserializeOwned>(doc: &Doc) -> Result<T, Vec<String>> {
    serde_yaml::from_str(&doc.text).map_err(|e| vec![e.to_string()])
}

/// The quick-start set, parsed and checked.
struct QuickStart {
    arrays: Vec<GatewayArray>,
    farms: Vec<ServerFarm>,
}

/// What local mode resolves on a workstation: `localhost` is the loopback address.
fn local_resolutions() -> Resolutions {
    let mut r = Resolutions::default();
    r.hosts
        .insert("localhost".into(), vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    r
}

fn quick_start() -> QuickStart {
    let files = yaml_files(&examples_dir());
    assert!(!files.is_empty(), "examples/ has no manifests");
    let mut qs = QuickStart {
        arrays: Vec::new(),
        farms: Vec::new(),
    };
    for file in &files {
        for doc in load_docs(file) {
            let schema = schema_errors(&doc);
            assert!(
                schema.is_empty(),
                "{}: fails the CRD schema:\n{}",
                doc.origin,
                schema.join("\n")
            );
            let cel = cel_errors(&doc);
            assert!(
                cel.is_empty(),
                "{}: fails CEL:\n{}",
                doc.origin,
                cel.join("\n")
            );
            match doc.kind.as_str() {
                "GatewayArray" => {
                    let a: GatewayArray =
                        parse(&doc).unwrap_or_else(|e| panic!("{}: {}", doc.origin, e.join("; ")));
                    a.validate_cel()
                        .unwrap_or_else(|e| panic!("{}: typed CEL: {e}", doc.origin));
                    qs.arrays.push(a);
                }
                "ServerFarm" => {
                    let f: ServerFarm =
                        parse(&doc).unwrap_or_else(|e| panic!("{}: {}", doc.origin, e.join("; ")));
                    f.validate_cel()
                        .unwrap_or_else(|e| panic!("{}: typed CEL: {e}", doc.origin));
                    qs.farms.push(f);
                }
                other => panic!("{}: unexpected kind {other}", doc.origin),
            }
        }
    }
    qs
}

#[test]
fn quick_start_parses_validates_and_translates_cleanly() {
    let qs = quick_start();
    assert_eq!(qs.arrays.len(), 1, "the quick start has one GatewayArray");
    assert_eq!(qs.farms.len(), 2, "the quick start has two ServerFarms");
    let array = &qs.arrays[0];
    assert_eq!(
        (array.namespace().as_deref(), array.name_any().as_str()),
        (Some("default"), "demo")
    );
    for farm in &qs.farms {
        assert!(
            qs.arrays
                .iter()
                .any(|a| portcullis_crds::translate::farm_targets_array(farm, a)),
            "{} names no GatewayArray of the quick start",
            farm_id(farm)
        );
    }

    let t = translate(array, &qs.farms, &local_resolutions())
        .unwrap_or_else(|e| panic!("the quick-start array is refused: {e:?}"));
    for (id, outcome) in &t.farms {
        match outcome {
            FarmOutcome::Accepted { unresolved, .. } => {
                assert!(unresolved.is_empty(), "{id}: unresolved {unresolved:?}")
            }
            FarmOutcome::Rejected(errors) => panic!("{id} rejected: {errors:?}"),
        }
    }
    assert_eq!(t.farms.len(), 2);
    let c = &t.config;
    assert!(c.listeners.iter().all(|l| l.default_certificate.is_none()));
    assert_eq!(c.listeners[0].port, 8080);

    // The documented promises of the quick start: cookie affinity with a verifier that
    // sends its own Host header, and one endpoint identity shared by both farms.
    let shop = &c.farms["default/shop"];
    assert_eq!(
        shop.affinity.mode,
        portcullis_crds::config::AffinityMode::Cookie
    );
    assert_eq!(shop.verifier.as_ref().unwrap().host, "shop.internal");
    let identities = |farm: &str| -> BTreeSet<String> {
        c.farms[farm]
            .members
            .iter()
            .flat_map(|m| match &m.target {
                MemberTarget::Endpoints { identities } => identities.clone(),
                MemberTarget::Dns { host, .. } => panic!("{farm}: {host} left to DNS"),
            })
            .collect()
    };
    let shared: Vec<String> = identities("default/shop")
        .intersection(&identities("default/admin"))
        .cloned()
        .collect();
    assert_eq!(shared, vec!["http1://127.0.0.1:9001".to_owned()]);
    assert_eq!(c.endpoints.len(), 2, "9001 (shared) and 9002");

    // What the controller writes is what a member reads back.
    assert_eq!(DataplaneConfig::from_json(&c.to_json()).unwrap(), *c);
}

struct Verdict {
    stage: &'static str,
    errors: Vec<String>,
}

fn header(text: &str, key: &str) -> Option<String> {
    text.lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.strip_prefix(&format!("# {key}:")))
        .map(|v| v.trim().to_owned())
}

fn judge_invalid(doc: &Doc, qs: &QuickStart) -> Vec<Verdict> {
    let array = &qs.arrays[0];
    let mut verdicts = vec![
        Verdict {
            stage: "schema",
            errors: schema_errors(doc),
        },
        Verdict {
            stage: "cel",
            errors: cel_errors(doc),
        },
    ];
    let (serde, translated) = match doc.kind.as_str() {
        "ServerFarm" => match parse::<ServerFarm>(doc) {
            Err(e) => (e, None),
            Ok(farm) => {
                let id = farm_id(&farm);
                let mut farms = qs.farms.clone();
                farms.push(farm);
                let t = translate(array, &farms, &local_resolutions()).unwrap_or_else(|e| {
                    panic!("{}: the valid array is refused: {e:?}", doc.origin)
                });
                // One bad farm never takes the good ones down.
                for good in &qs.farms {
                    assert!(
                        matches!(t.farms[&farm_id(good)], FarmOutcome::Accepted { .. }),
                        "{}: took {} down with it: {:?}",
                        doc.origin,
                        farm_id(good),
                        t.farms[&farm_id(good)]
                    );
                }
                let errors = match &t.farms[&id] {
                    FarmOutcome::Accepted { .. } => Vec::new(),
                    FarmOutcome::Rejected(errors) => {
                        assert!(!t.config.farms.contains_key(&id));
                        assert!(t.config.routes.iter().all(|r| r.farm != id));
                        errors.iter().map(ToString::to_string).collect()
                    }
                };
                (Vec::new(), Some(errors))
            }
        },
        "GatewayArray" => match parse::<GatewayArray>(doc) {
            Err(e) => (e, None),
            Ok(array) => {
                let errors = match translate(&array, &qs.farms, &local_resolutions()) {
                    Ok(_) => Vec::new(),
                    Err(errors) => errors.iter().map(ToString::to_string).collect(),
                };
                (Vec::new(), Some(errors))
            }
        },
        other => panic!("{}: unexpected kind {other}", doc.origin),
    };
    verdicts.insert(
        0,
        Verdict {
            stage: "serde",
            errors: serde,
        },
    );
    if let Some(errors) = translated {
        verdicts.push(Verdict {
            stage: "translate",
            errors,
        });
    }
    verdicts
}

#[test]
fn every_invalid_example_is_refused_naming_its_field() {
    let qs = quick_start();
    let files = yaml_files(&examples_dir().join("invalid"));
    assert!(
        files.len() >= 8,
        "examples/invalid/ needs at least 8 manifests, has {}",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        let docs = load_docs(file);
        assert_eq!(
            docs.len(),
            1,
            "{}: one broken resource per file",
            file.display()
        );
        let doc = &docs[0];
        let expect = header(&doc.text, "expect")
            .unwrap_or_else(|| panic!("{}: no `# expect: <field>` header", doc.origin));
        let listed: BTreeSet<String> = header(&doc.text, "rejected-by")
            .unwrap_or_else(|| panic!("{}: no `# rejected-by: <stages>` header", doc.origin))
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        for s in &listed {
            assert!(
                STAGES.contains(&s.as_str()),
                "{}: unknown stage {s}",
                doc.origin
            );
        }
        assert!(
            listed.contains("serde") || listed.contains("translate"),
            "{}: local mode and the controller must refuse it too (serde or translate)",
            doc.origin
        );

        let verdicts = judge_invalid(doc, &qs);
        let refused: BTreeSet<String> = verdicts
            .iter()
            .filter(|v| !v.errors.is_empty())
            .map(|v| v.stage.to_owned())
            .collect();
        let ran: BTreeSet<String> = verdicts.iter().map(|v| v.stage.to_owned()).collect();
        let expected_refusals: BTreeSet<String> = listed.intersection(&ran).cloned().collect();
        let shown = verdicts
            .iter()
            .map(|v| format!("  {}: {:?}", v.stage, v.errors))
            .collect::<Vec<_>>()
            .join("\n");
        if refused != expected_refusals {
            failures.push(format!(
                "{}: refused by {refused:?}, expected {expected_refusals:?}\n{shown}",
                doc.origin
            ));
            continue;
        }
        // The local path (serde, else translate) must name the field: that is the error
        // the controller puts into the farm's status and local mode prints.
        let local = verdicts
            .iter()
            .find(|v| matches!(v.stage, "serde" | "translate") && !v.errors.is_empty())
            .unwrap();
        if !local.errors.iter().any(|e| e.contains(&expect)) {
            failures.push(format!(
                "{}: {} errors do not name {expect}\n{shown}",
                doc.origin, local.stage
            ));
        }
        // And the API server's refusal names it too, where it refuses (or names the
        // list that holds it: a CEL rule on a list cannot point at one item).
        for v in verdicts
            .iter()
            .filter(|v| matches!(v.stage, "schema" | "cel") && !v.errors.is_empty())
        {
            let names = |e: &String| {
                e.contains(&expect)
                    || e.split_once(": ")
                        .is_some_and(|(path, _)| expect.starts_with(&format!("{path}[")))
            };
            if !v.errors.iter().any(names) {
                failures.push(format!(
                    "{}: {} errors do not name {expect}\n{shown}",
                    doc.origin, v.stage
                ));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[test]
fn field_paths_read_like_kubectl_explain() {
    assert_eq!(field_path("/spec/servers/0/port"), "spec.servers[0].port");
    assert_eq!(field_path(""), "");
    assert_eq!(
        field_path("/metadata/annotations/a~1b"),
        "metadata.annotations.a/b"
    );
}

#[test]
fn multi_document_files_are_split_and_comment_only_documents_skipped() {
    let dir = std::env::temp_dir().join(format!("portcullis-examples-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("two.yaml");
    std::fs::write(
        &file,
        "# header only\n---\nkind: GatewayArray\nmetadata: {name: a}\n---\n# nothing\n--- \nkind: ServerFarm\nmetadata: {name: b}\n",
    )
    .unwrap();
    let docs = load_docs(&file);
    std::fs::remove_dir_all(&dir).unwrap();
    let kinds: Vec<&str> = docs.iter().map(|d| d.kind.as_str()).collect();
    assert_eq!(kinds, ["GatewayArray", "ServerFarm"]);
    assert_eq!(docs[1].value["metadata"]["name"], "b");
}

#[test]
fn a_farm_naming_its_array_by_a_non_name_is_refused_by_schema_and_by_the_controller_check() {
    // Not an `examples/invalid` file: such a farm names no array of the quick start, so
    // translation never sees it. The API server refuses it, and the controller checks it
    // before reading the array by that name.
    let farm = serde_json::json!({
        "apiVersion": "portcullis.io/v1alpha1", "kind": "ServerFarm",
        "metadata": {"name": "f", "namespace": "default"},
        "spec": {"arrayRef": {"name": "Demo_Array"}, "publish": {"hosts": ["a.example.com"]},
                 "servers": [{"address": "10.0.0.1", "port": 80}]}
    });
    let errors = api_server::schema_errors("ServerFarm", &farm);
    assert!(
        errors.iter().any(|e| e.starts_with("spec.arrayRef.name")),
        "{errors:?}"
    );
    let typed: ServerFarm = serde_json::from_value(farm).unwrap();
    let errors = portcullis_crds::translate::farm_reference_errors(&typed);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, "spec.arrayRef.name");
}

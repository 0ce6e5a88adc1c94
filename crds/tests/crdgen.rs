//! The committed CRD YAML in the chart is exactly what the Rust types generate.

#[test]
fn committed_crds_match_the_types() {
    let path = portcullis_crds::chart_crd_path();
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()));
    let generated = portcullis_crds::crds_yaml();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || committed.lines().count().min(generated.lines().count()) + 1,
                |i| i + 1,
            );
        panic!(
            "{} is stale (first difference at line {line}); \
             run `cargo run -p portcullis-crds --bin crdgen` and commit the result",
            path.display()
        );
    }
}

#[test]
fn generated_yaml_round_trips_to_the_crds() {
    // Every document parses back to the CRD it came from: the quoting pass changed the
    // text only, never a value.
    let yaml = portcullis_crds::crds_yaml();
    let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("generated YAML parses"))
        .collect();
    let expected: Vec<serde_json::Value> = portcullis_crds::crds()
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect();
    assert_eq!(docs, expected);
}

#[test]
fn no_plain_scalar_reads_as_a_boolean_in_yaml_1_1() {
    // kubectl and Helm read YAML 1.1, where a plain `Off` or `yes` is a boolean.
    let yaml = portcullis_crds::crds_yaml();
    let mut in_block: Option<usize> = None;
    for (n, line) in yaml.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        if let Some(block_indent) = in_block {
            if line.trim().is_empty() || indent > block_indent {
                continue;
            }
            in_block = None;
        }
        let trimmed = line.trim_start();
        let scalar = match trimmed.strip_prefix("- ") {
            Some(item) => item,
            None => trimmed.split_once(": ").map_or("", |(_, v)| v),
        };
        if scalar.ends_with('|') || scalar.ends_with("|-") || scalar.ends_with('>') {
            in_block = Some(indent);
            continue;
        }
        assert!(
            !portcullis_crds::is_yaml11_boolean(scalar.trim()),
            "line {}: {line:?} reads as a boolean in YAML 1.1",
            n + 1
        );
    }
}

#[test]
fn every_cel_rule_compiles_and_stays_within_the_cost_budget() {
    // The API server refuses a CRD whose rules do not compile or whose estimated cost is
    // too high (unbounded lists and strings inflate it). kube-cel's estimate is coarse,
    // but it catches the common mistake: a comprehension over a list without maxItems.
    use kube::core::cel::{ScopeContext, WarningKind, analyze_rule, compile_schema};

    fn walk(node: &serde_json::Value, path: &str, rules: &mut usize, problems: &mut Vec<String>) {
        let Some(map) = node.as_object() else { return };
        if let Some(list) = map
            .get("x-kubernetes-validations")
            .and_then(|v| v.as_array())
        {
            let compiled = compile_schema(node);
            for e in compiled.compilation_errors() {
                problems.push(format!("{path}: {e}"));
            }
            for rule in list {
                *rules += 1;
                let text = rule["rule"].as_str().expect("a rule has rule text");
                // Only cost: kube-cel's scope check mistakes comprehension variables
                // (`self.all(l, ...)`) for unknown globals.
                for w in analyze_rule(text, &compiled, ScopeContext::CrdValidation) {
                    if matches!(
                        w.kind,
                        WarningKind::CostExceeded | WarningKind::MissingBounds
                    ) {
                        problems.push(format!("{path}: {text}: {}", w.message));
                    }
                }
            }
        }
        if let Some(props) = map.get("properties").and_then(|p| p.as_object()) {
            for (name, sub) in props {
                walk(sub, &format!("{path}.{name}"), rules, problems);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(sub) = map.get(key) {
                walk(sub, &format!("{path}[]"), rules, problems);
            }
        }
    }

    // The guard itself: the listener rule on an unbounded list is flagged.
    let mut problems = Vec::new();
    let unbounded = serde_json::json!({
        "type": "array",
        "items": {"type": "object", "properties": {"port": {"type": "integer"}}},
        "x-kubernetes-validations": [
            {"rule": "self.all(l, self.exists_one(m, m.port == l.port))"}
        ]
    });
    walk(&unbounded, "unbounded", &mut 0, &mut problems);
    assert!(!problems.is_empty(), "the cost guard flags nothing");

    let mut rules = 0;
    let mut problems = Vec::new();
    for crd in portcullis_crds::crds() {
        let schema = serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .unwrap(),
        )
        .unwrap();
        walk(&schema, &crd.spec.names.kind, &mut rules, &mut problems);
    }
    assert!(rules >= 10, "only {rules} rules found: the walk is broken");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn version_of(kind: &str) -> serde_json::Value {
    let crd = portcullis_crds::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap();
    serde_json::to_value(&crd.spec.versions[0]).unwrap()
}

#[test]
fn status_conditions_are_list_maps_keyed_by_type() {
    // Server-side apply merges a list-type map item by item; an atomic list would make
    // every status writer replace every other writer's conditions.
    for kind in ["GatewayArray", "ServerFarm"] {
        let v = version_of(kind);
        let conditions =
            &v["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{kind}");
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"]),
            "{kind}"
        );
        // A map key must be required in the item schema, or the API server refuses the CRD.
        let required = conditions["items"]["required"].as_array().unwrap();
        assert!(required.iter().any(|r| r == "type"), "{kind}: {required:?}");
    }
}

#[test]
fn the_scale_subresource_names_a_label_selector() {
    // An HorizontalPodAutoscaler reads the pods to measure from labelSelectorPath.
    let v = version_of("GatewayArray");
    let scale = &v["subresources"]["scale"];
    assert_eq!(scale["labelSelectorPath"], ".status.selector");
    let status = &v["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
    assert_eq!(status["selector"]["type"], "string");
}

#[test]
fn the_admin_port_rule_uses_the_admin_port() {
    // The CEL rule spells the port as a literal; it must be the one members use.
    let yaml = portcullis_crds::crds_yaml();
    let port = portcullis_crds::v1alpha1::MEMBER_ADMIN_PORT;
    assert!(
        yaml.contains(&format!("rule: self != {port}")),
        "no rule refuses {port}"
    );
    assert!(yaml.contains(&format!(
        "rule: self != '{}'",
        portcullis_crds::v1alpha1::MEMBER_ADMIN_PORT_NAME
    )));
}

//! What the API server would say about a Portcullis object, offline: the CRD's
//! openAPIV3Schema (with the API server's strictness) and its CEL rules. Shared by the
//! crds example tests and the e2e manifest tests.

use serde_json::{Value, json};

/// The CRD's openAPIV3Schema for `kind`, as generated.
pub fn open_api_schema(kind: &str) -> Value {
    let crd = portcullis_crds::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for kind {kind}"));
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the CRD has an openAPIV3Schema");
    serde_json::to_value(schema).unwrap()
}

/// The openAPIV3Schema for `kind` as JSON Schema with the API server's strictness:
/// `nullable` allows null, and objects that list their properties refuse unknown ones
/// (kubectl's default `--validate=strict`).
pub fn strict_schema(kind: &str) -> Value {
    let mut schema = open_api_schema(kind);
    // The API server checks these itself (metadata as ObjectMeta); the CRD omits them.
    let props = schema["properties"].as_object_mut().unwrap();
    for (key, t) in [
        ("apiVersion", "string"),
        ("kind", "string"),
        ("metadata", "object"),
    ] {
        props.entry(key).or_insert_with(|| json!({ "type": t }));
    }
    strict(&mut schema);
    schema
}

fn strict(schema: &mut Value) {
    let Some(map) = schema.as_object_mut() else {
        return;
    };
    if map.get("nullable") == Some(&Value::Bool(true))
        && let Some(Value::String(t)) = map.get("type").cloned()
    {
        map.insert("type".into(), json!([t, "null"]));
    }
    let preserves = map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if map.contains_key("properties") && !map.contains_key("additionalProperties") && !preserves {
        map.insert("additionalProperties".into(), Value::Bool(false));
    }
    for (key, sub) in map.iter_mut() {
        match key.as_str() {
            "properties" => {
                if let Some(props) = sub.as_object_mut() {
                    props.values_mut().for_each(strict);
                }
            }
            "items" | "additionalProperties" => strict(sub),
            "allOf" | "anyOf" | "oneOf" => {
                if let Some(list) = sub.as_array_mut() {
                    list.iter_mut().for_each(strict);
                }
            }
            _ => {}
        }
    }
}

/// `/spec/servers/0/port` as a person writes it: `spec.servers[0].port`.
pub fn field_path(pointer: &str) -> String {
    let mut out = String::new();
    for segment in pointer.split('/').filter(|s| !s.is_empty()) {
        if segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&segment.replace("~1", "/").replace("~0", "~"));
        }
    }
    out
}

/// Schema errors for `object` of `kind`, each starting with the field path.
pub fn schema_errors(kind: &str, object: &Value) -> Vec<String> {
    let validator = jsonschema::validator_for(&strict_schema(kind))
        .unwrap_or_else(|e| panic!("the {kind} CRD schema is not valid JSON Schema: {e}"));
    validator
        .iter_errors(object)
        .map(|e| format!("{}: {e}", field_path(e.instance_path.as_str())))
        .collect()
}

/// CEL errors for `object` of `kind`. CEL runs on the raw object, as the API server runs
/// it (after schema defaults), so a manifest serde refuses still gets its CEL verdict.
pub fn cel_errors(kind: &str, object: &Value) -> Vec<String> {
    match kube::core::cel::Validator::new().validate(&open_api_schema(kind), object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

/// Everything the API server would refuse `object` for: schema errors, then CEL errors.
pub fn errors(object: &Value) -> Vec<String> {
    let kind = object["kind"].as_str().expect("an object has a kind");
    let mut out = schema_errors(kind, object);
    out.extend(cel_errors(kind, object));
    out
}

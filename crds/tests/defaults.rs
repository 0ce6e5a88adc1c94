//! Issue 16, item 3: every default translation fills in lives in `config`, and the CRD
//! documentation an operator reads (`kubectl explain`) quotes that same value. A default
//! changed in one place and not the other fails here.

use kube::CustomResourceExt;
use portcullis_crds::Duration;
use portcullis_crds::config::*;
use portcullis_crds::translate::DEFAULT_COOKIE_NAME;
use portcullis_crds::v1alpha1::{GatewayArray, ServerFarm};
use serde_json::Value;

/// A default as the code holds it.
enum Default {
    Duration(Duration),
    Number(u64),
    Text(&'static str),
}

/// The description of the field at `path` (dot-separated, below the schema root).
fn description(schema: &Value, path: &str) -> String {
    let mut at = schema;
    for part in path.split('.') {
        at = &at["properties"][part];
        if at.get("items").is_some() && at.get("properties").is_none() {
            at = &at["items"];
        }
    }
    at["description"]
        .as_str()
        .unwrap_or_else(|| panic!("{path} has no description"))
        .to_owned()
}

/// The value after "Defaults to " in a description, without backticks or the sentence's
/// full stop.
fn quoted_default(text: &str, path: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let (_, after) = flat
        .split_once("Defaults to ")
        .unwrap_or_else(|| panic!("{path}: no \"Defaults to\" in {flat:?}"));
    let word = after.split(' ').next().unwrap();
    word.trim_end_matches(['.', ',', ';'])
        .trim_matches('`')
        .to_owned()
}

fn schema<T: CustomResourceExt>() -> Value {
    let crd = serde_json::to_value(T::crd()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

#[test]
fn crd_docs_quote_the_defaults_translation_applies() {
    let array = schema::<GatewayArray>();
    let farm = schema::<ServerFarm>();
    let cases: Vec<(&Value, &str, Default)> = vec![
        (
            &array,
            "spec.drainTimeout",
            Default::Duration(DEFAULT_DRAIN_TIMEOUT),
        ),
        (
            &array,
            "spec.maxSessionTime",
            Default::Duration(DEFAULT_MAX_SESSION_TIME),
        ),
        (
            &array,
            "spec.sessionKeys.rotationInterval",
            Default::Duration(DEFAULT_ROTATION_INTERVAL),
        ),
        (
            &array,
            "spec.limits.maxConnections",
            Default::Number(DEFAULT_MAX_CONNECTIONS.into()),
        ),
        (
            &array,
            "spec.limits.maxHeaderBytes",
            Default::Number(DEFAULT_MAX_HEADER_BYTES.into()),
        ),
        (
            &array,
            "spec.limits.maxHeaders",
            Default::Number(DEFAULT_MAX_HEADERS.into()),
        ),
        (
            &array,
            "spec.limits.headerReadTimeout",
            Default::Duration(DEFAULT_HEADER_READ_TIMEOUT),
        ),
        (
            &array,
            "spec.limits.clientIdleTimeout",
            Default::Duration(DEFAULT_CLIENT_IDLE_TIMEOUT),
        ),
        (
            &farm,
            "spec.affinity.cookieName",
            Default::Text(DEFAULT_COOKIE_NAME),
        ),
        (
            &farm,
            "spec.affinity.idleTimeout",
            Default::Duration(DEFAULT_AFFINITY_IDLE_TIMEOUT),
        ),
        (
            &farm,
            "spec.upstream.keepAlive.maxIdle",
            Default::Number(DEFAULT_KEEPALIVE_MAX_IDLE.into()),
        ),
        (
            &farm,
            "spec.upstream.keepAlive.idleTimeout",
            Default::Duration(DEFAULT_KEEPALIVE_IDLE_TIMEOUT),
        ),
        (
            &farm,
            "spec.upstream.connectTimeout",
            Default::Duration(DEFAULT_CONNECT_TIMEOUT),
        ),
        (
            &farm,
            "spec.upstream.firstByteTimeout",
            Default::Duration(DEFAULT_FIRST_BYTE_TIMEOUT),
        ),
        (
            &farm,
            "spec.upstream.idleTimeout",
            Default::Duration(DEFAULT_UPSTREAM_IDLE_TIMEOUT),
        ),
        (
            &farm,
            "spec.connectivityVerifier.interval",
            Default::Duration(DEFAULT_VERIFIER_INTERVAL),
        ),
        (
            &farm,
            "spec.connectivityVerifier.timeout",
            Default::Duration(DEFAULT_VERIFIER_TIMEOUT),
        ),
        (
            &farm,
            "spec.connectivityVerifier.passive.maxEjectedPercent",
            Default::Number(DEFAULT_MAX_EJECTED_PERCENT.into()),
        ),
        (
            &farm,
            "spec.filters.requestRedirect.statusCode",
            Default::Number(DEFAULT_REDIRECT_STATUS.into()),
        ),
        (
            &farm,
            "spec.filters.httpsRedirect.statusCode",
            Default::Number(DEFAULT_HTTPS_REDIRECT_STATUS.into()),
        ),
        (
            &farm,
            "spec.access.rateLimit.burstMultiplier",
            Default::Number(DEFAULT_BURST_MULTIPLIER.into()),
        ),
        (
            &farm,
            "spec.access.rateLimit.statusCode",
            Default::Number(DEFAULT_RATE_LIMIT_STATUS.into()),
        ),
        (
            &farm,
            "spec.access.basicAuth.realm",
            Default::Text(DEFAULT_BASIC_AUTH_REALM),
        ),
        (
            &farm,
            "spec.access.externalAuth.method",
            Default::Text(DEFAULT_EXTERNAL_AUTH_METHOD),
        ),
        (
            &farm,
            "spec.cors.maxAge",
            Default::Number(DEFAULT_CORS_MAX_AGE.into()),
        ),
    ];
    let mut wrong = Vec::new();
    for (schema, path, want) in cases {
        let quoted = quoted_default(&description(schema, path), path);
        let same = match want {
            Default::Duration(d) => quoted.parse::<Duration>().ok() == Some(d),
            Default::Number(n) => quoted.parse::<u64>().ok() == Some(n),
            Default::Text(t) => quoted == t,
        };
        if !same {
            wrong.push(format!("{path}: the doc says {quoted:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "CRD docs disagree with config's defaults:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checker_reads_what_it_should() {
    assert_eq!(
        quoted_default("Time between probes. Defaults to `10s`.", "x"),
        "10s"
    );
    assert_eq!(
        quoted_default("Per member. Defaults to 20000.", "x"),
        "20000"
    );
    assert_ne!(
        "11s".parse::<Duration>().ok(),
        Some(DEFAULT_VERIFIER_INTERVAL)
    );
}

/// How a description states `default`: "Defaults to X" (X as JSON, backticks allowed) or
/// "`X` (default)".
fn states_default(description: &str, default: &Value) -> bool {
    let flat = description.split_whitespace().collect::<Vec<_>>().join(" ");
    let plain = match default {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let quoted = flat.split_once("Defaults to ").map(|(_, after)| {
        after
            .split(' ')
            .next()
            .unwrap()
            .trim_end_matches(['.', ',', ';'])
            .trim_matches('`')
            .to_owned()
    });
    quoted.as_deref() == Some(plain.as_str())
        || quoted.as_deref() == Some(default.to_string().as_str())
        || flat.contains(&format!("`{plain}` (default)"))
        || flat.contains(&format!("`{plain}` (the default)"))
}

/// Every field whose schema carries a default (a serde `default = "..."` function or a
/// `Default` impl) says so in its description, with the same value.
#[test]
fn every_schema_default_is_stated_in_its_description() {
    fn walk(schema: &Value, path: &str, out: &mut Vec<String>) {
        if let Some(default) = schema.get("default") {
            let description = schema["description"].as_str().unwrap_or("");
            if !states_default(description, default) {
                out.push(format!(
                    "{path}: default {default} not stated in {description:?}"
                ));
            }
        }
        for (k, v) in schema["properties"].as_object().into_iter().flatten() {
            walk(v, &format!("{path}.{k}"), out);
        }
        if let Some(items) = schema.get("items") {
            walk(items, &format!("{path}[]"), out);
        }
    }
    let mut problems = Vec::new();
    walk(
        &schema::<GatewayArray>()["properties"]["spec"],
        "GatewayArray.spec",
        &mut problems,
    );
    walk(
        &schema::<ServerFarm>()["properties"]["spec"],
        "ServerFarm.spec",
        &mut problems,
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

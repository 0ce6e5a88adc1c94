//! The monitoring contract: every metric the chart's Grafana dashboard and alert rules
//! name is one the code exports, with the labels they select and group by.
//!
//! The exported names come from the running code, not from reading its source: the
//! dataplane's `/metrics` registry and the controller's registry are built, given one
//! sample of each metric, and encoded exactly as `/metrics` encodes them. Every
//! expression of `charts/portcullis/files/portcullis-dashboard.json` (panel targets and
//! variable queries) and `charts/portcullis/files/portcullis-alerts.yaml` is then taken
//! apart into the series it selects; one naming a metric or a label that does not exist
//! fails here. (promtool checks the rule syntax and fires each alert in tests/chart.)
//!
//! No cluster needed: these are not ignored. The cluster-tier check that the chart's
//! PodMonitor selector reaches the members' metrics is `members_metrics_are_reachable_by_the_pod_monitor_selector`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use portcullis_controller::metrics::{Convergence, Metrics as ControllerMetrics, encode};
use serde_json::Value;

/// Labels a scrape adds to every series: the Prometheus Operator's target labels for a
/// PodMonitor or ServiceMonitor, plus `array`, which the chart's PodMonitor copies from
/// the member pod's `portcullis.io/array` label.
const TARGET_LABELS: &[&str] = &[
    "namespace",
    "pod",
    "container",
    "endpoint",
    "instance",
    "job",
    "service",
    "array",
];

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// The controller's registry with one sample of each metric.
fn controller_sample() -> String {
    let m = ControllerMetrics::default();
    m.reconciles.inc();
    m.error("apply");
    m.observe(std::time::Duration::from_millis(20));
    m.key_step("added");
    m.array_members(
        "shop",
        "edge",
        Convergence {
            ready: 2,
            behind_config: 1,
            behind_keyring: 0,
        },
    );
    encode(&m.registry())
}

/// Sample names (`portcullis_requests_total`, `..._bucket`, ...) and their label names,
/// from a text exposition. Fails when a metric family has no sample: the samples would
/// then not show every name a query may use.
fn series(exposition: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut families = Vec::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.push(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap();
        let labels = out.entry(line[..end].to_owned()).or_default();
        if line[end..].starts_with('{') {
            let close = line.find('}').unwrap();
            for pair in split_label_pairs(&line[end + 1..close]) {
                labels.insert(pair.split('=').next().unwrap().to_owned());
            }
        }
    }
    for family in families {
        assert!(
            out.keys().any(|name| name.starts_with(&family)),
            "metric {family} has no sample in the exposition: record one in its sample function"
        );
    }
    out
}

/// `a="x",b="y,z"` into `a="x"`, `b="y,z"`.
fn split_label_pairs(text: &str) -> Vec<&str> {
    let (mut out, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

fn exported() -> BTreeMap<String, BTreeSet<String>> {
    let dataplane = portcullis_dataplane::metrics_sample();
    let controller = controller_sample();
    let mut all = series(&dataplane);
    all.extend(series(&controller));
    all
}

/// What one PromQL expression selects: each metric with the labels its matchers name,
/// and the labels it groups or joins by.
#[derive(Debug, Default, PartialEq)]
struct Selects {
    metrics: Vec<(String, Vec<String>)>,
    grouping: Vec<String>,
}

/// Operators and aggregations: words that are not metric names even when no `(`
/// follows at once (`sum by (farm) (...)`, `a and b`).
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "limitk",
    "limit_ratio",
];
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Takes a PromQL expression apart (enough of PromQL for dashboards and alert rules:
/// selectors, functions, aggregations, binary operators, ranges, Grafana's `$variables`).
fn parse(expr: &str) -> Selects {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Selects::default();
    let mut i = 0;
    let skip_space = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = end_of_string(&chars, i);
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '$' {
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_space(i);
            if LABEL_LISTS.contains(&word.as_str()) && chars.get(next) == Some(&'(') {
                let close = next + chars[next..].iter().position(|c| *c == ')').unwrap();
                let list: String = chars[next + 1..close].iter().collect();
                out.grouping.extend(
                    list.split(',')
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned),
                );
                i = close + 1;
            } else if KEYWORDS.contains(&word.as_str()) || chars.get(next) == Some(&'(') {
                // An operator, or a function or aggregation: its arguments follow.
            } else {
                let mut labels = Vec::new();
                if chars.get(next) == Some(&'{') {
                    i = next + 1;
                    while chars[i] != '}' {
                        let at = skip_space(i);
                        let name_end = at
                            + chars[at..]
                                .iter()
                                .position(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
                                .unwrap();
                        labels.push(chars[at..name_end].iter().collect());
                        let quote =
                            name_end + chars[name_end..].iter().position(|c| *c == '"').unwrap();
                        i = skip_space(end_of_string(&chars, quote));
                        if chars[i] == ',' {
                            i += 1;
                        }
                        i = skip_space(i);
                    }
                    i += 1;
                }
                out.metrics.push((word, labels));
            }
        } else {
            i += 1;
        }
    }
    out
}

fn end_of_string(chars: &[char], open: usize) -> usize {
    let quote = chars[open];
    let mut i = open + 1;
    while chars[i] != quote {
        if chars[i] == '\\' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// Grafana's `label_values(<selector>, <label>)` as an expression and the label.
fn variable_query(query: &str) -> (String, Option<String>) {
    match query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
    {
        Some(args) => {
            let (selector, label) = args.rsplit_once(',').unwrap();
            (selector.to_owned(), Some(label.trim().to_owned()))
        }
        None => (query.to_owned(), None),
    }
}

/// Every problem with `expr` against `exported`: metrics that do not exist, and labels
/// no selected metric (or scrape) has.
fn problems(
    expr: &str,
    extra_label: Option<&str>,
    exported: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let selects = parse(expr);
    let mut out = Vec::new();
    if selects.metrics.is_empty() {
        out.push("selects no metric".to_owned());
    }
    let mut known: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
    for (metric, labels) in &selects.metrics {
        let Some(has) = exported.get(metric) else {
            out.push(format!("names {metric}, which is not exported"));
            continue;
        };
        known.extend(has.iter().map(String::as_str));
        for label in labels {
            if !has.contains(label) && !TARGET_LABELS.contains(&label.as_str()) {
                out.push(format!(
                    "selects {metric} by label {label}, which it does not have"
                ));
            }
        }
    }
    for label in selects
        .grouping
        .iter()
        .map(String::as_str)
        .chain(extra_label)
    {
        if !known.contains(label) {
            out.push(format!("groups by {label}, which none of its metrics has"));
        }
    }
    out
}

/// Every expression of the dashboard, with where it is.
fn dashboard_exprs() -> Vec<(String, String, Option<String>)> {
    let text = std::fs::read_to_string(repo_path(
        "charts/portcullis/files/portcullis-dashboard.json",
    ))
    .unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    let mut panels: Vec<&Value> = dash["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = panels.pop() {
        if let Some(inner) = panel["panels"].as_array() {
            panels.extend(inner);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?");
            out.push((
                format!("panel {title:?}"),
                target["expr"].as_str().unwrap().to_owned(),
                None,
            ));
        }
    }
    for var in dash["templating"]["list"].as_array().unwrap() {
        if var["type"] != "query" {
            continue;
        }
        let query = var["query"]["query"]
            .as_str()
            .or(var["query"].as_str())
            .unwrap();
        let (expr, label) = variable_query(query);
        out.push((format!("variable {}", var["name"]), expr, label));
    }
    out
}

/// Every alert rule's expression.
fn rule_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_path("charts/portcullis/files/portcullis-alerts.yaml"))
        .unwrap();
    let file: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut out = Vec::new();
    for group in file["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap();
            out.push((
                format!("alert {name}"),
                rule["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

#[test]
fn dashboard_and_alerts_name_only_exported_metrics_and_labels() {
    let exported = exported();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (where_, expr, label) in dashboard_exprs() {
        for p in problems(&expr, label.as_deref(), &exported) {
            failures.push(format!("dashboard {where_}: {p}\n    {expr}"));
        }
        checked += 1;
    }
    for (where_, expr) in rule_exprs() {
        for p in problems(&expr, None, &exported) {
            failures.push(format!("{where_}: {p}\n    {expr}"));
        }
        checked += 1;
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert!(
        checked >= 30,
        "only {checked} expressions found: is the parser reading the files?"
    );
}

#[test]
fn every_exported_metric_is_on_the_dashboard() {
    // What the code exports and nobody can see is a missing panel (or a metric to drop).
    let exported = exported();
    let used: BTreeSet<String> = dashboard_exprs()
        .iter()
        .flat_map(|(_, expr, _)| parse(expr).metrics)
        .map(|(m, _)| m)
        .collect();
    let family = |name: &str| {
        ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .fold(name.to_owned(), |n, suffix| {
                n.strip_suffix(suffix).map(str::to_owned).unwrap_or(n)
            })
    };
    let used_families: BTreeSet<String> = used.iter().map(|m| family(m)).collect();
    let unseen: Vec<String> = exported
        .keys()
        .map(|m| family(m))
        .filter(|f| !used_families.contains(f))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(unseen.is_empty(), "exported but on no panel: {unseen:?}");
}

#[test]
fn the_checker_catches_unknown_metrics_and_labels() {
    // Guards the guard: the parser finds what a panel selects, and the check refuses
    // names and labels that do not exist.
    let exported = exported();
    assert_eq!(
        parse(
            r#"sum by (farm, le) (rate(portcullis_upstream_latency_seconds_bucket{namespace=~"$namespace", farm="a,b"}[$__rate_interval])) > 0.5 and on (farm) up"#
        ),
        Selects {
            metrics: vec![
                (
                    "portcullis_upstream_latency_seconds_bucket".into(),
                    vec!["namespace".into(), "farm".into()]
                ),
                ("up".into(), vec![]),
            ],
            grouping: vec!["farm".into(), "le".into(), "farm".into()],
        }
    );
    let bad = |expr: &str| problems(expr, None, &exported);
    assert!(bad("rate(portcullis_requests_total[5m])").is_empty());
    assert_eq!(
        bad("rate(portcullis_request_total[5m])"),
        vec!["names portcullis_request_total, which is not exported"]
    );
    assert_eq!(
        bad("portcullis_requests"),
        vec!["names portcullis_requests, which is not exported"],
        "a counter is queried by its sample name"
    );
    assert_eq!(
        bad(r#"portcullis_requests_total{reason="x"}"#),
        vec!["selects portcullis_requests_total by label reason, which it does not have"]
    );
    assert_eq!(
        parse("count by (array) (portcullis_config_loaded)").metrics,
        vec![("portcullis_config_loaded".to_owned(), vec![])],
        "an aggregation followed by `by` is not a metric"
    );
    assert_eq!(
        bad("sum by (reason) (portcullis_requests_total)"),
        vec!["groups by reason, which none of its metrics has"]
    );
    assert_eq!(
        problems("portcullis_config_loaded", Some("hash"), &exported),
        Vec::<String>::new()
    );
    assert_eq!(
        variable_query(r#"label_values(portcullis_config_loaded{namespace=~"$namespace"}, array)"#),
        (
            r#"portcullis_config_loaded{namespace=~"$namespace"}"#.to_owned(),
            Some("array".to_owned())
        )
    );
}

#[test]
fn exported_labels_hold_no_secrets() {
    // Metric labels name farms, endpoint identities, hashes and key ids: nothing that
    // could carry a header, a cookie, a client address or key material.
    let allowed = [
        "farm",
        "status",
        "endpoint",
        "outcome",
        "hash",
        "key_id",
        "state",
        "reason",
        "le",
        "step",
        "array_namespace",
        "array",
        "kind",
    ];
    for (metric, labels) in exported() {
        for label in labels {
            assert!(
                allowed.contains(&label.as_str()),
                "{metric} has label {label}: review it for secrets, then allow it here"
            );
        }
    }
}

/// The chart's PodMonitor as `helm template` renders it (the cluster has no Prometheus
/// Operator CRDs to apply it to): its pod selector, port name and path.
fn pod_monitor() -> anyhow::Result<(String, String, String)> {
    let out = std::process::Command::new("helm")
        .args(["template", "portcullis"])
        .arg(repo_path("charts/portcullis"))
        .args([
            "--set",
            "podMonitor.enabled=true",
            "--show-only",
            "templates/podmonitor.yaml",
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pm: serde_yaml::Value = serde_yaml::from_slice(&out.stdout)?;
    let selector = pm["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .ok_or_else(|| anyhow::anyhow!("PodMonitor without matchLabels"))?
        .iter()
        .map(|(k, v)| format!("{}={}", k.as_str().unwrap(), v.as_str().unwrap()))
        .collect::<Vec<_>>()
        .join(",");
    let endpoint = &pm["spec"]["podMetricsEndpoints"][0];
    let field = |f: &str| {
        endpoint[f]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("PodMetricsEndpoint without {f}"))
    };
    Ok((selector, field("port")?, field("path")?))
}

#[tokio::test]
#[ignore = "needs a cluster: run e2e/cluster/e2e.sh or e2e/kind.sh"]
async fn members_metrics_are_reachable_by_the_pod_monitor_selector() {
    use anyhow::ensure;
    use k8s_openapi::api::core::v1::Pod;
    use kube::ResourceExt;
    use kube::api::ListParams;
    use portcullis_e2e::{Ctx, fixtures, http, owned, with_temp_ns};

    with_temp_ns("monitoring", |ctx: Ctx| async move {
        let (selector, port_name, path) = pod_monitor()?;
        fixtures::create_demo_backend(&ctx, "demo", 1).await?;
        let array = fixtures::array("edge", 2, |_| {});
        let farm = fixtures::farm("site", "edge", "site.e2e.test", "demo", |_| {});
        fixtures::apply(&ctx, &array, &[farm]).await?;
        let ready = fixtures::wait_array_ready(&ctx, "edge", 2).await?;
        let hash = ready.status.and_then(|s| s.config_hash).unwrap_or_default();
        let members: Vec<String> = owned::ready_members(&ctx, "edge")
            .await?
            .iter()
            .map(|p| p.name_any())
            .collect();

        // What Prometheus would discover: the API server's own label selection.
        let selected: Vec<Pod> = ctx
            .api::<Pod>()
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .into_iter()
            .filter(owned::pod_ready)
            .collect();
        let mut names: Vec<String> = selected.iter().map(|p| p.name_any()).collect();
        names.sort();
        ensure!(
            names == members,
            "the PodMonitor selector {selector} selects {names:?}, the members are {members:?}"
        );
        for pod in &selected {
            let name = pod.name_any();
            let port = pod
                .spec
                .iter()
                .flat_map(|s| &s.containers)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(port_name.as_str()))
                .map(|p| u16::try_from(p.container_port))
                .ok_or_else(|| anyhow::anyhow!("{name} has no port named {port_name}"))??;
            let annotations = pod.annotations();
            ensure!(
                annotations.get("prometheus.io/port") == Some(&port.to_string())
                    && annotations.get("prometheus.io/path") == Some(&path),
                "{name}'s scrape annotations do not point at {port}{path}: {annotations:?}"
            );
            let pf = ctx
                .kubectl()
                .port_forward(&format!("pod/{name}"), port)
                .await?;
            let metrics = http::get(pf.addr, "localhost", &path, None).await?;
            ensure!(
                metrics.status == 200,
                "{name} {path} answered {}",
                metrics.status
            );
            for line in [
                format!("portcullis_config_loaded{{hash=\"{hash}\"}} 1"),
                format!(
                    "portcullis_farm_endpoints_usable{{farm=\"{}/site\"}} 1",
                    ctx.ns
                ),
            ] {
                ensure!(
                    metrics.body.contains(&line),
                    "{name}: {line} missing from\n{}",
                    metrics.body
                );
            }
        }
        Ok(())
    })
    .await;
}

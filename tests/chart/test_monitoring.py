"""What the chart gives Prometheus and Grafana: the members' PodMonitor, the dashboard
ConfigMap and the PrometheusRule, and the member pods' scrape annotations.

The PodMonitor is checked against the member Deployments the controller's builders
write (controller/tests/fixtures/*/deployment.yaml, compared with the builders' output by
`cargo test --test builders`), so a change to the member labels or the admin port on
either side fails here. The metric names the dashboard and the alerts use are checked
against what the code exports by e2e/tests/monitoring.rs (`cargo test`); the alert rules
are checked with promtool here.

Run: python3 -m pytest -q tests/chart
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import helm_python as helm
import pytest
import yaml

from test_chart import CHART, NAMESPACE, REPO, VALUE_SETS, find, manifests, one

ALERTS_FILE = CHART / "files" / "portcullis-alerts.yaml"
DASHBOARD_FILE = CHART / "files" / "portcullis-dashboard.json"
PROMTOOL_TESTS = Path(__file__).with_name("alerts_test.yaml")
MEMBER_DEPLOYMENTS = sorted((REPO / "controller" / "tests" / "fixtures").glob("*/deployment.yaml"))
MONITORING = VALUE_SETS["monitoring"]


@pytest.fixture(scope="module")
def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def alert_file_rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS_FILE.read_text())["groups"] for r in g["rules"]]


# ---------------------------------------------------------------------------------------
# Members' metrics: the PodMonitor and the scrape annotations


def member_pods() -> list[tuple[str, dict]]:
    assert MEMBER_DEPLOYMENTS, "no member Deployment fixtures"
    return [(p.parent.name, yaml.safe_load(p.read_text())["spec"]["template"]) for p in MEMBER_DEPLOYMENTS]


def prometheus_label(pod_label: str) -> str:
    """The `__meta_kubernetes_pod_label_*` name Prometheus gives a pod label."""
    return "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", pod_label)


def test_monitoring_objects_are_off_by_default(chart: helm.Chart) -> None:
    docs = manifests(chart)
    assert find(docs, "PodMonitor") == [] and find(docs, "PrometheusRule") == []
    assert [d for d in find(docs, "ConfigMap") if "grafana_dashboard" in d["metadata"]["labels"]] == []


def test_pod_monitor_selects_the_members_the_controller_creates(chart: helm.Chart) -> None:
    pm = one(manifests(chart, MONITORING), "PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["metadata"]["namespace"] == NAMESPACE
    assert pm["metadata"]["labels"]["release"] == "prom"
    assert pm["spec"]["namespaceSelector"] == {"any": True}, "arrays live in any namespace"
    selector = pm["spec"]["selector"]
    assert set(selector) == {"matchLabels"}
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["interval"] == "15s"
    # Member metrics carry `endpoint` (the endpoint identity): without honorLabels the
    # operator's `endpoint` target label (the port name) would replace it.
    assert endpoint["honorLabels"] is True
    (relabel,) = endpoint["relabelings"]
    assert relabel["targetLabel"] == "array"
    for case, pod in member_pods():
        labels = pod["metadata"]["labels"]
        for key, value in selector["matchLabels"].items():
            assert labels.get(key) == value, f"{case}: member pods lack {key}={value}: {labels}"
        ports = {p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        assert endpoint["port"] in ports, f"{case}: no container port named {endpoint['port']}: {ports}"
        (source,) = relabel["sourceLabels"]
        array_label = next(k for k in labels if prometheus_label(k) == source)
        assert labels[array_label] == yaml.safe_load(
            (REPO / "controller" / "tests" / "fixtures" / case / "deployment.yaml").read_text()
        )["metadata"]["name"], f"{case}: {array_label} does not name the array"


def test_pod_monitor_follows_watch_namespace(chart: helm.Chart) -> None:
    pm = one(manifests(chart, {**MONITORING, "watchNamespace": "team-a"}), "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}


def test_pod_monitor_matches_no_controller_pod(chart: helm.Chart) -> None:
    docs = manifests(chart, MONITORING)
    selector = one(docs, "PodMonitor")["spec"]["selector"]["matchLabels"]
    controller = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert any(controller.get(k) != v for k, v in selector.items())


def test_scrape_annotations_point_at_the_members_metrics(chart: helm.Chart) -> None:
    (endpoint,) = one(manifests(chart, MONITORING), "PodMonitor")["spec"]["podMetricsEndpoints"]
    scraped = []
    for case, pod in member_pods():
        annotations = pod["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") != "true":
            continue
        scraped.append(case)
        ports = {p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        assert annotations["prometheus.io/port"] == str(ports[endpoint["port"]]), case
        assert annotations["prometheus.io/path"] == endpoint["path"], case
    # On by default (minimal-http); an array's own pod annotations turn it off
    # (https-pod-knobs sets prometheus.io/scrape: "false").
    assert "minimal-http" in scraped and "https-pod-knobs" not in scraped, scraped


# ---------------------------------------------------------------------------------------
# The Grafana dashboard


def test_dashboard_config_map(chart: helm.Chart) -> None:
    cms = [d for d in find(manifests(chart, MONITORING), "ConfigMap") if d["metadata"]["name"] == "portcullis-dashboard"]
    (cm,) = cms
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "grafana"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Portcullis"}
    assert list(cm["data"]) == ["portcullis.json"]
    assert json.loads(cm["data"]["portcullis.json"]) == json.loads(DASHBOARD_FILE.read_text())
    default_ns = one(manifests(chart, {"grafanaDashboard": {"enabled": True}}), "ConfigMap", "portcullis-dashboard")
    assert default_ns["metadata"]["namespace"] == NAMESPACE


def dashboard_panels() -> list[dict]:
    out, stack = [], list(json.loads(DASHBOARD_FILE.read_text())["panels"])
    while stack:
        panel = stack.pop(0)
        out.append(panel)
        stack.extend(panel.get("panels", []))
    return out


def test_dashboard_is_well_formed() -> None:
    dash = json.loads(DASHBOARD_FILE.read_text())
    assert dash["uid"] == "portcullis-arrays" and dash["title"] == "Portcullis"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"] == p["datasource"], p["title"]


def test_dashboard_covers_what_operators_ask_for() -> None:
    """The issue's list: traffic, errors and latency per farm; opened vs reused per
    identity; ejections and verifier state; cookie rejections by reason; reloads;
    config and key convergence."""
    exprs = " ".join(t["expr"] for p in dashboard_panels() for t in p.get("targets", []))
    for metric in [
        "portcullis_requests_total",
        "portcullis_upstream_latency_seconds_bucket",
        "portcullis_pool_connections_opened_total",
        "portcullis_pool_connections_reused_total",
        "portcullis_farm_endpoints_ejected",
        "portcullis_verifier_healthy",
        "portcullis_session_cookie_rejected_total",
        "portcullis_config_reloads_total",
        "portcullis_config_loaded",
        "portcullis_session_key_loaded",
        "portcullis_controller_array_members_behind",
    ]:
        assert metric in exprs, metric
    assert 'status=~"5.."' in exprs and "by (farm, reason)" in exprs


# ---------------------------------------------------------------------------------------
# The alerts


def test_prometheus_rule_serves_the_rule_file(chart: helm.Chart) -> None:
    rule = one(manifests(chart, {"prometheusRule": {"enabled": True}}), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == NAMESPACE
    assert rule["spec"] == yaml.safe_load(ALERTS_FILE.read_text())


def test_prometheus_rule_disables_and_overrides_by_alert_name(chart: helm.Chart) -> None:
    rule = one(manifests(chart, MONITORING), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prom"
    rendered = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    shipped = {r["alert"]: r for r in alert_file_rules()}
    assert set(rendered) == set(shipped) - {"PortcullisConnectionChurn"}
    behind = rendered["PortcullisMembersBehindConfig"]
    assert behind["for"] == "30m" and behind["labels"] == {"severity": "critical"}
    assert behind["expr"] == shipped["PortcullisMembersBehindConfig"]["expr"]
    assert behind["annotations"] == shipped["PortcullisMembersBehindConfig"]["annotations"]
    for name in set(rendered) - {"PortcullisMembersBehindConfig"}:
        assert rendered[name] == shipped[name], name


@pytest.mark.parametrize("values", [{"disabled": ["PortcullisTypo"]}, {"overrides": {"PortcullisTypo": {"for": "1m"}}}])
def test_prometheus_rule_refuses_unknown_alert_names(chart: helm.Chart, values: dict) -> None:
    with pytest.raises(helm.HelmRenderError, match="PortcullisTypo is not a Portcullis alert"):
        manifests(chart, {"prometheusRule": {"enabled": True, **values}})


def test_every_alert_has_a_runbook_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    headings = {m.group(1) for m in re.finditer(r"^#### (Portcullis[A-Za-z]+)$", readme, re.M)}
    names = [r["alert"] for r in alert_file_rules()]
    assert len(names) == len(set(names))
    for rule in alert_file_rules():
        name = rule["alert"]
        assert name in headings, f"README has no `#### {name}` runbook"
        url = rule["annotations"]["runbook_url"]
        assert url == f"https://github.com/portcullis-io/portcullis/blob/main/README.md#{name.lower()}", name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    assert headings == set(names), "a runbook for an alert that does not exist"


def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    if os.environ.get("PORTCULLIS_REQUIRE_PROMTOOL") == "1":
        pytest.fail("promtool is not installed and PORTCULLIS_REQUIRE_PROMTOOL=1 (apt-get install prometheus)")
    pytest.skip("!!! promtool is not installed: the alert rules were NOT checked with promtool (apt-get install prometheus)")


@pytest.mark.parametrize("values", ["shipped", "monitoring"])
def test_promtool_accepts_the_rendered_rules(chart: helm.Chart, values: str, tmp_path: Path) -> None:
    tool = promtool()
    rule_values = {"prometheusRule": {"enabled": True}} if values == "shipped" else MONITORING
    rule = one(manifests(chart, rule_values), "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    out = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_fire_each_alert() -> None:
    tool = promtool()
    tested = set(re.findall(r"alertname: (\w+)", PROMTOOL_TESTS.read_text()))
    assert tested == {r["alert"] for r in alert_file_rules()}, "every alert has a promtool test"
    out = subprocess.run(
        [tool, "test", "rules", PROMTOOL_TESTS.name],
        cwd=PROMTOOL_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr

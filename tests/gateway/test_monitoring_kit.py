"""The operator kit in deploy/ against the gateway's real metrics.

``deploy/prometheus-rules.yaml`` and ``deploy/grafana-dashboard.json`` are only useful if every expression
selects series the gateway really exports, with labels and label values it really sets, and uses each series
the way its type allows. Everything here is read from the code: the metric names and label sets from a fresh
``Metrics`` registry rendered as Prometheus would scrape it (so ``_total``/``_bucket``/``_created`` are the
exposition's own names), label values from the enums and literals the code sets them from. Every expression
is parsed by a real PromQL parser (``promql-parser``, the Python binding of GreptimeDB's Rust parser: unknown
functions and syntax errors fail there), then walked to check:

- each selector names an exported series and only labels that series has (plus Prometheus's target labels);
- ``by``/``without``/``on``/``ignoring`` name labels present in the sub-expression, and vector operands
  without ``on`` have the same labels (otherwise nothing would match and an alert could never fire);
- counters (``_total``, histogram ``_sum``/``_count``) appear only inside rate()/increase()/irate(); histogram
  buckets only as ``histogram_quantile(q, sum by (le, ...) (rate(..._bucket[..])))``; gauges never in rate();
- ``{{ $labels.x }}`` in annotations and ``{{x}}`` in legends name labels the expression's result keeps.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser as pq
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from detectors.registry import REGISTRY as DETECTORS
from fingerprint.match import Verdict
from gateway.config.policy import PolicyConfig
from gateway.embedding import _Metrics as EmbeddingMetrics
from gateway.routing.canary import Phase
from gateway.telemetry.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus-rules.yaml"
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
PROMTOOL_TESTS = Path(__file__).resolve().parent / "monitoring" / "rules.test.yaml"

SEVERITIES = frozenset({"critical", "warning", "info"})
TARGET_LABELS = frozenset({"job", "instance"})  # added by Prometheus to every scraped series
RATE_FUNCS = frozenset({"rate", "increase", "irate"})
GRAFANA_BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
RULE_KEYS = frozenset({"alert", "expr", "for", "labels", "annotations", "keep_firing_for"})


@dataclass(frozen=True, slots=True)
class Series:
    family: str  # the metric's name without suffixes, e.g. ipgate_requests
    kind: str  # counter (incl. histogram _sum/_count), bucket, gauge, created
    labels: frozenset[str]


def exported_series() -> dict[str, Series]:
    """Every series name a scrape of the gateway can show -> what it is, from the real registry."""
    m = Metrics(CollectorRegistry())
    m.set_tls_certificate_expiry(0.0)  # made on first use (absent without TLS): shown by a gateway with TLS
    for c in [*vars(m).values(), *vars(EmbeddingMetrics(m)).values()]:
        if isinstance(c, MetricWrapperBase) and c._labelnames:
            c.labels(*["x"] * len(c._labelnames))  # a child, so the labelled metric shows its samples
    families = list(text_string_to_metric_families(generate_latest(m.registry).decode()))
    typed = {f.name: f.type for f in families}
    out: dict[str, Series] = {}
    for f in families:
        for s in f.samples:
            base = s.name.removesuffix("_created")
            if s.name.endswith("_created") and typed.get(base) in ("counter", "histogram"):
                kind, family = "created", base
            elif f.type == "histogram":
                kind, family = ("bucket" if s.name.endswith("_bucket") else "counter"), f.name
            else:
                kind, family = ("counter" if f.type == "counter" else "gauge"), f.name
            out[s.name] = Series(family, kind, frozenset(s.labels))
    out["up"] = Series("up", "gauge", frozenset())  # written by Prometheus for every scrape target
    return out


def _literals(path: str, pattern: str) -> frozenset[str]:
    found = frozenset(re.findall(pattern, (ROOT / path).read_text(encoding="utf-8")))
    assert found, f"{path}: pattern {pattern!r} no longer finds the label values (the code moved)"
    return found


def known_values() -> dict[tuple[str, str], frozenset[str]]:
    """(metric family, label) -> every value the code sets, for the labels whose values are enumerable.

    Where the code keeps no enum (canary events, alert outcomes, detector failure sites), the literals it
    passes are read from its source; a pattern that finds nothing fails, so a refactor cannot empty a set."""
    detectors = (frozenset(DETECTORS)
                 | _literals("gateway/detection.py", r'(?:_unscored\(principal|_failed\()\s*,?\s*"(\w+)"')
                 | _literals("gateway/admit.py", r'detector="(\w+)"'))
    return {
        ("ipgate_canary_state", "state"): frozenset(p.value for p in Phase),
        ("ipgate_canary_events", "event"):
            _literals("gateway/routing/canary.py", r'CanaryEvent\(now, "(\w+)"'),
        ("ipgate_alerts", "outcome"): _literals("gateway/alerts/dispatcher.py", r'_count\([^,]+, "(\w+)"'),
        ("ipgate_detection_tier", "tier"): frozenset(t.name for t in PolicyConfig().tiers),
        ("ipgate_fingerprint_checks", "verdict"): frozenset(typing.get_args(Verdict)),
        ("ipgate_detector_errors", "detector"): detectors,
        ("ipgate_jwks_fetches", "outcome"): _literals("gateway/auth/jwks.py", r'outcome="(\w+)"'),
        ("ipgate_auth_cache", "result"): _literals("gateway/auth/authenticator.py", r'result="(\w+)"'),
        ("ipgate_tokens", "type"): _literals("gateway/account.py", r'"tokens_total", model, "(\w+)"'),
    }


Labels = frozenset[str] | None  # None: a scalar


class Checker:
    """Parses one PromQL expression and lists what is wrong with it against the exported series."""

    def __init__(self, series: dict[str, Series], known: dict[tuple[str, str], frozenset[str]]) -> None:
        self.series, self.known = series, known
        self.used: set[str] = set()
        self.problems: list[str] = []

    def check(self, expr: str) -> tuple[Labels, list[str]]:
        self.problems = []
        try:
            ast = pq.parse(expr)
        except ValueError as e:
            return None, [f"does not parse: {e}"]
        result = self._labels(ast, ())
        return result, self.problems

    def _labels(self, node: Any, up: tuple[Any, ...]) -> Labels:
        down = (*up, node)
        if isinstance(node, pq.VectorSelector):
            return self._selector(node, up)
        if isinstance(node, pq.MatrixSelector):
            return self._labels(node.vector_selector, down)
        if isinstance(node, (pq.ParenExpr, pq.UnaryExpr, pq.SubqueryExpr)):
            return self._labels(node.expr, down)
        if isinstance(node, (pq.NumberLiteral, pq.StringLiteral)):
            return None
        if isinstance(node, pq.Call):
            return self._call(node, down)
        if isinstance(node, pq.AggregateExpr):
            return self._aggregate(node, down)
        if isinstance(node, pq.BinaryExpr):
            return self._binary(node, down)
        raise AssertionError(f"unhandled PromQL node {type(node).__name__}")

    def _selector(self, node: pq.VectorSelector, up: tuple[Any, ...]) -> Labels:
        name = node.name
        s = self.series.get(name or "")
        if s is None:
            self.problems.append(f"{name}: no such series is exported")
            return frozenset()
        self.used.add(s.family)
        have = s.labels | TARGET_LABELS
        assert not node.matchers.or_matchers, "'or' matchers are not checked here"
        for m in node.matchers.matchers:
            if m.name not in have:
                self.problems.append(f"{name}: no label {m.name!r} (it has {sorted(s.labels)})")
            else:
                self._value(s.family, m)
        in_rate = (len(up) >= 2 and isinstance(up[-1], pq.MatrixSelector) and isinstance(up[-2], pq.Call)
                   and up[-2].func.name in RATE_FUNCS)
        if s.kind == "created":
            self.problems.append(f"{name}: a _created timestamp, not a value to alert or chart on")
        elif s.kind in ("counter", "bucket") and not in_rate:
            self.problems.append(f"{name}: a counter used outside rate()/increase()/irate()")
        elif s.kind == "gauge" and in_rate:
            self.problems.append(f"{name}: a gauge inside {up[-2].func.name}()")
        if s.kind == "bucket" and in_rate:
            self._bucket_context(name or "", up[:-2])
        return have

    def _bucket_context(self, name: str, up: tuple[Any, ...]) -> None:
        i = len(up) - 1
        while i >= 0 and isinstance(up[i], (pq.AggregateExpr, pq.ParenExpr)):
            agg = up[i]
            if isinstance(agg, pq.AggregateExpr):
                mod = agg.modifier
                keeps_le = mod is not None and (
                    ("le" in mod.labels) == (mod.type == pq.AggModifierType.By))
                if str(agg.op) != "sum" or not keeps_le:
                    self.problems.append(f"{name}: buckets must be summed keeping 'le' (sum by (le, ...))")
            i -= 1
        if i < 0 or not (isinstance(up[i], pq.Call) and up[i].func.name == "histogram_quantile"):
            self.problems.append(f"{name}: histogram buckets used outside histogram_quantile()")

    def _value(self, family: str, m: pq.Matcher) -> None:
        allowed = self.known.get((family, m.name))
        if allowed is None or m.value == "":
            return
        if m.op in (pq.MatchOp.Equal, pq.MatchOp.NotEqual):
            wanted = [m.value]
        elif re.fullmatch(r"[\w|]+", m.value):
            wanted = m.value.split("|")
        else:  # a real regex (a Grafana variable's .*): it must match something the code sets
            rx = re.compile(m.value)
            if m.op == pq.MatchOp.Re and not any(rx.fullmatch(v) for v in allowed):
                self.problems.append(f"{family}{{{m.name}=~{m.value!r}}} matches no value the code sets")
            return
        for v in wanted:
            if v not in allowed:
                self.problems.append(f"{family}: {m.name}={v!r} is never set "
                                     f"(the code sets {sorted(allowed)})")

    def _call(self, node: pq.Call, down: tuple[Any, ...]) -> Labels:
        args = [self._labels(a, down) for a in node.args]
        name = node.func.name
        if name == "histogram_quantile":
            inner = args[1]
            if inner is None or "le" not in inner:
                self.problems.append("histogram_quantile() over a vector without 'le'")
                return frozenset()
            return inner - {"le"}
        if name == "vector":
            return frozenset()
        if name in ("scalar", "time"):
            return None
        vectors = [a for a in args if a is not None]
        return vectors[0] if vectors else None

    def _aggregate(self, node: pq.AggregateExpr, down: tuple[Any, ...]) -> Labels:
        inner = self._labels(node.expr, down) or frozenset()
        if node.param is not None:
            self._labels(node.param, down)
        mod = node.modifier
        if mod is None:
            return frozenset()
        missing = set(mod.labels) - inner
        if missing:
            self.problems.append(f"{node.op} by/without {sorted(missing)}: the aggregated series lack them")
        return frozenset(mod.labels) if mod.type == pq.AggModifierType.By else inner - set(mod.labels)

    def _binary(self, node: pq.BinaryExpr, down: tuple[Any, ...]) -> Labels:
        lhs, rhs = self._labels(node.lhs, down), self._labels(node.rhs, down)
        if lhs is None or rhs is None:
            return rhs if lhs is None else lhs
        op = str(node.op)
        matching = node.modifier.matching if node.modifier is not None else None
        if matching is None:
            if op != "or" and lhs != rhs:
                self.problems.append(f"'{op}' between vectors labelled {sorted(lhs)} and {sorted(rhs)} "
                                     "without on(...): nothing would match")
            return lhs | rhs if op == "or" else lhs
        on = set(matching.labels)
        if matching.type == pq.LabelModifierType.Include and not on <= (lhs & rhs):
            self.problems.append(f"'{op}' on {sorted(on - (lhs & rhs))}: not a label of both sides")
        if op in ("and", "unless"):
            return lhs
        if op == "or":
            return lhs | rhs
        group = set(node.modifier.group_labels or []) if node.modifier is not None else set()
        card = node.modifier.card if node.modifier is not None else None
        if card == pq.VectorMatchCardinality.ManyToOne:
            return lhs | group
        if card == pq.VectorMatchCardinality.OneToMany:
            return rhs | group
        return frozenset(on) if matching.type == pq.LabelModifierType.Include else lhs - on


# --- the files ----------------------------------------------------------------------------------------------

def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    assert isinstance(doc, dict) and isinstance(doc.get("groups"), list) and doc["groups"]
    rules: list[dict[str, Any]] = []
    for g in doc["groups"]:
        assert set(g) == {"name", "rules"}, f"group keys {sorted(g)}"
        rules.extend(g["rules"])
    return rules


def _dashboard() -> dict[str, Any]:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def _targets(dash: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, expr with Grafana variables substituted, legendFormat) for every dashboard query."""
    variables = {v["name"] for v in dash["templating"]["list"]}

    def substitute(title: str, expr: str) -> str:
        def one(m: re.Match[str]) -> str:
            var = m.group(1) or m.group(2)
            if var in GRAFANA_BUILTINS:
                return GRAFANA_BUILTINS[var]
            assert var in variables, f"panel {title!r}: undefined variable ${var}"
            return ".*"  # what an "All" selection of a multi-value variable becomes
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)

    return [(p["title"], substitute(p["title"], t["expr"]), t.get("legendFormat", ""))
            for p in dash["panels"] for t in p.get("targets", [])]


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.fixture(scope="module")
def series() -> dict[str, Series]:
    return exported_series()


@pytest.fixture(scope="module")
def known() -> dict[tuple[str, str], frozenset[str]]:
    return known_values()


# --- the checker itself can fail ----------------------------------------------------------------------------

@pytest.mark.parametrize(("expr", "problem"), [
    ("ipgate_request_total", "no such series"),
    ("sum(rate(ipgate_requests_total[5m])", "does not parse"),
    ("rated(ipgate_requests_total[5m])", "does not parse"),
    ("ipgate_requests_total > 0", "counter used outside"),
    ("rate(ipgate_store_degraded[5m])", "a gauge inside rate"),
    ("ipgate_alerts_created", "_created"),
    ('sum(rate(ipgate_requests_total{tenant="a"}[5m]))', "no label 'tenant'"),
    ("sum by (tenant) (rate(ipgate_requests_total[5m]))", "lack them"),
    ("histogram_quantile(0.99, sum by (model) (rate(ipgate_request_duration_seconds_bucket[5m])))",
     "keeping 'le'"),
    ("sum by (le) (rate(ipgate_overhead_seconds_bucket[5m]))", "outside histogram_quantile"),
    ('ipgate_canary_state{state="rolled_back"} == 1', "never set"),
    ('increase(ipgate_canary_events_total{event=~"abort|promote"}[1h])', "never set"),
    ("sum by (model) (rate(ipgate_requests_total[5m])) / sum(rate(ipgate_requests_total[5m]))",
     "nothing would match"),
    ("ipgate_store_degraded unless on (model) ipgate_backend_healthy", "not a label of both sides"),
])
def test_the_checker_catches(series: dict[str, Series], known: dict[tuple[str, str], frozenset[str]],
                             expr: str, problem: str) -> None:
    _, problems = Checker(series, known).check(expr)
    assert any(problem in p for p in problems), f"{expr!r}: expected {problem!r}, got {problems}"


def test_the_registry_is_read_as_scraped(series: dict[str, Series]) -> None:
    assert series["ipgate_requests_total"] == Series(
        "ipgate_requests", "counter", frozenset({"route", "model", "backend", "status"}))
    assert series["ipgate_overhead_seconds_bucket"].kind == "bucket"
    assert series["ipgate_overhead_seconds_count"].kind == "counter"
    assert series["ipgate_store_degraded"].kind == "gauge"
    assert "ipgate_requests" not in series  # a counter is scraped as _total only


# --- the alerting rules -------------------------------------------------------------------------------------

def test_alert_rules_are_well_formed() -> None:
    rules = _rules()
    names = [r.get("alert") for r in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    for r in rules:
        name = r.get("alert")
        assert isinstance(name, str) and re.fullmatch(r"Ipgate[A-Z]\w+", name), f"alert name {name!r}"
        assert set(r) <= RULE_KEYS, f"{name}: unknown keys {sorted(set(r) - RULE_KEYS)}"
        assert isinstance(r.get("expr"), str) and r["expr"].strip(), f"{name}: no expr"
        duration = r.get("for")
        assert isinstance(duration, str) and re.fullmatch(r"\d+[smhdw]", duration), f"{name}: for: {duration}"
        pq.parse_duration(duration)
        severity = r.get("labels", {}).get("severity")
        assert severity in SEVERITIES, f"{name}: severity {severity!r} not one of {sorted(SEVERITIES)}"
        notes = r.get("annotations", {})
        for key in ("summary", "description", "runbook"):
            assert isinstance(notes.get(key), str) and notes[key].strip(), f"{name}: no annotations.{key}"


def test_alert_expressions_use_real_metrics_labels_and_types(
        series: dict[str, Series], known: dict[tuple[str, str], frozenset[str]]) -> None:
    checker = Checker(series, known)
    problems = []
    for r in _rules():
        result, found = checker.check(r["expr"])
        problems += [f"{r['alert']}: {p}" for p in found]
        for text in r["annotations"].values():
            for label in re.findall(r"\$labels\.(\w+)", text):
                if result is None or label not in result:
                    problems.append(f"{r['alert']}: annotation uses $labels.{label}; the result has "
                                    f"{sorted(result or [])}")
    assert not problems, "\n".join(problems)
    # what the operator must act on (the brief of this kit): each needs at least one alert watching it
    must_watch = {"ipgate_store_degraded", "ipgate_backend_healthy", "ipgate_backend_ejections",
                  "ipgate_canary_state", "ipgate_fingerprint_match", "ipgate_detector_errors",
                  "ipgate_detector_state_errors", "ipgate_alerts", "ipgate_audit_write_failures",
                  "ipgate_requests", "ipgate_overhead_seconds", "ipgate_detection_tier",
                  "ipgate_watermark_skipped"}
    assert must_watch <= checker.used, f"no alert watches {sorted(must_watch - checker.used)}"


def test_runbook_links_resolve() -> None:
    problems = []
    for r in _rules():
        text = " ".join(r["annotations"].values())
        for path, anchor in re.findall(r"\b((?:docs/)?[\w.-]+\.md)(?:#([\w-]+))?", text):
            doc = ROOT / path
            if not doc.is_file():
                problems.append(f"{r['alert']}: {path} does not exist")
                continue
            if anchor:
                heads = {_slug(h) for h in re.findall(r"^#+ (.+)$", doc.read_text(encoding="utf-8"), re.M)}
                if anchor not in heads:
                    problems.append(f"{r['alert']}: {path} has no heading #{anchor}")
    assert not problems, "\n".join(problems)


def test_every_alert_has_a_promtool_case_that_fires() -> None:
    cases = yaml.safe_load(PROMTOOL_TESTS.read_text(encoding="utf-8"))
    firing = {c["alertname"] for t in cases["tests"] for c in t["alert_rule_test"] if c["exp_alerts"]}
    alerts = {r["alert"] for r in _rules()}
    assert alerts <= firing, f"no promtool case shows these alerts firing: {sorted(alerts - firing)}"
    assert firing <= alerts, f"promtool cases for alerts that do not exist: {sorted(firing - alerts)}"


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:  # Debian's `prometheus` package ships it (scripts/install-system-deps.sh)
        pytest.skip("promtool is not installed")
    return path


def test_promtool_accepts_the_rules() -> None:
    run = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.slow
def test_alerts_fire_on_synthetic_series_in_promtool(tmp_path: Path) -> None:
    """Prometheus's own rule engine evaluates every alert against series that must and must not fire it.
    promtool compares annotations verbatim, so the copy under test leaves them out (their templates are
    checked by ``promtool check rules`` above); everything that decides firing is the file's own."""
    promtool = _promtool()
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    shutil.copy(PROMTOOL_TESTS, tmp_path / "rules.test.yaml")
    run = subprocess.run([promtool, "test", "rules", "rules.test.yaml"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stdout + run.stderr


# --- the dashboard ------------------------------------------------------------------------------------------

def test_dashboard_is_importable() -> None:
    dash = _dashboard()
    assert dash["schemaVersion"] >= 36
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    assert dash["__inputs"][0]["pluginId"] == "prometheus"
    ds = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, f"panel {p['title']!r} outside the 24-column grid"
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["datasource"] == ds, f"panel {p['title']!r}: datasource {p['datasource']}"
        assert p["targets"], f"panel {p['title']!r} has no query"
        for t in p["targets"]:
            assert t["datasource"] == ds and t["expr"].strip(), f"panel {p['title']!r}: target {t}"
    rows = [p["title"].lower() for p in dash["panels"] if p["type"] == "row"]
    for topic in ("traffic", "auth", "detection", "watermark", "canary", "fingerprint", "store"):
        assert any(topic in r for r in rows), f"no dashboard row about {topic}"


def test_dashboard_queries_use_real_metrics_and_labels(
        series: dict[str, Series], known: dict[tuple[str, str], frozenset[str]]) -> None:
    dash = _dashboard()
    checker = Checker(series, known)
    problems = []
    for title, expr, legend in _targets(dash):
        result, found = checker.check(expr)
        problems += [f"panel {title!r}: {p}" for p in found]
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
            if result is None or label not in result:
                problems.append(f"panel {title!r}: legend {{{{{label}}}}} is not a label of the result "
                                f"{sorted(result or [])}")
    for v in dash["templating"]["list"]:
        m = re.fullmatch(r"label_values\((\w+), (\w+)\)", v["query"]["query"])
        assert m, f"variable {v['name']}: query {v['query']}"
        s = series.get(m.group(1))
        if s is None or m.group(2) not in s.labels | TARGET_LABELS:
            problems.append(f"variable {v['name']}: {m.group(1)} has no label {m.group(2)}")
    assert not problems, "\n".join(problems)
    every = {s.family for s in series.values() if s.kind != "created"} - {"up"}  # (Prometheus's, not ours)
    assert every <= checker.used, f"metrics without a dashboard panel: {sorted(every - checker.used)}"

"""ops/grafana: the dashboard queries only what ops/metrics.py exports, and compose provisions it."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from _ops_support import OPS, exported_series, label_problems, metrics_in

DASHBOARD = OPS / "grafana" / "leadpulse.json"
PROVISIONING = OPS / "grafana" / "provisioning"


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows nest their panels
    return out


def _targets(dashboard: dict) -> list[tuple[str, dict]]:
    return [(panel["title"], t) for panel in _panels(dashboard) for t in panel.get("targets", [])]


def test_every_queried_metric_is_exported(dashboard):
    series = exported_series()
    queried: set[str] = set()
    for title, target in _targets(dashboard):
        names = metrics_in(target["expr"])
        assert names, f"panel {title!r} queries no leadpulse metric: {target['expr']}"
        queried |= names
    missing = queried - series.keys()
    assert not missing, f"dashboard queries metrics that ops/metrics.py does not export: {sorted(missing)}"


def test_queries_use_real_label_names(dashboard):
    series = exported_series()
    for title, target in _targets(dashboard):
        assert not label_problems(target["expr"], series), (title, label_problems(target["expr"], series))
        known = {"job", "instance"}
        for name in metrics_in(target["expr"]):
            known |= series[name]
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")):
            assert label in known, f"panel {title!r} legend uses {label!r}, not a label of its series"


def test_core_signals_have_panels(dashboard):
    exprs = "\n".join(t["expr"] for _, t in _targets(dashboard))
    expected = [
        r"sum by \(source\) \(rate\(leadpulse_events_received_total",
        r"sum by \(reason\) \(rate\(leadpulse_dlq_total",
        r"leadpulse_events_rejected_total",
        r"sum by \(type\) \(rate\(leadpulse_triggers_total",
        r"histogram_quantile\(0\.5, sum by \(le\) \(rate\(leadpulse_event_to_trigger_seconds_bucket",
        r"histogram_quantile\(0\.99, sum by \(le\) \(rate\(leadpulse_event_to_trigger_seconds_bucket",
        r"leadpulse_consumer_lag",
        r"sum by \(sink, outcome\) \(rate\(leadpulse_sink_deliveries_total",
        r"leadpulse_sink_retries_total",
        r"leadpulse_batch_duration_seconds_bucket",
        r"leadpulse_batch_size",
        r"leadpulse_contacts",
        r"leadpulse_http_requests_total",
        r"leadpulse_http_request_duration_seconds_bucket",
        r"leadpulse_rules_info",
    ]
    for pattern in expected:
        assert re.search(pattern, exprs), f"no panel queries {pattern}"


def test_every_exported_metric_family_appears_on_the_dashboard(dashboard):
    queried = set().union(*(metrics_in(t["expr"]) for _, t in _targets(dashboard)))
    families = {re.sub(r"_(total|bucket|sum|count|created)$", "", name) for name in exported_series()}
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in queried}
    assert families <= shown, f"exported but never shown: {sorted(families - shown)}"


def test_layout_is_valid(dashboard):
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps another"
                cells.add((x, y))


def test_datasource_is_a_variable_so_the_json_imports_anywhere(dashboard):
    (var,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert var["query"] == "prometheus"
    for title, target in _targets(dashboard):
        assert target["datasource"] == {"type": "prometheus", "uid": f"${{{var['name']}}}"}, title
    for panel in _panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == f"${{{var['name']}}}", panel["title"]


def test_rate_windows_follow_grafana_rate_interval(dashboard):
    for title, target in _targets(dashboard):
        for window in re.findall(r"\[([^\]]+)\]", target["expr"]):
            assert window == "$__rate_interval", f"panel {title!r} hard-codes a rate window [{window}]"


def test_provisioning_points_grafana_at_prometheus_and_the_dashboard():
    (datasource,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    assert datasource["isDefault"] is True
    scrape = yaml.safe_load((OPS / "prometheus" / "prometheus.yml").read_text())["global"]["scrape_interval"]
    assert datasource["jsonData"]["timeInterval"] == scrape

    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "leadpulse.yml").read_text())["providers"]
    compose = yaml.safe_load((OPS / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    dashboard_mount = next(m for m in mounts if m.startswith("./grafana/leadpulse.json:"))
    container_path = dashboard_mount.split(":")[1]
    assert container_path.rsplit("/", 1)[0] == provider["options"]["path"]

"""ops/prometheus: alert rules checked and unit-tested with promtool, scrape config valid.

promtool comes from Debian's `prometheus` package; the session fixture installs it
on a fresh CI machine (see _ops_support.require_prometheus_binary).
"""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from _ops_support import OPS, exported_series, label_problems, metrics_in, require_prometheus_binary

ALERTS = OPS / "prometheus" / "alerts.yml"
ALERTS_TEST = OPS / "prometheus" / "alerts_test.yml"
PROMETHEUS_YML = OPS / "prometheus" / "prometheus.yml"
OPS_README = OPS / "README.md"

REQUIRED_ALERTS = {
    "LeadpulseIngestStopped",
    "LeadpulseIngestAbsent",
    "LeadpulseDLQRateHigh",
    "LeadpulseTriggerLatencyHigh",
    "LeadpulseConsumerLagGrowing",
    "LeadpulseSinkFailing",
    "LeadpulseSLABreachesPilingUp",
}


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_prometheus_binary("promtool")


def _promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    # promtool resolves rule_files relative to the file it reads, so run from there.
    return subprocess.run(
        [promtool, *args], cwd=OPS / "prometheus", capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120
    )


def _rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_promtool_check_rules(promtool):
    result = _promtool(promtool, "check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool):
    result = _promtool(promtool, "test", "rules", ALERTS_TEST.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_config(promtool):
    result = _promtool(promtool, "check", "config", PROMETHEUS_YML.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_rule(promtool, tmp_path):
    """The check is real: a rule with a syntax error fails it."""
    broken = tmp_path / "broken.yml"
    broken.write_text("groups:\n- name: x\n  rules:\n  - alert: Broken\n    expr: sum(rate(leadpulse_dlq_total[5m])\n")
    result = subprocess.run([promtool, "check", "rules", str(broken)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0


def test_required_alerts_exist():
    names = {rule["alert"] for rule in _rules()}
    assert REQUIRED_ALERTS <= names, REQUIRED_ALERTS - names


def test_alerts_query_only_exported_metrics_and_labels():
    series = exported_series()
    for rule in _rules():
        queried = metrics_in(rule["expr"])
        assert queried or "up{" in rule["expr"], f"{rule['alert']} queries no leadpulse metric"
        missing = queried - series.keys()
        assert not missing, f"{rule['alert']} queries metrics ops/metrics.py does not export: {missing}"
        assert not label_problems(rule["expr"], series), (rule["alert"], label_problems(rule["expr"], series))


def test_sla_alert_counts_sla_breach_triggers():
    (rule,) = [r for r in _rules() if r["alert"] == "LeadpulseSLABreachesPilingUp"]
    assert re.search(r'leadpulse_triggers_total\{type="sla_breach"\}', rule["expr"])


def test_every_alert_is_routable_and_documented():
    readme = OPS_README.read_text().lower() if OPS_README.exists() else ""
    for rule in _rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        assert annotations["runbook"] == f"ops/README.md#{rule['alert'].lower()}"
        # Each runbook link lands on a heading named after the alert.
        assert f"### {rule['alert'].lower()}" in readme, f"ops/README.md has no runbook section for {rule['alert']}"


def test_every_alert_has_firing_and_quiet_unit_tests():
    """alerts_test.yml covers each alert both ways, so no rule is left untested."""
    doc = yaml.safe_load(ALERTS_TEST.read_text())
    assert doc["rule_files"] == [ALERTS.name]
    fired, quiet = set(), set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in _rules()}
    assert names <= fired, f"never shown firing: {names - fired}"
    assert names <= quiet, f"never shown staying quiet: {names - quiet}"


def test_scrape_config_targets_compose_services_and_loads_the_rules():
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["leadpulse-collector"]["static_configs"][0]["targets"] == ["collector:8088"]
    (worker_sd,) = jobs["leadpulse-worker"]["dns_sd_configs"]
    assert worker_sd["names"] == ["worker"] and worker_sd["port"] == 8089
    # LeadpulseTargetDown matches job=~"leadpulse.*": every leadpulse job must too.
    assert all(name.startswith("leadpulse") for name in jobs if name != "prometheus")

"""Shared helpers for the operations tests: the Prometheus tools and the metric catalog.

Used by tests/unit/ops and tests/integration/test_prometheus_rules.py (loaded by path
there, since tests/ has no conftest to share fixtures through).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

from ops.metrics import Metrics

REPO = Path(__file__).resolve().parents[3]
OPS = REPO / "ops"

# Labels Prometheus adds itself (target labels) or that histograms carry.
SERVER_LABELS = frozenset({"job", "instance", "le"})

_APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "APT_LISTCHANGES_FRONTEND": "none"}
_install_attempted: dict[str, str] = {}


def require_prometheus_binary(name: str) -> str:
    """Path of ``promtool``/``prometheus``; installs Debian's package if it is missing.

    CI runs on a fresh machine as root without stdin, so the tools are installed
    here rather than by hand. Skips (with the reason) only when installing is not
    possible: not root, no apt-get, or apt failing.
    """
    found = shutil.which(name)
    if found:
        return found
    if "prometheus" not in _install_attempted:
        _install_attempted["prometheus"] = _install_prometheus_package()
    found = shutil.which(name)
    if found:
        return found
    pytest.skip(f"{name} is not on PATH and could not be installed: {_install_attempted['prometheus']}")


def _install_prometheus_package() -> str:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not running as root, so apt-get install prometheus is not possible"
    if not shutil.which("apt-get"):
        return "no apt-get on this machine (install Prometheus >= 2.42 so promtool is on PATH)"
    env = {**os.environ, **_APT_ENV}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"]
    result = _run(install, env)
    if result.returncode != 0:
        # Fresh images ship without package lists: refresh them once and retry.
        update = _run(["apt-get", "update"], env)
        if update.returncode != 0:
            return f"apt-get update failed: {update.stderr.strip()[-500:]}"
        result = _run(install, env)
    if result.returncode != 0:
        return f"apt-get install prometheus failed: {result.stderr.strip()[-500:]}"
    return "installed"


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(cmd, 1, "", str(exc))


def exported_series() -> dict[str, frozenset[str]]:
    """Every series name ``Metrics()`` exports, with its label names.

    Labelled metrics only export samples once a child exists, so one child of each
    is created first; histograms then show ``_bucket``/``_sum``/``_count`` and
    counters ``_total``, exactly as a scrape sees them.
    """
    metrics = Metrics()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase) and value._labelnames:
            value.labels(*["x"] * len(value._labelnames))
    series: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in series.items()}


_METRIC = re.compile(r"\b(leadpulse_[A-Za-z0-9_]+)")
_SELECTOR = re.compile(r"\b(leadpulse_[A-Za-z0-9_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def metrics_in(expr: str) -> set[str]:
    return set(_METRIC.findall(expr))


def label_problems(expr: str, series: dict[str, frozenset[str]]) -> list[str]:
    """Label names in matchers and grouping clauses that no queried metric has."""
    problems = []
    for name, matchers in _SELECTOR.findall(expr):
        for label in _MATCHER.findall(matchers):
            if label not in series.get(name, frozenset()) | SERVER_LABELS:
                problems.append(f"{name} has no label {label!r}")
    known = set(SERVER_LABELS)
    for name in metrics_in(expr):
        known |= series.get(name, frozenset())
    for group in _GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in group.split(","))):
            if label not in known:
                problems.append(f"grouping label {label!r} is on none of {sorted(metrics_in(expr))}")
    return problems

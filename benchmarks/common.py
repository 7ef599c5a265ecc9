"""Small helpers shared by the benchmark steps: progress lines, child processes, metrics scraping."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)")


class Progress:
    """One status line per step on stderr, rewritten in place on a terminal."""

    def __init__(self, stream: Any = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last = 0.0

    def step(self, name: str, text: str, force: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if not force and now - self._last < (0.25 if self.tty else 2.0):
            return
        self._last = now
        line = f"[{name}] {text}"
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self, name: str, text: str) -> None:
        if self.quiet:
            return
        line = f"[{name}] {text}"
        self.stream.write(("\r\033[K" if self.tty else "") + line + "\n")
        self.stream.flush()
        self._last = 0.0


def scrape(url: str, timeout: float = 2.0) -> dict[str, float]:
    """Prometheus text -> {name or name{labels}: value}; label sets summed under the bare name too."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _METRIC_LINE.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2), float(m.group(3))
        if labels:
            values[name + labels] = value
        values[name] = values.get(name, 0.0) + value if labels else value
    return values


def try_scrape(url: str) -> dict[str, float] | None:
    try:
        return scrape(url)
    except Exception:  # noqa: BLE001 - not up yet
        return None


def child_env(**leadpulse: Any) -> dict[str, str]:
    # LEADPULSE_NATIVE is kept: it chooses the code that runs (rules/native.py), not a setting under test.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADPULSE_") or k == "LEADPULSE_NATIVE"}
    for key, value in leadpulse.items():
        env[f"LEADPULSE_{key.upper()}"] = str(value)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=str(Path(__file__).resolve().parent.parent))
    finally:
        log.close()


def stop(process: subprocess.Popen | None, timeout: float = 15.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(q / 100.0 * (len(sorted_values) - 1)))))
    return sorted_values[k]

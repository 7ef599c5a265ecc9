"""``leadpulse up``: embedded services when no URL is set, then a collector and a worker.

The supervisor starts the Tansu broker and redis-server as children (only those not
configured), creates the topics, runs ``leadpulse collector`` and ``leadpulse worker``
as child processes (two processes use both cores), waits until the collector
answers /readyz and the worker has partitions, and on Ctrl-C or SIGTERM stops them
in reverse order: worker and collector first (they finish their batch and flush),
then Redis and the broker.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.embedded import EmbeddedError, EmbeddedServices, free_port
from ops.settings import settings_env
from streams.topics import ensure_topics


class StartupError(RuntimeError):
    """One readable line saying which part did not come up and where its log is."""


def child_env(settings: Any, broker_url: str, redis_url: str, **overrides: Any) -> dict[str, str]:
    """The environment of a ``leadpulse collector|worker`` child: the full settings plus ``overrides``."""
    env = {
        **os.environ,
        **settings_env(settings),
        "LEADPULSE_BROKER_URL": broker_url,
        "LEADPULSE_REDIS_URL": redis_url,
    }
    env.update({f"LEADPULSE_{name.upper()}": str(value) for name, value in overrides.items()})
    return env


def spawn(role: str, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start ``leadpulse <role>`` as a child writing stdout and stderr to ``log_path`` (appended)."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "ops.cli", role], env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )


def stop_process(process: subprocess.Popen, timeout: float = 20.0) -> int:
    """SIGTERM (the process finishes its batch, flushes and commits), SIGKILL after ``timeout``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def http_json(url: str, timeout: float = 2.0) -> tuple[int, dict]:
    """GET ``url`` -> (status, JSON body); (0, {}) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}
    except (urllib.error.URLError, OSError, ValueError):
        return 0, {}


def wait_ready(checks: dict[str, tuple[str, subprocess.Popen]], timeout: float, log_dir: Any) -> None:
    """Poll each ``role -> (readyz url, process)`` until it answers 200; fail early if the process exits."""
    pending = dict(checks)
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while pending:
        for role, (url, process) in list(pending.items()):
            if process.poll() is not None:
                raise StartupError(f"{role} exited with code {process.returncode}; see {Path(log_dir) / (role + '.log')}")
            status, body = http_json(url, timeout=1)
            if status == 200:
                del pending[role]
            else:
                last[role] = body.get("problems") or status
        if not pending:
            return
        if time.monotonic() > deadline:
            detail = "; ".join(f"{role}: {last.get(role)}" for role in pending)
            raise StartupError(f"{', '.join(pending)} not ready after {timeout:.0f}s ({detail}); see the logs in {log_dir}")
        time.sleep(0.2)


@dataclass
class Stack:
    """Embedded services (when no URL is set), one collector and ``workers`` worker processes.

    Workers share the consumer group (``app_id``) and split the partitions; each has
    its own /metrics port and data directory. Logs go to ``<log_dir>/<role>.log``
    (``worker.log``, ``worker-2.log``, ...).
    """

    settings: Any
    services: EmbeddedServices | None = None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    http_port: int = 0
    worker_port: int = 0
    workers: int = 1
    worker_ports: dict[str, int] = field(default_factory=dict)
    log_dir: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def worker_url(self, role: str = "worker") -> str:
        return f"http://127.0.0.1:{self.worker_ports[role]}"

    def start(self, *, log_dir: Any = None, ready_timeout: float = 60.0) -> "Stack":
        settings = self.settings
        data_dir = settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.services = EmbeddedServices(data_dir, settings.broker_url, settings.redis_url).start()
        try:
            asyncio.run(
                ensure_topics(
                    self.services.broker_url,
                    [settings.events_topic, settings.triggers_topic, settings.dlq_topic],
                    settings.partitions,
                )
            )
            self.http_port = settings.http_port or free_port()
            self.log_dir = Path(log_dir or data_dir)
            for n in range(1, self.workers + 1):
                role = "worker" if n == 1 else f"worker-{n}"
                port = settings.worker_http_port + n - 1 if settings.worker_http_port else free_port()
                self.worker_ports[role] = port
                self.start_worker(role)
            self.worker_port = self.worker_ports["worker"]
            env = child_env(settings, self.services.broker_url, self.services.redis_url,
                            http_port=self.http_port, worker_http_port=self.worker_port, data_dir=data_dir)
            self.processes["collector"] = spawn("collector", env, self.log_dir / "collector.log")
            checks = {"collector": (f"{self.base_url}/readyz", self.processes["collector"])}
            checks.update({role: (f"{self.worker_url(role)}/readyz", self.processes[role]) for role in self.worker_ports})
            wait_ready(checks, ready_timeout, self.log_dir)
        except BaseException:
            self.stop()
            raise
        return self

    def start_worker(self, role: str = "worker") -> subprocess.Popen:
        """(Re)start one worker child; it gets its own port and data directory, the group is shared."""
        assert self.services is not None and self.log_dir is not None
        settings = self.settings
        data_dir = settings.data_dir if role == "worker" else settings.data_dir / role
        data_dir.mkdir(parents=True, exist_ok=True)
        env = child_env(settings, self.services.broker_url, self.services.redis_url,
                        http_port=self.http_port, worker_http_port=self.worker_ports[role], data_dir=data_dir)
        self.processes[role] = process = spawn("worker", env, self.log_dir / f"{role}.log")
        return process

    def problems(self) -> list[str]:
        dead = [f"{role} exited ({p.returncode})" for role, p in self.processes.items() if p.poll() is not None]
        return dead + [f"{name} exited" for name in (self.services.dead() if self.services else [])]

    def stop(self) -> None:
        # The collector first (no new events), then the workers finish their batches.
        order = ["collector"] + [role for role in self.processes if role != "collector"]
        for role in order:
            process = self.processes.get(role)
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            stop_process(process, timeout=20)
        self.processes.clear()
        if self.services is not None:
            self.services.stop()


def run_up(settings: Any) -> int:
    try:
        stack = Stack(settings).start()
    except (EmbeddedError, StartupError) as exc:
        print(f"leadpulse up: {exc}", file=sys.stderr)
        return 1
    print(f"leadpulse is up: collector and live page at {stack.base_url}/  (metrics: {stack.base_url}/metrics)")
    print(f"broker {stack.services.broker_url}, redis {stack.services.redis_url}; Ctrl-C stops everything")
    return _wait_for_signal(stack)


def _wait_for_signal(stack: Stack, poll: Any = None) -> int:
    stopping = {"flag": False}

    def on_signal(signum: int, frame: Any) -> None:
        stopping["flag"] = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stopping["flag"]:
            if poll is not None:
                poll()
            problems = stack.problems()
            if problems:
                print(f"leadpulse: stopping because {', '.join(problems)}", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        print("stopping leadpulse ...", file=sys.stderr)
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

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
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from ops.embedded import EmbeddedError, EmbeddedServices, free_port
from ops.settings import settings_env
from streams.topics import ensure_topics


class StartupError(RuntimeError):
    """One readable line saying which part did not come up and where its log is."""


@dataclass
class Stack:
    settings: Any
    services: EmbeddedServices | None = None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    http_port: int = 0
    worker_port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

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
            self.worker_port = settings.worker_http_port or free_port()
            env = {
                **os.environ,
                **settings_env(settings),
                "LEADPULSE_BROKER_URL": self.services.broker_url,
                "LEADPULSE_REDIS_URL": self.services.redis_url,
                "LEADPULSE_HTTP_PORT": str(self.http_port),
                "LEADPULSE_WORKER_HTTP_PORT": str(self.worker_port),
                "LEADPULSE_DATA_DIR": str(data_dir),
            }
            log_dir = log_dir or data_dir
            for role in ("worker", "collector"):
                log = open(log_dir / f"{role}.log", "ab")
                self.processes[role] = subprocess.Popen(
                    [sys.executable, "-m", "ops.cli", role], env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
                log.close()
            self._wait_ready(ready_timeout, log_dir)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float, log_dir: Any) -> None:
        checks = {"collector": f"{self.base_url}/readyz", "worker": f"http://127.0.0.1:{self.worker_port}/readyz"}
        pending = dict(checks)
        deadline = time.monotonic() + timeout
        while pending:
            for role, process in self.processes.items():
                if process.poll() is not None:
                    raise StartupError(f"{role} exited with code {process.returncode}; see {log_dir / (role + '.log')}")
            for role, url in list(pending.items()):
                try:
                    with urllib.request.urlopen(url, timeout=1) as response:
                        if response.status == 200:
                            del pending[role]
                except (urllib.error.URLError, OSError):
                    pass
            if time.monotonic() > deadline:
                raise StartupError(f"{', '.join(pending)} not ready after {timeout:.0f}s; see the logs in {log_dir}")
            time.sleep(0.2)

    def problems(self) -> list[str]:
        dead = [f"{role} exited ({p.returncode})" for role, p in self.processes.items() if p.poll() is not None]
        return dead + [f"{name} exited" for name in (self.services.dead() if self.services else [])]

    def stop(self) -> None:
        for role in ("collector", "worker"):
            process = self.processes.get(role)
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
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

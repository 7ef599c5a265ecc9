"""Run faust workers as child processes over a pre-produced topic and measure them.

- :func:`run_baseline`: ``benchmarks.baseline_worker`` (the naive agent); it reports its
  own progress on stdout.
- :func:`run_leadpulse`: one or more real ``leadpulse worker`` processes (``ops.worker``:
  ``streams.app.ScoreApp`` with the Redis read side) in a fresh consumer group on the
  pre-produced topic. Progress is read from each worker's own ``/metrics``:
  ``leadpulse_batch_size_sum`` counts every event the score agent finished (the batch's
  triggers acknowledged by the broker, Redis written, table/changelog updated), so
  "events done" includes duplicates and dead letters, as the ceiling does. The rate
  is measured between the first scrape that shows progress and the scrape that shows
  all events done, so start-up and the consumer-group join are not counted (the
  ceiling does not pay them either). Scrapes run every 0.2 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import Progress, child_env, spawn, stop, tail, try_scrape
from ops.embedded import free_port


def run_baseline(broker: str, topics: dict[str, str], partitions: int, expected: int, max_seconds: float,
                 work_dir: Path, progress: Progress) -> dict[str, Any]:
    app_id = f"bench-base-{uuid.uuid4().hex[:8]}"
    data_dir = work_dir / app_id
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "benchmarks.baseline_worker", "--broker", broker, "--topic", topics["events"],
            "--triggers", topics["triggers"], "--partitions", str(partitions), "--app-id", app_id,
            "--expected", str(expected), "--max-seconds", str(max_seconds), "--data-dir", str(data_dir)]
    log_path = work_dir / "baseline.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                                env=child_env(), cwd=str(Path(__file__).resolve().parent.parent))
    last: dict[str, Any] = {}
    deadline = time.monotonic() + max_seconds + 90
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            try:
                last = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            progress.step("baseline", f"{last['events']:,} events" + ("" if last.get("first") else " (joining group)"))
            if last.get("done") or time.monotonic() > deadline:
                break
    finally:
        stop(proc, timeout=5)
    first, end = last.get("first"), last.get("last")
    events = int(last.get("events") or 0)
    if not first or not end or not events:
        raise RuntimeError(f"baseline worker measured nothing; see {log_path}: {tail(log_path)}")
    seconds = end - first
    eps = events / seconds
    progress.done("baseline", f"{events:,} events in {seconds:.1f} s -> {eps:,.0f} events/s "
                              f"(naive faust agent, table write per event)")
    return {"events": events, "seconds": round(seconds, 2), "events_per_s": round(eps),
            "triggers": int(last.get("triggers") or 0), "capped_at_s": max_seconds, "app_id": app_id}


class WorkerGroup:
    """N ``leadpulse worker`` children in one consumer group."""

    def __init__(self, broker: str, redis: str, prefix: str, partitions: int, work_dir: Path, n: int = 1,
                 app_id: str | None = None, extra_env: dict[str, Any] | None = None) -> None:
        self.app_id = app_id or f"bench-lp-{uuid.uuid4().hex[:8]}"
        self.ports = [free_port() for _ in range(n)]
        self.work_dir = work_dir
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.env_base = dict(broker_url=broker, redis_url=redis, topic_prefix=prefix, app_id=self.app_id,
                             partitions=partitions, log_level="WARNING", **(extra_env or {}))

    def start(self) -> "WorkerGroup":
        for i, port in enumerate(self.ports):
            data_dir = self.work_dir / f"{self.app_id}-{i}"
            data_dir.mkdir(parents=True, exist_ok=True)
            env = child_env(**self.env_base, worker_http_port=port, data_dir=data_dir)
            log_path = self.work_dir / f"{self.app_id}-{i}.log"
            self.logs.append(log_path)
            self.procs.append(spawn([sys.executable, "-m", "ops.cli", "worker"], env, log_path))
        return self

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def check(self) -> None:
        for proc, log in zip(self.procs, self.logs):
            if proc.poll() is not None:
                raise RuntimeError(f"leadpulse worker exited with {proc.returncode}; see {log}: {tail(log)}")

    def scrape(self) -> dict[str, float] | None:
        total: dict[str, float] = {}
        for port in self.ports:
            values = try_scrape(f"http://127.0.0.1:{port}/metrics")
            if values is None:
                return None
            for key, value in values.items():
                total[key] = total.get(key, 0.0) + value
        return total

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            stop(proc, timeout=15)


def measure_group(group: WorkerGroup, expected: int, progress: Progress, label: str,
                  timeout_s: float = 900.0, on_first: Any = None, stall_s: float = 60.0) -> dict[str, Any]:
    """Scrape until ``expected`` events are done; rate from the first to the last progressing scrape.

    When one scrape interval covers the whole run (small ``--quick`` counts), the rate
    starts at the last scrape that showed nothing done instead: slower by up to one
    interval, never zero.
    """
    started = time.monotonic()
    idle_at: float | None = None  # the last scrape that showed nothing done
    first: tuple[float, float] | None = None
    last: tuple[float, float] | None = None
    samples: list[tuple[float, float]] = []
    values: dict[str, float] = {}
    while True:
        group.check()
        now = time.perf_counter()
        scraped = group.scrape()
        if scraped is not None:
            values = scraped
            done = values.get("leadpulse_batch_size_sum", 0.0)
            if done == 0:
                idle_at = now
            if done > 0 and first is None:
                first = (idle_at, 0.0) if done >= expected and idle_at is not None else (now, done)
                if on_first is not None:
                    on_first()
            if first is not None and (last is None or done > last[1]):
                last = (now, done)
                samples.append((now - first[0], done))
            if first is None:
                progress.step(label, "starting worker(s), joining the consumer group ...")
            else:
                rate = (done - first[1]) / (now - first[0]) if now > first[0] else 0
                progress.step(label, f"{done:,.0f}/{expected:,} events ({done / expected:.0%}) ~{rate:,.0f} events/s")
            if done >= expected:
                break
        if last is not None and time.perf_counter() - last[0] > stall_s:
            raise RuntimeError(f"{label}: no progress for {stall_s:.0f} s at {last[1]:,.0f}/{expected:,} events; "
                               f"see {group.logs}")
        if first is None and time.monotonic() - started > stall_s * 2:
            raise RuntimeError(f"{label}: no event done {stall_s * 2:.0f} s after start; see {group.logs}")
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"{label}: only {values.get('leadpulse_batch_size_sum', 0):,.0f}/{expected:,} events "
                               f"after {timeout_s:.0f} s; see {group.logs}")
        time.sleep(0.2)
    assert first is not None and last is not None
    seconds = last[0] - first[0]
    events = last[1] - first[1]
    eps = events / seconds if seconds > 0 else 0.0
    batches = values.get("leadpulse_batch_size_count", 0.0)
    result = {
        "events": int(values.get("leadpulse_batch_size_sum", 0)),
        "events_timed": int(events),
        "seconds": round(seconds, 2),
        "events_per_s": round(eps),
        "scored": int(values.get("leadpulse_events_scored_total", 0)),
        "duplicates": int(values.get("leadpulse_events_duplicate_total", 0)),
        "dlq": int(values.get("leadpulse_dlq_total", 0)),
        "triggers": int(values.get("leadpulse_triggers_total", 0)),
        "batches": int(batches),
        "mean_batch_events": round(values.get("leadpulse_batch_size_sum", 0) / batches, 1) if batches else 0,
        "mean_batch_ms": round(values.get("leadpulse_batch_duration_seconds_sum", 0) / batches * 1000, 2) if batches else 0,
        "busy_share": round(values.get("leadpulse_batch_duration_seconds_sum", 0) / seconds, 2) if seconds else 0,
        "contacts": int(values.get("leadpulse_contacts", 0)),
        "rate_by_decile": _deciles(samples, expected),
        "workers": len(group.procs),
        "app_id": group.app_id,
    }
    progress.done(label, f"{result['events']:,} events, {result['triggers']:,} triggers, {seconds:.1f} s -> "
                         f"{eps:,.0f} events/s ({len(group.procs)} worker(s); mean batch {result['mean_batch_events']} "
                         f"events in {result['mean_batch_ms']} ms)")
    return result


def _deciles(samples: list[tuple[float, float]], expected: int) -> list[int]:
    """events/s within each tenth of the events (shows a rate that decays as state grows)."""
    rates: list[int] = []
    prev_t, prev_n = samples[0] if samples else (0.0, 0.0)
    for tenth in range(1, 11):
        goal = expected * tenth / 10
        hit = next(((t, n) for t, n in samples if n >= goal), None)
        if hit is None:
            break
        t, n = hit
        rates.append(round((n - prev_n) / (t - prev_t)) if t > prev_t else 0)
        prev_t, prev_n = t, n
    return rates


def run_leadpulse(broker: str, redis: str, prefix: str, partitions: int, expected: int, work_dir: Path,
                  progress: Progress, n: int = 1, label: str = "leadpulse", profile: Path | None = None,
                  profile_rate: int = 100, extra_env: dict[str, Any] | None = None) -> dict[str, Any]:
    group = WorkerGroup(broker, redis, prefix, partitions, work_dir, n=n, extra_env=extra_env).start()
    spy: subprocess.Popen | None = None

    def start_profile() -> None:
        nonlocal spy
        if profile is None:
            return
        py_spy = Path(sys.executable).with_name("py-spy")
        argv = [str(py_spy if py_spy.exists() else "py-spy"), "record", "--pid", str(group.pids[0]), "--format", "raw", "--threads",
                "--rate", str(profile_rate), "--output", str(profile), "--nonblocking"]
        spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(work_dir / "py-spy.log", "ab"))

    try:
        result = measure_group(group, expected, progress, label, on_first=start_profile)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
        group.stop()
    if profile is not None:
        result["profile"] = str(profile)
    return result


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False

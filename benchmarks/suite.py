"""``leadpulse bench``: the whole benchmark suite in one run (issue 8, items 1 and 4).

Steps, all on one broker (embedded Tansu unless LEADPULSE_BROKER_URL is set) and one
Redis (embedded unless LEADPULSE_REDIS_URL is set):

1. generate the workload (``benchmarks.workload``) and pre-produce it through the
   collector's producer (``connectors.intake.KafkaIntake``: envelopes per partition);
2. a. ceiling: raw aiokafka consume + orjson decode of that topic;
   b. baseline: a naive faust agent (table write per event), capped in time;
   c. leadpulse: one real ``leadpulse worker`` (``streams.app.ScoreApp`` + Redis), end to
      end, measured from its own /metrics (optionally profiled with py-spy);
   g. scale: two ``leadpulse worker`` processes in one group (2 partitions each);
   d. latency: collector + worker, open-loop HTTP load at fixed rates, event -> trigger;
   e./f. state bytes per contact (table record, Redis) and rescore after a model change;
3. print the table and write the JSON (``--json FILE``).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks import latency as latency_step
from benchmarks import state as state_step
from benchmarks.common import Progress
from benchmarks.throughput import ceiling, preproduce
from benchmarks.workers import run_baseline, run_leadpulse
from benchmarks.workload import WorkloadSpec, generate

STEPS = ("ceiling", "baseline", "leadpulse", "scale", "latency", "state")


@dataclass
class BenchConfig:
    quick: bool = False
    events: int = 1_000_000
    known: int = 1_000_000
    partitions: int = 4
    baseline_seconds: float = 60.0
    rates: list[float] = field(default_factory=lambda: [1_000.0, 5_000.0, 10_000.0])
    rate_seconds: float = 60.0
    latency_shared_stack: bool = False  # all rates on one stack (default: a fresh stack per rate)
    state_sizes: list[int] = field(default_factory=lambda: [100_000, 1_000_000])
    state_distinct: int = 100_000
    skip: set[str] = field(default_factory=set)
    profile: Path | None = None
    profile_rate: int = 100
    produce_rate: float = 50_000.0
    zipf: float = 1.0
    seed: int = 42
    work_dir: Path | None = None
    keep: bool = False

    @classmethod
    def quick_defaults(cls) -> "BenchConfig":
        return cls(quick=True, events=30_000, known=100_000, baseline_seconds=4.0, rates=[1_000.0, 5_000.0, 10_000.0],
                   rate_seconds=2.0, state_sizes=[1_000, 5_000], state_distinct=1_000,
                   latency_shared_stack=True)  # one stack start instead of three keeps --quick under a minute


def _git_commit() -> str:
    if os.environ.get("BENCH_COMMIT"):  # set when running from an exported snapshot (see README)
        return os.environ["BENCH_COMMIT"]
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        commit = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "streams", "rules", "connectors",
                                "ops"], capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def run(config: BenchConfig, broker_url: str = "", redis_url: str = "", progress: Progress | None = None) -> dict[str, Any]:
    from ops.embedded import EmbeddedServices

    progress = progress or Progress()
    started = time.monotonic()
    work_dir = config.work_dir or Path(tempfile.mkdtemp(prefix="leadpulse-bench-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    own_redis = not redis_url
    services = EmbeddedServices(work_dir, broker_url, redis_url).start()
    broker, redis = services.broker_url, services.redis_url
    progress.done("setup", f"broker {broker} ({'embedded Tansu' if not broker_url else 'configured'}), "
                           f"redis {redis} ({'embedded' if own_redis else 'configured'}), work dir {work_dir}")
    result: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git_commit(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "broker": "tansu (embedded)" if not broker_url else "configured",
        "native": _native_status(),
        "quick": config.quick,
        "config": {"events": config.events, "known_contacts": config.known, "partitions": config.partitions,
                   "baseline_seconds": config.baseline_seconds, "rates": config.rates,
                   "rate_seconds": config.rate_seconds, "latency_shared_stack": config.latency_shared_stack,
                   "state_sizes": config.state_sizes,
                   "produce_rate": config.produce_rate},
    }
    try:
        prefix = f"bench-{uuid.uuid4().hex[:6]}"
        topics = {"events": f"{prefix}-events", "triggers": f"{prefix}-triggers", "dlq": f"{prefix}-dlq"}
        spec = WorkloadSpec(events=config.events, known=config.known, seed=config.seed, run=prefix, zipf_s=config.zipf,
                            anonymous=max(1_000, config.known // 5))
        workload = generate(spec, progress=lambda n, total: progress.step("generate", f"{n:,}/{total:,} events"))
        expected = len(workload.events)
        result["workload"] = {"events": expected, "contacts": workload.contacts, "known_contacts": workload.known_contacts,
                              "duplicates": workload.duplicates, "out_of_order": workload.out_of_order,
                              "hot_contacts": workload.hot_contacts, "generate_s": round(workload.generate_s, 1),
                              "zipf_s": config.zipf, "top_contact_events": workload.top_contact_events}
        progress.done("generate", f"{expected:,} events over {workload.contacts:,} contacts "
                                  f"({workload.duplicates:,} duplicates, {workload.out_of_order:,} out of order, "
                                  f"{workload.hot_contacts} hot prospects; busiest contact {workload.top_contact_events:,} events, "
                                  f"Zipf s={config.zipf:g}) in {workload.generate_s:.1f} s")
        result["produce"] = asyncio.run(preproduce(broker, topics, config.partitions, workload.events, progress,
                                                   rate=config.produce_rate or None))
        del workload
        if "ceiling" not in config.skip:
            result["ceiling"] = asyncio.run(ceiling(broker, topics["events"], expected, progress))
            result["produce"]["events_per_record"] = result["ceiling"]["events_per_record"]
        if "baseline" not in config.skip:
            result["baseline"] = run_baseline(broker, topics, config.partitions, expected, config.baseline_seconds,
                                              work_dir, progress)
        if "leadpulse" not in config.skip:
            result["leadpulse"] = run_leadpulse(broker, redis, prefix, config.partitions, expected, work_dir, progress,
                                                profile=config.profile, profile_rate=config.profile_rate)
            if config.profile is not None and config.profile.exists():
                from benchmarks.profile import format_summary, summarise

                summary = summarise(config.profile, seconds=result["leadpulse"]["seconds"], rate=config.profile_rate)
                result["profile"] = summary
                progress.done("profile", "\n" + format_summary(summary, 15))
        if "scale" not in config.skip:
            result["scale"] = run_leadpulse(broker, redis, prefix, config.partitions, expected, work_dir, progress,
                                            n=2, label="scale 2 workers")
        if "latency" not in config.skip:
            result["latency"] = asyncio.run(latency_step.measure(broker, redis, config.partitions, config.rates,
                                                                 config.rate_seconds, work_dir, progress,
                                                                 settle_s=5.0 if config.quick else 20.0,
                                                                 shared_stack=config.latency_shared_stack))
        if "state" not in config.skip:
            result["state"] = asyncio.run(state_step.measure(redis, config.state_sizes, config.state_distinct, progress,
                                                             flush_redis=own_redis))
    finally:
        services.stop()
        if not config.keep and config.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    _headline(result)
    return result


def _headline(result: dict[str, Any]) -> None:
    """The flat keys the issue asks for (and the smoke test checks)."""
    get = lambda *path: _dig(result, *path)  # noqa: E731
    ceiling_eps = get("ceiling", "events_per_s")
    baseline_eps = get("baseline", "events_per_s")
    leadpulse_eps = get("leadpulse", "events_per_s")
    scale_eps = get("scale", "events_per_s")
    lat = result.get("latency") or {}
    at10k = lat.get("10000") or (lat[max(lat, key=float)] if lat else {})
    sizes = get("state", "sizes") or {}
    largest = sizes[max(sizes, key=int)] if sizes else {}
    result.update({
        "ceiling_eps": ceiling_eps,
        "baseline_eps": baseline_eps,
        "leadpulse_eps": leadpulse_eps,
        "leadpulse_vs_ceiling": _ratio(leadpulse_eps, ceiling_eps),
        "leadpulse_vs_baseline": _ratio(leadpulse_eps, baseline_eps),
        "scale_2_workers_eps": scale_eps,
        "scale_ratio": _ratio(scale_eps, leadpulse_eps),
        "p50_ms_at_10k": at10k.get("p50_ms"),
        "p99_ms_at_10k": at10k.get("p99_ms"),
        "p999_ms_at_10k": at10k.get("p999_ms"),
        "bytes_per_contact": largest.get("table_record_bytes"),
        "redis_bytes_per_contact": largest.get("redis_hash_bytes"),
        "rescore_s": get("state", "rescore", "scan_s"),
        "rescore_contacts": get("state", "rescore", "contacts"),
        "rescore_replay_s": get("state", "rescore", "replay_s_extrapolated"),
    })


def _dig(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value < 100:
        return f"{value:.2f}{unit}"
    return f"{value:,.0f}{unit}" if isinstance(value, (int, float)) else str(value)


def table(result: dict[str, Any]) -> str:
    ceiling_eps, baseline_eps = result.get("ceiling_eps"), result.get("baseline_eps")
    rows: list[tuple[str, Any, Any, Any, Any, Any]] = []

    def add(name: str, eps: Any, p50: Any = None, p99: Any = None) -> None:
        rows.append((name, eps, _ratio(eps, ceiling_eps), _ratio(eps, baseline_eps), p50, p99))

    add("ceiling: aiokafka + orjson", ceiling_eps)
    add("baseline: naive faust, table write/event", baseline_eps)
    add("leadpulse: 1 worker, end to end", result.get("leadpulse_eps"))
    if result.get("scale_2_workers_eps"):
        add("leadpulse: 2 workers (2 partitions each)", result.get("scale_2_workers_eps"))
    for rate, row in (result.get("latency") or {}).items():
        add(f"latency @ {float(rate) / 1000:g}k/s offered (HTTP)", row.get("achieved_eps"), row.get("p50_ms"),
            row.get("p99_ms"))
    header = ("variant", "events/s", "x ceiling", "x baseline", "p50 ms", "p99 ms")
    cells = [header] + [(r[0], _fmt(r[1]), _fmt(r[2]), _fmt(r[3]), _fmt(r[4]), _fmt(r[5])) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = []
    for n, c in enumerate(cells):
        lines.append("  ".join(c[0].ljust(widths[0]) if i == 0 else c[i].rjust(widths[i]) for i in range(len(c))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    extra = []
    if result.get("scale_ratio"):
        extra.append(f"scale: 2 workers / 1 worker = {result['scale_ratio']:.2f}x")
    for size, row in (_dig(result, "state", "sizes") or {}).items():
        extra.append(f"state @ {int(size):,} contacts: table record {row['table_record_bytes']} B/contact, "
                     f"Redis hash {row['redis_hash_bytes']} B (MEMORY USAGE), Redis used_memory "
                     f"{_fmt(row['redis_used_memory_per_contact'])} B/contact")
    rs = _dig(result, "state", "rescore")
    if rs:
        extra.append(f"rescore {rs['contacts']:,} contacts after a model change: table scan + view {rs['scan_s']} s; "
                     f"full event replay ~{rs['replay_s_extrapolated']} s ({rs['replay_events_per_s']:,} events/s, "
                     f"{rs['replay_events_per_contact']} events/contact)")
    lp = result.get("leadpulse") or {}
    if lp:
        if lp.get("rate_by_decile"):
            extra.append("leadpulse events/s by tenth of the run: " + ", ".join(f"{r:,}" for r in lp["rate_by_decile"]))
        extra.append(f"leadpulse worker: {lp.get('triggers', 0):,} triggers, {lp.get('duplicates', 0):,} duplicates "
                     f"skipped, {lp.get('dlq', 0):,} dead letters, mean batch {lp.get('mean_batch_events')} events "
                     f"in {lp.get('mean_batch_ms')} ms")
    wl = result.get("workload") or {}
    head = (f"leadpulse bench {'--quick ' if result.get('quick') else ''}{result.get('date')} commit {result.get('commit')} "
            f"({result['machine']['cpus']} cpus, load {result['machine']['loadavg_at_start'][0]}, {result.get('broker')}, "
            f"{_native_label(result.get('native') or {})}); workload {wl.get('events', 0):,} events, "
            f"{wl.get('contacts', 0):,} contacts, {_dig(result, 'produce', 'events_per_record') or '-'} events/record; "
            f"{result.get('elapsed_s')} s")
    return "\n".join([head, ""] + lines + [""] + extra)


def _native_status() -> dict[str, str]:
    """Which hot modules run compiled (rules/native.py); the bench's workers import the same install."""
    import streams.processor  # noqa: F401  (imports every module that has a twin)
    from rules.native import status

    return status()


def _native_label(native: dict[str, str]) -> str:
    if not native:
        return "native: unknown"
    compiled = sum(1 for how in native.values() if how == "compiled")
    return f"{compiled}/{len(native)} hot modules compiled"


def write_json(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `leadpulse bench`")

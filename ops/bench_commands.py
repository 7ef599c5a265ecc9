"""``leadpulse bench``: the benchmark suite (see benchmarks/README.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def _ints(text: str) -> list[int]:
    return [int(float(part)) for part in text.split(",") if part.strip()]


def cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks.suite import STEPS, BenchConfig, run, table, write_json
    from ops.settings import load_settings

    settings = load_settings()
    config = BenchConfig.quick_defaults() if args.quick else BenchConfig()
    for name in ("events", "zipf", "produce_rate", "partitions", "baseline_seconds", "rate_seconds", "state_distinct", "seed", "profile_rate"):
        value = getattr(args, name)
        if value is not None:
            setattr(config, name, value)
    if args.rates is not None:
        config.rates = _floats(args.rates)
    if args.state_sizes is not None:
        config.state_sizes = _ints(args.state_sizes)
        config.state_distinct = min(config.state_distinct, max(config.state_sizes))
    if args.known is not None:
        config.known = args.known
    if args.latency_shared_stack:
        config.latency_shared_stack = True
    config.skip = {s.strip() for s in (args.skip or "").split(",") if s.strip()}
    unknown = config.skip - set(STEPS)
    if unknown:
        print(f"leadpulse bench: unknown step(s) in --skip: {', '.join(sorted(unknown))} (steps: {', '.join(STEPS)})",
              file=sys.stderr)
        return 2
    config.profile = args.profile
    config.work_dir = args.work_dir
    config.keep = args.work_dir is not None
    result = run(config, settings.broker_url, settings.redis_url)
    print()
    print(table(result))
    if args.json:
        write_json(result, args.json)
        print(f"\nwrote {args.json}")
    return 0


def add_bench_commands(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="benchmark suite: ceiling, naive faust baseline, leadpulse worker, latency, state size, rescore, scale",
        description="Runs the benchmark suite on the embedded broker/Redis (or LEADPULSE_BROKER_URL / "
                    "LEADPULSE_REDIS_URL) and prints a table; see benchmarks/README.md.",
    )
    bench.add_argument("--quick", action="store_true", help="small counts: the whole run ends in under a minute")
    bench.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON to FILE")
    bench.add_argument("--events", type=int, help="events to pre-produce (default 1,000,000; quick 30,000)")
    bench.add_argument("--known", type=int, help="known-contact population the Zipf skew runs over (default 1,000,000)")
    bench.add_argument("--zipf", type=float,
                       help="Zipf exponent of activity across known contacts (default 1.0, a heavy head as in YCSB)")
    bench.add_argument("--produce-rate", type=float,
                       help="events/s at which the workload is pre-produced through the collector's producer; sets "
                            "the events per envelope record (default 50000; 0 = as fast as possible)")
    bench.add_argument("--partitions", type=int, help="partitions of the bench topics (default 4)")
    bench.add_argument("--baseline-seconds", type=float, help="cap on the naive baseline's measuring time (default 60)")
    bench.add_argument("--rates", help="offered rates for the latency step, comma-separated (default 1000,5000,10000)")
    bench.add_argument("--rate-seconds", type=float, help="seconds per offered rate (default 60; quick 2)")
    bench.add_argument("--latency-shared-stack", action="store_true",
                       help="run the latency rates in turn on one stack (default: a fresh stack and topics per rate; "
                            "--quick always shares one)")
    bench.add_argument("--state-sizes", help="contact counts for the state-size step (default 100000,1000000)")
    bench.add_argument("--state-distinct", type=int, help="distinct contacts built for the state step (default 100000)")
    bench.add_argument("--skip", help="comma-separated steps to skip: ceiling,baseline,leadpulse,scale,latency,state")
    bench.add_argument("--profile", type=Path, metavar="FILE",
                       help="record the leadpulse worker with py-spy (raw collapsed stacks) into FILE and summarise it")
    bench.add_argument("--profile-rate", type=int, help="py-spy samples per second (default 100)")
    bench.add_argument("--seed", type=int, help="workload seed (default 42)")
    bench.add_argument("--work-dir", type=Path, help="keep logs and worker data here (default: a temp dir, removed)")
    bench.set_defaults(func=cmd_bench)

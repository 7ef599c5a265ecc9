"""Micro-benchmark of the pure scoring function ``rules.engine.apply_event``.

Times only the ``apply_event`` calls over 1M synthetic normalised events (fixed seed), in
two orders, and prints events/s for each, the triggers and the mean state size:

``uniform`` (the worst case for memory)
    Events over ``--contacts`` contacts picked uniformly (60 days of event time with a
    little out-of-order jitter), applied in arrival order: nearly every event meets a state
    untouched since long ago, so the step waits on memory for the state's objects.
``worker`` (how the worker feeds the engine)
    The full suite's workload (benchmarks/workload.py: sessions of 5-30 events, a Zipf-like
    skew over known contacts, anonymous visitors, 1 % duplicates, a little out-of-order), cut
    into batches of ``--batch`` events as the score agent takes them; per batch, repeated
    event ids are dropped (the worker's dedupe), events are grouped by contact key and each
    contact's events applied together in event-time order (streams/processor.py). A busy
    contact's state stays in cache across its events, as it does in the worker.

Events are kept as orjson bytes, as they arrive from the events topic, and decoded per
chunk or batch outside the timed region (so each event is fresh in the CPU cache, as in the
worker right after decoding a record).

    python -m benchmarks.engine_bench [--order uniform|worker|both] [--events N]
        [--contacts N] [--batch N] [--seed N] [--repeat N] [--check]

It measures the engine as the worker runs it: the compiled twin when it is built and current
(rules/native.py), pure Python otherwise or with ``LEADPULSE_NATIVE=0``; the last row says which.

``--check`` adds an untimed pass over fresh states (uniform order) and prints SHA-256 digests
of every trigger and of the final states as the worker stores them (orjson, keys sorted), so a
change made for speed can be shown to give bit-for-bit the same results on the whole workload.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import random
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import orjson

from benchmarks.workload import WorkloadSpec
from benchmarks.workload import generate as generate_suite_workload
from ops.gc_policy import tune_garbage_collector
from rules import default_model, load_model
from rules.engine import apply_event, new_state
from rules.native import status
from streams.events import contact_key

DAY = 86_400_000
_CHUNK = 1024
START = 1_767_225_600_000  # 2026-01-01T00:00:00Z

# (type, weight, extra fields builder)
_MIX: list[tuple[str, float]] = [
    ("page_view", 38), ("email_open", 18), ("email_click", 7), ("time_on_site", 7), ("email_delivered", 5),
    ("linkedin_engagement", 4), ("twitter_engagement", 3), ("track", 4), ("identify", 3),
    ("whitepaper_download", 2.5), ("webinar_attended", 1.5), ("demo_request", 1.5), ("email_reply", 2),
    ("crm_update", 1), ("email_bounce", 0.6), ("unsubscribe", 0.4), ("spam_report", 0.1), ("sales_feedback", 0.4),
]
_PATHS = ["/", "/pricing", "/features", "/blog/therapy-notes", "/careers", "/docs", "/about"]
_TRACK = ["Demo Requested", "Whitepaper Downloaded", "Webinar Attended", "Time On Site", "Product Viewed"]
_TITLES = ["Clinical Psychologist", "Professor of Psychology", "PhD Student", "Therapist", "Office Manager"]
_INDUSTRIES = ["Higher Education", "Healthcare", "Private Practice", "Software", "Retail"]
_COUNTRIES = ["US", "United Kingdom", "Canada", "Germany", "India", "France"]


def generate(n: int, contacts: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    kinds = [k for k, _ in _MIX]
    weights = [w for _, w in _MIX]
    chosen = rng.choices(kinds, weights=weights, k=n)
    span = 60 * DAY
    events = []
    for i, etype in enumerate(chosen):
        # Mostly increasing event time with up to 10 minutes of jitter (late arrivals).
        ts = START + (span * i) // n - rng.randrange(0, 600_000)
        cid = f"c{rng.randrange(contacts)}"
        traits: dict[str, Any] = {}
        props: dict[str, Any] = {}
        event: dict[str, Any] = {"id": f"e{i}", "type": etype, "contact_id": cid, "anonymous_id": None, "ts": ts,
                                 "received_at": ts + 50, "source": "bench"}
        if etype == "page_view":
            props = {"path": rng.choice(_PATHS)}
        elif etype == "time_on_site":
            props = {"seconds": rng.randrange(10, 900)}
        elif etype == "track":
            event["name"] = rng.choice(_TRACK)
        elif etype == "identify":
            traits = {
                "email": f"{cid}@{rng.choice(['uni.edu', 'gmail.com', 'clinic.org'])}",
                "title": rng.choice(_TITLES),
                "company": {"industry": rng.choice(_INDUSTRIES), "employee_count": rng.choice([5, 40, 300, 4000])},
                "address": {"country": rng.choice(_COUNTRIES)},
            }
        elif etype == "crm_update":
            traits = {"in_sales_conversation": rng.random() < 0.3, "lifecycle_stage": rng.choice(["lead", "opportunity"])}
        elif etype == "email_bounce":
            props = {"bounce_type": rng.choice(["hard", "soft", "soft"])}
        elif etype == "sales_feedback":
            props = {"decision": rng.choice(["accept", "reject"]), "reason": "timing"}
        event["traits"] = traits
        event["properties"] = props
        events.append(event)
    return events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engine_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--order", choices=("uniform", "worker", "both"), default="both",
                        help="which event order to time (see the module docstring; default: both)")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--contacts", type=int, default=50_000, help="contacts of the uniform order")
    parser.add_argument("--batch", type=int, default=9_000,
                        help="events per batch of the worker order (the worker's batches in the suite hold ~9k)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=1, help="runs over fresh states; the best is reported")
    parser.add_argument("--rules", help="model file (default: the shipped default model)")
    parser.add_argument("--check", action="store_true",
                        help="also print digests of all triggers and final states, uniform order (untimed)")
    args = parser.parse_args(argv)
    if args.events < 1 or args.contacts < 1 or args.batch < 1:
        parser.error("--events, --contacts and --batch must be at least 1")
    tune_garbage_collector()  # as in the worker, so the figure is the one scoring gets there

    model = load_model(args.rules) if args.rules else default_model()
    rows: list[tuple[str, str]] = [
        ("model version", model.version),
        ("events", f"{args.events:,}"),
        ("gc thresholds (the worker's, ops.gc_policy)", ", ".join(map(str, gc.get_threshold()))),
    ]
    encoded: list[bytes] = []
    if args.order in ("uniform", "both"):
        t0 = time.perf_counter()
        encoded = [orjson.dumps(e) for e in generate(args.events, args.contacts, args.seed)]
        gen_s = time.perf_counter() - t0
        rows += _result_rows("uniform", _best(args.repeat, lambda: _run_uniform(encoded, args.contacts, model)), gen_s)
    if args.order in ("worker", "both"):
        t0 = time.perf_counter()
        workload = generate_suite_workload(WorkloadSpec(events=args.events, seed=args.seed), now_ms=START + 60 * DAY)
        suite = [orjson.dumps(e) for e in workload.events]
        gen_s = time.perf_counter() - t0
        best = _best(args.repeat, lambda: _run_worker_order(suite, args.batch, model))
        rows += _result_rows(f"worker, batches of {args.batch:,}", best, gen_s)
    rows += [
        ("python", sys.version.split()[0]),
        # compiled twins or not (rules/native.py): the engine, and the model's predicates it calls
        *((f"{name} runs", status().get(name, "pure")) for name in ("rules.engine", "rules.model", "rules.normalize")),
    ]
    if args.check:
        if not encoded:
            encoded = [orjson.dumps(e) for e in generate(args.events, args.contacts, args.seed)]
        rows += _digests(encoded, args.contacts, model)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


@dataclass
class Run:
    applied: int  # events given to apply_event
    elapsed: float  # seconds inside the apply_event calls
    triggers: int
    states: dict[str, Any]


def _best(repeat: int, run: Callable[[], Run]) -> Run:
    """The fastest of ``repeat`` runs, each over fresh states."""
    return min((run() for _ in range(max(1, repeat))), key=lambda r: r.elapsed)


def _run_uniform(encoded: list[bytes], contacts: int, model: Any) -> Run:
    states = {f"c{i}": new_state(f"c{i}") for i in range(contacts)}
    triggers = 0
    elapsed = 0.0
    for offset in range(0, len(encoded), _CHUNK):
        chunk = [orjson.loads(raw) for raw in encoded[offset : offset + _CHUNK]]
        pairs = [(states[e["contact_id"]], e) for e in chunk]
        start = time.perf_counter()
        for state, event in pairs:
            triggers += len(apply_event(state, event, model))
        elapsed += time.perf_counter() - start
    return Run(len(encoded), elapsed, triggers, states)


def _run_worker_order(encoded: list[bytes], batch: int, model: Any) -> Run:
    """Batches as the score agent takes them, each contact's events together in event-time order."""
    states: dict[str, Any] = {}
    seen: set[str] = set()
    applied = triggers = 0
    elapsed = 0.0
    for offset in range(0, len(encoded), batch):
        by_contact: dict[str, list] = {}
        for position, raw in enumerate(encoded[offset : offset + batch]):
            event = orjson.loads(raw)
            if event["id"] in seen:  # a duplicate: the worker's dedupe drops it before scoring
                continue
            seen.add(event["id"])
            key = contact_key(event)
            by_contact.setdefault(key, []).append((event["ts"], position, event))
        work = []
        for key, items in by_contact.items():
            state = states.get(key)
            if state is None:
                state = states[key] = new_state(key)
            items.sort()
            work.append((state, [event for _, _, event in items]))
            applied += len(items)
        start = time.perf_counter()
        for state, events in work:
            for event in events:
                triggers += len(apply_event(state, event, model))
        elapsed += time.perf_counter() - start
    return Run(applied, elapsed, triggers, states)


def _result_rows(order: str, run: Run, gen_s: float) -> list[tuple[str, str]]:
    sample = list(run.states.values())[: min(2000, len(run.states))]
    mean_state = sum(len(orjson.dumps(s)) for s in sample) / len(sample)
    return [
        (f"[{order}] contacts", f"{len(run.states):,}"),
        (f"[{order}] events applied", f"{run.applied:,}"),
        (f"[{order}] generate (not timed)", f"{gen_s:.2f} s"),
        (f"[{order}] apply_event time", f"{run.elapsed:.3f} s"),
        (f"[{order}] events/s (one core)", f"{run.applied / run.elapsed:,.0f}"),
        (f"[{order}] us/event", f"{run.elapsed / run.applied * 1e6:.2f}"),
        (f"[{order}] triggers", f"{run.triggers:,}"),
        (f"[{order}] mean state size (orjson)", f"{mean_state:,.0f} bytes"),
    ]


def _digests(encoded: list[bytes], contacts: int, model: Any) -> list[tuple[str, str]]:
    """Digests of the triggers (in event order) and of the final orjson states, keys sorted (in contact order)."""
    states = {f"c{i}": new_state(f"c{i}") for i in range(contacts)}
    fired = hashlib.sha256()
    for raw in encoded:
        event = orjson.loads(raw)
        fired.update(orjson.dumps(apply_event(states[event["contact_id"]], event, model)))
    stored = hashlib.sha256()
    for state in states.values():  # keys sorted: the engine may order a state's keys as it likes
        stored.update(orjson.dumps(state, option=orjson.OPT_SORT_KEYS))
    return [("triggers sha256", fired.hexdigest()), ("states sha256", stored.hexdigest())]


if __name__ == "__main__":
    raise SystemExit(main())

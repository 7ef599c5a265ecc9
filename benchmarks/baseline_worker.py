"""The naive baseline: a faust agent written the way the faust docs suggest.

One ``async for`` over the stream, per event: read the contact's state from a
``Table`` (JSON values), ``rules.engine.apply_event``, ``await topic.send`` for each
trigger, write the state back (``table[key] = state``, one changelog record per
event). No envelopes are packed by it, no batching, no write-back cache, faust's
default Monitor, asyncio's default loop. Records on the events topic may be
envelopes (that is how the collector writes them), so it iterates over the events
of a record. Two things are set for fairness only: logging at WARNING (faust's
default root DEBUG logger would cost ~15 % more), and the same Tansu long-poll
workaround the real worker uses (``fetch_max_wait`` 100 ms), so the broker's fetch
hold is not what is measured.

Run as a child process by the suite::

    python -m benchmarks.baseline_worker --broker H:P --topic T --triggers T2 --partitions 4 \
        --app-id bench-base-x --expected N --max-seconds S --data-dir DIR

It prints one JSON line per 0.5 s ({"t": epoch_s, "events": n}) and a final line with
"done": true, then exits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time

import faust
import orjson

from rules import default_model
from rules.engine import apply_event, new_state
from streams.app import use_fetch_max_wait
from streams.events import contact_key, decode_record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--triggers", required=True)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--expected", type=int, required=True)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("faust.transport.producer").setLevel(logging.ERROR)  # "producer buffer full" per send
    use_fetch_max_wait(100)
    model = default_model()
    app = faust.App(
        args.app_id,
        broker=f"kafka://{args.broker}",
        store="memory://",
        web_enabled=False,
        datadir=args.data_dir,
        topic_partitions=args.partitions,
        topic_replication_factor=1,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
    )
    events_topic = app.topic(args.topic, value_serializer="raw", partitions=args.partitions)
    triggers_topic = app.topic(args.triggers, partitions=args.partitions)
    table = app.Table("state", partitions=args.partitions)
    counter = {"events": 0, "first": None, "last": None, "triggers": 0}

    def report(done: bool = False) -> None:
        line = {"t": time.time(), "events": counter["events"], "triggers": counter["triggers"],
                "first": counter["first"], "last": counter["last"]}
        if done:
            line["done"] = True
        sys.stdout.write(orjson.dumps(line).decode() + "\n")
        sys.stdout.flush()

    @app.agent(events_topic)
    async def score(stream):  # type: ignore[no-untyped-def]
        async for value in stream:
            if counter["first"] is None:
                counter["first"] = time.time()
            for event in decode_record(value):
                key = contact_key(event)
                state = table.get(key)
                if state is None:
                    state = new_state(key)
                for trigger in apply_event(state, event, model):
                    counter["triggers"] += 1
                    await triggers_topic.send(key=key, value=trigger)
                table[key] = state
                counter["events"] += 1
            counter["last"] = time.time()

    @app.timer(interval=0.5)
    async def progress() -> None:
        first = counter["first"]
        finished = counter["events"] >= args.expected or (first is not None and time.time() - first >= args.max_seconds)
        report(done=finished)
        if finished:
            logging.shutdown()
            os._exit(0)

    worker = faust.Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False, override_logging=False)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    raise SystemExit(main())

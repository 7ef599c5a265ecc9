"""Open-loop HTTP load for the latency benchmark: Segment ``/v1/batch`` calls at a fixed rate.

Run as its own process (so its CPU is not the collector's or the measurer's)::

    python -m benchmarks.load --url http://127.0.0.1:8088 --rate 10000 --duration 60 \
        --run r1 --out /tmp/load.json

Every ``interval`` it posts one batch of up to 100 events without waiting for earlier
calls to finish (open loop: a slow server does not lower the offered rate; at most
``--max-inflight`` calls are outstanding, further ticks are counted as ``behind``).
Traffic: anonymous and known page views, email-tracking track calls, identifies, and a
``--hot-share`` of events belong to "hot" prospects: a high-fit identify (full fit,
40 points) followed ~0.3 s later by a "Demo Requested" track call (+15), which crosses
the hot band and the route-to-sales rule. For each demo request it records
``(userId, event time ms) -> epoch ms when its HTTP call was acknowledged``; the suite
matches triggers (contact_id, event_ts) against that.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import random
import time
from datetime import datetime, timezone
from typing import Any

import aiohttp
import orjson

from benchmarks.workload import PAGES, high_fit_traits, random_traits


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Calls:
    def __init__(self, run: str, hot_share: float, seed: int) -> None:
        self.run = run
        self.rng = random.Random(seed)
        self.hot_share = hot_share
        self.hot_n = 0
        self.pending_demo: list[tuple[float, str]] = []  # (due monotonic, contact id)
        self.known = [f"{run}-k{i}" for i in range(5_000)]
        self._stamp: tuple[int, str] = (-1, "")

    def _base(self, kind: str, ts: int) -> dict[str, Any]:
        h = f"{self.rng.getrandbits(128):032x}"
        if ts != self._stamp[0]:  # a call's events share one time: format it once (the load shares the cores)
            self._stamp = (ts, iso(ts))
        return {"type": kind, "messageId": f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}", "timestamp": self._stamp[1]}

    def batch(self, n: int, now_mono: float) -> tuple[list[dict[str, Any]], list[tuple[str, int]]]:
        rng = self.rng
        now = int(time.time() * 1000)
        calls: list[dict[str, Any]] = []
        demos: list[tuple[str, int]] = []
        while self.pending_demo and self.pending_demo[0][0] <= now_mono and len(calls) < n:
            _, cid = self.pending_demo.pop(0)
            call = self._base("track", now)
            call.update(userId=cid, event="Demo Requested", properties={"plan": "team"})
            calls.append(call)
            demos.append((cid, now))
        while len(calls) < n:
            roll = rng.random()
            if roll < self.hot_share:
                self.hot_n += 1
                cid = f"{self.run}-hot{self.hot_n}"
                call = self._base("identify", now)
                call.update(userId=cid, traits=high_fit_traits(cid, rng))
                self.pending_demo.append((now_mono + 0.3, cid))
            elif roll < 0.45:
                call = self._base("page", now)
                path = rng.choice(PAGES)
                call.update(anonymousId=f"{self.run}-a{rng.randrange(50_000)}", name=path.strip("/") or "Home",
                            properties={"path": path})
            elif roll < 0.72:
                call = self._base("page", now)
                call.update(userId=rng.choice(self.known), properties={"path": rng.choice(PAGES)})
            elif roll < 0.92:
                call = self._base("track", now)
                call.update(userId=rng.choice(self.known), event=rng.choice(["Email Opened", "Email Link Clicked"]),
                            properties={"campaign": "newsletter"})
            else:
                cid = rng.choice(self.known)
                call = self._base("identify", now)
                call.update(userId=cid, traits=random_traits(cid, rng))
            calls.append(call)
        return calls, demos


async def run(url: str, write_key: str, rate: float, duration: float, run_id: str, hot_share: float,
              max_inflight: int, seed: int) -> dict[str, Any]:
    per_call = int(min(100, max(1, rate * 0.02)))
    interval = per_call / rate
    calls = Calls(run_id, hot_share, seed)
    auth = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
    stats = {"sent": 0, "ok": 0, "refused": 0, "errors": 0, "behind": 0, "calls": 0}
    acked: list[tuple[str, int, int]] = []  # (contact, event ts, ack epoch ms)
    call_ms: list[float] = []
    inflight: set[asyncio.Task] = set()
    connector = aiohttp.TCPConnector(limit=max_inflight)
    async with aiohttp.ClientSession(headers={"Authorization": auth, "Content-Type": "application/json"},
                                     connector=connector) as session:

        async def post(body: bytes, n: int, demos: list[tuple[str, int]]) -> None:
            started = time.perf_counter()
            try:
                async with session.post(f"{url}/v1/batch", data=body) as response:
                    await response.read()
                    ack = int(time.time() * 1000)
                    if response.status == 200:
                        stats["ok"] += n
                        acked.extend((cid, ts, ack) for cid, ts in demos)
                    else:
                        stats["refused"] += n
            except Exception:  # noqa: BLE001 - counted, the run goes on
                stats["errors"] += n
            call_ms.append((time.perf_counter() - started) * 1000)

        loop = asyncio.get_running_loop()
        start = loop.time()
        tick = 0
        end = start + duration
        while True:
            due = start + tick * interval
            if due >= end:
                break
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tick += 1
            if len(inflight) >= max_inflight:
                stats["behind"] += per_call
                continue
            batch, demos = calls.batch(per_call, time.monotonic())
            body = orjson.dumps({"batch": batch})
            stats["sent"] += len(batch)
            stats["calls"] += 1
            task = asyncio.create_task(post(body, len(batch), demos))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        elapsed = loop.time() - start
        if inflight:
            await asyncio.wait(inflight, timeout=30)
    call_ms.sort()
    return {
        **stats,
        "rate": rate,
        "duration_s": round(elapsed, 2),
        "achieved_eps": round(stats["sent"] / elapsed) if elapsed else 0,
        "per_call": per_call,
        "call_p50_ms": round(call_ms[len(call_ms) // 2], 1) if call_ms else None,
        "call_p99_ms": round(call_ms[int(len(call_ms) * 0.99)], 1) if call_ms else None,
        "hot": calls.hot_n,
        "acked": acked,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load")
    parser.add_argument("--url", required=True)
    parser.add_argument("--write-key", default="demo")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--hot-share", type=float, default=0.005)
    parser.add_argument("--max-inflight", type=int, default=256)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(run(args.url, args.write_key, args.rate, args.duration, args.run, args.hot_share,
                             args.max_inflight, args.seed))
    with open(args.out, "wb") as out:
        out.write(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

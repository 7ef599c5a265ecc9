"""``leadpulse demo``: the whole stack plus realistic traffic and a live trigger console.

Traffic is what a B2B site with an email program sees: many anonymous visitors
reading a few pages, known contacts identified with the traits the seed model
scores (title, organisation, company size, country), email opens and clicks, and a
few prospects who binge on pricing, download the whitepaper, attend the webinar and
request a demo. Those fire hot-lead, route-to-sales and MQL triggers within the
first minute. Everything goes through the collector's public Segment-compatible API
(``/v1/batch`` with the demo write key), exactly as a tracker would send it.
"""

from __future__ import annotations

import asyncio
import base64
import random
import signal
import sys
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import aiohttp
import orjson
from redis.asyncio import Redis

from ops.embedded import EmbeddedError
from ops.supervisor import Stack, StartupError

FIRST = ["Ada", "Ben", "Chloe", "Dev", "Elif", "Femi", "Grace", "Hiro", "Ines", "Jonas", "Kira", "Luis", "Maya", "Nils", "Omar", "Priya"]
LAST = ["Adler", "Berg", "Costa", "Diaz", "Evans", "Fischer", "Garcia", "Hoang", "Ito", "Jensen", "Kowalski", "Li", "Moreau", "Novak"]
TITLES = ["Clinical Psychologist", "Psychologist", "Professor of Psychology", "Prof.", "PhD Student", "Student", "Office Manager", "Therapist"]
ORGS = [
    ("Northfield University", "University", 12000),
    ("St. Mary's Health", "Healthcare", 2400),
    ("Calm Minds Practice", "Private practice", 12),
    ("Lakeside Clinic", "Healthcare", 340),
    ("Acme Retail", "Retail", 80),
]
COUNTRIES = ["US", "US", "GB", "CA", "DE", "FR", "BR", "IN"]
PAGES = ["/", "/features", "/pricing", "/blog/assessment-tips", "/case-studies", "/integrations", "/about", "/careers"]


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Traffic:
    """Generates Segment calls; ``rng`` is seeded so demo runs are repeatable."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.known: list[dict[str, Any]] = []
        self.eager: list[dict[str, Any]] = []
        self.script: list[dict[str, Any]] = []

    def call(self, kind: str, who: dict[str, Any], **fields: Any) -> dict[str, Any]:
        now = int(time.time() * 1000)
        base = {"type": kind, "messageId": str(uuid.UUID(int=self.rng.getrandbits(128))), "timestamp": iso(now)}
        if who.get("user_id"):
            base["userId"] = who["user_id"]
        if who.get("anonymous_id"):
            base["anonymousId"] = who["anonymous_id"]
        base.update(fields)
        return base

    def new_contact(self, eager: bool = False) -> dict[str, Any]:
        rng = self.rng
        first, last = rng.choice(FIRST), rng.choice(LAST)
        org, industry, size = ORGS[rng.randrange(2)] if eager else rng.choice(ORGS)
        title = rng.choice(TITLES[:3]) if eager else rng.choice(TITLES)
        email = f"{first}.{last}.{rng.randrange(10_000)}@{org.split()[0].lower().strip('.')}.example".lower()
        who = {
            "user_id": email,
            "anonymous_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "traits": {
                "name": f"{first} {last}",
                "email": email,
                "title": title,
                "company": {"name": org, "industry": industry, "employee_count": size},
                "address": {"country": "US" if eager else rng.choice(COUNTRIES)},
            },
        }
        self.script.append(self.call("identify", who, traits=who["traits"]))
        (self.eager if eager else self.known).append(who)
        return who

    def eager_journey(self, who: dict[str, Any]) -> None:
        """The buying-signal binge of a prospect who will become an MQL."""
        steps = [
            ("page", {"name": "Pricing", "properties": {"path": "/pricing"}}),
            ("page", {"name": "Features", "properties": {"path": "/features"}}),
            ("track", {"event": "Email Link Clicked", "properties": {"campaign": "autumn-webinar"}}),
            ("track", {"event": "Whitepaper Downloaded", "properties": {"title": "Digital assessments in practice"}}),
            ("track", {"event": "Webinar Attended", "properties": {"webinar": "Scoring at scale"}}),
            ("page", {"name": "Pricing", "properties": {"path": "/pricing"}}),
            ("track", {"event": "Demo Requested", "properties": {"plan": "team"}}),
        ]
        for kind, fields in steps:
            self.script.append(self.call(kind, who, **fields))

    def background(self, n: int) -> list[dict[str, Any]]:
        rng, calls = self.rng, []
        for _ in range(n):
            roll = rng.random()
            if roll < 0.6 or not self.known:
                visitor = {"anonymous_id": f"anon-{rng.randrange(5_000)}"}
                path = rng.choice(PAGES)
                calls.append(self.call("page", visitor, name=path.strip("/") or "Home", properties={"path": path}))
            elif roll < 0.75:
                who = rng.choice(self.known)
                path = rng.choice(PAGES)
                calls.append(self.call("page", who, properties={"path": path}))
            elif roll < 0.92:
                who = rng.choice(self.known)
                calls.append(self.call("track", who, event="Email Opened", properties={"campaign": "newsletter"}))
            elif roll < 0.98:
                who = rng.choice(self.known)
                calls.append(self.call("track", who, event="Email Link Clicked", properties={"campaign": "newsletter"}))
            else:
                calls.append(self.call("identify", self.new_contact(), traits=self.known[-1]["traits"]))
        return calls

    def next_batch(self, n: int) -> list[dict[str, Any]]:
        if len(self.eager) < 12 and self.rng.random() < 0.5:
            self.eager_journey(self.new_contact(eager=True))
        # A growing audience: new people keep identifying, so attention spreads thin
        # and only the genuinely engaged become hot.
        if len(self.known) < 400:
            for _ in range(3):
                self.new_contact()
        scripted, self.script = self.script[:n], self.script[n:]
        return scripted + self.background(max(0, n - len(scripted)))


async def send_traffic(base_url: str, write_key: str, rate: float, stop: asyncio.Event, stats: dict[str, int]) -> None:
    traffic = Traffic()
    auth = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
    async with aiohttp.ClientSession(headers={"Authorization": auth}) as session:
        per_tick = max(1, int(rate / 5))
        while not stop.is_set():
            batch = traffic.next_batch(per_tick)
            async with session.post(f"{base_url}/v1/batch", data=orjson.dumps({"batch": batch}),
                                    headers={"Content-Type": "application/json"}) as response:
                if response.status == 200:
                    stats["sent"] += len(batch)
                else:
                    stats["refused"] += len(batch)
                    print(f"  collector answered {response.status}: {await response.text()}", file=sys.stderr)
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.2)
            except asyncio.TimeoutError:
                pass


def format_trigger(trigger: dict[str, Any]) -> str:
    traits = (trigger.get("contact") or {}).get("traits") or {}
    who = traits.get("name") or trigger["contact_id"]
    company = traits.get("company.name")
    reasons = ", ".join(f"{r['signal']} +{r['points']:g}" for r in trigger.get("reasons", [])[:3])
    when = datetime.fromtimestamp(trigger["emitted_at"] / 1000).strftime("%H:%M:%S")
    return (f"{when}  {trigger['type'].upper():<15} {who:<18.18} {('(' + company + ')') if company else '':<24.24} "
            f"score {trigger['previous_score']:>5.1f} -> {trigger['score']:>5.1f}  [{trigger['band']}]  because {reasons}")


async def print_triggers(redis_url: str, stop: asyncio.Event, stats: dict[str, int]) -> None:
    redis = Redis.from_url(redis_url)
    last = "0"
    try:
        while not stop.is_set():
            entries = await redis.xread({"leadpulse:triggers": last}, block=500, count=100)
            for _stream, items in entries or []:
                for entry_id, fields in items:
                    last = entry_id
                    trigger = orjson.loads(fields[b"trigger"])
                    stats["triggers"] += 1
                    if stats["triggers"] == 1:
                        stats["first_trigger_s"] = round(time.monotonic() - stats["started"], 1)
                    print(format_trigger(trigger), flush=True)
    finally:
        await redis.aclose()


async def _run(stack: Stack, rate: float, duration: float | None) -> dict[str, int]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stats: dict[str, Any] = {"sent": 0, "refused": 0, "triggers": 0, "started": time.monotonic()}
    write_key = next(iter(stack.settings.write_keys))
    tasks = [
        asyncio.create_task(send_traffic(stack.base_url, write_key, rate, stop, stats)),
        asyncio.create_task(print_triggers(stack.services.redis_url, stop, stats)),
    ]
    if duration:
        loop.call_later(duration, stop.set)
    while not stop.is_set():
        problems = stack.problems()
        if problems:
            print(f"leadpulse demo: stopping because {', '.join(problems)}", file=sys.stderr)
            stop.set()
            break
        await asyncio.sleep(0.5)
    await asyncio.gather(*tasks, return_exceptions=True)
    return stats


def run_demo(settings: Any, rate: float = 100.0, duration: float | None = None) -> int:
    print("starting leadpulse: embedded broker and Redis, collector, worker ...", flush=True)
    try:
        stack = Stack(settings).start()
    except (EmbeddedError, StartupError) as exc:
        print(f"leadpulse demo: {exc}", file=sys.stderr)
        return 1
    print(f"\n  live hot-leads page: {stack.base_url}/\n  contact API: {stack.base_url}/v1/contacts/<id>"
          f"\n  metrics: {stack.base_url}/metrics\n\nsending ~{rate:g} events/s of demo traffic; triggers appear below "
          "(Ctrl-C stops)\n", flush=True)
    try:
        stats = asyncio.run(_run(stack, rate, duration))
    finally:
        stack.stop()
    print(f"\nsent {stats['sent']} events ({stats['refused']} refused), {stats['triggers']} triggers; "
          f"first trigger after {stats.get('first_trigger_s', '-')} s", flush=True)
    return 0 if stats["triggers"] and not stats["refused"] else 1

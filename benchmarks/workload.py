"""The benchmark workload: realistic normalised events, deterministic for a seed.

What a B2B site with an email program produces, in the shape the collector puts on
``leadpulse-events`` (DESIGN.md section 3, as ``connectors.segment.normalise`` and
the ESP webhook mappers emit it):

- a population of ``known`` contacts (ids ``<run>-c<rank>``) picked with a Zipf-like
  skew (weight 1/rank**``zipf_s``), plus anonymous visitors (``anon:`` keys);
- activity in sessions of 5-30 events, 5-90 s apart, sessions spread over the last
  few hours (event times stay inside the worker's late limit and clock-skew limits);
- ~70 % page views, email opens/clicks (source sendgrid), Segment track calls
  (time on site, whitepaper, webinar, demo request), identify calls with the traits
  the model scores, a few LinkedIn/Twitter/unsubscribe/bounce events;
- ``hot_share`` of known contacts are "eager": a high-fit identify, then pricing
  pages and a demo request, so they cross thresholds and fire hot_lead and
  route_to_sales triggers;
- 1 % duplicates (same id re-sent a little later) and a little out-of-order arrival
  (~3 % of events arrive up to 2 minutes after later events).

Events come out in arrival order. Generation is plain Python (no numpy needed).
"""

from __future__ import annotations

import bisect
import itertools
import random
import time
from dataclasses import dataclass
from typing import Any, Iterator

PAGES = ["/", "/features", "/pricing", "/blog/assessment-tips", "/case-studies", "/integrations", "/about",
         "/careers", "/docs", "/blog/therapy-notes"]
TITLES = ["Clinical Psychologist", "Psychologist", "Professor of Psychology", "Lecturer", "PhD Student", "Student",
          "Office Manager", "Therapist", "Practice Owner", "IT Administrator"]
INDUSTRIES = ["Higher Education", "University", "Healthcare", "Hospital", "Private Practice", "Software", "Retail"]
SIZES = [4, 12, 40, 80, 150, 340, 900, 2400, 12000]
COUNTRIES = ["US", "US", "GB", "CA", "DE", "FR", "BR", "IN", "NL", "AU"]
DOMAINS = ["uni.edu", "clinic.org", "health.example", "practice.example", "gmail.com", "outlook.com"]
CAMPAIGNS = ["newsletter", "autumn-webinar", "product-update", "case-study"]

# (kind, weight) for one event of a known contact's session after its first event.
KNOWN_MIX = [
    ("page", 66.0), ("email_open", 11.0), ("email_click", 4.0), ("time_on_site", 4.0), ("identify", 4.0),
    ("whitepaper", 1.5), ("webinar", 1.0), ("demo", 0.6), ("linkedin", 2.0), ("twitter", 1.0), ("reply", 0.7),
    ("email_delivered", 3.0), ("bounce", 0.2), ("unsubscribe", 0.1),
]
MINUTE = 60_000


@dataclass
class WorkloadSpec:
    events: int = 1_000_000
    known: int = 1_000_000        # size of the known-contact population (Zipf over it)
    anonymous: int = 200_000      # anonymous visitor pool
    anon_session_share: float = 0.30
    hot_share: float = 0.01       # share of sessions that are an eager prospect's buying binge
    dup_rate: float = 0.01
    ooo_rate: float = 0.03
    zipf_s: float = 1.0
    span_ms: int = 6 * 3_600_000  # sessions start within this span before now
    seed: int = 42
    run: str = "b"


@dataclass
class Workload:
    events: list[dict[str, Any]]
    contacts: int           # distinct contact keys (known + anonymous) in the events
    known_contacts: int     # distinct known contact ids
    duplicates: int
    out_of_order: int
    hot_contacts: int
    generate_s: float
    top_contact_events: int = 0  # events of the busiest contact key (the Zipf head)


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"


class _Zipf:
    def __init__(self, n: int, s: float, rng: random.Random) -> None:
        self.cum = list(itertools.accumulate(1.0 / (rank ** s) for rank in range(1, n + 1)))
        self.total = self.cum[-1]
        self.rng = rng
        # Ranks are shuffled onto ids so hot contacts spread over partitions.
        self.perm = None

    def pick(self) -> int:
        return bisect.bisect_left(self.cum, self.rng.random() * self.total)


def high_fit_traits(cid: str, rng: random.Random) -> dict[str, Any]:
    """Traits that score full fit (psychologist, university, 1000+, US): 40 of 100 points."""
    return {
        "email": f"{cid}@northfield.edu",
        "name": f"Prospect {cid}",
        "title": "Clinical Psychologist",
        "company": {"name": "Northfield University", "industry": "University", "employee_count": 12000},
        "address": {"country": "US"},
    }


def random_traits(cid: str, rng: random.Random) -> dict[str, Any]:
    return {
        "email": f"{cid}@{rng.choice(DOMAINS)}",
        "name": f"Contact {cid}",
        "title": rng.choice(TITLES),
        "company": {"name": f"Org {rng.randrange(5000)}", "industry": rng.choice(INDUSTRIES),
                    "employee_count": rng.choice(SIZES)},
        "address": {"country": rng.choice(COUNTRIES)},
    }


def make_event(kind: str, rng: random.Random, contact_id: str | None, anonymous_id: str | None, ts: int,
               traits: dict[str, Any] | None = None) -> dict[str, Any]:
    """One normalised event as the collector/ESP mappers emit it."""
    source = "segment"
    props: dict[str, Any] = {}
    name = None
    etype = kind
    if kind == "page":
        etype = "page_view"
        path = rng.choice(PAGES)
        props = {"path": path, "name": path.strip("/") or "Home", "url": f"https://example.com{path}"}
    elif kind == "pricing":
        etype, props = "page_view", {"path": "/pricing", "name": "Pricing", "url": "https://example.com/pricing"}
    elif kind in ("email_open", "email_click", "email_delivered", "bounce", "unsubscribe"):
        source = "sendgrid"
        etype = {"bounce": "email_bounce"}.get(kind, kind)
        props = {"campaign": rng.choice(CAMPAIGNS)}
        if kind == "email_click":
            props["url"] = "https://example.com/webinar"
        if kind == "bounce":
            props["bounce_type"] = rng.choice(["soft", "soft", "hard"])
    elif kind == "reply":
        etype, source = "email_reply", "mailgun"
    elif kind == "linkedin":
        etype, source = "linkedin_engagement", "crm"
    elif kind == "twitter":
        etype, source = "twitter_engagement", "crm"
    elif kind == "time_on_site":
        etype, name, props = "track", "Time On Site", {"seconds": rng.randrange(10, 900)}
    elif kind == "whitepaper":
        etype, name, props = "track", "Whitepaper Downloaded", {"title": "Digital assessments in practice"}
    elif kind == "webinar":
        etype, name, props = "track", "Webinar Attended", {"webinar": "Scoring at scale"}
    elif kind == "demo":
        etype, name, props = "track", "Demo Requested", {"plan": "team"}
    elif kind == "identify":
        etype = "identify"
    event: dict[str, Any] = {
        "id": _uuid(rng),
        "type": etype,
        "contact_id": contact_id,
        "anonymous_id": anonymous_id,
        "ts": ts,
        "received_at": ts,
        "source": source,
        "traits": traits or {},
        "properties": props,
    }
    if name is not None:
        event["name"] = name
    return event


def generate(spec: WorkloadSpec, now_ms: int | None = None, progress: Any = None) -> Workload:
    """``spec.events`` events in arrival order (see the module docstring)."""
    started = time.perf_counter()
    rng = random.Random(spec.seed)
    now_ms = now_ms or int(time.time() * 1000)
    zipf = _Zipf(spec.known, spec.zipf_s, rng)
    # Spread ranks over ids so that rank order says nothing about the partition.
    base = now_ms - spec.span_ms - 60 * MINUTE
    kinds = [k for k, _ in KNOWN_MIX]
    cum = list(itertools.accumulate(w for _, w in KNOWN_MIX))
    total_w = cum[-1]
    known_seen: set[str] = set()
    keys: set[str] = set()
    identified: set[str] = set()
    hot = 0
    out: list[tuple[int, int, dict[str, Any]]] = []  # (arrival, seq, event)
    seq = 0
    target = spec.events
    while len(out) < target:
        length = rng.randint(5, 30)
        t = base + rng.randrange(spec.span_ms)
        roll = rng.random()
        session: list[dict[str, Any]] = []
        if roll < spec.hot_share:
            # An eager prospect: high-fit identify, pricing, content, demo request.
            hot += 1
            cid = f"{spec.run}-hot{hot}"
            plan = ["identify", "pricing", "page", "whitepaper", "pricing", "webinar", "page", "demo"]
            for kind in plan:
                traits = high_fit_traits(cid, rng) if kind == "identify" else None
                session.append(make_event(kind, rng, cid, None, t, traits))
                t += rng.randrange(5_000, 60_000)
            known_seen.add(cid)
            keys.add(cid)
        elif roll < spec.hot_share + spec.anon_session_share:
            anon = f"{spec.run}-a{rng.randrange(spec.anonymous)}"
            keys.add("anon:" + anon)
            for _ in range(length):
                session.append(make_event("page", rng, None, anon, t))
                t += rng.randrange(5_000, 90_000)
        else:
            rank = zipf.pick()
            cid = f"{spec.run}-c{(rank * 2_654_435_761) % spec.known}"
            known_seen.add(cid)
            keys.add(cid)
            if cid not in identified:
                identified.add(cid)
                session.append(make_event("identify", rng, cid, None, t, random_traits(cid, rng)))
                t += rng.randrange(5_000, 90_000)
            while len(session) < length:
                kind = kinds[bisect.bisect_left(cum, rng.random() * total_w)]
                traits = random_traits(cid, rng) if kind == "identify" else None
                session.append(make_event(kind, rng, cid, None, t, traits))
                t += rng.randrange(5_000, 90_000)
        for event in session:
            arrival = event["ts"]
            if rng.random() < spec.ooo_rate:
                arrival += rng.randrange(1_000, 120_000)
            event["received_at"] = min(arrival + rng.randrange(20, 400), now_ms)
            out.append((arrival, seq, event))
            seq += 1
        if progress is not None and seq % 100_000 < len(session):
            progress(min(len(out), target), target)
    del out[target:]
    dups = 0
    extra: list[tuple[int, int, dict[str, Any]]] = []
    n_dups = int(target * spec.dup_rate)
    for i in rng.sample(range(len(out)), n_dups):
        arrival, _, event = out[i]
        extra.append((arrival + rng.randrange(100, 30_000), seq, dict(event)))
        seq += 1
        dups += 1
    out.extend(extra)
    out.sort(key=lambda item: (item[0], item[1]))
    events = [e for _, _, e in out]
    ooo = sum(1 for a, b in zip(events, events[1:]) if b["ts"] < a["ts"] - 1_000)
    per_key: dict[str, int] = {}
    for e in events:
        k = e["contact_id"] or e["anonymous_id"]
        per_key[k] = per_key.get(k, 0) + 1
    return Workload(events=events, contacts=len(keys), known_contacts=len(known_seen), duplicates=dups,
                    out_of_order=ooo, hot_contacts=hot, generate_s=time.perf_counter() - started,
                    top_contact_events=max(per_key.values()) if per_key else 0)


def iter_chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]

# cython: annotation_typing=True
# (Compiled twin only, rules/native.py: the hints below become C types there, e.g. a float argument is a
# C double and a dict argument must be a dict; the golden tests pin that the results stay bit for bit.)
"""The scoring engine: pure functions over a per-contact state dict. No I/O, no clock.

``apply_event(state, event, model)`` folds one normalised event into a contact's state
and returns the trigger decisions it causes, decided as of the event's own time
(``event["ts"]``). ``view`` / ``top_reasons`` read a state as of a given time. The state
is a plain dict of str keys, lists, numbers and strings, so it round-trips exactly through
orjson and can live in a faust table or Redis.

Score (the mapping is also written at the top of rules/models/default.yaml)::

    fit       = min(40, fit_raw * 40/80)        # fit.weight, fit.full_raw
    behaviour = min(60, beh_raw * 60/100)       # behaviour.weight, behaviour.full_raw
    score     = clip(fit + behaviour, 0, 100), rounded to 2 decimals for decisions and display

``beh_raw`` is the sum of every behaviour rule's points after caps and decay, plus trait
penalties (e.g. free-mail domain). Behaviour may be negative and pull the score below fit.

Decay and caps, exactly and independent of arrival order
--------------------------------------------------------
Each behaviour rule keeps one accumulator ``[ref, value, closed, count, windows, late]``:
``value`` is the rule's contribution *as of* ``ref``, the latest event time the rule has
seen. Reading at ``t >= ref`` multiplies by ``exp(-(t - ref) * ln2 / half_life)``; an event
older than ``ref`` is added already decayed to ``ref``. Because the reference moves with the
data (never a fixed epoch), no factor ever overflows. Reading at ``t < ref`` returns the
value as of ``ref`` (the engine never un-decays).

Caps use fixed windows aligned to the Unix epoch (``window = ts // cap.window``). Each open
window keeps its undecayed raw total ``P`` and its decayed total ``D``; it contributes
``D * min(1, cap / P)``, i.e. when a window overflows every event in it counts in
proportion. Both sums are commutative, so the score read at ``t`` is the same (up to float
rounding) for any arrival order. A window is folded into ``closed`` once the rule has seen
an event ``allowed_lateness`` after the window's end; an event that still arrives for a
folded window counts 0 for that rule (it is counted in ``late``). State per rule is thus
bounded by ``allowed_lateness / window + 2`` windows.

Triggers
--------
A threshold (mql at 80, hot_lead at the hot band) fires when the score is at or above its
level and it is armed; firing disarms it. It re-arms when the score, evaluated lazily at a
later event (decayed to that event's time, before and after applying it), is below
``level - hysteresis``; and it never fires again within ``cooldown`` of its last firing.
Routing rules fire on a matching event from a contact whose fit (0-40 scale) is high
enough. Suppression is evaluated first in the same step and wins: a suppressed contact gets
no suppressible trigger (mql, hot_lead, routing); ``suppress`` fires when the first reason
appears, ``unsuppress`` when the last one ends. Trigger ids are
``sha1(contact_id|type|ordinal)[:24]`` where ordinal counts that type's firings for the
contact, so replaying the same events yields the same ids.

Lead handoff and nurture exit
-----------------------------
Lead states: ``nurture -> mql`` (the mql threshold fires; ``mql_at`` recorded) ``-> sql``
(``sales_feedback`` with decision accept, or a CRM lifecycle stage in ``lifecycle.sql``);
``mql|sql -> nurture`` on a reject (the reason is kept in ``rejection``) or a
``lifecycle.nurture`` stage; ``customer`` while the customer suppression holds. After a reject
the mql threshold stays disarmed until the score has been below ``level - hysteresis``, and
its cooldown applies, so a rejected lead is not re-offered at once.

``nurture_exit`` (``handoff.nurture_exit``, on by default) fires when a contact leaves the
nurture program, i.e. when ``lead_state == "nurture" and not suppressed`` turns false: it
became mql (same step as the mql trigger, after it), sql or customer, or any suppression
reason appeared (same step as ``suppress``, after it). It carries ``"to"``: the new lead state
or ``"suppressed"``, and a first reason ``nurture_exit.<to>`` /
``nurture_exit.suppressed.<reason>``. It fires once per exit: the contact must be back in
nurture (rejected, recycled, unsuppressed while in nurture) before another one can fire; it
is never suppressed (it *is* the message that emails stop). Ids follow the ordinal rule.

Timers (the MQL handoff SLA)
----------------------------
When mql fires at event time ``t`` and ``handoff.sla`` is set, the state gets one timer
``state["sla"] = {"due": t + sla, "mql": <mql ordinal>, "mql_trigger_id", "mql_at", "score"}``.
The SLA is taken from the model at MQL time; a later model reload does not move the deadline.
The timer is cancelled (set to None) at the end of any step after which the lead is no longer
``mql`` or is suppressed: accept, reject, CRM stage change, customer, suppression (a contact
that must not be contacted is not escalated). Otherwise it fires ``sla_breach`` once, with
``trigger_id = trigger_id(contact, "sla_breach", <mql ordinal>)`` (one breach per MQL, the same
id whoever fires it), ``event_ts = due``, ``score`` as of ``due``, ``previous_score`` = the MQL
score, ``route`` = ``handoff.route``, ``mql_trigger_id``, ``mql_at`` and ``sla_due``. Firing
consumes the timer. Timers fire in two ways, both on event time:

* inside :func:`apply_event`, when an event of the contact has ``ts >= due``: the breach is
  decided first (an answer stamped at or after the deadline is late), before the event;
* from the stream layer's periodic tick, through :func:`due_triggers`.

Contract for the stream layer (pure functions, no clock, no I/O)::

    next_due(state, model) -> int | None
        Epoch ms (event time) of the contact's next timer, None when it has none. A dict
        lookup. Call it after every apply_event/merge_state/due_triggers that touched the
        state and keep a per-partition index {due: contact keys} of the non-None answers;
        the index is derivable from the stored states, so rebuild it from the table after a
        restart or rebalance (timers live in the state, never in memory only).

    due_triggers(state, model, now_ms) -> list[trigger dict]
        Fires, in place, every timer with due <= now_ms and returns its triggers (today at
        most one sla_breach). Returns [] and leaves the state untouched when nothing is due.
        Afterwards next_due(state) is None or > now_ms. The caller must then, like for an
        event batch: send the triggers to the triggers topic (key = contact id) and await the
        acks, publish the view, and write the state (table + changelog); set "emitted_at" and
        "contact" (the trigger traits) on each trigger as for event triggers. Do not hold
        sla_breach or nurture_exit for a veto: a suppression cancels the timer in the state,
        and nurture_exit is also the exit report for a suppression that follows an MQL. If it crashes before the state write, the next
        tick fires the same trigger with the same id again and the sinks drop the repeat.
        Call it only for contacts owned by this worker (their partition is assigned), in the
        same task/order as event processing for that partition, so a tick and an event never
        interleave on one contact. now_ms is the event-time "now": wall clock, optionally
        minus a grace (e.g. the reorder lateness) so that an answer sent just before the
        deadline and still in flight is applied before the tick decides. An answer stamped
        before the deadline that arrives after the breach fired still moves the lead
        (accept -> sql), but cannot recall the breach.

Replays: the timer is part of the state, so replaying events onto a stored state fires
nothing twice (the stream layer skips applied positions) and replaying from scratch
recomputes the same timer, the same breach and the same ids.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

try:
    import cython  # Cython's pure-Python stand-in: its ``compiled`` flag and ``cfunc`` decorator
except ImportError:  # pure Python without Cython installed: the branch a pure run takes anyway
    from rules.native import NO_CYTHON as cython
if cython.compiled:
    # The compiled twin calls the C library's exp directly: the very function math.exp wraps
    # (same results bit for bit), without a module lookup, a call and a boxed float each time.
    # Every argument here is <= 0 (decay towards a later reference), so no overflow to report.
    from cython.cimports.libc.math import exp
else:
    from math import exp

from rules import normalize
from rules.model import TRACK_PLAN as _TRACK_PLAN
from rules.model import CompiledModel

_EMPTY: dict[str, Any] = {}
_NO_PLAN: tuple = ((), None, None, 0.0)  # a signal no rule, route or suppression listens to
_INF = float("inf")
_ABSENT = object()

# Lead-state precedence when two states are merged (identity stitching keeps the furthest).
_LEAD_RANK = {"nurture": 0, "mql": 1, "sql": 2, "customer": 3}


def new_state(contact_id: str) -> dict[str, Any]:
    """An empty contact state (plain JSON-compatible dict)."""
    return {
        # The fields every step reads come first: a dict keeps its entries in insertion order, so
        # these share a few cache lines, which a step on a cold state fetches (benchmarks/README.md).
        "in_nurture": True,  # nurture membership last reported (nurture_exit fires when it turns false)
        "sla": None,  # pending MQL handoff timer (see "Timers" in the module docstring) or None
        "mv": None,  # model version the groups were built with (rebuilt when the model changes)
        "g": {},  # half-life group -> [ref_ts, sum of its rules' values at ref, k]: fast score reads
        "fit": 0.0,  # raw fit points
        "penalty": 0.0,  # raw behaviour points from trait penalties (<= 0)
        "disarmed": {},  # threshold type -> event time it fired (absent = armed)
        "lead_state": "nurture",
        "suppressed": [],  # current suppression reasons, sorted
        "b": {},  # behaviour rule id -> [ref_ts, value_at_ref, closed_at_ref, count, windows|None, late]
        "updated_at": 0,  # max event time applied
        "contact_id": contact_id,
        "traits": {},  # merged traits, flat dotted paths -> latest value by event time
        "trait_ts": {},  # path -> event time of the value kept (makes trait merges order-independent)
        "fit_detail": {},  # category -> [label, raw points, trait path]
        "penalty_detail": {},  # penalty id -> raw points
        "flags": {},  # sticky suppression reason -> earliest event time
        "last_fired": {},  # trigger type -> event time of its last firing
        "fired": {},  # trigger type -> number of firings (ordinal used in trigger ids)
        "mql_at": None,
        "sql_at": None,
        "rejection": None,  # {"reason": str|None, "at": ts} of the last sales rejection
        "health": None,  # [score, band] from the health model
    }


# --- behaviour accumulators ------------------------------------------------------------


def _term(entry: list, k: float | None, t: int) -> float:
    """A rule's contribution read at ``t`` (no growth before the rule's reference time)."""
    value = entry[1]
    if k:
        dt = t - entry[0]
        if dt > 0:
            return value * exp(-dt * k)
    return value


def _rules_decayed(b: dict[str, list], rule_k: dict[str, float], t: int) -> float:
    """Behaviour raw points at ``t`` summed rule by rule (the reference the group sums must match)."""
    total = 0.0
    for rid, entry in b.items():
        k = rule_k.get(rid)
        if k is not None:  # a rule no longer in the (reloaded) model contributes nothing
            total += _term(entry, k, t)
    return total


def _groups_decayed(g: dict[str, list], t: int) -> float:
    total: float = 0.0
    value: float
    for ref, value, k in g.values():
        if value:
            if k and t > ref:
                value *= exp((ref - t) * k)
            total += value
    return total


def _rebuild_groups(state: dict[str, Any], model: CompiledModel) -> None:
    """Recompute the per-half-life running sums from the rule accumulators (after a model change or merge)."""
    groups: dict[str, list] = {}
    for rid, entry in state["b"].items():
        key = model.rule_group.get(rid)
        if key is None:
            continue
        k = model.rule_k[rid]
        grp = groups.get(key)
        if grp is None:
            groups[key] = [entry[0], entry[1], k]
            continue
        if entry[0] > grp[0]:
            if k:
                grp[1] *= exp((grp[0] - entry[0]) * k)
            grp[0] = entry[0]
        grp[1] += entry[1] * exp((entry[0] - grp[0]) * k) if k else entry[1]
    state["g"] = groups
    state["mv"] = model.version


def _capped(size: float, decayed: float, cap: float) -> float:
    return decayed if size <= cap else decayed * cap / size


def _new_entry(ts: int, points: float, cap: float, window: int) -> list:
    if not cap:
        return [ts, float(points), 0.0, 1, None, 0]
    size = points if points > 0 else -points
    return [ts, points if size <= cap else points * cap / size, 0.0, 1, [[ts // window, size, float(points)]], 0]


@cython.cfunc
def _unrounded_score(fit_raw: float, beh_raw: float, model: CompiledModel) -> float:
    """:func:`_score` before its clip at 0 and 100 and its rounding (a C function in the twin)."""
    fit: float = fit_raw * model.fit_scale
    if fit > model.fit_max:
        fit = model.fit_max
    beh: float = beh_raw * model.beh_scale
    if beh > model.beh_max:
        beh = model.beh_max
    return fit + beh


def _score(fit_raw: float, beh_raw: float, model: CompiledModel) -> float:
    total = _unrounded_score(fit_raw, beh_raw, model)
    if total < 0.0:
        return 0.0
    if total > 100.0:
        return 100.0
    return round(total, 2)


def score_at(state: dict[str, Any], model: CompiledModel, t: int) -> float:
    """The exact (unrounded) 0-100 score as of ``t``, summed rule by rule; decisions round it to 2 decimals."""
    fit = min(model.fit_max, state["fit"] * model.fit_scale)
    beh = min(model.beh_max, (_rules_decayed(state["b"], model.rule_k, t) + state["penalty"]) * model.beh_scale)
    return min(100.0, max(0.0, fit + beh))


# --- traits -------------------------------------------------------------------------------


def _order_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _merge_traits(state: dict[str, Any], traits: dict[str, Any], ts: int) -> dict[str, Any]:
    """Latest-by-event-time wins per trait path (ties broken by value), so any order gives the same traits.

    Returns the paths that changed value.
    """
    stored = state["traits"]
    stamps = state["trait_ts"]
    changed: dict[str, Any] = {}
    for path, value in _flat(traits).items():
        old_ts = stamps.get(path)
        if old_ts is not None and (ts < old_ts or (ts == old_ts and _order_key(value) <= _order_key(stored.get(path)))):
            continue
        stamps[path] = ts
        old = stored.get(path, _ABSENT)
        if old is _ABSENT or old != value:
            stored[path] = value
            changed[path] = value
    return changed


def _flat(traits: dict[str, Any]) -> dict[str, Any]:
    """``normalize.flatten(traits)``; a dict that is flat already (str keys, no nested dict) is its own result."""
    for key, value in traits.items():
        if type(key) is not str or (isinstance(value, dict) and value):
            return normalize.flatten(traits)
    return traits


def _recompute_profile(state: dict[str, Any], model: CompiledModel) -> None:
    """Fit, trait penalties and health from the merged traits (only when traits changed)."""
    traits = state["traits"]
    get = traits.get
    raw = 0.0
    detail: dict[str, list] = {}
    for name, fields, options in model.fit_categories:
        values = None
        for path in fields:
            value = get(path)
            if value is not None and value != "":
                if values is None:
                    values = [(path, value)]
                else:
                    values.append((path, value))
        if values is None:
            continue
        # Options are in priority order; the first that matches any of the fields wins.
        for label, points, pred in options:
            for path, value in values:
                if pred(value):
                    break
            else:
                continue
            raw += points
            detail[name] = [label, points, path]
            break
    state["fit"] = raw
    state["fit_detail"] = detail

    penalty = 0.0
    pen_detail: dict[str, float] = {}
    for pid, fields, points, pred in model.penalties:
        for path in fields:
            value = get(path)
            if value is not None and value != "" and pred(value):
                penalty += points
                pen_detail[pid] = points
                break
    state["penalty"] = penalty
    state["penalty_detail"] = pen_detail

    if model.health_components:
        total = 0.0
        weight = 0.0
        for _, trait, w in model.health_components:
            value = get(trait)
            x = normalize.number(value) if value is not None else None
            if x is not None:
                total += w * min(100.0, max(0.0, x))
                weight += w
        if weight:
            score = round(total / weight, 2)
            band = next((name for low, name in model.health_bands if score >= low), model.health_bands[-1][1])
            state["health"] = [score, band]


def _suppression_reasons(state: dict[str, Any], model: CompiledModel) -> list[str]:
    reasons = set(state["flags"])
    traits = state["traits"]
    for reason, path, pred in model.suppress_traits:
        value = traits.get(path)
        if value is not None and pred(value):
            reasons.add(reason)
    return sorted(reasons)


# --- triggers -----------------------------------------------------------------------------


def trigger_id(contact_id: str, ttype: str, ordinal: int) -> str:
    """Deterministic id of the ``ordinal``-th ``ttype`` trigger of a contact (DESIGN.md section 5)."""
    return hashlib.sha1(f"{contact_id}|{ttype}|{ordinal}".encode()).hexdigest()[:24]


def _fire(
    state: dict[str, Any],
    model: CompiledModel,
    ttype: str,
    ts: int,
    score: float,
    previous: float,
    band: str,
    reasons: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    fired = state["fired"]
    ordinal = fired.get(ttype, 0) + 1
    fired[ttype] = ordinal
    state["last_fired"][ttype] = ts
    contact_id = state["contact_id"]
    return {
        "trigger_id": trigger_id(contact_id, ttype, ordinal),
        "type": ttype,
        "contact_id": contact_id,
        "score": score,
        "previous_score": round(previous, 2),
        "band": band,
        "reasons": reasons if reasons is not None else top_reasons(state, model, ts, 3),
        "rules_version": model.version,
        "event_ts": ts,
    }


# --- the step -----------------------------------------------------------------------------


def apply_event(state: dict[str, Any], event: dict[str, Any], model: CompiledModel) -> list[dict[str, Any]]:
    """Fold ``event`` into ``state`` (in place) and return the triggers it causes, as of ``event["ts"]``.

    This is the hot path (every event of every contact), so the accumulator updates (capped
    windows included), the group sums, the score and the end-of-step bookkeeping
    (``_settle_lifecycle``) are inlined here. A step that provably decides nothing (see
    "quiet" below) skips the score; a step that decides nothing after all skips the decision
    block (``_decide``). Every float is computed by the same operations in the same order as in
    the reference helpers (``_rebuild_groups``, ``_score``; an ``exp`` whose
    argument is the same is reused, never re-derived), so the state and the triggers are
    bit-for-bit theirs; tests/unit/rules/test_rules_golden.py and ``benchmarks.engine_bench
    --check`` pin that.

    Where the time goes (compiled twin): mostly memory. A step on an event no rule scores took
    ~530 ns on one state over and over, but 2.2-3.0 us on the engine bench's 50k states, where
    each state object the step touches (state dict, group and accumulator lists, window lists,
    their floats) is a cache miss. The step therefore touches only what its decision needs
    (it indexes lists rather than unpacking them: an unpacked item is touched too); what is
    left is bounded by the state's shape, which the stream layer stores and this module must
    keep. A disarmed contact's step that moves no threshold (``_thresholds_stay``) skips the
    rounding and ``_decide``. benchmarks/README.md has the figures.
    """
    # C doubles in the compiled twin (annotation_typing): the accumulator, group and score
    # arithmetic runs there without a boxed float per operation. Every one of these values is
    # a float already (the model's points, the stored sums), so both builds compute the same.
    gain: float
    fit_raw: float
    penalty: float
    bound: float
    value: float
    decayed: float
    points: float
    k: float
    cap: float
    size: float
    new_value: float
    old_value: float
    factor: float
    delta: float
    closed: float
    before: float
    wsize: float
    wdecayed: float
    total: float
    score: float
    # Event times as C 64-bit ints in the twin: the decay arguments and cap-window indices are
    # computed without a Python int per operation (exact, like Python ints, for any epoch-ms time:
    # event_problem bounds ts; int-to-double conversions are exact below 2**53, so the same floats).
    ts: cython.longlong
    old_ref: cython.longlong
    new_ref: cython.longlong
    group_ref: cython.longlong
    window: cython.longlong
    first_open: cython.longlong
    idx: cython.longlong
    oldest: cython.longlong
    newest: cython.longlong
    lateness: cython.longlong
    late_sum: float
    fit_scale: float
    beh_scale: float
    quiet_below: float
    stamp = event["ts"]  # the event's own int object: stored as is, so a step boxes no new int for it
    ts = stamp
    etype = event.get("type")
    plans: dict = model.plans
    plan = plans.get(etype, _NO_PLAN)
    if plan is _TRACK_PLAN:  # a Segment track event scores as the signal its name maps to
        plan = plans.get(model.signal_of(event), _NO_PLAN)
    rules, routes, sticky, gain = plan
    try:
        in_nurture = state["in_nurture"]
    except KeyError:  # a state stored before timers existed: adopt its current membership
        state["in_nurture"] = in_nurture = _in_nurture(state)
        state["sla"] = None
    sla = state["sla"]
    if sla is not None or state["mv"] is not model.version:
        # Rare: a pending timer, or groups built for another model (or a decoded copy of its version).
        # Event time has reached a pending deadline: the timer fires first, as of its due time, so
        # an answer stamped at or after the deadline is late whether or not a tick ran before it.
        early = _sla_breach(state, model) if sla is not None and sla["due"] <= ts else None
        if state["mv"] != model.version:
            _rebuild_groups(state, model)
        else:
            state["mv"] = model.version  # an equal string (e.g. decoded): keep the fast identity test
    else:
        early = None
    g: dict = state["g"]
    # The model's scale constants, read once (each read is an attribute lookup).
    fit_scale = model.fit_scale
    beh_scale = model.beh_scale
    quiet_below = model.quiet_below
    fit_raw = state["fit"]
    penalty = state["penalty"]
    disarmed = state["disarmed"]
    traits = event.get("traits")

    # A quiet step, known before any decay is computed: nothing can decide anything (no timer, trait,
    # route, sticky suppression, sales answer or disarmed threshold; membership consistent, so the
    # settle has nothing to do) and an upper bound of the score after the event is below
    # quiet_below. The bound: a decay group's value decays towards 0, so it is worth at most
    # max(value, 0) at ts, and an event adds at most its rules' positive points (caps only cut);
    # the 1e-6 margin covers float rounding (groups below -1e6 are not bounded here). Such a step
    # (most of them) needs neither the score nor the group sums before the event.
    quiet = False
    if (
        sla is None and not traits and not disarmed and routes is None and sticky is None
        and etype != "sales_feedback" and in_nurture is (state["lead_state"] == "nurture" and not state["suppressed"])
    ):
        bound = gain
        for grp in g.values():
            value = grp[1]
            if value > 0.0:
                bound += value
            elif value < -1e6:
                bound = _INF
                break
        quiet = fit_raw * fit_scale + (bound + penalty) * beh_scale < quiet_below - 1e-6

    changed: dict[str, Any] = _EMPTY
    if quiet:
        # Not needed: the rules loop below still keeps ``decayed``, nothing reads these (set so that
        # the compiled twin's C doubles are never read uninitialised, even in principle).
        decayed = prev_decayed = prev_fit = prev_penalty = 0.0
    else:
        decayed = _groups_decayed(g, ts)  # behaviour raw points as of ts, before this event
        prev_decayed = decayed
        prev_fit = fit_raw
        prev_penalty = penalty
        if traits:
            old_health = state["health"]
            if etype == "group":
                # Segment group traits describe the company: file them under company.*
                traits = {name if name.startswith("company") else f"company.{name}": v for name, v in traits.items()}
            changed = _merge_traits(state, traits, ts)
            if changed:
                _recompute_profile(state, model)
                fit_raw = state["fit"]
                penalty = state["penalty"]

    props = event.get("properties") or _EMPTY  # for ``where`` filters
    lateness = -1  # read from the model at the first capped rule
    if rules:
        b: dict = state["b"]
        for rid, points, k, cap, window, where, gkey, size in rules:
            if where is not None and not where(props):
                continue
            entry = b.get(rid)
            if entry is None:  # _new_entry
                fresh = True
                if not cap:
                    new_value = float(points)
                    b[rid] = [stamp, new_value, 0.0, 1, None, 0]
                else:
                    new_value = points if size <= cap else points * cap / size
                    b[rid] = [stamp, new_value, 0.0, 1, [[ts // window, size, float(points)]], 0]
                old_value = 0.0
                old_ref = new_ref = ts
                factor = 1.0
            else:  # an existing accumulator: decay it to the later reference time, add the event
                fresh = False
                # Read only what this rule's update needs: each item is a separate object, and a
                # cold one costs a cache miss even when merely unpacked (the unpack counts a reference).
                old_ref = entry[0]
                old_value = entry[1]
                count = entry[3]
                if ts > old_ref:
                    factor = exp((old_ref - ts) * k) if k else 1.0
                    new_ref = ts
                    delta = points
                else:
                    factor = 1.0
                    new_ref = old_ref
                    delta = points * exp((ts - old_ref) * k) if (k and ts < old_ref) else points
                if not cap:
                    new_value = old_value * factor + delta
                    if new_ref != old_ref:  # moved to ts
                        entry[0] = stamp
                    entry[1] = new_value
                    entry[3] = count + 1
                else:
                    # A capped rule: decay the closed sum and every window to new_ref, fold
                    # the windows that can no longer receive events, add the event to its window
                    # and re-apply the caps. Window i is closed once (i + 1) * window + lateness <=
                    # new_ref, i.e. i < first_open (integer floor division, exact).
                    closed = entry[2]
                    windows = entry[4]
                    closed_moved = False
                    if factor != 1.0:
                        if closed:  # 0.0 * factor is 0.0
                            closed *= factor
                            closed_moved = True
                        for w in windows:
                            wdecayed = w[2]
                            w[2] = wdecayed * factor
                    if lateness < 0:
                        lateness = model.lateness
                    first_open = (new_ref - lateness) // window
                    while windows:  # sorted: the oldest first
                        oldest = windows[0][0]
                        if oldest >= first_open:
                            break
                        _, wsize, wdecayed = windows.pop(0)
                        closed += wdecayed if wsize <= cap else wdecayed * cap / wsize
                        closed_moved = True
                    idx = ts // window
                    if idx < first_open:  # too late for a closed window: documented to count 0
                        entry[5] += 1
                        # A loop, not sum() over a generator: a generator here would make every call
                        # allocate a closure for ``cap`` (compiled twin). Same additions, same order.
                        late_sum = 0.0
                        for w in windows:
                            late_sum += _capped(w[1], w[2], cap)
                        new_value = closed + late_sum
                    else:
                        w = windows[-1] if windows else None
                        newest = w[0] if w is not None else idx - 1
                        if newest == idx:  # the common case: the newest window
                            wsize = w[1]
                            wdecayed = w[2]
                            w[1] = wsize + size
                            w[2] = wdecayed + delta
                        elif newest < idx:
                            windows.append([idx, size, delta])
                        else:
                            for pos, w in enumerate(windows):
                                if w[0] == idx:
                                    w[1] += size
                                    w[2] += delta
                                    break
                                if w[0] > idx:
                                    windows.insert(pos, [idx, size, delta])
                                    break
                        new_value = closed
                        for w in windows:
                            wsize = w[1]
                            wdecayed = w[2]
                            new_value += wdecayed if wsize <= cap else wdecayed * cap / wsize
                    if new_ref != old_ref:  # moved to ts
                        entry[0] = stamp
                    entry[1] = new_value
                    if closed_moved:
                        entry[2] = closed
                    entry[3] = count + 1

            # The rule's decay group: move its sum to the new reference, swap the rule's old value
            # for its new one, and move ``decayed`` (behaviour points at ts) by the change.
            grp = g.get(gkey)
            if grp is None:
                g[gkey] = [new_ref, new_value, k]
                decayed += new_value
                continue
            group_ref = grp[0]
            value = grp[1]
            if k and new_ref == ts and ts > group_ref:
                # The common case: the event is the newest of its group and moves it to ts. When the
                # rule was the group's newest before (old_ref == group_ref, so it was not fresh and
                # ts > old_ref) its factor is this very exp.
                before = value * (factor if old_ref == group_ref else exp((group_ref - ts) * k))
                value = before + new_value
                if not fresh:
                    if old_ref < ts:
                        value -= old_value * factor  # factor = exp((old_ref - ts) * k) from the update above
                    else:
                        value -= old_value
                grp[0] = stamp
            elif k:
                if ts > group_ref:
                    before = value * exp((group_ref - ts) * k)
                    if new_ref > group_ref:
                        value *= exp((group_ref - new_ref) * k)
                        grp[0] = group_ref = new_ref
                else:
                    before = value
                    if new_ref > group_ref:
                        value *= exp((group_ref - new_ref) * k)
                        grp[0] = group_ref = new_ref
                value += new_value if new_ref == group_ref else new_value * exp((new_ref - group_ref) * k)
                if not fresh:
                    if old_ref == group_ref:
                        value -= old_value
                    elif group_ref == ts and old_ref < ts:
                        value -= old_value * factor  # factor = exp((old_ref - ts) * k) from the update above
                    else:
                        value -= old_value * exp((old_ref - group_ref) * k)
            else:
                before = value
                if new_ref > group_ref:
                    grp[0] = new_ref
                value += new_value - old_value
            grp[1] = value
            # The group's reference is now >= ts, and reads before the reference do not grow.
            decayed += value - before

    if quiet:
        if ts > state["updated_at"]:
            state["updated_at"] = stamp
        return []

    decisions: list[dict[str, Any]] = [early] if early is not None else []
    # What can decide besides the thresholds: a route, a sticky flag, a trait change, a sales answer.
    acts = routes or sticky or changed or etype == "sales_feedback"
    # score = clip(min(fit_max, fit_raw * fit_scale) + min(beh_max, beh_raw * beh_scale), 0, 100).
    # Quiet step: nothing disarmed, no route, no flag/trait/lead change, and the score without its
    # clips (never below the clipped one) is below quiet_below, so no threshold can fire: the
    # decision block has nothing to do and the score is computed only if the settle needs it.
    if (
        disarmed or acts or fit_raw * fit_scale + (decayed + penalty) * beh_scale >= quiet_below
    ):
        total = _unrounded_score(fit_raw, decayed + penalty, model)
        if total < 0.0:
            score = 0.0
        elif total > 100.0:
            score = 100.0
        elif (
            disarmed and not acts
            and _thresholds_stay(model, disarmed, total, prev_fit, prev_decayed, prev_penalty)
        ):
            # The common step of a contact that already fired (e.g. an MQL reading a page): only
            # thresholds could decide, and none moves, so there is nothing for _decide to do.
            score = -1.0
        elif disarmed or routes or total >= quiet_below:
            score = round(total, 2)
        else:
            # Rounding moves a score by at most 0.005: below quiet_below no threshold can fire and
            # none is disarmed, so the rounded score is only needed if a trigger fires below.
            score = -1.0
        if score >= 0.0 or acts:
            score = _decide(
                state, model, etype, props, ts, score, total, changed, sticky, routes, disarmed,
                prev_fit, prev_decayed, prev_penalty, old_health if changed else None, decisions,
            )
    else:
        score = -1.0

    # _settle_lifecycle, inlined for the common case (no timer to cancel, membership unchanged).
    lead = state["lead_state"]
    now_in = lead == "nurture" and not state["suppressed"]
    if in_nurture is not now_in or (state["sla"] is not None and not (lead == "mql" and not state["suppressed"])):
        if score < 0.0:
            score = _score(fit_raw, decayed + penalty, model)
        _settle_lifecycle(state, model, ts, score, decisions)

    if ts > state["updated_at"]:
        state["updated_at"] = stamp
    return decisions


def _thresholds_stay(
    model: CompiledModel, disarmed: dict[str, int], total: float, prev_fit: float, prev_decayed: float,
    prev_penalty: float,
) -> bool:
    """True when :func:`_decide` would leave every threshold as it is: each disarmed one stays
    disarmed (this and the previous score at or above its re-arm level) and no armed one can
    fire (this score below its level). ``total`` is the score before rounding (the caller has
    checked 0 <= total <= 100); rounding moves a score by at most 0.005, so each comparison keeps
    a 0.01 margin and a closer call returns False (then _decide decides it on the rounded scores)."""
    previous: float = -1.0
    for ttype, level, rearm, _, _, _ in model.thresholds:
        if ttype in disarmed:
            if total < rearm + 0.01:
                return False
            if previous < 0.0:  # the previous score, as _decide computes it before rounding
                previous = _unrounded_score(prev_fit, prev_decayed + prev_penalty, model)
            if not (rearm + 0.01 <= previous <= 100.0):
                return False
        elif not (0.0 <= total <= level - 0.01):
            return False
    return True


def _decide(
    state: dict[str, Any], model: CompiledModel, etype: Any, props: dict[str, Any], ts: int, score: float,
    total: float, changed: dict[str, Any], sticky: tuple | None, routes: tuple | None, disarmed: dict[str, int],
    prev_fit: float, prev_decayed: float, prev_penalty: float, old_health: list | None,
    decisions: list[dict[str, Any]],
) -> float:
    """The decision part of :func:`apply_event` for a step that is not quiet: suppression, lead
    state, thresholds, routes and health, in that order. ``score`` is the rounded score, or -1.0
    while no decision has needed it; returns it (rounded if a decision needed it)."""
    previous = -1.0  # computed only when a decision needs it

    # Suppression first: it must win over every trigger decided in this same step.
    flag_changed = False
    if sticky:
        flags = state["flags"]
        for reason, where in sticky:
            if where is None or where(props):
                first = flags.get(reason)
                if first is None or ts < first:
                    flags[reason] = ts
                    flag_changed = True
    if flag_changed or changed:
        old_reasons = state["suppressed"]
        reasons = _suppression_reasons(state, model)
        if reasons != old_reasons:
            state["suppressed"] = reasons
            if score < 0.0:
                score = round(total, 2)
            previous = _score(prev_fit, prev_decayed + prev_penalty, model)
            if reasons and not old_reasons:
                decisions.append(
                    _fire(state, model, "suppress", ts, score, previous, model.band(score), _reason_list(reasons, state, ts))
                )
            elif old_reasons and not reasons:
                decisions.append(
                    _fire(
                        state, model, "unsuppress", ts, score, previous, model.band(score),
                        _reason_list(old_reasons, state, ts),
                    )
                )
            if "customer" in reasons:
                state["lead_state"] = "customer"
            elif state["lead_state"] == "customer":
                state["lead_state"] = "nurture"
        if changed:
            _lifecycle(state, model, changed, ts)
    if etype == "sales_feedback":
        _sales_feedback(state, props, ts)

    suppressed = state["suppressed"]
    if score >= 0.0:  # else: nothing disarmed and the score is below every threshold level
        for ttype, level, rearm, cooldown, suppressible, sets_mql in model.thresholds:
            if ttype in disarmed:
                if score >= rearm:
                    if previous < 0.0:
                        # The common case of a disarmed contact staying above rearm: decided on the
                        # unrounded previous score when rounding (<= 0.005) cannot change the answer.
                        if rearm + 0.01 <= _unrounded_score(prev_fit, prev_decayed + prev_penalty, model) <= 100.0:
                            continue
                        previous = _score(prev_fit, prev_decayed + prev_penalty, model)
                    if previous >= rearm:
                        continue
                del disarmed[ttype]
            if score < level or (suppressible and suppressed):
                continue
            if sets_mql and state["lead_state"] != "nurture":
                continue
            last = state["last_fired"].get(ttype)
            if last is not None and ts - last < cooldown:
                continue
            disarmed[ttype] = ts
            if sets_mql:
                state["lead_state"] = "mql"
                state["mql_at"] = ts
            if previous < 0.0:
                previous = _score(prev_fit, prev_decayed + prev_penalty, model)
            fired = _fire(state, model, ttype, ts, score, previous, model.band(score))
            decisions.append(fired)
            if sets_mql and model.sla_ms:
                # One timer per MQL; its breach id is derived from this MQL's ordinal.
                state["sla"] = {
                    "due": ts + model.sla_ms,
                    "mql": state["fired"][ttype],
                    "mql_trigger_id": fired["trigger_id"],
                    "mql_at": ts,
                    "score": score,
                }

    if routes:
        fit = min(model.fit_max, state["fit"] * model.fit_scale)
        for ttype, where, min_fit, min_score, cooldown, suppressible in routes:
            if where is not None and not where(props):
                continue
            if fit < min_fit or score < min_score or (suppressible and suppressed):
                continue
            last = state["last_fired"].get(ttype)
            if last is not None and ts - last < cooldown:
                continue
            if previous < 0.0:
                previous = _score(prev_fit, prev_decayed + prev_penalty, model)
            decisions.append(_fire(state, model, ttype, ts, score, previous, model.band(score)))

    if changed:
        health = state["health"]
        if health is not old_health and health is not None and health[1] == model.health_red:
            if old_health is None or old_health[1] != model.health_red:
                decisions.append(
                    _fire(
                        state, model, model.health_trigger, ts, health[0],
                        old_health[0] if old_health is not None else health[0], health[1],
                        [{"signal": f"health.{name}", "points": _num(state["traits"].get(trait)), "at": ts}
                         for name, trait, _ in model.health_components],
                    )
                )
    return score


# --- nurture exit and timers ----------------------------------------------------------------


def _in_nurture(state: dict[str, Any]) -> bool:
    """In the nurture program: lead state nurture and no suppression reason."""
    return state["lead_state"] == "nurture" and not state["suppressed"]


def _settle_lifecycle(
    state: dict[str, Any], model: CompiledModel, ts: int, score: float, decisions: list[dict[str, Any]]
) -> None:
    """End of a step: cancel a handoff timer that no longer applies, report a nurture exit."""
    sla = state["sla"]
    if sla is not None and (state["lead_state"] != "mql" or state["suppressed"]):
        state["sla"] = None  # answered (accept/reject/CRM stage), became a customer, or suppressed
    now_in = _in_nurture(state)
    if state["in_nurture"] and not now_in and model.nurture_exit:
        if state["suppressed"]:
            to = "suppressed"
            why = [{"signal": f"nurture_exit.suppressed.{r}", "points": 0.0, "at": state["flags"].get(r, ts)}
                   for r in state["suppressed"]]
        else:
            to = lead_state(state)
            why = [{"signal": f"nurture_exit.{to}", "points": 0.0, "at": ts}]
        trigger = _fire(state, model, "nurture_exit", ts, score, score, model.band(score),
                        why + top_reasons(state, model, ts, 3))
        trigger["to"] = to
        decisions.append(trigger)
    state["in_nurture"] = now_in


def _sla_breach(state: dict[str, Any], model: CompiledModel) -> dict[str, Any] | None:
    """Consume the pending handoff timer; the ``sla_breach`` trigger if the lead still waits for sales."""
    sla = state["sla"]
    state["sla"] = None
    if state["lead_state"] != "mql" or state["suppressed"]:
        return None  # defensive: a step cancels such timers already
    due = sla["due"]
    score = round(score_at(state, model, due), 2)
    fired = state["fired"]
    fired["sla_breach"] = fired.get("sla_breach", 0) + 1
    state["last_fired"]["sla_breach"] = due
    contact_id = state["contact_id"]
    reasons = [{"signal": "handoff.sla", "points": 0.0, "at": sla["mql_at"]}] + top_reasons(state, model, due, 3)
    return {
        # Derived from the MQL ordinal, not a breach counter: once per MQL, whoever fires it.
        "trigger_id": trigger_id(contact_id, "sla_breach", sla["mql"]),
        "type": "sla_breach",
        "contact_id": contact_id,
        "score": score,
        "previous_score": sla["score"],
        "band": model.band(score),
        "reasons": reasons,
        "rules_version": model.version,
        "event_ts": due,
        "route": model.sla_route,
        "mql_trigger_id": sla["mql_trigger_id"],
        "mql_at": sla["mql_at"],
        "sla_due": due,
    }


def next_due(state: dict[str, Any], model: CompiledModel | None = None) -> int | None:
    """Event time (epoch ms) at which :func:`due_triggers` has work for this contact, or None.

    Pure and cheap (a dict lookup): call it after every change of the state and keep a
    per-partition index ``due time -> contact keys`` of the non-None answers.
    """
    sla = state.get("sla")
    return int(sla["due"]) if sla is not None else None


def due_triggers(state: dict[str, Any], model: CompiledModel, now_ms: int) -> list[dict[str, Any]]:
    """Fire the timers due at ``now_ms`` (in place) and return their triggers; see "Timers" above."""
    sla = state.get("sla")
    if sla is None or now_ms < sla["due"]:
        return []
    breach = _sla_breach(state, model)
    return [breach] if breach is not None else []


def _num(value: Any) -> float:
    x = normalize.number(value)
    return round(x, 2) if x is not None else 0.0


def _reason_list(reasons: list[str], state: dict[str, Any], ts: int) -> list[dict[str, Any]]:
    flags = state["flags"]
    return [{"signal": f"suppression.{r}", "points": 0.0, "at": flags.get(r, ts)} for r in reasons]


def _lifecycle(state: dict[str, Any], model: CompiledModel, changed: dict[str, Any], ts: int) -> None:
    if model.lifecycle_trait not in changed or state["lead_state"] == "customer":
        return
    stage = normalize.text(changed[model.lifecycle_trait])
    if stage in model.lifecycle_sql and state["lead_state"] in ("nurture", "mql"):
        state["lead_state"] = "sql"
        state["sql_at"] = ts
    elif stage in model.lifecycle_nurture and state["lead_state"] in ("mql", "sql"):
        state["lead_state"] = "nurture"
        state["rejection"] = {"reason": str(changed[model.lifecycle_trait]), "at": ts}


def _sales_feedback(state: dict[str, Any], props: dict[str, Any], ts: int) -> None:
    if state["lead_state"] == "customer":
        return
    decision = normalize.text(props.get("decision"))
    if decision in ("accept", "accepted"):
        state["lead_state"] = "sql"
        state["sql_at"] = ts
    elif decision in ("reject", "rejected"):
        state["lead_state"] = "nurture"
        reason = props.get("reason")
        state["rejection"] = {"reason": str(reason) if reason is not None else None, "at": ts}


# --- reading ------------------------------------------------------------------------------


def _ranked(state: dict[str, Any], model: CompiledModel, now_ms: int) -> list[tuple]:
    """Every non-zero contribution as ``(-points, -at, signal, position, points, at)``, sorted.

    That is the order of the documented sort key ``(-points, -at, signal)``; ``position`` (the
    order rows are produced in) breaks full ties as a stable sort would, so tuples sort exactly
    like the row dicts did, without a key function and without building the rows not returned.
    """
    rows: list[tuple] = []
    fit_scale = model.fit_scale
    trait_ts = state["trait_ts"]
    for category, (label, points, path) in state["fit_detail"].items():
        p = round(points * fit_scale, 2)
        at = trait_ts.get(path, 0)
        rows.append((-p, -at, f"fit.{category}={label}", len(rows), p, at))
    for pid, points in state["penalty_detail"].items():
        p = round(points * model.beh_scale, 2)
        at = _penalty_at(state, model, pid)
        rows.append((-p, -at, pid, len(rows), p, at))
    rule_k = model.rule_k
    beh_scale = model.beh_scale
    for rid, entry in state["b"].items():
        k = rule_k.get(rid)
        if k is None:
            continue
        value = _term(entry, k, now_ms) * beh_scale
        if abs(value) >= 0.005:
            p = round(value, 2)
            at = entry[0]
            rows.append((-p, -at, rid, len(rows), p, at))
    rows.sort()
    return rows


def contributions(state: dict[str, Any], model: CompiledModel, now_ms: int) -> list[dict[str, Any]]:
    """Every non-zero contribution on the 0-100 scale (before the fit/behaviour clips), largest first."""
    return [{"signal": signal, "points": p, "at": at} for _, _, signal, _, p, at in _ranked(state, model, now_ms)]


def _penalty_at(state: dict[str, Any], model: CompiledModel, pid: str) -> int:
    for other, fields, _, _ in model.penalties:
        if other == pid:
            return max((state["trait_ts"].get(f, 0) for f in fields), default=0)
    return 0


def top_reasons(state: dict[str, Any], model: CompiledModel, now_ms: int, n: int = 3) -> list[dict[str, Any]]:
    """The ``n`` largest current contributions: ``[{"signal", "points", "at"}]``."""
    return [
        {"signal": signal, "points": p, "at": at} for _, _, signal, _, p, at in _ranked(state, model, now_ms)[:n]
    ]


def lead_state(state: dict[str, Any]) -> str:
    return "customer" if "customer" in state["suppressed"] else state["lead_state"]


def _for_model(state: dict[str, Any], model: CompiledModel) -> dict[str, Any]:
    """``state`` with its groups built for ``model`` (a shallow copy when they were not)."""
    if state["mv"] != model.version:
        state = dict(state)  # reading must not mutate: rebuild the groups on a shallow copy
        _rebuild_groups(state, model)
    return state


def _summary(state: dict[str, Any], model: CompiledModel, now_ms: int) -> dict[str, Any]:
    fit = min(model.fit_max, state["fit"] * model.fit_scale)
    beh_raw = _groups_decayed(state["g"], now_ms) + state["penalty"]
    behaviour = min(model.beh_max, beh_raw * model.beh_scale)
    score = _score(state["fit"], beh_raw, model)
    return {
        "contact_id": state["contact_id"],
        "score": score,
        "fit": round(fit, 2),
        "behaviour": round(behaviour, 2),
        "band": model.band(score),
        "state": lead_state(state),
        "suppressed": bool(state["suppressed"]),
        "rules_version": model.version,
        "updated_at": state["updated_at"],
    }


def summary(state: dict[str, Any], model: CompiledModel, now_ms: int) -> dict[str, Any]:
    """The scalar part of :func:`view` (what the read side indexes), without the reasons.

    The worker publishes this for every contact a batch touched; readers compute the
    reasons from the stored state when they ask for the contact.
    """
    return _summary(_for_model(state, model), model, now_ms)


def view(state: dict[str, Any], model: CompiledModel, now_ms: int) -> dict[str, Any]:
    """The read model for GET /v1/contacts/{id}, as of ``now_ms``."""
    state = _for_model(state, model)
    scalars = _summary(state, model, now_ms)
    health = state.get("health")
    return {
        "contact_id": scalars["contact_id"],
        "score": scalars["score"],
        "fit": scalars["fit"],
        "behaviour": scalars["behaviour"],
        "band": scalars["band"],
        "state": scalars["state"],
        "suppressed": scalars["suppressed"],
        "suppression_reasons": list(state["suppressed"]),
        "rules_version": model.version,
        "reasons": top_reasons(state, model, now_ms, 5),
        "traits": dict(state["traits"]),
        "updated_at": state["updated_at"],
        "mql_at": state["mql_at"],
        "sql_at": state["sql_at"],
        "rejection": state["rejection"],
        "sla_due": next_due(state),
        "health": {"score": health[0], "band": health[1], "rules_version": model.health_version} if health else None,
    }


# --- identity stitching -------------------------------------------------------------------


def merge_state(into: dict[str, Any], other: dict[str, Any], model: CompiledModel) -> None:
    """Fold ``other`` (e.g. an anonymous visitor) into ``into`` in place.

    Behaviour accumulators are added exactly (both brought to the later reference time,
    windows merged by index, caps re-applied to the merged windows), traits merge
    latest-by-event-time, sticky flags keep the earliest time, trigger bookkeeping keeps the
    furthest state. The merged scores therefore do not depend on which state is ``into``
    nor on the order several states are merged in. Triggers are decided at the next event.
    """
    lateness = model.lateness
    for rid, theirs in other["b"].items():
        mine = into["b"].get(rid)
        if mine is None:
            into["b"][rid] = json.loads(json.dumps(theirs))  # deep copy: states must not share lists
            continue
        k = model.rule_k.get(rid) or 0.0
        rule = model.rules.get(rid)
        cap = float(rule.cap.points) if rule is not None and rule.cap else 0.0
        window = int(rule.cap.window) if rule is not None and rule.cap else 0
        ref = max(mine[0], theirs[0])
        fm = exp((mine[0] - ref) * k) if k else 1.0
        ft = exp((theirs[0] - ref) * k) if k else 1.0
        mine[0] = ref
        mine[3] += theirs[3]
        mine[5] += theirs[5]
        if not cap or mine[4] is None or theirs[4] is None:
            mine[1] = mine[1] * fm + theirs[1] * ft
            mine[2] = mine[2] * fm + theirs[2] * ft
            continue
        windows: dict[int, list] = {w[0]: [w[0], w[1], w[2] * fm] for w in mine[4]}
        for idx, size, decayed in theirs[4]:
            w = windows.setdefault(idx, [idx, 0.0, 0.0])
            w[1] += size
            w[2] += decayed * ft
        closed = mine[2] * fm + theirs[2] * ft
        merged = []
        for idx in sorted(windows):
            w = windows[idx]
            if (idx + 1) * window + lateness <= ref:
                closed += _capped(w[1], w[2], cap)
            else:
                merged.append(w)
        mine[2] = closed
        mine[4] = merged
        mine[1] = closed + sum(_capped(w[1], w[2], cap) for w in merged)

    for path, ts in other["trait_ts"].items():
        _merge_traits(into, {path: other["traits"].get(path)}, ts)  # flat paths merge as themselves
    for reason, ts in other["flags"].items():
        if reason not in into["flags"] or ts < into["flags"][reason]:
            into["flags"][reason] = ts
    for ttype, ts in other["disarmed"].items():
        into["disarmed"][ttype] = max(ts, into["disarmed"].get(ttype, ts))
    for ttype, ts in other["last_fired"].items():
        into["last_fired"][ttype] = max(ts, into["last_fired"].get(ttype, ts))
    for ttype, n in other["fired"].items():
        into["fired"][ttype] = max(n, into["fired"].get(ttype, 0))
    if _LEAD_RANK.get(other["lead_state"], 0) > _LEAD_RANK.get(into["lead_state"], 0):
        into["lead_state"] = other["lead_state"]
    for key in ("mql_at", "sql_at"):
        if other[key] is not None and (into[key] is None or other[key] < into[key]):
            into[key] = other[key]
    if other["rejection"] and (not into["rejection"] or other["rejection"]["at"] > into["rejection"]["at"]):
        into["rejection"] = dict(other["rejection"])
    into["updated_at"] = max(into["updated_at"], other["updated_at"])
    mine, theirs = into.get("sla"), other.get("sla")
    if theirs is not None and (mine is None or (theirs["due"], theirs["mql"]) < (mine["due"], mine["mql"])):
        into["sla"] = dict(theirs)  # the earlier deadline (ties: the earlier MQL) wins, whichever side it came from
    else:
        into["sla"] = mine
    # A side that already reported its nurture exit keeps the merged contact from reporting it again.
    into["in_nurture"] = into.get("in_nurture", True) and other.get("in_nurture", True)
    _recompute_profile(into, model)
    if into["health"] is None and other["health"] is not None:
        into["health"] = list(other["health"])
    into["suppressed"] = _suppression_reasons(into, model)
    if "customer" in into["suppressed"]:
        into["lead_state"] = "customer"
    if into["sla"] is not None and (into["lead_state"] != "mql" or into["suppressed"]):
        into["sla"] = None
    _rebuild_groups(into, model)


__all__ = [
    "apply_event",
    "contributions",
    "due_triggers",
    "lead_state",
    "merge_state",
    "new_state",
    "next_due",
    "score_at",
    "top_reasons",
    "trigger_id",
    "view",
]


# Last: run the compiled twin of this module when it was built from this exact file (rules/native.py).
from rules.native import adopt  # noqa: E402

adopt(globals())

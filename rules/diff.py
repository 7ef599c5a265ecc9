"""What changes between two scoring models, in words (``leadpulse rules diff OLD NEW``).

Compares validated specs (not YAML text), so reordering keys or reformatting is no
change, while every weight, cap, half-life, band edge, threshold, track mapping,
suppression and routing rule change is one sentence.
"""

from __future__ import annotations

from typing import Any

from rules.durations import format_duration
from rules.model import CompiledModel


def _fmt(value: Any, duration: bool = False) -> str:
    if value is None:
        return "none"
    if duration and isinstance(value, int):
        return format_duration(value)
    if isinstance(value, float) and value.is_integer():
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)


def _compare_fields(out: list[str], what: str, old: dict, new: dict, durations: frozenset = frozenset()) -> None:
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a != b:
            out.append(f"{what}: {key} {_fmt(a, key in durations)} -> {_fmt(b, key in durations)}")


def _keyed(items: list[Any], key: str) -> dict[str, dict]:
    return {getattr(i, key): i.model_dump(by_alias=True, exclude_none=True) for i in items}


def _diff_keyed(out: list[str], what: str, old: dict[str, dict], new: dict[str, dict], durations: frozenset) -> None:
    for name in old.keys() - new.keys():
        out.append(f"removed {what} {name!r}")
    for name in new.keys() - old.keys():
        out.append(f"added {what} {name!r}: {_summary(new[name], durations)}")
    for name in sorted(old.keys() & new.keys()):
        _compare_fields(out, f"{what} {name!r}", _flat(old[name]), _flat(new[name]), durations)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k not in ("where",):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _summary(d: dict, durations: frozenset) -> str:
    return ", ".join(f"{k}={_fmt(v, k in durations)}" for k, v in _flat(d).items() if k not in ("id", "type", "reason"))


def diff_models(old: CompiledModel, new: CompiledModel) -> list[str]:
    """Sentences describing every change from ``old`` to ``new`` (empty when equivalent)."""
    a, b = old.spec, new.spec
    out: list[str] = []
    if a.version != b.version:
        out.append(f"version {a.version!r} -> {b.version!r}")
    if a.version == b.version and a != b:
        out.append(f"warning: the content changed but the version is still {a.version!r}")

    _compare_fields(out, "fit", {"weight": a.fit.weight, "full_raw": a.fit.full_raw},
                    {"weight": b.fit.weight, "full_raw": b.fit.full_raw})
    cats_a = {c.name: c for c in a.fit.categories}
    cats_b = {c.name: c for c in b.fit.categories}
    for name in cats_a.keys() - cats_b.keys():
        out.append(f"removed fit category {name!r}")
    for name in cats_b.keys() - cats_a.keys():
        opts = ", ".join(f"{o.label} +{o.points:g}" for o in cats_b[name].options)
        out.append(f"added fit category {name!r}: {opts}")
    for name in sorted(cats_a.keys() & cats_b.keys()):
        ca, cb = cats_a[name], cats_b[name]
        if ca.fields != cb.fields:
            out.append(f"fit {name}: reads {ca.fields} -> {cb.fields}")
        if ca.normalize != cb.normalize:
            out.append(f"fit {name}: normalize {ca.normalize} -> {cb.normalize}")
        _diff_keyed(out, f"fit {name} option", _keyed(ca.options, "label"), _keyed(cb.options, "label"), frozenset())
        order_a = [o.label for o in ca.options if o.label in {x.label for x in cb.options}]
        order_b = [o.label for o in cb.options if o.label in {x.label for x in ca.options}]
        if order_a != order_b:
            out.append(f"fit {name}: option priority {order_a} -> {order_b}")

    durations = frozenset({"half_life", "cap.window", "window", "cooldown", "allowed_lateness"})
    _compare_fields(
        out, "behaviour",
        {"weight": a.behaviour.weight, "full_raw": a.behaviour.full_raw, "allowed_lateness": a.behaviour.allowed_lateness},
        {"weight": b.behaviour.weight, "full_raw": b.behaviour.full_raw, "allowed_lateness": b.behaviour.allowed_lateness},
        durations,
    )
    _diff_keyed(out, "behaviour rule", _keyed(a.behaviour.rules, "id"), _keyed(b.behaviour.rules, "id"), durations)
    _diff_keyed(out, "negative rule", _keyed(a.behaviour.negative_rules, "id"),
                _keyed(b.behaviour.negative_rules, "id"), durations)
    _diff_keyed(out, "trait penalty", _keyed(a.behaviour.trait_penalties, "id"),
                _keyed(b.behaviour.trait_penalties, "id"), durations)

    for name in a.track_names.keys() - b.track_names.keys():
        out.append(f"track event {name!r} no longer maps to {a.track_names[name]!r}")
    for name in b.track_names.keys() - a.track_names.keys():
        out.append(f"track event {name!r} now maps to {b.track_names[name]!r}")
    for name in sorted(a.track_names.keys() & b.track_names.keys()):
        if a.track_names[name] != b.track_names[name]:
            out.append(f"track event {name!r} maps to {a.track_names[name]!r} -> {b.track_names[name]!r}")

    bands_a = {x.name: x.min for x in a.bands}
    bands_b = {x.name: x.min for x in b.bands}
    for name in bands_a.keys() - bands_b.keys():
        out.append(f"removed band {name!r}")
    for name in bands_b.keys() - bands_a.keys():
        out.append(f"added band {name!r} starting at {bands_b[name]:g}")
    for name in [x.name for x in a.bands if x.name in bands_b]:
        if bands_a[name] != bands_b[name]:
            out.append(f"band {name!r} starts at {bands_a[name]:g} -> {bands_b[name]:g}")
    if a.mql_threshold != b.mql_threshold:
        out.append(f"mql_threshold {a.mql_threshold:g} -> {b.mql_threshold:g}")

    _diff_keyed(out, "threshold", _keyed(a.thresholds, "type"), _keyed(b.thresholds, "type"), durations)
    _diff_keyed(out, "routing rule", _keyed(a.routing, "type"), _keyed(b.routing, "type"), durations)

    def sup_key(items):
        return {f"{s.reason} ({s.trait or s.event})": s.model_dump(by_alias=True, exclude_none=True) for s in items}

    _diff_keyed(out, "suppression", sup_key(a.suppression), sup_key(b.suppression), durations)
    if a.lifecycle != b.lifecycle:
        _compare_fields(out, "lifecycle", a.lifecycle.model_dump(), b.lifecycle.model_dump())
    if a.handoff != b.handoff:
        _compare_fields(out, "handoff", a.handoff.model_dump(), b.handoff.model_dump(), frozenset({"sla"}))

    ha, hb = old.health_spec, new.health_spec
    if (ha is None) != (hb is None):
        out.append("health model " + ("added" if hb is not None else "removed"))
    elif ha is not None and hb is not None:
        if ha.version != hb.version:
            out.append(f"health version {ha.version!r} -> {hb.version!r}")
        _diff_keyed(out, "health component", _keyed(ha.components, "name"), _keyed(hb.components, "name"), durations)
        hba = {x.name: x.min for x in ha.bands}
        hbb = {x.name: x.min for x in hb.bands}
        _compare_fields(out, "health band start", hba, hbb)
    return out

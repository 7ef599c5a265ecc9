"""Loading and compiling scoring models: YAML -> validated spec -> :class:`CompiledModel`.

This module owns the step between a model file and the engine's hot path. A file is
validated completely (the lead model and the health model it references) before any
compiled object exists, so ``load_model`` never returns a half-valid model. The compiled
model is plain Python: rules indexed by signal type in dicts of tuples, matchers as
closures, decay constants precomputed (``k = ln 2 / half_life``), so scoring an event is a
few dict lookups and no pydantic.
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Any, Callable

from rules import normalize
from rules.schema import (
    BehaviourRule,
    HealthSpec,
    Matcher,
    ModelError,
    ModelSpec,
    read_yaml,
)

DEFAULT_MODEL_PATH = Path(__file__).parent / "models" / "default.yaml"

# CompiledModel.plans["track"]: resolve the event's signal from its name first (CompiledModel.signal_of).
TRACK_PLAN: Any = object()

Predicate = Callable[[Any], bool]

_TRUE_STRINGS = frozenset({"true", "yes", "1", "y", "on"})


def truthy(value: Any) -> bool:
    """CRM booleans arrive as true, "true", "Yes", 1 ..."""
    if isinstance(value, str):
        return value.strip().lower() in _TRUE_STRINGS
    return bool(value) and value is not None


def _property_norm(value: Any) -> Any:
    # Event properties (paths, bounce types) are compared lower-cased but otherwise verbatim:
    # text normalisation would turn "/jobs" into "jobs" and make prefixes ambiguous.
    if isinstance(value, str):
        return value.strip().lower()
    return value


def compile_matcher(m: Matcher, norm: Callable[[Any], Any]) -> Predicate:
    """A predicate on a raw value; ``norm`` is applied to the value and to the needles alike."""
    needle_norm = norm if norm is not normalize.email_domain else (lambda v: str(v).strip().lower())
    if m.range is not None:
        lo_incl, lo_excl, hi_incl, hi_excl = m.range.gte, m.range.gt, m.range.lte, m.range.lt

        def in_range(value: Any) -> bool:
            x = normalize.number(value)
            if x is None:
                return False
            return not (
                (lo_incl is not None and x < lo_incl)
                or (lo_excl is not None and x <= lo_excl)
                or (hi_incl is not None and x > hi_incl)
                or (hi_excl is not None and x >= hi_excl)
            )

        return in_range
    if m.equals is not None:
        return _equals_predicate(m.equals, norm, needle_norm)
    if m.in_ is not None:
        preds = [_equals_predicate(v, norm, needle_norm) for v in m.in_]
        if all(not isinstance(v, bool) for v in m.in_):
            wanted = frozenset(needle_norm(v) for v in m.in_)
            return lambda value: norm(value) in wanted
        return lambda value: any(p(value) for p in preds)
    if m.contains is not None:
        parts = [needle_norm(p) for p in ([m.contains] if isinstance(m.contains, str) else m.contains)]
        parts = [p for p in parts if p]

        def contains(value: Any) -> bool:
            v = norm(value)
            return isinstance(v, str) and any(p in v for p in parts)

        return contains
    if m.prefix is not None:
        prefixes = tuple(
            p for p in (needle_norm(x) for x in ([m.prefix] if isinstance(m.prefix, str) else m.prefix)) if p
        )

        def has_prefix(value: Any) -> bool:
            v = norm(value)
            return isinstance(v, str) and v.startswith(prefixes)

        return has_prefix
    pattern = re.compile(m.regex or "", re.IGNORECASE)

    def regex(value: Any) -> bool:
        v = norm(value)
        return v is not None and pattern.search(str(v)) is not None

    return regex


def _equals_predicate(expected: Any, norm: Callable[[Any], Any], needle_norm: Callable[[Any], Any]) -> Predicate:
    if isinstance(expected, bool):
        return lambda value: value is not None and truthy(value) == expected
    if isinstance(expected, (int, float)):
        return lambda value: normalize.number(value) == expected
    want = needle_norm(expected)
    return lambda value: norm(value) == want


def compile_where(where: dict[str, Any]) -> Predicate | None:
    """Property filters (all must hold) -> predicate on the event's properties dict."""
    if not where:
        return None
    checks: list[tuple[str, Predicate]] = []
    for key, spec in where.items():
        if isinstance(spec, Matcher) and spec.prefix is not None and len(where) == 1:
            # The common hot-path filter (page path prefix) gets a closure without generic dispatch.
            return normalize.prefix_where(key, spec.prefix)
        pred = compile_matcher(spec if isinstance(spec, Matcher) else Matcher(equals=spec), _property_norm)
        checks.append((key, pred))

    def matches(props: dict[str, Any]) -> bool:
        for key, pred in checks:
            value = props.get(key)
            if value is None and key == "path":
                value = normalize.url_path(props.get("url"))
            if not pred(value):
                return False
        return True

    return matches


def _memo_for(norm: Callable[[Any], Any], pred: Predicate) -> Predicate:
    """``normalize.memo_str(pred)``, except for email-domain matchers: addresses are (nearly) one per contact,
    so remembered answers are hardly ever asked again and only fill and clear the memo, while the
    check itself is a split and a set lookup."""
    return pred if norm is normalize.email_domain else normalize.memo_str(pred)


class CompiledModel:
    """A validated scoring model compiled into lookup tables; immutable by convention."""

    def __init__(self, spec: ModelSpec, health: HealthSpec | None = None, path: str | None = None):
        self.spec = spec
        self.health_spec = health
        self.path = path
        self.version: str = spec.version

        fit = spec.fit
        self.fit_max = float(fit.weight)
        self.fit_scale = float(fit.weight) / float(fit.full_raw)
        self.fit_categories = []
        for cat in fit.categories:
            norm = normalize.NORMALISERS[cat.normalize]
            options = tuple((o.label, float(o.points), _memo_for(norm, compile_matcher(o, norm))) for o in cat.options)
            self.fit_categories.append((cat.name, tuple(cat.fields), options))

        beh = spec.behaviour
        self.beh_max = float(beh.weight)
        self.beh_scale = float(beh.weight) / float(beh.full_raw)
        self.lateness = int(beh.allowed_lateness)
        self.penalties = []
        for pen in beh.trait_penalties:
            norm = normalize.NORMALISERS[pen.normalize]
            self.penalties.append(
                (pen.id, tuple(pen.fields), float(pen.points), _memo_for(norm, compile_matcher(pen, norm)))
            )

        # signal -> list of (rule_id, points, k, cap_points or 0.0, window_ms or 0, where predicate or None,
        # decay group key, the raw size an event adds to a cap window: ``points if points > 0 else
        # -points``, the engine's exact expression). Rules sharing a half-life share one running sum
        # in the state ("g").
        by_signal: dict[str, list[tuple]] = {}
        self.rule_k: dict[str, float] = {}
        self.rules: dict[str, BehaviourRule] = {}
        self.rule_group: dict[str, str] = {}
        for rule in beh.rules + beh.negative_rules:
            k = math.log(2) / rule.half_life if rule.half_life else 0.0
            cap = float(rule.cap.points) if rule.cap else 0.0
            window = int(rule.cap.window) if rule.cap else 0
            group = str(rule.half_life or 0)
            points = float(rule.points)
            by_signal.setdefault(rule.signal, []).append(
                (rule.id, points, k, cap, window, compile_where(rule.where), group, points if points > 0 else -points)
            )
            self.rule_k[rule.id] = k
            self.rule_group[rule.id] = group
            self.rules[rule.id] = rule

        # Exact names first; a case/space-insensitive fallback for sloppy clients.
        self.track_names = dict(spec.track_names)
        self.track_names_loose = {_loose(k): v for k, v in spec.track_names.items()}

        # Bands highest first so the lookup stops at the first band whose min is <= score.
        self.bands = tuple(sorted(((float(b.min), b.name) for b in spec.bands), reverse=True))
        self.band_rank = {b.name: i for i, b in enumerate(spec.bands)}
        band_min = {b.name: float(b.min) for b in spec.bands}

        # (type, level, rearm_below, cooldown_ms, suppressible, sets_mql)
        self.thresholds = tuple(
            (
                t.type,
                float(t.score if t.score is not None else band_min[t.band]),
                float(t.score if t.score is not None else band_min[t.band]) - float(t.hysteresis),
                int(t.cooldown),
                t.suppressible,
                t.type == "mql",
            )
            for t in spec.thresholds
        )
        # A score (unrounded, within 0-100) below this cannot reach any threshold level, even
        # after rounding to 2 decimals (which moves it by at most 0.005): the engine then skips
        # the rounding and the threshold loop when no threshold is disarmed. -inf disables that.
        levels = [level for _, level, _, _, _, _ in self.thresholds]
        low = min(levels) if levels else math.inf
        self.quiet_below = low - 0.01 if low > 0.01 else -math.inf
        self.mql_threshold = float(spec.mql_threshold)

        routing: dict[str, list[tuple]] = {}
        for r in spec.routing:
            routing.setdefault(r.signal, []).append(
                (r.type, compile_where(r.where), float(r.min_fit), float(r.min_score), int(r.cooldown), r.suppressible)
            )

        self.suppress_traits = []
        suppress_events: dict[str, list[tuple]] = {}
        self.suppression_reasons: list[str] = []
        for s in spec.suppression:
            if s.reason not in self.suppression_reasons:
                self.suppression_reasons.append(s.reason)
            if s.trait is not None:
                m = Matcher(equals=s.equals) if s.equals is not None else Matcher(**{"in": s.in_})
                self.suppress_traits.append((s.reason, s.trait, normalize.memo_str(compile_matcher(m, normalize.text))))
            else:
                suppress_events.setdefault(s.event, []).append((s.reason, compile_where(s.where)))

        # The engine's per-event dispatch: signal -> (rules, routes, sticky suppressions, gain), one
        # dict lookup per event instead of three; gain (the sum of the rules' positive points)
        # bounds what one event can add to the score.
        self.plans: dict[str, tuple] = {}
        for signal in {*by_signal, *routing, *suppress_events}:
            rules = tuple(by_signal.get(signal, ()))
            routes = routing.get(signal)
            sticky = suppress_events.get(signal)
            gain = sum(max(rule[1], 0.0) for rule in rules)
            self.plans[signal] = (rules, tuple(routes) if routes else None, tuple(sticky) if sticky else None, float(gain))
        # A track event scores as the signal its name maps to (signal_of), never as "track".
        self.plans["track"] = TRACK_PLAN

        self.lifecycle_trait = spec.lifecycle.trait
        self.lifecycle_sql = frozenset(normalize.text(v) for v in spec.lifecycle.sql)
        self.lifecycle_nurture = frozenset(normalize.text(v) for v in spec.lifecycle.nurture)

        # MQL handoff: SLA timer length (None = no timer), escalation route, nurture-exit trigger on/off.
        self.sla_ms: int | None = spec.handoff.sla
        self.sla_route: str = spec.handoff.route
        self.nurture_exit: bool = spec.handoff.nurture_exit

        if health is not None:
            self.health_version: str | None = health.version
            self.health_components = tuple((c.name, c.trait, float(c.weight)) for c in health.components)
            self.health_bands = tuple(sorted(((float(b.min), b.name) for b in health.bands), reverse=True))
            self.health_red = health.red_band
            self.health_trigger = health.trigger
        else:
            self.health_version = None
            self.health_components = ()
            self.health_bands = ()
            self.health_red = ""
            self.health_trigger = ""

    def __repr__(self) -> str:
        return f"CompiledModel(version={self.version!r}, path={self.path!r})"

    def band(self, score: float) -> str:
        for low, name in self.bands:
            if score >= low:
                return name
        return self.bands[-1][1]

    def signal_of(self, event: dict[str, Any]) -> str:
        """The signal type an event scores as: its type, or for ``track`` the mapped name ('' if unmapped)."""
        etype = event.get("type") or ""
        if etype != "track":
            return etype
        name = event.get("name") or (event.get("properties") or {}).get("event") or ""
        if not isinstance(name, str):
            return ""
        return self.track_names.get(name) or self.track_names_loose.get(_loose(name), "")


def _loose(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def compile_spec(spec: ModelSpec, health: HealthSpec | None = None, path: str | None = None) -> CompiledModel:
    return CompiledModel(spec, health, path)


def load_model(path: str | Path) -> CompiledModel:
    """Validate a model file (and its health model) and compile it; raises :class:`ModelError`."""
    spec = read_yaml(path, ModelSpec)
    assert isinstance(spec, ModelSpec)
    health = None
    if spec.health_model:
        health_path = Path(spec.health_model)
        if not health_path.is_absolute():
            health_path = Path(path).parent / health_path
        if not health_path.exists():
            from rules.schema import _node_at  # local: only needed to locate this one error
            import yaml

            root = yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
            node, _ = _node_at(root, ("health_model",))
            line = node.start_mark.line + 1 if node is not None else None
            raise ModelError([(str(path), line, "health_model", f"file not found: {health_path}")])
        health = read_yaml(health_path, HealthSpec)
        assert isinstance(health, HealthSpec)
    try:
        return CompiledModel(spec, health, str(path))
    except (ValueError, re.error) as exc:  # pragma: no cover - validation catches these first
        raise ModelError([(str(path), None, "", str(exc))]) from exc


@functools.lru_cache(maxsize=1)
def default_model() -> CompiledModel:
    """The model shipped in rules/models/default.yaml (compiled once per process)."""
    return load_model(DEFAULT_MODEL_PATH)


# Last: run the compiled twin of this module when it was built from this exact file (rules/native.py):
# the predicates it builds (trait matchers, property filters) run on every profile re-score.
from rules.native import adopt  # noqa: E402

adopt(globals())

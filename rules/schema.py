"""The scoring-model file format: pydantic models for the YAML, and reading with located errors.

This module owns *what a valid model file is*. It turns a YAML file into a validated
:class:`ModelSpec` (or a health :class:`HealthSpec`) and raises :class:`ModelError`
whose message names the file, the line and the field of every problem, e.g.::

    rules/models/bad.yaml:14:13: behaviour.rules.2.half_life: not a duration: '14 days' ...

Line numbers come from the YAML node marks: the document is composed once into a node
tree, pydantic validates the plain data, and each error location (a tuple of keys and
indexes) is walked back through the node tree to the node that holds the bad value.

Nothing here runs on the scoring hot path; :mod:`rules.model` compiles a spec into
plain lookup tables once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rules.durations import parse_duration

# Signal types the engine can score: the normalised event types of DESIGN.md section 3
# that carry behaviour (identity and CRM events change traits, not behaviour points).
EVENT_SIGNALS = frozenset(
    {
        "page_view",
        "time_on_site",
        "demo_request",
        "whitepaper_download",
        "webinar_attended",
        "email_open",
        "email_click",
        "email_reply",
        "email_delivered",
        "email_bounce",
        "unsubscribe",
        "spam_report",
        "linkedin_engagement",
        "twitter_engagement",
        "sales_feedback",
        "crm_update",
        "identify",
        "group",
        "alias",
    }
)


class ModelError(ValueError):
    """A model file that cannot be used; ``problems`` lists ``(file, line, field, message)``."""

    def __init__(self, problems: list[tuple[str, int | None, str, str]]):
        self.problems = problems
        super().__init__("\n".join(_format_problem(p) for p in problems))


def _format_problem(problem: tuple[str, int | None, str, str]) -> str:
    file, line, field, message = problem
    where = f"{file}:{line}" if line is not None else file
    return f"{where}: {field or '<document>'}: {message}" if field else f"{where}: {message}"


class _Strict(BaseModel):
    # Typos in a model file must fail loudly instead of silently dropping a rule setting.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


def _duration(value: Any) -> int:
    return parse_duration(value)


def _check_regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
    return value


class NumericRange(_Strict):
    """Bounds for numeric matchers; any subset of gte/gt/lte/lt."""

    gte: float | None = None
    gt: float | None = None
    lte: float | None = None
    lt: float | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> NumericRange:
        if self.gte is None and self.gt is None and self.lte is None and self.lt is None:
            raise ValueError("a range needs at least one of gte, gt, lte, lt")
        return self


class Matcher(_Strict):
    """One test on a (normalised) value: exactly one of equals / in / contains / regex / range / prefix."""

    equals: str | float | bool | None = None
    in_: list[str | float | bool] | None = Field(None, alias="in")
    contains: str | list[str] | None = None
    regex: str | None = None
    prefix: str | list[str] | None = None
    range: NumericRange | None = None

    @field_validator("regex")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        return _check_regex(value)

    @model_validator(mode="after")
    def _exactly_one(self) -> Matcher:
        kinds = [k for k in ("equals", "in_", "contains", "regex", "prefix", "range") if getattr(self, k) is not None]
        if len(kinds) != 1:
            named = ", ".join("in" if k == "in_" else k for k in kinds) or "none"
            raise ValueError(f"give exactly one of equals, in, contains, regex, prefix, range (got {named})")
        if self.in_ and any(isinstance(v, bool) for v in self.in_) and any(isinstance(v, str) for v in self.in_):
            # YAML 1.1 reads bare NO / yes / off as booleans: the Norway problem.
            raise ValueError("list mixes text and true/false; quote values such as 'NO' or 'yes'")
        return self


class FitOption(Matcher):
    """A labelled match inside a fit category, worth ``points`` raw fit points."""

    label: str
    points: float = Field(ge=0)


class FitCategory(_Strict):
    """One fit dimension (title, organisation, size, geography): first matching option wins."""

    name: str
    fields: list[str] = Field(min_length=1)
    normalize: Literal["text", "number", "country", "email_domain"] = "text"
    options: list[FitOption] = Field(min_length=1)


class Fit(_Strict):
    weight: float = Field(40, gt=0, le=100)
    full_raw: float = Field(80, gt=0)
    categories: list[FitCategory] = Field(default_factory=list)

    @field_validator("categories")
    @classmethod
    def _unique(cls, value: list[FitCategory]) -> list[FitCategory]:
        _no_duplicates([c.name for c in value], "fit category")
        return value


class Cap(_Strict):
    points: float = Field(gt=0)
    window: int

    @field_validator("window", mode="before")
    @classmethod
    def _parse_window(cls, value: Any) -> int:
        return _duration(value)

    @field_validator("window")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("window must be longer than 0")
        return value


class BehaviourRule(_Strict):
    """Points for an event signal, optionally filtered on event properties."""

    id: str
    signal: str
    where: dict[str, str | float | bool | Matcher] = Field(default_factory=dict)
    points: float
    cap: Cap | None = None
    half_life: int | None = None
    description: str | None = None

    @field_validator("half_life", mode="before")
    @classmethod
    def _hl(cls, value: Any) -> int | None:
        if value is None:
            return None
        ms = _duration(value)
        if ms <= 0:
            raise ValueError("half_life must be longer than 0 (omit it or write null for no decay)")
        return ms

    @field_validator("points")
    @classmethod
    def _nonzero(cls, value: float) -> float:
        if value == 0:
            raise ValueError("points must not be 0")
        return value


class TraitPenalty(Matcher):
    """Raw behaviour points added while a trait matches (e.g. free-mail domain); no decay."""

    id: str
    fields: list[str] = Field(min_length=1)
    normalize: Literal["text", "number", "country", "email_domain"] = "text"
    points: float = Field(lt=0)


class Behaviour(_Strict):
    weight: float = Field(60, gt=0, le=100)
    full_raw: float = Field(100, gt=0)
    allowed_lateness: int = 7 * 86_400_000
    rules: list[BehaviourRule] = Field(default_factory=list)
    negative_rules: list[BehaviourRule] = Field(default_factory=list)
    trait_penalties: list[TraitPenalty] = Field(default_factory=list)

    @field_validator("allowed_lateness", mode="before")
    @classmethod
    def _parse_allowed_lateness(cls, value: Any) -> int:
        return _duration(value)

    @field_validator("rules")
    @classmethod
    def _positive(cls, value: list[BehaviourRule]) -> list[BehaviourRule]:
        for rule in value:
            if rule.points < 0:
                raise ValueError(f"rule {rule.id!r}: negative points belong in negative_rules")
        return value

    @field_validator("negative_rules")
    @classmethod
    def _negative(cls, value: list[BehaviourRule]) -> list[BehaviourRule]:
        for rule in value:
            if rule.points > 0:
                raise ValueError(f"rule {rule.id!r}: a negative rule needs points < 0")
        return value


class Band(_Strict):
    name: str
    min: float = Field(ge=0, le=100)


class Threshold(_Strict):
    """A score crossing that fires a trigger: ``score`` or the lower edge of ``band``."""

    type: str
    score: float | None = Field(None, ge=0, le=100)
    band: str | None = None
    hysteresis: float = Field(10, ge=0)
    cooldown: int = 86_400_000
    suppressible: bool = True

    @field_validator("cooldown", mode="before")
    @classmethod
    def _parse_cooldown(cls, value: Any) -> int:
        return _duration(value)

    @model_validator(mode="after")
    def _one_level(self) -> Threshold:
        if (self.score is None) == (self.band is None):
            raise ValueError("give exactly one of score or band")
        return self


class RoutingRule(_Strict):
    """An event-driven trigger: a signal (with property filters) from a contact that fits."""

    type: str
    signal: str
    where: dict[str, str | float | bool | Matcher] = Field(default_factory=dict)
    min_fit: float = Field(0, ge=0)
    min_score: float = Field(0, ge=0, le=100)
    cooldown: int = 86_400_000
    suppressible: bool = True

    @field_validator("cooldown", mode="before")
    @classmethod
    def _parse_cooldown(cls, value: Any) -> int:
        return _duration(value)


class SuppressionRule(_Strict):
    """A reason not to contact: a trait condition (ends when the trait changes) or a sticky event."""

    reason: str
    trait: str | None = None
    equals: str | float | bool | None = None
    in_: list[str | float | bool] | None = Field(None, alias="in")
    event: str | None = None
    where: dict[str, str | float | bool | Matcher] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _kind(self) -> SuppressionRule:
        if (self.trait is None) == (self.event is None):
            raise ValueError("give exactly one of trait or event")
        if self.trait is not None and (self.equals is None) == (self.in_ is None):
            raise ValueError("a trait rule needs exactly one of equals or in")
        if self.event is not None and (self.equals is not None or self.in_ is not None):
            raise ValueError("an event rule filters with where, not equals/in")
        return self


class LifecycleMap(_Strict):
    """CRM lifecycle_stage values that move the lead state (values are normalised to lower case)."""

    trait: str = "lifecycle_stage"
    sql: list[str] = Field(default_factory=lambda: ["opportunity", "sql"])
    nurture: list[str] = Field(default_factory=lambda: ["closed_lost", "recycled"])


class Handoff(_Strict):
    """The marketing -> sales handoff (DESIGN.md section 5).

    ``sla``: how long sales has, from the MQL trigger (event time), to accept or reject
    before an ``sla_breach`` trigger fires (null: no timer). ``route``: the escalation
    route named on the breach trigger. ``nurture_exit``: emit a ``nurture_exit`` trigger
    when a contact leaves nurture (see rules.engine).
    """

    sla: int | None = 4 * 3_600_000
    route: str = Field("escalation", min_length=1)
    nurture_exit: bool = True

    @field_validator("sla", mode="before")
    @classmethod
    def _parse_sla(cls, value: Any) -> int | None:
        if value is None:
            return None
        ms = _duration(value)
        if ms <= 0:
            raise ValueError("sla must be longer than 0 (write null for no SLA timer)")
        return ms


class ModelSpec(_Strict):
    """A lead scoring model file (rules/models/default.yaml is the reference)."""

    version: str = Field(min_length=1)
    description: str | None = None
    fit: Fit
    behaviour: Behaviour
    track_names: dict[str, str] = Field(default_factory=dict)
    bands: list[Band] = Field(min_length=1)
    mql_threshold: float = Field(80, ge=0, le=100)
    thresholds: list[Threshold] = Field(default_factory=list)
    routing: list[RoutingRule] = Field(default_factory=list)
    suppression: list[SuppressionRule] = Field(default_factory=list)
    lifecycle: LifecycleMap = Field(default_factory=LifecycleMap)
    handoff: Handoff = Field(default_factory=Handoff)
    health_model: str | None = None

    @field_validator("bands")
    @classmethod
    def _bands(cls, value: list[Band]) -> list[Band]:
        _no_duplicates([b.name for b in value], "band")
        if value[0].min != 0:
            raise ValueError("the first band must start at 0")
        for lower, upper in zip(value, value[1:]):
            if upper.min <= lower.min:
                raise ValueError(f"band {upper.name!r} must start above band {lower.name!r} ({lower.min})")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> ModelSpec:
        if abs(self.fit.weight + self.behaviour.weight - 100) > 1e-9:
            raise ValueError(
                f"fit.weight + behaviour.weight must be 100 (got {self.fit.weight} + {self.behaviour.weight})"
            )
        signals = set(EVENT_SIGNALS) | set(self.track_names.values())
        band_names = {b.name for b in self.bands}
        ids = [r.id for r in self.behaviour.rules + self.behaviour.negative_rules]
        ids += [p.id for p in self.behaviour.trait_penalties]
        _no_duplicates(ids, "behaviour rule id")
        for rule in self.behaviour.rules + self.behaviour.negative_rules:
            if rule.signal not in signals:
                raise ValueError(f"behaviour rule {rule.id!r}: unknown signal {rule.signal!r}")
        for th in self.thresholds:
            if th.band is not None and th.band not in band_names:
                raise ValueError(f"threshold {th.type!r}: unknown band {th.band!r}")
        _no_duplicates([t.type for t in self.thresholds] + [r.type for r in self.routing], "trigger type")
        for route in self.routing:
            if route.signal not in signals:
                raise ValueError(f"routing rule {route.type!r}: unknown signal {route.signal!r}")
        return self


class HealthComponent(_Strict):
    name: str
    trait: str
    weight: float = Field(gt=0, le=1)


class HealthSpec(_Strict):
    """The customer health model (rules/models/health.yaml)."""

    version: str = Field(min_length=1)
    description: str | None = None
    components: list[HealthComponent] = Field(min_length=1)
    bands: list[Band] = Field(min_length=1)
    red_band: str = "red"
    trigger: str = "health_red"

    @model_validator(mode="after")
    def _checks(self) -> HealthSpec:
        total = sum(c.weight for c in self.components)
        if abs(total - 1) > 1e-9:
            raise ValueError(f"component weights must add up to 1 (got {total:g})")
        _no_duplicates([c.name for c in self.components], "health component")
        ModelSpec._bands(self.bands)  # same ordering rules as lead bands
        if self.red_band not in {b.name for b in self.bands}:
            raise ValueError(f"red_band {self.red_band!r} is not one of the bands")
        return self


def _no_duplicates(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"duplicate {what} {name!r}")
        seen.add(name)


# --- reading files with located errors -------------------------------------------------


def _node_at(node: yaml.Node | None, loc: tuple[Any, ...]) -> tuple[yaml.Node | None, bool]:
    """Walk ``loc`` down the composed YAML tree; returns the deepest node reached and whether all of loc was."""
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if str(getattr(key_node, "value", None)) == str(part):
                    node = value_node
                    break
            else:
                return node, False
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return node, False
    return node, True


def _clean_message(message: str) -> str:
    # pydantic prefixes validator messages with "Value error, "; the user wrote no Python.
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def read_yaml(path: str | Path, spec_type: type[BaseModel]) -> BaseModel:
    """Parse and validate one file; raise :class:`ModelError` naming file, line and field."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelError([(file, None, "", f"cannot read: {exc.strerror or exc}")]) from exc
    return parse_yaml(text, spec_type, file)


def parse_yaml(text: str, spec_type: type[BaseModel], file: str = "<string>") -> BaseModel:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ModelError([(file, line, "", f"YAML syntax: {exc.problem or exc}")]) from exc
    except yaml.YAMLError as exc:
        raise ModelError([(file, None, "", f"YAML: {exc}")]) from exc
    if not isinstance(data, dict):
        raise ModelError([(file, 1, "", "the file must be a YAML mapping (key: value lines)")])
    try:
        return spec_type.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "union["))))
            # Unions report one error per alternative tagged with the type tried; keep the field path.
            loc = tuple(p for p in loc if p not in ("str", "float", "bool", "Matcher", "int"))
            node, _ = _node_at(root, loc)
            line = node.start_mark.line + 1 if node is not None else None
            field = ".".join(str(p) for p in loc)
            problems.append((file, line, field, _clean_message(err["msg"])))
        # One line per location: union alternatives otherwise repeat the same field.
        unique = list(dict.fromkeys(problems))
        raise ModelError(unique) from None

"""Human-readable breakdown of one contact's score (``leadpulse rules explain``).

Pure text from (state, model, time): which fit options matched on which trait value, each
behaviour rule's events, current points after decay and caps, penalties, suppression,
threshold status, lead state and health, all naming the model version. The CLI only
fetches the state and prints what this returns.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from rules.durations import format_duration
from rules.engine import _term, lead_state, view
from rules.model import CompiledModel


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def explain_text(state: dict[str, Any], model: CompiledModel, now_ms: int) -> str:
    v = view(state, model, now_ms)
    lines = [
        f"contact {v['contact_id']}  as of {_when(now_ms)}  (model {model.version})",
        f"score {v['score']:.2f}/100  band {v['band']}  state {lead_state(state)}"
        + (f"  SUPPRESSED: {', '.join(v['suppression_reasons'])}" if v["suppressed"] else ""),
        f"  fit       {v['fit']:6.2f} / {model.fit_max:g}   (raw {state['fit']:g} x {model.fit_scale:g})",
        f"  behaviour {v['behaviour']:6.2f} / {model.beh_max:g}   (raw x {model.beh_scale:g}, capped at {model.beh_max:g})",
        "",
        "fit (does not decay):",
    ]
    traits = state["traits"]
    for name, fields, _ in model.fit_categories:
        hit = state["fit_detail"].get(name)
        if hit:
            label, points, path = hit
            lines.append(
                f"  {name:<13} {label:<17} +{points:g} raw = +{points * model.fit_scale:.2f}   ({path}={traits.get(path)!r})"
            )
        else:
            seen = next((f"{f}={traits[f]!r}" for f in fields if traits.get(f) not in (None, "")), "no trait")
            lines.append(f"  {name:<13} {'-':<17} 0   ({seen})")

    lines.append("")
    lines.append("behaviour (points now, after caps and decay):")
    rows = []
    for rid, entry in state["b"].items():
        rule = model.rules.get(rid)
        if rule is None:
            rows.append((0.0, f"  {rid:<22} not in this model (ignored)"))
            continue
        now_raw = _term(entry, model.rule_k[rid], now_ms)
        detail = [f"{entry[3]} event{'s' if entry[3] != 1 else ''}", f"last {_when(entry[0])}"]
        if rule.half_life:
            detail.append(f"half-life {format_duration(rule.half_life)}")
        if rule.cap:
            detail.append(f"cap {rule.cap.points:g}/{format_duration(rule.cap.window)}")
        if entry[5]:
            detail.append(f"{entry[5]} too late, not counted")
        rows.append(
            (
                now_raw,
                f"  {rid:<22} {now_raw * model.beh_scale:+7.2f}  (raw {now_raw:+.2f}, {rule.points:+g} each; "
                + ", ".join(detail)
                + ")",
            )
        )
    for pid, points in state["penalty_detail"].items():
        rows.append((points, f"  {pid:<22} {points * model.beh_scale:+7.2f}  (trait penalty, raw {points:+g})"))
    if rows:
        lines.extend(text for _, text in sorted(rows, key=lambda r: -r[0]))
    else:
        lines.append("  (none)")

    lines.append("")
    lines.append("thresholds:")
    for ttype, level, rearm, cooldown, suppressible, _ in model.thresholds:
        status = "armed" if ttype not in state["disarmed"] else f"fired, re-arms below {rearm:g}"
        last = state["last_fired"].get(ttype)
        lines.append(
            f"  {ttype:<14} at {level:g}: {status}; fired {state['fired'].get(ttype, 0)}x"
            + (f", last {_when(last)}" if last else "")
            + f"; cooldown {format_duration(cooldown)}"
            + ("" if suppressible else "; not suppressible")
        )
    if state["mql_at"]:
        lines.append(f"  mql_at {_when(state['mql_at'])}")
    if state["rejection"]:
        lines.append(f"  last rejection: {state['rejection'].get('reason')!r} at {_when(state['rejection'].get('at'))}")
    if state["suppressed"]:
        lines.append("")
        lines.append("suppression (wins over mql, hot_lead and routing):")
        for reason in state["suppressed"]:
            since = state["flags"].get(reason)
            lines.append(f"  {reason}" + (f" since {_when(since)}" if since else " (from CRM traits)"))
    if v["health"]:
        lines.append("")
        lines.append(f"customer health {v['health']['score']:g} ({v['health']['band']}, model {model.health_version})")
    lines.append("")
    lines.append("top reasons: " + ", ".join(f"{r['signal']} {r['points']:+g}" for r in v["reasons"][:3]))
    return "\n".join(lines) + "\n"

"""``leadpulse rules validate|diff|explain``: thin argparse wrappers over rules/.

The text is produced by pure functions in rules/ (rules.diff, rules.explain); this module
only parses arguments, reads files or the Redis state document, prints, and chooses the
exit code. Settings (LEADPULSE_REDIS_URL, LEADPULSE_RULES) are read only when a command
runs and needs them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from rules import CompiledModel, ModelError, default_model, load_model

CONTACT_KEY = "leadpulse:contact:{id}"
STATE_FIELD = "doc"


def add_rules_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``rules`` and its subcommands on the main CLI's subparsers."""
    rules = subparsers.add_parser("rules", help="validate, compare and explain scoring models")
    sub = rules.add_subparsers(dest="rules_command", required=True)

    validate = sub.add_parser("validate", help="check a model file; exit 1 with every problem (file:line: field: why)")
    validate.add_argument("file")
    validate.set_defaults(func=cmd_validate)

    diff = sub.add_parser("diff", help="what changes from OLD to NEW, in words")
    diff.add_argument("old")
    diff.add_argument("new")
    diff.set_defaults(func=cmd_diff)

    explain = sub.add_parser("explain", help="print the score breakdown of one contact")
    explain.add_argument("contact_id")
    explain.add_argument("--rules", help="model file (default: LEADPULSE_RULES, else the built-in model)")
    explain.add_argument("--redis-url", help="Redis holding contact states (default: LEADPULSE_REDIS_URL)")
    explain.add_argument("--state-file", help="explain a state saved as JSON instead of reading Redis")
    explain.add_argument("--at", type=int, help="explain as of this epoch-ms time (default: now)")
    explain.set_defaults(func=cmd_explain)


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        model = load_model(args.file)
    except ModelError as exc:
        print(exc, file=sys.stderr)
        return 1
    health = f", health {model.health_version}" if model.health_version else ""
    print(f"ok: version {model.version}{health}")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from rules.diff import diff_models

    try:
        old = load_model(args.old)
        new = load_model(args.new)
    except ModelError as exc:
        print(exc, file=sys.stderr)
        return 1
    changes = diff_models(old, new)
    if not changes:
        print(f"no changes ({old.version} and {new.version} score identically)")
    for line in changes:
        print(line)
    return 0


def _model_for(args: argparse.Namespace) -> CompiledModel:
    if args.rules:
        return load_model(args.rules)
    from ops.settings import load_settings

    configured = load_settings().rules
    return load_model(configured) if configured else default_model()


def _state_from_redis(url: str | None, contact_id: str) -> dict[str, Any] | None:
    import redis

    from streams.state import state_from_doc

    if not url:
        from ops.settings import load_settings

        url = load_settings().redis_url
    if not url:
        raise SystemExit("no Redis to read from: give --redis-url or set LEADPULSE_REDIS_URL (or use --state-file)")
    client = redis.Redis.from_url(url)
    try:
        raw = client.hget(CONTACT_KEY.format(id=contact_id), STATE_FIELD)
    finally:
        client.close()
    return state_from_doc(raw, contact_id) if raw else None


def cmd_explain(args: argparse.Namespace) -> int:
    from rules.explain import explain_text

    try:
        model = _model_for(args)
    except ModelError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.state_file:
        try:
            state = orjson.loads(Path(args.state_file).read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            print(f"{args.state_file}: cannot read a state document: {exc}", file=sys.stderr)
            return 1
        if isinstance(state, dict) and "doc" in state and "b" not in state:
            state = state["doc"]  # a saved Redis hash
    else:
        state = _state_from_redis(args.redis_url, args.contact_id)
        if state is None:
            print(f"unknown contact {args.contact_id!r}", file=sys.stderr)
            return 1
    if not isinstance(state, dict) or "b" not in state:
        print("not a leadpulse contact state document", file=sys.stderr)
        return 1
    now_ms = args.at if args.at is not None else int(time.time() * 1000)
    sys.stdout.write(explain_text(state, model, now_ms))
    return 0

"""The ``leadpulse`` command: up, demo, worker, collector and rules.

Settings come from ``LEADPULSE_*`` and ``.env`` (see README); invalid settings end
the command with one readable message, not a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from ops.settings import SettingsError, load_settings


def _need_urls(settings) -> tuple[str, str]:
    if not settings.broker_url or not settings.redis_url:
        missing = [name for name, value in (("LEADPULSE_BROKER_URL", settings.broker_url),
                                            ("LEADPULSE_REDIS_URL", settings.redis_url)) if not value]
        raise SettingsError(f"{' and '.join(missing)} must be set for this command (or use `leadpulse up`)")
    return settings.broker_url, settings.redis_url


def cmd_up(args: argparse.Namespace) -> int:
    from ops.supervisor import run_up

    return run_up(load_settings())


def cmd_demo(args: argparse.Namespace) -> int:
    from ops.demo import run_demo

    return run_demo(load_settings(), rate=args.rate, duration=args.duration)


def cmd_worker(args: argparse.Namespace) -> int:
    from ops.worker import run_worker

    settings = load_settings()
    run_worker(settings, *_need_urls(settings))
    return 0


def cmd_collector(args: argparse.Namespace) -> int:
    from ops.collector_service import serve_collector
    from ops.logging import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_json)
    try:
        # uvloop's C event loop: py-spy put ~40 % of the collector under asyncio's
        # selector loop and socket writes at 3k events/s (HTTP responses, produce requests).
        import uvloop
    except ImportError:
        asyncio.run(serve_collector(settings, *_need_urls(settings)))
    else:
        uvloop.run(serve_collector(settings, *_need_urls(settings)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leadpulse", description="Real-time lead scoring and triggers.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run everything: embedded services (when no URL is set), collector, worker").set_defaults(func=cmd_up)
    demo = sub.add_parser("demo", help="up + realistic demo traffic + live trigger console")
    demo.add_argument("--rate", type=float, default=100.0, help="events per second to send (default 100)")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: until Ctrl-C)")
    demo.set_defaults(func=cmd_demo)
    sub.add_parser("worker", help="run one scoring worker (needs LEADPULSE_BROKER_URL and LEADPULSE_REDIS_URL)").set_defaults(func=cmd_worker)
    sub.add_parser("collector", help="run the HTTP collector and read API").set_defaults(func=cmd_collector)
    # Command groups that live in their own modules register themselves here.
    for module, function in (("ops.rules_commands", "add_rules_commands"),
                             ("ops.bench_commands", "add_bench_commands"),
                             ("ops.verify_commands", "add_verify_commands")):
        try:
            register = getattr(__import__(module, fromlist=[function]), function)
        except (ImportError, AttributeError):
            continue
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

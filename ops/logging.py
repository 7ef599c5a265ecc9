"""Process-wide logging setup for leadpulse: levels, the plain and JSON line formats.

Every entry point (collector, worker, ``leadpulse up``) calls :func:`configure_logging`
once, before faust or aiokafka are started. Configuring the root logger explicitly
matters for speed, not only for looks: faust's default setup puts the root logger at
DEBUG, so every aiokafka/faust ``log.debug`` call builds a LogRecord; we measured that
at 15 % of CPU in a table workload. The library loggers are therefore held at WARNING
unless the operator asks for DEBUG.

leadpulse never logs per event: hot paths count into :mod:`ops.metrics` and log at most
once per batch or per state change (a sink going down, a rules reload).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

# Loggers of the libraries on the hot path. Their INFO/DEBUG output is per record or
# per fetch, far too chatty for production and expensive to build.
LIBRARY_LOGGERS = ("faust", "aiokafka", "mode", "kafka")
# aiohttp writes one access-log line per request: that is per-event logging on the
# collector, so it gets the same treatment as the stream libraries.
ACCESS_LOGGERS = ("aiohttp.access",)

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, __file__, 0, "", None, None)).keys()
) | {"message", "asctime", "taskName"}

PLAIN_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, then the ``extra`` fields.

    ``ts`` is UTC ISO 8601 with milliseconds so log shippers (Loki, Elastic,
    CloudWatch) parse it without a custom pattern. Values JSON cannot encode are
    written with ``str()`` rather than dropping the line.
    """

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": _iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_") and key not in payload:
                payload[key] = value
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


def _iso_utc(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class _LeadpulseHandler(logging.StreamHandler):
    """Marks the handler we installed so a second call replaces it instead of stacking."""


def configure_logging(level: str, json_lines: bool, stream: TextIO | None = None) -> None:
    """Configure the root logger and quieten the stream libraries.

    ``level`` is one of DEBUG/INFO/WARNING/ERROR/CRITICAL (case-insensitive). With
    ``json_lines`` every record is one JSON object per line; otherwise a plain
    timestamped line. Calling it again replaces the previous configuration, and
    handlers installed by others (pytest's caplog, an APM agent) are left alone.
    """
    name = str(level).upper()
    if name not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    numeric = logging.getLevelName(name)

    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _LeadpulseHandler):
            root.removeHandler(handler)
            handler.close()

    handler = _LeadpulseHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonLineFormatter() if json_lines else logging.Formatter(PLAIN_FORMAT))
    root.addHandler(handler)
    root.setLevel(numeric)

    # DEBUG is the one case where the operator wants the library chatter too.
    library_level = numeric if name == "DEBUG" else max(numeric, logging.WARNING)
    for logger_name in LIBRARY_LOGGERS + ACCESS_LOGGERS:
        logging.getLogger(logger_name).setLevel(library_level)

    logging.captureWarnings(True)

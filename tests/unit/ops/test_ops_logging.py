"""ops.logging: root level, quiet stream libraries, JSON line format."""

from __future__ import annotations

import io
import json
import logging

import pytest

from ops.logging import LIBRARY_LOGGERS, JsonLineFormatter, configure_logging


@pytest.fixture(autouse=True)
def restore_logging():
    """configure_logging changes process-wide state; put it back after each test."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    names = LIBRARY_LOGGERS + ("aiohttp.access", "leadpulse.test")
    saved = {name: logging.getLogger(name).level for name in names}
    yield
    for handler in list(root.handlers):
        if handler not in saved_handlers:
            root.removeHandler(handler)
    root.setLevel(saved_level)
    for name, lvl in saved.items():
        logging.getLogger(name).setLevel(lvl)
    logging.captureWarnings(False)


def test_root_level_follows_setting_and_libraries_stay_at_warning():
    configure_logging("info", json_lines=False, stream=io.StringIO())
    assert logging.getLogger().level == logging.INFO
    for name in ("faust", "aiokafka", "mode", "aiohttp.access"):
        assert logging.getLogger(name).level == logging.WARNING
        assert not logging.getLogger(name).isEnabledFor(logging.DEBUG)
        assert not logging.getLogger(name + ".child").isEnabledFor(logging.INFO)


def test_debug_lets_library_debug_through():
    configure_logging("DEBUG", json_lines=False, stream=io.StringIO())
    assert logging.getLogger().level == logging.DEBUG
    assert logging.getLogger("aiokafka.consumer").isEnabledFor(logging.DEBUG)
    assert logging.getLogger("faust").isEnabledFor(logging.DEBUG)


def test_error_level_is_not_lowered_for_libraries():
    configure_logging("ERROR", json_lines=False, stream=io.StringIO())
    assert logging.getLogger("faust").level == logging.ERROR
    assert not logging.getLogger("aiokafka").isEnabledFor(logging.WARNING)


def test_unknown_level_is_refused():
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("chatty", json_lines=False)


def test_json_lines_one_object_per_line_with_extra_fields():
    out = io.StringIO()
    configure_logging("INFO", json_lines=True, stream=out)
    log = logging.getLogger("leadpulse.test")
    log.info("batch scored %d events", 42, extra={"partition": 3, "rules_version": "2024-05"})
    log.debug("not shown at INFO")
    logging.getLogger("aiokafka.conn").info("library info is filtered")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["level"] == "INFO"
    assert record["logger"] == "leadpulse.test"
    assert record["message"] == "batch scored 42 events"
    assert record["partition"] == 3
    assert record["rules_version"] == "2024-05"
    assert record["ts"].endswith("Z") and "T" in record["ts"]
    # Standard LogRecord attributes are not dumped as noise.
    for internal in ("args", "msg", "pathname", "lineno", "levelno", "created"):
        assert internal not in record


def test_json_lines_keep_exceptions_and_unencodable_values_on_one_line():
    out = io.StringIO()
    configure_logging("INFO", json_lines=True, stream=out)
    try:
        raise RuntimeError("sink down\nsecond line")
    except RuntimeError:
        logging.getLogger("leadpulse.test").exception("delivery failed", extra={"target": object()})
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert "RuntimeError: sink down" in record["exc_info"]
    assert record["target"].startswith("<object object")


def test_plain_format_is_human_readable():
    out = io.StringIO()
    configure_logging("WARNING", json_lines=False, stream=out)
    logging.getLogger("leadpulse.test").warning("redis reconnecting")
    logging.getLogger("leadpulse.test").info("hidden")
    text = out.getvalue()
    assert "WARNING" in text and "leadpulse.test: redis reconnecting" in text
    assert "hidden" not in text


def test_second_call_replaces_the_handler_and_keeps_foreign_ones():
    foreign = logging.StreamHandler(io.StringIO())
    logging.getLogger().addHandler(foreign)
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", json_lines=False, stream=first)
    configure_logging("INFO", json_lines=True, stream=second)
    logging.getLogger("leadpulse.test").info("once")
    assert first.getvalue() == ""
    assert len(second.getvalue().splitlines()) == 1
    assert foreign in logging.getLogger().handlers


def test_formatter_timestamp_is_utc_milliseconds():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.created = 0.25
    assert json.loads(JsonLineFormatter().format(record))["ts"] == "1970-01-01T00:00:00.250Z"

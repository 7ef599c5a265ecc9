"""Compiled twins of the hot modules, used only when built from the exact current source.

The worker spends its time in a few pure-Python modules (the engine, the batch processor,
the event and state codecs). ``setup.py`` compiles each of them with Cython, unchanged, into
a twin ``<package>._native_<module>``; Cython turns the same Python into C calls, which
takes away most of the interpreter's per-operation work (1.2-1.4x on the engine bench,
+5-10 % for the worker end to end: benchmarks/README.md).

Each of those modules ends with ``adopt(globals())``. That replaces the module's functions,
classes and constants by its twin's, but only when the twin records the sha256 of the very
``.py`` file beside it. So:

* no twin (no C compiler, a failed build): the module stays pure Python;
* a stale twin (the ``.py`` was edited after the build, e.g. in an editable checkout):
  pure Python, with a warning; ``make test``/``make demo`` rebuild it;
* ``LEADPULSE_NATIVE=0`` in the environment: pure Python (exact tracebacks and py-spy
  frames). It is read at import, before any settings object exists, like ``PYTHON*``
  variables; it is the only switch read that way.

Behaviour is the same either way: tests/unit/rules/test_rules_golden.py pins the engine's
results bit for bit and runs in both modes (tests/unit/core/test_native_twins.py).
:func:`status` says which modules run compiled; ``leadpulse bench`` prints it.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

log = logging.getLogger("leadpulse.native")

TWIN_PREFIX = "_native_"
SOURCE_HASH = "NATIVE_SOURCE_SHA256"
# A module opts in with this line, its last; setup.py compiles those modules (the Makefile
# finds the same ones with ``grep -lx``, to know when to rebuild).
OPT_IN_LINE = "adopt(globals())"
NATIVE_PACKAGES = ("rules", "streams")

_status: dict[str, str] = {}

# What a hot module needs of Cython's pure-Python names when Cython is not installed at all (a
# pure install): not compiled, and ``cython.cfunc`` leaves a function as it is. Kept here, in a
# module that is never compiled, so that the twins carry no unused fallback code.
NO_CYTHON = SimpleNamespace(compiled=False, cfunc=lambda function: function)


def adopt(namespace: dict[str, Any]) -> None:
    """Swap the calling module's names for its compiled twin's when that twin is current.

    Call it as the last statement of a module: ``adopt(globals())``. The twin runs the same
    line and is left alone.
    """
    name = namespace["__name__"]
    package, _, module = name.rpartition(".")
    source = namespace.get("__file__") or ""
    if module.startswith(TWIN_PREFIX) or not source.endswith(".py"):
        return  # this is the twin itself (or a module without a source file)
    if switched_off():
        _status[name] = "pure (LEADPULSE_NATIVE=0)"
        return
    try:
        twin = importlib.import_module(f"{package}.{TWIN_PREFIX}{module}")
    except ImportError:
        _status[name] = "pure (not built)"
        return
    current = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    if getattr(twin, SOURCE_HASH, None) != current:
        _status[name] = "pure (stale build)"
        log.warning("%s: the compiled twin was built from another version of %s; running pure Python "
                    "(rebuild with: pip install -e .)", name, source)
        return
    for key, value in vars(twin).items():
        if not key.startswith("__"):
            namespace[key] = value
    _status[name] = "compiled"


def switched_off() -> bool:
    """``LEADPULSE_NATIVE`` asks for pure Python (``0``, ``false``, ``no`` or ``off``)."""
    return os.environ.get("LEADPULSE_NATIVE", "1").strip().lower() in ("0", "false", "no", "off")


def opted_in_sources(root: Path) -> list[Path]:
    """The modules under ``root`` that have a compiled twin: those with the opt-in line."""
    return sorted(
        path
        for package in NATIVE_PACKAGES
        for path in (root / package).glob("*.py")
        if OPT_IN_LINE in path.read_text(encoding="utf-8").splitlines()
    )


def status() -> dict[str, str]:
    """Module name -> ``compiled`` or ``pure (why)``, for every module imported so far that has a twin."""
    return dict(sorted(_status.items()))


__all__ = ["adopt", "opted_in_sources", "status", "switched_off"]

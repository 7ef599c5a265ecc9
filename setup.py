"""Build the compiled twins of the hot modules (see rules/native.py); metadata is in pyproject.toml.

Each module of ``rules/`` and ``streams/`` that ends with ``adopt(globals())`` is copied,
unchanged, to ``build/native/`` with one line appended (the sha256 of its source), and
Cython compiles the copy into ``<package>._native_<module>``. The ``.py`` file stays the
only source: a module uses its twin only when that twin was built from its exact current
text, so a missing, failed or stale build costs speed, never correctness. Every twin is an
optional extension: without a C compiler the install still succeeds and runs pure Python.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent
COPIES = Path("build") / "native"
# A module opts in with this line (the hot modules: decode, checks, dedupe, scoring, state encode);
# the Makefile finds the same modules with the same line.
OPT_IN = b"\nadopt(globals())\n"


def native_modules() -> list[str]:
    """Paths (relative to the project) of the modules that have a compiled twin."""
    return sorted(
        path.relative_to(ROOT).as_posix()
        for package in ("rules", "streams")
        for path in (ROOT / package).glob("*.py")
        if OPT_IN in path.read_bytes()
    )


def _twin_sources() -> list[Extension]:
    extensions = []
    for relative in native_modules():
        source = (ROOT / relative).read_bytes()
        package, module = relative[: -len(".py")].split("/")
        copy = COPIES / package / f"_native_{module}.py"
        copy.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(source).hexdigest()
        text = source + f'\nNATIVE_SOURCE_SHA256 = "{digest}"\n'.encode()
        if not copy.exists() or copy.read_bytes() != text:  # an unchanged copy keeps Cython's cache valid
            copy.write_bytes(text)
        extensions.append(Extension(f"{package}._native_{module}", [str(copy)], optional=True))
    return extensions


def _native_extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError:  # e.g. an install without build isolation and without Cython: pure Python
        return []
    return cythonize(
        _twin_sources(),
        compiler_directives={
            "language_level": 3,
            # Annotations are documentation here, not C types: the twin must accept exactly what the
            # pure module accepts (a dict subclass, None where the hint is loose).
            "annotation_typing": False,
        },
        quiet=True,
    )


setup(ext_modules=_native_extensions())

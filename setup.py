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
import importlib.util
from pathlib import Path
from types import ModuleType

from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent
COPIES = Path("build") / "native"


def _native_rules() -> ModuleType:
    """rules/native.py, loaded by path: it decides which modules opt in and how a twin is named and
    stamped, and needs only the standard library (the build environment has none of our dependencies)."""
    spec = importlib.util.spec_from_file_location("_leadpulse_native_rules", ROOT / "rules" / "native.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _twin_sources() -> list[Extension]:
    native = _native_rules()
    extensions = []
    for path in native.opted_in_sources(ROOT):
        source = path.read_bytes()
        package, module = path.parent.name, path.stem
        twin = f"{native.TWIN_PREFIX}{module}"
        copy = COPIES / package / f"{twin}.py"
        copy.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(source).hexdigest()
        text = source + f'\n{native.SOURCE_HASH} = "{digest}"\n'.encode()
        if not copy.exists() or copy.read_bytes() != text:  # an unchanged copy keeps Cython's cache valid
            copy.write_bytes(text)
        extensions.append(Extension(f"{package}.{twin}", [str(copy)], optional=True))
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

"""The compiled twins (rules/native.py): used only when current, and the same results either way."""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from rules import native

ROOT = Path(__file__).resolve().parents[3]


def _opted_in() -> list[str]:
    """Module names that have a compiled twin (what setup.py compiles)."""
    return [f"{path.parent.name}.{path.stem}" for path in native.opted_in_sources(ROOT)]


@pytest.fixture
def toy_package(tmp_path, monkeypatch):
    """A package ``toypkg`` with a module ``hot`` that opts in, and a way to give it a twin."""
    pkg = tmp_path / "toypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    source = 'KIND = "pure"\n\n\ndef which():\n    return KIND\n\n\nfrom rules.native import adopt\n\nadopt(globals())\n'
    (pkg / "hot.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("LEADPULSE_NATIVE", raising=False)

    def add_twin(source_hash: str) -> None:
        # A twin need not be compiled for the swap logic: a module with the twin's name and hash will do.
        (pkg / "_native_hot.py").write_text(
            f'KIND = "twin"\n\n\ndef which():\n    return KIND\n\n\nNATIVE_SOURCE_SHA256 = "{source_hash}"\n'
        )

    def forget() -> None:
        for name in ("toypkg.hot", "toypkg._native_hot", "toypkg"):
            sys.modules.pop(name, None)

    def load():
        forget()
        importlib.invalidate_caches()
        return importlib.import_module("toypkg.hot")

    yield hashlib.sha256(source.encode()).hexdigest(), add_twin, load
    forget()


def test_current_twin_replaces_the_module_names(toy_package):
    digest, add_twin, load = toy_package
    add_twin(digest)
    hot = load()
    assert hot.which() == "twin" and hot.KIND == "twin"
    assert native.status()["toypkg.hot"] == "compiled"


def test_stale_twin_is_not_used_and_says_so(toy_package, caplog):
    _, add_twin, load = toy_package
    add_twin("0" * 64)  # built from another version of hot.py
    with caplog.at_level(logging.WARNING, logger="leadpulse.native"):
        hot = load()
    assert hot.which() == "pure"
    assert native.status()["toypkg.hot"] == "pure (stale build)"
    assert "another version" in caplog.text


def test_missing_twin_leaves_pure_python(toy_package):
    _, _, load = toy_package
    assert load().which() == "pure"
    assert native.status()["toypkg.hot"] == "pure (not built)"


def test_switch_off_keeps_pure_python(toy_package, monkeypatch):
    digest, add_twin, load = toy_package
    add_twin(digest)
    monkeypatch.setenv("LEADPULSE_NATIVE", "0")
    assert load().which() == "pure"
    assert native.status()["toypkg.hot"] == "pure (LEADPULSE_NATIVE=0)"


def _compiler_available() -> bool:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) is not None and not native.switched_off()


@pytest.mark.skipif(not _compiler_available(), reason="no C compiler (or LEADPULSE_NATIVE=0): pure Python only")
def test_every_hot_module_runs_its_compiled_twin():
    names = _opted_in()
    assert {"rules.engine", "streams.processor"} <= set(names)
    for name in names:
        importlib.import_module(name)
    status = native.status()
    not_compiled = {name: status.get(name) for name in names if status.get(name) != "compiled"}
    assert not not_compiled, f"{not_compiled}: rebuild the twins with `make venv` (or pip install -e .)"


def test_pure_python_gives_the_pinned_results():
    """The golden digests and the processor tests, again in a process that runs pure Python."""
    env = dict(os.environ, LEADPULSE_NATIVE="0")
    probe = "import streams.processor; from rules.native import status; print(set(status().values()))"
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "{'pure (LEADPULSE_NATIVE=0)'}"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit/rules", "tests/stream"],
        env=env, cwd=ROOT, capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout


# engine_bench --check's digests of every trigger and final state, on a small workload.
_ENGINE_DIGEST = """
import orjson
from benchmarks.engine_bench import _digests, generate
from rules import default_model
print(_digests([orjson.dumps(e) for e in generate(3000, 40, 7)], 40, default_model()))
"""

_WITHOUT_CYTHON = """
import sys
class _NoCython:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("cython", "Cython"):
            raise ImportError("Cython is not installed (blocked by the test)")
sys.meta_path.insert(0, _NoCython())
"""


def test_engine_runs_without_cython_installed_with_the_same_results():
    """rules/engine.py uses Cython's pure-Python names (cython.compiled, cython.cfunc) with a fallback
    for a pure install without Cython; that run gives what this process (compiled twin when built) gives."""
    here = subprocess.run([sys.executable, "-c", _ENGINE_DIGEST], cwd=ROOT, capture_output=True, text=True, check=True)
    env = dict(os.environ, LEADPULSE_NATIVE="0")
    bare = subprocess.run([sys.executable, "-c", _WITHOUT_CYTHON + _ENGINE_DIGEST], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    assert bare.returncode == 0, bare.stderr[-2000:]
    assert bare.stdout.strip() == here.stdout.strip() != ""

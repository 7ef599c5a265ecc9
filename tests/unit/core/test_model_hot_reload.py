"""Hot reload of the scoring model: a valid change goes live, an invalid file never does."""

import os

from ops.model_holder import ModelHolder
from rules.model import DEFAULT_MODEL_PATH


def write_model(path, version: str, extra: str = "") -> None:
    health = DEFAULT_MODEL_PATH.parent / "health.yaml"  # the default model refers to it by relative path
    (path.parent / "health.yaml").write_text(health.read_text(encoding="utf-8"), encoding="utf-8")
    text = open(DEFAULT_MODEL_PATH, encoding="utf-8").read()
    lines = [f'version: "{version}"' if line.startswith("version:") else line for line in text.splitlines()]
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")


def bump_mtime(path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_valid_change_goes_live_and_invalid_file_keeps_the_running_model(tmp_path):
    path = tmp_path / "model.yaml"
    write_model(path, "v1")
    seen = []
    holder = ModelHolder(str(path), on_change=seen.append, check_every_s=0)
    assert holder.current().version == "v1"
    assert holder.maybe_reload() is False  # nothing changed

    write_model(path, "v2")
    bump_mtime(path)
    assert holder.current().version == "v2"
    assert [m.version for m in seen] == ["v2"]

    path.write_text("version: v3\nfit: [not, a, mapping\n", encoding="utf-8")
    bump_mtime(path)
    assert holder.maybe_reload() is False
    assert holder.current().version == "v2"
    assert holder.last_error and "keeping version v2" in holder.last_error
    assert len(seen) == 1


def test_default_model_without_a_file():
    holder = ModelHolder("")
    assert holder.current().version and holder.maybe_reload() is False

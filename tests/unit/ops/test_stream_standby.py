"""Standby table copies are off unless the operator asks for them (LEADPULSE_STANDBY_REPLICAS)."""

from __future__ import annotations

import pytest

from ops.settings import SettingsError, load_settings
from rules import default_model
from streams.app import ScoreApp, StreamConfig


async def _ignore(out) -> None:
    return None


@pytest.mark.parametrize("overrides, replicas", [({}, 0), ({"standby_replicas": 1}, 1)])
def test_the_faust_app_gets_the_standby_setting(tmp_path, overrides: dict, replicas: int) -> None:
    settings = load_settings(data_dir=tmp_path, app_id="t-standby", **overrides)
    assert settings.standby_replicas == replicas
    app = ScoreApp(StreamConfig.from_settings(settings, "127.0.0.1:9"), default_model(), _ignore)
    assert app.app.conf.table_standby_replicas == replicas


def test_the_environment_sets_it_and_bad_values_are_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LEADPULSE_STANDBY_REPLICAS", "2")
    assert load_settings(data_dir=tmp_path).standby_replicas == 2
    monkeypatch.setenv("LEADPULSE_STANDBY_REPLICAS", "-1")
    with pytest.raises(SettingsError, match="LEADPULSE_STANDBY_REPLICAS"):
        load_settings(data_dir=tmp_path)

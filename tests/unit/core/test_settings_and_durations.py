import pytest

from ops.settings import DEMO_WRITE_KEY, Settings, SettingsError, load_settings
from rules.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    "text, ms",
    [("250ms", 250), ("30s", 30_000), ("4h", 14_400_000), ("14d", 1_209_600_000), ("1h30m", 5_400_000), ("1.5s", 1500), (" 10 s ", 10_000), ("42", 42)],
)
def test_parse_duration(text, ms):
    assert parse_duration(text) == ms


@pytest.mark.parametrize("bad", ["", "s", "10 parsecs", "3x", "-5s", "10s junk", True])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format_duration_round_trips():
    for ms in (1, 1000, 60_000, 14_400_000, 86_400_000 * 14):
        assert parse_duration(format_duration(ms)) == ms


def test_defaults(monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith("LEADPULSE_"):
            monkeypatch.delenv(name)
    s = Settings(_env_file=None)
    assert s.write_keys == {DEMO_WRITE_KEY: "segment"}
    assert s.http_port == 8088
    assert s.lateness == 10_000
    assert s.events_topic == "leadpulse-events" and s.dlq_topic == "leadpulse-dlq"


def test_env_parsing(monkeypatch):
    monkeypatch.setenv("LEADPULSE_WRITE_KEYS", "k1, k2:rudder")
    monkeypatch.setenv("LEADPULSE_WEBHOOK_URLS", "http://a/x,http://b/y")
    monkeypatch.setenv("LEADPULSE_LATENESS", "3s")
    monkeypatch.setenv("LEADPULSE_WEBHOOK_SECRET", "whsec_c2VjcmV0")
    s = Settings(_env_file=None)
    assert s.write_keys == {"k1": "segment", "k2": "rudder"}
    assert s.webhook_urls == ["http://a/x", "http://b/y"]
    assert s.lateness == 3000
    assert "c2VjcmV0" not in repr(s)


def test_invalid_settings_give_one_readable_message(monkeypatch):
    monkeypatch.setenv("LEADPULSE_LATENESS", "soon")
    monkeypatch.setenv("LEADPULSE_HTTP_PORT", "70000")
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None)
    message = str(info.value)
    assert "LEADPULSE_LATENESS" in message and "LEADPULSE_HTTP_PORT" in message
    assert "Traceback" not in message


def test_missing_rules_file_is_rejected(tmp_path):
    with pytest.raises(SettingsError, match="no such scoring model file"):
        load_settings(rules=str(tmp_path / "nope.yaml"), _env_file=None)


def test_settings_env_rebuilds_the_same_settings(monkeypatch, tmp_path):
    from pydantic import SecretStr

    from ops.settings import settings_env

    original = Settings(
        _env_file=None, app_id="x1", topic_prefix="p1", partitions=3, lateness=2500, data_dir=tmp_path,
        write_keys="a,b:rudder", webhook_urls="http://h/1,http://h/2", webhook_secret="whsec_c2VjcmV0", log_json=True,
    )
    for name, value in settings_env(original).items():
        monkeypatch.setenv(name, value)
    rebuilt = Settings(_env_file=None)
    assert rebuilt.model_dump() == original.model_dump()
    assert isinstance(rebuilt.webhook_secret, SecretStr)
    assert rebuilt.webhook_secret.get_secret_value() == "whsec_c2VjcmV0"

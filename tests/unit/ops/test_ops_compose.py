"""ops/compose.yaml and ops/Dockerfile: structure checked without a Docker engine.

Nothing here can start a container, so the tests hold the file to what the code
expects: the services and images, LEADPULSE_* names that ops.settings really
reads (and values it accepts), files that exist, healthchecks and start order.
"""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml

from _ops_support import OPS, REPO
from ops.settings import Settings

COMPOSE = OPS / "compose.yaml"
DOCKERFILE = OPS / "Dockerfile"
LEADPULSE_SERVICES = ("collector", "worker")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _interpolate(value: object) -> str:
    """Resolve compose's ${VAR:-default} / ${VAR:?error} the way an operator's .env would."""
    text = str(value)
    text = re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", text)
    return re.sub(r"\$\{([A-Z0-9_]+):\?[^}]*\}", lambda m: "key-from-env" if "WRITE_KEYS" in m.group(1) else "x", text)


def test_all_services_are_present(services):
    assert {"kafka", "redis", "prometheus", "grafana", "collector", "worker"} <= services.keys()


def test_images_are_the_official_ones_and_pinned(services):
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["redis"]["image"].startswith("redis:")
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    for name in ("kafka", "redis", "prometheus", "grafana"):
        tag = services[name]["image"].rsplit(":", 1)[1]
        assert tag not in {"latest", ""} and re.match(r"v?\d", tag), f"{name} image is not pinned to a version"


def test_kafka_runs_in_kraft_mode_and_advertises_the_broker_url(services):
    env = services["kafka"]["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in key for key in env)
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["CLUSTER_ID"]
    # Data survives a container re-creation: the log dir is the mounted volume.
    assert any(v.endswith(":" + env["KAFKA_LOG_DIRS"]) for v in services["kafka"]["volumes"])
    # Enough partitions for the workers to scale into.
    assert int(env["KAFKA_NUM_PARTITIONS"]) >= 2


def test_redis_uses_append_only_file_on_a_volume(services):
    command = services["redis"]["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])


def test_leadpulse_commands_and_two_workers(services):
    assert services["collector"]["command"] == ["leadpulse", "collector"]
    assert services["worker"]["command"] == ["leadpulse", "worker"]
    assert services["worker"]["deploy"]["replicas"] == 2
    # Replicas cannot share a fixed name or a host port.
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]
    for name in LEADPULSE_SERVICES:
        assert services[name]["build"] == {"context": "..", "dockerfile": "ops/Dockerfile"}
        assert services[name]["init"] is True


def test_environment_names_are_real_settings(services):
    fields = Settings.model_fields
    for name in LEADPULSE_SERVICES:
        for key in services[name]["environment"]:
            assert key.startswith("LEADPULSE_"), f"{name}: {key} is not a leadpulse setting"
            field = key.removeprefix("LEADPULSE_").lower()
            assert field in fields, f"{name}: {key} is not a field of ops.settings.Settings"


def test_environment_points_at_the_compose_services(services):
    for name in LEADPULSE_SERVICES:
        env = services[name]["environment"]
        assert env["LEADPULSE_BROKER_URL"] == "kafka:9092"
        assert env["LEADPULSE_REDIS_URL"] == "redis://redis:6379/0"
        assert env["LEADPULSE_HTTP_HOST"] == "0.0.0.0"
        assert str(env["LEADPULSE_WORKER_HTTP_PORT"]) == "8089"
    # Both read the same partition count, so the collector keys into the topic the workers consume.
    assert services["collector"]["environment"] == services["worker"]["environment"]


def test_environment_values_are_accepted_by_settings(services):
    env = services["worker"]["environment"]
    kwargs = {key.removeprefix("LEADPULSE_").lower(): _interpolate(value) for key, value in env.items()}
    settings = Settings(_env_file=None, **kwargs)
    assert settings.broker_url == "kafka:9092"
    assert settings.worker_http_port == 8089
    assert settings.log_json is True
    # The demo key is not what production runs on.
    assert "demo" not in settings.write_keys


def test_production_requires_write_keys(services):
    value = services["collector"]["environment"]["LEADPULSE_WRITE_KEYS"]
    assert re.fullmatch(r"\$\{LEADPULSE_WRITE_KEYS:\?[^}]+\}", value), "compose must refuse to start without write keys"


def test_every_service_has_a_healthcheck(services):
    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in {"CMD", "CMD-SHELL"}, f"{name} has no healthcheck"


def test_leadpulse_healthchecks_probe_their_own_ports(services):
    (collector_check,) = [part for part in services["collector"]["healthcheck"]["test"] if "urlopen" in part]
    (worker_check,) = [part for part in services["worker"]["healthcheck"]["test"] if "urlopen" in part]
    assert ":8088/readyz" in collector_check
    assert ":8089/readyz" in worker_check


def test_start_order(services):
    for name in LEADPULSE_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["kafka"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_bind_mounted_files_exist(services):
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (OPS / source).exists(), f"{name} mounts {source}, which is not in the repository"


def test_prometheus_gets_the_config_and_rules_side_by_side(services):
    mounts = {v.split(":")[0]: v.split(":")[1] for v in services["prometheus"]["volumes"] if v.startswith(".")}
    assert mounts["./prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    # prometheus.yml names the rules file relative to itself.
    assert mounts["./prometheus/alerts.yml"] == "/etc/prometheus/alerts.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


def test_named_volumes_are_declared(compose, services):
    declared = set(compose["volumes"])
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"volume {source} is not declared"


# --- Dockerfile -------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_base_image_and_user():
    instructions = _dockerfile_instructions()
    bases = [rest.split()[0] for kw, rest in instructions if kw == "FROM"]
    assert bases and all(base == "python:3.11-slim" for base in bases)
    users = [rest for kw, rest in instructions if kw == "USER"]
    assert users and users[-1] not in {"root", "0"}


def test_dockerfile_copies_everything_the_package_build_needs():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", "setup.py", pyproject["project"]["readme"]}  # setup.py: the compiled twins
    needed |= {pattern.rstrip("*") for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied: set[str] = set()
    for kw, rest in _dockerfile_instructions():
        if kw == "COPY" and "--from" not in rest:
            copied |= {part.rstrip("/") for part in rest.split()[:-1]}
    assert needed <= copied, f"not copied into the image: {needed - copied}"
    for source in copied:
        assert (REPO / source).exists(), f"Dockerfile copies {source}, which is not in the repository"


def test_dockerfile_installs_the_project_without_the_embedded_extra():
    runs = " ".join(rest for kw, rest in _dockerfile_instructions() if kw == "RUN")
    assert "pip wheel" in runs and "pip install" in runs
    assert "embedded" not in runs


def test_dockerfile_runs_the_console_script():
    (cmd,) = [rest for kw, rest in _dockerfile_instructions() if kw == "CMD"]
    assert cmd.startswith('["leadpulse"')
    exposed = " ".join(rest for kw, rest in _dockerfile_instructions() if kw == "EXPOSE").split()
    assert {"8088", "8089"} <= set(exposed)

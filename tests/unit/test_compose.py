"""The container stack agrees with itself and with the code: docker-compose.yml and the Dockerfile.

No Docker engine is needed: the files are parsed and cross-checked against
``config.settings.Settings``. Variables are interpolated the way ``docker compose`` does
with an empty environment (``${VAR:-default}`` gives the default), so the checks cover what a
plain ``docker compose up --wait`` would run.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from config.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

SERVICES = ("kafka", "clickhouse", "worker")
# The settings the worker cannot run in a container without (the defaults point at 127.0.0.1
# and a relative data directory).
REQUIRED_WORKER_VARIABLES = {
    "LOYALTY_KAFKA_BOOTSTRAP",
    "LOYALTY_CLICKHOUSE_DSN",
    "LOYALTY_DATA_DIR",
    "LOYALTY_WEB_HOST",
    "LOYALTY_WEB_PORT",
}

_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<default>[^}]*))?\}")


# -- helpers ----------------------------------------------------------------------------------


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Compose-style interpolation: ``$$`` -> ``$``, ``${X}``, ``${X:-d}``, ``${X-d}``."""
    env = env or {}

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, default = match.group("name", "op", "default")
        value = env.get(name)
        if op == ":-" and not value:
            return default
        if op == "-" and value is None:
            return default
        return value or ""

    return _VARIABLE.sub(replace, text)


def image_is_pinned(reference: str) -> bool:
    """True for ``name:tag`` (tag not ``latest``) or a ``@sha256:`` digest."""
    if "@sha256:" in reference:
        return True
    name, _, tag = reference.rpartition(":")
    # A colon inside the registry part ("host:5000/app") is a port, not a tag.
    return bool(name) and "/" not in tag and tag not in ("", "latest")


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as strings, from either the mapping or the ``KEY=VALUE`` list form."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {key: interpolate("" if value is None else str(value)) for key, value in raw.items()}


def listeners(spec: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,...`` -> {NAME: (host, port)}."""
    parsed = {}
    for entry in spec.split(","):
        name, _, address = entry.strip().partition("://")
        host, _, port = address.rpartition(":")
        parsed[name] = (host, int(port))
    return parsed


def health_command(service: dict[str, Any]) -> str:
    """The healthcheck's command line as one string (empty when there is none)."""
    test = (service.get("healthcheck") or {}).get("test")
    if isinstance(test, str):
        return test
    if isinstance(test, list) and len(test) > 1 and test[0] in ("CMD", "CMD-SHELL"):
        return " ".join(test[1:])
    return ""


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def worker_env(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    return environment_of(services["worker"])


@pytest.fixture(scope="module")
def kafka_env(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    return environment_of(services["kafka"])


@pytest.fixture
def worker_settings(worker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings exactly as the worker container would load them."""
    for name in [name for name in os.environ if name.startswith("LOYALTY_")]:
        monkeypatch.delenv(name)
    for name, value in worker_env.items():
        monkeypatch.setenv(name, value)
    return Settings()


# -- the helpers themselves (so the checks below can fail) --------------------------------------


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("${A:-x}", {}, "x"),
        ("${A:-x}", {"A": ""}, "x"),
        ("${A-x}", {"A": ""}, ""),
        ("${A:-x}", {"A": "y"}, "y"),
        ("${A}", {}, ""),
        ("a$$b", {}, "a$b"),
        ("http://${U:-u}:${P:-p}@h:1/", {"P": "s"}, "http://u:s@h:1/"),
    ],
)
def test_interpolate(text: str, env: dict[str, str], expected: str) -> None:
    assert interpolate(text, env) == expected


@pytest.mark.parametrize(
    ("reference", "pinned"),
    [
        ("apache/kafka:4.1.1", True),
        ("clickhouse/clickhouse-server:25.8", True),
        ("python:3.11-slim-bookworm", True),
        ("registry:5000/app:1.2", True),
        ("app@sha256:" + "0" * 64, True),
        ("apache/kafka", False),
        ("apache/kafka:latest", False),
        ("registry:5000/app", False),
    ],
)
def test_image_is_pinned(reference: str, pinned: bool) -> None:
    assert image_is_pinned(reference) is pinned


# -- docker-compose.yml -----------------------------------------------------------------------


def test_compose_defines_the_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(SERVICES) <= set(services)


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_has_a_healthcheck(services: dict[str, dict[str, Any]], name: str) -> None:
    healthcheck = services[name].get("healthcheck") or {}
    assert not healthcheck.get("disable", False)
    test = healthcheck.get("test")
    assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), test
    assert health_command(services[name]).strip()


@pytest.mark.parametrize("name", SERVICES)
def test_images_are_pinned(services: dict[str, dict[str, Any]], name: str) -> None:
    service = services[name]
    assert "image" in service or "build" in service
    if "image" in service:
        assert image_is_pinned(interpolate(service["image"])), service["image"]


def test_worker_is_built_from_the_repository(services: dict[str, dict[str, Any]]) -> None:
    build = services["worker"]["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (COMPOSE_FILE.parent / context / dockerfile).resolve() == DOCKERFILE


def test_worker_waits_for_healthy_dependencies(services: dict[str, dict[str, Any]]) -> None:
    depends_on = services["worker"]["depends_on"]
    assert isinstance(depends_on, dict), "the list form cannot wait for health"
    assert {name: spec.get("condition") for name, spec in depends_on.items()} == {
        "kafka": "service_healthy",
        "clickhouse": "service_healthy",
    }


def test_worker_runs_init_then_worker(services: dict[str, dict[str, Any]]) -> None:
    command = services["worker"]["command"]
    line = command if isinstance(command, str) else " ".join(command)
    init, worker = line.find("loyalty init"), line.find("loyalty worker")
    assert 0 <= init < worker, line


def test_worker_variables_name_settings_fields(worker_env: dict[str, str]) -> None:
    known = {f"LOYALTY_{name.upper()}" for name in Settings.model_fields}
    given = {name for name in worker_env if name.startswith("LOYALTY_")}
    assert given - known == set(), "not a Settings field"
    assert REQUIRED_WORKER_VARIABLES <= given


def test_worker_listening_beyond_loopback_has_an_api_token(worker_settings: Settings) -> None:
    assert not worker_settings.web_is_loopback
    assert worker_settings.api_token is not None and worker_settings.api_token.get_secret_value()


def test_worker_settings_load_with_the_container_values(worker_settings: Settings) -> None:
    assert worker_settings.uses_local_kafka is False
    assert worker_settings.embedded_clickhouse is False
    assert str(worker_settings.data_dir) == "/data"
    assert worker_settings.web_host == "0.0.0.0"


def test_worker_bootstrap_is_an_advertised_kafka_listener(
    services: dict[str, dict[str, Any]], kafka_env: dict[str, str], worker_settings: Settings
) -> None:
    advertised = listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"])
    bound = listeners(kafka_env["KAFKA_LISTENERS"])
    protocols = dict(pair.split(":") for pair in kafka_env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    kafka_names = {"kafka", services["kafka"].get("hostname"), services["kafka"].get("container_name")}
    for server in worker_settings.bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        matches = [name for name, address in advertised.items() if address == (host, int(port))]
        assert matches, f"{server} is not in KAFKA_ADVERTISED_LISTENERS"
        (listener,) = matches
        assert host in kafka_names
        assert bound[listener][1] == int(port), "advertised port is not the port the broker binds"
        assert protocols[listener] == worker_settings.kafka_security_protocol


def test_kafka_healthcheck_uses_the_worker_bootstrap(
    services: dict[str, dict[str, Any]], worker_settings: Settings
) -> None:
    command = health_command(services["kafka"])
    assert command.split()[0].startswith("/opt/kafka/bin/")
    assert worker_settings.bootstrap in command


def test_kafka_is_a_single_kraft_node(kafka_env: dict[str, str]) -> None:
    assert set(kafka_env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    controller = kafka_env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in listeners(kafka_env["KAFKA_LISTENERS"])
    node_id = kafka_env["KAFKA_NODE_ID"]
    _, controller_port = listeners(kafka_env["KAFKA_LISTENERS"])[controller]
    assert kafka_env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{node_id}@kafka:{controller_port}"
    for name in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert kafka_env[name] == "1", name
    assert kafka_env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"


def test_broker_message_size_matches_the_worker(kafka_env: dict[str, str], worker_settings: Settings) -> None:
    assert int(kafka_env["KAFKA_MESSAGE_MAX_BYTES"]) == worker_settings.max_message_bytes


def test_worker_dsn_matches_the_clickhouse_service(
    services: dict[str, dict[str, Any]], worker_settings: Settings
) -> None:
    clickhouse_env = environment_of(services["clickhouse"])
    dsn = urlsplit(worker_settings.clickhouse_url)
    assert dsn.scheme == "http"
    assert (dsn.hostname, dsn.port) == ("clickhouse", 8123)
    assert (dsn.username, dsn.password) == (clickhouse_env["CLICKHOUSE_USER"], clickhouse_env["CLICKHOUSE_PASSWORD"])
    assert worker_settings.clickhouse_database == clickhouse_env["CLICKHOUSE_DB"]
    assert clickhouse_env["CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT"] == "1"


def test_clickhouse_credentials_default_from_the_environment(services: dict[str, dict[str, Any]]) -> None:
    environment = services["clickhouse"]["environment"]
    for name in ("CLICKHOUSE_USER", "CLICKHOUSE_PASSWORD"):
        assert re.fullmatch(r"\$\{" + name + r":-[^}]+\}", str(environment[name])), name


def test_clickhouse_raises_the_open_files_limit(services: dict[str, dict[str, Any]]) -> None:
    nofile = services["clickhouse"]["ulimits"]["nofile"]
    assert nofile["soft"] >= 262144 and nofile["hard"] >= 262144


def test_worker_healthcheck_probes_the_web_port(
    services: dict[str, dict[str, Any]], worker_settings: Settings
) -> None:
    worker = services["worker"]
    command = health_command(worker)
    assert re.search(rf"http://(localhost|127\.0\.0\.1):{worker_settings.web_port}/health\b", command), command
    assert "python" in shlex.split(command)[0]
    published = {str(port).rpartition(":")[2] for port in worker.get("ports", [])}
    assert str(worker_settings.web_port) in published


def test_data_lives_in_named_volumes(compose: dict[str, Any], worker_settings: Settings) -> None:
    declared = set(compose.get("volumes") or {})
    mounts = {
        name: {str(v).split(":")[1]: str(v).split(":")[0] for v in compose["services"][name].get("volumes", [])}
        for name in SERVICES
    }
    assert mounts["kafka"].get("/var/lib/kafka/data") in declared
    assert mounts["clickhouse"].get("/var/lib/clickhouse") in declared
    assert mounts["worker"].get(str(worker_settings.data_dir)) in declared


# -- Dockerfile -------------------------------------------------------------------------------


def test_dockerfile_base_images_are_pinned() -> None:
    bases = [arguments.split()[0] for keyword, arguments in dockerfile_instructions() if keyword == "FROM"]
    assert bases, "no FROM"
    for base in bases:
        assert image_is_pinned(base), base
    assert bases[-1].startswith("python:3.11")


def test_dockerfile_installs_the_package_and_runs_the_worker() -> None:
    instructions = dockerfile_instructions()
    runs = " ".join(arguments for keyword, arguments in instructions if keyword == "RUN")
    assert re.search(r"pip install (--\S+ )*\.(\s|$)", runs), runs
    assert ("CMD", '["loyalty", "worker"]') in instructions
    assert ("WORKDIR", "/app") in instructions
    env = " ".join(arguments for keyword, arguments in instructions if keyword == "ENV")
    assert re.search(r"\bLOYALTY_DATA_DIR=/data\b", env), env


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_dockerfile_exposes_the_worker_web_port(worker_settings: Settings) -> None:
    exposed = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "EXPOSE"]
    assert str(worker_settings.web_port) in " ".join(exposed).split()


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    assert {".git", ".venv", "var"} <= patterns
    # What the image build copies must stay in the context.
    copied = {a.split()[0].rstrip("/") for k, a in dockerfile_instructions() if k == "COPY"}
    assert {"domain", "config", "schemas", "sinks", "streams", "ops", "pyproject.toml"} <= copied
    assert not copied & patterns


# -- Grafana (deploy/grafana/; the provisioning files themselves: tests/unit/test_grafana.py) -----


def test_grafana_is_the_official_image_pinned(services: dict[str, dict[str, Any]]) -> None:
    image = interpolate(services["grafana"]["image"])
    assert image.rpartition(":")[0] in ("grafana/grafana", "grafana/grafana-oss")
    assert image_is_pinned(image), image


def test_grafana_waits_for_a_healthy_clickhouse_and_is_healthchecked(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    assert grafana["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    assert re.search(r"http://(localhost|127\.0\.0\.1):3000/api/health\b", health_command(grafana))
    assert "127.0.0.1:3000:3000" in [str(port) for port in grafana["ports"]]


def test_grafana_mounts_the_provisioning_directory(compose: dict[str, Any]) -> None:
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in compose["services"]["grafana"]["volumes"]}
    source = mounts.get("/etc/grafana/provisioning")
    assert source is not None, mounts
    assert (COMPOSE_FILE.parent / source).resolve() == ROOT / "deploy" / "grafana" / "provisioning"
    assert mounts.get("/var/lib/grafana") in set(compose.get("volumes") or {})


def test_grafana_secrets_default_from_the_environment(services: dict[str, dict[str, Any]]) -> None:
    environment = services["grafana"]["environment"]
    for name in ("GF_SECURITY_ADMIN_PASSWORD", "CLICKHOUSE_USER", "CLICKHOUSE_PASSWORD"):
        assert re.fullmatch(r"\$\{\w+:-[^}]+\}", str(environment[name])), name

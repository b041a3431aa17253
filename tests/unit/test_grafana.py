"""Grafana as code: the provisioning files under deploy/grafana/ agree with docker-compose.yml
and with the BI views of migration 0004. No Grafana is needed: the files are parsed and
cross-checked (tests/integration/test_bi.py runs every panel's SQL against real views)."""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from sinks.clickhouse import migrations
from tests.unit.test_compose import COMPOSE_FILE, environment_of, interpolate

ROOT = Path(__file__).resolve().parents[2]
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
DATASOURCES = PROVISIONING / "datasources"
DASHBOARDS = PROVISIONING / "dashboards"
PLUGIN = "grafana-clickhouse-datasource"
BI_VIEWS = set(re.findall(r"CREATE VIEW IF NOT EXISTS \{db\}\.(v_\w+)", "".join(
    sql for _, name, sql in migrations() if name in ("bi", "tiers_now"))))
# The questions the issue asks: each needs a panel.
REQUIRED_VIEWS = {"v_audience_vs_loyal", "v_tier_transitions_weekly", "v_customers_at_risk", "v_alerts_outcome",
                  "v_recognition_and_quality", "v_daily_tiers"}
_ENV_REFERENCE = re.compile(r"\$\{?(\w+)\}?")


def load_yaml(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict), path
    return loaded


@pytest.fixture(scope="module")
def grafana() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]["grafana"]


@pytest.fixture(scope="module")
def datasource() -> dict[str, Any]:
    files = sorted(DATASOURCES.glob("*.yaml")) + sorted(DATASOURCES.glob("*.yml"))
    assert files, "no datasource provisioning file"
    sources = [s for f in files for s in load_yaml(f).get("datasources", [])]
    assert len(sources) == 1, sources
    return sources[0]


@pytest.fixture(scope="module")
def dashboards() -> list[dict[str, Any]]:
    files = sorted(DASHBOARDS.glob("*.json"))
    assert files, "no dashboard JSON"
    return [json.loads(f.read_text()) for f in files]


def panels_of(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    found = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return [p for p in found if p.get("type") != "row"]


def container_path(grafana: dict[str, Any], host: Path) -> PurePosixPath:
    """Where the service sees a host path, through its bind mounts."""
    for volume in grafana.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        mounted = (COMPOSE_FILE.parent / source).resolve()
        if source.startswith(".") and host.resolve().is_relative_to(mounted):
            return PurePosixPath(target) / host.resolve().relative_to(mounted).as_posix()
    raise AssertionError(f"{host} is not mounted into the grafana service")


# -- the data source -----------------------------------------------------------------------------


def test_the_datasource_is_the_official_clickhouse_plugin(datasource):
    assert datasource["type"] == PLUGIN
    assert datasource["uid"] and datasource["name"]
    assert datasource.get("isDefault") is True


def test_the_datasource_points_at_the_clickhouse_service(datasource):
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    json_data = datasource["jsonData"]
    assert json_data["host"] in {"clickhouse", services["clickhouse"].get("hostname")}
    assert (json_data["protocol"], int(json_data["port"])) == ("http", 8123)
    assert json_data.get("secure") is False
    assert "password" not in json_data, "the password belongs in secureJsonData"
    assert datasource["secureJsonData"]["password"]


def test_the_datasource_credentials_come_from_the_service_environment(datasource, grafana):
    env = environment_of(grafana)
    clickhouse_env = environment_of(yaml.safe_load(COMPOSE_FILE.read_text())["services"]["clickhouse"])
    values = {"username": datasource["jsonData"]["username"], "database": datasource["jsonData"]["defaultDatabase"],
              "password": datasource["secureJsonData"]["password"]}
    for field, value in values.items():
        names = _ENV_REFERENCE.findall(str(value))
        assert names, f"{field} should come from the environment, not be written in the file"
        assert set(names) <= set(env), f"{field}: {names} not set in the grafana service"
    resolved = {field: _ENV_REFERENCE.sub(lambda m: env[m.group(1)], str(v)) for field, v in values.items()}
    # Out of the box (no .env) Grafana logs in as the ClickHouse service's user, to its database.
    assert resolved == {"username": clickhouse_env["CLICKHOUSE_USER"],
                        "password": clickhouse_env["CLICKHOUSE_PASSWORD"], "database": clickhouse_env["CLICKHOUSE_DB"]}


# -- the dashboards --------------------------------------------------------------------------------


def test_the_dashboard_provider_loads_the_mounted_directory(grafana):
    providers = [p for f in sorted(DASHBOARDS.glob("*.yaml")) for p in load_yaml(f).get("providers", [])]
    assert len(providers) == 1, providers
    provider = providers[0]
    assert provider["type"] == "file"
    assert PurePosixPath(provider["options"]["path"]) == container_path(grafana, DASHBOARDS)


def test_dashboards_parse_and_have_stable_identity(dashboards):
    uids = [d["uid"] for d in dashboards]
    assert len(set(uids)) == len(uids) and all(uids)
    for dashboard in dashboards:
        assert dashboard["title"]
        ids = [p["id"] for p in panels_of(dashboard)]
        assert len(set(ids)) == len(ids), "panel ids must be unique"
        for panel in panels_of(dashboard):
            grid = panel["gridPos"]
            assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]


def test_every_panel_queries_a_bi_view_through_the_provisioned_datasource(dashboards, datasource):
    assert {"v_tiers_current", "v_tiers_now"} <= BI_VIEWS, "views missing from 0004_bi.sql or 0013_tiers_now.sql"
    used: set[str] = set()
    for dashboard in dashboards:
        for panel in panels_of(dashboard):
            targets = panel.get("targets") or []
            assert targets, f"panel {panel['title']!r} has no query"
            for target in targets:
                source = target.get("datasource") or panel.get("datasource")
                assert source == {"type": PLUGIN, "uid": datasource["uid"]}, panel["title"]
                sql = target["rawSql"]
                views = set(re.findall(r"\$\{database\}\.(\w+)", sql))
                assert views and views <= BI_VIEWS, f"{panel['title']!r} reads {views or 'no view'}"
                sources = re.findall(r"\b(?:FROM|JOIN)\s+([^\s()]+)", sql, re.I)
                assert all(re.fullmatch(r"\$\{database\}\.v_\w+", s) for s in sources), (panel["title"], sources)
                used |= views
    assert REQUIRED_VIEWS <= used


def test_the_database_variable_is_the_compose_database(dashboards):
    clickhouse_env = environment_of(yaml.safe_load(COMPOSE_FILE.read_text())["services"]["clickhouse"])
    for dashboard in dashboards:
        (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "database"]
        assert variable["current"]["value"] == variable["query"] == clickhouse_env["CLICKHOUSE_DB"]


def test_the_plugin_is_installed_and_pinned(grafana):
    env = environment_of(grafana)
    plugins = env.get("GF_PLUGINS_PREINSTALL") or env.get("GF_INSTALL_PLUGINS") or ""
    spec = [p for p in re.split(r"[,\s]+", interpolate(plugins)) if p.startswith(PLUGIN)]
    assert spec, f"{PLUGIN} is not installed"
    assert re.fullmatch(rf"{PLUGIN}@\d+\.\d+\.\d+", spec[0]), "pin the plugin version"

"""The HTTP API locked down, against a real worker: a bearer token on every route but /health,
and the query route reading only the project's own tables."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.harness import WorkerProcess, wait_until

pytestmark = pytest.mark.kafka

TOKEN = "t0ken-for-this-test"


def call(worker: WorkerProcess, path: str, token: str | None, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(worker.settings.web_url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture
def locked(settings, tmp_path) -> WorkerProcess:
    from ops.admin import create_topics

    values = {name: getattr(settings, name) for name in type(settings).model_fields}
    values.update(api_token=TOKEN, pseudonymisation_key=settings.pseudonymisation_key.get_secret_value())
    locked_settings = type(settings)(**values)
    create_topics(locked_settings)
    worker = WorkerProcess(locked_settings, tmp_path / "worker.log")
    worker.start()
    yield worker
    worker.stop()


def test_every_route_but_health_needs_the_token(locked: WorkerProcess):
    db = locked.settings.clickhouse_database
    assert call(locked, "/health", None)[0] == 200
    for path, body in (("/status", None), ("/customers/C0000001", None),
                       ("/clickhouse/query", {"sql": f"SELECT count() FROM {db}.purchases"}), ("/model/refit", {})):
        assert call(locked, path, None, body)[0] == 401, path
        assert call(locked, path, "wrong-token", body)[0] == 401, path
    assert call(locked, "/status", TOKEN)[0] == 200
    wait_until(lambda: call(locked, "/status", TOKEN)[1]["assignment"], 60, what="partitions assigned")
    wait_until(lambda: call(locked, "/customers/C0000001", TOKEN)[0] == 404, 30,  # let in, known to nobody
               what="the profile route answering")
    status, answer = call(locked, "/clickhouse/query", TOKEN, {"sql": f"SELECT count() FROM {db}.purchases"})
    assert (status, answer["rows"]) == (200, [[0]])
    # nothing bought yet: BG/NBD falls back to its defaults (no buyers), no churn model, no orders
    assert call(locked, "/model/refit", TOKEN, {}) == (200, {"bgnbd_buyers": 0, "churn_buyers": 0,
                                                             "copurchase_orders": 0})


@pytest.mark.parametrize("sql", [
    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    "SELECT file('/etc/hostname')",
    "SELECT * FROM url('http://127.0.0.1:1/x', 'CSV', 'a String')",
    "INSERT INTO {db}.purchases (event_id) VALUES ('x')",
    "SELECT 1; DROP TABLE {db}.purchases",
    "SELECT * FROM system.users",
    "DROP TABLE {db}.purchases",
])
def test_the_query_route_refuses_what_is_not_a_read_of_the_project_tables(locked: WorkerProcess, sql: str):
    db = locked.settings.clickhouse_database
    status, answer = call(locked, "/clickhouse/query", TOKEN, {"sql": sql.format(db=db)})
    assert status == 400 and answer["error"].startswith("refused:"), answer
    # and nothing was done: the table is still there, empty
    status, answer = call(locked, "/clickhouse/query", TOKEN, {"sql": f"SELECT count() FROM {db}.purchases"})
    assert (status, answer["rows"]) == (200, [[0]])

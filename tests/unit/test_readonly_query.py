"""The HTTP API's read-only guard: which SQL runs, which is refused and why; the bearer token.

The last tests run the accepted queries on a real chDB with :func:`read_settings`, and show what
``readonly=1`` alone would let through.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from config.settings import Settings
from sinks.readonly import QueryRefused, check_bearer, check_read_query, read_settings

DB = "loyalty"

# (query, the statement to run), every one runnable on the tables made by the `client` fixture
ACCEPTED = [
    ("SELECT 1", "SELECT 1"),
    ("  select count() from loyalty.alerts final;  ", "select count() from loyalty.alerts final"),
    ("SELECT 1 -- ; DROP TABLE x", "SELECT 1"),
    ("SELECT 1 /* ; DROP TABLE x */", "SELECT 1"),
    ("SELECT /* a /* nested */ comment */ 1", "SELECT   1"),
    ("SELECT 'a;b' AS s FROM loyalty.alerts", "SELECT 'a;b' AS s FROM loyalty.alerts"),
    ("SELECT 'it''s; -- fine', 'back\\'slash; /*'", "SELECT 'it''s; -- fine', 'back\\'slash; /*'"),
    ("SELECT 'DROP TABLE x; file(1)'", "SELECT 'DROP TABLE x; file(1)'"),
    ("SELECT kind FROM `loyalty`.`alerts`", "SELECT kind FROM `loyalty`.`alerts`"),
    ('SELECT kind FROM "loyalty"."alerts"', 'SELECT kind FROM "loyalty"."alerts"'),
    ("WITH recent AS (SELECT * FROM loyalty.alerts) SELECT count() FROM recent",
     "WITH recent AS (SELECT * FROM loyalty.alerts) SELECT count() FROM recent"),
    ("WITH a AS (SELECT 1 AS x), b AS (SELECT x FROM a) SELECT x FROM b",
     "WITH a AS (SELECT 1 AS x), b AS (SELECT x FROM a) SELECT x FROM b"),
    ("SELECT extract(DAY FROM raised_at), trim(BOTH ' ' FROM kind) FROM loyalty.alerts",
     "SELECT extract(DAY FROM raised_at), trim(BOTH ' ' FROM kind) FROM loyalty.alerts"),
    ("SELECT a.kind FROM loyalty.alerts AS a JOIN loyalty.purchases AS p ON a.customer_id = p.customer_id",
     "SELECT a.kind FROM loyalty.alerts AS a JOIN loyalty.purchases AS p ON a.customer_id = p.customer_id"),
    ("SELECT count() FROM loyalty.alerts AS a, loyalty.purchases AS p",
     "SELECT count() FROM loyalty.alerts AS a, loyalty.purchases AS p"),
    ("SELECT kind FROM loyalty.alerts WHERE customer_id IN (SELECT customer_id FROM loyalty.purchases)",
     "SELECT kind FROM loyalty.alerts WHERE customer_id IN (SELECT customer_id FROM loyalty.purchases)"),
    ("SELECT n FROM loyalty.alerts ARRAY JOIN [1, 2] AS n", "SELECT n FROM loyalty.alerts ARRAY JOIN [1, 2] AS n"),
    ("SELECT sum(rows) FROM system.parts WHERE database = 'loyalty'",
     "SELECT sum(rows) FROM system.parts WHERE database = 'loyalty'"),
    ("SELECT URLHash('https://example.com'), formatDateTime(now(), '%F')",
     "SELECT URLHash('https://example.com'), formatDateTime(now(), '%F')"),
    ("SHOW TABLES FROM loyalty LIKE 'a%'", "SHOW TABLES FROM loyalty LIKE 'a%'"),
    ("SHOW CREATE TABLE loyalty.alerts", "SHOW CREATE TABLE loyalty.alerts"),
    ("DESCRIBE TABLE loyalty.alerts", "DESCRIBE TABLE loyalty.alerts"),
    ("desc loyalty.alerts", "desc loyalty.alerts"),
    ("EXISTS TABLE loyalty.alerts", "EXISTS TABLE loyalty.alerts"),
    ("SELECT 1\r\n;", "SELECT 1"),
]

REFUSED = [
    # statements that are not reads
    ("INSERT INTO loyalty.alerts VALUES ('c', 'k', now())", "only SELECT, WITH, SHOW, DESCRIBE and EXISTS"),
    ("DROP TABLE loyalty.alerts", "not DROP"),
    ("SET readonly = 0", "not SET"),
    ("OPTIMIZE TABLE loyalty.alerts FINAL", "not OPTIMIZE"),
    ("SYSTEM SHUTDOWN", "not SYSTEM"),
    ("EXPLAIN SELECT 1", "not EXPLAIN"),
    ("", "empty query"),
    ("  ; ", "empty query"),
    ("-- nothing but a comment", "empty query"),
    # more than one statement
    ("SELECT 1; DROP TABLE x", "more than one statement"),
    ("SELECT ';'; DROP TABLE x", "more than one statement"),
    ("SELECT 1;;", "more than one statement"),
    ("SELECT 1; SELECT 2", "more than one statement"),
    # comments do not hide anything
    ("SEL/**/ECT 1", "not SEL"),
    ("/* SELECT */ DROP TABLE x", "not DROP"),
    ("-- SELECT\nDROP TABLE x", "not DROP"),
    ("SELECT 1 /* unterminated", "unterminated comment"),
    ("SELECT 1 /* /* nested */ still open", "unterminated comment"),
    ("SELECT 1 # a hash comment", "unexpected character '#'"),
    # files, URLs, other servers: as table functions and as functions, in any case or quoting
    ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "function file()"),
    ("SELECT FiLe('/etc/passwd')", "function FiLe()"),
    ("SELECT `file`('/etc/passwd')", "function file()"),
    ("SELECT * FROM url('http://example.com/', 'LineAsString')", "function url()"),
    ("SELECT * FROM s3('https://bucket/x.csv')", "function s3()"),
    ("SELECT * FROM s3Cluster('c', 'https://bucket/x.csv')", "function s3Cluster()"),
    ("SELECT * FROM remoteSecure('h:9440', db.t)", "function remoteSecure()"),
    ("SELECT * FROM clusterAllReplicas('c', db.t)", "function clusterAllReplicas()"),
    ("SELECT * FROM postgresql('h:5432', 'db', 't', 'u', 'p')", "function postgresql()"),
    ("SELECT * FROM executable('x.sh', 'TSV', 'a String')", "function executable()"),
    ("SELECT * FROM loyalty.alerts JOIN hdfs('hdfs://h/x', 'TSV') USING kind", "function hdfs()"),
    ("SELECT dictGet('d', 'a', toUInt64(1))", "function dictGet()"),
    ("SELECT joinGet('loyalty.j', 'v', 1)", "function joinGet()"),
    ("SELECT hasColumnInTable('other', 't', 'c')", "function hasColumnInTable()"),
    ("SELECT * FROM merge('other', '.*')", "function merge()"),
    # every table function, even harmless ones
    ("SELECT * FROM numbers(10)", "table function numbers()"),
    ("SELECT * FROM loyalty.alerts, generateRandom('a UInt8')", "table function generateRandom()"),
    ("DESCRIBE TABLE view(SELECT 1)", "table function view()"),
    # tables outside the database
    ("SELECT * FROM other.secrets", "table other.secrets: only the tables of loyalty"),
    ("SELECT * FROM LOYALTY.alerts", "table LOYALTY.alerts"),  # database names are case-sensitive
    ("SELECT * FROM `other`.`secrets`", "table other.secrets"),
    ('SELECT * FROM "other".secrets', "table other.secrets"),
    ("SELECT * FROM system.tables", "table system.tables"),
    ("SELECT * FROM `system`.users", "table system.users"),
    ("SELECT * FROM alerts", "table alerts: name it with its database, loyalty.alerts"),
    ("SELECT * FROM loyalty.alerts AS a, other.secrets", "table other.secrets"),
    ("SELECT * FROM loyalty.alerts JOIN other.secrets USING (customer_id)", "table other.secrets"),
    ("SELECT * FROM loyalty.alerts LEFT JOIN (SELECT * FROM other.secrets) USING (customer_id)", "table other.secrets"),
    ("SELECT 1 IN other.secrets", "table other.secrets"),
    ("SELECT * FROM loyalty.alerts WHERE kind IN (SELECT kind FROM other.secrets)", "table other.secrets"),
    ("SELECT exists(SELECT 1 FROM other.secrets)", "table other.secrets"),
    ("SELECT trim(BOTH ' ' FROM (SELECT s FROM other.secrets))", "table other.secrets"),
    ("WITH x AS (SELECT * FROM other.secrets) SELECT * FROM x", "table other.secrets"),
    ("SELECT 1 UNION ALL SELECT 2 FROM other.secrets", "table other.secrets"),
    ("DESCRIBE TABLE other.secrets", "table other.secrets"),
    ("EXISTS other.secrets", "table other.secrets"),
    ("EXISTS DATABASE other", "EXISTS DATABASE"),
    # SHOW: two forms only
    ("SHOW TABLES", "SHOW TABLES FROM loyalty"),
    ("SHOW TABLES FROM system", "only the tables of loyalty"),
    ("SHOW PROCESSLIST", "only SHOW TABLES FROM"),
    ("SHOW GRANTS", "only SHOW TABLES FROM"),
    ("SHOW CREATE USER default", "tables and views only"),
    ("SHOW CREATE TABLE other.secrets", "table other.secrets"),
    # clauses that change how the query runs or where its answer goes
    ("SELECT 1 SETTINGS readonly = 0", "SETTINGS clauses are not accepted"),
    ("SELECT 1 settings max_threads = 64", "SETTINGS clauses are not accepted"),
    ("SELECT 1 FORMAT JSONEachRow", "FORMAT clauses are not accepted"),
    ("SELECT 1 INTO OUTFILE '/tmp/x'", "INTO OUTFILE"),
    # lexical tricks
    ("SELECT $$ ' $$, file('/etc/passwd') -- '", "unexpected character '$'"),
    ("SELECT 'unterminated", "unterminated string"),
    ("SELECT `unterminated", "unterminated quoted identifier"),
    ("SELECT 1 \\ 2", "unexpected character '\\\\'"),
]


@pytest.mark.parametrize("sql, statement", ACCEPTED, ids=[s for s, _ in ACCEPTED])
def test_accepted(sql: str, statement: str):
    assert check_read_query(sql, DB) == statement


@pytest.mark.parametrize("sql, reason", REFUSED, ids=[s for s, _ in REFUSED])
def test_refused(sql: str, reason: str):
    with pytest.raises(QueryRefused) as caught:
        check_read_query(sql, DB)
    assert reason in caught.value.reason
    assert "\n" not in caught.value.reason


def test_the_database_is_a_parameter():
    assert check_read_query("SELECT * FROM shop.alerts", "shop") == "SELECT * FROM shop.alerts"
    with pytest.raises(QueryRefused, match="only the tables of shop"):
        check_read_query("SELECT * FROM loyalty.alerts", "shop")


def test_read_settings_are_read_only_and_a_copy():
    settings = read_settings()
    assert settings["readonly"] == "1"
    settings["readonly"] = "0"
    assert read_settings()["readonly"] == "1"


@pytest.mark.parametrize(
    "header, ok",
    [
        ("Bearer s3cret", True),
        ("bearer s3cret", True),
        ("  Bearer   s3cret  ", True),
        ("Bearer s3cre", False),
        ("Bearer s3cretX", False),
        ("Basic s3cret", False),
        ("s3cret", False),
        ("Bearer", False),
        ("", False),
        (None, False),
    ],
)
def test_check_bearer(header: str | None, ok: bool):
    assert check_bearer(header, "s3cret") is ok


def test_an_empty_expected_token_accepts_nothing():
    assert check_bearer("Bearer ", "") is False
    assert check_bearer("Bearer x", "") is False


@pytest.mark.parametrize(
    "host, loopback",
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("worker.internal", False)],
)
def test_web_is_loopback(host: str, loopback: bool):
    assert Settings(web_host=host).web_is_loopback is loopback


def test_the_api_token_is_masked():
    settings = Settings(api_token="s3cret")
    assert ("LOYALTY_API_TOKEN", "***") in [(name, value) for name, value, _ in settings.described()]
    assert "s3cret" not in repr(settings)


# -- on a real chDB ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    chdb = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path_factory.mktemp('readonly') / 'clickhouse'}")
    chdb.command(f"CREATE DATABASE {DB}")
    chdb.command(f"CREATE TABLE {DB}.alerts (customer_id String, kind String, raised_at DateTime64(3, 'UTC')) "
                 "ENGINE = ReplacingMergeTree ORDER BY customer_id")
    chdb.command(f"CREATE TABLE {DB}.purchases (customer_id String) ENGINE = MergeTree ORDER BY customer_id")
    chdb.insert(f"{DB}.alerts", [["C1", " gone_quiet ", 0]], column_names=["customer_id", "kind", "raised_at"])
    yield chdb
    chdb.close()


@pytest.mark.parametrize("sql", [s for s, _ in ACCEPTED], ids=[s for s, _ in ACCEPTED])
def test_accepted_queries_run_with_the_read_settings(client, sql: str):
    client.query(check_read_query(sql, DB), settings=read_settings())
    # and leave the shared session as it was: the worker writes through it next
    assert client.query("SELECT getSetting('readonly')").result_rows == [(0,)]


def test_the_read_settings_refuse_the_file_table_function(client):
    with pytest.raises(DatabaseError, match="READONLY"):
        client.query("SELECT * FROM file('/etc/passwd', 'LineAsString')", settings=read_settings())


def test_the_read_settings_alone_let_the_file_function_read(client, tmp_path: Path):
    # why the guard refuses file() itself: readonly=1 does not stop the scalar function
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the API")
    result = client.query(f"SELECT file('{secret}')", settings=read_settings())
    assert result.result_rows == [("not for the API",)]
    with pytest.raises(QueryRefused):
        check_read_query(f"SELECT file('{secret}')", DB)


def test_read_queries_leave_the_session_writable(client):
    client.query("SELECT 1", settings=read_settings())
    client.insert(f"{DB}.purchases", [["C3"]], column_names=["customer_id"])
    assert client.query(f"SELECT count() FROM {DB}.purchases WHERE customer_id = 'C3'").result_rows == [(1,)]

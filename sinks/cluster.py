"""The migrations' DDL for a ClickHouse cluster (``LOYALTY_CLICKHOUSE_CLUSTER``).

One server (and the embedded engine) runs the migration files as written. On a cluster each
statement is rewritten so that every table exists twice:

* ``<table>_local``, created ``ON CLUSTER`` with the replicated form of its engine
  (``ReplacingMergeTree(version)`` becomes ``ReplicatedReplacingMergeTree('/clickhouse/tables/
  {shard}/<db>/<table>_local', '{replica}', version)``), holding one shard's rows on each of its
  replicas; the deduplication window setting becomes the replicated one (a ``Null`` table, which
  keeps nothing and only feeds its materialized views, stays ``Null`` on each node);
* ``<table>``, a ``Distributed`` table over those, sharded by ``cityHash64(customer_id)`` where
  the table has that column (so one customer's rows, and ``FINAL`` over them, stay on one shard),
  else ``rand()``. Inserts and reads go through it, so queries and views keep their names.

Materialized views are created on every node reading and writing the local tables (each node
aggregates what its shard receives; a refreshable one recomputes its shard's figures into a
``Memory`` table of its own, which stays ``Memory``), and a change of a materialized view's query (``ALTER
TABLE ... MODIFY QUERY``) runs ``ON CLUSTER`` reading the local tables likewise; plain views
(created or replaced) and other ``ALTER TABLE`` statements run ``ON CLUSTER`` (an ``ALTER`` on
both the local and the distributed table), and so does a ``DROP`` (of a table: the distributed
one, then the local one; ``SYNC``: a replicated table's coordination data goes with it).
Pure: text in, text out.
"""

from __future__ import annotations

import re

CREATE_TABLE = re.compile(r"^CREATE TABLE IF NOT EXISTS (\S+)\.(\w+)\s*(\(.*\))\s*ENGINE\s*=\s*(\w+)(\([^)]*\))?(.*)$",
                          re.S)
CREATE_MV = re.compile(r"^CREATE MATERIALIZED VIEW IF NOT EXISTS (\S+)\.(\w+) ((?:REFRESH [^()]*? )?)TO (\S+)\.(\w+) AS(.*)$",
                       re.S)
CREATE_VIEW = re.compile(r"^(CREATE VIEW IF NOT EXISTS|CREATE OR REPLACE VIEW) (\S+)\.(\w+) AS(.*)$", re.S)
MODIFY_QUERY = re.compile(r"^ALTER TABLE (\S+)\.(\w+) MODIFY QUERY(.*)$", re.S)
ALTER_TABLE = re.compile(r"^ALTER TABLE (\S+)\.(\w+) (.*)$", re.S)
CREATE_DATABASE = re.compile(r"^CREATE DATABASE IF NOT EXISTS (\S+)$")
DROP = re.compile(r"^DROP (VIEW|TABLE) IF EXISTS (\S+)\.(\w+)$")
MERGE_TREES = ("MergeTree", "ReplacingMergeTree", "AggregatingMergeTree", "SummingMergeTree", "CollapsingMergeTree")


def local_name(table: str) -> str:
    return f"{table}_local"


def on_cluster(statement: str, cluster: str, tables: set[str]) -> list[str]:
    """The cluster form of one migration statement; ``tables`` collects the names of the tables
    created so far (the rewrite of a view reads the local ones)."""
    statement = statement.strip()
    if match := CREATE_DATABASE.match(statement):
        return [f"CREATE DATABASE IF NOT EXISTS {match.group(1)} ON CLUSTER {cluster}"]
    if match := CREATE_TABLE.match(statement):
        return _table(match, cluster, tables)
    if match := CREATE_MV.match(statement):
        db, name, refresh, target_db, target, body = match.groups()
        return [f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{name} ON CLUSTER {cluster} "
                f"{refresh}TO {target_db}.{local_name(target)} AS{_read_local(body, tables)}"]
    if match := CREATE_VIEW.match(statement):
        create, db, name, body = match.groups()
        return [f"{create} {db}.{name} ON CLUSTER {cluster} AS{body}"]
    if match := MODIFY_QUERY.match(statement):  # a materialized view's query: it reads the local tables
        db, name, body = match.groups()
        return [f"ALTER TABLE {db}.{name} ON CLUSTER {cluster} MODIFY QUERY{_read_local(body, tables)}"]
    if match := DROP.match(statement):
        kind, db, name = match.groups()
        if kind == "VIEW":  # a materialized view exists on every node, under its own name
            return [f"DROP VIEW IF EXISTS {db}.{name} ON CLUSTER {cluster} SYNC"]
        tables.discard(name)
        return [f"DROP TABLE IF EXISTS {db}.{name} ON CLUSTER {cluster} SYNC",
                f"DROP TABLE IF EXISTS {db}.{local_name(name)} ON CLUSTER {cluster} SYNC"]
    if match := ALTER_TABLE.match(statement):
        db, name, change = match.groups()
        return [f"ALTER TABLE {db}.{local_name(name)} ON CLUSTER {cluster} {change}",
                f"ALTER TABLE {db}.{name} ON CLUSTER {cluster} {change}"]
    return [statement]  # INSERT ... SELECT (backfills) go through the distributed tables as written


def _table(match: re.Match[str], cluster: str, tables: set[str]) -> list[str]:
    db, name, columns, engine, arguments, rest = match.groups()
    local = local_name(name)
    if engine == "Null":  # keeps nothing, so nothing to replicate: its views fire where the rows land
        replicated = engine
    elif engine == "Memory":  # derived on each node (a refreshed view's target): each computes its own
        replicated = engine
    elif engine in MERGE_TREES:
        path = f"'/clickhouse/tables/{{shard}}/{db}/{local}', '{{replica}}'"
        inner = (arguments or "()")[1:-1].strip()
        replicated = f"Replicated{engine}({path}{', ' + inner if inner else ''})"
    else:
        raise ValueError(f"{db}.{name}: no replicated form of engine {engine}")
    rest = rest.replace("non_replicated_deduplication_window", "replicated_deduplication_window")
    shard_key = "cityHash64(customer_id)" if re.search(r"^\s*customer_id\s", columns, re.M) else "rand()"
    tables.add(name)
    return [
        f"CREATE TABLE IF NOT EXISTS {db}.{local} ON CLUSTER {cluster} {columns}\nENGINE = {replicated}{rest}",
        f"CREATE TABLE IF NOT EXISTS {db}.{name} ON CLUSTER {cluster} AS {db}.{local}\n"
        f"ENGINE = Distributed({cluster}, {db}, {local}, {shard_key})",
    ]


def _read_local(body: str, tables: set[str]) -> str:
    """A materialized view's SELECT reading the local tables (it fires on the local inserts)."""
    for name in sorted(tables, key=len, reverse=True):
        body = re.sub(rf"(FROM\s+\S+?\.){name}\b", rf"\g<1>{local_name(name)}", body)
    return body

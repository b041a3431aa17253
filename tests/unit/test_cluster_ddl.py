"""The migrations' DDL on a cluster (sinks/cluster.py): every statement of every migration file,
and exact forms for each kind of statement."""

from __future__ import annotations

import pytest

from config.settings import Settings
from sinks.clickhouse import ClickHouseSink, migrations, split_statements
from sinks.cluster import on_cluster


def test_a_replacing_table_becomes_a_replicated_local_table_and_a_distributed_one():
    tables: set[str] = set()
    statement = ("CREATE TABLE IF NOT EXISTS loyalty.relationships\n(\n    customer_id String,\n    version UInt64\n)\n"
                 "ENGINE = ReplacingMergeTree(version)\nORDER BY customer_id\n"
                 "SETTINGS non_replicated_deduplication_window = 10000")
    local, distributed = on_cluster(statement, "prod", tables)
    assert local == (
        "CREATE TABLE IF NOT EXISTS loyalty.relationships_local ON CLUSTER prod "
        "(\n    customer_id String,\n    version UInt64\n)\n"
        "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/loyalty/relationships_local', '{replica}', version)"
        "\nORDER BY customer_id\nSETTINGS replicated_deduplication_window = 10000")
    assert distributed == ("CREATE TABLE IF NOT EXISTS loyalty.relationships ON CLUSTER prod AS loyalty.relationships_local\n"
                           "ENGINE = Distributed(prod, loyalty, relationships_local, cityHash64(customer_id))")
    assert tables == {"relationships"}


def test_an_engine_without_arguments_and_a_table_without_customers():
    local, distributed = on_cluster("CREATE TABLE IF NOT EXISTS db.model_params (fitted_at DateTime64(3))\n"
                                    "ENGINE = MergeTree\nORDER BY fitted_at", "c1", set())
    assert "ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/db/model_params_local', '{replica}')\n" in local
    assert distributed.endswith("ENGINE = Distributed(c1, db, model_params_local, rand())")


def test_a_materialized_view_reads_and_writes_the_local_tables():
    tables = {"signals_history", "signals_daily"}
    (view,) = on_cluster("CREATE MATERIALIZED VIEW IF NOT EXISTS db.signals_daily_mv TO db.signals_daily AS\n"
                         "SELECT tier FROM db.signals_history\nGROUP BY tier", "c1", tables)
    assert view == ("CREATE MATERIALIZED VIEW IF NOT EXISTS db.signals_daily_mv ON CLUSTER c1 TO db.signals_daily_local AS\n"
                    "SELECT tier FROM db.signals_history_local\nGROUP BY tier")


def test_a_null_table_is_a_null_table_on_each_node_behind_a_distributed_one():
    tables: set[str] = set()
    local, distributed = on_cluster("CREATE TABLE IF NOT EXISTS db.signals_avro\n(\n    customer_id String\n)\n"
                                    "ENGINE = Null", "c1", tables)
    assert local == ("CREATE TABLE IF NOT EXISTS db.signals_avro_local ON CLUSTER c1 (\n    customer_id String\n)\n"
                     "ENGINE = Null")
    assert distributed.endswith("ENGINE = Distributed(c1, db, signals_avro_local, cityHash64(customer_id))")
    (view,) = on_cluster("CREATE MATERIALIZED VIEW IF NOT EXISTS db.v TO db.signals_current AS\n"
                         "SELECT s.customer_id FROM db.signals_avro AS s", "c1", tables | {"signals_current"})
    assert view.endswith("TO db.signals_current_local AS\nSELECT s.customer_id FROM db.signals_avro_local AS s")


def test_a_refreshed_view_recomputes_each_shard_into_a_memory_table_of_its_own():
    tables: set[str] = {"signals_current"}
    local, distributed = on_cluster("CREATE TABLE IF NOT EXISTS db.tiers_now\n(\n    tier String\n)\nENGINE = Memory",
                                    "c1", tables)
    assert local == "CREATE TABLE IF NOT EXISTS db.tiers_now_local ON CLUSTER c1 (\n    tier String\n)\nENGINE = Memory"
    assert distributed.endswith("ENGINE = Distributed(c1, db, tiers_now_local, rand())")
    (view,) = on_cluster("CREATE MATERIALIZED VIEW IF NOT EXISTS db.tiers_now_mv REFRESH EVERY 1 SECOND TO db.tiers_now AS\n"
                         "SELECT tier, count() AS customers FROM db.signals_current FINAL GROUP BY tier", "c1", tables)
    assert view == ("CREATE MATERIALIZED VIEW IF NOT EXISTS db.tiers_now_mv ON CLUSTER c1 REFRESH EVERY 1 SECOND "
                    "TO db.tiers_now_local AS\nSELECT tier, count() AS customers FROM db.signals_current_local FINAL "
                    "GROUP BY tier")


def test_views_alters_databases_and_backfills():
    assert on_cluster("CREATE VIEW IF NOT EXISTS db.v AS SELECT 1 FROM db.t", "c1", set()) == [
        "CREATE VIEW IF NOT EXISTS db.v ON CLUSTER c1 AS SELECT 1 FROM db.t"]
    assert on_cluster("CREATE OR REPLACE VIEW db.v AS\nSELECT 2 FROM db.t", "c1", set()) == [
        "CREATE OR REPLACE VIEW db.v ON CLUSTER c1 AS\nSELECT 2 FROM db.t"]
    assert on_cluster("ALTER TABLE db.t ADD COLUMN IF NOT EXISTS x String", "c1", set()) == [
        "ALTER TABLE db.t_local ON CLUSTER c1 ADD COLUMN IF NOT EXISTS x String",
        "ALTER TABLE db.t ON CLUSTER c1 ADD COLUMN IF NOT EXISTS x String"]
    assert on_cluster("CREATE DATABASE IF NOT EXISTS db", "c1", set()) == ["CREATE DATABASE IF NOT EXISTS db ON CLUSTER c1"]
    backfill = "INSERT INTO db.signals_daily SELECT tier FROM db.signals_history FINAL GROUP BY tier"
    assert on_cluster(backfill, "c1", set()) == [backfill]


def test_a_replaced_view_and_a_materialized_view_s_new_query():
    assert on_cluster("CREATE OR REPLACE VIEW db.v AS SELECT 1 FROM db.t", "c1", set()) == [
        "CREATE OR REPLACE VIEW db.v ON CLUSTER c1 AS SELECT 1 FROM db.t"]
    (alter,) = on_cluster("ALTER TABLE db.week_mv MODIFY QUERY\nSELECT tier FROM db.signals_history GROUP BY tier",
                          "c1", {"signals_history"})
    assert alter == "ALTER TABLE db.week_mv ON CLUSTER c1 MODIFY QUERY\nSELECT tier FROM db.signals_history_local GROUP BY tier"


def test_a_dropped_view_and_a_dropped_table_go_on_every_node():
    tables = {"signals_daily", "signals_history"}
    assert on_cluster("DROP VIEW IF EXISTS db.signals_daily_mv", "c1", tables) == [
        "DROP VIEW IF EXISTS db.signals_daily_mv ON CLUSTER c1 SYNC"]
    assert on_cluster("DROP TABLE IF EXISTS db.signals_daily", "c1", tables) == [
        "DROP TABLE IF EXISTS db.signals_daily ON CLUSTER c1 SYNC",
        "DROP TABLE IF EXISTS db.signals_daily_local ON CLUSTER c1 SYNC"]
    assert tables == {"signals_history"}  # a later view's FROM signals_daily is not rewritten to a dropped table


def test_every_migration_statement_has_a_cluster_form():
    sink = ClickHouseSink("http://example.invalid:8123/", "loyalty", cluster="prod")
    created, distributed = [], []
    for _, _, sql in migrations():
        for statement in split_statements(sql.replace("{db}", "loyalty")):
            for rewritten in sink.ddl(statement):
                if rewritten.startswith(("CREATE", "ALTER", "DROP")):
                    assert " ON CLUSTER prod " in rewritten, rewritten
                if "ENGINE = Distributed" in rewritten:
                    distributed.append(rewritten.split()[5])
                elif rewritten.startswith("CREATE TABLE"):
                    created.append(rewritten.split()[5])
                    assert ("ENGINE = Replicated" in rewritten or rewritten.endswith(("ENGINE = Null", "ENGINE = Memory"))), \
                        rewritten
                    assert "non_replicated" not in rewritten
    assert sorted(created) == sorted(f"{name}_local" for name in distributed)
    assert "loyalty.signals_current" in distributed and "loyalty.purchases" in distributed
    (modify,) = [s for _, name, sql in migrations() if name == "captive"
                 for s in sink.ddl(split_statements(sql.replace("{db}", "loyalty"))[0])]
    assert modify.startswith("ALTER TABLE loyalty.customer_week_tiers_mv ON CLUSTER prod MODIFY QUERY")
    assert "FROM loyalty.signals_history_local" in modify


def test_one_server_and_the_embedded_engine_run_the_files_as_written():
    sink = ClickHouseSink("chdb:///tmp/unused", "loyalty")
    statement = "CREATE TABLE IF NOT EXISTS loyalty.t (a UInt8) ENGINE = MergeTree ORDER BY a"
    assert sink.ddl(statement) == [statement]


def test_a_cluster_needs_a_server():
    with pytest.raises(ValueError, match="needs a ClickHouse server"):
        Settings(clickhouse_cluster="prod")
    assert Settings(clickhouse_cluster="prod", clickhouse_dsn="http://ch:8123/").clickhouse_cluster == "prod"

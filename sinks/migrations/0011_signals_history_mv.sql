-- 0011_signals_history_mv: signals_history filled by a materialized view from every block inserted
-- into signals_current, instead of a second insert of the same rows by the sink. Each insert into
-- ClickHouse has a fixed cost (a query, a part written, later merges) that dominates the small
-- batches of a sink keeping up; one fewer per batch (bench/sink.py measures it).
--
-- Both tables have the same columns (every migration has added a column to both), and SELECT *
-- is expanded at every insert, so a column added to both later flows through without a change
-- here. signals_history's own views (signals_daily_mv, customer_week_tiers_mv) fire on the
-- blocks this view writes, as they did on the sink's inserts.
--
-- Exactly once: the sink inserts with deduplicate_blocks_in_dependent_materialized_views = 1, so
-- the block this view writes carries a deduplication token derived from the signals_current
-- insert's token: a retried batch writes signals_history once, and an insert that reached
-- signals_current but failed in this view writes the missing history rows when retried (a
-- retried block the source table deduplicates is still pushed to its views, which check their
-- own tokens). A replay in other batch boundaries collapses on (customer_id, version) as before.
-- A sink older than this migration still inserts into signals_history itself: its rows arrive
-- twice and collapse on the same key.
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.signals_history_mv TO {db}.signals_history AS
SELECT *
FROM {db}.signals_current;

-- 0013_tiers_now: the tier mix now, kept by ClickHouse rather than computed at every query.
--
-- v_tiers_current reads every customer's current signal (signals_current FINAL) for each query:
-- on 1,000,000 customers 40-60 ms idle and 150-500 ms while signals are inserted, for every query
-- of every dashboard. tiers_now holds the same figures, recomputed by a refreshable materialized
-- view every 5 seconds: a dashboard reads a few rows in a millisecond or two, and the cost is one
-- FINAL per interval whatever the number of readers. The sink sets the interval at start
-- (LOYALTY_CLICKHOUSE_TIERS_NOW_REFRESH_SECONDS). An answer is as old as its refresh
-- (refreshed_at): at most the interval plus one refresh's duration. For figures exact to the last
-- insert, use v_tiers_current.
--
-- tiers_now is a Memory table: a derived table of one row per tier, replaced whole at every
-- refresh (so nothing to merge, deduplicate or replicate). After a restart it is empty until the
-- first refresh. On a cluster each node keeps its own, computed from its shard of signals_current,
-- and v_tiers_now sums the shards (replicas of one shard compute the same figures; a distributed
-- read takes one of them).
CREATE TABLE IF NOT EXISTS {db}.tiers_now
(
    tier                LowCardinality(String),
    customers           UInt64,
    sum_loyalty_score   Float64,
    sum_churn_risk      Float64,
    revenue_365d_minor  Int64,
    refreshed_at        DateTime64(3, 'UTC')
)
ENGINE = Memory;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.tiers_now_mv REFRESH EVERY 5 SECOND TO {db}.tiers_now AS
SELECT
    tier,
    count() AS customers,
    sum(loyalty_score) AS sum_loyalty_score,
    sum(churn_risk) AS sum_churn_risk,
    sum(spend_365d_minor) AS revenue_365d_minor,
    now64(3, 'UTC') AS refreshed_at
FROM {db}.signals_current FINAL
GROUP BY tier;

-- v_tiers_now: v_tiers_current's figures as of the last refresh (refreshed_at).
--   SELECT tier, customers, share FROM loyalty.v_tiers_now ORDER BY customers DESC
CREATE VIEW IF NOT EXISTS {db}.v_tiers_now AS
SELECT
    tier,
    sum(t.customers) AS customers,
    customers / sum(customers) OVER () AS share,
    sum(sum_loyalty_score) / customers AS avg_loyalty_score,
    sum(sum_churn_risk) / customers AS avg_churn_risk,
    sum(t.revenue_365d_minor) AS revenue_365d_minor,
    min(t.refreshed_at) AS refreshed_at
FROM {db}.tiers_now AS t
GROUP BY tier;

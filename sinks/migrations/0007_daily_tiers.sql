-- 0007_daily_tiers: each customer counted once per day, in the tier they ended the day in, by
-- event time. Replaces v_daily_tiers and v_audience_vs_loyal of 0004, which counted a customer in
-- every tier of every signal of the day (by the day the signal was computed), and so collapsed a
-- backfilled year into the day or two it was processed on. signals_daily and its materialized
-- view stay as they were (filled, granted to the BI role), but no view reads them any more.
--
-- tier_days: one row per customer and event day after merges: the customer's tier and figures as
-- of that day's last event. The sink writes one from every signal (its own day, day = toDate(as_of),
-- UTC) and one per entry of the signal's day_ends (the earlier event days of a batch that held
-- several: a backfill, a replay, a catch-up; domain/model/days.py). version = events applied by
-- then, so a later batch of the same day replaces the day's row, and a replayed row (same version)
-- collapses onto it. A late event (older than the customer's newest) does not rewrite its own
-- day's row: it counts from the next row on. Read with FINAL.
CREATE TABLE IF NOT EXISTS {db}.tier_days
(
    customer_id       String,
    day               Date,
    as_of             DateTime64(3, 'UTC'),
    version           UInt64,
    tier              LowCardinality(String),
    loyalty_score     Float64,
    churn_risk        Float64,
    spend_365d_minor  Int64,
    updated_at        DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (customer_id, day)
SETTINGS non_replicated_deduplication_window = 10000;

-- Backfill from the signal history written before this migration (nothing on a fresh database):
-- each customer-day's highest version. Days the old signals skipped (several event days folded
-- into one signal) stay missing; the tier carries over them (see v_daily_tiers).
INSERT INTO {db}.tier_days
SELECT customer_id, toDate(as_of) AS day, argMax(as_of, version), max(version), argMax(tier, version),
       argMax(loyalty_score, version), argMax(churn_risk, version), argMax(spend_365d_minor, version),
       max(updated_at)
FROM {db}.signals_history FINAL
GROUP BY customer_id, day;

-- v_daily_tiers: per day and tier, every customer known by the end of the day (first event on or
-- before it), counted once, in the tier of their newest row up to that day: a customer's tier is
-- re-scored when an event arrives, so on days without one they stay in the tier of their last
-- event (carried forward, as signals_current does). Every day from the oldest row to the newest
-- is listed; a tier with no customer that day has no row. The newest day's counts are the tiers of
-- signals_current (v_tiers_current) for every customer with a signal.
--   customers           customers in the tier at the end of the day
--   active_customers    of them, those with an event that day
--   avg_loyalty_score, avg_churn_risk   means over the tier's customers, each with the figures of
--                       their newest row (score to 2 decimals, churn risk to 6, as in the signal)
--   revenue_365d_minor  the trailing-year spend those customers carry, summed
-- How, without a row per customer and day: each customer-day row enters its tier and leaves the
-- tier of the customer's row before it (+1 / -1, and the same for the figures, in integer units
-- so the sums are exact); the changes, summed per (day, tier), are a small table, and a running
-- sum over the days gives each day's figures. One pass over tier_days FINAL (a window over each
-- customer's rows, already in key order); bench/bi_views.py measures it.
--   SELECT day, tier, customers FROM loyalty.v_daily_tiers WHERE day >= today() - 30 ORDER BY day, tier
CREATE OR REPLACE VIEW {db}.v_daily_tiers AS
SELECT day, tier, customers, active_customers, avg_loyalty_score, avg_churn_risk, revenue_365d_minor
FROM
(
    SELECT
        day,
        tier,
        sum(n) OVER running AS customers,
        active AS active_customers,
        sum(score) OVER running / customers / 100 AS avg_loyalty_score,
        sum(churn) OVER running / customers / 1000000 AS avg_churn_risk,
        sum(spend) OVER running AS revenue_365d_minor
    FROM
    (
        SELECT x.1 AS day, x.2 AS tier, sum(x.3) AS n, sum(x.4) AS active, sum(x.5) AS score, sum(x.6) AS churn,
               sum(x.7) AS spend
        FROM
        (
            SELECT
                groupArray((day, tier, n, active, score, churn, spend)) AS changes,
                arrayMin(arrayMap(c -> c.1, changes)) AS first_day,
                arrayMax(arrayMap(c -> c.1, changes)) AS last_day,
                arrayDistinct(arrayMap(c -> c.2, changes)) AS tiers,
                -- a zero change for every (day, tier), so every day gets its running sum
                arrayFlatten(arrayMap(i -> arrayMap(t -> (first_day + i, t, toInt64(0), toInt64(0), toInt64(0),
                                                          toInt64(0), toInt64(0)), tiers),
                                      range(toUInt32(last_day - first_day) + 1))) AS zeros
            FROM
            (
                SELECT day, change.1 AS tier, sum(change.2) AS n, sum(change.3) AS active, sum(change.4) AS score,
                       sum(change.5) AS churn, sum(change.6) AS spend
                FROM
                (
                    SELECT
                        day,
                        toString(tier) AS entered_tier,
                        toInt64(round(loyalty_score * 100)) AS entered_score,
                        toInt64(round(churn_risk * 1000000)) AS entered_churn,
                        spend_365d_minor AS entered_spend,
                        lagInFrame(entered_tier) OVER customer AS left_tier,
                        lagInFrame(entered_score) OVER customer AS left_score,
                        lagInFrame(entered_churn) OVER customer AS left_churn,
                        lagInFrame(entered_spend) OVER customer AS left_spend
                    FROM {db}.tier_days FINAL
                    WINDOW customer AS (PARTITION BY customer_id ORDER BY day ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)
                )
                -- the first row of a customer has no row before it: lagInFrame gives '' and zeros
                ARRAY JOIN [(entered_tier, toInt64(1), toInt64(1), entered_score, entered_churn, entered_spend),
                            (left_tier, toInt64(-1), toInt64(0), -left_score, -left_churn, -left_spend)] AS change
                WHERE change.1 != ''
                GROUP BY day, tier
            )
        )
        ARRAY JOIN arrayConcat(changes, zeros) AS x
        GROUP BY day, tier
    )
    WINDOW running AS (PARTITION BY tier ORDER BY day ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
)
WHERE customers > 0;

-- v_audience_vs_loyal: "a big audience or a loyal base?" Per day: the customers active that day
-- (with an event), each once, and how many of them ended the day fiercely loyal or loyal, how many
-- transactional, and the shares (tier_days FINAL).
--   SELECT day, active_customers, loyal_share, transactional_share FROM loyalty.v_audience_vs_loyal ORDER BY day
CREATE OR REPLACE VIEW {db}.v_audience_vs_loyal AS
SELECT
    day,
    count() AS active_customers,
    countIf(tier IN ('fiercely_loyal', 'loyal')) AS loyal_customers,
    countIf(tier = 'transactional') AS transactional_customers,
    loyal_customers / active_customers AS loyal_share,
    transactional_customers / active_customers AS transactional_share
FROM (SELECT day, tier FROM {db}.tier_days FINAL)
GROUP BY day;

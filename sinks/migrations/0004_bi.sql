-- 0004_bi: the BI model. A daily snapshot kept by a materialized view, and ready-made views
-- (v_*) that BI tools and the read-only role `loyalty_bi_reader` (sinks/roles/bi_reader.sql)
-- query. No view is fooled by a replayed row: each reads with FINAL, a GROUP BY on the key that
-- makes a replay collapse, or an aggregate a duplicate cannot change (each view says which).
-- Runs after 0003, which creates {db}.alerts.
--
-- Tiers (model/tiers.py): prospect, lapsed, new, at_risk, fiercely_loyal, loyal, transactional.
-- Money is in integer minor units of the reporting currency (LOYALTY_CURRENCY).

-- signals_daily: the daily snapshot, one row per (day, tier) after merges, day = toDate(as_of)
-- (UTC), filled by signals_daily_mv from every version inserted into signals_history. (Dropped
-- by 0014: since 0007 the views read tier_days.)
--
-- Replays. Delivery is at-least-once: signals_history can receive the same (customer_id,
-- version) row twice in different insert blocks (a replay after a crash whose batch boundaries
-- differ, so the insert deduplication token does not catch it). signals_history collapses it
-- (ReplacingMergeTree), but the MV has already aggregated both copies. So each figure uses a
-- function that a duplicate cannot inflate:
--   customers         uniqState(customer_id): a distinct count; a duplicate changes nothing.
--                     (uniq: exact up to 65,536 customers per state, barring a rare hash
--                     collision; within about 1% above.)
--   signals           count of signal versions; a duplicate adds one (kept for transparency).
--   avg_loyalty_score, avg_churn_risk, avg_spend_365d_minor: means over the day's signals of the
--                     tier; a duplicate gives its version weight two instead of one (the mean
--                     moves by (x - mean) / (n + 1) at most, and is never inflated by volume).
-- Revenue is therefore not a sum over signals (a customer scored three times that day would count
-- three times): v_daily_tiers reports revenue_365d_minor = customers x avg_spend_365d_minor, the
-- trailing-year spend the tier's customers carry.
-- A customer whose tier changed during the day counts in each tier they held that day; the day's
-- distinct customers are uniqMerge over all tiers (v_audience_vs_loyal). Exact per-customer
-- figures (argMax per customer-day) cost a scan of every customer-day: 15 s on 1M customers and
-- eight weeks in chDB, against milliseconds here (bench/bi_views.py).
CREATE TABLE IF NOT EXISTS {db}.signals_daily
(
    day                  Date,
    tier                 LowCardinality(String),
    customers            AggregateFunction(uniq, String),
    signals              SimpleAggregateFunction(sum, UInt64),
    avg_loyalty_score    AggregateFunction(avg, Float64),
    avg_churn_risk       AggregateFunction(avg, Float64),
    avg_spend_365d_minor AggregateFunction(avg, Int64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, tier);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.signals_daily_mv TO {db}.signals_daily AS
SELECT
    toDate(as_of) AS day,
    tier,
    uniqState(customer_id) AS customers,
    toUInt64(count()) AS signals,
    avgState(loyalty_score) AS avg_loyalty_score,
    avgState(churn_risk) AS avg_churn_risk,
    avgState(spend_365d_minor) AS avg_spend_365d_minor
FROM {db}.signals_history
GROUP BY day, tier;

-- Backfill from the history written before this migration (nothing on a fresh database). The
-- worker migrates before it consumes, so no insert races this; were one to, its rows would count
-- twice in `signals` and the means only (see above), never in `customers`.
INSERT INTO {db}.signals_daily
SELECT toDate(as_of) AS day, tier, uniqState(customer_id), toUInt64(count()), avgState(loyalty_score),
       avgState(churn_risk), avgState(spend_365d_minor)
FROM {db}.signals_history FINAL
GROUP BY day, tier;

-- customer_week_tiers: each customer's tier at the end of every week (Monday, UTC) with a signal,
-- one row per customer after merges, filled by customer_week_tiers_mv. week_ends maps the week
-- to version * 16 + tier code (1..7 = the tiers in model/tiers.py order, 0 = unknown), merged
-- with maxMap: the highest version of the week wins, so its tier is the week's last. A replayed
-- duplicate has the same version and code, and max is idempotent. v_tier_transitions_weekly
-- reads it with FINAL.
CREATE TABLE IF NOT EXISTS {db}.customer_week_tiers
(
    customer_id  String,
    week_ends    SimpleAggregateFunction(maxMap, Tuple(Array(Date), Array(UInt64)))
)
ENGINE = AggregatingMergeTree
ORDER BY customer_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.customer_week_tiers_mv TO {db}.customer_week_tiers AS
SELECT
    customer_id,
    maxMap([toMonday(as_of)],
           [version * 16 + indexOf(['prospect', 'lapsed', 'new', 'at_risk', 'fiercely_loyal', 'loyal', 'transactional'],
                                   toString(tier))]) AS week_ends
FROM {db}.signals_history
GROUP BY customer_id;

-- Backfill, as for signals_daily (maxMap is idempotent, so a racing insert changes nothing).
INSERT INTO {db}.customer_week_tiers
SELECT customer_id,
       maxMap([toMonday(as_of)],
              [version * 16 + indexOf(['prospect', 'lapsed', 'new', 'at_risk', 'fiercely_loyal', 'loyal', 'transactional'],
                                      toString(tier))])
FROM {db}.signals_history FINAL
GROUP BY customer_id;

-- 0007_daily_tiers replaces v_daily_tiers and v_audience_vs_loyal: each customer once per event
-- day, in the tier they ended the day in (from tier_days); signals_daily is kept but no longer read.
-- v_daily_tiers: the daily snapshot per (day, tier): customers with a signal that day in that
-- tier, their mean score and churn risk, and revenue_365d_minor (see signals_daily).
--   SELECT day, tier, customers FROM loyalty.v_daily_tiers WHERE day >= today() - 30 ORDER BY day, tier
CREATE VIEW IF NOT EXISTS {db}.v_daily_tiers AS
SELECT
    day,
    tier,
    uniqMerge(customers) AS customers,
    sum(signals) AS signals,
    avgMerge(avg_loyalty_score) AS avg_loyalty_score,
    avgMerge(avg_churn_risk) AS avg_churn_risk,
    toInt64(round(customers * avgMerge(avg_spend_365d_minor))) AS revenue_365d_minor
FROM {db}.signals_daily
GROUP BY day, tier;

-- v_audience_vs_loyal: "a big audience or a loyal base?" Per day: the distinct customers active
-- that day (with a signal), how many of them were fiercely loyal or loyal, how many
-- transactional, and the shares. (A customer who changed tier that day can count in both groups.)
--   SELECT day, active_customers, loyal_share, transactional_share FROM loyalty.v_audience_vs_loyal ORDER BY day
CREATE VIEW IF NOT EXISTS {db}.v_audience_vs_loyal AS
SELECT
    day,
    uniqMerge(customers) AS active_customers,
    uniqMergeIf(customers, tier IN ('fiercely_loyal', 'loyal')) AS loyal_customers,
    uniqMergeIf(customers, tier = 'transactional') AS transactional_customers,
    loyal_customers / active_customers AS loyal_share,
    transactional_customers / active_customers AS transactional_share
FROM {db}.signals_daily
GROUP BY day;

-- v_tier_transitions_weekly: the week-over-week transition matrix. For each week W (its Monday,
-- UTC) and pair (from_tier, to_tier): the customers whose tier at the end of week W-1 was
-- from_tier and at the end of week W is to_tier. A customer's tier at the end of a week is that
-- of their highest version up to then; customers without a signal in W keep their tier (the
-- diagonal), customers first seen in W come from '(new)'. A week's matrix sums to every customer
-- known by its end. Weeks without any signal in the whole base are not listed.
-- How: customer_week_tiers FINAL gives each customer's week-end tiers in week order; pairing
-- each with the one before gives the moves of active customers (one scan). The stayers come from
-- the running per-tier totals, computed on the small (week, from, to) result in array functions
-- (so the scan is not repeated).
--   SELECT from_tier, to_tier, customers FROM loyalty.v_tier_transitions_weekly
--   WHERE week = (SELECT max(week) FROM loyalty.v_tier_transitions_weekly) ORDER BY from_tier, to_tier
CREATE VIEW IF NOT EXISTS {db}.v_tier_transitions_weekly AS
WITH
    moves AS
    (
        -- codes: 1..7 tiers, 0 unknown, 16 = not seen before
        SELECT move.1 AS week, move.2 AS from_code, move.3 AS to_code, toInt64(count()) AS customers
        FROM
        (
            SELECT week_ends.1 AS weeks, arrayMap(c -> toUInt8(c % 16), week_ends.2) AS codes
            FROM {db}.customer_week_tiers FINAL
        )
        ARRAY JOIN arrayZip(weeks, arrayPushFront(arrayPopBack(codes), toUInt8(16)), codes) AS move
        GROUP BY week, from_code, to_code
    ),
    cells AS
    (
        SELECT
            groupArray((week, from_code, to_code, customers)) AS m,
            arraySort(arrayDistinct(arrayMap(x -> x.1, m))) AS weeks,
            arrayDistinct(arrayMap(x -> x.3, m)) AS codes,
            -- stayers of tier t in week w: the tier's total at the end of w-1 minus those who moved
            arrayFlatten(arrayMap(w -> arrayMap(t -> (w, t, t,
                    arraySum(x -> if(x.1 < w, if(x.3 = t, x.4, 0) - if(x.2 = t, x.4, 0), 0), m)
                  - arraySum(x -> if(x.1 = w AND x.2 = t, x.4, 0), m)), codes), weeks)) AS stayers
        FROM moves
    )
SELECT
    cell.1 AS week,
    if(cell.2 = 16, '(new)',
       ['(unknown)', 'prospect', 'lapsed', 'new', 'at_risk', 'fiercely_loyal', 'loyal', 'transactional'][cell.2 + 1]) AS from_tier,
    ['(unknown)', 'prospect', 'lapsed', 'new', 'at_risk', 'fiercely_loyal', 'loyal', 'transactional'][cell.3 + 1] AS to_tier,
    toUInt64(sum(cell.4)) AS customers
FROM cells
ARRAY JOIN arrayConcat(m, arrayFilter(x -> x.4 > 0, stayers)) AS cell
GROUP BY week, from_tier, to_tier;

-- v_customers_at_risk: buying customers, ordered by value at risk (highest first): the spend the
-- business expects from them over the churn horizon times the probability that they do not buy
-- in it:
--   avg_order_value_minor = spend_365d_minor / purchases (lifetime purchases, returns excluded:
--                           for customers older than a year this understates their basket, so
--                           the figure errs low; it keeps the view on signals_current alone)
--   expected_spend_minor  = expected_purchases (BG/NBD, over horizon_days) * avg_order_value_minor
--   value_at_risk_minor   = churn_risk * expected_spend_minor
-- Never-buyers (prospects) have no order value and are left out. No rank column: a window over
-- every customer costs seconds, ORDER BY ... LIMIT n a top-n pass.
--   SELECT customer_id, tier, churn_risk, value_at_risk_minor FROM loyalty.v_customers_at_risk
--   ORDER BY value_at_risk_minor DESC, customer_id LIMIT 20
CREATE VIEW IF NOT EXISTS {db}.v_customers_at_risk AS
SELECT
    customer_id,
    tier,
    tier_reason,
    loyalty_score,
    churn_risk,
    horizon_days,
    p_alive,
    expected_purchases,
    purchases,
    spend_365d_minor,
    spend_365d_minor / purchases AS avg_order_value_minor,
    expected_purchases * avg_order_value_minor AS expected_spend_minor,
    churn_risk * expected_spend_minor AS value_at_risk_minor,
    last_purchase_at,
    days_since_last_purchase,
    open_issues
FROM {db}.signals_current FINAL
WHERE purchases > 0
ORDER BY value_at_risk_minor DESC, customer_id;

-- v_alerts_outcome: alerts by kind and outcome. Did the customer buy (a purchase that is not a
-- return) after the alert was raised? outcome: 'purchased_within_30d', 'purchased_later' or
-- 'no_purchase_yet'; avg_days_to_purchase: mean days from the alert to that first purchase.
-- Alerts are deduplicated on alert_id (whatever 0003's engine). The first purchase after each
-- alert comes from an ASOF join on purchases, restricted to the alerted customers and to the
-- time since the oldest alert. Without FINAL, deliberately: a duplicated purchase event has the
-- same customer and occurred_at, so "the first purchase after the alert" is the same row either
-- way, and skipping the merge keeps the view well under a second (FINAL over purchases costs a
-- merge of every part it reads).
--   SELECT kind, outcome, alerts FROM loyalty.v_alerts_outcome ORDER BY kind, outcome
CREATE VIEW IF NOT EXISTS {db}.v_alerts_outcome AS
WITH
    alert AS
    (
        SELECT alert_id, any(customer_id) AS customer_id, any(kind) AS kind, min(raised_at) AS raised_at
        FROM {db}.alerts
        GROUP BY alert_id
    ),
    bought AS
    (
        SELECT customer_id, occurred_at
        FROM {db}.purchases
        WHERE NOT is_return
          AND customer_id IN (SELECT customer_id FROM {db}.alerts)
          AND occurred_at > (SELECT min(raised_at) FROM {db}.alerts)
    )
SELECT
    toString(kind) AS kind,
    multiIf(NOT purchased, 'no_purchase_yet', days_to_purchase <= 30, 'purchased_within_30d', 'purchased_later') AS outcome,
    count() AS alerts,
    uniqExact(customer_id) AS customers,
    avg(days_to_purchase) AS avg_days_to_purchase
FROM
(
    SELECT
        a.kind AS kind,
        a.customer_id AS customer_id,
        p.customer_id != '' AS purchased,
        if(purchased, dateDiff('millisecond', a.raised_at, p.occurred_at) / 86400000, NULL) AS days_to_purchase
    FROM alert AS a
    ASOF LEFT JOIN bought AS p ON p.customer_id = a.customer_id AND p.occurred_at > a.raised_at
)
GROUP BY kind, outcome;

-- v_alerts_daily: alerts raised per day (UTC) and kind, deduplicated on alert_id.
--   SELECT day, sum(alerts) AS alerts FROM loyalty.v_alerts_daily GROUP BY day ORDER BY day
CREATE VIEW IF NOT EXISTS {db}.v_alerts_daily AS
SELECT toDate(raised_at) AS day, toString(kind) AS kind, count() AS alerts
FROM
(
    SELECT alert_id, any(kind) AS kind, min(raised_at) AS raised_at FROM {db}.alerts GROUP BY alert_id
)
GROUP BY day, kind;

-- v_recognition_and_quality: are customers who are recognised when they visit, and who get good
-- service on calls, more loyal? The current relationship state (relationships FINAL) joined with
-- the current signal (signals_current FINAL), grouped by
--   recognition: share of the last 90 days' visits where the customer was recognised:
--                'no visits', '0-25%', '25-50%', '50-75%', '75-100%' (lower bound inclusive)
--   service:     the last 90 days' calls: 'no calls'; 'unresolved' if any call is unresolved;
--                else by mean sentiment (-1..1): 'negative' (< -0.2), 'neutral', 'positive'
--                (> 0.2), 'no sentiment' when no call carried one
-- with the customers, mean score and churn risk, and the tier mix (shares of the group). The
-- buckets are numbered before the join and named after the grouping, and the join merges the two
-- customer-sorted tables (full_sorting_merge): 0.2 s instead of 0.9 s on 1M customers.
--   SELECT recognition, service, customers, avg_loyalty_score, loyal_share FROM loyalty.v_recognition_and_quality
--   ORDER BY recognition_order, service_order
CREATE VIEW IF NOT EXISTS {db}.v_recognition_and_quality AS
SELECT
    ['no visits', '0-25%', '25-50%', '50-75%', '75-100%'][recognition_order + 1] AS recognition,
    ['no calls', 'unresolved', 'no sentiment', 'negative', 'neutral', 'positive'][service_order + 1] AS service,
    recognition_order,
    service_order,
    count() AS customers,
    avg(s.loyalty_score) AS avg_loyalty_score,
    avg(s.churn_risk) AS avg_churn_risk,
    countIf(s.tier = 'fiercely_loyal') / customers AS fiercely_loyal_share,
    countIf(s.tier = 'loyal') / customers AS loyal_share,
    countIf(s.tier = 'transactional') / customers AS transactional_share,
    countIf(s.tier = 'at_risk') / customers AS at_risk_share,
    countIf(s.tier = 'lapsed') / customers AS lapsed_share,
    countIf(s.tier = 'new') / customers AS new_share,
    countIf(s.tier = 'prospect') / customers AS prospect_share
FROM
(
    SELECT
        customer_id,
        toUInt8(multiIf(visits_90d = 0 OR recognized_share_90d IS NULL, 0,
                        recognized_share_90d < 0.25, 1,
                        recognized_share_90d < 0.5, 2,
                        recognized_share_90d < 0.75, 3,
                        4)) AS recognition_order,
        toUInt8(multiIf(calls_90d = 0, 0,
                        unresolved_calls_90d > 0, 1,
                        avg_sentiment_90d IS NULL, 2,
                        avg_sentiment_90d < -0.2, 3,
                        avg_sentiment_90d > 0.2, 5,
                        4)) AS service_order
    FROM {db}.relationships FINAL
) AS r
INNER JOIN
(
    SELECT customer_id, tier, loyalty_score, churn_risk FROM {db}.signals_current FINAL
) AS s ON s.customer_id = r.customer_id
GROUP BY recognition_order, service_order
SETTINGS join_algorithm = 'full_sorting_merge';

-- v_tiers_current: the tier distribution now (signals_current FINAL).
--   SELECT tier, customers, share FROM loyalty.v_tiers_current ORDER BY customers DESC
CREATE VIEW IF NOT EXISTS {db}.v_tiers_current AS
SELECT
    tier,
    count() AS customers,
    customers / sum(customers) OVER () AS share,
    avg(loyalty_score) AS avg_loyalty_score,
    avg(churn_risk) AS avg_churn_risk,
    sum(spend_365d_minor) AS revenue_365d_minor
FROM (SELECT tier, loyalty_score, churn_risk, spend_365d_minor FROM {db}.signals_current FINAL)
GROUP BY tier;

-- v_score_histogram: the current loyalty scores (0..100) in ten-point bins (100 falls in 90-100).
--   SELECT bin_from, customers FROM loyalty.v_score_histogram ORDER BY bin_from
CREATE VIEW IF NOT EXISTS {db}.v_score_histogram AS
SELECT toUInt8(least(floor(loyalty_score / 10) * 10, 90)) AS bin_from, bin_from + 10 AS bin_to, count() AS customers
FROM (SELECT loyalty_score FROM {db}.signals_current FINAL)
GROUP BY bin_from;

-- 0009_captive: the captive tier (domain/model/tiers.py) in the BI model of 0004. Captive
-- customers buy often and regularly at full price while the relationship is poor: with the
-- transactional ones they are the "big audience, not a loyal base" side.
--
-- Tier codes (customer_week_tiers): captive is code 8, after the seven of 0004, so the codes
-- already stored keep their meaning. Tiers in code order: prospect, lapsed, new, at_risk,
-- fiercely_loyal, loyal, transactional, captive.
-- Views are replaced (CREATE OR REPLACE VIEW): on a ClickHouse server, apply
-- sinks/roles/bi_reader.sql again afterwards, since a replaced view loses its SQL SECURITY DEFINER.
-- v_daily_tiers and v_tiers_current group by tier and need no change.

-- customer_week_tiers_mv codes captive as 8 (0004's list had no captive: code 0, '(unknown)').
ALTER TABLE {db}.customer_week_tiers_mv MODIFY QUERY
SELECT
    customer_id,
    maxMap([toMonday(as_of)],
           [version * 16 + indexOf(['prospect', 'lapsed', 'new', 'at_risk', 'fiercely_loyal', 'loyal', 'transactional', 'captive'],
                                   toString(tier))]) AS week_ends
FROM {db}.signals_history
GROUP BY customer_id;

-- Captive signals that arrived before this migration (a state worker on the new model ahead of
-- its sink) were coded 0; their rows again with code 8. maxMap keeps the higher value of the
-- same version, so this is idempotent, and on a database without captive signals it adds nothing.
INSERT INTO {db}.customer_week_tiers
SELECT customer_id,
       maxMap([toMonday(as_of)],
              [version * 16 + indexOf(['prospect', 'lapsed', 'new', 'at_risk', 'fiercely_loyal', 'loyal', 'transactional', 'captive'],
                                      toString(tier))])
FROM {db}.signals_history FINAL
WHERE tier = 'captive'
GROUP BY customer_id;

-- v_tier_transitions_weekly: as in 0004, with captive among the tier names.
CREATE OR REPLACE VIEW {db}.v_tier_transitions_weekly AS
WITH
    moves AS
    (
        -- codes: 1..8 tiers, 0 unknown, 16 = not seen before
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
       ['(unknown)', 'prospect', 'lapsed', 'new', 'at_risk', 'fiercely_loyal', 'loyal', 'transactional', 'captive'][cell.2 + 1]) AS from_tier,
    ['(unknown)', 'prospect', 'lapsed', 'new', 'at_risk', 'fiercely_loyal', 'loyal', 'transactional', 'captive'][cell.3 + 1] AS to_tier,
    toUInt64(sum(cell.4)) AS customers
FROM cells
ARRAY JOIN arrayConcat(m, arrayFilter(x -> x.4 > 0, stayers)) AS cell
GROUP BY week, from_tier, to_tier;

-- v_audience_vs_loyal: "a big audience or a loyal base?" Per day: the customers active that day
-- (with an event), each once, in the tier they ended the day in (tier_days FINAL, as in 0007); how
-- many of them were fiercely loyal or loyal, transactional, captive, and transactional or captive
-- (the big audience that is not a loyal base); the shares of the active customers; and the same
-- split of revenue_365d_minor, the trailing-year spend those customers carry at the end of the
-- day. The revenue shares are NULL on a day without revenue. 0007's columns keep their names and
-- meaning.
--   SELECT day, active_customers, loyal_share, transactional_or_captive_share, loyal_revenue_share,
--          transactional_or_captive_revenue_share FROM loyalty.v_audience_vs_loyal ORDER BY day
CREATE OR REPLACE VIEW {db}.v_audience_vs_loyal AS
SELECT
    day,
    count() AS active_customers,
    countIf(tier IN ('fiercely_loyal', 'loyal')) AS loyal_customers,
    countIf(tier = 'transactional') AS transactional_customers,
    loyal_customers / active_customers AS loyal_share,
    transactional_customers / active_customers AS transactional_share,
    countIf(tier = 'captive') AS captive_customers,
    countIf(tier IN ('transactional', 'captive')) AS transactional_or_captive_customers,
    captive_customers / active_customers AS captive_share,
    transactional_or_captive_customers / active_customers AS transactional_or_captive_share,
    sum(spend_365d_minor) AS revenue_365d_minor,
    sumIf(spend_365d_minor, tier IN ('fiercely_loyal', 'loyal')) AS loyal_revenue_365d_minor,
    sumIf(spend_365d_minor, tier IN ('transactional', 'captive')) AS transactional_or_captive_revenue_365d_minor,
    loyal_revenue_365d_minor / nullIf(revenue_365d_minor, 0) AS loyal_revenue_share,
    transactional_or_captive_revenue_365d_minor / nullIf(revenue_365d_minor, 0) AS transactional_or_captive_revenue_share
FROM (SELECT day, tier, spend_365d_minor FROM {db}.tier_days FINAL)
GROUP BY day;

-- v_recognition_and_quality: as in 0004, with captive_share after transactional_share.
CREATE OR REPLACE VIEW {db}.v_recognition_and_quality AS
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
    countIf(s.tier = 'captive') / customers AS captive_share,
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

-- 0006_alerts_event_time: live and historical alerts. raised_at already is the event time an alert
-- is about (the signal's as_of: the customer's newest event, or the gone-quiet due time); this adds
-- when the worker processed it and whether it was about the past.
--   processed_at  the worker's clock when it evaluated the rules (NULL for rows written before)
--   historical    raised_at was more than LOYALTY_ALERT_LIVE_WINDOW_HOURS before processed_at: a
--                 backfill or a replay of history raised it; it was not sent to the webhook.
--                 Rows written before this migration read false (not known to be historical).
-- A replay of the same alert (same alert_id) is one row after merges (ReplacingMergeTree on
-- updated_at: the newest copy's flag wins); every view below deduplicates on alert_id.
ALTER TABLE {db}.alerts ADD COLUMN IF NOT EXISTS processed_at Nullable(DateTime64(3, 'UTC')) AFTER greeting_hint;

ALTER TABLE {db}.alerts ADD COLUMN IF NOT EXISTS historical Bool DEFAULT false AFTER processed_at;

-- v_alerts_daily_by_origin: alerts per day (UTC, of raised_at, the event time), kind and origin
-- ('live' or 'historical'), deduplicated on alert_id. v_alerts_daily counts both origins together.
--   SELECT day, origin, sum(alerts) AS alerts FROM loyalty.v_alerts_daily_by_origin GROUP BY day, origin ORDER BY day, origin
CREATE VIEW IF NOT EXISTS {db}.v_alerts_daily_by_origin AS
SELECT toDate(raised_at) AS day, toString(kind) AS kind, if(historical, 'historical', 'live') AS origin, count() AS alerts
FROM
(
    SELECT alert_id, any(kind) AS kind, min(raised_at) AS raised_at, argMax(historical, updated_at) AS historical
    FROM {db}.alerts
    GROUP BY alert_id
)
GROUP BY day, kind, origin;

-- v_alerts_live: the live alerts, one row per alert_id (the newest copy), with when they were
-- processed: what was (or is being) sent to the webhook.
--   SELECT kind, count() FROM loyalty.v_alerts_live WHERE raised_at >= now() - INTERVAL 7 DAY GROUP BY kind
CREATE VIEW IF NOT EXISTS {db}.v_alerts_live AS
SELECT alert_id, customer_id, kind, severity, raised_at, processed_at, summary, after_tier
FROM
(
    SELECT alert_id, any(customer_id) AS customer_id, toString(any(kind)) AS kind, toString(any(severity)) AS severity,
           min(raised_at) AS raised_at, argMax(processed_at, updated_at) AS processed_at,
           argMax(summary, updated_at) AS summary, argMax(after_tier, updated_at) AS after_tier,
           argMax(historical, updated_at) AS historical
    FROM {db}.alerts
    GROUP BY alert_id
)
WHERE NOT historical;

-- Alerts on loyalty drops: one row per alert (alert_id is deterministic, so a replayed alert
-- collapses onto the same key). Flat columns for BI; explanation and context as they are sent.
CREATE TABLE IF NOT EXISTS {db}.alerts
(
    alert_id                 String,
    customer_id              String,
    kind                     LowCardinality(String),
    severity                 LowCardinality(String),
    raised_at                DateTime64(3, 'UTC'),
    model_version            LowCardinality(String),
    summary                  String,
    before_score             Nullable(Float64),
    after_score              Float64,
    before_tier              Nullable(String),
    after_tier               String,
    tier_reason              String,
    measure                  LowCardinality(String),
    measure_before           Nullable(Float64),
    measure_after            Float64,
    threshold                Float64,
    explanation_components   Array(String),
    explanation_before       Array(Float64),
    explanation_after        Array(Float64),
    churn_risk               Nullable(Float64),
    greeting_hint            String,
    delivered_webhook        Bool DEFAULT false,
    updated_at               DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
PARTITION BY toYYYYMM(raised_at)
ORDER BY (customer_id, raised_at, alert_id)
SETTINGS non_replicated_deduplication_window = 10000;
